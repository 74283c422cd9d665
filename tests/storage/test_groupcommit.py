"""`GroupCommitter`: concurrent callers share commits, each gets its own outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from orbweaver.storage.groupcommit import GroupCommitter


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, requests: Sequence[int]) -> list[int | Exception]:
        with self.lock:
            self.batches.append(list(requests))
        time.sleep(self.delay)
        return [ValueError(f"odd {r}") if r % 2 else r * 10 for r in requests]


def run_concurrently(committer: GroupCommitter[int, int], n: int) -> dict[int, object]:
    outcomes: dict[int, object] = {}
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = committer.commit(i)
        except ValueError as exc:
            outcomes[i] = str(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_a_lone_caller_commits_alone() -> None:
    rec = Recorder()
    committer = GroupCommitter(rec)
    assert committer.commit(4) == 40
    with pytest.raises(ValueError, match="odd 3"):
        committer.commit(3)
    assert rec.batches == [[4], [3]]


def test_concurrent_callers_share_commits_and_each_gets_its_own_outcome() -> None:
    rec = Recorder(delay=0.05)
    committer = GroupCommitter(rec, max_batch=64)
    outcomes = run_concurrently(committer, 32)
    assert outcomes == {i: (f"odd {i}" if i % 2 else i * 10) for i in range(32)}
    assert sorted(r for b in rec.batches for r in b) == list(range(32))  # each exactly once
    assert len(rec.batches) < 32  # shared
    assert committer.batches == len(rec.batches)


def test_batches_are_bounded() -> None:
    rec = Recorder(delay=0.05)
    committer = GroupCommitter(rec, max_batch=4)
    outcomes = run_concurrently(committer, 20)
    assert len(outcomes) == 20
    assert max(len(b) for b in rec.batches) <= 4
    assert sorted(r for b in rec.batches for r in b) == list(range(20))


def test_a_failed_commit_fails_its_whole_batch_only() -> None:
    calls = []

    def flaky(requests: Sequence[int]) -> list[int | Exception]:
        calls.append(list(requests))
        if len(calls) == 1:
            raise ConnectionError("database away")
        return [r for r in requests]

    committer = GroupCommitter(flaky)
    with pytest.raises(ConnectionError):
        committer.commit(1)
    assert committer.commit(2) == 2
