"""Orbweaver's persistence layer: one :class:`Database` protocol, SQLite and MariaDB backends.

>>> db = open_database("sqlite:///:memory:")
>>> rg = db.add_resource_group("team-a", b"secret")
>>> job_id, _ = db.register_job(rg, b"graph", b"inputs", None)
>>> db.get_state(job_id).db_name
'Ready'
"""

from __future__ import annotations

from typing import Any

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
)
from .protocol import (
    Database,
    ExecutionManagerRow,
    JobGroup,
    JobRow,
    Lease,
    RecoverableJobRow,
    ResourceGroupRow,
    SchedulerRow,
)
from .states import RECOVERABLE_STATES, TERMINAL_STATES, DbJobState, is_valid_transition
from .url import MariaDbConfig, SqliteConfig, parse_url, redact_url

__all__ = [
    "RECOVERABLE_STATES",
    "TERMINAL_STATES",
    "CorruptedDbState",
    "Database",
    "DbError",
    "DbJobState",
    "DbUnavailable",
    "ExecutionManagerAlreadyDead",
    "ExecutionManagerRow",
    "Fenced",
    "IdempotencyKeyReused",
    "IllegalExecutionManagerId",
    "InvalidJobStateTransition",
    "InvalidPassword",
    "JobGroup",
    "JobNotFound",
    "JobRow",
    "Lease",
    "RecoverableJobRow",
    "ResourceGroupAlreadyExists",
    "ResourceGroupNotFound",
    "ResourceGroupRow",
    "SchedulerRow",
    "UnexpectedJobState",
    "is_valid_transition",
    "open_database",
    "parse_url",
    "redact_url",
]

_SQLITE_OPTIONS = frozenset({"busy_timeout_ms", "clock", "synchronous", "lead"})
_MARIADB_OPTIONS = frozenset(
    {"pool_size", "connect_timeout", "acquire_timeout", "max_retries", "lock_wait_timeout", "lead"}
)


def open_database(url: str, **options: Any) -> Database:
    """Connect to the database at ``url`` and create the schema if needed. No storage session
    is opened (a storage service campaigns for one: `Database.campaign`); ``lead=True`` takes
    the lease whoever holds it, a new session, as a storage restart did before failover.

    URLs: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite:///:memory:``,
    ``mariadb://user:password@host:port/database`` or ``mysql://...`` (query parameters
    ``unix_socket=PATH``, ``pool_size=N``, ``connect_timeout=S``; a missing user / password comes
    from ``ORBWEAVER_DB_USER`` / ``ORBWEAVER_DB_PASSWORD``).

    Options: both take ``lead``; SQLite takes ``busy_timeout_ms``, ``synchronous`` and ``clock``;
    MariaDB takes ``pool_size``, ``connect_timeout``, ``acquire_timeout``, ``max_retries`` and
    ``lock_wait_timeout``. A malformed URL or an unknown option raises ``ValueError``.
    """
    config = parse_url(url)
    if isinstance(config, SqliteConfig):
        _check_options(options, _SQLITE_OPTIONS, "sqlite")
        from .sqlite import SqliteDatabase

        return SqliteDatabase(config.path, **options)
    assert isinstance(config, MariaDbConfig)
    _check_options(options, _MARIADB_OPTIONS, "mariadb")
    from .mariadb import MariaDbDatabase

    return MariaDbDatabase(config, **options)


def _check_options(options: dict[str, Any], allowed: frozenset[str], backend: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown {backend} database option(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
