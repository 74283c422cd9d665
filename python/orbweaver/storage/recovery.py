"""Rebuild the job cache from the database when the storage service starts (spec section 7).

Recoverable jobs are read in id-ordered pages and turned into cache entries as they arrive, so
peak memory does not depend on the number of rows. A job that cannot be rebuilt (corrupt graph,
CommitReady without outputs, ...) is marked FAILED with the reason and startup continues. Nothing
is enqueued here: the server resends ready work once it is serving.

A RUNNING job submitted with durability="task" gets back the outputs its succeeded tasks
stored (`storage.task_outputs`): those tasks are not run again. One whose every task had
finished is complete already; its completion is left to the service (`StorageService.resume`),
which persists it like any other.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from orbweaver import _core
from orbweaver.states import JobState
from orbweaver.storage.db import Database, DbJobState
from orbweaver.storage.submissions import SubmissionLimits, SubmissionParser

log = logging.getLogger("orbweaver.storage.recovery")


@dataclass(slots=True)
class RecoveryReport:
    recovered: Counter[JobState] = field(default_factory=Counter)
    failed: list[tuple[int, str]] = field(default_factory=list)
    pages: int = 0
    seconds: float = 0.0
    # Recovered jobs submitted with durability="task" (READY or RUNNING).
    task_durable: set[int] = field(default_factory=set)
    # Tasks whose stored outputs spared them a second run.
    resumed_tasks: int = 0
    # Task-durable jobs every task of which had finished: their completion is to be persisted.
    completed: list[_core.Outcome] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.recovered.values())


def recover_cache(
    db: Database,
    cache: _core.JobCache,
    page_size: int,
    limits: SubmissionLimits | None = None,
) -> RecoveryReport:
    """Rebuild `cache`; a job beyond today's `limits` (lowered since it was submitted) is
    unrecoverable like a corrupt one."""
    report = RecoveryReport()
    parser = SubmissionParser(limits)  # jobs of one graph share its parse and its memory
    started = time.perf_counter()
    after = 0
    while True:
        rows = db.recoverable_jobs(after, page_size)
        if not rows:
            break
        report.pages += 1
        live = [row.id for row in rows if row.state in (DbJobState.READY, DbJobState.RUNNING)]
        durable = db.task_durable_jobs(live) if live else set()
        for row in rows:
            after = row.id
            try:
                submission = parser.parse(row.compressed_graph, row.compressed_inputs)
                finished = (
                    db.task_outputs(row.id)
                    if row.id in durable and row.state == DbJobState.RUNNING
                    else None
                )
                outcome = cache.recover(
                    row.id,
                    row.resource_group_id,
                    submission,
                    int(row.state),
                    row.serialized_outputs,
                    finished,
                )
            except _core.CoreError as exc:
                reason = f"cannot be recovered after a storage restart: {exc}"
                log.error("job %d %s", row.id, reason, extra={"job_id": row.id})
                db.fail_unrecoverable(row.id, reason)
                report.failed.append((row.id, reason))
                continue
            if row.id in durable:
                report.task_durable.add(row.id)
                report.resumed_tasks += cache.progress(row.id)[3]
                if outcome is not None:
                    report.completed.append(outcome)
            report.recovered[JobState(row.state)] += 1
        del rows  # release the page's blobs before reading the next one
        if report.pages % 20 == 0:
            log.info("recovery in progress", extra={"jobs": report.total, "pages": report.pages})
    report.seconds = time.perf_counter() - started
    log.info(
        "job cache recovered",
        extra={
            "jobs": report.total,
            "failed": len(report.failed),
            "pages": report.pages,
            "task_durable": len(report.task_durable),
            "resumed_tasks": report.resumed_tasks,
            "seconds": round(report.seconds, 3),
            **{f"state_{s.name.lower()}": n for s, n in report.recovered.items()},
        },
    )
    return report
