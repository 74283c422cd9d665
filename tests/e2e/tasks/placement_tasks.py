"""Tasks that tell which execution manager ran them (used by the multi-worker tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orbweaver as ow


def _markers() -> Path:
    return Path(os.environ.get("E2E_TEST_MARKERS", "/tmp"))


@ow.task
def where(x: int, hold: float) -> tuple[int, int]:
    """Returns 3*x and the pid of the execution manager whose executor ran it (the executor's
    parent); leaves a `started-<em pid>-<executor pid>-<x>` marker when it starts."""
    em = os.getppid()
    _markers().joinpath(f"started-{em}-{os.getpid()}-{x}").write_text("")
    time.sleep(hold)
    return 3 * x, em
