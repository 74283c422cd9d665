"""Visibility timeout of taken queue entries: work a poller takes and never registers (a rogue
poller, a scheduler that died) is offered again once the timeout passes; registered work is not."""

from __future__ import annotations

import threading
import time
from collections import Counter

from orbweaver import _core as core

from ._helpers import flat

VISIBILITY_MS = 30_000
TIMEOUT_S = 60

Entry = tuple[int, int, int]


def _drain(cache: core.JobCache, now_ms: int) -> list[Entry]:
    got: list[Entry] = []
    while batch := cache.poll(core.LANE_TASK, 7, 0, now_ms):
        got.extend(batch)
    return got


def _running(cache: core.JobCache, job: int, n: int) -> None:
    cache.insert(job, 10 + job, flat(n))
    cache.start(job)


def test_unregistered_entries_come_back_exactly_once_after_the_timeout() -> None:
    cache = core.JobCache(task_capacity=16)  # part of the work waits in the spill
    for job in (1, 2, 3):
        _running(cache, job, 40)
    first = sorted(_drain(cache, 1_000))
    assert len(first) == 120 and len(set(first)) == 120
    assert cache.taken_entries() == 120
    assert cache.requeue_expired(1_000 + VISIBILITY_MS, VISIBILITY_MS) == 0
    assert _drain(cache, 1_000) == []
    assert cache.requeue_expired(1_001 + VISIBILITY_MS, VISIBILITY_MS) == 120
    assert cache.taken_entries() == 0
    assert cache.requeue_expired(1_001 + VISIBILITY_MS, VISIBILITY_MS) == 0
    second = _drain(cache, 40_000)
    assert sorted(second) == first, "every entry once more: none lost, none duplicated"
    assert _drain(cache, 40_000) == []
    assert cache.taken_entries() == 120


def test_registered_tasks_are_not_offered_again() -> None:
    cache = core.JobCache()
    _running(cache, 1, 10)
    got = _drain(cache, 0)
    regs = cache.register_batch([(j, t) for _, j, t in got[:6]], 1, 0)
    assert all(isinstance(r, core.ExecutionContext) for r in regs)
    assert cache.taken_entries() == 4
    assert cache.requeue_expired(VISIBILITY_MS + 1, VISIBILITY_MS) == 4
    again = _drain(cache, VISIBILITY_MS + 1)
    assert sorted(again) == sorted(got[6:])
    for _, job, task in again:
        cache.register(job, task, 1, 0)
    assert cache.taken_entries() == 0
    assert cache.requeue_expired(10**12, 0) == 0


def test_polls_without_a_time_hand_entries_out_for_good() -> None:
    cache = core.JobCache()
    _running(cache, 1, 3)
    assert len(cache.poll(core.LANE_TASK, 10, 0)) == 3
    assert cache.taken_entries() == 0
    assert cache.requeue_expired(10**12, 0) == 0


def test_a_terminated_job_forgets_its_taken_entries() -> None:
    cache = core.JobCache()
    _running(cache, 1, 3)
    _running(cache, 2, 3)
    tasks, _, _ = cache.poll_all(10, 10, 10, 0, 5)
    assert len(tasks) == 6 and cache.taken_entries() == 6
    cache.cancel(1, 0)
    assert cache.taken_entries() == 3
    assert cache.remove([2]) == 1
    assert cache.taken_entries() == 0


def test_rogue_pollers_cannot_strand_work() -> None:
    """Four threads poll with a shared fake clock; one never registers anything it takes and two
    drop every fourth entry. A sweeper advances the clock and requeues expired entries. The job
    still completes, every task succeeding exactly once."""
    n = 1500
    cache = core.JobCache(task_capacity=256)
    _running(cache, 1, n)
    clock = [0]
    done = threading.Event()
    lock = threading.Lock()
    succeeded: Counter[int] = Counter()
    dropped = [0]
    errors: list[BaseException] = []

    def worker(kind: str) -> None:
        try:
            seen = 0
            while not done.is_set():
                tasks, _, _ = cache.poll_all(64, 0, 0, 2, clock[0])
                keep = []
                for entry in tasks:
                    seen += 1
                    if kind == "rogue" or (kind == "lossy" and seen % 4 == 0):
                        with lock:
                            dropped[0] += 1
                        continue
                    keep.append((entry[1], entry[2]))
                regs = cache.register_batch(keep, 7, clock[0])
                reports = [
                    (r.job_id, r.task_id, r.instance_id, core.wire_encode([b"out"]))
                    for r in regs
                    if isinstance(r, core.ExecutionContext)
                ]
                for (_, task, _, _), res in zip(reports, cache.report_batch(reports), strict=True):
                    if isinstance(res, BaseException):
                        raise res
                    with lock:
                        succeeded[task] += 1
                    if res is not None and res.kind == core.OUTCOME_JOB_COMPLETED:
                        cache.complete(1, clock[0])
                        done.set()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            done.set()

    def sweeper() -> None:
        while not done.is_set():
            clock[0] += 10
            cache.requeue_expired(clock[0], 50)
            time.sleep(0.001)

    threads = [
        threading.Thread(target=worker, args=(kind,))
        for kind in ("rogue", "lossy", "lossy", "honest")
    ]
    threads.append(threading.Thread(target=sweeper))
    for t in threads:
        t.start()
    finished = done.wait(TIMEOUT_S)
    done.set()
    for t in threads:
        t.join(TIMEOUT_S)
    assert not errors, errors
    assert finished, "work was stranded"
    assert cache.state(1) == core.JOB_SUCCEEDED
    assert sorted(succeeded) == list(range(n))
    assert set(succeeded.values()) == {1}
    assert dropped[0] > 0, "the rogue pollers did take work"
    assert cache.taken_entries() == 0
