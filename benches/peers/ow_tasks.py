"""Orbweaver task definitions for the benchmarks (executors import this module from the tasks
directory ``benches/peers``). Every body is the framework-free function in ``workloads``."""

from __future__ import annotations

import workloads as w

import orbweaver as ow


@ow.task
def inc(x: int) -> int:
    return w.inc(x)


@ow.task
def double(x: int) -> int:
    return w.double(x)


@ow.task
def add(a: int, b: int) -> int:
    return w.add(a, b)


def _dense(layer: int):  # type: ignore[no-untyped-def]
    def fn(
        x0: float,
        x1: float,
        x2: float,
        x3: float,
        x4: float,
        x5: float,
        x6: float,
        x7: float,
        x8: float,
        x9: float,
        x10: float,
        x11: float,
        x12: float,
        x13: float,
        x14: float,
        x15: float,
        x16: float,
        x17: float,
        x18: float,
        x19: float,
        x20: float,
        x21: float,
        x22: float,
        x23: float,
        x24: float,
    ) -> float:
        return w.neuron(
            layer,
            (
                x0,
                x1,
                x2,
                x3,
                x4,
                x5,
                x6,
                x7,
                x8,
                x9,
                x10,
                x11,
                x12,
                x13,
                x14,
                x15,
                x16,
                x17,
                x18,
                x19,
                x20,
                x21,
                x22,
                x23,
                x24,
            ),
        )

    return fn


def _named(name: str, layer: int) -> ow.TaskFunction:
    fn = _dense(layer)
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    return ow.task(fn)


# The activation depends on layer % 3 only, so one task per residue covers every layer.
dense_relu = _named("dense_relu", 0)
dense_sigmoid = _named("dense_sigmoid", 1)
dense_identity = _named("dense_identity", 2)
LAYER_TASKS = [dense_relu, dense_sigmoid, dense_identity]


@ow.task
def spin(ms: int) -> float:
    return w.spin(ms)


@ow.task
def blob(size: int) -> bytes:
    return w.blob(size)


@ow.task
def digest(data: bytes) -> int:
    return w.digest(data)
