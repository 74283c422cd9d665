"""Task-level durability (durability="task"): a RUNNING job's succeeded tasks keep their outputs
across a SIGKILL of the storage process, and the restarted storage offers only the remaining
tasks; with the default (job-level) durability the DAG restarts from its input tasks. The real
storage process on SQLite and MariaDB, the driver playing scheduler and execution manager."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import msgpack
import pytest

from orbweaver import _core
from orbweaver.states import JobState
from orbweaver.storage.db import Database, open_database
from support import graphs
from support.driver import Driver
from support.graphs import compressed, decode_job_outputs, int_inputs, outputs_frame
from support.procs import StorageProcess, wait_until

JOB, TASK = 1, 2  # the wire's Durability values


def crash_and_restart(storage: StorageProcess) -> None:
    storage.kill()  # SIGKILL: no chance to flush anything
    storage.start()
    assert storage.serving()


@pytest.fixture
def db(db_url: str, storage: StorageProcess) -> Iterator[Database]:
    """The storage's database, opened beside it (to watch the stored task outputs)."""
    database = open_database(db_url)
    yield database
    database.close()


def stored_tasks(db: Database, job: int) -> list[int]:
    return [task for task, _ in db.task_outputs(job)]


def wait_stored(db: Database, job: int, tasks: list[int]) -> None:
    wait_until(lambda: stored_tasks(db, job) == tasks, timeout=30, what=f"task outputs {tasks}")


def offered(driver: Driver, job: int) -> list[int]:
    return sorted(e.task_id.index for e in driver.poll() if e.job_id == job)


def run(driver: Driver, job: int, task: int, output: int) -> list[int]:
    """Register and succeed `task` with `output`; returns the inputs it received."""
    ctx = driver.register(job, task)
    inputs = [msgpack.unpackb(p) for p in _core.wire_decode(ctx.serialized_task_io)]
    driver.succeed(job, task, ctx.task_instance_id, outputs_frame(output))
    return inputs


@pytest.mark.parametrize("durability", [TASK, JOB], ids=["task", "job"])
def test_finished_tasks_survive_a_storage_kill(
    storage: StorageProcess, driver: Driver, db: Database, durability: int
) -> None:
    """Diamond a -> (b, c) -> d: a and b succeed, c is running when the storage dies."""
    job = driver.submit(graphs.diamond(), 1, durability=durability)
    crash_and_restart(storage)  # once while READY: the job keeps its durability
    assert driver.start(job) == JobState.RUNNING
    assert offered(driver, job) == [0]
    assert run(driver, job, 0, 2) == [1]
    assert offered(driver, job) == [1, 2]
    assert run(driver, job, 1, 3) == [2]
    driver.register(job, 2)  # in flight when the process dies
    if durability == TASK:
        wait_stored(db, job, [0, 1])
    crash_and_restart(storage)
    assert driver.state(job) == JobState.RUNNING
    if durability == JOB:
        # Job-level durability: nothing of the run survives, the DAG restarts.
        assert stored_tasks(db, job) == []
        assert offered(driver, job) == [0]
        assert run(driver, job, 0, 2) == [1]
        assert offered(driver, job) == [1, 2]
        assert run(driver, job, 1, 3) == [2]
    else:
        # a and b are not offered again; c gets a's output back from the database.
        assert driver.progress(job).counts.succeeded == 2
        assert offered(driver, job) == [2]
        for task in (0, 1):
            with pytest.raises(grpc.RpcError) as info:
                driver.register(job, task)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert run(driver, job, 2, 5) == [2]
    if durability == TASK:
        # The restarted storage keeps storing: a second kill loses only d.
        wait_stored(db, job, [0, 1, 2])
        crash_and_restart(storage)
        assert driver.progress(job).counts.succeeded == 3
    assert offered(driver, job) == [3]
    assert run(driver, job, 3, 8) == [3, 5]  # b's output came back from the database too
    assert driver.state(job) == JobState.SUCCEEDED
    assert decode_job_outputs(driver.outputs(job)) == [8]
    # The stored task outputs are deleted once the job has its outputs.
    wait_stored(db, job, [])


def test_a_job_every_task_of_which_was_stored_completes_at_restart(
    storage: StorageProcess, driver: Driver, db: Database
) -> None:
    """The storage died after the last task's outputs were stored but before the job's
    completion was: the restarted storage completes the job without running anything."""
    rg = driver.rg
    graph = compressed(graphs.diamond())
    plain, _ = db.register_job(rg, graph, int_inputs(1), None, start=True, task_durable=True)
    commit, _ = db.register_job(
        rg, compressed(graphs.diamond(commit=True)), int_inputs(1), None, start=True,
        task_durable=True,
    )  # fmt: skip
    partial, _ = db.register_job(rg, graph, int_inputs(1), None, start=True, task_durable=True)
    frames = [outputs_frame(v) for v in (2, 3, 4, 7)]
    db.save_task_outputs([(j, t, f) for j in (plain, commit) for t, f in enumerate(frames)])
    # d's outputs without c's: d's input from c must be computed again, so d runs again too.
    db.save_task_outputs([(partial, t, frames[t]) for t in (0, 1, 3)])
    crash_and_restart(storage)
    assert driver.state(plain) == JobState.SUCCEEDED
    assert decode_job_outputs(driver.outputs(plain)) == [7]
    assert driver.state(commit) == JobState.COMMIT_READY
    # (Offered when completed, and again with all ready work once serving: the scheduler
    # de-duplicates.)
    assert {e.job_id for e in driver.poll("commit")} == {commit}
    ctx = driver.register(commit, _core.TASK_COMMIT)
    assert decode_job_outputs(ctx.serialized_task_io) == [7]
    assert driver.state(partial) == JobState.RUNNING
    assert driver.progress(partial).counts.succeeded == 2
    assert offered(driver, partial) == [2]
    assert run(driver, partial, 2, 10) == [2]
    assert run(driver, partial, 3, 13) == [3, 10]
    assert decode_job_outputs(driver.outputs(partial)) == [13]
    for job in (plain, commit, partial):
        wait_stored(db, job, [])


def test_unknown_durability_is_refused_naming_it(driver: Driver) -> None:
    with pytest.raises(grpc.RpcError) as info:
        driver.submit(graphs.single(), 1, durability=7)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "durability 7" in (info.value.details() or "")


def test_a_cancelled_job_loses_its_stored_task_outputs(
    storage: StorageProcess, driver: Driver, db: Database
) -> None:
    job = driver.submit(graphs.diamond(), 1, start=True, durability=TASK)
    assert offered(driver, job) == [0]
    run(driver, job, 0, 2)
    wait_stored(db, job, [0])
    assert driver.cancel(job) == JobState.CANCELLED
    wait_stored(db, job, [])
    crash_and_restart(storage)
    assert driver.state(job) == JobState.CANCELLED
