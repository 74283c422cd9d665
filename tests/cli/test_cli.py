"""Every command of the `orbweaver` command line, run as real processes.

`orbweaver local` runs in the background for the client commands (submit, status, jobs, cancel,
outputs), which find it through ORBWEAVER_STORAGE / ORBWEAVER_TOKEN as printed by `local`; the
services (`storage`, `scheduler`, `worker`) are started one by one and stopped with SIGTERM.
The CLI is run as `python -m orbweaver`, the same `main` as the `orbweaver` script."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

import orbweaver as ow
from support.cli import ORBWEAVER, base_env, cli, free_port, show

TASKS = Path(__file__).resolve().parent / "tasks"
COMMANDS = [
    "demo", "local", "storage", "scheduler", "worker",
    "submit", "status", "jobs", "cancel", "outputs", "health",
]  # fmt: skip
START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError(f"no {count} consecutive free ports")


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def submitted_id(proc: subprocess.CompletedProcess[str]) -> int:
    m = re.search(r"^job (\d+) submitted$", proc.stdout, re.MULTILINE)
    assert m, show(proc)
    return int(m[1])


def stop_and_check(popen: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """Send `sig`; the process must exit with 0 and leave none of its descendants behind."""
    descendants = psutil.Process(popen.pid).children(recursive=True)
    popen.send_signal(sig)
    assert popen.wait(STOP_TIMEOUT) == 0
    _, alive = psutil.wait_procs(descendants, timeout=STOP_TIMEOUT)
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"


# -------------------------------------------------------------------------------------------------
# Without a cluster
# -------------------------------------------------------------------------------------------------


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0, show(proc)
    assert proc.stdout.strip() == f"orbweaver {ow.__version__}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command: str | None) -> None:
    proc = cli(*([command] if command else []), "--help")
    assert proc.returncode == 0, show(proc)
    assert proc.stdout.startswith(f"usage: orbweaver {command or ''}".rstrip())
    if command is None:
        for name in COMMANDS:
            assert name in proc.stdout


USAGE_ERRORS = {
    "no-command": ([], "the following arguments are required: COMMAND"),
    "unknown-command": (["bogus"], "invalid choice: 'bogus'"),
    "status-not-an-id": (["status", "abc"], "invalid int value: 'abc'"),
    "cancel-without-id": (["cancel"], "the following arguments are required: job_id"),
    "outputs-extra-arg": (["outputs", "1", "2"], "unrecognized arguments: 2"),
    "submit-without-graph": (["submit"], "the following arguments are required: MODULE:GRAPH"),
    "local-bad-workers": (["local", "--workers", "many"], "invalid int value: 'many'"),
    "scheduler-unknown-flag": (["scheduler", "--dead-em-cutoff-s", "3"], "unrecognized argument"),
}


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors(args: list[str], message: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2, show(proc)
    assert "usage: orbweaver" in proc.stderr
    assert message in proc.stderr, show(proc)


def test_a_worker_without_a_scheduler_says_every_way_to_give_one() -> None:
    proc = cli("worker", "--storage", "127.0.0.1:9", "--tasks-dir", str(TASKS))
    assert proc.returncode == 2, show(proc)
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "orbweaver worker: ConfigError: worker: scheduler is not set (give --scheduler, "
        "$ORBWEAVER_WORKER_SCHEDULER or scheduler in the [worker] table of --config)"
    ), show(proc)


SUBMIT_ERRORS = [
    (["cli_tasks:diamond", "--inputs", "[3,"], "--inputs is not valid JSON"),
    (["cli_tasks:diamond", "--inputs", '{"x": 3}'], "--inputs must be a JSON list"),
    (["cli_tasks", "--inputs", "[3, 4]"], "expected MODULE:GRAPH, got 'cli_tasks'"),
]
UNKNOWN_GRAPHS = [
    (["no_such_module:graph", "--inputs", "[]"], "no_such_module"),
    (["cli_tasks:no_such_graph", "--inputs", "[]"], "no_such_graph"),
    (["cli_tasks:double", "--inputs", "[1]"], "TaskGraph"),
]


@pytest.mark.parametrize(
    ("args", "message"),
    [*SUBMIT_ERRORS, *UNKNOWN_GRAPHS],
    ids=["bad-json", "not-a-list", "no-colon", "unknown-module", "unknown-graph", "a-task"],
)
def test_submit_argument_errors(args: list[str], message: str) -> None:
    """Checked before any connection is made (the storage address leads nowhere)."""
    proc = cli("submit", *args, "--tasks-dir", str(TASKS), "--storage", "127.0.0.1:9")
    assert proc.returncode == 2, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert proc.stderr.startswith("orbweaver submit: "), show(proc)
    assert message in proc.stderr, show(proc)


@pytest.mark.parametrize("command", [["status"], ["cancel", "1"]])
def test_unreachable_storage_is_a_readable_error(command: list[str]) -> None:
    """No storage listens there: the command says so (after the client's connect timeout, 5 s,
    not the 30 s a reached storage gets to come back)."""
    address = f"127.0.0.1:{free_port()}"
    proc = cli(*command, "--storage", address, timeout=60)
    assert proc.returncode == 2, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert f"cannot reach the Orbweaver storage service at {address}" in proc.stderr, show(proc)


def test_worker_needs_a_tasks_dir() -> None:
    proc = cli("worker", "--storage", "127.0.0.1:9", "--scheduler", "127.0.0.1:9")
    assert proc.returncode == 2, show(proc)
    assert (
        "tasks_dir is not set (give --tasks-dir, $ORBWEAVER_WORKER_TASKS_DIR, $ORBWEAVER_TASKS_DIR"
        in proc.stderr
    )


def test_demo(tmp_path: Path) -> None:
    proc = cli("demo", env=base_env(ORBWEAVER_DEMO_DIR=str(tmp_path)), timeout=180)
    assert proc.returncode == 0, show(proc)
    m = re.search(r"job (\d+): SUCCEEDED", proc.stdout)
    assert m, show(proc)
    assert "top words: ['it', 'of', 'the', 'was', 'age']" in proc.stdout
    assert "total words: 70" in proc.stdout
    published = json.loads((tmp_path / f"job-{m[1]}.json").read_text())  # by the commit task
    assert published["total_words"] == 70


# -------------------------------------------------------------------------------------------------
# `orbweaver local` in the background, and the client commands against it
# -------------------------------------------------------------------------------------------------


@dataclass
class Local:
    popen: subprocess.Popen[str]
    port: int
    metrics_port: int
    lines: list[str] = field(default_factory=list)
    address: str = ""
    token: str = ""

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "ORBWEAVER_STORAGE": self.address,
            "ORBWEAVER_OPERATOR_TOKEN": self.token,
            "ORBWEAVER_RESOURCE_GROUP": "default",
            **extra,
        }
        return base_env(**env)

    def run(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, env=self.env(**extra_env))

    def submit(self, graph: str, inputs: object, *args: str, **extra_env: str
               ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return self.run(
            "submit", graph, "--inputs", json.dumps(inputs), "--tasks-dir", str(TASKS), *args,
            **extra_env,
        )  # fmt: skip

    def client(self) -> ow.Client:
        return ow.Client(self.address, operator_token=self.token)


def start_local(tmp: Path) -> Local:
    port = free_port()
    metrics_port = free_ports(3)
    popen = subprocess.Popen(
        [*ORBWEAVER, "local", "--db", f"sqlite:///{tmp / 'jobs.db'}", "--workers", "2",
         "--tasks-dir", str(TASKS), "--listen", f"127.0.0.1:{port}", "--log-dir", str(tmp),
         "--metrics-port", str(metrics_port)],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=(tmp / "local.stderr").open("w"),
        text=True,
    )  # fmt: skip
    local = Local(popen, port, metrics_port)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while not local.token:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            popen.kill()
            logs = "\n".join(f"{p.name}:\n{p.read_text()[-2000:]}" for p in tmp.glob("*.*"))
            raise AssertionError(f"`orbweaver local` did not start: {local.lines}\n{logs}")
        local.lines.append(line)
        m = re.search(
            r"export ORBWEAVER_STORAGE=(\S+) ORBWEAVER_OPERATOR_TOKEN=(\S+)"
            r" ORBWEAVER_RESOURCE_GROUP=default",
            line,
        )
        if m:
            local.address, local.token = m[1], m[2]
    return local


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    tmp = tmp_path_factory.mktemp("local")
    proc = start_local(tmp)
    try:
        yield proc
    finally:
        if proc.popen.poll() is None:
            for child in psutil.Process(proc.popen.pid).children(recursive=True):
                child.kill()
            proc.popen.kill()
            proc.popen.wait(STOP_TIMEOUT)


class TestLocal:
    """In file order; the last test stops the cluster."""

    def test_local_prints_its_address_and_token(self, local: Local) -> None:
        assert local.address == f"127.0.0.1:{local.port}"
        assert len(local.token) >= 16
        assert "2 executor processes" in local.lines[0]
        assert f"tasks from {TASKS}" in local.lines[1]

    def test_submit_wait_prints_the_outputs(self, local: Local) -> None:
        proc = local.submit("cli_tasks:diamond", [3, 4], "--wait")
        assert proc.returncode == 0, show(proc)
        job_id = submitted_id(proc)
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == [14]
        # The progress bar's final state: the job, its state and every task done.
        assert re.search(rf"job {job_id} SUCCEEDED .* 3/3", proc.stdout), proc.stdout
        out = local.run("outputs", str(job_id))
        assert out.returncode == 0, show(out)
        assert json.loads(out.stdout) == [14]

    def test_every_component_serves_its_metrics(self, local: Local) -> None:
        base = local.metrics_port
        assert any(
            f"metrics: storage :{base}, scheduler :{base + 1}, worker :{base + 2}" in line
            for line in local.lines
        ), local.lines
        proc = local.submit("cli_tasks:diamond", [1, 2], "--wait")
        assert proc.returncode == 0, show(proc)
        expected = {
            base: ("orbweaver_storage_jobs_registered_total", {}),
            base + 1: ("orbweaver_scheduler_assignments_dispatched_total", {}),
            base + 2: ("orbweaver_worker_tasks_total", {"result": "success"}),
        }
        for port, (name, labels) in expected.items():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            values = [
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == name and labels.items() <= sample.labels.items()
            ]
            assert values and sum(values) > 0, (port, name, text[:2000])

    def test_submit_prints_dataclass_outputs_as_objects(self, local: Local) -> None:
        proc = local.submit("cli_tasks:segment", ["ab", 3.0, 4.0], "--wait")
        assert proc.returncode == 0, show(proc)
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == [{"label": "AB", "length": 5.0}]

    def test_a_failing_job_exits_nonzero_with_its_error(self, local: Local) -> None:
        proc = local.submit("cli_tasks:failing", [7], "--wait")
        assert proc.returncode == 1, show(proc)
        job_id = submitted_id(proc)
        assert f"job {job_id} FAILED: " in proc.stderr
        assert "ValueError: cannot handle 7" in proc.stderr
        status = local.run("status", str(job_id))
        assert status.returncode == 0, show(status)
        assert f"job {job_id}: FAILED" in status.stdout
        assert "cannot handle 7" in status.stdout
        out = local.run("outputs", str(job_id))
        assert out.returncode == 2, show(out)
        assert "FailedPrecondition" in out.stderr and "FAILED" in out.stderr

    def test_submit_then_status_outputs_and_job_lists(self, local: Local) -> None:
        proc = local.submit("cli_tasks:diamond", [5, 6])  # no --wait: prints the id and returns
        assert proc.returncode == 0, show(proc)
        job_id = submitted_id(proc)
        with local.client() as client:
            assert client.get_job(job_id).wait(timeout=60) == ow.JobState.SUCCEEDED
        status = local.run("status", str(job_id))
        assert status.returncode == 0, show(status)
        assert f"job {job_id}: SUCCEEDED" in status.stdout
        counts = re.search(r"^\W*3\W+0\W+0\W+0\W+3\W+0\W+0\W*$", status.stdout, re.MULTILINE)
        assert counts, show(status)  # total pending ready running succeeded failed cancelled
        out = local.run("outputs", str(job_id))
        assert out.returncode == 0, show(out)
        assert json.loads(out.stdout) == [22]

        with local.client() as client:
            jobs = {j.id: j.state.name for j in client.jobs()}
        assert jobs[job_id] == "SUCCEEDED" and len(jobs) >= 3
        for command in (["jobs"], ["status"]):
            listing = local.run(*command)
            assert listing.returncode == 0, show(listing)
            for jid, state in jobs.items():
                assert re.search(rf"^\W*{jid}\W+1\W+{state}\b", listing.stdout, re.MULTILINE), (
                    command,
                    show(listing),
                )

    def test_cancel_runs_the_cleanup_task(self, local: Local, tmp_path: Path) -> None:
        release = tmp_path / "release"  # the job's only task waits for this file
        proc = local.submit("cli_tasks:blocked", [str(release)])
        assert proc.returncode == 0, show(proc)
        job_id = submitted_id(proc)
        try:
            cancel = local.run("cancel", str(job_id))
            assert cancel.returncode == 0, show(cancel)
            assert cancel.stdout.strip() in (
                f"job {job_id} CLEANUP_READY",  # the usual answer: the cleanup task is queued
                f"job {job_id} CANCELLED",
            )
            cleaned = Path(f"{release}.cleaned")  # written by the cleanup task
            wait_until(cleaned.exists, 60, "the cleanup task")
            assert cleaned.read_text() == str(job_id)
            with local.client() as client:
                assert client.get_job(job_id).wait(timeout=60) == ow.JobState.CANCELLED
            status = local.run("status", str(job_id))
            assert f"job {job_id}: CANCELLED" in status.stdout, show(status)
            again = local.run("cancel", str(job_id))  # cancelling again is a no-op
            assert (again.returncode, again.stdout.strip()) == (0, f"job {job_id} CANCELLED")
        finally:
            release.touch()  # let the task end so the executor is free again

    def test_resource_group_and_password(self, local: Local) -> None:
        with local.client() as client:
            group = client.add_resource_group("team-a", "s3cret")
        # A member of the group: its name and password, no operator token.
        proc = local.submit(
            "cli_tasks:diamond", [1, 2], "--resource-group", "team-a", "--wait",
            ORBWEAVER_PASSWORD="s3cret", ORBWEAVER_OPERATOR_TOKEN="",
        )  # fmt: skip
        assert proc.returncode == 0, show(proc)
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == [6]
        listing = local.run("jobs")
        job_id = submitted_id(proc)
        assert re.search(rf"^\W*{job_id}\W+{group.id}\W+SUCCEEDED", listing.stdout, re.MULTILINE)

        wrong = local.submit(
            "cli_tasks:diamond", [1, 2], "--resource-group", "team-a", ORBWEAVER_PASSWORD="nope",
            ORBWEAVER_OPERATOR_TOKEN="",
        )  # fmt: skip
        assert wrong.returncode == 2, show(wrong)
        assert "Unauthenticated" in wrong.stderr and "job" not in wrong.stdout

    def test_client_errors_are_one_readable_line(self, local: Local) -> None:
        cases = [
            (local.submit("cli_tasks:diamond", ["three", 4]), "InvalidInput", "parameter `x`"),
            (local.submit("cli_tasks:diamond", [1]), "InvalidInput", "expected 2 inputs, got 1"),
            (local.run("status", "999999"), "JobNotFound", "999999"),
            (local.run("outputs", "999999"), "JobNotFound", "999999"),
            (local.run("cancel", "999999"), "JobNotFound", "999999"),
            (
                local.run("jobs", ORBWEAVER_OPERATOR_TOKEN="not-the-token"),
                "Unauthenticated",
                "token",
            ),
        ]
        for proc, kind, detail in cases:
            assert proc.returncode == 2, show(proc)
            assert proc.stderr.startswith("orbweaver "), show(proc)
            assert kind in proc.stderr and detail in proc.stderr, show(proc)
            assert "Traceback" not in proc.stderr, show(proc)

    def test_sigterm_stops_local_cleanly(self, local: Local) -> None:
        children = psutil.Process(local.popen.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in children)
        for component in ("storage", "scheduler", "worker"):
            assert f"orbweaver {component}" in names
        assert len(children) >= 5  # storage, scheduler, worker and 2 executors
        stop_and_check(local.popen)


# -------------------------------------------------------------------------------------------------
# The services one by one, as on several machines
# -------------------------------------------------------------------------------------------------


def start_service(
    tmp: Path, name: str, *args: str, token: str
) -> tuple[subprocess.Popen[str], int]:
    """Start `orbweaver NAME ARGS`; wait for its ready file (how LocalCluster supervises it)."""
    ready = tmp / f"{name}.ready"
    popen = subprocess.Popen(
        [*ORBWEAVER, name, *args, "--ready-file", str(ready)],
        env=base_env(ORBWEAVER_TOKEN=token),
        stdout=subprocess.DEVNULL,
        stderr=(tmp / f"{name}.log").open("w"),
        text=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.exists():
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            raise AssertionError(f"{name} did not start:\n{(tmp / f'{name}.log').read_text()}")
        time.sleep(0.05)
    return popen, int(json.loads(ready.read_text())["port"])


def test_services_work_together_and_stop_cleanly_on_sigterm(tmp_path: Path) -> None:
    token = "cli-test-token-0123456789"
    started: list[subprocess.Popen[str]] = []
    try:
        storage, storage_port = start_service(
            tmp_path, "storage", "--db", f"sqlite:///{tmp_path / 'jobs.db'}",
            "--listen", "127.0.0.1:0", token=token,
        )  # fmt: skip
        started.append(storage)
        storage_addr = f"127.0.0.1:{storage_port}"
        scheduler, scheduler_port = start_service(
            tmp_path, "scheduler", "--storage", storage_addr, "--listen", "127.0.0.1:0",
            token=token,
        )  # fmt: skip
        started.append(scheduler)
        worker, _ = start_service(
            tmp_path, "worker", "--storage", storage_addr,
            "--scheduler", f"127.0.0.1:{scheduler_port}", "--tasks-dir", str(TASKS),
            "--processes", "1", token=token,
        )  # fmt: skip
        started.append(worker)

        with ow.Client(storage_addr) as client:
            client.add_resource_group("default", "pw")
        proc = cli(
            "submit", "cli_tasks:diamond", "--inputs", "[10, 11]", "--tasks-dir", str(TASKS),
            "--storage", storage_addr, "--resource-group", "default", "--wait",
            env=base_env(ORBWEAVER_PASSWORD="pw"),
        )  # fmt: skip
        assert proc.returncode == 0, show(proc)
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == [42]

        assert psutil.Process(worker.pid).children(recursive=True)  # its executor
        for popen in (worker, scheduler, storage):
            stop_and_check(popen)
    finally:
        for popen in started:
            if popen.poll() is None:
                for child in psutil.Process(popen.pid).children(recursive=True):
                    child.kill()
                popen.kill()
                popen.wait(STOP_TIMEOUT)
