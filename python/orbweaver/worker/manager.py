"""The execution manager (EM): fetches assignments from the scheduler, registers them as task
instances with storage, runs them on a pool of executor processes and reports the outcomes.

What to do with each assignment (acknowledge, register, run, report, hand back, drop) is
decided by `ManagerCore` (`core.py`, sans-IO; its docstring lists the behaviours). This module
owns the threads, timers and calls, each thread with one job:

* fetcher: `NextTasks` (batch, long poll) -> `RegisterTaskInstances` (batch), or the hand-back
  of refused registrations, after which fetching pauses (growing backoff) so that they can go
  elsewhere; a poll or hand-back that fails is retried with backoff.
* taker: while the EM is idle, `TakeReadyTasks` (long poll on storage): the next ready task,
  registered for this EM, without the scheduler's hops (`take_tasks`); it runs that task and
  reports it itself (every executor is free: a hand-off to a runner and to the reporter would
  only add to the job's latency).
* runners (one per executor process): run the core's batches on the pool.
* reporter: `ReportTaskOutcomes` (batch), retried with backoff until accepted or definitively
  stale.
* liveness: heartbeats to storage and scheduler (both at once, so a hung storage does not
  starve the scheduler heartbeat); follows storage sessions; registers again when storage
  declares this EM dead. A fetcher that needs the current session waits for a heartbeat.

`stop()` cancels the fetcher's in-flight long poll or registration, lets registered tasks finish
and report (up to `drain_timeout`), stops the heartbeats, then sends `Shutdown` -- nothing
reaches the scheduler or storage after it returns. An executor pool that cannot run tasks any
more is fatal: the EM stops fetching, `wait()` returns and `exit_code` is 1.

The peers are reached through `SchedulerPeer` and `StoragePeer` (`peers.py`): gRPC stubs by
default, anything with the same calls otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import grpc

from orbweaver import _taskid, _trace, errors
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import Backoff, call_with_retry, make_channel
from orbweaver._service import MetricsServer
from orbweaver.worker.config import WorkerConfig
from orbweaver.worker.core import (
    Action,
    Fatal,
    Fate,
    HandBack,
    HandBackResult,
    ManagerCore,
    Phase,
    Refresh,
    Refused,
    Register,
    RegisterAgain,
    RegistrationFailure,
    Report,
    ReportFailure,
    Run,
    SessionAdvanced,
    Settled,
    Shutdown,
    ShutdownOldId,
    Take,
)
from orbweaver.worker.metrics import WorkerMetrics
from orbweaver.worker.peers import (
    Calls,
    GrpcStorage,
    SchedulerPeer,
    StoragePeer,
    accepted,
    ack_records,
    assigned,
    registration_result,
    report_request,
)
from orbweaver.worker.pool import (
    ExecutorPool,
    ExecutorPoolError,
    ResultKind,
    TaskResult,
)
from orbweaver.worker.prefetch import PREFETCH_INITIAL, PrefetchSizer

__all__ = ["PREFETCH_INITIAL", "ExecutionManager", "PrefetchSizer", "WorkerConfig"]

log = logging.getLogger("orbweaver.worker")


def _default_ip() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outbound address
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


class ExecutionManager:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        scheduler: SchedulerPeer | None = None,
        storage: StoragePeer | None = None,
    ) -> None:
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
        self._channels: list[grpc.Channel] = []
        # Polls, takes and registrations go on channels of their own: made in the fetching
        # threads (see `Calls.direct`), they are cut short by closing them when fetching stops.
        self._fetch_channel: grpc.Channel | None = None
        self._poll_channel: grpc.Channel | None = None
        self._poller: SchedulerPeer
        if scheduler is None:
            self._channels.append(make_channel(config.scheduler, config.security))
            scheduler = pb_grpc.SchedulerServiceStub(self._channels[-1])
            self._poll_channel = make_channel(config.scheduler, config.security)
            self._channels.append(self._poll_channel)
            self._poller = pb_grpc.SchedulerServiceStub(self._poll_channel)
        else:
            self._poller = scheduler
        self._registrar: StoragePeer
        if storage is None:
            self._channels.append(make_channel(config.storage, config.security))
            storage = GrpcStorage(self._channels[-1])
            self._fetch_channel = make_channel(config.storage, config.security)
            self._channels.append(self._fetch_channel)
            self._registrar = GrpcStorage(self._fetch_channel)
        else:
            self._registrar = storage
        self._scheduler: SchedulerPeer = scheduler
        self._storage: StoragePeer = storage
        self._pool = ExecutorPool(
            config.tasks_dir,
            config.processes,
            output_rate=config.executor_output_rate,
            output_burst=config.executor_output_burst,
            env_allow=config.executor_env,
            cgroups=config.executor_cgroups,
        )
        # The core's lock; no I/O under it. Each kind of waiter has its own condition, woken only
        # when what it waits for may have become true (waking every thread on every change
        # costs the GIL time of a thundering herd at thousands of tasks per second).
        self._lock = threading.RLock()
        self._runnable = threading.Condition(self._lock)  # runners: a batch to take
        self._reportable = threading.Condition(self._lock)  # the reporter: outcomes to send
        self._changed = threading.Condition(self._lock)  # the fetcher and a draining stop
        self._takeable = threading.Condition(self._lock)  # the taker
        self._core = ManagerCore(
            config.processes,
            prefetch=config.prefetch,
            executor_batch=config.executor_batch,
            report_batch=config.report_batch,
            max_queued_bytes=config.queued_input_bytes,
            continue_tasks=config.continue_tasks,
            take_tasks=config.take_tasks,
        )
        self.metrics.prefetch_limit.set(self._core.limit)
        self._register_lock = threading.Lock()
        self._refresh = threading.Event()
        # Heartbeats started / finished (a refresh waits for one that started after it asked).
        self._beat_cond = threading.Condition()
        self._beats_started = 0
        self._beats_done = 0
        # In-flight calls that stop() cancels, with the event that decides when.
        self._calls = Calls()
        self._threads: list[threading.Thread] = []

    # -- identity and state ---------------------------------------------------------------------

    @property
    def em_id(self) -> int:
        with self._lock:
            return self._core.em_id

    @property
    def session_id(self) -> int:
        with self._lock:
            return self._core.session_id

    @property
    def exit_code(self) -> int:
        """0 after a requested stop, 1 after a fatal error (the executor pool broke)."""
        with self._lock:
            return 1 if self._core.fatal is not None else 0

    @contextlib.contextmanager
    def _state(self) -> Iterator[ManagerCore]:
        """The core, under the lock; on the way out waiters are woken and gauges follow."""
        with self._lock:
            core = self._core
            yield core
            if core.workers_stopped:
                self._runnable.notify_all()
                self._reportable.notify_all()
            else:
                if core.work_queued:
                    self._runnable.notify()  # the runner taking it wakes the next, if need be
                if core.reports_waiting:
                    self._reportable.notify()
            if core.can_poll or core.can_register or core.phase is not Phase.FETCHING:
                self._changed.notify_all()
            if core.can_take or core.phase is not Phase.FETCHING:
                self._takeable.notify()
            in_flight, limit = core.in_flight, core.limit
        self.metrics.in_flight.set(in_flight)
        self.metrics.prefetch_limit.set(limit)

    def _apply(self, actions: Iterable[Action], stop: threading.Event) -> None:
        """Carry out what the core decided."""
        for action in actions:
            match action:
                case Settled(fate=Fate.ABANDONED):
                    self.metrics.count(action)
                    log.warning(
                        "tasks not run: the executor pool is unusable",
                        extra={"tasks": list(action.labels), "reason": action.detail},
                    )
                case Settled() | Refused():
                    self.metrics.count(action)
                    if isinstance(action, Settled) and action.detail:
                        log.debug("%s: %s", action.fate.value, action.detail)
                case Refresh(wait=True):
                    self._refresh_now()
                case Refresh():
                    self._refresh.set()
                case RegisterAgain(stale_id=stale_id):
                    with contextlib.suppress(errors.Unavailable):  # stopping
                        self._register(stale_id=stale_id, stop=stop)
                case ShutdownOldId() | Shutdown():
                    self._shutdown(action)
                case SessionAdvanced(old=old, new=new):
                    log.warning("storage restarted: new session", extra={"old": old, "new": new})
                case Fatal(reason=reason):
                    self._fail(reason)

    def _shutdown(self, action: ShutdownOldId | Shutdown) -> None:
        try:
            self._scheduler.Shutdown(
                pb.ShutdownRequest(
                    execution_manager_id=action.em_id, prev_assignments=ack_records(action.acks)
                ),
                timeout=5,
            )
        except grpc.RpcError as exc:
            if isinstance(action, ShutdownOldId):
                log.info("scheduler did not take the old id's shutdown: %s", exc.details())
            else:
                log.info("scheduler shutdown call failed: %s", exc.details())

    def _register(self, stale_id: int | None = None, stop: threading.Event | None = None) -> None:
        """Register with storage (again, unless another thread already replaced `stale_id`)."""
        stop = stop or self._stop
        with self._register_lock:
            if stale_id is not None and stale_id != self.em_id:
                return
            request = pb.RegisterExecutionManagerRequest(
                ip_address=self.config.ip_address or _default_ip(),
                processes=self.config.processes,
            )
            try:
                reply = call_with_retry(
                    lambda: self._calls.call(
                        self._storage.RegisterExecutionManager, request, 10, stop
                    ),
                    deadline=None,
                    stop=stop,
                    what="register with storage",
                )
            except grpc.FutureCancelledError:
                raise errors.Unavailable("register with storage: stopped while calling") from None
            with self._state() as core:
                actions = core.registered(reply.execution_manager_id, reply.session_id)
            log.info(
                "registered with storage",
                extra={"em_id": reply.execution_manager_id, "session_id": reply.session_id},
            )
            self._apply(actions, stop)

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
            if self.config.take_tasks:
                self._spawn("taker", self._take_loop)
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
                "em_id": self.em_id,
                "processes": self.config.processes,
                "tasks_dir": str(self.config.tasks_dir),
            },
        )

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _join(self, names: Callable[[str], bool], timeout: float) -> None:
        for thread in self._threads:
            if names(thread.name):
                thread.join(timeout)

    def request_stop(self) -> None:
        """Called from a signal handler, before `stop()`: stop fetching at once. While `start()`
        is still waiting for storage, make it give up too; a running EM keeps its registered
        tasks so that `stop()` can drain them."""
        self._halt_fetching()
        if not self._started:
            self._stop.set()
            self._calls.cancel()

    def _halt_fetching(self) -> None:
        # Also runs in a signal handler: only reentrant locks here (no metrics).
        self._stop_fetching.set()
        with self._lock:
            self._core.stop_fetching()
            for condition in (self._runnable, self._reportable, self._changed, self._takeable):
                condition.notify_all()
        self._calls.cancel()
        for channel in (self._fetch_channel, self._poll_channel):
            if channel is not None:
                # Cuts a poll, take or registration in flight short. In a thread: the channel's
                # lock is not reentrant, and this may run in a signal handler.
                threading.Thread(target=channel.close, daemon=True).start()

    def stop(self, drain: bool = True) -> None:
        """Stop fetching (cutting an in-flight poll or registration short), let registered
        tasks finish and report (up to `drain_timeout`), stop the heartbeats, tell the
        scheduler, and shut the executors down. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._halt_fetching()
        with self._beat_cond:
            self._beat_cond.notify_all()  # a fetcher waiting for a refresh
        # (The taker may be running a task it took: it is joined with the runners, below.)
        self._join(lambda name: name == "fetcher", self.config.poll_wait + 15)
        if drain:
            with self._state() as core:
                core.drain(time.monotonic(), self.config.drain_timeout)
                self._changed.wait_for(
                    lambda: core.drained(time.monotonic()) or self._stop.is_set(),
                    self.config.drain_timeout,
                )
        with self._state() as core:
            core.wind_down()  # before _stop: a report cut short now counts as "shutdown"
        self._stop.set()
        self._refresh.set()  # wake the liveness thread
        self._calls.cancel()
        self._join(lambda name: name == "liveness", 10)
        # Only now, so that no heartbeat follows the Shutdown (it would re-register this EM).
        with self._state() as core:
            actions = core.final_shutdown()
            core.stop_workers()
        self._apply(actions, self._stop)
        # Tasks still running after the drain are interrupted, not reported: storage recovers
        # them once this EM stops heartbeating.
        self._pool.close()
        self._join(lambda name: name not in ("fetcher", "liveness"), 10)
        for channel in self._channels:
            channel.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        self._finished.set()
        log.info("execution manager stopped", extra={"em_id": self.em_id})

    def wait(self, timeout: float | None = None) -> bool:
        """True once the EM stopped, or wants to (fatal error); then call `stop()`."""
        return self._finished.wait(timeout)

    def _fail(self, reason: str) -> None:
        """A fatal error: stop fetching and let `wait()` return; `stop()` does the rest."""
        log.error("execution manager cannot go on: %s", reason, extra={"em_id": self.em_id})
        self._halt_fetching()
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
        em_id = self.em_id
        # Both heartbeats at once: a storage that hangs must not delay the scheduler's.
        scheduler_beat = self._calls.begin(
            self._scheduler.Heartbeat,
            pb.SchedulerHeartbeatRequest(execution_manager_id=em_id),
            5,
            self._stop,
        )
        actions: list[Action] = []
        with self._state() as core:
            session, held = core.held_instances()
        try:
            reply = self._calls.call(
                self._storage.UpdateExecutionManagerHeartbeat,
                pb.HeartbeatRequest(
                    execution_manager_id=em_id,
                    session_id=session,
                    held_instance_ids=held,
                    processes=self.config.processes,
                ),
                5,
                self._stop,
            )
            with self._state() as core:
                actions = core.session_seen(reply.session_id)
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
                with self._state() as core:
                    actions = core.storage_forgot(em_id)
            else:
                log.info("storage heartbeat failed: %s", exc.details())
        self._apply(actions, self._stop)
        try:
            self._calls.result(scheduler_beat)
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
        while not self._stop_fetching.is_set():
            with self._state() as core:
                hand_back = core.next_hand_back()
            if hand_back is not None:
                if not self._hand_back(hand_back):
                    self._stop_fetching.wait(next(delays))
                    continue  # stopping: the final Shutdown hands them back
                pause = next(refusals)
                log.info("fetching paused for %.2f s after a refused registration", pause)
                if self._stop_fetching.wait(pause):
                    break
            # Only with room under the prefetch limit, so held tasks never pile up beyond it.
            with self._state() as core:
                self._changed.wait_for(
                    lambda: core.can_poll or core.can_register or self._stop_fetching.is_set(),
                    timeout=0.2,
                )
                poll = core.start_poll()
            if poll is None:
                # Registrations held back while queued tasks held enough input may go on now.
                self._register_fetched()
                continue
            request = pb.NextTasksRequest(
                execution_manager_id=poll.em_id,
                acks=ack_records(poll.acks),
                max_items=poll.max_items,
                wait_time_ms=wait_ms,
            )
            # Made in this thread, on a call stream where the scheduler serves them (see
            # `_take`), on the poll channel that stopping closes.
            make = self._calls.direct if self._poll_channel is not None else self._calls.call
            try:
                reply = make(
                    self._poller.NextTasks,
                    request,
                    self.config.poll_wait + 10,
                    self._stop_fetching,
                )
            except grpc.FutureCancelledError:
                with self._state() as core:
                    core.poll_failed()
                break  # stopping; the acks stay pending for the Shutdown call
            except grpc.RpcError as exc:
                with self._state() as core:
                    core.poll_failed()
                delay = next(delays)
                log.warning(
                    "scheduler unreachable (%s), retrying in %.2f s", exc.code().name, delay
                )
                self._stop_fetching.wait(delay)
                continue
            delays = Backoff(base=0.05, cap=2.0).delays()
            if _trace.ENABLED:
                _trace.mark_many("em.fetched", (a.job_id for a in reply.assignments))
            with self._state() as core:
                actions = core.fetched([assigned(a) for a in reply.assignments])
            self._apply(actions, self._stop_fetching)
            refused = any(isinstance(a, Refused) for a in actions)
            refused = self._register_fetched() or refused
            if reply.assignments and not refused:
                refusals = Backoff(base=0.5, cap=10.0).delays()

    def _take_loop(self) -> None:
        """While this EM is idle, ask storage for the next ready task directly (see
        `ManagerCore.can_take`): the first task of a job that finds nothing else being ordered
        skips the scheduler's two hops and the registration's round trip."""
        delays = Backoff(base=0.05, cap=2.0).delays()
        wait_ms = int(self.config.poll_wait * 1000)
        while not self._stop_fetching.is_set():
            with self._state() as core:
                self._takeable.wait_for(
                    lambda: core.can_take or self._stop_fetching.is_set(), timeout=1.0
                )
                take = core.start_take()
            if take is None:
                continue
            if not self._take(take, wait_ms):
                self._stop_fetching.wait(next(delays))
            else:
                delays = Backoff(base=0.05, cap=2.0).delays()

    def _take(self, take: Take, wait_ms: int) -> bool:
        """One `TakeReadyTasks` long poll; False if it failed (try again later)."""
        request = pb.TakeReadyTasksRequest(
            execution_manager_id=take.em_id,
            session_id=take.session_id,
            max_items=take.max_items,
            wait_ms=wait_ms,
        )
        # On the fetch channel, made in this thread (on a call stream: no thread woken for the
        # reply), and cut short by closing that channel when fetching stops (`Calls.direct`).
        make = self._calls.direct if self._fetch_channel is not None else self._calls.call
        try:
            reply = make(
                self._registrar.TakeReadyTasks,
                request,
                self.config.poll_wait + 10,
                self._stop_fetching,
            )
        except grpc.FutureCancelledError:
            with self._state() as core:
                core.take_failed(take)
            return True  # stopping
        except grpc.RpcError as exc:
            with self._state() as core:
                core.take_failed(take)
            # NOT_FOUND (a new session) and FAILED_PRECONDITION (declared dead) are the
            # heartbeat's to sort out; meanwhile the scheduler's path goes on.
            log.debug("taking ready tasks from storage failed: %s", exc.code().name)
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._refresh.set()
            return False
        tasks = [accepted(ctx) for ctx in reply.tasks]
        if _trace.ENABLED and tasks:
            _trace.mark_many("em.registered", (t.request.job_id for t in tasks))
        with self._state() as core:
            actions = core.took(take, tasks)
            run = core.claim_taken()  # in the same critical section: no runner is woken
        self._apply(actions, self._stop_fetching)
        if run is not None:
            self._run(run, then_report=True)
        return True

    def _register_fetched(self) -> bool:
        """Register what the poll brought, group by group; True if storage refused any."""
        refused = False
        while True:
            with self._state() as core:
                register = core.next_registration()
            if register is None:
                return refused
            actions = self._register_group(register)
            refused = refused or any(isinstance(a, Refused) for a in actions)
            self._apply(actions, self._stop_fetching)

    def _register_group(self, register: Register) -> list[Action]:
        request = pb.RegisterTaskInstancesRequest(
            execution_manager_id=register.em_id,
            session_id=register.session_id,
            items=[
                pb.RegisterTaskInstancesRequest.Item(
                    job_id=i.job_id, task_id=_taskid.to_proto(i.task_id)
                )
                for i in register.items
            ],
        )
        reason = ""
        try:
            reply = call_with_retry(
                lambda: self._calls.direct(
                    self._registrar.RegisterTaskInstances, request, 30, self._stop_fetching
                ),
                deadline=None,
                stop=self._stop_fetching,
                what="register task instances",
            )
        except (grpc.FutureCancelledError, errors.Unavailable) as exc:
            # Stopping (or storage unreachable while stopping): not acknowledged.
            log.info(
                "registration cut short by shutdown: %s",
                exc or "cancelled",
                extra={"count": len(register.items)},
            )
            failure = RegistrationFailure.STOPPING
        except errors.NotFound:
            failure = RegistrationFailure.STALE_SESSION
        except errors.FailedPrecondition as exc:
            log.warning("storage refused registration: %s", exc)
            failure = RegistrationFailure.DECLARED_DEAD
        except errors.OrbweaverError as exc:
            cause = exc.__cause__
            code = cause.code() if isinstance(cause, grpc.RpcError) else None
            reason = code.name.lower() if isinstance(code, grpc.StatusCode) else "error"
            log.error(
                "cannot register task instances (%s): %s; handing %d assignments back to the"
                " scheduler",
                reason,
                exc,
                len(register.items),
                extra={"jobs": sorted({i.job_id for i in register.items})},
            )
            failure = RegistrationFailure.REFUSED
        else:
            results = [registration_result(item) for item in reply.items]
            if _trace.ENABLED:
                _trace.mark_many("em.registered", (i.job_id for i in register.items))
            with self._state() as core:
                return core.registration_done(register, results)
        with self._state() as core:
            return core.registration_failed(register, failure, reason)

    def _hand_back(self, hand_back: HandBack) -> bool:
        """Have the scheduler reschedule the assignments storage refused: a `Shutdown` for this
        EM's own id reschedules whatever the scheduler holds un-acknowledged for it, which the
        core made sure is exactly them. False when the scheduler did not take it (try again) or
        the EM is stopping."""
        request = pb.ShutdownRequest(
            execution_manager_id=hand_back.em_id, prev_assignments=ack_records(hand_back.acks)
        )
        count = len(hand_back.keys)
        try:
            self._calls.call(self._scheduler.Shutdown, request, 10, self._stop_fetching)
            result = HandBackResult.TAKEN
            log.info("refused assignments handed back to the scheduler", extra={"count": count})
        except grpc.FutureCancelledError:
            result = HandBackResult.FAILED
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                # It does not know this EM (it restarted, or declared it dead): it holds nothing
                # for it any more.
                log.info("scheduler holds no assignments for this EM: %s", exc.details())
                result = HandBackResult.UNKNOWN_EM
            else:
                log.warning(
                    "scheduler did not take back %d refused assignments (%s); retrying",
                    count,
                    exc.code().name,
                )
                result = HandBackResult.FAILED
        with self._state() as core:
            actions = core.hand_back_done(hand_back, result)
        self._apply(actions, self._stop_fetching)
        return result is not HandBackResult.FAILED

    # -- running --------------------------------------------------------------------------------

    def _run_loop(self) -> None:
        while True:
            with self._state() as core:
                core.runner_idle()
                self._runnable.wait_for(lambda: core.work_queued or core.workers_stopped)
                run = core.take_batch()
            if run is None:
                return
            self._run(run)

    def _run(self, run: Run, *, then_report: bool = False) -> None:
        """Run a batch on the pool and record its outcomes; `then_report`: send the next report
        from this thread too (the taker's path, see `ManagerCore.claim_taken`)."""
        if _trace.ENABLED:
            _trace.mark_many("em.run", (w.request.job_id for w in run.work))
        try:
            results = self._pool.run_batch([w.request for w in run.work])
        except ExecutorPoolError as exc:
            # The pool closed (this EM is stopping) or broke: not the tasks' fault.
            with self._state() as core:
                actions = core.abandoned(run, str(exc), pool_closed=self._pool.closed)
            self._apply(actions, self._stop)
            return
        except Exception as exc:
            log.exception("executor pool failure")
            results = [
                TaskResult(ResultKind.CRASH, None, f"executor pool failure: {exc}", 0.0)
                for _ in run.work
            ]
        for result in results:
            if result.kind is not ResultKind.NOT_RUN:
                self.metrics.tasks.labels(result.kind.name.lower()).inc()
        failure = self._pool.respawn_failure
        if _trace.ENABLED:
            _trace.mark_many("em.ran", (w.request.job_id for w in run.work))
        report = None
        with self._state() as core:
            actions = core.ran(run, results, pool_failure=failure, pool_closed=self._pool.closed)
            if then_report:
                report = core.next_report()  # in the same critical section: the reporter sleeps
        self._apply(actions, self._stop)
        if report is not None:
            self._deliver(report)

    # -- reporting ------------------------------------------------------------------------------

    def _report_loop(self) -> None:
        while True:
            with self._state() as core:
                self._reportable.wait_for(lambda: core.reports_waiting or core.workers_stopped)
                report = core.next_report()
            if report is None:
                return
            self._deliver(report)

    def _deliver(self, report: Report | Settled) -> None:
        if isinstance(report, Settled):
            self._apply([report], self._stop)  # a session that is over
        else:
            self._apply(self._send_report(report), self._stop)

    def _send_report(self, report: Report) -> list[Action]:
        request = report_request(report)
        if _trace.ENABLED:
            _trace.mark_many("em.report", (o.job_id for o in report.outcomes))
        try:
            reply = call_with_retry(
                lambda: self._calls.direct(
                    self._storage.ReportTaskOutcomes, request, 60, self._stop
                ),
                deadline=None,
                stop=self._stop,
                what="report outcomes",
            )
        except grpc.FutureCancelledError:
            failure = ReportFailure.CANCELLED
        except errors.NotFound:
            failure = ReportFailure.STALE_SESSION
        except errors.OrbweaverError as exc:
            log.error("outcomes not reported: %s", exc, extra={"count": len(report.outcomes)})
            failure = ReportFailure.REFUSED
        except Exception:
            log.exception("reporting outcomes failed", extra={"count": len(report.outcomes)})
            failure = ReportFailure.ERROR
        else:
            statuses = [(s.code, s.message) for s in reply.statuses]
            if len(statuses) == len(report.outcomes):
                continued = [accepted(ctx) for ctx in reply.continued]
                if _trace.ENABLED and continued:
                    _trace.mark_many("em.registered", (c.request.job_id for c in continued))
                with self._state() as core:
                    return core.report_done(report, statuses, continued)
            log.error(
                "storage answered a report of %d outcomes with %d statuses",
                len(report.outcomes),
                len(statuses),
            )
            failure = ReportFailure.ERROR
        with self._state() as core:
            return core.report_failed(report, failure)
