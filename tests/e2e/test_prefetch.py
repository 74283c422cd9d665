"""Adaptive prefetch with real processes: an execution manager does not hoard slow tasks. One job
of many slow tasks is submitted while two workers (the cluster's own, two executors, and an
extra `orbweaver worker` with one) are polling; both of them run some of its tasks."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import orbweaver as ow
from support.procs import ServiceProcess

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(TASKS_DIR))
import placement_tasks as pt  # noqa: E402

pytestmark = pytest.mark.timeout(240)

TASKS = 24
HOLD_S = 0.2


def test_slow_tasks_of_one_job_spread_over_two_workers(
    sqlite_cluster: ow.LocalCluster,
    extra_workers: Callable[[ow.LocalCluster, int], list[ServiceProcess]],
) -> None:
    cluster = sqlite_cluster
    [extra] = extra_workers(cluster, 1)
    assert extra.popen is not None
    em_pids = {cluster.pid("worker"), extra.popen.pid}
    g = ow.TaskGraph()
    inputs: list[float | int] = []
    for x in range(TASKS):
        g.add(pt.where)
        inputs += [x, HOLD_S]
    # All tasks become ready at once: an EM that fetched as many as it may hold
    # (256 per executor) would take them all in its first poll.
    job = cluster.client().submit(g, inputs)
    outputs = job.result(timeout=180)
    assert outputs[0::2] == [3 * x for x in range(TASKS)]
    ran_on = Counter(outputs[1::2])
    assert set(ran_on) <= em_pids, f"a task ran somewhere unexpected: {ran_on}"
    assert set(ran_on) == em_pids, f"one execution manager ran every task: {ran_on}"
