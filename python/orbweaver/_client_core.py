"""What the sync `Client` and the asyncio `AsyncClient` share, written once: settings and
credentials, the requests they build, the replies they decode, retries, deadlines and errors.

Every operation is a generator that yields the calls it needs (`Call`) and is sent their
replies (or thrown their errors); it does no I/O itself. `Client` runs an operation by making each
call in turn (`orbweaver._rpc.call_with_retry`), `AsyncClient` by awaiting each one
(`orbweaver._rpc_aio.call_with_retry_async`); both map failures with `ClientCore._failure`. So the
two send the same requests with the same idempotency keys, retry and time out the same way and
raise the same errors.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

import msgpack

from orbweaver import _core, _taskid, errors
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._rpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    GROUP_METADATA_KEY,
    PASSWORD_METADATA_KEY,
    TOKEN_METADATA_KEY,
    Security,
    TlsConfig,
    named_leader,
)
from orbweaver.graph import Durability, check_durability
from orbweaver.states import JobState

if TYPE_CHECKING:
    from orbweaver.graph import TaskGraph

T = TypeVar("T")
J = TypeVar("J", bound="JobCore")

# Server-side waits are cut into chunks so a dead connection is noticed and retried.
WAIT_CHUNK_MS = 20_000
# Jobs per WaitJobs call in gather.
GATHER_CHUNK = 1000
# Jobs per WaitJobs call in as_completed: every job waited for must be named (the storage takes
# up to 10,000); results beyond half the message limit are left for GetJobOutputs.
_COMPLETED_CHUNK = 10_000
# A sync as_completed over jobs of several credentials looks at each set in turn, this long.
TURN_MS = 250
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


@dataclass(slots=True)  # not frozen: one is made per call, and frozen ones are slow to make
class Call:
    """One RPC an operation needs: `method` of the storage's job service (or, with
    `service="groups"`, of its resource-group service)."""

    what: str
    method: str
    request: Any
    metadata: Metadata = ()
    service: Literal["jobs", "groups"] = "jobs"
    # Seconds per attempt; None: the client's timeout.
    timeout: float | None = None
    # A server-side wait: retried for the client's whole timeout, even before the storage was
    # ever reached (no connect_timeout), and it does not count as reaching it.
    wait: bool = False
    # About one or more jobs: NotFound is raised as JobNotFound.
    job: bool = False


class _Outcome:
    """`ClientCore._outcome`: a context manager (a class: cheaper than a generator one)."""

    __slots__ = ("_call", "_client")

    def __init__(self, client: ClientCore[Any], call: Call) -> None:
        self._client = client
        self._call = call

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            if not self._call.wait:
                self._client._reached = True
        elif isinstance(exc, errors.OrbweaverError):
            failure = self._client._failure(self._call, exc)
            if failure is not exc:
                raise failure from exc


# An operation: yields calls, is sent their replies, returns its result.
Op = Generator[Call, Any, T]


def _wait_chunk_ms(end: float | None) -> int:
    """The next server-side wait: a chunk, or what is left until `end` (monotonic)."""
    if end is None:
        return WAIT_CHUNK_MS
    return max(0, min(WAIT_CHUNK_MS, int((end - time.monotonic()) * 1000)))


def _decode_plain(payloads: list[bytes]) -> list[Any]:
    return [msgpack.unpackb(p, raw=False, strict_map_key=False) for p in payloads]


_WIRE_DURABILITY = {"job": pb.DURABILITY_JOB, "task": pb.DURABILITY_TASK}


def _durability(graph: TaskGraph, override: Durability | None) -> pb.Durability.ValueType:
    return _WIRE_DURABILITY[graph.durability if override is None else check_durability(override)]


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _wait_call(what: str, method: str, request: Any, metadata: Metadata, wait_ms: int) -> Call:
    # The attempt may take the whole server-side wait, and then some.
    return Call(what, method, request, metadata, timeout=wait_ms / 1000 + 10, wait=True, job=True)


class ClientCore(Generic[J]):
    """Settings, credentials and every operation of a client whose jobs are `J`s (see the
    module docstring)."""

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
        env = os.environ
        self.address = address or env.get("ORBWEAVER_STORAGE") or DEFAULT_STORAGE
        # TLS from the caller or the environment; never the cluster token (services only).
        self._tls: TlsConfig | None = (security or Security.from_env(dict(env))).tls
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
        self._default_group = resource_group
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._reached = False
        self.max_message_bytes = max_message_bytes
        self.tasks_dir = Path(tasks_dir).resolve() if tasks_dir is not None else None

    def _new_job(
        self, job_id: int, graph: TaskGraph | None, resource_group: ResourceGroup | None
    ) -> J:
        raise NotImplementedError

    def _peers_of(self, job: J) -> list[J]:
        """Other jobs of this client whose results may be collected with `job`'s (same
        credentials, not collected yet); none by default."""
        return []

    def _set_default_group(self, group: ResourceGroup | None) -> None:
        self._default_group = group
        self._group_name = None

    # -- how calls are made (both drivers) ------------------------------------------------------

    def _attempt_timeout(self, call: Call) -> float:
        return call.timeout if call.timeout is not None else self.timeout

    def _retry_deadline(self, call: Call) -> float:
        """How long a call keeps retrying: until the storage was reached once, a wrong address
        fails after connect_timeout (waits excepted; and a standby's answer proves the address
        right, so retries through an election run to the whole timeout)."""
        if self._reached or call.wait:
            return self.timeout
        return min(self.timeout, self.connect_timeout)

    def _outcome(self, call: Call) -> _Outcome:
        """Around one call with its retries: its failure as the client raises it."""
        return _Outcome(self, call)

    def _failure(self, call: Call, exc: errors.OrbweaverError) -> errors.OrbweaverError:
        if call.job and type(exc) is errors.NotFound:
            return errors.JobNotFound(str(exc))
        if (
            isinstance(exc, errors.Unavailable)
            and not self._reached
            and not call.wait
            and (exc.__cause__ is None or named_leader(exc.__cause__) is None)
        ):
            return errors.Unavailable(
                f"cannot reach the Orbweaver storage service at {self.address} within "
                f"{self.connect_timeout:g} s: is it running, and is the address right? ({exc})"
            )
        return exc

    # -- credentials ----------------------------------------------------------------------------

    def _default_group_op(self) -> Op[ResourceGroup | None]:
        """The default group; one given by name is looked up (its password checked) once."""
        if self._default_group is None and self._group_name is not None:
            name, password = self._group_name
            self._default_group = yield from self._resource_group_op(name, password)
        return self._default_group

    def _metadata_op(self, group: ResourceGroup | None = None) -> Op[Metadata]:
        """Credentials for one call: the operator token if the client holds it, else the
        given group's (or the default group's)."""
        if self.operator_token is not None:
            return self._operator_metadata()
        group = group or (yield from self._default_group_op())
        return group.metadata() if group is not None else ()

    def _operator_metadata(self) -> Metadata:
        if self.operator_token is None:
            return ()
        return ((TOKEN_METADATA_KEY, f"Bearer {self.operator_token}"),)

    def _group_op(self, resource_group: ResourceGroup | None) -> Op[ResourceGroup]:
        group = resource_group or (yield from self._default_group_op())
        if group is None:
            raise errors.InvalidArgument(
                "no resource group: pass resource_group= or create the client with one (or set "
                "ORBWEAVER_RESOURCE_GROUP and ORBWEAVER_PASSWORD)"
            )
        return group

    # -- resource groups ------------------------------------------------------------------------

    def _add_resource_group_op(self, name: str, password: str | bytes) -> Op[ResourceGroup]:
        pw = _as_bytes(password)
        reply = yield Call(
            "add resource group",
            "AddResourceGroup",
            pb.AddResourceGroupRequest(external_resource_group_id=name, password=pw),
            self._operator_metadata(),
            service="groups",
        )
        return ResourceGroup(reply.resource_group_id, name, pw)

    def _resource_groups_op(self) -> Op[list[ResourceGroup]]:
        groups: list[ResourceGroup] = []
        after = 0
        metadata = yield from self._metadata_op()
        while True:
            reply = yield Call(
                "list resource groups",
                "ListResourceGroups",
                pb.ListResourceGroupsRequest(after_id=after, limit=1000),
                metadata,
                service="groups",
            )
            groups.extend(
                ResourceGroup(g.resource_group_id, g.external_resource_group_id)
                for g in reply.groups
            )
            if len(reply.groups) < 1000:
                return groups
            after = reply.groups[-1].resource_group_id

    def _resource_group_op(self, name: str, password: str | bytes) -> Op[ResourceGroup]:
        pw = _as_bytes(password)
        if not pw and self.operator_token is not None:
            for group in (yield from self._resource_groups_op()):
                if group.name == name:
                    return group
            raise errors.NotFound(f"resource group {name!r} not found")
        reply = yield Call(
            "verify resource group",
            "VerifyResourceGroup",
            pb.VerifyResourceGroupRequest(external_resource_group_id=name, password=pw),
            service="groups",
        )
        return ResourceGroup(reply.resource_group_id, reply.external_resource_group_id, pw)

    # -- submissions ----------------------------------------------------------------------------

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

    def _check_size(self, size: int, what: str) -> None:
        if size > self.max_message_bytes:
            raise errors.MessageTooLarge(
                f"{what} is {size} bytes compressed, above the {self.max_message_bytes}"
                " byte message limit; raise max_message_bytes on the client and the storage"
            )

    def _submit_op(
        self,
        graph: TaskGraph,
        inputs: Sequence[Any],
        resource_group: ResourceGroup | None,
        start: bool,
        idempotency_key: str | None,
        durability: Durability | None,
    ) -> Op[J]:
        wire_durability = _durability(graph, durability)
        group = yield from self._group_op(resource_group)
        self._check_tasks_dir(graph)
        compressed_graph = graph.compressed()
        compressed_inputs = graph.encode_inputs(inputs)
        self._check_size(len(compressed_graph) + len(compressed_inputs), "the submission")
        request = pb.RegisterJobRequest(
            resource_group_id=group.id,
            password=group.password,
            compressed_serialized_task_graph=compressed_graph,
            compressed_serialized_inputs=compressed_inputs,
            # Fixed before the first attempt: a retried submission never creates a second job.
            idempotency_key=idempotency_key or uuid.uuid4().hex,
            start=start,
            durability=wire_durability,
        )
        metadata = yield from self._metadata_op(group)
        reply = yield Call("submit job", "RegisterJob", request, metadata)
        return self._new_job(reply.job_id, graph, group)

    def _submit_many_op(
        self,
        graph: TaskGraph,
        inputs: Iterable[Sequence[Any]],
        resource_group: ResourceGroup | None,
        start: bool,
        batch_size: int,
        durability: Durability | None,
    ) -> Op[list[J]]:
        if batch_size < 1:
            raise errors.InvalidArgument(f"batch_size must be at least 1, got {batch_size}")
        wire_durability = _durability(graph, durability)
        group = yield from self._group_op(resource_group)
        self._check_tasks_dir(graph)
        compressed_graph = graph.compressed()
        encoded: list[bytes] = []
        for index, values in enumerate(inputs):
            try:
                encoded.append(graph.encode_inputs(values))
            except errors.InvalidInput as exc:
                raise errors.InvalidInput(f"job {index}: {exc}") from None
        metadata = yield from self._metadata_op(group)
        # Room for the graph and the protobuf framing of each entry (key, lengths).
        budget = self.max_message_bytes - len(compressed_graph) - 1024
        jobs: list[J] = []
        batch: list[pb.JobInputs] = []
        batch_bytes = 0

        def flush() -> Op[None]:
            request = pb.RegisterJobsRequest(
                resource_group_id=group.id,
                password=group.password,
                compressed_serialized_task_graph=compressed_graph,
                jobs=batch,
                start=start,
                durability=wire_durability,
            )
            reply = yield Call("submit jobs", "RegisterJobs", request, metadata)
            jobs.extend(self._new_job(j.job_id, graph, group) for j in reply.jobs)

        for index, data in enumerate(encoded):
            entry_bytes = len(data) + 48
            self._check_size(len(compressed_graph) + entry_bytes + 1024, f"job {index}")
            if batch and (len(batch) >= batch_size or batch_bytes + entry_bytes > budget):
                yield from flush()
                batch, batch_bytes = [], 0
            # Each job its own key, fixed before the first attempt of its batch.
            batch.append(
                pb.JobInputs(compressed_serialized_inputs=data, idempotency_key=uuid.uuid4().hex)
            )
            batch_bytes += entry_bytes
        if batch:
            yield from flush()
        return jobs

    # -- waiting for many jobs ------------------------------------------------------------------

    def _wait_jobs_op(
        self,
        job_ids: list[int],
        metadata: Metadata,
        wait_ms: int,
        *,
        any_terminal: bool = False,
    ) -> Op[list[pb.WaitJobReply]]:
        """One WaitJobs call (results included): a reply per job, in order."""
        request = pb.WaitJobsRequest(
            job_ids=job_ids, timeout_ms=wait_ms, include_result=True, any_terminal=any_terminal
        )
        reply = yield _wait_call("wait for jobs", "WaitJobs", request, metadata, wait_ms)
        return list(reply.jobs)

    def _gather_op(self, jobs: Sequence[J], timeout: float | None) -> Op[list[list[Any]]]:
        end = None if timeout is None else time.monotonic() + timeout
        replies: dict[int, pb.WaitJobReply] = {}
        # One wait per group of jobs that share credentials.
        by_credentials: dict[Metadata, list[int]] = {}
        for job in jobs:
            metadata = yield from job._metadata_op()
            by_credentials.setdefault(metadata, []).append(job.id)
        for metadata, job_ids in by_credentials.items():
            ids = list(dict.fromkeys(job_ids))
            for start in range(0, len(ids), GATHER_CHUNK):
                chunk = ids[start : start + GATHER_CHUNK]
                while chunk:
                    wait_ms = _wait_chunk_ms(end)
                    chunk_replies = yield from self._wait_jobs_op(chunk, metadata, wait_ms)
                    for job_id, reply in zip(chunk, chunk_replies, strict=True):
                        replies[job_id] = reply
                    chunk = [j for j in chunk if not JobState(replies[j].state).is_terminal]
                    if end is not None and time.monotonic() >= end:
                        break
        results: list[list[Any]] = []
        for job in jobs:
            results.append((yield from job._result_of_op(replies[job.id], timeout)))
        return results

    # -- jobs -----------------------------------------------------------------------------------

    def _get_job_op(
        self, job_id: int, graph: TaskGraph | None, resource_group: ResourceGroup | None
    ) -> Op[J]:
        job = self._new_job(job_id, graph, resource_group)
        yield from job._state_op()  # JobNotFound for an unknown id
        return job

    def _jobs_op(
        self,
        states: Sequence[JobState],
        limit: int,
        before: int | None,
        resource_group: ResourceGroup | None,
    ) -> Op[list[JobInfo]]:
        metadata = yield from self._metadata_op(resource_group)
        reply = yield Call(
            "list jobs",
            "ListJobs",
            pb.ListJobsRequest(
                states=[cast("pb.JobState.ValueType", int(s)) for s in states],
                limit=limit,
                before_job_id=before or 0,
                resource_group_id=resource_group.id if resource_group is not None else 0,
            ),
            metadata,
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


class JobCore:
    """A submitted job's operations (see the module docstring); `Job` and `AsyncJob` run them."""

    client: ClientCore[Any]

    def __init__(
        self,
        client: ClientCore[Any],
        job_id: int,
        graph: TaskGraph | None = None,
        resource_group: ResourceGroup | None = None,
    ) -> None:
        self.client = client
        self.id = job_id
        self.graph = graph
        self.resource_group = resource_group
        # Its terminal state with its result, once a wait for many jobs (as_completed) saw it
        # end: a terminal job never changes, so `result()` and `wait()` need no call then.
        self._ended: pb.WaitJobReply | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id})"

    def _metadata_op(self) -> Op[Metadata]:
        return (yield from self.client._metadata_op(self.resource_group))

    def _job_call_op(self, what: str, method: str) -> Op[Any]:
        metadata = yield from self._metadata_op()
        return (yield Call(what, method, pb.JobIdRequest(job_id=self.id), metadata, job=True))

    def _state_op(self) -> Op[JobState]:
        return JobState((yield from self._job_call_op("get job state", "GetJobState")).state)

    def _start_op(self) -> Op[JobState]:
        return JobState((yield from self._job_call_op("start job", "StartJob")).state)

    def _cancel_op(self) -> Op[JobState]:
        return JobState((yield from self._job_call_op("cancel job", "CancelJob")).state)

    def _wait_op(self, timeout: float | None, *, include_result: bool) -> Op[pb.WaitJobReply]:
        """Wait (server-side, no polling loop) until the job is terminal or `timeout` seconds
        pass: the last reply either way."""
        if self._ended is not None:
            return self._ended
        end = None if timeout is None else time.monotonic() + timeout
        metadata = yield from self._metadata_op()
        while True:
            wait_ms = _wait_chunk_ms(end)
            request = pb.WaitJobRequest(
                job_id=self.id, timeout_ms=wait_ms, include_result=include_result
            )
            reply = yield _wait_call("wait for job", "WaitJob", request, metadata, wait_ms)
            if JobState(reply.state).is_terminal or (end is not None and time.monotonic() >= end):
                return cast("pb.WaitJobReply", reply)

    def _result_op(self, timeout: float | None) -> Op[list[Any]]:
        if self._ended is None:
            yield from self._collect_ended_op()
        # One call returns the state with the outputs or the error.
        reply = yield from self._wait_op(timeout, include_result=True)
        return (yield from self._result_of_op(reply, timeout))

    def _collect_ended_op(self) -> Op[None]:
        """With other jobs of this client waiting to be collected (`ClientCore._peers_of`): one
        WaitJobs that waits for nothing takes the result of every one of them that has ended,
        this one included, so the loop `[job.result() for job in jobs]` makes a call per batch of
        ended jobs, not per job. A terminal job never changes: the results are kept on their
        handles (`_ended`)."""
        peers = self.client._peers_of(self)
        if not peers:
            return
        metadata = yield from self._metadata_op()
        jobs = [self, *peers]
        try:
            replies = yield from self.client._wait_jobs_op([j.id for j in jobs], metadata, 0)
        except errors.OrbweaverError:
            return  # e.g. a peer deleted meanwhile: this job's own wait says what matters
        for job, reply in zip(jobs, replies, strict=True):
            if JobState(reply.state).is_terminal:
                job._ended = reply

    def _result_of_op(self, reply: pb.WaitJobReply, timeout: float | None) -> Op[list[Any]]:
        state = JobState(reply.state)
        if state == JobState.SUCCEEDED:
            if reply.serialized_outputs:
                return self._decode_outputs(reply.serialized_outputs)
            # Omitted (too big to travel with others) or an old server.
            return (yield from self._outputs_op())
        if state == JobState.FAILED:
            message = reply.error_message or (yield from self._error_op()) or "unknown error"
            raise errors.JobFailed(self.id, message)
        if state == JobState.CANCELLED:
            raise errors.JobCancelled(self.id)
        raise errors.JobTimeout(self.id, timeout or 0.0, state.name)

    def _outputs_op(self) -> Op[list[Any]]:
        reply = yield from self._job_call_op("get job outputs", "GetJobOutputs")
        return self._decode_outputs(reply.serialized_outputs)

    def _decode_outputs(self, serialized: bytes) -> list[Any]:
        payloads = _core.decode_outputs(serialized)
        if self.graph is not None:
            return self.graph.decode_outputs(payloads)
        return _decode_plain(payloads)

    def _error_op(self) -> Op[str | None]:
        try:
            reply = yield from self._job_call_op("get job error", "GetJobError")
        except errors.FailedPrecondition:
            return None
        return str(reply.error_message)

    def _progress_op(self, explain: int) -> Op[Progress]:
        metadata = yield from self._metadata_op()
        reply = yield Call(
            "get job progress",
            "GetJobProgress",
            pb.JobProgressRequest(job_id=self.id, max_explanations=explain),
            metadata,
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


class Waited(Generic[J]):
    """The jobs of an `AsCompleted` that one client waits for under one set of credentials."""

    def __init__(self, client: ClientCore[J], metadata: Metadata) -> None:
        self.client = client
        self.metadata = metadata
        self.jobs: dict[int, list[J]] = {}  # job id -> the handles given for it, in order
        self.states: dict[int, JobState] = {}


class AsCompleted(Generic[J]):
    """as_completed's bookkeeping, shared by `Client.as_completed` and `orbweaver.as_completed`:
    which jobs are still unfinished, under which credentials, which ones a wait saw end, and the
    timeout. A wait (`wait_op`) is one WaitJobs call over up to 10,000 jobs of one client and
    set of credentials (a `Waited`) that returns as soon as one of them is terminal
    (`any_terminal`), results included."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.end = None if timeout is None else time.monotonic() + timeout
        self._groups: list[Waited[J]] = []
        self._filling: dict[tuple[int, Metadata], Waited[J]] = {}
        self._ended: list[J] = []

    def add(self, client: ClientCore[J], metadata: Metadata, job: J) -> None:
        if job._ended is not None:  # an earlier wait saw it end
            self._ended.append(job)
            return
        key = (id(client), metadata)
        waited = self._filling.get(key)
        if waited is None or (
            len(waited.jobs) >= _COMPLETED_CHUNK and job.id not in waited.jobs
        ):  # every job waited for is named in the call: the next ones wait in another
            waited = self._filling[key] = Waited(client, metadata)
            self._groups.append(waited)
        waited.jobs.setdefault(job.id, []).append(job)

    def ended_before(self) -> list[J]:
        """The jobs known to have ended already (no call needed), once."""
        ended, self._ended = self._ended, []
        return ended

    def waits(self) -> list[Waited[J]]:
        """The groups with unfinished jobs."""
        return [w for w in self._groups if w.jobs]

    def wait_op(self, waited: Waited[J], turn_ms: int | None = None) -> Op[list[J]]:
        """Wait for the first of `waited`'s jobs to end (or the timeout, or `turn_ms`): the
        handles of the jobs that ended, in the order given, each with its result kept."""
        ids = list(waited.jobs)
        wait_ms = _wait_chunk_ms(self.end)
        if turn_ms is not None:
            wait_ms = min(wait_ms, turn_ms)
        replies = yield from waited.client._wait_jobs_op(
            ids, waited.metadata, wait_ms, any_terminal=True
        )
        ended: list[J] = []
        for job_id, reply in zip(ids, replies, strict=True):
            state = JobState(reply.state)
            if not state.is_terminal:
                waited.states[job_id] = state
                continue
            for job in waited.jobs.pop(job_id):
                job._ended = reply
                ended.append(job)
        return ended

    def check_time(self) -> None:
        """Raise `JobTimeout` naming every unfinished job once the timeout has passed."""
        if self.end is None or time.monotonic() < self.end:
            return
        unfinished = {
            job_id: waited.states.get(job_id, "unfinished")
            for waited in self.waits()
            for job_id in waited.jobs
        }
        if unfinished:
            first, state = next(iter(unfinished.items()))
            raise errors.JobTimeout(
                first,
                self.timeout or 0.0,
                str(state),
                unfinished={j: str(s) for j, s in unfinished.items()},
            )
