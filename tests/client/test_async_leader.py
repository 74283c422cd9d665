"""The asyncio client over several storage addresses: `AioLeaderChannel` follows the leader a
standby names, as the sync `LeaderChannel` does (real gRPC servers, one serving, others
refusing as standbys do), and an `AsyncClient` given both storages of a failover cluster keeps
working when the leader is killed while coroutines wait."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import client_tasks as t
import grpc
import pytest
from client_support import FakeStorage, Gates, Runner

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc_aio import AioLeaderChannel, make_aio_channel
from support.failover import FailoverCluster

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


async def session(channel: AioLeaderChannel) -> int:
    reply = await pb_grpc.SessionManagementServiceStub(channel).GetSession(pb.Void(), timeout=5)
    return int(reply.session_id)


def test_a_standby_sends_the_call_on_to_the_leader_it_names(
    storages: list[FakeStorage], run: Runner
) -> None:
    leader = FakeStorage(7)
    standby = FakeStorage(0, refusal=leader.address)
    storages += [leader, standby]

    async def scenario() -> None:
        async with make_aio_channel(f"{standby.address},{leader.address}") as channel:
            assert await session(channel) == 7  # one call: refused (nothing ran), sent on
            assert standby.servicer.calls == 0 and leader.servicer.calls == 1
            assert channel.target == leader.address

    run(scenario())


def test_a_named_leader_that_cannot_be_reached_does_not_loop_back(
    storages: list[FakeStorage], run: Runner
) -> None:
    leader = FakeStorage(9)
    standby = FakeStorage(0, refusal="unreachable.invalid:1")
    storages += [leader, standby]

    async def scenario() -> None:
        async with make_aio_channel(f"{standby.address},{leader.address}") as channel:
            for _ in range(5):
                try:
                    assert await session(channel) == 9
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
            else:
                raise AssertionError("never reached the leader")
            assert channel.target == leader.address

    run(scenario())


def test_an_address_that_is_down_is_skipped_by_the_client_retry(
    storages: list[FakeStorage], run: Runner
) -> None:
    leader = FakeStorage(3)
    storages.append(leader)
    down = FakeStorage(0)
    down.server.stop(0)  # nothing listens there any more

    async def scenario() -> None:
        async with make_aio_channel(f"{down.address},{leader.address}") as channel:
            with pytest.raises(grpc.RpcError):
                await session(channel)  # raised: the caller's retry policy decides
            assert await session(channel) == 3

    run(scenario())


def test_a_channel_serves_the_event_loop_of_its_first_call(
    storages: list[FakeStorage], run: Runner
) -> None:
    leader = FakeStorage(5)
    storages.append(leader)
    channel = make_aio_channel(leader.address)
    assert run(session(channel)) == 5
    with pytest.raises(RuntimeError, match="one client per event loop"):
        run(session(channel))


# -- failover: two storages on one MariaDB ------------------------------------------------------


@pytest.fixture
def failover(mariadb_url: str, tmp_path: Path, markers: Path) -> Iterator[FailoverCluster]:
    with FailoverCluster(
        mariadb_url,
        tmp_path / "cluster",
        TASKS_DIR,
        processes=3,
        env={"CLIENT_TEST_MARKERS": str(markers)},
    ) as cluster:
        yield cluster


def gated_graph() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(t.inc, g.add(t.gated))
    return g


@pytest.mark.timeout(300)
def test_coroutines_follow_the_leader_through_a_failover(
    failover: FailoverCluster, gates: Gates, run: Runner
) -> None:
    async def scenario() -> None:
        async with ow.AsyncClient(
            failover.address, operator_token=failover.operator_token, timeout=120
        ) as client:
            client.default_resource_group = await client.add_resource_group("async", "pw")
            jobs = [await client.submit(gated_graph(), [i, f"failover-{i}"]) for i in range(3)]
            results = [asyncio.create_task(job.result()) for job in jobs]
            completed = asyncio.create_task(
                asyncio.wait_for(_ids(ow.as_completed(jobs)), timeout=200)
            )
            for job in jobs:  # every gated task is running: the waits are in flight
                while (await job.progress()).running < 1:
                    await asyncio.sleep(0.05)
            assert failover.leader() == 0
            await asyncio.to_thread(failover.kill, 0)
            await asyncio.to_thread(failover.leader)  # the standby took over
            gates.open(*(f"failover-{i}" for i in range(3)))
            assert [await r for r in results] == [[1], [2], [3]]
            assert await completed == sorted(j.id for j in jobs)
            assert client._channel.target == failover.storages[1].address
            later = await client.submit(gated_graph(), [10, "failover-0"])
            assert await later.result(timeout=120) == [11]

    run(scenario(), timeout=240)


async def _ids(jobs: Any) -> list[int]:
    return sorted([job.id async for job in jobs])
