"""Tasks of the multi-host tests: each tells which host ran it, and can hold its executor a while
so a fault lands mid-run. The host name comes from `MULTIHOST_HOST`, set by the cluster on every
worker host and allow-listed for executors."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orbweaver as ow


@ow.task
def where(x: int, hold: float) -> tuple[int, str]:
    """3*x and the worker host that ran it; leaves a `started-<host>-<x>` marker in
    `$MULTIHOST_MARKERS` (a directory every namespace sees) as it starts."""
    host = os.environ["MULTIHOST_HOST"]
    markers = os.environ.get("MULTIHOST_MARKERS")
    if markers:
        Path(markers, f"started-{host}-{x}").write_text("")
    time.sleep(hold)
    return 3 * x, host


@ow.task
def inc(x: int) -> int:
    return x + 1
