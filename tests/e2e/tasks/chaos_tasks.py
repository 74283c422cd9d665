"""Tasks of the chaos run (`tests/support/chaos.py`), imported by the executors from this
directory.

The arithmetic lives in plain functions that the driver calls too, so every expected output is
computed in-process by the same code. Every task tolerates a few lost attempts (`retries`): the
chaos run SIGKILLs executors, and a killed executor consumes a retry of the task it ran. Commit
and cleanup tasks record each run (one line per run in `<marker>.runs`) and publish atomically,
as idempotent termination tasks must.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orbweaver as ow

# A short sleep per task keeps work in flight when a fault hits (the driver sets it).
STEP_SECONDS = float(os.environ.get("CHAOS_STEP_SECONDS", "0.05"))
# Attempts a flaky task fails before it succeeds.
FLAKY_FAILURES = 2
# How long a gate waits for its release at most (it is released right after its job's cancel).
GATE_MAX_SECONDS = 300.0
MODULUS = 1_000_003


def markers() -> Path:
    return Path(os.environ.get("CHAOS_TEST_MARKERS", "/tmp"))


# -- the arithmetic, shared with the driver -------------------------------------------------------


def step_value(x: int) -> int:
    return (3 * x + 1) % MODULUS


def spread_values(x: int) -> tuple[int, int, int, int]:
    return x, x + 1, x + 2, x + 3


def square_value(v: int) -> int:
    return (v * v) % MODULUS


def combine_value(a: int, b: int) -> int:
    return (a + 2 * b) % MODULUS


def failure_text(v: int) -> str:
    return f"chaos failure for {v}"


# -- tasks --------------------------------------------------------------------------------------


@ow.task(retries=4)
def step(x: int) -> int:
    time.sleep(STEP_SECONDS)
    return step_value(x)


@ow.task(retries=4)
def spread(x: int) -> tuple[int, int, int, int]:
    time.sleep(STEP_SECONDS)
    return spread_values(x)


@ow.task(retries=4)
def square(v: int) -> int:
    time.sleep(STEP_SECONDS)
    return square_value(v)


@ow.task(retries=4)
def combine(a: int, b: int) -> int:
    time.sleep(STEP_SECONDS)
    return combine_value(a, b)


@ow.task(retries=4)
def total(a: int, b: int, c: int, d: int) -> int:
    time.sleep(STEP_SECONDS)
    return (a + b + c + d) % MODULUS


@ow.task(retries=FLAKY_FAILURES + 4)
def flaky_step(x: int, token: str) -> int:
    """Fails its first FLAKY_FAILURES attempts (counted in a marker file), then succeeds."""
    path = markers() / f"flaky-{token}"
    attempts = int(path.read_text() or 0) if path.exists() else 0
    path.write_text(str(attempts + 1))
    if attempts < FLAKY_FAILURES:
        raise RuntimeError(f"transient failure #{attempts + 1} of {token}")
    time.sleep(STEP_SECONDS)
    return step_value(x)


@ow.task(retries=2)
def explode(v: int) -> int:
    """Always fails: its job must end FAILED with this message."""
    raise ValueError(failure_text(v))


@ow.task(retries=4)
def prepare(x: int, token: str) -> tuple[int, str]:
    time.sleep(STEP_SECONDS)
    return step_value(x), token


@ow.task(retries=5)
def gate(v: int, token: str) -> int:
    """Holds its job RUNNING until the driver releases it (after cancelling the job), so the
    cancel always lands mid-run."""
    release = markers() / f"release-{token}"
    deadline = time.monotonic() + GATE_MAX_SECONDS
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return v


def _record_run(name: str) -> Path:
    out = markers() / name
    with open(f"{out}.runs", "a") as f:
        f.write(f"{os.getpid()}\n")
    return out


def _publish(out: Path, text: str) -> None:
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)


@ow.task(retries=5)
def publish(ctx: ow.TaskContext) -> None:
    """Commit task: record the run, publish the job outputs atomically (idempotent)."""
    _publish(_record_run(f"commit-{ctx.job_id}"), repr(ctx.job_outputs))


@ow.task(retries=5)
def cleanup(ctx: ow.TaskContext) -> None:
    """Cleanup task: record the run and the graph inputs it received (idempotent)."""
    _publish(_record_run(f"cleanup-{ctx.job_id}"), repr(ctx.graph_inputs))
