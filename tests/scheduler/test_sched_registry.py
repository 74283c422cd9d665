"""The execution-manager registry: assignments held, acknowledged, rescheduled; liveness."""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter

import pytest
from sched_helpers import wait_until

from orbweaver.scheduler.core import Assignment, Lane
from orbweaver.scheduler.registry import EmRegistry

pytestmark = pytest.mark.timeout(60)

_ids = itertools.count(1)


def assignment(job: int = 1, task: int = 0, session: int = 1) -> Assignment:
    return Assignment(next(_ids), session, Lane.TASK, 1, job, task)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_assign_and_heartbeat_auto_register() -> None:
    registry = EmRegistry()
    registry.assign(1, [assignment()])
    registry.heartbeat(2)
    assert 1 in registry and 2 in registry and len(registry) == 2
    assert registry.em_ids() == [1, 2]


def test_multiple_assignments_recorded_and_acks_complete_them() -> None:
    registry = EmRegistry()
    batch = [assignment(task=i) for i in range(5)]
    registry.assign(1, batch[:2])
    registry.assign(1, batch[2:])
    assert registry.outstanding(1) == batch
    assert registry.complete(1, batch[1].assignment_id)
    assert registry.outstanding(1) == [batch[0], *batch[2:]]


def test_repeated_and_unknown_acks_are_harmless(caplog: pytest.LogCaptureFixture) -> None:
    registry = EmRegistry()
    a = assignment()
    registry.assign(1, [a])
    with caplog.at_level(logging.DEBUG, logger="orbweaver.scheduler.registry"):
        assert registry.complete(1, a.assignment_id)
        assert not registry.complete(1, a.assignment_id)
        assert not registry.complete(1, 999_999)
        assert not registry.complete(42, a.assignment_id)
    assert registry.outstanding(1) == []
    assert 42 not in registry  # an ack does not register an EM
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert registry.drain_reschedule() == []


def test_mark_as_dead_reschedules_outstanding() -> None:
    counted: list[int] = []
    registry = EmRegistry(on_reschedule=counted.append)
    done, lost = assignment(task=0), [assignment(task=1), assignment(task=2)]
    registry.assign(1, [done, *lost])
    registry.complete(1, done.assignment_id)
    assert registry.mark_as_dead(1) == 2
    assert 1 not in registry
    assert registry.drain_reschedule() == lost
    assert registry.drain_reschedule() == []
    assert registry.mark_as_dead(1) is None
    assert counted == [2] and registry.rescheduled_total == 2


def test_concurrent_assigns_racing_mark_as_dead_reschedule_every_assignment_once() -> None:
    registry = EmRegistry()
    per_thread, threads_n = 500, 4
    made: list[list[Assignment]] = [
        [assignment(job=t, task=i) for i in range(per_thread)] for t in range(threads_n)
    ]
    start = threading.Barrier(threads_n + 1)
    stop = threading.Event()

    def assigner(batch: list[Assignment]) -> None:
        start.wait()
        for a in batch:
            registry.assign(1, [a])

    def killer() -> None:
        start.wait()
        while not stop.is_set():
            registry.mark_as_dead(1)

    workers = [threading.Thread(target=assigner, args=(b,)) for b in made]
    kill = threading.Thread(target=killer)
    for t in [*workers, kill]:
        t.start()
    for t in workers:
        t.join(30)
    stop.set()
    kill.join(30)
    registry.mark_as_dead(1)
    counts = Counter(a.assignment_id for a in registry.drain_reschedule())
    expected = {a.assignment_id for batch in made for a in batch}
    assert set(counts) == expected
    assert set(counts.values()) == {1}


def test_idle_em_expires_after_cutoff_with_or_without_assignments() -> None:
    clock = FakeClock()
    registry = EmRegistry(dead_cutoff_s=30.0, clock=clock)
    held = assignment()
    registry.heartbeat(1)
    registry.assign(2, [held])
    clock.now += 29.9
    assert registry.expire() == []
    clock.now += 0.1
    assert sorted(registry.expire()) == [1, 2]
    assert len(registry) == 0
    assert registry.drain_reschedule() == [held]


def test_heartbeats_and_assign_complete_keep_an_em_alive() -> None:
    clock = FakeClock()
    registry = EmRegistry(dead_cutoff_s=30.0, clock=clock)
    registry.heartbeat(1)
    registry.heartbeat(2)
    for _ in range(10):
        clock.now += 20
        registry.heartbeat(1)
        a = assignment()
        registry.assign(2, [a])
        clock.now += 5
        registry.complete(2, a.assignment_id)
        assert registry.expire() == []
    clock.now += 30
    assert sorted(registry.expire()) == [1, 2]


def test_tracker_thread_expires_silent_ems_and_spares_live_ones() -> None:
    registry = EmRegistry(dead_cutoff_s=0.3)
    before = {t.name for t in threading.enumerate()}
    silent = assignment()
    registry.assign(1, [silent])
    for em in range(2, 20):
        registry.heartbeat(em)
    registry.start_tracking(0.02)
    try:
        trackers = [t for t in threading.enumerate() if t.name not in before]
        assert len(trackers) == 1  # one tracker for all EMs
        stop = threading.Event()

        def keep_alive() -> None:
            while not stop.wait(0.05):
                registry.heartbeat(2)

        beat = threading.Thread(target=keep_alive)
        beat.start()
        try:
            wait_until(lambda: registry.em_ids() == [2], what="silent EMs to expire")
        finally:
            stop.set()
            beat.join(5)
        assert registry.drain_reschedule() == [silent]
    finally:
        registry.stop_tracking()
    assert not [t for t in threading.enumerate() if t.name == "orbweaver-scheduler-liveness"]


def test_requeue_feeds_the_reschedule_queue() -> None:
    registry = EmRegistry()
    lost = [assignment(), assignment()]
    assert registry.requeue(lost) == 2
    assert registry.pending_reschedules() == 2
    assert registry.drain_reschedule() == lost


def test_invalid_cutoff_rejected() -> None:
    with pytest.raises(ValueError, match="dead_cutoff_s"):
        EmRegistry(dead_cutoff_s=0)
