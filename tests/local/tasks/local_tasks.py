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
