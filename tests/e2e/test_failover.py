"""Storage failover on one host: two storages on one MariaDB database, one leads and the other
stands by; the scheduler, the worker and the client follow the leader (docs/reliability.md)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._rpc import LEADER_METADATA_KEY
from orbweaver.storage.db import open_database
from support.failover import FailoverCluster
from support.procs import wait_until

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(TASKS_DIR))
import e2e_tasks as t  # noqa: E402

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(300)]


@pytest.fixture
def failover(mariadb_url: str, tmp_path: Path, markers: Path) -> Iterator[FailoverCluster]:
    with FailoverCluster(
        mariadb_url, tmp_path / "cluster", TASKS_DIR, env={"E2E_TEST_MARKERS": str(markers)}
    ) as cluster:
        yield cluster


def test_one_storage_leads_and_the_standby_names_it(failover: FailoverCluster) -> None:
    assert [failover.role(0), failover.role(1)] == ["leader", "standby"]
    leader, standby = failover.storages
    # Raw gRPC, as any caller: the standby runs nothing and says where the leader is.
    with pytest.raises(grpc.RpcError) as refused:
        standby.stubs().jobs.GetJobState(pb.JobIdRequest(job_id=1), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "standby" in (refused.value.details() or "")
    trailing = dict(refused.value.trailing_metadata() or ())
    assert trailing[LEADER_METADATA_KEY] == leader.address
    # A client given the standby first is sent on to the leader.
    with failover.client(f"{standby.address},{leader.address}") as client:
        assert client.submit(chain(), [1]).result(timeout=60) == [4]


def chain() -> ow.TaskGraph:
    g = ow.TaskGraph(commit=t.publish)
    a = g.add(t.inc)
    g.add(t.inc, a)
    g.add(t.inc, g.tasks[-1])
    return g


def slow_chain() -> ow.TaskGraph:
    g = ow.TaskGraph(commit=t.publish)
    a = g.add(t.sleep_then)
    g.add(t.inc, a)
    return g


def submit_batch(client: ow.Client, first: int, n: int, seconds: float) -> dict[int, int]:
    """n jobs `sleep_then(x, seconds) -> inc`, each with the commit task; {job id: x}."""
    return {client.submit(slow_chain(), [x, seconds]).id: x for x in range(first, first + n)}


def check_jobs(client: ow.Client, jobs: dict[int, int], markers: Path) -> None:
    """Every job succeeded with x + 1, and its commit task published exactly those outputs."""
    for job_id, x in jobs.items():
        assert client.get_job(job_id).result(timeout=120) == [x + 1], job_id
        published = markers / f"commit-{job_id}"
        wait_until(published.exists, timeout=60, what=f"job {job_id}'s publication")
        assert published.read_text() == repr([x + 1])


def count_jobs(db_url: str) -> int:
    db = open_database(db_url)
    try:
        return sum(db.count_jobs_by_state().values())
    finally:
        db.close()


def test_the_leader_killed_mid_run(
    failover: FailoverCluster, markers: Path, mariadb_url: str
) -> None:
    with failover.client() as client:
        before = submit_batch(client, 0, 12, 0.3)
        time.sleep(1.0)  # tasks under way
        failover.kill(0)
        during = submit_batch(client, 100, 6, 0.1)  # reaches the new leader
        assert failover.leader() == 1
        check_jobs(client, {**before, **during}, markers)
        assert count_jobs(mariadb_url) == len(before) + len(during)  # nothing lost or doubled
        # The old leader comes back as a standby: it does not lead, its old session is fenced.
        failover.restart(0)
        assert failover.role(0) == "standby" and failover.leaders() == [1], failover.logs()
        after = submit_batch(client, 200, 4, 0.0)
        check_jobs(client, after, markers)


def test_a_silent_leader_is_replaced_and_fenced_when_it_returns(
    failover: FailoverCluster, markers: Path, mariadb_url: str
) -> None:
    """The leader stops answering (SIGSTOP: its network gone, its process and connections
    alive) for longer than its lease: the standby takes over; when the old leader wakes up, its
    writes are refused and it steps down."""
    with failover.client() as client:
        before = submit_batch(client, 0, 8, 0.5)
        time.sleep(0.5)
        failover.pause(0)
        try:
            during = submit_batch(client, 100, 4, 0.1)
            assert failover.role(1) == "leader"
        finally:
            failover.resume(0)
        wait_until(lambda: failover.role(0) == "standby", timeout=30,
                   what="the old leader to stand by")  # fmt: skip
        assert failover.leaders() == [1]
        check_jobs(client, {**before, **during}, markers)
        assert count_jobs(mariadb_url) == len(before) + len(during)
    old = failover.storages[0].logs()
    assert "does not lead" in old or "stepping down" in old, old[-4000:]
