"""The executor process over raw pipes (analogues of Spider's test_executor.rs,
plus the trust-boundary checks: only registered tasks of the tasks directory run)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

from orbweaver import _core
from orbweaver.worker.protocol import (
    PROTOCOL_VERSION,
    ExecutorMessage,
    FrameReader,
    Hello,
    RunRequest,
    RunTask,
    Shutdown,
    TaskError,
    TaskFailed,
    TaskSucceeded,
    decode_executor_message,
    encode_frame,
)

pytestmark = pytest.mark.timeout(60)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
PYTHON_ROOT = Path(__file__).resolve().parents[2] / "python"
WAIT_S = 30.0


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PYTHON_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra or {})
    return env


class RawExecutor:
    """An executor process driven directly over its pipes."""

    def __init__(
        self,
        tasks_dir: Path = TASKS_DIR,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        expect_hello: bool = True,
    ) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orbweaver.worker.executor",
                "--tasks-dir",
                str(tasks_dir),
                *args,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(env),
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._stderr: list[bytes] = []
        self._stderr_thread = threading.Thread(target=self._drain, daemon=True)
        self._stderr_thread.start()
        self.reader = FrameReader(self.proc.stdout, decode=decode_executor_message)
        self.next_id = 0
        self.hello = self.read() if expect_hello else None

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def read(self) -> ExecutorMessage | None:
        return self.reader.read()

    def send(self, message: RunRequest | Shutdown) -> None:
        self.send_frame(message.encode())

    def send_raw(self, body: dict[str, Any]) -> None:
        """A frame of any map, such as a malformed request."""
        self.send_frame(encode_frame(body))

    def send_frame(self, frame: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(frame)
        self.proc.stdin.flush()

    def task(
        self,
        package: str,
        func: str,
        io: bytes,
        task_id: int = 0,
    ) -> RunTask:
        self.next_id += 1
        return RunTask(
            id=self.next_id,
            package=package,
            func=func,
            job_id=7,
            task_id=task_id,
            instance_id=11,
            resource_group_id=5,
            io=io,
        )

    def run(
        self, package: str, func: str, io: bytes, task_id: int = 0
    ) -> TaskSucceeded | TaskFailed:
        request = self.task(package, func, io, task_id)
        self.send(RunRequest((request,)))
        response = self.read()
        assert response is not None, f"executor ended without answering; stderr:\n{self.stderr}"
        assert isinstance(response, (TaskSucceeded, TaskFailed)), response
        assert response.id == request.id
        return response

    def wait(self) -> int:
        code = self.proc.wait(timeout=WAIT_S)
        self._stderr_thread.join(timeout=WAIT_S)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT_S)
        for s in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


def wire(*values: Any) -> bytes:
    return _core.wire_encode([msgpack.packb(v, use_bin_type=True) for v in values])


def outputs(response: ExecutorMessage | None) -> list[Any]:
    assert isinstance(response, TaskSucceeded), response
    return [msgpack.unpackb(p, raw=False) for p in _core.wire_decode(response.outputs)]


def failure(response: ExecutorMessage | None) -> TaskError:
    assert isinstance(response, TaskFailed), response
    return response.error


@pytest.fixture
def executor() -> Iterator[RawExecutor]:
    ex = RawExecutor()
    try:
        yield ex
    finally:
        ex.close()


@pytest.fixture(scope="module")
def shared_executor() -> Iterator[RawExecutor]:
    """One executor for the many escape attempts (each test also proves it still works)."""
    ex = RawExecutor()
    try:
        yield ex
    finally:
        ex.close()


# -------------------------------------------------------------------------------------------------
# Spider test_executor.rs analogues
# -------------------------------------------------------------------------------------------------


def test_hello_then_fibonacci_then_clean_exit_on_shutdown(executor: RawExecutor) -> None:
    assert isinstance(executor.hello, Hello)
    assert executor.hello.pid == executor.proc.pid
    assert executor.hello.version == _core.__version__
    assert executor.hello.protocol == PROTOCOL_VERSION

    response = executor.run("integration_tasks", "fibonacci", wire(10))
    assert outputs(response) == [55]
    assert response.elapsed_us >= 0

    executor.send(Shutdown())
    assert executor.read() is None
    assert executor.wait() == 0


def test_stdin_eof_is_a_clean_exit(executor: RawExecutor) -> None:
    assert outputs(executor.run("integration_tasks", "fibonacci", wire(7))) == [13]
    assert executor.proc.stdin is not None
    executor.proc.stdin.close()
    assert executor.read() is None
    assert executor.wait() == 0


def test_always_fail_is_decoded_with_type_message_and_traceback(executor: RawExecutor) -> None:
    response = executor.run("integration_tasks", "always_fail", wire())
    assert isinstance(response, TaskFailed)
    error = response.error
    assert error.type == "ValueError"
    assert "always_fail" in error.message
    tb = error.traceback
    assert tb.startswith("Traceback (most recent call last):")
    assert "integration_tasks.py" in tb and 'raise ValueError("always_fail' in tb
    assert "orbweaver/worker/executor.py" not in tb  # only user frames
    # The executor keeps serving after an in-task failure.
    assert outputs(executor.run("integration_tasks", "fibonacci", wire(10))) == [55]


def test_traceback_keeps_user_frames_and_names_the_cause(executor: RawExecutor) -> None:
    response = executor.run("integration_tasks", "chained_failure", wire("b"))
    error = failure(response)
    assert error.type == "RuntimeError"
    assert error.message == "lookup of 'b' failed"
    assert error.traceback.endswith(
        "RuntimeError: lookup of 'b' failed\n(caused by KeyError: 'b')\n"
    )
    response = executor.run("integration_tasks", "fibonacci", wire(100_000))
    assert failure(response).type == "RecursionError"
    tb = failure(response).traceback
    assert len(tb) < 2000  # only the last 8 frames, repeats collapsed
    assert "[Previous line repeated 5 more times]" in tb
    # The executor survives a RecursionError.
    assert outputs(executor.run("integration_tasks", "fibonacci", wire(10))) == [55]


def test_custom_exception_type_is_qualified(executor: RawExecutor) -> None:
    response = executor.run("complex", "always_fail", wire([[]]))
    assert failure(response).type == "complex.ComplexError"
    assert failure(response).message == "always fails (custom error)"


def test_sys_exit_inside_a_task_is_a_task_error(executor: RawExecutor) -> None:
    response = executor.run("integration_tasks", "exit_via_sys_exit", wire())
    assert failure(response).type == "SystemExit"
    assert failure(response).message == "5"
    assert outputs(executor.run("integration_tasks", "fibonacci", wire(3))) == [2]


def test_crash_gives_no_response_eof_and_nonzero_exit(executor: RawExecutor) -> None:
    executor.send(RunRequest((executor.task("integration_tasks", "crash", wire()),)))
    assert executor.read() is None
    assert executor.wait() == 3


def test_sigkill_gives_no_response(executor: RawExecutor) -> None:
    executor.send(RunRequest((executor.task("integration_tasks", "kill_self", wire()),)))
    assert executor.read() is None
    assert executor.wait() == -9


def _job_outputs(*values: int) -> bytes:
    return _core.encode_outputs([msgpack.packb(v) for v in values])


def test_commit_task_outputs_sum_to_zero(executor: RawExecutor) -> None:
    response = executor.run(
        "integration_tasks", "assert_outputs_sum_zero", _job_outputs(3, -1, -2), _core.TASK_COMMIT
    )
    assert outputs(response) == []


def test_commit_task_outputs_do_not_sum_to_zero(executor: RawExecutor) -> None:
    response = executor.run(
        "integration_tasks", "assert_outputs_sum_zero", _job_outputs(1, 2, 3), _core.TASK_COMMIT
    )
    assert isinstance(response, TaskFailed)
    assert "do not sum to zero" in failure(response).message


def test_commit_task_with_empty_outputs(executor: RawExecutor) -> None:
    response = executor.run(
        "integration_tasks", "assert_outputs_sum_zero", _job_outputs(), _core.TASK_COMMIT
    )
    assert isinstance(response, TaskFailed)
    assert "empty" in failure(response).message


def test_commit_task_run_as_a_regular_task(executor: RawExecutor) -> None:
    response = executor.run("integration_tasks", "assert_outputs_sum_zero", wire(), 0)
    assert isinstance(response, TaskFailed)
    assert "commit task" in failure(response).message


def test_large_commit_outputs_are_zstd_compressed_and_decoded(executor: RawExecutor) -> None:
    values = [1000] * 600 + [-600_000]
    data = _job_outputs(*values)
    assert data[0] == 1  # the zstd form
    response = executor.run("integration_tasks", "assert_outputs_sum_zero", data, _core.TASK_COMMIT)
    assert outputs(response) == []


def test_cleanup_task_receives_the_graph_inputs(tmp_path: Path) -> None:
    target = tmp_path / "cleanup.json"
    ex = RawExecutor(env={"ORBWEAVER_TEST_CLEANUP_FILE": str(target)})
    try:
        graph_inputs = wire(b"raw", "text", [1, 2], {"k": 1.5})
        response = ex.run(
            "integration_tasks", "write_graph_inputs", graph_inputs, _core.TASK_CLEANUP
        )
        assert outputs(response) == []
        # bytes stay bytes (written as {"hex": ...}) and str stays str
        assert json.loads(target.read_text()) == [{"hex": "726177"}, "text", [1, 2], {"k": 1.5}]
        # An empty buffer (what Spider's storage sends for cleanup) means "no graph inputs".
        response = ex.run("integration_tasks", "write_graph_inputs", b"", _core.TASK_CLEANUP)
        assert outputs(response) == []
        assert json.loads(target.read_text()) == []
    finally:
        ex.close()


def test_termination_task_with_parameters_is_refused(executor: RawExecutor) -> None:
    response = executor.run("integration_tasks", "fibonacci", _job_outputs(1), _core.TASK_COMMIT)
    assert failure(response).type == "TaskInputError"
    assert "cannot run as the commit task" in failure(response).message


def test_context_is_passed_to_the_task(executor: RawExecutor) -> None:
    response = executor.run("integration_tasks", "describe_context", wire("tag"), 4)
    assert outputs(response) == ["tag", 7, 4, 11, 5]


# -------------------------------------------------------------------------------------------------
# Batches, inputs, outputs
# -------------------------------------------------------------------------------------------------


def test_a_batch_streams_one_response_per_task_in_order(executor: RawExecutor) -> None:
    tasks = [
        executor.task("integration_tasks", "fibonacci", wire(10)),
        executor.task("integration_tasks", "always_fail", wire()),
        executor.task("integration_tasks", "sleep_and_echo", wire(["a/b", "c"])),
    ]
    executor.send(RunRequest(tuple(tasks)))
    responses = [executor.read() for _ in tasks]
    assert [getattr(r, "id", None) for r in responses] == [t.id for t in tasks]
    assert outputs(responses[0]) == [55]
    assert failure(responses[1]).type == "ValueError"
    assert outputs(responses[2]) == [["a/b", "c"]]


def test_wrong_input_type_and_count_are_readable(executor: RawExecutor) -> None:
    response = executor.run("integration_tasks", "fibonacci", wire("ten"))
    assert failure(response).type == "TaskInputError"
    assert failure(response).message == (
        "`integration_tasks.fibonacci` input 0 (parameter `n` of type int): "
        "expected int, got str 'ten'"
    )
    response = executor.run("integration_tasks", "fibonacci", wire(1, 2))
    assert "takes 1 inputs (n) but received 2" in failure(response).message
    response = executor.run("integration_tasks", "fibonacci", b"\x01")
    assert failure(response).type == "TaskInputError"
    assert "malformed inputs" in failure(response).message


def test_wrong_outputs_are_readable(executor: RawExecutor) -> None:
    response = executor.run("integration_tasks", "wrong_output", wire())
    assert failure(response).type == "TaskOutputError"
    assert "output 0 (type int): expected int, got str 'not an int'" in failure(response).message
    response = executor.run("integration_tasks", "wrong_arity", wire())
    assert "declares 2 outputs (int, int) but returned tuple" in failure(response).message


def test_print_inside_a_task_does_not_corrupt_the_protocol(executor: RawExecutor) -> None:
    assert outputs(executor.run("integration_tasks", "chatty", wire(1))) == [2]
    assert outputs(executor.run("integration_tasks", "fibonacci", wire(10))) == [55]
    executor.send(Shutdown())
    assert executor.wait() == 0
    err = executor.stderr
    assert "hello from print() inside a task" in err
    assert "raw write to sys.stdout" in err
    assert "raw write to fd 1" in err


def test_submodule_tasks_and_renamed_tasks_resolve(executor: RawExecutor) -> None:
    assert outputs(executor.run("nested_pkg", "sub.mod.triple", wire(5))) == [15]
    assert outputs(executor.run("integration_tasks", "renamed", wire(5))) == [-5]
    response = executor.run("integration_tasks", "original_name", wire(5))
    assert failure(response).type == "TaskNotFoundError"


def test_package_import_error_is_reported(executor: RawExecutor) -> None:
    response = executor.run("broken_import", "anything", wire())
    assert failure(response).type == "PackageImportError"
    assert "broken_import cannot be imported on purpose" in failure(response).message
    assert "broken_import.py" in failure(response).traceback


def test_init_hook_runs_in_the_executor(executor: RawExecutor) -> None:
    assert outputs(executor.run("integration_tasks", "assert_initialized", wire())) == [
        executor.proc.pid
    ]


def test_failing_init_hook_is_reported_and_the_executor_survives() -> None:
    ex = RawExecutor(env={"ORBWEAVER_TEST_TASKS_INIT_SHOULD_FAIL": "1"})
    try:
        for _ in range(2):  # every attempt reports it; the executor keeps serving
            response = ex.run("integration_tasks", "assert_initialized", wire())
            assert failure(response).type == "PackageImportError"
            message = failure(response).message
            assert "integration_tasks" in message
            assert "initialisation failed on purpose" in message
            assert "integration_tasks.py" in failure(response).traceback
        assert outputs(ex.run("nested_pkg", "sub.mod.triple", wire(2))) == [6]
    finally:
        ex.close()


def test_response_larger_than_the_frame_limit_becomes_an_error() -> None:
    ex = RawExecutor(args=["--max-frame-bytes", "4096"])
    try:
        response = ex.run("integration_tasks", "make_text", wire(5000))
        assert "exceeds the executor frame limit of 4096 bytes" in failure(response).message
        assert outputs(ex.run("integration_tasks", "fibonacci", wire(6))) == [8]
    finally:
        ex.close()


def test_oversized_request_frame_ends_the_executor_with_an_error() -> None:
    ex = RawExecutor(args=["--max-frame-bytes", "4096"])
    try:
        ex.send(RunRequest((ex.task("integration_tasks", "sleep_and_echo", wire(["x" * 10_000])),)))
        assert ex.read() is None
        assert ex.wait() == 3
        assert "exceeds the executor frame limit of 4096 bytes" in ex.stderr
    finally:
        ex.close()


def test_malformed_frame_is_a_protocol_error(executor: RawExecutor) -> None:
    assert executor.proc.stdin is not None
    executor.proc.stdin.write(b"\x00\x00\x00\x03\xc1\xc1\xc1")
    executor.proc.stdin.flush()
    assert executor.read() is None
    assert executor.wait() == 3
    assert "protocol error" in executor.stderr


def test_missing_tasks_dir_exits_before_hello(tmp_path: Path) -> None:
    ex = RawExecutor(tmp_path / "nope", expect_hello=False)
    try:
        assert ex.read() is None
        assert ex.wait() == 2
        assert "unusable tasks directory" in ex.stderr
    finally:
        ex.close()


# -------------------------------------------------------------------------------------------------
# Trust boundary: nothing outside registered tasks in the tasks directory can be reached
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("package", "func", "fragment"),
    [
        ("..", "x", "not an identifier"),
        ("../x", "fn", "not an identifier"),
        ("/abs", "fn", "not an identifier"),
        ("/etc/passwd", "x", "not an identifier"),
        ("a/b", "fn", "not an identifier"),
        ("", "fn", "not an identifier"),
        ("integration_tasks.fibonacci", "x", "not an identifier"),
        ("os", "system", "not a module of the tasks directory"),
        ("subprocess", "run", "tasks directory"),
        ("sys", "exit", "not a module of the tasks directory"),
        ("msgpack", "packb", "not a module of the tasks directory"),
        ("orbweaver", "task", "not a module of the tasks directory"),
        ("no_such_package", "fn", "no module or package `no_such_package`"),
        ("__main__", "main", "dunder"),
        ("integration_tasks", "__class__", "dunder"),
        ("integration_tasks", "fibonacci.__globals__", "dunder"),
        ("integration_tasks", "__builtins__.eval", "dunder"),
        ("integration_tasks", "../x", ""),
        ("integration_tasks", "", ""),
        ("integration_tasks", "a..b", ""),
        ("integration_tasks", "not_a_task", "is not an @orbweaver.task function"),
        ("integration_tasks", "system", "is not an @orbweaver.task function"),
        ("integration_tasks", "os.system", "is not an @orbweaver.task function"),
        ("integration_tasks", "json.dumps", "is not an @orbweaver.task function"),
        ("integration_tasks", "ow.task", "is not an @orbweaver.task function"),
        ("integration_tasks", "fibonacci.fn", "does not exist"),
        ("integration_tasks", "missing", "`integration_tasks.missing` does not exist"),
        ("complex", "ComplexVec", "is not an @orbweaver.task function"),
    ],
)
def test_escape_attempts_are_refused(
    shared_executor: RawExecutor, package: str, func: str, fragment: str
) -> None:
    executor = shared_executor
    response = executor.run(package, func, wire())
    error = failure(response)
    assert error.type == "TaskNotFoundError"
    assert fragment in error.message
    # The executor is unharmed.
    assert outputs(executor.run("integration_tasks", "fibonacci", wire(10))) == [55]


def test_non_string_names_are_refused(executor: RawExecutor) -> None:
    request = executor.task("integration_tasks", "fibonacci", wire(1)).to_wire()
    request["package"] = b"integration_tasks"
    executor.send_raw({"op": "run", "tasks": [request]})
    response = executor.read()
    assert isinstance(response, TaskFailed) and response.id == request["id"]
    assert response.error.type == "TaskNotFoundError"
    assert "`tasks[0].package` must be a str, got bytes" in response.error.message


_OUTSIDE_MODULE = """
from pathlib import Path
import orbweaver as ow
Path({marker!r}).write_text("imported")

@ow.task
def fn() -> int:
    return 1
"""


def test_symlinks_out_of_the_tasks_dir_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = tmp_path / "marker"
    (outside / "evil.py").write_text(_OUTSIDE_MODULE.format(marker=str(marker)))
    (outside / "evilpkg").mkdir()
    (outside / "evilpkg" / "__init__.py").write_text(_OUTSIDE_MODULE.format(marker=str(marker)))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "evil.py").symlink_to(outside / "evil.py")
    (tasks / "evilpkg").symlink_to(outside / "evilpkg", target_is_directory=True)
    (tasks / "good.py").write_text(
        "import orbweaver as ow\n\n@ow.task\ndef fn() -> int:\n    return 1\n"
    )
    ex = RawExecutor(tasks)
    try:
        for package in ("evil", "evilpkg"):
            response = ex.run(package, "fn", wire())
            assert failure(response).type == "TaskNotFoundError"
            assert "outside the tasks directory" in failure(response).message
        assert not marker.exists(), "a module outside the tasks directory was imported"
        assert outputs(ex.run("good", "fn", wire())) == [1]
    finally:
        ex.close()


def test_a_task_imported_from_outside_the_tasks_dir_is_refused(tmp_path: Path) -> None:
    # A package in the tasks dir re-exports a registered task defined in a module that lives
    # outside it (importable through PYTHONPATH): still refused.
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "outside_tasks.py").write_text(
        "import orbweaver as ow\n\n@ow.task\ndef fn() -> int:\n    return 1\n"
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "reexport.py").write_text("from outside_tasks import fn\n")
    ex = RawExecutor(tasks, env={"PYTHONPATH": os.pathsep.join([str(PYTHON_ROOT), str(lib)])})
    try:
        response = ex.run("reexport", "fn", wire())
        assert failure(response).type == "TaskNotFoundError"
        assert "imported under another name" in failure(response).message
        response = ex.run("outside_tasks", "fn", wire())
        assert failure(response).type == "TaskNotFoundError"
    finally:
        ex.close()


def test_executor_exits_when_its_parent_dies(tmp_path: Path) -> None:
    # A parent that starts an executor (stdin kept open by a grandchild-free pipe) and dies.
    script = tmp_path / "parent.py"
    pid_file = tmp_path / "pid"
    script.write_text(
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'orbweaver.worker.executor', "
        f"'--tasks-dir', {str(TASKS_DIR)!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "p.stdout.read(4)\n"
        "import os; os._exit(0)\n"
    )
    subprocess.run([sys.executable, str(script)], env=_env(), timeout=WAIT_S, check=True)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"executor {pid} outlived its parent")
