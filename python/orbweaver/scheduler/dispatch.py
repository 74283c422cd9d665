"""The bounded dispatch queue between the core loop and the EM-facing service.

One producer (the core loop) enqueues assignments stamped with the storage session they were
polled under; many consumers (NextTask / NextTasks handlers) dequeue them. Guarantees:

* every item is delivered at most once, together with the session it was enqueued under;
* `bump_session` only accepts a strictly newer session and drops everything queued, so no item
  enqueued before a bump is delivered after it;
* an item can only be enqueued under the queue's current session;
* every wait is bounded (or ends at `close()`), so shutdown never hangs on the queue.

A single lock guards the items and the session, which makes a bump atomic with respect to every
dequeue without making a bump wait for in-flight long polls (the reference's read/write lock
does).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from orbweaver import errors
from orbweaver.scheduler.core import InvalidSessionId

T = TypeVar("T")


class DispatchQueueClosed(errors.Unavailable):
    """The scheduler is shutting down."""

    def __init__(self) -> None:
        super().__init__("scheduler is shutting down")


@dataclass(frozen=True, slots=True)
class Delivery(Generic[T]):
    """A dequeued item with the session it was enqueued under."""

    session_id: int
    item: T


class DispatchQueue(Generic[T]):
    """A bounded multi-consumer queue fenced by a storage session id."""

    def __init__(self, capacity: int, session_id: int = 0) -> None:
        if capacity < 1:
            raise errors.InvalidArgument(f"dispatch queue capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._session = session_id
        self._items: deque[Delivery[T]] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def session_id(self) -> int:
        with self._lock:
            return self._session

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def free_slots(self) -> int:
        with self._lock:
            return self._capacity - len(self._items)

    # -- producer side --------------------------------------------------------------------------

    def enqueue(self, item: T, session_id: int, timeout: float | None = 1.0) -> bool:
        """Append `item` (enqueued under `session_id`, which must be the current session),
        waiting at most `timeout` seconds for space (None: until space or close). Returns False
        on timeout; raises `InvalidSessionId` for another session, `DispatchQueueClosed` once
        closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closed:
                    raise DispatchQueueClosed()
                if session_id != self._session:
                    raise InvalidSessionId(session_id, self._session)
                if len(self._items) < self._capacity:
                    self._items.append(Delivery(session_id, item))
                    self._not_empty.notify()
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._not_full.wait(remaining)

    def enqueue_many(self, items: Sequence[T], session_id: int) -> int:
        """Append as many of `items` as fit right now, in order, without waiting; returns how
        many were taken. Same session and closed rules as `enqueue`."""
        with self._lock:
            if self._closed:
                raise DispatchQueueClosed()
            if session_id != self._session:
                raise InvalidSessionId(session_id, self._session)
            count = min(len(items), self._capacity - len(self._items))
            for index in range(count):
                self._items.append(Delivery(session_id, items[index]))
            if count:
                self._not_empty.notify(count)
            return count

    def wait_for_space(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until at least one slot is free (or the queue closes)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._items) >= self._capacity and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._not_full.wait(remaining)
            return not self._closed

    def bump_session(self, session_id: int) -> int:
        """Switch to a strictly newer session and drop every queued item; returns how many."""
        with self._lock:
            if self._closed:
                raise DispatchQueueClosed()
            if session_id <= self._session:
                raise InvalidSessionId(session_id, self._session)
            self._session = session_id
            dropped = len(self._items)
            self._items.clear()
            self._not_full.notify_all()
            return dropped

    def close(self) -> None:
        """Wake every waiter; later calls raise `DispatchQueueClosed`. Idempotent."""
        with self._lock:
            self._closed = True
            self._items.clear()
            self._not_empty.notify_all()
            self._not_full.notify_all()

    # -- consumer side --------------------------------------------------------------------------

    def dequeue(self, wait: float = 0.0) -> Delivery[T] | None:
        """One item, waiting up to `wait` seconds for it (0: do not wait)."""
        got = self.dequeue_many(1, wait)
        return got[0] if got else None

    def dequeue_many(self, max_items: int, wait: float = 0.0) -> list[Delivery[T]]:
        """Up to `max_items` items: waits up to `wait` seconds for the first one, then takes
        whatever else is queued right now. Raises `DispatchQueueClosed` once closed."""
        if max_items <= 0:
            return []
        deadline = time.monotonic() + max(0.0, wait)
        with self._lock:
            while not self._items:
                if self._closed:
                    raise DispatchQueueClosed()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._not_empty.wait(remaining)
            if self._closed:
                raise DispatchQueueClosed()
            count = min(max_items, len(self._items))
            out = [self._items.popleft() for _ in range(count)]
            self._not_full.notify(count)
            if self._items:
                self._not_empty.notify()
            return out
