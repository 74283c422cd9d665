"""The execution manager (EM): fetches assignments from the scheduler, registers them as task
instances with storage, runs them on a pool of executor processes and reports the outcomes.

Threads, each with one job:

* fetcher: `NextTasks` (batch, long poll) -> `RegisterTaskInstances` (batch) -> work queue.
  How many tasks the EM holds (being fetched or registered, queued or running) is sized by a
  `PrefetchSizer` from the observed task run time: about 50 ms of queued work per executor
  (at least one task, at most `prefetch`), so tiny tasks are fetched and run in big batches
  while slow ones are left to other EMs instead of piling up here.
  Acknowledgements ride on the next `NextTasks` and are kept until a call succeeds, so they are
  never lost; an assignment is acknowledged only once storage accepted it or definitively
  rejected it (responsibility moves from the scheduler to storage at registration).
  When storage refuses a registration as a whole (INVALID_ARGUMENT, INTERNAL, ...), the
  assignments are handed back: a `Shutdown` for this EM's own id, carrying the pending acks,
  makes the scheduler reschedule exactly them (the next poll registers the EM with it again);
  fetching then pauses (growing backoff) so that they can go elsewhere.
  An assignment from a newer storage session first waits for a heartbeat (session refresh).
* runners (one per executor process): take a batch of queued tasks (at most a fair share of
  the queue, so queued work spreads over all idle executors), run it on the pool.
* reporter: `ReportTaskOutcomes` (batch), retried with backoff until accepted or definitively
  stale — never silently dropped.
* liveness: heartbeats to storage and scheduler (both at once, so a hung storage does not
  starve the scheduler heartbeat); follows storage sessions; re-registers when storage declares
  this EM dead (and tells the scheduler to reschedule what the old id held).

`stop()` cancels the fetcher's in-flight long poll or registration (an assignment whose
registration was cut short stays un-acknowledged, so the scheduler reschedules it after the
`Shutdown`), lets registered tasks finish and report (up to `drain_timeout`), stops the
heartbeats, then sends `Shutdown` -- nothing reaches the scheduler or storage after it returns.
An executor pool that cannot run tasks any more (respawn failure) is fatal: the EM stops
fetching, `wait()` returns and `exit_code` is 1; the results of tasks that did run are still
reported, the tasks it could not run are not reported as failed (storage recovers them once
this EM is gone).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from orbweaver import _taskid, errors
from orbweaver._limits import MAX_VALUE_IN_MESSAGE, clip_message
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import (
    Backoff,
    call_with_retry,
    make_channel,
)
from orbweaver._service import MetricsServer
from orbweaver.worker.config import WorkerConfig
from orbweaver.worker.metrics import WorkerMetrics
from orbweaver.worker.pool import (
    ExecutorPool,
    ExecutorPoolError,
    ResultKind,
    TaskRequest,
    TaskResult,
)
from orbweaver.worker.prefetch import PREFETCH_INITIAL, PrefetchSizer

__all__ = ["PREFETCH_INITIAL", "ExecutionManager", "PrefetchSizer", "WorkerConfig"]

log = logging.getLogger("orbweaver.worker")

_CODE_NAMES = {code.value[0]: code.name.lower() for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class _Work:
    session_id: int
    request: TaskRequest
    label: str


@dataclass(slots=True)
class _Outcome:
    session_id: int
    job_id: int
    task_id: int
    instance_id: int
    value: bytes | str


_MAX_REPORT_BYTES = MAX_VALUE_IN_MESSAGE
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def _by_size(outcomes: list[_Outcome]) -> list[list[_Outcome]]:
    """Consecutive groups whose values fit one report message."""
    groups: list[list[_Outcome]] = []
    size = _MAX_REPORT_BYTES + 1
    for o in outcomes:
        value = len(o.value) + 64  # an error message is clipped to a few KiB
        if size + value > _MAX_REPORT_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(o)
        size += value
    return groups


def _default_ip() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outbound address
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


class ExecutionManager:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.metrics = WorkerMetrics()
        # _stop_fetching: no new work (set first); _stop: everything winds down (after the
        # drain); _finished: the EM stopped or wants to (what `wait()` reports).
        self._stop = threading.Event()
        self._stop_fetching = threading.Event()
        self._finished = threading.Event()
        self._metrics_server: MetricsServer | None = None
        self._started = False
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._fatal: str | None = None
        self._storage_channel = make_channel(config.storage, config.security)
        self._scheduler_channel = make_channel(config.scheduler, config.security)
        self._liveness = pb_grpc.ExecutionManagerLivenessServiceStub(self._storage_channel)
        self._instances = pb_grpc.TaskInstanceManagementServiceStub(self._storage_channel)
        self._scheduler = pb_grpc.SchedulerServiceStub(self._scheduler_channel)
        self._pool = ExecutorPool(
            config.tasks_dir,
            config.processes,
            output_rate=config.executor_output_rate,
            output_burst=config.executor_output_burst,
            env_allow=config.executor_env,
            cgroups=config.executor_cgroups,
        )
        self._work: queue.Queue[_Work | None] = queue.Queue()
        self._reports: queue.Queue[_Outcome | None] = queue.Queue()
        self._acks: deque[pb.TaskAssignmentRecord] = deque()
        self._acks_lock = threading.Lock()
        # Tasks held (reserved for a poll, being registered, queued or running), bounded by the
        # sizer's limit; runners feed the sizer with the run times they observe.
        self._sizer = PrefetchSizer(config.processes, config.prefetch)
        self._held = 0
        self._window = threading.Condition()
        self.metrics.prefetch_limit.set(self._sizer.limit)
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._idle_runners = 0
        self._idle_lock = threading.Lock()
        self._session = 0
        self._session_lock = threading.Lock()
        self._em_id = 0
        self._register_lock = threading.Lock()
        self._refresh = threading.Event()
        # Heartbeats started / finished (a refresh waits for one that started after it asked).
        self._beat_cond = threading.Condition()
        self._beats_started = 0
        self._beats_done = 0
        # In-flight calls that stop() cancels, with the event that decides when.
        self._calls: dict[Any, threading.Event] = {}
        self._calls_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- identity and session -------------------------------------------------------------------

    @property
    def em_id(self) -> int:
        return self._em_id

    @property
    def session_id(self) -> int:
        with self._session_lock:
            return self._session

    @property
    def exit_code(self) -> int:
        """0 after a requested stop, 1 after a fatal error (the executor pool broke)."""
        return 1 if self._fatal is not None else 0

    def _advance_session(self, session_id: int) -> None:
        with self._session_lock:
            if session_id > self._session:
                if self._session:
                    log.warning(
                        "storage restarted: new session",
                        extra={"old": self._session, "new": session_id},
                    )
                self._session = session_id

    def _register(self, stale_id: int | None = None, stop: threading.Event | None = None) -> None:
        with self._register_lock:
            if stale_id is not None and stale_id != self._em_id:
                return  # another thread already registered again
            self._register_locked(stop or self._stop)

    def _register_locked(self, stop: threading.Event) -> None:
        request = pb.RegisterExecutionManagerRequest(
            ip_address=self.config.ip_address or _default_ip(), processes=self.config.processes
        )
        try:
            reply = call_with_retry(
                lambda: self._call(self._liveness.RegisterExecutionManager, request, 10, stop),
                deadline=None,
                stop=stop,
                what="register with storage",
            )
        except grpc.FutureCancelledError:
            raise errors.Unavailable("register with storage: stopped while calling") from None
        old = self._em_id
        self._em_id = reply.execution_manager_id
        self._advance_session(reply.session_id)
        log.info(
            "registered with storage", extra={"em_id": self._em_id, "session_id": reply.session_id}
        )
        if old:
            # The scheduler still holds assignments under the old id: have it reschedule them.
            # Pending acks go along: those assignments reached storage, which owns them now
            # (it re-offers whatever the dead id held), so the scheduler must not re-send them.
            with self._acks_lock:
                acks = list(self._acks)
            try:
                self._scheduler.Shutdown(
                    pb.ShutdownRequest(execution_manager_id=old, prev_assignments=acks),
                    timeout=5,
                )
            except grpc.RpcError as exc:
                log.info("scheduler did not take the old id's shutdown: %s", exc.details())

    # -- cancellable calls ----------------------------------------------------------------------

    def _call(self, method: Any, request: Any, timeout: float, stop: threading.Event) -> Any:
        """A unary call that `_cancel_calls` cuts short once `stop` is set; raises
        `grpc.FutureCancelledError` then."""
        return self._result(self._begin(method, request, timeout, stop))

    def _begin(self, method: Any, request: Any, timeout: float, stop: threading.Event) -> Any:
        future = method.future(request, timeout=timeout)
        with self._calls_lock:
            self._calls[future] = stop
        if stop.is_set():
            future.cancel()
        return future

    def _result(self, future: Any) -> Any:
        try:
            return future.result()
        finally:
            with self._calls_lock:
                self._calls.pop(future, None)

    def _cancel_calls(self) -> None:
        with self._calls_lock:
            doomed = [f for f, stop in self._calls.items() if stop.is_set()]
        for future in doomed:
            future.cancel()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the executors, register with storage (retrying until it answers) and start
        the EM's threads. A stop requested meanwhile (`request_stop`, e.g. SIGTERM) makes it
        give up and return without error: nothing was fetched, so nothing needs draining."""
        try:
            self._pool.start()
            self._register()
            if self.config.metrics_port is not None:
                port = self.config.metrics_port
                self._metrics_server = MetricsServer(
                    port, self.metrics.registry, self.config.metrics_host
                )
            self._spawn("liveness", self._liveness_loop)
            self._spawn("reporter", self._report_loop)
            for i in range(self.config.processes):
                self._spawn(f"runner-{i}", self._run_loop)
            self._spawn("fetcher", self._fetch_loop)
        except BaseException as exc:
            asked_to_stop = self._stop_fetching.is_set()
            self.stop(drain=False)
            if asked_to_stop and isinstance(exc, errors.Unavailable):
                log.info("execution manager stopped while starting: %s", exc)
                return
            raise
        self._started = True
        log.info(
            "execution manager running",
            extra={
                "em_id": self._em_id,
                "processes": self.config.processes,
                "tasks_dir": str(self.config.tasks_dir),
            },
        )

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _thread(self, name: str) -> threading.Thread | None:
        return next((t for t in self._threads if t.name == name), None)

    def request_stop(self) -> None:
        """Called from a signal handler, before `stop()`: stop fetching at once. While `start()`
        is still waiting for storage, make it give up too; a running EM keeps its registered
        tasks so that `stop()` can drain them."""
        self._stop_fetching.set()
        if not self._started:
            self._stop.set()
        self._cancel_calls()

    def stop(self, drain: bool = True) -> None:
        """Stop fetching (cutting an in-flight poll or registration short), let registered
        tasks finish and report (up to `drain_timeout`), stop the heartbeats, tell the
        scheduler, and shut the executors down. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop_fetching.set()
        self._cancel_calls()
        with self._beat_cond:
            self._beat_cond.notify_all()  # a fetcher waiting for a refresh
        fetcher = self._thread("fetcher")
        if fetcher is not None:
            fetcher.join(self.config.poll_wait + 15)
        if drain:
            deadline = time.monotonic() + self.config.drain_timeout
            while time.monotonic() < deadline and not self._stop.is_set():
                with self._in_flight_lock:
                    if self._in_flight == 0:
                        break
                time.sleep(0.05)
        self._stop.set()
        self._refresh.set()  # wake the liveness thread
        self._cancel_calls()
        liveness = self._thread("liveness")
        if liveness is not None:
            liveness.join(10)
        # Only now, so that no heartbeat follows the Shutdown (it would re-register this EM).
        self._send_shutdown()
        for _ in range(self.config.processes):
            self._work.put(None)
        self._reports.put(None)
        # Tasks still running after the drain are interrupted, not reported: storage recovers
        # them once this EM stops heartbeating.
        self._pool.close()
        for thread in self._threads:
            if thread.name not in ("fetcher", "liveness"):
                thread.join(10)
        self._storage_channel.close()
        self._scheduler_channel.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        self._finished.set()
        log.info("execution manager stopped", extra={"em_id": self._em_id})

    def _send_shutdown(self) -> None:
        if not self._em_id:
            return
        with self._acks_lock:
            acks = list(self._acks)
            self._acks.clear()
        try:
            self._scheduler.Shutdown(
                pb.ShutdownRequest(execution_manager_id=self._em_id, prev_assignments=acks),
                timeout=5,
            )
        except grpc.RpcError as exc:
            log.info("scheduler shutdown call failed: %s", exc.details())

    def wait(self, timeout: float | None = None) -> bool:
        """True once the EM stopped, or wants to (fatal error); then call `stop()`."""
        return self._finished.wait(timeout)

    def _fail(self, reason: str) -> None:
        """A fatal error: stop fetching and let `wait()` return; `stop()` does the rest."""
        if self._fatal is None:
            self._fatal = reason
            log.error("execution manager cannot go on: %s", reason, extra={"em_id": self._em_id})
        self._stop_fetching.set()
        self._cancel_calls()
        self._finished.set()

    # -- liveness -------------------------------------------------------------------------------

    def _liveness_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while not self._stop.is_set():
            self._refresh.clear()  # a refresh asked for during the beat gets one more beat
            try:
                self._beat()
            except Exception:
                log.exception("heartbeat failed")
            self._refresh.wait(interval)

    def _beat(self) -> None:
        with self._beat_cond:
            self._beats_started += 1
            number = self._beats_started
        try:
            self._beat_once()
        finally:
            with self._beat_cond:
                self._beats_done = number
                self._beat_cond.notify_all()

    def _beat_once(self) -> None:
        em_id = self._em_id
        # Both heartbeats at once: a storage that hangs must not delay the scheduler's.
        scheduler_beat = self._begin(
            self._scheduler.Heartbeat,
            pb.SchedulerHeartbeatRequest(execution_manager_id=em_id),
            5,
            self._stop,
        )
        try:
            reply = self._call(
                self._liveness.UpdateExecutionManagerHeartbeat,
                pb.HeartbeatRequest(execution_manager_id=em_id),
                5,
                self._stop,
            )
            self._advance_session(reply.session_id)
        except grpc.FutureCancelledError:
            pass  # stopping
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                log.warning(
                    "storage no longer knows this execution manager (%s); registering again",
                    exc.details(),
                    extra={"em_id": em_id},
                )
                try:
                    self._register(stale_id=em_id)
                except errors.Unavailable:
                    if not self._stop.is_set():
                        raise
            else:
                log.info("storage heartbeat failed: %s", exc.details())
        try:
            self._result(scheduler_beat)
        except grpc.FutureCancelledError:
            pass  # stopping
        except grpc.RpcError as exc:
            log.debug("scheduler heartbeat failed: %s", exc.details())

    def _refresh_now(self) -> None:
        """Ask for an immediate storage heartbeat and wait (bounded) until one that started
        after the request is done, so the session and the EM id are current afterwards."""
        with self._beat_cond:
            wanted = self._beats_started + 1
        self._refresh.set()
        with self._beat_cond:
            self._beat_cond.wait_for(
                lambda: self._beats_done >= wanted or self._stop_fetching.is_set(), timeout=15
            )

    # -- fetching and registration ---------------------------------------------------------------

    def _fetch_loop(self) -> None:
        delays = Backoff(base=0.05, cap=2.0).delays()
        refusals = Backoff(base=0.5, cap=10.0).delays()
        wait_ms = int(self.config.poll_wait * 1000)
        owed = 0  # refused assignments not handed back to the scheduler yet
        while not self._stop_fetching.is_set():
            if owed:
                if not self._hand_back(owed):
                    self._stop_fetching.wait(next(delays))
                    continue  # stopping: the final Shutdown hands them back
                owed = 0
                pause = next(refusals)
                log.info("fetching paused for %.2f s after a refused registration", pause)
                if self._stop_fetching.wait(pause):
                    break
            # Reserve room first so held tasks never pile up beyond the prefetch limit.
            free = self._reserve(timeout=0.2)
            if not free:
                continue
            with self._acks_lock:
                acks = list(self._acks)
            request = pb.NextTasksRequest(
                execution_manager_id=self._em_id,
                acks=acks,
                max_items=free,
                wait_time_ms=wait_ms,
            )
            try:
                reply = self._call(
                    self._scheduler.NextTasks,
                    request,
                    self.config.poll_wait + 10,
                    self._stop_fetching,
                )
            except grpc.FutureCancelledError:
                self._release(free)
                break  # stopping; the acks stay queued for the Shutdown call
            except grpc.RpcError as exc:
                self._release(free)
                delay = next(delays)
                log.warning(
                    "scheduler unreachable (%s), retrying in %.2f s", exc.code().name, delay
                )
                self._stop_fetching.wait(delay)
                continue
            delays = Backoff(base=0.05, cap=2.0).delays()
            with self._acks_lock:
                for _ in acks:
                    self._acks.popleft()
            assignments = list(reply.assignments)
            self._release(free - len(assignments))
            if assignments:
                owed = self._register_assignments(assignments)
                if not owed:
                    refusals = Backoff(base=0.5, cap=10.0).delays()

    def _hand_back(self, count: int) -> bool:
        """Have the scheduler reschedule the `count` assignments storage refused. The protocol
        has no per-assignment release, but `Shutdown` for this EM's id reschedules whatever the
        scheduler holds un-acknowledged for it; with the pending acks riding along (and no poll
        in flight: only the fetcher polls, and it is here) that is exactly the refused ones.
        False when the scheduler did not take it (try again) or the EM is stopping."""
        with self._acks_lock:
            acks = list(self._acks)
        request = pb.ShutdownRequest(execution_manager_id=self._em_id, prev_assignments=acks)
        try:
            self._call(self._scheduler.Shutdown, request, 10, self._stop_fetching)
        except grpc.FutureCancelledError:
            return False
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.warning(
                    "scheduler did not take back %d refused assignments (%s); retrying",
                    count,
                    exc.code().name,
                )
                return False
            # It does not know this EM (it restarted, or declared it dead): it holds nothing
            # for it any more. The acks stay queued for the next poll.
            log.info("scheduler holds no assignments for this EM: %s", exc.details())
            return True
        with self._acks_lock:
            for _ in acks:
                self._acks.popleft()
        log.info("refused assignments handed back to the scheduler", extra={"count": count})
        return True

    def _reserve(self, timeout: float) -> int:
        """Reserve every free place under the prefetch limit (waiting up to `timeout` for one);
        returns how many (0: none, or stopping)."""
        with self._window:
            self._window.wait_for(
                lambda: self._held < self._sizer.limit or self._stop_fetching.is_set(), timeout
            )
            if self._stop_fetching.is_set():
                return 0
            free = max(0, self._sizer.limit - self._held)
            self._held += free
            return free

    def _release(self, n: int) -> None:
        """`n` held tasks (or reserved places) are no longer held."""
        if n <= 0:
            return
        with self._window:
            self._held -= n
            self._window.notify_all()

    def _observe(self, results: list[TaskResult]) -> None:
        with self._window:
            before = self._sizer.limit
            for result in results:
                self._sizer.observe(result.elapsed_s)
            limit = self._sizer.limit
            if limit > before:
                self._window.notify_all()
        if limit != before:
            self.metrics.prefetch_limit.set(limit)

    def _settle(self, n: int) -> None:
        """`n` registered tasks are done with: reported, or abandoned."""
        with self._in_flight_lock:
            self._in_flight -= n
            self.metrics.in_flight.set(self._in_flight)

    def _ack(self, assignment: pb.TaskAssignment) -> None:
        with self._acks_lock:
            self._acks.append(
                pb.TaskAssignmentRecord(
                    assignment_id=assignment.assignment_id, scheduler_id=assignment.scheduler_id
                )
            )

    def _register_assignments(self, assignments: list[pb.TaskAssignment]) -> int:
        """Register what a poll brought; returns how many assignments storage refused as a
        whole (to hand back to the scheduler)."""
        current = self.session_id
        by_session: dict[int, list[pb.TaskAssignment]] = {}
        newer = False
        for a in assignments:
            if a.session_id < current:
                # Polled before storage restarted; storage re-offers the task itself.
                self._ack(a)
                self._release(1)
                self.metrics.rejected.labels("stale_session").inc()
                continue
            newer = newer or a.session_id > current
            by_session.setdefault(a.session_id, []).append(a)
        if newer:
            # Storage restarted and this EM has not heard yet: catch up first (the session,
            # and a new EM id if storage declared this one dead meanwhile).
            self._refresh_now()
        refused = 0
        for session_id, group in by_session.items():
            if not self._register_group(session_id, group):
                refused += len(group)
        return refused

    def _register_group(self, session_id: int, group: list[pb.TaskAssignment]) -> bool:
        """Register one session's assignments; False when storage refused them as a whole
        (not acknowledged: they must go back to the scheduler)."""
        request = pb.RegisterTaskInstancesRequest(
            execution_manager_id=self._em_id,
            session_id=session_id,
            items=[
                pb.RegisterTaskInstancesRequest.Item(job_id=a.job_id, task_id=a.task_id)
                for a in group
            ],
        )
        try:
            reply = call_with_retry(
                lambda: self._call(
                    self._instances.RegisterTaskInstances, request, 30, self._stop_fetching
                ),
                deadline=None,
                stop=self._stop_fetching,
                what="register task instances",
            )
        except (grpc.FutureCancelledError, errors.Unavailable) as exc:
            # Stopping (or storage unreachable while stopping): do not acknowledge. The
            # scheduler still owns these assignments and reschedules them after our Shutdown.
            self._release(len(group))
            log.info(
                "registration cut short by shutdown: %s",
                exc or "cancelled",
                extra={"count": len(group)},
            )
            return True
        except errors.NotFound:
            # Stale session: storage restarted and re-offers these tasks itself.
            self._refresh.set()
            for a in group:
                self._ack(a)
            self._release(len(group))
            self.metrics.rejected.labels("stale_session").inc(len(group))
            return True
        except errors.FailedPrecondition as exc:
            # This EM was declared dead. Do not acknowledge: re-registering tells the scheduler
            # to reschedule everything the old id held, these assignments included.
            log.warning("storage refused registration: %s", exc)
            self._release(len(group))
            with contextlib.suppress(errors.Unavailable):  # stopping
                self._register(stale_id=request.execution_manager_id, stop=self._stop_fetching)
            return True
        except errors.OrbweaverError as exc:
            # Refused as a whole, and retrying will not help: not acknowledged, handed back.
            cause = exc.__cause__
            code = cause.code() if isinstance(cause, grpc.RpcError) else None
            reason = code.name.lower() if isinstance(code, grpc.StatusCode) else "error"
            log.error(
                "cannot register task instances (%s): %s; handing %d assignments back to the"
                " scheduler",
                reason,
                exc,
                len(group),
                extra={"jobs": sorted({a.job_id for a in group})},
            )
            self._release(len(group))
            self.metrics.rejected.labels(reason).inc(len(group))
            return False
        full: list[pb.TaskAssignment] = []
        for a, item in zip(group, reply.items, strict=True):
            if item.WhichOneof("result") == "error" and item.error.code == _UNAVAILABLE:
                full.append(a)  # the reply had no room for its inputs: register it again
                continue
            self._ack(a)
            if item.WhichOneof("result") == "error":
                self._release(1)
                self.metrics.rejected.labels(_CODE_NAMES.get(item.error.code, "unknown")).inc()
                log.debug("assignment rejected: %s", item.error.message, extra={"job_id": a.job_id})
                continue
            ctx = item.context
            task_id = _taskid.from_proto(ctx.task_id)
            request_ = TaskRequest(
                job_id=ctx.job_id,
                task_id=task_id,
                instance_id=ctx.task_instance_id,
                resource_group_id=ctx.resource_group_id,
                package=ctx.tdl_context.package,
                task_func=ctx.tdl_context.task_func,
                task_io=ctx.serialized_task_io,
                hard_timeout_ms=ctx.timeout_policy.hard_timeout_ms,
            )
            label = (
                f"{ctx.tdl_context.package}.{ctx.tdl_context.task_func}"
                f" (job {ctx.job_id}, {_taskid.describe(task_id)})"
            )
            with self._in_flight_lock:
                self._in_flight += 1
                self.metrics.in_flight.set(self._in_flight)
            self._work.put(_Work(session_id, request_, label))
        # Each call registers at least one of them, so this ends.
        return self._register_group(session_id, full) if full else True

    # -- running --------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Work] | None:
        """The next batch for this runner (None: stop). A runner takes only its fair share of
        the queue, so queued tasks spread over every idle executor instead of running one
        after the other on the first runner that woke up."""
        with self._idle_lock:
            self._idle_runners += 1
        first = self._work.get()
        with self._idle_lock:
            self._idle_runners -= 1
            others = self._idle_runners
        if first is None:
            return None
        share = -(-(self._work.qsize() + 1) // (others + 1))  # ceil
        with self._window:
            ahead = self._sizer.ahead  # about 50 ms of work
        limit = min(max(1, self.config.executor_batch), max(1, share), ahead)
        batch = [first]
        while len(batch) < limit:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._work.put(None)  # leave the stop marker for this runner's next turn
                break
            batch.append(item)
        return batch

    def _run_loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                results = self._pool.run_batch([w.request for w in batch])
            except ExecutorPoolError as exc:
                # The pool closed (this EM is stopping): not the tasks' fault.
                self._abandon(batch, str(exc))
                continue
            except Exception as exc:
                log.exception("executor pool failure")
                results = [
                    TaskResult(ResultKind.CRASH, None, f"executor pool failure: {exc}", 0.0)
                    for _ in batch
                ]
            self._observe(results)
            not_run = []
            for work, result in zip(batch, results, strict=True):
                if result.kind is ResultKind.NOT_RUN:
                    not_run.append((work, result))
                else:
                    self._finish(work, result)  # reported, even if the pool broke afterwards
            if not_run:
                self._abandon([w for w, _ in not_run], not_run[0][1].error or "not run")
            elif (failure := self._pool.respawn_failure) is not None:
                self._abandon([], failure)

    def _abandon(self, batch: list[_Work], reason: str) -> None:
        """The executor pool cannot run tasks: fatal, unless the EM is stopping anyway. The tasks
        of `batch` did not run; not their fault, so they are not reported as failed: storage
        recovers them once this EM stops and goes silent."""
        if not (self._stop.is_set() or self._pool.closed):
            self._fail(f"executor pool failure: {reason}")
        if not batch:
            return
        self.metrics.tasks.labels("not_run").inc(len(batch))
        log.warning(
            "tasks not run: the executor pool is unusable",
            extra={"tasks": [w.label for w in batch], "reason": reason},
        )
        self._release(len(batch))
        self._settle(len(batch))

    def _finish(self, work: _Work, result: TaskResult) -> None:
        self.metrics.tasks.labels(result.kind.name.lower()).inc()
        req = work.request
        value: bytes | str
        if result.kind == ResultKind.SUCCESS and len(result.outputs or b"") > _MAX_REPORT_BYTES:
            # It could never reach storage; its job fails with the reason instead of waiting.
            value = (
                f"{work.label}: output of {len(result.outputs or b'')} bytes exceeds the limit "
                f"of {_MAX_REPORT_BYTES} bytes a report can carry"
            )
        elif result.kind == ResultKind.SUCCESS:
            value = result.outputs or b""
        else:
            value = clip_message(f"{work.label}: {result.error or result.kind.name.lower()}")
        self._reports.put(
            _Outcome(work.session_id, req.job_id, req.task_id, req.instance_id, value)
        )
        self._release(1)

    # -- reporting ------------------------------------------------------------------------------

    def _report_loop(self) -> None:
        limit = self.config.report_batch
        stopping = False
        while not stopping:
            first = self._reports.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < limit:
                try:
                    item = self._reports.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            by_session: dict[int, list[_Outcome]] = {}
            for o in batch:
                by_session.setdefault(o.session_id, []).append(o)
            for session_id, outcomes in by_session.items():
                for group in _by_size(outcomes):
                    try:
                        self._send_reports(session_id, group)
                    except Exception:
                        log.exception("reporting outcomes failed", extra={"count": len(group)})
                        self.metrics.reports_dropped.labels("error").inc(len(group))
            self._settle(len(batch))

    def _send_reports(self, session_id: int, group: list[_Outcome]) -> None:
        if session_id < self.session_id:
            # Storage restarted while these ran; it has re-offered the tasks itself.
            self.metrics.reports_dropped.labels("stale_session").inc(len(group))
            return
        outcomes = []
        for o in group:
            outcome = pb.TaskOutcome(
                job_id=o.job_id, task_id=_taskid.to_proto(o.task_id), task_instance_id=o.instance_id
            )
            if isinstance(o.value, bytes):
                outcome.serialized_outputs = o.value
            else:
                outcome.error_message = o.value
            outcomes.append(outcome)
        request = pb.ReportTaskOutcomesRequest(
            execution_manager_id=self._em_id, session_id=session_id, outcomes=outcomes
        )
        try:
            reply = call_with_retry(
                lambda: self._call(self._instances.ReportTaskOutcomes, request, 60, self._stop),
                deadline=None,
                stop=self._stop,
                what="report outcomes",
            )
        except grpc.FutureCancelledError:
            self.metrics.reports_dropped.labels("shutdown").inc(len(group))
            return
        except errors.NotFound:
            self._refresh.set()
            self.metrics.reports_dropped.labels("stale_session").inc(len(group))
            return
        except errors.OrbweaverError as exc:
            reason = "shutdown" if self._stop.is_set() else "rejected"
            log.error("outcomes not reported: %s", exc, extra={"count": len(group)})
            self.metrics.reports_dropped.labels(reason).inc(len(group))
            return
        for o, status in zip(group, reply.statuses, strict=True):
            if status.code:
                self.metrics.reports_dropped.labels("stale").inc()
                log.debug(
                    "outcome not accepted: %s",
                    status.message,
                    extra={"job_id": o.job_id, "task": o.task_id},
                )
