"""Helpers of the client tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import Server, add_servicer, make_server

T = TypeVar("T")
J = TypeVar("J")


class Gates:
    """Marker files the `gated` task waits for."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def open(self, *names: str) -> None:
        for name in names:
            (self.directory / name).touch()


class Runner:
    """Runs a test coroutine in a fresh event loop; a generous bound says it did not hang."""

    def __call__(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coroutine, timeout)

        return asyncio.run(bounded())


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def collect(items: AsyncIterator[J]) -> list[J]:
    return [item async for item in items]


class _Gate:
    def __init__(self, refusal: str | None) -> None:
        self.value = refusal

    def refusal(self) -> str | None:
        return self.value


class _Session(pb_grpc.SessionManagementServiceServicer):
    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        self.calls = 0

    def GetSession(self, request: pb.Void, context: Any) -> pb.SessionReply:
        self.calls += 1
        return pb.SessionReply(session_id=self.session_id)


class FakeStorage:
    """A gRPC server answering GetSession with its `session_id`, or refusing every call as a
    standby naming `refusal` (the leader's address, "" for none), through the real gate of
    `orbweaver._rpc.make_server`."""

    def __init__(self, session_id: int, refusal: str | None = None) -> None:
        self.gate = _Gate(refusal)
        self.servicer = _Session(session_id)
        self.server: Server = make_server("127.0.0.1:0", gate=self.gate)
        add_servicer(self.server.grpc_server, self.servicer, "SessionManagementService")
        self.server.start()
        self.address = f"127.0.0.1:{self.server.port}"
