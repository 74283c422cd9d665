"""The asyncio client: `AsyncClient`, `AsyncJob` and `as_completed`, on `grpc.aio`.

The same surface as `orbweaver.Client` and `orbweaver.Job`, as coroutines::

    async with ow.AsyncClient("host:50051", resource_group="team", password=pw) as client:
        jobs = [await client.submit(g, [x]) for x in range(100)]
        async for job in ow.as_completed(jobs):
            print(job.id, await job.result())

Requests, idempotency keys, retries (backoff, `timeout`, `connect_timeout`), leader following
over several storage addresses and errors are the sync client's: both run the operations of
`orbweaver._client_core`, this one awaiting each call. Cancelling a task that awaits a call
(`await job.result()`, `asyncio.wait_for`, `asyncio.timeout`) cancels the RPC in flight and
leaves the client usable.

A client belongs to the event loop of its first call (`grpc.aio` channels cannot move between
loops): create one per loop, e.g. inside the coroutine given to `asyncio.run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from orbweaver._client_core import (
    AsCompleted,
    Call,
    ClientCore,
    JobCore,
    JobInfo,
    Op,
    Progress,
    ResourceGroup,
    Waited,
)
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import DEFAULT_MAX_MESSAGE_BYTES, Security
from orbweaver._rpc_aio import call_with_retry_async, make_aio_channel
from orbweaver.graph import Durability
from orbweaver.states import JobState

if TYPE_CHECKING:
    from orbweaver.graph import TaskGraph

__all__ = ["AsyncClient", "AsyncJob", "as_completed"]

T = TypeVar("T")


class AsyncClient(ClientCore["AsyncJob"]):
    """`orbweaver.Client` for asyncio: a connection to a running Orbweaver cluster (its storage
    service) whose calls are coroutines. Use it as `async with AsyncClient(...) as client`, or
    `await client.close()` at the end."""

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
        """The arguments of `orbweaver.Client` (and the same environment variables). Nothing is
        connected until the first call, so a client may be made outside the event loop."""
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
        self._channel = make_aio_channel(
            self.address, self._tls, max_message_bytes=max_message_bytes
        )
        self._jobs = pb_grpc.JobOrchestrationServiceStub(self._channel)
        self._groups = pb_grpc.ResourceGroupManagementServiceStub(self._channel)

    def _new_job(
        self, job_id: int, graph: TaskGraph | None, resource_group: ResourceGroup | None
    ) -> AsyncJob:
        return AsyncJob(self, job_id, graph, resource_group)

    # -- plumbing -------------------------------------------------------------------------------

    async def _run(self, op: Op[T]) -> T:
        """Run an operation: await each call it yields, in turn."""
        try:
            call = next(op)
            while True:
                try:
                    reply = await self._perform(call)
                except BaseException as exc:  # the operation sees cancellation too
                    call = op.throw(exc)
                else:
                    call = op.send(reply)
        except StopIteration as done:
            return cast("T", done.value)

    async def _perform(self, call: Call) -> Any:
        fn = getattr(self._groups if call.service == "groups" else self._jobs, call.method)
        timeout = self._attempt_timeout(call)
        with self._outcome(call):
            return await call_with_retry_async(
                lambda: fn(call.request, timeout=timeout, metadata=call.metadata),
                deadline=self._retry_deadline(call),
                what=call.what,
            )

    async def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- credentials ----------------------------------------------------------------------------

    @property
    def default_resource_group(self) -> ResourceGroup | None:
        """The group submissions go to and the calls act within. A group given by name is
        looked up (its password checked) by the first call that needs it; until then this is
        None (`await client.resolve_default_resource_group()` looks it up now)."""
        return self._default_group

    @default_resource_group.setter
    def default_resource_group(self, group: ResourceGroup | None) -> None:
        self._set_default_group(group)

    async def resolve_default_resource_group(self) -> ResourceGroup | None:
        """The default group, looked up now if it was given by name."""
        return await self._run(self._default_group_op())

    # -- resource groups ------------------------------------------------------------------------

    async def add_resource_group(self, name: str, password: str | bytes) -> ResourceGroup:
        """As `Client.add_resource_group`."""
        return await self._run(self._add_resource_group_op(name, password))

    async def resource_groups(self) -> list[ResourceGroup]:
        """As `Client.resource_groups`."""
        return await self._run(self._resource_groups_op())

    async def resource_group(self, name: str, password: str | bytes = b"") -> ResourceGroup:
        """As `Client.resource_group`."""
        return await self._run(self._resource_group_op(name, password))

    # -- jobs -----------------------------------------------------------------------------------

    async def submit(
        self,
        graph: TaskGraph,
        inputs: Sequence[Any] = (),
        *,
        resource_group: ResourceGroup | None = None,
        start: bool = True,
        idempotency_key: str | None = None,
        durability: Durability | None = None,
    ) -> AsyncJob:
        """As `Client.submit`: durable in the storage when it returns; a retried call carries
        the same idempotency key."""
        return await self._run(
            self._submit_op(graph, inputs, resource_group, start, idempotency_key, durability)
        )

    async def submit_many(
        self,
        graph: TaskGraph,
        inputs: Iterable[Sequence[Any]],
        *,
        resource_group: ResourceGroup | None = None,
        start: bool = True,
        batch_size: int = 1000,
        durability: Durability | None = None,
    ) -> list[AsyncJob]:
        """As `Client.submit_many`."""
        return await self._run(
            self._submit_many_op(graph, inputs, resource_group, start, batch_size, durability)
        )

    async def gather(
        self, jobs: Sequence[AsyncJob], timeout: float | None = None
    ) -> list[list[Any]]:
        """As `Client.gather`: every job's outputs, in order, from a few server-side waits."""
        return await self._run(self._gather_op(jobs, timeout))

    def as_completed(
        self, jobs: Iterable[AsyncJob], timeout: float | None = None
    ) -> AsyncIterator[AsyncJob]:
        """`orbweaver.as_completed(jobs, timeout)`."""
        return as_completed(jobs, timeout)

    async def get_job(
        self,
        job_id: int,
        graph: TaskGraph | None = None,
        *,
        resource_group: ResourceGroup | None = None,
    ) -> AsyncJob:
        """As `Client.get_job`."""
        return await self._run(self._get_job_op(job_id, graph, resource_group))

    async def jobs(
        self,
        states: Sequence[JobState] = (),
        limit: int = 100,
        before: int | None = None,
        *,
        resource_group: ResourceGroup | None = None,
    ) -> list[JobInfo]:
        """As `Client.jobs`."""
        return await self._run(self._jobs_op(states, limit, before, resource_group))


class AsyncJob(JobCore):
    """`orbweaver.Job` for asyncio: a submitted job whose calls are coroutines (`state` is a
    method here: `await job.state()`)."""

    client: AsyncClient

    def __init__(
        self,
        client: AsyncClient,
        job_id: int,
        graph: TaskGraph | None = None,
        resource_group: ResourceGroup | None = None,
    ) -> None:
        super().__init__(client, job_id, graph, resource_group)

    async def state(self) -> JobState:
        return await self.client._run(self._state_op())

    async def start(self) -> JobState:
        return await self.client._run(self._start_op())

    async def cancel(self) -> JobState:
        return await self.client._run(self._cancel_op())

    async def wait(self, timeout: float | None = None) -> JobState:
        """As `Job.wait`: the state once terminal or after `timeout` seconds."""
        reply = await self.client._run(self._wait_op(timeout, include_result=False))
        return JobState(reply.state)

    async def result(self, timeout: float | None = None) -> list[Any]:
        """As `Job.result`: the outputs; `JobFailed`, `JobCancelled` or `JobTimeout`."""
        return await self.client._run(self._result_op(timeout))

    async def outputs(self) -> list[Any]:
        return await self.client._run(self._outputs_op())

    async def error(self) -> str | None:
        return await self.client._run(self._error_op())

    async def progress(self, explain: int = 0) -> Progress:
        return await self.client._run(self._progress_op(explain))


async def as_completed(
    jobs: Iterable[AsyncJob], timeout: float | None = None
) -> AsyncIterator[AsyncJob]:
    """Yield each of `jobs` as it reaches a terminal state (succeeded, failed or cancelled),
    first finished first; `await job.result()` then needs no further call::

        async for job in ow.as_completed(jobs, timeout=600):
            try:
                print(job.id, await job.result())
            except ow.JobFailed as exc:
                print(job.id, "failed:", exc.message)

    One server-side wait (`WaitJobs`) per client and set of credentials covers up to 10,000
    jobs and returns as soon as one of them ends; waits for jobs of several clients or
    credentials run concurrently. With `timeout` (seconds, for the whole iteration),
    `JobTimeout` is raised once it has passed with jobs unfinished: its `unfinished` maps each
    such job id to its last known state. A job given twice is yielded twice.

    Leaving the loop early cancels the waits in flight (at once with
    `contextlib.aclosing(ow.as_completed(...))`, else when the iterator is collected)."""
    waiting: AsCompleted[AsyncJob] = AsCompleted(timeout)
    for job in jobs:
        waiting.add(job.client, await job.client._run(job._metadata_op()), job)
    for job in waiting.ended_before():
        yield job
    in_flight: dict[asyncio.Task[list[AsyncJob]], Waited[AsyncJob]] = {}
    try:
        while True:
            busy = set(in_flight.values())
            for waited in waiting.waits():
                if waited not in busy:
                    client = cast("AsyncClient", waited.client)  # the jobs' own client
                    task = asyncio.create_task(client._run(waiting.wait_op(waited)))
                    in_flight[task] = waited
            if not in_flight:
                return
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                del in_flight[task]
                task.exception()  # retrieved: one raised below leaves none unreported
            for task in done:
                for job in task.result():
                    yield job
            waiting.check_time()
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
