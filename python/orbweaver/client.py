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

import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from orbweaver import _trace
from orbweaver._client_core import (
    DEFAULT_STORAGE,
    TURN_MS,
    AsCompleted,
    Call,
    ClientCore,
    JobCore,
    JobInfo,
    Metadata,
    Op,
    Progress,
    ResourceGroup,
)
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import DEFAULT_MAX_MESSAGE_BYTES, Security, call_with_retry, make_channel
from orbweaver.graph import Durability
from orbweaver.states import JobState

if TYPE_CHECKING:
    from orbweaver.graph import TaskGraph

__all__ = ["DEFAULT_STORAGE", "Client", "Job", "JobInfo", "Metadata", "Progress", "ResourceGroup"]

T = TypeVar("T")

# `Job.result()` collects the results of the client's other ended jobs in the same call, at most
# this often and this many at a time (one WaitJobs).
_COLLECT_INTERVAL = 0.02
_COLLECT_MAX = 1000


class Client(ClientCore["Job"]):
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
        127.0.0.1:50051), or several storages `a:50051,b:50051` (the client follows the
        leader). Credentials: `resource_group` (a `ResourceGroup`, or a name with its
        `password`; default `$ORBWEAVER_RESOURCE_GROUP` with `$ORBWEAVER_PASSWORD`) and/or the
        `operator_token` (default `$ORBWEAVER_OPERATOR_TOKEN`); `security`: TLS (default from
        `$ORBWEAVER_TLS_*`). `timeout`: how long a call keeps retrying transient failures (a
        storage restart); `connect_timeout`: how long the first call waits for a storage that
        was never reached, so a wrong address fails fast; `tasks_dir`: the tasks directory of
        the workers this client submits to, when known (a `LocalCluster`'s): a graph with a
        task that does not live there is refused at submission instead of failing in every
        executor."""
        super().__init__(
            address,
            resource_group=resource_group,
            password=password,
            operator_token=operator_token,
            security=security,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_message_bytes=max_message_bytes,
            tasks_dir=tasks_dir,
        )
        self._channel = make_channel(
            self.address, Security(tls=self._tls), max_message_bytes=max_message_bytes
        )
        self._jobs = pb_grpc.JobOrchestrationServiceStub(self._channel)
        # Handles of jobs this client submitted or looked up whose results were not collected
        # (weak: a handle the caller dropped is nobody's business), see `_peers_of`.
        self._uncollected: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()
        self._collected_at = 0.0
        self._groups = pb_grpc.ResourceGroupManagementServiceStub(self._channel)

    def _new_job(
        self, job_id: int, graph: TaskGraph | None, resource_group: ResourceGroup | None
    ) -> Job:
        job = Job(self, job_id, graph, resource_group)
        self._uncollected[job_id] = job
        return job

    def _peers_of(self, job: Job) -> list[Job]:
        # At most one collection per interval: jobs that have not ended yet are not asked for
        # again on every `result()`.
        now = time.monotonic()
        if now - self._collected_at < _COLLECT_INTERVAL:
            return []
        self._collected_at = now
        peers: list[Job] = []
        for job_id, peer in list(self._uncollected.items()):
            if peer._ended is not None:
                self._uncollected.pop(job_id, None)
            elif peer is not job and peer.resource_group == job.resource_group:
                peers.append(peer)
                if len(peers) >= _COLLECT_MAX - 1:
                    break
        return peers

    # -- plumbing -------------------------------------------------------------------------------

    def _run(self, op: Op[T]) -> T:
        """Run an operation: make each call it yields, in turn."""
        try:
            call = next(op)
            while True:
                try:
                    reply = self._perform(call)
                except BaseException as exc:
                    call = op.throw(exc)
                else:
                    call = op.send(reply)
        except StopIteration as done:
            return cast("T", done.value)

    def _perform(self, call: Call) -> Any:
        fn = getattr(self._groups if call.service == "groups" else self._jobs, call.method)
        timeout = self._attempt_timeout(call)
        with self._outcome(call):
            return call_with_retry(
                lambda: fn(call.request, timeout=timeout, metadata=call.metadata),
                deadline=self._retry_deadline(call),
                what=call.what,
                answered_deadline=self.timeout,
            )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- credentials ----------------------------------------------------------------------------

    @property
    def default_resource_group(self) -> ResourceGroup | None:
        """The group submissions go to and the calls act within (a group given by name is
        looked up, and its password checked, on first use)."""
        return self._run(self._default_group_op())

    @default_resource_group.setter
    def default_resource_group(self, group: ResourceGroup | None) -> None:
        self._set_default_group(group)

    # -- resource groups ------------------------------------------------------------------------

    def add_resource_group(self, name: str, password: str | bytes) -> ResourceGroup:
        """Create a resource group (needs the operator token when the storage has one)."""
        return self._run(self._add_resource_group_op(name, password))

    def resource_groups(self) -> list[ResourceGroup]:
        """Every resource group (for the operator; a group's credentials see only their group),
        without passwords."""
        return self._run(self._resource_groups_op())

    def resource_group(self, name: str, password: str | bytes = b"") -> ResourceGroup:
        """An existing resource group, with its password checked by the server (the operator
        may name a group without its password)."""
        return self._run(self._resource_group_op(name, password))

    # -- jobs -----------------------------------------------------------------------------------

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
        `durability` overrides the graph's (see `orbweaver.Durability`). The submission carries
        `idempotency_key` (a random one by default), so a retried call never creates a second
        job; the same key with the same graph and inputs returns the same job."""
        if not _trace.ENABLED:
            return self._run(
                self._submit_op(graph, inputs, resource_group, start, idempotency_key, durability)
            )
        began = time.monotonic_ns()
        job = self._run(
            self._submit_op(graph, inputs, resource_group, start, idempotency_key, durability)
        )
        _trace.mark("client.submit", job.id, began)
        _trace.mark("client.submitted", job.id)
        return job

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
        return self._run(
            self._submit_many_op(graph, inputs, resource_group, start, batch_size, durability)
        )

    def gather(self, jobs: Sequence[Job], timeout: float | None = None) -> list[list[Any]]:
        """Wait for every job and return their outputs, in order (like ``ray.get`` of a list or
        Dask's ``gather``): a few server-side waits for all of them instead of one per job.
        Raises `JobFailed` / `JobCancelled` for the first such job in order, `JobTimeout` if
        one is still unfinished after `timeout` seconds."""
        return self._run(self._gather_op(jobs, timeout))

    def as_completed(self, jobs: Iterable[Job], timeout: float | None = None) -> Iterator[Job]:
        """Yield each of `jobs` as it reaches a terminal state (succeeded, failed or
        cancelled), first finished first; its `result()` then needs no further call. One
        server-side wait (`WaitJobs`) covers up to 10,000 jobs of one set of credentials and
        returns as soon as one of them ends; more jobs, or jobs under several credentials (no
        operator token), are looked at in turn, a quarter of a second each.

        With `timeout` (seconds, for the whole iteration), `JobTimeout` is raised once it has
        passed with jobs unfinished: its `unfinished` maps each such job id to its last known
        state. A job given twice is yielded twice."""
        waiting: AsCompleted[Job] = AsCompleted(timeout)
        for job in jobs:
            waiting.add(self, self._run(job._metadata_op()), job)
        yield from waiting.ended_before()
        while waits := waiting.waits():
            # One set of credentials: wait long; several: take turns.
            turn = TURN_MS if len(waits) > 1 else None
            for waited in waits:
                yield from self._run(waiting.wait_op(waited, turn))
                waiting.check_time()

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
        return self._run(self._get_job_op(job_id, graph, resource_group))

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
        return self._run(self._jobs_op(states, limit, before, resource_group))


class Job(JobCore):
    """A submitted job (of the resource group it was submitted to)."""

    client: Client

    def __init__(
        self,
        client: Client,
        job_id: int,
        graph: TaskGraph | None = None,
        resource_group: ResourceGroup | None = None,
    ) -> None:
        super().__init__(client, job_id, graph, resource_group)

    @property
    def state(self) -> JobState:
        return self.client._run(self._state_op())

    def start(self) -> JobState:
        return self.client._run(self._start_op())

    def cancel(self) -> JobState:
        return self.client._run(self._cancel_op())

    def wait(self, timeout: float | None = None) -> JobState:
        """Wait (server-side, no polling loop) until the job is terminal or `timeout` seconds
        pass; returns the state either way."""
        return JobState(self.client._run(self._wait_op(timeout, include_result=False)).state)

    def result(self, timeout: float | None = None) -> list[Any]:
        """Wait for the job and return its outputs; raise `JobFailed`, `JobCancelled` or
        `JobTimeout`."""
        if not _trace.ENABLED:
            return self.client._run(self._result_op(timeout))
        _trace.mark("client.result", self.id)
        try:
            return self.client._run(self._result_op(timeout))
        finally:
            _trace.mark("client.resulted", self.id)

    def outputs(self) -> list[Any]:
        """The job outputs (all outputs of the tasks without children, in task order)."""
        return self.client._run(self._outputs_op())

    def error(self) -> str | None:
        """The failure message of a FAILED job, None otherwise."""
        return self.client._run(self._error_op())

    def progress(self, explain: int = 0) -> Progress:
        """Task counts by state; with `explain`, why up to that many tasks are not running."""
        return self.client._run(self._progress_op(explain))
