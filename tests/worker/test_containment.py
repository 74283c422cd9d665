"""Task containment with real executor processes: whatever a task started (a `subprocess.Popen`
child holding the executor's stderr, an `os.fork()` copy holding every pipe) dies with its
executor -- on a hard timeout, a crash, `close()` and when the pool's own process dies -- and a
child holding the pipes does not delay the verdict. Each test runs with process groups alone
and, where this machine lets the tests create cgroups, with a cgroup per executor too (which
also catches a child that left the group with ``setsid``)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest

from orbweaver import _core
from orbweaver.worker.pool import (
    ExecutorPool,
    ExecutorPoolError,
    ResultKind,
    TaskRequest,
    TaskResult,
)

pytestmark = pytest.mark.timeout(120)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
PYTHON_ROOT = Path(__file__).resolve().parents[2] / "python"
WAIT_S = 30.0
# A crash must be reported long before the child holding the pipes would end on its own
# (`containment_tasks.CHILD_LIFETIME_S`, 300 s): this is a "did not hang" bound, not a benchmark.
PROMPT_S = 60.0
KINDS = ["popen", "fork"]
# Children in a session of their own escape a process group, not a cgroup.
ALL_KINDS = [*KINDS, "setsid"]


def kinds_for(pool: ExecutorPool, kind: str) -> None:
    if kind == "setsid" and pool.cgroup is None:
        pytest.skip("a child that calls setsid is only contained by a cgroup")


def req(func: str, *values: Any, timeout_ms: int = 0) -> TaskRequest:
    io = _core.wire_encode([msgpack.packb(v, use_bin_type=True) for v in values])
    return TaskRequest(1, 0, 1, 1, "containment_tasks", func, io, timeout_ms)


def value(result: TaskResult) -> Any:
    assert result.kind is ResultKind.SUCCESS, result
    assert result.outputs is not None
    [payload] = _core.wire_decode(result.outputs)
    return msgpack.unpackb(payload, raw=False)


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def dead(proc: psutil.Process) -> bool:
    """Gone, or a zombie (the same process: `is_running` compares creation times)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_all_dead(procs: list[psutil.Process]) -> None:
    wait_for(lambda: all(dead(p) for p in procs), "every process of the executor's tree to die")


class Running:
    """A `leave_child` task running on the pool in a background thread, once its child exists:
    `tree` is the executor and every descendant of it at that moment."""

    def __init__(self, pool: ExecutorPool, tmp_path: Path, kind: str, then: str, **kw: Any):
        [self.executor] = pool.pids()
        self.pidfile = tmp_path / f"child-{kind}-{then}.pid"
        self._threads = ThreadPoolExecutor(1)
        self.started = time.monotonic()
        self.future: Future[TaskResult] = self._threads.submit(
            pool.run, req("leave_child", kind, then, str(self.pidfile), **kw)
        )
        wait_for(lambda: self.pidfile.exists() or self.future.done(), "the task's child")
        assert self.pidfile.exists(), self.future.result()
        self.child = int(self.pidfile.read_text())
        root = psutil.Process(self.executor)
        self.tree = [root, *root.children(recursive=True)]
        assert self.child in [p.pid for p in self.tree]
        Path(f"{self.pidfile}.go").touch()

    def result(self) -> tuple[TaskResult, float]:
        """The task's result and how long it took to get it."""
        try:
            result = self.future.result(timeout=PROMPT_S * 2)
        finally:
            self._threads.shutdown(wait=False)
        return result, time.monotonic() - self.started


@pytest.fixture(params=["groups", "cgroups"])
def containment(request: pytest.FixtureRequest) -> str:
    """Process groups only, or a cgroup per executor too (skipped where unavailable)."""
    return str(request.param)


@pytest.fixture
def pool(containment: str) -> Iterator[ExecutorPool]:
    with ExecutorPool(TASKS_DIR, 1, close_timeout=1.0, cgroups=containment == "cgroups") as p:
        if containment == "cgroups" and p.cgroup is None:
            pytest.skip("no writable cgroup v2 here: containment is by process group only")
        assert (p.cgroup is not None) == (containment == "cgroups")
        yield p
    if p.cgroup is not None:
        assert not p.cgroup.exists(), "the pool's cgroup outlived it"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_hard_timeout_kills_what_the_task_started(
    pool: ExecutorPool, tmp_path: Path, kind: str
) -> None:
    kinds_for(pool, kind)
    running = Running(pool, tmp_path, kind, "hang", timeout_ms=1500)
    result, _ = running.result()
    assert result.kind is ResultKind.TIMEOUT
    assert result.error == "hard timeout (1500 ms) exceeded"
    assert_all_dead(running.tree)
    assert pool.pids() != [running.executor]
    # The replacement serves the next task.
    assert isinstance(value(pool.run(req("leave_child", kind, "return", str(tmp_path / "n")))), int)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_crash_is_reported_at_once_and_kills_what_the_task_started(
    pool: ExecutorPool, tmp_path: Path, kind: str
) -> None:
    kinds_for(pool, kind)
    running = Running(pool, tmp_path, kind, "exit")
    result, took = running.result()
    assert result.kind is ResultKind.CRASH
    assert result.error == "executor crashed (exit code 3)"
    assert took < PROMPT_S, f"the crash took {took:.1f} s to be reported"
    assert_all_dead(running.tree)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_executor_killed_from_outside(pool: ExecutorPool, tmp_path: Path, kind: str) -> None:
    kinds_for(pool, kind)
    running = Running(pool, tmp_path, kind, "hang")
    psutil.Process(running.executor).kill()
    result, took = running.result()
    assert result.kind is ResultKind.CRASH
    assert result.error == "executor crashed (killed by signal 9)"
    assert took < PROMPT_S, f"the crash took {took:.1f} s to be reported"
    assert_all_dead(running.tree)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_task_killing_its_own_executor(pool: ExecutorPool, tmp_path: Path, kind: str) -> None:
    kinds_for(pool, kind)
    running = Running(pool, tmp_path, kind, "die")
    result, took = running.result()
    assert result.kind is ResultKind.CRASH
    assert result.error == "executor crashed (killed by signal 9)"
    assert took < PROMPT_S
    assert_all_dead(running.tree)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_close_kills_a_running_task_and_its_children(
    pool: ExecutorPool, tmp_path: Path, kind: str
) -> None:
    kinds_for(pool, kind)
    running = Running(pool, tmp_path, kind, "hang")
    pool.close()
    with pytest.raises(ExecutorPoolError, match="closed"):
        running.result()
    assert_all_dead(running.tree)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_close_kills_what_a_finished_task_left_behind(
    pool: ExecutorPool, tmp_path: Path, kind: str
) -> None:
    kinds_for(pool, kind)
    [executor] = pool.pids()
    child = value(pool.run(req("leave_child", kind, "return", str(tmp_path / "pid"))))
    tree = [psutil.Process(executor), psutil.Process(child)]
    assert not dead(tree[1])  # between tasks a child may live on (a task may cache a helper)
    pool.close()
    assert_all_dead(tree)


# -------------------------------------------------------------------------------------------------
# The pool's process dies
# -------------------------------------------------------------------------------------------------

_HOST = """
import sys, time
import msgpack
from orbweaver import _core
from orbweaver.worker.pool import ExecutorPool, TaskRequest

kind, pidfile = sys.argv[1], sys.argv[2]
pool = ExecutorPool({tasks!r}, 1)
pool.start()
io = _core.wire_encode([msgpack.packb(v) for v in (kind, "hang", pidfile)])
print(pool.pids()[0], pool.cgroup or "", flush=True)
pool.run(TaskRequest(1, 0, 1, 1, "containment_tasks", "leave_child", io, 0))
"""


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_executors_and_their_children_die_with_the_pool_process(tmp_path: Path, kind: str) -> None:
    pidfile = tmp_path / "child.pid"
    host = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOST.format(tasks=str(TASKS_DIR))), kind, pidfile],
        stdout=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PYTHON_ROOT)},
    )
    try:
        assert host.stdout is not None
        pid, _, cgroup = host.stdout.readline().decode().strip().partition(" ")
        if kind == "setsid" and not cgroup:
            pytest.skip("a child that calls setsid is only contained by a cgroup")
        executor = psutil.Process(int(pid))
        wait_for(pidfile.exists, "the task's child")
        child = psutil.Process(int(pidfile.read_text()))
        tree = [executor, *executor.children(recursive=True)]
        assert child in tree  # a child in a session of its own is still the executor's child
        host.kill()  # SIGKILL: the pool cannot clean anything up
        host.wait(WAIT_S)
        assert_all_dead(tree)
    finally:
        host.kill()
        host.wait(WAIT_S)
    if cgroup:
        # The dead pool's cgroups are empty; the next pool to start removes them.
        with ExecutorPool(TASKS_DIR, 1):
            assert not Path(cgroup).exists()


# -------------------------------------------------------------------------------------------------
# Task output
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [100, 10_000], ids=["short-lines", "long-lines"])
def test_a_task_flooding_its_output_is_not_slowed_and_the_log_stays_within_budget(
    caplog: pytest.LogCaptureFixture, line: int
) -> None:
    rate, burst, total = 64 * 1024, 1024 * 1024, 20 * 1024 * 1024
    caplog.set_level(logging.INFO, logger="orbweaver.executor")
    with ExecutorPool(TASKS_DIR, 1, output_rate=rate, output_burst=burst) as pool:
        [pid] = pool.pids()
        started = time.monotonic()
        # The hard timeout is the "did not hang" bound: the task must not wait for the log.
        result = pool.run(req("flood", total, line, timeout_ms=60_000))
        assert value(result) == total

        def summaries() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "of task output (rate limit" in r.getMessage()]

        wait_for(lambda: bool(summaries()), "the summary of the dropped output")
        elapsed = time.monotonic() - started
    forwarded = [
        r
        for r in caplog.records
        if r.name == "orbweaver.executor" and r.getMessage().startswith("z")
    ]
    logged = sum(len(r.getMessage()) + 1 for r in forwarded)
    dropped = sum(getattr(r, "dropped_bytes", 0) for r in summaries())
    assert 0 < logged <= burst + rate * elapsed + line
    assert logged + dropped == total  # every byte is either forwarded or counted as dropped
    first = summaries()[0]
    assert first.levelno == logging.WARNING
    assert re.fullmatch(
        rf"executor {pid}: dropped \d+(\.\d)? MiB of task output \(rate limit 64 KiB/s\)",
        first.getMessage(),
    ), first.getMessage()
    # At most one summary every few seconds, plus the last one.
    assert len(summaries()) <= 2 + elapsed / 5.0
