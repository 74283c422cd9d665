"""Shared fixtures: a private MariaDB server for the test session, fresh databases per test.

Fixtures for any test package:

* ``mariadb_server`` (session): a running private server; ``.host``, ``.port``, ``.socket``,
  ``.user``, ``.server_url`` and ``.create_database() -> url`` / ``.drop_database(url)`` /
  ``.fresh_database()`` (a context manager yielding a URL and dropping the database afterwards).
* ``mariadb_url``: a URL to a fresh, empty database (``orbweaver_test_<random>``), dropped after the
  test. Tests using it are marked ``mariadb``.
* ``sqlite_url``: a URL to a fresh SQLite file under ``tmp_path``.
* ``db_url``: parametrized over ``sqlite`` and ``mariadb`` (ids ``sqlite`` / ``mariadb``).

The server is started once per session from the MariaDB binaries on this machine
(``mariadb-install-db`` + ``mariadbd``) in a temporary directory, listening on 127.0.0.1 on a free
port and on a socket, with a password-less ``root``; it is stopped (SIGTERM, then SIGKILL) at the
end of the session. If the binaries or the ``mariadb`` connector are missing the MariaDB tests are
skipped, or fail when ``ORBWEAVER_REQUIRE_MARIADB=1``. ``ORBWEAVER_TEST_MARIADB_URL`` (e.g.
``mariadb://root:pw@127.0.0.1:3306``) uses an existing server instead of starting one; each test
still gets its own database on it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest

_REPO = Path(__file__).resolve().parent.parent
try:  # Let the tests run from a plain checkout (no `pip install -e .`).
    import orbweaver.storage.db  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_REPO / "python"))

REQUIRE_MARIADB_ENV = "ORBWEAVER_REQUIRE_MARIADB"
EXTERNAL_MARIADB_ENV = "ORBWEAVER_TEST_MARIADB_URL"
START_TIMEOUT_SEC = 60.0
STOP_TIMEOUT_SEC = 30.0
INSTALL_TIMEOUT_SEC = 120.0


def _require_mariadb() -> bool:
    return os.environ.get(REQUIRE_MARIADB_ENV, "") not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if _require_mariadb():
        pytest.fail(f"MariaDB is required ({REQUIRE_MARIADB_ENV}=1) but {reason}", pytrace=False)
    pytest.skip(f"MariaDB unavailable: {reason}")


def _find_binary(*names: str) -> str | None:
    extra = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/local/mysql/bin"])
    path = os.environ.get("PATH", "") + os.pathsep + extra
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent_hook() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` that makes the server get SIGKILL if pytest dies without running
    its finalizers. Everything is resolved here, in the parent, so the child only makes one libc
    call (no imports or locks between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigkill = int(signal.SIGKILL)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(pr_set_pdeathsig, sigkill)

    return hook


@dataclass
class MariaDBServer:
    """A reachable MariaDB server on which tests create and drop their own databases."""

    host: str
    port: int
    user: str = "root"
    password: str | None = field(default=None, repr=False)
    socket: str | None = None
    datadir: str | None = None
    log_path: str | None = None

    @property
    def server_url(self) -> str:
        """``mariadb://user[:password]@host:port`` (no database)."""
        cred = quote(self.user, safe="")
        if self.password:
            cred += ":" + quote(self.password, safe="")
        return f"mariadb://{cred}@{self.host}:{self.port}"

    def url(self, database: str) -> str:
        return f"{self.server_url}/{database}"

    def connect(self, database: str | None = None) -> Any:
        import mariadb

        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user}
        if self.password:
            kwargs["password"] = self.password
        if database:
            kwargs["database"] = database
        return mariadb.connect(connect_timeout=10, autocommit=True, **kwargs)

    def create_database(self, prefix: str = "orbweaver_test") -> str:
        """Create a fresh empty database; returns its ``mariadb://`` URL."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        conn = self.connect()
        try:
            conn.cursor().execute(f"CREATE DATABASE `{name}`")
        finally:
            conn.close()
        return self.url(name)

    def drop_database(self, url_or_name: str) -> None:
        name = urlsplit(url_or_name).path.lstrip("/") if "://" in url_or_name else url_or_name
        name = unquote(name.split("?", 1)[0])
        conn = self.connect()
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()

    @contextlib.contextmanager
    def fresh_database(self, prefix: str = "orbweaver_test") -> Iterator[str]:
        url = self.create_database(prefix)
        try:
            yield url
        finally:
            self.drop_database(url)


def _wait_until_ready(
    server: MariaDBServer, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    import mariadb

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mariadbd exited with status {proc.returncode} during startup; log:\n{_tail(log)}"
            )
        try:
            server.connect().close()
            return
        except mariadb.Error as e:
            last_error = e
            time.sleep(0.1)
    raise TimeoutError(
        f"mariadbd did not accept connections within {timeout:g} s ({last_error}); "
        f"log:\n{_tail(log)}"
    )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_SEC)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_SEC)


def _start_private_server() -> Iterator[MariaDBServer]:
    install = _find_binary("mariadb-install-db", "mysql_install_db")
    daemon = _find_binary("mariadbd", "mysqld")
    if install is None or daemon is None:
        _unavailable("the MariaDB server binaries (mariadb-install-db, mariadbd) are not installed")
    assert install is not None and daemon is not None
    # A short path: the socket path must fit in sun_path (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="owdb-"))
    datadir, sock, log = root / "data", root / "sock", root / "mariadb.log"
    try:
        result = subprocess.run(
            [
                install,
                "--no-defaults",
                "--user=root",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=INSTALL_TIMEOUT_SEC,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
            pytest.fail(f"mariadb-install-db failed ({result.returncode}):\n{output}")

        proc: subprocess.Popen[bytes] | None = None
        last_failure = ""
        for _attempt in range(3):  # the free port can be taken before mariadbd binds it
            port = _free_port()
            with open(log, "ab") as log_file:
                proc = subprocess.Popen(
                    [
                        daemon,
                        "--no-defaults",
                        "--user=root",
                        f"--datadir={datadir}",
                        f"--socket={sock}",
                        f"--port={port}",
                        "--bind-address=127.0.0.1",
                        "--skip-log-bin",
                        f"--pid-file={root / 'mariadbd.pid'}",
                        f"--log-error={log}",
                        "--max-connections=500",
                        "--innodb-buffer-pool-size=64M",
                        "--innodb-flush-log-at-trx-commit=2",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 (one libc call)
                )
            server = MariaDBServer(
                host="127.0.0.1",
                port=port,
                socket=str(sock),
                datadir=str(datadir),
                log_path=str(log),
            )
            try:
                _wait_until_ready(server, proc, log, START_TIMEOUT_SEC)
            except (RuntimeError, TimeoutError) as e:
                _stop(proc)
                proc = None
                last_failure = str(e)
                continue
            break
        if proc is None:
            pytest.fail(f"could not start a private MariaDB server: {last_failure}")
        try:
            yield server
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _external_server(url: str) -> MariaDBServer:
    parts = urlsplit(url)
    server = MariaDBServer(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password) if parts.password else None,
    )
    try:
        server.connect().close()
    except Exception as e:
        _unavailable(f"{EXTERNAL_MARIADB_ENV} server is not reachable ({type(e).__name__})")
    return server


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    try:
        import mariadb  # noqa: F401
    except ImportError:
        _unavailable("the 'mariadb' Python connector is not installed")
    external = os.environ.get(EXTERNAL_MARIADB_ENV)
    if external:
        yield _external_server(external)
        return
    yield from _start_private_server()


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer) -> Iterator[str]:
    with mariadb_server.fresh_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'orbweaver.db'}"


@pytest.fixture(
    params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)],
    ids=["sqlite", "mariadb"],
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL, once per backend."""
    return str(request.getfixturevalue(f"{request.param}_url"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the MariaDB fixtures directly carry the ``mariadb`` marker too."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "mariadb_url" in names or "mariadb_server" in names:
            item.add_marker(pytest.mark.mariadb)
