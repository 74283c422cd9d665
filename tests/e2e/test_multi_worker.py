"""Several workers on several resource groups: a LocalCluster plus extra `orbweaver worker`
processes (each its own execution manager) serve jobs of three resource groups; every job gets
the right outputs, the work really spreads over the EMs, and SIGKILLing one extra worker in the
middle of the run loses nothing."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import orbweaver as ow
from orbweaver.client import Job
from support.procs import ServiceProcess, wait_until

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(TASKS_DIR))
import placement_tasks as pt  # noqa: E402

pytestmark = pytest.mark.timeout(240)

GROUPS = ("alpha", "beta", "gamma")


def submit_jobs(
    cluster: ow.LocalCluster, jobs_per_group: int, tasks_per_job: int, hold: float
) -> list[tuple[Job, list[int]]]:
    client = cluster.client()
    groups = [client.add_resource_group(name, f"pw-{name}") for name in GROUPS]
    jobs = []
    x = 0
    for _ in range(jobs_per_group):
        for group in groups:
            g = ow.TaskGraph()
            inputs: list[float | int] = []
            xs = []
            for _ in range(tasks_per_job):
                g.add(pt.where)
                inputs += [x, hold]
                xs.append(x)
                x += 1
            jobs.append((client.submit(g, inputs, resource_group=group), xs))
    return jobs


def check_outputs(jobs: list[tuple[Job, list[int]]], timeout: float) -> set[int]:
    """Every job succeeded with 3*x per task; returns the EM pids that ran the tasks."""
    ems: set[int] = set()
    for job, xs in jobs:
        outputs = job.result(timeout=timeout)
        assert outputs[0::2] == [3 * x for x in xs], f"job {job.id}"
        ems.update(outputs[1::2])
        assert job.state == ow.JobState.SUCCEEDED
    return ems


def test_jobs_of_three_resource_groups_run_on_several_workers(
    cluster: ow.LocalCluster, extra_workers: Callable[[ow.LocalCluster, int], list[ServiceProcess]]
) -> None:
    extras = extra_workers(cluster, 2)
    em_pids = {cluster.pid("worker")} | {p.popen.pid for p in extras if p.popen is not None}
    jobs = submit_jobs(cluster, jobs_per_group=3, tasks_per_job=4, hold=0.3)
    used = check_outputs(jobs, timeout=120)
    assert used <= em_pids, "a task ran somewhere unexpected"
    assert used == em_pids, f"only {len(used)} of {len(em_pids)} execution managers ran tasks"


def test_a_worker_killed_mid_run_loses_nothing(
    sqlite_cluster: ow.LocalCluster,
    extra_workers: Callable[[ow.LocalCluster, int], list[ServiceProcess]],
    markers: Path,
) -> None:
    cluster = sqlite_cluster
    victim, survivor = extra_workers(cluster, 2)
    assert victim.popen is not None
    jobs = submit_jobs(cluster, jobs_per_group=2, tasks_per_job=6, hold=0.5)
    victim_pid = victim.popen.pid

    def victim_busy() -> bool:
        return any(m.name.startswith(f"started-{victim_pid}-") for m in markers.iterdir())

    wait_until(victim_busy, timeout=60, what="the victim worker to run a task")
    victim.kill()  # SIGKILL the worker and its executor (one process group)
    assert not victim.alive
    used = check_outputs(jobs, timeout=180)
    assert survivor.alive
    assert len(used) >= 2
    # The killed worker's executor did not survive it.
    executors = {
        int(m.name.split("-")[2])
        for m in markers.iterdir()
        if m.name.startswith(f"started-{victim_pid}-")
    }
    for pid in executors:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
