"""The background writer of task outputs (`storage.task_outputs`) on a real database (SQLite
and MariaDB): reports only queue, one transaction writes what queued up, the queue's bound makes
a job fall back instead of blocking, and a job that ended loses its rows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orbweaver.storage.db import Database, open_database
from orbweaver.storage.task_outputs import TaskOutputWriter


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = open_database(db_url)
    yield database
    database.close()


@pytest.fixture
def jobs(db: Database) -> list[int]:
    rg = db.add_resource_group("writer", b"pw")
    registered = db.register_jobs(
        rg, b"g", [(bytes([i]), None) for i in range(3)], start=True, task_durable=True
    )
    return [job_id for job_id, _ in registered]


class Tally:
    def __init__(self) -> None:
        self.written: list[int] = []
        self.fallbacks = 0

    def writer(self, db: Database, max_bytes: int = 1 << 20) -> TaskOutputWriter:
        return TaskOutputWriter(
            db, max_bytes=max_bytes, on_written=self.written.append, on_degraded=self.fell_back
        )

    def fell_back(self, n: int) -> None:
        self.fallbacks += n


def test_what_queued_up_is_written_in_one_transaction(db: Database, jobs: list[int]) -> None:
    tally = Tally()
    w = tally.writer(db)
    w.track(jobs)
    for task in range(50):  # 50 reports of 3 successes each, before the thread runs
        w.record([(job_id, task, f"{job_id}:{task}".encode()) for job_id in jobs])
    assert len(w) == 150 and w.held_bytes > 0
    w.start()
    try:
        assert w.flush(timeout=30)
        assert tally.written == [150]
        assert w.held_bytes == 0
        assert db.task_outputs(jobs[1])[7] == (7, f"{jobs[1]}:7".encode())
        # Untracked jobs (durability "job") are never recorded.
        w.record([(jobs[0] + 1000, 0, b"x")])
        assert len(w) == 0
    finally:
        w.stop()


def test_over_the_bound_a_job_falls_back_instead_of_waiting(db: Database, jobs: list[int]) -> None:
    tally = Tally()
    w = tally.writer(db, max_bytes=100)
    a, b, c = jobs
    w.track(jobs)
    w.record([(a, 0, bytes(50)), (b, 0, bytes(30))])
    w.record([(a, 1, bytes(20))])  # fits, but ...
    w.record([(c, 0, bytes(20))])  # ... this does not: c falls back
    w.record([(c, 1, bytes(1))])  # c stays fallen back
    assert tally.fallbacks == 1 and w.held_bytes == 100
    w.start()
    try:
        assert w.flush(timeout=30)
        assert [t for t, _ in db.task_outputs(a)] == [0, 1]
        assert [t for t, _ in db.task_outputs(b)] == [0]
        assert db.task_outputs(c) == []
        # Room again: the others keep recording.
        w.record([(b, 1, bytes(90))])
        assert w.flush(timeout=30)
        assert [t for t, _ in db.task_outputs(b)] == [0, 1]
    finally:
        w.stop()


def test_a_forgotten_job_is_not_written_and_loses_its_rows(db: Database, jobs: list[int]) -> None:
    tally = Tally()
    w = tally.writer(db)
    a, b, _ = jobs
    w.track(jobs)
    w.start()
    try:
        w.record([(a, 0, b"a0"), (b, 0, b"b0")])
        assert w.flush(timeout=30)
        db.commit_outputs(a, b"outputs", False)  # the job's end is persisted first
        w.record([(a, 1, b"a1")])
        w.forget([a])
        w.record([(a, 2, b"a2")])  # a late report: a is no longer recorded
        assert w.flush(timeout=30)
        assert db.task_outputs(a) == []
        assert db.task_outputs(b) == [(0, b"b0")]
        assert a not in w.jobs and b in w.jobs
    finally:
        w.stop()


def test_stop_writes_what_is_queued(db: Database, jobs: list[int]) -> None:
    w = Tally().writer(db)
    w.track(jobs[:1])
    w.start()
    w.record([(jobs[0], t, b"x") for t in range(10)])
    w.stop(timeout=30)
    assert len(db.task_outputs(jobs[0])) == 10
