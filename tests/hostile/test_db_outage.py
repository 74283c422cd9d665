"""The database goes away under load and comes back: the storage process stays up the whole
time (never restarted), serves what its cache can answer, answers UNAVAILABLE for what needs the
database, and applies the transitions decided meanwhile once the database returns. Every job
ends right and each commit's publication is there."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import TOKEN_METADATA_KEY
from support.mariadb_server import MariaDBServer, private_server
from support.procs import wait_until

TASKS = Path(__file__).resolve().parents[1] / "e2e" / "tasks"
sys.path.insert(0, str(TASKS))
import e2e_tasks as t  # noqa: E402

STORAGE_CONFIG = """
[storage]
instance_gc_interval = 0.25
em_stale_cutoff = 3.0
job_cache_gc_interval = 1.0
db_retry_deadline = 1.0
"""

pytestmark = [pytest.mark.mariadb, pytest.mark.slow]


@pytest.fixture
def server() -> Iterator[MariaDBServer]:
    with private_server() as srv:
        yield srv


@pytest.fixture
def cluster(server: MariaDBServer, tmp_path: Path) -> Iterator[ow.LocalCluster]:
    config = tmp_path / "storage.toml"
    config.write_text(STORAGE_CONFIG)
    markers = tmp_path / "markers"
    markers.mkdir()
    with ow.LocalCluster(
        workers=2,
        db=server.create_database(),
        tasks_dir=TASKS,
        log_dir=tmp_path / "logs",
        storage_args=["--config", str(config)],
        env={"E2E_TEST_MARKERS": str(markers)},
    ) as c:
        yield c


def test_storage_rides_out_a_database_outage(
    cluster: ow.LocalCluster, server: MariaDBServer, tmp_path: Path
) -> None:
    storage_pid = cluster.pid("storage")
    client = cluster.client()
    g = ow.TaskGraph(commit=t.publish)
    g.add(t.inc, g.add(t.sleep_then))
    jobs = [client.submit(g, [i, 0.3]) for i in range(12)]
    victim = client.submit(g, [100, 30.0])  # still running when the database goes away
    wait_until(lambda: victim.progress().running == 1, timeout=60, what="the victim runs")

    server.kill()
    down_at = time.monotonic()
    # The cache still answers: states and progress of cached jobs.
    assert victim.state == ow.JobState.RUNNING
    assert all(job.state != ow.JobState.FAILED for job in jobs)
    # What needs the database answers UNAVAILABLE (here, a cancel, through raw gRPC).
    stub = pb_grpc.JobOrchestrationServiceStub(grpc.insecure_channel(cluster.address))
    operator = [(TOKEN_METADATA_KEY, f"Bearer {cluster.operator_token}")]
    with pytest.raises(grpc.RpcError) as info:
        stub.CancelJob(pb.JobIdRequest(job_id=victim.id), metadata=operator, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # The Python client retries it; it lands once the database is back. A new client, too:
    # the storage steps down once its lease runs out (3 s) and answers as a standby until the
    # database is back and it leads again; a client that never reached a leader before keeps
    # retrying through that for its whole timeout, not just its connect timeout.
    cancelled: list[ow.JobState] = []
    slow = ow.Client(cluster.address, operator_token=cluster.operator_token, timeout=120)
    canceller = threading.Thread(
        target=lambda: cancelled.append(slow.get_job(victim.id).cancel()), daemon=True
    )
    canceller.start()

    time.sleep(max(0.0, 10.0 - (time.monotonic() - down_at)))
    assert cluster.pid("storage") == storage_pid and _alive(storage_pid)
    server.restart()

    canceller.join(120)
    assert cancelled and cancelled[0] in (ow.JobState.CANCELLED, ow.JobState.CLEANUP_READY)
    for i, job in enumerate(jobs):
        assert job.result(timeout=120) == [i + 1]
        publication = tmp_path / "markers" / f"commit-{job.id}"
        assert publication.read_text() == f"[{i + 1}]"
    assert victim.wait(timeout=60) == ow.JobState.CANCELLED
    assert _alive(storage_pid), "storage exited"
    logs = cluster.logs("storage")
    assert "storage must restart" not in logs and "Traceback" not in logs
    slow.close()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
