"""The task executor process: ``python -m orbweaver.worker.executor --tasks-dir DIR``.

It speaks the protocol of `orbweaver.worker.protocol` on its stdin/stdout, runs the requested
tasks one after the other and streams one response per task. Its real stdout is kept private for
frames: fd 1 and `sys.stdout` point at stderr, so a task's `print()` ends up in the log instead of
corrupting the stream, and stdin is replaced by /dev/null.

Trust boundary: a request names a task as ``(package, task_func)``. The executor imports
`package` only from the tasks directory (never from `sys.path`, so ``os`` or ``subprocess``
cannot be named), checks that every module it loads on the request's behalf lives inside the
canonical tasks directory (symlinks resolved), rejects names that are not plain identifiers or
that touch dunder attributes, and runs only functions registered with ``@orbweaver.task``.

Resource limits (``@task(memory_limit=..., cpu_time_limit=...)``) are read from the registered
task, never from the request, and applied around the task call as soft rlimits relative to what
the executor uses at that moment; they are lifted when the task returns.

When started with ``--watchdog-fd`` (the pool does), the executor kills its own process group --
itself and whatever its tasks started -- as soon as that pipe ends: the pool's process died; and
its ``--cgroup`` too, when it is in it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import logging
import math
import os
import resource
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Final

from orbweaver import _core
from orbweaver._units import format_size
from orbweaver.tdl.context import TaskContext
from orbweaver.tdl.task import TaskFunction, registered_task
from orbweaver.tdl.types import ValueMismatchError, decode_plain, describe_value
from orbweaver.worker import isolation
from orbweaver.worker.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    FrameReader,
    FrameTooLargeError,
    Hello,
    ProtocolError,
    RejectedTask,
    RunTask,
    Shutdown,
    TaskError,
    TaskFailed,
    TaskSucceeded,
    decode_pool_message,
)

log = logging.getLogger("orbweaver.executor")

TRACEBACK_FRAMES: Final = 8
MAX_MESSAGE_CHARS: Final = 16 * 1024
_ORBWEAVER_DIR: Final = str(Path(__file__).resolve().parents[1]) + os.sep
EXIT_OK: Final = 0
EXIT_BAD_SETUP: Final = 2
EXIT_PROTOCOL: Final = 3
EXIT_PIPE: Final = 4


class ExecutorError(Exception):
    """A failure of the executor itself (not raised by the task); reported by its class name."""


class TaskNotFoundError(ExecutorError):
    """The requested task cannot be resolved (bad name, outside the tasks dir, not a task)."""


class PackageImportError(ExecutorError):
    """Importing the task's package raised an exception."""


class TaskInputError(ExecutorError):
    """The task's inputs or context do not fit the function."""


class TaskOutputError(ExecutorError):
    """The task's return value does not fit its declared outputs."""


class CpuTimeLimitExceeded(BaseException):
    """Raised inside a task that used up its `cpu_time_limit` (on SIGXCPU). Not an `Exception`,
    so that a task's ``except Exception`` does not swallow it."""


# -------------------------------------------------------------------------------------------------
# Resource limits
# -------------------------------------------------------------------------------------------------


class _Limits:
    """A task's resource limits as soft `setrlimit` limits, relative to what the executor uses
    when the task starts: RLIMIT_AS (address space) for `memory`, RLIMIT_CPU for `cpu` seconds,
    with a SIGXCPU handler that raises `CpuTimeLimitExceeded` in the task. Hard limits are left
    alone (an unprivileged process could never raise them again); `restore` puts the previous
    soft limits back."""

    def __init__(self, memory: int | None, cpu: float | None) -> None:
        self.memory = memory
        self.cpu = cpu
        self._saved: list[tuple[int, tuple[int, int]]] = []
        self._handler: Any = None

    def apply(self) -> None:
        if self.memory is not None:
            used = _address_space()
            if used is None:
                log.warning("memory limits need /proc/self/statm; running the task without one")
            else:
                self._lower(resource.RLIMIT_AS, used + self.memory)
        if self.cpu is not None:
            if threading.current_thread() is not threading.main_thread():
                raise ExecutorError("a CPU time limit needs the task to run in the main thread")
            usage = resource.getrusage(resource.RUSAGE_SELF)
            limit = self.cpu
            self._handler = signal.signal(signal.SIGXCPU, lambda *_: _cpu_exceeded(limit))
            self._lower(resource.RLIMIT_CPU, math.ceil(usage.ru_utime + usage.ru_stime + limit))

    def _lower(self, which: int, target: int) -> None:
        soft, hard = resource.getrlimit(which)
        for bound in (soft, hard):
            if bound != resource.RLIM_INFINITY:
                target = min(target, bound)
        self._saved.append((which, (soft, hard)))
        resource.setrlimit(which, (target, hard))

    def restore(self) -> None:
        while self._saved:
            which, limits = self._saved.pop()
            resource.setrlimit(which, limits)
        if self._handler is not None:
            signal.signal(signal.SIGXCPU, self._handler)
            self._handler = None


def _cpu_exceeded(limit: float) -> None:
    raise CpuTimeLimitExceeded(f"task exceeded its CPU time limit of {limit:g} s")


def _address_space() -> int | None:
    """The executor's current address space size in bytes (Linux)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


# -------------------------------------------------------------------------------------------------
# Resolution
# -------------------------------------------------------------------------------------------------


class Executor:
    """Resolves and runs tasks from one tasks directory (in-process; `main` adds the I/O)."""

    def __init__(self, tasks_dir: Path | str, *, enforce_limits: bool = False) -> None:
        """`enforce_limits`: apply the tasks' resource limits to this process (the executor
        process does; an in-process user such as a test does not want its own limits changed)."""
        self.enforce_limits = enforce_limits
        self.tasks_dir = Path(tasks_dir).resolve(strict=True)
        if not self.tasks_dir.is_dir():
            raise NotADirectoryError(f"tasks directory {self.tasks_dir} is not a directory")
        self._packages: dict[str, ModuleType] = {}
        self._tasks: dict[tuple[str, str], TaskFunction[Any, Any]] = {}

    # -- names and paths -------------------------------------------------------------------------

    def _inside(self, location: str | os.PathLike[str]) -> bool:
        try:
            return Path(location).resolve().is_relative_to(self.tasks_dir)
        except (OSError, RuntimeError):
            return False

    def _check_locations(self, name: str, spec: importlib.machinery.ModuleSpec) -> None:
        locations: list[str] = []
        if spec.origin and spec.has_location:
            locations.append(spec.origin)
        locations.extend(spec.submodule_search_locations or ())
        if not locations:
            raise TaskNotFoundError(f"module `{name}` has no location inside the tasks directory")
        for loc in locations:
            if not self._inside(loc):
                raise TaskNotFoundError(
                    f"module `{name}` resolves to {Path(loc).resolve()}, outside the tasks "
                    f"directory {self.tasks_dir}"
                )

    @staticmethod
    def check_names(package: object, task_func: object) -> list[str]:
        """Validate a task address; returns the parts of `task_func`."""
        if not isinstance(package, str) or not isinstance(task_func, str):
            raise TaskNotFoundError(
                f"package and task names must be strings, got {describe_value(package)} and "
                f"{describe_value(task_func)}"
            )
        try:
            _core.validate_task_name(package, task_func)
        except _core.InvalidGraphError as exc:
            raise TaskNotFoundError(
                f"invalid task address {package!r} / {task_func!r}: {exc}"
            ) from None
        parts = task_func.split(".")
        for part in (package, *parts):
            if part.startswith("__"):
                raise TaskNotFoundError(
                    f"invalid task address {package!r} / {task_func!r}: "
                    f"`{part}` is a dunder/private name"
                )
        return parts

    # -- imports ---------------------------------------------------------------------------------

    def _load(self, name: str, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        self._check_locations(name, spec)
        if spec.loader is None:  # a namespace package: nothing to execute
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            return module
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(name, None)
            if not isinstance(exc, Exception):
                raise
            raise PackageImportError(
                f"importing `{name}` failed: {_exc_type(exc)}: {_exc_message(exc)}"
            ) from exc
        return module

    def _existing(self, name: str) -> ModuleType | None:
        module = sys.modules.get(name)
        if module is None:
            return None
        spec = getattr(module, "__spec__", None)
        if spec is None:
            raise TaskNotFoundError(
                f"`{name}` is an already-imported module outside the tasks directory"
            )
        try:
            self._check_locations(name, spec)
        except TaskNotFoundError:
            raise TaskNotFoundError(
                f"`{name}` names an already-imported module ({spec.origin}), not a module of the "
                f"tasks directory {self.tasks_dir}"
            ) from None
        return module

    def import_package(self, package: str) -> ModuleType:
        """Import a top-level module or package from the tasks directory only."""
        cached = self._packages.get(package)
        if cached is not None:
            return cached
        module = self._existing(package)
        if module is None:
            spec = importlib.machinery.PathFinder.find_spec(package, [str(self.tasks_dir)])
            if spec is None:
                raise TaskNotFoundError(
                    f"no module or package `{package}` in the tasks directory {self.tasks_dir}"
                )
            module = self._load(package, spec)
        self._packages[package] = module
        return module

    def _import_submodule(self, parent: ModuleType, part: str) -> ModuleType | None:
        paths = list(getattr(parent, "__path__", None) or ())
        if not paths or not all(self._inside(p) for p in paths):
            return None
        fullname = f"{parent.__name__}.{part}"
        module = self._existing(fullname)
        if module is None:
            spec = importlib.machinery.PathFinder.find_spec(fullname, paths)
            if spec is None:
                return None
            module = self._load(fullname, spec)
            setattr(parent, part, module)
        return module

    def resolve(self, package: object, task_func: object) -> TaskFunction[Any, Any]:
        """The registered task at ``(package, task_func)``; raises `TaskNotFoundError` otherwise."""
        if type(package) is str and type(task_func) is str:
            cached = self._tasks.get((package, task_func))  # only validated names get cached
            if cached is not None:
                return cached
        parts = self.check_names(package, task_func)
        assert isinstance(package, str) and isinstance(task_func, str)
        key = (package, task_func)
        address = f"`{package}.{task_func}`"
        module = self.import_package(package)
        fn = registered_task(package, task_func)
        if fn is None:
            obj: object = module
            for i, part in enumerate(parts):
                nxt = getattr(obj, part, None) if isinstance(obj, ModuleType) else None
                if nxt is None and isinstance(obj, ModuleType):
                    nxt = self._import_submodule(obj, part)
                if nxt is None:
                    missing = ".".join([package, *parts[: i + 1]])
                    raise TaskNotFoundError(f"{address}: `{missing}` does not exist")
                obj = nxt
            fn = registered_task(package, task_func)  # the walk may have imported its module
            if fn is None:
                if isinstance(obj, TaskFunction):
                    raise TaskNotFoundError(
                        f"{address} is the task `{obj.qualified_name}` imported under another "
                        "name; address it by its own package and name"
                    )
                raise TaskNotFoundError(
                    f"{address} is not an @orbweaver.task function (it is {_kind(obj)})"
                )
        defining = sys.modules.get(fn.__module__)
        file = getattr(defining, "__file__", None)
        if not file or not self._inside(file):
            raise TaskNotFoundError(f"{address} is defined outside the tasks directory ({file})")
        self._tasks[key] = fn
        return fn

    # -- running ---------------------------------------------------------------------------------

    def run(self, task: RunTask) -> TaskSucceeded | TaskFailed:
        """Run one task; returns its response (never raises for task errors)."""
        start = time.perf_counter()
        try:
            outputs = self._run(task)
        except (Exception, SystemExit, CpuTimeLimitExceeded) as exc:
            return TaskFailed(task.id, error_info(exc), _elapsed_us(start))
        return TaskSucceeded(task.id, outputs, _elapsed_us(start))

    @staticmethod
    def reject(task: RejectedTask) -> TaskFailed:
        """The response to a task request that could not be decoded: a `TaskNotFoundError` when
        its name is what is wrong, a `TaskInputError` otherwise."""
        cls = TaskNotFoundError if task.field in ("package", "func") else TaskInputError
        return TaskFailed(task.id, error_info(cls(f"malformed task request: {task.reason}")), 0)

    def _run(self, task: RunTask) -> bytes:
        fn = self.resolve(task.package, task.func)
        io, job_id, task_id = task.io, task.job_id, task.task_id
        instance_id, rg_id = task.instance_id, task.resource_group_id
        args: list[Any] = []
        if task_id >= 0:
            try:
                payloads = _core.wire_decode(io)
            except _core.CodecError as exc:
                raise TaskInputError(f"malformed inputs for `{fn.qualified_name}`: {exc}") from None
            params = fn.params
            if len(payloads) != len(params):
                names = ", ".join(p.name for p in params) or "none"
                raise TaskInputError(
                    f"`{fn.qualified_name}` takes {len(params)} inputs ({names}) but received "
                    f"{len(payloads)}"
                )
            for pos, (param, data) in enumerate(zip(params, payloads, strict=True)):
                try:
                    args.append(param.type.decode(data))
                except ValueMismatchError as exc:
                    raise TaskInputError(
                        f"`{fn.qualified_name}` input {pos} (parameter `{param.name}` of type "
                        f"{param.type.name}): {exc}"
                    ) from None
            if not fn.takes_context:
                return encode_result(fn, self._call(fn, args))
            ctx = TaskContext(job_id, task_id, instance_id, rg_id)
        else:
            ctx = self._termination_context(fn, io, job_id, task_id, instance_id, rg_id)
        return encode_result(fn, self._call(fn, [ctx, *args] if fn.takes_context else args))

    def _call(self, fn: TaskFunction[Any, Any], args: list[Any]) -> Any:
        """Call the task within its resource limits (the registered task's policy: they never
        travel with the request)."""
        policy = fn.policy
        if not self.enforce_limits or (
            policy.memory_limit is None and policy.cpu_time_limit is None
        ):
            return fn.fn(*args)
        limits = _Limits(policy.memory_limit, policy.cpu_time_limit)
        try:
            limits.apply()
            return fn.fn(*args)
        except MemoryError as exc:
            if policy.memory_limit is None:
                raise
            limits.restore()  # room to build the error
            error = MemoryError(
                f"task exceeded its memory limit of {format_size(policy.memory_limit)}"
            )
            raise error.with_traceback(exc.__traceback__) from None
        finally:
            limits.restore()

    @staticmethod
    def _termination_context(
        fn: TaskFunction[Any, Any],
        io: bytes,
        job_id: int,
        task_id: int,
        instance_id: int,
        rg_id: int,
    ) -> TaskContext:
        """Commit: `io` holds the self-describing job outputs; cleanup: a wire frame of the
        graph inputs (an empty buffer means none)."""
        if task_id == _core.TASK_COMMIT:
            kind, what = "commit", "job outputs"
        elif task_id == _core.TASK_CLEANUP:
            kind, what = "cleanup", "graph inputs"
        else:
            raise TaskInputError(f"invalid task id {task_id} for `{fn.qualified_name}`")
        if fn.params:
            raise TaskInputError(
                f"`{fn.qualified_name}` takes {len(fn.params)} parameters, so it cannot run as "
                f"the {kind} task (termination tasks take only the optional TaskContext)"
            )
        try:
            if kind == "commit":
                payloads = _core.decode_outputs(io)
            else:
                payloads = _core.wire_decode(io) if io else []
            values = [decode_plain(p) for p in payloads]
        except (_core.CodecError, ValueMismatchError) as exc:
            raise TaskInputError(
                f"cannot decode the {what} for `{fn.qualified_name}`: {exc}"
            ) from None
        if kind == "commit":
            return TaskContext(job_id, task_id, instance_id, rg_id, job_outputs=values)
        return TaskContext(job_id, task_id, instance_id, rg_id, graph_inputs=values)


def encode_result(fn: TaskFunction[Any, Any], result: Any) -> bytes:
    """The wire frame of the task's outputs; raises `TaskOutputError` when they do not fit."""
    outputs = fn.outputs
    n = len(outputs)
    if n == 1:
        values: Sequence[Any] = (result,)
    elif n == 0:
        if result is not None:
            raise TaskOutputError(
                f"`{fn.qualified_name}` declares no outputs but returned {describe_value(result)}"
            )
        values = ()
    else:
        if not isinstance(result, (tuple, list)) or len(result) != n:
            types = ", ".join(vt.name for vt in outputs)
            raise TaskOutputError(
                f"`{fn.qualified_name}` declares {n} outputs ({types}) but returned "
                f"{describe_value(result)}"
            )
        values = result
    try:
        payloads = [vt.encode(value) for vt, value in zip(outputs, values, strict=True)]
    except ValueMismatchError:
        for pos, (vt, value) in enumerate(zip(outputs, values, strict=True)):
            try:
                vt.encode(value)
            except ValueMismatchError as exc:
                raise TaskOutputError(
                    f"`{fn.qualified_name}` output {pos} (type {vt.name}): {exc}"
                ) from None
        raise
    return _core.wire_encode(payloads)


# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------


def _kind(obj: object) -> str:
    if isinstance(obj, ModuleType):
        return f"the module `{obj.__name__}`"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    what = type(obj).__qualname__
    if name and module:
        return f"a {what} `{module}.{name}`"
    return f"a {what}"


def _exc_type(exc: BaseException) -> str:
    cls = type(exc)
    if isinstance(exc, (ExecutorError, CpuTimeLimitExceeded)) or cls.__module__ in (
        "builtins",
        "__main__",
    ):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _exc_message(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = f"<unprintable {type(exc).__qualname__}>"
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + f"... ({len(text) - MAX_MESSAGE_CHARS} chars truncated)"
    return text


def _user_frame(filename: str) -> bool:
    return not (filename.startswith(_ORBWEAVER_DIR) or filename.startswith("<frozen "))


def format_traceback(exc: BaseException) -> str:
    """The last `TRACEBACK_FRAMES` user frames of the exception (executor frames left out)."""
    source = exc.__cause__ if isinstance(exc, PackageImportError) and exc.__cause__ else exc
    frames = [f for f in traceback.extract_tb(source.__traceback__) if _user_frame(f.filename)]
    if not frames:
        return ""
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames[-TRACEBACK_FRAMES:])
    lines.append(f"{_exc_type(source)}: {_exc_message(source)}\n")
    cause = source.__cause__
    if cause is None and not source.__suppress_context__:
        cause = source.__context__
    if cause is not None:
        lines.append(f"(caused by {_exc_type(cause)}: {_exc_message(cause)})\n")
    return "".join(lines)


def error_info(exc: BaseException) -> TaskError:
    """The `TaskError` of an exception raised while running a task."""
    return TaskError(_exc_type(exc), _exc_message(exc), format_traceback(exc))


def _elapsed_us(start: float) -> int:
    return int((time.perf_counter() - start) * 1e6)


# -------------------------------------------------------------------------------------------------
# Process
# -------------------------------------------------------------------------------------------------


def _private_streams() -> tuple[IO[bytes], IO[bytes]]:
    """Keep the protocol streams private: returns (requests in, responses out)."""
    sys.stdout.flush()
    proto_out = os.fdopen(os.dup(1), "wb")
    proto_in = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)  # fd 1 is now stderr: print() and child processes log there
    sys.stdout = sys.stderr
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    return proto_in, proto_out


def _watch_parent(parent: int, watchdog_fd: int | None, cgroup: Path | None) -> None:
    """Leave when the pool goes away, even in the middle of a long task: the end of the
    watchdog pipe (whose write end only the pool holds) tells it at once, a changed parent pid
    within a second (the pipe's write end may have leaked into a forked copy of the pool)."""
    poller: select.poll | None = None
    if watchdog_fd is not None:
        poller = select.poll()
        poller.register(watchdog_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        if poller is None:
            time.sleep(1.0)
        else:
            events = poller.poll(1000)
            if any(ev & select.POLLNVAL for _, ev in events):
                poller = None  # task code closed it: the parent pid check still holds
            elif events:  # the pool never writes: readable means closed
                _orphaned(cgroup)
        if os.getppid() != parent:
            _orphaned(cgroup)


def _orphaned(cgroup: Path | None) -> None:
    """The pool is gone: take the processes the tasks started along (they are in this
    executor's cgroup and process group when the pool made it a group leader)."""
    if cgroup is not None and isolation.in_cgroup(cgroup):
        isolation.kill_cgroup(cgroup)
    if os.getpgrp() == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
    os._exit(EXIT_PIPE)


def _setup_logging() -> None:
    try:
        from orbweaver._log import setup_logging

        setup_logging("executor")
    except Exception:  # pragma: no cover - logging must never stop the executor
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orbweaver.worker.executor",
        description="Run Orbweaver tasks from a tasks directory over a stdin/stdout protocol.",
    )
    parser.add_argument(
        "--tasks-dir",
        default=os.environ.get("ORBWEAVER_TASKS_DIR"),
        help="directory holding the task packages (default: $ORBWEAVER_TASKS_DIR)",
    )
    parser.add_argument(
        "--watchdog-fd",
        type=int,
        help="a pipe the pool holds open: when it ends, the executor kills its process group",
    )
    parser.add_argument(
        "--cgroup",
        help="this executor's own cgroup, killed with it when the pool goes away",
    )
    parser.add_argument(
        "--max-frame-bytes",
        type=int,
        default=DEFAULT_MAX_FRAME_BYTES,
        help=f"largest protocol frame accepted or sent (default {DEFAULT_MAX_FRAME_BYTES})",
    )
    args = parser.parse_args(argv)
    proto_in, proto_out = _private_streams()
    _setup_logging()
    if not args.tasks_dir:
        log.error("no tasks directory: pass --tasks-dir or set ORBWEAVER_TASKS_DIR")
        return EXIT_BAD_SETUP
    try:
        executor = Executor(args.tasks_dir, enforce_limits=True)
    except OSError as exc:
        log.error("unusable tasks directory %s: %s", args.tasks_dir, exc)
        return EXIT_BAD_SETUP
    # `python -m` put the working directory first on sys.path; tasks import their siblings from
    # the tasks directory instead, as they did in the script that defined them.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    sys.path.insert(0, str(executor.tasks_dir))
    threading.Thread(
        target=_watch_parent,
        args=(os.getppid(), args.watchdog_fd, Path(args.cgroup) if args.cgroup else None),
        name="parent-watch",
        daemon=True,
    ).start()

    max_bytes = args.max_frame_bytes

    def send(frame: bytes) -> None:
        proto_out.write(frame)
        proto_out.flush()

    def respond(response: TaskSucceeded | TaskFailed) -> None:
        try:
            frame = response.encode(max_bytes)
        except FrameTooLargeError as exc:
            error = TaskError(
                "TaskOutputError", f"the task's response is too large: {exc}", traceback=""
            )
            frame = TaskFailed(response.id, error, response.elapsed_us).encode(max_bytes)
        send(frame)

    reader = FrameReader(proto_in, max_bytes, decode=decode_pool_message)
    try:
        send(Hello(os.getpid(), getattr(_core, "__version__", "0"), PROTOCOL_VERSION).encode())
        while True:
            try:
                message = reader.read()
            except ProtocolError as exc:
                log.error("protocol error: %s", exc)
                return EXIT_PROTOCOL
            if message is None or isinstance(message, Shutdown):
                return EXIT_OK
            for task in message.tasks:
                respond(executor.run(task) if isinstance(task, RunTask) else executor.reject(task))
    except (BrokenPipeError, ConnectionResetError):
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
