"""JobCache lifecycle, error types and messages through the binding."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orbweaver import _core as core

from ._helpers import bin_value, flat, graph, layered, submission, task


def drain(cache: core.JobCache, lane: int = core.LANE_TASK) -> list[tuple[int, int, int]]:
    return cache.poll(lane, 1 << 20, 0)


def started(n: int = 3, job: int = 1, **kw: object) -> core.JobCache:
    cache = core.JobCache()
    cache.insert(job, 7, flat(n, **kw))  # type: ignore[arg-type]
    assert cache.check_transition(job, core.JOB_RUNNING) == core.JOB_READY
    assert cache.start(job) == n
    return cache


def test_full_lifecycle_with_commit() -> None:
    cache = started(3, commit=True, cleanup=True)
    entries = drain(cache)
    assert entries == [(7, 1, 0), (7, 1, 1), (7, 1, 2)]
    ctxs = cache.register_batch([(1, t) for _, _, t in entries], em_id=5, now_ms=0)
    assert all(isinstance(c, core.ExecutionContext) for c in ctxs)
    c0 = ctxs[0]
    assert isinstance(c0, core.ExecutionContext)
    assert (c0.job_id, c0.task_id, c0.resource_group_id, c0.package, c0.task_func) == (
        1,
        0,
        7,
        "tests",
        "inc",
    )
    assert (c0.soft_timeout_ms, c0.hard_timeout_ms) == (150000, 300000)
    assert core.wire_decode(c0.task_io) == [bin_value((0).to_bytes(4, "little"))]
    assert cache.live_instances() == 3
    results = cache.report_batch(
        [
            (1, c.task_id, c.instance_id, core.wire_encode([b"out%d" % c.task_id]))
            for c in ctxs
            if isinstance(c, core.ExecutionContext)
        ]
    )
    assert results[:2] == [None, None]
    done = results[2]
    assert isinstance(done, core.Outcome)
    assert done.kind == core.OUTCOME_JOB_COMPLETED and done.has_commit and done.job_id == 1
    assert done.outputs is not None
    assert core.decode_outputs(done.outputs) == [b"out0", b"out1", b"out2"]
    assert cache.state(1) == core.JOB_RUNNING  # two-phase: the caller persists first
    assert cache.complete(1, 100) == core.JOB_COMMIT_READY
    assert cache.outputs(1) == done.outputs
    assert drain(cache, core.LANE_COMMIT) == [(7, 1, core.TASK_COMMIT)]
    cc = cache.register(1, core.TASK_COMMIT, 5, 100)
    assert cc.task_io == done.outputs
    o = cache.report_success(1, core.TASK_COMMIT, cc.instance_id, b"")
    assert o is not None and o.kind == core.OUTCOME_COMMIT_SUCCEEDED
    assert cache.finish(1, 200) == core.JOB_SUCCEEDED
    assert cache.progress(1) == (0, 0, 0, 3, 0, 0)
    assert cache.live_instances() == 0
    assert cache.evict_terminated(200 + 9_999, 10_000) == []
    assert cache.evict_terminated(200 + 10_000, 10_000) == [1]
    assert 1 not in cache and len(cache) == 0


def test_failure_path_and_messages() -> None:
    cache = started(2)
    drain(cache)
    a = cache.register(1, 0, 1, 0)
    b = cache.register(1, 1, 1, 0)
    o = cache.report_failure(1, 0, a.instance_id, "ValueError: bad input")
    assert o is not None and o.kind == core.OUTCOME_JOB_FAILED
    assert o.message is not None and "ValueError: bad input" in o.message
    assert "task 0 (tests.inc)" in o.message
    assert cache.report_failure(1, 1, b.instance_id, "second") is None  # JOB_FAILED once
    cache.fail(1, o.message, 10)
    assert cache.state(1) == core.JOB_FAILED
    assert cache.error(1) == o.message
    assert cache.progress(1) == (0, 0, 0, 0, 2, 0)
    assert cache.live_instances() == 0
    with pytest.raises(core.StaleError) as e:
        cache.fail(1, "again", 11)
    assert e.value.kind == "JobAlreadyTerminated"
    with pytest.raises(core.StaleError) as e:
        cache.outputs(1)
    assert e.value.kind == "JobNotSucceeded"


def test_invalid_requests_change_nothing() -> None:
    cache = started(2)
    drain(cache)
    ctx = cache.register(1, 0, 1, 0)
    cases: list[Callable[[], object]] = [
        lambda: cache.report_success(1, 9, ctx.instance_id, core.wire_encode([b"x"])),
        lambda: cache.report_success(1, 0, ctx.instance_id, core.wire_encode([])),
        lambda: cache.report_success(1, 0, ctx.instance_id, b"\x07"),
        lambda: cache.register(1, -7, 1, 0),
        lambda: cache.report_failure(1, 2, ctx.instance_id, "x"),
        lambda: cache.register(1, core.TASK_COMMIT, 1, 0),
        lambda: cache.poll(9, 1, 0),
    ]
    for call in cases:
        with pytest.raises(core.InvalidRequestError) as e:
            call()
        assert isinstance(e.value, ValueError) and e.value.kind
    assert cache.progress(1) == (0, 1, 1, 0, 0, 0)
    assert cache.live_instances() == 1
    assert cache.report_success(1, 0, ctx.instance_id, core.wire_encode([b"x"])) is None


def test_stale_errors() -> None:
    cache = core.JobCache()
    cache.insert(1, 1, layered(2, 2, 2))
    with pytest.raises(core.StaleError) as e:
        cache.register(1, 0, 1, 0)
    assert e.value.kind == "JobNotStarted"
    cache.start(1)
    with pytest.raises(core.StaleError) as e:
        cache.start(1)
    assert e.value.kind == "JobAlreadyStarted"
    with pytest.raises(core.StaleError) as e:
        cache.register(1, 2, 1, 0)
    assert e.value.kind == "TaskNotReady"
    a = cache.register(1, 0, 1, 0)
    with pytest.raises(core.StaleError) as e:
        cache.register(1, 0, 1, 0)
    assert e.value.kind == "TaskInstanceLimitExceeded"
    assert cache.report_success(1, 0, a.instance_id, core.wire_encode([b"v"])) is None
    with pytest.raises(core.StaleError) as e:
        cache.report_success(1, 0, a.instance_id, core.wire_encode([b"v"]))
    assert e.value.kind == "InvalidTaskInstanceId"
    with pytest.raises(core.StaleError) as e:
        cache.register(1, 0, 1, 0)
    assert e.value.kind == "TaskAlreadyTerminated"
    with pytest.raises(core.JobNotFoundError) as nf:
        cache.register(99, 0, 1, 0)
    assert nf.value.kind == "JobNotFound" and "99" in str(nf.value)


def test_batches_return_exception_instances() -> None:
    cache = started(2)
    drain(cache)
    regs = cache.register_batch([(1, 0), (1, 0), (2, 0), (1, -9), (1, 1)], 1, 0)
    assert isinstance(regs[0], core.ExecutionContext)
    assert isinstance(regs[1], core.StaleError) and regs[1].kind == "TaskInstanceLimitExceeded"
    assert isinstance(regs[2], core.JobNotFoundError)
    assert isinstance(regs[3], core.InvalidRequestError)
    assert isinstance(regs[4], core.ExecutionContext)
    r0, r4 = regs[0], regs[4]
    assert isinstance(r0, core.ExecutionContext) and isinstance(r4, core.ExecutionContext)
    reps = cache.report_batch(
        [
            (1, 0, r0.instance_id, core.wire_encode([b"a"])),
            (1, 0, r0.instance_id, core.wire_encode([b"a"])),
            (1, 1, r4.instance_id, "boom"),
        ]
    )
    assert reps[0] is None
    assert isinstance(reps[1], core.StaleError)
    assert isinstance(reps[2], core.Outcome) and reps[2].kind == core.OUTCOME_JOB_FAILED
    with pytest.raises(TypeError):
        cache.report_batch([(1, 0, 1, 42)])  # type: ignore[list-item]


def test_cancel_semantics() -> None:
    # Ready job: cancelled directly, no cleanup even though there is a cleanup task.
    cache = core.JobCache()
    cache.insert(1, 1, flat(2, cleanup=True))
    assert cache.cancel(1, 5) == core.JOB_CANCELLED
    with pytest.raises(core.StaleError) as e:
        cache.cancel(1, 6)
    assert e.value.kind == "JobAlreadyCancelled"
    # Running with cleanup: CLEANUP_READY; the cleanup task receives the graph inputs.
    cache = started(2, cleanup=True)
    assert cache.cancel(1, 5) == core.JOB_CLEANUP_READY
    with pytest.raises(core.StaleError) as e:
        cache.cancel(1, 6)
    assert e.value.kind == "JobCancellationAlreadyRequested"
    assert drain(cache, core.LANE_CLEANUP) == [(7, 1, core.TASK_CLEANUP)]
    cl = cache.register(1, core.TASK_CLEANUP, 1, 5)
    assert core.wire_decode(cl.task_io) == [bin_value(i.to_bytes(4, "little")) for i in (0, 1)]
    o = cache.report_success(1, core.TASK_CLEANUP, cl.instance_id, b"")
    assert o is not None and o.kind == core.OUTCOME_CLEANUP_SUCCEEDED
    assert cache.finish(1, 7) == core.JOB_CANCELLED
    # Running without cleanup: CANCELLED.
    cache = started(2)
    assert cache.cancel(1, 5) == core.JOB_CANCELLED


def test_cancel_racing_with_completion() -> None:
    cache = started(1, cleanup=True)
    drain(cache)
    c = cache.register(1, 0, 1, 0)
    o = cache.report_success(1, 0, c.instance_id, core.wire_encode([b"x"]))
    assert o is not None and o.kind == core.OUTCOME_JOB_COMPLETED
    assert cache.cancel(1, 1) == core.JOB_CLEANUP_READY
    with pytest.raises(core.StaleError) as e:
        cache.complete(1, 2)
    assert e.value.kind == "JobNoLongerRunning"


def test_check_transition() -> None:
    cache = started(1)
    assert cache.check_transition(1, core.JOB_CANCELLED) == core.JOB_RUNNING
    with pytest.raises(core.StaleError):
        cache.check_transition(1, core.JOB_READY)
    with pytest.raises(core.InvalidRequestError):
        cache.check_transition(1, 42)
    with pytest.raises(core.InvalidRequestError) as e:
        cache.check_transition(1, core.JOB_COMMIT_READY)
    assert e.value.kind == "UndefinedCommitTask"


def test_recovery_shapes() -> None:
    s = flat(2, commit=True, cleanup=True)
    outputs = core.encode_outputs([b"a", b"b"])
    cache = core.JobCache()
    cache.recover(1, 1, s, core.JOB_READY, None)
    cache.recover(2, 1, s, core.JOB_RUNNING, None)
    cache.recover(3, 1, s, core.JOB_COMMIT_READY, outputs)
    cache.recover(4, 1, s, core.JOB_CLEANUP_READY, None)
    assert [cache.state(j) for j in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert drain(cache) == []  # recovery enqueues nothing
    assert cache.resend_ready() == 4
    assert drain(cache) == [(1, 2, 0), (1, 2, 1)]
    assert drain(cache, core.LANE_COMMIT) == [(1, 3, core.TASK_COMMIT)]
    assert drain(cache, core.LANE_CLEANUP) == [(1, 4, core.TASK_CLEANUP)]
    assert cache.register(3, core.TASK_COMMIT, 1, 0).task_io == outputs
    with pytest.raises(core.StaleError) as e:
        cache.register(3, 0, 1, 0)
    assert e.value.kind == "JobNoLongerRunning"
    for state, out, kind in [
        (core.JOB_COMMIT_READY, None, "MissingJobOutputs"),
        (core.JOB_COMMIT_READY, b"\x09", "InvalidJobOutputs"),
        (core.JOB_SUCCEEDED, None, "UnrecoverableState"),
    ]:
        with pytest.raises(core.RecoveryError) as r:
            cache.recover(10, 1, s, state, out)
        assert r.value.kind == kind and "job 10" in str(r.value)
    plain = flat(1)
    with pytest.raises(core.RecoveryError) as r:
        cache.recover(11, 1, plain, core.JOB_CLEANUP_READY, None)
    assert r.value.kind == "UndefinedCleanupTask"
    with pytest.raises(core.InternalError) as i:
        cache.recover(1, 1, s, core.JOB_READY, None)
    assert i.value.kind == "JobAlreadyExists"
    assert 10 not in cache and 11 not in cache


def test_recover_running_with_finished_tasks() -> None:
    """A chain a -> b -> c whose a and b outputs were persisted: only c is offered, it reads b's
    persisted output, and its report completes the job."""
    doc = graph([task("a", 1, 1, None), task("b", 1, 1, [(0, 0)]), task("c", 1, 1, [(1, 0)])])
    s = submission(doc, [b"x"])
    a, b = bin_value(b"a"), bin_value(b"b")
    cache = core.JobCache()
    assert (
        cache.recover(
            1,
            7,
            s,
            core.JOB_RUNNING,
            None,
            [(1, core.wire_encode([b])), (0, core.wire_encode([a]))],
        )
        is None
    )
    assert cache.progress(1) == (0, 1, 0, 2, 0, 0)
    assert cache.resend_ready() == 1
    assert drain(cache) == [(7, 1, 2)]
    ctx = cache.register(1, 2, 1, 0)
    assert core.wire_decode(ctx.task_io) == [b]
    c = bin_value(b"c")
    [outcome] = cache.report_batch([(1, 2, ctx.instance_id, core.wire_encode([c]))])
    assert isinstance(outcome, core.Outcome) and outcome.kind == core.OUTCOME_JOB_COMPLETED
    assert outcome.outputs is not None and core.decode_outputs(outcome.outputs) == [c]

    # Every task persisted: the job is complete already, the caller persists the outcome.
    frames = [(t, core.wire_encode([v])) for t, v in enumerate((a, b, c))]
    done = cache.recover(2, 7, s, core.JOB_RUNNING, None, frames)
    assert isinstance(done, core.Outcome) and done.kind == core.OUTCOME_JOB_COMPLETED
    assert done.job_id == 2 and done.outputs is not None
    assert cache.complete(2, 0) == core.JOB_SUCCEEDED
    assert core.decode_outputs(cache.outputs(2)) == [c]

    with pytest.raises(core.RecoveryError) as r:
        cache.recover(3, 7, s, core.JOB_RUNNING, None, [(5, core.wire_encode([a]))])
    assert r.value.kind == "InvalidTaskOutputs" and "task 5" in str(r.value)
    with pytest.raises(core.InvalidRequestError) as e:
        cache.recover(4, 7, s, core.JOB_READY, None, [])
    assert e.value.kind == "UnexpectedTaskOutputs" and "job 4" in str(e.value)
    assert 3 not in cache and 4 not in cache


def test_explain_and_progress() -> None:
    cache = core.JobCache()
    policy = {"max_num_retry": 2, "max_num_instances": 1}
    doc = graph([task("a", 1, 1, None, policy), task("b", 1, 1, [(0, 0)]), task("c", 1, 1, None)])
    cache.insert(1, 1, submission(doc, [b"x", b"y"]))
    cache.start(1)
    a = cache.register(1, 0, 1, 0)
    assert cache.report_failure(1, 0, a.instance_id, "flaky") is None
    cache.register(1, 2, 1, 0)
    why = {t: (reason, detail) for t, reason, detail in cache.explain(1, 10)}
    assert why[0][0] == "retrying" and "2 retries" not in why[0][1]
    assert why[1][0] == "pending_parents"
    assert why[2][0] == "running"
    assert cache.progress(1) == (1, 1, 1, 0, 0, 0)
    assert cache.total_tasks(1) == 3
    assert len(cache.explain(1, 1)) == 1


def test_gc_instances() -> None:
    cache = started(3, policy={"max_num_retry": 0, "max_num_instances": 2})
    drain(cache)
    cache.register(1, 0, em_id=1, now_ms=0)
    cache.register(1, 1, em_id=2, now_ms=0)
    r = cache.gc_instances(150_000, [2])
    assert (r.removed_dead, r.requeued_dead, r.requeued_soft_timeout) == (1, 1, 1)
    assert cache.live_instances() == 1
    assert sorted(t for _, _, t in drain(cache)) == [0, 1]
    again = cache.gc_instances(300_000, [])
    assert again.requeued_soft_timeout == 0
    assert "removed_terminal" in repr(again)


def test_remove_and_job_ids() -> None:
    cache = core.JobCache()
    for j in (3, 1, 2):
        cache.insert(j, 1, flat(1))
    assert cache.job_ids() == [1, 2, 3]
    assert cache.remove([1, 4, 2, 1]) == 2
    assert cache.job_ids() == [3]
    assert cache.resource_group(3) == 1
    assert not cache.has_commit(3) and not cache.has_cleanup(3)


def test_capacities_and_spill() -> None:
    with pytest.raises(core.InvalidRequestError):
        core.JobCache(task_capacity=0)
    cache = core.JobCache(task_capacity=2)
    cache.insert(1, 1, flat(10))
    cache.start(1)
    assert cache.queue_depths() == (10, 0, 0)  # 2 in the lane, 8 parked: nothing lost
    got = []
    while batch := cache.poll(core.LANE_TASK, 3, 1):
        got.extend(batch)
    assert sorted(t for _, _, t in got) == list(range(10))


def test_poll_all_and_close() -> None:
    cache = started(1)
    tasks, commit, cleanup = cache.poll_all(10, 10, 10, 1000)
    assert tasks == [(7, 1, 0)] and commit == [] and cleanup == []
    cache.close()
    assert cache.poll(core.LANE_TASK, 1, 60_000) == []
