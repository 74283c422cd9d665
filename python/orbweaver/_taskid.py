"""Task ids across the wire: the protobuf `TaskId` oneof <-> the core's `int` encoding."""

from __future__ import annotations

from orbweaver import errors
from orbweaver._core import TASK_CLEANUP, TASK_COMMIT
from orbweaver._proto import orbweaver_pb2 as pb

_VOID = pb.Void()


def to_proto(task_id: int) -> pb.TaskId:
    if task_id >= 0:
        return pb.TaskId(index=task_id)
    if task_id == TASK_COMMIT:
        return pb.TaskId(commit=_VOID)
    if task_id == TASK_CLEANUP:
        return pb.TaskId(cleanup=_VOID)
    raise ValueError(f"not a task id: {task_id}")


def from_proto(task_id: pb.TaskId) -> int:
    """Raise `InvalidArgument` when the oneof is unset or the index does not fit."""
    kind = task_id.WhichOneof("kind")
    if kind == "index":
        if task_id.index >= 2**32:
            raise errors.InvalidArgument(f"task index {task_id.index} is out of range")
        return int(task_id.index)
    if kind == "commit":
        return TASK_COMMIT
    if kind == "cleanup":
        return TASK_CLEANUP
    raise errors.InvalidArgument("task_id is missing")


def describe(task_id: int) -> str:
    if task_id == TASK_COMMIT:
        return "commit"
    if task_id == TASK_CLEANUP:
        return "cleanup"
    return f"task {task_id}"
