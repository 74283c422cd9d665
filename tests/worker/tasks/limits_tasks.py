"""Tasks with resource limits (for the limit tests)."""

from __future__ import annotations

import os
import time

import orbweaver as ow


def _allocate(mib: int) -> int:
    block = bytearray(mib * 1024 * 1024)  # zero-filled: touched, resident
    return len(block) // (1024 * 1024)


def _spin(seconds: float) -> float:
    """Burn `seconds` of CPU time."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return seconds


@ow.task(memory_limit="64MiB")
def allocate_limited(mib: int) -> int:
    return _allocate(mib)


@ow.task
def allocate(mib: int) -> int:
    return _allocate(mib)


@ow.task(cpu_time_limit=1)
def spin_limited(seconds: float) -> float:
    return _spin(seconds)


@ow.task(cpu_time_limit=1)
def spin_stubbornly(seconds: float) -> float:
    """Tries to swallow whatever stops it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:  # noqa: SIM105 - the pattern under test
            _spin(seconds)
        except Exception:
            pass
    return seconds


@ow.task
def spin(seconds: float) -> float:
    return _spin(seconds)


@ow.task
def pid() -> int:
    return os.getpid()
