"""The DB-layer protocol shared by the SQLite and MariaDB implementations, and its row types."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .states import DbJobState

__all__ = [
    "Database",
    "ExecutionManagerRow",
    "JobGroup",
    "JobRow",
    "Lease",
    "RecoverableJobRow",
    "ResourceGroupRow",
    "SchedulerRow",
]


@dataclass(frozen=True, slots=True)
class JobRow:
    """Job-level facts (no blobs). Timestamps are milliseconds since the Unix epoch."""

    id: int
    resource_group_id: int
    state: DbJobState
    created_at_ms: int
    ended_at_ms: int | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class RecoverableJobRow:
    """Everything needed to rebuild a non-terminal job's cache entry after a restart."""

    id: int
    resource_group_id: int
    state: DbJobState
    compressed_graph: bytes
    compressed_inputs: bytes
    serialized_outputs: bytes | None


@dataclass(frozen=True, slots=True)
class ResourceGroupRow:
    id: int
    external_id: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class ExecutionManagerRow:
    """An Alive execution manager; the heartbeat in milliseconds since the Unix epoch."""

    id: int
    ip_address: str
    last_heartbeat_at_ms: int


@dataclass(frozen=True, slots=True)
class SchedulerRow:
    id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class JobGroup:
    """One submission as `Database.register_jobs` takes it (for `register_job_groups`)."""

    resource_group_id: int
    compressed_graph: bytes
    jobs: Sequence[tuple[bytes, str | None]]
    start: bool = False
    task_durable: bool = False


@dataclass(frozen=True, slots=True)
class Lease:
    """The storage leadership lease as the database has it (see `Database.campaign`)."""

    session_id: int
    """The session that holds, or last held, the lease (0: nobody ever did)."""
    holder: str
    """The holding process's name (unique per process)."""
    address: str
    """Where the holder serves clients (`host:port`)."""
    remaining_ms: int
    """Lease time left by the database's clock; <= 0 once expired."""

    @property
    def live(self) -> bool:
        return self.session_id != 0 and self.remaining_ms > 0


@runtime_checkable
class Database(Protocol):
    """Persistence of job-level facts, resource groups, EM liveness, schedulers and sessions.

    Every method is synchronous and thread-safe. Every job state change is one transaction that
    locks the job row, raises :class:`~.errors.JobNotFound` for a missing row, validates the
    transition (:func:`~.states.is_valid_transition`) and updates the row. Transient failures raise
    :class:`~.errors.DbUnavailable`; everything else raised is a definite answer.
    """

    @property
    def max_value_bytes(self) -> int:
        """The largest value (blob or text) one statement may carry; bigger ones are refused
        with ``ValueTooLarge`` before anything is sent."""
        ...

    @property
    def session_id(self) -> int:
        """This process's storage session: strictly increasing across sessions of one database;
        0 before one is opened (`open_database(..., lead=False)` until `campaign` wins). Every
        write transaction of a session checks that it still leads (raises `Fenced` otherwise)."""
        ...

    # -- leadership: one storage leads (holds the lease), the others stand by ------------------

    deposed_by: int | None
    """The session that fenced one of our writes, once one did (None: never)."""

    def campaign(
        self,
        holder: str,
        address: str,
        lease_sec: float,
        *,
        new_session: bool = False,
        take_from: str | None = None,
    ) -> Lease:
        """Take the lease if it is free, expired or already ours; return it as it stands after
        the attempt (we lead iff its `holder` is ours; then `session_id` is our session).
        Taking it from another (or a new) holder opens a new session and fences every later
        write of the old one; a lease we held and nobody took since is extended, keeping the
        session, unless `new_session` (our old term is gone: its instance ids must not be
        mistaken for the new term's). A live lease is taken too when its holder is `take_from`
        (a holder known to be dead: nobody waits for its lease to run out)."""
        ...

    def renew_lease(self, lease_sec: float) -> bool:
        """Extend our lease; False when another session took it (we were deposed)."""
        ...

    def release_lease(self) -> None:
        """Let the lease expire now (a clean stop), so a standby takes over at once."""
        ...

    def current_lease(self) -> Lease:
        """The lease as it stands (a read)."""
        ...

    def close(self) -> None:
        """Release the connection(s); idempotent. Later calls raise ``DbError``."""
        ...

    def __enter__(self) -> Database: ...

    def __exit__(self, *exc_info: object) -> None: ...

    # -- jobs -----------------------------------------------------------------------------------

    def register_job(
        self,
        resource_group_id: int,
        compressed_graph: bytes,
        compressed_inputs: bytes,
        idempotency_key: str | None = None,
        *,
        start: bool = False,
        task_durable: bool = False,
    ) -> tuple[int, bool]:
        """Insert a Ready job (Running with ``start``: one transaction, not insert then start);
        returns ``(job_id, deduplicated)``. ``task_durable``: the job was submitted with
        durability "task" (recorded with it, see :meth:`save_task_outputs`).

        With an ``idempotency_key`` that already exists for the resource group, nothing is inserted
        and the existing job's id is returned with ``deduplicated=True``; if that job was submitted
        with a different graph, inputs or durability => ``IdempotencyKeyReused``. Unknown resource
        group => ``ResourceGroupNotFound``.
        """
        ...

    def register_jobs(
        self,
        resource_group_id: int,
        compressed_graph: bytes,
        jobs: Sequence[tuple[bytes, str | None]],
        *,
        start: bool = False,
        task_durable: bool = False,
    ) -> list[tuple[int, bool]]:
        """:meth:`register_job` for several jobs of one graph, ``(compressed_inputs,
        idempotency_key)`` each, in one transaction; results in the order given."""
        ...

    def register_job_groups(
        self, groups: Sequence[JobGroup]
    ) -> list[list[tuple[int, bool]] | Exception]:
        """Group commit of several `register_jobs` submissions in one transaction; each gets
        its own result or the error `register_jobs` would have raised for it. A transient
        failure of the shared transaction is raised."""
        ...

    def start_job(self, job_id: int) -> None:
        """Ready -> Running, else ``UnexpectedJobState(current, [Ready])``."""
        ...

    def commit_outputs(self, job_id: int, serialized_outputs: bytes, has_commit: bool) -> int:
        """Running -> CommitReady (``has_commit``) or Succeeded; stores the outputs.

        Returns the new state; a forbidden transition => ``InvalidJobStateTransition``.
        """
        ...

    def commit_outputs_many(self, jobs: Sequence[tuple[int, bytes, bool]]) -> list[int]:
        """:meth:`commit_outputs` for several ``(job_id, serialized_outputs, has_commit)`` in one
        transaction, all or nothing; returns the new states in the order given."""
        ...

    def set_state(self, job_id: int, state: int) -> None:
        """Validated transition to ``state`` (``ended_at`` set when terminal).

        Failed is reached through :meth:`fail_job` only (it needs a message).
        """
        ...

    def cancel_job(self, job_id: int, has_cleanup: bool) -> int:
        """Cancel: CleanupReady when ``has_cleanup`` and the job is Running or CommitReady, else
        Cancelled; validated. Returns the new state."""
        ...

    def fail_job(self, job_id: int, message: str) -> None:
        """Validated transition to Failed with ``message``."""
        ...

    def fail_unrecoverable(self, job_id: int, reason: str) -> None:
        """Recovery only: force Failed from any non-terminal state (even Ready) with ``reason``."""
        ...

    def get_state(self, job_id: int) -> DbJobState: ...

    def get_outputs(self, job_id: int) -> bytes:
        """Outputs of a Succeeded job (else ``UnexpectedJobState``)."""
        ...

    def get_error(self, job_id: int) -> str:
        """Error message of a Failed job (else ``UnexpectedJobState``)."""
        ...

    def get_job(self, job_id: int) -> JobRow: ...

    def list_jobs(
        self,
        states: Sequence[int] | None = None,
        limit: int = 100,
        before_job_id: int | None = None,
        *,
        resource_group_id: int | None = None,
    ) -> list[JobRow]:
        """Jobs newest first, optionally filtered; page with ``before_job_id`` = last id seen."""
        ...

    def count_jobs_by_state(self, resource_group_id: int | None = None) -> dict[int, int]:
        """Number of jobs per state, keyed by ``DbJobState`` (every state present, zeros too);
        of one resource group's jobs with `resource_group_id`."""
        ...

    def get_job_graph(self, job_id: int) -> bytes:
        """The job's compressed task graph as submitted (``JobNotFound`` for a missing job)."""
        ...

    def recoverable_jobs(self, after_job_id: int, limit: int) -> list[RecoverableJobRow]:
        """One page of non-terminal jobs with ``id > after_job_id``, ordered by id."""
        ...

    def delete_expired_terminated_jobs(self, retention_sec: float) -> int:
        """Delete terminal jobs that ended more than ``retention_sec`` ago; returns the count."""
        ...

    # -- task-level durability ------------------------------------------------------------------

    def save_task_outputs(
        self, outputs: Sequence[tuple[int, int, bytes]], ended_jobs: Sequence[int] = ()
    ) -> int:
        """One transaction: store ``(job_id, task_index, outputs wire frame)`` of succeeded tasks
        of task-durable jobs (replacing an earlier row of the same task), skipping jobs that are
        not Running (any more) and the ``ended_jobs``, whose stored task outputs are deleted.
        Returns how many rows were written. A value over :attr:`max_value_bytes` =>
        ``ValueTooLarge`` before anything is sent."""
        ...

    def task_durable_jobs(self, job_ids: Sequence[int]) -> set[int]:
        """The jobs among ``job_ids`` that were registered with ``task_durable``."""
        ...

    def task_outputs(self, job_id: int) -> list[tuple[int, bytes]]:
        """The stored ``(task_index, outputs wire frame)`` of a job, by task index."""
        ...

    # -- resource groups ------------------------------------------------------------------------

    def add_resource_group(self, external_id: str, password: bytes) -> int:
        """Create a resource group storing a salted scrypt hash of ``password``."""
        ...

    def list_resource_groups(self, after_id: int = 0, limit: int = 1000) -> list[ResourceGroupRow]:
        """Resource groups with ``id > after_id``, by id (no password records)."""
        ...

    def verify_resource_group(
        self,
        password: bytes,
        *,
        resource_group_id: int | None = None,
        external_id: str | None = None,
    ) -> tuple[int, str]:
        """Check ``password`` for the group named by exactly one of id / external id.

        Returns ``(resource_group_id, external_id)``; missing => ``ResourceGroupNotFound``,
        mismatch => ``InvalidPassword``.
        """
        ...

    # -- execution managers ---------------------------------------------------------------------

    def register_execution_manager(self, ip_address: str) -> int: ...

    def update_execution_manager_heartbeat(self, execution_manager_id: int) -> None: ...

    def is_execution_manager_alive(self, execution_manager_id: int) -> bool: ...

    def alive_execution_managers(self) -> list[ExecutionManagerRow]:
        """Execution managers in state Alive, by id."""
        ...

    def get_dead_execution_managers(
        self, stale_cutoff_sec: float, *, deadline: float | None = None
    ) -> list[int]:
        """Mark Alive EMs without a heartbeat for ``stale_cutoff_sec`` Dead; each is returned by
        exactly one call. Past `deadline` (``time.monotonic()``) when the stale ones are known,
        none is marked: a database that stalled held their heartbeats up too."""
        ...

    # -- schedulers -----------------------------------------------------------------------------

    def register_scheduler(self, host: str, port: int) -> int:
        """Replace the registered scheduler (there is at most one); returns its id."""
        ...

    def get_schedulers(self) -> list[SchedulerRow]: ...

    def is_scheduler_registered(self, scheduler_id: int) -> bool: ...
