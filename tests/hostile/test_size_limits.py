"""Every size is bounded after decompression, and a value that could never be stored or
delivered fails its job with the reason instead of waiting forever (a real storage process with
small limits, raw gRPC)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import msgpack
import psutil
import pytest

from orbweaver import _core
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._taskid import to_proto
from orbweaver.states import JobState
from support import graphs
from support.driver import PASSWORD, Driver
from support.graphs import compressed, int_inputs
from support.procs import FAST_CONFIG, StorageProcess, wait_until

LIMITS = """
max_message_bytes = 1048576
max_graph_bytes = 65536
max_input_bytes = 900000
max_tasks = 50
max_task_output_bytes = 400000
max_job_bytes = 2000000
visibility_timeout = 1.0
cached_outputs_bytes = 1000
"""

BYTES = graphs.BYTES
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def small(db_url: str, tmp_path: Path) -> Iterator[Driver]:
    proc = StorageProcess(db_url, tmp_path, config=FAST_CONFIG + LIMITS)
    proc.start()
    yield Driver(proc).setup()
    proc.close()
    proc.terminate()


def blob_task(func: str, inputs: int = 1, sources: list[tuple[int, int]] | None = None) -> dict:  # type: ignore[type-arg]
    return {
        "tdl_context": {"package": "testpkg", "task_func": func},
        "inputs": [BYTES] * inputs,
        "outputs": [BYTES],
        "input_sources": [{"task_idx": i, "position": p} for i, p in sources]
        if sources is not None
        else None,
    }


def register_raw(d: Driver, graph: bytes, inputs: bytes) -> grpc.RpcError:
    request = pb.RegisterJobRequest(
        resource_group_id=d.rg,
        password=PASSWORD,
        compressed_serialized_task_graph=graph,
        compressed_serialized_inputs=inputs,
    )
    with pytest.raises(grpc.RpcError) as info:
        d.s.jobs.RegisterJob(request, timeout=30)
    return info.value


def bytes_inputs(*values: bytes) -> bytes:
    return _core.compress(_core.wire_encode([msgpack.packb(v) for v in values]))


def test_zstd_bombs_are_refused_and_cost_little_memory(small: Driver) -> None:
    one_blob = compressed(graphs.graph([blob_task("f")]))
    bomb = bytes_inputs(b"\0" * (100 << 20))  # 100 MiB of zeros: a few KiB compressed
    assert len(bomb) < 64 << 10
    graph_bomb = _core.compress(b" " * (50 << 20))
    rss_before = psutil.Process(small.storage.popen.pid).memory_info().rss  # type: ignore[union-attr]
    with ThreadPoolExecutor(8) as pool:
        errors = list(pool.map(lambda _: register_raw(small, one_blob, bomb), range(8)))
        errors += list(pool.map(lambda _: register_raw(small, graph_bomb, bomb), range(4)))
    rss_after = psutil.Process(small.storage.popen.pid).memory_info().rss  # type: ignore[union-attr]
    assert {e.code() for e in errors} == {INVALID}
    assert all("max_input_bytes" in (e.details() or "") for e in errors[:8])
    assert all("max_graph_bytes" in (e.details() or "") for e in errors[8:])
    assert rss_after - rss_before < 64 << 20, (rss_before >> 20, rss_after >> 20)
    assert small.storage.serving()


def test_too_many_tasks_are_refused_with_the_count(small: Driver) -> None:
    error = register_raw(small, compressed(graphs.flat(60)), int_inputs(*range(60)))
    assert error.code() == INVALID
    assert "the graph has 60 tasks, above the limit of 50" in (error.details() or "")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (msgpack.packb("three"), "expected Int64, got str"),
        (msgpack.packb(2**64 - 1), "out of range"),
        (b"\xc1", "msgpack"),
        (msgpack.packb(1) + b"\x00", "trailing"),
    ],
)
def test_inputs_are_checked_against_the_graph_types(
    small: Driver, payload: bytes, expected: str
) -> None:
    inputs = _core.compress(_core.wire_encode([payload]))
    error = register_raw(small, compressed(graphs.single()), inputs)
    assert error.code() == INVALID
    assert expected in (error.details() or ""), error.details()
    assert "graph input 0" in (error.details() or "")


def test_a_task_output_over_the_limit_fails_its_job(small: Driver) -> None:
    request = pb.RegisterJobRequest(
        resource_group_id=small.rg,
        password=PASSWORD,
        compressed_serialized_task_graph=compressed(graphs.graph([blob_task("f")])),
        compressed_serialized_inputs=bytes_inputs(b"x"),
        start=True,
    )
    job = small.s.jobs.RegisterJob(request, timeout=30).job_id
    [entry] = wait_until(small.poll, what="the task")
    ctx = small.register(job, 0)
    small.succeed(job, 0, ctx.task_instance_id, _core.wire_encode([msgpack.packb(b"y" * 500_000)]))
    assert small.state(job) == JobState.FAILED
    assert "exceeds the limit of 400000 bytes (max_task_output_bytes)" in small.error(job)
    del entry


def test_a_task_whose_inputs_cannot_be_delivered_fails_its_job(small: Driver) -> None:
    """Three parents of 350 kB each feed one child: its inputs (1.05 MB) never fit a 1 MiB
    message, so registering it fails the job with the sizes instead of hanging."""
    g = graphs.graph(
        [blob_task("p0"), blob_task("p1"), blob_task("p2"),
         blob_task("child", inputs=3, sources=[(0, 0), (1, 0), (2, 0)])]
    )  # fmt: skip
    request = pb.RegisterJobRequest(
        resource_group_id=small.rg,
        password=PASSWORD,
        compressed_serialized_task_graph=compressed(g),
        compressed_serialized_inputs=bytes_inputs(b"a", b"b", b"c"),
        start=True,
    )
    job = small.s.jobs.RegisterJob(request, timeout=30).job_id
    parents = wait_until(lambda: small.poll(max_items=3) or None, what="the parents")
    while len(parents) < 3:
        parents += small.poll(max_items=3)
    for entry in parents:
        task = entry.task_id.index
        ctx = small.register(job, task)
        frame = _core.wire_encode([msgpack.packb(os.urandom(350_000))])
        small.succeed(job, task, ctx.task_instance_id, frame)
    [child] = wait_until(small.poll, what="the child")
    assert child.task_id.index == 3
    with pytest.raises(grpc.RpcError) as info:
        small.register(job, 3)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert small.state(job) == JobState.FAILED
    error = small.error(job)
    assert "task inputs of" in error and "exceed the limit of" in error, error


def register_four_children(d: Driver) -> list[tuple[int, int]]:
    """Four ready tasks whose inputs are 300 kB each (the outputs of four parents), registered
    in one batch, then again for those left out, until all are: (registered, reply bytes) per
    call."""
    parents = [blob_task(f"p{i}") for i in range(4)]
    children = [blob_task(f"c{i}", sources=[(i, 0)]) for i in range(4)]
    request = pb.RegisterJobRequest(
        resource_group_id=d.rg,
        password=PASSWORD,
        compressed_serialized_task_graph=compressed(graphs.graph(parents + children)),
        compressed_serialized_inputs=bytes_inputs(b"a", b"b", b"c", b"d"),
        start=True,
    )
    job = d.s.jobs.RegisterJob(request, timeout=30).job_id
    ready: list[pb.ReadyTask] = []
    while len(ready) < 4:
        ready += d.poll(max_items=4)
    for entry in ready:
        ctx = d.register(job, entry.task_id.index)
        frame = _core.wire_encode([msgpack.packb(os.urandom(300_000))])
        d.succeed(job, entry.task_id.index, ctx.task_instance_id, frame)
    entries: list[pb.ReadyTask] = []
    while len(entries) < 4:
        entries += d.poll(max_items=4)
    assert sorted(e.task_id.index for e in entries) == [4, 5, 6, 7]
    items = [pb.RegisterTaskInstancesRequest.Item(job_id=job, task_id=to_proto(e.task_id.index))
             for e in entries]  # fmt: skip
    calls = []
    while items:
        reply = d.s.instances.RegisterTaskInstances(
            pb.RegisterTaskInstancesRequest(
                execution_manager_id=d.em, session_id=d.session, items=items
            ),
            timeout=30,
        )
        again = []
        for item, result in zip(items, reply.items, strict=True):
            if result.WhichOneof("result") != "context":
                assert result.error.code == grpc.StatusCode.UNAVAILABLE.value[0], result
                again.append(item)
        assert len(again) < len(items), "no progress"
        calls.append((len(items) - len(again), reply.ByteSize()))
        items = again
    assert sum(registered for registered, _ in calls) == 4
    return calls


def test_a_batch_registration_stops_where_its_reply_is_full(small: Driver) -> None:
    """Those that do not fit one 1 MiB reply come back UNAVAILABLE, untouched, and register in
    the next call."""
    calls = register_four_children(small)
    assert all(size < 1 << 20 for _, size in calls), calls
    assert len(calls) > 1


def test_a_registration_reply_carries_at_most_its_budget(db_url: str, tmp_path: Path) -> None:
    """`registration_reply_bytes` bounds the inputs one reply carries (a value read by many
    tasks is not copied for all of them at once): one 300 kB task per reply here, far below
    the message limit."""
    config = FAST_CONFIG + LIMITS + "registration_reply_bytes = 400000\n"
    proc = StorageProcess(db_url, tmp_path, config=config)
    proc.start()
    try:
        calls = register_four_children(Driver(proc).setup())
    finally:
        proc.close()
        proc.terminate()
    assert [registered for registered, _ in calls] == [1, 1, 1, 1]
    assert all(size < 400_000 for _, size in calls), calls


def test_outputs_kept_out_of_memory_are_still_served(small: Driver) -> None:
    """Outputs above `cached_outputs_bytes` are dropped from the cache once stored: every way
    of reading them still returns them (from the database)."""
    request = pb.RegisterJobRequest(
        resource_group_id=small.rg,
        password=PASSWORD,
        compressed_serialized_task_graph=compressed(graphs.graph([blob_task("f")])),
        compressed_serialized_inputs=bytes_inputs(b"x"),
        start=True,
    )
    job = small.s.jobs.RegisterJob(request, timeout=30).job_id
    wait_until(small.poll, what="the task")
    ctx = small.register(job, 0)
    payload = os.urandom(5000)
    small.succeed(job, 0, ctx.task_instance_id, _core.wire_encode([msgpack.packb(payload)]))
    assert small.state(job) == JobState.SUCCEEDED
    assert graphs.decode_job_outputs(small.outputs(job)) == [payload]
    waited = small.s.jobs.WaitJob(
        pb.WaitJobRequest(job_id=job, timeout_ms=10, include_result=True), timeout=30
    )
    assert graphs.decode_job_outputs(waited.serialized_outputs) == [payload]


def test_work_nobody_registers_is_offered_again(small: Driver) -> None:
    """A poller that takes entries and never registers them (a stalled scheduler) strands
    nothing: after the visibility timeout the entries are offered again, exactly once each."""
    jobs = {small.submit(graphs.single(), i, start=True) for i in range(6)}
    taken: list[pb.ReadyTask] = []
    while len(taken) < 6:
        taken += small.poll(max_items=10)
    assert {e.job_id for e in taken} == jobs
    again: list[pb.ReadyTask] = []
    while len(again) < 6:
        again += wait_until(lambda: small.poll(max_items=10, wait_ms=500), timeout=30)
    assert sorted(e.job_id for e in again) == sorted(jobs)
    # Registered work is not offered again (past the visibility timeout, while the EM is
    # alive).
    for entry in again:
        small.register(entry.job_id, entry.task_id.index)
    heartbeat = pb.HeartbeatRequest(execution_manager_id=small.em)
    small.s.liveness.UpdateExecutionManagerHeartbeat(heartbeat, timeout=10)
    assert small.poll(max_items=10, wait_ms=1500) == []
