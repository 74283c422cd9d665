"""One database file has one storage: a second `orbweaver local` on the SQLite file of a running
one is refused at once, naming the holder, and the running cluster's jobs are left alone (no
second storage recovers and re-runs them)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from local_helpers import TASKS, Program, kill_all, running, wait_gone

import orbweaver as ow
from support.cli import ORBWEAVER, base_env


@pytest.fixture(autouse=True)
def _tasks_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TASKS))


def local_command(tmp: Path, db: Path, log_dir: str) -> list[str]:
    return [*ORBWEAVER, "local", "--db", f"sqlite:///{db}", "--workers", "1",
            "--tasks-dir", str(TASKS), "--listen", "127.0.0.1:0",
            "--log-dir", str(tmp / log_dir)]  # fmt: skip


def test_a_second_local_cluster_on_the_same_database_is_refused(tmp_path: Path) -> None:
    import local_tasks

    db = tmp_path / "jobs.db"
    first = Program(local_command(tmp_path, db, "first"), tmp_path / "first.stderr",
                    env=base_env(TMPDIR=str(tmp_path)))  # fmt: skip
    tree = []
    try:
        line = first.wait_for_line("export ORBWEAVER_STORAGE=")
        address, operator = (part.split("=", 1)[1] for part in line.split()[1:3])
        tree = first.tree()
        [storage_pid] = [p.pid for p in tree if "storage" in p.cmdline()]
        release = tmp_path / "release"
        with ow.Client(address, operator_token=operator, tasks_dir=TASKS) as client:
            group = client.resource_group("default")  # `local` made it
            job = client.submit(local_tasks.recorded(), [str(release)], resource_group=group)
            runs = Path(f"{release}.runs")
            assert _wait(runs.exists), "the job's task never started"

            second = subprocess.run(
                local_command(tmp_path, db, "second"), env=base_env(TMPDIR=str(tmp_path)),
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert second.returncode == 2, second.stderr
            assert "Traceback" not in second.stderr
            assert (
                second.stderr.rstrip()
                .splitlines()[-1]
                .startswith(
                    f"orbweaver local: storage: database {db} is in use by the storage service pid "
                    f"{storage_pid} on host {socket.gethostname()} (listening on {address}) since "
                )
            ), second.stderr
            assert second.stderr.rstrip().endswith("; one database file has one storage")

            release.touch()
            assert job.result(timeout=120) == [1]  # ran once: nobody recovered and re-ran it
        assert runs.read_text().splitlines() == ["run"]
        first.popen.send_signal(signal.SIGTERM)
        assert first.popen.wait(60) == 0
        assert not wait_gone(tree)
    finally:
        kill_all(running(tree))
        if first.popen.poll() is None:
            first.popen.kill()


def _wait(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
