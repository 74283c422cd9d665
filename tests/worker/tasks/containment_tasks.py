"""Tasks that leave processes behind or misbehave, for the containment tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orbweaver as ow

# How long a child left behind lives on its own: far longer than any test waits.
CHILD_LIFETIME_S = 300


def _publish(pidfile: str, pid: int) -> None:
    tmp = Path(pidfile + ".tmp")
    tmp.write_text(str(pid))
    tmp.replace(pidfile)


@ow.task
def leave_child(kind: str, then: str, pidfile: str) -> int:
    """Start a child that outlives the task and write its pid to `pidfile`, then `then`.

    `kind`: ``popen`` runs ``sleep`` through subprocess (it holds the executor's stderr);
    ``fork`` forks the executor (the copy holds every pipe, the protocol's output included);
    ``setsid`` runs ``sleep`` in a session of its own (out of the executor's process group).
    `then`: ``return`` (the child's pid), ``hang``, ``exit`` (``os._exit(3)``) or ``die``
    (SIGKILL to the executor itself); these two wait for a file ``<pidfile>.go`` first, so that
    the test sees the processes before."""
    if kind in ("popen", "setsid"):
        child = subprocess.Popen(
            ["sleep", str(CHILD_LIFETIME_S)], start_new_session=kind == "setsid"
        ).pid
    elif kind == "fork":
        child = os.fork()
        if child == 0:
            time.sleep(CHILD_LIFETIME_S)
            os._exit(0)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    _publish(pidfile, child)
    if then == "hang":
        while True:
            time.sleep(1)
    if then in ("exit", "die"):
        while not Path(pidfile + ".go").exists():
            time.sleep(0.01)
    if then == "exit":
        os._exit(3)
    if then == "die":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return child


@ow.task
def flood(total: int, line: int) -> int:
    """Print `total` bytes in lines of `line` bytes (newline included) as fast as possible."""
    text = ("z" * (line - 1) + "\n") * max(1, 65536 // line)
    written = 0
    while written < total:
        chunk = text[: total - written]
        sys.stdout.write(chunk)
        written += len(chunk)
    sys.stdout.flush()
    return written
