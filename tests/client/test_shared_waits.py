"""Coroutines awaiting results on one `AsyncClient` share their server-side waits: a few
WaitJobs calls (`any_terminal`) instead of one WaitJob per coroutine, each holding a storage
thread. Against a real cluster, behind a tap that shows every call the storage got."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import client_tasks as t
import pytest
from client_support import Gates, Runner, until

import orbweaver as ow
from orbweaver.async_client import AsyncJob, _SharedWaits
from support.taps import StorageTap


def gated_graph() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(t.inc, g.add(t.gated))
    return g


def inc_graph() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(t.inc)
    return g


@pytest.fixture
def tap(cluster: ow.LocalCluster) -> Iterator[StorageTap]:
    with StorageTap(cluster.address) as tap:
        yield tap


def client_via(tap: StorageTap, cluster: ow.LocalCluster) -> ow.AsyncClient:
    return ow.AsyncClient(
        tap.address,
        operator_token=cluster.operator_token,
        resource_group=cluster.resource_group,
        tasks_dir=cluster.tasks_dir,
    )


def in_flight(tap: StorageTap, method: str) -> int:
    return len(tap.of(method, lambda c: c.code is None))


def test_many_awaiting_coroutines_share_a_few_calls(
    cluster: ow.LocalCluster, tap: StorageTap, gates: Gates, run: Runner
) -> None:
    async def scenario() -> None:
        async with client_via(tap, cluster) as client:
            most_in_flight = 0

            async def one(i: int) -> list[int]:
                nonlocal most_in_flight
                job = await client.submit(gated_graph(), [i, f"shared-{i % 3}"])
                result = asyncio.ensure_future(job.result())
                await asyncio.sleep(0)
                most_in_flight = max(most_in_flight, in_flight(tap, "WaitJobs"))
                return await result

            runs = asyncio.gather(*(one(i) for i in range(60)))
            await until(lambda: tap.count("RegisterJob") == 60, "every submission")
            for gate in random.sample(["shared-0", "shared-1", "shared-2"], 3):
                gates.open(gate)
            assert await runs == [[i + 1] for i in range(60)]
            assert tap.count("WaitJob") == 0
            assert most_in_flight <= _SharedWaits.MAX_LANES
            assert tap.count("WaitJobs") < 60

    run(scenario())


def test_a_coroutine_that_stops_waiting_leaves_the_others_waiting(
    cluster: ow.LocalCluster, tap: StorageTap, gates: Gates, run: Runner
) -> None:
    async def scenario() -> None:
        async with client_via(tap, cluster) as client:
            job = await client.submit(gated_graph(), [1, "stay"])
            other = await client.submit(gated_graph(), [2, "stay"])
            staying = asyncio.create_task(job.result())
            leaving = asyncio.create_task(job.result())
            impatient = asyncio.create_task(other.result(timeout=0.3))
            await until(lambda: tap.count("WaitJobs") == 1, "the shared wait")
            leaving.cancel()
            with pytest.raises(ow.JobTimeout, match=f"job {other.id} still RUNNING"):
                await impatient
            # The call goes on for the coroutine still waiting.
            assert in_flight(tap, "WaitJobs") == 1
            gates.open("stay")
            assert await staying == [2]
            with pytest.raises(asyncio.CancelledError):
                await leaving
            assert await other.result(timeout=60) == [3]

    run(scenario())


def test_an_unknown_job_fails_alone(cluster: ow.LocalCluster, tap: StorageTap, run: Runner) -> None:
    async def scenario() -> None:
        async with client_via(tap, cluster) as client:
            known = [await client.submit(inc_graph(), [i], start=False) for i in range(3)]
            unknown = AsyncJob(client, 10**9)
            results = [asyncio.ensure_future(j.result()) for j in [*known, unknown]]
            for job in known:
                await job.start()
            with pytest.raises(ow.JobNotFound):
                await results[-1]
            assert [await r for r in results[:-1]] == [[1], [2], [3]]

    run(scenario())


def test_jobs_awaited_while_every_lane_waits_on_long_jobs_are_taken_in(
    cluster: ow.LocalCluster, tap: StorageTap, run: Runner
) -> None:
    """Lanes full of jobs that do not end (READY, never started): a job awaited afterwards
    still gets its result at once, not when a lane's long wait runs out (20 s)."""

    async def scenario() -> None:
        async with client_via(tap, cluster) as client:
            stuck, waiters = [], []
            for i in range(_SharedWaits.MAX_LANES + 2):
                job = await client.submit(inc_graph(), [i], start=False)
                stuck.append(job)
                waiters.append(asyncio.ensure_future(job.result()))
                await asyncio.sleep(0.05)  # each in a turn of its own: a lane each, up to the cap
            assert in_flight(tap, "WaitJobs") <= _SharedWaits.MAX_LANES
            quick = await client.submit(inc_graph(), [41])
            assert await asyncio.wait_for(quick.result(), 10) == [42]
            # Their waits end with them (a cancelled call would hold a storage thread until
            # its wait runs out).
            for job in stuck:
                await job.cancel()
            for waiter in waiters:
                with pytest.raises(ow.JobCancelled):
                    await waiter
            await until(lambda: in_flight(tap, "WaitJobs") == 0, "the lanes to end")

    run(scenario())


def test_a_wait_with_a_timeout_asks_the_storage_for_no_longer(
    cluster: ow.LocalCluster, tap: StorageTap, run: Runner
) -> None:
    async def scenario() -> None:
        async with client_via(tap, cluster) as client:
            job = await client.submit(inc_graph(), [1], start=False)
            assert await job.wait(timeout=0.5) == ow.JobState.READY
            with pytest.raises(ow.JobTimeout, match=r"still READY after 0\.5 s"):
                await job.result(timeout=0.5)
            waits = tap.of("WaitJobs")
            assert len(waits) == 2 and all(0 < w.request.timeout_ms <= 500 for w in waits)

    run(scenario())
