"""The chaos run, short: about 40 jobs of every kind from four resource groups while the fault
injector SIGKILLs the storage (once also during its recovery), the scheduler, workers and
executors and restarts MariaDB. Nothing is lost, nothing is stuck, nothing is wrong, and each
group sees exactly its own jobs. `benches/chaos.py` is the long run of the same engine
(`tests/support/chaos.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.chaos import FAULT_KINDS, JOB_KINDS, ChaosConfig, run_chaos
from support.mariadb_server import MariaDBServer, private_server

pytestmark = pytest.mark.mariadb


@pytest.fixture
def server() -> Iterator[MariaDBServer]:
    # A server of its own: the run kills and restarts it.
    with private_server() as srv:
        yield srv


def test_chaos_run(server: MariaDBServer, tmp_path: Path) -> None:
    config = ChaosConfig(
        jobs=40, duration=45.0, seed=9, fault_pause=1.0, groups=3, burst=4, step_seconds=0.1
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
