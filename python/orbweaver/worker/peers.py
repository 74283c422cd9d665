"""The execution manager's peers: the calls it makes, as small protocols; calls that a stop
cuts short; and the conversions between their messages and the core's types.

The generated gRPC stubs satisfy the protocols (`GrpcStorage` puts storage's two services on one
channel together), and so does anything that forwards or records calls, which lets a test sit
between the manager and a real peer without a network proxy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

import grpc

from orbweaver import _taskid, errors
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver.worker.core import Accepted, Ack, Assigned, ItemError, Report
from orbweaver.worker.pool import TaskRequest

Req_contra = TypeVar("Req_contra", contravariant=True)
Rep_co = TypeVar("Rep_co", covariant=True)
Req = TypeVar("Req")
Rep = TypeVar("Rep")


class Pending(Protocol[Rep_co]):
    """A call under way (a `grpc.Future`): its reply, or the call's error; cancellable."""

    def result(self, timeout: float | None = None) -> Rep_co: ...

    def cancel(self) -> bool: ...


class Unary(Protocol[Req_contra, Rep_co]):
    """One unary RPC (a `grpc.UnaryUnaryMultiCallable`): raises `grpc.RpcError` on failure."""

    def __call__(self, request: Req_contra, timeout: float | None = None) -> Rep_co: ...

    def future(self, request: Req_contra, timeout: float | None = None) -> Pending[Rep_co]: ...


class SchedulerPeer(Protocol):
    """What the EM asks of the scheduler (`SchedulerServiceStub` is one)."""

    @property
    def NextTasks(self) -> Unary[pb.NextTasksRequest, pb.NextTasksReply]: ...  # noqa: N802

    @property
    def Heartbeat(self) -> Unary[pb.SchedulerHeartbeatRequest, pb.Void]: ...  # noqa: N802

    @property
    def Shutdown(self) -> Unary[pb.ShutdownRequest, pb.Void]: ...  # noqa: N802


class StoragePeer(Protocol):
    """What the EM asks of storage (`GrpcStorage` is one)."""

    @property
    def RegisterExecutionManager(  # noqa: N802
        self,
    ) -> Unary[pb.RegisterExecutionManagerRequest, pb.ExecutionManagerRegistration]: ...

    @property
    def UpdateExecutionManagerHeartbeat(  # noqa: N802
        self,
    ) -> Unary[pb.HeartbeatRequest, pb.SessionReply]: ...

    @property
    def RegisterTaskInstances(  # noqa: N802
        self,
    ) -> Unary[pb.RegisterTaskInstancesRequest, pb.RegisterTaskInstancesReply]: ...

    @property
    def ReportTaskOutcomes(  # noqa: N802
        self,
    ) -> Unary[pb.ReportTaskOutcomesRequest, pb.ReportTaskOutcomesReply]: ...

    @property
    def TakeReadyTasks(  # noqa: N802
        self,
    ) -> Unary[pb.TakeReadyTasksRequest, pb.TakeReadyTasksReply]: ...


class GrpcStorage:
    """Storage's liveness and task-instance services on one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        liveness = pb_grpc.ExecutionManagerLivenessServiceStub(channel)
        instances = pb_grpc.TaskInstanceManagementServiceStub(channel)
        self.RegisterExecutionManager = liveness.RegisterExecutionManager
        self.UpdateExecutionManagerHeartbeat = liveness.UpdateExecutionManagerHeartbeat
        self.RegisterTaskInstances = instances.RegisterTaskInstances
        self.ReportTaskOutcomes = instances.ReportTaskOutcomes
        self.TakeReadyTasks = instances.TakeReadyTasks


class Calls:
    """Calls under way, each with the event that ends it: `cancel()` cuts short every call
    whose event is set (a cut-short call raises `grpc.FutureCancelledError`)."""

    def __init__(self) -> None:
        # Reentrant: `cancel` also runs in a signal handler, maybe while its thread is in here.
        self._lock = threading.RLock()
        self._pending: dict[Pending[Any], threading.Event] = {}

    def call(
        self, method: Unary[Req, Rep], request: Req, timeout: float, stop: threading.Event
    ) -> Rep:
        return self.result(self.begin(method, request, timeout, stop))

    @staticmethod
    def direct(method: Unary[Req, Rep], request: Req, timeout: float, stop: threading.Event) -> Rep:
        """A call made in the calling thread, for the hops of every task (registration,
        reports): gRPC's future would wake another thread for each of them (and start one when
        no other call is under way). `cancel()` cannot reach it: it is cut short only by
        closing its channel once `stop` is set (then it raises `grpc.FutureCancelledError`,
        as a cancelled future does), and it lasts at most `timeout` seconds."""
        if stop.is_set():
            raise grpc.FutureCancelledError()
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            if stop.is_set() and exc.code() == grpc.StatusCode.CANCELLED:
                raise grpc.FutureCancelledError() from exc
            raise
        except ValueError as exc:  # the channel was closed before the call began
            if stop.is_set():
                raise grpc.FutureCancelledError() from exc
            raise

    def begin(
        self, method: Unary[Req, Rep], request: Req, timeout: float, stop: threading.Event
    ) -> Pending[Rep]:
        future = method.future(request, timeout=timeout)
        with self._lock:
            self._pending[future] = stop
        if stop.is_set():
            future.cancel()
        return future

    def result(self, future: Pending[Rep]) -> Rep:
        try:
            return future.result()
        finally:
            with self._lock:
                self._pending.pop(future, None)

    def cancel(self) -> None:
        with self._lock:
            doomed = [f for f, stop in self._pending.items() if stop.is_set()]
        for future in doomed:
            future.cancel()


# ---------------------------------------------------------------------------------------------
# Messages <-> the core's types
# ---------------------------------------------------------------------------------------------


def ack_records(acks: Iterable[Ack]) -> list[pb.TaskAssignmentRecord]:
    return [
        pb.TaskAssignmentRecord(assignment_id=a.assignment_id, scheduler_id=a.scheduler_id)
        for a in acks
    ]


def assigned(a: pb.TaskAssignment) -> Assigned:
    try:
        task_id: int | None = _taskid.from_proto(a.task_id)
    except errors.InvalidArgument:
        task_id = None
    return Assigned(a.assignment_id, a.scheduler_id, a.session_id, a.job_id, task_id)


def registration_result(item: pb.RegisterTaskInstancesReply.Item) -> Accepted | ItemError:
    """One item of storage's reply: the task to run (from its execution context), or the error."""
    if item.WhichOneof("result") == "error":
        return ItemError(item.error.code, item.error.message)
    return accepted(item.context)


def accepted(ctx: pb.ExecutionContext) -> Accepted:
    """A task storage registered for this EM: what to run."""
    task_id = _taskid.from_proto(ctx.task_id)
    tdl = ctx.tdl_context
    request = TaskRequest(
        job_id=ctx.job_id,
        task_id=task_id,
        instance_id=ctx.task_instance_id,
        resource_group_id=ctx.resource_group_id,
        package=tdl.package,
        task_func=tdl.task_func,
        task_io=ctx.serialized_task_io,
        hard_timeout_ms=ctx.timeout_policy.hard_timeout_ms,
    )
    label = f"{tdl.package}.{tdl.task_func} (job {ctx.job_id}, {_taskid.describe(task_id)})"
    return Accepted(request, label)


def report_request(report: Report) -> pb.ReportTaskOutcomesRequest:
    outcomes = []
    for o in report.outcomes:
        outcome = pb.TaskOutcome(
            job_id=o.job_id, task_id=_taskid.to_proto(o.task_id), task_instance_id=o.instance_id
        )
        if isinstance(o.value, bytes):
            outcome.serialized_outputs = o.value
        else:
            outcome.error_message = o.value
        outcomes.append(outcome)
    return pb.ReportTaskOutcomesRequest(
        execution_manager_id=report.em_id,
        session_id=report.session_id,
        outcomes=outcomes,
        accept=report.accept,
    )
