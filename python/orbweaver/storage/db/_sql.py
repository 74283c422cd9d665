"""Dialect-independent implementation of :class:`~.protocol.Database` over DB-API cursors.

Both backends use the ``?`` parameter style, so every DML statement is written once here; the few
dialect differences (current time, time arithmetic, row locking, index hints, ``INSERT IGNORE``)
are filled in from a :class:`Dialect`. A backend only provides the schema DDL, the connection
handling and :meth:`SqlDatabase._transaction`, which runs a function in one transaction and maps
driver errors to :mod:`.errors` (plus the two private integrity errors below).
"""

from __future__ import annotations

import abc
import functools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .errors import (
    CorruptedDbState,
    DbError,
    DbUnavailable,
    ExecutionManagerAlreadyDead,
    Fenced,
    IdempotencyKeyReused,
    IllegalExecutionManagerId,
    InvalidJobStateTransition,
    InvalidPassword,
    JobNotFound,
    ResourceGroupAlreadyExists,
    ResourceGroupNotFound,
    UnexpectedJobState,
    ValueTooLarge,
)
from .passwords import PasswordVerifier, hash_password
from .protocol import (
    ExecutionManagerRow,
    JobGroup,
    JobRow,
    Lease,
    RecoverableJobRow,
    ResourceGroupRow,
    SchedulerRow,
)
from .states import RECOVERABLE_STATES, TERMINAL_STATES, DbJobState, is_valid_transition

T = TypeVar("T")

SCHEMA_VERSION = 2
"""1: jobs, groups, EMs, schedulers, sessions. 2: the storage lease and fence (failover); an
older Orbweaver, which would ignore them, refuses a version-2 database."""
BATCH_SIZE = 1000
"""Rows per batch for deleting expired jobs and for locking dead EMs (as in the reference)."""

MAX_ID = 2**63 - 1
MAX_EXTERNAL_ID_LEN = 256
MAX_IDEMPOTENCY_KEY_LEN = 255
MAX_HOST_LEN = 255
MAX_IP_ADDRESS_LEN = 45


class Cursor(Protocol):
    """The subset of a DB-API cursor the shared code uses."""

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]], /) -> Any: ...


class DuplicateKeyError(DbError):
    """Driver-independent unique-key violation; translated by the operation that caused it."""


class ForeignKeyViolationError(DbError):
    """Driver-independent foreign-key violation; translated by the operation that caused it."""


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    now: str
    """SQL expression for the current time, in the unit the timestamp columns use."""
    cutoff: str
    """SQL expression, with one ``?``, for "now minus the bound duration"."""
    cutoff_scale: float
    """Multiplier turning seconds into the bound duration's unit."""
    epoch_ms: str
    """Template (``{col}``) turning a timestamp column into integer epoch milliseconds."""
    for_update: str
    share_lock: str
    """Suffix of a locking read that other readers share (a writer waits for all of them)."""
    force_primary: str
    insert_ignore: str

    def cutoff_param(self, seconds: float) -> int:
        return round(seconds * self.cutoff_scale)


_TERMINAL_SQL = ", ".join(f"'{s.db_name}'" for s in sorted(TERMINAL_STATES))


# Rows locked per SELECT ... FOR UPDATE of a batched transition.
_LOCK_CHUNK = 500
# Room for a statement's SQL text and protocol framing besides its values.
STATEMENT_OVERHEAD = 64 * 1024


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


Row = TypeVar("Row", bound=tuple[Any, ...])


class _Unchanged(Exception):
    """A statement that checks its own preconditions changed fewer rows than asked: roll back,
    then find out why."""


@functools.cache
def _sources_of(target: DbJobState) -> tuple[str, ...]:
    """The states a job may move to `target` from (their column spellings)."""
    return tuple(s.db_name for s in DbJobState if is_valid_transition(s, target))


def _by_size(rows: Sequence[Row], limit: int, blob: int) -> list[list[Row]]:
    """Consecutive batches of rows whose blobs (`row[blob]`) add up to at most `limit` bytes (a
    row alone may reach the limit)."""
    batches: list[list[Row]] = []
    size = limit + 1
    for row in rows:
        n = len(row[blob])
        if size + n > limit:
            batches.append([])
            size = 0
        batches[-1].append(row)
        size += n
    return batches


class Statements:
    """The DML, rendered once per dialect."""

    def __init__(self, d: Dialect) -> None:
        now = d.now
        ms = d.epoch_ms.format
        self.insert_session = f"INSERT INTO sessions (started_at) VALUES ({now})"
        self.max_schema_version = "SELECT MAX(version) FROM schema_migrations"

        # -- leadership: one row each; the lease is renewed, the fence changes only at takeover,
        # so renewals never wait for (or hold up) the writers that share the fence row.
        now_ms = d.epoch_ms.format(col=now)
        self.insert_lease_row = (
            f"{d.insert_ignore} INTO storage_lease (id, session_id, holder, address, "
            "expires_at_ms) VALUES (1, 0, '', '', 0)"
        )
        self.insert_fence_row = (
            f"{d.insert_ignore} INTO storage_fence (id, session_id) VALUES (1, 0)"
        )
        self.select_lease = (
            f"SELECT session_id, holder, address, expires_at_ms - {now_ms} "
            "FROM storage_lease WHERE id = 1"
        )
        self.lock_lease = self.select_lease + d.for_update
        self.take_lease = (
            "UPDATE storage_lease SET session_id = ?, holder = ?, address = ?, "
            f"expires_at_ms = {now_ms} + ? WHERE id = 1"
        )
        self.extend_lease = f"UPDATE storage_lease SET expires_at_ms = {now_ms} + ? WHERE id = 1"
        self.release_lease = (
            "UPDATE storage_lease SET expires_at_ms = 0, holder = '' "
            "WHERE id = 1 AND session_id = ?"
        )
        self.move_fence = "UPDATE storage_fence SET session_id = ? WHERE id = 1"
        self.check_fence = f"SELECT session_id FROM storage_fence WHERE id = 1{d.share_lock}"
        self.insert_schema_version = (
            f"{d.insert_ignore} INTO schema_migrations (version, applied_at) VALUES (?, {now})"
        )

        # -- jobs
        self.find_idempotent_job = (
            "SELECT id, compressed_serialized_task_graph, compressed_serialized_job_inputs "
            "FROM jobs WHERE resource_group_id = ? AND idempotency_key = ?"
        )
        self.insert_job = (
            "INSERT INTO jobs (resource_group_id, state, compressed_serialized_task_graph, "
            "compressed_serialized_job_inputs, idempotency_key, created_at, updated_at) "
            f"VALUES (?, ?, ?, ?, ?, {now}, {now})"
        )
        # The same insert made only while the given session holds the fence, checked under the
        # fence row's shared lock by the statement itself: a submission's transaction saves the
        # separate fence check's round trip (see `SqlDatabase._transaction`). No row: fenced.
        self.insert_job_fenced = (
            "INSERT INTO jobs (resource_group_id, state, compressed_serialized_task_graph, "
            "compressed_serialized_job_inputs, idempotency_key, created_at, updated_at) "
            f"SELECT ?, ?, ?, ?, ?, {now}, {now} FROM storage_fence "
            f"WHERE id = 1 AND session_id = ?{d.share_lock}"
        )
        self.lock_job = f"SELECT state FROM jobs WHERE id = ?{d.for_update}"
        self.lock_jobs_prefix = "SELECT id, state FROM jobs WHERE id IN ("
        self.lock_jobs_suffix = f"){d.for_update}"
        self.get_state = "SELECT state FROM jobs WHERE id = ?"
        self.get_outputs = "SELECT state, serialized_job_outputs FROM jobs WHERE id = ?"
        self.get_error = "SELECT state, error_message FROM jobs WHERE id = ?"
        self.job_columns = (
            f"id, resource_group_id, state, {ms(col='created_at')}, {ms(col='ended_at')}, "
            "error_message"
        )
        self.get_job = f"SELECT {self.job_columns} FROM jobs WHERE id = ?"
        self.count_by_state = "SELECT state, COUNT(*) FROM jobs GROUP BY state"
        self.count_group_by_state = (
            "SELECT state, COUNT(*) FROM jobs WHERE resource_group_id = ? GROUP BY state"
        )
        self.get_job_graph = "SELECT compressed_serialized_task_graph FROM jobs WHERE id = ?"
        per_state = " UNION ALL ".join(
            f"SELECT id FROM (SELECT id FROM jobs WHERE state = '{s.db_name}' AND id > ? "
            f"ORDER BY id LIMIT ?) r{int(s)}"
            for s in RECOVERABLE_STATES
        )
        # Each branch is an ordered range scan of the (state, id) index; only the first `limit`
        # ids overall are then joined to the blobs.
        self.recoverable_jobs = (
            "SELECT j.id, j.resource_group_id, j.state, j.compressed_serialized_task_graph, "
            "j.compressed_serialized_job_inputs, j.serialized_job_outputs "
            f"FROM (SELECT id FROM ({per_state}) u ORDER BY id LIMIT ?) c "
            "JOIN jobs j ON j.id = c.id ORDER BY j.id"
        )
        self.expired_job_ids = (
            f"SELECT id FROM jobs WHERE state IN ({_TERMINAL_SQL}) AND ended_at IS NOT NULL "
            f"AND ended_at < {d.cutoff} AND id > ? ORDER BY id LIMIT {BATCH_SIZE}"
        )
        self.delete_jobs_prefix = "DELETE FROM jobs WHERE id IN ("
        self.delete_jobs_suffix = f") AND state IN ({_TERMINAL_SQL})"

        # -- resource groups
        self.insert_resource_group = (
            f"INSERT INTO resource_groups (external_id, password, created_at) VALUES (?, ?, {now})"
        )
        self.resource_group_by_id = (
            "SELECT id, external_id, password FROM resource_groups WHERE id = ?"
        )
        self.resource_group_by_external_id = (
            "SELECT id, external_id, password FROM resource_groups WHERE external_id = ?"
        )
        self.list_resource_groups = (
            f"SELECT id, external_id, {ms(col='created_at')} FROM resource_groups "
            "WHERE id > ? ORDER BY id LIMIT ?"
        )

        # -- execution managers
        self.insert_em = (
            "INSERT INTO execution_managers (ip_address, state, last_heartbeat_at, created_at) "
            f"VALUES (?, 'Alive', {now}, {now})"
        )
        self.lock_em = f"SELECT state FROM execution_managers WHERE id = ?{d.for_update}"
        self.get_em_state = "SELECT state FROM execution_managers WHERE id = ?"
        self.alive_ems = (
            f"SELECT id, ip_address, {ms(col='last_heartbeat_at')} FROM execution_managers "
            "WHERE state = 'Alive' ORDER BY id"
        )
        self.heartbeat_em = (
            f"UPDATE execution_managers SET last_heartbeat_at = {now} "
            "WHERE id = ? AND state = 'Alive'"
        )
        self.stale_em_candidates = (
            "SELECT id FROM execution_managers "
            f"WHERE state = 'Alive' AND last_heartbeat_at < {d.cutoff} ORDER BY id"
        )
        self.lock_stale_ems_prefix = (
            f"SELECT id FROM execution_managers{d.force_primary} WHERE id IN ("
        )
        self.lock_stale_ems_suffix = (
            f") AND state = 'Alive' AND last_heartbeat_at < {d.cutoff} ORDER BY id{d.for_update}"
        )
        self.mark_ems_dead_prefix = (
            f"UPDATE execution_managers SET state = 'Dead', death_confirmed_at = {now} "
            "WHERE id IN ("
        )

        # -- schedulers
        self.delete_schedulers = "DELETE FROM schedulers"
        self.insert_scheduler = (
            f"INSERT INTO schedulers (host, port, created_at) VALUES (?, ?, {now})"
        )
        self.get_schedulers = "SELECT id, host, port FROM schedulers ORDER BY id"
        self.scheduler_exists = "SELECT 1 FROM schedulers WHERE id = ?"

        # -- task-level durability (jobs submitted with durability="task")
        self.insert_task_durable_job = "INSERT INTO task_durable_jobs (job_id) VALUES (?)"
        self.is_task_durable_job = "SELECT 1 FROM task_durable_jobs WHERE job_id = ?"
        self.task_durable_jobs_prefix = "SELECT job_id FROM task_durable_jobs WHERE job_id IN ("
        self.running_jobs_prefix = "SELECT id FROM jobs WHERE state = 'Running' AND id IN ("
        # A task's outputs are written again only after a restart re-ran it (the first write's
        # outcome was unknown, or its parent had to run again): the latest run wins.
        self.replace_task_output = (
            "REPLACE INTO task_outputs (job_id, task_index, serialized_outputs) VALUES (?, ?, ?)"
        )
        self.delete_task_outputs_prefix = "DELETE FROM task_outputs WHERE job_id IN ("
        self.task_outputs = (
            "SELECT task_index, serialized_outputs FROM task_outputs WHERE job_id = ? "
            "ORDER BY task_index"
        )

        self._now = now
        self._share_lock = d.share_lock

    def complete_job(self, *, terminal: bool, sources: int, fenced: bool) -> str:
        """Outputs and the new state of a job, in one statement that checks what a transaction
        would have read first: the job is in one of `sources` states and, when `fenced`, the
        session still holds the fence (read under its shared lock, as `check_fence` does).
        Parameters: state, outputs, id, the sources, [session]. Changes nothing otherwise."""
        statement = self.update_job(terminal=terminal, outputs=True)
        statement += f" AND state IN ({_placeholders(sources)})"
        if fenced:
            statement += (
                " AND EXISTS (SELECT 1 FROM storage_fence WHERE id = 1 AND session_id = ?"
                f"{self._share_lock})"
            )
        return statement

    def update_job(self, *, terminal: bool, outputs: bool = False, error: bool = False) -> str:
        sets = ["state = ?"]
        if outputs:
            sets.append("serialized_job_outputs = ?")
        if error:
            sets.append("error_message = ?")
        sets.append(f"updated_at = {self._now}")
        if terminal:
            sets.append(f"ended_at = {self._now}")
        return f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?"

    @staticmethod
    def list_jobs(
        job_columns: str, n_states: int | None, before: bool, resource_group: bool
    ) -> str:
        where = []
        if n_states is not None:
            where.append(f"state IN ({_placeholders(n_states)})")
        if before:
            where.append("id < ?")
        if resource_group:
            where.append("resource_group_id = ?")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return f"SELECT {job_columns} FROM jobs{clause} ORDER BY id DESC LIMIT ?"


# -- argument checks ------------------------------------------------------------------------------


def _valid_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    return value


def _in_range(value: int) -> bool:
    return 0 < value <= MAX_ID


def _check_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, got {type(value).__name__}")


def _check_text(value: object, what: str, max_len: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{what} is longer than {max_len} characters")
    return value


def _state_arg(state: object) -> DbJobState:
    if isinstance(state, bool) or not isinstance(state, int):
        raise TypeError(f"job state must be an int, got {type(state).__name__}")
    try:
        return DbJobState(state)
    except ValueError:
        raise ValueError(f"unknown job state {state}") from None


def _db_state(name: object, job_id: int) -> DbJobState:
    try:
        return DbJobState.from_db_name(str(name))
    except ValueError:
        raise CorruptedDbState(f"job {job_id}: unknown state {name!r} in the database") from None


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else bytes(value)  # type: ignore[call-overload]


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


class _Registration:
    """The statements of one checked submission, to run in a transaction."""

    def __init__(
        self,
        sql: Statements,
        rg: int,
        graph: bytes,
        entries: list[tuple[bytes, str | None]],
        start: bool,
        task_durable: bool,
        fence: Callable[[Cursor], DbError] | None = None,
        session: int = 0,
    ) -> None:
        self.sql = sql
        # With a session, each insert checks the fence itself; `fence` reads who holds it.
        self.session = session
        self.fence = fence
        self.rg = rg
        self.graph = graph
        self.entries = entries
        # A job submitted with start=True is inserted Running: one transaction instead of an
        # insert and a locked Ready -> Running update (recovery treats both rows alike).
        self.state = (DbJobState.RUNNING if start else DbJobState.READY).db_name
        self.task_durable = task_durable

    def _find_existing(self, inputs: bytes, key: str, cur: Cursor) -> int | None:
        cur.execute(self.sql.find_idempotent_job, (self.rg, key))
        row = cur.fetchone()
        if row is None:
            return None
        job_id = int(row[0])
        if _as_bytes(row[1]) != self.graph or _as_bytes(row[2]) != inputs:
            raise IdempotencyKeyReused(key, job_id)
        cur.execute(self.sql.is_task_durable_job, (job_id,))
        if (cur.fetchone() is not None) != self.task_durable:
            raise IdempotencyKeyReused(key, job_id)
        return job_id

    def _insert(
        self, cur: Cursor, inputs: bytes, key: str | None, fenced: bool
    ) -> tuple[int, bool]:
        """Insert one job row; `fenced`: check the fence in this statement (the first write of
        the transaction: its shared lock on the fence row covers the later ones)."""
        values = (self.rg, self.state, self.graph, inputs, key)
        if not (fenced and self.session):
            cur.execute(self.sql.insert_job, values)
        else:
            cur.execute(self.sql.insert_job_fenced, (*values, self.session))
            if cur.rowcount != 1:
                assert self.fence is not None
                raise self.fence(cur)
        return int(cur.lastrowid or 0), False

    def _mark_task_durable(self, cur: Cursor, results: list[tuple[int, bool]]) -> None:
        # One batched statement for the jobs inserted.
        inserted = [(job_id,) for job_id, deduplicated in results if not deduplicated]
        if self.task_durable and inserted:
            cur.executemany(self.sql.insert_task_durable_job, inserted)

    @property
    def single_statement(self) -> bool:
        """`insert_all` writes with one statement: one job, no task-durability row."""
        return len(self.entries) == 1 and not self.task_durable

    def insert_all(self, cur: Cursor, fenced: bool = True) -> list[tuple[int, bool]]:
        """`fenced`: the transaction has not checked the fence yet."""
        # Insert first: a key seen before makes the whole batch fail on the unique index, and
        # only then is each key looked up (the rare path).
        results = [
            self._insert(cur, inputs, key, fenced and i == 0)
            for i, (inputs, key) in enumerate(self.entries)
        ]
        self._mark_task_durable(cur, results)
        return results

    def insert_or_find_all(self, cur: Cursor) -> list[tuple[int, bool]]:
        results: list[tuple[int, bool]] = []
        fenced = True
        for inputs, key in self.entries:
            existing = None if key is None else self._find_existing(inputs, key, cur)
            if existing is not None:
                results.append((existing, True))
                continue
            results.append(self._insert(cur, inputs, key, fenced))
            fenced = False
        self._mark_task_durable(cur, results)
        return results


# -- the shared implementation --------------------------------------------------------------------


class SqlDatabase(abc.ABC):
    """Implements every :class:`~.protocol.Database` method on top of :meth:`_transaction`."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._sql = Statements(dialect)
        self._verifier = PasswordVerifier()
        self._session_id = 0
        self.deposed_by: int | None = None
        """The session that fenced one of our writes, once one did."""
        self._list_sql_cache: dict[tuple[int | None, bool, bool], str] = {}
        self._cache_lock = threading.Lock()

    # -- backend hooks --------------------------------------------------------------------------

    @abc.abstractmethod
    def _run_transaction(
        self,
        fn: Callable[[Cursor], T],
        *,
        write: bool,
        read_committed: bool = False,
        single: bool = False,
    ) -> T:
        """Run ``fn`` in one transaction and commit it (roll back if ``fn`` raises).
        ``single``: ``fn`` writes with one statement (anything after it only reads), which the
        backend may let commit itself, saving the COMMIT's round trip.

        Raises :class:`DuplicateKeyError` / :class:`ForeignKeyViolationError` for integrity errors,
        :class:`DbUnavailable` for transient failures and :class:`DbError` for other driver
        errors; exceptions raised by ``fn`` itself propagate unchanged.
        """

    def _transaction(
        self,
        fn: Callable[[Cursor], T],
        *,
        write: bool,
        read_committed: bool = False,
        fence: bool = True,
        single: bool = False,
    ) -> T:
        """`_run_transaction`, where a write of a session first checks, under a shared lock on
        the fence row, that the session still leads: a takeover (which moves the fence) waits
        for the writes under way, and every later write of the deposed session raises `Fenced`.
        Without a session (schema set-up, tools) there is nothing to fence. `single`: see
        `_run_transaction`; only with `fence` false (the statement checks the fence itself)."""
        session = self._session_id
        if not (write and fence and session):
            return self._run_transaction(
                fn, write=write, read_committed=read_committed, single=single and not fence
            )

        def fenced(cur: Cursor) -> T:
            refused = self._check_fence(cur, session)
            if refused is not None:
                raise refused
            return fn(cur)

        return self._run_transaction(fenced, write=True, read_committed=read_committed)

    def _check_fence(self, cur: Cursor, session: int) -> Fenced | None:
        """Read the fence (under its shared lock): the error to raise when `session` no longer
        holds it."""
        cur.execute(self._sql.check_fence)
        row = cur.fetchone()
        current = 0 if row is None else int(row[0])
        if current == session:
            return None
        self.deposed_by = current
        return Fenced(session, current)

    def _fenced_by(self, cur: Cursor) -> DbError:
        """The error of a write its own statement found fenced."""
        session = self._session_id
        return self._check_fence(cur, session) or DbError(
            f"a fenced write of session {session} changed nothing although the session holds "
            "the fence"
        )

    @abc.abstractmethod
    def _schema_ddl(self) -> Sequence[str]:
        """``CREATE TABLE IF NOT EXISTS`` / ``CREATE INDEX IF NOT EXISTS`` statements."""

    @abc.abstractmethod
    def _run_ddl(self, statements: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def _max_statement_bytes(self) -> int:
        """The largest statement (SQL and values) the database accepts."""

    @property
    def max_value_bytes(self) -> int:
        """The largest blob (or set of blobs) one statement may carry; bigger values are refused
        with `ValueTooLarge` before anything is sent."""
        return self._max_value_bytes

    def _check_value_size(self, what: str, size: int) -> None:
        if size > self._max_value_bytes:
            raise ValueTooLarge(what, size, self._max_value_bytes)

    # -- connect --------------------------------------------------------------------------------

    def _initialize(self, *, lead: bool) -> None:
        """Create the schema idempotently, check its version and, with `lead`, take the lease
        whoever holds it (a new session, as a storage restart did before failover; a storage
        service campaigns instead). Without a session, writes are not fenced: tools."""
        self._run_ddl(self._schema_ddl())
        sql = self._sql

        def migrate(cur: Cursor) -> None:
            cur.execute(sql.max_schema_version)
            row = cur.fetchone()
            version = None if row is None or row[0] is None else int(row[0])
            if version is not None and version > SCHEMA_VERSION:
                raise DbError(
                    f"the database schema is version {version}, newer than the version "
                    f"{SCHEMA_VERSION} this Orbweaver understands; upgrade Orbweaver"
                )
            if version is None or version < SCHEMA_VERSION:
                cur.execute(sql.insert_schema_version, (SCHEMA_VERSION,))
            cur.execute(sql.insert_lease_row)
            cur.execute(sql.insert_fence_row)

        self._transaction(migrate, write=True)
        self._max_value_bytes = max(0, self._max_statement_bytes() - STATEMENT_OVERHEAD)
        if lead:
            self._lead(f"direct:{uuid.uuid4().hex}", "", 0.0, force=True, new_session=True)

    @property
    def session_id(self) -> int:
        return self._session_id

    # -- leadership -----------------------------------------------------------------------------

    @staticmethod
    def _lease(row: Any) -> Lease:
        return Lease(int(row[0]), str(row[1]), str(row[2]), int(row[3]))

    def campaign(
        self,
        holder: str,
        address: str,
        lease_sec: float,
        *,
        new_session: bool = False,
        take_from: str | None = None,
    ) -> Lease:
        return self._lead(
            holder, address, lease_sec, force=False, new_session=new_session, take_from=take_from
        )

    def _lead(
        self,
        holder: str,
        address: str,
        lease_sec: float,
        *,
        force: bool,
        new_session: bool = False,
        take_from: str | None = None,
    ) -> Lease:
        sql = self._sql
        mine = self._session_id
        lease_ms = max(0, round(lease_sec * 1000))

        def tx(cur: Cursor) -> Lease:
            cur.execute(sql.lock_lease)
            row = cur.fetchone()
            if row is None:
                raise CorruptedDbState("the storage_lease row is missing")
            lease = self._lease(row)
            # Ours when we hold it, or when our own earlier attempt committed unseen (a lost
            # reply): the holder name is unique to this process.
            ours = lease.session_id and (lease.session_id == mine or lease.holder == holder)
            if ours and not new_session:
                cur.execute(sql.extend_lease, (lease_ms,))
                return Lease(lease.session_id, holder, lease.address, lease_ms)
            if lease.live and not force and not ours and lease.holder != take_from:
                return lease
            cur.execute(sql.insert_session)
            session = int(cur.lastrowid or 0)
            if session <= 0:
                raise CorruptedDbState("the database returned no session id")
            # Waits for the old session's writes under way (they share the fence row).
            cur.execute(sql.move_fence, (session,))
            cur.execute(sql.take_lease, (session, holder, address, lease_ms))
            return Lease(session, holder, address, lease_ms)

        lease = self._transaction(tx, write=True, fence=False)
        if lease.holder == holder:
            self._session_id = lease.session_id
            self.deposed_by = None
        return lease

    def renew_lease(self, lease_sec: float) -> bool:
        sql = self._sql
        mine = self._session_id
        lease_ms = max(0, round(lease_sec * 1000))

        def tx(cur: Cursor) -> bool:
            cur.execute(sql.lock_lease)
            row = cur.fetchone()
            if row is None or int(row[0]) != mine:
                return False
            cur.execute(sql.extend_lease, (lease_ms,))
            return True

        return bool(mine) and self._transaction(tx, write=True, fence=False)

    def release_lease(self) -> None:
        if self._session_id:
            session = self._session_id
            self._transaction(
                lambda cur: cur.execute(self._sql.release_lease, (session,)),
                write=True,
                fence=False,
            )

    def current_lease(self) -> Lease:
        def tx(cur: Cursor) -> Lease:
            cur.execute(self._sql.select_lease)
            row = cur.fetchone()
            if row is None:
                raise CorruptedDbState("the storage_lease row is missing")
            return self._lease(row)

        return self._transaction(tx, write=False)

    def __enter__(self) -> SqlDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------------------

    def register_job(
        self,
        resource_group_id: int,
        compressed_graph: bytes,
        compressed_inputs: bytes,
        idempotency_key: str | None = None,
        *,
        start: bool = False,
        task_durable: bool = False,
    ) -> tuple[int, bool]:
        return self.register_jobs(
            resource_group_id,
            compressed_graph,
            [(compressed_inputs, idempotency_key)],
            start=start,
            task_durable=task_durable,
        )[0]

    def register_jobs(
        self,
        resource_group_id: int,
        compressed_graph: bytes,
        jobs: Sequence[tuple[bytes, str | None]],
        *,
        start: bool = False,
        task_durable: bool = False,
    ) -> list[tuple[int, bool]]:
        reg = self._registration(resource_group_id, compressed_graph, jobs, start, task_durable)
        try:
            try:
                # The inserts check the fence themselves.
                return self._transaction(reg.insert_all, write=True, fence=False)
            except DuplicateKeyError:
                pass
            # Some keys exist: look each one up, still in one transaction (all or nothing). A
            # concurrent submission with the same key can win a race in between: try again.
            for _attempt in range(5):
                try:
                    return self._transaction(reg.insert_or_find_all, write=True, fence=False)
                except DuplicateKeyError:
                    continue
            raise DbUnavailable("idempotency keys kept colliding with concurrent submissions")
        except ForeignKeyViolationError:
            raise ResourceGroupNotFound(resource_group_id=reg.rg) from None

    def register_job_groups(
        self, groups: Sequence[JobGroup]
    ) -> list[list[tuple[int, bool]] | Exception]:
        """Group commit: several submissions (each as `register_jobs` takes it) in one
        transaction, so they share its round trips and its log flush. Each group gets its own
        result or error, exactly as `register_jobs` would give it: a group refused by a check
        is left out, and when the shared transaction fails on an idempotency key or a missing
        resource group, each group is registered on its own. A transient failure of the shared
        transaction is raised (to every caller)."""
        results: list[list[tuple[int, bool]] | Exception] = []
        ready: list[tuple[int, _Registration]] = []
        for index, g in enumerate(groups):
            try:
                reg = self._registration(
                    g.resource_group_id, g.compressed_graph, g.jobs, g.start, g.task_durable
                )
            except (DbError, ValueError, TypeError) as exc:
                results.append(exc)
                continue
            results.append([])
            ready.append((index, reg))
        if not ready:
            return results

        def insert_all(cur: Cursor) -> list[list[tuple[int, bool]]]:
            # The first insert checks the fence for the whole transaction.
            return [reg.insert_all(cur, fenced=i == 0) for i, (_, reg) in enumerate(ready)]

        # A lone job is one statement (the insert checks the fence itself): it commits alone.
        single = len(ready) == 1 and ready[0][1].single_statement
        try:
            inserted = self._transaction(insert_all, write=True, fence=False, single=single)
        except (DuplicateKeyError, ForeignKeyViolationError):
            for index, _ in ready:
                g = groups[index]
                try:
                    results[index] = self.register_jobs(
                        g.resource_group_id,
                        g.compressed_graph,
                        g.jobs,
                        start=g.start,
                        task_durable=g.task_durable,
                    )
                except (DbError, ValueError, TypeError) as exc:
                    results[index] = exc
            return results
        for (index, _), rows in zip(ready, inserted, strict=True):
            results[index] = rows
        return results

    def _registration(
        self,
        resource_group_id: int,
        compressed_graph: bytes,
        jobs: Sequence[tuple[bytes, str | None]],
        start: bool,
        task_durable: bool,
    ) -> _Registration:
        rg = _valid_id(resource_group_id, "resource_group_id")
        graph = _check_bytes(compressed_graph, "compressed_graph")
        max_key = MAX_IDEMPOTENCY_KEY_LEN
        entries = [
            (
                _check_bytes(inputs, "compressed_inputs"),
                None if key is None else _check_text(key, "idempotency_key", max_key),
            )
            for inputs, key in jobs
        ]
        if not _in_range(rg):
            raise ResourceGroupNotFound(resource_group_id=rg)
        for index, (inputs, _) in enumerate(entries):
            what = "the submission (compressed graph and inputs)"
            self._check_value_size(
                what if len(entries) == 1 else f"job {index}: {what}", len(graph) + len(inputs)
            )
        return _Registration(
            self._sql,
            rg,
            graph,
            entries,
            start,
            task_durable,
            fence=self._fenced_by,
            session=self._session_id,
        )

    def _lock_job(self, cur: Cursor, job_id: int) -> DbJobState:
        cur.execute(self._sql.lock_job, (job_id,))
        row = cur.fetchone()
        if row is None:
            raise JobNotFound(job_id=job_id)
        return _db_state(row[0], job_id)

    def _transition(
        self,
        job_id: int,
        target_for: Callable[[DbJobState], DbJobState],
        *,
        check: Callable[[DbJobState, DbJobState], None] | None = None,
        outputs: bytes | None = None,
        error: str | None = None,
    ) -> DbJobState:
        """One locked, validated state change (the shape of every job state change)."""
        jid = _valid_id(job_id, "job_id")
        if not _in_range(jid):
            raise JobNotFound(job_id=jid)

        def default_check(current: DbJobState, target: DbJobState) -> None:
            if not is_valid_transition(current, target):
                raise InvalidJobStateTransition(current, target, job_id=jid)

        validate = check or default_check

        def tx(cur: Cursor) -> DbJobState:
            current = self._lock_job(cur, jid)
            target = target_for(current)
            validate(current, target)
            params: list[Any] = [target.db_name]
            if outputs is not None:
                params.append(outputs)
            if error is not None:
                params.append(error)
            params.append(jid)
            cur.execute(
                self._sql.update_job(
                    terminal=target.is_terminal,
                    outputs=outputs is not None,
                    error=error is not None,
                ),
                params,
            )
            return target

        return self._transaction(tx, write=True)

    def start_job(self, job_id: int) -> None:
        def check(current: DbJobState, target: DbJobState) -> None:
            if current != DbJobState.READY:
                raise UnexpectedJobState(current, [DbJobState.READY], job_id=job_id)

        self._transition(job_id, lambda _: DbJobState.RUNNING, check=check)

    def commit_outputs(self, job_id: int, serialized_outputs: bytes, has_commit: bool) -> int:
        outputs = _check_bytes(serialized_outputs, "serialized_outputs")
        self._check_value_size(f"job {job_id}: outputs", len(outputs))
        target = DbJobState.COMMIT_READY if has_commit else DbJobState.SUCCEEDED
        return self._transition(job_id, lambda _: target, outputs=outputs)

    def commit_outputs_many(self, jobs: Sequence[tuple[int, bytes, bool]]) -> list[int]:
        checked = []
        for job_id, serialized_outputs, has_commit in jobs:
            jid = _valid_id(job_id, "job_id")
            if not _in_range(jid):
                raise JobNotFound(job_id=jid)
            self._check_value_size(f"job {jid}: outputs", len(serialized_outputs))
            target = DbJobState.COMMIT_READY if has_commit else DbJobState.SUCCEEDED
            checked.append((jid, _check_bytes(serialized_outputs, "serialized_outputs"), target))
        if len({jid for jid, _, _ in checked}) != len(checked):
            raise ValueError("commit_outputs_many: a job appears twice")
        sql = self._sql
        session = self._session_id
        fence = (session,) if session else ()
        groups: dict[DbJobState, list[tuple[Any, ...]]] = {}
        # Job ids in order, so that two such transactions lock rows in the same order.
        for jid, outputs, target in sorted(checked):
            sources = _sources_of(target)
            groups.setdefault(target, []).append((target.db_name, outputs, jid, *sources, *fence))

        def tx(cur: Cursor) -> list[int]:
            # One statement per target (batched), which checks the job's state and the fence
            # itself: no round trips to read them first. Only when it changed fewer rows than
            # asked is the reason looked up (and raised, rolling everything back).
            changed = 0
            for target, params in groups.items():
                statement = sql.complete_job(
                    terminal=target.is_terminal,
                    sources=len(_sources_of(target)),
                    fenced=bool(session),
                )
                # A batched UPDATE may travel as one packet: keep each under the limit.
                for batch in _by_size(params, self._max_value_bytes, blob=1):
                    cur.executemany(statement, batch)
                    changed += cur.rowcount
            if changed != len(checked):
                raise _Unchanged  # rolled back; the reason is looked up below
            return [int(target) for _, _, target in checked]

        if not checked:
            return []
        try:
            # One job: one UPDATE (with the fence in it), which commits alone.
            return self._transaction(tx, write=True, fence=False, single=len(checked) == 1)
        except _Unchanged:
            pass
        raise self._run_transaction(lambda cur: self._completion_refused(cur, checked), write=False)

    def _completion_refused(
        self, cur: Cursor, checked: Sequence[tuple[int, bytes, DbJobState]]
    ) -> DbError | JobNotFound:
        """Why `commit_outputs_many` changed fewer jobs than asked (read after its rollback):
        the session was fenced, a job is missing or not in a state it may complete from."""
        session = self._session_id
        if session:
            refused = self._check_fence(cur, session)
            if refused is not None:
                return refused
        states: dict[int, DbJobState] = {}
        ids = [jid for jid, _, _ in checked]
        for start in range(0, len(ids), _LOCK_CHUNK):
            chunk = ids[start : start + _LOCK_CHUNK]
            cur.execute(
                self._sql.lock_jobs_prefix + _placeholders(len(chunk)) + self._sql.lock_jobs_suffix,
                chunk,
            )
            for row in cur.fetchall():
                states[int(row[0])] = _db_state(row[1], int(row[0]))
        for jid, _, target in checked:
            current = states.get(jid)
            if current is None:
                return JobNotFound(job_id=jid)
            if not is_valid_transition(current, target):
                return InvalidJobStateTransition(current, target, job_id=jid)
        return DbError(
            f"completing {len(checked)} jobs changed fewer rows, yet each is where it may "
            "complete from"
        )

    def set_state(self, job_id: int, state: int) -> None:
        target = _state_arg(state)
        if target == DbJobState.FAILED:
            raise ValueError("use fail_job() to fail a job: a Failed job needs an error message")
        self._transition(job_id, lambda _: target)

    def cancel_job(self, job_id: int, has_cleanup: bool) -> int:
        cleanup_from = (DbJobState.RUNNING, DbJobState.COMMIT_READY, DbJobState.CLEANUP_READY)

        def target_for(current: DbJobState) -> DbJobState:
            # From CleanupReady with a cleanup task the target stays CleanupReady, which the
            # table rejects: a repeated cancel must not skip the pending cleanup task.
            if has_cleanup and current in cleanup_from:
                return DbJobState.CLEANUP_READY
            return DbJobState.CANCELLED

        return self._transition(job_id, target_for)

    def fail_job(self, job_id: int, message: str) -> None:
        msg = _check_text(message, "message", 2**31, allow_empty=True)
        self._check_value_size(f"job {job_id}: error message", len(msg.encode()))
        self._transition(job_id, lambda _: DbJobState.FAILED, error=msg)

    def fail_unrecoverable(self, job_id: int, reason: str) -> None:
        msg = _check_text(reason, "reason", 2**31, allow_empty=True)
        self._check_value_size(f"job {job_id}: error message", len(msg.encode()))

        def check(current: DbJobState, target: DbJobState) -> None:
            if current.is_terminal:
                raise InvalidJobStateTransition(current, target, job_id=job_id)

        self._transition(job_id, lambda _: DbJobState.FAILED, check=check, error=msg)

    def _read_job(self, job_id: int, sql: str) -> tuple[Any, ...]:
        jid = _valid_id(job_id, "job_id")
        if not _in_range(jid):
            raise JobNotFound(job_id=jid)

        def tx(cur: Cursor) -> tuple[Any, ...] | None:
            cur.execute(sql, (jid,))
            row = cur.fetchone()
            return None if row is None else tuple(row)

        row = self._transaction(tx, write=False)
        if row is None:
            raise JobNotFound(job_id=jid)
        return row

    def get_state(self, job_id: int) -> DbJobState:
        (state,) = self._read_job(job_id, self._sql.get_state)
        return _db_state(state, job_id)

    def get_outputs(self, job_id: int) -> bytes:
        state_name, outputs = self._read_job(job_id, self._sql.get_outputs)
        state = _db_state(state_name, job_id)
        if state != DbJobState.SUCCEEDED:
            raise UnexpectedJobState(state, [DbJobState.SUCCEEDED], job_id=job_id)
        if outputs is None:
            raise CorruptedDbState(f"job {job_id} is Succeeded but has no stored outputs")
        return _as_bytes(outputs)

    def get_error(self, job_id: int) -> str:
        state_name, message = self._read_job(job_id, self._sql.get_error)
        state = _db_state(state_name, job_id)
        if state != DbJobState.FAILED:
            raise UnexpectedJobState(state, [DbJobState.FAILED], job_id=job_id)
        if message is None:
            raise CorruptedDbState(f"job {job_id} is Failed but has no error message")
        return str(message)

    @staticmethod
    def _job_row(row: Sequence[Any]) -> JobRow:
        job_id = int(row[0])
        return JobRow(
            id=job_id,
            resource_group_id=int(row[1]),
            state=_db_state(row[2], job_id),
            created_at_ms=int(row[3]),
            ended_at_ms=_opt_int(row[4]),
            error_message=None if row[5] is None else str(row[5]),
        )

    def get_job(self, job_id: int) -> JobRow:
        return self._job_row(self._read_job(job_id, self._sql.get_job))

    def get_job_graph(self, job_id: int) -> bytes:
        (graph,) = self._read_job(job_id, self._sql.get_job_graph)
        return _as_bytes(graph)

    def list_jobs(
        self,
        states: Sequence[int] | None = None,
        limit: int = 100,
        before_job_id: int | None = None,
        *,
        resource_group_id: int | None = None,
    ) -> list[JobRow]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative int, got {limit!r}")
        state_names = None if states is None else sorted({_state_arg(s).db_name for s in states})
        if limit == 0 or state_names == []:
            return []
        params: list[Any] = list(state_names or [])
        if before_job_id is not None:
            before = _valid_id(before_job_id, "before_job_id")
            if before <= 1:
                return []
            params.append(min(before, MAX_ID))
        if resource_group_id is not None:
            rg = _valid_id(resource_group_id, "resource_group_id")
            if not _in_range(rg):
                return []
            params.append(rg)
        params.append(limit)
        shape = (
            None if state_names is None else len(state_names),
            before_job_id is not None,
            resource_group_id is not None,
        )
        with self._cache_lock:
            sql = self._list_sql_cache.get(shape)
            if sql is None:
                sql = Statements.list_jobs(self._sql.job_columns, *shape)
                self._list_sql_cache[shape] = sql

        def tx(cur: Cursor) -> list[Any]:
            cur.execute(sql, params)
            return list(cur.fetchall())

        return [self._job_row(row) for row in self._transaction(tx, write=False)]

    def count_jobs_by_state(self, resource_group_id: int | None = None) -> dict[int, int]:
        rg = None
        if resource_group_id is not None:
            rg = _valid_id(resource_group_id, "resource_group_id")

        def tx(cur: Cursor) -> list[Any]:
            if rg is None:
                cur.execute(self._sql.count_by_state)
            else:
                cur.execute(self._sql.count_group_by_state, (rg,))
            return list(cur.fetchall())

        counts: dict[int, int] = dict.fromkeys(DbJobState, 0)
        for name, count in self._transaction(tx, write=False):
            counts[_db_state(name, 0)] = int(count)
        return counts

    def recoverable_jobs(self, after_job_id: int, limit: int) -> list[RecoverableJobRow]:
        after = _valid_id(after_job_id, "after_job_id")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        if after >= MAX_ID:
            return []
        after = max(after, 0)
        params: list[Any] = []
        for _ in RECOVERABLE_STATES:
            params += [after, limit]
        params.append(limit)

        def tx(cur: Cursor) -> list[Any]:
            cur.execute(self._sql.recoverable_jobs, params)
            return list(cur.fetchall())

        rows = []
        for row in self._transaction(tx, write=False):
            job_id = int(row[0])
            rows.append(
                RecoverableJobRow(
                    id=job_id,
                    resource_group_id=int(row[1]),
                    state=_db_state(row[2], job_id),
                    compressed_graph=_as_bytes(row[3]),
                    compressed_inputs=_as_bytes(row[4]),
                    serialized_outputs=None if row[5] is None else _as_bytes(row[5]),
                )
            )
        return rows

    def delete_expired_terminated_jobs(self, retention_sec: float) -> int:
        if isinstance(retention_sec, bool) or not isinstance(retention_sec, (int, float)):
            raise TypeError("retention_sec must be a number")
        if retention_sec < 0:
            raise ValueError(f"retention_sec must be >= 0, got {retention_sec}")
        cutoff = self._dialect.cutoff_param(retention_sec)
        sql = self._sql
        deleted = 0
        after = 0
        while True:

            def batch(cur: Cursor, after: int = after) -> tuple[list[int], int]:
                # Non-locking scan, then a delete that re-checks the terminal state.
                cur.execute(sql.expired_job_ids, (cutoff, after))
                ids = [int(r[0]) for r in cur.fetchall()]
                if not ids:
                    return ids, 0
                cur.execute(
                    sql.delete_jobs_prefix + _placeholders(len(ids)) + sql.delete_jobs_suffix,
                    ids,
                )
                return ids, max(cur.rowcount, 0)

            ids, n = self._transaction(batch, write=True)
            deleted += n
            if len(ids) < BATCH_SIZE:
                return deleted
            after = ids[-1]

    # -- task-level durability ------------------------------------------------------------------

    def save_task_outputs(
        self, outputs: Sequence[tuple[int, int, bytes]], ended_jobs: Sequence[int] = ()
    ) -> int:
        sql = self._sql
        rows = sorted(
            (
                _valid_id(job_id, "job_id"),
                _valid_id(task_index, "task_index"),
                _check_bytes(data, "serialized_outputs"),
            )
            for job_id, task_index, data in outputs
        )
        for job_id, task_index, data in rows:
            if task_index < 0:
                raise ValueError(f"job {job_id}: task index {task_index} is negative")
            self._check_value_size(f"job {job_id} task {task_index}: outputs", len(data))
        ended = sorted({_valid_id(job_id, "job_id") for job_id in ended_jobs})

        def tx(cur: Cursor) -> int:
            # Only jobs still Running keep task outputs (a plain read, no lock); rows go in job
            # order, so the foreign-key checks lock parent rows in the order transitions do.
            jobs = sorted({job_id for job_id, _, _ in rows} - set(ended))
            running: set[int] = set()
            for start in range(0, len(jobs), _LOCK_CHUNK):
                chunk = jobs[start : start + _LOCK_CHUNK]
                cur.execute(sql.running_jobs_prefix + _placeholders(len(chunk)) + ")", chunk)
                running.update(int(r[0]) for r in cur.fetchall())
            kept = [row for row in rows if row[0] in running]
            for batch in _by_size(kept, self._max_value_bytes, blob=2):
                cur.executemany(sql.replace_task_output, batch)
            for start in range(0, len(ended), _LOCK_CHUNK):
                chunk = ended[start : start + _LOCK_CHUNK]
                cur.execute(sql.delete_task_outputs_prefix + _placeholders(len(chunk)) + ")", chunk)
            return len(kept)

        if not rows and not ended:
            return 0
        return self._transaction(tx, write=True)

    def task_durable_jobs(self, job_ids: Sequence[int]) -> set[int]:
        ids = sorted({_valid_id(job_id, "job_id") for job_id in job_ids})
        sql = self._sql

        def tx(cur: Cursor) -> set[int]:
            found: set[int] = set()
            for start in range(0, len(ids), _LOCK_CHUNK):
                chunk = ids[start : start + _LOCK_CHUNK]
                cur.execute(sql.task_durable_jobs_prefix + _placeholders(len(chunk)) + ")", chunk)
                found.update(int(r[0]) for r in cur.fetchall())
            return found

        return self._transaction(tx, write=False) if ids else set()

    def task_outputs(self, job_id: int) -> list[tuple[int, bytes]]:
        jid = _valid_id(job_id, "job_id")

        def tx(cur: Cursor) -> list[tuple[int, bytes]]:
            cur.execute(self._sql.task_outputs, (jid,))
            return [(int(r[0]), _as_bytes(r[1])) for r in cur.fetchall()]

        return self._transaction(tx, write=False)

    # -- resource groups ------------------------------------------------------------------------

    def add_resource_group(self, external_id: str, password: bytes) -> int:
        name = _check_text(external_id, "external_id", MAX_EXTERNAL_ID_LEN)
        record = hash_password(_check_bytes(password, "password"))

        def tx(cur: Cursor) -> int:
            cur.execute(self._sql.insert_resource_group, (name, record))
            return int(cur.lastrowid or 0)

        try:
            return self._transaction(tx, write=True)
        except DuplicateKeyError:
            raise ResourceGroupAlreadyExists(name) from None

    def list_resource_groups(self, after_id: int = 0, limit: int = 1000) -> list[ResourceGroupRow]:
        after = _valid_id(after_id, "after_id") if after_id else 0
        count = max(1, min(int(limit), 10_000))

        def tx(cur: Cursor) -> list[ResourceGroupRow]:
            cur.execute(self._sql.list_resource_groups, (after, count))
            return [ResourceGroupRow(int(r[0]), str(r[1]), int(r[2])) for r in cur.fetchall()]

        return self._transaction(tx, write=False)

    def verify_resource_group(
        self,
        password: bytes,
        *,
        resource_group_id: int | None = None,
        external_id: str | None = None,
    ) -> tuple[int, str]:
        pw = _check_bytes(password, "password")
        if (resource_group_id is None) == (external_id is None):
            raise ValueError("give exactly one of resource_group_id and external_id")
        if resource_group_id is not None:
            rg = _valid_id(resource_group_id, "resource_group_id")
            if not _in_range(rg):
                raise ResourceGroupNotFound(resource_group_id=rg)
            sql, key = self._sql.resource_group_by_id, rg
        else:
            name = _check_text(external_id, "external_id", 10**6, allow_empty=True)
            sql, key = self._sql.resource_group_by_external_id, name  # type: ignore[assignment]

        def tx(cur: Cursor) -> tuple[Any, ...] | None:
            cur.execute(sql, (key,))
            row = cur.fetchone()
            return None if row is None else tuple(row)

        row = self._transaction(tx, write=False)
        if row is None:
            raise ResourceGroupNotFound(
                resource_group_id=resource_group_id, external_id=external_id
            )
        rg_id, rg_name, record = int(row[0]), str(row[1]), _as_bytes(row[2])
        try:
            ok = self._verifier.verify(pw, record)
        except ValueError as e:
            raise CorruptedDbState(f"resource group {rg_id}: {e}") from None
        if not ok:
            raise InvalidPassword(rg_id)
        return rg_id, rg_name

    # -- execution managers ---------------------------------------------------------------------

    def register_execution_manager(self, ip_address: str) -> int:
        ip = _check_text(ip_address, "ip_address", MAX_IP_ADDRESS_LEN)

        def tx(cur: Cursor) -> int:
            cur.execute(self._sql.insert_em, (ip,))
            return int(cur.lastrowid or 0)

        return self._transaction(tx, write=True)

    def update_execution_manager_heartbeat(self, execution_manager_id: int) -> None:
        em = _valid_id(execution_manager_id, "execution_manager_id")
        if not _in_range(em):
            raise IllegalExecutionManagerId(em)

        def tx(cur: Cursor) -> None:
            cur.execute(self._sql.lock_em, (em,))
            row = cur.fetchone()
            if row is None:
                raise IllegalExecutionManagerId(em)
            if row[0] != "Alive":
                raise ExecutionManagerAlreadyDead(em)
            cur.execute(self._sql.heartbeat_em, (em,))

        self._transaction(tx, write=True)

    def is_execution_manager_alive(self, execution_manager_id: int) -> bool:
        em = _valid_id(execution_manager_id, "execution_manager_id")
        if not _in_range(em):
            raise IllegalExecutionManagerId(em)

        def tx(cur: Cursor) -> Any:
            cur.execute(self._sql.get_em_state, (em,))
            return cur.fetchone()

        row = self._transaction(tx, write=False)
        if row is None:
            raise IllegalExecutionManagerId(em)
        return bool(row[0] == "Alive")

    def alive_execution_managers(self) -> list[ExecutionManagerRow]:
        def tx(cur: Cursor) -> list[Any]:
            cur.execute(self._sql.alive_ems)
            return list(cur.fetchall())

        return [
            ExecutionManagerRow(int(r[0]), str(r[1]), int(r[2]))
            for r in self._transaction(tx, write=False)
        ]

    def get_dead_execution_managers(
        self, stale_cutoff_sec: float, *, deadline: float | None = None
    ) -> list[int]:
        if isinstance(stale_cutoff_sec, bool) or not isinstance(stale_cutoff_sec, (int, float)):
            raise TypeError("stale_cutoff_sec must be a number")
        if stale_cutoff_sec < 0:
            raise ValueError(f"stale_cutoff_sec must be >= 0, got {stale_cutoff_sec}")
        cutoff = self._dialect.cutoff_param(stale_cutoff_sec)
        sql = self._sql

        def tx(cur: Cursor) -> list[int]:
            # Scan without locks (secondary index), then lock by primary key only, re-checking
            # the predicate: locking through the liveness index deadlocked against heartbeats.
            cur.execute(sql.stale_em_candidates, (cutoff,))
            candidates = [int(r[0]) for r in cur.fetchall()]
            dead: list[int] = []
            if deadline is not None and time.monotonic() > deadline:
                return dead  # the database stalled: heartbeats were held up too
            for i in range(0, len(candidates), BATCH_SIZE):
                chunk = candidates[i : i + BATCH_SIZE]
                marks = _placeholders(len(chunk))
                cur.execute(
                    sql.lock_stale_ems_prefix + marks + sql.lock_stale_ems_suffix,
                    [*chunk, cutoff],
                )
                locked = [int(r[0]) for r in cur.fetchall()]
                if locked:
                    cur.execute(sql.mark_ems_dead_prefix + _placeholders(len(locked)) + ")", locked)
                    dead.extend(locked)
            return dead

        return self._transaction(tx, write=True, read_committed=True)

    # -- schedulers -----------------------------------------------------------------------------

    def register_scheduler(self, host: str, port: int) -> int:
        h = _check_text(host, "host", MAX_HOST_LEN)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an int in [1, 65535], got {port!r}")

        def tx(cur: Cursor) -> int:
            cur.execute(self._sql.delete_schedulers)
            cur.execute(self._sql.insert_scheduler, (h, port))
            return int(cur.lastrowid or 0)

        return self._transaction(tx, write=True)

    def get_schedulers(self) -> list[SchedulerRow]:
        def tx(cur: Cursor) -> list[Any]:
            cur.execute(self._sql.get_schedulers)
            return list(cur.fetchall())

        rows = []
        for sid, host, port in self._transaction(tx, write=False):
            if not host:
                raise CorruptedDbState(f"scheduler {sid} has an empty host")
            rows.append(SchedulerRow(id=int(sid), host=str(host), port=int(port)))
        return rows

    def is_scheduler_registered(self, scheduler_id: int) -> bool:
        sid = _valid_id(scheduler_id, "scheduler_id")
        if not _in_range(sid):
            return False

        def tx(cur: Cursor) -> bool:
            cur.execute(self._sql.scheduler_exists, (sid,))
            return cur.fetchone() is not None

        return self._transaction(tx, write=False)
