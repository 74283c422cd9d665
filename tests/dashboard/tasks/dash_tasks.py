"""Tasks of the dashboard tests: the executors of the test clusters import this module."""

from __future__ import annotations

import orbweaver as ow


def _wait_for(gates: str, name: str) -> str:
    """Wait (at most two minutes) until the file `gates/name` exists: the test decides when
    each task ends. Returns `gates` for the children."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + 120
    while not (Path(gates) / name).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return gates


@ow.task
def first(gates: str) -> str:
    return _wait_for(gates, "first")


@ow.task
def left(gates: str) -> str:
    return _wait_for(gates, "left")


@ow.task
def right(gates: str) -> str:
    return _wait_for(gates, "right")


@ow.task
def join(a: str, b: str) -> str:
    return _wait_for(a, "join")


@ow.task
def boom(x: int) -> int:
    raise ValueError(f"boom {x}: the input was refused")


@ow.task
def double(x: int) -> int:
    return 2 * x


def gated_diamond() -> ow.TaskGraph:
    """first -> (left, right) -> join; each waits for its gate file."""
    g = ow.TaskGraph()
    f = g.add(first)
    g.add(join, g.add(left, f), g.add(right, f))
    return g


def failing() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(boom, g.add(double))
    return g


def doubling() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(double)
    return g


def wide(n: int) -> ow.TaskGraph:
    """`n` independent input tasks."""
    g = ow.TaskGraph()
    for _ in range(n):
        g.add(double)
    return g


@ow.task(retries=2)
def flaky(gates: str) -> str:
    """Fail on the first two runs, then wait for the gate `flaky`."""
    from pathlib import Path

    runs = Path(gates) / "flaky.runs"
    with runs.open("a") as f:
        f.write("run\n")
    if len(runs.read_text().splitlines()) <= 2:
        raise RuntimeError("not yet")
    return _wait_for(gates, "flaky")


def retried() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(flaky)
    return g
