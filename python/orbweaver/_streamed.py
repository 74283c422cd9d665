"""Unary calls over one long-lived stream per caller (the `Calls` method of a service).

A unary gRPC call between two Python processes pays for its setup on both ends (a new call
object, metadata, a status, and in the synchronous server a hand-off to a handler thread): on a
two-core machine an empty call takes about 0.85 ms of round trip and 0.55 ms of the server's CPU,
while the same message exchanged on an open bidirectional stream takes 0.55 ms and 0.29 ms
(`docs/performance.md`, "Unary calls over one stream"). The callers that make a call per task or
per job -- the client's submissions and waits, an execution manager's reports and takes, the
scheduler's polls -- keep a stream per service open and send each call on it as a
`StreamedCall`; the server answers each one in order with a `StreamedReply`.

Nothing about a call changes but its transport. The server runs the very servicer method the
unary call would run, with a context that carries the stream's metadata (so credentials are
checked per call, as before), the call's own deadline, and the same statuses: an error that
would have ended the unary call comes back in the reply (code, message, trailing metadata) and
is raised by the caller as the same `grpc.RpcError`, leaving the stream open. A standby's
refusal is decided per call too (`refuse`), so a stream opened on a leader that steps down
answers its next call with the redirect a new call would get.

Bounds: a server serves at most `max_streams` streams at once (each holds one handler thread
while open; beyond that a `Calls` stream is refused with RESOURCE_EXHAUSTED, and the caller
makes unary calls instead), and ends a stream no call arrived on for `idle_s` seconds. A caller
keeps at most `_MAX_STREAMS` streams per address and service and metadata (a call that finds
them all busy is made as a unary call), and drops a stream it has not used for
`_CLIENT_IDLE_S` seconds before the server would end it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import grpc

from orbweaver import errors
from orbweaver._proto import orbweaver_pb2 as pb

log = logging.getLogger("orbweaver.rpc")

CALLS_METHOD = "Calls"
DEFAULT_MAX_STREAMS = 64
DEFAULT_IDLE_S = 120.0
_MAX_STREAMS = 4  # per (address, service, metadata) on the caller's side
ENV = "ORBWEAVER_CALL_STREAMS"  # "0"/"false"/"off": every call unary (for comparisons)
_CLIENT_IDLE_S = 30.0
_WATCHDOG_LINGER_S = 2.0  # well before the server's `idle_s`: a stream is never ended under a call
_STATUS = {code.value[0]: code for code in grpc.StatusCode}
_END = object()
TOO_MANY_STREAMS = "too many open call streams"

Metadata = tuple[tuple[str, str], ...]

# Full names of the services that serve their unary calls on streams too.
STREAMED_SERVICES = frozenset(
    service.full_name
    for service in pb.DESCRIPTOR.services_by_name.values()
    if CALLS_METHOD in service.methods_by_name
)


# ---------------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------------


class Aborted(Exception):
    """Raised by `_CallContext.abort`: the call ends with this status (the stream goes on)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class _CallContext:
    """What a servicer method sees of one call made on a stream: the subset of
    `grpc.ServicerContext` Orbweaver's servicers use, scoped to the call."""

    __slots__ = ("_callbacks", "_deadline", "_stream", "trailing")

    def __init__(self, stream: grpc.ServicerContext, timeout_ms: int) -> None:
        self._stream = stream
        self._deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        self._callbacks: list[Callable[[], None]] = []
        self.trailing: Sequence[tuple[str, str]] = ()

    def invocation_metadata(self) -> Any:
        return self._stream.invocation_metadata()

    def peer(self) -> str:
        return self._stream.peer()

    def auth_context(self) -> Any:
        return self._stream.auth_context()

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return self._stream.time_remaining()
        return max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        return self._stream.is_active()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Run when the stream ends while this call is being served (the caller left)."""
        self._callbacks.append(callback)
        return True

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.trailing = tuple(metadata)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def ended(self) -> None:
        for callback in self._callbacks:
            try:
                callback()
            except Exception:
                log.exception("a call's termination callback failed")


class CallsServed:
    """Base of the servicers of a service with a `Calls` method: `_rpc.add_servicer` serves it
    from the servicer's unary methods (`stream_handler`), never through this method."""

    def Calls(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        raise NotImplementedError("Calls is served by orbweaver._rpc.add_servicer")


class StreamLimits:
    """How many `Calls` streams a server serves at once, and ends those left idle."""

    def __init__(self, max_streams: int = DEFAULT_MAX_STREAMS, idle_s: float = DEFAULT_IDLE_S):
        self.max_streams = max_streams
        self.idle_s = idle_s
        self._lock = threading.Condition()
        self._open: dict[int, list[Any]] = {}  # id -> [context, last active (monotonic)]
        self._ids = itertools.count(1)
        self._sweeper: threading.Thread | None = None
        self._closing = False
        self._busy: set[int] = set()  # streams serving a call now

    def open(self, context: grpc.ServicerContext) -> int | None:
        with self._lock:
            if self._closing or len(self._open) >= self.max_streams:
                return None
            key = next(self._ids)
            self._open[key] = [context, time.monotonic()]
            if self._sweeper is None:
                self._sweeper = threading.Thread(
                    target=self._sweep, name="orbweaver-stream-sweeper", daemon=True
                )
                self._sweeper.start()
            return key

    def active(self, key: int, busy: bool) -> None:
        entry = self._open.get(key)
        if entry is not None:
            entry[1] = time.monotonic()
        if busy:
            self._busy.add(key)
        else:
            self._busy.discard(key)

    @property
    def closing(self) -> bool:
        return self._closing

    def close_all(self) -> None:
        """The server stops: end every stream between calls now (a stream keeps its RPC open,
        and a stopping server would wait for it until its grace ran out); a stream serving a
        call ends once its reply is sent. No new stream opens."""
        with self._lock:
            self._closing = True
            idle = [entry[0] for key, entry in self._open.items() if key not in self._busy]
        for context in idle:
            context.cancel()

    def close(self, key: int) -> None:
        with self._lock:
            self._open.pop(key, None)
            self._busy.discard(key)
            if not self._open:
                self._lock.notify_all()  # the sweeper ends

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def _sweep(self) -> None:
        """Runs while streams are open (a stopped server leaves no thread behind)."""
        while True:
            with self._lock:
                self._lock.wait(min(10.0, self.idle_s / 4))
                if not self._open:
                    self._sweeper = None
                    return
                cutoff = time.monotonic() - self.idle_s
                idle = [entry[0] for entry in self._open.values() if entry[1] < cutoff]
            for context in idle:
                context.cancel()


def stream_handler(
    methods: Mapping[str, tuple[Callable[[Any, Any], Any], Callable[[bytes], Any]]],
    *,
    decode_call: Callable[[bytes], Any],
    refuse: Callable[[], tuple[str, Metadata] | None] | None,
    limits: StreamLimits,
) -> grpc.RpcMethodHandler[Any, Any]:
    """The `Calls` handler of a service whose unary methods are `methods` (name -> (servicer
    method, lenient request decoder)). `decode_call` decodes a `StreamedCall` leniently (an
    undecodable one has no `method`); `refuse()` returns (message, trailing metadata) while
    this server is a standby."""

    def calls(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        key = limits.open(context)
        if key is None:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{TOO_MANY_STREAMS} (at most {limits.max_streams}, or the server is stopping): "
                "make unary calls",
            )
        assert key is not None
        serving: list[_CallContext | None] = [None]

        def left() -> None:
            call = serving[0]
            if call is not None:
                call.ended()

        context.add_callback(left)
        try:
            for streamed in requests:
                limits.active(key, busy=True)
                yield _serve_one(streamed, context, methods, refuse, serving)
                serving[0] = None
                limits.active(key, busy=False)
                if limits.closing:
                    return
        finally:
            limits.close(key)

    return grpc.stream_stream_rpc_method_handler(
        calls, request_deserializer=decode_call, response_serializer=_serialize
    )


def _serve_one(
    streamed: Any,
    context: grpc.ServicerContext,
    methods: Mapping[str, tuple[Callable[[Any, Any], Any], Callable[[bytes], Any]]],
    refuse: Callable[[], tuple[str, Metadata] | None] | None,
    serving: list[_CallContext | None],
) -> pb.StreamedReply:
    method = getattr(streamed, "method", None)
    if method is None:
        return pb.StreamedReply(
            code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
            message=f"Calls: the request is not a valid StreamedCall: {streamed.error}",
        )
    entry = methods.get(method)
    if entry is None:
        return pb.StreamedReply(
            code=grpc.StatusCode.UNIMPLEMENTED.value[0],
            message=f"Calls: this service has no unary method {method[:100]!r}",
        )
    if refuse is not None:
        refused = refuse()
        if refused is not None:
            message, trailing = refused
            return _failure(grpc.StatusCode.UNAVAILABLE, message, trailing)
    handler, decode = entry
    call = serving[0] = _CallContext(context, streamed.timeout_ms)
    try:
        result = handler(decode(streamed.request), call)
    except Aborted as exc:
        return _failure(exc.code, exc.details, call.trailing)
    except Exception as exc:  # servicer methods map their own errors; this is a broken invariant
        log.exception("unexpected error serving %s on a call stream", method)
        return _failure(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    return pb.StreamedReply(reply=_serialize(result))


def _failure(
    code: grpc.StatusCode, message: str, trailing: Sequence[tuple[str, str]] = ()
) -> pb.StreamedReply:
    return pb.StreamedReply(
        code=code.value[0],
        message=message,
        trailing_metadata=[pb.MetadataEntry(key=k, value=str(v)) for k, v in trailing],
    )


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


# ---------------------------------------------------------------------------------------------
# Caller side
# ---------------------------------------------------------------------------------------------


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process makes its calls on streams (`ENV`, default on)."""
    value = env.get(ENV, "").strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise errors.ConfigError(f"{ENV}={env[ENV]!r}: expected true or false")


class StreamedCallError(grpc.RpcError):
    """A call made on a stream ended with this status: raised where the unary call would have
    raised its `grpc.RpcError`, with the same `code()`, `details()` and `trailing_metadata()`."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self._trailing = trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing

    def initial_metadata(self) -> Metadata:
        return ()


class _Watchdog:
    """Cancels a stream whose reply did not come by the call's deadline (a blocking read on a
    gRPC stream takes no timeout). One thread for the process; arming is a heap push."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], Any]]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, timeout: float, cancel: Callable[[], Any]) -> int:
        deadline = time.monotonic() + timeout
        with self._cv:
            key = next(self._ids)
            self._live.add(key)
            first = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, key, cancel))
            if first:
                self._cv.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="orbweaver-call-deadlines", daemon=True
                )
                self._thread.start()
        return key

    def disarm(self, key: int) -> bool:
        """False: the deadline passed and the stream was cancelled."""
        with self._cv:
            if key in self._live:
                self._live.discard(key)
                if not self._live:
                    self._heap.clear()  # every entry left was answered in time
                return True
            return False

    def _run(self) -> None:
        """Runs while calls wait, and a little longer (no thread left behind for long)."""
        with self._cv:
            while True:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # answered in time
                if not self._heap:
                    self._cv.wait(_WATCHDOG_LINGER_S)
                    if not self._heap:
                        self._thread = None
                        return
                    continue
                deadline, key, cancel = self._heap[0]
                now = time.monotonic()
                if now < deadline:
                    self._cv.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(key)
                try:
                    cancel()
                except Exception:
                    log.exception("cancelling a call stream failed")


_WATCHDOG = _Watchdog()


class _Stream:
    """One open `Calls` stream: calls on it are made one at a time (the pool lends it out)."""

    def __init__(self, channel: grpc.Channel, service: str, metadata: Metadata) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        method = channel.stream_stream(
            f"/{service}/{CALLS_METHOD}",
            request_serializer=_serialize,
            response_deserializer=pb.StreamedReply.FromString,
        )
        call = method(iter(self._requests.get, _END), metadata=metadata)
        self._call: Any = call  # also a `grpc.Call`: cancel() ends the stream
        self._replies = cast("Iterator[pb.StreamedReply]", call)
        self.used = time.monotonic()
        self.calls = 0

    def exchange(self, call: pb.StreamedCall, timeout: float | None) -> pb.StreamedReply:
        self._requests.put(call)
        key = _WATCHDOG.arm(timeout, self._call.cancel) if timeout is not None else None
        try:
            reply: pb.StreamedReply = next(self._replies)
        except grpc.RpcError as exc:
            if key is not None and not _WATCHDOG.disarm(key):
                raise StreamedCallError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
                ) from exc
            raise
        except StopIteration:
            if key is not None:
                _WATCHDOG.disarm(key)
            raise StreamedCallError(
                grpc.StatusCode.UNAVAILABLE, "the call stream ended before its reply"
            ) from None
        if key is not None and not _WATCHDOG.disarm(key):
            # Cancelled just as the reply came: the stream is gone, the reply is good.
            self.calls = -1
        self.used = time.monotonic()
        self.calls += 1
        return reply

    @property
    def usable(self) -> bool:
        """Still open (a server that stops or restarts ends its streams) and not left idle so
        long that the server may be ending it."""
        return (
            self.calls >= 0
            and time.monotonic() - self.used < _CLIENT_IDLE_S
            and self._call.is_active()
        )

    def close(self) -> None:
        self._requests.put(_END)
        self._call.cancel()


class StreamPool:
    """The `Calls` streams of one address for one service and one set of metadata."""

    def __init__(self, channel: grpc.Channel, service: str, metadata: Metadata) -> None:
        self._channel = channel
        self._service = service
        self._metadata = metadata
        self._lock = threading.Lock()
        self._idle: list[_Stream] = []
        self._open = 0
        self.disabled = False  # the server has no `Calls`: unary calls only
        self.closed = False  # its channel is closing: a cancelled stream is the caller's doing

    def call(
        self,
        method: str,
        request: Any,
        response_deserializer: Callable[[bytes], Any],
        timeout: float | None,
        unary: Callable[[], Any],
    ) -> Any:
        """Make the call `method` of this pool's service on a stream; `unary()` makes it as a
        unary call instead (no stream to be had, or the server refused to open one)."""
        stream, new = self._lend()
        if stream is None:
            return unary()
        call = pb.StreamedCall(
            method=method,
            request=request.SerializeToString(),
            timeout_ms=0 if timeout is None else max(1, int(timeout * 1000)),
        )
        try:
            reply = stream.exchange(call, timeout)
        except grpc.RpcError as exc:
            self._discard(stream)
            if isinstance(exc, StreamedCallError):
                raise
            if new and _refused_stream(exc):
                # The server opened no stream and ran nothing: make this call unary.
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self.disabled = True
                return unary()
            if exc.code() == grpc.StatusCode.CANCELLED and not self.closed:
                # Not this caller's doing: the server ended the stream (it stopped, or found
                # it idle). To the caller that is a server that went away, as for a unary
                # call: UNAVAILABLE, which its retry policy handles.
                raise StreamedCallError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the server ended the call stream: {exc.details() or 'cancelled'}",
                ) from exc
            raise
        self._give_back(stream)
        if reply.code:
            raise StreamedCallError(
                _STATUS.get(reply.code, grpc.StatusCode.UNKNOWN),
                reply.message,
                tuple((e.key, e.value) for e in reply.trailing_metadata),
            )
        return response_deserializer(reply.reply)

    def _lend(self) -> tuple[_Stream | None, bool]:
        stale: list[_Stream] = []
        with self._lock:
            stream = None
            while self._idle:
                candidate = self._idle.pop()
                if candidate.usable:
                    stream = candidate
                    break
                stale.append(candidate)
                self._open -= 1
            if stream is None and not self.disabled and self._open < _MAX_STREAMS:
                self._open += 1
                stream = _Stream(self._channel, self._service, self._metadata)
                new = True
            else:
                new = False
        for old in stale:
            old.close()
        return stream, new

    def _give_back(self, stream: _Stream) -> None:
        if not stream.usable:
            self._discard(stream)
            return
        with self._lock:
            self._idle.append(stream)

    def _discard(self, stream: _Stream) -> None:
        with self._lock:
            self._open -= 1
        stream.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self.disabled = self.closed = True
        for stream in idle:
            stream.close()


def _refused_stream(exc: grpc.RpcError) -> bool:
    """The server would not open the stream (it has no `Calls`, or serves too many): nothing
    ran. Any other failure of a new stream may have come after its call ran."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    return code == grpc.StatusCode.UNIMPLEMENTED or (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith(TOO_MANY_STREAMS)
    )
