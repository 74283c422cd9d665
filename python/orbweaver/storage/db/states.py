"""Job states as the DB layer stores them.

The states, their integer values (the protobuf ``JobState`` values) and the transition table are
the core's (`orbweaver.JobState`, `orbweaver._core.is_valid_transition`); this module adds only
the spellings used in the database (the ``jobs.state`` ENUM on MariaDB, a CHECKed TEXT column on
SQLite): the CamelCase names of the reference implementation, which are a storage format and stay
as they are whatever the code calls the states.
"""

from __future__ import annotations

import enum

from orbweaver import _core
from orbweaver.states import JobState, check_against_core

__all__ = [
    "RECOVERABLE_STATES",
    "TERMINAL_STATES",
    "DbJobState",
    "is_valid_transition",
]


class DbJobState(enum.IntEnum):
    """A job's state; ``int(state)`` is the protobuf ``JobState`` value. Each member is the
    `JobState` of the same name with the spelling stored in the database."""

    _db_name: str

    # Called with both arguments to make the members below; after that, `DbJobState(code)` looks
    # a member up (the enum machinery does not call this again), which the signature allows.
    def __new__(cls, state: int, db_name: str = "") -> DbJobState:
        member = int.__new__(cls, state)
        member._value_ = int(state)
        member._db_name = db_name
        return member

    READY = JobState.READY, "Ready"
    RUNNING = JobState.RUNNING, "Running"
    COMMIT_READY = JobState.COMMIT_READY, "CommitReady"
    CLEANUP_READY = JobState.CLEANUP_READY, "CleanupReady"
    SUCCEEDED = JobState.SUCCEEDED, "Succeeded"
    FAILED = JobState.FAILED, "Failed"
    CANCELLED = JobState.CANCELLED, "Cancelled"

    @property
    def db_name(self) -> str:
        """The spelling stored in the database (``'CommitReady'``, ...)."""
        return self._db_name

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @classmethod
    def from_db_name(cls, name: str) -> DbJobState:
        try:
            return _BY_DB_NAME[name]
        except KeyError:
            raise ValueError(f"unknown job state {name!r} in the database") from None

    def __str__(self) -> str:
        return self.db_name


check_against_core(DbJobState, _core.JOB_STATES, "database job states")
_BY_DB_NAME: dict[str, DbJobState] = {s.db_name: s for s in DbJobState}

TERMINAL_STATES: frozenset[DbJobState] = frozenset(s for s in DbJobState if _core.is_terminal(s))
"""States nothing leaves."""

RECOVERABLE_STATES: tuple[DbJobState, ...] = tuple(
    s for s in DbJobState if s not in TERMINAL_STATES
)
"""Non-terminal states: the jobs rebuilt into the job cache when the storage service restarts."""


def is_valid_transition(from_state: int, to_state: int) -> bool:
    """The core's job transition table (docs/concepts.md, "Job states"). Ready is only ever the
    initial state, and nothing leaves a terminal state. A code that is no job state is no valid
    transition."""
    try:
        return _core.is_valid_transition(from_state, to_state)
    except _core.InvalidRequestError:
        return False
