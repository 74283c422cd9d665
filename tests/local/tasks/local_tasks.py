"""Tasks for the tests of `tests/local`: the executors of the clusters there import this module."""

from __future__ import annotations

import orbweaver as ow


@ow.task
def double(x: int) -> int:
    return 2 * x


@ow.task
def add(a: int, b: int) -> int:
    return a + b


def _diamond() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(add, g.add(double), g.add(double))
    return g


diamond = _diamond()  # (x, y) -> 2x + 2y


@ow.task
def record_and_wait(path: str) -> int:
    """Append a line to `path`.runs each time it starts, then wait (at most a minute) for `path`
    to exist: the test sees how often the task ran and decides when it ends."""
    import time
    from pathlib import Path

    runs = Path(path + ".runs")
    with runs.open("a") as f:
        f.write("run\n")
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(runs.read_text().splitlines())


def recorded() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(record_and_wait)
    return g
