"""The storage service's application logic: job orchestration, task instances, the inbound
queue, resource groups and EM liveness, on top of the Rust job cache and the database.

Ordering rule for every job-level transition (start, completion, cancel, failure, termination):
under the job's transition lock, validate against the cache, persist to the database, then apply
to the cache. The database is the source of truth, so a crash between the two steps is repaired by
recovery; the lock keeps the cache's order of transitions equal to the database's.
Task-level operations (register, report) never take that lock and never touch the database unless
they complete, fail or terminate a job.

The database may go away for a while: a client's transition then answers UNAVAILABLE (nothing
changed), and a transition a task report decided waits for the database (`storage.pending`);
calls the cache can answer keep working. The service stops only on a broken invariant.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from orbweaver import _core, _trace, errors
from orbweaver._limits import MESSAGE_OVERHEAD_BYTES, clip_message
from orbweaver._rpc import Backoff
from orbweaver.states import JobState
from orbweaver.storage.auth import Principal
from orbweaver.storage.config import StorageConfig
from orbweaver.storage.db import Database, JobGroup, JobRow, ResourceGroupRow
from orbweaver.storage.db import errors as db_errors
from orbweaver.storage.errors import ServiceFailure, translate
from orbweaver.storage.groupcommit import GroupCommitter
from orbweaver.storage.inspection import EmActivity
from orbweaver.storage.metrics import StorageMetrics
from orbweaver.storage.pending import PendingTransitions, Transition
from orbweaver.storage.recovery import RecoveryReport
from orbweaver.storage.submissions import SubmissionLimits, SubmissionParser
from orbweaver.storage.task_outputs import TaskOutputWriter

log = logging.getLogger("orbweaver.storage")

T = TypeVar("T")
_LOCK_STRIPES = 256
# The most tasks one report's reply registers for its execution manager.
_MAX_CONTINUED = 1024
# An instance registered this long ago that its (live) EM does not list as held was lost on the
# way. Replies take milliseconds; heartbeats list what the EM held when they left.
_LOST_INSTANCE_GRACE_MS = 10_000
# Most jobs one WaitJobs call may name.
MAX_WAIT_JOBS = 10_000
_JOB_STATE_VALUES = frozenset(int(s) for s in JobState)
# Host names, IPv4 and IPv6 addresses (with an optional zone): what a scheduler may advertise.
_HOST_RE = re.compile(r"[A-Za-z0-9._:%\-\[\]]+")
# The wire's Durability enum (proto): unspecified, job, task.
DURABILITY_UNSPECIFIED, DURABILITY_JOB, DURABILITY_TASK = 0, 1, 2


def now_ms() -> int:
    """The engine's clock: monotonic milliseconds (only differences matter)."""
    return time.monotonic_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class JobProgress:
    state: JobState
    total_tasks: int
    counts: tuple[int, int, int, int, int, int]  # pending ready running succeeded failed cancelled
    waiting: list[tuple[int, str, str]]
    live: bool


class StorageService:
    """Thread-safe; every public method may be called from any gRPC worker thread."""

    def __init__(
        self,
        config: StorageConfig,
        db: Database,
        cache: _core.JobCache,
        metrics: StorageMetrics,
        *,
        on_fatal: Callable[[str], None],
    ) -> None:
        self.config = config
        self.db = db
        self.cache = cache
        self.metrics = metrics
        self.session_id = db.session_id
        self._on_fatal = on_fatal
        self._job_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._terminal = threading.Condition()
        self.submission_limits = SubmissionLimits(
            config.max_graph_bytes, config.max_input_bytes, config.max_tasks
        )
        self._submissions = SubmissionParser(self.submission_limits)
        # Each parse may hold a graph and inputs up to their limits: bound how many run at once.
        self._parsing = threading.BoundedSemaphore(config.max_concurrent_submissions)
        self._terminal_generation = 0  # bumped (under _terminal) whenever a job becomes terminal
        self._alive_ems: set[int] = set()
        self._alive_lock = threading.Lock()
        self._scheduler_lock = threading.Lock()
        # A registration is durable, like an execution manager's: the scheduler of the last
        # registration keeps polling across storage restarts.
        self._scheduler_id = self._registered_scheduler()
        # Whether a scheduler registered since this process started (a later registration
        # replaces it, and what it held is offered again).
        self._max_wait_ms = int(config.max_wait * 1000)
        self._cached_outputs = config.cached_outputs_bytes
        # Job outputs must fit one database value and one reply (GetJobOutputs, the commit
        # task's inputs); a task's inputs must fit one registration reply.
        self.max_task_io_bytes = config.max_message_bytes - MESSAGE_OVERHEAD_BYTES
        self.max_output_bytes = min(db.max_value_bytes, self.max_task_io_bytes)
        self._waiters = threading.BoundedSemaphore(max(1, config.grpc_workers // 2))
        # The last moment heartbeats could not be recorded (monotonic): this process's start
        # (storage was down before) or a database failure. No execution manager is declared
        # dead within a stale cutoff of it.
        self.heartbeat_gap_at = time.monotonic()
        self.pending = PendingTransitions(self._settle, self._settled, self._broken)
        # Concurrent submissions share one transaction (and one log flush).
        self._registrations: GroupCommitter[JobGroup, list[tuple[int, bool]]] = GroupCommitter(
            db.register_job_groups
        )
        # For the dashboard: execution managers' pools and work, the last recovery.
        self.em_activity = EmActivity()
        self.recovery: RecoveryReport | None = None
        self.recovered_at_ms = 0
        # Outputs of succeeded tasks of jobs submitted with durability="task".
        self.task_outputs = TaskOutputWriter(
            db,
            max_bytes=config.task_outputs_queue_bytes,
            on_written=metrics.task_outputs_written.inc,
            on_degraded=metrics.task_durability_fallbacks.inc,
        )

    # -----------------------------------------------------------------------------------------
    # Helpers
    # -----------------------------------------------------------------------------------------

    def _job_lock(self, job_id: int) -> threading.Lock:
        return self._job_locks[job_id % _LOCK_STRIPES]

    def _fatal(self, message: str) -> ServiceFailure:
        log.critical("storage must restart: %s", message)
        self._on_fatal(message)
        return ServiceFailure(message)

    def note_heartbeat_gap(self) -> None:
        self.heartbeat_gap_at = time.monotonic()

    def _transition(self, t: Transition, *, park: bool) -> JobState | None:
        """Write, then apply, a job transition (the job's lock stripe is held). Transient
        database errors are retried for `db_retry_deadline`; then the transition is parked
        until the database returns (`park`, returns None) or the caller gets UNAVAILABLE. A
        write whose commit outcome is unknown is always parked, so it is settled either way."""
        deadline = time.monotonic() + self.config.db_retry_deadline
        delays = Backoff(base=0.05, cap=1.0).delays()
        unknown = False
        while True:
            try:
                if unknown:
                    return self._settle_locked(t)
                t.persist()
                return t.apply()
            except db_errors.DbUnavailable as exc:
                self.note_heartbeat_gap()
                unknown = unknown or exc.outcome_unknown
                if time.monotonic() < deadline:
                    log.warning("%s: database unavailable, retrying: %s", t.what, exc)
                    time.sleep(next(delays))
                    continue
                if park or unknown:
                    self.pending.park(t)
                if park:
                    return None
                raise errors.Unavailable(
                    f"{t.what}: the database is unavailable"
                    + ("; the change is applied once it returns" if unknown else "")
                ) from exc

    def _settle_locked(self, t: Transition) -> JobState:
        """Settle a transition whose write may or may not have landed: read the database."""
        state = JobState(self.db.get_state(t.job_id))
        if state == t.target:
            return t.apply()
        if state == t.source:
            t.persist()
            return t.apply()
        raise ServiceFailure(
            f"{t.what}: the database has the job {state.name}, expected {t.source.name} or "
            f"{t.target.name}"
        )

    def _settle(self, t: Transition) -> JobState | None:
        """Called by `self.pending` once the database may be back."""
        with self._job_lock(t.job_id):
            try:
                current = JobState(self.cache.state(t.job_id))
            except _core.JobNotFoundError:
                current = None
            if current != t.source:
                raise ServiceFailure(
                    f"{t.what}: the cached job moved to {current} while the change waited"
                )
            try:
                return self._settle_locked(t)
            except db_errors.DbUnavailable:
                self.note_heartbeat_gap()
                raise

    def _broken(self, t: Transition, exc: BaseException) -> None:
        self._fatal(f"{t.what}: {exc}")

    def _settled(self, t: Transition, state: JobState) -> None:
        if state.is_terminal:
            self.metrics.job_terminated(state)
            self._notify_terminal()

    def _check_not_pending(self, job_id: int) -> None:
        if job_id in self.pending:
            raise errors.Unavailable(
                f"job {job_id} has a state change waiting for the database; retry later"
            )

    def _left_running(self, job_ids: Sequence[int]) -> None:
        """These jobs left RUNNING (persisted): their task outputs are no longer needed."""
        if self.task_outputs.jobs:
            self.task_outputs.forget(job_ids)

    def resume(self, report: RecoveryReport) -> None:
        """Take over what recovery found of task-durable jobs (before serving): record their
        further task outputs, and persist the completion of those every task of which had
        finished."""
        self.recovery = report
        self.recovered_at_ms = int(time.time() * 1000)
        self.task_outputs.track(report.task_durable)
        if report.completed:
            self._complete_jobs(report.completed)

    def wake_waiters(self) -> None:
        """Wake every waiting call to check again (one of their callers left)."""
        with self._terminal:
            self._terminal.notify_all()

    def _notify_terminal(self) -> None:
        with self._terminal:
            self._terminal_generation += 1
            self._terminal.notify_all()

    # -----------------------------------------------------------------------------------------
    # Resource groups
    # -----------------------------------------------------------------------------------------

    def add_resource_group(self, external_id: str, password: bytes) -> int:
        if not external_id or len(external_id) > 256:
            raise errors.InvalidArgument("resource group name must be 1 to 256 characters")
        if not password:
            raise errors.InvalidArgument("a resource group needs a non-empty password")
        if len(password) > 1024:
            raise errors.InvalidArgument("resource group password longer than 1024 bytes")
        try:
            return self.db.add_resource_group(external_id, password)
        except db_errors.DbError as exc:
            raise translate(exc) from exc

    def list_resource_groups(
        self, principal: Principal, after_id: int, limit: int
    ) -> list[ResourceGroupRow]:
        try:
            if principal.is_operator:
                return self.db.list_resource_groups(after_id, min(max(limit, 1), 10_000))
            group_id = principal.group_id or 0
            if group_id <= after_id:
                return []
            return [r for r in self.db.list_resource_groups(group_id - 1, 1) if r.id == group_id]
        except db_errors.DbError as exc:
            raise translate(exc) from exc

    def _check_access(self, principal: Principal, job_id: int) -> None:
        """A job another group owns is answered exactly like a job that does not exist."""
        if principal.is_operator:
            return
        try:
            owner = self.cache.resource_group(job_id)
        except _core.JobNotFoundError:
            try:
                owner = self.db.get_job(job_id).resource_group_id
            except db_errors.DbError as exc:
                raise translate(exc, job_id=job_id) from exc
        if not principal.may_see(owner):
            raise errors.JobNotFound(job_id=job_id)

    # -----------------------------------------------------------------------------------------
    # Job orchestration
    # -----------------------------------------------------------------------------------------

    def register_jobs(
        self,
        rg_id: int,
        graph: bytes,
        jobs: Sequence[tuple[bytes, str]],
        *,
        start: bool = False,
        durability: int = DURABILITY_UNSPECIFIED,
    ) -> list[tuple[int, JobState, bool]]:
        """Register jobs of one graph, ``(inputs, idempotency_key)`` each, in one DB transaction;
        with ``start`` they are inserted Running and their input tasks enqueued at once. The
        caller has checked that the client may submit into `rg_id`. `durability`: the wire's
        Durability enum value."""
        if not jobs:
            raise errors.InvalidArgument("no jobs to register")
        if durability not in (DURABILITY_UNSPECIFIED, DURABILITY_JOB, DURABILITY_TASK):
            raise errors.InvalidArgument(
                f"durability {durability} is unknown: 0 (unspecified: job), 1 (job) or 2 (task)"
            )
        task_durable = durability == DURABILITY_TASK
        for index, (_, key) in enumerate(jobs):
            if len(key) > 128:
                raise errors.InvalidArgument(
                    f"job {index}: idempotency key longer than 128 characters"
                )
        submissions: list[_core.Submission] = []
        with self._parsing:
            for index, (inputs, _) in enumerate(jobs):
                try:
                    submissions.append(self._submissions.parse(graph, inputs))
                except _core.CoreError as exc:
                    error = translate(exc)
                    if len(jobs) > 1 and isinstance(error, errors.InvalidArgument):
                        error = type(error)(f"job {index}: {error}")
                    raise error from exc
        try:
            registered = self._registrations.commit(
                JobGroup(
                    rg_id,
                    graph,
                    [(inputs, key or None) for inputs, key in jobs],
                    start=start,
                    task_durable=task_durable,
                )
            )
        except db_errors.DbError as exc:
            raise translate(exc) from exc
        if _trace.ENABLED:
            _trace.mark_many("storage.committed", (job_id for job_id, _ in registered))
        if task_durable:  # before any task of theirs can be offered
            self.task_outputs.track(job_id for job_id, _ in registered)
        state = JobState.RUNNING if start else JobState.READY
        results: list[tuple[int, JobState, bool]] = []
        for (job_id, deduplicated), submission in zip(registered, submissions, strict=True):
            if deduplicated:
                adopted = self._adopt(job_id, rg_id, submission)
                if task_durable and adopted not in (JobState.READY, JobState.RUNNING):
                    self._left_running([job_id])
                results.append((job_id, adopted, True))
                continue
            with self._job_lock(job_id):
                self.cache.insert(job_id, rg_id, submission)
                if start:
                    self.cache.start(job_id)
            self.metrics.jobs_registered.inc()
            results.append((job_id, state, False))
        return results

    def _adopt(self, job_id: int, rg_id: int, submission: _core.Submission) -> JobState:
        """The state of a job a retried submission found. A first attempt whose commit
        outcome was unknown may have inserted the row without caching it: cache it now."""
        with self._job_lock(job_id):
            if job_id in self.cache:
                return JobState(self.cache.state(job_id))
            state = self._db_state(job_id)
            if state in (JobState.READY, JobState.RUNNING):
                self.cache.insert(job_id, rg_id, submission)
                if state == JobState.RUNNING:
                    self.cache.start(job_id)
                log.info(
                    "cached a job whose submission outcome was unknown", extra={"job_id": job_id}
                )
            return state

    def start_job(self, principal: Principal, job_id: int) -> JobState:
        self._check_access(principal, job_id)
        with self._job_lock(job_id):
            try:
                self.cache.check_transition(job_id, _core.JOB_RUNNING)
            except _core.JobNotFoundError:
                state = self._db_state(job_id)
                raise errors.FailedPrecondition(
                    f"job {job_id} is {state.name}; only READY jobs can be started"
                ) from None
            except _core.StaleError as exc:
                raise translate(exc, job_id=job_id) from exc
            self._check_not_pending(job_id)

            def apply() -> JobState:
                self.cache.start(job_id)
                return JobState.RUNNING

            transition = Transition(
                job_id,
                f"start job {job_id}",
                JobState.READY,
                JobState.RUNNING,
                lambda: self.db.start_job(job_id),
                apply,
            )
            try:
                self._transition(transition, park=False)
            except db_errors.DbError as exc:
                raise translate(exc, job_id=job_id) from exc
        return JobState.RUNNING

    def cancel_job(self, principal: Principal, job_id: int) -> JobState:
        self._check_access(principal, job_id)
        with self._job_lock(job_id):
            if job_id not in self.cache:
                state = self._db_state(job_id)
                return self._cancel_result_for_terminal(job_id, state)
            current = JobState(self.cache.state(job_id))
            if current in (JobState.CANCELLED, JobState.CLEANUP_READY):
                return current  # cancelling again is a no-op
            if current.is_terminal:
                return self._cancel_result_for_terminal(job_id, current)
            has_cleanup = current != JobState.READY and self.cache.has_cleanup(job_id)
            target = JobState.CLEANUP_READY if has_cleanup else JobState.CANCELLED
            try:
                self.cache.check_transition(job_id, int(target))
            except _core.StaleError as exc:
                if current == JobState.COMMIT_READY:
                    raise errors.FailedPrecondition(
                        f"job {job_id} is committing its outputs and has no cleanup task, so it"
                        " can no longer be cancelled"
                    ) from exc
                raise translate(exc, job_id=job_id) from exc
            self._check_not_pending(job_id)
            transition = Transition(
                job_id,
                f"cancel job {job_id}",
                current,
                target,
                lambda: self.db.cancel_job(job_id, has_cleanup),
                lambda: self._after_running(job_id, self.cache.cancel(job_id, now_ms())),
            )
            try:
                new_state = self._transition(transition, park=False)
            except (db_errors.DbError, errors.JobNotFound) as exc:
                raise self._fatal(f"job {job_id}: cache allowed cancel, DB refused: {exc}") from exc
            assert new_state is not None  # park=False: applied or raised
        if new_state.is_terminal:
            self.metrics.job_terminated(new_state)
            self._notify_terminal()
        return new_state

    def _cancel_result_for_terminal(self, job_id: int, state: JobState) -> JobState:
        if state in (JobState.CANCELLED, JobState.CLEANUP_READY):
            return state
        if state.is_terminal:
            raise errors.FailedPrecondition(
                f"job {job_id} already {state.name}; only unfinished jobs can be cancelled"
            )
        raise self._fatal(f"job {job_id} is {state.name} in the database but not cached")

    def _db_state(self, job_id: int) -> JobState:
        try:
            return JobState(self.db.get_state(job_id))
        except db_errors.DbError as exc:
            raise translate(exc, job_id=job_id) from exc

    def get_state(self, principal: Principal, job_id: int) -> JobState:
        self._check_access(principal, job_id)
        return self._state(job_id)

    def _state(self, job_id: int) -> JobState:
        try:
            return JobState(self.cache.state(job_id))
        except _core.JobNotFoundError:
            return self._db_state(job_id)

    def get_outputs(self, principal: Principal, job_id: int) -> bytes:
        self._check_access(principal, job_id)
        return self._outputs(job_id)

    def _outputs(self, job_id: int) -> bytes:
        try:
            state = JobState(self.cache.state(job_id))
            if state == JobState.SUCCEEDED:
                return self.cache.outputs(job_id)
        except (_core.JobNotFoundError, _core.OutputsReleasedError):
            try:
                return self.db.get_outputs(job_id)
            except db_errors.UnexpectedJobState:
                state = self._db_state(job_id)
            except db_errors.DbError as exc:
                raise translate(exc, job_id=job_id) from exc
        raise errors.FailedPrecondition(
            f"job {job_id} is {state.name}; outputs are available once it has SUCCEEDED"
        )

    def get_error(self, principal: Principal, job_id: int) -> str:
        self._check_access(principal, job_id)
        return self._error(job_id)

    def _error(self, job_id: int) -> str:
        try:
            message = self.cache.error(job_id)
            state = JobState(self.cache.state(job_id))
        except _core.JobNotFoundError:
            try:
                return self.db.get_error(job_id)
            except db_errors.UnexpectedJobState:
                state = self._db_state(job_id)
                message = None
            except db_errors.DbError as exc:
                raise translate(exc, job_id=job_id) from exc
        if state == JobState.FAILED and message is not None:
            return message
        if state == JobState.FAILED:
            return self.db.get_error(job_id)
        raise errors.FailedPrecondition(
            f"job {job_id} is {state.name}; an error message exists only for FAILED jobs"
        )

    def wait_job(
        self,
        principal: Principal,
        job_id: int,
        timeout_ms: int,
        *,
        active: Callable[[], bool] = lambda: True,
    ) -> JobState:
        """Block until the job is terminal or the (capped) timeout passes."""
        return self.wait_jobs(principal, [job_id], timeout_ms, active=active)[0]

    def wait_jobs(
        self,
        principal: Principal,
        job_ids: Sequence[int],
        timeout_ms: int,
        *,
        any_terminal: bool = False,
        active: Callable[[], bool] = lambda: True,
    ) -> list[JobState]:
        """Block until every job (with `any_terminal`: one of them) is terminal or the (capped)
        timeout passes, or the caller is gone (`active()` false: a cancelled call, woken by
        `wake_waiters`); the states in the order given. An unknown job id is `JobNotFound`.

        Each waiting call holds a gRPC worker thread, so at most half of them may wait long;
        beyond that a call waits briefly and the client simply calls again."""
        if len(job_ids) > MAX_WAIT_JOBS:
            raise errors.InvalidArgument(
                f"{len(job_ids)} jobs in one wait; at most {MAX_WAIT_JOBS} are allowed"
            )
        pending = list(dict.fromkeys(job_ids))
        for job_id in pending:
            self._check_access(principal, job_id)
        long_wait = self._waiters.acquire(blocking=False)
        cap_ms = self._max_wait_ms if long_wait else 200
        states: dict[int, JobState] = {}
        try:
            deadline = time.monotonic() + min(timeout_ms, cap_ms) / 1000
            while True:
                # The generation read before the state checks tells whether a job ended in
                # between; without it such a notification would be missed.
                with self._terminal:
                    generation = self._terminal_generation
                for job_id in pending:
                    states[job_id] = self._state(job_id)
                ended = any(states[j].is_terminal for j in pending)
                pending = [j for j in pending if not states[j].is_terminal]
                remaining = deadline - time.monotonic()
                if not pending or (any_terminal and ended) or remaining <= 0 or not active():
                    return [states[j] for j in job_ids]
                with self._terminal:
                    if self._terminal_generation == generation:
                        self._terminal.wait(min(remaining, 1.0))  # 1 s: a safety net only
        finally:
            if long_wait:
                self._waiters.release()

    def progress(self, principal: Principal, job_id: int, max_explanations: int) -> JobProgress:
        self._check_access(principal, job_id)
        try:
            state = JobState(self.cache.state(job_id))
            counts = self.cache.progress(job_id)
            total = self.cache.total_tasks(job_id)
            waiting = self.cache.explain(job_id, max_explanations) if max_explanations else []
            return JobProgress(state, total, counts, waiting, live=True)
        except _core.JobNotFoundError:
            state = self._db_state(job_id)
            return JobProgress(state, 0, (0, 0, 0, 0, 0, 0), [], live=False)

    def list_jobs(
        self,
        principal: Principal,
        states: Sequence[int],
        limit: int,
        before_job_id: int,
        resource_group_id: int = 0,
    ) -> list[JobRow]:
        """Jobs newest first; a resource group lists only its own jobs, the operator every
        group's (or one group's, with `resource_group_id`)."""
        for state in states:
            if state not in _JOB_STATE_VALUES:
                raise errors.InvalidArgument(
                    f"unknown job state {state} in states; expected values in 1..7"
                )
        if not principal.is_operator:
            if resource_group_id and resource_group_id != principal.group_id:
                raise errors.PermissionDenied(
                    f"{principal} cannot list the jobs of resource group {resource_group_id}"
                )
            resource_group_id = principal.group_id or 0
        try:
            return list(
                self.db.list_jobs(
                    list(states) or None,
                    min(max(limit, 1), 10_000),
                    before_job_id or None,
                    resource_group_id=resource_group_id or None,
                )
            )
        except db_errors.DbError as exc:
            raise translate(exc) from exc

    # -----------------------------------------------------------------------------------------
    # Task instances (hot path)
    # -----------------------------------------------------------------------------------------

    def check_session(self, session_id: int) -> None:
        if session_id != self.session_id:
            raise errors.NotFound(f"stale session; current storage session is {self.session_id}")

    def _check_em(self, em_id: int) -> None:
        with self._alive_lock:
            if em_id in self._alive_ems:
                return
        try:
            alive = self.db.is_execution_manager_alive(em_id)
        except db_errors.DbError as exc:
            raise translate(exc) from exc
        if not alive:
            raise errors.FailedPrecondition(
                f"execution manager {em_id} was declared dead; it must register again"
            )
        with self._alive_lock:
            self._alive_ems.add(em_id)

    def register_instances(
        self, em_id: int, session_id: int, items: Sequence[tuple[int, int]]
    ) -> list[_core.ExecutionContext | errors.OrbweaverError]:
        self.check_session(session_id)
        self._check_em(em_id)
        # Each task's inputs must fit the reply; all of them together fit the reply budget.
        limit = self.max_task_io_bytes
        results = self.cache.register_batch(
            items,
            em_id,
            now_ms(),
            max_task_io_bytes=limit,
            max_total_io_bytes=min(limit, self.config.registration_reply_bytes),
        )
        out: list[_core.ExecutionContext | errors.OrbweaverError] = []
        registered = 0
        for (job_id, _task), result in zip(items, results, strict=True):
            if isinstance(result, _core.TaskInputsTooLargeError):
                # It can never be delivered: its job fails with the reason.
                self._fail_undeliverable(job_id, str(result))
                out.append(errors.FailedPrecondition(f"{result}; the job failed"))
            elif isinstance(result, _core.LimitExceededError) and result.kind == "ReplyFull":
                out.append(errors.Unavailable(str(result)))
            elif isinstance(result, _core.CoreError):
                out.append(self._task_error(result, job_id))
            else:
                registered += 1
                out.append(result)
        self.metrics.instances_registered.inc(registered)
        self.em_activity.registered(em_id, registered)
        if _trace.ENABLED:
            _trace.mark_many("storage.instances", (job_id for job_id, _ in items))
        return out

    def take_ready_tasks(
        self,
        em_id: int,
        session_id: int,
        max_items: int,
        wait_ms: int,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> list[_core.ExecutionContext]:
        """An execution manager's long poll for work: the next ready regular tasks (at most
        `max_items`), served before the scheduler's poll while the scheduler holds nothing it is
        ordering, and registered for it, as `register_instances` would. Entries that cannot be
        registered, or whose caller went away while it waited (`still_wanted()` false), are
        offered again at once."""
        self.check_session(session_id)
        self._check_em(em_id)
        if max_items <= 0:
            return []
        entries = self.cache.poll_first(
            min(max_items, _MAX_CONTINUED), min(wait_ms, self._max_wait_ms), now_ms()
        )
        if not entries:
            return []
        if _trace.ENABLED:
            _trace.mark_many("storage.offered", (job_id for _, job_id, _ in entries))
        if not still_wanted():
            self.cache.give_back(entries)
            return []
        try:
            results = self.register_instances(
                em_id, session_id, [(job_id, task_id) for _, job_id, task_id in entries]
            )
        except BaseException:
            self.cache.give_back(entries)
            raise
        taken: list[_core.ExecutionContext] = []
        left: list[tuple[int, int, int]] = []
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, _core.ExecutionContext):
                taken.append(result)
            else:
                left.append(entry)
        if left:
            self.cache.give_back(left)
        self.metrics.instances_taken.inc(len(taken))
        return taken

    def _fail_undeliverable(self, job_id: int, message: str) -> None:
        with self._job_lock(job_id):
            try:
                self.cache.check_transition(job_id, int(JobState.FAILED))
            except _core.CoreError:
                return  # it ended meanwhile (or cannot fail from where it is)
            if job_id in self.pending:
                return
            state = self._fail_locked(job_id, message)
        if state is not None:
            self.metrics.job_terminated(state)
            self._notify_terminal()

    def _task_error(self, exc: _core.CoreError, job_id: int) -> errors.OrbweaverError:
        err = translate(exc, job_id=job_id, task_rpc=True)
        if isinstance(err, ServiceFailure):
            raise self._fatal(str(err))
        return err

    def report_outcomes(
        self, em_id: int, session_id: int, items: Sequence[tuple[int, int, int, bytes | str]]
    ) -> list[errors.OrbweaverError | None]:
        """Apply reported successes (`bytes` outputs) and failures (`str` message)."""
        return self.report_and_continue(em_id, session_id, items, 0)[0]

    def report_and_continue(
        self,
        em_id: int,
        session_id: int,
        items: Sequence[tuple[int, int, int, bytes | str]],
        accept: int,
    ) -> tuple[list[errors.OrbweaverError | None], list[_core.ExecutionContext]]:
        """`report_outcomes`; the reporting EM would start `accept` tasks at once, so while
        nothing else waits to be scheduled, up to that many of the tasks these outcomes made
        ready are registered for it (the second value) rather than offered to the scheduler:
        the same registration, limits and accounting as `register_instances`, one round trip
        through the scheduler less per step of a graph."""
        self.check_session(session_id)
        if _trace.ENABLED:
            _trace.mark_many("storage.report", (item[0] for item in items))
        if accept > 0:
            try:
                self._check_em(em_id)
            except errors.FailedPrecondition:
                accept = 0  # declared dead: its outcomes count, nothing more goes to it
        continued: list[_core.ExecutionContext] = []
        if accept > 0:
            limit = self.max_task_io_bytes
            results, continued = self.cache.report_batch_continuing(
                items,
                em_id,
                min(accept, _MAX_CONTINUED),
                now_ms(),
                max_task_io_bytes=limit,
                max_total_io_bytes=min(limit, self.config.registration_reply_bytes),
            )
        else:
            results = self.cache.report_batch(items)
        out: list[errors.OrbweaverError | None] = []
        succeeded = failed = 0
        completed: list[_core.Outcome] = []
        durable = self.task_outputs.jobs  # empty unless a job opted into durability="task"
        stored: list[tuple[int, int, bytes]] = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, _core.CoreError):
                out.append(self._task_error(result, item[0]))
                continue
            outputs = item[3]
            if isinstance(outputs, str):
                failed += 1
            else:
                succeeded += 1
                # A regular task's outputs the cache kept (a refused one comes with JobFailed).
                if (
                    durable
                    and item[0] in durable
                    and item[1] >= 0
                    and (result is None or result.kind == _core.OUTCOME_JOB_COMPLETED)
                ):
                    stored.append((item[0], item[1], outputs))
            if result is not None and result.kind == _core.OUTCOME_JOB_COMPLETED:
                completed.append(result)
            elif result is not None:
                self._apply_outcome(result)
            out.append(None)
        if stored:  # queued before the completions below, which delete them again
            self.task_outputs.record(stored)
        if completed:
            self._complete_jobs(completed)
        self.metrics.task_successes.inc(succeeded)
        self.metrics.task_failures.inc(failed)
        self.em_activity.reported(em_id, len(items))
        if continued:
            self.metrics.instances_registered.inc(len(continued))
            self.metrics.instances_continued.inc(len(continued))
            self.em_activity.registered(em_id, len(continued))
            if _trace.ENABLED:
                _trace.mark_many("storage.instances", (ctx.job_id for ctx in continued))
        return out, continued

    def _complete_jobs(self, outcomes: list[_core.Outcome]) -> None:
        """Persist the outputs of every job the batch completed in one transaction, then move
        their cache entries on. The jobs' lock stripes are taken in order (no deadlock: every
        other path holds one stripe at a time)."""
        stripes = sorted({job_id % _LOCK_STRIPES for job_id in (o.job_id for o in outcomes)})
        with contextlib.ExitStack() as held:
            for stripe in stripes:
                held.enter_context(self._job_locks[stripe])
            live = []
            for outcome in outcomes:
                try:
                    running = self.cache.state(outcome.job_id) == JobState.RUNNING
                except _core.JobNotFoundError:
                    continue  # evicted: it was cancelled or failed meanwhile
                # A job with a transition waiting for the database (a failure) keeps that one.
                if running and outcome.job_id not in self.pending:
                    live.append(outcome)
            # Outputs that could never be stored or sent back fail their job instead.
            limit = self.max_output_bytes
            states: list[JobState | None] = []
            try:
                for o in [o for o in live if len(o.outputs or b"") > limit]:
                    states.append(
                        self._fail_locked(
                            o.job_id,
                            f"the job outputs are {len(o.outputs or b'')} bytes, above the limit "
                            f"of {limit} bytes (what the database stores in one value and a reply"
                            " carries)",
                        )
                    )
                live = [o for o in live if len(o.outputs or b"") <= limit]
                states += self._commit_outputs(live)
            except (db_errors.DbError, errors.JobNotFound) as exc:
                raise self._fatal(f"jobs completing: cache and database disagree: {exc}") from exc
            except _core.CoreError as exc:
                raise self._fatal(f"jobs completing: {exc}") from exc
        if _trace.ENABLED:
            _trace.mark_many("storage.completed", (o.job_id for o in live))
        terminal = [state for state in states if state is not None and state.is_terminal]
        for state in terminal:
            self.metrics.job_terminated(state)
        if terminal:
            self._notify_terminal()

    def _completion(self, o: _core.Outcome) -> Transition:
        outputs = o.outputs or b""
        return Transition(
            o.job_id,
            f"complete job {o.job_id}",
            JobState.RUNNING,
            JobState.COMMIT_READY if o.has_commit else JobState.SUCCEEDED,
            lambda: self.db.commit_outputs(o.job_id, outputs, o.has_commit),
            lambda: self._after_running(o.job_id, self.cache.complete(o.job_id, now_ms())),
        )

    def _after_running(self, job_id: int, state: int) -> JobState:
        """The cache moved the job out of RUNNING (into `state`)."""
        self._left_running([job_id])
        return JobState(state)

    def _commit_outputs(self, live: list[_core.Outcome]) -> list[JobState | None]:
        """Complete the jobs of `live` (their stripes held): one transaction for all of them;
        if the database is away, each job's completion waits for it on its own."""
        if not live:
            return []
        rows = [(o.job_id, o.outputs or b"", o.has_commit) for o in live]
        deadline = time.monotonic() + self.config.db_retry_deadline
        delays = Backoff(base=0.05, cap=1.0).delays()
        while True:
            try:
                self.db.commit_outputs_many(rows)
            except db_errors.DbUnavailable as exc:
                self.note_heartbeat_gap()
                if not exc.outcome_unknown and time.monotonic() < deadline:
                    time.sleep(next(delays))
                    continue
                # One transition per job: each is settled (read back, written or applied) alone.
                for o in live:
                    self.pending.park(self._completion(o))
                return [None] * len(live)
            now = now_ms()
            states: list[JobState | None] = [
                JobState(self.cache.complete(o.job_id, now)) for o in live
            ]
            self._left_running([o.job_id for o in live])
            for o, state in zip(live, states, strict=True):
                # Large outputs stay in the database only; smaller ones answer waits from memory.
                if state == JobState.SUCCEEDED and len(o.outputs or b"") > self._cached_outputs:
                    self.cache.drop_outputs(o.job_id)
            return states

    def _fail_locked(self, job_id: int, message: str) -> JobState | None:
        """Persist, then apply, the failure of a cached job (its lock stripe is held); None
        when it waits for the database."""
        message = clip_message(message)
        source = JobState(self.cache.state(job_id))

        def apply() -> JobState:
            self.cache.fail(job_id, message, now_ms())
            return self._after_running(job_id, JobState.FAILED)

        transition = Transition(
            job_id,
            f"fail job {job_id}",
            source,
            JobState.FAILED,
            lambda: self.db.fail_job(job_id, message),
            apply,
        )
        return self._transition(transition, park=True)

    def _apply_outcome(self, outcome: _core.Outcome) -> None:
        """Persist and apply the job-level consequence of a report (a completed job goes
        through :meth:`_complete_jobs`)."""
        job_id = outcome.job_id
        kind = outcome.kind
        with self._job_lock(job_id):
            try:
                current = JobState(self.cache.state(job_id))
            except _core.JobNotFoundError:
                return
            if job_id in self.pending:
                return  # the job's first decided transition waits for the database
            new_state: JobState | None
            try:
                if kind == _core.OUTCOME_JOB_FAILED:
                    if current.is_terminal:
                        return
                    new_state = self._fail_locked(job_id, outcome.message or "task failed")
                elif kind in (_core.OUTCOME_COMMIT_SUCCEEDED, _core.OUTCOME_CLEANUP_SUCCEEDED):
                    expected = (
                        JobState.COMMIT_READY
                        if kind == _core.OUTCOME_COMMIT_SUCCEEDED
                        else JobState.CLEANUP_READY
                    )
                    if current != expected:
                        return
                    final = (
                        JobState.SUCCEEDED
                        if kind == _core.OUTCOME_COMMIT_SUCCEEDED
                        else JobState.CANCELLED
                    )
                    new_state = self._transition(
                        Transition(
                            job_id,
                            f"finish job {job_id}",
                            current,
                            final,
                            lambda: self.db.set_state(job_id, int(final)),
                            lambda: JobState(self.cache.finish(job_id, now_ms())),
                        ),
                        park=True,
                    )
                else:
                    raise self._fatal(f"unknown outcome kind {kind} for job {job_id}")
            except (db_errors.DbError, errors.JobNotFound) as exc:
                raise self._fatal(f"job {job_id}: cache and database disagree: {exc}") from exc
            except _core.CoreError as exc:
                raise self._fatal(f"job {job_id}: {exc}") from exc
        if new_state is not None and new_state.is_terminal:
            self.metrics.job_terminated(new_state)
            self._notify_terminal()

    # -----------------------------------------------------------------------------------------
    # Inbound queue
    # -----------------------------------------------------------------------------------------

    def _check_poller(self, scheduler_id: int) -> None:
        """Only the registered scheduler takes ready entries."""
        current = self._scheduler_id
        if not scheduler_id:
            raise errors.InvalidArgument(
                "scheduler_id is required: poll with the id RegisterScheduler returned"
            )
        if scheduler_id != current:
            raise errors.FailedPrecondition(
                f"scheduler {scheduler_id} is not the registered scheduler"
                + (f" (scheduler {current} is)" if current else " (none is registered)")
                + "; only the registered scheduler may poll"
            )

    def poll(
        self, scheduler_id: int, lane: int, max_items: int, wait_ms: int
    ) -> list[tuple[int, int, int]]:
        self._check_poller(scheduler_id)
        return self.cache.poll(
            lane, min(max_items, 1 << 20), min(wait_ms, self._max_wait_ms), now_ms()
        )

    def poll_all(
        self, scheduler_id: int, max_tasks: int, max_commit: int, max_cleanup: int, wait_ms: int
    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        self._check_poller(scheduler_id)
        cap = 1 << 20
        polled = self.cache.poll_all(
            min(max_tasks, cap),
            min(max_commit, cap),
            min(max_cleanup, cap),
            min(wait_ms, self._max_wait_ms),
            now_ms(),
        )
        if _trace.ENABLED:
            _trace.mark_many("storage.polled", (job for lane in polled for _, job, _ in lane))
        return polled

    # -----------------------------------------------------------------------------------------
    # Execution managers and schedulers
    # -----------------------------------------------------------------------------------------

    def register_execution_manager(self, ip_address: str, processes: int = 0) -> int:
        # The column holds the longest textual IPv6 address; a scope id can make it longer.
        if len(ip_address) > 45:
            raise errors.InvalidArgument(
                f"IP address of {len(ip_address)} characters; at most 45 are allowed"
            )
        try:
            ipaddress.ip_address(ip_address)
        except ValueError:
            raise errors.InvalidArgument(f"not an IP address: {ip_address!r}") from None
        try:
            em_id = self.db.register_execution_manager(ip_address)
        except db_errors.DbError as exc:
            raise translate(exc) from exc
        with self._alive_lock:
            self._alive_ems.add(em_id)
        self.em_activity.joined(em_id, processes)
        log.info("execution manager registered", extra={"em_id": em_id, "ip": ip_address})
        return em_id

    def heartbeat(self, em_id: int, processes: int = 0) -> None:
        """A live EM's heartbeat; `processes` (when given) is its executor-pool size, which a
        storage that restarted or took over learns only this way."""
        try:
            self.db.update_execution_manager_heartbeat(em_id)
        except db_errors.DbUnavailable as exc:
            self.note_heartbeat_gap()
            raise translate(exc) from exc
        except db_errors.DbError as exc:
            raise translate(exc) from exc
        if processes > 0:
            self.em_activity.joined(em_id, processes)

    def reconcile_instances(self, em_id: int, held: Sequence[int]) -> int:
        """A live EM holds the instances `held` (of this session): any other instance
        registered for it more than `_LOST_INSTANCE_GRACE_MS` ago never reached it (the reply
        that carried it, a registration's or a report's, was lost) and its task is offered
        again instead of waiting for the EM to die. Returns how many."""
        # (The clock is monotonic: it may be younger than the grace on a machine just booted.)
        cutoff = max(0, now_ms() - _LOST_INSTANCE_GRACE_MS)
        lost = self.cache.reconcile_em(em_id, list(held), cutoff)
        if lost:
            self.metrics.instances_lost.inc(lost)
            log.warning(
                "task instances registered for an execution manager never reached it; "
                "offered again",
                extra={"em_id": em_id, "count": lost},
            )
        return lost

    def mark_dead(self, em_ids: Sequence[int]) -> None:
        with self._alive_lock:
            self._alive_ems.difference_update(em_ids)
        self.em_activity.dead(set(em_ids))

    def register_scheduler(self, host: str, port: int) -> int:
        if not host:
            raise errors.InvalidArgument("scheduler host is empty")
        if len(host) > 255:
            raise errors.InvalidArgument(
                f"scheduler host of {len(host)} characters; at most 255 are allowed"
            )
        if not _HOST_RE.fullmatch(host):
            raise errors.InvalidArgument(
                f"scheduler host {host[:64]!r} is neither a host name nor an IP address"
            )
        if not 0 < port <= 65535:
            raise errors.InvalidArgument(f"scheduler port {port} is out of range")
        with self._scheduler_lock:
            try:
                scheduler_id = self.db.register_scheduler(host, port)
            except db_errors.DbError as exc:
                raise translate(exc) from exc
            self._scheduler_id = scheduler_id
            # The scheduler this one replaces (a crashed one, or the one registered before a
            # storage restart) may have polled ready work it never handed to an execution
            # manager: offer again every entry polled and not registered since, at once rather
            # than after the visibility timeout.
            requeued = self.cache.requeue_expired(now_ms(), 0)
        log.info(
            "scheduler registered",
            extra={"scheduler_id": scheduler_id, "address": f"{host}:{port}", "requeued": requeued},
        )
        return scheduler_id

    def _registered_scheduler(self) -> int | None:
        try:
            rows = self.db.get_schedulers()
        except db_errors.DbError as exc:
            raise translate(exc) from exc
        return max((row.id for row in rows), default=None)

    def get_schedulers(self) -> list[tuple[int, str, int]]:
        try:
            return [(s.id, s.host, s.port) for s in self.db.get_schedulers()]
        except db_errors.DbError as exc:
            raise translate(exc) from exc
