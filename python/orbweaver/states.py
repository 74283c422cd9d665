"""Job states, with the numeric values of the protobuf `JobState` enum."""

from __future__ import annotations

import enum


class JobState(enum.IntEnum):
    """The state of a job. SUCCEEDED, FAILED and CANCELLED are terminal."""

    READY = 1
    RUNNING = 2
    COMMIT_READY = 3
    CLEANUP_READY = 4
    SUCCEEDED = 5
    FAILED = 6
    CANCELLED = 7

    @property
    def is_terminal(self) -> bool:
        return self >= JobState.SUCCEEDED

    def __str__(self) -> str:
        return self.name
