"""Job states as stored by the DB layer, and the authoritative transition table.

The integer values equal the protobuf ``JobState`` values; the names used in the database (the
``jobs.state`` ENUM on MariaDB, a CHECKed TEXT column on SQLite) are the CamelCase spellings of the
reference implementation.
"""

from __future__ import annotations

import enum

__all__ = [
    "RECOVERABLE_STATES",
    "TERMINAL_STATES",
    "DbJobState",
    "is_valid_transition",
]


class DbJobState(enum.IntEnum):
    """A job's state; ``int(state)`` is the protobuf ``JobState`` value."""

    READY = 1
    RUNNING = 2
    COMMIT_READY = 3
    CLEANUP_READY = 4
    SUCCEEDED = 5
    FAILED = 6
    CANCELLED = 7

    @property
    def db_name(self) -> str:
        """The spelling stored in the database (``'CommitReady'``, ...)."""
        return _DB_NAMES[self]

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


_DB_NAMES: dict[DbJobState, str] = {
    DbJobState.READY: "Ready",
    DbJobState.RUNNING: "Running",
    DbJobState.COMMIT_READY: "CommitReady",
    DbJobState.CLEANUP_READY: "CleanupReady",
    DbJobState.SUCCEEDED: "Succeeded",
    DbJobState.FAILED: "Failed",
    DbJobState.CANCELLED: "Cancelled",
}
_BY_DB_NAME: dict[str, DbJobState] = {name: state for state, name in _DB_NAMES.items()}

TERMINAL_STATES: frozenset[DbJobState] = frozenset(
    {DbJobState.SUCCEEDED, DbJobState.FAILED, DbJobState.CANCELLED}
)
"""States nothing leaves."""

RECOVERABLE_STATES: tuple[DbJobState, ...] = (
    DbJobState.READY,
    DbJobState.RUNNING,
    DbJobState.COMMIT_READY,
    DbJobState.CLEANUP_READY,
)
"""Non-terminal states: the jobs rebuilt into the job cache when the storage service restarts."""


def is_valid_transition(from_state: int, to_state: int) -> bool:
    """The job transition table (docs/concepts.md, "Job states").

    ======================  ===========================================
    to                      allowed from
    ======================  ===========================================
    Running                 Ready
    CommitReady             Running
    CleanupReady            Running, CommitReady
    Succeeded               Running, CommitReady
    Failed                  Running, CommitReady, CleanupReady
    Cancelled               Ready, Running, CleanupReady
    ======================  ===========================================

    Ready is only ever the initial state, and nothing leaves a terminal state.
    """
    s = DbJobState
    if from_state == s.READY:
        return to_state in (s.RUNNING, s.CANCELLED)
    if from_state == s.RUNNING:
        return to_state in (s.COMMIT_READY, s.CLEANUP_READY, s.SUCCEEDED, s.FAILED, s.CANCELLED)
    if from_state == s.COMMIT_READY:
        return to_state in (s.CLEANUP_READY, s.SUCCEEDED, s.FAILED)
    if from_state == s.CLEANUP_READY:
        return to_state in (s.FAILED, s.CANCELLED)
    return False
