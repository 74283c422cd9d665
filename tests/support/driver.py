"""A driver that plays client, scheduler and execution manager against a storage process."""

from __future__ import annotations

from typing import Any

import grpc

from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._taskid import to_proto
from support.graphs import compressed, int_inputs
from support.procs import StorageProcess

PASSWORD = b"s3cret"


class Driver:
    """Talks to a storage process the way clients, the scheduler and EMs do."""

    def __init__(self, storage: StorageProcess) -> None:
        self.storage = storage
        self.rg = 0
        self.em = 0

    @property
    def s(self) -> Any:
        return self.storage.stubs()

    @property
    def session(self) -> int:
        return int(self.s.session.GetSession(pb.Void(), timeout=10).session_id)

    def setup(self) -> Driver:
        try:
            self.rg = self.s.groups.AddResourceGroup(
                pb.AddResourceGroupRequest(external_resource_group_id="tests", password=PASSWORD),
                timeout=30,
            ).resource_group_id
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
            self.rg = self.s.groups.VerifyResourceGroup(
                pb.VerifyResourceGroupRequest(
                    external_resource_group_id="tests", password=PASSWORD
                ),
                timeout=30,
            ).resource_group_id
        self.em = self.s.liveness.RegisterExecutionManager(
            pb.RegisterExecutionManagerRequest(ip_address="127.0.0.1"), timeout=10
        ).execution_manager_id
        return self

    def submit(
        self,
        graph: dict[str, Any],
        *inputs: int,
        start: bool = False,
        key: str = "",
        password: bytes = PASSWORD,
    ) -> int:
        reply = self.s.jobs.RegisterJob(
            pb.RegisterJobRequest(
                resource_group_id=self.rg,
                password=password,
                compressed_serialized_task_graph=compressed(graph),
                compressed_serialized_inputs=int_inputs(*inputs),
                idempotency_key=key,
                start=start,
            ),
            timeout=30,
        )
        return int(reply.job_id)

    def start(self, job: int) -> int:
        return int(self.s.jobs.StartJob(pb.JobIdRequest(job_id=job), timeout=30).state)

    def state(self, job: int) -> int:
        return int(self.s.jobs.GetJobState(pb.JobIdRequest(job_id=job), timeout=30).state)

    def cancel(self, job: int) -> int:
        return int(self.s.jobs.CancelJob(pb.JobIdRequest(job_id=job), timeout=30).state)

    def outputs(self, job: int) -> bytes:
        return bytes(
            self.s.jobs.GetJobOutputs(pb.JobIdRequest(job_id=job), timeout=30).serialized_outputs
        )

    def error(self, job: int) -> str:
        return str(self.s.jobs.GetJobError(pb.JobIdRequest(job_id=job), timeout=30).error_message)

    def poll(
        self, lane: str = "tasks", max_items: int = 100, wait_ms: int = 200
    ) -> list[pb.ReadyTask]:
        reply = self.s.queue.PollAll(
            pb.PollAllRequest(
                max_tasks=max_items if lane == "tasks" else 0,
                max_commit=max_items if lane == "commit" else 0,
                max_cleanup=max_items if lane == "cleanup" else 0,
                wait_ms=wait_ms,
            ),
            timeout=30,
        )
        return list(getattr(reply, lane))

    def register(
        self, job: int, task: int, session: int | None = None, em: int | None = None
    ) -> pb.ExecutionContext:
        return self.s.instances.RegisterTaskInstance(
            pb.RegisterTaskInstanceRequest(
                job_id=job,
                task_id=to_proto(task),
                execution_manager_id=em or self.em,
                session_id=self.session if session is None else session,
            ),
            timeout=30,
        )

    def succeed(
        self, job: int, task: int, instance: int, outputs: bytes, session: int | None = None
    ) -> None:
        self.s.instances.ReportTaskSuccess(
            pb.ReportTaskSuccessRequest(
                job_id=job,
                task_id=to_proto(task),
                task_instance_id=instance,
                execution_manager_id=self.em,
                serialized_outputs=outputs,
                session_id=self.session if session is None else session,
            ),
            timeout=30,
        )

    def fail(
        self, job: int, task: int, instance: int, message: str, session: int | None = None
    ) -> None:
        self.s.instances.ReportTaskFailure(
            pb.ReportTaskFailureRequest(
                job_id=job,
                task_id=to_proto(task),
                task_instance_id=instance,
                execution_manager_id=self.em,
                error_message=message,
                session_id=self.session if session is None else session,
            ),
            timeout=30,
        )

    def progress(self, job: int) -> pb.JobProgressReply:
        return self.s.jobs.GetJobProgress(pb.JobProgressRequest(job_id=job), timeout=30)
