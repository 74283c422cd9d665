"""MariaDB / MySQL implementation of :class:`~.protocol.Database` (the ``mariadb`` connector).

Every operation borrows a connection from a bounded pool, runs one transaction, commits or rolls
back and returns the connection. Transient failures (lost connection, deadlock 1213, lock wait
timeout 1205, "record has changed" 1020, ...) are retried with backoff a few times, then surface as
:class:`~.errors.DbUnavailable`. A write whose ``COMMIT`` itself failed is never retried (its
outcome is unknown). A connection that saw a driver error is closed instead of being returned.

The pool is a small one of our own rather than ``mariadb.ConnectionPool``: that pool raises at once
when every connection is busy (callers must wait instead), offers no public way to drop a broken
connection, and shrinks for good when re-opening a connection fails while the server is down.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from ._sql import Cursor, Dialect, DuplicateKeyError, ForeignKeyViolationError, SqlDatabase
from .errors import DbError, DbUnavailable
from .states import DbJobState
from .url import MariaDbConfig

__all__ = ["MariaDbDatabase"]

T = TypeVar("T")

DIALECT = Dialect(
    name="mariadb",
    now="NOW(3)",
    cutoff="(NOW(3) - INTERVAL ? MICROSECOND)",
    cutoff_scale=1_000_000.0,
    epoch_ms="CAST(ROUND(UNIX_TIMESTAMP({col}) * 1000) AS SIGNED)",
    for_update=" FOR UPDATE",
    share_lock=" LOCK IN SHARE MODE",
    force_primary=" FORCE INDEX (PRIMARY)",
    insert_ignore="INSERT IGNORE",
)

# Our transactions never idle between statements longer than a scheduling hiccup.
_IDLE_TRANSACTION_TIMEOUT_SEC = 5
_TABLE_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
_JOB_STATES = ", ".join(f"'{s.db_name}'" for s in DbJobState)

SCHEMA: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS resource_groups (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
        external_id VARCHAR(256) NOT NULL,
        password VARBINARY(2048) NOT NULL,
        created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        PRIMARY KEY (id),
        UNIQUE INDEX external_resource_group_id (external_id)
    ) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS jobs (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
        resource_group_id BIGINT UNSIGNED NOT NULL,
        state ENUM({_JOB_STATES}) NOT NULL DEFAULT 'Ready',
        compressed_serialized_task_graph LONGBLOB NOT NULL,
        compressed_serialized_job_inputs LONGBLOB NOT NULL,
        serialized_job_outputs LONGBLOB NULL DEFAULT NULL,
        error_message LONGTEXT NULL DEFAULT NULL,
        idempotency_key VARCHAR(255) NULL DEFAULT NULL,
        created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
            ON UPDATE CURRENT_TIMESTAMP(3),
        ended_at TIMESTAMP(3) NULL DEFAULT NULL,
        max_num_retries INT UNSIGNED NOT NULL DEFAULT 0,
        num_retries INT UNSIGNED NOT NULL DEFAULT 0,
        PRIMARY KEY (id),
        INDEX job_state (state),
        UNIQUE INDEX job_idempotency_key (resource_group_id, idempotency_key),
        CONSTRAINT job_resource_group FOREIGN KEY (resource_group_id)
            REFERENCES resource_groups (id) ON UPDATE RESTRICT ON DELETE RESTRICT
    ) {_TABLE_OPTIONS}""",
    # Keyset paging of one resource group's jobs, newest first (the dashboard, ListJobs).
    "CREATE INDEX IF NOT EXISTS job_group ON jobs (resource_group_id, id)",
    f"""CREATE TABLE IF NOT EXISTS sessions (
        session_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
        started_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        PRIMARY KEY (session_id)
    ) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS storage_lease (
        id TINYINT UNSIGNED NOT NULL,
        session_id BIGINT UNSIGNED NOT NULL,
        holder VARCHAR(255) NOT NULL,
        address VARCHAR(255) NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        PRIMARY KEY (id)
    ) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS storage_fence (
        id TINYINT UNSIGNED NOT NULL,
        session_id BIGINT UNSIGNED NOT NULL,
        PRIMARY KEY (id)
    ) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS execution_managers (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
        ip_address VARCHAR(45) NOT NULL,
        state ENUM('Alive', 'Dead') NOT NULL DEFAULT 'Alive',
        last_heartbeat_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        death_confirmed_at TIMESTAMP(3) NULL DEFAULT NULL,
        PRIMARY KEY (id),
        INDEX execution_manager_liveness (state, last_heartbeat_at)
    ) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS schedulers (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
        host VARCHAR(255) NOT NULL,
        port SMALLINT UNSIGNED NOT NULL,
        created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        PRIMARY KEY (id)
    ) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS schema_migrations (
        version INT UNSIGNED NOT NULL,
        applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        PRIMARY KEY (version)
    ) {_TABLE_OPTIONS}""",
    # Task-level durability: a row per job submitted with durability="task", and the outputs
    # of its succeeded tasks while it runs (deleted with the job, or when it leaves Running).
    f"""CREATE TABLE IF NOT EXISTS task_durable_jobs (
        job_id BIGINT UNSIGNED NOT NULL,
        PRIMARY KEY (job_id),
        CONSTRAINT task_durable_job FOREIGN KEY (job_id)
            REFERENCES jobs (id) ON UPDATE RESTRICT ON DELETE CASCADE
    ) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS task_outputs (
        job_id BIGINT UNSIGNED NOT NULL,
        task_index INT UNSIGNED NOT NULL,
        serialized_outputs LONGBLOB NOT NULL,
        PRIMARY KEY (job_id, task_index),
        CONSTRAINT task_output_job FOREIGN KEY (job_id)
            REFERENCES jobs (id) ON UPDATE RESTRICT ON DELETE CASCADE
    ) {_TABLE_OPTIONS}""",
)

# Error numbers (server ER_* and client CR_*).
ER_DUP_ENTRY = 1062
ER_NO_REFERENCED_ROW = 1216
ER_NO_REFERENCED_ROW_2 = 1452
ER_CHECKREAD = 1020  # "Record has changed since last read"
ER_LOCK_WAIT_TIMEOUT = 1205
ER_LOCK_DEADLOCK = 1213
ER_UNKNOWN_SYSTEM_VARIABLE = 1193
_TRANSIENT_ERRNOS = frozenset(
    {
        ER_CHECKREAD,
        ER_LOCK_WAIT_TIMEOUT,
        ER_LOCK_DEADLOCK,
        1040,  # too many connections
        1053,  # server shutdown in progress
        1927,  # connection was killed
        2002,  # can't connect through socket
        2003,  # can't connect to server
        2005,  # unknown host (DNS hiccup)
        2006,  # server has gone away
        2013,  # lost connection during query
        2026,  # SSL connection error
        2055,  # lost connection (system error)
        4031,  # disconnected by the server (inactivity)
    }
)
# Errors with which the server answers a statement it rolled back (the others, a connection
# lost mid-statement, leave the outcome of a statement that commits itself unknown).
_ROLLED_BACK_ERRNOS = frozenset({ER_CHECKREAD, ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK})
_PING_AFTER_IDLE_SEC = 30.0


def _mariadb_module() -> Any:
    try:
        import mariadb
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DbError(
            "the 'mariadb' package is needed for mariadb:// and mysql:// URLs "
            "(pip install 'orbweaver[mariadb]'; it builds against libmariadb-dev)"
        ) from e
    return mariadb


def _errno(e: BaseException) -> int:
    value = getattr(e, "errno", None)
    return value if isinstance(value, int) else 0


class _Pool:
    """A bounded, lazily filled, thread-safe pool; callers wait for a free connection.

    A connection is either in autocommit mode (for writes of one statement: the statement
    commits itself, no COMMIT round trip) or not (transactions of several statements); the
    pool hands out one in the mode asked for when it has one idle, since switching costs a
    round trip."""

    def __init__(self, connect: Callable[[], Any], size: int, acquire_timeout: float) -> None:
        self._connect = connect
        self._size = size
        self._acquire_timeout = acquire_timeout
        self._cond = threading.Condition()
        self._idle: list[tuple[Any, float, bool]] = []  # (connection, last used, autocommit)
        self._total = 0
        self._closed = False

    def acquire(self, autocommit: bool = False) -> Any:
        deadline = time.monotonic() + self._acquire_timeout
        with self._cond:
            while True:
                if self._closed:
                    raise DbError("the database connection pool is closed")
                if self._idle:
                    # The most recently used connection in the mode asked for, else any.
                    at = next(
                        (
                            i
                            for i in range(len(self._idle) - 1, -1, -1)
                            if self._idle[i][2] == autocommit
                        ),
                        len(self._idle) - 1,
                    )
                    conn, last_used, mode = self._idle.pop(at)
                    break
                if self._total < self._size:
                    self._total += 1
                    conn, last_used, mode = None, 0.0, False
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DbUnavailable(
                        f"no database connection became free within {self._acquire_timeout:g} s "
                        f"(pool size {self._size})"
                    )
                self._cond.wait(remaining)
        try:
            if conn is not None and time.monotonic() - last_used > _PING_AFTER_IDLE_SEC:
                try:
                    conn.ping()
                except Exception:
                    _close_quietly(conn)
                    conn = None
            if conn is None:
                conn, mode = self._connect(), False  # connections are made without autocommit
            if mode != autocommit:
                conn.autocommit = autocommit
            return conn
        except BaseException:
            if conn is not None:
                _close_quietly(conn)
            self._forget()
            raise

    def release(self, conn: Any, *, autocommit: bool, discard: bool = False) -> None:
        with self._cond:
            keep = not discard and not self._closed
            if keep:
                self._idle.append((conn, time.monotonic(), autocommit))
                self._cond.notify()
        if not keep:
            _close_quietly(conn)
            self._forget()

    def _forget(self) -> None:
        with self._cond:
            self._total -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._total -= len(idle)
            self._cond.notify_all()
        for conn, _, _ in idle:
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


class MariaDbDatabase(SqlDatabase):
    """A pooled MariaDB/MySQL database.

    Options: ``pool_size`` (default from the URL, else 8), ``connect_timeout`` (s),
    ``acquire_timeout`` (s to wait for a free pooled connection, default 30), ``max_retries``
    (transient-error retries per operation, default 5), ``lock_wait_timeout`` (s, the session's
    ``innodb_lock_wait_timeout``; default 20).
    """

    def __init__(
        self,
        config: MariaDbConfig,
        *,
        pool_size: int | None = None,
        connect_timeout: int | None = None,
        acquire_timeout: float = 30.0,
        max_retries: int = 5,
        lock_wait_timeout: int = 20,
        lead: bool = False,
    ) -> None:
        super().__init__(DIALECT)
        self._mariadb = _mariadb_module()
        size = config.pool_size if pool_size is None else pool_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1024:
            raise ValueError(f"pool_size must be an int in [1, 1024], got {size!r}")
        if not isinstance(lock_wait_timeout, int) or lock_wait_timeout < 1:
            raise ValueError(f"lock_wait_timeout must be a positive int, got {lock_wait_timeout!r}")
        self._config = config
        self._max_retries = max(0, int(max_retries))
        self._connect_args: dict[str, Any] = {
            "user": config.user,
            "database": config.database,
            "connect_timeout": connect_timeout or config.connect_timeout,
            # A server that hangs (rather than refusing) must not hold a caller forever; lock
            # waits end earlier (innodb_lock_wait_timeout).
            "read_timeout": max(30, lock_wait_timeout + 10),
            "write_timeout": max(30, lock_wait_timeout + 10),
            "autocommit": False,
            # UTC sessions: TIMESTAMP comparisons never cross a DST change.
            "init_command": (
                f"SET time_zone = '+00:00', innodb_lock_wait_timeout = {lock_wait_timeout}"
            ),
        }
        if config.password is not None:
            self._connect_args["password"] = config.password
        if config.unix_socket:
            self._connect_args["unix_socket"] = config.unix_socket
        else:
            self._connect_args["host"] = config.host
            self._connect_args["port"] = config.port
        self._pool = _Pool(self._connect, size, acquire_timeout)
        try:
            self._initialize(lead=lead)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> Any:
        conn = self._mariadb.connect(**self._connect_args)
        # A transaction left idle (its client cut off from the network mid-transaction) is
        # rolled back by the server, so its locks cannot hold up a storage taking over for long.
        # MariaDB only: MySQL has no such variable (and then keeps wait_timeout's behaviour).
        cur = conn.cursor()
        try:
            cur.execute(f"SET SESSION idle_transaction_timeout = {_IDLE_TRANSACTION_TIMEOUT_SEC}")
        except self._mariadb.Error as exc:
            if _errno(exc) != ER_UNKNOWN_SYSTEM_VARIABLE:
                _close_quietly(conn)
                raise
        finally:
            cur.close()
        return conn

    def _max_statement_bytes(self) -> int:
        # The server refuses (and drops the connection of) a bigger packet.
        def tx(cur: Cursor) -> int:
            cur.execute("SELECT @@max_allowed_packet")
            row = cur.fetchone()
            return int(row[0]) if row is not None else 0

        return self._transaction(tx, write=False)

    def _where(self) -> str:
        c = self._config
        place = f"socket {c.unix_socket}" if c.unix_socket else f"{c.host}:{c.port}"
        return f"MariaDB database {c.database!r} at {place} as {c.user!r}"

    def close(self) -> None:
        self._pool.close()

    def _schema_ddl(self) -> Sequence[str]:
        return SCHEMA

    def _run_ddl(self, statements: Sequence[str]) -> None:
        # MariaDB has no transactional DDL: each statement commits on its own.
        def tx(cur: Cursor) -> None:
            for statement in statements:
                cur.execute(statement)

        self._transaction(tx, write=True)

    def _run_transaction(
        self,
        fn: Callable[[Cursor], T],
        *,
        write: bool,
        read_committed: bool = False,
        single: bool = False,
    ) -> T:
        mariadb = self._mariadb
        # One statement that writes commits by itself (autocommit): no COMMIT round trip.
        autocommit = single and write and not read_committed
        attempt = 0
        while True:
            conn: Any = None
            discard = True
            committing = False
            try:
                conn = self._pool.acquire(autocommit)
                cur = conn.cursor(buffered=True)
                try:
                    if read_committed:
                        # Applies to the next transaction only.
                        cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    committing = autocommit  # in autocommit, running the statement commits it
                    result = fn(cast(Cursor, cur))
                    if not autocommit:
                        committing = True
                        conn.commit()
                finally:
                    cur.close()
                discard = False
                return result
            except mariadb.Error as e:
                errno = _errno(e)
                if conn is not None:
                    discard = not _rollback_quietly(conn)
                if errno == ER_DUP_ENTRY:
                    raise DuplicateKeyError(str(e)) from e
                if errno in (ER_NO_REFERENCED_ROW, ER_NO_REFERENCED_ROW_2):
                    raise ForeignKeyViolationError(str(e)) from e
                # Any other driver error: do not reuse the connection.
                discard = True
                # Without an error number, fall back on the exception class.
                transient = errno in _TRANSIENT_ERRNOS or (
                    errno == 0 and isinstance(e, (mariadb.InterfaceError, mariadb.OperationalError))
                )
                # A statement the server refused (a deadlock, a lock wait) was rolled back.
                outcome_unknown = write and committing and errno not in _ROLLED_BACK_ERRNOS
                if transient and not outcome_unknown and attempt < self._max_retries:
                    attempt += 1
                    time.sleep(min(1.0, 0.02 * 2**attempt) * (0.5 + random.random()))
                    continue
                if transient:
                    what = "commit outcome unknown" if outcome_unknown else "transient failure"
                    raise DbUnavailable(
                        f"{self._where()}: {what} after {attempt + 1} attempt(s): "
                        f"error {errno}: {e}",
                        outcome_unknown=outcome_unknown,
                    ) from e
                raise DbError(f"{self._where()}: error {errno}: {e}") from e
            except BaseException:
                # A DbError raised by `fn` (JobNotFound, ...) or an interrupt: roll back; keep
                # the connection only if that worked.
                if conn is not None:
                    discard = not _rollback_quietly(conn)
                raise
            finally:
                if conn is not None:
                    self._pool.release(conn, autocommit=autocommit, discard=discard)


def _rollback_quietly(conn: Any) -> bool:
    try:
        conn.rollback()
        return True
    except Exception:
        return False
