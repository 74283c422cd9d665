"""Timeline tracing: when one job went through which hop, across every process of a cluster.

Off unless ``ORBWEAVER_TRACE_DIR`` names a directory when the process starts; then each process
appends one line per event, ``<monotonic ns> <event> <job id>``, to its own file there
(``<pid>.trace``). ``CLOCK_MONOTONIC`` is one clock for every process of a machine, so the files
of the client, the storage, the scheduler and the execution manager line up into one timeline
(``benches/timeline.py`` runs jobs with tracing on and prints the median time between hops).

It is a diagnostic: each event is one unbuffered ``write`` (a few microseconds), so a killed
process loses nothing; the hooks cost one module-global test when tracing is off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

ENV = "ORBWEAVER_TRACE_DIR"


def _open() -> int | None:
    directory = os.environ.get(ENV)
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{os.getpid()}.trace")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


_fd = _open()
ENABLED = _fd is not None


def mark(event: str, job_id: int, at_ns: int | None = None) -> None:
    """Record `event` for `job_id`, now or at `at_ns` (a `time.monotonic_ns()` taken earlier,
    for an event whose job id was not known yet when it happened)."""
    if _fd is None:
        return
    stamp = time.monotonic_ns() if at_ns is None else at_ns
    os.write(_fd, f"{stamp} {event} {job_id}\n".encode())


def mark_many(event: str, job_ids: Iterable[int]) -> None:
    """`mark` for each job id of an iterable, with one timestamp."""
    if _fd is None:
        return
    stamp = time.monotonic_ns()
    lines = "".join(f"{stamp} {event} {job_id}\n" for job_id in job_ids)
    if lines:
        os.write(_fd, lines.encode())
