"""SQLite implementation of :class:`~.protocol.Database` (the embedded default).

One ``sqlite3`` connection guarded by a lock serves every thread (``check_same_thread=False``).
Write transactions start with ``BEGIN IMMEDIATE``, which takes SQLite's write lock up front and so
serialises state changes exactly like ``SELECT ... FOR UPDATE`` does on MariaDB, also against other
processes using the same file (they wait up to ``busy_timeout``). Timestamps are INTEGER epoch
milliseconds produced by the ``orbweaver_now_ms()`` SQL function, i.e. by ``clock()``.

:class:`StorageLock` makes a database file belong to one storage service: an exclusive
``flock`` on ``<database>.lock``. It is separate from :class:`SqliteDatabase` on purpose: the
storage service takes it for its whole life, while tools and tests may still open the same
file through the DB layer (to inspect it, or to prepare rows before a restart).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from ._sql import Cursor, Dialect, DuplicateKeyError, ForeignKeyViolationError, SqlDatabase
from .errors import DbError, DbUnavailable
from .states import DbJobState

__all__ = ["DatabaseInUse", "SqliteDatabase", "StorageLock"]

T = TypeVar("T")

DIALECT = Dialect(
    name="sqlite",
    now="orbweaver_now_ms()",
    cutoff="(orbweaver_now_ms() - ?)",
    cutoff_scale=1000.0,
    epoch_ms="{col}",
    for_update="",
    share_lock="",
    force_primary="",
    insert_ignore="INSERT OR IGNORE",
)

_JOB_STATES = ", ".join(f"'{s.db_name}'" for s in DbJobState)

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS resource_groups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        external_id TEXT NOT NULL,
        password BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        CONSTRAINT external_resource_group_id UNIQUE (external_id)
    )""",
    f"""CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        resource_group_id INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'Ready' CHECK (state IN ({_JOB_STATES})),
        compressed_serialized_task_graph BLOB NOT NULL,
        compressed_serialized_job_inputs BLOB NOT NULL,
        serialized_job_outputs BLOB NULL,
        error_message TEXT NULL,
        idempotency_key TEXT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        ended_at INTEGER NULL DEFAULT NULL,
        max_num_retries INTEGER NOT NULL DEFAULT 0,
        num_retries INTEGER NOT NULL DEFAULT 0,
        CONSTRAINT job_idempotency_key UNIQUE (resource_group_id, idempotency_key),
        CONSTRAINT job_resource_group FOREIGN KEY (resource_group_id)
            REFERENCES resource_groups (id) ON UPDATE RESTRICT ON DELETE RESTRICT
    )""",
    "CREATE INDEX IF NOT EXISTS job_state ON jobs (state)",
    # Keyset paging of one resource group's jobs, newest first (the dashboard, ListJobs).
    "CREATE INDEX IF NOT EXISTS job_group ON jobs (resource_group_id, id)",
    """CREATE TABLE IF NOT EXISTS sessions (
        session_id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS storage_lease (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL,
        holder TEXT NOT NULL,
        address TEXT NOT NULL,
        expires_at_ms INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS storage_fence (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS execution_managers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ip_address TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'Alive' CHECK (state IN ('Alive', 'Dead')),
        last_heartbeat_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        death_confirmed_at INTEGER NULL DEFAULT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS execution_manager_liveness "
    "ON execution_managers (state, last_heartbeat_at)",
    """CREATE TABLE IF NOT EXISTS schedulers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL,
        port INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
        created_at INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY,
        applied_at INTEGER NOT NULL
    )""",
    # Task-level durability: a row per job submitted with durability="task", and the outputs
    # of its succeeded tasks while it runs (deleted with the job, or when it leaves Running).
    """CREATE TABLE IF NOT EXISTS task_durable_jobs (
        job_id INTEGER PRIMARY KEY,
        CONSTRAINT task_durable_job FOREIGN KEY (job_id)
            REFERENCES jobs (id) ON UPDATE RESTRICT ON DELETE CASCADE
    )""",
    """CREATE TABLE IF NOT EXISTS task_outputs (
        job_id INTEGER NOT NULL,
        task_index INTEGER NOT NULL CHECK (task_index >= 0),
        serialized_outputs BLOB NOT NULL,
        PRIMARY KEY (job_id, task_index),
        CONSTRAINT task_output_job FOREIGN KEY (job_id)
            REFERENCES jobs (id) ON UPDATE RESTRICT ON DELETE CASCADE
    )""",
)

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


class SqliteDatabase(SqlDatabase):
    """``path`` is a file path or ``":memory:"``.

    ``clock`` (seconds since the epoch, default :func:`time.time`) can be replaced in tests.
    ``synchronous`` is the ``PRAGMA synchronous`` level: ``NORMAL`` (the default) is durable
    across process crashes in WAL mode, ``FULL`` also across power loss.
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_ms: int = 10_000,
        clock: Callable[[], float] = time.time,
        synchronous: str = "NORMAL",
        lead: bool = False,
    ) -> None:
        super().__init__(DIALECT)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"invalid synchronous level {synchronous!r}")
        if isinstance(busy_timeout_ms, bool) or not isinstance(busy_timeout_ms, int):
            raise TypeError("busy_timeout_ms must be an int")
        self._path = path
        self._lock = threading.RLock()
        self._clock = clock
        if path != ":memory:":
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise ValueError(f"SQLite database directory {parent!r} does not exist")
        try:
            conn = sqlite3.connect(
                path,
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise DbError(f"cannot open SQLite database {path!r}: {e}") from e
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.create_function("orbweaver_now_ms", 0, self._now_ms)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            self._initialize(lead=lead)
        except BaseException:
            self.close()
            raise

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _schema_ddl(self) -> Sequence[str]:
        return SCHEMA

    def _max_statement_bytes(self) -> int:
        # SQLite bounds each string or blob (SQLITE_MAX_LENGTH, 1e9 by default).
        with self._lock:
            if self._conn is None:
                raise DbError("the database connection is closed")
            return int(self._conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH))

    def _run_ddl(self, statements: Sequence[str]) -> None:
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
        del read_committed  # SQLite transactions are serializable.
        del single  # in-process: a COMMIT costs no round trip
        with self._lock:
            conn = self._conn
            if conn is None:
                raise DbError("the database connection is closed")
            cur = conn.cursor()
            try:
                # Reads use a deferred transaction: a consistent snapshot without the write lock.
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = fn(cast(Cursor, cur))
                cur.execute("COMMIT")
                return result
            except BaseException as e:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.rollback()
                if isinstance(e, sqlite3.Error):
                    raise _translate(e) from e
                raise
            finally:
                cur.close()


class DatabaseInUse(DbError):
    """Another storage service holds the database file (see :class:`StorageLock`)."""


class StorageLock:
    """The exclusive claim of one storage service on an SQLite database file.

    An advisory ``flock`` on ``<database>.lock`` (next to the database, symbolic links resolved,
    so every path to the file finds the same lock), taken without waiting. The lock file records
    the holder (pid, host, listen address, start time) for the error a second opener gets. The
    kernel drops the lock when the holder's file descriptor closes, so also when the process
    dies however it dies: a lock file left by a dead holder never blocks anyone. Only a storage
    service takes it; opening the database itself is not refused (see the module docstring).
    """

    def __init__(self, database: str, *, listen: str) -> None:
        self.database = os.path.realpath(database)
        self.path = self.database + ".lock"
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            parent = os.path.dirname(self.database)
            raise ValueError(f"SQLite database directory {parent!r} does not exist") from None
        except OSError as e:
            raise DbError(f"cannot create the lock file {self.path!r}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DatabaseInUse(self._in_use_message(holder)) from None
        except OSError as e:
            os.close(fd)
            raise DbError(f"cannot lock {self.path!r}: {e.strerror}") from e
        self._fd: int | None = fd
        self._holder: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "listen": listen,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._write()

    def _in_use_message(self, holder: dict[str, Any] | None) -> str:
        if holder is None:
            who = f"another storage service (it holds {self.path})"
        else:
            who = (
                f"the storage service pid {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} (listening on {holder.get('listen', '?')}) since "
                f"{holder.get('since', '?')}"
            )
        return f"database {self.database} is in use by {who}; one database file has one storage"

    def update(self, *, listen: str) -> None:
        """Record the address the holder actually listens on (once its port is bound)."""
        self._holder["listen"] = listen
        self._write()

    def _write(self) -> None:
        fd = self._fd
        if fd is None:
            return
        data = json.dumps(self._holder).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> None:
        """Give the database up (idempotent); the emptied lock file stays, harmlessly."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor drops the flock


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
    except (OSError, ValueError):  # empty while its holder is still writing it
        return None
    return holder if isinstance(holder, dict) else None


def _translate(e: sqlite3.Error) -> DbError:
    message = str(e)
    if isinstance(e, sqlite3.IntegrityError):
        if "FOREIGN KEY" in message:
            return ForeignKeyViolationError(message)
        if "UNIQUE" in message:
            return DuplicateKeyError(message)
        return DbError(f"SQLite integrity error: {message}")
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return DbUnavailable(f"SQLite database is busy: {message}")
    return DbError(f"SQLite error: {message}")
