"""Test tasks for the executor and pool tests (analogue of Spider's `integration_test_tasks`)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from os import system  # noqa: F401 - re-exported on purpose: the executor must refuse it
from pathlib import Path

import orbweaver as ow

# The analogue of the reference package's init hook: importing the tasks module is its
# initialisation. It fails on purpose when ORBWEAVER_TEST_TASKS_INIT_SHOULD_FAIL is set; the
# `assert_initialized` task checks that it ran in the executor that runs the task.
INIT_SHOULD_FAIL = "ORBWEAVER_TEST_TASKS_INIT_SHOULD_FAIL"
if os.environ.get(INIT_SHOULD_FAIL):
    raise RuntimeError(f"integration_tasks initialisation failed on purpose ({INIT_SHOULD_FAIL})")
_initialised_in = os.getpid()


@ow.task
def fibonacci(n: int) -> int:
    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)


@ow.task
def always_fail() -> int:
    raise ValueError("always_fail: this task always fails")


@ow.task
def crash() -> int:
    os._exit(3)


@ow.task
def kill_self() -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)
    return 0


@ow.task
def sleep_forever() -> int:
    while True:
        time.sleep(1)


@ow.task
def sleep_and_echo(items: list[str]) -> list[str]:
    time.sleep(50e-6)
    return items


@ow.task
def chatty(n: int) -> int:
    print("hello from print() inside a task")
    print("x" * 100_000)
    sys.stdout.write("raw write to sys.stdout\n")
    os.write(1, b"raw write to fd 1\n")
    print("to stderr", file=sys.stderr)
    return n + 1


@ow.task
def assert_outputs_sum_zero(ctx: ow.TaskContext) -> None:
    if not ctx.is_commit or ctx.job_outputs is None:
        raise RuntimeError("assert_outputs_sum_zero must run as the commit task")
    if not ctx.job_outputs:
        raise ValueError("job outputs are empty")
    if sum(ctx.job_outputs) != 0:
        raise ValueError(f"job outputs {ctx.job_outputs} do not sum to zero")


@ow.task
def write_graph_inputs(ctx: ow.TaskContext) -> None:
    """Cleanup task: write the graph inputs as JSON to $ORBWEAVER_TEST_CLEANUP_FILE (bytes as
    {"hex": ...})."""
    if not ctx.is_cleanup:
        raise RuntimeError("write_graph_inputs must run as the cleanup task")
    text = json.dumps(ctx.graph_inputs, default=lambda b: {"hex": b.hex()})
    Path(os.environ["ORBWEAVER_TEST_CLEANUP_FILE"]).write_text(text)


@ow.task
def describe_context(ctx: ow.TaskContext, tag: str) -> tuple[str, int, int, int, int]:
    return tag, ctx.job_id, ctx.task_id, ctx.instance_id, ctx.resource_group_id


@ow.task
def rendezvous(directory: str, name: str, expected: int) -> tuple[float, float, int]:
    """Announce this task in `directory`, then wait (up to 30 s) until `expected` tasks did.
    Returns (start, end, number of tasks seen): tasks that ran one after the other see fewer."""
    start = time.time()
    Path(directory, f"{name}.{os.getpid()}").write_text(str(start))
    deadline = time.monotonic() + 30
    seen = 0
    while time.monotonic() < deadline:
        seen = len(list(Path(directory).iterdir()))
        if seen >= expected:
            break
        time.sleep(0.01)
    return start, time.time(), seen


@ow.task
def pid() -> int:
    return os.getpid()


@ow.task
def wrong_output() -> int:
    return "not an int"  # type: ignore[return-value]


@ow.task
def wrong_arity() -> tuple[int, int]:
    return (1, 2, 3)  # type: ignore[return-value]


@ow.task(name="renamed")
def original_name(x: int) -> int:
    return -x


@ow.task
def chained_failure(key: str) -> int:
    try:
        return {"a": 1}[key]
    except KeyError as exc:
        raise RuntimeError(f"lookup of {key!r} failed") from exc


def not_a_task(n: int) -> int:
    return n


@ow.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@ow.task
def interval(directory: str, name: str, hold: float) -> int:
    """Record when this task ran (start and end, written by the task) in `directory`."""
    start = time.time()
    time.sleep(hold)
    end = time.time()
    Path(directory, f"{name}.json").write_text(json.dumps([start, end, os.getpid()]))
    return os.getpid()


@ow.task
def long_line(n: int) -> int:
    sys.stderr.write("y" * n + "\n")
    sys.stderr.write("after the long line\n")
    sys.stderr.flush()
    return n


@ow.task
def exit_via_sys_exit() -> int:
    sys.exit(5)


@ow.task
def make_text(n: int) -> str:
    return "x" * n


@ow.task
def assert_initialized() -> int:
    """The pid the module was initialised in, which must be this executor's."""
    if _initialised_in != os.getpid():
        raise AssertionError(f"initialised in {_initialised_in}, running in {os.getpid()}")
    return _initialised_in
