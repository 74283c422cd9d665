"""A private MariaDB server for the tests and the benchmarks (one implementation for both).

:func:`private_server` runs ``mariadb-install-db`` into a temporary directory, then ``mariadbd``
listening on 127.0.0.1 on a free port and on a socket, with a password-less ``root``, and stops it
(SIGTERM, then SIGKILL) when the ``with`` block ends. It can also listen on another address and
run under a command prefix (``ip netns exec NS``: a host of a namespace network); it is then
administered through its socket, which every network namespace shares. On Linux the server also
gets SIGKILL if the process that started it dies without cleaning up. :func:`external_server`
wraps an existing server given by URL instead. No pytest here: ``tests/conftest.py`` turns
:class:`MariaDBUnavailable` into a skip (or a failure when MariaDB is required).
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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

START_TIMEOUT_SEC = 60.0
STOP_TIMEOUT_SEC = 30.0
INSTALL_TIMEOUT_SEC = 120.0


class MariaDBUnavailable(RuntimeError):
    """This machine cannot run a MariaDB server (binaries or connector missing)."""


@dataclass
class MariaDBServer:
    """A reachable MariaDB server on which callers create and drop their own databases."""

    host: str
    port: int
    user: str = "root"
    password: str | None = field(default=None, repr=False)
    socket: str | None = None
    datadir: str | None = None
    log_path: str | None = None
    pid: int | None = None
    # Administer through the socket (the server's address may be unreachable from here).
    admin_via_socket: bool = False
    # A private server can be taken down (SIGKILL) and brought back on the same port and data.
    _down: Callable[[], None] | None = field(default=None, repr=False)
    _up: Callable[[], None] | None = field(default=None, repr=False)

    def kill(self) -> None:
        """SIGKILL the server (an outage); `restart()` brings it back. Private servers only."""
        if self._down is None:
            raise RuntimeError("only a private server can be killed")
        self._down()

    def restart(self) -> None:
        """Start it again on the same port and data (from any thread; it still dies with this
        process)."""
        if self._up is None:
            raise RuntimeError("only a private server can be restarted")
        self._up()

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

        kwargs: dict[str, Any] = {"user": self.user}
        if self.admin_via_socket and self.socket:
            kwargs["unix_socket"] = self.socket
        else:
            kwargs.update(host=self.host, port=self.port)
        if self.password:
            kwargs["password"] = self.password
        if database:
            kwargs["database"] = database
        return mariadb.connect(connect_timeout=10, autocommit=True, **kwargs)

    def version(self) -> str:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT VERSION()")
            return str(cur.fetchone()[0])
        finally:
            conn.close()

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


def find_binary(*names: str) -> str | None:
    extra = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/local/mysql/bin"])
    path = os.environ.get("PATH", "") + os.pathsep + extra
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_available() -> None:
    """Raise :class:`MariaDBUnavailable` naming what is missing."""
    try:
        import mariadb  # noqa: F401
    except ImportError:
        raise MariaDBUnavailable("the 'mariadb' Python connector is not installed") from None
    if find_binary("mariadb-install-db", "mysql_install_db") is None or (
        find_binary("mariadbd", "mysqld") is None
    ):
        raise MariaDBUnavailable(
            "the MariaDB server binaries (mariadb-install-db, mariadbd) are not installed"
            " (apt-get install mariadb-server)"
        )


def external_server(url: str) -> MariaDBServer:
    """An existing server, ``mariadb://user:pw@host:port``; checked to be reachable."""
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
        raise MariaDBUnavailable(f"{server.host}:{server.port} is not reachable ({e})") from None
    return server


def _die_with_parent_hook() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` that makes the server get SIGKILL if its parent dies without
    cleaning up. Everything is resolved here, in the parent, so the child only makes one libc
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


_spawner_lock = threading.Lock()
_spawner_queue: list[Any] = []  # the queue of the spawner thread, once started


def _in_long_lived_thread(fn: Callable[[], Any]) -> Any:
    """Run `fn` (which starts the server) in the main thread or in one daemon thread that lives
    as long as the process. PR_SET_PDEATHSIG fires when the *thread* that forked the child exits:
    a server restarted from a short-lived thread (a fault injector) would be SIGKILLed with it."""
    if threading.current_thread() is threading.main_thread():
        return fn()
    import queue

    with _spawner_lock:
        if not _spawner_queue:
            jobs: queue.Queue[Any] = queue.Queue()

            def serve() -> None:
                while True:
                    job, box, done = jobs.get()
                    try:
                        box.append((True, job()))
                    except BaseException as exc:
                        box.append((False, exc))
                    done.set()

            threading.Thread(target=serve, name="mariadb-spawner", daemon=True).start()
            _spawner_queue.append(jobs)
    box: list[tuple[bool, Any]] = []
    done = threading.Event()
    _spawner_queue[0].put((fn, box, done))
    done.wait()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _start_daemon(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `command` (mariadbd) so that it gets SIGKILL if this process dies without cleaning
    up: through ``setpriv --pdeathsig`` where it exists, else the ``preexec_fn`` hook. The
    hook makes Python fork while holding the GIL and run gRPC's fork handlers, which can
    deadlock a process that has gRPC threads (a test's clients): ``setpriv`` avoids both."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None

    def spawn() -> subprocess.Popen[bytes]:
        with open(log, "ab") as log_file:
            if setpriv is not None:
                return subprocess.Popen(
                    [setpriv, "--pdeathsig", "KILL", "--", *command],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 (one libc call)
            )

    return _in_long_lived_thread(spawn)  # type: ignore[no-any-return]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _wait_until_ready(server: MariaDBServer, proc: subprocess.Popen[bytes], log: Path) -> None:
    import mariadb

    deadline = time.monotonic() + START_TIMEOUT_SEC
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
        f"mariadbd did not accept connections within {START_TIMEOUT_SEC:g} s ({last_error}); "
        f"log:\n{_tail(log)}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_SEC)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_SEC)


@contextlib.contextmanager
def private_server(
    buffer_pool: str = "64M",
    prefix: str = "owdb-",
    *,
    bind_address: str = "127.0.0.1",
    port: int | None = None,
    command_prefix: Sequence[str] = (),
    flush_log_at_trx_commit: int = 2,
) -> Iterator[MariaDBServer]:
    """Start a private server for the ``with`` block. `buffer_pool`: InnoDB buffer pool size
    (64 MiB suits test databases; the benchmarks want their tables in memory).
    `flush_log_at_trx_commit`: 2, a commit reaches the operating system before it returns and
    the disk within a second (it survives a crash of the server, not of the machine); 1, the log
    is flushed to disk at every commit (MariaDB's default). `bind_address`,
    `port` (default: a free one): where it listens. `command_prefix`: run ``mariadbd`` under it,
    e.g. ``["ip", "netns", "exec", NS]``; the server is then administered through its socket and
    skips client host name lookups (the namespace may have no resolver)."""
    check_available()
    install = find_binary("mariadb-install-db", "mysql_install_db")
    daemon = find_binary("mariadbd", "mysqld")
    assert install is not None and daemon is not None  # check_available
    # A short path: the socket path must fit in sun_path (108 bytes).
    root = Path(tempfile.mkdtemp(prefix=prefix))
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
            raise RuntimeError(f"mariadb-install-db failed ({result.returncode}):\n{output}")
        proc: subprocess.Popen[bytes] | None = None
        last_failure = ""
        for _attempt in range(3):  # the free port can be taken before mariadbd binds it
            listen_port = port if port is not None else free_port()
            command = [
                *command_prefix,
                daemon,
                "--no-defaults",
                "--user=root",
                f"--datadir={datadir}",
                f"--socket={sock}",
                f"--port={listen_port}",
                f"--bind-address={bind_address}",
                "--skip-log-bin",
                f"--pid-file={root / 'mariadbd.pid'}",
                f"--log-error={log}",
                "--max-connections=500",
                f"--innodb-buffer-pool-size={buffer_pool}",
                f"--innodb-flush-log-at-trx-commit={flush_log_at_trx_commit}",
                *(["--skip-name-resolve"] if command_prefix else []),
            ]
            proc = _start_daemon(command, log)
            server = MariaDBServer(
                host=bind_address,
                port=listen_port,
                socket=str(sock),
                datadir=str(datadir),
                log_path=str(log),
                pid=proc.pid,
                admin_via_socket=bool(command_prefix),
            )
            try:
                _wait_until_ready(server, proc, log)
            except (RuntimeError, TimeoutError) as e:
                _stop(proc)
                proc = None
                last_failure = str(e)
                continue
            break
        if proc is None:
            raise RuntimeError(f"could not start a private MariaDB server: {last_failure}")
        current = [proc]

        def down() -> None:
            current[0].kill()
            current[0].wait(STOP_TIMEOUT_SEC)

        def up() -> None:
            current[0] = _start_daemon(command, log)
            server.pid = current[0].pid
            _wait_until_ready(server, current[0], log)

        server._down, server._up = down, up
        try:
            yield server
        finally:
            _stop(current[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)
