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


@ow.task(retries=5)
def publish(ctx: ow.TaskContext) -> None:
    """Commit task: publish the job's outputs as `commit-<job id>` in `$MULTIHOST_MARKERS`,
    atomically (at-least-once by contract: a re-run rewrites the same content), and count the
    runs in `commit-<job id>.runs`."""
    out = Path(os.environ["MULTIHOST_MARKERS"], f"commit-{ctx.job_id}")
    with open(f"{out}.runs", "a") as runs:
        runs.write(f"{os.environ['MULTIHOST_HOST']}\n")
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_text(repr(ctx.job_outputs))
    os.replace(tmp, out)
