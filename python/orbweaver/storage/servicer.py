"""gRPC servicers of the storage service: protobuf in, `StorageService` call, protobuf out.

Every method goes through `servicer_method`, so a typed error becomes its status code and any
unexpected exception an INTERNAL answer: no request can take the service down. Requests are
decoded leniently (`_rpc.add_servicer`): bytes that are not the request message are answered
INVALID_ARGUMENT.

The client-facing services authenticate every call here (`storage.auth`); the others are for
services, and the transport checks their cluster token.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import cast

import grpc

from orbweaver import _core, _taskid, _trace, errors
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import Gate, add_servicer, code_for, servicer_method
from orbweaver._streamed import CallsServed, StreamLimits
from orbweaver.states import JobState
from orbweaver.storage import inspection
from orbweaver.storage.auth import Authenticator, Principal
from orbweaver.storage.db import JobRow
from orbweaver.storage.service import StorageService

Ctx = grpc.ServicerContext
_VOID = pb.Void()


def _state(state: int) -> pb.JobState.ValueType:
    return cast("pb.JobState.ValueType", int(state))


def _item_status(err: errors.OrbweaverError | None) -> pb.ItemStatus:
    if err is None:
        return pb.ItemStatus()
    return pb.ItemStatus(code=code_for(err).value[0], message=str(err))


def _execution_context(ctx: _core.ExecutionContext) -> pb.ExecutionContext:
    return pb.ExecutionContext(
        task_instance_id=ctx.instance_id,
        tdl_context=pb.TdlContext(package=ctx.package, task_func=ctx.task_func),
        timeout_policy=pb.TimeoutPolicy(
            soft_timeout_ms=ctx.soft_timeout_ms, hard_timeout_ms=ctx.hard_timeout_ms
        ),
        serialized_task_io=ctx.task_io,
        job_id=ctx.job_id,
        task_id=_taskid.to_proto(ctx.task_id),
        resource_group_id=ctx.resource_group_id,
    )


def _ready(entries: list[tuple[int, int, int]]) -> list[pb.ReadyTask]:
    return [
        pb.ReadyTask(resource_group_id=rg, job_id=job, task_id=_taskid.to_proto(task))
        for rg, job, task in entries
    ]


Current = Callable[[], StorageService]


@contextlib.contextmanager
def _waiting(svc: StorageService, context: Ctx) -> Iterator[StorageService]:
    """A waiting call whose caller leaves (cancelled, deadline, connection lost) frees its
    thread at once: gRPC's termination callback wakes the waiters while it still waits."""
    waiting = [True]

    def left() -> None:
        if waiting[0]:
            svc.wake_waiters()

    context.add_callback(left)
    try:
        yield svc
    finally:
        waiting[0] = False


class _OnCurrentService:
    """Servicers outlive leadership terms: a call runs on the service of the term that serves
    it (a call reads `svc` once when it needs the session too, so both come from one term)."""

    def __init__(self, current: Current) -> None:
        self._current = current

    @property
    def svc(self) -> StorageService:
        return self._current()


class JobOrchestration(_OnCurrentService, CallsServed, pb_grpc.JobOrchestrationServiceServicer):
    def __init__(self, current: Current, auth: Authenticator, max_message_bytes: int) -> None:
        super().__init__(current)
        self.auth = auth
        self.max_message_bytes = max_message_bytes

    def _caller(self, context: Ctx) -> Principal:
        return self.auth.require(context.invocation_metadata())

    @servicer_method
    def RegisterJob(self, request: pb.RegisterJobRequest, context: Ctx) -> pb.RegisterJobReply:
        began = time.monotonic_ns() if _trace.ENABLED else 0
        self.auth.for_submission(
            context.invocation_metadata(), request.resource_group_id, request.password
        )
        [(job_id, state, dedup)] = self.svc.register_jobs(
            request.resource_group_id,
            request.compressed_serialized_task_graph,
            [(request.compressed_serialized_inputs, request.idempotency_key)],
            start=request.start,
            durability=request.durability,
        )
        if began:
            _trace.mark("storage.register", job_id, began)
        return pb.RegisterJobReply(job_id=job_id, state=_state(state), deduplicated=dedup)

    @servicer_method
    def RegisterJobs(self, request: pb.RegisterJobsRequest, context: Ctx) -> pb.RegisterJobsReply:
        self.auth.for_submission(
            context.invocation_metadata(), request.resource_group_id, request.password
        )
        registered = self.svc.register_jobs(
            request.resource_group_id,
            request.compressed_serialized_task_graph,
            [(job.compressed_serialized_inputs, job.idempotency_key) for job in request.jobs],
            start=request.start,
            durability=request.durability,
        )
        return pb.RegisterJobsReply(
            jobs=[
                pb.RegisterJobReply(job_id=job_id, state=_state(state), deduplicated=dedup)
                for job_id, state, dedup in registered
            ]
        )

    @servicer_method
    def StartJob(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobStateReply:
        state = self.svc.start_job(self._caller(context), request.job_id)
        return pb.JobStateReply(state=_state(state))

    @servicer_method
    def CancelJob(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobStateReply:
        state = self.svc.cancel_job(self._caller(context), request.job_id)
        return pb.JobStateReply(state=_state(state))

    @servicer_method
    def GetJobState(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobStateReply:
        state = self.svc.get_state(self._caller(context), request.job_id)
        return pb.JobStateReply(state=_state(state))

    @servicer_method
    def GetJobOutputs(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobOutputsReply:
        outputs = self.svc.get_outputs(self._caller(context), request.job_id)
        return pb.JobOutputsReply(serialized_outputs=outputs)

    @servicer_method
    def GetJobError(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobErrorReply:
        message = self.svc.get_error(self._caller(context), request.job_id)
        return pb.JobErrorReply(error_message=message)

    @servicer_method
    def WaitJob(self, request: pb.WaitJobRequest, context: Ctx) -> pb.WaitJobReply:
        caller = self._caller(context)
        with _waiting(self.svc, context) as svc:
            state = svc.wait_job(
                caller, request.job_id, request.timeout_ms, active=context.is_active
            )
        if _trace.ENABLED:
            _trace.mark("storage.waited", request.job_id)
        return self._wait_reply(caller, request.job_id, state, request.include_result, None)

    @servicer_method
    def WaitJobs(self, request: pb.WaitJobsRequest, context: Ctx) -> pb.WaitJobsReply:
        caller = self._caller(context)
        with _waiting(self.svc, context) as svc:
            states = svc.wait_jobs(
                caller,
                request.job_ids,
                request.timeout_ms,
                any_terminal=request.any_terminal,
                active=context.is_active,
            )
        # Results beyond half the message limit are left for GetJobOutputs.
        budget = [self.max_message_bytes // 2]
        return pb.WaitJobsReply(
            jobs=[
                self._wait_reply(caller, job_id, state, request.include_result, budget)
                for job_id, state in zip(request.job_ids, states, strict=True)
            ]
        )

    def _wait_reply(
        self,
        caller: Principal,
        job_id: int,
        state: JobState,
        include_result: bool,
        budget: list[int] | None,
    ) -> pb.WaitJobReply:
        reply = pb.WaitJobReply(state=_state(state), terminal=state.is_terminal)
        if include_result and state == JobState.SUCCEEDED:
            outputs = self.svc.get_outputs(caller, job_id)
            if budget is not None and len(outputs) > budget[0]:
                reply.result_omitted = True
            else:
                reply.serialized_outputs = outputs
                if budget is not None:
                    budget[0] -= len(outputs)
        elif include_result and state == JobState.FAILED:
            reply.error_message = self.svc.get_error(caller, job_id)
        return reply

    @servicer_method
    def GetJobProgress(self, request: pb.JobProgressRequest, context: Ctx) -> pb.JobProgressReply:
        p = self.svc.progress(
            self._caller(context), request.job_id, min(request.max_explanations, 1000)
        )
        pending, ready, running, succeeded, failed, cancelled = p.counts
        return pb.JobProgressReply(
            state=_state(p.state),
            total_tasks=p.total_tasks,
            live=p.live,
            counts=pb.TaskCounts(
                pending=pending,
                ready=ready,
                running=running,
                succeeded=succeeded,
                failed=failed,
                cancelled=cancelled,
            ),
            waiting=[
                pb.TaskWait(task_id=_taskid.to_proto(t), reason=r, detail=d)
                for t, r, d in p.waiting
            ],
        )

    @servicer_method
    def ListJobs(self, request: pb.ListJobsRequest, context: Ctx) -> pb.ListJobsReply:
        rows = self.svc.list_jobs(
            self._caller(context),
            list(request.states),
            request.limit or 100,
            request.before_job_id,
            request.resource_group_id,
        )
        return pb.ListJobsReply(
            jobs=[
                pb.JobSummary(
                    job_id=r.id,
                    resource_group_id=r.resource_group_id,
                    state=_state(r.state),
                    created_at_ms=r.created_at_ms,
                    ended_at_ms=r.ended_at_ms or 0,
                    error_message=r.error_message or "",
                )
                for r in rows
            ]
        )


class TaskInstances(_OnCurrentService, CallsServed, pb_grpc.TaskInstanceManagementServiceServicer):
    @servicer_method
    def RegisterTaskInstance(
        self, request: pb.RegisterTaskInstanceRequest, context: Ctx
    ) -> pb.ExecutionContext:
        task = _taskid.from_proto(request.task_id)
        [result] = self.svc.register_instances(
            request.execution_manager_id, request.session_id, [(request.job_id, task)]
        )
        if isinstance(result, errors.OrbweaverError):
            raise result
        return _execution_context(result)

    @servicer_method
    def ReportTaskSuccess(self, request: pb.ReportTaskSuccessRequest, context: Ctx) -> pb.Void:
        task = _taskid.from_proto(request.task_id)
        [err] = self.svc.report_outcomes(
            request.execution_manager_id,
            request.session_id,
            [(request.job_id, task, request.task_instance_id, request.serialized_outputs)],
        )
        if err is not None:
            raise err
        return _VOID

    @servicer_method
    def ReportTaskFailure(self, request: pb.ReportTaskFailureRequest, context: Ctx) -> pb.Void:
        task = _taskid.from_proto(request.task_id)
        [err] = self.svc.report_outcomes(
            request.execution_manager_id,
            request.session_id,
            [(request.job_id, task, request.task_instance_id, request.error_message)],
        )
        if err is not None:
            raise err
        return _VOID

    @servicer_method
    def RegisterTaskInstances(
        self, request: pb.RegisterTaskInstancesRequest, context: Ctx
    ) -> pb.RegisterTaskInstancesReply:
        items = [(item.job_id, _taskid.from_proto(item.task_id)) for item in request.items]
        results = self.svc.register_instances(
            request.execution_manager_id, request.session_id, items
        )
        reply = pb.RegisterTaskInstancesReply()
        for result in results:
            entry = reply.items.add()
            if isinstance(result, errors.OrbweaverError):
                entry.error.CopyFrom(_item_status(result))
            else:
                entry.context.CopyFrom(_execution_context(result))
        return reply

    @servicer_method
    def ReportTaskOutcomes(
        self, request: pb.ReportTaskOutcomesRequest, context: Ctx
    ) -> pb.ReportTaskOutcomesReply:
        items: list[tuple[int, int, int, bytes | str]] = []
        for o in request.outcomes:
            kind = o.WhichOneof("outcome")
            if kind is None:
                raise errors.InvalidArgument(
                    f"outcome for job {o.job_id} has neither outputs nor an error message"
                )
            value: bytes | str = (
                o.serialized_outputs if kind == "serialized_outputs" else o.error_message
            )
            items.append((o.job_id, _taskid.from_proto(o.task_id), o.task_instance_id, value))
        results, continued = self.svc.report_and_continue(
            request.execution_manager_id, request.session_id, items, request.accept
        )
        return pb.ReportTaskOutcomesReply(
            statuses=[_item_status(e) for e in results],
            continued=[_execution_context(ctx) for ctx in continued],
        )

    @servicer_method
    def TakeReadyTasks(
        self, request: pb.TakeReadyTasksRequest, context: Ctx
    ) -> pb.TakeReadyTasksReply:
        tasks = self.svc.take_ready_tasks(
            request.execution_manager_id,
            request.session_id,
            request.max_items,
            request.wait_ms,
            context.is_active,
        )
        return pb.TakeReadyTasksReply(tasks=[_execution_context(ctx) for ctx in tasks])


class InboundQueue(_OnCurrentService, CallsServed, pb_grpc.InboundQueueServiceServicer):
    def _poll(self, lane: int, request: pb.PollRequest) -> pb.ReadyTasks:
        svc = self.svc
        entries = svc.poll(request.scheduler_id, lane, request.max_items, request.wait_ms)
        return pb.ReadyTasks(session_id=svc.session_id, tasks=_ready(entries))

    @servicer_method
    def PollReadyTasks(self, request: pb.PollRequest, context: Ctx) -> pb.ReadyTasks:
        return self._poll(_core.LANE_TASK, request)

    @servicer_method
    def PollReadyCommitTasks(self, request: pb.PollRequest, context: Ctx) -> pb.ReadyTasks:
        return self._poll(_core.LANE_COMMIT, request)

    @servicer_method
    def PollReadyCleanupTasks(self, request: pb.PollRequest, context: Ctx) -> pb.ReadyTasks:
        return self._poll(_core.LANE_CLEANUP, request)

    @servicer_method
    def PollAll(self, request: pb.PollAllRequest, context: Ctx) -> pb.PollAllReply:
        svc = self.svc
        tasks, commit, cleanup = svc.poll_all(
            request.scheduler_id,
            request.max_tasks,
            request.max_commit,
            request.max_cleanup,
            request.wait_ms,
        )
        return pb.PollAllReply(
            session_id=svc.session_id,
            tasks=_ready(tasks),
            commit=_ready(commit),
            cleanup=_ready(cleanup),
        )


class ResourceGroups(_OnCurrentService, pb_grpc.ResourceGroupManagementServiceServicer):
    def __init__(self, current: Current, auth: Authenticator) -> None:
        super().__init__(current)
        self.auth = auth

    @servicer_method
    def AddResourceGroup(
        self, request: pb.AddResourceGroupRequest, context: Ctx
    ) -> pb.ResourceGroupReply:
        self.auth.require_operator(context.invocation_metadata(), "creating a resource group")
        rg_id = self.svc.add_resource_group(request.external_resource_group_id, request.password)
        return pb.ResourceGroupReply(
            resource_group_id=rg_id, external_resource_group_id=request.external_resource_group_id
        )

    @servicer_method
    def ListResourceGroups(
        self, request: pb.ListResourceGroupsRequest, context: Ctx
    ) -> pb.ListResourceGroupsReply:
        caller = self.auth.require(context.invocation_metadata())
        rows = self.svc.list_resource_groups(caller, request.after_id, request.limit or 1000)
        return pb.ListResourceGroupsReply(
            groups=[
                pb.ResourceGroupInfo(
                    resource_group_id=r.id,
                    external_resource_group_id=r.external_id,
                    created_at_ms=r.created_at_ms,
                )
                for r in rows
            ]
        )

    @servicer_method
    def VerifyResourceGroup(
        self, request: pb.VerifyResourceGroupRequest, context: Ctx
    ) -> pb.ResourceGroupReply:
        rg_id, name = self.auth.verify(
            request.password,
            resource_group_id=request.resource_group_id,
            external_id=request.external_resource_group_id,
        )
        return pb.ResourceGroupReply(resource_group_id=rg_id, external_resource_group_id=name)


class Liveness(_OnCurrentService, pb_grpc.ExecutionManagerLivenessServiceServicer):
    @servicer_method
    def RegisterExecutionManager(
        self, request: pb.RegisterExecutionManagerRequest, context: Ctx
    ) -> pb.ExecutionManagerRegistration:
        svc = self.svc
        em_id = svc.register_execution_manager(request.ip_address, request.processes)
        return pb.ExecutionManagerRegistration(
            execution_manager_id=em_id, session_id=svc.session_id
        )

    @servicer_method
    def UpdateExecutionManagerHeartbeat(
        self, request: pb.HeartbeatRequest, context: Ctx
    ) -> pb.SessionReply:
        svc = self.svc
        svc.heartbeat(request.execution_manager_id, request.processes)
        if request.session_id and request.session_id == svc.session_id:
            svc.reconcile_instances(request.execution_manager_id, request.held_instance_ids)
        return pb.SessionReply(session_id=svc.session_id)


class SchedulerRegistration(_OnCurrentService, pb_grpc.SchedulerRegistrationServiceServicer):
    @servicer_method
    def RegisterScheduler(
        self, request: pb.RegisterSchedulerRequest, context: Ctx
    ) -> pb.SchedulerRegistration:
        svc = self.svc
        scheduler_id = svc.register_scheduler(request.host, request.port)
        return pb.SchedulerRegistration(scheduler_id=scheduler_id, session_id=svc.session_id)

    @servicer_method
    def GetSchedulers(self, request: pb.Void, context: Ctx) -> pb.SchedulersReply:
        return pb.SchedulersReply(
            schedulers=[
                pb.SchedulerInfo(scheduler_id=i, host=h, port=p)
                for i, h, p in self.svc.get_schedulers()
            ]
        )


class Session(_OnCurrentService, pb_grpc.SessionManagementServiceServicer):
    @servicer_method
    def GetSession(self, request: pb.Void, context: Ctx) -> pb.SessionReply:
        return pb.SessionReply(session_id=self.svc.session_id)


def _job_summary(r: JobRow) -> pb.JobSummary:
    return pb.JobSummary(
        job_id=r.id,
        resource_group_id=r.resource_group_id,
        state=_state(r.state),
        created_at_ms=r.created_at_ms,
        ended_at_ms=r.ended_at_ms or 0,
        error_message=r.error_message or "",
    )


def _task_counts(counts: tuple[int, int, int, int, int, int]) -> pb.TaskCounts:
    pending, ready, running, succeeded, failed, cancelled = counts
    return pb.TaskCounts(
        pending=pending,
        ready=ready,
        running=running,
        succeeded=succeeded,
        failed=failed,
        cancelled=cancelled,
    )


class ClusterInspection(_OnCurrentService, pb_grpc.ClusterInspectionServiceServicer):
    """Read-only views for the dashboard, with the credentials of the job services."""

    def __init__(self, current: Current, auth: Authenticator) -> None:
        super().__init__(current)
        self.auth = auth

    @servicer_method
    def GetClusterStatus(
        self, request: pb.ClusterStatusRequest, context: Ctx
    ) -> pb.ClusterStatusReply:
        caller = self.auth.require(context.invocation_metadata())
        st = inspection.cluster_status(self.svc, caller)
        tasks, commit, cleanup = st.queue_depths
        reply = pb.ClusterStatusReply(
            jobs=[pb.JobStateCount(state=_state(s), count=n) for s, n in sorted(st.jobs.items())],
            cluster_wide=st.cluster_wide,
            tasks_succeeded=st.tasks_succeeded,
            tasks_failed=st.tasks_failed,
            execution_managers=[
                pb.ExecutionManagerInfo(
                    execution_manager_id=em.id,
                    ip_address=em.ip_address,
                    executors=em.executors,
                    in_flight=em.in_flight,
                    last_heartbeat_at_ms=em.last_heartbeat_at_ms,
                )
                for em in st.execution_managers
            ],
            queued_tasks=tasks,
            queued_commit=commit,
            queued_cleanup=cleanup,
            session_id=st.session_id,
            server_time_ms=int(time.time() * 1000),
            cached_jobs=st.cached_jobs,
            live_task_instances=st.live_instances,
        )
        if st.recovery is not None:
            reply.recovery.CopyFrom(
                pb.RecoveryInfo(
                    ended_at_ms=st.recovered_at_ms,
                    jobs=st.recovery.total,
                    duration_ms=int(st.recovery.seconds * 1000),
                    unrecoverable=len(st.recovery.failed),
                )
            )
        return reply

    @servicer_method
    def GetJobGraph(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobGraphReply:
        caller = self.auth.require(context.invocation_metadata())
        g = inspection.job_graph(self.svc, caller, request.job_id)
        return pb.JobGraphReply(
            job=_job_summary(g.job),
            compressed_serialized_task_graph=g.compressed_graph,
            tasks=[
                pb.TaskStatus(
                    task_id=_taskid.to_proto(t.task),
                    state=t.state,
                    reason=t.reason,
                    detail=t.detail,
                    failures=t.failures,
                    live_instances=t.live_instances,
                )
                for t in g.tasks
            ],
            live=g.live,
            counts=_task_counts(g.counts),
        )


def add_servicers(
    server: grpc.Server,
    current: Current,
    auth: Authenticator,
    max_message_bytes: int,
    *,
    gate: Gate | None = None,
    me: str = "",
    streams: StreamLimits | None = None,
) -> None:
    """Register every storage servicer; `current()` is the serving term's service (it raises
    `Unavailable` between terms). The services with a `Calls` method serve their unary calls on
    streams too, within `streams`, refusing them as a standby while `gate` does."""
    streams = streams or StreamLimits()
    servicers = {
        "JobOrchestrationService": JobOrchestration(current, auth, max_message_bytes),
        "TaskInstanceManagementService": TaskInstances(current),
        "InboundQueueService": InboundQueue(current),
        "ResourceGroupManagementService": ResourceGroups(current, auth),
        "ExecutionManagerLivenessService": Liveness(current),
        "SchedulerRegistrationService": SchedulerRegistration(current),
        "SessionManagementService": Session(current),
        "ClusterInspectionService": ClusterInspection(current, auth),
    }
    for name, servicer in servicers.items():
        add_servicer(server, servicer, name, gate=gate, me=me, streams=streams)


# Services whose callers are clients: they authenticate each call themselves (not the transport's
# cluster-token check).
CLIENT_SERVICE_NAMES = [
    pb.DESCRIPTOR.services_by_name[name].full_name
    for name in (
        "JobOrchestrationService",
        "ResourceGroupManagementService",
        "ClusterInspectionService",
    )
]

SERVICE_NAMES = [
    pb.DESCRIPTOR.services_by_name[name].full_name
    for name in (
        "JobOrchestrationService",
        "TaskInstanceManagementService",
        "InboundQueueService",
        "ResourceGroupManagementService",
        "ExecutionManagerLivenessService",
        "SchedulerRegistrationService",
        "SessionManagementService",
        "ClusterInspectionService",
    )
]
