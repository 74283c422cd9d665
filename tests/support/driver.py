"""A driver that plays client, scheduler and execution manager against a storage process."""

from __future__ import annotations

from typing import Any

import grpc

from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._rpc import GROUP_METADATA_KEY, PASSWORD_METADATA_KEY
from orbweaver._taskid import to_proto
from support.graphs import compressed, int_inputs
from support.procs import StorageProcess, stubs_for

PASSWORD = b"s3cret"


class _Metadata(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds fixed metadata (a resource group's credentials) to every call."""

    def __init__(self, metadata: list[tuple[str, str | bytes]]) -> None:
        self._metadata = metadata

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or []), *self._metadata]
        return continuation(details._replace(metadata=metadata), request)


def group_metadata(rg: int, password: bytes) -> list[tuple[str, str | bytes]]:
    return [(GROUP_METADATA_KEY, str(rg)), (PASSWORD_METADATA_KEY, password)]


class Driver:
    """Talks to a storage process the way clients, the scheduler and EMs do: `s` carries the
    driver's resource group credentials on every call, `raw` carries none."""

    def __init__(self, storage: StorageProcess) -> None:
        self.storage = storage
        self.rg = 0
        self.em = 0
        self.scheduler = 0
        self._stubs: Any = None

    @property
    def raw(self) -> Any:
        return self.storage.stubs()

    @property
    def s(self) -> Any:
        if not self.rg:
            return self.storage.stubs()
        if self._stubs is None or self._stubs.channel_of is not self.storage.channel():
            channel = grpc.intercept_channel(
                self.storage.channel(), _Metadata(group_metadata(self.rg, PASSWORD))
            )
            self._stubs = stubs_for(channel)
            self._stubs.channel_of = self.storage.channel()
        return self._stubs

    def as_group(self, rg: int, password: bytes) -> Any:
        """Stubs carrying another group's credentials."""
        channel = grpc.intercept_channel(
            self.storage.channel(), _Metadata(group_metadata(rg, password))
        )
        return stubs_for(channel)

    def register_scheduler(self, host: str = "127.0.0.1", port: int = 1) -> int:
        self.scheduler = int(
            self.raw.schedulers.RegisterScheduler(
                pb.RegisterSchedulerRequest(host=host, port=port), timeout=10
            ).scheduler_id
        )
        return self.scheduler

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
        self.register_scheduler()
        return self

    def submit(
        self,
        graph: dict[str, Any],
        *inputs: int,
        start: bool = False,
        key: str = "",
        password: bytes = PASSWORD,
        stubs: Any = None,
        durability: int = 0,
    ) -> int:
        """Submit into the driver's group (with `stubs`: through other credentials);
        `durability`: the wire's Durability value."""
        reply = (stubs or self.s).jobs.RegisterJob(
            pb.RegisterJobRequest(
                resource_group_id=self.rg,
                password=password,
                compressed_serialized_task_graph=compressed(graph),
                compressed_serialized_inputs=int_inputs(*inputs),
                idempotency_key=key,
                start=start,
                durability=durability,  # type: ignore[arg-type]
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
                scheduler_id=self.scheduler,
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
