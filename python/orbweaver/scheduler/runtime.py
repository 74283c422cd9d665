"""The scheduler process: configuration, startup/shutdown and the core loop.

`SchedulerRuntime.start()` binds the gRPC port, registers with storage (retrying with backoff
until storage answers), then starts the EM liveness tracker, the core loop and the server.
`stop()` undoes all of it; a startup that fails half-way stops whatever it already started.

The core loop is ONE thread that owns the `SchedulerCore`:

    poll storage (PollAll, budgets from buffer headroom) -> ingest (session bump: clear the core
    and drain the dispatch queue) -> reschedule what dead/departed EMs held -> decide -> enqueue

No storage error stops it: failures are logged at warning and retried with capped, jittered
exponential backoff. The thread-safe boundaries are the dispatch queue and the registry's
reschedule queue; nothing else is shared.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

import grpc

from orbweaver import _rpc, _taskid, _trace, errors
from orbweaver._log import setup_logging
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._service import (
    MetricsServer,
    bind_server,
    check_metrics,
    metrics_host_for,
    warn_if_exposed,
)
from orbweaver.scheduler.config import SchedulerConfig
from orbweaver.scheduler.core import (
    Assignment,
    InvalidSessionId,
    Lane,
    ReadyEntry,
    SchedulerCore,
)
from orbweaver.scheduler.dispatch import DispatchQueue, DispatchQueueClosed
from orbweaver.scheduler.metrics import SchedulerMetrics
from orbweaver.scheduler.registry import EmRegistry
from orbweaver.scheduler.servicer import SchedulerServicer, add_to_server

log = logging.getLogger("orbweaver.scheduler")

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})
# After this many consecutive UNAVAILABLE answers the storage channel is rebuilt, so a storage
# that comes back is reached at once instead of after gRPC's reconnect backoff (up to 120 s).
_RECONNECT_AFTER_FAILURES = 3
_LANE_NAMES = {Lane.TASK: "task", Lane.COMMIT: "commit", Lane.CLEANUP: "cleanup"}


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return host, int(port)
    except ValueError as exc:
        raise errors.InvalidArgument(f"not a host:port address: {address!r}") from exc


class _StorageClient:
    """The scheduler's view of storage: registration and inbound-queue polls."""

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._failures = 0
        self._closed = False
        self._connect()

    def _connect(self) -> None:
        self._channel = _rpc.make_channel(
            self._config.storage,
            self._config.security,
            max_message_bytes=self._config.max_message_bytes,
        )
        self._inbound = pb_grpc.InboundQueueServiceStub(self._channel)
        self._registration = pb_grpc.SchedulerRegistrationServiceStub(self._channel)

    def _observe(self, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNAVAILABLE:
                self._failures += 1
                if self._failures >= _RECONNECT_AFTER_FAILURES:
                    self._reconnect()
            raise
        self._failures = 0
        return result

    def _reconnect(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._failures = 0
            old = self._channel
            self._connect()
        old.close()

    def register(self, host: str, port: int) -> pb.SchedulerRegistration:
        request = pb.RegisterSchedulerRequest(host=host, port=port)
        timeout = self._config.storage_rpc_timeout
        reply: pb.SchedulerRegistration = self._observe(
            lambda: self._registration.RegisterScheduler(request, timeout=timeout)
        )
        return reply

    def poll_all(
        self, scheduler_id: int, max_tasks: int, max_commit: int, max_cleanup: int, wait_ms: int
    ) -> Any:
        request = pb.PollAllRequest(
            scheduler_id=scheduler_id,
            max_tasks=max_tasks,
            max_commit=max_commit,
            max_cleanup=max_cleanup,
            wait_ms=wait_ms,
        )
        timeout = self._config.storage_rpc_timeout + wait_ms / 1000.0
        return self._observe(lambda: self._inbound.PollAll(request, timeout=timeout))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channel = self._channel
        channel.close()


def _entries(items: Iterable[pb.ReadyTask], kind: str, lane: str) -> Iterator[ReadyEntry]:
    for item in items:
        which = item.task_id.WhichOneof("kind") if item.HasField("task_id") else None
        if which != kind:
            log.warning(
                "ignoring malformed inbound entry",
                extra={"lane": lane, "job_id": item.job_id, "task_kind": which},
            )
            continue
        try:
            task_id = _taskid.from_proto(item.task_id)
        except errors.InvalidArgument as exc:
            log.warning(
                "ignoring malformed inbound entry",
                extra={"lane": lane, "job_id": item.job_id, "error": str(exc)},
            )
            continue
        yield ReadyEntry(item.resource_group_id, item.job_id, task_id)


class SchedulerRuntime:
    """One scheduler: gRPC server + EM registry + core loop, wired to a storage service."""

    def __init__(
        self, config: SchedulerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self.metrics = SchedulerMetrics()
        self._core = SchedulerCore(config.core_config())
        self._queue: DispatchQueue[Assignment] = DispatchQueue(config.dispatch_queue_capacity)
        self._registry = EmRegistry(
            dead_cutoff_s=config.dead_em_cutoff,
            clock=clock,
            on_reschedule=self.metrics.assignments_rescheduled.inc,
        )
        self.metrics.dispatch_queue_depth.set_function(lambda: len(self._queue))
        self.metrics.known_execution_managers.set_function(lambda: len(self._registry))
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._teardown_lock = threading.Lock()
        self._failed = False
        self._torn_down = False
        self._started = False
        self._server: _rpc.Server | None = None
        self._storage: _StorageClient | None = None
        self._core_thread: threading.Thread | None = None
        self._metrics_server: MetricsServer | None = None
        self._scheduler_id: int | None = None
        self._port: int | None = None

    # -- properties -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port of the EM-facing server (known once `start()` bound it)."""
        if self._port is None:
            raise RuntimeError("the scheduler has not been started")
        return self._port

    @property
    def address(self) -> str:
        host, _ = _split_host_port(self.config.listen)
        if host in _WILDCARD_HOSTS:
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    @property
    def scheduler_id(self) -> int:
        if self._scheduler_id is None:
            raise RuntimeError("the scheduler is not registered with storage")
        return self._scheduler_id

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics_server is None else self._metrics_server.port

    @property
    def metrics_host(self) -> str:
        return self.config.metrics_host or metrics_host_for(self.config.listen)

    @property
    def registry(self) -> EmRegistry:
        return self._registry

    @property
    def dispatch_queue(self) -> DispatchQueue[Assignment]:
        return self._queue

    @property
    def session_id(self) -> int:
        return self._queue.session_id

    @property
    def exit_code(self) -> int:
        """0 unless the runtime failed on its own (it never stops by itself otherwise)."""
        return 1 if self._failed else 0

    @property
    def running(self) -> bool:
        return self._started and not self._stopped.is_set() and not self._stop.is_set()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind, register with storage (retrying until it answers), then serve. Blocks until
        registered; `stop()` or `request_stop()` from another thread aborts a pending
        registration. Raises (after stopping whatever it started) if startup fails."""
        with self._lock:
            if self._started:
                raise RuntimeError("the scheduler runtime can only be started once")
            self._started = True
        cfg = self.config
        log.info("starting scheduler", extra={"config": cfg.describe()})
        try:
            warn_if_exposed("scheduler", cfg.listen, cfg.security)
            if cfg.metrics_port is not None:  # before registering: fail before being counted
                check_metrics("scheduler", self.metrics_host, cfg.metrics_port)
            with self._lock:
                self._server = bind_server(
                    "scheduler",
                    cfg.listen,
                    lambda: _rpc.make_server(
                        cfg.listen,
                        cfg.security,
                        max_workers=cfg.grpc_workers,
                        max_message_bytes=cfg.max_message_bytes,
                    ),
                )
                self._port = self._server.port
                self._storage = _StorageClient(cfg)
                storage = self._storage
            host, port = self._advertised()
            registration = _rpc.call_with_retry(
                lambda: storage.register(host, port),
                deadline=cfg.registration_timeout,
                backoff=cfg.retry_backoff,
                stop=self._stop,
                what=f"registering with storage at {cfg.storage}",
            )
            with self._lock:
                if self._stop.is_set() or self._server is None:
                    raise errors.Unavailable("scheduler stopped during startup")
                self._serve(registration, host, port, self._server)
        except BaseException as exc:
            stopped = self._stop.is_set()
            if not stopped:
                log.error("scheduler startup failed; stopping what was started")
            self._teardown(grace=0.0)
            if stopped and isinstance(exc, Exception) and not isinstance(exc, errors.Unavailable):
                raise errors.Unavailable("scheduler stopped during startup") from exc
            raise
        log.info(
            "scheduler serving",
            extra={"port": self._port, "scheduler_id": self._scheduler_id},
        )

    def _serve(
        self, registration: pb.SchedulerRegistration, host: str, port: int, server: _rpc.Server
    ) -> None:
        # Caller holds self._lock.
        cfg = self.config
        self._scheduler_id = registration.scheduler_id
        log.info(
            "registered with storage",
            extra={
                "scheduler_id": registration.scheduler_id,
                "storage_session": registration.session_id,
                "advertised": f"{host}:{port}",
            },
        )
        servicer = SchedulerServicer(
            scheduler_id=registration.scheduler_id,
            queue=self._queue,
            registry=self._registry,
            max_wait_s=cfg.max_long_poll,
            max_batch=cfg.max_batch_items,
            metrics=self.metrics,
        )
        add_to_server(servicer, server.grpc_server, server.streams)
        if cfg.metrics_port is not None:
            self._metrics_server = MetricsServer(
                cfg.metrics_port, self.metrics.registry, self.metrics_host, component="scheduler"
            )
        self._registry.start_tracking(cfg.liveness_tracking_interval)
        self._core_thread = threading.Thread(
            target=self._run_core, name="orbweaver-scheduler-core", daemon=True
        )
        self._core_thread.start()
        server.start()

    def _advertised(self) -> tuple[str, int]:
        cfg = self.config
        listen_host, _ = _split_host_port(cfg.listen)
        host = cfg.advertised_host
        if host is None:
            host = socket.gethostname() if listen_host in _WILDCARD_HOSTS else listen_host
        port = cfg.advertised_port if cfg.advertised_port is not None else self.port
        return host, port

    def _storage_client(self) -> _StorageClient:
        storage = self._storage
        if storage is None:
            raise DispatchQueueClosed()  # torn down: the core loop is on its way out
        return storage

    def request_stop(self) -> None:
        """Ask the runtime to stop without waiting (safe from a signal handler); `stop()` does
        the actual shutdown."""
        self._stop.set()

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving and stop every thread this runtime started. Idempotent."""
        self._stop.set()
        with self._lock:
            if not self._started:
                self._stopped.set()
                return
        if self._torn_down:
            return
        log.info("stopping scheduler", extra={"grace_s": grace})
        self._teardown(grace)
        log.info("scheduler stopped")

    def _teardown(self, grace: float) -> None:
        with self._teardown_lock, self._lock:
            self._stop.set()
            self._queue.close()  # wakes every long poll and the core loop
            server, self._server = self._server, None
            thread, self._core_thread = self._core_thread, None
            metrics_server, self._metrics_server = self._metrics_server, None
            storage, self._storage = self._storage, None
        with self._teardown_lock:
            if server is not None:
                try:
                    server.stop(grace)
                except Exception:
                    log.exception("error while stopping the gRPC server")
            if storage is not None:
                storage.close()  # also cancels a poll the core loop may be waiting on
            if thread is not None:
                thread.join(self.config.stop_timeout)
                if thread.is_alive():
                    log.error(
                        "core loop did not stop in time",
                        extra={"timeout_s": self.config.stop_timeout},
                    )
            self._registry.stop_tracking()
            if metrics_server is not None:
                metrics_server.close()
            self._torn_down = True
            self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the runtime has stopped (or failed and needs `stop()`); returns False on
        timeout."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> SchedulerRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the core loop --------------------------------------------------------------------------

    def _run_core(self) -> None:
        delays: Iterator[float] | None = None
        while not self._stop.is_set():
            try:
                self._iteration()
                delays = None
                continue
            except DispatchQueueClosed:
                if self._stop.is_set():
                    break
                log.error("dispatch queue closed while the scheduler is running")
                self._failed = True
                break
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                self.metrics.storage_poll_errors.inc()
                code = exc.code() if hasattr(exc, "code") else None
                details = exc.details() if hasattr(exc, "details") else str(exc)
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    # Another scheduler registered since: it owns the queue now. Two schedulers
                    # re-registering in turn would take the queue from each other forever.
                    log.error("replaced by another scheduler; stopping: %s", details)
                    self._failed = True
                    break
                if delays is None:
                    delays = self.config.retry_backoff.delays()
                delay = next(delays)
                log.warning(
                    "storage poll failed; retrying",
                    extra={
                        "code": getattr(code, "name", str(code)),
                        "error": details,
                        "retry_in_s": round(delay, 3),
                    },
                )
            except Exception as exc:
                if self._stop.is_set():
                    break
                self.metrics.storage_poll_errors.inc()
                if delays is None:
                    delays = self.config.retry_backoff.delays()
                delay = next(delays)
                log.error(
                    "scheduler core loop iteration failed; retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}", "retry_in_s": round(delay, 3)},
                    exc_info=True,
                )
            self._stop.wait(delay)
        if self._failed:
            # Let whoever waits on the runtime notice and call stop().
            self._stop.set()
            self._stopped.set()
        log.info("core loop stopped")

    def _iteration(self) -> None:
        core, queue, cfg = self._core, self._queue, self.config
        if core.buffered and queue.free_slots() <= 0:
            # Back-pressure: nothing can be placed until an EM takes something.
            queue.wait_for_space(max(cfg.storage_poll_wait, 0.05))
            if self._stop.is_set():
                return
        budget = core.poll_budget()
        if budget:
            # Block on storage only when there is nothing to place meanwhile.
            wait_ms = 0 if core.buffered else round(cfg.storage_poll_wait * 1000)
            self.metrics.storage_polls.inc()
            reply = self._storage_client().poll_all(
                self.scheduler_id, budget.tasks, budget.commit, budget.cleanup, wait_ms
            )
            self._ingest(reply)
        lost = self._registry.drain_reschedule()
        if lost:
            accepted = core.reschedule(lost, now=self._clock())
            log.info(
                "rescheduled lost assignments",
                extra={"count": len(lost), "rebuffered": accepted},
            )
        self._dispatch()
        core.expire_finalizing(self._clock())
        self._update_gauges()

    def _ingest(self, reply: pb.PollAllReply) -> None:
        core = self._core
        if _trace.ENABLED:
            _trace.mark_many("scheduler.polled", (t.job_id for t in reply.tasks))
        session = reply.session_id
        try:
            result = core.ingest(
                session,
                _entries(reply.tasks, "index", "task"),
                _entries(reply.commit, "commit", "commit"),
                _entries(reply.cleanup, "cleanup", "cleanup"),
                now=self._clock(),
            )
        except InvalidSessionId as exc:
            log.error(
                "storage reported an older session; ignoring the poll result",
                extra={"session": exc.session_id, "current_session": exc.current},
            )
            return
        if result.session_bumped:
            dropped = self._queue.bump_session(session)
            self.metrics.session_bumps.inc()
            self.metrics.session_id.set(session)
            log.info(
                "storage session changed: placement state cleared",
                extra={"session": session, "dropped_assignments": dropped},
            )

    def _dispatch(self) -> None:
        core, queue = self._core, self._queue
        if not core.buffered:
            return
        free = queue.free_slots()
        if free <= 0:
            return
        decided = core.decide(free)
        if not decided:
            return
        # Only this thread enqueues or bumps, so the free slots counted above are still free.
        taken = queue.enqueue_many(decided, core.session_id)
        if taken < len(decided):
            core.reschedule(decided[taken:], now=self._clock())
            log.warning("dispatch queue unexpectedly full; assignments re-buffered")
        per_lane = Counter(a.lane for a in decided[:taken])
        for lane, count in per_lane.items():
            self.metrics.assignments_enqueued.labels(lane=_LANE_NAMES[lane]).inc(count)

    def _update_gauges(self) -> None:
        core, m = self._core, self.metrics
        m.buffered_tasks.labels(lane="task").set(core.buffered_tasks)
        m.buffered_tasks.labels(lane="commit").set(core.buffered_commits)
        m.buffered_tasks.labels(lane="cleanup").set(core.buffered_cleanups)
        m.active_jobs.set(core.active_jobs)
        m.pending_jobs.set(core.pending_jobs)
        m.session_id.set(core.session_id)


def main(config: SchedulerConfig, *, log_level: str | None = None) -> int:
    """Run a scheduler until SIGTERM/SIGINT. Returns the process exit code."""
    setup_logging("scheduler", log_level)
    runtime = SchedulerRuntime(config)
    requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal received; shutting down", extra={"signal": signal.Signals(signum).name})
        requested.set()
        runtime.request_stop()  # also aborts a registration still in progress

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            runtime.start()
        except errors.OrbweaverError as exc:
            if requested.is_set():
                return 0
            log.error("scheduler failed to start", extra={"error": str(exc)})
            return 1
        while not requested.is_set() and not runtime.wait(0.5):
            pass
        runtime.stop()
        return 0
    except Exception:
        log.exception("scheduler crashed")
        runtime.stop(grace=0.0)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
