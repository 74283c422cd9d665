"""The pool <-> executor protocol: typed messages in length-prefixed msgpack frames over pipes.

A frame is a 4-byte big-endian body length followed by a msgpack map. Messages, each a frozen
dataclass below, with its wire form:

executor -> pool, once at start, `Hello`::

    {"op": "hello", "pid": int, "version": str, "protocol": int}

pool -> executor, `RunRequest` (its tasks are `RunTask`s) and `Shutdown`::

    {"op": "run", "tasks": [{"id": int, "package": str, "func": str,
                             "ctx": {"job_id": int, "task_id": int, "instance_id": int,
                                     "resource_group_id": int},
                             "io": bytes}, ...]}
    {"op": "shutdown"}

executor -> pool, one per task of a run request, in order, each as soon as the task finished,
`TaskSucceeded` and `TaskFailed` (whose `error` is a `TaskError`)::

    {"id": int, "ok": True, "outputs": bytes, "elapsed_us": int}
    {"id": int, "ok": False, "error": {"type": str, "message": str, "traceback": str},
     "elapsed_us": int}

`io` is the task's input: a wire frame of msgpack inputs for a regular task, the self-describing
job outputs for the commit task and a wire frame of the graph inputs for the cleanup task.
`outputs` is a wire frame of msgpack outputs. The executor exits with status 0 on `shutdown` or
when its stdin reaches end of file.

Every message has `encode()` (the whole frame). `decode_pool_message` (what the executor reads),
`decode_executor_message` (what the pool reads) and `decode_message` (either) check the type of
every field and raise `ProtocolError` naming the first one that is wrong; keys they do not know
are ignored. One thing is decoded leniently, so that one bad task does not end the executor for
the whole batch: a task of a run request that is a map with an int `id` but another field wrong
decodes to a `RejectedTask`, which the executor answers with an error response.

`FrameDecoder` is the one frame parser, without I/O: bytes go in as they arrive, complete
messages come out. The pool feeds it from non-blocking reads; `FrameReader` puts it over a
blocking stream (the executor's stdin).
"""

from __future__ import annotations

import reprlib
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Final, Generic, TypeAlias, TypeVar, overload

import msgpack

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "HEADER_BYTES",
    "PROTOCOL_VERSION",
    "ExecutorMessage",
    "FrameDecoder",
    "FrameReader",
    "FrameTooLargeError",
    "Hello",
    "Message",
    "PoolMessage",
    "ProtocolError",
    "RejectedTask",
    "RunRequest",
    "RunTask",
    "Shutdown",
    "TaskError",
    "TaskFailed",
    "TaskSucceeded",
    "decode_body",
    "decode_executor_message",
    "decode_message",
    "decode_pool_message",
    "encode_frame",
]

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
_HEADER: Final = struct.Struct(">I")
HEADER_BYTES: Final = _HEADER.size

BytesLike: TypeAlias = bytes | bytearray | memoryview

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = 4
_repr.maxdict = 4


class ProtocolError(Exception):
    """A malformed or truncated frame, or a message with a wrong field (named by `field`, a
    path such as ``tasks[2].ctx.job_id``, when one is to blame)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class FrameTooLargeError(ProtocolError):
    """A frame exceeds the configured maximum size."""

    def __init__(self, size: int, limit: int, what: str = "frame") -> None:
        super().__init__(
            f"{what} of {size} bytes exceeds the executor frame limit of {limit} bytes"
        )
        self.size = size
        self.limit = limit


# -------------------------------------------------------------------------------------------------
# Frames
# -------------------------------------------------------------------------------------------------


def encode_frame(body: dict[str, Any], max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Header + msgpack `body`; raises `FrameTooLargeError` when the body exceeds `max_bytes`.
    The messages' `encode()` use it; on its own it serves tests that write malformed frames."""
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    if len(packed) > max_bytes:
        raise FrameTooLargeError(len(packed), max_bytes)
    return _HEADER.pack(len(packed)) + packed


def decode_body(body: BytesLike) -> dict[Any, Any]:
    """The msgpack map of a frame body, not interpreted yet; raises `ProtocolError`."""
    error = None
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        error = f"malformed frame body: {str(exc) or type(exc).__name__}"
    if error is not None:  # raised here, the error does not hold on to `body` (a buffer view)
        raise ProtocolError(error)
    if not isinstance(message, dict):
        raise ProtocolError(f"a frame must hold a map, got {type(message).__name__}")
    return message


# -------------------------------------------------------------------------------------------------
# Messages
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """The executor's greeting, sent once before it reads anything."""

    pid: int
    version: str
    protocol: int = PROTOCOL_VERSION

    def encode(self, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
        return encode_frame(
            {"op": "hello", "pid": self.pid, "version": self.version, "protocol": self.protocol},
            max_bytes,
        )


@dataclass(frozen=True, slots=True)
class RunTask:
    """One task of a run request: the task `package` / `func` to call, its context (`ctx` on
    the wire) and its input `io`. `id` is the pool's, echoed by the response."""

    id: int
    package: str
    func: str
    job_id: int
    task_id: int
    instance_id: int
    resource_group_id: int
    io: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "package": self.package,
            "func": self.func,
            "ctx": {
                "job_id": self.job_id,
                "task_id": self.task_id,
                "instance_id": self.instance_id,
                "resource_group_id": self.resource_group_id,
            },
            "io": self.io,
        }


@dataclass(frozen=True, slots=True)
class RejectedTask:
    """A task of a received run request whose `id` could be read but not `field`: `reason`
    says what is wrong with it. The executor answers it with an error; it is never sent."""

    id: int
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Run these tasks one after the other, answering each as soon as it finished."""

    tasks: tuple[RunTask | RejectedTask, ...]

    def encode(self, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
        tasks = []
        for task in self.tasks:
            if isinstance(task, RejectedTask):
                raise ValueError(f"task {task.id} was rejected ({task.reason}): it cannot be sent")
            tasks.append(task.to_wire())
        return encode_frame({"op": "run", "tasks": tasks}, max_bytes)


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Exit once idle."""

    def encode(self, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
        return encode_frame({"op": "shutdown"}, max_bytes)


@dataclass(frozen=True, slots=True)
class TaskError:
    """Why a task failed: the exception's type name, its message and the task's own frames of
    its traceback (empty when there are none)."""

    type: str
    message: str
    traceback: str


@dataclass(frozen=True, slots=True)
class TaskSucceeded:
    id: int
    outputs: bytes
    elapsed_us: int

    def encode(self, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
        return encode_frame(
            {"id": self.id, "ok": True, "outputs": self.outputs, "elapsed_us": self.elapsed_us},
            max_bytes,
        )


@dataclass(frozen=True, slots=True)
class TaskFailed:
    id: int
    error: TaskError
    elapsed_us: int

    def encode(self, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
        error = {
            "type": self.error.type,
            "message": self.error.message,
            "traceback": self.error.traceback,
        }
        return encode_frame(
            {"id": self.id, "ok": False, "error": error, "elapsed_us": self.elapsed_us},
            max_bytes,
        )


PoolMessage: TypeAlias = RunRequest | Shutdown
ExecutorMessage: TypeAlias = Hello | TaskSucceeded | TaskFailed
Message: TypeAlias = PoolMessage | ExecutorMessage

# -------------------------------------------------------------------------------------------------
# Decoding
# -------------------------------------------------------------------------------------------------

_T = TypeVar("_T")
_TYPE_NAMES: Final = {
    int: "an int",
    str: "a str",
    bytes: "bytes",
    bool: "a bool",
    dict: "a map",
    list: "a list",
}


def _describe(value: object) -> str:
    return f"{type(value).__qualname__} {_repr.repr(value)}"


_MISSING: Final = object()


def _get(message: Mapping[Any, Any], key: str, kind: type[_T], what: str, path: str = "") -> _T:
    """`message[key]`, which must be of type `kind` (an int is never a bool)."""
    value = message.get(key, _MISSING)
    if isinstance(value, kind) and (kind is not int or type(value) is not bool):
        return value
    field = path + key
    if value is _MISSING:
        raise ProtocolError(f"{what}: field `{field}` is missing", field)
    raise ProtocolError(
        f"{what}: field `{field}` must be {_TYPE_NAMES.get(kind, kind.__name__)}, got "
        f"{_describe(value)}",
        field,
    )


def _hello(message: Mapping[Any, Any]) -> Hello:
    what = "hello"
    return Hello(
        pid=_get(message, "pid", int, what),
        version=_get(message, "version", str, what),
        protocol=_get(message, "protocol", int, what),
    )


_RUN_TASK_TYPES: Final = (int, str, str, int, int, int, int, bytes)


def _run_task(entry: object, index: int) -> RunTask | RejectedTask:
    # What the pool sends passes this quick check of exact types (msgpack makes no subclasses);
    # anything else goes through `_checked_run_task`, which names what is wrong.
    if type(entry) is dict and type(ctx := entry.get("ctx")) is dict:
        values: tuple[Any, ...] = (
            entry.get("id"),
            entry.get("package"),
            entry.get("func"),
            ctx.get("job_id"),
            ctx.get("task_id"),
            ctx.get("instance_id"),
            ctx.get("resource_group_id"),
            entry.get("io"),
        )
        if tuple(map(type, values)) == _RUN_TASK_TYPES:
            return RunTask(*values)
    return _checked_run_task(entry, index)


def _checked_run_task(entry: object, index: int) -> RunTask | RejectedTask:
    what, path = "run request", f"tasks[{index}]."
    if not isinstance(entry, dict):
        raise ProtocolError(
            f"{what}: field `tasks[{index}]` must be a map, got {_describe(entry)}",
            f"tasks[{index}]",
        )
    tid = _get(entry, "id", int, what, path)
    try:
        package = _get(entry, "package", str, what, path)
        func = _get(entry, "func", str, what, path)
        ctx = _get(entry, "ctx", dict, what, path)
        ctx_path = path + "ctx."
        return RunTask(
            id=tid,
            package=package,
            func=func,
            job_id=_get(ctx, "job_id", int, what, ctx_path),
            task_id=_get(ctx, "task_id", int, what, ctx_path),
            instance_id=_get(ctx, "instance_id", int, what, ctx_path),
            resource_group_id=_get(ctx, "resource_group_id", int, what, ctx_path),
            io=_get(entry, "io", bytes, what, path),
        )
    except ProtocolError as exc:
        assert exc.field is not None
        return RejectedTask(tid, exc.field.removeprefix(path), str(exc).removeprefix(f"{what}: "))


def _run(message: Mapping[Any, Any]) -> RunRequest:
    tasks = _get(message, "tasks", list, "run request")
    return RunRequest(tuple(_run_task(entry, i) for i, entry in enumerate(tasks)))


def _response(message: Mapping[Any, Any]) -> TaskSucceeded | TaskFailed:
    if message.get("ok") is True:  # the common case, checked quickly as in `_run_task`
        tid, outputs, elapsed = message.get("id"), message.get("outputs"), message.get("elapsed_us")
        if type(tid) is int and type(outputs) is bytes and type(elapsed) is int:
            return TaskSucceeded(tid, outputs, elapsed)
    what = "response"
    tid = _get(message, "id", int, what)
    if _get(message, "ok", bool, what):
        return TaskSucceeded(
            id=tid,
            outputs=_get(message, "outputs", bytes, what),
            elapsed_us=_get(message, "elapsed_us", int, what),
        )
    error = _get(message, "error", dict, what)
    return TaskFailed(
        id=tid,
        error=TaskError(
            type=_get(error, "type", str, what, "error."),
            message=_get(error, "message", str, what, "error."),
            traceback=_get(error, "traceback", str, what, "error."),
        ),
        elapsed_us=_get(message, "elapsed_us", int, what),
    )


def _op(message: Mapping[Any, Any]) -> str:
    op = message["op"]
    if not isinstance(op, str):
        raise ProtocolError(f"field `op` must be a str, got {_describe(op)}", "op")
    return op


def _pool_message(message: Mapping[Any, Any]) -> PoolMessage:
    if "op" not in message:
        raise ProtocolError("a request must have an `op` (run or shutdown)", "op")
    op = _op(message)
    if op == "run":
        return _run(message)
    if op == "shutdown":
        return Shutdown()
    raise ProtocolError(f"unexpected request op {_repr.repr(op)} (expected run or shutdown)", "op")


def _executor_message(message: Mapping[Any, Any]) -> ExecutorMessage:
    if "op" not in message:
        return _response(message)
    op = _op(message)
    if op == "hello":
        return _hello(message)
    raise ProtocolError(f"unexpected executor message op {_repr.repr(op)}", "op")


def decode_pool_message(body: BytesLike) -> PoolMessage:
    """A frame body the pool sent: a run or shutdown request. Raises `ProtocolError`."""
    return _pool_message(decode_body(body))


def decode_executor_message(body: BytesLike) -> ExecutorMessage:
    """A frame body an executor sent: its greeting or a task response. Raises
    `ProtocolError`."""
    return _executor_message(decode_body(body))


def decode_message(body: BytesLike) -> Message:
    """A frame body of either direction. Raises `ProtocolError`."""
    message = decode_body(body)
    if message.get("op") in ("run", "shutdown"):
        return _pool_message(message)
    return _executor_message(message)


# -------------------------------------------------------------------------------------------------
# Frame decoding
# -------------------------------------------------------------------------------------------------

_M = TypeVar("_M")
# Frame bodies from this size up are decoded from a view of the bytes fed, smaller ones copied.
_COPY_BELOW: Final = 64 * 1024


class FrameDecoder(Generic[_M]):
    """Cuts a byte stream into frames and decodes their bodies with `decode` (one of the
    ``decode_*`` functions), without doing any I/O. A frame announcing more than `max_bytes`
    raises `FrameTooLargeError` as soon as its header is in, before its body is buffered.

    `feed` returns the messages completed so far, in order; a malformed frame raises
    `ProtocolError`, but never at the cost of the messages before it: when some were decoded in
    the same call, they are returned and the error is raised by the next call. A decoder that
    raised is done: every later call raises the same error."""

    def __init__(
        self, decode: Callable[[BytesLike], _M], max_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        self._decode = decode
        self.max_bytes = max_bytes
        self._head = bytearray()  # a header not complete yet
        self._size: int | None = None  # the body size of the frame in progress
        self._parts: list[bytes] = []  # its body so far
        self._have = 0
        self._error: ProtocolError | None = None

    @property
    def at_boundary(self) -> bool:
        """Whether no part of a frame is buffered (the stream may end here)."""
        return self._size is None and not self._head

    @property
    def wanted(self) -> int:
        """How many more bytes the frame in progress needs at least (>= 1): a blocking reader
        asking for exactly that many never waits for bytes that are not coming."""
        if self._size is None:
            return HEADER_BYTES - len(self._head)
        return max(1, self._size - self._have)

    def feed(self, data: BytesLike = b"") -> list[_M]:
        """Take `data` (any amount) and return the messages it completed."""
        if self._error is not None:
            raise self._error
        if not data:  # frames complete as soon as their bytes are in: nothing new
            return []
        messages: list[_M] = []
        # Views of a buffer the caller may change are released before returning.
        chunk: bytes | memoryview
        view = None
        if isinstance(data, bytes):
            chunk = data
        else:
            chunk = view = memoryview(data).cast("B")
        try:
            self._cut(chunk, messages)
        except ProtocolError as exc:
            # Without its traceback, the error does not keep the buffers of `_cut` alive.
            self._error = exc.with_traceback(None)
            if not messages:
                raise self._error from None
        finally:
            if view is not None:
                view.release()
        return messages

    def _cut(self, data: bytes | memoryview, messages: list[_M]) -> None:
        pos, end = 0, len(data)
        while True:
            if self._size is None:
                if not self._head and end - pos >= HEADER_BYTES:
                    (size,) = _HEADER.unpack_from(data, pos)
                    pos += HEADER_BYTES
                else:
                    take = min(HEADER_BYTES - len(self._head), end - pos)
                    self._head += data[pos : pos + take]
                    pos += take
                    if len(self._head) < HEADER_BYTES:
                        return
                    (size,) = _HEADER.unpack(self._head)
                    self._head.clear()
                if size > self.max_bytes:
                    raise FrameTooLargeError(size, self.max_bytes)
                self._size = size
            size = self._size
            body: BytesLike
            if not self._parts and end - pos >= size:
                # Whole in this chunk: a large body is decoded in place, not copied.
                if size >= _COPY_BELOW and isinstance(data, bytes):
                    body = memoryview(data)[pos : pos + size]
                else:
                    body = data[pos : pos + size]
                pos += size
            else:
                take = min(size - self._have, end - pos)
                if take:
                    self._parts.append(bytes(data[pos : pos + take]))
                    self._have += take
                    pos += take
                if self._have < size:
                    return
                body = b"".join(self._parts)
                self._parts.clear()
                self._have = 0
            self._size = None
            messages.append(self._decode(body))

    def end(self) -> None:
        """The stream ended: raises `ProtocolError` when it ended inside a frame (or a malformed
        frame is still to be reported)."""
        if self._error is not None:
            raise self._error
        if self._size is not None:
            raise ProtocolError(
                f"stream ended inside a frame ({self._have}/{self._size} body bytes)"
            )
        if self._head:
            raise ProtocolError(
                f"stream ended inside a frame header ({len(self._head)}/{HEADER_BYTES} bytes)"
            )


class FrameReader(Generic[_M]):
    """Reads messages from a blocking binary stream (a pipe) through a `FrameDecoder`; it never
    reads past the frame it needs. Decodes messages of either direction unless given
    `decode`."""

    @overload
    def __init__(
        self: FrameReader[Message],
        stream: IO[bytes],
        max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None: ...

    @overload
    def __init__(
        self,
        stream: IO[bytes],
        max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        decode: Callable[[BytesLike], _M],
    ) -> None: ...

    def __init__(
        self,
        stream: IO[bytes],
        max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        decode: Callable[[BytesLike], Any] = decode_message,
    ) -> None:
        self._stream = stream
        self._decoder: FrameDecoder[_M] = FrameDecoder(decode, max_bytes)
        self._ready: deque[_M] = deque()

    def read(self) -> _M | None:
        """The next message, or None at a clean end of stream (between frames). Raises
        `ProtocolError`."""
        if not self._ready:
            self._ready.extend(self._decoder.feed())
        while not self._ready:
            data = self._stream.read(self._decoder.wanted)
            if not data:
                self._decoder.end()
                return None
            self._ready.extend(self._decoder.feed(data))
        return self._ready.popleft()
