"""The storage service process: start-up in a safe order, and a clean stop.

1. connect to the database (creates the schema, opens a new session);
2. create the job cache and recover every unfinished job into it (paged, nothing enqueued);
3. start the background loops;
4. start serving gRPC (health: SERVING only from here on);
5. re-offer the ready work of the recovered jobs.

A failure at any step stops everything already started before the error propagates, so nothing
keeps running detached. Before step 1, the runtime claims an SQLite
database file for itself (`StorageLock`: one database file has one storage) and checks that its
ports are free, so a misconfigured second storage fails at once, touching nothing.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from orbweaver import _core, errors
from orbweaver._rpc import Backoff, Server, make_server
from orbweaver._service import (
    MetricsServer,
    StartupError,
    bind_server,
    check_listen,
    check_metrics,
    is_loopback,
    join_host_port,
    metrics_host_for,
    split_host_port,
    warn_if_exposed,
)
from orbweaver.storage import servicer
from orbweaver.storage.auth import Authenticator
from orbweaver.storage.config import StorageConfig
from orbweaver.storage.db import Database, open_database
from orbweaver.storage.db import errors as db_errors
from orbweaver.storage.db.sqlite import DatabaseInUse, StorageLock
from orbweaver.storage.db.url import SqliteConfig, parse_url
from orbweaver.storage.gc import BackgroundLoops
from orbweaver.storage.metrics import StorageMetrics
from orbweaver.storage.recovery import RecoveryReport, recover_cache
from orbweaver.storage.service import StorageService

log = logging.getLogger("orbweaver.storage")

EXIT_FATAL = 70  # EX_SOFTWARE: the cache had to be abandoned; a restart recovers from the DB


@dataclass
class StorageRuntime:
    config: StorageConfig
    db: Database | None = None
    cache: _core.JobCache | None = None
    service: StorageService | None = None
    loops: BackgroundLoops | None = None
    server: Server | None = None
    recovery: RecoveryReport | None = None
    metrics: StorageMetrics = field(default_factory=StorageMetrics)
    _stopped: threading.Event = field(default_factory=threading.Event)
    _stop_requested: threading.Event = field(default_factory=threading.Event)
    _fatal: str | None = None
    _metrics_server: MetricsServer | None = None
    _lock: StorageLock | None = None

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("storage runtime is not started")
        return self.server.port

    @property
    def metrics_host(self) -> str:
        """Where the metrics endpoint listens: `metrics_host`, else the host of `listen`."""
        return self.config.metrics_host or metrics_host_for(self.config.listen)

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics_server is None else self._metrics_server.port

    @property
    def fatal_error(self) -> str | None:
        return self._fatal

    def start(self) -> None:
        """Start; a database that cannot be reached yet (or is lost during recovery) is waited
        for, with backoff, until it answers or `request_stop` is called."""
        delays = Backoff(base=0.5, cap=5.0).delays()
        while True:
            try:
                self._start()
                return
            except db_errors.DbUnavailable as exc:
                self._release_partial_start()
                delay = next(delays)
                log.warning(
                    "database unavailable during start-up; retrying in %.1f s: %s", delay, exc
                )
                if self._stop_requested.wait(delay):
                    self.stop(grace=0)
                    raise errors.Unavailable("stopped while waiting for the database") from exc
            except BaseException:
                self.stop(grace=0)
                raise

    def request_stop(self) -> None:
        """Abort a start-up that waits for the database (safe from a signal handler)."""
        self._stop_requested.set()

    def _release_partial_start(self) -> None:
        # Nothing serves or runs in the background before recovery has finished.
        if self.db is not None:
            self.db.close()
        if self.cache is not None:
            self.cache.close()
        if self._lock is not None:
            self._lock.release()
        self.db = self.cache = self.service = None
        self._lock = None

    def _claim_database(self) -> StorageLock | None:
        target = parse_url(self.config.db_url)
        if not isinstance(target, SqliteConfig) or target.path == ":memory:":
            return None  # several storages on one MariaDB database: not guarded here
        try:
            return StorageLock(target.path, listen=self.config.listen)
        except DatabaseInUse as exc:
            raise StartupError("storage", str(exc)) from exc

    def _start(self) -> None:
        cfg = self.config
        self._lock = self._claim_database()
        warn_if_exposed("storage", cfg.listen, cfg.security)
        check_listen("storage", cfg.listen)
        if cfg.metrics_port is not None:
            check_metrics("storage", self.metrics_host, cfg.metrics_port)
        self.db = open_database(cfg.db_url)
        log.info("connected to the database", extra={"session_id": self.db.session_id})
        self.cache = _core.JobCache(
            task_capacity=cfg.task_capacity,
            commit_capacity=cfg.commit_capacity,
            cleanup_capacity=cfg.cleanup_capacity,
            max_task_output_bytes=cfg.max_task_output_bytes,
            max_job_bytes=cfg.max_job_bytes,
        )
        self.service = StorageService(
            cfg, self.db, self.cache, self.metrics, on_fatal=self._on_fatal
        )
        self.recovery = recover_cache(
            self.db, self.cache, cfg.recovery_page_size, self.service.submission_limits
        )
        self.service.resume(self.recovery)
        self.metrics.recovery_seconds.set(self.recovery.seconds)
        for state, count in self.recovery.recovered.items():
            self.metrics.jobs_recovered.labels(state.name).set(count)
        self.metrics.jobs_unrecoverable.set(len(self.recovery.failed))
        db, cache = self.db, self.cache
        self.metrics.attach(
            cache.queue_depths,
            cache.__len__,
            cache.live_instances,
            db.count_jobs_by_state,
            cache.taken_entries,
        )
        self.loops = BackgroundLoops(self.service)
        self.loops.start()
        self.service.pending.start()
        self.service.task_outputs.start()
        pending = self.service.pending
        self.metrics.pending_transitions.set_function(lambda: len(pending))
        self.server = bind_server(
            "storage",
            cfg.listen,
            lambda: make_server(
                cfg.listen,
                cfg.security,
                max_workers=cfg.grpc_workers,
                max_message_bytes=cfg.max_message_bytes,
                client_services=servicer.CLIENT_SERVICE_NAMES,
            ),
        )
        listen = split_host_port(cfg.listen)
        if self._lock is not None and listen is not None:
            self._lock.update(listen=join_host_port(listen[0], self.server.port))
        auth = Authenticator(
            self.db, operator_token=cfg.operator_token, cluster_token=cfg.security.token
        )
        listen = split_host_port(cfg.listen)
        if not auth.has_operator and listen is not None and not is_loopback(listen[0]):
            log.warning(
                "no operator token: anyone who reaches the storage service may create resource "
                "groups (set ORBWEAVER_OPERATOR_TOKEN)"
            )
        servicer.add_servicers(self.server.grpc_server, self.service, auth)
        self.server.start()
        for name in servicer.SERVICE_NAMES:
            self.server.set_serving(name, True)
        if cfg.metrics_port is not None:
            self._metrics_server = MetricsServer(
                cfg.metrics_port, self.metrics.registry, self.metrics_host, component="storage"
            )
        resent = self.cache.resend_ready()
        log.info(
            "storage serving",
            extra={
                "port": self.server.port,
                "session_id": self.db.session_id,
                "recovered_jobs": self.recovery.total,
                "resent": resent,
            },
        )

    def _on_fatal(self, message: str) -> None:
        if self._fatal is None:
            self._fatal = message
        # Stop from another thread: the caller may be a gRPC worker of the server being stopped.
        threading.Thread(target=self.stop, name="fatal-stop", daemon=True).start()

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.server is not None:
            self.server.stop(grace)
        if self.cache is not None:
            self.cache.close()
        if self.loops is not None:
            self.loops.stop()
        if self.service is not None:
            self.service.pending.stop()
            self.service.task_outputs.stop()
        if self.db is not None:
            self.db.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._lock is not None:
            self._lock.release()
        log.info("storage stopped")

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def exit_code(self) -> int:
        if self._fatal is not None:
            log.critical("storage exited after a fatal error: %s", self._fatal)
            return EXIT_FATAL
        return 0
