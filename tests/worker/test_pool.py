"""The executor pool with real executor processes (analogues of Spider's test_process_pool.rs,
plus the multi-process behaviour: N tasks at once, kill and respawn)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
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
WAIT_S = 30.0


def req(
    func: str,
    *values: Any,
    package: str = "integration_tasks",
    task_id: int = 0,
    timeout_ms: int = 60_000,
    io: bytes | None = None,
) -> TaskRequest:
    if io is None:
        io = _core.wire_encode([msgpack.packb(v, use_bin_type=True) for v in values])
    return TaskRequest(
        job_id=1,
        task_id=task_id,
        instance_id=1,
        resource_group_id=1,
        package=package,
        task_func=func,
        task_io=io,
        hard_timeout_ms=timeout_ms,
    )


def outputs(result: TaskResult) -> list[Any]:
    assert result.kind is ResultKind.SUCCESS, result
    assert result.outputs is not None
    return [msgpack.unpackb(p, raw=False) for p in _core.wire_decode(result.outputs)]


def _executor_children() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if p.is_running()
        and p.status() != psutil.STATUS_ZOMBIE
        and "orbweaver.worker.executor" in " ".join(_cmdline(p))
    ]


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return list(p.cmdline())
    except psutil.Error:
        return []


def _gone(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _reapable(pid: int) -> bool:
    """Dead with every thread gone (a zombie leader can outlive its threads for a moment)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return fields["State"].strip().startswith("Z") and int(fields["Threads"]) <= 1


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def make_pool() -> Iterator[Callable[..., ExecutorPool]]:
    pools: list[ExecutorPool] = []

    def make(processes: int = 1, **kwargs: Any) -> ExecutorPool:
        pool = ExecutorPool(TASKS_DIR, processes, **kwargs)
        pools.append(pool)
        pool.start()
        return pool

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def pool(make_pool: Callable[..., ExecutorPool]) -> ExecutorPool:
    return make_pool(1)


# -------------------------------------------------------------------------------------------------
# Spider test_process_pool.rs analogues
# -------------------------------------------------------------------------------------------------


def test_success(pool: ExecutorPool) -> None:
    result = pool.run(req("fibonacci", 10))
    assert outputs(result) == [55]
    assert result.error is None
    assert result.elapsed_s > 0


def test_in_task_failure_is_decoded(pool: ExecutorPool) -> None:
    pid = pool.pids()
    result = pool.run(req("always_fail"))
    assert result.kind is ResultKind.TASK_ERROR
    assert result.outputs is None
    assert result.error is not None
    assert result.error.startswith("ValueError: always_fail: this task always fails\n")
    assert "Traceback (most recent call last):" in result.error
    assert "integration_tasks.py" in result.error
    assert "\\x" not in result.error and "\ufffd" not in result.error  # never raw bytes
    assert pool.pids() == pid  # in-task failures keep the executor


def test_crash_then_respawn(pool: ExecutorPool) -> None:
    [old] = pool.pids()
    result = pool.run(req("crash"))
    assert result.kind is ResultKind.CRASH
    assert result.error == "executor crashed (exit code 3)"
    [new] = pool.pids()
    assert new != old and _gone(old)
    assert outputs(pool.run(req("fibonacci", 7))) == [13]


def test_killed_by_signal(pool: ExecutorPool) -> None:
    result = pool.run(req("kill_self"))
    assert result.kind is ResultKind.CRASH
    assert result.error == "executor crashed (killed by signal 9)"
    assert outputs(pool.run(req("fibonacci", 7))) == [13]


def test_hard_timeout_then_respawn(pool: ExecutorPool) -> None:
    [old] = pool.pids()
    result = pool.run(req("sleep_forever", timeout_ms=200))
    assert result.kind is ResultKind.TIMEOUT
    assert result.error == "hard timeout (200 ms) exceeded"
    assert result.elapsed_s >= 0.2
    [new] = pool.pids()
    assert new != old
    assert _gone(old)  # killed and reaped before run() returned
    assert outputs(pool.run(req("fibonacci", 7))) == [13]


def test_executor_killed_while_idle_is_replaced_without_blaming_the_next_task(
    pool: ExecutorPool,
) -> None:
    [old] = pool.pids()
    psutil.Process(old).kill()
    wait_for(lambda: _reapable(old), "the executor to die")
    assert outputs(pool.run(req("fibonacci", 10))) == [55]
    assert pool.pids() != [old]


# -------------------------------------------------------------------------------------------------
# Batches
# -------------------------------------------------------------------------------------------------


def test_batch_with_a_crash_in_the_middle(pool: ExecutorPool) -> None:
    results = pool.run_batch(
        [
            req("fibonacci", 10),
            req("crash"),
            req("fibonacci", 7),
            req("always_fail"),
            req("fibonacci", 8),
        ]
    )
    assert [r.kind for r in results] == [
        ResultKind.SUCCESS,
        ResultKind.CRASH,
        ResultKind.SUCCESS,
        ResultKind.TASK_ERROR,
        ResultKind.SUCCESS,
    ]
    assert outputs(results[0]) == [55]
    assert outputs(results[2]) == [13]
    assert outputs(results[4]) == [21]


def test_batch_with_a_timeout_in_the_middle(pool: ExecutorPool) -> None:
    results = pool.run_batch(
        [req("fibonacci", 10), req("sleep_forever", timeout_ms=200), req("fibonacci", 7)]
    )
    assert [r.kind for r in results] == [ResultKind.SUCCESS, ResultKind.TIMEOUT, ResultKind.SUCCESS]
    assert results[1].error == "hard timeout (200 ms) exceeded"
    assert outputs(results[2]) == [13]


def test_each_task_of_a_batch_has_its_own_deadline(pool: ExecutorPool) -> None:
    # Together the naps exceed one task's timeout, each one alone does not.
    results = pool.run_batch([req("nap", 0.4, timeout_ms=3_000) for _ in range(10)])
    assert [r.kind for r in results] == [ResultKind.SUCCESS] * 10


def test_empty_batch(pool: ExecutorPool) -> None:
    assert pool.run_batch([]) == []


def test_task_input_larger_than_the_frame_limit(
    make_pool: Callable[..., ExecutorPool],
) -> None:
    pool = make_pool(1, max_frame_bytes=4096)
    results = pool.run_batch(
        [req("fibonacci", 5), req("sleep_and_echo", ["x" * 10_000]), req("fibonacci", 6)]
    )
    assert [r.kind for r in results] == [
        ResultKind.SUCCESS,
        ResultKind.TASK_ERROR,
        ResultKind.SUCCESS,
    ]
    assert results[1].error is not None and "exceeds the executor frame limit" in results[1].error
    assert outputs(results[2]) == [8]


def test_batch_split_over_several_frames(make_pool: Callable[..., ExecutorPool]) -> None:
    pool = make_pool(1, max_frame_bytes=4096)
    requests = [req("sleep_and_echo", [f"{i}" * 500]) for i in range(10)]
    results = pool.run_batch(requests)
    assert [outputs(r) for r in results] == [[[f"{i}" * 500]] for i in range(10)]


# -------------------------------------------------------------------------------------------------
# Concurrency
# -------------------------------------------------------------------------------------------------


def _run_threads(n: int, target: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT_S * 2)
    assert not errors, errors
    return results


def test_n_tasks_run_concurrently_on_n_executors(
    make_pool: Callable[..., ExecutorPool], tmp_path: Path
) -> None:
    n = 3
    pool = make_pool(n)
    results = _run_threads(n, lambda i: pool.run(req("rendezvous", str(tmp_path), f"t{i}", n)))
    values = [outputs(r) for r in results]
    # Each task saw all n announcements while it was running: they overlapped.
    assert [v[2] for v in values] == [n] * n
    starts, ends = [v[0] for v in values], [v[1] for v in values]
    assert max(starts) <= min(ends)
    pids = {name.split(".")[1] for name in os.listdir(tmp_path)}
    assert len(pids) == n


def test_never_more_than_processes_tasks_at_once(
    make_pool: Callable[..., ExecutorPool], tmp_path: Path
) -> None:
    pool = make_pool(2)
    results = _run_threads(6, lambda i: pool.run(req("interval", str(tmp_path), f"t{i}", 0.2)))
    assert all(r.kind is ResultKind.SUCCESS for r in results)
    intervals = [json.loads(p.read_text()) for p in tmp_path.iterdir()]
    assert len(intervals) == 6
    for start, _, _ in intervals:
        running = sum(1 for s, e, _ in intervals if s <= start < e)
        assert running <= 2
    assert {pid for _, _, pid in intervals} <= set(pool.pids())


def test_many_threads_share_the_pool(make_pool: Callable[..., ExecutorPool]) -> None:
    pool = make_pool(3)

    def work(i: int) -> list[int]:
        return [outputs(pool.run(req("fibonacci", k)))[0] for k in range(i % 5, i % 5 + 10)]

    fib = [0, 1]
    for _ in range(20):
        fib.append(fib[-1] + fib[-2])
    results = _run_threads(8, work)
    for i, values in enumerate(results):
        assert values == fib[i % 5 : i % 5 + 10]


# -------------------------------------------------------------------------------------------------
# Lifecycle
# -------------------------------------------------------------------------------------------------


def test_close_is_idempotent_and_leaves_no_child_processes(
    make_pool: Callable[..., ExecutorPool],
) -> None:
    pool = make_pool(3)
    pids = pool.pids()
    assert len(pids) == 3
    assert {p.pid for p in _executor_children()} >= set(pids)
    pool.close()
    pool.close()
    assert all(_gone(pid) for pid in pids)
    assert not [p for p in _executor_children() if p.pid in pids]
    assert pool.closed
    with pytest.raises(ExecutorPoolError, match="closed"):
        pool.run(req("fibonacci", 1))


def test_close_interrupts_a_running_task(make_pool: Callable[..., ExecutorPool]) -> None:
    pool = make_pool(1, close_timeout=0.5)
    [pid] = pool.pids()
    outcome: list[BaseException | TaskResult] = []

    def run() -> None:
        try:
            outcome.append(pool.run(req("sleep_forever", timeout_ms=0)))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    pool.close()
    t.join(timeout=WAIT_S)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ExecutorPoolError)
    assert _gone(pid)


def test_context_manager(tmp_path: Path) -> None:
    with ExecutorPool(TASKS_DIR, 1) as pool:
        [pid] = pool.pids()
        assert outputs(pool.run(req("fibonacci", 3))) == [2]
    assert _gone(pid)


def test_run_before_start_is_an_error() -> None:
    pool = ExecutorPool(TASKS_DIR, 1)
    with pytest.raises(ExecutorPoolError, match="not started"):
        pool.run(req("fibonacci", 1))
    pool.close()


def test_missing_tasks_dir(tmp_path: Path) -> None:
    pool = ExecutorPool(tmp_path / "nope", 1)
    with pytest.raises(ExecutorPoolError, match="does not exist"):
        pool.start()


def test_missing_python(tmp_path: Path) -> None:
    pool = ExecutorPool(TASKS_DIR, 1, python=str(tmp_path / "no-python"))
    with pytest.raises(ExecutorPoolError, match="cannot start an executor"):
        pool.start()


def test_executor_failing_before_its_greeting(tmp_path: Path) -> None:
    broken = ExecutorPool(TASKS_DIR, 2, python=str(_write_failing_python(tmp_path)))
    with pytest.raises(ExecutorPoolError) as info:
        broken.start()
    message = str(info.value)
    assert "exited before it was ready (exit code 7)" in message
    assert "broken interpreter: cannot import orbweaver" in message  # its stderr
    assert broken.closed
    assert not _executor_children()


def _write_failing_python(tmp_path: Path) -> Path:
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\necho 'broken interpreter: cannot import orbweaver' >&2\nexit 7\n")
    script.chmod(0o755)
    return script


# An executor that greets and answers like a real one but breaks the protocol as told: "version"
# greets with another protocol version; "malformed" answers the first task of a request, then
# sends a response of the wrong type for the last one, both in one write.
_FAKE_EXECUTOR = """
import os, sys
from orbweaver.worker.protocol import (
    FrameReader, Hello, RunRequest, TaskSucceeded, decode_pool_message, encode_frame,
)

mode = sys.argv[1]
out = sys.stdout.buffer
out.write(Hello(os.getpid(), "fake", 99 if mode == "version" else 1).encode())
out.flush()
for request in iter(FrameReader(sys.stdin.buffer, decode=decode_pool_message).read, None):
    if not isinstance(request, RunRequest):
        break
    good = TaskSucceeded(request.tasks[0].id, b"", 0).encode()
    bad = {"id": request.tasks[-1].id, "ok": True, "outputs": "text", "elapsed_us": 0}
    out.write(good + encode_frame(bad))
    out.flush()
"""


def _fake_python(tmp_path: Path, mode: str) -> Path:
    """An interpreter for the pool that runs the fake executor instead of the real one."""
    fake = tmp_path / "fake_executor.py"
    fake.write_text(_FAKE_EXECUTOR)
    script = tmp_path / f"python-{mode}"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" {mode} "$@"\n')
    script.chmod(0o755)
    return script


def test_an_executor_speaking_another_protocol_version_is_refused(tmp_path: Path) -> None:
    pool = ExecutorPool(TASKS_DIR, 1, python=str(_fake_python(tmp_path, "version")))
    with pytest.raises(ExecutorPoolError) as info:
        pool.start()
    assert "speaks executor protocol version 99, this pool speaks version 1" in str(info.value)
    assert pool.closed
    assert not _executor_children()


def test_a_malformed_response_is_a_crash_after_the_responses_before_it(
    make_pool: Callable[..., ExecutorPool], tmp_path: Path
) -> None:
    pool = make_pool(1, python=str(_fake_python(tmp_path, "malformed")))
    [before] = pool.pids()
    first, second = pool.run_batch([req("fibonacci", 1), req("fibonacci", 2)])
    assert (first.kind, first.outputs, first.error) == (ResultKind.SUCCESS, b"", None)
    assert second.kind is ResultKind.CRASH
    assert second.error == (
        "executor crashed (malformed response: response: field `outputs` must be bytes, "
        "got str 'text')"
    )
    assert pool.pids() != [before]  # replaced
    assert pool.run(req("fibonacci", 3)).kind is ResultKind.SUCCESS


@pytest.fixture
def movable_tasks(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A private copy of the tasks directory (the path, and where to move it so that no new
    executor can start)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(TASKS_DIR / "integration_tasks.py", tasks)
    yield tasks, tmp_path / "moved"


@pytest.mark.parametrize(
    ("culprit", "kind", "reason"),
    [
        (req("crash"), ResultKind.CRASH, "a crash"),
        (req("sleep_forever", timeout_ms=300), ResultKind.TIMEOUT, "a hard timeout"),
    ],
    ids=["crash", "timeout"],
)
def test_failed_respawn_keeps_the_results_of_the_batch_and_the_slot_recovers_later(
    culprit: TaskRequest,
    kind: ResultKind,
    reason: str,
    movable_tasks: tuple[Path, Path],
) -> None:
    tasks, moved = movable_tasks
    pool = ExecutorPool(tasks, 1)
    pool.start()
    try:
        assert outputs(pool.run(req("fibonacci", 5))) == [5]  # the module is now imported
        tasks.rename(moved)  # new executors cannot start any more
        results = pool.run_batch(
            [req("fibonacci", 7), req("fibonacci", 8), culprit, req("fibonacci", 9), req("pid")]
        )
        # What ran before the respawn failed is returned; the rest is not silently dropped.
        assert [r.kind for r in results] == [
            ResultKind.SUCCESS,
            ResultKind.SUCCESS,
            kind,
            ResultKind.NOT_RUN,
            ResultKind.NOT_RUN,
        ]
        assert outputs(results[0]) == [13]
        assert outputs(results[1]) == [21]
        assert results[2].error in (
            "executor crashed (exit code 3)",
            "hard timeout (300 ms) exceeded",
        )
        for r in results[3:]:
            assert r.outputs is None
            assert r.error is not None
            assert r.error.startswith(
                f"not run: cannot respawn an executor after {reason}: executor "
            )
            assert "exited before it was ready (exit code 2)" in r.error
            assert "unusable tasks directory" in r.error
        assert pool.respawn_failure == (results[3].error or "").removeprefix("not run: ")
        assert pool.pids() == []
        # Still no executor: nothing of the next batch runs, and it says why.
        later = pool.run_batch([req("fibonacci", 3), req("fibonacci", 4)])
        assert [r.kind for r in later] == [ResultKind.NOT_RUN] * 2
        assert all(
            (r.error or "").startswith("not run: cannot respawn an executor after an earlier")
            for r in later
        )
        moved.rename(tasks)
        assert outputs(pool.run(req("fibonacci", 6))) == [8]  # the empty slot is refilled
        assert pool.respawn_failure is None
        assert len(pool.pids()) == 1
    finally:
        pool.close()


def test_executor_dead_while_idle_and_no_respawn_possible(
    movable_tasks: tuple[Path, Path],
) -> None:
    tasks, moved = movable_tasks
    pool = ExecutorPool(tasks, 1)
    pool.start()
    try:
        [old] = pool.pids()
        psutil.Process(old).kill()
        wait_for(lambda: _reapable(old), "the executor to die")
        tasks.rename(moved)
        results = pool.run_batch([req("fibonacci", 7), req("fibonacci", 8)])
        assert [r.kind for r in results] == [ResultKind.NOT_RUN] * 2
        assert all(
            (r.error or "").startswith(
                "not run: cannot respawn an executor after it died while idle: "
            )
            for r in results
        )
        assert pool.respawn_failure is not None
        moved.rename(tasks)
        assert outputs(pool.run(req("fibonacci", 10))) == [55]
        assert pool.respawn_failure is None
    finally:
        pool.close()
    assert not _executor_children()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="processes"):
        ExecutorPool(TASKS_DIR, 0)


# -------------------------------------------------------------------------------------------------
# Environment and logs
# -------------------------------------------------------------------------------------------------


def test_env_reaches_the_executors(make_pool: Callable[..., ExecutorPool], tmp_path: Path) -> None:
    target = tmp_path / "cleanup.json"
    pool = make_pool(1, env={"ORBWEAVER_TEST_CLEANUP_FILE": str(target)})
    io = _core.wire_encode([msgpack.packb(3), msgpack.packb("x")])
    result = pool.run(req("write_graph_inputs", io=io, task_id=_core.TASK_CLEANUP))
    assert outputs(result) == []
    assert json.loads(target.read_text()) == [3, "x"]


def test_commit_task_through_the_pool(pool: ExecutorPool) -> None:
    io = _core.encode_outputs([msgpack.packb(v) for v in (5, -5)])
    assert outputs(pool.run(req("assert_outputs_sum_zero", io=io, task_id=_core.TASK_COMMIT))) == []
    io = _core.encode_outputs([msgpack.packb(v) for v in (5, 5)])
    result = pool.run(req("assert_outputs_sum_zero", io=io, task_id=_core.TASK_COMMIT))
    assert result.kind is ResultKind.TASK_ERROR
    assert result.error is not None and "do not sum to zero" in result.error


def test_executor_stderr_is_forwarded_to_the_logger(
    pool: ExecutorPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orbweaver.executor")
    [pid] = pool.pids()
    assert outputs(pool.run(req("chatty", 1))) == [2]

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "orbweaver.executor"]

    wait_for(lambda: any(r.getMessage() == "to stderr" for r in records()), "the forwarded lines")
    messages = [r.getMessage() for r in records()]
    assert "hello from print() inside a task" in messages
    assert "raw write to fd 1" in messages
    assert all(getattr(r, "executor_pid", None) == pid for r in records())
    long = [m for m in messages if m.startswith("xxxx")]
    assert long and len(long[0]) < 70_000 and long[0].endswith("[line truncated]")


def test_overly_long_lines_are_truncated_and_capture_resumes(
    pool: ExecutorPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orbweaver.executor")
    assert outputs(pool.run(req("long_line", 1_000_000))) == [1_000_000]
    wait_for(
        lambda: any(r.getMessage() == "after the long line" for r in caplog.records),
        "the line after the long one",
    )
    long = [r.getMessage() for r in caplog.records if r.getMessage().startswith("yyyy")]
    assert len(long) == 1 and long[0].endswith("[line truncated]")
