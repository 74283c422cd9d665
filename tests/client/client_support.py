"""Helpers of the client tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

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
