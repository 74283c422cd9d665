"""No secret on any command line: the cluster token and a database URL with a password reach
the components through the environment or files, never argv, which every local user reads in
`ps` (/proc/PID/cmdline). A secret given as a flag anyway works, with a warning naming the flag
and the safer way."""

from __future__ import annotations

import json
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from local_helpers import TASKS, Program, cmdline, kill_all, role, roles, running, wait_gone

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from support.cli import ORBWEAVER, base_env
from support.mariadb_server import MariaDBServer

TOKEN = f"cluster-token-{secrets.token_hex(8)}"
DB_PASSWORD = f"db-password-{secrets.token_hex(8)}"
COMPONENTS = ["executor", "scheduler", "storage", "worker"]


@pytest.fixture
def db_url_with_password(mariadb_server: MariaDBServer) -> Iterator[str]:
    """A fresh MariaDB database and a user who needs a password for it."""
    name = f"orbweaver_secret_{secrets.token_hex(4)}"
    user = f"ow_{secrets.token_hex(4)}"
    hosts = ("%", "localhost", "127.0.0.1")
    conn = mariadb_server.connect()
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE `{name}`")
        for host in hosts:
            cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{DB_PASSWORD}'")
            cur.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'{host}'")
    finally:
        conn.close()
    yield f"mariadb://{user}:{DB_PASSWORD}@{mariadb_server.host}:{mariadb_server.port}/{name}"
    conn = mariadb_server.connect()
    try:
        cur = conn.cursor()
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        for host in hosts:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
    finally:
        conn.close()


def assert_no_secret_on_command_lines(procs: list[psutil.Process]) -> None:
    for proc in procs:
        line = cmdline(proc)
        assert TOKEN not in line, line
        assert DB_PASSWORD not in line, line


def warnings_of(text: str) -> list[str]:
    return [
        entry["msg"]
        for entry in (json.loads(line) for line in text.splitlines() if line.startswith("{"))
        if entry["level"] == "warning"
    ]


def run_diamond(address: str, operator_token: str | None = None) -> None:
    """As the operator in the default group (`orbweaver local`), or as a new group's member."""
    import local_tasks

    with ow.Client(address, operator_token=operator_token, tasks_dir=TASKS) as client:
        if operator_token is not None:
            group = client.resource_group("default")
        else:
            group = client.add_resource_group("members", "pw")
        job = client.submit(local_tasks.diamond, [1, 2], resource_group=group)
        assert job.result(timeout=120) == [6]


def accepts_cluster_token(address: str, token: str) -> bool:
    """Whether the storage at `address` runs with `token` as its cluster token (a service call
    carrying it is accepted; one carrying another token is not)."""
    channel = grpc.insecure_channel(address)
    session = pb_grpc.SessionManagementServiceStub(channel)
    try:
        session.GetSession(pb.Void(), metadata=[("authorization", f"Bearer {token}")], timeout=30)
        with pytest.raises(grpc.RpcError):
            session.GetSession(pb.Void(), metadata=[("authorization", "Bearer no")], timeout=30)
        return True
    except grpc.RpcError:
        return False
    finally:
        channel.close()


@pytest.fixture(autouse=True)
def _tasks_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TASKS))


def test_local_cluster_passes_secrets_through_the_environment(
    db_url_with_password: str, tmp_path: Path
) -> None:
    import local_tasks

    with ow.LocalCluster(
        workers=1, db=db_url_with_password, token=TOKEN, tasks_dir=TASKS, log_dir=tmp_path
    ) as cluster:
        assert cluster.client().submit(local_tasks.diamond, [3, 4]).result(timeout=120) == [14]
        pids = {cluster.pid(name) for name in ("storage", "scheduler", "worker")}
        tree = [p for p in psutil.Process().children(recursive=True) if p.pid in pids]
        tree += [c for p in tree for c in p.children(recursive=True)]
        assert roles(tree) == COMPONENTS
        assert_no_secret_on_command_lines(tree)
        # The secret went where it belongs (the storage connected with it, through its
        # environment), and no process shows it now: the storage forgot it once read.
        for proc in tree:
            assert "ORBWEAVER_DB" not in proc.environ(), role(proc)
        for name in ("storage", "scheduler", "worker"):
            flags = [w for w in warnings_of(cluster.logs(name)) if "command line" in w]
            assert not flags, flags


def start_local(tmp: Path, *args: str) -> Program:
    program = Program(
        [*ORBWEAVER, "local", "--workers", "1", "--tasks-dir", str(TASKS),
         "--listen", "127.0.0.1:0", "--log-dir", str(tmp / "logs"), *args],
        tmp / "local.stderr",
        env=base_env(TMPDIR=str(tmp)),
    )  # fmt: skip
    program.wait_for_line("export ORBWEAVER_STORAGE=")
    return program


def stop_local(program: Program) -> None:
    tree = program.tree()
    try:
        program.popen.send_signal(signal.SIGTERM)
        assert program.popen.wait(60) == 0
        assert not wait_gone(tree)
    finally:
        kill_all(running([*tree]))
        if program.popen.poll() is None:
            program.popen.kill()


def exported(program: Program) -> tuple[str, str]:
    """The storage address and the operator token `orbweaver local` prints."""
    line = next(line for line in program.lines if "export ORBWEAVER_STORAGE=" in line)
    address, token = (part.split("=", 1)[1] for part in line.split()[1:3])
    return address, token


def test_orbweaver_local_reads_its_secrets_from_files(
    db_url_with_password: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    db_file = tmp_path / "db-url"
    db_file.write_text(db_url_with_password + "\n")
    program = start_local(tmp_path, "--db-file", str(db_file), "--token-file", str(token_file))
    try:
        address, operator = exported(program)
        assert accepts_cluster_token(address, TOKEN)
        assert DB_PASSWORD not in "\n".join(program.lines)  # the database line is redacted
        run_diamond(address, operator)
        tree = [psutil.Process(program.popen.pid), *program.tree()]
        assert roles(tree) == sorted([*COMPONENTS, "local"])
        assert_no_secret_on_command_lines(tree)
        assert warnings_of(program.stderr()) == []
    finally:
        stop_local(program)


def test_secret_flags_work_with_a_warning_and_stay_off_the_components(
    db_url_with_password: str, tmp_path: Path
) -> None:
    program = start_local(tmp_path, "--db", db_url_with_password, "--token", TOKEN)
    try:
        address, operator = exported(program)
        assert accepts_cluster_token(address, TOKEN)
        run_diamond(address, operator)
        warnings = warnings_of(program.stderr())
        assert any(
            w.startswith("--token puts the cluster token on the command line")
            and "ORBWEAVER_TOKEN" in w
            and "--token-file" in w
            for w in warnings
        ), warnings
        assert any(
            w.startswith("--db puts the database password on the command line")
            and "ORBWEAVER_DB" in w
            and "--db-file" in w
            for w in warnings
        ), warnings
        # `orbweaver local` itself shows what it was given; nothing it started does.
        tree = program.tree()
        assert roles(tree) == COMPONENTS
        assert_no_secret_on_command_lines(tree)
    finally:
        stop_local(program)


def test_each_service_warns_about_a_secret_flag(db_url_with_password: str, tmp_path: Path) -> None:
    """`orbweaver storage|scheduler|worker --token ...` (and storage `--db` with a password)."""
    started: list[Program] = []
    try:
        storage = Program(
            [*ORBWEAVER, "storage", "--db", db_url_with_password, "--token", TOKEN,
             "--listen", "127.0.0.1:0", "--ready-file", str(tmp_path / "storage.ready")],
            tmp_path / "storage.stderr",
        )  # fmt: skip
        started.append(storage)
        port = wait_ready(storage, tmp_path / "storage.ready")
        scheduler = Program(
            [*ORBWEAVER, "scheduler", "--storage", f"127.0.0.1:{port}", "--token", TOKEN,
             "--listen", "127.0.0.1:0", "--ready-file", str(tmp_path / "scheduler.ready")],
            tmp_path / "scheduler.stderr",
        )  # fmt: skip
        started.append(scheduler)
        scheduler_port = wait_ready(scheduler, tmp_path / "scheduler.ready")
        worker = Program(
            [*ORBWEAVER, "worker", "--storage", f"127.0.0.1:{port}", "--scheduler",
             f"127.0.0.1:{scheduler_port}", "--tasks-dir", str(TASKS), "--processes", "1",
             "--token", TOKEN, "--ready-file", str(tmp_path / "worker.ready")],
            tmp_path / "worker.stderr",
        )  # fmt: skip
        started.append(worker)
        wait_ready(worker, tmp_path / "worker.ready")
        run_diamond(f"127.0.0.1:{port}")
        for program in started:
            warnings = warnings_of(program.stderr())
            assert any(w.startswith("--token puts the cluster token") for w in warnings), warnings
        assert any(w.startswith("--db puts the database password") for w in warnings_of(
            storage.stderr()))  # fmt: skip
    finally:
        for program in reversed(started):
            tree = program.tree()
            program.popen.send_signal(signal.SIGTERM)
            program.popen.wait(60)
            kill_all(running(tree))


def wait_ready(program: Program, ready: Path, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if program.popen.poll() is not None or time.monotonic() > deadline:
            program.popen.kill()
            raise AssertionError(f"{program.popen.args} did not start:\n{program.stderr()}")
        time.sleep(0.05)
    return int(json.loads(ready.read_text())["port"])
