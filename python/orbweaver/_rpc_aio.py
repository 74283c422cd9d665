"""The asyncio side of `orbweaver._rpc`, for `orbweaver.AsyncClient`: `grpc.aio` channels that
follow the storage leader among several addresses, and retries with the policy of
`call_with_retry`.

Both reuse the sans-IO parts of `orbweaver._rpc` (`LeaderTargets`, `RetryState`), so the sync
and the asyncio client decide the same way; only the waiting differs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from orbweaver._rpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    RETRYABLE,
    Backoff,
    LeaderTargets,
    PerTargetMethod,
    RetryState,
    TlsConfig,
    _options,
    channel_credentials,
    named_leader,
    split_targets,
)

T = TypeVar("T")
_BACKOFF = Backoff()


async def call_with_retry_async(
    call: Callable[[], Awaitable[T]],
    *,
    deadline: float | None = 30.0,
    backoff: Backoff = _BACKOFF,
    retryable: Iterable[grpc.StatusCode] = RETRYABLE,
    what: str = "call",
    answered_deadline: float | None = None,
) -> T:
    """`orbweaver._rpc.call_with_retry` for coroutines: await `call()`, retrying transient gRPC
    failures with the same backoff until `deadline` seconds pass. Cancelling the awaiting task
    cancels the call in flight (or the pause between attempts)."""
    retries = RetryState(
        deadline=deadline,
        backoff=backoff,
        retryable=retryable,
        what=what,
        answered_deadline=answered_deadline,
    )
    while True:
        try:
            return await call()
        except grpc.RpcError as exc:
            delay = retries.pause_after(exc)
        await asyncio.sleep(delay)


def make_aio_channel(
    target: str,
    tls: TlsConfig | None = None,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> AioLeaderChannel:
    """A `grpc.aio` channel to `host:port`, or to the leader among storages `a:50051,b:50051`,
    with the options of `orbweaver._rpc.make_channel` (keepalive, reconnection, message limits)
    and TLS. Clients only: it never carries the cluster token."""

    def open_one(address: str) -> grpc.aio.Channel:
        options = _options(max_message_bytes)
        if tls is not None:
            return grpc.aio.secure_channel(address, channel_credentials(tls), options=options)
        return grpc.aio.insecure_channel(address, options=options)

    return AioLeaderChannel(split_targets(target), open_one)


class AioLeaderChannel(grpc.aio.Channel):
    """`orbweaver._rpc.LeaderChannel` for asyncio: calls go to the current address; a call a
    standby refused (it ran nothing) is sent again at once to the leader it named; any other
    UNAVAILABLE or DEADLINE_EXCEEDED moves on to the next address and is raised, for the
    caller's retry policy. One `grpc.aio` channel per address, opened on its first call.

    `grpc.aio` channels belong to the event loop they were opened in: this one serves the loop
    of its first call and refuses calls from another."""

    def __init__(self, targets: list[str], open_one: Callable[[str], grpc.aio.Channel]) -> None:
        self.targets = LeaderTargets(targets)
        self._open_one = open_one
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def target(self) -> str:
        return self.targets.current

    def _channel(self) -> tuple[str, grpc.aio.Channel]:
        # Only from the loop's thread (a coroutine): no lock.
        if self._closed:
            raise ValueError("Cannot invoke RPC: the channel is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "this asyncio client was first used in another event loop; grpc.aio channels "
                "cannot move between loops: create one client per event loop"
            )
        target = self.targets.current
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = self._open_one(target)
        return target, channel

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AioFollowingCall(self, method, args, kwargs)

    # Orbweaver's own services are unary; streams stay on the address current when made.
    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel()[1].unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel()[1].stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel()[1].stream_stream(method, *args, **kwargs)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        channel = self._channels.get(self.targets.current)
        if channel is None:
            return grpc.ChannelConnectivity.IDLE
        return channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel()[1].wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel()[1].channel_ready()

    async def close(self, grace: float | None = None) -> None:
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(grace)

    async def __aenter__(self) -> AioLeaderChannel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()


class _AioFollowingCall(PerTargetMethod):
    """A unary method on an `AioLeaderChannel`: awaiting a call follows a standby's redirect as
    `orbweaver._rpc.LeaderChannel` does."""

    __slots__ = ()

    async def __call__(self, request: Any, **kwargs: Any) -> Any:
        targets = self._channel.targets
        # A redirect names a leader: at most one per address and its referral, plus one.
        for _ in range(targets.max_redirects):
            target, method = self._on()
            try:
                return await method(request, **kwargs)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if not targets.failed(target, code, named_leader(exc)):
                    raise
        return await self._on()[1](request, **kwargs)
