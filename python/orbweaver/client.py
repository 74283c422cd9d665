"""The client: submit task graphs, wait for jobs, fetch their outputs.

Every call retries transient transport errors with backoff; submissions carry an idempotency key
so a retried submission never creates a second job.

A client acts within a resource group (its id and password travel with every call, and it sees
only that group's jobs) or as the operator (the operator token: every group). Credentials are
given once, to the client or through the environment: `ORBWEAVER_STORAGE`,
`ORBWEAVER_RESOURCE_GROUP` and `ORBWEAVER_PASSWORD`, `ORBWEAVER_OPERATOR_TOKEN`, and
`ORBWEAVER_TLS_CA` (with `ORBWEAVER_TLS_CERT`/`_KEY` for mutual TLS). A client never sends the
cluster token: that one is for the services.
"""

from __future__ import annotations

import os
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
    GROUP_METADATA_KEY,
    PASSWORD_METADATA_KEY,
    TOKEN_METADATA_KEY,
    Security,
    call_with_retry,
    make_channel,
)
from orbweaver.graph import Durability, check_durability
from orbweaver.states import JobState

if TYPE_CHECKING:
    from orbweaver.graph import TaskGraph

T = TypeVar("T")

# Server-side waits are cut into chunks so a dead connection is noticed and retried.
_WAIT_CHUNK_MS = 20_000
# Jobs per WaitJobs call in Client.gather.
_GATHER_CHUNK = 1000
DEFAULT_STORAGE = "127.0.0.1:50051"

Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True, slots=True)
class ResourceGroup:
    """A tenant: jobs are submitted under a resource group, with its password; its credentials
    let a client see that group's jobs and no other."""

    id: int
    name: str
    password: bytes = field(repr=False, default=b"")

    def metadata(self) -> Metadata:
        return ((GROUP_METADATA_KEY, str(self.id)), (PASSWORD_METADATA_KEY, self.password))


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


_WIRE_DURABILITY = {"job": pb.DURABILITY_JOB, "task": pb.DURABILITY_TASK}


def _durability(graph: TaskGraph, override: Durability | None) -> pb.Durability.ValueType:
    return _WIRE_DURABILITY[graph.durability if override is None else check_durability(override)]


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


class Client:
    """A connection to a running Orbweaver cluster (its storage service)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        resource_group: ResourceGroup | str | None = None,
        password: str | bytes | None = None,
        operator_token: str | None = None,
        security: Security | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tasks_dir: str | Path | None = None,
    ) -> None:
        """`address`: the storage service (default `$ORBWEAVER_STORAGE`, else
        127.0.0.1:50051). Credentials: `resource_group` (a `ResourceGroup`, or a name with its
        `password`; default `$ORBWEAVER_RESOURCE_GROUP` with `$ORBWEAVER_PASSWORD`) and/or the
        `operator_token` (default `$ORBWEAVER_OPERATOR_TOKEN`); `security`: TLS (default from
        `$ORBWEAVER_TLS_*`). `timeout`: how long a call keeps retrying transient failures (a
        storage restart); `connect_timeout`: how long the first call waits for a storage that
        was never reached, so a wrong address fails fast; `tasks_dir`: the tasks directory of
        the workers this client submits to, when known (a `LocalCluster`'s): a graph with a
        task that does not live there is refused at submission instead of failing in every
        executor."""
        env = os.environ
        address = address or env.get("ORBWEAVER_STORAGE") or DEFAULT_STORAGE
        # TLS from the caller or the environment; never the cluster token (services only).
        tls = (security or Security.from_env(dict(env))).tls
        if resource_group is None and env.get("ORBWEAVER_RESOURCE_GROUP"):
            resource_group = env["ORBWEAVER_RESOURCE_GROUP"]
        if isinstance(resource_group, str):
            if password is None:
                password = env.get("ORBWEAVER_PASSWORD", "")
            self._group_name: tuple[str, bytes] | None = (resource_group, _as_bytes(password))
            resource_group = None
        else:
            self._group_name = None
        self.operator_token = operator_token or env.get("ORBWEAVER_OPERATOR_TOKEN") or None
        self.address = address
        self._default_group = resource_group
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._reached = False
        self.max_message_bytes = max_message_bytes
        self.tasks_dir = Path(tasks_dir).resolve() if tasks_dir is not None else None
        self._channel = make_channel(
            address, Security(tls=tls), max_message_bytes=max_message_bytes
        )
        self._jobs = pb_grpc.JobOrchestrationServiceStub(self._channel)
        self._groups = pb_grpc.ResourceGroupManagementServiceStub(self._channel)

    # -- credentials ----------------------------------------------------------------------------

    @property
    def default_resource_group(self) -> ResourceGroup | None:
        """The group submissions go to and the calls act within (a group given by name is
        looked up, and its password checked, on first use)."""
        if self._default_group is None and self._group_name is not None:
            name, password = self._group_name
            self._default_group = self.resource_group(name, password)
        return self._default_group

    @default_resource_group.setter
    def default_resource_group(self, group: ResourceGroup | None) -> None:
        self._default_group = group
        self._group_name = None

    def _metadata(self, group: ResourceGroup | None = None) -> Metadata:
        """Credentials for one call: the operator token if the client holds it, else the
        given group's (or the default group's)."""
        if self.operator_token is not None:
            return ((TOKEN_METADATA_KEY, f"Bearer {self.operator_token}"),)
        group = group or self.default_resource_group
        return group.metadata() if group is not None else ()

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
        self,
        what: str,
        fn: Callable[..., T],
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> T:
        per_call = timeout if timeout is not None else self.timeout
        if self._reached:
            return call_with_retry(
                lambda: fn(request, timeout=per_call, metadata=metadata),
                deadline=self.timeout,
                what=what,
            )
        try:
            result = call_with_retry(
                lambda: fn(request, timeout=per_call, metadata=metadata),
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
        """Create a resource group (needs the operator token when the storage has one)."""
        pw = _as_bytes(password)
        reply = self._call(
            "add resource group",
            self._groups.AddResourceGroup,
            pb.AddResourceGroupRequest(external_resource_group_id=name, password=pw),
            metadata=self._metadata_for_operator(),
        )
        return ResourceGroup(reply.resource_group_id, name, pw)

    def _metadata_for_operator(self) -> Metadata:
        if self.operator_token is None:
            return ()
        return ((TOKEN_METADATA_KEY, f"Bearer {self.operator_token}"),)

    def resource_groups(self) -> list[ResourceGroup]:
        """Every resource group (for the operator; a group's credentials see only their group),
        without passwords."""
        groups: list[ResourceGroup] = []
        after = 0
        while True:
            reply = self._call(
                "list resource groups",
                self._groups.ListResourceGroups,
                pb.ListResourceGroupsRequest(after_id=after, limit=1000),
                metadata=self._metadata(),
            )
            groups.extend(
                ResourceGroup(g.resource_group_id, g.external_resource_group_id)
                for g in reply.groups
            )
            if len(reply.groups) < 1000:
                return groups
            after = reply.groups[-1].resource_group_id

    def resource_group(self, name: str, password: str | bytes = b"") -> ResourceGroup:
        """An existing resource group, with its password checked by the server (the operator
        may name a group without its password)."""
        pw = _as_bytes(password)
        if not pw and self.operator_token is not None:
            for group in self.resource_groups():
                if group.name == name:
                    return group
            raise errors.NotFound(f"resource group {name!r} not found")
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
                "no resource group: pass resource_group= or create the client with one (or set "
                "ORBWEAVER_RESOURCE_GROUP and ORBWEAVER_PASSWORD)"
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
        durability: Durability | None = None,
    ) -> Job:
        """Submit `graph` with its graph inputs (flattened in task order, then position).
        `durability` overrides the graph's (see `orbweaver.Durability`)."""
        wire_durability = _durability(graph, durability)
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
            durability=wire_durability,
        )
        reply = self._call(
            "submit job", self._jobs.RegisterJob, request, metadata=self._metadata(group)
        )
        return Job(self, reply.job_id, graph, group)

    def submit_many(
        self,
        graph: TaskGraph,
        inputs: Iterable[Sequence[Any]],
        *,
        resource_group: ResourceGroup | None = None,
        start: bool = True,
        batch_size: int = 1000,
        durability: Durability | None = None,
    ) -> list[Job]:
        """Submit one job of `graph` per entry of `inputs`: the jobs travel in batches of up to
        `batch_size` (and the message size limit), each batch one call and one DB transaction.
        `durability` overrides the graph's for every job (see `orbweaver.Durability`).

        Every input list is type-checked before anything is sent (`InvalidInput` names the job
        and the input). Each job carries its own idempotency key, so a retried batch never
        creates a job twice; a batch that fails leaves the batches before it submitted.
        """
        if batch_size < 1:
            raise errors.InvalidArgument(f"batch_size must be at least 1, got {batch_size}")
        wire_durability = _durability(graph, durability)
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
                durability=wire_durability,
            )
            reply = self._call(
                "submit jobs", self._jobs.RegisterJobs, request, metadata=self._metadata(group)
            )
            jobs.extend(Job(self, j.job_id, graph, group) for j in reply.jobs)

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
        # One wait per group of jobs that share credentials.
        by_credentials: dict[Metadata, list[int]] = {}
        for job in jobs:
            by_credentials.setdefault(job._metadata(), []).append(job.id)
        for metadata, job_ids in by_credentials.items():
            self._gather(list(dict.fromkeys(job_ids)), metadata, end, replies)
        return [job._result_of(replies[job.id], timeout) for job in jobs]

    def _gather(
        self,
        ids: list[int],
        metadata: Metadata,
        end: float | None,
        replies: dict[int, pb.WaitJobReply],
    ) -> None:
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
                    return self._jobs.WaitJobs(r, timeout=t / 1000 + 10, metadata=metadata)

                try:
                    reply = call_with_retry(call, deadline=self.timeout, what="wait for jobs")
                except errors.NotFound as exc:
                    raise errors.JobNotFound(str(exc)) from exc
                for job_id, job_reply in zip(chunk, reply.jobs, strict=True):
                    replies[job_id] = job_reply
                chunk = [j for j in chunk if not JobState(replies[j].state).is_terminal]
                if end is not None and time.monotonic() >= end:
                    break

    def get_job(
        self,
        job_id: int,
        graph: TaskGraph | None = None,
        *,
        resource_group: ResourceGroup | None = None,
    ) -> Job:
        """A handle to an existing job of the client's group (or of `resource_group`); with its
        `graph`, outputs are decoded to typed values. `JobNotFound` for an unknown job and for
        a job of a group the credentials do not cover."""
        job = Job(self, job_id, graph, resource_group)
        job.state  # noqa: B018 - raises JobNotFound for an unknown id
        return job

    def jobs(
        self,
        states: Sequence[JobState] = (),
        limit: int = 100,
        before: int | None = None,
        *,
        resource_group: ResourceGroup | None = None,
    ) -> list[JobInfo]:
        """Jobs newest first: the client's group's (or `resource_group`'s); the operator sees
        every group's unless `resource_group` narrows it."""
        reply = self._call(
            "list jobs",
            self._jobs.ListJobs,
            pb.ListJobsRequest(
                states=[cast("pb.JobState.ValueType", int(s)) for s in states],
                limit=limit,
                before_job_id=before or 0,
                resource_group_id=resource_group.id if resource_group is not None else 0,
            ),
            metadata=self._metadata(resource_group),
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
    def _job_call(self, what: str, method: str, job: Job, timeout: float | None = None) -> Any:
        fn = getattr(self._jobs, method)
        try:
            return self._call(what, fn, pb.JobIdRequest(job_id=job.id), timeout, job._metadata())
        except errors.NotFound as exc:
            raise errors.JobNotFound(str(exc)) from exc


class Job:
    """A submitted job (of the resource group it was submitted to)."""

    def __init__(
        self,
        client: Client,
        job_id: int,
        graph: TaskGraph | None = None,
        resource_group: ResourceGroup | None = None,
    ) -> None:
        self.client = client
        self.id = job_id
        self.graph = graph
        self.resource_group = resource_group

    def __repr__(self) -> str:
        return f"Job(id={self.id})"

    def _metadata(self) -> Metadata:
        return self.client._metadata(self.resource_group)

    @property
    def state(self) -> JobState:
        return JobState(self.client._job_call("get job state", "GetJobState", self).state)

    def start(self) -> JobState:
        return JobState(self.client._job_call("start job", "StartJob", self).state)

    def cancel(self) -> JobState:
        return JobState(self.client._job_call("cancel job", "CancelJob", self).state)

    def wait(self, timeout: float | None = None) -> JobState:
        """Wait (server-side, no polling loop) until the job is terminal or `timeout` seconds
        pass; returns the state either way."""
        return JobState(self._wait(timeout, include_result=False).state)

    def _wait(self, timeout: float | None, *, include_result: bool) -> pb.WaitJobReply:
        end = None if timeout is None else time.monotonic() + timeout
        stub = self.client._jobs
        metadata = self._metadata()
        while True:
            remaining_ms = _wait_chunk_ms(end)
            request = pb.WaitJobRequest(
                job_id=self.id, timeout_ms=remaining_ms, include_result=include_result
            )

            def call(r: pb.WaitJobRequest = request, t: int = remaining_ms) -> pb.WaitJobReply:
                return stub.WaitJob(r, timeout=t / 1000 + 10, metadata=metadata)

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
        reply = self.client._job_call("get job outputs", "GetJobOutputs", self)
        return self._decode_outputs(reply.serialized_outputs)

    def _decode_outputs(self, serialized: bytes) -> list[Any]:
        payloads = _core.decode_outputs(serialized)
        if self.graph is not None:
            return self.graph.decode_outputs(payloads)
        return _decode_plain(payloads)

    def error(self) -> str | None:
        """The failure message of a FAILED job, None otherwise."""
        try:
            reply = self.client._job_call("get job error", "GetJobError", self)
        except errors.FailedPrecondition:
            return None
        return str(reply.error_message)

    def progress(self, explain: int = 0) -> Progress:
        reply = self.client._call(
            "get job progress",
            self.client._jobs.GetJobProgress,
            pb.JobProgressRequest(job_id=self.id, max_explanations=explain),
            metadata=self._metadata(),
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
