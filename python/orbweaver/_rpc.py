"""gRPC plumbing shared by every component: channels, servers, auth, size limits, retries and
the mapping between gRPC status codes and `orbweaver.errors`.

Every server gets the standard health service and (optionally) TLS and a shared cluster token;
every client channel gets the same message-size limits so an oversized message fails with a clear
`MessageTooLarge` instead of an opaque transport error.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from orbweaver import _streamed, errors

log = logging.getLogger("orbweaver.rpc")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# `Bearer <token>`: the cluster token (services) or the operator token (clients).
TOKEN_METADATA_KEY = "authorization"
# A client acting within a resource group: its numeric id and its password (binary metadata).
GROUP_METADATA_KEY = "orbweaver-group"
PASSWORD_METADATA_KEY = "orbweaver-password-bin"
# Trailing metadata of a failed call: the `orbweaver.errors` class the server raised, so the
# client raises the same one (the status code alone cannot tell LimitExceeded from
# InvalidArgument, JobNotFound from NotFound).
ERROR_METADATA_KEY = "orbweaver-error"
# Trailing metadata of a call a standby storage refused (it ran nothing): where the leader
# serves, or "" while no storage leads. Clients retry the call there at once.
LEADER_METADATA_KEY = "orbweaver-leader"
# Health-service names telling a storage's role (its server, "", is SERVING in both roles once
# connected to the database; its gRPC services only while leading).
HEALTH_LEADER = "orbweaver.storage.leader"
HEALTH_STANDBY = "orbweaver.storage.standby"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """PEM files. A server needs cert+key (and a CA to require client certificates); a client
    needs the CA that signed the server certificate (and cert+key for mutual TLS)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Security:
    """How components authenticate each other: an optional shared token and optional TLS."""

    token: str | None = field(default=None, repr=False)
    tls: TlsConfig | None = None

    @staticmethod
    def from_env(env: dict[str, str]) -> Security:
        token = env.get("ORBWEAVER_TOKEN") or None
        cert, key, ca = (env.get(f"ORBWEAVER_TLS_{n}") for n in ("CERT", "KEY", "CA"))
        tls = None
        if cert or key or ca:
            tls = TlsConfig(
                Path(cert) if cert else None, Path(key) if key else None, Path(ca) if ca else None
            )
        return Security(token=token, tls=tls)


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def _options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # A peer cut off from the network is noticed within 10 s even by a call that waits
        # long (a WaitJob): its calls fail UNAVAILABLE, and a `LeaderChannel` moves on.
        ("grpc.keepalive_time_ms", 5_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.ping_timeout_ms", 5_000),  # gRPC's default waits a minute for the ack
        # Servers accept those pings (gRPC's default refuses pings more often than 5 min).
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 4_000),
        ("grpc.http2.max_ping_strikes", 0),
        # Reconnect quickly to a restarted peer (gRPC's default backoff grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


# ---------------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------------


if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:  # the runtime class is not generic
    _ServerInterceptor = grpc.ServerInterceptor


def split_targets(target: str) -> list[str]:
    """`a:50051,b:50051` -> its addresses (one or more; blanks ignored)."""
    targets = [t.strip() for t in target.split(",") if t.strip()]
    if not targets:
        raise errors.InvalidArgument(f"no address in {target!r}")
    return targets


def make_channel(
    target: str,
    security: Security | None = None,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    """Open a channel to `host:port`, or to the leader among storages `a:50051,b:50051` (see
    `LeaderChannel`), with the cluster's security settings."""
    security = security or Security()

    def open_one(address: str) -> grpc.Channel:
        return _open_channel(address, security, max_message_bytes)

    # The cluster token rides on every call as metadata the channel adds itself: a gRPC client
    # interceptor would cost a few wrapper objects per call on every hop of every task.
    token = ((TOKEN_METADATA_KEY, f"Bearer {security.token}"),) if security.token else ()
    return LeaderChannel(
        split_targets(target), open_one, metadata=token, streams=_streamed.enabled()
    )


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """A client's TLS credentials (the CA that signed the server's certificate, and the client's
    own certificate and key for mutual TLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


def _open_channel(target: str, security: Security, max_message_bytes: int) -> grpc.Channel:
    options = _options(max_message_bytes)
    if security.tls is not None:
        channel = grpc.secure_channel(target, channel_credentials(security.tls), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return channel


def named_leader(exc: BaseException) -> str | None:
    """The leader's address a standby named when it refused a call ("" when it knows none);
    None when the failure did not come from a standby."""
    trailing: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    return next((str(v) for k, v in trailing or () if k == LEADER_METADATA_KEY), None)


class LeaderTargets:
    """Which of several storage addresses to call (sans-IO: the sync `LeaderChannel` and the
    asyncio client share it). Thread-safe."""

    def __init__(self, targets: list[str]) -> None:
        self.targets = list(targets)
        # A leader's address a standby named -> the address of that standby: when the named
        # address fails (it may not be reachable from here: NAT, published ports), rotation
        # goes on after the standby, not back to the start of the list.
        self._referred: dict[str, str] = {}
        self._lock = threading.Lock()
        self.current = targets[0]

    @property
    def max_redirects(self) -> int:
        """Immediate re-sends one call may need: a redirect per address and its referral."""
        return 2 * len(self.targets) + 1

    def failed(self, target: str, code: grpc.StatusCode | None, leader: str | None) -> bool:
        """Move on after a call to `target` failed with `code` (`leader`: see `named_leader`).
        True when a standby refused it naming another leader: it ran nothing and may be sent
        again at once (to `current`)."""
        if code not in RETRYABLE:  # a definite answer: stay
            return False
        redirect = bool(leader) and leader != target
        with self._lock:
            if self.current != target:
                return redirect  # another call moved on already
            if redirect:
                assert leader
                if leader not in self.targets:
                    self._referred[leader] = target
                self.current = leader
            else:  # refused without a leader, unreachable or silent: the next address
                base = self._referred.get(target, target)
                i = self.targets.index(base) if base in self.targets else -1
                self.current = self.targets[(i + 1) % len(self.targets)]
        return redirect


class LeaderChannel(grpc.Channel):
    """A channel that follows the storage leader among several addresses.

    Calls go to the current address. A call a standby refused (UNAVAILABLE naming the leader,
    see `_GateInterceptor`) ran nothing, so it is sent again at once to the leader it named. Any
    other UNAVAILABLE or DEADLINE_EXCEEDED moves the channel on to the next address and is
    raised: the caller's retry policy decides, as for a storage restart. A single address
    behaves as a plain channel that also follows a standby's redirect."""

    def __init__(
        self,
        targets: list[str],
        open_one: Callable[[str], grpc.Channel],
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        streams: bool = True,
    ) -> None:
        self.targets = LeaderTargets(targets)
        # Unary calls of services with a `Calls` method go over streams (`_streamed`).
        self.streams = streams
        self._open_one = open_one
        # Added to every unary call's own metadata (the cluster token).
        self.metadata = metadata
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._pools: dict[tuple[str, str, _streamed.Metadata], _streamed.StreamPool] = {}
        self._closed = False

    @property
    def target(self) -> str:
        return self.targets.current

    def _pool(
        self, target: str, service: str, metadata: _streamed.Metadata
    ) -> _streamed.StreamPool | None:
        key = (target, service, metadata)
        with self._lock:
            pool = self._pools.get(key)
            channel = self._channels.get(target)
            if pool is None and channel is not None:
                pool = self._pools[key] = _streamed.StreamPool(channel, service, metadata)
            return pool

    def _channel(self) -> tuple[str, grpc.Channel]:
        with self._lock:
            if self._closed:
                raise ValueError("Cannot invoke RPC: the channel is closed")
            target = self.targets.current
            channel = self._channels.get(target)
            if channel is None:
                channel = self._channels[target] = self._open_one(target)
            return target, channel

    def _failed(self, target: str, exc: BaseException) -> bool:
        if not isinstance(exc, grpc.RpcError) or not hasattr(exc, "code"):
            return False
        return self.targets.failed(target, exc.code(), named_leader(exc))

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _FollowingCall(self, method, args, kwargs)

    # Orbweaver's own services are unary; streams (gRPC health's Watch) stay on the address
    # current when the stub is made.
    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel()[1].unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel()[1].stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel()[1].stream_stream(method, *args, **kwargs)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel()[1].subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        with self._lock:
            channels = list(self._channels.values())
        for channel in channels:
            channel.unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
        for channel in channels:
            channel.close()

    def __enter__(self) -> LeaderChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PerTargetMethod:
    """A unary method of a leader-following channel (sync or asyncio), made on the current
    address's channel when first called there."""

    __slots__ = ("_args", "_channel", "_kwargs", "_method", "_methods")

    def __init__(self, channel: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._channel = channel  # has `targets` (`LeaderTargets`) and `_channel()`
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._methods: dict[str, Any] = {}

    def _on(self) -> tuple[str, Any]:
        target, channel = self._channel._channel()
        method = self._methods.get(target)
        if method is None:
            method = self._methods[target] = channel.unary_unary(
                self._method, *self._args, **self._kwargs
            )
        return target, method


class _FollowingCall(PerTargetMethod):
    """A unary method on a `LeaderChannel`: `__call__`, `with_call` and `future` as gRPC's."""

    __slots__ = ("_name", "_service")

    def __init__(self, channel: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]):
        super().__init__(channel, method, args, kwargs)
        # "/package.Service/Method", split once: the stream path needs both for every call.
        _, self._service, self._name = method.split("/")

    def _with_metadata(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        extra = self._channel.metadata
        if extra:
            kwargs["metadata"] = (*(kwargs.get("metadata") or ()), *extra)
        return kwargs

    def _run(self, how: str, request: Any, kwargs: dict[str, Any]) -> Any:
        kwargs = self._with_metadata(kwargs)
        streamed = how == "__call__" and self._streamable(kwargs)
        # A redirect names a leader: at most one per address and its referral, plus one.
        for _ in range(self._channel.targets.max_redirects):
            target, method = self._on()
            try:
                if streamed:
                    return self._on_stream(target, method, request, kwargs)
                return getattr(method, how)(request, **kwargs)
            except grpc.RpcError as exc:
                if not self._channel._failed(target, exc):
                    raise
        target, method = self._on()
        if streamed:
            return self._on_stream(target, method, request, kwargs)
        return getattr(method, how)(request, **kwargs)

    def _streamable(self, kwargs: dict[str, Any]) -> bool:
        return (
            self._channel.streams
            and self._service in _streamed.STREAMED_SERVICES
            and kwargs.keys() <= {"timeout", "metadata"}
            and "response_deserializer" in self._kwargs
        )

    def _on_stream(self, target: str, method: Any, request: Any, kwargs: dict[str, Any]) -> Any:
        """The call made on a `Calls` stream of its service (see `_streamed`)."""
        pool = self._channel._pool(target, self._service, tuple(kwargs.get("metadata") or ()))
        if pool is None:  # closed meanwhile: the unary call reports it
            return method(request, **kwargs)
        return pool.call(
            self._name,
            request,
            self._kwargs["response_deserializer"],
            kwargs.get("timeout"),
            lambda: method(request, **kwargs),
        )

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        return self._run("__call__", request, kwargs)

    def with_call(self, request: Any, **kwargs: Any) -> Any:
        return self._run("with_call", request, kwargs)

    def future(self, request: Any, **kwargs: Any) -> Any:
        # No transparent retry: the caller waits on this very future. A failure still moves
        # the channel on, so the caller's retry reaches the leader.
        target, method = self._on()
        future = method.future(request, **self._with_metadata(kwargs))

        def moved_on(done: Any) -> None:
            if not done.cancelled() and done.exception() is not None:
                self._channel._failed(target, done.exception())

        future.add_done_callback(moved_on)
        return future


def wait_for_ready(channel: grpc.Channel, timeout: float) -> None:
    """Block until the channel connects; raise `Unavailable` after `timeout` seconds."""
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError as exc:
        raise errors.Unavailable(f"could not connect within {timeout:g} s") from exc


def _call_details_name(details: Any) -> str:
    method = getattr(details, "method", "")
    return method.decode() if isinstance(method, bytes) else str(method)


# ---------------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------------


class _TokenServerInterceptor(_ServerInterceptor):
    """Service calls must carry the cluster token. Health checks and the services named in
    `client_services` pass through: their servicers authenticate each caller themselves
    (resource-group credentials or the operator token, never the cluster token)."""

    def __init__(self, token: str, client_services: Iterable[str] = ()) -> None:
        self._expected = f"Bearer {token}"
        self._open = (_HEALTH_PREFIX, *(f"/{name}/" for name in client_services))

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid cluster token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        if _call_details_name(handler_call_details).startswith(self._open):
            return continuation(handler_call_details)
        for key, value in handler_call_details.invocation_metadata or ():
            if key == TOKEN_METADATA_KEY and constant_time_eq(value, self._expected):
                return continuation(handler_call_details)
        return self._deny


class Gate(Protocol):
    """Decides, per call, whether this server serves (see `make_server`)."""

    def refusal(self) -> str | None:
        """None: serve the call. A string: refuse it as a standby; it names the leader's
        address ("" when unknown)."""
        ...


class _GateInterceptor(_ServerInterceptor):
    """A standby refuses every call but health checks, UNAVAILABLE with the leader's address in
    the trailing metadata (`LEADER_METADATA_KEY`): the caller learns that nothing ran and where
    to go."""

    def __init__(self, gate: Gate, me: str) -> None:
        self._gate = gate
        self._me = me

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        refused = standby_refusal(self._gate, self._me)
        if refused is None or _call_details_name(handler_call_details).startswith(_HEALTH_PREFIX):
            return continuation(handler_call_details)
        leader, message = refused

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.set_trailing_metadata(((LEADER_METADATA_KEY, leader),))
            context.abort(grpc.StatusCode.UNAVAILABLE, message)

        return grpc.unary_unary_rpc_method_handler(refuse)


def standby_refusal(gate: Gate, me: str) -> tuple[str, str] | None:
    """None while `gate` serves; else the leader's address ("" when unknown) and the message a
    standby answers with."""
    leader = gate.refusal()
    if leader is None:
        return None
    where = f"at {leader}" if leader else "not known yet (an election is under way)"
    return leader, f"storage {me} is a standby, not the leader; the leader is {where}"


def _standby_failure(gate: Gate, me: str) -> tuple[str, _streamed.Metadata] | None:
    """`standby_refusal` as a call on a stream answers it: the message and trailing metadata."""
    refused = standby_refusal(gate, me)
    if refused is None:
        return None
    leader, message = refused
    return message, ((LEADER_METADATA_KEY, leader),)


def constant_time_eq(a: str | bytes, b: str | bytes) -> bool:
    import hmac

    return hmac.compare_digest(
        a.encode() if isinstance(a, str) else a, b.encode() if isinstance(b, str) else b
    )


class UndecodableRequest:
    """What the lenient deserializer hands a servicer for bytes that are not the request message:
    `servicer_method` answers INVALID_ARGUMENT (gRPC's own handling would answer INTERNAL)."""

    __slots__ = ("error", "message_name")

    def __init__(self, message_name: str, error: str) -> None:
        self.message_name = message_name
        self.error = error


def _lenient(message_cls: Any) -> Callable[[bytes], Any]:
    name = message_cls.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return message_cls.FromString(data)
        except Exception as exc:
            return UndecodableRequest(name, f"{type(exc).__name__}: {exc}")

    return deserialize


def add_servicer(
    server: grpc.Server,
    servicer: Any,
    service_name: str,
    *,
    gate: Gate | None = None,
    me: str = "",
    streams: _streamed.StreamLimits | None = None,
) -> None:
    """Register `servicer` for the `orbweaver.v1` service `service_name` (e.g.
    ``"JobOrchestrationService"``), decoding requests leniently (see `UndecodableRequest`).
    A service with a `Calls` method serves its unary methods on streams too (`_streamed`),
    within `streams` and refusing calls as a standby while `gate` does (`me`: this server's
    address, for the message)."""
    from orbweaver._proto import orbweaver_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name[service_name]
    unary = {
        method.name: (
            getattr(servicer, method.name),
            _lenient(getattr(pb, method.input_type.name)),
        )
        for method in service.methods
        if not (method.client_streaming or method.server_streaming)
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=decode, response_serializer=_serialize
        )
        for name, (handler, decode) in unary.items()
    }
    if _streamed.CALLS_METHOD in service.methods_by_name:
        handlers[_streamed.CALLS_METHOD] = _streamed.stream_handler(
            unary,
            decode_call=_lenient(pb.StreamedCall),
            refuse=None if gate is None else functools.partial(_standby_failure, gate, me),
            limits=streams or _streamed.StreamLimits(),
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


@dataclass(slots=True)
class Server:
    """A started-or-startable gRPC server with its health servicer and bound port."""

    grpc_server: grpc.Server
    health: health.HealthServicer
    port: int
    executor: futures.ThreadPoolExecutor
    # The bounds of the call streams its services serve (`add_servicer(streams=...)`).
    streams: _streamed.StreamLimits

    def start(self) -> None:
        self.grpc_server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    def set_serving(self, service: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set(service, status)

    def stop(self, grace: float) -> None:
        self.health.enter_graceful_shutdown()
        self.streams.close_all()
        self.grpc_server.stop(grace).wait(grace + 5)
        self.executor.shutdown(wait=False, cancel_futures=True)


def make_server(
    listen: str,
    security: Security | None = None,
    *,
    max_workers: int = 32,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    client_services: Iterable[str] = (),
    gate: Gate | None = None,
) -> Server:
    """Create a server bound to `listen` (`host:port`, port 0 picks a free port). With a cluster
    token, every call must carry it except those to `client_services` (full service names),
    whose servicers authenticate clients themselves. With a `gate`, calls it refuses are
    answered as a standby's (after the token check: only the cluster learns the leader)."""
    security = security or Security()
    interceptors: list[_ServerInterceptor] = (
        [_TokenServerInterceptor(security.token, client_services)] if security.token else []
    )
    if gate is not None:
        interceptors.append(_GateInterceptor(gate, listen))
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
    server = grpc.server(
        executor,
        interceptors=interceptors,
        options=[*_options(max_message_bytes), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=None,
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    tls = security.tls
    if tls is not None:
        if tls.cert_file is None or tls.key_file is None:
            raise ValueError("TLS on a server needs both a certificate and a key file")
        creds = grpc.ssl_server_credentials(
            [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
            root_certificates=_read(tls.ca_file),
            require_client_auth=tls.ca_file is not None,
        )
        port = server.add_secure_port(listen, creds)
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise errors.Unavailable(f"cannot listen on {listen}")
    # Each open call stream holds a handler thread: most of them stay for unary calls.
    streams = _streamed.StreamLimits(max_streams=max(1, max_workers // 4))
    return Server(server, health_servicer, port, executor, streams)


# ---------------------------------------------------------------------------------------------
# Errors <-> status codes
# ---------------------------------------------------------------------------------------------

_CODE_TO_ERROR: dict[grpc.StatusCode, type[errors.OrbweaverError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.MessageTooLarge,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.INTERNAL: errors.InternalError,
}

_ERROR_TO_CODE: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.MessageTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def code_for(exc: BaseException) -> grpc.StatusCode:
    """The status code a servicer answers for `exc`; INTERNAL for anything unexpected."""
    for cls, code in _ERROR_TO_CODE:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_from_rpc(exc: grpc.RpcError) -> errors.OrbweaverError:
    """Translate a failed call into the matching `orbweaver.errors` exception."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message" not in (details or "").lower():
        cls: type[errors.OrbweaverError] = errors.Unavailable
    else:
        cls = _CODE_TO_ERROR.get(code, errors.InternalError)
        trailing: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
        named = next((v for k, v in trailing or () if k == ERROR_METADATA_KEY), None)
        precise = getattr(errors, named, None) if isinstance(named, str) else None
        # Only a refinement of what the code says (never a class with another constructor).
        if isinstance(precise, type) and issubclass(precise, cls):
            cls = precise
    message = details or code.name
    return cls(message)


def servicer_method(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a servicer method: typed errors become their status code with the error's message;
    anything else is logged and answered INTERNAL, so no request can take the server down."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> T:
        if isinstance(request, UndecodableRequest):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{fn.__name__}: the request is not a valid {request.message_name}: "
                f"{request.error}",
            )
        try:
            return fn(self, request, context)
        except errors.OrbweaverError as exc:
            code = code_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.error("internal error in %s: %s", fn.__name__, exc, exc_info=True)
            context.set_trailing_metadata(((ERROR_METADATA_KEY, type(exc).__name__),))
            context.abort(code, str(exc))
        except Exception as exc:
            if _is_abort(exc):
                raise
            log.exception("unexpected error in %s", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")  # context.abort always raises

    return wrapper


def _is_abort(exc: BaseException) -> bool:
    # grpc raises a bare Exception from context.abort() (a call on a stream: `Aborted`); let it
    # through untouched.
    return isinstance(exc, _streamed.Aborted) or (type(exc) is Exception and not exc.args)


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: `base * 2**attempt`, capped at `cap` seconds."""

    base: float = 0.05
    cap: float = 2.0

    def delays(self) -> Iterator[float]:
        attempt = 0
        while True:
            yield random.uniform(0, min(self.cap, self.base * (2**attempt)))
            attempt += 1


class RetryState:
    """The retry policy of one call, sans-IO: after each failed attempt, the pause before the
    next one, or the typed error to raise instead. `call_with_retry` and the asyncio client's
    `call_with_retry_async` (`orbweaver._rpc_aio`) both run it."""

    __slots__ = ("_answered_end", "_codes", "_delays", "_end", "what")

    def __init__(
        self,
        *,
        deadline: float | None = 30.0,
        backoff: Backoff = Backoff(),
        retryable: Iterable[grpc.StatusCode] = RETRYABLE,
        what: str = "call",
        answered_deadline: float | None = None,
    ) -> None:
        self._codes = frozenset(retryable)
        now = time.monotonic()
        self._end = None if deadline is None else now + deadline
        # A standby that refused the call (an election under way) proves the address right:
        # the retries may then go on to `answered_deadline` (a client's whole timeout rather
        # than its connect timeout).
        self._answered_end = None if answered_deadline is None else now + answered_deadline
        self._delays = backoff.delays()
        self.what = what

    def pause_after(self, exc: grpc.RpcError) -> float:
        """Seconds to wait before retrying after `exc`. A failure that is not transient is
        raised as its typed error; a transient one past the deadline as `Unavailable`."""
        code = exc.code() if hasattr(exc, "code") else None
        if code not in self._codes:
            raise error_from_rpc(exc) from exc
        if self._answered_end is not None and named_leader(exc) is not None:
            self._end = None if self._end is None else max(self._end, self._answered_end)
        delay = next(self._delays)
        if self._end is not None and time.monotonic() + delay > self._end:
            raise errors.Unavailable(f"{self.what}: {exc.details() or code}") from exc
        log.debug("%s failed with %s, retrying in %.3f s", self.what, code, delay)
        return delay


def call_with_retry(
    call: Callable[[], T],
    *,
    deadline: float | None = 30.0,
    backoff: Backoff = Backoff(),
    retryable: Iterable[grpc.StatusCode] = RETRYABLE,
    stop: threading.Event | None = None,
    what: str = "call",
    answered_deadline: float | None = None,
) -> T:
    """Run `call`, retrying transient gRPC failures with backoff until `deadline` seconds pass
    (None: forever, until `stop` is set; see `RetryState` for `answered_deadline`).
    Non-transient failures are raised as typed errors."""
    retries = RetryState(
        deadline=deadline,
        backoff=backoff,
        retryable=retryable,
        what=what,
        answered_deadline=answered_deadline,
    )
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            delay = retries.pause_after(exc)
            if stop is not None:
                if stop.wait(delay):
                    raise errors.Unavailable(f"{what}: stopped while retrying") from exc
            else:
                time.sleep(delay)
