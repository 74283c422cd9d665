"""`AsyncClient` against real clusters (SQLite and MariaDB): the sync client's surface as
coroutines, the same errors, idempotent retried submissions, cancellation of a coroutine that
awaits a result, and coroutines waiting through a storage restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import client_tasks as t
import grpc
import pytest
from client_support import Gates, Runner, collect, until

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from support.procs import StorageProcess
from support.taps import StorageTap


def add_graph() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(t.add)
    return g


def inc_graph() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(t.inc)
    return g


def failing_graph() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(t.always_fail)
    return g


def gated_graph() -> ow.TaskGraph:
    """gated(x, gate) -> inc: [x + 1] once the test opens `gate`."""
    g = ow.TaskGraph()
    g.add(t.inc, g.add(t.gated))
    return g


def test_the_async_client_has_the_sync_clients_surface(
    cluster: ow.LocalCluster, run: Runner
) -> None:
    async def scenario() -> None:
        async with cluster.async_client() as client:
            # One job: its result, state, wait, outputs, progress.
            job = await client.submit(add_graph(), [2, 3])
            assert await job.result(timeout=60) == [5]
            assert await job.state() == ow.JobState.SUCCEEDED
            assert await job.wait() == ow.JobState.SUCCEEDED
            assert await job.outputs() == [5]
            assert await job.error() is None
            progress = await job.progress()
            assert progress.state == ow.JobState.SUCCEEDED
            assert progress.succeeded == progress.total == 1
            # Started later; a timeout while it waits.
            later = await client.submit(inc_graph(), [1], start=False)
            assert await later.state() == ow.JobState.READY
            assert await later.wait(timeout=0.2) == ow.JobState.READY
            with pytest.raises(ow.JobTimeout, match=f"job {later.id} still READY"):
                await later.result(timeout=0.2)
            assert await later.start() == ow.JobState.RUNNING
            assert await later.result(timeout=60) == [2]
            # Failed and cancelled jobs raise what the sync client raises.
            failing = await client.submit(failing_graph(), [7])
            with pytest.raises(ow.JobFailed, match="cannot handle 7") as failed:
                await failing.result(timeout=60)
            assert failed.value.job_id == failing.id
            assert "ValueError" in (await failing.error() or "")
            cancelled = await client.submit(inc_graph(), [1], start=False)
            assert await cancelled.cancel() == ow.JobState.CANCELLED
            with pytest.raises(ow.JobCancelled):
                await cancelled.result()
            with pytest.raises(ow.FailedPrecondition):
                await job.cancel()  # finished
            # Many jobs in batches, gathered.
            many = await client.submit_many(inc_graph(), [[i] for i in range(50)], batch_size=20)
            assert await client.gather(many, timeout=60) == [[i + 1] for i in range(50)]
            # Handles and listings.
            again = await client.get_job(job.id, add_graph())
            assert await again.result() == [5]
            with pytest.raises(ow.JobNotFound):
                await client.get_job(10**9)
            listed = {info.id: info for info in await client.jobs(limit=1000)}
            assert {job.id, failing.id, cancelled.id, *(j.id for j in many)} <= set(listed)
            assert listed[failing.id].state == ow.JobState.FAILED
            assert "cannot handle 7" in (listed[failing.id].error or "")
            assert [i.id for i in await client.jobs([ow.JobState.FAILED])] == [failing.id]
            # Refused before anything is sent, as by the sync client.
            with pytest.raises(ow.InvalidInput):
                await client.submit(inc_graph(), ["seven"])
            with pytest.raises(ow.InvalidInput, match="job 1"):
                await client.submit_many(inc_graph(), [[1], ["two"]])
            with pytest.raises(ow.InvalidArgument, match="batch_size"):
                await client.submit_many(inc_graph(), [[1]], batch_size=0)

    run(scenario())


def test_resource_groups_and_their_credentials(cluster: ow.LocalCluster, run: Runner) -> None:
    async def scenario() -> None:
        async with cluster.async_client() as operator:
            team = await operator.add_resource_group("async-team", "team-pw")
            other = await operator.add_resource_group("async-other", "other-pw")
            names = {g.name for g in await operator.resource_groups()}
            assert {"async-team", "async-other"} <= names
            assert (await operator.resource_group("async-team")).id == team.id
            with pytest.raises(ow.AlreadyExists):
                await operator.add_resource_group("async-team", "again")
            theirs = await operator.submit(inc_graph(), [1], resource_group=other)
        # A group's client, given the group by name: looked up by its first call.
        async with cluster.async_client(
            operator=False, resource_group="async-team", password="team-pw"
        ) as client:
            assert client.default_resource_group is None
            job = await client.submit(inc_graph(), [41])
            assert client.default_resource_group == team
            assert await job.result(timeout=60) == [42]
            assert [i.id for i in await client.jobs()] == [job.id]  # its group's jobs only
            with pytest.raises(ow.JobNotFound):
                await client.get_job(theirs.id)
            assert (await client.resource_group("async-team", "team-pw")).id == team.id
        async with cluster.async_client(
            operator=False, resource_group="async-team", password="wrong"
        ) as intruder:
            with pytest.raises(ow.Unauthenticated):
                await intruder.resolve_default_resource_group()
            with pytest.raises(ow.Unauthenticated):
                await intruder.submit(inc_graph(), [1])
        async with cluster.async_client(operator=False) as nobody:
            with pytest.raises(ow.InvalidArgument, match="no resource group"):
                await nobody.submit(inc_graph(), [1])

    run(scenario())


def test_cancelling_a_coroutine_that_awaits_a_result_cancels_its_call(
    cluster: ow.LocalCluster, gates: Gates, run: Runner
) -> None:
    with StorageTap(cluster.address) as tap:

        async def scenario() -> None:
            async with cluster.async_client() as direct:
                group = await direct.resolve_default_resource_group()
            async with ow.AsyncClient(
                tap.address, operator_token=cluster.operator_token, resource_group=group
            ) as client:
                job = await client.submit(gated_graph(), [1, "cancel"])
                waiter = asyncio.create_task(job.result())
                await until(lambda: tap.count("WaitJobs") == 1, "the wait to reach the storage")
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
                [wait] = tap.of("WaitJobs")
                assert list(wait.request.job_ids) == [job.id]
                assert await asyncio.to_thread(wait.done.wait, 30)
                assert wait.code == grpc.StatusCode.CANCELLED
                # The client goes on; the job was not touched.
                assert await job.state() == ow.JobState.RUNNING
                # A deadline around an await cancels it the same way.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(job.result(), 0.5)
                gates.open("cancel")
                assert await job.result(timeout=60) == [2]

        run(scenario())


def test_coroutines_waiting_through_a_storage_restart_get_their_results(
    cluster: ow.LocalCluster, gates: Gates, run: Runner
) -> None:
    async def scenario() -> None:
        async with cluster.async_client() as client:
            jobs = [await client.submit(gated_graph(), [i, f"restart-{i}"]) for i in range(3)]
            results = [asyncio.create_task(job.result()) for job in jobs]
            gathered = asyncio.create_task(client.gather(jobs))
            completed = asyncio.create_task(collect(ow.as_completed(jobs)))
            for job in jobs:  # every gated task is running: the waits are in flight
                while (await job.progress()).running < 1:
                    await asyncio.sleep(0.05)
            await asyncio.to_thread(cluster.kill, "storage")
            await asyncio.to_thread(cluster.restart, "storage")
            gates.open(*(f"restart-{i}" for i in range(3)))
            assert [await r for r in results] == [[1], [2], [3]]
            assert await gathered == [[1], [2], [3]]
            assert sorted(j.id for j in await completed) == sorted(j.id for j in jobs)
            # And new work goes through.
            assert await (await client.submit(inc_graph(), [9])).result(timeout=60) == [10]

    run(scenario(), timeout=240)


# -- retries and idempotency, through a tap in front of a storage process ----------------------


@pytest.fixture
def tap(storage: StorageProcess) -> Iterator[StorageTap]:
    with StorageTap(storage.address) as tap:
        yield tap


LOST = grpc.StatusCode.UNAVAILABLE


def test_a_submission_whose_reply_is_lost_creates_one_job(tap: StorageTap, run: Runner) -> None:
    async def scenario() -> None:
        async with ow.AsyncClient(tap.address) as client:
            client.default_resource_group = await client.add_resource_group("retries", b"pw")
            tap.lose_reply_next("RegisterJob", LOST)
            job = await client.submit(inc_graph(), [1], start=False)
            first, retry = tap.of("RegisterJob")
            assert first.code == LOST and retry.code == grpc.StatusCode.OK
            assert first.request.idempotency_key == retry.request.idempotency_key != ""
            assert first.reply is not None, "the first call did not reach storage"
            assert job.id == pb.RegisterJobReply.FromString(first.reply).job_id
            assert [i.id for i in await client.jobs()] == [job.id]
            tap.lose_reply_next("RegisterJobs", LOST, LOST)
            many = await client.submit_many(inc_graph(), [[i] for i in range(20)], start=False)
            calls = tap.of("RegisterJobs")
            assert [c.code for c in calls] == [LOST, LOST, grpc.StatusCode.OK]
            keys = [[j.idempotency_key for j in c.request.jobs] for c in calls]
            assert keys[0] == keys[1] == keys[2] and len(set(keys[0])) == 20
            listed = sorted(i.id for i in await client.jobs())
            assert listed == sorted([job.id, *(j.id for j in many)])
            # A wait whose reply is lost is simply made again.
            assert await job.cancel() == ow.JobState.CANCELLED
            tap.lose_reply_next("WaitJobs", LOST)
            assert await job.wait() == ow.JobState.CANCELLED
            assert [c.code for c in tap.of("WaitJobs")] == [LOST, grpc.StatusCode.OK]

    run(scenario())


def test_a_wrong_address_fails_after_connect_timeout(run: Runner) -> None:
    async def scenario() -> None:
        async with ow.AsyncClient("127.0.0.1:1", connect_timeout=0.5) as c:
            with pytest.raises(ow.Unavailable, match=r"cannot reach .* 127\.0\.0\.1:1"):
                await c.resource_groups()

    run(scenario())
