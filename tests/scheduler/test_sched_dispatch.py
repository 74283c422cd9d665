"""The session-fenced dispatch queue between the core loop and the EM-facing service."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter

import pytest
from sched_helpers import wait_until

from orbweaver import errors
from orbweaver.scheduler.core import InvalidSessionId
from orbweaver.scheduler.dispatch import Delivery, DispatchQueue, DispatchQueueClosed

pytestmark = pytest.mark.timeout(60)

_ids = itertools.count()


def item() -> int:
    return next(_ids)


def run_readers(
    queue: DispatchQueue[int], readers: int, wait: float = 0.2, batch: int = 1
) -> tuple[list[threading.Thread], list[Delivery[int]]]:
    """Reader threads that collect deliveries until the queue is closed."""
    delivered: list[Delivery[int]] = []
    lock = threading.Lock()

    def read() -> None:
        while True:
            try:
                got = queue.dequeue_many(batch, wait)
            except DispatchQueueClosed:
                return
            with lock:
                delivered.extend(got)

    threads = [threading.Thread(target=read, daemon=True) for _ in range(readers)]
    for t in threads:
        t.start()
    return threads, delivered


def finish(queue: DispatchQueue[int], threads: list[threading.Thread]) -> None:
    wait_until(lambda: len(queue) == 0, what="readers to drain the queue")
    queue.close()
    for t in threads:
        t.join(10)
        assert not t.is_alive()


def test_round_trip_carries_item_and_session() -> None:
    queue: DispatchQueue[str] = DispatchQueue(8, session_id=1)
    assert queue.enqueue("a", 1)
    got = queue.dequeue(0.1)
    assert got == Delivery(1, "a")
    assert queue.dequeue(0) is None
    assert len(queue) == 0 and queue.free_slots() == 8


def test_hundred_items_over_four_readers_each_delivered_once() -> None:
    queue: DispatchQueue[int] = DispatchQueue(32, session_id=1)
    threads, delivered = run_readers(queue, 4)
    items = [item() for _ in range(100)]
    for x in items:
        assert queue.enqueue(x, 1, timeout=10)
    finish(queue, threads)
    assert sorted(d.item for d in delivered) == items


def test_slow_producer_with_sixteen_readers() -> None:
    queue: DispatchQueue[int] = DispatchQueue(8, session_id=1)
    threads, delivered = run_readers(queue, 16)
    items = [item() for _ in range(10)]
    for x in items:
        assert queue.enqueue(x, 1, timeout=10)
        time.sleep(0.01)
    finish(queue, threads)
    assert sorted(d.item for d in delivered) == items


def test_bump_with_same_or_smaller_session_rejected_higher_accepted() -> None:
    queue: DispatchQueue[int] = DispatchQueue(8, session_id=5)
    for bad in (5, 4, 0):
        with pytest.raises(InvalidSessionId):
            queue.bump_session(bad)
    assert queue.session_id == 5
    queue.bump_session(6)
    assert queue.session_id == 6


def test_pre_bump_items_not_delivered_and_size_zero_after_bump() -> None:
    queue: DispatchQueue[int] = DispatchQueue(8, session_id=1)
    for _ in range(5):
        queue.enqueue(item(), 1)
    assert len(queue) == 5
    assert queue.bump_session(2) == 5
    assert len(queue) == 0
    assert queue.dequeue(0.05) is None


def test_post_bump_items_carry_new_session_and_old_session_enqueue_rejected() -> None:
    queue: DispatchQueue[int] = DispatchQueue(8, session_id=1)
    queue.enqueue(item(), 1)
    queue.bump_session(3)
    with pytest.raises(InvalidSessionId):
        queue.enqueue(item(), 1)
    x = item()
    queue.enqueue(x, 3)
    assert queue.dequeue(0.1) == Delivery(3, x)


def test_successive_bumps() -> None:
    queue: DispatchQueue[int] = DispatchQueue(4, session_id=1)
    for session in range(2, 12):
        queue.enqueue(item(), session - 1)
        queue.bump_session(session)
        assert len(queue) == 0 and queue.session_id == session
    x = item()
    queue.enqueue(x, 11)
    assert queue.dequeue_many(4, 0.1) == [Delivery(11, x)]


def test_enqueue_waits_for_space_with_a_bounded_timeout() -> None:
    queue: DispatchQueue[int] = DispatchQueue(1, session_id=1)
    assert queue.enqueue(item(), 1)
    assert not queue.enqueue(item(), 1, timeout=0.05)
    assert not queue.wait_for_space(0.05)
    t = threading.Timer(0.05, lambda: queue.dequeue(0))
    t.start()
    assert queue.enqueue(item(), 1, timeout=10)
    t.join()


def test_dequeue_many_waits_for_the_first_then_takes_what_is_there() -> None:
    queue: DispatchQueue[int] = DispatchQueue(16, session_id=1)
    assert queue.dequeue_many(4, 0.01) == []
    for _ in range(6):
        queue.enqueue(item(), 1)
    assert len(queue.dequeue_many(4, 0)) == 4
    assert len(queue.dequeue_many(4, 0)) == 2
    assert queue.dequeue_many(0, 1) == []
    threading.Timer(0.05, lambda: queue.enqueue(item(), 1)).start()
    assert len(queue.dequeue_many(4, 10)) == 1


def test_close_wakes_waiters_and_rejects_later_calls() -> None:
    queue: DispatchQueue[int] = DispatchQueue(1, session_id=1)
    outcome: list[BaseException] = []

    def reader() -> None:
        try:
            queue.dequeue(30)
        except DispatchQueueClosed as exc:
            outcome.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)
    queue.close()
    t.join(5)
    assert not t.is_alive() and len(outcome) == 1
    assert isinstance(outcome[0], errors.Unavailable)
    with pytest.raises(DispatchQueueClosed):
        queue.enqueue(item(), 1)
    with pytest.raises(DispatchQueueClosed):
        queue.bump_session(2)
    queue.close()  # idempotent


@pytest.mark.parametrize("readers", [1, 8])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stress_no_duplicates_and_delivery_session_equals_enqueue_session(
    readers: int, seed: int
) -> None:
    rng = random.Random(seed)
    capacity = 16
    queue: DispatchQueue[int] = DispatchQueue(capacity, session_id=1)
    tagged: dict[int, int] = {}
    threads, delivered = run_readers(queue, readers, wait=0.05, batch=rng.randint(1, 4))
    session = 1
    for _ in range(20):
        for _ in range(rng.randint(0, capacity)):
            x = item()
            tagged[x] = session
            assert queue.enqueue(x, session, timeout=10)
        session += 1
        queue.bump_session(session)
    final = [item() for _ in range(5)]
    for x in final:
        tagged[x] = session
        assert queue.enqueue(x, session, timeout=10)
    finish(queue, threads)
    counts = Counter(d.item for d in delivered)
    assert not [x for x, n in counts.items() if n > 1], "duplicate deliveries"
    for d in delivered:
        assert d.session_id == tagged[d.item]
    assert set(final) <= set(counts)


def test_enqueue_many_takes_what_fits_in_order() -> None:
    queue: DispatchQueue[int] = DispatchQueue(4, session_id=2)
    items = [item() for _ in range(6)]
    assert queue.enqueue_many(items, 2) == 4
    assert queue.enqueue_many(items[4:], 2) == 0
    with pytest.raises(InvalidSessionId):
        queue.enqueue_many(items, 1)
    assert [d.item for d in queue.dequeue_many(10, 0)] == items[:4]
    assert queue.enqueue_many([], 2) == 0
