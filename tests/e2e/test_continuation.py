"""Tasks that skip the scheduler, with real processes: a report's reply carries the tasks its
outcomes made ready, registered for the execution manager that reported (continuation), and an
idle EM takes the next ready task from storage directly (`TakeReadyTasks`), while nothing else
waits to be scheduled. Outputs stay right; turned off, every task goes through the scheduler; an
EM SIGKILLed while it runs a continued or a taken task loses nothing."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

import orbweaver as ow
from support.mariadb_server import free_port
from support.procs import wait_until

TASKS = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(TASKS))
import e2e_tasks as t  # noqa: E402

CHAIN = 12


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in the metrics on port {port}")


def chain() -> ow.TaskGraph:
    g = ow.TaskGraph()
    node = g.add(t.inc)
    for _ in range(CHAIN - 1):
        node = g.add(t.inc, node)
    return g


def diamond() -> ow.TaskGraph:
    g = ow.TaskGraph()
    a = g.add(t.inc)
    g.add(t.add, g.add(t.double, a), g.add(t.inc, a))
    return g


def start(
    factory: Callable[..., ow.LocalCluster], db_url: str, tmp_path: Path, *worker_args: str
) -> tuple[ow.LocalCluster, int]:
    """A cluster whose storage serves its metrics on the port returned."""
    port = free_port()
    return factory(db_url, tmp_path, worker_args=list(worker_args), metrics_port=port), port


@pytest.mark.parametrize("continued", [True, False], ids=["continued", "turned-off"])
def test_children_run_on_the_em_that_reported_their_parents(
    db_url: str,
    tmp_path: Path,
    cluster_factory: Callable[..., ow.LocalCluster],
    continued: bool,
) -> None:
    args = [] if continued else ["--no-continue-tasks", "--no-take-tasks"]
    cluster, port = start(cluster_factory, db_url, tmp_path, *args)
    with cluster:
        client = cluster.client()
        # One job at a time: nothing else ever waits, so every child may be continued.
        for x in range(5):
            assert client.submit(chain(), [x]).result(timeout=60) == [x + CHAIN]
        jobs = [client.submit(diamond(), [x]) for x in range(40)]
        expected = [[2 * (x + 1) + x + 2] for x in range(40)]
        assert [job.result(timeout=60) for job in jobs] == expected
        registered = metric(port, "orbweaver_storage_task_instances_registered_total")
        through_reports = metric(port, "orbweaver_storage_task_instances_continued_total")
        taken = metric(port, "orbweaver_storage_task_instances_taken_total")
    assert registered == 5 * CHAIN + 40 * 4
    if continued:
        # At least the chains' children went that way (each had nothing to wait behind), and
        # some first task found the EM idle and asking.
        assert through_reports >= 5 * (CHAIN - 1)
        assert taken >= 1
    else:
        assert through_reports == 0
        assert taken == 0


def kill_the_worker_and_expect(cluster: ow.LocalCluster, job: ow.Job, outputs: list[int]) -> None:
    """SIGKILL the worker while `job`'s task runs there, start it again: storage declares the
    dead EM's instance lost and offers the task again, and the job ends right."""
    cluster.kill("worker")
    cluster.restart("worker")
    assert job.result(timeout=120) == outputs
    assert job.state == ow.JobState.SUCCEEDED


def test_an_em_killed_while_it_runs_a_continued_task_loses_nothing(
    db_url: str, tmp_path: Path, cluster_factory: Callable[..., ow.LocalCluster]
) -> None:
    cluster, port = start(cluster_factory, db_url, tmp_path)
    with cluster:
        client = cluster.client()
        g = ow.TaskGraph()
        g.add(t.inc, g.add(t.nap_inc, g.add(t.inc)))
        job = client.submit(g, [1])
        # The sleeping task was registered in the reply to its parent's report.
        wait_until(
            lambda: (
                metric(port, "orbweaver_storage_task_instances_continued_total") >= 1
                and job.progress().running == 1
            ),
            timeout=60,
            what="the continued task runs",
        )
        kill_the_worker_and_expect(cluster, job, [4])


def test_an_em_killed_while_it_runs_a_taken_task_loses_nothing(
    db_url: str, tmp_path: Path, cluster_factory: Callable[..., ow.LocalCluster]
) -> None:
    cluster, port = start(cluster_factory, db_url, tmp_path)
    with cluster:
        client = cluster.client()
        g = ow.TaskGraph()
        g.add(t.nap_inc)
        taken = "orbweaver_storage_task_instances_taken_total"
        for attempt in range(10):
            before = metric(port, taken)
            job = client.submit(g, [attempt])
            wait_until(lambda j=job: j.progress().running == 1, timeout=60, what="the task runs")
            if metric(port, taken) > before:
                break  # the idle EM took it straight from storage
            assert job.result(timeout=60) == [attempt + 1]  # the scheduler was first: again
        else:
            raise AssertionError("the idle EM never took a task from storage in 10 jobs")
        kill_the_worker_and_expect(cluster, job, [attempt + 1])
