"""`ExecutorPool`: N executor processes, each running one batch of tasks at a time.

    pool = ExecutorPool(tasks_dir, processes=4)
    pool.start()
    result = pool.run(TaskRequest(...))          # blocks; thread-safe
    results = pool.run_batch([req1, req2, ...])  # one round trip to one executor
    pool.close()

Every task gets its own hard timeout, counted from the moment it starts (for the tasks of a batch:
when the previous task's result arrived). When a task times out or its executor dies, the
executor is killed and replaced before the result is returned; the rest of the batch continues on
the new executor. When no new executor can be started, the results the batch already produced are
returned all the same and the tasks left get a `ResultKind.NOT_RUN` result saying why
(`respawn_failure` tells it too, until a later respawn succeeds).

Executor stderr, where task output goes too, is forwarded line by line to the
``orbweaver.executor`` logger within a budget per executor (a token bucket: `output_rate` bytes
per second, bursts of `output_burst`); the excess is read at full speed and dropped, and a
warning says how much every few seconds. A task printing a lot is never slowed down by the log.

Containment: each executor leads its own session and process group, so "killing an executor"
means SIGKILL to the whole group -- the processes its tasks started (`subprocess.Popen`,
`os.fork`) die with it, on a hard timeout, a crash, `close()` and when the worker stops. An
executor's death is noticed from the process itself (a pidfd, or a `waitid` poll where there is
none), not only from the end of its output pipe, which a forked child may hold open. The group is
killed before the executor is reaped: until then its pid, which is the group id, cannot be
reused. Each executor also holds the read end of a pipe whose write end only the pool holds; when
the pool's process dies the pipe ends and the executor kills its own group (see
`orbweaver.worker.executor`). Where this process may create cgroup v2 children (`cgroups=True`
and a writable cgroup), each executor also gets a cgroup of its own, killed along with the group:
that catches processes that left the group with ``setsid``. Elsewhere this degrades silently to
process groups.

I/O discipline (why nothing can deadlock on a full pipe): a caller that holds an executor writes
a request frame only while the executor is idle and reading, then reads the responses itself with
`poll()` deadlines; the executor writes responses only while a request is being served, so its
stdout never fills up unread. Its stderr is drained continuously by a forwarder thread.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from orbweaver import errors
from orbweaver._units import format_size
from orbweaver.worker import isolation
from orbweaver.worker.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ExecutorMessage,
    FrameDecoder,
    FrameTooLargeError,
    Hello,
    PoolMessage,
    ProtocolError,
    RunRequest,
    RunTask,
    Shutdown,
    TaskFailed,
    TaskSucceeded,
    decode_executor_message,
)

__all__ = [
    "ExecutorPool",
    "ExecutorPoolError",
    "ResultKind",
    "TaskRequest",
    "TaskResult",
]

log = logging.getLogger("orbweaver.worker.pool")
executor_log = logging.getLogger("orbweaver.executor")

DEFAULT_START_TIMEOUT_S: Final = 60.0
DEFAULT_CLOSE_TIMEOUT_S: Final = 5.0
DEFAULT_OUTPUT_RATE: Final = 64 * 1024
DEFAULT_OUTPUT_BURST: Final = 1024 * 1024
# How often, at most, the bytes of task output dropped by the budget are reported.
OUTPUT_SUMMARY_INTERVAL_S: Final = 5.0
MAX_LOG_LINE_BYTES: Final = 64 * 1024
_READ_CHUNK: Final = 1 << 20
_STDERR_TAIL_LINES: Final = 20
# How often the exit of an executor is checked where no pidfd tells it.
_EXIT_POLL_MS: Final = 50
# How long the output forwarder of a disposed executor waits for more output before it stops.
_FORWARDER_POLL_MS: Final = 200
# The directory holding the `orbweaver` package, so executors import the same orbweaver.
_PYTHON_ROOT: Final = str(Path(__file__).resolve().parents[2])
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class ExecutorPoolError(errors.OrbweaverError, RuntimeError):
    """The pool cannot run tasks: executors failed to start or respawn, or it is closed."""


class ResultKind(enum.Enum):
    SUCCESS = "success"
    TASK_ERROR = "task_error"
    CRASH = "crash"
    TIMEOUT = "timeout"
    # The pool could not run the task (no executor could be started for it): not the task's
    # fault, it never ran.
    NOT_RUN = "not_run"


@dataclass(frozen=True)
class TaskRequest:
    """One task instance to run; `task_io` as described in `orbweaver.worker.protocol`.
    A `hard_timeout_ms` of 0 or less means no timeout."""

    job_id: int
    task_id: int
    instance_id: int
    resource_group_id: int
    package: str
    task_func: str
    task_io: bytes
    hard_timeout_ms: int


@dataclass(frozen=True)
class TaskResult:
    """`outputs` (a wire frame of msgpack outputs) on SUCCESS; otherwise `error`, a readable
    text such as ``"ValueError: bad input\\n<traceback>"``, ``"executor crashed (exit code 3)"``,
    ``"hard timeout (200 ms) exceeded"`` or ``"not run: cannot respawn an executor after a
    crash: ..."``. `elapsed_s` is the task's wall time as seen by the
    pool."""

    kind: ResultKind
    outputs: bytes | None
    error: str | None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.kind is ResultKind.SUCCESS


class _Eof:
    """The executor closed its stdout (it exited or crashed)."""


class _ReadFailed:
    """The executor sent a malformed frame."""

    def __init__(self, error: ProtocolError) -> None:
        self.error = error


_EOF: Final = _Eof()
_Received = ExecutorMessage | _Eof | _ReadFailed


class _Executor:
    """One executor process. The thread holding it does the pipe I/O; a daemon thread forwards
    its stderr to the log."""

    def __init__(self, pool: ExecutorPool) -> None:
        self.max_frame_bytes = pool.max_frame_bytes
        self.stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
        self._decoder = FrameDecoder(decode_executor_message, self.max_frame_bytes)
        self._received: deque[ExecutorMessage] = deque()
        self._failure: ProtocolError | None = None
        self._eof = False
        self._exited = False  # seen dead (its output drained); not necessarily reaped yet
        self._next_id = 0
        self._write_lock = threading.Lock()
        # Signalling the group and reaping the leader happen under this lock, so that no signal
        # is sent to a group id that reaping has just released for reuse.
        self._proc_lock = threading.Lock()
        self._disposed = False
        self._closing = threading.Event()  # the forwarder may stop once the output goes quiet
        self.cgroup = pool._cgroups.new_child() if pool._cgroups is not None else None
        self._budget = _OutputBudget(pool.output_rate, pool.output_burst)
        watch_read, self._watchdog = os.pipe()  # both ends close-on-exec; the child gets one
        cmd = [
            pool.python,
            "-m",
            "orbweaver.worker.executor",
            "--tasks-dir",
            str(pool.tasks_dir),
            "--max-frame-bytes",
            str(pool.max_frame_bytes),
            "--watchdog-fd",
            str(watch_read),
            *(["--cgroup", str(self.cgroup)] if self.cgroup is not None else []),
        ]
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=pool.child_env,
                pass_fds=(watch_read,),
                # Its own session and process group: a terminal's Ctrl-C goes to the pool, not
                # the tasks, and the group is what gets killed.
                start_new_session=True,
                bufsize=0,
            )
        except OSError as exc:
            os.close(self._watchdog)
            if self.cgroup is not None:
                isolation.remove_cgroup(self.cgroup)
            raise ExecutorPoolError(
                f"cannot start an executor with python {pool.python!r}: {exc}"
            ) from exc
        finally:
            os.close(watch_read)
        self.pid = self.proc.pid
        # No task runs before the greeting and a request: joining now leaves nothing outside.
        if self.cgroup is not None and not isolation.CgroupTree.join(self.cgroup, self.pid):
            self.cgroup = None
        self._pidfd = _pidfd_open(self.pid)
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self._stdin = self.proc.stdin
        self._out_fd = self.proc.stdout.fileno()
        self._poll = select.poll()
        self._poll.register(self._out_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        if self._pidfd is not None:
            self._poll.register(self._pidfd, select.POLLIN)
        self._stderr_thread = threading.Thread(
            target=self._read_stderr,
            args=(self.proc.stderr.fileno(),),
            daemon=True,
            name=f"executor-{self.pid}-stderr",
        )
        self._stderr_thread.start()

    # -- stderr ----------------------------------------------------------------------------------

    def _read_stderr(self, fd: int) -> None:
        """Forward the executor's stderr until it ends -- or, once the executor is disposed of,
        until it goes quiet: a process that escaped the group kill may hold it open forever."""
        lines = _LineSplitter(self._emit, self._budget)
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        try:
            while True:
                if not poller.poll(_FORWARDER_POLL_MS):
                    self._budget.report(self.pid)
                    if self._closing.is_set():
                        return
                    continue
                data = os.read(fd, _READ_CHUNK)
                if not data:
                    return
                lines.feed(data)
                self._budget.report(self.pid)
        except (OSError, ValueError):
            return
        finally:
            lines.flush()
            self._budget.report(self.pid, final=True)

    def _emit(self, text: str) -> None:
        self.stderr_tail.append(text)
        _forward(text, {"executor_pid": self.pid})

    # -- protocol --------------------------------------------------------------------------------

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, message: PoolMessage) -> bool:
        """Write one frame; False when the executor is gone. Raises `FrameTooLargeError`."""
        frame = memoryview(message.encode(self.max_frame_bytes))
        with self._write_lock:
            try:
                while frame:
                    written = self._stdin.write(frame)
                    if written is None:  # pragma: no cover - the pipe is blocking
                        continue
                    frame = frame[written:]
            except (OSError, ValueError):
                return False
        return True

    def recv(self, timeout: float | None) -> _Received | None:
        """The next message, or None when `timeout` (seconds) passes first. `_EOF` once the
        executor closed its output or exited (whoever else still holds the pipe)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._received:
                self._take(b"")  # a malformed frame after the last message is reported now
            if self._received:
                return self._received.popleft()
            if self._failure is not None:
                return _ReadFailed(self._failure)
            if self._eof or self._exited:
                return _EOF
            wait_ms: int | None = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                wait_ms = max(1, math.ceil(remaining * 1000))
            if self._pidfd is None:  # no exit notification: look now and then
                wait_ms = _EXIT_POLL_MS if wait_ms is None else min(wait_ms, _EXIT_POLL_MS)
            events = self._poll.poll(wait_ms)
            if any(fd == self._out_fd for fd, _ in events):
                self._read_some()
            elif (events or self._pidfd is None) and self.exited():
                # Everything it wrote before dying is in the pipe already: take that, then stop
                # (a forked child holding the pipe open must not delay the verdict).
                self._drain()
                self._exited = True

    def _read_some(self) -> None:
        try:
            data = os.read(self._out_fd, _READ_CHUNK)
        except InterruptedError:  # pragma: no cover - retried by Python already
            return
        except OSError:
            data = b""
        if data:
            self._take(data)
        else:
            self._eof = True

    def _take(self, data: bytes) -> None:
        if self._failure is None:
            try:
                self._received.extend(self._decoder.feed(data))
            except ProtocolError as exc:
                self._failure = exc

    def _drain(self) -> None:
        """Read what the pipe holds now (bounded: another writer may still be feeding it)."""
        poller = select.poll()
        poller.register(self._out_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        for _ in range(self.max_frame_bytes // _READ_CHUNK + 2):
            if self._eof or not poller.poll(0):
                return
            self._read_some()

    # -- process ---------------------------------------------------------------------------------

    def exited(self) -> bool:
        """Whether the executor process has ended (without reaping it)."""
        if self.proc.returncode is not None:
            return True
        if self._pidfd is not None:
            poller = select.poll()  # not select(): the pidfd may be above FD_SETSIZE
            poller.register(self._pidfd, select.POLLIN)
            events = poller.poll(0)
            if any(ev & select.POLLNVAL for _, ev in events):  # closed by dispose()
                return self.proc.returncode is not None
            return bool(events)
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped meanwhile
            return True

    def alive(self) -> bool:
        return not self.exited()

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the process to end (without reaping it)."""
        if self._pidfd is not None and self.proc.returncode is None:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            poller.poll(max(0, math.ceil(timeout * 1000)))
            return self.exited()
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_EXIT_POLL_MS / 1000)
        return True

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the executor's process group (the executor and what its tasks started,
        unless they left the group; SIGKILL reaches those too through the executor's cgroup,
        where it has one). Nothing to the group once the executor is reaped: its group id may
        belong to someone else by then."""
        if sig == signal.SIGKILL and self.cgroup is not None:
            isolation.kill_cgroup(self.cgroup)
        with self._proc_lock:
            if self.proc.returncode is not None:
                return
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:  # not yet in its own group (still starting)
                with contextlib.suppress(OSError):
                    os.kill(self.pid, sig)
            except OSError:
                pass

    def reap(self, timeout: float) -> int | None:
        """Once the process ended (waiting up to `timeout`): kill what is left of its group and
        collect its exit status. None if it is still running."""
        if not self.wait_exit(timeout):
            return None
        with self._proc_lock:
            if self.proc.returncode is None:
                with contextlib.suppress(OSError):
                    os.killpg(self.pid, signal.SIGKILL)
                if self.cgroup is not None:
                    isolation.kill_cgroup(self.cgroup)
                self.proc.wait()
        return self.proc.returncode

    def request_shutdown(self) -> None:
        """Ask the executor to exit once it is idle (shutdown frame, then stdin EOF)."""
        with contextlib.suppress(Exception):
            self.send(Shutdown())
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            self._stdin.close()

    def kill(self) -> None:
        """SIGKILL the whole group and reap the executor."""
        self.signal_group(signal.SIGKILL)
        if self.reap(10.0) is None:  # pragma: no cover - SIGKILL cannot be ignored
            log.error("executor survived SIGKILL for 10 s", extra={"executor_pid": self.pid})

    def dispose(self) -> None:
        """Kill the group (if needed) and release the pipes and thread. Only the thread that
        holds the executor (or the pool when nobody does) may call this."""
        if self._disposed:
            return
        self._disposed = True
        self.kill()
        if self.cgroup is not None:
            isolation.remove_cgroup(self.cgroup)
        self._closing.set()
        self._stderr_thread.join(timeout=5.0)
        with contextlib.suppress(Exception):
            self._poll.unregister(self._out_fd)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()
        for fd in (self._pidfd, self._watchdog):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def exit_description(self) -> str:
        """Why the process ended, e.g. ``killed by signal 9`` or ``exit code 3``."""
        code = self.reap(2.0)
        if code is None:
            self.kill()
            return "closed its output but kept running; killed"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit code {code}"


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid` (Linux 5.3+), or None where there is none."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except OSError:
        return None


class _OutputBudget:
    """A token bucket of output bytes (`rate` per second, at most `burst` saved up) and the
    count of bytes dropped for want of tokens, reported now and then."""

    def __init__(self, rate: int, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()
        self._dropped = 0  # not reported yet
        self._since: float | None = None  # when the first unreported drop happened

    def available(self) -> bool:
        """Whether a line may start now (it is then forwarded whole, going into debt)."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens > 0

    def spend(self, n: int) -> None:
        self._tokens -= n

    def drop(self, n: int) -> None:
        if n > 0:
            if self._since is None:
                self._since = time.monotonic()
            self._dropped += n

    def report(self, pid: int, final: bool = False) -> None:
        if not self._dropped or self._since is None:
            return
        if not final and time.monotonic() - self._since < OUTPUT_SUMMARY_INTERVAL_S:
            return
        executor_log.warning(
            "executor %s: dropped %s of task output (rate limit %s/s)",
            pid,
            format_size(self._dropped),
            format_size(self.rate),
            extra={"executor_pid": pid, "dropped_bytes": self._dropped},
        )
        self._dropped = 0
        self._since = None


class _LineSplitter:
    """Cuts a byte stream into lines of at most `MAX_LOG_LINE_BYTES` (the rest of a longer line
    is dropped, the line marked as truncated) and hands each to `emit` as text, while `budget`
    allows; beyond it, whole lines are dropped without being looked at one by one."""

    def __init__(self, emit: Callable[[str], None], budget: _OutputBudget) -> None:
        self._emit = emit
        self._budget = budget
        self._partial = bytearray()
        self._skipping = False  # inside the rest of a line that is not forwarded
        self._dropping = False  # ... because the budget ran out (so the bytes count as dropped)

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if not self._skipping and not self._partial and not self._budget.available():
                # Out of budget at a line boundary: drop the rest of the chunk in one go, and the
                # rest of its last line with it.
                self._budget.drop(end - pos)
                self._skipping = self._dropping = not data.endswith(b"\n")
                return
            nl = data.find(b"\n", pos)
            stop = end if nl < 0 else nl + 1
            if self._skipping:
                if self._dropping:
                    self._budget.drop(stop - pos)
                self._skipping = self._dropping = nl < 0
                pos = stop
                continue
            room = MAX_LOG_LINE_BYTES - len(self._partial)
            if stop - pos > room:  # too long: keep the head, skip the rest of the line
                self._partial += data[pos : pos + room]
                self._line(truncated=True)
                self._skipping = True
                pos += room
                continue
            self._partial += data[pos:stop]
            pos = stop
            if nl >= 0:
                self._line(truncated=False)

    def flush(self) -> None:
        if self._partial:
            self._line(truncated=False)

    def _line(self, truncated: bool) -> None:
        self._budget.spend(len(self._partial))
        text = self._partial.decode("utf-8", errors="replace").rstrip("\r\n")
        self._partial.clear()
        self._emit(text + " ...[line truncated]" if truncated else text)


def _forward(text: str, extra: dict[str, Any]) -> None:
    """Log an executor's stderr line, keeping the level of the executor's JSON log lines."""
    level = logging.INFO
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("msg"), str):
            level = _LEVELS.get(str(entry.get("level")), logging.INFO)
            text = entry["msg"]
            if entry.get("exc"):
                text += "\n" + str(entry["exc"])
    executor_log.log(level, "%s", text, extra=extra)


class _Slot:
    """One of the pool's `processes` places; `executor` is None after a failed respawn, and
    `failure` says why."""

    __slots__ = ("executor", "failure")

    def __init__(self, executor: _Executor | None) -> None:
        self.executor = executor
        self.failure: str | None = None


class ExecutorPool:
    """A pool of `processes` executor processes serving tasks from `tasks_dir`.

    Executors do not inherit the caller's environment: they get the minimal one of
    `orbweaver.worker.isolation.executor_environment`, plus the variables named (or matched,
    fnmatch-style) by `env_allow` -- never a secret ``ORBWEAVER_*`` one -- plus `env`, which is
    set as given.

    `python` is the interpreter they run with; `max_frame_bytes` bounds every protocol frame
    (both ways); `start_timeout` bounds the wait for an executor's greeting; `close_timeout` is
    how long `close` lets busy executors finish before terminating them; `output_rate` (bytes
    per second) and `output_burst` (bytes) are each executor's budget of forwarded output;
    `cgroups` puts each executor in a cgroup of its own where the kernel allows it.
    """

    def __init__(
        self,
        tasks_dir: Path | str,
        processes: int,
        *,
        env: Mapping[str, str] | None = None,
        env_allow: Sequence[str] = (),
        python: str = sys.executable,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT_S,
        output_rate: int = DEFAULT_OUTPUT_RATE,
        output_burst: int = DEFAULT_OUTPUT_BURST,
        cgroups: bool = True,
    ) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise errors.InvalidArgument(f"processes must be an int >= 1, got {processes!r}")
        if max_frame_bytes < 1024:
            raise errors.InvalidArgument(f"max_frame_bytes must be >= 1024, got {max_frame_bytes}")
        for name, amount in (("output_rate", output_rate), ("output_burst", output_burst)):
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
                raise errors.InvalidArgument(f"{name} must be an int >= 1, got {amount!r}")
        self.tasks_dir = Path(tasks_dir)
        self.processes = processes
        self.python = python
        self.max_frame_bytes = max_frame_bytes
        self.start_timeout = start_timeout
        self.close_timeout = close_timeout
        self.output_rate = output_rate
        self.output_burst = output_burst
        self.use_cgroups = cgroups
        self._cgroups: isolation.CgroupTree | None = None
        self.env_allow = tuple(env_allow)
        for name in isolation.ignored_entries(self.env_allow):
            log.warning("%s is never passed to executors, even when allow-listed", name)
        self.child_env = isolation.executor_environment(
            os.environ, self.env_allow, env, python_root=_PYTHON_ROOT
        )
        self._lock = threading.Lock()
        self._idle: queue.Queue[_Slot | None] = queue.Queue()  # None: the pool closed
        self._all: list[_Executor] = []  # live executors, guarded by _lock
        self._slots: list[_Slot] = []
        self._started = False
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> ExecutorPool:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Spawn the executors and wait until each one greeted. Raises `ExecutorPoolError`
        (after stopping whatever it started)."""
        with self._lock:
            if self._closed:
                raise ExecutorPoolError("the executor pool is closed")
            if self._started:
                return
            self._started = True
        spawned: list[_Executor] = []
        try:
            if not self.tasks_dir.is_dir():
                raise ExecutorPoolError(
                    f"tasks directory {self.tasks_dir} does not exist or is not a directory"
                )
            if self.use_cgroups:
                self._cgroups = isolation.CgroupTree.create()
            for _ in range(self.processes):
                spawned.append(self._spawn_process())
            for ex in spawned:
                self._await_hello(ex)
        except BaseException:
            for ex in spawned:
                self._discard(ex)
            self.close()
            raise
        self._slots = [_Slot(ex) for ex in spawned]
        for slot in self._slots:
            self._idle.put(slot)
        log.info(
            "executor pool started",
            extra={
                "processes": self.processes,
                "tasks_dir": str(self.tasks_dir),
                "cgroup": str(self.cgroup) if self.cgroup else None,
            },
        )

    def _spawn_process(self) -> _Executor:
        with self._lock:
            if self._closed:
                raise ExecutorPoolError("the executor pool is closed")
            ex = _Executor(self)
            self._all.append(ex)
        return ex

    def _await_hello(self, ex: _Executor) -> None:
        message = ex.recv(self.start_timeout)
        if isinstance(message, Hello) and message.protocol == PROTOCOL_VERSION:
            return
        if message is None:
            why = f"did not start within {self.start_timeout:g} s"
        elif isinstance(message, _Eof):
            why = f"exited before it was ready ({ex.exit_description()})"
        elif isinstance(message, _ReadFailed):
            why = f"sent a malformed greeting: {message.error}"
        elif isinstance(message, Hello):
            why = (
                f"speaks executor protocol version {message.protocol}, this pool speaks "
                f"version {PROTOCOL_VERSION}"
            )
        else:
            why = f"sent {_short(message)} instead of a greeting"
        self._discard(ex)
        raise ExecutorPoolError(
            f"executor {ex.pid} for tasks directory {self.tasks_dir} {why}" + _tail(ex)
        )

    def _discard(self, ex: _Executor) -> None:
        ex.dispose()
        with self._lock:
            if ex in self._all:
                self._all.remove(ex)

    def _respawn(self, slot: _Slot, reason: str) -> _Executor:
        """Kill the slot's executor (if any) and start a new one. Raises `ExecutorPoolError`;
        the slot then stays empty and the next caller tries again."""
        old = slot.executor
        slot.executor = None
        if old is not None:
            self._discard(old)
        if self._closed:
            raise ExecutorPoolError("the executor pool was closed")
        try:
            new = self._spawn_process()
            self._await_hello(new)
        except ExecutorPoolError as exc:
            if self._closed:
                raise
            slot.failure = f"cannot respawn an executor after {reason}: {exc}"
            log.error("%s", slot.failure)
            raise ExecutorPoolError(slot.failure) from exc
        slot.executor = new
        slot.failure = None
        log.info(
            "executor respawned",
            extra={"reason": reason, "old_pid": old.pid if old else None, "executor_pid": new.pid},
        )
        return new

    def close(self) -> None:
        """Shut the executors down: a shutdown request, then SIGTERM to the process group of
        those still running after `close_timeout` and, a second later, SIGKILL to every group
        (what tasks left running dies with it). Idempotent. Callers waiting for or running on an
        executor get `ExecutorPoolError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executors = list(self._all)
        for ex in executors:
            ex.request_shutdown()
        deadline = time.monotonic() + self.close_timeout
        for ex in executors:
            if not ex.wait_exit(deadline - time.monotonic()):
                ex.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        for ex in executors:
            ex.wait_exit(deadline - time.monotonic())
            ex.kill()
        # Idle executors are released here; busy ones by the thread holding them.
        while True:
            try:
                slot = self._idle.get_nowait()
            except queue.Empty:
                break
            if slot is not None and slot.executor is not None:
                self._discard(slot.executor)
        for _ in range(self.processes):
            self._idle.put(None)  # wake callers waiting for an executor
        if self._cgroups is not None:
            self._cgroups.remove()  # every executor in it is dead by now
        if executors:
            log.info("executor pool closed", extra={"processes": len(executors)})

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def cgroup(self) -> Path | None:
        """The cgroup holding the executors' cgroups, or None (process groups only)."""
        return None if self._cgroups is None else self._cgroups.path

    @property
    def respawn_failure(self) -> str | None:
        """Why an executor could not be respawned, while its place stays empty (None: every
        place has an executor, or its next caller has not tried again yet)."""
        return next((s.failure for s in self._slots if s.failure is not None), None)

    def pids(self) -> list[int]:
        """Process ids of the current executors."""
        with self._lock:
            return [ex.pid for ex in self._all]

    # -- running ---------------------------------------------------------------------------------

    def run(self, request: TaskRequest) -> TaskResult:
        """Run one task on a free executor (blocks until one is free)."""
        return self.run_batch([request])[0]

    def run_batch(self, requests: Sequence[TaskRequest]) -> list[TaskResult]:
        """Run the tasks in order on one executor, in one round trip; one result per task.
        Blocks until an executor is free. When an executor cannot be respawned, the tasks not
        run yet get a `ResultKind.NOT_RUN` result (the results already produced are kept).
        Raises `ExecutorPoolError` when the pool is not started or closed."""
        if not requests:
            return []
        if not self._started:
            raise ExecutorPoolError("the executor pool is not started")
        slot = self._acquire()
        done = False
        try:
            results = self._run_in_slot(slot, list(requests))
            done = True
        finally:
            if not done and slot.executor is not None:
                # Interrupted half-way: the executor's state is unknown.
                self._discard(slot.executor)
                slot.executor = None
            self._release(slot)
        return results

    def _acquire(self) -> _Slot:
        slot = None if self._closed else self._idle.get()
        if slot is None or self._closed:
            if slot is not None and slot.executor is not None:
                self._discard(slot.executor)
            self._idle.put(None)  # pass the wake-up on
            raise ExecutorPoolError("the executor pool is closed")
        return slot

    def _release(self, slot: _Slot) -> None:
        if self._closed:
            if slot.executor is not None:
                self._discard(slot.executor)
                slot.executor = None
            return
        self._idle.put(slot)

    def _run_in_slot(self, slot: _Slot, requests: list[TaskRequest]) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(requests)
        try:
            ex = slot.executor
            if ex is None:
                self._respawn(slot, "an earlier failed respawn")
            elif not ex.alive():
                log.warning(
                    "executor died while idle",
                    extra={"executor_pid": ex.pid, "status": ex.exit_description()},
                )
                self._respawn(slot, "it died while idle")
            pending = list(range(len(requests)))
            while pending:
                chunk, pending = self._chunk(requests, pending, results)
                if chunk:
                    pending = self._run_chunk(slot, requests, chunk, results) + pending
        except ExecutorPoolError as exc:
            if self._closed or slot.failure is None:
                raise
            # No executor for the rest of the batch: keep what ran, say why the rest did not.
            not_run = TaskResult(ResultKind.NOT_RUN, None, f"not run: {exc}")
            results = [not_run if r is None else r for r in results]
        assert all(r is not None for r in results), "a task of the batch has no result"
        return [r for r in results if r is not None]

    def _chunk(
        self,
        requests: list[TaskRequest],
        pending: list[int],
        results: list[TaskResult | None],
    ) -> tuple[list[int], list[int]]:
        """The next run of pending tasks that fits in one frame (and the rest). A task too large
        for any frame gets its error result right away."""
        chunk: list[int] = []
        size = 64
        for pos, i in enumerate(pending):
            r = requests[i]
            entry_size = len(r.task_io) + len(r.package) + len(r.task_func) + 128
            if entry_size > self.max_frame_bytes:
                if chunk:
                    return chunk, pending[pos:]
                results[i] = TaskResult(
                    ResultKind.TASK_ERROR,
                    None,
                    str(FrameTooLargeError(entry_size, self.max_frame_bytes, "task input")),
                )
                return [], pending[pos + 1 :]
            if chunk and size + entry_size > self.max_frame_bytes:
                return chunk, pending[pos:]
            chunk.append(i)
            size += entry_size
        return chunk, []

    def _run_chunk(
        self,
        slot: _Slot,
        requests: list[TaskRequest],
        chunk: list[int],
        results: list[TaskResult | None],
    ) -> list[int]:
        """Send a chunk and collect its results. On a timeout or crash the executor is
        replaced; the tasks after the one at fault are returned to be sent again."""
        ex = slot.executor
        assert ex is not None
        ids = [ex.next_id() for _ in chunk]
        try:
            sent = ex.send(_run_request(requests, chunk, ids))
            if not sent and not self._closed:
                # It died before reading the request: not the tasks' fault, try a new one.
                log.warning(
                    "executor died while idle",
                    extra={"executor_pid": ex.pid, "status": ex.exit_description()},
                )
                ex = self._respawn(slot, "it died while idle")
                ids = [ex.next_id() for _ in chunk]
                sent = ex.send(_run_request(requests, chunk, ids))
        except FrameTooLargeError:  # the size estimate was off: one task per frame
            if len(chunk) > 1:
                return self._run_chunk(slot, requests, chunk[:1], results) + chunk[1:]
            results[chunk[0]] = TaskResult(
                ResultKind.TASK_ERROR, None, "the task's input exceeds the executor frame limit"
            )
            return []
        for pos, (i, tid) in enumerate(zip(chunk, ids, strict=True)):
            req = requests[i]
            started = time.monotonic()
            timeout = req.hard_timeout_ms / 1000 if req.hard_timeout_ms > 0 else None
            message = ex.recv(timeout) if sent else _EOF
            elapsed = time.monotonic() - started
            if isinstance(message, (TaskSucceeded, TaskFailed)) and message.id == tid:
                results[i] = _task_result(message, elapsed)
                continue
            if self._closed:
                raise ExecutorPoolError("the executor pool was closed while a task ran")
            if message is None:
                kind = ResultKind.TIMEOUT
                why = f"hard timeout ({req.hard_timeout_ms} ms) exceeded"
            elif isinstance(message, _Eof):
                kind = ResultKind.CRASH
                why = f"executor crashed ({ex.exit_description()})"
            elif isinstance(message, _ReadFailed):
                kind = ResultKind.CRASH
                why = f"executor crashed (malformed response: {message.error})"
            else:
                kind = ResultKind.CRASH
                why = f"executor crashed (unexpected response {_short(message)})"
            results[i] = TaskResult(kind, None, why, elapsed)
            log.warning(
                "%s; replacing the executor",
                why,
                extra={"executor_pid": ex.pid, "job_id": req.job_id, "task_id": req.task_id},
            )
            self._respawn(slot, "a hard timeout" if kind is ResultKind.TIMEOUT else "a crash")
            return chunk[pos + 1 :]
        return []


def _run_request(requests: list[TaskRequest], chunk: list[int], ids: list[int]) -> RunRequest:
    return RunRequest(
        tuple(
            RunTask(
                id=tid,
                package=r.package,
                func=r.task_func,
                job_id=r.job_id,
                task_id=r.task_id,
                instance_id=r.instance_id,
                resource_group_id=r.resource_group_id,
                io=bytes(r.task_io),
            )
            for r, tid in zip((requests[i] for i in chunk), ids, strict=True)
        )
    )


def _short(message: object) -> str:
    text = repr(message)
    return text if len(text) <= 200 else text[:200] + "..."


def _tail(ex: _Executor) -> str:
    lines = list(ex.stderr_tail)
    return ("; executor stderr:\n" + "\n".join(lines)) if lines else ""


def _task_result(message: TaskSucceeded | TaskFailed, elapsed: float) -> TaskResult:
    if isinstance(message, TaskSucceeded):
        return TaskResult(ResultKind.SUCCESS, message.outputs, None, elapsed)
    error = message.error
    etype = error.type or "Error"
    head = f"{etype}: {error.message}" if error.message else etype
    text = f"{head}\n{error.traceback}" if error.traceback else head
    return TaskResult(ResultKind.TASK_ERROR, None, text, elapsed)
