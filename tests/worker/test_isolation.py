"""What task code can see: the executors' scrubbed environment (pure function, a real pool, and a
real `orbweaver worker` process probed by an attacker task), and the worker process hardening
(secrets gone from /proc/<pid>/environ, non-dumpable)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from manager_helpers import FakeScheduler

import orbweaver as ow
from orbweaver import _core
from orbweaver.client import Client
from orbweaver.worker.isolation import (
    HARMLESS_ORBWEAVER,
    executor_environment,
    parse_env_allow,
)
from orbweaver.worker.manager import WorkerConfig
from orbweaver.worker.pool import ExecutorPool, ResultKind, TaskRequest
from support.procs import ServiceProcess, StorageProcess

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
PYTHON_ROOT = Path(__file__).resolve().parents[2] / "python"
sys.path.insert(0, str(TASKS_DIR))
import attacker_tasks  # noqa: E402

pytestmark = pytest.mark.timeout(120)
WAIT = 30.0

WORKER_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/someone",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "PYTHONPATH": "/opt/site",
    "ORBWEAVER_TOKEN": "tok",
    "ORBWEAVER_PASSWORD": "pw",
    "ORBWEAVER_DB_PASSWORD": "dbpw",
    "ORBWEAVER_TLS_KEY": "/etc/orbweaver/key.pem",
    "ORBWEAVER_TEST_MARIADB_URL": "mariadb://root:pw@db/x",
    "ORBWEAVER_TASKS_DIR": "/srv/tasks",
    "ORBWEAVER_LOG_LEVEL": "debug",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "AWS_REGION": "eu-west-1",
    "DATABASE_URL": "postgres://u:p@h/db",
    "MY_SETTING": "visible",
}


# -------------------------------------------------------------------------------------------------
# The environment, as a function
# -------------------------------------------------------------------------------------------------


def test_executors_get_only_the_base_by_default() -> None:
    env = executor_environment(WORKER_ENV, python_root="/repo/python")
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/someone",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "PYTHONPATH": os.pathsep.join(["/repo/python", "/opt/site"]),
        "PYTHONUNBUFFERED": "1",
        "ORBWEAVER_TASKS_DIR": "/srv/tasks",
        "ORBWEAVER_LOG_LEVEL": "debug",
    }


def test_allow_list_by_name_and_pattern() -> None:
    env = executor_environment(WORKER_ENV, ("MY_SETTING", "AWS_*"))
    assert env["MY_SETTING"] == "visible"
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["AWS_SECRET_ACCESS_KEY"] == "aws"
    assert "DATABASE_URL" not in env


@pytest.mark.parametrize(
    "allow",
    [("*",), ("ORBWEAVER_*",), ("ORBWEAVER_TOKEN", "ORBWEAVER_PASSWORD", "ORBWEAVER_DB_PASSWORD")],
)
def test_orbweaver_secrets_never_pass(allow: tuple[str, ...]) -> None:
    env = executor_environment(WORKER_ENV, allow)
    leaked = {k for k in env if k.startswith("ORBWEAVER_")} - HARMLESS_ORBWEAVER
    assert leaked == set()
    for secret in ("tok", "pw", "dbpw", "/etc/orbweaver/key.pem", "mariadb://root:pw@db/x"):
        assert secret not in env.values()


def test_explicit_variables_are_set_as_given() -> None:
    env = executor_environment(WORKER_ENV, (), {"ORBWEAVER_TEST_FILE": "/tmp/x", "PATH": "/p"})
    assert env["ORBWEAVER_TEST_FILE"] == "/tmp/x"
    assert env["PATH"] == "/p"


def test_parse_env_allow() -> None:
    assert parse_env_allow("A, B_*,,A") == ("A", "B_*")
    assert parse_env_allow(["A,B", "C"]) == ("A", "B", "C")
    assert parse_env_allow("") == ()
    with pytest.raises(ValueError, match="executor_env: 'A=1' is not an environment variable"):
        parse_env_allow("A=1")


def test_worker_config_normalises_and_checks_executor_env(tmp_path: Path) -> None:
    config = WorkerConfig("a:1", "b:1", tmp_path, executor_env=("A,B", "C"))
    assert config.executor_env == ("A", "B", "C")
    with pytest.raises(ValueError, match="executor_env must be a tuple of names"):
        WorkerConfig("a:1", "b:1", tmp_path, executor_env="A")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------------
# A real pool
# -------------------------------------------------------------------------------------------------


def run_environment(pool: ExecutorPool) -> dict[str, str]:
    io = _core.wire_encode([])
    result = pool.run(TaskRequest(1, 0, 1, 1, "attacker_tasks", "environment", io, 60_000))
    assert result.kind is ResultKind.SUCCESS, result
    assert result.outputs is not None
    [payload] = _core.wire_decode(result.outputs)
    env: dict[str, str] = msgpack.unpackb(payload, raw=False)
    return env


def test_a_real_executor_sees_the_scrubbed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("ORBWEAVER_TOKEN", token)
    monkeypatch.setenv("ORBWEAVER_DB_PASSWORD", token)
    monkeypatch.setenv("SOME_SECRET", token)
    monkeypatch.setenv("MY_SETTING", "visible")
    with ExecutorPool(TASKS_DIR, 1, env_allow=("MY_*", "ORBWEAVER_*")) as pool:
        env = run_environment(pool)
    assert token not in env.values()
    assert env["MY_SETTING"] == "visible"
    assert {k for k in env if k.startswith("ORBWEAVER_")} <= HARMLESS_ORBWEAVER


# -------------------------------------------------------------------------------------------------
# A real worker process, probed by an attacker task
# -------------------------------------------------------------------------------------------------


@pytest.fixture
def storage(sqlite_url: str, tmp_path: Path) -> Iterator[StorageProcess]:
    """Storage without a token (so that it holds none): the worker sends its token anyway."""
    workdir = tmp_path / "storage"
    workdir.mkdir()
    proc = StorageProcess(sqlite_url, workdir)
    proc.env = {k: v for k, v in proc.env.items() if not k.startswith("ORBWEAVER_TOKEN")}
    proc.start()
    yield proc
    proc.close()
    proc.terminate()


@pytest.fixture
def sched() -> Iterator[FakeScheduler]:
    s = FakeScheduler().start()
    yield s
    s.stop()


@pytest.mark.parametrize("allow_list", ["flags", "environment"])
def test_task_code_cannot_find_the_worker_token(
    allow_list: str, storage: StorageProcess, sched: FakeScheduler, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(24)
    assert token not in Path("/proc/self/environ").read_bytes().decode(errors="replace")
    args = ["worker", "--storage", storage.address, "--scheduler", sched.address]
    args += ["--tasks-dir", str(TASKS_DIR), "--processes", "1", "--ip", "127.0.0.1"]
    args += ["--no-take-tasks"]  # the fake scheduler decides what runs
    env = {"ORBWEAVER_TOKEN": token, "MY_SETTING": "visible", "ORBWEAVER_LOG_LEVEL": "INFO"}
    # The token is allow-listed twice, by pattern and by name: it must not pass all the same.
    if allow_list == "flags":
        args += ["--executor-env", "MY_SETTING,ORBWEAVER_*", "--executor-env", "ORBWEAVER_TOKEN"]
    else:
        env["ORBWEAVER_EXECUTOR_ENV"] = "MY_SETTING,ORBWEAVER_*,ORBWEAVER_TOKEN"
    worker = ServiceProcess("worker", args, tmp_path, env=env)
    worker.start()
    client = Client(storage.address)
    try:
        client.default_resource_group = client.add_resource_group("attackers", b"pw")
        g = ow.TaskGraph()
        g.add(attacker_tasks.snoop)
        job = client.submit(g, [token])
        sched.assign(job.id, 0, storage.stubs().session.GetSession(_void(), timeout=10).session_id)
        [raw] = job.result(timeout=WAIT)
        found: dict[str, Any] = json.loads(raw)
        assert worker.popen is not None
        assert found["ppid"] == worker.popen.pid  # the task's parent is the worker
    finally:
        client.close()
        worker.terminate()
        worker.kill()
    # Its own environment: the allow-listed variable, no token although allow-listed twice.
    assert found["environ"]["MY_SETTING"] == "visible"
    assert token not in found["environ"].values()
    assert "ORBWEAVER_TOKEN" not in found["environ"]
    # The worker's /proc files: unreadable for the same user (non-dumpable); as root readable,
    # but the token is no longer in the environment block.
    assert token not in found["parent_environ"]
    if os.geteuid() != 0:
        assert found["parent_environ"] == "<PermissionError>"
    assert token not in found["parent_cmdline"]
    # No process the task can read holds it in its environment.
    assert found["holders"] == []
    logs = worker.logs()
    assert "ORBWEAVER_TOKEN is never passed to executors, even when allow-listed" in logs
    assert token not in logs


def _void() -> Any:
    from orbweaver._proto import orbweaver_pb2 as pb

    return pb.Void()


# -------------------------------------------------------------------------------------------------
# Worker process hardening
# -------------------------------------------------------------------------------------------------

_HARDEN = """
import ctypes, json, os, pathlib
from orbweaver.worker.isolation import harden_worker_process
libc = ctypes.CDLL(None)
before = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
harden_worker_process()
print(json.dumps({
    "dumpable_before": before,
    "dumpable_after": libc.prctl(3, 0, 0, 0, 0),
    "environ": pathlib.Path("/proc/self/environ").read_bytes().decode(errors="replace"),
    "os_environ": dict(os.environ),
}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")
def test_harden_worker_process() -> None:
    token = secrets.token_hex(16)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_HARDEN)],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(PYTHON_ROOT),
            "ORBWEAVER_TOKEN": token,
            "ORBWEAVER_DB_PASSWORD": token + "-db",
            "ORBWEAVER_LOG_LEVEL": "WARNING",
            "KEEP_ME": "yes",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert out["dumpable_before"] == 1
    assert out["dumpable_after"] == 0
    assert token not in out["environ"]  # /proc/self/environ: the initial block, overwritten
    assert "ORBWEAVER_TOKEN" not in out["os_environ"]
    assert "ORBWEAVER_DB_PASSWORD" not in out["os_environ"]
    assert "KEEP_ME=yes" in out["environ"] and out["os_environ"]["KEEP_ME"] == "yes"
    assert out["os_environ"]["ORBWEAVER_LOG_LEVEL"] == "WARNING"
