"""Tasks for the graph builder tests."""

from __future__ import annotations

from dataclasses import dataclass

import orbweaver as ow


@dataclass(frozen=True)
class Point:
    x: float
    y: float


@ow.task
def double(x: int) -> int:
    return 2 * x


@ow.task
def add(a: int, b: int) -> int:
    return a + b


@ow.task
def split(x: int) -> tuple[int, int]:
    return x // 2, x - x // 2


@ow.task
def to_str(x: int) -> str:
    return str(x)


@ow.task
def concat(a: str, b: str) -> str:
    return a + b


@ow.task
def narrow(x: ow.Int32) -> ow.Int32:
    return x


@ow.task
def make_point(x: float, y: float) -> Point:
    return Point(x, y)


@ow.task
def norm(p: Point) -> float:
    return float((p.x**2 + p.y**2) ** 0.5)


@ow.task
def constant() -> int:
    return 42


@ow.task
def sink(x: int) -> None:
    pass


@ow.task(retries=1, hard_timeout=10)
def commit_ok(ctx: ow.TaskContext) -> None:
    pass


@ow.task
def cleanup_ok(ctx: ow.TaskContext) -> None:
    pass


@ow.task
def cleanup_no_ctx() -> None:
    pass
