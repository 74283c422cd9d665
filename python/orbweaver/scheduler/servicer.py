"""The EM-facing gRPC `SchedulerService`, with the batch `NextTasks`.

* `NextTask(em, prev_assignment?, wait_time_ms)`: acknowledge `prev_assignment`, long-poll the
  dispatch queue, record the assignment as outstanding for the EM; wire compatible with the
  reference (`no_task` when nothing arrived in time).
* `NextTasks(em, acks[], max_items, wait_time_ms)`: acknowledge every ack first (idempotent, may
  be repeated), then return up to `max_items` assignments, waiting for the first one.
* `Heartbeat(em)`: keep the EM alive (registering it on first contact).
* `Shutdown(em, prev_assignments[])`: acknowledge, then forget the EM and reschedule whatever it
  still held; NOT_FOUND for an unknown EM.

Acks carrying another scheduler's id are ignored. Long-poll waits are capped by the server's
maximum so a handler thread is never parked for longer than that. Every handler goes through
`_rpc.servicer_method`, so no request can take the server down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import grpc

from orbweaver import _rpc, _taskid, _trace, errors
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._streamed import CallsServed, StreamLimits
from orbweaver.scheduler.core import Assignment
from orbweaver.scheduler.dispatch import Delivery, DispatchQueue
from orbweaver.scheduler.metrics import SchedulerMetrics
from orbweaver.scheduler.registry import EmRegistry

log = logging.getLogger("orbweaver.scheduler.servicer")

DEFAULT_MAX_WAIT_S = 30.0
DEFAULT_MAX_BATCH = 256


def _em_id(value: int) -> int:
    if value == 0:
        raise errors.InvalidArgument("execution_manager_id is required (got 0)")
    return value


class SchedulerServicer(CallsServed, pb_grpc.SchedulerServiceServicer):
    """Serves assignments from a dispatch queue and records them in an EM registry."""

    def __init__(
        self,
        *,
        scheduler_id: int,
        queue: DispatchQueue[Assignment],
        registry: EmRegistry,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        max_batch: int = DEFAULT_MAX_BATCH,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.scheduler_id = scheduler_id
        self._queue = queue
        self._registry = registry
        self._max_wait_s = max_wait_s
        self._max_batch = max(1, max_batch)
        self._metrics = metrics

    # -- helpers --------------------------------------------------------------------------------

    def _wait(self, wait_time_ms: int) -> float:
        return min(wait_time_ms / 1000.0, self._max_wait_s)

    def _ack(self, em_id: int, records: Iterable[pb.TaskAssignmentRecord]) -> int:
        completed = 0
        for record in records:
            if record.scheduler_id != self.scheduler_id:
                log.info(
                    "ignoring ack for another scheduler",
                    extra={
                        "em_id": em_id,
                        "assignment_id": record.assignment_id,
                        "ack_scheduler_id": record.scheduler_id,
                        "scheduler_id": self.scheduler_id,
                    },
                )
                continue
            if self._registry.complete(em_id, record.assignment_id):
                completed += 1
        if completed and self._metrics is not None:
            self._metrics.assignments_acknowledged.inc(completed)
        return completed

    def _take(
        self, em_id: int, max_items: int, wait_s: float, context: grpc.ServicerContext
    ) -> list[Delivery[Assignment]]:
        deliveries = self._queue.dequeue_many(max_items, wait_s)
        if not deliveries:
            return []
        assignments = [d.item for d in deliveries]
        if not context.is_active():
            # The caller went away while we waited: it will never see these.
            log.info(
                "caller left before receiving assignments; rescheduling them",
                extra={"em_id": em_id, "count": len(assignments)},
            )
            self._registry.requeue(assignments)
            return []
        self._registry.assign(em_id, assignments)
        if self._metrics is not None:
            self._metrics.assignments_dispatched.inc(len(assignments))
        return deliveries

    def _to_proto(self, delivery: Delivery[Assignment]) -> pb.TaskAssignment:
        a = delivery.item
        return pb.TaskAssignment(
            assignment_id=a.assignment_id,
            resource_group_id=a.resource_group_id,
            job_id=a.job_id,
            task_id=_taskid.to_proto(a.task_id),
            scheduler_id=self.scheduler_id,
            session_id=delivery.session_id,
        )

    # -- RPCs -----------------------------------------------------------------------------------

    @_rpc.servicer_method
    def NextTask(
        self, request: pb.NextTaskRequest, context: grpc.ServicerContext
    ) -> pb.NextTaskReply:
        em_id = _em_id(request.execution_manager_id)
        self._registry.heartbeat(em_id)
        if request.HasField("prev_assignment"):
            self._ack(em_id, [request.prev_assignment])
        deliveries = self._take(em_id, 1, self._wait(request.wait_time_ms), context)
        if not deliveries:
            return pb.NextTaskReply(no_task=pb.Void())
        return pb.NextTaskReply(assignment=self._to_proto(deliveries[0]))

    @_rpc.servicer_method
    def NextTasks(
        self, request: pb.NextTasksRequest, context: grpc.ServicerContext
    ) -> pb.NextTasksReply:
        em_id = _em_id(request.execution_manager_id)
        self._registry.heartbeat(em_id)
        self._ack(em_id, request.acks)
        max_items = min(request.max_items or 1, self._max_batch)
        deliveries = self._take(em_id, max_items, self._wait(request.wait_time_ms), context)
        if _trace.ENABLED:
            _trace.mark_many("scheduler.handed", (d.item.job_id for d in deliveries))
        return pb.NextTasksReply(assignments=[self._to_proto(d) for d in deliveries])

    @_rpc.servicer_method
    def Heartbeat(
        self, request: pb.SchedulerHeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.Void:
        self._registry.heartbeat(_em_id(request.execution_manager_id))
        return pb.Void()

    @_rpc.servicer_method
    def Shutdown(self, request: pb.ShutdownRequest, context: grpc.ServicerContext) -> pb.Void:
        em_id = _em_id(request.execution_manager_id)
        if em_id not in self._registry:
            raise errors.NotFound(f"unknown execution manager {em_id}")
        self._ack(em_id, request.prev_assignments)
        rescheduled = self._registry.mark_as_dead(em_id)
        if rescheduled is None:
            raise errors.NotFound(f"unknown execution manager {em_id}")
        log.info("execution manager shut down", extra={"em_id": em_id, "rescheduled": rescheduled})
        return pb.Void()


def add_to_server(
    servicer: SchedulerServicer, server: grpc.Server, streams: StreamLimits | None = None
) -> None:
    """Serve `servicer`, its unary calls on `Calls` streams too (within `streams`)."""
    _rpc.add_servicer(server, servicer, "SchedulerService", streams=streams)
