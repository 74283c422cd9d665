"""Size and count limits of the core: submissions (graph, inputs, tasks), the outputs a job keeps
in the cache, the task_io a registration hands out, and releasing a finished job's outputs."""

from __future__ import annotations

import json

import msgpack
import pytest

from orbweaver import _core as core

from ._helpers import flat, graph, task

MiB = 1 << 20


def _flat_doc(n: int) -> bytes:
    return json.dumps(graph([task("a", 1, 1, None) for _ in range(n)])).encode()


def _inputs(n: int, size: int = 1) -> bytes:
    return core.wire_encode([msgpack.packb(b"x" * size) for _ in range(n)])


def test_limit_error_is_a_core_error_with_its_own_class() -> None:
    assert issubclass(core.LimitExceededError, core.CoreError)
    assert issubclass(core.LimitExceededError, ValueError)
    assert not issubclass(core.LimitExceededError, core.InvalidGraphError)


def test_a_zstd_bomb_of_inputs_is_refused_at_the_input_limit() -> None:
    doc = core.compress(_flat_doc(1))
    frame = _inputs(1, 8 * MiB)
    bomb = core.compress(frame)
    assert len(bomb) < 4096
    with pytest.raises(core.LimitExceededError) as e:
        core.Submission(doc, bomb, max_input_bytes=MiB)
    assert e.value.kind == "InputsTooLarge"
    assert str(e.value) == (
        f"graph inputs decompress to {len(frame)} bytes (limit max_input_bytes = {MiB})"
    )
    # Exactly at the limit is accepted; the default (1 GiB) accepts it too.
    assert core.Submission(doc, bomb, max_input_bytes=len(frame)).num_inputs == 1
    assert core.Submission(doc, bomb).num_inputs == 1
    shared = core.Submission(doc, core.compress(_inputs(1))).graph
    with pytest.raises(core.LimitExceededError) as e:
        core.Submission.with_graph(shared, bomb, max_input_bytes=MiB)
    assert e.value.kind == "InputsTooLarge"
    assert core.Submission.with_graph(shared, bomb).num_inputs == 1


def test_a_graph_json_over_the_graph_limit_is_refused() -> None:
    doc = _flat_doc(50)
    with pytest.raises(core.LimitExceededError) as e:
        core.Submission(core.compress(doc), core.compress(_inputs(50)), max_graph_bytes=1000)
    assert e.value.kind == "GraphTooLarge"
    assert "(limit max_graph_bytes = 1000)" in str(e.value)
    ok = core.Submission(
        core.compress(doc), core.compress(_inputs(50)), max_graph_bytes=len(doc), max_tasks=50
    )
    assert ok.graph.num_tasks == 50


def test_too_many_tasks_names_the_count_and_the_limit() -> None:
    # A tiny compressed graph of many tasks (the amplification the limit closes).
    doc = core.compress(_flat_doc(2500))
    assert len(doc) < 2000
    with pytest.raises(core.LimitExceededError) as e:
        core.Submission(doc, core.compress(_inputs(2500)), max_tasks=1000)
    assert e.value.kind == "TooManyTasks"
    assert str(e.value) == "the graph has 2500 tasks, above the limit of 1000 (max_tasks)"
    assert core.Submission(doc, core.compress(_inputs(2500))).graph.num_tasks == 2500


def _running(cache: core.JobCache, n: int, **kw: bool) -> list[core.ExecutionContext]:
    cache.insert(1, 1, flat(n, **kw))
    cache.start(1)
    entries = cache.poll(core.LANE_TASK, 100, 0, 0)
    regs = cache.register_batch([(j, t) for _, j, t in entries], 1, 0)
    assert all(isinstance(r, core.ExecutionContext) for r in regs)
    return [r for r in regs if isinstance(r, core.ExecutionContext)]


def test_outputs_over_the_task_limit_fail_the_job_through_the_usual_outcome() -> None:
    cache = core.JobCache(max_task_output_bytes=1000)
    a, b, c = _running(cache, 3)
    assert cache.report_success(1, 0, a.instance_id, core.wire_encode([b"x" * 1000])) is None
    results = cache.report_batch(
        [
            (1, 1, b.instance_id, core.wire_encode([b"x" * 1001])),
            (1, 2, c.instance_id, core.wire_encode([b"z" * 5000])),
        ]
    )
    failed = results[0]
    assert isinstance(failed, core.Outcome)
    assert failed.kind == core.OUTCOME_JOB_FAILED and failed.outputs is None
    assert failed.message == (
        "task 1 (`tests.inc`): output of 1001 bytes exceeds the limit of 1000 bytes "
        "(max_task_output_bytes)"
    )
    assert results[1] is None, "one JOB_FAILED outcome per job"
    assert cache.state(1) == core.JOB_RUNNING, "the caller persists, then fails the job"
    assert cache.live_instances() == 0
    cache.fail(1, failed.message, 5)
    assert cache.state(1) == core.JOB_FAILED


def test_a_job_holding_too_much_fails() -> None:
    # Three graph inputs of 6 bytes (msgpack bin of 4 bytes): 18 bytes held before any output.
    cache = core.JobCache(max_job_bytes=18 + 100)
    a, b, _ = _running(cache, 3)
    assert cache.report_success(1, 0, a.instance_id, core.wire_encode([b"x" * 100])) is None
    o = cache.report_success(1, 1, b.instance_id, core.wire_encode([b"x"]))
    assert o is not None and o.kind == core.OUTCOME_JOB_FAILED
    assert o.message == (
        "task 1 (`tests.inc`): output of 1 bytes would make the job hold 119 bytes, above the "
        "limit of 118 bytes (max_job_bytes)"
    )


def test_registration_refuses_task_io_over_the_limit() -> None:
    cache = core.JobCache()
    cache.insert(1, 1, flat(2, commit=True))
    cache.start(1)
    # Each task's inputs frame: count + length + 6 bytes of msgpack bin = 14 bytes.
    with pytest.raises(core.TaskInputsTooLargeError) as e:
        cache.register(1, 0, 1, 0, max_task_io_bytes=13)
    assert isinstance(e.value, core.LimitExceededError)
    assert e.value.kind == "TaskInputsTooLarge"
    assert str(e.value) == (
        "job 1 task 0 (`tests.inc`): task inputs of 14 bytes exceed the limit of 13 bytes "
        "(max_task_io_bytes)"
    )
    assert cache.live_instances() == 0 and cache.progress(1)[1] == 2, "nothing changed"
    regs = cache.register_batch([(1, 0), (1, 1)], 1, 0, max_task_io_bytes=14)
    ctxs = [r for r in regs if isinstance(r, core.ExecutionContext)]
    assert len(ctxs) == 2 and all(len(c.task_io) == 14 for c in ctxs)
    results = cache.report_batch(
        [(1, c.task_id, c.instance_id, core.wire_encode([b"o" * 300])) for c in ctxs]
    )
    done = results[1]
    assert isinstance(done, core.Outcome) and done.outputs is not None
    cache.complete(1, 0)
    big = cache.register_batch([(1, core.TASK_COMMIT)], 1, 0, max_task_io_bytes=10)
    assert isinstance(big[0], core.TaskInputsTooLargeError)
    assert str(big[0]).startswith(
        f"job 1 commit task (`tests.term`): job outputs of {len(done.outputs)} bytes"
    )
    assert cache.register(1, core.TASK_COMMIT, 1, 0).task_io == done.outputs


def test_dropped_outputs_raise_a_distinct_error() -> None:
    cache = core.JobCache()
    (ctx,) = _running(cache, 1, commit=True)
    done = cache.report_success(1, 0, ctx.instance_id, core.wire_encode([b"out"]))
    assert done is not None and done.outputs is not None
    assert cache.complete(1, 0) == core.JOB_COMMIT_READY
    assert cache.drop_outputs(1) is False, "the commit task still needs them"
    commit = cache.register(1, core.TASK_COMMIT, 1, 0)
    assert commit.task_io == cache.outputs(1) == done.outputs
    cache.report_success(1, core.TASK_COMMIT, commit.instance_id, b"")
    assert cache.finish(1, 0) == core.JOB_SUCCEEDED
    assert cache.drop_outputs(1) is True
    with pytest.raises(core.OutputsReleasedError) as e:
        cache.outputs(1)
    assert e.value.kind == "OutputsReleased"
    assert isinstance(e.value, LookupError) and not isinstance(e.value, core.StaleError)
    assert "read them from the database" in str(e.value)
    assert cache.drop_outputs(1) is False
    with pytest.raises(core.JobNotFoundError):
        cache.drop_outputs(2)
