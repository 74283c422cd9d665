"""Errors raised by the DB layer.

Every error derives from :class:`DbError`, except `JobNotFound`, which is the public
`orbweaver.errors.JobNotFound` itself (one class for one condition, whichever layer finds it).
:class:`DbUnavailable` is the only *transient* one: the database could not be reached, a lock
could not be taken in time, or the outcome of a commit is unknown; callers retry it with
backoff. Everything else is a definite answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from orbweaver.errors import JobNotFound

from .states import DbJobState

__all__ = [
    "CorruptedDbState",
    "DbError",
    "DbUnavailable",
    "ExecutionManagerAlreadyDead",
    "Fenced",
    "IdempotencyKeyReused",
    "IllegalExecutionManagerId",
    "InvalidJobStateTransition",
    "InvalidPassword",
    "JobNotFound",
    "ResourceGroupAlreadyExists",
    "ResourceGroupNotFound",
    "UnexpectedJobState",
    "ValueTooLarge",
]


def _state_name(state: int) -> str:
    try:
        return DbJobState(state).db_name
    except ValueError:
        return f"<state {state}>"


def _job_prefix(job_id: int | None) -> str:
    return f"job {job_id}: " if job_id is not None else ""


class DbError(Exception):
    """Base class of every DB-layer error."""


class DbUnavailable(DbError):
    """A transient failure: connection lost, deadlock or lock-wait timeout, database busy.

    ``outcome_unknown`` is true when the failure happened while committing a write, so the write
    may or may not have been applied.
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class Fenced(DbError):
    """A write of a storage session that no longer leads: another storage took the lease and
    bumped the session since. The write was rolled back; the caller must step down."""

    def __init__(self, session_id: int, current: int) -> None:
        super().__init__(
            f"storage session {session_id} was superseded by session {current} (another "
            "storage leads); the write was refused"
        )
        self.session_id = session_id
        self.current = current


class ValueTooLarge(DbError):
    """A value cannot be stored: the statement carrying it would exceed what the database
    accepts in one statement (MariaDB's ``max_allowed_packet``). Nothing was written."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(
            f"{what} of {size} bytes exceeds the database's limit of {limit} bytes per value"
        )


class CorruptedDbState(DbError):
    """A row violates an invariant the DB layer maintains (e.g. Succeeded without outputs)."""


class ResourceGroupNotFound(DbError):
    def __init__(
        self, *, resource_group_id: int | None = None, external_id: str | None = None
    ) -> None:
        self.resource_group_id = resource_group_id
        self.external_id = external_id
        if external_id is not None:
            what = f"resource group {external_id!r}"
        elif resource_group_id is not None:
            what = f"resource group {resource_group_id}"
        else:
            what = "resource group"
        super().__init__(f"{what} not found")


class ResourceGroupAlreadyExists(DbError):
    def __init__(self, external_id: str) -> None:
        self.external_id = external_id
        super().__init__(f"resource group {external_id!r} already exists")


class InvalidPassword(DbError):
    def __init__(self, resource_group_id: int) -> None:
        self.resource_group_id = resource_group_id
        super().__init__(f"wrong password for resource group {resource_group_id}")


class IdempotencyKeyReused(DbError):
    """An idempotency key already names a job with a different graph, inputs or durability."""

    def __init__(self, idempotency_key: str, job_id: int) -> None:
        self.idempotency_key = idempotency_key
        self.job_id = job_id
        super().__init__(
            f"idempotency key {idempotency_key!r} already names job {job_id}, which was submitted"
            " with a different graph, inputs or durability"
        )


class IllegalExecutionManagerId(DbError):
    def __init__(self, execution_manager_id: int) -> None:
        self.execution_manager_id = execution_manager_id
        super().__init__(f"execution manager {execution_manager_id} is not registered")


class ExecutionManagerAlreadyDead(DbError):
    def __init__(self, execution_manager_id: int) -> None:
        self.execution_manager_id = execution_manager_id
        super().__init__(
            f"execution manager {execution_manager_id} was declared dead; it must re-register"
        )


class InvalidJobStateTransition(DbError):
    """The transition table (``states.is_valid_transition``) forbids ``from_state -> to_state``."""

    def __init__(self, from_state: int, to_state: int, *, job_id: int | None = None) -> None:
        self.from_state = DbJobState(from_state)
        self.to_state = DbJobState(to_state)
        self.job_id = job_id
        super().__init__(
            f"{_job_prefix(job_id)}cannot go from {_state_name(from_state)} "
            f"to {_state_name(to_state)}"
        )


class UnexpectedJobState(DbError):
    """The operation needs the job in one of ``expected`` but it is in ``current``."""

    def __init__(self, current: int, expected: Iterable[int], *, job_id: int | None = None) -> None:
        self.current = DbJobState(current)
        self.expected = tuple(DbJobState(s) for s in expected)
        self.job_id = job_id
        wanted = " or ".join(s.db_name for s in self.expected)
        who = f"job {job_id}" if job_id is not None else "job"
        super().__init__(f"{who} is {self.current.db_name}, expected {wanted}")
