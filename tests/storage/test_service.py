"""Storage service behaviour through the gRPC API of a running storage process (every
service operation, and precise statuses for requests that must not crash it), on SQLite and
MariaDB."""

from __future__ import annotations

import threading
import time

import grpc
import msgpack
import pytest

from orbweaver import _core
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._taskid import to_proto
from orbweaver.states import JobState
from support import graphs
from support.driver import PASSWORD, Driver
from support.graphs import compressed, decode_job_outputs, outputs_frame
from support.procs import wait_until

COMMIT, CLEANUP = _core.TASK_COMMIT, _core.TASK_CLEANUP


def code_of(fn, *args, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code()


def run_single(d: Driver, job: int, value: int = 7) -> None:
    [entry] = d.poll()
    ctx = d.register(job, entry.task_id.index)
    d.succeed(job, entry.task_id.index, ctx.task_instance_id, outputs_frame(value))


# -- job orchestration -------------------------------------------------------------------------


def test_register_job_returns_id_and_ready_state(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 1)
    assert job > 0
    assert driver.state(job) == JobState.READY


def test_register_job_rejects_invalid_graph(driver: Driver) -> None:
    req = pb.RegisterJobRequest(
        resource_group_id=driver.rg,
        password=PASSWORD,
        compressed_serialized_task_graph=_core.compress(b"invalid json"),
        compressed_serialized_inputs=graphs.int_inputs(),
    )
    assert code_of(driver.s.jobs.RegisterJob, req) == grpc.StatusCode.INVALID_ARGUMENT


def test_register_job_rejects_input_size_mismatch(driver: Driver) -> None:
    with pytest.raises(grpc.RpcError) as info:
        driver.submit(graphs.single())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1" in info.value.details() and "0" in info.value.details()


def test_register_job_rejects_empty_graph(driver: Driver) -> None:
    assert code_of(driver.submit, graphs.graph([])) == grpc.StatusCode.INVALID_ARGUMENT


def test_register_job_rejects_path_traversal_names(driver: Driver) -> None:
    g = graphs.graph([graphs.task("fn", package="../evil")])
    with pytest.raises(grpc.RpcError) as info:
        driver.submit(g, 1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "package" in info.value.details()


def test_register_job_requires_password(driver: Driver) -> None:
    assert (
        code_of(driver.submit, graphs.single(), 1, password=b"wrong")
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert (
        code_of(driver.submit, graphs.single(), 1, password=b"", stubs=driver.raw)
        == grpc.StatusCode.UNAUTHENTICATED
    )


def test_register_job_is_idempotent_with_a_key(driver: Driver) -> None:
    a = driver.submit(graphs.single(), 1, key="k-1")
    b = driver.submit(graphs.single(), 1, key="k-1")
    c = driver.submit(graphs.single(), 1, key="k-2")
    assert a == b != c


def test_register_job_key_reused_with_other_inputs_is_already_exists(driver: Driver) -> None:
    first = driver.submit(graphs.single(), 1, key="k-1")
    with pytest.raises(grpc.RpcError) as info:
        driver.submit(graphs.single(), 2, key="k-1")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f"job {first}" in info.value.details()
    assert driver.storage.serving()


def _register_jobs(driver: Driver, *entries: tuple[int, str], start: bool) -> pb.RegisterJobsReply:
    return driver.s.jobs.RegisterJobs(
        pb.RegisterJobsRequest(
            resource_group_id=driver.rg,
            password=PASSWORD,
            compressed_serialized_task_graph=compressed(graphs.single()),
            jobs=[
                pb.JobInputs(compressed_serialized_inputs=graphs.int_inputs(v), idempotency_key=k)
                for v, k in entries
            ],
            start=start,
        ),
        timeout=30,
    )


def test_register_jobs_registers_and_starts_a_batch(driver: Driver) -> None:
    earlier = driver.submit(graphs.single(), 3, key="b-3")
    reply = _register_jobs(driver, (1, "b-1"), (2, ""), (3, "b-3"), start=True)
    ids = [j.job_id for j in reply.jobs]
    assert [j.deduplicated for j in reply.jobs] == [False, False, True]
    assert ids[2] == earlier and len(set(ids)) == 3
    assert [j.state for j in reply.jobs] == [JobState.RUNNING, JobState.RUNNING, JobState.READY]
    # The two new jobs' input tasks are queued at once; each runs with its own input.
    entries = driver.poll()
    assert sorted(e.job_id for e in entries) == sorted(ids[:2])
    for entry in entries:
        ctx = driver.register(entry.job_id, entry.task_id.index)
        want = 1 if entry.job_id == ids[0] else 2
        assert msgpack.unpackb(_core.wire_decode(ctx.serialized_task_io)[0]) == want
    # A retried batch returns the same jobs.
    again = _register_jobs(driver, (1, "b-1"), (3, "b-3"), start=True)
    assert [j.job_id for j in again.jobs] == [ids[0], ids[2]]


def test_register_jobs_rejects_bad_entries_and_keeps_nothing(driver: Driver) -> None:
    before = driver.s.jobs.ListJobs(pb.ListJobsRequest(limit=100), timeout=30).jobs
    bad_inputs = pb.RegisterJobsRequest(
        resource_group_id=driver.rg,
        password=PASSWORD,
        compressed_serialized_task_graph=compressed(graphs.single()),
        jobs=[
            pb.JobInputs(compressed_serialized_inputs=graphs.int_inputs(1)),
            pb.JobInputs(compressed_serialized_inputs=graphs.int_inputs(1, 2)),
        ],
        start=True,
    )
    with pytest.raises(grpc.RpcError) as info:
        driver.s.jobs.RegisterJobs(bad_inputs, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("job 1:")
    empty = pb.RegisterJobsRequest(resource_group_id=driver.rg, password=PASSWORD)
    assert code_of(driver.s.jobs.RegisterJobs, empty) == grpc.StatusCode.INVALID_ARGUMENT
    wrong_pw = pb.RegisterJobsRequest(
        resource_group_id=driver.rg,
        password=b"wrong",
        compressed_serialized_task_graph=compressed(graphs.single()),
        jobs=[pb.JobInputs(compressed_serialized_inputs=graphs.int_inputs(1))],
    )
    assert code_of(driver.s.jobs.RegisterJobs, wrong_pw) == grpc.StatusCode.UNAUTHENTICATED
    after = driver.s.jobs.ListJobs(pb.ListJobsRequest(limit=100), timeout=30).jobs
    assert len(after) == len(before)
    assert driver.storage.serving()


def test_start_job_starts_cached_job(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 1)
    assert driver.start(job) == JobState.RUNNING
    assert driver.state(job) == JobState.RUNNING
    [entry] = driver.poll()
    assert (entry.job_id, entry.task_id.index, entry.resource_group_id) == (job, 0, driver.rg)


def test_start_job_not_found(driver: Driver) -> None:
    assert code_of(driver.start, 999_999) == grpc.StatusCode.NOT_FOUND


def test_start_job_twice_is_failed_precondition(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 1, start=True)
    with pytest.raises(grpc.RpcError) as info:
        driver.start(job)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert driver.storage.serving()


def test_cancel_job_not_found(driver: Driver) -> None:
    assert code_of(driver.cancel, 999_999) == grpc.StatusCode.NOT_FOUND


def test_cancel_job_transitions_to_cancelled(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 1, start=True)
    assert driver.cancel(job) == JobState.CANCELLED
    assert driver.state(job) == JobState.CANCELLED
    assert driver.progress(job).live, "evicted at once: eviction waits for the retention period"
    # Cancelling again is harmless.
    assert driver.cancel(job) == JobState.CANCELLED


def test_cancel_ready_job_with_cleanup_is_cancelled_without_cleanup(driver: Driver) -> None:
    job = driver.submit(graphs.single(cleanup=True), 1)
    assert driver.cancel(job) == JobState.CANCELLED
    assert driver.poll("cleanup", wait_ms=50) == []


def test_cancel_running_job_with_cleanup_runs_cleanup_with_graph_inputs(driver: Driver) -> None:
    job = driver.submit(graphs.diamond(cleanup=True), 41, start=True)
    assert driver.cancel(job) == JobState.CLEANUP_READY
    [entry] = driver.poll("cleanup")
    assert entry.task_id.WhichOneof("kind") == "cleanup"
    ctx = driver.register(job, CLEANUP)
    assert _core.wire_decode(ctx.serialized_task_io) == [msgpack.packb(41)]
    driver.succeed(job, CLEANUP, ctx.task_instance_id, b"")
    assert driver.state(job) == JobState.CANCELLED


def test_cancel_finished_job_is_failed_precondition(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 1, start=True)
    run_single(driver, job)
    assert driver.state(job) == JobState.SUCCEEDED
    assert code_of(driver.cancel, job) == grpc.StatusCode.FAILED_PRECONDITION
    assert driver.storage.serving()


def test_get_job_state_unknown(driver: Driver) -> None:
    assert code_of(driver.state, 424_242) == grpc.StatusCode.NOT_FOUND


def test_outputs_of_succeeded_job(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 1, start=True)
    run_single(driver, job, 99)
    assert decode_job_outputs(driver.outputs(job)) == [99]


def test_outputs_of_unfinished_job_is_failed_precondition(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 1, start=True)
    with pytest.raises(grpc.RpcError) as info:
        driver.outputs(job)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "RUNNING" in info.value.details()
    assert driver.storage.serving()
    assert code_of(driver.outputs, 777_777) == grpc.StatusCode.NOT_FOUND


def test_error_of_failed_job(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 1, start=True)
    assert len(driver.poll()) == 1
    ctx = driver.register(job, 0)
    driver.fail(job, 0, ctx.task_instance_id, "ValueError: boom")
    assert driver.state(job) == JobState.FAILED
    assert "boom" in driver.error(job)
    assert code_of(driver.error, 999_999) == grpc.StatusCode.NOT_FOUND
    ok = driver.submit(graphs.single(), 1)
    assert code_of(driver.error, ok) == grpc.StatusCode.FAILED_PRECONDITION


# -- task instances ----------------------------------------------------------------------------


def test_register_instance_returns_execution_context(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 5, start=True)
    ctx = driver.register(job, 0)
    assert ctx.task_instance_id > 0
    assert (ctx.tdl_context.package, ctx.tdl_context.task_func) == ("testpkg", "single")
    assert ctx.timeout_policy.hard_timeout_ms == 300_000
    assert len(_core.wire_decode(ctx.serialized_task_io)) == 1


def test_register_instance_for_unknown_job_is_failed_precondition(driver: Driver) -> None:
    assert code_of(driver.register, 999_999, 0) == grpc.StatusCode.FAILED_PRECONDITION


def test_register_instance_of_unstarted_job_is_failed_precondition(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 5)
    assert code_of(driver.register, job, 0) == grpc.StatusCode.FAILED_PRECONDITION
    assert driver.storage.serving()


def test_bogus_task_index_is_invalid_argument(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 5, start=True)
    assert code_of(driver.register, job, 57) == grpc.StatusCode.INVALID_ARGUMENT
    ctx = driver.register(job, 0)
    assert (
        code_of(driver.succeed, job, 9, ctx.task_instance_id, outputs_frame(1))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert driver.storage.serving()


def test_wrong_output_count_is_invalid_argument_and_changes_nothing(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 5, start=True)
    ctx = driver.register(job, 0)
    assert (
        code_of(driver.succeed, job, 0, ctx.task_instance_id, outputs_frame(1, 2))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(driver.succeed, job, 0, ctx.task_instance_id, b"\x01")
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert driver.state(job) == JobState.RUNNING
    driver.succeed(job, 0, ctx.task_instance_id, outputs_frame(3))
    assert driver.state(job) == JobState.SUCCEEDED


def test_unknown_execution_manager_is_rejected(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 5, start=True)
    assert code_of(driver.register, job, 0, em=987_654) == grpc.StatusCode.NOT_FOUND
    hb = pb.HeartbeatRequest(execution_manager_id=987_654)
    assert (
        code_of(driver.s.liveness.UpdateExecutionManagerHeartbeat, hb) == grpc.StatusCode.NOT_FOUND
    )
    assert driver.storage.serving()


def test_reports_for_a_job_not_in_the_cache_are_refused(driver: Driver) -> None:
    """Success and failure reports for a job the cache does not hold: FAILED_PRECONDITION ("cache
    stale"; NOT_FOUND on these RPCs means a stale session, which EMs treat
    differently), nothing created, the service stays up."""
    unknown = 999_999
    for report in (
        lambda: driver.succeed(unknown, 0, 1, outputs_frame(1)),
        lambda: driver.fail(unknown, 0, 1, "boom"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            report()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"job {unknown}" in (info.value.details() or "")
    assert code_of(driver.state, unknown) == grpc.StatusCode.NOT_FOUND
    # A finished job: its instance reports again (a retry after a lost reply) change nothing.
    job = driver.submit(graphs.single(), 5, start=True)
    ctx = driver.register(job, 0)
    driver.succeed(job, 0, ctx.task_instance_id, outputs_frame(8))
    assert (
        code_of(driver.succeed, job, 0, ctx.task_instance_id, outputs_frame(9))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert code_of(driver.fail, job, 0, ctx.task_instance_id, "late") == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert driver.state(job) == JobState.SUCCEEDED
    assert decode_job_outputs(driver.outputs(job)) == [8]
    assert driver.storage.serving()


def test_success_transitions_job_to_succeeded(driver: Driver) -> None:
    job = driver.submit(graphs.diamond(), 3, start=True)
    seen = []
    while driver.state(job) == JobState.RUNNING:
        for entry in driver.poll():
            t = entry.task_id.index
            ctx = driver.register(job, t)
            ins = [msgpack.unpackb(p) for p in _core.wire_decode(ctx.serialized_task_io)]
            seen.append(t)
            driver.succeed(job, t, ctx.task_instance_id, outputs_frame(sum(ins) + 1))
    assert driver.state(job) == JobState.SUCCEEDED
    assert sorted(seen) == [0, 1, 2, 3]
    assert len(decode_job_outputs(driver.outputs(job))) == 1


def test_failure_with_retries_requeues_then_fails(driver: Driver) -> None:
    job = driver.submit(graphs.single(policy=graphs.policy(retries=1)), 5, start=True)
    assert len(driver.poll()) == 1
    ctx = driver.register(job, 0)
    driver.fail(job, 0, ctx.task_instance_id, "first")
    assert driver.state(job) == JobState.RUNNING
    assert len(driver.poll()) == 1
    ctx = driver.register(job, 0)
    driver.fail(job, 0, ctx.task_instance_id, "second")
    assert driver.state(job) == JobState.FAILED
    assert "second" in driver.error(job)


def test_stale_session_is_not_found(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 5, start=True)
    stale = driver.session - 1
    assert code_of(driver.register, job, 0, session=stale) == grpc.StatusCode.NOT_FOUND
    ctx = driver.register(job, 0)
    assert (
        code_of(driver.succeed, job, 0, ctx.task_instance_id, outputs_frame(1), session=stale)
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(driver.fail, job, 0, ctx.task_instance_id, "x", session=stale)
        == grpc.StatusCode.NOT_FOUND
    )


def test_stale_session_fences_the_batch_calls_as_a_whole(driver: Driver) -> None:
    job = driver.submit(graphs.flat(2), 1, 2, start=True)
    stale = driver.session - 1
    items = [pb.RegisterTaskInstancesRequest.Item(job_id=job, task_id=to_proto(t)) for t in (0, 1)]
    register = pb.RegisterTaskInstancesRequest(
        execution_manager_id=driver.em, session_id=stale, items=items
    )
    with pytest.raises(grpc.RpcError) as info:
        driver.s.instances.RegisterTaskInstances(register, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "stale session" in (info.value.details() or "")
    assert driver.progress(job).counts.running == 0, "a stale batch registered instances"
    contexts = [driver.register(job, t) for t in (0, 1)]
    report = pb.ReportTaskOutcomesRequest(
        execution_manager_id=driver.em,
        session_id=stale,
        outcomes=[
            pb.TaskOutcome(
                job_id=job,
                task_id=to_proto(t),
                task_instance_id=ctx.task_instance_id,
                serialized_outputs=outputs_frame(t),
            )
            for t, ctx in enumerate(contexts)
        ],
    )
    with pytest.raises(grpc.RpcError) as info:
        driver.s.instances.ReportTaskOutcomes(report, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "stale session" in (info.value.details() or "")
    assert driver.state(job) == JobState.RUNNING
    assert driver.progress(job).counts.succeeded == 0


def test_instance_limit_and_first_success_wins(driver: Driver) -> None:
    job = driver.submit(graphs.single(policy=graphs.policy(instances=2)), 5, start=True)
    a = driver.register(job, 0)
    b = driver.register(job, 0)
    assert code_of(driver.register, job, 0) == grpc.StatusCode.FAILED_PRECONDITION
    driver.succeed(job, 0, b.task_instance_id, outputs_frame(1))
    assert (
        code_of(driver.succeed, job, 0, a.task_instance_id, outputs_frame(2))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert decode_job_outputs(driver.outputs(job)) == [1]


def test_batch_register_and_report(driver: Driver) -> None:
    job = driver.submit(graphs.flat(50), *range(50), start=True)
    entries = driver.poll(max_items=100)
    assert sorted(e.task_id.index for e in entries) == list(range(50))
    reply = driver.s.instances.RegisterTaskInstances(
        pb.RegisterTaskInstancesRequest(
            execution_manager_id=driver.em,
            session_id=driver.session,
            items=[
                pb.RegisterTaskInstancesRequest.Item(job_id=job, task_id=e.task_id) for e in entries
            ]
            + [pb.RegisterTaskInstancesRequest.Item(job_id=job, task_id=to_proto(99))],
        ),
        timeout=30,
    )
    assert [i.WhichOneof("result") for i in reply.items] == ["context"] * 50 + ["error"]
    assert reply.items[-1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    outcomes = [
        pb.TaskOutcome(
            job_id=job,
            task_id=i.context.task_id,
            task_instance_id=i.context.task_instance_id,
            serialized_outputs=outputs_frame(i.context.task_id.index),
        )
        for i in reply.items[:50]
    ]
    outcomes.append(
        pb.TaskOutcome(job_id=job, task_id=to_proto(0), task_instance_id=1, error_message="late")
    )
    statuses = driver.s.instances.ReportTaskOutcomes(
        pb.ReportTaskOutcomesRequest(
            execution_manager_id=driver.em, session_id=driver.session, outcomes=outcomes
        ),
        timeout=30,
    ).statuses
    assert [s.code for s in statuses[:50]] == [0] * 50
    assert statuses[50].code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert driver.state(job) == JobState.SUCCEEDED
    assert decode_job_outputs(driver.outputs(job)) == list(range(50))


def test_commit_task_receives_outputs_and_finishes_job(driver: Driver) -> None:
    job = driver.submit(graphs.single(commit=True), 5, start=True)
    run_single(driver, job, 11)
    assert driver.state(job) == JobState.COMMIT_READY
    assert len(driver.poll("commit")) == 1
    ctx = driver.register(job, COMMIT)
    assert decode_job_outputs(ctx.serialized_task_io) == [11]
    driver.succeed(job, COMMIT, ctx.task_instance_id, b"")
    assert driver.state(job) == JobState.SUCCEEDED
    assert decode_job_outputs(driver.outputs(job)) == [11]


def test_each_lane_delivers_its_entry_intact(driver: Driver) -> None:
    """Ready, commit and cleanup lanes hand out entries with resource group, job and task kind
    as registered."""
    ready = driver.submit(graphs.single(), 5, start=True)
    [entry] = driver.poll()
    assert (entry.resource_group_id, entry.job_id, entry.task_id.index) == (driver.rg, ready, 0)
    assert entry.task_id.WhichOneof("kind") == "index"
    committing = driver.submit(graphs.single(commit=True), 5, start=True)
    run_single(driver, committing)
    [commit] = driver.poll("commit")
    assert (commit.resource_group_id, commit.job_id) == (driver.rg, committing)
    assert commit.task_id.WhichOneof("kind") == "commit"
    cleaning = driver.submit(graphs.single(cleanup=True), 5, start=True)
    assert [e.job_id for e in driver.poll()] == [cleaning]
    assert driver.cancel(cleaning) == JobState.CLEANUP_READY
    [cleanup] = driver.poll("cleanup")
    assert (cleanup.resource_group_id, cleanup.job_id) == (driver.rg, cleaning)
    assert cleanup.task_id.WhichOneof("kind") == "cleanup"
    # Nothing else is queued: each entry went out once, on its own lane.
    for lane in ("tasks", "commit", "cleanup"):
        assert driver.poll(lane, wait_ms=50) == [], lane


def test_commit_ready_job_without_cleanup_cannot_be_cancelled(driver: Driver) -> None:
    job = driver.submit(graphs.single(commit=True), 5, start=True)
    run_single(driver, job)
    with pytest.raises(grpc.RpcError) as info:
        driver.cancel(job)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cleanup" in info.value.details()


# -- waiting and progress ----------------------------------------------------------------------


def test_wait_job_returns_when_terminal(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 5, start=True)
    result: list[pb.WaitJobReply] = []
    waiter = threading.Thread(
        target=lambda: result.append(
            driver.s.jobs.WaitJob(pb.WaitJobRequest(job_id=job, timeout_ms=30_000), timeout=60)
        )
    )
    waiter.start()
    run_single(driver, job)
    waiter.join(60)
    assert result and result[0].terminal and result[0].state == JobState.SUCCEEDED
    short = driver.submit(graphs.single(), 5, start=True)
    reply = driver.s.jobs.WaitJob(pb.WaitJobRequest(job_id=short, timeout_ms=100), timeout=30)
    assert not reply.terminal and reply.state == JobState.RUNNING


def test_wait_job_with_result_returns_outputs_or_error(driver: Driver) -> None:
    ok = driver.submit(graphs.single(), 5, start=True)
    run_single(driver, ok, 42)
    reply = driver.s.jobs.WaitJob(
        pb.WaitJobRequest(job_id=ok, timeout_ms=10_000, include_result=True), timeout=30
    )
    assert reply.state == JobState.SUCCEEDED
    assert decode_job_outputs(reply.serialized_outputs) == [42]
    bad = driver.submit(graphs.single(), 5, start=True)
    [entry] = driver.poll()
    ctx = driver.register(bad, entry.task_id.index)
    driver.fail(bad, 0, ctx.task_instance_id, "ValueError: broken")
    reply = driver.s.jobs.WaitJob(
        pb.WaitJobRequest(job_id=bad, timeout_ms=10_000, include_result=True), timeout=30
    )
    assert reply.state == JobState.FAILED and "broken" in reply.error_message
    assert not reply.serialized_outputs
    running = driver.submit(graphs.single(), 5, start=True)
    reply = driver.s.jobs.WaitJob(
        pb.WaitJobRequest(job_id=running, timeout_ms=50, include_result=True), timeout=30
    )
    assert reply.state == JobState.RUNNING and not reply.serialized_outputs


def test_wait_jobs_returns_when_all_are_terminal(driver: Driver) -> None:
    first, second = (driver.submit(graphs.single(), v, start=True) for v in (1, 2))
    result: list[pb.WaitJobsReply] = []
    request = pb.WaitJobsRequest(job_ids=[second, first], timeout_ms=30_000, include_result=True)
    waiter = threading.Thread(
        target=lambda: result.append(driver.s.jobs.WaitJobs(request, timeout=60))
    )
    waiter.start()
    entries = {e.job_id: e for e in driver.poll()}
    ctx = driver.register(first, entries[first].task_id.index)
    driver.succeed(first, 0, ctx.task_instance_id, outputs_frame(10))
    assert not result  # one job is still running
    ctx = driver.register(second, entries[second].task_id.index)
    driver.fail(second, 0, ctx.task_instance_id, "ValueError: nope")
    waiter.join(60)
    [reply] = result
    assert [j.state for j in reply.jobs] == [JobState.FAILED, JobState.SUCCEEDED]
    assert "nope" in reply.jobs[0].error_message
    assert decode_job_outputs(reply.jobs[1].serialized_outputs) == [10]
    # A deadline returns what is known; an unknown job is NOT_FOUND; too many is refused.
    running = driver.submit(graphs.single(), 5, start=True)
    short = pb.WaitJobsRequest(job_ids=[first, running], timeout_ms=50)
    states = [j.state for j in driver.s.jobs.WaitJobs(short, timeout=30).jobs]
    assert states == [JobState.SUCCEEDED, JobState.RUNNING]
    unknown = pb.WaitJobsRequest(job_ids=[first, 999_999], timeout_ms=50)
    with pytest.raises(grpc.RpcError) as info:
        driver.s.jobs.WaitJobs(unknown, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "999999" in info.value.details()
    too_many = pb.WaitJobsRequest(job_ids=list(range(1, 10_002)), timeout_ms=50)
    assert code_of(driver.s.jobs.WaitJobs, too_many) == grpc.StatusCode.INVALID_ARGUMENT
    assert driver.storage.serving()


def test_wait_jobs_any_terminal_returns_when_one_is(driver: Driver) -> None:
    """`any_terminal` (as_completed): the wait ends with the first job that ends."""
    first, second = (driver.submit(graphs.single(), v, start=True) for v in (1, 2))
    result: list[pb.WaitJobsReply] = []
    request = pb.WaitJobsRequest(
        job_ids=[first, second], timeout_ms=600_000, include_result=True, any_terminal=True
    )
    waiter = threading.Thread(
        target=lambda: result.append(driver.s.jobs.WaitJobs(request, timeout=60))
    )
    waiter.start()
    entries = {e.job_id: e for e in driver.poll()}
    ctx = driver.register(second, entries[second].task_id.index)
    driver.succeed(second, 0, ctx.task_instance_id, outputs_frame(20))
    # Without any_terminal it would wait for the first job (up to max_wait, 60 s).
    waiter.join(30)
    assert not waiter.is_alive(), "the wait did not end with the first terminal job"
    [reply] = result
    assert [j.state for j in reply.jobs] == [JobState.RUNNING, JobState.SUCCEEDED]
    assert decode_job_outputs(reply.jobs[1].serialized_outputs) == [20]
    # A job already terminal ends it at once.
    again = driver.s.jobs.WaitJobs(request, timeout=30)
    assert [j.state for j in again.jobs] == [JobState.RUNNING, JobState.SUCCEEDED]


def test_progress_counts_and_explanations(driver: Driver) -> None:
    job = driver.submit(graphs.diamond(), 3, start=True)
    reply = driver.s.jobs.GetJobProgress(
        pb.JobProgressRequest(job_id=job, max_explanations=10), timeout=30
    )
    assert reply.live and reply.total_tasks == 4
    assert (reply.counts.ready, reply.counts.pending) == (1, 3)
    reasons = {w.task_id.index: w.reason for w in reply.waiting}
    assert reasons[0] == "queued" and reasons[3] == "pending_parents"


# -- queue, groups, liveness, schedulers ---------------------------------------------------------


def test_poll_returns_empty_when_no_tasks(driver: Driver) -> None:
    reply = driver.s.queue.PollReadyTasks(
        pb.PollRequest(max_items=10, wait_ms=50, scheduler_id=driver.scheduler), timeout=30
    )
    assert list(reply.tasks) == [] and reply.session_id == driver.session


def test_resource_groups(driver: Driver) -> None:
    s = driver.s
    rg = s.groups.AddResourceGroup(
        pb.AddResourceGroupRequest(external_resource_group_id="other", password=b"pw"), timeout=30
    ).resource_group_id
    ok = s.groups.VerifyResourceGroup(
        pb.VerifyResourceGroupRequest(resource_group_id=rg, password=b"pw"), timeout=30
    )
    assert ok.external_resource_group_id == "other"
    assert (
        code_of(
            s.groups.VerifyResourceGroup,
            pb.VerifyResourceGroupRequest(resource_group_id=rg, password=b"nope"),
        )
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert (
        code_of(
            s.groups.AddResourceGroup,
            pb.AddResourceGroupRequest(external_resource_group_id="other", password=b"x"),
        )
        == grpc.StatusCode.ALREADY_EXISTS
    )


def test_register_em_rejects_bad_ip(driver: Driver) -> None:
    assert (
        code_of(
            driver.s.liveness.RegisterExecutionManager,
            pb.RegisterExecutionManagerRequest(ip_address="not-an-ip"),
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    reply = driver.s.liveness.UpdateExecutionManagerHeartbeat(
        pb.HeartbeatRequest(execution_manager_id=driver.em), timeout=10
    )
    assert reply.session_id == driver.session


def test_a_new_scheduler_gets_what_its_predecessor_polled_and_nothing_twice(
    driver: Driver,
) -> None:
    s = driver.s
    first = driver.scheduler
    delivered = driver.submit(graphs.single(), 5, start=True)
    held = driver.submit(graphs.single(), 6, start=True)
    assert len(driver.poll(max_items=2)) == 2  # the first scheduler takes both
    driver.register(delivered, 0)  # one reaches an execution manager
    waiting = driver.submit(graphs.single(), 7, start=True)  # still in the queue
    second = driver.register_scheduler(host="h", port=2)
    assert second != first
    # The held entry is offered again at once; the delivered one is not, the queued one once.
    entries = driver.poll(wait_ms=200) + driver.poll(wait_ms=300)
    assert sorted((e.job_id, e.task_id.index) for e in entries) == [(held, 0), (waiting, 0)]
    assert [x.port for x in s.schedulers.GetSchedulers(pb.Void(), timeout=10).schedulers] == [2]
    assert (
        code_of(s.schedulers.RegisterScheduler, pb.RegisterSchedulerRequest(host="", port=1))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_dead_em_instances_are_requeued(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 5, start=True)
    assert len(driver.poll()) == 1
    driver.register(job, 0)
    # No heartbeats: after the 2 s stale cutoff the instance GC re-offers the task.
    [again] = wait_until(lambda: driver.poll(wait_ms=200), timeout=20, what="requeue")
    assert (again.job_id, again.task_id.index) == (job, 0)
    code = code_of(driver.register, job, 0)
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # the dead EM must register again


def test_an_instance_whose_reply_was_lost_is_offered_again(driver: Driver) -> None:
    """A registration (or continuation) reply that never reached the EM: the EM's heartbeats
    list what it holds, and an instance it does not hold is offered again once it is older than
    the grace (10 s: replies may still be in flight), while the EM lives on."""
    job = driver.submit(graphs.single(), 5, start=True)
    assert len(driver.poll()) == 1
    lost = driver.register(job, 0)  # its reply "never arrived"

    def beat(*held: int) -> None:
        driver.s.liveness.UpdateExecutionManagerHeartbeat(
            pb.HeartbeatRequest(
                execution_manager_id=driver.em,
                session_id=driver.session,
                held_instance_ids=held,
            ),
            timeout=10,
        )

    beat()  # within the grace: left alone
    assert driver.poll(wait_ms=0) == []
    # Held, however old: left alone (heartbeats keep the EM alive meanwhile).
    until = time.monotonic() + 10.5
    while time.monotonic() < until:
        beat(lost.task_instance_id)
        time.sleep(0.5)
    assert driver.poll(wait_ms=0) == []
    # Another session's list says nothing about this one's instances.
    driver.s.liveness.UpdateExecutionManagerHeartbeat(
        pb.HeartbeatRequest(execution_manager_id=driver.em, session_id=driver.session + 1),
        timeout=10,
    )
    assert driver.poll(wait_ms=0) == []
    beat()  # not held, registered more than 10 s ago: lost
    [again] = driver.poll(wait_ms=1000)
    assert (again.job_id, again.task_id.index) == (job, 0)
    # The lost instance's late report is refused; the new instance completes the job.
    late = code_of(driver.succeed, job, 0, lost.task_instance_id, outputs_frame(1))
    assert late == grpc.StatusCode.FAILED_PRECONDITION
    fresh = driver.register(job, 0)
    driver.succeed(job, 0, fresh.task_instance_id, outputs_frame(2))
    assert driver.state(job) == JobState.SUCCEEDED


def test_soft_timeout_requeues_once(driver: Driver) -> None:
    pol = graphs.policy(instances=2, soft_ms=100, hard_ms=60_000)
    job = driver.submit(graphs.single(policy=pol), 5, start=True)
    assert len(driver.poll()) == 1
    hb = pb.HeartbeatRequest(execution_manager_id=driver.em)
    first = driver.register(job, 0)
    requeued = wait_until(
        lambda: driver.s.liveness.UpdateExecutionManagerHeartbeat(hb) and driver.poll(wait_ms=200),
        timeout=20,
        what="requeue",
    )
    assert len(requeued) == 1
    second = driver.register(job, 0)
    assert second.task_instance_id != first.task_instance_id
    driver.succeed(job, 0, first.task_instance_id, outputs_frame(1))
    assert driver.state(job) == JobState.SUCCEEDED


def test_malformed_requests_never_crash_the_service(driver: Driver) -> None:
    s = driver.s
    job = driver.submit(graphs.single(), 5, start=True)
    bad_calls = [
        (
            s.instances.RegisterTaskInstance,
            pb.RegisterTaskInstanceRequest(
                job_id=job, execution_manager_id=driver.em, session_id=driver.session
            ),
        ),
        (
            s.instances.ReportTaskOutcomes,
            pb.ReportTaskOutcomesRequest(
                execution_manager_id=driver.em,
                session_id=driver.session,
                outcomes=[pb.TaskOutcome(job_id=job, task_id=to_proto(0))],
            ),
        ),
        (
            s.instances.RegisterTaskInstance,
            pb.RegisterTaskInstanceRequest(
                job_id=job,
                task_id=pb.TaskId(index=2**40),
                execution_manager_id=driver.em,
                session_id=driver.session,
            ),
        ),
        (
            s.jobs.RegisterJob,
            pb.RegisterJobRequest(
                resource_group_id=driver.rg,
                password=PASSWORD,
                compressed_serialized_task_graph=b"\x28\xb5\x2f\xfd garbage",
                compressed_serialized_inputs=b"",
            ),
        ),
        (s.groups.VerifyResourceGroup, pb.VerifyResourceGroupRequest()),
    ]
    for call, request in bad_calls:
        code = code_of(call, request, timeout=30)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (call, code)
    assert driver.storage.serving()
    assert driver.state(job) == JobState.RUNNING


def _take(driver: Driver, max_items: int, **fields: int) -> pb.TakeReadyTasksReply:
    request = pb.TakeReadyTasksRequest(
        execution_manager_id=fields.get("em", driver.em),
        session_id=fields.get("session", driver.session),
        max_items=max_items,
        wait_ms=fields.get("wait_ms", 0),
    )
    return driver.s.instances.TakeReadyTasks(request, timeout=30)


def test_an_idle_em_takes_ready_tasks_registered_for_it(driver: Driver) -> None:
    job = driver.submit(graphs.flat(3), 1, 2, 3, start=True)
    reply = _take(driver, 2)
    assert [ctx.task_id.index for ctx in reply.tasks] == [0, 1]
    assert {ctx.job_id for ctx in reply.tasks} == {job}
    assert all(ctx.task_instance_id for ctx in reply.tasks)
    assert driver.progress(job).counts.running == 2, "registered for the EM that took them"
    assert [e.task_id.index for e in driver.poll()] == [2], "the scheduler gets the rest"
    assert _take(driver, 1).tasks == [], "nothing left (no wait asked)"
    # They are reported like any registered task.
    for ctx in reply.tasks:
        driver.succeed(job, ctx.task_id.index, ctx.task_instance_id, outputs_frame(1))
    assert driver.progress(job).counts.succeeded == 2


def test_a_take_is_fenced_like_a_registration(driver: Driver) -> None:
    job = driver.submit(graphs.single(), 1, start=True)
    assert code_of(_take, driver, 1, session=driver.session - 1) == grpc.StatusCode.NOT_FOUND
    unknown = driver.em + 1000
    assert code_of(_take, driver, 1, em=unknown) == grpc.StatusCode.NOT_FOUND
    assert driver.progress(job).counts.running == 0, "a refused take registered nothing"
    [entry] = driver.poll()
    assert entry.job_id == job, "and took nothing from the queue"


def test_entries_a_gone_caller_took_are_offered_again_at_once(driver: Driver) -> None:
    """An EM whose long poll was cut short (it stopped) leaves nothing registered for it: the
    storage thread still waiting takes the next entry, finds the call gone and offers the entry
    again, well before the visibility timeout (60 s) would."""
    request = pb.TakeReadyTasksRequest(
        execution_manager_id=driver.em, session_id=driver.session, max_items=1, wait_ms=2_000
    )
    call = driver.s.instances.TakeReadyTasks.future(request, timeout=30)
    assert call.cancel()
    job = driver.submit(graphs.single(), 1, start=True)
    entries = driver.poll(wait_ms=10_000)
    if not entries:  # the cancelled call took it first: it comes back once that call gives up
        entries = driver.poll(wait_ms=10_000)
    assert [(e.job_id, e.task_id.index) for e in entries] == [(job, 0)]
    assert driver.progress(job).counts.running == 0, "nothing was registered for the gone EM"
