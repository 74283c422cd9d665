"""The service commands' start-up errors and exposure, as real processes: a port in use is one
readable line and exit code 2 (storage, scheduler, `orbweaver local --listen`, `--metrics-port`);
one SQLite database file has one storage; metrics listen on the service's host; a service
reachable from other machines without a token says so; tokens and database URLs come from
files or the environment."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from support.cli import ORBWEAVER, base_env, cli, free_port, show

TASKS = Path(__file__).resolve().parent / "tasks"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
EXPOSED = "without a cluster token"


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A port someone else listens on for the duration of the block."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@contextlib.contextmanager
def consecutive_ports(count: int, hold: int) -> Iterator[int]:
    """The first of `count` consecutive free ports; the one at offset `hold` is listened on by
    someone else for the duration of the block."""
    for _ in range(50):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            base = int(first.getsockname()[1])
            if base + count > 65535:
                continue
            try:
                sockets = [first]
                for port in range(base + 1, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
                    sockets.append(sock)
            except OSError:
                continue
            for i, sock in enumerate(sockets):
                if i != hold:
                    sock.close()
            sockets[hold].listen()
            yield base
            return
    raise AssertionError(f"no {count} consecutive free ports")


def log_entries(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def warnings_in(text: str) -> list[str]:
    return [str(e["msg"]) for e in log_entries(text) if e.get("level") == "warning"]


class Service:
    """`orbweaver NAME ARGS` in the background, ready once its ready file appears."""

    def __init__(self, tmp: Path, name: str, *args: str, env: dict[str, str] | None = None
                 ) -> None:  # fmt: skip
        self.log = tmp / f"{name}-{time.monotonic_ns()}.log"
        ready = self.log.with_suffix(".ready")
        self.popen = subprocess.Popen(
            [*ORBWEAVER, name, *args, "--ready-file", str(ready)],
            env=env if env is not None else base_env(),
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{name} did not start:\n{self.logs()}")
            time.sleep(0.05)
        self.port = int(json.loads(ready.read_text())["port"])

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def listening_on(self, port: int) -> str:
        """The local address of this process's listening socket on `port`."""
        found = [
            c.laddr.ip
            for c in psutil.Process(self.popen.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        assert len(found) == 1, found
        return str(found[0])

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)
        return self.popen.returncode


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in reversed(started):
        service.stop()


def sqlite_db(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'jobs.db'}"


# -------------------------------------------------------------------------------------------------
# A port in use
# -------------------------------------------------------------------------------------------------


def assert_one_line_error(proc: subprocess.CompletedProcess[str], line: str) -> None:
    assert proc.returncode == 2, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert proc.stderr.rstrip().splitlines()[-1] == line, show(proc)


def test_storage_port_in_use(tmp_path: Path) -> None:
    with held_port() as port:
        proc = cli("storage", "--db", sqlite_db(tmp_path), "--listen", f"127.0.0.1:{port}")
    assert_one_line_error(
        proc, f"orbweaver storage: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert not (tmp_path / "jobs.db").exists()  # refused before touching the database


def test_scheduler_port_in_use() -> None:
    with held_port() as port:
        proc = cli("scheduler", "--storage", "127.0.0.1:9", "--listen", f"127.0.0.1:{port}")
    assert_one_line_error(
        proc, f"orbweaver scheduler: cannot listen on 127.0.0.1:{port}: address already in use"
    )


@pytest.mark.parametrize("component", ["storage", "scheduler"])
def test_metrics_port_in_use(component: str, tmp_path: Path) -> None:
    args = ["--db", sqlite_db(tmp_path)] if component == "storage" else ["--storage", "127.0.0.1:9"]
    with held_port() as port:
        proc = cli(component, *args, "--listen", "127.0.0.1:0", "--metrics-port", str(port))
    assert_one_line_error(
        proc,
        f"orbweaver {component}: cannot serve metrics on 127.0.0.1:{port}: address already in use",
    )


def local_args(tmp: Path, *args: str) -> list[str]:
    return ["local", "--db", sqlite_db(tmp), "--workers", "1", "--tasks-dir", str(TASKS),
            "--log-dir", str(tmp / "logs"), *args]  # fmt: skip


def test_local_listen_port_in_use(tmp_path: Path) -> None:
    with held_port() as port:
        proc = cli(*local_args(tmp_path, "--listen", f"127.0.0.1:{port}"))
    assert_one_line_error(
        proc, f"orbweaver local: storage: cannot listen on 127.0.0.1:{port}: address already in use"
    )


@pytest.mark.parametrize(("offset", "component"), [(0, "storage"), (1, "scheduler"),
                                                (2, "worker")])  # fmt: skip
def test_local_metrics_port_in_use_names_the_component(
    offset: int, component: str, tmp_path: Path
) -> None:
    """`--metrics-port P`: storage on P, the scheduler on P+1, the worker on P+2."""
    with consecutive_ports(3, hold=offset) as base:
        taken = base + offset
        proc = cli(*local_args(tmp_path, "--listen", "127.0.0.1:0", "--metrics-port", str(base)))
    assert_one_line_error(
        proc,
        f"orbweaver local: {component}: cannot serve metrics on 127.0.0.1:{taken}: "
        "address already in use",
    )


# -------------------------------------------------------------------------------------------------
# One database file, one storage
# -------------------------------------------------------------------------------------------------


def test_a_second_storage_on_the_same_database_is_refused_untouched(
    tmp_path: Path, services: list[Service]
) -> None:
    first = Service(tmp_path, "storage", "--db", sqlite_db(tmp_path), "--listen", "127.0.0.1:0")
    services.append(first)
    # The second storage reaches the database by another path (relative, from another cwd).
    proc = subprocess.run(
        [*ORBWEAVER, "storage", "--db", "sqlite:///jobs.db", "--listen", "127.0.0.1:0"],
        cwd=tmp_path, env=base_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert_one_line_error(
        proc,
        f"orbweaver storage: database {tmp_path / 'jobs.db'} is in use by the storage service "
        f"pid {first.popen.pid} on host {socket.gethostname()} (listening on "
        f"127.0.0.1:{first.port}) since {holder_since(tmp_path)}; one database file has one "
        "storage",
    )
    with ow.Client(f"127.0.0.1:{first.port}") as client:
        client.add_resource_group("still-served", "pw")  # the first one is unharmed
    assert first.stop() == 0
    conn = sqlite3.connect(tmp_path / "jobs.db")
    try:  # the second storage opened no session: it never touched the database
        assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone() == (1,)
    finally:
        conn.close()
    again = Service(tmp_path, "storage", "--db", sqlite_db(tmp_path), "--listen", "127.0.0.1:0")
    services.append(again)  # the first one stopped: the database is free again


def holder_since(tmp: Path) -> str:
    return str(json.loads((tmp / "jobs.db.lock").read_text())["since"])


# -------------------------------------------------------------------------------------------------
# Metrics host and exposure
# -------------------------------------------------------------------------------------------------


def test_storage_metrics_listen_on_the_storage_host(
    tmp_path: Path, services: list[Service]
) -> None:
    metrics = free_port()
    local = Service(tmp_path, "storage", "--db", sqlite_db(tmp_path), "--listen", "127.0.0.1:0",
                    "--metrics-port", str(metrics))  # fmt: skip
    services.append(local)
    assert local.listening_on(metrics) == "127.0.0.1"
    assert local.stop() == 0
    assert not any(EXPOSED in w for w in warnings_in(local.logs())), local.logs()

    override = Service(tmp_path, "storage", "--db", sqlite_db(tmp_path), "--listen",
                       "127.0.0.1:0", "--metrics-port", str(metrics), "--metrics-host",
                       "0.0.0.0")  # fmt: skip
    services.append(override)
    assert override.listening_on(metrics) == "0.0.0.0"


def test_an_exposed_storage_without_a_token_warns(tmp_path: Path, services: list[Service]) -> None:
    metrics = free_port()
    exposed = Service(tmp_path, "storage", "--db", sqlite_db(tmp_path), "--listen", "0.0.0.0:0",
                      "--metrics-port", str(metrics))  # fmt: skip
    services.append(exposed)
    assert exposed.listening_on(metrics) == "0.0.0.0"  # the host of --listen
    [warning] = [w for w in warnings_in(exposed.logs()) if EXPOSED in w]
    assert warning.startswith("storage listens on 0.0.0.0:0 without a cluster token"), warning
    assert "ORBWEAVER_TOKEN" in warning and "--token-file" in warning
    assert exposed.stop() == 0

    with_token = Service(tmp_path, "storage", "--db", sqlite_db(tmp_path), "--listen",
                         "0.0.0.0:0", env=base_env(ORBWEAVER_TOKEN="t" * 24))  # fmt: skip
    services.append(with_token)
    assert not any(EXPOSED in w for w in warnings_in(with_token.logs())), with_token.logs()


def test_scheduler_metrics_host_and_exposure(tmp_path: Path, services: list[Service]) -> None:
    storage = Service(tmp_path, "storage", "--db", sqlite_db(tmp_path), "--listen", "127.0.0.1:0")
    services.append(storage)
    address = f"127.0.0.1:{storage.port}"
    for listen, metrics_host, bound, warns in [
        ("127.0.0.1:0", None, "127.0.0.1", False),
        ("127.0.0.1:0", "0.0.0.0", "0.0.0.0", False),
        ("0.0.0.0:0", None, "0.0.0.0", True),
    ]:
        metrics = free_port()
        extra = ["--metrics-host", metrics_host] if metrics_host else []
        scheduler = Service(tmp_path, "scheduler", "--storage", address, "--listen", listen,
                            "--metrics-port", str(metrics), *extra)  # fmt: skip
        services.append(scheduler)
        assert scheduler.listening_on(metrics) == bound, (listen, metrics_host)
        exposed = [w for w in warnings_in(scheduler.logs()) if EXPOSED in w]
        assert bool(exposed) == warns, (listen, scheduler.logs())
        if warns:
            assert exposed[0].startswith(f"scheduler listens on {listen} without a cluster token")
        assert scheduler.stop() == 0


def test_services_take_their_settings_from_one_file_and_the_environment(
    tmp_path: Path, services: list[Service]
) -> None:
    """One TOML file configures all three services (the scheduler's `listen` from the file
    included: no flag default hides it); the environment adds a setting of its own."""
    storage_port, scheduler_port, metrics = free_port(), free_port(), free_port()
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'[storage]\ndb_url = "{sqlite_db(tmp_path)}"\nlisten = "127.0.0.1:{storage_port}"\n'
        f'[scheduler]\nstorage = "127.0.0.1:{storage_port}"\n'
        f'listen = "127.0.0.1:{scheduler_port}"\ndead_em_cutoff = "10s"\n'
        f'[worker]\nstorage = "127.0.0.1:{storage_port}"\n'
        f'scheduler = "127.0.0.1:{scheduler_port}"\ntasks_dir = "{TASKS}"\nprocesses = 1\n'
    )
    storage = Service(tmp_path, "storage", "--config", str(config))
    services.append(storage)
    assert storage.port == storage_port
    scheduler = Service(tmp_path, "scheduler", "--config", str(config))
    services.append(scheduler)
    assert scheduler.port == scheduler_port
    assert scheduler.listening_on(scheduler_port).removeprefix("::ffff:") == "127.0.0.1"
    env = base_env(ORBWEAVER_WORKER_METRICS_PORT=str(metrics))
    worker = Service(tmp_path, "worker", "--config", str(config), env=env)
    services.append(worker)
    assert worker.listening_on(metrics) == "127.0.0.1"
    sys.path.insert(0, str(TASKS))
    import cli_tasks

    address = f"127.0.0.1:{storage_port}"
    with ow.Client(address) as admin:  # no operator token configured: anyone may add a group
        group = admin.add_resource_group("configured", "pw-configured")
    with ow.Client(address, resource_group=group) as client:
        graph = ow.TaskGraph()
        graph.add(cli_tasks.double)
        assert client.submit(graph, [21]).result(timeout=120) == [42]
    assert worker.stop() == 0


# -------------------------------------------------------------------------------------------------
# Secrets from files and the environment
# -------------------------------------------------------------------------------------------------


def test_storage_reads_its_token_and_database_from_files(
    tmp_path: Path, services: list[Service]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-0123456789\n")
    db_file = tmp_path / "db-url"
    db_file.write_text(f"\n  sqlite:///{tmp_path / 'from-file.db'}  \n")
    storage = Service(tmp_path, "storage", "--db-file", str(db_file), "--token-file",
                      str(token_file), "--listen", "127.0.0.1:0")  # fmt: skip
    services.append(storage)
    assert (tmp_path / "from-file.db").exists()
    address = f"127.0.0.1:{storage.port}"
    session = pb_grpc.SessionManagementServiceStub(grpc.insecure_channel(address))
    bearer = [("authorization", "Bearer file-token-0123456789")]
    assert session.GetSession(pb.Void(), metadata=bearer, timeout=30).session_id > 0
    with pytest.raises(grpc.RpcError) as refused:
        session.GetSession(pb.Void(), metadata=[("authorization", "Bearer not-it")], timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert warnings_in(storage.logs()) == [], storage.logs()


def test_storage_reads_its_database_from_the_environment(
    tmp_path: Path, services: list[Service]
) -> None:
    env = base_env(ORBWEAVER_DB=f"sqlite:///{tmp_path / 'from-env.db'}")
    services.append(Service(tmp_path, "storage", "--listen", "127.0.0.1:0", env=env))
    assert (tmp_path / "from-env.db").exists()


SECRET_FILE_ERRORS = {
    "empty-token-file": (["--token-file", "{tmp}/empty"], "the token file '{tmp}/empty' is empty"),
    "missing-token-file": (
        ["--token-file", "{tmp}/nothing"],
        "cannot read the token file '{tmp}/nothing': No such file or directory",
    ),
    "empty-db-file": (["--db-file", "{tmp}/empty"], "the database URL file '{tmp}/empty' is empty"),
    "missing-db-file": (
        ["--db-file", "{tmp}/nothing"],
        "cannot read the database URL file '{tmp}/nothing': No such file or directory",
    ),
}


@pytest.mark.parametrize(("args", "message"), SECRET_FILE_ERRORS.values(),
                         ids=SECRET_FILE_ERRORS.keys())  # fmt: skip
def test_unusable_secret_files_are_named(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    proc = cli("storage", "--listen", "127.0.0.1:0", *(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == 2, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert message.format(tmp=tmp_path) in proc.stderr, show(proc)


@pytest.mark.parametrize("command", ["storage", "local"])
def test_a_secret_flag_and_its_file_exclude_each_other(command: str) -> None:
    for flag in ("--token", "--db"):
        proc = cli(command, flag, "x", f"{flag}-file", "/dev/null")
        assert proc.returncode == 2, show(proc)
        assert f"argument {flag}-file: not allowed with argument {flag}" in proc.stderr, show(proc)
