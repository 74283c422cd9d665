"""Task-level durability: the outputs of the succeeded tasks of jobs submitted with
``durability="task"``, written to the database in the background so that a RUNNING job resumes
after a storage restart without running its finished tasks again (`storage.recovery`).

Reports never wait for the database here: `record` only queues the outputs (the report's own
bytes, not a copy) and one thread writes what queued up meanwhile in one transaction, so a busy
service writes many reports per transaction. A job that leaves RUNNING is `forget`-ten: its rows
are deleted in a later transaction (its completion, failure or cancellation is persisted at job
level already).

Memory is bounded: outputs queued or being written add up to at most `max_bytes`. A success
that would pass the bound, or that is larger than the database stores in one value, is not
queued, and its job falls back to job-level durability for the rest of this process's life (its
later outputs are not queued either; a restart runs again whatever it has not stored). Making
the report wait instead would stall every job that shares the storage's handler threads
whenever the database is slow or away; falling back only costs that job work after a restart.
What was stored stays usable: recovery keeps a stored task only if its parents were stored too.

With no job opted in, nothing here runs: the thread sleeps and the service skips the calls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence

from orbweaver._rpc import Backoff
from orbweaver.storage.db import Database
from orbweaver.storage.db import errors as db_errors

log = logging.getLogger("orbweaver.storage")

# Rows and bytes one transaction writes at most (more waits for the next one).
MAX_BATCH_ROWS = 5000
MAX_BATCH_BYTES = 16 << 20
# How long the first queued row waits for others before a transaction starts: fewer, larger
# transactions, and the rows of a job that ends within it are never written at all.
LINGER_SECONDS = 0.05


class TaskOutputWriter:
    """Queue and background writer of task outputs; every method is thread-safe."""

    def __init__(
        self,
        db: Database,
        *,
        max_bytes: int,
        on_written: Callable[[int], None] | None = None,
        on_degraded: Callable[[int], None] | None = None,
    ) -> None:
        self._db = db
        self._max_bytes = max_bytes
        self._on_written = on_written or (lambda n: None)
        self._on_degraded = on_degraded or (lambda n: None)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # The task-durable jobs this process knows (membership is read without the lock by the
        # report path: a set lookup under the GIL), and those of them that fell back.
        self.jobs: set[int] = set()
        self._degraded: set[int] = set()
        self._queue: list[tuple[int, int, bytes]] = []
        self._ended: set[int] = set()
        self._held = 0  # bytes queued or being written
        self._writing = False
        self._stopping = False
        self._abandon = False
        self._thread = threading.Thread(target=self._run, name="task-outputs", daemon=True)

    # -- the service's side ---------------------------------------------------------------------

    def track(self, job_ids: Iterable[int]) -> None:
        """These jobs were registered (or recovered) with durability "task"."""
        with self._lock:
            self.jobs.update(job_ids)

    def record(self, items: Sequence[tuple[int, int, bytes]]) -> None:
        """Queue ``(job_id, task_index, outputs frame)`` of accepted successes; never blocks
        on the database."""
        degraded: list[tuple[int, int, int]] = []
        with self._lock:
            limit = self._db.max_value_bytes
            for item in items:
                job_id = item[0]
                if job_id not in self.jobs or job_id in self._degraded:
                    continue  # forgotten meanwhile, or fallen back
                size = len(item[2])
                if size > limit or self._held + size > self._max_bytes:
                    self._degraded.add(job_id)
                    degraded.append((job_id, item[1], size))
                    continue
                self._queue.append(item)
                self._held += size
            if self._queue:
                self._changed.notify_all()
        for job_id, task, size in degraded:
            log.warning(
                "task outputs not persisted: job %d falls back to job-level durability (task %d"
                " outputs of %d bytes, %d bytes already waiting, bound %d; a value holds at most"
                " %d)",
                job_id,
                task,
                size,
                self._held,
                self._max_bytes,
                self._db.max_value_bytes,
                extra={"job_id": job_id},
            )
        if degraded:
            self._on_degraded(len(degraded))

    def forget(self, job_ids: Iterable[int]) -> None:
        """These jobs left RUNNING (their end is persisted): stop recording, delete their rows."""
        with self._lock:
            ended = [j for j in job_ids if j in self.jobs]
            if not ended:
                return
            for job_id in ended:
                self.jobs.discard(job_id)
                self._degraded.discard(job_id)
            self._ended.update(ended)
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._held

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is written (or given up); False at the timeout."""
        with self._lock:
            return self._changed.wait_for(
                lambda: not self._queue and not self._ended and not self._writing, timeout
            )

    # -- the thread -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to `timeout` seconds), then stop."""
        with self._lock:
            self._stopping = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            self._abandon = True  # the database may be away: give the rest up
            self._changed.notify_all()

    def _take(self) -> tuple[list[tuple[int, int, bytes]], list[int]]:
        """The next batch (the lock is held): queued rows up to the batch bounds, in order,
        and every job forgotten so far."""
        ended = self._ended
        rows: list[tuple[int, int, bytes]] = []
        size = taken = dropped = 0
        for item in self._queue:
            if len(rows) >= MAX_BATCH_ROWS or (rows and size + len(item[2]) > MAX_BATCH_BYTES):
                break
            taken += 1
            if item[0] in ended:
                dropped += len(item[2])  # its job ended: nothing to keep
                continue
            rows.append(item)
            size += len(item[2])
        del self._queue[:taken]
        self._held -= dropped
        self._ended = set()
        return rows, sorted(ended)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._changed.wait_for(lambda: self._queue or self._ended or self._stopping)
                if not self._queue and not self._ended:
                    return  # stopping, and everything is written
                self._changed.wait_for(
                    lambda: self._stopping or len(self._queue) >= MAX_BATCH_ROWS, LINGER_SECONDS
                )
                rows, ended = self._take()
                self._writing = True
            written = self._write(rows, ended)
            with self._lock:
                self._writing = False
                self._held -= sum(len(r[2]) for r in rows)
                self._changed.notify_all()
            if written:
                self._on_written(written)

    def _write(self, rows: list[tuple[int, int, bytes]], ended: list[int]) -> int:
        """One transaction, retried while the database is away (the queue fills up meanwhile
        and new successes fall back); returns the rows written."""
        delays = Backoff(base=0.05, cap=2.0).delays()
        while True:
            try:
                return self._db.save_task_outputs(rows, ended)
            except db_errors.DbUnavailable as exc:
                with self._lock:
                    if self._abandon:
                        return 0
                log.warning("task outputs wait for the database: %s", exc)
                with self._lock:
                    self._changed.wait_for(lambda: self._abandon, next(delays))
            except db_errors.DbError as exc:
                # Not worth stopping the service for: these jobs fall back to job-level
                # durability (what they stored so far stays usable).
                jobs = sorted({r[0] for r in rows})
                log.error(
                    "cannot persist task outputs of jobs %s: %s; they fall back to job-level "
                    "durability",
                    jobs,
                    exc,
                )
                with self._lock:
                    self._degraded.update(j for j in jobs if j in self.jobs)
                self._on_degraded(len(jobs))
                return 0
