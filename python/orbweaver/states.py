"""Job states, built from the Rust core's `JobState` (the numeric values of the protobuf enum).

The core is the single source of the shared vocabularies (job and task states, inbound-queue lanes,
outcome kinds): `orbweaver._core` exports each as ``(NAME, code)`` pairs generated from the Rust
enums. The Python enums spell their member names once, so that type checkers see them, take every
value from the core, and are checked against the core's table when they are defined
(`check_against_core`): a build of the extension that disagrees fails at import, naming both sides.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from orbweaver import _core

__all__ = ["JobState", "check_against_core"]


def check_against_core(
    members: Iterable[enum.IntEnum], core_table: Iterable[tuple[str, int]], what: str
) -> None:
    """Raise ImportError unless `members` are the core's ``(NAME, code)`` pairs, in order."""
    ours = [(m.name, int(m)) for m in members]
    theirs = [(name, int(code)) for name, code in core_table]
    if ours != theirs:
        raise ImportError(
            f"the Python {what} {ours} disagree with the core's {theirs}: "
            "rebuild the extension (orbweaver._core) from the same sources"
        )


class JobState(enum.IntEnum):
    """The state of a job. SUCCEEDED, FAILED and CANCELLED are terminal."""

    READY = _core.JOB_READY
    RUNNING = _core.JOB_RUNNING
    COMMIT_READY = _core.JOB_COMMIT_READY
    CLEANUP_READY = _core.JOB_CLEANUP_READY
    SUCCEEDED = _core.JOB_SUCCEEDED
    FAILED = _core.JOB_FAILED
    CANCELLED = _core.JOB_CANCELLED

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.name


check_against_core(JobState, _core.JOB_STATES, "job states")
_TERMINAL = frozenset(s for s in JobState if _core.is_terminal(s))
