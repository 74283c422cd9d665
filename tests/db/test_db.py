"""DB-layer tests, run against SQLite and MariaDB (one suite for both backends)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import pytest

from orbweaver import errors as ow_errors
from orbweaver.storage.db import (
    RECOVERABLE_STATES,
    CorruptedDbState,
    Database,
    DbError,
    DbJobState,
    DbUnavailable,
    ExecutionManagerAlreadyDead,
    IdempotencyKeyReused,
    IllegalExecutionManagerId,
    InvalidJobStateTransition,
    InvalidPassword,
    JobNotFound,
    ResourceGroupAlreadyExists,
    ResourceGroupNotFound,
    UnexpectedJobState,
    open_database,
)
from orbweaver.storage.db._sql import SCHEMA_VERSION, SqlDatabase
from orbweaver.storage.db.url import MariaDbConfig, SqliteConfig, parse_url

S = DbJobState
T = TypeVar("T")

# Short but safe margins for the time-based tests (sleep well past the cutoff).
CUTOFF_SEC = 0.25
PAST_CUTOFF_SEC = 0.45


# -- helpers ----------------------------------------------------------------------------------


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


def with_pool(url: str, size: int) -> str:
    return f"{url}?pool_size={size}" if url.startswith("mariadb") else url


def raw_query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run SQL on the database behind ``url`` without the DB layer."""
    config = parse_url(url)
    if isinstance(config, SqliteConfig):
        conn = sqlite3.connect(config.path, isolation_level=None)  # autocommit
        try:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()
    assert isinstance(config, MariaDbConfig)
    import mariadb

    mconn = mariadb.connect(
        host=config.host,
        port=config.port,
        user=config.user,
        password=config.password or "",
        database=config.database,
        autocommit=True,
    )
    try:
        cur = mconn.cursor()
        cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []
    finally:
        mconn.close()


def new_job(db: Database, rg: int, state: DbJobState = S.READY, *, key: str | None = None) -> int:
    """A job driven to ``state`` through the public operations."""
    job_id, _ = db.register_job(rg, b"graph", b"inputs", key)
    if state == S.READY:
        return job_id
    if state == S.CANCELLED:
        db.cancel_job(job_id, False)
        return job_id
    db.start_job(job_id)
    if state == S.RUNNING:
        pass
    elif state == S.COMMIT_READY:
        db.commit_outputs(job_id, b"outputs", True)
    elif state == S.CLEANUP_READY:
        db.cancel_job(job_id, True)
    elif state == S.SUCCEEDED:
        db.commit_outputs(job_id, b"outputs", False)
    elif state == S.FAILED:
        db.fail_job(job_id, "boom")
    assert db.get_state(job_id) == state
    return job_id


MISSING = 987_654_321


# -- states -----------------------------------------------------------------------------------


def test_transition_table_matches_reference() -> None:
    from orbweaver.storage.db import is_valid_transition

    allowed = {
        (S.READY, S.RUNNING),
        (S.READY, S.CANCELLED),
        (S.RUNNING, S.COMMIT_READY),
        (S.RUNNING, S.CLEANUP_READY),
        (S.RUNNING, S.SUCCEEDED),
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.CANCELLED),
        (S.COMMIT_READY, S.CLEANUP_READY),
        (S.COMMIT_READY, S.SUCCEEDED),
        (S.COMMIT_READY, S.FAILED),
        (S.CLEANUP_READY, S.FAILED),
        (S.CLEANUP_READY, S.CANCELLED),
    }
    for a in S:
        for b in S:
            assert is_valid_transition(a, b) == ((a, b) in allowed), (a, b)
    assert [s.db_name for s in S] == [
        "Ready", "Running", "CommitReady", "CleanupReady", "Succeeded", "Failed", "Cancelled",
    ]  # fmt: skip
    assert [int(s) for s in S] == [1, 2, 3, 4, 5, 6, 7]
    assert S.from_db_name("CommitReady") is S.COMMIT_READY


def test_error_messages_are_readable() -> None:
    assert str(InvalidJobStateTransition(S.SUCCEEDED, S.CANCELLED, job_id=42)) == (
        "job 42: cannot go from Succeeded to Cancelled"
    )
    assert str(UnexpectedJobState(S.RUNNING, [S.READY], job_id=7)) == (
        "job 7 is Running, expected Ready"
    )
    assert str(JobNotFound(job_id=3)) == "job 3 not found"
    assert JobNotFound is ow_errors.JobNotFound  # one class, whichever layer raises it


# -- jobs -----------------------------------------------------------------------------------


def test_register_job(db: Database, rg: int) -> None:
    job_id, dedup = db.register_job(rg, b"graph", b"inputs", None)
    assert job_id > 0 and dedup is False
    assert db.get_state(job_id) == S.READY
    row = db.get_job(job_id)
    assert (row.id, row.resource_group_id, row.state) == (job_id, rg, S.READY)
    assert row.ended_at_ms is None and row.error_message is None
    assert abs(row.created_at_ms - time.time() * 1000) < 60_000


def test_register_job_invalid_resource_group(db: Database) -> None:
    with pytest.raises(ResourceGroupNotFound):
        db.register_job(MISSING, b"graph", b"inputs", None)
    with pytest.raises(ResourceGroupNotFound):
        db.register_job(MISSING, b"graph", b"inputs", "key")


def test_start_job(db: Database, rg: int) -> None:
    job_id = new_job(db, rg)
    db.start_job(job_id)
    assert db.get_state(job_id) == S.RUNNING


def test_start_job_wrong_state(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.RUNNING)
    with pytest.raises(UnexpectedJobState) as info:
        db.start_job(job_id)
    assert info.value.current == S.RUNNING and info.value.expected == (S.READY,)
    assert db.get_state(job_id) == S.RUNNING


def test_cancel_job_without_cleanup_transitions_to_cancelled(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.RUNNING)
    assert db.cancel_job(job_id, False) == S.CANCELLED
    assert db.get_state(job_id) == S.CANCELLED
    assert db.get_job(job_id).ended_at_ms is not None


def test_cancel_job_with_cleanup_transitions_to_cleanup_ready(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.RUNNING)
    assert db.cancel_job(job_id, True) == S.CLEANUP_READY
    assert db.get_state(job_id) == S.CLEANUP_READY
    assert db.get_job(job_id).ended_at_ms is None
    # The cleanup task's success then ends the job.
    db.set_state(job_id, S.CANCELLED)
    assert db.get_job(job_id).ended_at_ms is not None


def test_cancel_commit_ready(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.COMMIT_READY)
    with pytest.raises(InvalidJobStateTransition) as info:
        db.cancel_job(job_id, False)
    assert (info.value.from_state, info.value.to_state) == (S.COMMIT_READY, S.CANCELLED)
    assert db.cancel_job(job_id, True) == S.CLEANUP_READY


def test_cancel_cleanup_ready_again_keeps_the_cleanup(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.CLEANUP_READY)
    with pytest.raises(InvalidJobStateTransition):
        db.cancel_job(job_id, True)
    assert db.get_state(job_id) == S.CLEANUP_READY


def test_cancel_already_terminal(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.RUNNING)
    db.cancel_job(job_id, False)
    with pytest.raises(InvalidJobStateTransition) as info:
        db.cancel_job(job_id, False)
    assert (info.value.from_state, info.value.to_state) == (S.CANCELLED, S.CANCELLED)
    assert str(info.value) == f"job {job_id}: cannot go from Cancelled to Cancelled"


@pytest.mark.parametrize("has_cleanup", [False, True])
def test_cancel_from_ready_state(db: Database, rg: int, has_cleanup: bool) -> None:
    job_id = new_job(db, rg)
    # A Ready job has run nothing, so there is nothing to clean up: it is simply Cancelled.
    assert db.cancel_job(job_id, has_cleanup) == S.CANCELLED
    assert db.get_state(job_id) == S.CANCELLED


def test_get_outputs_succeeded_job(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.RUNNING)
    payload = bytes(range(256)) * 64 + b"\x00"
    assert db.commit_outputs(job_id, payload, False) == S.SUCCEEDED
    assert db.get_outputs(job_id) == payload


def test_get_outputs_wrong_state(db: Database, rg: int) -> None:
    job_id = new_job(db, rg)
    with pytest.raises(UnexpectedJobState) as info:
        db.get_outputs(job_id)
    assert info.value.current == S.READY and info.value.expected == (S.SUCCEEDED,)
    # CommitReady holds outputs, but they are only readable once Succeeded.
    commit_ready = new_job(db, rg, S.COMMIT_READY)
    with pytest.raises(UnexpectedJobState):
        db.get_outputs(commit_ready)


def test_get_outputs_null_is_corrupted(db: Database, rg: int, db_url: str) -> None:
    job_id = new_job(db, rg, S.SUCCEEDED)
    raw_query(db_url, "UPDATE jobs SET serialized_job_outputs = NULL WHERE id = ?", (job_id,))
    with pytest.raises(CorruptedDbState):
        db.get_outputs(job_id)


def test_get_error_failed_job(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.RUNNING)
    message = "ValueError: bad input ünïcode ✓\nTraceback: ..."
    db.fail_job(job_id, message)
    assert db.get_error(job_id) == message
    assert db.get_job(job_id).error_message == message


def test_get_error_wrong_state(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.RUNNING)
    with pytest.raises(UnexpectedJobState) as info:
        db.get_error(job_id)
    assert info.value.expected == (S.FAILED,)


def test_set_state_valid_transition(db: Database, rg: int) -> None:
    job_id = new_job(db, rg)
    db.set_state(job_id, S.RUNNING)
    assert db.get_state(job_id) == S.RUNNING
    commit_ready = new_job(db, rg, S.COMMIT_READY)
    db.set_state(commit_ready, int(S.SUCCEEDED))  # plain ints work too
    assert db.get_state(commit_ready) == S.SUCCEEDED
    assert db.get_outputs(commit_ready) == b"outputs"
    assert db.get_job(commit_ready).ended_at_ms is not None


def test_set_state_invalid_transition(db: Database, rg: int) -> None:
    job_id = new_job(db, rg)
    with pytest.raises(InvalidJobStateTransition) as info:
        db.set_state(job_id, S.SUCCEEDED)
    assert (info.value.from_state, info.value.to_state) == (S.READY, S.SUCCEEDED)
    assert db.get_state(job_id) == S.READY
    with pytest.raises(ValueError):
        db.set_state(job_id, 99)
    with pytest.raises(ValueError):
        db.set_state(job_id, S.FAILED)  # needs a message: fail_job


def test_commit_outputs_without_commit_task(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.RUNNING)
    assert db.commit_outputs(job_id, b"out", False) == S.SUCCEEDED
    assert db.get_state(job_id) == S.SUCCEEDED
    assert db.get_job(job_id).ended_at_ms is not None


def test_commit_outputs_with_commit_task(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.RUNNING)
    assert db.commit_outputs(job_id, b"out", True) == S.COMMIT_READY
    assert db.get_state(job_id) == S.COMMIT_READY
    assert db.get_job(job_id).ended_at_ms is None
    (page,) = [r for r in db.recoverable_jobs(0, 10) if r.id == job_id]
    assert page.serialized_outputs == b"out"


def test_commit_outputs_wrong_state(db: Database, rg: int) -> None:
    job_id = new_job(db, rg)
    with pytest.raises(InvalidJobStateTransition) as info:
        db.commit_outputs(job_id, b"out", False)
    assert (info.value.from_state, info.value.to_state) == (S.READY, S.SUCCEEDED)


def test_commit_outputs_many_in_one_transaction(db: Database, rg: int) -> None:
    a, b, c = (new_job(db, rg, S.RUNNING) for _ in range(3))
    assert db.commit_outputs_many([(b, b"ob", True), (a, b"oa", False)]) == [
        S.COMMIT_READY,
        S.SUCCEEDED,
    ]
    assert (db.get_state(a), db.get_outputs(a)) == (S.SUCCEEDED, b"oa")
    assert db.get_state(b) == S.COMMIT_READY
    assert db.commit_outputs_many([]) == []
    # All or nothing: one job that may not complete leaves every other one untouched.
    with pytest.raises(InvalidJobStateTransition, match=f"job {a}: cannot go from Succeeded"):
        db.commit_outputs_many([(c, b"oc", False), (a, b"again", False)])
    assert db.get_state(c) == S.RUNNING and db.get_outputs(a) == b"oa"
    with pytest.raises(JobNotFound):
        db.commit_outputs_many([(c, b"oc", False), (MISSING, b"x", False)])
    assert db.get_state(c) == S.RUNNING
    with pytest.raises(ValueError, match="twice"):
        db.commit_outputs_many([(c, b"1", False), (c, b"2", False)])
    assert db.commit_outputs_many([(c, b"oc", False)]) == [S.SUCCEEDED]


def test_fail_job(db: Database, rg: int) -> None:
    for state in (S.RUNNING, S.COMMIT_READY, S.CLEANUP_READY):
        job_id = new_job(db, rg, state)
        db.fail_job(job_id, f"failed from {state.db_name}")
        assert db.get_state(job_id) == S.FAILED
        assert db.get_error(job_id) == f"failed from {state.db_name}"
        assert db.get_job(job_id).ended_at_ms is not None


def test_fail_job_from_ready_is_rejected(db: Database, rg: int) -> None:
    job_id = new_job(db, rg)
    with pytest.raises(InvalidJobStateTransition):
        db.fail_job(job_id, "boom")


def test_fail_terminal_state(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.FAILED)
    with pytest.raises(InvalidJobStateTransition) as info:
        db.fail_job(job_id, "again")
    assert (info.value.from_state, info.value.to_state) == (S.FAILED, S.FAILED)
    assert db.get_error(job_id) == "boom"


@pytest.mark.parametrize("state", RECOVERABLE_STATES, ids=lambda s: s.db_name)
def test_fail_unrecoverable_from_any_non_terminal_state(
    db: Database, rg: int, state: DbJobState
) -> None:
    job_id = new_job(db, rg, state)
    db.fail_unrecoverable(job_id, "cannot rebuild: corrupt graph")
    assert db.get_state(job_id) == S.FAILED
    assert db.get_error(job_id) == "cannot rebuild: corrupt graph"
    assert db.get_job(job_id).ended_at_ms is not None


def test_fail_unrecoverable_rejects_terminal_and_missing(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.SUCCEEDED)
    with pytest.raises(InvalidJobStateTransition):
        db.fail_unrecoverable(job_id, "x")
    with pytest.raises(JobNotFound):
        db.fail_unrecoverable(MISSING, "x")


OPERATIONS_ON_MISSING_JOB: dict[str, Callable[[Database, int], object]] = {
    "start_job": lambda db, j: db.start_job(j),
    "set_state": lambda db, j: db.set_state(j, S.RUNNING),
    "get_state": lambda db, j: db.get_state(j),
    "get_outputs": lambda db, j: db.get_outputs(j),
    "get_error": lambda db, j: db.get_error(j),
    "get_job": lambda db, j: db.get_job(j),
    "commit_outputs": lambda db, j: db.commit_outputs(j, b"o", False),
    "cancel_job": lambda db, j: db.cancel_job(j, False),
    "fail_job": lambda db, j: db.fail_job(j, "m"),
}


@pytest.mark.parametrize("operation", OPERATIONS_ON_MISSING_JOB)
@pytest.mark.parametrize("job_id", [MISSING, 0, -1, 2**64 + 5])
def test_job_not_found(db: Database, operation: str, job_id: int) -> None:
    with pytest.raises(JobNotFound):
        OPERATIONS_ON_MISSING_JOB[operation](db, job_id)


def test_bad_argument_types(db: Database, rg: int) -> None:
    with pytest.raises(TypeError):
        db.get_state("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        db.register_job(rg, "graph", b"inputs", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        db.register_job(rg, b"graph", b"inputs", "")
    with pytest.raises(ValueError):
        db.register_job(rg, b"graph", b"inputs", "k" * 256)


def test_delete_expired_terminated_jobs(db: Database, rg: int) -> None:
    failed = new_job(db, rg, S.FAILED)
    succeeded = new_job(db, rg, S.SUCCEEDED)
    cancelled = new_job(db, rg, S.CANCELLED)
    running = new_job(db, rg, S.RUNNING)
    time.sleep(PAST_CUTOFF_SEC)
    fresh = new_job(db, rg, S.FAILED)
    assert db.delete_expired_terminated_jobs(CUTOFF_SEC) == 3
    for job_id in (failed, succeeded, cancelled):
        with pytest.raises(JobNotFound):
            db.get_state(job_id)
    assert db.get_state(running) == S.RUNNING
    assert db.get_state(fresh) == S.FAILED
    assert db.delete_expired_terminated_jobs(CUTOFF_SEC) == 0


def test_delete_expired_terminated_jobs_no_match(db: Database, rg: int) -> None:
    job_id = new_job(db, rg, S.FAILED)
    assert db.delete_expired_terminated_jobs(60.0) == 0
    assert db.get_state(job_id) == S.FAILED


def test_delete_expired_terminated_jobs_in_batches(db: Database, rg: int) -> None:
    ids = [new_job(db, rg, S.CANCELLED) for _ in range(1005)]
    keep = new_job(db, rg, S.RUNNING)
    time.sleep(PAST_CUTOFF_SEC)
    assert db.delete_expired_terminated_jobs(CUTOFF_SEC) == len(ids)
    assert db.count_jobs_by_state()[S.CANCELLED] == 0
    assert db.get_state(keep) == S.RUNNING


# -- idempotency keys ---------------------------------------------------------------------------


def test_idempotency_key_deduplicates(db: Database, rg: int) -> None:
    other_rg = db.add_resource_group("other-group", b"pw")
    first, dedup1 = db.register_job(rg, b"graph", b"inputs", "submit-1")
    again, dedup2 = db.register_job(rg, b"graph", b"inputs", "submit-1")
    assert (again, dedup1, dedup2) == (first, False, True)
    elsewhere, dedup3 = db.register_job(other_rg, b"graph", b"inputs", "submit-1")
    assert elsewhere != first and dedup3 is False
    other_key, _ = db.register_job(rg, b"graph", b"inputs", "submit-2")
    no_key_a, _ = db.register_job(rg, b"graph", b"inputs", None)
    no_key_b, _ = db.register_job(rg, b"graph", b"inputs", None)
    assert len({first, elsewhere, other_key, no_key_a, no_key_b}) == 5
    # The key keeps deduplicating whatever the job's state.
    db.start_job(first)
    assert db.register_job(rg, b"graph", b"inputs", "submit-1") == (first, True)


def test_idempotency_key_reused_for_another_job_is_refused(db: Database, rg: int) -> None:
    first, _ = db.register_job(rg, b"graph", b"inputs", "k")
    with pytest.raises(IdempotencyKeyReused, match=f"'k' already names job {first}"):
        db.register_job(rg, b"graph", b"other inputs", "k")
    with pytest.raises(IdempotencyKeyReused):
        db.register_job(rg, b"other graph", b"inputs", "k")
    with pytest.raises(IdempotencyKeyReused):
        db.register_jobs(rg, b"graph", [(b"fresh", "k2"), (b"other inputs", "k")])
    # Nothing of the refused batch was kept, not even its first, valid job.
    assert [j.id for j in db.list_jobs()] == [first]


def test_register_job_started_is_inserted_running(db: Database, rg: int) -> None:
    job_id, dedup = db.register_job(rg, b"graph", b"inputs", "k", start=True)
    assert dedup is False
    assert db.get_state(job_id) == S.RUNNING
    assert [r.id for r in db.recoverable_jobs(0, 10)] == [job_id]
    db.commit_outputs(job_id, b"out", False)
    assert db.get_state(job_id) == S.SUCCEEDED
    # A retried start=True submission finds the job in whatever state it is now.
    assert db.register_job(rg, b"graph", b"inputs", "k", start=True) == (job_id, True)


def test_register_jobs_in_one_batch(db: Database, rg: int) -> None:
    earlier, _ = db.register_job(rg, b"graph", b"in-1", "key-1")
    results = db.register_jobs(
        rg,
        b"graph",
        [(b"in-0", "key-0"), (b"in-1", "key-1"), (b"in-2", None), (b"in-0", "key-0")],
        start=True,
    )
    ids = [job_id for job_id, _ in results]
    assert [dedup for _, dedup in results] == [False, True, False, True]
    assert ids[1] == earlier and ids[3] == ids[0]
    assert len({ids[0], ids[1], ids[2]}) == 3
    assert db.get_state(ids[0]) == S.RUNNING and db.get_state(ids[2]) == S.RUNNING
    assert db.get_state(earlier) == S.READY  # deduplicated, so not started by the batch
    rows = {r.id: r for r in db.recoverable_jobs(0, 10)}
    assert rows[ids[0]].compressed_inputs == b"in-0"
    assert rows[ids[2]].compressed_graph == b"graph"
    with pytest.raises(ResourceGroupNotFound):
        db.register_jobs(MISSING, b"graph", [(b"x", None)])


def test_idempotency_key_concurrent_submissions(db_url: str) -> None:
    database = open_database(with_pool(db_url, 10))
    try:
        group = database.add_resource_group("g", b"pw")
        results = _race(8, lambda _: database.register_job(group, b"g", b"i", "same-key"))
        assert len({job_id for job_id, _ in results}) == 1
        assert sorted(dedup for _, dedup in results) == [False] + [True] * 7
    finally:
        database.close()


# -- listing, counting, recovery ----------------------------------------------------------------


def test_list_jobs(db: Database, rg: int) -> None:
    other = db.add_resource_group("other", b"pw")
    ready = [new_job(db, rg) for _ in range(3)]
    running = [new_job(db, rg, S.RUNNING) for _ in range(2)]
    failed = new_job(db, other, S.FAILED)
    everything = db.list_jobs()
    assert [r.id for r in everything] == sorted([*ready, *running, failed], reverse=True)
    assert [r.id for r in db.list_jobs([S.READY])] == sorted(ready, reverse=True)
    assert [r.id for r in db.list_jobs([S.RUNNING, S.FAILED])] == sorted(
        [*running, failed], reverse=True
    )
    assert db.list_jobs([]) == []
    assert [r.id for r in db.list_jobs(limit=2)] == [everything[0].id, everything[1].id]
    page2 = db.list_jobs(limit=2, before_job_id=everything[1].id)
    assert [r.id for r in page2] == [everything[2].id, everything[3].id]
    assert [r.id for r in db.list_jobs(resource_group_id=other)] == [failed]
    (row,) = db.list_jobs([S.FAILED])
    assert row.error_message == "boom" and row.ended_at_ms is not None
    assert row.ended_at_ms >= row.created_at_ms
    assert db.list_jobs(limit=0) == []
    with pytest.raises(ValueError):
        db.list_jobs(limit=-1)


def test_count_jobs_by_state(db: Database, rg: int) -> None:
    assert db.count_jobs_by_state() == dict.fromkeys(S, 0)
    expected = {S.READY: 2, S.RUNNING: 1, S.COMMIT_READY: 1, S.SUCCEEDED: 3, S.CANCELLED: 1}
    for state, n in expected.items():
        for _ in range(n):
            new_job(db, rg, state)
    counts = db.count_jobs_by_state()
    assert counts == {s: expected.get(s, 0) for s in S}
    assert all(isinstance(k, DbJobState) for k in counts)


def test_recoverable_jobs_paging(db: Database, rg: int) -> None:
    cycle = list(S)
    expected: dict[int, DbJobState] = {}
    for i in range(2500):
        state = cycle[i % len(cycle)]
        job_id, _ = db.register_job(rg, f"graph-{i}".encode(), f"inputs-{i}".encode(), None)
        if state == S.CANCELLED:
            db.cancel_job(job_id, False)
        elif state != S.READY:
            db.start_job(job_id)
            if state == S.COMMIT_READY:
                db.commit_outputs(job_id, f"out-{i}".encode(), True)
            elif state == S.CLEANUP_READY:
                db.cancel_job(job_id, True)
            elif state == S.SUCCEEDED:
                db.commit_outputs(job_id, b"o", False)
            elif state == S.FAILED:
                db.fail_job(job_id, "f")
        if state in RECOVERABLE_STATES:
            expected[job_id] = state

    seen: list[int] = []
    pages = 0
    after = 0
    while True:
        page = db.recoverable_jobs(after, 1000)
        if not page:
            break
        pages += 1
        assert len(page) <= 1000
        for row in page:
            assert row.state == expected[row.id]
            assert row.resource_group_id == rg
            index = row.compressed_graph.decode().removeprefix("graph-")
            assert row.compressed_inputs == f"inputs-{index}".encode()
            if row.state == S.COMMIT_READY:
                assert row.serialized_outputs == f"out-{index}".encode()
            else:
                assert row.serialized_outputs is None
        seen += [row.id for row in page]
        after = page[-1].id
    assert seen == sorted(expected)  # ordered, none missing, no duplicates
    assert pages == 2  # 4/7 of 2500 = 1429 rows -> pages of 1000 and 429
    assert db.recoverable_jobs(after, 1000) == []
    with pytest.raises(ValueError):
        db.recoverable_jobs(0, 0)


# -- resource groups ----------------------------------------------------------------------------


def test_add_duplicate_resource_group(db: Database) -> None:
    first = db.add_resource_group("dup", b"a")
    with pytest.raises(ResourceGroupAlreadyExists) as info:
        db.add_resource_group("dup", b"b")
    assert info.value.external_id == "dup"
    assert db.verify_resource_group(b"a", external_id="dup") == (first, "dup")
    # External ids are case-sensitive on both backends.
    assert db.add_resource_group("DUP", b"c") != first


def test_verify_correct_password(db: Database) -> None:
    rg_id = db.add_resource_group("team", b"s3cret")
    assert db.verify_resource_group(b"s3cret", resource_group_id=rg_id) == (rg_id, "team")
    assert db.verify_resource_group(b"s3cret", external_id="team") == (rg_id, "team")
    # Second time through the verification cache.
    assert db.verify_resource_group(b"s3cret", resource_group_id=rg_id) == (rg_id, "team")


def test_verify_wrong_password(db: Database) -> None:
    rg_id = db.add_resource_group("team", b"s3cret")
    db.verify_resource_group(b"s3cret", resource_group_id=rg_id)  # warm the cache
    for wrong in (b"S3cret", b"", b"s3cret\x00"):
        with pytest.raises(InvalidPassword):
            db.verify_resource_group(wrong, resource_group_id=rg_id)
        with pytest.raises(InvalidPassword):
            db.verify_resource_group(wrong, external_id="team")


def test_verify_nonexistent_resource_group(db: Database) -> None:
    with pytest.raises(ResourceGroupNotFound):
        db.verify_resource_group(b"pw", resource_group_id=MISSING)
    with pytest.raises(ResourceGroupNotFound):
        db.verify_resource_group(b"pw", external_id="nobody")
    with pytest.raises(ValueError):
        db.verify_resource_group(b"pw")
    with pytest.raises(ValueError):
        db.verify_resource_group(b"pw", resource_group_id=1, external_id="x")


def test_passwords_are_not_stored_in_clear(db: Database, db_url: str) -> None:
    a = db.add_resource_group("a", b"hunter2-password")
    b = db.add_resource_group("b", b"hunter2-password")
    rows = dict(raw_query(db_url, "SELECT id, password FROM resource_groups"))
    record_a, record_b = bytes(rows[a]), bytes(rows[b])
    for record in (record_a, record_b):
        assert b"hunter2" not in record
        assert record.hex().encode() != b"hunter2-password".hex().encode()
        assert record.startswith(b"scrypt-sha256$")
    assert record_a != record_b  # salted


# -- execution managers -------------------------------------------------------------------------


def test_register_execution_manager(db: Database) -> None:
    em = db.register_execution_manager("10.0.0.1")
    assert em > 0 and db.is_execution_manager_alive(em)
    em6 = db.register_execution_manager("2001:db8:85a3::8a2e:370:7334")
    assert em6 != em and db.is_execution_manager_alive(em6)
    with pytest.raises(ValueError):
        db.register_execution_manager("x" * 46)


def test_update_execution_manager_heartbeat(db: Database) -> None:
    em = db.register_execution_manager("10.0.0.1")
    time.sleep(PAST_CUTOFF_SEC)
    db.update_execution_manager_heartbeat(em)
    assert db.get_dead_execution_managers(CUTOFF_SEC) == []
    assert db.is_execution_manager_alive(em)


def test_update_execution_manager_heartbeat_not_found(db: Database) -> None:
    with pytest.raises(IllegalExecutionManagerId):
        db.update_execution_manager_heartbeat(MISSING)
    with pytest.raises(IllegalExecutionManagerId):
        db.update_execution_manager_heartbeat(0)


def test_update_execution_manager_heartbeat_already_dead(db: Database) -> None:
    em = db.register_execution_manager("10.0.0.1")
    time.sleep(PAST_CUTOFF_SEC)
    assert db.get_dead_execution_managers(CUTOFF_SEC) == [em]
    with pytest.raises(ExecutionManagerAlreadyDead):
        db.update_execution_manager_heartbeat(em)


def test_is_execution_manager_alive_em_alive(db: Database) -> None:
    assert db.is_execution_manager_alive(db.register_execution_manager("10.0.0.1")) is True


def test_is_execution_manager_alive_em_not_found(db: Database) -> None:
    with pytest.raises(IllegalExecutionManagerId):
        db.is_execution_manager_alive(MISSING)


def test_is_execution_manager_alive_em_dead(db: Database) -> None:
    em = db.register_execution_manager("10.0.0.1")
    time.sleep(PAST_CUTOFF_SEC)
    db.get_dead_execution_managers(CUTOFF_SEC)
    assert db.is_execution_manager_alive(em) is False


def test_get_dead_execution_managers_none_stale(db: Database) -> None:
    db.register_execution_manager("10.0.0.1")
    assert db.get_dead_execution_managers(60.0) == []


def test_get_dead_execution_managers_marks_dead(db: Database) -> None:
    em = db.register_execution_manager("10.0.0.1")
    time.sleep(PAST_CUTOFF_SEC)
    fresh = db.register_execution_manager("10.0.0.2")
    assert db.get_dead_execution_managers(CUTOFF_SEC) == [em]
    assert not db.is_execution_manager_alive(em)
    assert db.is_execution_manager_alive(fresh)


def test_get_dead_execution_managers_atomic(db: Database) -> None:
    em = db.register_execution_manager("10.0.0.1")
    time.sleep(PAST_CUTOFF_SEC)
    assert db.get_dead_execution_managers(CUTOFF_SEC) == [em]
    assert db.get_dead_execution_managers(CUTOFF_SEC) == []


def test_get_dead_execution_managers_multiple(db: Database) -> None:
    ems = [db.register_execution_manager(f"10.0.0.{i}") for i in range(3)]
    time.sleep(PAST_CUTOFF_SEC)
    assert sorted(db.get_dead_execution_managers(CUTOFF_SEC)) == sorted(ems)
    assert not any(db.is_execution_manager_alive(em) for em in ems)


def test_get_dead_execution_managers_concurrent_sweeps_report_each_once(db_url: str) -> None:
    database = open_database(with_pool(db_url, 8))
    try:
        ems = [database.register_execution_manager("10.0.0.1") for _ in range(50)]
        time.sleep(PAST_CUTOFF_SEC)
        results = _race(4, lambda _: database.get_dead_execution_managers(CUTOFF_SEC))
        reported = [em for result in results for em in result]
        assert sorted(reported) == sorted(ems)
    finally:
        database.close()


def _liveness_round(database: Database, round_no: int, survivors: set[int]) -> set[int]:
    """16 heartbeats race one sweep; returns the EMs still alive afterwards."""
    ems = [database.register_execution_manager("10.1.1.1") for _ in range(16)]
    time.sleep(PAST_CUTOFF_SEC)
    barrier = threading.Barrier(17)
    outcomes: dict[int, str] = {}
    unexpected: list[BaseException] = []
    swept: list[int] = []
    # Odd rounds let the sweep start first, even rounds the heartbeats.
    sweep_delay, heartbeat_delay = (0.0, 0.003) if round_no % 2 else (0.003, 0.0)

    def heartbeat(em: int) -> None:
        barrier.wait(timeout=30)
        time.sleep(random.random() * heartbeat_delay)
        try:
            database.update_execution_manager_heartbeat(em)
            outcomes[em] = "ok"
        except ExecutionManagerAlreadyDead:
            outcomes[em] = "dead"
        except BaseException as e:
            unexpected.append(e)

    def sweeper() -> None:
        barrier.wait(timeout=30)
        time.sleep(sweep_delay)
        try:
            swept.extend(database.get_dead_execution_managers(CUTOFF_SEC))
        except BaseException as e:
            unexpected.append(e)

    threads = [threading.Thread(target=heartbeat, args=(em,)) for em in ems]
    threads.append(threading.Thread(target=sweeper))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "liveness operations hung"
    assert unexpected == []
    assert len(outcomes) == 16
    assert len(swept) == len(set(swept))
    # Survivors of earlier rounds went stale during this round's sleep.
    assert set(swept) - set(ems) <= survivors
    for em in ems:
        # A heartbeat that lost the race sees the EM dead; one that won kept it alive.
        if outcomes[em] == "dead":
            assert em in swept
        assert database.is_execution_manager_alive(em) == (em not in swept)
    return (survivors | set(ems)) - set(swept)


def test_liveness_operations_no_deadlock_under_concurrency(db_url: str) -> None:
    """10 rounds of 16 concurrent heartbeats racing one dead-EM sweep (reference #371)."""
    database = open_database(with_pool(db_url, 20))
    try:
        survivors: set[int] = set()
        for round_no in range(10):
            survivors = _liveness_round(database, round_no, survivors)
    finally:
        database.close()


# -- schedulers, sessions, schema ---------------------------------------------------------------


def test_register_scheduler_replaces_previous_scheduler(db: Database) -> None:
    assert db.get_schedulers() == []
    first = db.register_scheduler("10.0.0.1", 6000)
    assert db.is_scheduler_registered(first)
    second = db.register_scheduler("scheduler.internal", 6001)
    assert second != first
    assert not db.is_scheduler_registered(first)
    assert db.is_scheduler_registered(second)
    (row,) = db.get_schedulers()
    assert (row.id, row.host, row.port) == (second, "scheduler.internal", 6001)
    with pytest.raises(ValueError):
        db.register_scheduler("h", 70000)
    with pytest.raises(ValueError):
        db.register_scheduler("", 1)


def test_a_plain_connection_opens_no_session(db: Database) -> None:
    assert db.session_id == 0  # a tool's: its writes are not fenced (tests/db/test_leadership.py)


def test_context_manager(db_url: str) -> None:
    with open_database(db_url, lead=True) as database:
        assert database.session_id > 0
    with pytest.raises(DbError):
        database.get_state(1)


def test_session_id_bumps_on_reconnect(db_url: str) -> None:
    ids = []
    for _ in range(3):
        database = open_database(db_url, lead=True)
        ids.append(database.session_id)
        database.close()
    assert ids[0] < ids[1] < ids[2]


def test_schema_creation_is_idempotent(db_url: str) -> None:
    first = open_database(db_url)
    group = first.add_resource_group("g", b"pw")
    job_id = new_job(first, group, S.RUNNING)
    first.close()
    second = open_database(db_url)
    try:
        assert second.get_state(job_id) == S.RUNNING
        assert second.verify_resource_group(b"pw", external_id="g") == (group, "g")
    finally:
        second.close()
    assert raw_query(db_url, "SELECT version FROM schema_migrations") == [(SCHEMA_VERSION,)]
    tables = {
        "resource_groups", "jobs", "sessions", "execution_managers", "schedulers",
        "schema_migrations", "storage_lease", "storage_fence",
    }  # fmt: skip
    for table in tables:
        raw_query(db_url, f"SELECT COUNT(*) FROM {table}")


def test_newer_schema_version_is_refused(db_url: str) -> None:
    open_database(db_url).close()
    newer = SCHEMA_VERSION + 1
    raw_query(db_url, f"INSERT INTO schema_migrations (version, applied_at) VALUES ({newer}, 0)"
              if db_url.startswith("sqlite")
              else f"INSERT INTO schema_migrations (version) VALUES ({newer})")  # fmt: skip
    with pytest.raises(DbError, match=f"schema is version {newer}"):
        open_database(db_url)


def test_closed_database_raises(db_url: str) -> None:
    database = open_database(db_url)
    database.close()
    database.close()  # idempotent
    with pytest.raises(DbError):
        database.get_state(1)


# -- concurrency ----------------------------------------------------------------------------------


def _race(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(0..n-1)`` on ``n`` threads released together."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait(timeout=30)
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_concurrent_start_exactly_one_wins(db_url: str) -> None:
    database = open_database(with_pool(db_url, 8))
    try:
        group = database.add_resource_group("g", b"pw")
        for _ in range(5):
            job_id, _ = database.register_job(group, b"graph", b"inputs", None)

            def start(_: int, job_id: int = job_id) -> str:
                try:
                    database.start_job(job_id)
                    return "started"
                except UnexpectedJobState as e:
                    assert e.current == S.RUNNING
                    return "rejected"

            assert sorted(_race(8, start)) == ["rejected"] * 7 + ["started"]
            assert database.get_state(job_id) == S.RUNNING
    finally:
        database.close()


def test_concurrent_mixed_transitions_stay_consistent(db_url: str) -> None:
    """Cancels, commits and failures race on each job: exactly one terminal outcome wins."""
    database = open_database(with_pool(db_url, 8))
    try:
        group = database.add_resource_group("g", b"pw")
        for _ in range(5):
            job_id = new_job(database, group, S.RUNNING)

            def attempt(i: int, job_id: int = job_id) -> bool:
                try:
                    if i % 3 == 0:
                        database.cancel_job(job_id, False)
                    elif i % 3 == 1:
                        database.commit_outputs(job_id, b"o", False)
                    else:
                        database.fail_job(job_id, "f")
                    return True
                except InvalidJobStateTransition:
                    return False

            assert _race(6, attempt).count(True) == 1
            assert database.get_state(job_id).is_terminal
    finally:
        database.close()


def test_lock_timeout_is_unavailable(db_url: str) -> None:
    """A job row locked elsewhere for too long gives DbUnavailable, never a wrong answer."""
    if db_url.startswith("sqlite"):
        database = open_database(db_url, busy_timeout_ms=200)
    else:
        database = open_database(db_url, lock_wait_timeout=1, max_retries=1)
    try:
        group = database.add_resource_group("g", b"pw")
        job_id = new_job(database, group)
        with _hold_job_lock(db_url, job_id):
            with pytest.raises(DbUnavailable):
                database.start_job(job_id)
            assert database.get_state(job_id) == S.READY
        database.start_job(job_id)
        assert database.get_state(job_id) == S.RUNNING
    finally:
        database.close()


@contextlib.contextmanager
def _hold_job_lock(url: str, job_id: int) -> Iterator[None]:
    config = parse_url(url)
    if isinstance(config, SqliteConfig):
        conn = sqlite3.connect(config.path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.rollback()
            conn.close()
        return
    assert isinstance(config, MariaDbConfig)
    import mariadb

    mconn = mariadb.connect(
        host=config.host, port=config.port, user=config.user, database=config.database
    )
    try:
        cur = mconn.cursor()
        cur.execute("SELECT state FROM jobs WHERE id = ? FOR UPDATE", (job_id,))
        cur.fetchall()
        yield
    finally:
        mconn.rollback()
        mconn.close()


# -- URLs and options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "empty"),
        ("jobs.db", "no scheme"),
        ("postgres://u:pw@h/db", "unsupported scheme"),
        ("sqlite://jobs.db", "three slashes"),
        ("sqlite:///", "missing SQLite file path"),
        ("sqlite:///dir/", "directory"),
        ("sqlite:///jobs.db?mode=ro", "no query parameters"),
        ("mariadb://u:pw@/db", "missing host"),
        ("mariadb://u:pw@h:notaport/db", "invalid host or port"),
        ("mariadb://u:pw@h:99999/db", "invalid host or port"),
        ("mariadb://u:pw@h:3306", "missing database"),
        ("mariadb://u:pw@h:3306/", "missing database"),
        ("mariadb://u:pw@h/bad-name", "invalid database name"),
        ("mariadb://u:pw@h/db?pool_size=0", "pool_size"),
        ("mariadb://u:pw@h/db?pool_size=x", "pool_size"),
        ("mariadb://u:pw@h/db?ssl=1", "unknown query parameter"),
        ("mysql://u:pw@h/db?pool_size=1&pool_size=2", "given twice"),
        ("mariadb://h/db", "no user"),
    ],
)
def test_bad_urls(url: str, problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORBWEAVER_DB_USER", raising=False)
    with pytest.raises(ValueError, match=problem) as info:
        open_database(url)
    assert "pw" not in str(info.value).replace("pool", "")


def test_password_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (
        "mariadb://user:Sup3rSecret@host:bad/db",
        "mariadb://user:Sup3rSecret@host/",
        "mariadb://user:Sup/3rSecret@host/db?x=1",
        "mysql://user:Sup3rSecret@host/db?pool_size=999",
    ):
        with pytest.raises(ValueError) as info:
            open_database(url)
        assert "Sup3rSecret" not in str(info.value)
        assert "3rSecret" not in str(info.value)
        assert "***" in str(info.value)


def test_url_parsing() -> None:
    assert parse_url("sqlite:///jobs.db") == SqliteConfig("jobs.db")
    assert parse_url("sqlite:////var/lib/ow/jobs.db") == SqliteConfig("/var/lib/ow/jobs.db")
    assert parse_url("sqlite:///:memory:") == SqliteConfig(":memory:")
    config = parse_url("mariadb://ow%40x:p%40ss%2Fw@db.example:3307/orb?pool_size=4", env={})
    assert config == MariaDbConfig(
        host="db.example", port=3307, database="orb", user="ow@x", password="p@ss/w", pool_size=4
    )
    assert "p@ss" not in repr(config)
    env = {"ORBWEAVER_DB_USER": "envuser", "ORBWEAVER_DB_PASSWORD": "envpw"}
    config = parse_url("mysql://db.example/orb?unix_socket=/run/mysqld.sock", env=env)
    assert isinstance(config, MariaDbConfig)
    assert (config.user, config.password, config.port) == ("envuser", "envpw", 3306)
    assert config.unix_socket == "/run/mysqld.sock"
    # A password in the URL wins over the environment; a user without one takes the env's.
    config = parse_url("mariadb://u:urlpw@h/orb", env=env)
    assert isinstance(config, MariaDbConfig) and config.password == "urlpw"
    config = parse_url("mariadb:///orb?unix_socket=/s", env=env)
    assert isinstance(config, MariaDbConfig) and config.host == "localhost"


def test_unknown_option(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="unknown sqlite database option"):
        open_database(sqlite_url, pool_size=3)


def test_sqlite_relative_path_and_memory(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    database = open_database("sqlite:///rel.db")
    database.close()
    assert (tmp_path / "rel.db").exists()
    memory = open_database("sqlite:///:memory:", lead=True)
    try:
        assert memory.session_id == 1
    finally:
        memory.close()
    with pytest.raises(ValueError, match="does not exist"):
        open_database("sqlite:///no/such/dir/x.db")


def test_sqlite_injected_clock(sqlite_url: str) -> None:
    now = [1_000_000.0]
    database = open_database(sqlite_url, clock=lambda: now[0])
    try:
        group = database.add_resource_group("g", b"pw")
        job_id = new_job(database, group, S.FAILED)
        em = database.register_execution_manager("10.0.0.1")
        assert database.get_job(job_id).ended_at_ms == 1_000_000_000
        now[0] += 3600
        assert database.get_dead_execution_managers(60) == [em]
        assert database.delete_expired_terminated_jobs(60) == 1
    finally:
        database.close()


# -- MariaDB specifics ----------------------------------------------------------------------------


def test_mariadb_env_credentials_and_unix_socket(
    mariadb_server: Any, mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if mariadb_server.socket is None:
        pytest.skip("external server: no socket")
    name = mariadb_url.rsplit("/", 1)[1]
    monkeypatch.setenv("ORBWEAVER_DB_USER", mariadb_server.user)
    database = open_database(
        f"mariadb:///{name}?unix_socket={mariadb_server.socket}&pool_size=2", lead=True
    )
    try:
        assert database.session_id == 1
    finally:
        database.close()
    database = open_database(
        f"mysql://{mariadb_server.host}:{mariadb_server.port}/{name}", lead=True
    )
    try:
        assert database.session_id == 2
    finally:
        database.close()


def test_mariadb_unreachable_is_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DbUnavailable) as info:
        open_database(f"mariadb://root:pw@127.0.0.1:{port}/nothing", max_retries=1)
    assert time.monotonic() - started < 30
    assert "pw" not in str(info.value).replace("@", "")


def test_mariadb_access_denied_is_not_transient(mariadb_server: Any, mariadb_url: str) -> None:
    name = mariadb_url.rsplit("/", 1)[1]
    url = f"mariadb://nosuchuser:wrong@{mariadb_server.host}:{mariadb_server.port}/{name}"
    with pytest.raises(DbError) as info:
        open_database(url)
    assert not isinstance(info.value, DbUnavailable)
    assert "wrong" not in str(info.value)


def test_mariadb_survives_killed_connections(mariadb_server: Any, mariadb_url: str) -> None:
    """Connections killed on the server side are replaced transparently."""
    database = open_database(with_pool(mariadb_url, 2))
    try:
        group = database.add_resource_group("g", b"pw")
        job_id = new_job(database, group)
        conn = mariadb_server.connect()
        try:
            cur = conn.cursor()
            cur.execute(
                "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> "
                "CONNECTION_ID()",
                (mariadb_url.rsplit("/", 1)[1],),
            )
            victims = [int(thread_id) for (thread_id,) in cur.fetchall()]
            assert victims, "the pool should hold an idle connection"
            for thread_id in victims:
                cur.execute(f"KILL {thread_id}")
        finally:
            conn.close()
        database.start_job(job_id)
        assert database.get_state(job_id) == S.RUNNING
    finally:
        database.close()


def test_mariadb_oversized_outputs_are_a_definite_error(mariadb_url: str) -> None:
    database = open_database(mariadb_url)
    try:
        group = database.add_resource_group("g", b"pw")
        job_id = new_job(database, group, S.RUNNING)
        with pytest.raises(DbError) as info:  # beyond the server's max_allowed_packet (16 MiB)
            database.commit_outputs(job_id, b"x" * (17 * 1024 * 1024), False)
        assert not isinstance(info.value, DbUnavailable)
        assert database.get_state(job_id) == S.RUNNING
    finally:
        database.close()


def test_mariadb_pool_waits_for_free_connection(mariadb_url: str) -> None:
    database = open_database(with_pool(mariadb_url, 1), acquire_timeout=30)
    try:
        group = database.add_resource_group("g", b"pw")
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _: new_job(database, group, S.RUNNING), range(16)))
        assert len(set(ids)) == 16
    finally:
        database.close()


# -- group commit ---------------------------------------------------------------------------------


def test_job_groups_commit_together_each_with_its_own_result(db: Database) -> None:
    from orbweaver.storage.db import JobGroup, ResourceGroupNotFound

    a = db.add_resource_group("ga", b"pw")
    b = db.add_resource_group("gb", b"pw")
    results = db.register_job_groups([
        JobGroup(a, b"graph-a", [(b"in-1", "k1"), (b"in-2", None)]),
        JobGroup(b, b"graph-b", [(b"in-3", None)], start=True),
        JobGroup(9_999_999, b"graph-c", [(b"in-4", None)]),  # no such group: refused alone
        JobGroup(a, b"graph-d", [(b"in-5", "k" * 300)]),  # key too long: refused alone
    ])  # fmt: skip
    [first, second, missing, too_long] = results
    assert isinstance(first, list) and isinstance(second, list)
    assert [dedup for _, dedup in first] == [False, False]
    assert db.get_state(first[0][0]) == S.READY
    assert db.get_state(second[0][0]) == S.RUNNING
    assert isinstance(missing, ResourceGroupNotFound)
    assert isinstance(too_long, (ValueError, DbError))
    # A key seen before: the shared transaction fails on it, each group is then registered on
    # its own, exactly as `register_jobs` would.
    again = db.register_job_groups([
        JobGroup(a, b"graph-a", [(b"in-1", "k1")]),
        JobGroup(b, b"graph-b", [(b"in-6", None)]),
    ])  # fmt: skip
    assert again[0] == [(first[0][0], True)]
    assert isinstance(again[1], list) and again[1][0][1] is False


def test_transactions_stay_atomic_on_connections_that_committed_lone_statements(
    db_url: str,
) -> None:
    """A lone job's insert and a lone completion commit by themselves (autocommit on
    MariaDB, no COMMIT round trip); the one pooled connection that ran them must still run
    a transaction of several statements as one: a failure half-way leaves nothing."""
    from orbweaver.storage.db import JobGroup

    database = open_database(with_pool(db_url, 1))
    try:
        group = database.add_resource_group("g", b"pw")
        [[(job, _)]] = database.register_job_groups([JobGroup(group, b"g", [(b"i", None)])])
        database.start_job(job)
        assert database.commit_outputs_many([(job, b"out", False)]) == [S.SUCCEEDED]
        assert database.get_outputs(job) == b"out"

        def two_writes_then_a_failure(cur: Any) -> None:
            cur.execute("UPDATE resource_groups SET external_id = ? WHERE id = ?", ("h", group))
            cur.execute("UPDATE jobs SET serialized_job_outputs = ? WHERE id = ?", (b"x", job))
            raise RuntimeError("half-way")

        with pytest.raises(RuntimeError, match="half-way"):
            cast(SqlDatabase, database)._transaction(two_writes_then_a_failure, write=True)
        assert [g.external_id for g in database.list_resource_groups()] == ["g"]
        assert database.get_outputs(job) == b"out"
        # And the next lone statement commits alone again.
        [[(other, _)]] = database.register_job_groups([JobGroup(group, b"g", [(b"j", None)])])
        assert database.get_state(other) == S.READY
    finally:
        database.close()


def test_no_execution_manager_is_marked_dead_past_the_deadline(db: Database) -> None:
    """A sweep whose database stalled past its deadline marks nobody: the stall held the
    heartbeats up too."""
    em = db.register_execution_manager("10.0.0.9")
    time.sleep(PAST_CUTOFF_SEC)
    assert db.get_dead_execution_managers(CUTOFF_SEC, deadline=time.monotonic() - 1) == []
    assert db.is_execution_manager_alive(em)
    assert db.get_dead_execution_managers(CUTOFF_SEC, deadline=time.monotonic() + 60) == [em]
