"""Resource-group fairness on a real cluster: one executor, so the run order is the order the
scheduler handed tasks out. Group A floods the cluster with many jobs before group B submits
one small job. The default policy (round robin across groups, then across each group's jobs)
gives B every other slot; the reference policy (round robin across jobs only) gives B one slot
per active job, so B waits behind A."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import orbweaver as ow

sys.path.insert(0, str(Path(__file__).resolve().parent / "tasks"))
import e2e_tasks as t

A_JOBS, A_TASKS, B_TASKS = 16, 4, 4


def positions(log: Path, group: str) -> list[int]:
    return [i for i, label in enumerate(log.read_text().split()) if label.startswith(group)]


@pytest.mark.parametrize("policy", ["group_round_robin", "job_round_robin"])
def test_a_small_group_is_not_starved_by_a_big_one(
    policy: str,
    sqlite_url: str,
    tmp_path: Path,
    markers: Path,
    cluster_factory: Callable[..., ow.LocalCluster],
) -> None:
    # A dispatch queue of 2: the scheduler's placement decides nearly every slot; and every
    # slot, with no first task taken straight from storage by the idle execution manager (that
    # one would not be the scheduler's order).
    settings = f'policy = "{policy}"\ndispatch_queue_capacity = 2\n'
    with cluster_factory(
        sqlite_url,
        tmp_path,
        workers=1,
        scheduler_settings=settings,
        worker_args=["--no-take-tasks"],
    ) as cluster:
        client = cluster.client()
        group_a = client.add_resource_group("a", "pw-a")
        group_b = client.add_resource_group("b", "pw-b")
        big = ow.TaskGraph()
        small = ow.TaskGraph()
        for _ in range(A_TASKS):
            big.add(t.log_run)
        for _ in range(B_TASKS):
            small.add(t.log_run)
        a_jobs = client.submit_many(  # one batch: A's jobs arrive together
            big,
            [[f"A{j}.{i}" for i in range(A_TASKS)] for j in range(A_JOBS)],
            resource_group=group_a,
        )
        b_job = client.submit(small, [f"B.{i}" for i in range(B_TASKS)], resource_group=group_b)
        assert client.gather([*a_jobs, b_job], timeout=120)
    log = markers / "run-order.log"
    total = A_JOBS * A_TASKS + B_TASKS
    b = positions(log, "B")
    assert len(positions(log, "A")) + len(b) == total and len(b) == B_TASKS
    if policy == "group_round_robin":
        # Once B's job arrived it got every other slot, and was done long before A half-way.
        gaps = [later - earlier for earlier, later in itertools.pairwise(b)]
        assert gaps == [2] * (B_TASKS - 1), b
        assert b[-1] < total // 3, b
    else:
        # B's job waits for one of A's 16 active jobs to finish: A's round robin over its jobs
        # finishes them all near the end, so B runs last.
        assert b[0] > total // 2, b
