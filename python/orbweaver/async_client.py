"""The asyncio client: `AsyncClient`, `AsyncJob` and `as_completed`, on `grpc.aio`.

The same surface as `orbweaver.Client` and `orbweaver.Job`, as coroutines::

    async with ow.AsyncClient("host:50051", resource_group="team", password=pw) as client:
        jobs = [await client.submit(g, [x]) for x in range(100)]
        async for job in ow.as_completed(jobs):
            print(job.id, await job.result())

Requests, idempotency keys, retries (backoff, `timeout`, `connect_timeout`), leader following
over several storage addresses and errors are the sync client's: both run the operations of
`orbweaver._client_core`, this one awaiting each call. The coroutines awaiting results on one
client share their server-side waits (`_SharedWaits`). Cancelling a task that awaits
(`task.cancel()`, `asyncio.wait_for`, `asyncio.timeout`) cancels its RPC in flight (a shared
wait: once nobody else needs it) and leaves the client usable.

A client belongs to the event loop of its first call (`grpc.aio` channels cannot move between
loops): create one per loop, e.g. inside the coroutine given to `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from orbweaver import errors
from orbweaver._client_core import (
    GATHER_CHUNK,
    TURN_MS,
    WAIT_CHUNK_MS,
    AsCompleted,
    Call,
    ClientCore,
    JobCore,
    JobInfo,
    Metadata,
    Op,
    Progress,
    ResourceGroup,
    Waited,
)
from orbweaver._proto import orbweaver_pb2 as pb
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
        self._waits: dict[Metadata, _SharedWaits] = {}

    def _new_job(
        self, job_id: int, graph: TaskGraph | None, resource_group: ResourceGroup | None
    ) -> AsyncJob:
        return AsyncJob(self, job_id, graph, resource_group)

    def _shared_waits(self, metadata: Metadata) -> _SharedWaits:
        waits = self._waits.get(metadata)
        if waits is None:
            waits = self._waits[metadata] = _SharedWaits(self, metadata)
        return waits

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
                answered_deadline=self.timeout,
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
        return JobState((await self._reply(timeout)).state)

    async def result(self, timeout: float | None = None) -> list[Any]:
        """As `Job.result`: the outputs; `JobFailed`, `JobCancelled` or `JobTimeout`."""
        reply = await self._reply(timeout)
        return await self.client._run(self._result_of_op(reply, timeout))

    async def _reply(self, timeout: float | None) -> pb.WaitJobReply:
        """The job's terminal state with its result, or after `timeout` its state then."""
        if self._ended is not None:
            return self._ended
        metadata = await self.client._run(self._metadata_op())
        reply = await self.client._shared_waits(metadata).wait(self.id, timeout)
        if reply is None:  # the state now (with the result, if it ended just now)
            reply = await self.client._run(self._wait_op(0, include_result=True))
        if JobState(reply.state).is_terminal:
            self._ended = reply
        return reply

    async def outputs(self) -> list[Any]:
        return await self.client._run(self._outputs_op())

    async def error(self) -> str | None:
        return await self.client._run(self._error_op())

    async def progress(self, explain: int = 0) -> Progress:
        return await self.client._run(self._progress_op(explain))


class _Lane:
    """One WaitJobs call of `_SharedWaits`, made again until none of its jobs is awaited."""

    __slots__ = ("ids", "task")

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.task: asyncio.Task[None] | None = None


class _SharedWaits:
    """The waits of every coroutine awaiting `job.result()` / `job.wait()` on one client under
    one set of credentials, shared: the jobs awaited are named in a few WaitJobs calls that
    return as soon as one of their jobs ends (`any_terminal`), instead of one WaitJob call per
    coroutine, each holding a storage thread while it waits.

    The jobs first awaited in one turn of the event loop start a call ("lane", up to 1,000
    jobs) at once, up to `MAX_LANES` lanes; a lane that returns settles the jobs that ended and
    goes on with those still awaited plus the jobs awaited since. With every lane in flight,
    one of them waits briefly (`TURN_MS`) so that jobs awaited meanwhile join within that
    time, even while the other lanes wait for long jobs. A coroutine that stops waiting
    (cancelled, or its timeout) withdraws; a lane left with no job anybody awaits is
    cancelled, with its call."""

    # Calls in flight for one client and credentials: a burst of coroutines each awaiting a
    # result would otherwise hold a storage thread each (the storage lets half of its threads
    # wait long; beyond that waits are cut short and made again).
    MAX_LANES = 8

    def __init__(self, client: AsyncClient, metadata: Metadata) -> None:
        self._client = client
        self._metadata = metadata
        self._waiters: dict[int, list[asyncio.Future[pb.WaitJobReply]]] = {}
        # When the waiters with a timeout give up (monotonic): no call waits longer for them.
        self._ends: dict[asyncio.Future[pb.WaitJobReply], float] = {}
        self._lane_of: dict[int, _Lane] = {}
        self._fresh: dict[int, None] = {}  # awaited, in no lane yet (in order)
        self._lanes: set[_Lane] = set()
        self._brief: _Lane | None = None  # the lane taking jobs in while all are in flight
        self._kick_pending = False

    async def wait(self, job_id: int, timeout: float | None) -> pb.WaitJobReply | None:
        """The job's terminal reply (with its result), or None after `timeout` seconds."""
        future: asyncio.Future[pb.WaitJobReply] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        if timeout is not None:
            self._ends[future] = time.monotonic() + timeout
        if job_id not in self._lane_of:
            self._fresh[job_id] = None
            self._kick_soon()
        try:
            done, _ = await asyncio.wait((future,), timeout=timeout)
            return future.result() if done else None
        finally:
            self._withdraw(job_id, future)

    def _kick_soon(self) -> None:
        # After this turn of the loop: the jobs awaited meanwhile share a lane.
        if not self._kick_pending:
            self._kick_pending = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_pending = False
        while self._fresh and len(self._lanes) < self.MAX_LANES:
            lane = _Lane(self._take_fresh(GATHER_CHUNK))
            self._lanes.add(lane)
            for job_id in lane.ids:
                self._lane_of[job_id] = lane
            lane.task = asyncio.create_task(self._run(lane))
            lane.task.add_done_callback(functools.partial(self._ended, lane))

    def _take_fresh(self, count: int) -> list[int]:
        ids = list(itertools.islice(self._fresh, count))
        for job_id in ids:
            del self._fresh[job_id]
        return ids

    def _withdraw(self, job_id: int, future: asyncio.Future[pb.WaitJobReply]) -> None:
        future.cancel()  # nothing else awaits it
        self._ends.pop(future, None)
        waiters = self._waiters.get(job_id)
        if waiters is None or future not in waiters:
            return  # settled
        waiters.remove(future)
        if waiters:
            return
        del self._waiters[job_id]
        self._fresh.pop(job_id, None)
        lane = self._lane_of.get(job_id)
        if lane is not None and not any(j in self._waiters for j in lane.ids):
            assert lane.task is not None
            lane.task.cancel()  # and its call

    def _settle(
        self, job_id: int, reply: pb.WaitJobReply | None, error: BaseException | None
    ) -> None:
        for future in self._waiters.pop(job_id, []):
            self._ends.pop(future, None)
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                assert reply is not None
                future.set_result(reply)

    async def _run(self, lane: _Lane) -> None:
        client = self._client
        while lane.ids:
            if self._brief is lane and len(self._lanes) < self.MAX_LANES:
                self._brief = None  # new lanes can be started again
            elif self._brief is None and len(self._lanes) >= self.MAX_LANES:
                self._brief = lane
            wait_ms = TURN_MS if self._brief is lane else WAIT_CHUNK_MS
            # No longer than its waiters wait: a call they all left would hold a storage
            # thread until it ran out.
            futures = [f for j in lane.ids for f in self._waiters.get(j, ())]
            if futures and all(f in self._ends for f in futures):
                last = max(self._ends[f] for f in futures)
                wait_ms = max(0, min(wait_ms, int((last - time.monotonic()) * 1000)))
            try:
                replies = await client._run(
                    client._wait_jobs_op(lane.ids, self._metadata, wait_ms, any_terminal=True)
                )
            except errors.JobNotFound:
                await self._settle_unknown(lane)
            except Exception as exc:  # for every job of the lane (Unavailable, a closed client)
                for job_id in lane.ids:
                    self._settle(job_id, None, exc)
            else:
                for job_id, reply in zip(lane.ids, replies, strict=True):
                    if JobState(reply.state).is_terminal:
                        self._settle(job_id, reply, None)
            # Those still awaited, and the jobs awaited since (up to a lane's worth).
            kept = []
            for job_id in lane.ids:
                if job_id in self._waiters:
                    kept.append(job_id)
                elif self._lane_of.get(job_id) is lane:
                    del self._lane_of[job_id]
            fresh = self._take_fresh(GATHER_CHUNK - len(kept))
            for job_id in fresh:
                self._lane_of[job_id] = lane
            lane.ids = kept + fresh

    def _ended(self, lane: _Lane, task: asyncio.Task[None]) -> None:
        """A lane finished, was cancelled (perhaps before it ever ran) or broke."""
        self._lanes.discard(lane)
        if self._brief is lane:
            self._brief = None
        error = None if task.cancelled() else task.exception()
        for job_id in lane.ids:
            if self._lane_of.get(job_id) is lane:
                del self._lane_of[job_id]
                if error is not None:
                    self._settle(job_id, None, error)
                elif job_id in self._waiters:  # awaited again while the lane was cancelled
                    self._fresh[job_id] = None
        lane.ids = []
        if self._fresh:
            self._kick_soon()

    async def _settle_unknown(self, lane: _Lane) -> None:
        """A wait for several jobs is refused whole when one is unknown (or not the
        credentials'): find which, one call each, and raise JobNotFound for those only."""
        client = self._client
        for job_id in lane.ids:
            try:
                await client._run(client._wait_jobs_op([job_id], self._metadata, 0))
            except errors.JobNotFound as unknown:
                self._settle(job_id, None, unknown)


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
    jobs and returns as soon as one of them ends; waits for more jobs, or for jobs of several
    clients or credentials, run concurrently. With `timeout` (seconds, for the whole iteration),
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
