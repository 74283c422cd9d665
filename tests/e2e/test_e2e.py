"""End to end on a real cluster of processes (storage, scheduler, EM + executors), SQLite and
MariaDB: the behaviours users rely on."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import orbweaver as ow

sys.path.insert(0, str(Path(__file__).resolve().parent / "tasks"))
import e2e_tasks as t


def test_diamond(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph()
    a = g.add(t.double)
    b = g.add(t.double)
    g.add(t.add, a, b)
    job = cluster.client().submit(g, [3, 4])
    assert job.result(timeout=60) == [14]
    assert job.state == ow.JobState.SUCCEEDED
    p = job.progress()
    assert (p.total, p.succeeded) == (3, 3)


def test_multi_output_tasks(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph()
    d = g.add(t.divmod_task)
    g.add(t.describe, d[0], d[1])
    g.add(t.add, d[0], d[1])
    assert cluster.client().submit(g, [17, 5]).result(timeout=60) == ["q=3 r=2", 5]


def test_dataclass_values(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph()
    s = g.add(t.make_segment)
    g.add(t.segment_length, s)
    length, label = cluster.client().submit(g, [0.0, 0.0, 3.0, 4.0, "hyp"]).result(timeout=60)
    assert (length, label) == (5.0, "HYP")


def test_inputs_are_type_checked_at_submission(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph()
    g.add(t.double)
    with pytest.raises(ow.InvalidInput, match="x"):
        cluster.client().submit(g, ["three"])
    with pytest.raises(ow.InvalidInput, match="expected 1"):
        cluster.client().submit(g, [1, 2])


def test_submit_many_runs_each_job_with_its_inputs(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph(commit=t.publish)
    a = g.add(t.double)
    g.add(t.add, g.add(t.double, a), a)
    client = cluster.client()
    jobs = client.submit_many(g, ([x] for x in range(23)), batch_size=5)
    assert len({job.id for job in jobs}) == 23
    assert [job.result(timeout=60) for job in jobs] == [[6 * x] for x in range(23)]
    assert client.gather(jobs, timeout=60) == [[6 * x] for x in range(23)]
    # A mistake in any job's inputs is reported before anything is submitted.
    before = len(client.jobs(limit=1000))
    with pytest.raises(ow.InvalidInput, match=r"^job 2: graph input 0"):
        client.submit_many(g, [[1], [2], ["three"]])
    assert len(client.jobs(limit=1000)) == before
    assert client.submit_many(g, []) == []


def test_gather_waits_for_all_and_raises_the_first_failure(cluster: ow.LocalCluster) -> None:
    client = cluster.client()
    g = ow.TaskGraph()
    g.add(t.double)
    jobs = client.submit_many(g, [[x] for x in range(5)])
    assert client.gather(jobs[::-1], timeout=60) == [[2 * x] for x in reversed(range(5))]
    bad = ow.TaskGraph()
    bad.add(t.always_fail)
    failing = client.submit(bad, [1])
    with pytest.raises(ow.JobFailed, match=f"job {failing.id} failed"):
        client.gather([jobs[0], failing], timeout=60)
    assert client.gather([], timeout=1) == []


def test_commit_task_receives_outputs(cluster: ow.LocalCluster, markers: Path) -> None:
    g = ow.TaskGraph(commit=t.publish)
    g.add(t.add, g.add(t.double), g.add(t.double))
    job = cluster.client().submit(g, [1, 2])
    assert job.result(timeout=60) == [6]
    assert (markers / f"commit-{job.id}").read_text() == "[6]"


def test_cleanup_task_runs_on_cancel_with_graph_inputs(
    cluster: ow.LocalCluster, markers: Path
) -> None:
    g = ow.TaskGraph(cleanup=t.cleanup)
    g.add(t.sleep_then)
    job = cluster.client().submit(g, [5, 3.0])
    assert job.cancel() == ow.JobState.CLEANUP_READY
    assert job.wait(timeout=60) == ow.JobState.CANCELLED
    assert (markers / f"cleanup-{job.id}").read_text() == "[5, 3.0]"
    with pytest.raises(ow.JobCancelled):
        job.result(timeout=5)


def test_retries_then_success(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph()
    g.add(t.flaky)
    assert cluster.client().submit(g, [4, "retry"]).result(timeout=60) == [40]


def test_failure_has_a_readable_error(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph()
    g.add(t.inc, g.add(t.always_fail))
    job = cluster.client().submit(g, [7])
    with pytest.raises(ow.JobFailed) as info:
        job.result(timeout=60)
    message = info.value.message
    assert "ValueError: cannot handle 7" in message
    assert "always_fail" in message and "Traceback" in message
    assert job.error() == message


def test_executor_crash_is_retried(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph()
    g.add(t.crash_once)
    assert cluster.client().submit(g, [1, "c1"]).result(timeout=60) == [101]


def test_hard_timeout_fails_with_a_clear_message(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph()
    g.add(t.hang)
    job = cluster.client().submit(g, [1])
    with pytest.raises(ow.JobFailed, match="hard timeout"):
        job.result(timeout=60)
    # The executor was replaced: the cluster still runs work.
    g2 = ow.TaskGraph()
    g2.add(t.inc)
    assert cluster.client().submit(g2, [1]).result(timeout=60) == [2]


def test_cancel_running_job(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph()
    g.add(t.sleep_then)
    job = cluster.client().submit(g, [1, 3.0])
    assert job.cancel() == ow.JobState.CANCELLED
    assert job.state == ow.JobState.CANCELLED
    with pytest.raises(ow.FailedPrecondition):
        job.outputs()


def test_unknown_job(cluster: ow.LocalCluster) -> None:
    with pytest.raises(ow.JobNotFound):
        cluster.client().get_job(10**9)


def test_wrong_password_is_rejected(cluster: ow.LocalCluster) -> None:
    client = cluster.client()
    group = client.add_resource_group("team-a", "right")
    g = ow.TaskGraph()
    g.add(t.inc)
    assert client.submit(g, [1], resource_group=group).result(timeout=60) == [2]
    with pytest.raises(ow.Unauthenticated):
        client.resource_group("team-a", "wrong")
    # Without the operator token, the group's own credentials are what counts.
    with ow.Client(cluster.address) as member:
        assert member.submit(g, [2], resource_group=group).result(timeout=60) == [3]
        forged = ow.ResourceGroup(group.id, group.name, b"wrong")
        with pytest.raises(ow.Unauthenticated):
            member.submit(g, [1], resource_group=forged)


def test_tasks_the_executors_cannot_import_are_refused_at_submission(
    cluster: ow.LocalCluster,
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker" / "tasks"))
    import integration_tasks as elsewhere

    client = cluster.client()
    g = ow.TaskGraph()
    g.add(t.inc)
    g.add(elsewhere.fibonacci)
    jobs_before = len(client.jobs(limit=1000))
    with pytest.raises(ow.InvalidGraph) as err:
        client.submit(g, [1, 10])
    message = str(err.value)
    assert "task `integration_tasks.fibonacci`" in message
    assert str(cluster.tasks_dir) in message and "tasks_dir=" in message
    with pytest.raises(ow.InvalidGraph, match=r"integration_tasks\.fibonacci"):
        client.submit_many(g, [[1, 10]])
    assert len(client.jobs(limit=1000)) == jobs_before, "a refused graph was registered"
    # A client of the same storage that does not know the workers' tasks directory submits it;
    # it then fails in the executor with a readable error.
    with cluster.new_client(tasks_dir=None) as blind:
        job = blind.submit(g, [1, 10])
        assert job.wait(timeout=60) == ow.JobState.FAILED
        assert "integration_tasks" in (job.error() or "")


def run_program(script: Path) -> list[str]:
    """Run a user's program in its own directory; its output lines."""
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(ow.__file__).resolve().parents[1])},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_local_cluster_defaults_to_the_directory_that_defines_the_tasks(tmp_path: Path) -> None:
    """The program that creates the cluster lives elsewhere than its tasks module: the executors
    import from the tasks module's directory all the same."""
    tasks = tmp_path / "lib"
    tasks.mkdir()
    (tasks / "shouting.py").write_text(
        textwrap.dedent(
            """
            import orbweaver as ow

            @ow.task
            def shout(word: str) -> str:
                return word.upper() + "!"
            """
        )
    )
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(tasks)!r})
            import orbweaver as ow
            import shouting

            with ow.LocalCluster(workers=1, log_dir={str(tmp_path / "logs")!r}) as cluster:
                g = ow.TaskGraph()
                g.add(shouting.shout)
                print(cluster.tasks_dir)
                print(cluster.client().submit(g, ["hey"]).result(timeout=60)[0])
            """
        )
    )
    assert run_program(app / "main.py") == [str(tasks), "HEY!"]
    # No task imported yet when the cluster is made: the directory of the module making it.
    (app / "lazy.py").write_text(
        "import orbweaver as ow\n\n\ndef make():\n    return ow.LocalCluster(workers=1)\n"
    )
    (tmp_path / "run_lazy.py").write_text(
        f"import sys\nsys.path.insert(0, {str(app)!r})\nimport lazy\n"
        "cluster = lazy.make()\nprint(cluster.tasks_dir)\ncluster.stop()\n"
    )
    assert run_program(tmp_path / "run_lazy.py") == [str(app)]


def test_local_cluster_database_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `db=`: a temporary SQLite file, removed with the cluster. With `db=`: the file
    stays, and a later cluster on it finds the jobs and reuses the default resource group."""
    monkeypatch.delenv("ORBWEAVER_KEEP_LOCAL", raising=False)
    g = ow.TaskGraph()
    g.add(t.inc)
    with ow.LocalCluster(workers=1, tasks_dir=t.inc.tasks_dir) as cluster:
        assert cluster.db_url.startswith("sqlite:///")
        temporary = Path(cluster.db_url.removeprefix("sqlite:///"))
        assert temporary.is_file()
        assert cluster.client().submit(g, [1]).result(timeout=60) == [2]
    assert not temporary.exists() and not temporary.parent.exists()

    db = tmp_path / "jobs.db"
    with ow.LocalCluster(workers=1, db=f"sqlite:///{db}", tasks_dir=t.inc.tasks_dir) as first:
        job = first.client().submit(g, [41])
        assert job.result(timeout=60) == [42]
        group = first.resource_group
    assert db.is_file()
    with ow.LocalCluster(workers=1, db=f"sqlite:///{db}", tasks_dir=t.inc.tasks_dir) as second:
        assert second.resource_group.id == group.id  # the default group, found again
        client = second.client()
        assert client.get_job(job.id).outputs() == [42]
        assert client.submit(g, [1]).result(timeout=60) == [2]
        assert len(client.jobs()) == 2


def test_several_resource_groups_share_the_cluster(cluster: ow.LocalCluster) -> None:
    client = cluster.client()
    groups = [client.add_resource_group(f"group-{i}", f"pw{i}") for i in range(3)]
    g = ow.TaskGraph()
    g.add(t.slow_inc)
    jobs = [(client.submit(g, [i], resource_group=groups[i % 3]), i) for i in range(30)]
    for job, i in jobs:
        assert job.result(timeout=120) == [i + 1]


def test_wide_job(cluster: ow.LocalCluster) -> None:
    g = ow.TaskGraph()
    for _ in range(500):
        g.add(t.inc)
    assert cluster.client().submit(g, list(range(500))).result(timeout=120) == [
        i + 1 for i in range(500)
    ]


@pytest.mark.slow
def test_neural_network_10_by_1000(sqlite_cluster: ow.LocalCluster) -> None:
    """Spider's neural-net workload: 10 layers x 1,000 neurons, 25 inputs each, checked against an
    in-process computation to a relative tolerance of 1e-12."""
    layers, width, fan_in = 10, 1000, 25
    rng = random.Random(7)
    g = ow.TaskGraph()
    previous = []
    sources: list[list[int]] = []
    for layer in range(layers):
        fn = t.LAYER_TASKS[layer % 3]
        current = []
        deck: list[int] = []
        for _ in range(width):
            if layer == 0:
                current.append(g.add(fn))
                sources.append([])
                continue
            picks: list[int] = []
            while len(picks) < fan_in:
                if not deck:
                    deck = list(range(width))
                    rng.shuffle(deck)
                candidate = deck.pop()
                if candidate not in picks:
                    picks.append(candidate)
            sources.append(picks)
            current.append(g.add(fn, *[previous[i] for i in picks]))
        previous = current
    inputs = [rng.uniform(-1, 1) for _ in range(width * fan_in)]
    job = sqlite_cluster.client().submit(g, inputs)
    outputs = job.result(timeout=600)

    values: list[float] = []
    for n in range(width):
        values.append(t.neuron(0, inputs[n * fan_in : (n + 1) * fan_in]))
    for layer in range(1, layers):
        base = layer * width
        values = [t.neuron(layer, [values[i] for i in sources[base + n]]) for n in range(width)]
    assert len(outputs) == width
    for got, want in zip(outputs, values, strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=0)
