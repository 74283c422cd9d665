"""The issue's reproductions on a real cluster with real executors: a 20 MiB task output on
MariaDB fails its job with the sizes (the storage neither exits nor restarts), and 100 MiB of
compressible input is refused at submission instead of hanging the job."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import orbweaver as ow

TASKS = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(TASKS))
import hostile_tasks as t  # noqa: E402


@pytest.fixture
def cluster(db_url: str, tmp_path: Path) -> Iterator[ow.LocalCluster]:
    with ow.LocalCluster(workers=1, db=db_url, tasks_dir=TASKS, log_dir=tmp_path) as c:
        yield c


@pytest.mark.mariadb
@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_a_20_mib_output_fails_its_job_and_storage_stays_up(cluster: ow.LocalCluster) -> None:
    storage = cluster.pid("storage")
    client = cluster.client()
    g = ow.TaskGraph()
    g.add(t.big_out)
    jobs = [client.submit(g, [20]), client.submit(g, [3])]
    with pytest.raises(ow.JobFailed) as failed:
        jobs[0].result(timeout=120)
    assert "above the limit of" in str(failed.value) and "bytes" in str(failed.value)
    [three_mib] = jobs[1].result(timeout=120)
    assert len(three_mib) == 3 << 20
    assert cluster.pid("storage") == storage
    assert "storage must restart" not in cluster.logs("storage")
    h = ow.TaskGraph()
    h.add(t.small)
    assert client.submit(h, [1]).result(timeout=60) == [2]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_100_mib_of_compressible_input_is_refused_at_submission(
    cluster: ow.LocalCluster,
) -> None:
    client = cluster.client()
    g = ow.TaskGraph()
    g.add(t.big_in)
    with pytest.raises(ow.LimitExceeded, match="max_input_bytes"):
        client.submit(g, [b"\0" * (100 << 20)])
    assert client.jobs() == []
    assert client.submit(g, [b"\0" * (1 << 20)]).result(timeout=60) == [1 << 20]
