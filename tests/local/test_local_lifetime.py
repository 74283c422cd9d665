"""The processes of a local cluster die with the process that started them: SIGKILL of
`orbweaver local`, or of a Python program using `LocalCluster` (started from its main thread or
from a thread that has ended since), leaves no storage, scheduler, worker or executor running."""

from __future__ import annotations

import signal
import sys
import textwrap
from pathlib import Path

import pytest
from local_helpers import TASKS, Program, kill_all, roles, running, wait_gone

from support.cli import ORBWEAVER, base_env

COMPONENTS = ["executor", "executor", "scheduler", "storage", "worker"]

PROGRAM = """
import sys
import threading
import time

sys.path.insert(0, {tasks!r})
import local_tasks
import orbweaver as ow

box = {{}}


def start():
    box["cluster"] = ow.LocalCluster(workers=2, tasks_dir={tasks!r}, log_dir={logs!r})
    box["cluster"].start()


if sys.argv[1] == "thread":
    starter = threading.Thread(target=start)
    starter.start()
    starter.join()  # the thread that started every component has exited
else:
    start()
cluster = box["cluster"]
# The cluster works after its starting thread is gone: its components outlived that thread.
assert cluster.client().submit(local_tasks.diamond, [3, 4]).result(timeout=120) == [14]
print("cluster ready", flush=True)
time.sleep(3600)
"""


def sigkill_and_check(program: Program) -> None:
    tree = program.tree()
    try:
        assert roles(tree) == COMPONENTS, roles(tree)
        program.popen.send_signal(signal.SIGKILL)
        program.popen.wait(30)
        left = wait_gone(tree)
        assert not left, f"still running after their parent's SIGKILL: {left}"
    finally:
        kill_all(running(tree))


def test_sigkill_of_orbweaver_local_takes_every_component_down(tmp_path: Path) -> None:
    program = Program(
        [*ORBWEAVER, "local", "--db", f"sqlite:///{tmp_path / 'jobs.db'}", "--workers", "2",
         "--tasks-dir", str(TASKS), "--listen", "127.0.0.1:0", "--log-dir", str(tmp_path)],
        tmp_path / "local.stderr",
        env=base_env(TMPDIR=str(tmp_path)),  # what a SIGKILL leaves behind stays in tmp_path
    )  # fmt: skip
    program.wait_for_line("export ORBWEAVER_STORAGE=")
    sigkill_and_check(program)


@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_sigkill_of_a_program_using_local_cluster_takes_every_component_down(
    started_from: str, tmp_path: Path
) -> None:
    script = tmp_path / "program.py"
    script.write_text(
        textwrap.dedent(PROGRAM).format(tasks=str(TASKS), logs=str(tmp_path / "logs"))
    )
    program = Program(
        [sys.executable, str(script), started_from],
        tmp_path / "program.stderr",
        env=base_env(TMPDIR=str(tmp_path)),
    )
    program.wait_for_line("cluster ready")
    sigkill_and_check(program)
