"""Shared pieces of the benchmark harnesses (``recovery.py``, ``e2e.py``).

* :func:`private_server`: a private MariaDB server (the logic of ``tests/conftest.py``, without
  pytest): ``mariadb-install-db`` into a temporary directory, then ``mariadbd`` on a free loopback
  port and a socket, with a password-less ``root``; stopped with SIGTERM (then SIGKILL).
  ``ORBWEAVER_BENCH_MARIADB_URL`` (``mariadb://user:pw@host:port``) uses an existing server.
* :func:`machine_info`, :func:`write_results`: what every results file records.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

EXTERNAL_ENV = "ORBWEAVER_BENCH_MARIADB_URL"


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


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: make the server get SIGKILL if the harness dies without cleaning up."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigkill = int(signal.SIGKILL)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(1, sigkill)  # PR_SET_PDEATHSIG

    return hook


@dataclass
class MariaDBServer:
    host: str
    port: int
    user: str = "root"
    password: str | None = field(default=None, repr=False)
    socket: str | None = None
    datadir: str | None = None
    pid: int | None = None

    @property
    def server_url(self) -> str:
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

    def create_database(self, prefix: str = "orbweaver_bench") -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        conn = self.connect()
        try:
            conn.cursor().execute(f"CREATE DATABASE `{name}`")
        finally:
            conn.close()
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = unquote(urlsplit(url).path.lstrip("/").split("?", 1)[0])
        conn = self.connect()
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _wait_ready(server: MariaDBServer, proc: subprocess.Popen[bytes], log: Path) -> None:
    import mariadb

    deadline = time.monotonic() + 60
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mariadbd exited with {proc.returncode}:\n{_tail(log)}")
        try:
            server.connect().close()
            return
        except mariadb.Error as exc:
            last = exc
            time.sleep(0.1)
    raise TimeoutError(f"mariadbd not ready within 60 s ({last}):\n{_tail(log)}")


@contextlib.contextmanager
def private_server(buffer_pool: str = "1G") -> Iterator[MariaDBServer]:
    """Start a private server (or use ``$ORBWEAVER_BENCH_MARIADB_URL``) for the ``with`` block.

    The settings are those of the test suite except a buffer pool big enough to hold the
    benchmark's tables (the default of the test suite, 64 MiB, is sized for tiny databases).
    """
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        parts = urlsplit(external)
        yield MariaDBServer(
            parts.hostname or "127.0.0.1",
            parts.port or 3306,
            unquote(parts.username or "root"),
            unquote(parts.password) if parts.password else None,
        )
        return
    install = find_binary("mariadb-install-db", "mysql_install_db")
    daemon = find_binary("mariadbd", "mysqld")
    if install is None or daemon is None:
        raise RuntimeError("MariaDB server binaries not found (apt-get install mariadb-server)")
    root = Path(tempfile.mkdtemp(prefix="owbench-"))
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
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            out = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
            raise RuntimeError(f"mariadb-install-db failed ({result.returncode}):\n{out}")
        proc: subprocess.Popen[bytes] | None = None
        failure = ""
        for _attempt in range(3):  # the free port can be taken before mariadbd binds it
            port = free_port()
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
                        f"--innodb-buffer-pool-size={buffer_pool}",
                        "--innodb-flush-log-at-trx-commit=2",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent(),  # noqa: PLW1509 (one libc call)
                )
            server = MariaDBServer(
                "127.0.0.1", port, socket=str(sock), datadir=str(datadir), pid=proc.pid
            )
            try:
                _wait_ready(server, proc, log)
            except (RuntimeError, TimeoutError) as exc:
                _stop(proc)
                proc = None
                failure = str(exc)
                continue
            break
        if proc is None:
            raise RuntimeError(f"could not start a private MariaDB server: {failure}")
        try:
            yield server
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def server_version(server: MariaDBServer) -> str:
    conn = server.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT VERSION()")
        return str(cur.fetchone()[0])
    finally:
        conn.close()


# -- results files --

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benches" / "results"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


_LOAD_AT_START = os.getloadavg()


def machine_info() -> dict[str, Any]:
    """The machine, and its load average (1, 5, 15 min) when the harness started and ended: the
    benchmarks share the machine with whatever else runs on it."""
    import psutil

    return {
        "load_average_start": [round(x, 2) for x in _LOAD_AT_START],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def warn_if_busy(threshold: float = 0.5) -> None:
    """Say so when something else keeps the CPUs busy: the figures would not mean much."""
    load = os.getloadavg()[0]
    if load > threshold:
        print(
            f"warning: load average {load:.2f} before the benchmark; other work on this "
            "machine will distort the figures",
            file=sys.stderr,
            flush=True,
        )


def orbweaver_version() -> str:
    import orbweaver

    return str(getattr(orbweaver, "__version__", "unknown"))


def write_results(path: Path, payload: dict[str, Any]) -> None:
    payload = {
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python", *[shlex.quote(a) for a in sys.argv]]),
        "git_commit": _git_commit(),
        "machine": machine_info(),
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
