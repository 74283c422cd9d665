"""The chaos run, short: about 40 jobs of every kind from four resource groups while the fault
injector SIGKILLs the storage (once also during its recovery), the scheduler, workers and
executors and restarts MariaDB. Nothing is lost, nothing is stuck, nothing is wrong, and each
group sees exactly its own jobs. `benches/chaos.py` is the long run of the same engine
(`tests/support/chaos.py`)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import orbweaver as ow
from support.chaos import (
    FAULT_KINDS,
    JOB_KINDS,
    TASKS_DIR,
    ChaosConfig,
    ct,
    run_chaos,
)
from support.liveness import SCHEDULER_CONFIG, STORAGE_CONFIG
from support.mariadb_server import MariaDBServer, free_port, private_server
from support.procs import wait_until


@pytest.fixture
def server() -> Iterator[MariaDBServer]:
    # A server of its own: the run kills and restarts it.
    with private_server() as srv:
        yield srv


@pytest.mark.mariadb
def test_chaos_run(server: MariaDBServer, tmp_path: Path) -> None:
    # The seed fixes the sequence of faults: three rounds of every kind.
    config = ChaosConfig(
        jobs=40,
        duration=45.0,
        seed=9,
        fault_pause=1.0,
        fault_rounds=3,
        groups=3,
        burst=4,
        step_seconds=0.1,
    )
    report = run_chaos(config, tmp_path / "chaos", "mariadb", server)

    assert report.problems() == []
    assert set(report.jobs_by_kind) == set(JOB_KINDS)
    assert sum(report.jobs_by_kind.values()) >= config.jobs
    assert set(report.faults_by_kind()) == set(FAULT_KINDS)
    # A second kill of a restarting storage landed after it connected to the database, before
    # it served (the injector polls for that moment; under load it may occasionally miss it).
    phases = report.recovery_phases
    assert phases.get("recovering", 0) + phases.get("recovered, not serving", 0) >= 1, phases
    assert all(f.detail == "storage stayed up" for f in report.faults if f.kind == "mariadb")
    # Commit and cleanup tasks ran at least once for each job that needed them.
    assert len(report.commit_runs) == report.jobs_by_kind["commit"]
    assert min(report.commit_runs.values()) >= 1
    assert len(report.cleanup_runs) == report.jobs_by_kind["cancel"]
    assert min(report.cleanup_runs.values()) >= 1


def _task_lane_depth(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith('orbweaver_storage_queue_depth{lane="task"}'):
            return float(line.split()[-1])
    raise AssertionError("no task-lane depth in the storage metrics")


def test_work_polled_by_a_dead_scheduler_is_offered_again_after_a_storage_restart(
    tmp_path: Path,
) -> None:
    """Found by the chaos run: storage restarted, later the scheduler SIGKILLed and restarted
    (no storage restart in between): the ready work the dead scheduler had polled is offered to
    the new one, and the job finishes."""
    config = tmp_path / "storage.toml"
    config.write_text(STORAGE_CONFIG)
    (tmp_path / "scheduler.toml").write_text(SCHEDULER_CONFIG)
    metrics = free_port()
    with ow.LocalCluster(
        workers=1,
        tasks_dir=TASKS_DIR,
        log_dir=tmp_path / "logs",
        storage_args=["--config", str(config), "--metrics-port", str(metrics)],
        scheduler_args=["--config", str(tmp_path / "scheduler.toml")],
        env={"CHAOS_TEST_MARKERS": str(tmp_path)},
    ) as cluster:
        client = cluster.client()
        g = ow.TaskGraph()
        g.add(ct.step)
        assert client.submit(g, [1]).result(timeout=60) == [ct.step_value(1)]
        # The scheduler keeps polling the restarted storage under its earlier registration.
        cluster.kill("storage")
        cluster.restart("storage")
        cluster.kill("worker")  # nobody takes the work: the scheduler holds it
        job = client.submit(g, [2])
        wait_until(lambda: _task_lane_depth(metrics) == 0, timeout=30, what="the poll")
        cluster.kill("scheduler")
        cluster.restart("scheduler")
        cluster.restart("worker")
        assert job.result(timeout=30) == [ct.step_value(2)]
