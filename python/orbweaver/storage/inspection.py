"""Read-only views of the cluster for the dashboard (`ClusterInspectionService`).

Everything here reads what the service already holds (the job cache, the database, the
metrics); the only state of its own is `EmActivity`, a few counters per execution manager that
the task-instance paths update once per batch.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orbweaver import _core, errors
from orbweaver.states import JobState
from orbweaver.storage.auth import Principal
from orbweaver.storage.db import JobRow
from orbweaver.storage.db import errors as db_errors
from orbweaver.storage.errors import translate

if TYPE_CHECKING:
    from orbweaver.storage.recovery import RecoveryReport
    from orbweaver.storage.service import StorageService

__all__ = [
    "ClusterStatus",
    "EmActivity",
    "EmStatus",
    "JobGraph",
    "TaskStatus",
    "cluster_status",
    "job_graph",
]

# What `explain` says of a task -> its state.
_REASON_STATE = {
    "pending_parents": "pending",
    "queued": "ready",
    "retrying": "ready",
    "running": "running",
    "instance_limit": "running",
}
_TASK_STATE_NAMES = {code: name.lower() for name, code in _core.TASK_STATES}
# The core's failure message: "task 3 (pkg.func) failed: ..." (or "commit (...) failed: ...").
_FAILED_TASK = re.compile(r"^task (\d+) \(")


class EmActivity:
    """Per execution manager: its executor-pool size (as it registered with this process) and
    its task instances registered and not reported yet. Thread-safe; counts are approximate
    (an instance the storage forgets without a report, e.g. of a cancelled job, is counted until
    its report arrives or its manager is declared dead)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executors: dict[int, int] = {}
        self._in_flight: Counter[int] = Counter()

    def joined(self, em_id: int, executors: int) -> None:
        with self._lock:
            self._executors[em_id] = executors

    def registered(self, em_id: int, n: int) -> None:
        if n:
            with self._lock:
                self._in_flight[em_id] += n

    def reported(self, em_id: int, n: int) -> None:
        if n:
            with self._lock:
                self._in_flight[em_id] = max(0, self._in_flight[em_id] - n)

    def dead(self, em_ids: list[int] | tuple[int, ...] | set[int]) -> None:
        with self._lock:
            for em_id in em_ids:
                self._executors.pop(em_id, None)
                self._in_flight.pop(em_id, None)

    def snapshot(self) -> tuple[dict[int, int], dict[int, int]]:
        with self._lock:
            return dict(self._executors), dict(self._in_flight)


@dataclass(frozen=True, slots=True)
class EmStatus:
    id: int
    ip_address: str
    executors: int
    in_flight: int
    last_heartbeat_at_ms: int


@dataclass(slots=True)
class ClusterStatus:
    jobs: dict[JobState, int]
    cluster_wide: bool
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    execution_managers: list[EmStatus] = field(default_factory=list)
    queue_depths: tuple[int, int, int] = (0, 0, 0)
    session_id: int = 0
    recovery: RecoveryReport | None = None
    recovered_at_ms: int = 0
    cached_jobs: int = 0
    live_instances: int = 0


@dataclass(frozen=True, slots=True)
class TaskStatus:
    task: int
    state: str
    reason: str = ""
    detail: str = ""
    failures: int = 0  # failed attempts
    live_instances: int = 0


@dataclass(frozen=True, slots=True)
class JobGraph:
    job: JobRow
    compressed_graph: bytes
    tasks: list[TaskStatus]
    live: bool
    counts: tuple[int, int, int, int, int, int]


# Job counts scan the jobs table: every open overview asks every two seconds, so the counts of
# one service and group are shared for a second.
_COUNTS_TTL_S = 1.0
_counts_lock = threading.Lock()
_counts: weakref.WeakKeyDictionary[StorageService, dict[int | None, tuple[float, dict[int, int]]]]
_counts = weakref.WeakKeyDictionary()


def _job_counts(svc: StorageService, group_id: int | None) -> dict[int, int]:
    now = time.monotonic()
    with _counts_lock:
        cached = _counts.get(svc, {}).get(group_id)
    if cached is not None and now - cached[0] < _COUNTS_TTL_S:
        return cached[1]
    try:
        counts = svc.db.count_jobs_by_state(group_id)
    except db_errors.DbError as exc:
        raise translate(exc) from exc
    with _counts_lock:
        per_group = _counts.setdefault(svc, {})
        if len(per_group) > 1024:  # many groups' dashboards: start over
            per_group.clear()
        per_group[group_id] = (now, counts)
    return counts


def cluster_status(svc: StorageService, principal: Principal) -> ClusterStatus:
    """The operator's view of the cluster; a resource group gets its own job counts only."""
    counts = _job_counts(svc, principal.group_id)
    jobs = {JobState(int(state)): n for state, n in counts.items()}
    if not principal.is_operator:
        return ClusterStatus(jobs, cluster_wide=False)
    try:
        alive = svc.db.alive_execution_managers()
    except db_errors.DbError as exc:
        raise translate(exc) from exc
    executors, in_flight = svc.em_activity.snapshot()
    registry = svc.metrics.registry
    return ClusterStatus(
        jobs,
        cluster_wide=True,
        tasks_succeeded=int(
            registry.get_sample_value("orbweaver_storage_task_successes_total") or 0
        ),
        tasks_failed=int(registry.get_sample_value("orbweaver_storage_task_failures_total") or 0),
        execution_managers=[
            EmStatus(
                em.id,
                em.ip_address,
                executors.get(em.id, 0),
                in_flight.get(em.id, 0),
                em.last_heartbeat_at_ms,
            )
            for em in alive
        ],
        queue_depths=svc.cache.queue_depths(),
        session_id=svc.session_id,
        recovery=svc.recovery,
        recovered_at_ms=svc.recovered_at_ms,
        cached_jobs=len(svc.cache),
        live_instances=svc.cache.live_instances(),
    )


def _task_ids(total: int, has_commit: bool, has_cleanup: bool) -> list[int]:
    ids = list(range(total))
    if has_commit:
        ids.append(_core.TASK_COMMIT)
    if has_cleanup:
        ids.append(_core.TASK_CLEANUP)
    return ids


def _derived(
    task: int, state: JobState, failed_task: int | None, all_others_succeeded: bool
) -> TaskStatus:
    """A task's state when the cache no longer holds it, from its job's state."""
    is_regular = task >= 0
    if state == JobState.READY:
        return TaskStatus(task, "pending", "job_not_started", "the job has not been started")
    if state == JobState.RUNNING:
        if is_regular:
            return TaskStatus(task, "succeeded")
        return TaskStatus(task, "pending", "pending_parents", "runs after every task")
    if state == JobState.COMMIT_READY:
        return TaskStatus(task, "succeeded" if is_regular else "pending")
    if state == JobState.SUCCEEDED:
        return TaskStatus(task, "succeeded" if task != _core.TASK_CLEANUP else "not_run")
    if state == JobState.FAILED:
        if task == failed_task:
            return TaskStatus(task, "failed")
        if is_regular and all_others_succeeded:
            return TaskStatus(task, "succeeded")
        return TaskStatus(task, "unknown", "job_failed", "the job failed")
    # CLEANUP_READY, CANCELLED
    return TaskStatus(task, "cancelled", "job_cancelled", "the job was cancelled")


def job_graph(svc: StorageService, principal: Principal, job_id: int) -> JobGraph:
    """The job's graph as submitted and what each of its tasks is doing."""
    svc._check_access(principal, job_id)
    try:
        row = svc.db.get_job(job_id)
        compressed = svc.db.get_job_graph(job_id)
    except db_errors.DbError as exc:
        raise translate(exc, job_id=job_id) from exc
    try:
        # A cached job answers from the cache (a live page asks twice a second).
        state = JobState(svc.cache.state(job_id))
        total = svc.cache.total_tasks(job_id)
        ids = _task_ids(total, svc.cache.has_commit(job_id), svc.cache.has_cleanup(job_id))
        counts = svc.cache.progress(job_id)
        explained = svc.cache.explain(job_id, len(ids))
        known = {t: (code, failures, n) for t, code, failures, n in svc.cache.task_states(job_id)}
        live = True
    except _core.JobNotFoundError:
        try:
            graph = _core.TaskGraph.from_compressed(compressed)
        except _core.CoreError as exc:
            raise errors.InternalError(
                f"job {job_id}: its stored graph does not parse: {exc}"
            ) from exc
        total = graph.num_tasks
        ids = _task_ids(total, graph.has_commit, graph.has_cleanup)
        state = JobState(int(row.state))
        counts = (0, 0, 0, 0, 0, 0)
        explained = []
        known = {}
        live = False
    waiting = {task: (reason, detail) for task, reason, detail in explained}
    error = row.error_message or (svc.cache.error(job_id) if live else None) or ""
    failed = _FAILED_TASK.match(error)
    failed_task = int(failed.group(1)) if failed else None
    # A failed job's cache counts tell whether every other task had succeeded.
    all_others_succeeded = live and failed_task is not None and counts[3] + 1 == total
    tasks: list[TaskStatus] = []
    for task in ids:
        if task in known and state != JobState.READY:  # not started: no task may run yet
            code, failures, instances = known[task]
            reason, detail = waiting.get(task, ("", ""))
            tasks.append(
                TaskStatus(task, _TASK_STATE_NAMES[code], reason, detail, failures, instances)
            )
        elif task in waiting:
            reason, detail = waiting[task]
            tasks.append(TaskStatus(task, _REASON_STATE.get(reason, "unknown"), reason, detail))
        else:
            tasks.append(_derived(task, state, failed_task, all_others_succeeded))
    return JobGraph(row, compressed, tasks, live, counts)
