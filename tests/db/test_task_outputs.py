"""The DB layer of task-level durability (jobs submitted with durability="task"): the job's
mark, its stored task outputs, and their cleanup; on SQLite and MariaDB."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from orbweaver.storage.db import Database, DbJobState, IdempotencyKeyReused, open_database

from .test_db import CUTOFF_SEC, PAST_CUTOFF_SEC, raw_query

S = DbJobState


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = open_database(db_url)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def rg(db: Database) -> int:
    return db.add_resource_group("test-group", b"test-password")


def count(db_url: str, table: str, job_id: int) -> int:
    [(n,)] = raw_query(db_url, f"SELECT COUNT(*) FROM {table} WHERE job_id = ?", (job_id,))
    return int(n)


def test_task_durable_jobs_are_marked_at_registration(db: Database, rg: int) -> None:
    plain, _ = db.register_job(rg, b"graph", b"inputs", None)
    durable, _ = db.register_job(rg, b"graph", b"inputs", None, start=True, task_durable=True)
    batch = db.register_jobs(
        rg, b"graph", [(b"a", None), (b"b", None)], start=True, task_durable=True
    )
    ids = [job_id for job_id, _ in batch]
    assert db.task_durable_jobs([plain, durable, *ids, 987_654]) == {durable, *ids}
    assert db.task_durable_jobs([]) == set()
    assert db.get_state(durable) == S.RUNNING


def test_a_retried_submission_must_keep_its_durability(db: Database, rg: int) -> None:
    first, _ = db.register_job(rg, b"graph", b"inputs", "key-1", task_durable=True)
    assert db.register_job(rg, b"graph", b"inputs", "key-1", task_durable=True) == (first, True)
    with pytest.raises(IdempotencyKeyReused):
        db.register_job(rg, b"graph", b"inputs", "key-1")
    plain, _ = db.register_job(rg, b"graph", b"inputs", "key-2")
    with pytest.raises(IdempotencyKeyReused):
        db.register_job(rg, b"graph", b"inputs", "key-2", task_durable=True)
    assert db.task_durable_jobs([first, plain]) == {first}


def test_task_outputs_are_stored_for_running_jobs_only(db: Database, rg: int) -> None:
    running, _ = db.register_job(rg, b"g", b"i", None, start=True, task_durable=True)
    ready, _ = db.register_job(rg, b"g", b"i", None, task_durable=True)
    done, _ = db.register_job(rg, b"g", b"i", None, start=True, task_durable=True)
    db.commit_outputs(done, b"outputs", False)
    written = db.save_task_outputs(
        [(running, 2, b"two"), (ready, 0, b"r"), (running, 0, b"zero"), (done, 0, b"d")]
    )
    assert written == 2
    assert db.task_outputs(running) == [(0, b"zero"), (2, b"two")]
    assert db.task_outputs(ready) == [] and db.task_outputs(done) == []
    # A task run again after a restart replaces its row.
    assert db.save_task_outputs([(running, 2, b"again")]) == 1
    assert db.task_outputs(running) == [(0, b"zero"), (2, b"again")]
    assert db.save_task_outputs([]) == 0
    with pytest.raises(ValueError):
        db.save_task_outputs([(running, -1, b"x")])
    with pytest.raises(TypeError):
        db.save_task_outputs([(running, 1, "text")])  # type: ignore[list-item]


def test_an_ended_job_loses_its_task_outputs(db: Database, rg: int, db_url: str) -> None:
    a, _ = db.register_job(rg, b"g", b"a", None, start=True, task_durable=True)
    b, _ = db.register_job(rg, b"g", b"b", None, start=True, task_durable=True)
    db.save_task_outputs([(a, 0, b"a0"), (b, 0, b"b0")])
    db.commit_outputs(a, b"outputs", False)
    # Rows of the ended job in the same call are not written; its stored ones are deleted.
    assert db.save_task_outputs([(a, 1, b"a1"), (b, 1, b"b1")], ended_jobs=[a]) == 1
    assert db.task_outputs(a) == []
    assert db.task_outputs(b) == [(0, b"b0"), (1, b"b1")]
    assert db.save_task_outputs([], ended_jobs=[b]) == 0
    assert db.task_outputs(b) == []
    assert count(db_url, "task_durable_jobs", a) == 1  # the mark stays with the job


def test_deleting_a_job_deletes_its_task_outputs(db: Database, rg: int, db_url: str) -> None:
    gone, _ = db.register_job(rg, b"g", b"a", None, start=True, task_durable=True)
    kept, _ = db.register_job(rg, b"g", b"b", None, start=True, task_durable=True)
    db.save_task_outputs([(gone, 0, b"x"), (gone, 1, b"y"), (kept, 0, b"z")])
    db.fail_job(gone, "boom")  # ended without its task outputs being deleted first
    time.sleep(PAST_CUTOFF_SEC)
    assert db.delete_expired_terminated_jobs(CUTOFF_SEC) == 1
    assert count(db_url, "task_outputs", gone) == 0
    assert count(db_url, "task_durable_jobs", gone) == 0
    assert db.task_outputs(kept) == [(0, b"z")]


def test_many_task_outputs_in_one_transaction(db: Database, rg: int) -> None:
    jobs = [
        job_id
        for job_id, _ in db.register_jobs(
            rg, b"g", [(bytes([i]), None) for i in range(40)], start=True, task_durable=True
        )
    ]
    rows = [(job_id, t, bytes(100) + bytes([t % 256])) for job_id in jobs for t in range(60)]
    assert db.save_task_outputs(rows) == len(rows)
    assert [t for t, _ in db.task_outputs(jobs[-1])] == list(range(60))
    assert db.save_task_outputs([], ended_jobs=jobs) == 0
    assert all(db.task_outputs(job_id) == [] for job_id in jobs)
