"""`ow.as_completed` (asyncio) and `Client.as_completed` (sync) against real clusters: jobs come
out in the order they end (the test decides it by opening gates), failed and cancelled ones
too, a timeout names the unfinished jobs, jobs under several credentials are all watched."""

from __future__ import annotations

import asyncio
import contextlib

import client_tasks as t
import pytest
from client_support import Gates, Runner

import orbweaver as ow


def gated_graph() -> ow.TaskGraph:
    """gated(x, gate) -> inc: [x + 1] once the test opens `gate`."""
    g = ow.TaskGraph()
    g.add(t.inc, g.add(t.gated))
    return g


def failing_graph() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(t.always_fail)
    return g


def test_jobs_come_out_in_the_order_they_end(
    cluster: ow.LocalCluster, gates: Gates, run: Runner
) -> None:
    async def scenario() -> None:
        async with cluster.async_client() as client:
            failing = await client.submit(failing_graph(), [1])
            assert await failing.wait(timeout=60) == ow.JobState.FAILED
            a, b, c = [await client.submit(gated_graph(), [i, f"order-{i}"]) for i in range(3)]
            cancelled = await client.submit(gated_graph(), [9, "never"], start=False)
            await cancelled.cancel()
            # b is given twice: it comes out twice.
            completed = ow.as_completed([a, b, c, failing, cancelled, b])
            # The jobs that had ended already come first, in the order given.
            assert [await anext(completed), await anext(completed)] == [failing, cancelled]
            gates.open("order-1")
            assert [await anext(completed), await anext(completed)] == [b, b]
            assert await a.state() == await c.state() == ow.JobState.RUNNING
            gates.open("order-2")
            assert await anext(completed) is c
            assert await a.state() == ow.JobState.RUNNING
            gates.open("order-0")
            assert await anext(completed) is a
            with pytest.raises(StopAsyncIteration):
                await anext(completed)
            # Each result came with the wait.
            assert [await j.result() for j in (a, b, c)] == [[1], [2], [3]]
            with pytest.raises(ow.JobFailed, match="cannot handle 1"):
                await failing.result()
            with pytest.raises(ow.JobCancelled):
                await cancelled.result()
            # The client's method is the same iterator.
            assert [j async for j in client.as_completed([c])] == [c]

    run(scenario())


def test_a_timeout_names_the_unfinished_jobs(
    cluster: ow.LocalCluster, gates: Gates, run: Runner
) -> None:
    async def scenario() -> None:
        async with cluster.async_client() as client:
            slow = [await client.submit(gated_graph(), [i, f"slow-{i}"]) for i in range(2)]
            quick = await client.submit(gated_graph(), [7, "quick"])
            ready = await client.submit(gated_graph(), [8, "unused"], start=False)
            gates.open("quick")
            seen = []
            with pytest.raises(ow.JobTimeout) as timed_out:
                async for job in ow.as_completed([*slow, quick, ready], timeout=2.0):
                    seen.append(job)
            assert seen == [quick]
            assert timed_out.value.unfinished == {
                slow[0].id: "RUNNING",
                slow[1].id: "RUNNING",
                ready.id: "READY",
            }
            assert timed_out.value.job_id == slow[0].id
            assert "3 jobs still unfinished after 2 s" in str(timed_out.value)
            assert isinstance(timed_out.value, TimeoutError)
            gates.open("slow-0", "slow-1")
            assert await client.gather(slow, timeout=60) == [[1], [2]]

    run(scenario())


def test_jobs_of_several_clients_and_credentials_are_all_watched(
    cluster: ow.LocalCluster, gates: Gates, run: Runner
) -> None:
    async def scenario() -> None:
        async with cluster.async_client() as operator:
            await operator.add_resource_group("left", "left-pw")
            await operator.add_resource_group("right", "right-pw")
        async with (
            cluster.async_client(operator=False, resource_group="left", password="left-pw") as left,
            cluster.async_client(
                operator=False, resource_group="right", password="right-pw"
            ) as right,
        ):
            on_left = await left.submit(gated_graph(), [1, "left"])
            on_right = await right.submit(gated_graph(), [2, "right"])
            completed = ow.as_completed([on_left, on_right])
            gates.open("right")
            assert await anext(completed) is on_right
            gates.open("left")
            assert await anext(completed) is on_left
            assert [await on_left.result(), await on_right.result()] == [[2], [3]]

    run(scenario())


def test_leaving_early_cancels_the_waits_and_the_client_goes_on(
    cluster: ow.LocalCluster, gates: Gates, run: Runner
) -> None:
    async def scenario() -> None:
        async with cluster.async_client() as client:
            first = await client.submit(gated_graph(), [1, "early"])
            second = await client.submit(gated_graph(), [2, "late"])
            gates.open("early")
            before = asyncio.all_tasks()
            async with contextlib.aclosing(ow.as_completed([first, second])) as completed:
                async for job in completed:
                    assert job is first
                    break
            # Nothing of the iteration is left running.
            assert asyncio.all_tasks() == before
            gates.open("late")
            assert await second.result(timeout=60) == [3]

    run(scenario())


def test_the_sync_client_yields_jobs_as_they_end(cluster: ow.LocalCluster, gates: Gates) -> None:
    client = cluster.client()
    a, b = [client.submit(gated_graph(), [i, f"sync-{i}"]) for i in range(2)]
    completed = client.as_completed([a, b])
    gates.open("sync-1")
    assert next(completed) is b
    assert a.state == ow.JobState.RUNNING
    gates.open("sync-0")
    assert next(completed) is a
    with pytest.raises(StopIteration):
        next(completed)
    assert [a.result(), b.result()] == [[1], [2]]
    # A timeout names what is unfinished.
    slow = client.submit(gated_graph(), [5, "sync-slow"])
    with pytest.raises(ow.JobTimeout, match=f"job {slow.id} still RUNNING after 0.5 s"):
        list(client.as_completed([slow], timeout=0.5))
    gates.open("sync-slow")
    assert [j.result() for j in client.as_completed([slow])] == [[6]]


def test_the_sync_client_takes_turns_between_credentials(
    cluster: ow.LocalCluster, gates: Gates
) -> None:
    with cluster.new_client() as operator:
        left = operator.add_resource_group("sync-left", "left-pw")
        right = operator.add_resource_group("sync-right", "right-pw")
    with cluster.new_client(operator=False, resource_group=left) as client:
        on_left = client.submit(gated_graph(), [1, "turn-left"])
        on_right = client.submit(gated_graph(), [2, "turn-right"], resource_group=right)
        completed = client.as_completed([on_left, on_right])
        gates.open("turn-right")
        assert next(completed) is on_right
        gates.open("turn-left")
        assert next(completed) is on_left
        assert [on_left.result(), on_right.result()] == [[2], [3]]


def test_more_jobs_than_one_wait_names_are_all_watched(
    cluster: ow.LocalCluster, run: Runner
) -> None:
    """One WaitJobs call names at most 10,000 jobs: a job beyond them that ends first still
    comes out first, from the sync iterator (turns) and the async one (concurrent waits)."""
    client = cluster.client()
    g = ow.TaskGraph()
    g.add(t.inc)
    jobs = client.submit_many(g, [[i] for i in range(10_001)], start=False)
    completed = client.as_completed(jobs)
    jobs[-1].cancel()
    assert next(completed) is jobs[-1]
    completed.close()

    async def scenario() -> None:
        async with cluster.async_client() as aclient:
            handles = [ow.AsyncJob(aclient, j.id) for j in jobs]
            async with contextlib.aclosing(ow.as_completed(handles)) as waiting:
                assert await anext(waiting) is handles[-1]  # already ended
                await handles[-2].cancel()  # among the first 10,000
                assert await anext(waiting) is handles[-2]

    run(scenario())
