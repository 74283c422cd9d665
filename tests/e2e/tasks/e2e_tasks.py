"""Task functions used by the end-to-end tests (imported by executors from this directory)."""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import orbweaver as ow

# -- arithmetic ---------------------------------------------------------------------------------


@ow.task
def double(x: int) -> int:
    return 2 * x


@ow.task
def add(a: int, b: int) -> int:
    return a + b


@ow.task
def inc(x: int) -> int:
    return x + 1


@ow.task
def divmod_task(a: int, b: int) -> tuple[int, int]:
    return a // b, a % b


@ow.task
def describe(q: int, r: int) -> str:
    return f"q={q} r={r}"


# -- dataclasses --------------------------------------------------------------------------------


@dataclass
class Point:
    x: float
    y: float


@dataclass
class Segment:
    start: Point
    end: Point
    label: str


@ow.task
def make_segment(x0: float, y0: float, x1: float, y1: float, label: str) -> Segment:
    return Segment(Point(x0, y0), Point(x1, y1), label)


@ow.task
def segment_length(s: Segment) -> tuple[float, str]:
    return math.hypot(s.end.x - s.start.x, s.end.y - s.start.y), s.label.upper()


# -- failures, retries, crashes -------------------------------------------------------------------


def _marker(name: str) -> Path:
    return Path(os.environ.get("E2E_TEST_MARKERS", "/tmp")) / name


@ow.task(retries=2)
def flaky(x: int, key: str) -> int:
    """Fails the first two attempts (counted in a marker file), then succeeds."""
    path = _marker(f"flaky-{key}")
    attempts = int(path.read_text()) if path.exists() else 0
    path.write_text(str(attempts + 1))
    if attempts < 2:
        raise RuntimeError(f"transient failure #{attempts + 1}")
    return x * 10


@ow.task
def always_fail(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


@ow.task(retries=1)
def crash_once(x: int, key: str) -> int:
    """Kills its own executor process on the first attempt."""
    path = _marker(f"crash-{key}")
    if not path.exists():
        path.write_text("crashed")
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 100


@ow.task
def sleep_then(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


@ow.task(retries=0, soft_timeout=0.5, hard_timeout=1.0)
def hang(x: int) -> int:
    time.sleep(3600)
    return x


@ow.task
def log_run(label: str) -> str:
    """Append `label` to the run log (one line per task run, in the order they ran)."""
    with _marker("run-order.log").open("a") as log:
        log.write(label + "\n")
    time.sleep(0.03)
    return label


@ow.task
def slow_inc(x: int) -> int:
    time.sleep(0.02)
    return x + 1


@ow.task
def nap_inc(x: int) -> int:
    """Long enough to be caught running (a child: its input comes from a parent)."""
    time.sleep(4.0)
    return x + 1


# -- termination tasks --------------------------------------------------------------------------


@ow.task
def publish(ctx: ow.TaskContext) -> None:
    """Commit task: record every run and publish the outputs atomically (idempotent)."""
    out = _marker(f"commit-{ctx.job_id}")
    with open(str(out) + ".runs", "a") as f:
        f.write("run\n")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(repr(ctx.job_outputs))
    os.replace(tmp, out)


@ow.task
def cleanup(ctx: ow.TaskContext) -> None:
    """Cleanup task: record the graph inputs it received."""
    _marker(f"cleanup-{ctx.job_id}").write_text(repr(ctx.graph_inputs))


# -- neural network (Spider's NN workload) -------------------------------------------------

WEIGHTS = [0.01 * (i + 1) * (-1 if i % 2 else 1) for i in range(25)]


def activation(layer: int, z: float) -> float:
    kind = layer % 3
    if kind == 0:
        return max(0.0, z)
    if kind == 1:
        return 1.0 / (1.0 + math.exp(-z))
    return z


def neuron(layer: int, xs: list[float]) -> float:
    z = 0.5
    for w, x in zip(WEIGHTS, xs, strict=True):
        z += w * x
    return activation(layer, z)


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
        return neuron(
            layer,
            [
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
            ],
        )

    return fn


def _named(name: str, layer: int) -> ow.TaskFunction:
    fn = _dense(layer)
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    return ow.task(fn)


dense_relu = _named("dense_relu", 0)
dense_sigmoid = _named("dense_sigmoid", 1)
dense_identity = _named("dense_identity", 2)
LAYER_TASKS = [dense_relu, dense_sigmoid, dense_identity]


@ow.task(retries=3)
def sturdy_inc(x: int) -> int:
    """A slow increment that tolerates a few crashes of its executor."""
    time.sleep(0.03)
    return x + 1


@ow.task
def slow_publish(ctx: ow.TaskContext) -> None:
    """A commit task slow enough to be interrupted."""
    time.sleep(1.0)
    publish(ctx)


@ow.task(retries=3)
def counted_step(x: int, log: str) -> tuple[int, str]:
    """One step of a chain that records each of its runs: a line `x` appended to the file `log`
    (passed along the chain), then a pause that keeps the step in flight for a while."""
    with open(log, "a") as f:
        f.write(f"{x}\n")
    time.sleep(0.25)
    return x + 1, log
