"""Timeline tracing (`orbweaver._trace`, `ORBWEAVER_TRACE_DIR`): every process of a real local
cluster records the hops of a job in its own file, and the records line up on one clock in the
order the job met them. Off by default: no file is written without the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from local_helpers import TASKS

from orbweaver import _trace

SCRIPT = """
import sys
sys.path.insert(0, {tasks!r})
import local_tasks as t
import orbweaver as ow

with ow.LocalCluster(workers=1, db="sqlite:///{db}", tasks_dir={tasks!r}) as cluster:
    client = cluster.client()
    job = client.submit(t.diamond, [2, 3])
    assert job.result(timeout=60) == [10]
    print(job.id)
"""

# Each hop of a diamond's first task, in the order it must happen: placed by the scheduler...
HOPS = [
    "client.submit",
    "storage.register",
    "storage.committed",
    "storage.polled",
    "scheduler.polled",
    "scheduler.handed",
    "em.fetched",
    "storage.instances",
    "em.registered",
    "em.run",
    "em.ran",
    "em.report",
    "storage.report",
    "storage.completed",
    "client.resulted",
]
# ... or taken straight from storage by the idle execution manager (TakeReadyTasks): storage
# hands it to the waiting take instead of the scheduler's poll, and nothing goes through the
# scheduler.
SCHEDULER_HOPS = {"storage.polled", "scheduler.polled", "scheduler.handed", "em.fetched"}
TAKEN_HOPS = [hop for hop in HOPS if hop not in SCHEDULER_HOPS]
TAKEN_HOPS.insert(TAKEN_HOPS.index("storage.committed") + 1, "storage.offered")


def run_cluster(tmp_path: Path, env: dict[str, str]) -> int:
    script = SCRIPT.format(tasks=str(TASKS), db=tmp_path / "jobs.db")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.parametrize("path", ["scheduler", "taken"])
def test_every_process_records_the_hops_of_a_job_in_order(path: str, tmp_path: Path) -> None:
    trace_dir = tmp_path / "trace"
    env = {**os.environ, _trace.ENV: str(trace_dir)}
    if path == "scheduler":
        env["ORBWEAVER_WORKER_TAKE_TASKS"] = "false"
    job_id = run_cluster(tmp_path, env)
    files = list(trace_dir.glob("*.trace"))
    # The client, the storage, the scheduler and the execution manager.
    assert len(files) >= 4, [f.name for f in files]
    first: dict[str, int] = {}
    seen_in: dict[str, set[str]] = defaultdict(set)
    for path_ in files:
        for line in path_.read_text().splitlines():
            stamp, event, job = line.split()
            seen_in[event].add(path_.name)
            if int(job) == job_id:
                first[event] = min(first.get(event, int(stamp)), int(stamp))
    # The idle EM's take is usually waiting when the job arrives; if the scheduler was first,
    # the job went its way.
    hops = TAKEN_HOPS if "storage.offered" in first else HOPS
    if path == "scheduler":
        assert hops == HOPS, "nothing is taken with take_tasks off"
    missing = [hop for hop in hops if hop not in first]
    assert not missing, f"events never recorded for job {job_id}: {missing}"
    times = [first[hop] for hop in hops]
    assert times == sorted(times), sorted(hops, key=lambda hop: first[hop])
    # One process each: the client's, the storage's, the EM's (and the scheduler's) events.
    owners = {hop.split(".")[0]: seen_in[hop] for hop in hops}
    assert len({frozenset(files) for files in owners.values()}) == len(owners), owners


def test_nothing_is_written_without_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != _trace.ENV}
    run_cluster(tmp_path, env)
    assert not list(tmp_path.rglob("*.trace"))
