"""Group commit: concurrent callers' writes committed together, each still durable before its
caller returns.

No thread of its own and no timer: a caller that finds no commit under way commits at once,
alone (a lone submission waits for nothing); callers that arrive while a commit is under way
queue, and when it ends one of them commits everything queued in one call. Batches form exactly
as fast as the database can take them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


class _Slot(Generic[Req, Res]):
    __slots__ = ("done", "error", "request", "result")

    def __init__(self, request: Req) -> None:
        self.request = request
        self.done = False
        self.result: Res | None = None
        self.error: BaseException | None = None


class GroupCommitter(Generic[Req, Res]):
    """`commit(request)` runs through `commit_many(requests)`, which returns one result or
    exception per request (an exception it raises goes to every request of its batch)."""

    def __init__(
        self,
        commit_many: Callable[[Sequence[Req]], Sequence[Res | Exception]],
        max_batch: int = 64,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._commit_many = commit_many
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Slot[Req, Res]] = []
        self._busy = False
        self.batches = 0  # commits made (tests and metrics)

    def commit(self, request: Req) -> Res:
        slot: _Slot[Req, Res] = _Slot(request)
        with self._cond:
            self._queue.append(slot)
        while True:
            with self._cond:
                while not slot.done and self._busy:
                    self._cond.wait()
                if slot.done:
                    break
                # Nobody commits: this caller commits what is queued first (itself included,
                # unless more than a batch queued before it: then it goes round again).
                self._busy = True
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
            try:
                self._run(batch)
            finally:
                with self._cond:
                    for s in batch:
                        s.done = True
                    self._busy = False
                    self.batches += 1
                    self._cond.notify_all()
        return self._outcome(slot)

    def _run(self, batch: list[_Slot[Req, Res]]) -> None:
        try:
            outcomes = self._commit_many([s.request for s in batch])
            if len(outcomes) != len(batch):
                raise AssertionError(f"{len(outcomes)} outcomes for {len(batch)} requests")
        except BaseException as exc:
            for s in batch:
                s.error = exc
            return
        for s, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                s.error = outcome
            else:
                s.result = outcome

    @staticmethod
    def _outcome(slot: _Slot[Req, Res]) -> Res:
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]
