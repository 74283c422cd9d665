"""The client: submit task graphs, wait for jobs, fetch their outputs.

Every call retries transient transport errors with backoff; submissions carry an idempotency key
so a retried submission never creates a second job.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgpack

from orbweaver import _core, _taskid, errors
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Security,
    call_with_retry,
    make_channel,
)
from orbweaver.states import JobState

if TYPE_CHECKING:
    from orbweaver.graph import TaskGraph

T = TypeVar("T")

# Server-side waits are cut into chunks so a dead connection is noticed and retried.
_WAIT_CHUNK_MS = 20_000
# Jobs per WaitJobs call in Client.gather.
_GATHER_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class ResourceGroup:
    """A tenant: jobs are submitted under a resource group, with its password."""

    id: int
    name: str
    password: bytes = field(repr=False, default=b"")


@dataclass(frozen=True, slots=True)
class Progress:
    state: JobState
    total: int
    pending: int
    ready: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    waiting: list[tuple[str, str, str]]
    """For tasks not running: (task, reason, detail); reason is pending_parents, queued,
    instance_limit, retrying or running."""


@dataclass(frozen=True, slots=True)
class JobInfo:
    id: int
    resource_group_id: int
    state: JobState
    created_at_ms: int
    ended_at_ms: int | None
    error: str | None


def _wait_chunk_ms(end: float | None) -> int:
    """The next server-side wait: a chunk, or what is left until `end` (monotonic)."""
    if end is None:
        return _WAIT_CHUNK_MS
    return max(0, min(_WAIT_CHUNK_MS, int((end - time.monotonic()) * 1000)))


def _decode_plain(payloads: list[bytes]) -> list[Any]:
    return [msgpack.unpackb(p, raw=False, strict_map_key=False) for p in payloads]


class Client:
    """A connection to a running Orbweaver cluster (its storage service)."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        resource_group: ResourceGroup | None = None,
        token: str | None = None,
        security: Security | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tasks_dir: str | Path | None = None,
    ) -> None:
        """`timeout`: how long a call keeps retrying transient failures (a storage restart);
        `connect_timeout`: how long the first call waits for a storage that was never reached,
        so a wrong address fails fast; `tasks_dir`: the tasks directory of the workers this
        client submits to, when known (a `LocalCluster`'s): a graph with a task that does not
        live there is refused at submission instead of failing in every executor."""
        if security is None:
            security = Security(token=token)
        elif token is not None:
            security = Security(token=token, tls=security.tls)
        self.address = address
        self.default_resource_group = resource_group
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._reached = False
        self.max_message_bytes = max_message_bytes
        self.tasks_dir = Path(tasks_dir).resolve() if tasks_dir is not None else None
        self._channel = make_channel(address, security, max_message_bytes=max_message_bytes)
        self._jobs = pb_grpc.JobOrchestrationServiceStub(self._channel)
        self._groups = pb_grpc.ResourceGroupManagementServiceStub(self._channel)

    # -- plumbing -------------------------------------------------------------------------------

    def _check_tasks_dir(self, graph: TaskGraph) -> None:
        if self.tasks_dir is None:
            return
        for fn in graph.functions():
            if fn.tasks_dir != self.tasks_dir:
                raise errors.InvalidGraph(
                    f"task `{fn.qualified_name}` is defined in {fn.tasks_dir}, but the workers "
                    f"import tasks from {self.tasks_dir}: pass tasks_dir= to the cluster (or "
                    "move the task there)"
                )

    def _call(
        self, what: str, fn: Callable[..., T], request: Any, timeout: float | None = None
    ) -> T:
        per_call = timeout if timeout is not None else self.timeout
        if self._reached:
            return call_with_retry(
                lambda: fn(request, timeout=per_call), deadline=self.timeout, what=what
            )
        try:
            result = call_with_retry(
                lambda: fn(request, timeout=per_call),
                deadline=min(self.timeout, self.connect_timeout),
                what=what,
            )
        except errors.Unavailable as exc:
            raise errors.Unavailable(
                f"cannot reach the Orbweaver storage service at {self.address} within "
                f"{self.connect_timeout:g} s: is it running, and is the address right? ({exc})"
            ) from exc
        self._reached = True
        return result

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resource groups ------------------------------------------------------------------------

    def add_resource_group(self, name: str, password: str | bytes) -> ResourceGroup:
        pw = password.encode() if isinstance(password, str) else password
        reply = self._call(
            "add resource group",
            self._groups.AddResourceGroup,
            pb.AddResourceGroupRequest(external_resource_group_id=name, password=pw),
        )
        return ResourceGroup(reply.resource_group_id, name, pw)

    def resource_group(self, name: str, password: str | bytes = b"") -> ResourceGroup:
        """An existing resource group, with its password checked by the server."""
        pw = password.encode() if isinstance(password, str) else password
        reply = self._call(
            "verify resource group",
            self._groups.VerifyResourceGroup,
            pb.VerifyResourceGroupRequest(external_resource_group_id=name, password=pw),
        )
        return ResourceGroup(reply.resource_group_id, reply.external_resource_group_id, pw)

    # -- jobs -----------------------------------------------------------------------------------

    def _group(self, resource_group: ResourceGroup | None) -> ResourceGroup:
        group = resource_group or self.default_resource_group
        if group is None:
            raise errors.InvalidArgument(
                "no resource group: pass resource_group= or create the client with one"
            )
        return group

    def _check_size(self, size: int, what: str) -> None:
        if size > self.max_message_bytes:
            raise errors.MessageTooLarge(
                f"{what} is {size} bytes compressed, above the {self.max_message_bytes}"
                " byte message limit; raise max_message_bytes on the client and the storage"
            )

    def submit(
        self,
        graph: TaskGraph,
        inputs: Sequence[Any] = (),
        *,
        resource_group: ResourceGroup | None = None,
        start: bool = True,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit `graph` with its graph inputs (flattened in task order, then position)."""
        group = self._group(resource_group)
        self._check_tasks_dir(graph)
        compressed_graph = graph.compressed()
        compressed_inputs = graph.encode_inputs(inputs)
        self._check_size(len(compressed_graph) + len(compressed_inputs), "the submission")
        request = pb.RegisterJobRequest(
            resource_group_id=group.id,
            password=group.password,
            compressed_serialized_task_graph=compressed_graph,
            compressed_serialized_inputs=compressed_inputs,
            idempotency_key=idempotency_key or uuid.uuid4().hex,
            start=start,
        )
        reply = self._call("submit job", self._jobs.RegisterJob, request)
        return Job(self, reply.job_id, graph)

    def submit_many(
        self,
        graph: TaskGraph,
        inputs: Iterable[Sequence[Any]],
        *,
        resource_group: ResourceGroup | None = None,
        start: bool = True,
        batch_size: int = 1000,
    ) -> list[Job]:
        """Submit one job of `graph` per entry of `inputs`: the jobs travel in batches of up to
        `batch_size` (and the message size limit), each batch one call and one DB transaction.

        Every input list is type-checked before anything is sent (`InvalidInput` names the job
        and the input). Each job carries its own idempotency key, so a retried batch never
        creates a job twice; a batch that fails leaves the batches before it submitted.
        """
        if batch_size < 1:
            raise errors.InvalidArgument(f"batch_size must be at least 1, got {batch_size}")
        group = self._group(resource_group)
        self._check_tasks_dir(graph)
        compressed_graph = graph.compressed()
        encoded: list[bytes] = []
        for index, values in enumerate(inputs):
            try:
                encoded.append(graph.encode_inputs(values))
            except errors.InvalidInput as exc:
                raise errors.InvalidInput(f"job {index}: {exc}") from None
        # Room for the graph and the protobuf framing of each entry (key, lengths).
        budget = self.max_message_bytes - len(compressed_graph) - 1024
        jobs: list[Job] = []
        batch: list[pb.JobInputs] = []
        batch_bytes = 0

        def flush() -> None:
            request = pb.RegisterJobsRequest(
                resource_group_id=group.id,
                password=group.password,
                compressed_serialized_task_graph=compressed_graph,
                jobs=batch,
                start=start,
            )
            reply = self._call("submit jobs", self._jobs.RegisterJobs, request)
            jobs.extend(Job(self, j.job_id, graph) for j in reply.jobs)

        for index, data in enumerate(encoded):
            entry_bytes = len(data) + 48
            self._check_size(len(compressed_graph) + entry_bytes + 1024, f"job {index}")
            if batch and (len(batch) >= batch_size or batch_bytes + entry_bytes > budget):
                flush()
                batch, batch_bytes = [], 0
            batch.append(
                pb.JobInputs(compressed_serialized_inputs=data, idempotency_key=uuid.uuid4().hex)
            )
            batch_bytes += entry_bytes
        if batch:
            flush()
        return jobs

    def gather(self, jobs: Sequence[Job], timeout: float | None = None) -> list[list[Any]]:
        """Wait for every job and return their outputs, in order (like ``ray.get`` of a list or
        Dask's ``gather``): a few server-side waits for all of them instead of one per job.
        Raises `JobFailed` / `JobCancelled` for the first such job in order, `JobTimeout` if
        one is still unfinished after `timeout` seconds."""
        end = None if timeout is None else time.monotonic() + timeout
        replies: dict[int, pb.WaitJobReply] = {}
        ids = list(dict.fromkeys(job.id for job in jobs))
        for start in range(0, len(ids), _GATHER_CHUNK):
            chunk = ids[start : start + _GATHER_CHUNK]
            while chunk:
                remaining_ms = _wait_chunk_ms(end)
                request = pb.WaitJobsRequest(
                    job_ids=chunk, timeout_ms=remaining_ms, include_result=True
                )

                def call(
                    r: pb.WaitJobsRequest = request, t: int = remaining_ms
                ) -> pb.WaitJobsReply:
                    return self._jobs.WaitJobs(r, timeout=t / 1000 + 10)

                try:
                    reply = call_with_retry(call, deadline=self.timeout, what="wait for jobs")
                except errors.NotFound as exc:
                    raise errors.JobNotFound(str(exc)) from exc
                for job_id, job_reply in zip(chunk, reply.jobs, strict=True):
                    replies[job_id] = job_reply
                chunk = [j for j in chunk if not JobState(replies[j].state).is_terminal]
                if end is not None and time.monotonic() >= end:
                    break
        return [job._result_of(replies[job.id], timeout) for job in jobs]

    def get_job(self, job_id: int, graph: TaskGraph | None = None) -> Job:
        """A handle to an existing job; with its `graph`, outputs are decoded to typed values."""
        job = Job(self, job_id, graph)
        job.state  # noqa: B018 - raises JobNotFound for an unknown id
        return job

    def jobs(
        self, states: Sequence[JobState] = (), limit: int = 100, before: int | None = None
    ) -> list[JobInfo]:
        reply = self._call(
            "list jobs",
            self._jobs.ListJobs,
            pb.ListJobsRequest(
                states=[cast("pb.JobState.ValueType", int(s)) for s in states],
                limit=limit,
                before_job_id=before or 0,
            ),
        )
        return [
            JobInfo(
                j.job_id,
                j.resource_group_id,
                JobState(j.state),
                j.created_at_ms,
                j.ended_at_ms or None,
                j.error_message or None,
            )
            for j in reply.jobs
        ]

    # used by Job
    def _job_call(self, what: str, method: str, job_id: int, timeout: float | None = None) -> Any:
        fn = getattr(self._jobs, method)
        try:
            return self._call(what, fn, pb.JobIdRequest(job_id=job_id), timeout)
        except errors.NotFound as exc:
            raise errors.JobNotFound(str(exc)) from exc


class Job:
    """A submitted job."""

    def __init__(self, client: Client, job_id: int, graph: TaskGraph | None = None) -> None:
        self.client = client
        self.id = job_id
        self.graph = graph

    def __repr__(self) -> str:
        return f"Job(id={self.id})"

    @property
    def state(self) -> JobState:
        return JobState(self.client._job_call("get job state", "GetJobState", self.id).state)

    def start(self) -> JobState:
        return JobState(self.client._job_call("start job", "StartJob", self.id).state)

    def cancel(self) -> JobState:
        return JobState(self.client._job_call("cancel job", "CancelJob", self.id).state)

    def wait(self, timeout: float | None = None) -> JobState:
        """Wait (server-side, no polling loop) until the job is terminal or `timeout` seconds
        pass; returns the state either way."""
        return JobState(self._wait(timeout, include_result=False).state)

    def _wait(self, timeout: float | None, *, include_result: bool) -> pb.WaitJobReply:
        end = None if timeout is None else time.monotonic() + timeout
        stub = self.client._jobs
        while True:
            remaining_ms = _wait_chunk_ms(end)
            request = pb.WaitJobRequest(
                job_id=self.id, timeout_ms=remaining_ms, include_result=include_result
            )

            def call(r: pb.WaitJobRequest = request, t: int = remaining_ms) -> pb.WaitJobReply:
                return stub.WaitJob(r, timeout=t / 1000 + 10)

            try:
                reply = call_with_retry(call, deadline=self.client.timeout, what="wait for job")
            except errors.NotFound as exc:
                raise errors.JobNotFound(str(exc)) from exc
            if JobState(reply.state).is_terminal or (end is not None and time.monotonic() >= end):
                return reply

    def result(self, timeout: float | None = None) -> list[Any]:
        """Wait for the job and return its outputs; raise `JobFailed`, `JobCancelled` or
        `JobTimeout`."""
        # One call returns the state with the outputs or the error.
        return self._result_of(self._wait(timeout, include_result=True), timeout)

    def _result_of(self, reply: pb.WaitJobReply, timeout: float | None) -> list[Any]:
        state = JobState(reply.state)
        if state == JobState.SUCCEEDED:
            if reply.serialized_outputs:
                return self._decode_outputs(reply.serialized_outputs)
            return self.outputs()  # omitted (too big to travel with others) or an old server
        if state == JobState.FAILED:
            raise errors.JobFailed(self.id, reply.error_message or self.error() or "unknown error")
        if state == JobState.CANCELLED:
            raise errors.JobCancelled(self.id)
        raise errors.JobTimeout(self.id, timeout or 0.0, state.name)

    def outputs(self) -> list[Any]:
        """The job outputs (all outputs of the tasks without children, in task order)."""
        reply = self.client._job_call("get job outputs", "GetJobOutputs", self.id)
        return self._decode_outputs(reply.serialized_outputs)

    def _decode_outputs(self, serialized: bytes) -> list[Any]:
        payloads = _core.decode_outputs(serialized)
        if self.graph is not None:
            return self.graph.decode_outputs(payloads)
        return _decode_plain(payloads)

    def error(self) -> str | None:
        """The failure message of a FAILED job, None otherwise."""
        try:
            reply = self.client._job_call("get job error", "GetJobError", self.id)
        except errors.FailedPrecondition:
            return None
        return str(reply.error_message)

    def progress(self, explain: int = 0) -> Progress:
        reply = self.client._call(
            "get job progress",
            self.client._jobs.GetJobProgress,
            pb.JobProgressRequest(job_id=self.id, max_explanations=explain),
        )
        c = reply.counts
        state = JobState(reply.state)
        total = reply.total_tasks
        succeeded = c.succeeded
        if not reply.live and state == JobState.SUCCEEDED:
            succeeded = total
        return Progress(
            state,
            total,
            c.pending,
            c.ready,
            c.running,
            succeeded,
            c.failed,
            c.cancelled,
            [
                (_taskid.describe(_taskid.from_proto(w.task_id)), w.reason, w.detail)
                for w in reply.waiting
            ],
        )
