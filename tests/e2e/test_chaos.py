"""Fault tolerance: SIGKILL the storage service, the scheduler, the execution manager (with its
executors) or single executors in the middle of a run; every job must still end correctly, with
the right outputs, nothing lost and the commit published exactly once."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import orbweaver as ow
from support.procs import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent / "tasks"))
import e2e_tasks as t

CHAINS, LENGTH = 8, 12


def chains_graph() -> ow.TaskGraph:
    """CHAINS independent chains of LENGTH slow increments, published by a commit task."""
    g = ow.TaskGraph(commit=t.publish)
    for _ in range(CHAINS):
        h = g.add(t.sturdy_inc)
        for _ in range(LENGTH - 1):
            h = g.add(t.sturdy_inc, h)
    return g


def run_with_fault(
    cluster: ow.LocalCluster,
    markers: Path,
    fault: Callable[[ow.LocalCluster], None],
    min_done: int = 15,
) -> None:
    client = cluster.client()
    job = client.submit(chains_graph(), list(range(CHAINS)))
    wait_until(lambda: job.progress().succeeded >= min_done, timeout=60, what="progress")
    assert job.state == ow.JobState.RUNNING, "the fault must hit a running job"
    fault(cluster)
    expected = [i + LENGTH for i in range(CHAINS)]
    assert job.result(timeout=180) == expected
    assert job.state == ow.JobState.SUCCEEDED
    assert (markers / f"commit-{job.id}").read_text() == repr(expected)
    runs = (markers / f"commit-{job.id}.runs").read_text().splitlines()
    assert runs == ["run"], "the commit task ran more than once"
    # The cluster keeps working after the fault.
    g = ow.TaskGraph()
    g.add(t.inc)
    assert client.submit(g, [1]).result(timeout=60) == [2]


def restart(name: str) -> Callable[[ow.LocalCluster], None]:
    def fault(cluster: ow.LocalCluster) -> None:
        cluster.kill(name)  # type: ignore[arg-type]
        cluster.restart(name)  # type: ignore[arg-type]

    return fault


def test_storage_killed_mid_run(cluster: ow.LocalCluster, markers: Path) -> None:
    run_with_fault(cluster, markers, restart("storage"))


def test_scheduler_killed_mid_run(cluster: ow.LocalCluster, markers: Path) -> None:
    run_with_fault(cluster, markers, restart("scheduler"))


def test_worker_killed_mid_run(cluster: ow.LocalCluster, markers: Path) -> None:
    run_with_fault(cluster, markers, restart("worker"))


def test_executors_killed_mid_run(cluster: ow.LocalCluster, markers: Path) -> None:
    def kill_executors(c: ow.LocalCluster) -> None:
        children = psutil.Process(c.pid("worker")).children()
        assert children, "the worker has no executor processes"
        for child in children:
            child.send_signal(signal.SIGKILL)

    run_with_fault(cluster, markers, kill_executors)


def test_storage_killed_while_worker_is_down(cluster: ow.LocalCluster, markers: Path) -> None:
    def fault(c: ow.LocalCluster) -> None:
        c.kill("worker")
        c.kill("storage")
        c.restart("storage")
        c.restart("worker")

    run_with_fault(cluster, markers, fault)


@pytest.mark.slow
def test_everything_killed_mid_run(cluster: ow.LocalCluster, markers: Path) -> None:
    def fault(c: ow.LocalCluster) -> None:
        for name in ("worker", "scheduler", "storage"):
            c.kill(name)  # type: ignore[arg-type]
        for name in ("storage", "scheduler", "worker"):
            c.restart(name)  # type: ignore[arg-type]

    run_with_fault(cluster, markers, fault)


def test_storage_killed_during_commit_keeps_outputs(
    cluster: ow.LocalCluster, markers: Path
) -> None:
    """A job killed while CommitReady keeps its persisted outputs; the commit (idempotent by
    contract) may run again and the job still succeeds with the same outputs."""
    g = ow.TaskGraph(commit=t.slow_publish)
    g.add(t.inc)
    job = cluster.client().submit(g, [41])
    wait_until(lambda: job.state == ow.JobState.COMMIT_READY, timeout=60, what="commit ready")
    restart("storage")(cluster)
    assert job.result(timeout=120) == [42]
    assert (markers / f"commit-{job.id}").read_text() == "[42]"
