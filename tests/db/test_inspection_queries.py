"""The DB-layer reads behind the dashboard (`ClusterInspectionService`), on SQLite and MariaDB:
per-group job counts, a job's stored graph, the Alive execution managers, and the index that
serves keyset pages of one group's jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from orbweaver.storage.db import Database, JobNotFound, open_database

from .test_db import S, new_job, raw_query


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = open_database(db_url)
    try:
        yield database
    finally:
        database.close()


def test_count_jobs_by_state_of_one_group(db: Database) -> None:
    a = db.add_resource_group("a", b"pa")
    b = db.add_resource_group("b", b"pb")
    for state in (S.READY, S.SUCCEEDED, S.SUCCEEDED, S.FAILED):
        new_job(db, a, state)
    new_job(db, b, S.CANCELLED)
    assert db.count_jobs_by_state(a) == {
        s: {S.READY: 1, S.SUCCEEDED: 2, S.FAILED: 1}.get(s, 0) for s in S
    }
    assert db.count_jobs_by_state(b) == {s: int(s == S.CANCELLED) for s in S}
    assert db.count_jobs_by_state(987_654) == dict.fromkeys(S, 0)
    assert sum(db.count_jobs_by_state().values()) == 5


def test_get_job_graph(db: Database) -> None:
    rg = db.add_resource_group("g", b"p")
    job_id, _ = db.register_job(rg, b"\x28\xb5 a graph", b"inputs")
    assert db.get_job_graph(job_id) == b"\x28\xb5 a graph"
    with pytest.raises(JobNotFound):
        db.get_job_graph(job_id + 1000)


def test_alive_execution_managers(db: Database) -> None:
    gone = db.register_execution_manager("10.0.0.1")
    time.sleep(0.05)  # its heartbeat is then older than a cutoff of 0 s
    assert db.get_dead_execution_managers(0.0) == [gone]
    before_ms = time.time() * 1000
    alive = [db.register_execution_manager("10.0.0.2"), db.register_execution_manager("::1")]
    rows = db.alive_execution_managers()
    assert [(r.id, r.ip_address) for r in rows] == list(
        zip(alive, ["10.0.0.2", "::1"], strict=True)
    )
    # Heartbeats as epoch milliseconds (the database's clock, this machine's here).
    assert all(abs(r.last_heartbeat_at_ms - before_ms) < 60_000 for r in rows)


def test_group_pages_use_the_job_group_index(db: Database, db_url: str) -> None:
    rg = db.add_resource_group("g", b"p")
    for _ in range(3):
        new_job(db, rg)
    query = "SELECT id FROM jobs WHERE resource_group_id = ? AND id < ? ORDER BY id DESC LIMIT 50"
    if db_url.startswith("sqlite"):
        plan = " ".join(
            str(row[-1]) for row in raw_query(db_url, "EXPLAIN QUERY PLAN " + query, (rg, 10))
        )
        assert "job_group" in plan and "TEMP B-TREE" not in plan, plan
    else:
        # On three rows the optimizer may pick any index; it may pick this one (the 100,000-job
        # dashboard test measures the pages).
        rows = raw_query(db_url, "EXPLAIN " + query, (rg, 10))
        assert "job_group" in str(rows[0][4]).split(","), rows  # possible_keys
    assert [j.id for j in db.list_jobs(resource_group_id=rg, limit=2)] == sorted(
        (j.id for j in db.list_jobs(resource_group_id=rg)), reverse=True
    )[:2]
