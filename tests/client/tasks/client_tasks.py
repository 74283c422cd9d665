"""Tasks of the client tests (imported by the executors from this directory)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orbweaver as ow


def marker(name: str) -> Path:
    return Path(os.environ.get("CLIENT_TEST_MARKERS", "/tmp")) / name


@ow.task
def inc(x: int) -> int:
    return x + 1


@ow.task
def add(a: int, b: int) -> int:
    return a + b


@ow.task
def always_fail(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


@ow.task
def gated(x: int, gate: str) -> int:
    """Return `x` once the marker file `gate` exists: the test decides when the job ends."""
    path = marker(gate)
    while not path.exists():
        time.sleep(0.02)
    return x
