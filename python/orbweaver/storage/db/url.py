"""Parsing of database URLs (``sqlite:///...``, ``mariadb://...``, ``mysql://...``).

A URL with a password is a secret: it must not sit on a command line, where every local user
reads it (``ps``, ``/proc/PID/cmdline``). The services therefore also take it from the
``ORBWEAVER_DB`` environment variable or from a file (``--db-file``, read by
:func:`read_url_file`), and a password missing from the URL comes from ``ORBWEAVER_DB_PASSWORD``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "ENV_DB_PASSWORD",
    "ENV_DB_URL",
    "ENV_DB_USER",
    "MariaDbConfig",
    "SqliteConfig",
    "has_password",
    "parse_url",
    "read_url_file",
    "redact_url",
]

ENV_DB_URL = "ORBWEAVER_DB"
ENV_DB_USER = "ORBWEAVER_DB_USER"
ENV_DB_PASSWORD = "ORBWEAVER_DB_PASSWORD"

DEFAULT_POOL_SIZE = 8
MAX_POOL_SIZE = 64
DEFAULT_MARIADB_PORT = 3306

_DB_NAME_RE = re.compile(r"^[A-Za-z0-9_$]{1,64}$")


@dataclass(frozen=True, slots=True)
class SqliteConfig:
    """``path`` is a filesystem path or ``":memory:"``."""

    path: str


@dataclass(frozen=True, slots=True)
class MariaDbConfig:
    host: str
    port: int
    database: str
    user: str
    password: str | None = field(default=None, repr=False)
    unix_socket: str | None = None
    pool_size: int = DEFAULT_POOL_SIZE
    connect_timeout: int = 10


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs).

    Robust to passwords that were not percent-encoded: everything between the first ``:`` after
    the user and the last ``@`` is hidden.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, after = rest.rpartition("@")
    if ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{after}"


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (``scheme://user:password@...``)."""
    return redact_url(url) != url


def read_url_file(path: str) -> str:
    """The database URL stored in the file ``path``: its one non-empty line, surrounding
    whitespace removed. Errors name the file, never its content."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the database URL file {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the database URL file {path!r} is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"the database URL file {path!r} is empty")
    if len(lines) > 1:
        raise ValueError(
            f"the database URL file {path!r} has {len(lines)} lines; it must hold one URL"
        )
    return lines[0]


def parse_url(url: str, env: Mapping[str, str] | None = None) -> SqliteConfig | MariaDbConfig:
    """Parse a database URL; every problem raises ``ValueError`` naming it (never the password).

    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``
    * ``mariadb://user:password@host:port/database?unix_socket=/path&pool_size=N`` (``mysql://``
      is accepted too). A missing user or password is taken from ``ORBWEAVER_DB_USER`` /
      ``ORBWEAVER_DB_PASSWORD``. User and password are percent-decoded.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("database URL is empty")
    env = os.environ if env is None else env
    shown = redact_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"database URL {shown!r} has no scheme; expected sqlite:///PATH or "
            "mariadb://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    scheme = scheme.lower()
    if scheme == "sqlite":
        return _parse_sqlite(rest, shown)
    if scheme in ("mariadb", "mysql"):
        return _parse_mariadb(url, shown, env)
    raise ValueError(
        f"database URL {shown!r}: unsupported scheme {scheme!r} (use sqlite, mariadb or mysql)"
    )


def _parse_sqlite(rest: str, shown: str) -> SqliteConfig:
    # rest is what follows "sqlite://": "/relative.db", "//abs/path.db", "/:memory:".
    if not rest.startswith("/"):
        raise ValueError(
            f"database URL {shown!r}: an SQLite URL needs three slashes, sqlite:///PATH "
            "(four for an absolute path: sqlite:////abs/path.db)"
        )
    path = rest[1:]
    if "?" in path:
        raise ValueError(f"database URL {shown!r}: SQLite URLs take no query parameters")
    path = unquote(path)
    if not path:
        raise ValueError(f"database URL {shown!r}: missing SQLite file path")
    if path.endswith("/"):
        raise ValueError(f"database URL {shown!r}: SQLite path {path!r} is a directory")
    return SqliteConfig(path=path)


def _parse_mariadb(url: str, shown: str, env: Mapping[str, str]) -> MariaDbConfig:
    try:
        parts = urlsplit(url)
        port_in_url = parts.port
    except ValueError:
        # Not echoing urlsplit's message: with an unencoded password it can quote part of it.
        raise ValueError(
            f"database URL {shown!r}: invalid host or port (percent-encode special characters "
            "in the user and password)"
        ) from None
    if parts.fragment:
        raise ValueError(f"database URL {shown!r}: unexpected '#' fragment")

    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"database URL {shown!r}: malformed query string") from None
    for key, value in pairs:
        if key in params:
            raise ValueError(f"database URL {shown!r}: query parameter {key!r} given twice")
        params[key] = value
    allowed = {"unix_socket", "pool_size", "connect_timeout"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"database URL {shown!r}: unknown query parameter(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )

    unix_socket = params.get("unix_socket") or None
    host = parts.hostname or ""
    if not host and unix_socket is None:
        raise ValueError(f"database URL {shown!r}: missing host (or ?unix_socket=PATH)")
    if not host:
        host = "localhost"

    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ValueError(f"database URL {shown!r}: missing database name (…/DATABASE)")
    if not _DB_NAME_RE.match(database):
        raise ValueError(
            f"database URL {shown!r}: invalid database name {database!r} "
            "(letters, digits, '_' and '$', at most 64)"
        )

    user = unquote(parts.username) if parts.username else env.get(ENV_DB_USER, "")
    if not user:
        raise ValueError(
            f"database URL {shown!r}: no user; put it in the URL (mariadb://USER@HOST/DB) "
            f"or set {ENV_DB_USER}"
        )
    if parts.password is not None:
        password: str | None = unquote(parts.password)
    else:
        password = env.get(ENV_DB_PASSWORD)

    pool_size = _int_param(
        params, "pool_size", default=DEFAULT_POOL_SIZE, low=1, high=MAX_POOL_SIZE, shown=shown
    )
    connect_timeout = _int_param(
        params, "connect_timeout", default=10, low=1, high=3600, shown=shown
    )
    return MariaDbConfig(
        host=host,
        port=port_in_url if port_in_url is not None else DEFAULT_MARIADB_PORT,
        database=database,
        user=user,
        password=password,
        unix_socket=unix_socket,
        pool_size=pool_size,
        connect_timeout=connect_timeout,
    )


def _int_param(
    params: Mapping[str, str], name: str, *, default: int, low: int, high: int, shown: str
) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"database URL {shown!r}: {name} must be an integer, got {raw!r}"
        ) from None
    if not low <= value <= high:
        raise ValueError(f"database URL {shown!r}: {name} must be in [{low}, {high}], got {value}")
    return value
