"""The EM-facing `SchedulerService` over real gRPC (in-process server on 127.0.0.1:0)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from orbweaver import _rpc
from orbweaver._core import TASK_CLEANUP, TASK_COMMIT
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver.scheduler.core import Assignment, Lane
from orbweaver.scheduler.dispatch import DispatchQueue
from orbweaver.scheduler.metrics import SchedulerMetrics
from orbweaver.scheduler.registry import EmRegistry
from orbweaver.scheduler.servicer import SchedulerServicer, add_to_server

pytestmark = pytest.mark.timeout(60)

SCHEDULER_ID = 11
SESSION = 3


@dataclass
class Harness:
    stub: pb_grpc.SchedulerServiceStub
    queue: DispatchQueue[Assignment]
    registry: EmRegistry
    metrics: SchedulerMetrics
    next_id: int = 1

    def offer(self, lane: Lane = Lane.TASK, job: int = 5, task: int = 0) -> Assignment:
        a = Assignment(self.next_id, SESSION, lane, 9, job, task)
        self.next_id += 1
        assert self.queue.enqueue(a, SESSION)
        return a


@pytest.fixture
def harness() -> Iterator[Harness]:
    queue: DispatchQueue[Assignment] = DispatchQueue(64, session_id=SESSION)
    registry = EmRegistry()
    metrics = SchedulerMetrics()
    servicer = SchedulerServicer(
        scheduler_id=SCHEDULER_ID,
        queue=queue,
        registry=registry,
        max_wait_s=0.3,
        max_batch=8,
        metrics=metrics,
    )
    server = _rpc.make_server("127.0.0.1:0", max_workers=8)
    add_to_server(servicer, server.grpc_server)
    server.start()
    channel = _rpc.make_channel(f"127.0.0.1:{server.port}")
    try:
        yield Harness(pb_grpc.SchedulerServiceStub(channel), queue, registry, metrics)
    finally:
        channel.close()
        queue.close()
        server.stop(0)


def sample(harness: Harness, name: str) -> float | None:
    return harness.metrics.registry.get_sample_value(name)


def record(a: Assignment, scheduler_id: int = SCHEDULER_ID) -> pb.TaskAssignmentRecord:
    return pb.TaskAssignmentRecord(assignment_id=a.assignment_id, scheduler_id=scheduler_id)


def test_empty_queue_answers_no_task(harness: Harness) -> None:
    reply = harness.stub.NextTask(pb.NextTaskRequest(execution_manager_id=1, wait_time_ms=20))
    assert reply.WhichOneof("result") == "no_task"
    assert 1 in harness.registry  # NextTask registers the EM
    batch = harness.stub.NextTasks(
        pb.NextTasksRequest(execution_manager_id=1, max_items=4, wait_time_ms=20)
    )
    assert list(batch.assignments) == []


def test_dispatch_records_the_assignment(harness: Harness) -> None:
    a = harness.offer(job=5, task=2)
    reply = harness.stub.NextTask(pb.NextTaskRequest(execution_manager_id=1, wait_time_ms=100))
    assert reply.WhichOneof("result") == "assignment"
    got = reply.assignment
    assert (got.assignment_id, got.resource_group_id, got.job_id) == (a.assignment_id, 9, 5)
    assert got.task_id == pb.TaskId(index=2)
    assert (got.scheduler_id, got.session_id) == (SCHEDULER_ID, SESSION)
    assert harness.registry.outstanding(1) == [a]
    assert sample(harness, "orbweaver_scheduler_assignments_dispatched_total") == 1


def test_termination_task_ids_on_the_wire(harness: Harness) -> None:
    harness.offer(Lane.COMMIT, job=6, task=TASK_COMMIT)
    harness.offer(Lane.CLEANUP, job=7, task=TASK_CLEANUP)
    reply = harness.stub.NextTasks(
        pb.NextTasksRequest(execution_manager_id=1, max_items=8, wait_time_ms=100)
    )
    kinds = [a.task_id.WhichOneof("kind") for a in reply.assignments]
    assert kinds == ["commit", "cleanup"]


def test_prev_assignment_ack_completes_and_foreign_ack_is_ignored(harness: Harness) -> None:
    a, b = harness.offer(task=0), harness.offer(task=1)
    first = harness.stub.NextTask(pb.NextTaskRequest(execution_manager_id=1, wait_time_ms=100))
    assert first.assignment.assignment_id == a.assignment_id
    second = harness.stub.NextTask(
        pb.NextTaskRequest(execution_manager_id=1, prev_assignment=record(a), wait_time_ms=100)
    )
    assert second.assignment.assignment_id == b.assignment_id
    assert harness.registry.outstanding(1) == [b]
    harness.stub.NextTask(
        pb.NextTaskRequest(
            execution_manager_id=1, prev_assignment=record(b, scheduler_id=99), wait_time_ms=0
        )
    )
    assert harness.registry.outstanding(1) == [b]  # another scheduler's ack: ignored
    assert sample(harness, "orbweaver_scheduler_assignments_acknowledged_total") == 1


def test_heartbeat_registers(harness: Harness) -> None:
    harness.stub.Heartbeat(pb.SchedulerHeartbeatRequest(execution_manager_id=4))
    assert 4 in harness.registry


def test_shutdown_completes_acks_and_reschedules_the_rest(harness: Harness) -> None:
    for task in range(3):
        harness.offer(task=task)
    reply = harness.stub.NextTasks(
        pb.NextTasksRequest(execution_manager_id=1, max_items=3, wait_time_ms=100)
    )
    assert len(reply.assignments) == 3
    got = list(reply.assignments)
    harness.stub.Shutdown(
        pb.ShutdownRequest(
            execution_manager_id=1,
            prev_assignments=[
                pb.TaskAssignmentRecord(assignment_id=x.assignment_id, scheduler_id=SCHEDULER_ID)
                for x in got[:2]
            ],
        )
    )
    assert 1 not in harness.registry
    lost = harness.registry.drain_reschedule()
    assert [x.assignment_id for x in lost] == [got[2].assignment_id]


def test_shutdown_of_unknown_em_is_not_found(harness: Harness) -> None:
    with pytest.raises(grpc.RpcError) as info:
        harness.stub.Shutdown(pb.ShutdownRequest(execution_manager_id=77))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_batch_returns_up_to_max_items_and_acks_first(harness: Harness) -> None:
    offered = [harness.offer(task=i) for i in range(5)]
    first = harness.stub.NextTasks(
        pb.NextTasksRequest(execution_manager_id=2, max_items=3, wait_time_ms=100)
    )
    assert [a.assignment_id for a in first.assignments] == [a.assignment_id for a in offered[:3]]
    acks = [record(a) for a in offered[:3]]
    second = harness.stub.NextTasks(
        pb.NextTasksRequest(execution_manager_id=2, acks=acks + acks, max_items=10, wait_time_ms=0)
    )
    assert [a.assignment_id for a in second.assignments] == [a.assignment_id for a in offered[3:]]
    assert harness.registry.outstanding(2) == offered[3:]
    # The server caps a batch at its own maximum (8 here).
    for i in range(12):
        harness.offer(task=10 + i)
    capped = harness.stub.NextTasks(
        pb.NextTasksRequest(execution_manager_id=2, max_items=1000, wait_time_ms=0)
    )
    assert len(capped.assignments) == 8


def test_max_items_zero_means_one(harness: Harness) -> None:
    harness.offer(task=0)
    harness.offer(task=1)
    reply = harness.stub.NextTasks(pb.NextTasksRequest(execution_manager_id=2, wait_time_ms=50))
    assert len(reply.assignments) == 1


def test_long_poll_is_capped_by_the_server_maximum(harness: Harness) -> None:
    start = time.monotonic()
    reply = harness.stub.NextTask(
        pb.NextTaskRequest(execution_manager_id=1, wait_time_ms=3_600_000), timeout=20
    )
    assert reply.WhichOneof("result") == "no_task"
    assert time.monotonic() - start < 15  # generous: the cap is 0.3 s


def test_long_poll_wakes_when_work_arrives(harness: Harness) -> None:
    threading.Timer(0.05, lambda: harness.offer(task=1)).start()
    reply = harness.stub.NextTask(pb.NextTaskRequest(execution_manager_id=1, wait_time_ms=250))
    assert reply.WhichOneof("result") == "assignment"


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("NextTask", pb.NextTaskRequest()),
        ("NextTasks", pb.NextTasksRequest()),
        ("Heartbeat", pb.SchedulerHeartbeatRequest()),
        ("Shutdown", pb.ShutdownRequest()),
    ],
)
def test_missing_execution_manager_id_is_invalid_argument(
    harness: Harness, method: str, request_: object
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        getattr(harness.stub, method)(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "execution_manager_id" in info.value.details()


def test_garbage_acks_get_a_sensible_answer(harness: Harness) -> None:
    reply = harness.stub.NextTasks(
        pb.NextTasksRequest(
            execution_manager_id=3,
            acks=[pb.TaskAssignmentRecord(), pb.TaskAssignmentRecord(assignment_id=2**64 - 1)],
            wait_time_ms=0,
        )
    )
    assert list(reply.assignments) == []
    harness.stub.Shutdown(
        pb.ShutdownRequest(execution_manager_id=3, prev_assignments=[pb.TaskAssignmentRecord()])
    )


def test_closed_queue_answers_unavailable(harness: Harness) -> None:
    harness.queue.close()
    with pytest.raises(grpc.RpcError) as info:
        harness.stub.NextTask(pb.NextTaskRequest(execution_manager_id=1, wait_time_ms=10))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


class _GoneContext:
    """A servicer context whose caller already went away."""

    def is_active(self) -> bool:
        return False

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"unexpected abort {code}: {details}")


def test_assignments_for_a_caller_that_left_are_rescheduled() -> None:
    queue: DispatchQueue[Assignment] = DispatchQueue(8, session_id=SESSION)
    registry = EmRegistry()
    servicer = SchedulerServicer(scheduler_id=SCHEDULER_ID, queue=queue, registry=registry)
    a = Assignment(1, SESSION, Lane.TASK, 9, 5, 0)
    queue.enqueue(a, SESSION)
    reply = servicer.NextTasks(
        pb.NextTasksRequest(execution_manager_id=1, max_items=4), _GoneContext()
    )
    assert list(reply.assignments) == []
    assert registry.outstanding(1) == []
    assert registry.drain_reschedule() == [a]
