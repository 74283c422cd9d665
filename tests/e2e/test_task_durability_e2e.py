"""Task-level durability end to end: a chain of tasks that count their runs (each appends a line
to a log file it is given as input) on a real cluster (SQLite and MariaDB); the storage is
SIGKILLed after some steps succeeded and restarted. With durability="task" the steps that had
stored their outputs never run again; with the default durability the chain starts over."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

import orbweaver as ow
from orbweaver.storage.db import open_database
from support.procs import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent / "tasks"))
import e2e_tasks as t

STEPS = 8
FIRST = 100  # step k records the line FIRST + k


def chain(durability: ow.Durability = "job") -> ow.TaskGraph:
    g = ow.TaskGraph(durability=durability)
    h = g.add(t.counted_step)
    for _ in range(STEPS - 1):
        h = g.add(t.counted_step, h[0], h[1])
    return g


def runs(log: Path) -> Counter[int]:
    return Counter(int(line) - FIRST for line in log.read_text().split())


@pytest.mark.parametrize("durability", ["task", "job"])
def test_finished_steps_do_not_run_again_after_a_storage_kill(
    cluster: ow.LocalCluster, db_url: str, tmp_path: Path, durability: ow.Durability
) -> None:
    log = tmp_path / "runs.log"
    client = cluster.client()
    # The graph says job-level; the submission decides.
    job = client.submit(chain(), [FIRST, str(log)], durability=durability)
    wait_until(lambda: job.progress().succeeded >= 3, timeout=60, what="three steps done")
    stored: list[int] = []
    if durability == "task":
        db = open_database(db_url)
        try:

            def three_stored() -> bool:
                stored[:] = [task for task, _ in db.task_outputs(job.id)]
                return len(stored) >= 3

            wait_until(three_stored, timeout=30, what="three steps stored")
        finally:
            db.close()
    done_before = job.progress().succeeded
    assert job.state == ow.JobState.RUNNING, "the kill must hit a running job"
    cluster.kill("storage")
    cluster.restart("storage")
    assert job.result(timeout=120) == [FIRST + STEPS, str(log)]
    counts = runs(log)
    assert set(counts) == set(range(STEPS)), "every step ran"
    if durability == "task":
        assert stored == list(range(len(stored))), "a chain stores its steps in order"
        assert all(counts[k] == 1 for k in stored), (stored, counts)
        # Only steps in flight at the kill (not stored yet) may have run twice.
        assert sum(counts.values()) - STEPS <= STEPS - len(stored), counts
    else:
        # Job-level durability: the chain started over, every step done before ran again.
        assert all(counts[k] >= 2 for k in range(done_before)), (done_before, counts)
