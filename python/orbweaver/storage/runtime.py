"""The storage service process: leadership, start-up in a safe order, and a clean stop.

Several storage processes may share one database; exactly one *leads* (holds the lease in the
database: `Database.campaign`) and serves, the others *stand by*: they answer every call but
health checks with UNAVAILABLE naming the leader (`_rpc.LeaderChannel` follows it). Start-up:

1. claim an SQLite database file (`StorageLock`: an SQLite file has one storage, so no
   standby) and check the ports, so a misconfigured storage fails at once, touching nothing;
2. bind the gRPC server, refusing calls as a standby whose leader is not known yet;
3. connect to the database (waited for, with backoff, until it answers or a stop is asked);
4. campaign. The winner begins a *term*: a new session (which fences every later write of the
   previous leader), the job cache rebuilt from the database, the service and its background
   loops; then it opens the gate (health: SERVING) and re-offers the ready work. A loser
   stands by. `start()` returns once this process leads or stands by.

The lease thread then renews the lease (leader) or watches it (standby, campaigning when it
expires). A leader that cannot renew stops serving when its lease runs out by its own clock —
before any standby may take over — and campaigns again: if nobody took the lease meanwhile
(the database was away for everyone) it resumes its term with the same session and cache;
otherwise it was deposed and drops the term, as it does when a write of its is fenced.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from orbweaver import _core, errors
from orbweaver._rpc import HEALTH_LEADER, HEALTH_STANDBY, Backoff, Server, make_server
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


# A lease is renewed (and watched by standbys) this many times per lease period.
_TICKS_PER_LEASE = 4
# The leader stops serving this fraction of the lease before the database's clock could let a
# standby take over (clock-rate drift between hosts).
_LEASE_MARGIN = 0.1

T = TypeVar("T")


@dataclass
class Term:
    """One leadership term: the session's job cache, service and background loops."""

    session_id: int
    cache: _core.JobCache
    service: StorageService
    loops: BackgroundLoops | None = None
    recovery: RecoveryReport | None = None
    ready: bool = False  # recovered; its loops run

    def close(self) -> None:
        if self.loops is not None:
            self.loops.stop()
        self.service.pending.stop()
        self.service.task_outputs.stop()
        self.cache.close()  # wakes every waiter; their calls answer UNAVAILABLE


class _Gate:
    """Whether calls are served, read by the server's interceptor on every call: leading, and
    the lease still valid by this process's clock (so a leader cut off from the database stops
    serving in time even while its renewal hangs)."""

    def __init__(self) -> None:
        self.open = False
        self.valid_until = 0.0  # monotonic
        self.leader = ""  # where the leader serves, when another one leads

    def refusal(self) -> str | None:
        if self.open and time.monotonic() < self.valid_until:
            return None
        return self.leader

    @property
    def serving(self) -> bool:
        return self.refusal() is None


@dataclass
class StorageRuntime:
    config: StorageConfig
    db: Database | None = None
    term: Term | None = None
    server: Server | None = None
    metrics: StorageMetrics = field(default_factory=StorageMetrics)
    _gate: _Gate = field(default_factory=_Gate)
    _stopped: threading.Event = field(default_factory=threading.Event)
    _stop_requested: threading.Event = field(default_factory=threading.Event)
    _fatal: str | None = None
    _metrics_server: MetricsServer | None = None
    _lock: StorageLock | None = None
    # Unique per process; host and pid let a restarted storage see its predecessor is dead.
    _holder: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    _advertise: str = ""
    _state: threading.Condition = field(default_factory=threading.Condition)
    _deposed: bool = False
    _session: int = 0  # the session whose lease we hold (0: none); its term may be building
    _lease_thread: threading.Thread | None = None
    _expired_ticks: int = 0  # standby: consecutive ticks that found the lease expired
    _settled: bool = False  # led or stood by behind a live leader once: `start()` may return

    # -- what tests and the CLI read ------------------------------------------------------------

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

    @property
    def leading(self) -> bool:
        return self._gate.serving

    @property
    def service(self) -> StorageService | None:
        term = self.term
        return None if term is None else term.service

    @property
    def recovery(self) -> RecoveryReport | None:
        term = self.term
        return None if term is None else term.recovery

    def _current_service(self) -> StorageService:
        term = self.term
        if term is None or not self._gate.serving:
            raise errors.Unavailable(
                "this storage does not lead (a leadership change is under way)"
            )
        return term.service

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start; return once this process leads or stands by. A database that cannot be
        reached yet is waited for, with backoff, until it answers or `request_stop` is
        called."""
        try:
            self._bind()
            self._connect()
            self._lease_thread = threading.Thread(
                target=self._lease_loop, name="lease", daemon=True
            )
            self._lease_thread.start()
            self._settle()
        except BaseException:
            self.stop(grace=0)
            raise

    def request_stop(self) -> None:
        """Abort a start-up that waits for the database (safe from a signal handler)."""
        self._stop_requested.set()
        with self._state:
            self._state.notify_all()

    def _claim_database(self) -> StorageLock | None:
        target = parse_url(self.config.db_url)
        if not isinstance(target, SqliteConfig) or target.path == ":memory:":
            return None  # MariaDB: several storages share it, one leads (the lease)
        try:
            return StorageLock(target.path, listen=self.config.listen)
        except DatabaseInUse as exc:
            raise StartupError("storage", str(exc)) from exc

    def _bind(self) -> None:
        cfg = self.config
        self._lock = self._claim_database()
        warn_if_exposed("storage", cfg.listen, cfg.security)
        check_listen("storage", cfg.listen)
        if cfg.metrics_port is not None:
            check_metrics("storage", self.metrics_host, cfg.metrics_port)
        self.server = bind_server(
            "storage",
            cfg.listen,
            lambda: make_server(
                cfg.listen,
                cfg.security,
                max_workers=cfg.grpc_workers,
                max_message_bytes=cfg.max_message_bytes,
                client_services=servicer.CLIENT_SERVICE_NAMES,
                gate=self._gate,
            ),
        )
        self._advertise = self._advertised_address(self.server.port)
        if self._lock is not None:
            self._lock.update(listen=self._advertise)
        self._set_health(starting=True)

    def _advertised_address(self, port: int) -> str:
        if self.config.advertise:
            return self.config.advertise
        listen = split_host_port(self.config.listen)
        if listen is None:
            return self.config.listen
        host = listen[0]
        if host in ("", "*", "0.0.0.0", "::"):
            host = socket.getfqdn()
        return join_host_port(host, port)

    def _connect(self) -> None:
        cfg = self.config
        delays = Backoff(base=0.5, cap=5.0).delays()
        while True:
            try:
                self.db = open_database(cfg.db_url)
                break
            except db_errors.DbUnavailable as exc:
                self._wait_or_abort(next(delays), "connecting to the database", exc)
        db = self.db
        log.info("connected to the database", extra={"advertise": self._advertise})
        auth = Authenticator(
            db, operator_token=cfg.operator_token, cluster_token=cfg.security.token
        )
        listen = split_host_port(cfg.listen)
        if not auth.has_operator and listen is not None and not is_loopback(listen[0]):
            log.warning(
                "no operator token: anyone who reaches the storage service may create resource "
                "groups (set ORBWEAVER_OPERATOR_TOKEN)"
            )
        assert self.server is not None
        servicer.add_servicers(
            self.server.grpc_server,
            self._current_service,
            auth,
            cfg.max_message_bytes,
            gate=self._gate,
            me=cfg.listen,
            streams=self.server.streams,
        )
        self.metrics.attach(
            self._live(lambda t: t.cache.queue_depths(), (0, 0, 0)),
            self._live(lambda t: len(t.cache), 0),
            self._live(lambda t: t.cache.live_instances(), 0),
            db.count_jobs_by_state,
            self._live(lambda t: t.cache.taken_entries(), 0),
        )
        self.metrics.pending_transitions.set_function(
            self._live(lambda t: len(t.service.pending), 0)
        )
        self.server.start()
        self._set_health()
        if cfg.metrics_port is not None:
            self._metrics_server = MetricsServer(
                cfg.metrics_port, self.metrics.registry, self.metrics_host, component="storage"
            )

    def _live(self, read: Callable[[Term], T], default: T) -> Callable[[], T]:
        def value() -> T:
            term = self.term
            if term is None:
                return default
            try:
                return read(term)
            except _core.CoreError:  # the term closed under us
                return default

        return value

    def _wait_or_abort(self, delay: float, what: str, exc: BaseException) -> None:
        log.warning("database unavailable while %s; retrying in %.1f s: %s", what, delay, exc)
        if self._stop_requested.wait(delay):
            raise errors.Unavailable("stopped while waiting for the database") from exc

    def _settle(self) -> None:
        """Wait until this process leads (its first term serves) or stands by behind a live
        leader: a single storage serves when it says it is ready, as it always did."""
        with self._state:
            while not self._settled:
                if self._stop_requested.is_set():
                    raise errors.Unavailable("stopped while starting")
                self._state.wait(0.5)

    # -- the lease ------------------------------------------------------------------------------

    def _campaign(self, started: float) -> int:
        """One campaign. Returns the new session to build a term for (0: none to build: we
        stand by, or resumed the session we had)."""
        assert self.db is not None
        db = self.db
        take_from = None
        if not self._session:
            current = db.current_lease()
            # Released (a clean stop) or held by a process known dead: no need to wait.
            gone = current.session_id != 0 and (
                current.holder == "" or self._holder_is_gone(current.holder)
            )
            if current.holder != self._holder and not gone:
                # A standby reads; it campaigns only once it has seen the lease expired on two
                # ticks in a row, so after a database outage the lapsed leader, which
                # campaigns on its first tick back, resumes with its cache.
                self._expired_ticks = 0 if current.live else self._expired_ticks + 1
                if current.live or (current.session_id and self._expired_ticks < 2):
                    with self._state:
                        self._stand_by_locked(current.address if current.live else "")
                    return 0
            if current.live and gone:
                take_from = current.holder
        lease = db.campaign(
            self._holder,
            self._advertise,
            self.config.lease,
            new_session=self._session == 0,
            take_from=take_from,
        )
        with self._state:
            if lease.holder != self._holder:
                if self._session:
                    self._deposed = True  # the lease we held went to another storage
                self._stand_by_locked(lease.address if lease.live else "")
                return 0
            self._gate.valid_until = started + self.config.lease * (1 - _LEASE_MARGIN)
            self._gate.leader = ""
            if lease.session_id == self._session:
                term = self.term
                if term is not None and term.ready and not self._gate.open:
                    # Nobody led while we could not renew: same session, same cache.
                    term.service.note_heartbeat_gap()
                    self._open_gate_locked(term, resumed=True)
                return 0
            self._drop_term_locked()
            self._session = lease.session_id
            self._deposed = False
            self.metrics.session.set(lease.session_id)
            return lease.session_id

    def _holder_is_gone(self, holder: str) -> bool:
        """Whether the lease's holder is known dead: any holder of an SQLite database (this
        process holds the file's lock, so no other storage runs), or an earlier process on
        this host (its pid is gone, or is ours: a restarted container)."""
        if self._lock is not None or isinstance(parse_url(self.config.db_url), SqliteConfig):
            return True
        host, _, rest = holder.partition(":")
        pid_text = rest.partition(":")[0]
        if host != socket.gethostname() or not pid_text.isdigit():
            return False
        pid = int(pid_text)
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _stand_by_locked(self, leader: str) -> None:
        if self._gate.open or self._deposed:
            log.warning("this storage does not lead", extra={"leader": leader or "unknown"})
        self._gate.open = False
        self._gate.leader = leader
        if leader:
            self._settled = True
            self._state.notify_all()
        if self._deposed:
            self._session = 0
            self._deposed = False
            self._drop_term_locked()
        self._set_health()

    def _lease_loop(self) -> None:
        tick = self.config.lease / _TICKS_PER_LEASE
        delay = 0.0  # the first campaign at once
        while not self._stopped.wait(delay):
            delay = tick
            started = time.monotonic()
            try:
                with self._state:
                    if self.db is not None and self.db.deposed_by is not None and self._session:
                        self._deposed = True  # a write of ours was fenced
                    if self._deposed:
                        self._stand_by_locked("")
                    holding = self._session != 0 and started < self._gate.valid_until
                    if not holding:
                        if self._gate.open:
                            log.warning("the lease ran out before it could be renewed")
                            self._gate.open = False
                        if self.term is not None:
                            self.term.service.note_heartbeat_gap()  # EMs cannot heartbeat
                if holding:
                    self._renew(started)
                else:
                    session = self._campaign(started)
                    if session:
                        threading.Thread(
                            target=self._build_term_safely,
                            args=(session,),
                            name="term",
                            daemon=True,
                        ).start()
            except db_errors.DbUnavailable as exc:
                log.warning("lease: database unavailable: %s", exc)
            except Exception:
                log.exception("lease: unexpected error")
            self._set_health()

    def _renew(self, started: float) -> None:
        assert self.db is not None
        renewed = self.db.renew_lease(self.config.lease)
        with self._state:
            if renewed:
                self._gate.valid_until = started + self.config.lease * (1 - _LEASE_MARGIN)
            else:
                log.warning("another storage took the lease: stepping down")
                self._deposed = True
                self._stand_by_locked("")

    # -- terms ----------------------------------------------------------------------------------

    def _build_term_safely(self, session_id: int) -> None:
        try:
            self._build_term(session_id)
        except Exception as exc:
            level = logging.WARNING if isinstance(exc, db_errors.DbError) else logging.ERROR
            log.log(level, "could not rebuild the job cache of session %d: %s", session_id, exc)

    def _build_term(self, session_id: int) -> None:
        cfg = self.config
        db = self.db
        assert db is not None
        log.info("leading: rebuilding the job cache", extra={"session_id": session_id})
        cache = _core.JobCache(
            task_capacity=cfg.task_capacity,
            commit_capacity=cfg.commit_capacity,
            cleanup_capacity=cfg.cleanup_capacity,
            max_task_output_bytes=cfg.max_task_output_bytes,
            max_job_bytes=cfg.max_job_bytes,
        )
        service = StorageService(cfg, db, cache, self.metrics, on_fatal=self._on_fatal)
        term = Term(session_id, cache, service)
        with self._state:
            if self._session != session_id:
                cache.close()
                return
            self._drop_term_locked()
            self.term = term
        try:
            recovery = recover_cache(db, cache, cfg.recovery_page_size, service.submission_limits)
            service.resume(recovery)  # durability="task" jobs whose every task was stored
        except BaseException:
            with self._state:
                if self.term is term:
                    self._drop_term_locked()
                else:
                    term.close()
                if self._session == session_id:
                    self._session = 0  # campaign again, for a new session
            raise
        with self._state:
            if self.term is not term or self._stopped.is_set():
                term.close()
                return
            term.recovery = recovery
            self._record_recovery(recovery)
            term.loops = BackgroundLoops(service, serving=lambda: self._gate.serving)
            term.loops.start()
            service.pending.start()
            service.task_outputs.start()
            term.ready = True
            self.metrics.terms.inc()
            if (
                self._session == session_id
                and not self._deposed
                and time.monotonic() < self._gate.valid_until
            ):
                self._open_gate_locked(term, resumed=False)

    def _record_recovery(self, report: RecoveryReport) -> None:
        self.metrics.recovery_seconds.set(report.seconds)
        for state, count in report.recovered.items():
            self.metrics.jobs_recovered.labels(state.name).set(count)
        self.metrics.jobs_unrecoverable.set(len(report.failed))

    def _open_gate_locked(self, term: Term, *, resumed: bool) -> None:
        self._gate.open = True
        self._settled = True
        self._state.notify_all()
        self._set_health()
        resent = term.cache.resend_ready()
        log.info(
            "storage serving",
            extra={
                "port": self.port,
                "advertise": self._advertise,
                "session_id": term.session_id,
                "resumed": resumed,
                "recovered_jobs": 0 if term.recovery is None else term.recovery.total,
                "resent": resent,
            },
        )

    def _drop_term_locked(self) -> None:
        self._gate.open = False
        term, self.term = self.term, None
        if term is not None:
            log.info("dropping the job cache of session %d", term.session_id)
            term.close()
        self._set_health()

    def _set_health(self, *, starting: bool = False) -> None:
        server = self.server
        if server is None:
            return
        leading = self._gate.serving and not starting
        for name in servicer.SERVICE_NAMES:
            server.set_serving(name, leading)
        server.set_serving(HEALTH_LEADER, leading)
        server.set_serving(HEALTH_STANDBY, not leading and not starting)
        server.set_serving("", not starting and self.db is not None)
        self.metrics.leader.set(1 if leading else 0)

    # -- stop -----------------------------------------------------------------------------------

    def _on_fatal(self, message: str) -> None:
        db = self.db
        if db is not None and db.deposed_by is not None:
            # Our write was fenced: another storage leads. Step down; the lease thread drops
            # the term and this process stands by.
            log.warning("a write was fenced (session %d leads): stepping down", db.deposed_by)
            self._deposed = True
            self._gate.open = False
            self._set_health()
            return
        if self._fatal is None:
            self._fatal = message
        # Stop from another thread: the caller may be a gRPC worker of the server being stopped.
        threading.Thread(target=self.stop, name="fatal-stop", daemon=True).start()

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        with self._state:
            leading = self._session != 0 and not self._deposed
            self._gate.open = False
        if self.server is not None:
            self.server.stop(grace)
        with self._state:
            self._drop_term_locked()
        if leading and self.db is not None and self._fatal is None:
            self._release_lease(self.db)
        if self.db is not None:
            self.db.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._lock is not None:
            self._lock.release()
        log.info("storage stopped")

    @staticmethod
    def _release_lease(db: Database) -> None:
        """Hand the lease over at once (a standby need not wait for it to expire); a database
        that does not answer within a few seconds is left to the lease's expiry."""

        def release() -> None:
            try:
                db.release_lease()
            except db_errors.DbError as exc:
                log.info("could not release the lease (it expires by itself): %s", exc)

        thread = threading.Thread(target=release, name="release-lease", daemon=True)
        thread.start()
        thread.join(3.0)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def exit_code(self) -> int:
        if self._fatal is not None:
            log.critical("storage exited after a fatal error: %s", self._fatal)
            return EXIT_FATAL
        return 0
