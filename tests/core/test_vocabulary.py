"""The shared vocabularies agree everywhere they are spelled: the protobuf contract, the core's
exports (generated from the Rust enums) and the Python enums built from them."""

from __future__ import annotations

import enum

import pytest

from orbweaver import _core as core
from orbweaver import _taskid
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver.scheduler.core import Lane
from orbweaver.states import JobState, check_against_core
from orbweaver.storage.db import DbJobState, is_valid_transition

from ._helpers import flat

_PROTO_PREFIX = "JOB_STATE_"

# How the protobuf contract names each lane: the `TaskId.kind` oneof field of the lane's tasks and
# the `PollAllReply` field that carries the lane's entries.
_PROTO_LANES = {
    "TASK": ("index", "tasks"),
    "COMMIT": ("commit", "commit"),
    "CLEANUP": ("cleanup", "cleanup"),
}


def _proto_job_states() -> list[tuple[str, int]]:
    items = pb.JobState.items()
    assert items[0] == (f"{_PROTO_PREFIX}UNSPECIFIED", 0)
    assert all(name.startswith(_PROTO_PREFIX) for name, _ in items)
    return [(name.removeprefix(_PROTO_PREFIX), value) for name, value in items[1:]]


def test_job_states_agree_name_by_name_and_value_by_value() -> None:
    proto = _proto_job_states()
    assert [name for name, _ in proto] == [
        "READY", "RUNNING", "COMMIT_READY", "CLEANUP_READY", "SUCCEEDED", "FAILED", "CANCELLED",
    ]  # fmt: skip
    assert list(core.JOB_STATES) == proto
    assert [(s.name, s.value) for s in JobState] == proto
    assert [(s.name, int(s)) for s in DbJobState] == proto
    for name, code in proto:
        assert getattr(core, f"JOB_{name}") == code, name
    # 0 is the protobuf's "unset", no state of the core's.
    with pytest.raises(core.InvalidRequestError, match="unknown job state 0"):
        core.is_terminal(0)


def test_terminal_states_and_transitions_are_the_cores() -> None:
    for s in JobState:
        assert s.is_terminal == DbJobState(s).is_terminal == core.is_terminal(s), s
    assert [s.name for s in JobState if s.is_terminal] == ["SUCCEEDED", "FAILED", "CANCELLED"]
    codes = [code for _, code in core.JOB_STATES]
    for a in codes:
        for b in codes:
            assert is_valid_transition(a, b) == core.is_valid_transition(a, b), (a, b)
    # The DB layer answers "no" for codes the core does not know instead of raising.
    assert not is_valid_transition(0, JobState.RUNNING)
    assert not is_valid_transition(JobState.RUNNING, max(codes) + 1)


def test_db_spellings_cover_every_state_once() -> None:
    spellings = [s.db_name for s in DbJobState]
    assert len(set(spellings)) == len(core.JOB_STATES)
    for s in DbJobState:
        assert DbJobState.from_db_name(s.db_name) is s
        assert str(s) == s.db_name


def test_lanes_agree_with_the_core_and_the_proto() -> None:
    assert [(lane.name, lane.value) for lane in Lane] == list(core.LANES)
    for name, code in core.LANES:
        assert getattr(core, f"LANE_{name}") == code, name
    kinds = [f.name for f in pb.TaskId.DESCRIPTOR.oneofs_by_name["kind"].fields]
    reply_lists = [f.name for f in pb.PollAllReply.DESCRIPTOR.fields if f.is_repeated]
    assert [_PROTO_LANES[lane.name][0] for lane in Lane] == kinds
    assert [_PROTO_LANES[lane.name][1] for lane in Lane] == reply_lists


def test_each_lane_carries_the_task_kind_the_proto_names() -> None:
    """A job in each phase puts its next task in one lane; that task's protobuf id is the lane's
    kind."""
    cache = core.JobCache()
    for job in (1, 2, 3):
        cache.insert(job, 7, flat(1, commit=True, cleanup=True))
        cache.start(job)
    # Job 1 stays Running (its task waits in the task lane); job 2 completes (commit lane); job 3
    # is cancelled (cleanup lane).
    ready = {t[1]: t for t in cache.poll(Lane.TASK, 10, 0)}
    ctx = cache.register(2, ready.pop(2)[2], 5, 0)
    done = cache.report_success(2, ctx.task_id, ctx.instance_id, core.wire_encode([b"x"]))
    assert done is not None and done.kind == core.OUTCOME_JOB_COMPLETED
    assert cache.complete(2, 0) == JobState.COMMIT_READY
    assert cache.cancel(3, 0) == JobState.CLEANUP_READY
    polled = {lane: cache.poll(lane, 10, 0) for lane in Lane}
    polled[Lane.TASK] = list(ready.values())
    for lane, entries in polled.items():
        assert entries, lane
        for _, _, task_id in entries:
            assert _taskid.to_proto(task_id).WhichOneof("kind") == _PROTO_LANES[lane.name][0]


def test_outcome_kinds_and_task_states_are_exported_from_the_enums() -> None:
    assert [name for name, _ in core.OUTCOME_KINDS] == [
        "JOB_COMPLETED", "JOB_FAILED", "COMMIT_SUCCEEDED", "CLEANUP_SUCCEEDED",
    ]  # fmt: skip
    for name, code in core.OUTCOME_KINDS:
        assert getattr(core, f"OUTCOME_{name}") == code, name
    assert len({code for _, code in core.OUTCOME_KINDS}) == len(core.OUTCOME_KINDS)
    assert [name for name, _ in core.TASK_STATES] == [
        "PENDING", "READY", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED",
    ]  # fmt: skip
    assert [code for _, code in core.TASK_STATES] == list(range(len(core.TASK_STATES)))


def test_an_enum_that_disagrees_with_the_core_fails_loudly() -> None:
    class Stale(enum.IntEnum):
        TASK = 0
        COMMIT = 1

    with pytest.raises(ImportError) as e:
        check_against_core(Stale, core.LANES, "lanes")
    assert "lanes [('TASK', 0), ('COMMIT', 1)] disagree" in str(e.value)
    assert "('CLEANUP', 2)" in str(e.value)

    class Renumbered(enum.IntEnum):
        TASK = 0
        COMMIT = 2
        CLEANUP = 1

    with pytest.raises(ImportError, match="disagree with the core's"):
        check_against_core(Renumbered, core.LANES, "lanes")
    check_against_core(Lane, core.LANES, "lanes")
