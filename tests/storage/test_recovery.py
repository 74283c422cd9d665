"""Recovery of the job cache when the storage process is killed with SIGKILL and restarted
(paged, per-job outcomes, ready work re-offered once serving), on SQLite and MariaDB."""

from __future__ import annotations

import json

import grpc
import pytest

from orbweaver import _core
from orbweaver.states import JobState
from orbweaver.storage.db import open_database
from support import graphs
from support.driver import Driver
from support.graphs import compressed, decode_job_outputs, int_inputs, outputs_frame
from support.procs import StorageProcess, wait_until

COMMIT, CLEANUP = _core.TASK_COMMIT, _core.TASK_CLEANUP


def crash_and_restart(storage: StorageProcess) -> None:
    old_session_port = storage.port
    storage.kill()  # SIGKILL: no chance to flush or clean up
    storage.start()
    assert storage.port == old_session_port
    assert storage.serving()


def run_all(d: Driver, job: int) -> None:
    """Act as scheduler + EM until the job leaves RUNNING; each task outputs its input sum."""
    import msgpack

    while d.state(job) == JobState.RUNNING:
        for entry in d.poll():
            t = entry.task_id.index
            try:
                ctx = d.register(job, t)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                continue
            ins = [msgpack.unpackb(p) for p in _core.wire_decode(ctx.serialized_task_io)]
            d.succeed(job, t, ctx.task_instance_id, outputs_frame(sum(ins) + 1))


def test_ready_job_survives_two_restarts_then_runs(storage: StorageProcess, driver: Driver) -> None:
    job = driver.submit(graphs.single(), 20)
    crash_and_restart(storage)
    assert driver.state(job) == JobState.READY
    assert driver.poll(wait_ms=100) == []  # nothing is enqueued for a Ready job
    crash_and_restart(storage)
    assert driver.state(job) == JobState.READY
    assert driver.start(job) == JobState.RUNNING
    run_all(driver, job)
    assert driver.state(job) == JobState.SUCCEEDED
    assert decode_job_outputs(driver.outputs(job)) == [21]
    crash_and_restart(storage)
    assert driver.state(job) == JobState.SUCCEEDED
    assert decode_job_outputs(driver.outputs(job)) == [21]


def test_running_job_restarts_from_its_input_tasks(storage: StorageProcess, driver: Driver) -> None:
    job = driver.submit(graphs.diamond(), 1, start=True)
    assert len(driver.poll()) == 1
    ctx = driver.register(job, 0)
    driver.succeed(job, 0, ctx.task_instance_id, outputs_frame(2))
    assert len(driver.poll()) == 2  # b and c became ready, then the process dies
    in_flight = driver.register(job, 1)
    old_session = driver.session
    crash_and_restart(storage)
    assert driver.session > old_session
    assert driver.state(job) == JobState.RUNNING
    # The old session's instance is fenced off.
    with pytest.raises(grpc.RpcError) as info:
        driver.succeed(job, 1, in_flight.task_instance_id, outputs_frame(3), session=old_session)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # The DAG restarts: only the input task is offered again.
    entries = driver.poll()
    assert [(e.job_id, e.task_id.index) for e in entries] == [(job, 0)]
    ctx = driver.register(job, 0)
    driver.succeed(job, 0, ctx.task_instance_id, outputs_frame(2))
    run_all(driver, job)
    assert driver.state(job) == JobState.SUCCEEDED
    outputs = decode_job_outputs(driver.outputs(job))
    crash_and_restart(storage)
    assert driver.state(job) == JobState.SUCCEEDED
    assert decode_job_outputs(driver.outputs(job)) == outputs == [(3 + 3) + 1]


def test_commit_ready_job_recovers_with_its_outputs(
    storage: StorageProcess, driver: Driver
) -> None:
    job = driver.submit(graphs.single(commit=True), 4, start=True)
    crash_and_restart(storage)  # once while Running
    run_all(driver, job)
    assert driver.state(job) == JobState.COMMIT_READY
    driver.poll("commit")  # the commit entry is taken, then the process dies
    crash_and_restart(storage)
    assert driver.state(job) == JobState.COMMIT_READY
    entries = driver.poll("commit")
    assert [(e.job_id, e.task_id.WhichOneof("kind")) for e in entries] == [(job, "commit")]
    assert driver.poll(wait_ms=50) == []
    with pytest.raises(grpc.RpcError) as info:
        driver.register(job, 0)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "running" in info.value.details().lower()
    ctx = driver.register(job, COMMIT)
    assert decode_job_outputs(ctx.serialized_task_io) == [5]
    driver.succeed(job, COMMIT, ctx.task_instance_id, b"")
    assert driver.state(job) == JobState.SUCCEEDED
    assert decode_job_outputs(driver.outputs(job)) == [5]
    crash_and_restart(storage)
    assert driver.state(job) == JobState.SUCCEEDED
    assert decode_job_outputs(driver.outputs(job)) == [5]


def test_cleanup_ready_job_recovers(storage: StorageProcess, driver: Driver) -> None:
    job = driver.submit(graphs.single(cleanup=True), 8, start=True)
    assert driver.cancel(job) == JobState.CLEANUP_READY
    crash_and_restart(storage)
    assert driver.state(job) == JobState.CLEANUP_READY
    entries = driver.poll("cleanup")
    assert [(e.job_id, e.task_id.WhichOneof("kind")) for e in entries] == [(job, "cleanup")]
    with pytest.raises(grpc.RpcError) as info:
        driver.register(job, 0)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    ctx = driver.register(job, CLEANUP)
    assert len(_core.wire_decode(ctx.serialized_task_io)) == 1  # the graph input
    driver.succeed(job, CLEANUP, ctx.task_instance_id, b"")
    assert driver.state(job) == JobState.CANCELLED
    crash_and_restart(storage)
    assert driver.state(job) == JobState.CANCELLED


def test_unrecoverable_rows_are_failed_and_others_recover(
    storage: StorageProcess, driver: Driver, db_url: str
) -> None:
    good = driver.submit(graphs.single(), 1, start=True)
    db = open_database(db_url)
    try:
        corrupt, _ = db.register_job(driver.rg, b"not zstd at all", int_inputs(1), None)
        db.start_job(corrupt)
        no_outputs, _ = db.register_job(
            driver.rg, compressed(graphs.single(commit=True)), int_inputs(1), None
        )
        db.start_job(no_outputs)
        db.set_state(no_outputs, int(JobState.COMMIT_READY))
    finally:
        db.close()
    crash_and_restart(storage)
    assert driver.state(corrupt) == JobState.FAILED
    assert "recovered" in driver.error(corrupt)
    assert driver.state(no_outputs) == JobState.FAILED
    assert "output" in driver.error(no_outputs).lower()
    assert driver.state(good) == JobState.RUNNING
    run_all(driver, good)
    assert driver.state(good) == JobState.SUCCEEDED


@pytest.mark.slow
def test_ten_thousand_running_jobs_recover_through_paging(
    storage: StorageProcess, driver: Driver, db_url: str
) -> None:
    graph = compressed(graphs.single())
    inputs = int_inputs(1)
    db = open_database(db_url)
    try:
        ids = []
        for _ in range(10_000):
            job, _ = db.register_job(driver.rg, graph, inputs, None)
            db.start_job(job)
            ids.append(job)
    finally:
        db.close()
    crash_and_restart(storage)  # recovery page size is 100: 100 pages
    seen: set[int] = set()

    def drain() -> bool:
        seen.update(e.job_id for e in driver.poll(max_items=5000, wait_ms=100))
        return len(seen) >= len(ids)

    wait_until(drain, timeout=120, interval=0, what="all recovered jobs offered")
    assert seen == set(ids)
    assert {driver.state(j) for j in ids[::997]} == {JobState.RUNNING}
    # The restart read the jobs page by page, never all rows at once.
    [*_, recovered] = [
        entry
        for line in storage.logs().splitlines()
        if line.startswith("{")
        for entry in [json.loads(line)]
        if entry["msg"] == "job cache recovered"
    ]
    assert recovered["jobs"] >= len(ids)
    assert recovered["pages"] >= len(ids) // 100, recovered
