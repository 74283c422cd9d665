"""The plain loop `[job.result() for job in jobs]` collects the results of every ended job of the
client in one call, not one call per job, and stays right when some jobs have not ended or
cannot be found."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import client_tasks as t
import pytest

import orbweaver as ow
from orbweaver import errors
from orbweaver._client_core import Call
from support.procs import wait_until


class CountingClient:
    """Counts the calls a `Client` makes, by method."""

    def __init__(self, client: ow.Client) -> None:
        self.calls: Counter[str] = Counter()
        perform = client._perform

        def counted(call: Call) -> Any:
            self.calls[call.method] += 1
            return perform(call)

        client._perform = counted  # type: ignore[method-assign]


def graph() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(t.inc)
    return g


def test_the_plain_loop_collects_ended_results_together(cluster: ow.LocalCluster) -> None:
    with cluster.client() as client:
        jobs = [client.submit(graph(), [x]) for x in range(40)]
        wait_until(lambda: all(j.state.is_terminal for j in jobs), timeout=60, what="the jobs")
        time.sleep(0.05)  # past the collection interval
        counter = CountingClient(client)
        assert [job.result(timeout=60) for job in jobs] == [[x + 1] for x in range(40)]
        waits = counter.calls["WaitJobs"] + counter.calls["WaitJob"]
        assert waits <= 2, counter.calls  # not 40


def test_jobs_that_have_not_ended_are_waited_for_each(cluster: ow.LocalCluster, gates: Any) -> None:
    with cluster.client() as client:
        held = client.submit(graph_gated(), [1, "collect-gate"])
        quick = [client.submit(graph(), [x]) for x in range(5)]
        assert [job.result(timeout=60) for job in quick] == [[x + 1] for x in range(5)]
        gates.open("collect-gate")
        assert held.result(timeout=60) == [1]


def graph_gated() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(t.gated)
    return g


def test_a_peer_that_cannot_be_found_does_not_fail_a_result(cluster: ow.LocalCluster) -> None:
    with cluster.client() as client:
        # A handle whose job is gone (deleted by the retention sweep since it was looked up).
        ghost = client._new_job(987_654_321, None, None)
        job = client.submit(graph(), [7])
        time.sleep(0.05)
        assert job.result(timeout=60) == [8]
        with pytest.raises(errors.JobNotFound):
            ghost.result(timeout=5)
