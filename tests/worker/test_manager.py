"""The execution manager (EM) at runtime: the behaviours of Spider's EM, adapted to ours
(batch NextTasks / registration / reporting, a real pool of executor processes), plus dead-EM
re-registration, concurrency up to `processes` and hard timeouts.

The EM runs in the test process against a REAL storage process and, for the behaviours that
do not need crafted assignments (1, 3, 4, 10-15), a REAL scheduler process. It reaches each
through a tap (a transparent recording proxy), so a test sees exactly what storage and the
scheduler received and in which order: registrations, reports, polls, deliveries, acks,
heartbeats, shutdowns.

Behaviours 5-9 (and the precise ack-during-outage half of 4) need assignments a real scheduler
never hands out: an older or forged session, a scheduler that fails exactly the polls after a
delivery. For those the scheduler is a `FakeScheduler`, an in-test gRPC SchedulerService that
hands out crafted assignments and records what the EM says; storage stays real.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import msgpack
import psutil
import pytest
from manager_helpers import FakeScheduler, PeerRecorder, SchedulerProcess

import orbweaver as ow
from orbweaver import _core
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import make_channel
from orbweaver.client import Client, Job
from orbweaver.states import JobState
from orbweaver.worker.config import WorkerConfig
from orbweaver.worker.manager import ExecutionManager
from orbweaver.worker.peers import GrpcStorage
from orbweaver.worker.pool import ExecutorPoolError
from orbweaver.worker.prefetch import PREFETCH_INITIAL
from support.procs import ServiceProcess, StorageProcess, wait_until
from support.taps import SchedulerTap, StorageTap, TapCall

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(TASKS_DIR))
import containment_tasks as ct  # noqa: E402
import integration_tasks as it  # noqa: E402

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0
BACKENDS = pytest.mark.parametrize(
    "db", ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True
)
EM_THREADS = ("fetcher", "reporter", "liveness")


def storage_config(em_stale_cutoff: float) -> str:
    return f"""
[storage]
instance_gc_interval = 0.2
em_stale_cutoff = {em_stale_cutoff}
job_cache_gc_interval = 0.5
job_cache_retention = 600.0
"""


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def db(request: pytest.FixtureRequest) -> str:
    """The database of the test's storage: SQLite, unless a test parametrizes it (indirectly)
    over `BACKENDS`."""
    backend = getattr(request, "param", "sqlite")
    return str(request.getfixturevalue(f"{backend}_url"))


@pytest.fixture
def cutoff() -> float:
    """Storage's em_stale_cutoff; tests that keep the EM quiet for a long time override it."""
    return 3.0


@pytest.fixture
def storage(db: str, cutoff: float, tmp_path: Path) -> Iterator[StorageProcess]:
    workdir = tmp_path / "storage"
    workdir.mkdir()
    proc = StorageProcess(db, workdir, config=storage_config(cutoff))
    proc.start()
    yield proc
    proc.close()
    if proc.popen is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.popen.pid, signal.SIGCONT)
    proc.terminate()


@pytest.fixture
def tap(storage: StorageProcess) -> Iterator[StorageTap]:
    with StorageTap(storage.address) as t:
        yield t


@pytest.fixture
def sched() -> Iterator[FakeScheduler]:
    s = FakeScheduler().start()
    yield s
    s.stop()


@pytest.fixture
def client(storage: StorageProcess) -> Iterator[Client]:
    c = Client(storage.address)
    c.default_resource_group = c.add_resource_group("em-tests", b"pw")
    yield c
    c.close()


@pytest.fixture
def real_scheduler(storage: StorageProcess, tmp_path: Path) -> Iterator[SchedulerProcess]:
    workdir = tmp_path / "scheduler"
    workdir.mkdir()
    proc = SchedulerProcess(storage.address, workdir)
    proc.start()
    yield proc
    proc.terminate()


@pytest.fixture
def stap(real_scheduler: SchedulerProcess) -> Iterator[SchedulerTap]:
    """The real scheduler, seen through a tap."""
    with SchedulerTap(real_scheduler.address) as t:
        yield t


@pytest.fixture
def make_em(
    tap: StorageTap, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ExecutionManager]]:
    """Build and start an EM wired to the storage tap and to `scheduler=` (by default the fake
    scheduler)."""
    ems: list[ExecutionManager] = []

    def make(
        start: bool = True, peers: dict[str, Any] | None = None, **overrides: Any
    ) -> ExecutionManager:
        """`peers`: the EM's `scheduler` and `storage` peers instead of gRPC stubs of its own."""
        if "scheduler" not in overrides:
            overrides["scheduler"] = request.getfixturevalue("sched").address
        # These tests follow tasks through the scheduler and a registration: none comes straight
        # from storage unless a test asks for it (tests/e2e/test_continuation.py covers that).
        overrides.setdefault("continue_tasks", False)
        overrides.setdefault("take_tasks", False)
        values: dict[str, Any] = {
            "storage": tap.address,
            "tasks_dir": TASKS_DIR,
            "processes": 1,
            "heartbeat_interval": 0.25,
            "poll_wait": 0.5,
            "ip_address": "127.0.0.1",
            "drain_timeout": 10.0,
        }
        values.update(overrides)
        em = ExecutionManager(WorkerConfig(**values), **(peers or {}))
        ems.append(em)
        if start:
            em.start()
        return em

    yield make
    for em in ems:
        em.stop(drain=False)


def session_of(storage: StorageProcess) -> int:
    return int(storage.stubs().session.GetSession(pb.Void(), timeout=10).session_id)


def submit(
    client: Client, fn: ow.TaskFunction, *inputs: Any, start: bool = True, **policy: Any
) -> Job:
    g = ow.TaskGraph()
    g.add(fn, **policy)
    return client.submit(g, list(inputs), start=start)


def progress(job: Job) -> Any:
    return job.progress()


def decode(frame: bytes) -> list[Any]:
    return [msgpack.unpackb(p, raw=False) for p in _core.wire_decode(frame)]


def em_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name in EM_THREADS or t.name.startswith(("runner-", "executor-"))
    ]


def sample(em: ExecutionManager, name: str, **labels: str) -> float:
    return em.metrics.registry.get_sample_value(name, labels) or 0.0


def storage_beats(tap: StorageTap, em_id: int) -> list[TapCall]:
    return tap.of(
        "UpdateExecutionManagerHeartbeat", lambda c: c.request.execution_manager_id == em_id
    )


def registration_items(call: TapCall) -> list[str]:
    assert call.reply is not None, f"registration ended with {call.code}"
    reply = pb.RegisterTaskInstancesReply.FromString(call.reply)
    return [i.WhichOneof("result") for i in reply.items]


def accepted_reports(tap: StorageTap, job_id: int) -> list[TapCall]:
    """Reports of `job_id` storage accepted (their reply went back through the tap)."""
    return [r for r in tap.reports_of(job_id) if r.code == grpc.StatusCode.OK]


def acks_of(records: Iterable[pb.TaskAssignmentRecord]) -> list[int]:
    return [r.assignment_id for r in records]


def declared_dead(storage: StorageProcess, em_id: int) -> bool:
    """Probe (without heartbeating for it) whether storage considers `em_id` dead: a
    registration for an unknown job is refused as a whole only when the EM is dead."""
    request = pb.RegisterTaskInstancesRequest(
        execution_manager_id=em_id,
        session_id=session_of(storage),
        items=[pb.RegisterTaskInstancesRequest.Item(job_id=10**9, task_id=pb.TaskId(index=0))],
    )
    try:
        storage.stubs().instances.RegisterTaskInstances(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    return False


# ---------------------------------------------------------------------------------------------
# 1-3: start and stop
# ---------------------------------------------------------------------------------------------


@BACKENDS
def test_start_registers_once_and_heartbeats(
    make_em: Callable[..., ExecutionManager],
    tap: StorageTap,
    stap: SchedulerTap,
    storage: StorageProcess,
) -> None:
    em = make_em(scheduler=stap.address)
    [reg] = tap.of("RegisterExecutionManager")
    assert reg.code == grpc.StatusCode.OK
    assert reg.reply is not None
    reply = pb.ExecutionManagerRegistration.FromString(reg.reply)
    assert reply.execution_manager_id == em.em_id > 0
    assert em.session_id == reply.session_id == session_of(storage)
    wait_until(lambda: storage_beats(tap, em.em_id), timeout=WAIT, what="a storage heartbeat")
    wait_until(lambda: stap.heartbeats(em.em_id), timeout=WAIT, what="a scheduler heartbeat")
    wait_until(lambda: len(storage_beats(tap, em.em_id)) >= 3, timeout=WAIT, what="more heartbeats")
    assert tap.count("RegisterExecutionManager") == 1, "registered more than once"
    assert stap.polls(em.em_id), "the EM does not poll the scheduler"


@pytest.mark.parametrize("breakage", ["tasks_dir_removed", "python_unusable"])
def test_start_failure_is_clear_and_leaves_nothing_running(
    breakage: str,
    make_em: Callable[..., ExecutionManager],
    tap: StorageTap,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    if breakage == "python_unusable":
        # Executors inherit the environment: with a bogus PYTHONHOME the interpreter cannot
        # even start, so the pool can never be made ready.
        monkeypatch.setenv("PYTHONHOME", str(tmp_path / "no-such-python-home"))
        em = make_em(start=False, tasks_dir=tasks, processes=2)
        expected = "exited before it was ready"
    else:
        em = make_em(start=False, tasks_dir=tasks, processes=2)
        tasks.rmdir()
        expected = "tasks directory"
    with pytest.raises(ExecutorPoolError, match=expected):
        em.start()
    # Nothing registered, nothing left behind: no EM threads, no executor processes.
    assert tap.count("RegisterExecutionManager") == 0
    assert em_threads() == []
    wait_until(
        lambda: {p.pid for p in me.children(recursive=True)} <= children_before,
        timeout=WAIT,
        what="executor processes to be gone",
    )
    em.stop()  # idempotent after a failed start
    with pytest.raises(ValueError, match="does not exist"):
        WorkerConfig(storage=tap.address, scheduler="127.0.0.1:1", tasks_dir=tmp_path / "nope")


def test_stop_is_prompt_while_idle(
    make_em: Callable[..., ExecutionManager], stap: SchedulerTap
) -> None:
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    # A long poll wait: stop() must not wait for the long poll to run out.
    em = make_em(scheduler=stap.address, processes=2, poll_wait=25.0)
    assert len(em._pool.pids()) == 2
    [poll] = wait_until(
        lambda: [c for c in stap.polls(em.em_id) if c.code is None],
        timeout=WAIT,
        what="the EM's long poll",
    )
    time.sleep(0.3)
    started = time.monotonic()
    em.stop()
    assert time.monotonic() - started < 8.0, "stop() waited for the long poll"
    assert em_threads() == []
    wait_until(
        lambda: {p.pid for p in me.children(recursive=True)} <= children_before,
        timeout=WAIT,
        what="executors to exit",
    )
    assert poll.done.wait(WAIT)
    assert poll.code == grpc.StatusCode.CANCELLED, "the long poll was not cut short"
    [shutdown] = stap.shutdowns()
    assert shutdown.request.execution_manager_id == em.em_id
    assert shutdown.done.wait(WAIT) and shutdown.code == grpc.StatusCode.OK
    assert stap.outstanding() == set()


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_worker_process_exits_zero_on_sigterm(
    busy: bool, storage: StorageProcess, sched: FakeScheduler, client: Client, tmp_path: Path
) -> None:
    worker = ServiceProcess(
        "worker",
        [
            "worker",
            "--storage",
            storage.address,
            "--scheduler",
            sched.address,
            "--tasks-dir",
            str(TASKS_DIR),
            "--processes",
            "2",
            "--ip",
            "127.0.0.1",
            "--no-take-tasks",  # the fake scheduler decides what runs
        ],
        tmp_path,
    )
    worker.start()
    try:
        em_id = worker.port  # the worker's ready file carries its EM id
        assert em_id > 0
        wait_until(
            lambda: any(p.em_id == em_id for p in sched.polls),
            timeout=WAIT,
            what="the worker's first poll",
        )
        assert worker.popen is not None
        executors = psutil.Process(worker.popen.pid).children()
        assert len(executors) == 2
        if busy:
            # SIGTERM while a task runs: the worker drains it (runs and reports it) first.
            job = submit(client, it.nap, 1.0)
            sched.assign(job.id, 0, session_of(storage))
            wait_until(lambda: progress(job).running == 1, timeout=WAIT, what="the task")
        code = worker.terminate(timeout=30)  # drained and exited, well within the timeout
        assert code == 0, worker.logs()[-3000:]
        for p in executors:
            assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        assert [s.execution_manager_id for _, s in sched.shutdowns] == [em_id]
        assert sched.outstanding() == set()
        if busy:
            assert job.result(timeout=WAIT) == [1.0]
    finally:
        worker.kill()


@pytest.mark.parametrize("storage_state", ["unreachable", "hung"])
def test_sigterm_while_starting_exits_zero(
    storage_state: str, storage: StorageProcess, sched: FakeScheduler, tmp_path: Path
) -> None:
    # The worker cannot register: storage refuses connections, or accepts the call and hangs.
    tap = StorageTap(storage.address if storage_state == "hung" else "127.0.0.1:1")
    assert storage.popen is not None
    if storage_state == "hung":
        os.kill(storage.popen.pid, signal.SIGSTOP)  # the fixture resumes it
    args = [
        "worker",
        "--storage",
        tap.address,
        "--scheduler",
        sched.address,
        "--tasks-dir",
        str(TASKS_DIR),
        "--processes",
        "2",
        "--ip",
        "127.0.0.1",
    ]
    worker = ServiceProcess("worker", args, tmp_path)
    log_path = tmp_path / "worker.log"
    ready_file = tmp_path / "never-ready"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "orbweaver", *args, "--ready-file", str(ready_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker.env,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: tap.count("RegisterExecutionManager") >= 1,
            timeout=WAIT,
            what="the worker to try to register",
        )
        executors = psutil.Process(popen.pid).children()
        assert len(executors) == 2
        if storage_state == "hung":
            # The registration call is in flight (it would hang for its whole deadline).
            assert tap.of("RegisterExecutionManager")[-1].code is None
        popen.send_signal(signal.SIGTERM)
        code = popen.wait(timeout=60)
        output = log_path.read_text(errors="replace")
        assert code == 0, output[-3000:]
        assert "Traceback" not in output and "Unavailable" not in output, output[-3000:]
        assert not ready_file.exists()  # a start cut short never announces readiness
        for p in executors:
            assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        # It never registered: nothing to tell the scheduler, nothing it could have drained.
        assert sched.shutdowns == []
        assert sched.polls == []
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(10)
        tap.close()


# ---------------------------------------------------------------------------------------------
# 4: scheduler outages
# ---------------------------------------------------------------------------------------------


def test_scheduler_errors_are_retried_and_acks_are_never_lost(
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    storage: StorageProcess,
    tap: StorageTap,
) -> None:
    # The scheduler is down when the EM starts.
    sched.stop()
    em = make_em()
    wait_until(
        lambda: len(storage_beats(tap, em.em_id)) >= 3,
        timeout=WAIT,
        what="the EM to keep running without a scheduler",
    )
    sched.start()  # same port
    session = session_of(storage)

    # Polls fail (UNAVAILABLE) right after an assignment was handed out: its ack is pending.
    job_a = submit(client, it.fibonacci, 10)
    sched.fail_polls_after_next_delivery(3)
    a = sched.assign(job_a.id, 0, session)
    assert job_a.result(timeout=WAIT) == [55]
    wait_until(lambda: sched.is_acked(a), timeout=WAIT, what="the ack of A")
    failed = [p for p in sched.polls if p.failed]
    assert len(failed) == 3
    assert any(a in p.acks for p in failed), "the ack was not pending during the outage"

    # The scheduler crashes while B's registration is in flight (storage paused), so B's ack
    # is pending while the scheduler is gone; then it comes back on the same port.
    job_b = submit(client, it.fibonacci, 11)
    assert storage.popen is not None
    os.kill(storage.popen.pid, signal.SIGSTOP)
    try:
        b = sched.assign(job_b.id, 0, session)
        wait_until(lambda: tap.registrations_of(job_b.id), timeout=WAIT, what="B registering")
        sched.stop()
    finally:
        os.kill(storage.popen.pid, signal.SIGCONT)
    assert job_b.result(timeout=WAIT) == [89]  # storage work goes on meanwhile
    assert not sched.is_acked(b)
    time.sleep(0.5)  # a few failed polls
    sched.start()
    job_c = submit(client, it.fibonacci, 12)
    c = sched.assign(job_c.id, 0, session)
    assert job_c.result(timeout=WAIT) == [144]
    wait_until(
        lambda: sched.is_acked(b) and sched.is_acked(c), timeout=WAIT, what="acks of B and C"
    )
    assert sched.outstanding() == set()
    assert [len(registration_items(r)) for r in tap.of("RegisterTaskInstances")] == [1, 1, 1]


def test_scheduler_killed_mid_run_is_survived(
    make_em: Callable[..., ExecutionManager],
    real_scheduler: SchedulerProcess,
    stap: SchedulerTap,
    client: Client,
    tap: StorageTap,
) -> None:
    em = make_em(scheduler=stap.address, processes=2)
    running = [submit(client, it.nap, 1.0) for _ in range(2)]
    wait_until(
        lambda: sum(progress(j).running for j in running) == 2, timeout=WAIT, what="two naps"
    )
    real_scheduler.kill()  # SIGKILL: every assignment it held is gone with it
    # The EM keeps running the tasks it holds and reporting them; its polls fail meanwhile.
    assert [j.result(timeout=WAIT) for j in running] == [[1.0], [1.0]]
    wait_until(
        lambda: [c for c in stap.polls(em.em_id) if c.code == grpc.StatusCode.UNAVAILABLE],
        timeout=WAIT,
        what="failed polls",
    )
    queued = [submit(client, it.fibonacci, n) for n in range(8)]  # while no scheduler runs
    real_scheduler.start()  # same port, a new scheduler
    assert [j.result(timeout=WAIT) for j in queued] == [[it.fibonacci(n)] for n in range(8)]
    assert em_threads(), "the EM stopped"
    assert tap.count("RegisterExecutionManager") == 1, "the EM registered again"
    # Every task ran once: one accepted report per job.
    for job in running + queued:
        accepted = wait_until(lambda j=job: accepted_reports(tap, j.id), timeout=WAIT)
        assert len(accepted) == 1, (job.id, accepted)


# ---------------------------------------------------------------------------------------------
# 5-9: sessions and registration
# ---------------------------------------------------------------------------------------------


def test_older_session_is_dropped_without_touching_storage(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tap: StorageTap,
) -> None:
    old = session_of(storage)
    storage.restart()
    current = session_of(storage)
    assert current > old
    em = make_em()
    assert em.session_id == current
    job = submit(client, it.fibonacci, 10)
    stale = sched.assign(job.id, 0, old)
    wait_until(lambda: sched.is_acked(stale), timeout=WAIT, what="the stale assignment's ack")
    assert tap.registrations_of(job.id) == [], "storage saw a registration"
    assert sample(em, "orbweaver_worker_assignments_rejected_total", reason="stale_session") == 1
    p = progress(job)
    assert (p.state, p.running, p.succeeded) == (JobState.RUNNING, 0, 0)
    # The EM polls again and the same task under the current session runs.
    sched.assign(job.id, 0, current)
    assert job.result(timeout=WAIT) == [55]
    assert sched.outstanding() == set()


@pytest.mark.parametrize("cutoff", [60.0])
def test_newer_session_refreshes_before_registration(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tap: StorageTap,
) -> None:
    # Heartbeats only at start, so only a refresh can teach the EM the new session.
    em = make_em(heartbeat_interval=60.0)
    wait_until(lambda: storage_beats(tap, em.em_id), timeout=WAIT, what="the first beat")
    old = em.session_id
    storage.restart()
    new = session_of(storage)
    assert new > old
    assert em.session_id == old
    job = submit(client, it.fibonacci, 10)
    beats_before = len(storage_beats(tap, em.em_id))
    aid = sched.assign(job.id, 0, new)
    assert job.result(timeout=WAIT) == [55]
    [reg] = tap.registrations_of(job.id)
    assert reg.request.session_id == new
    assert reg.request.execution_manager_id == em.em_id
    refresh = storage_beats(tap, em.em_id)[beats_before:]
    assert refresh, "no refresh heartbeat"
    assert refresh[0].seq < reg.seq, "the refresh did not come before the registration"
    assert em.session_id == new
    wait_until(lambda: sched.is_acked(aid), timeout=WAIT, what="ack")


def test_equal_session_goes_straight_to_registration(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tap: StorageTap,
) -> None:
    em = make_em(heartbeat_interval=60.0)
    wait_until(lambda: storage_beats(tap, em.em_id), timeout=WAIT, what="the first beat")
    beats = len(storage_beats(tap, em.em_id))
    job = submit(client, it.fibonacci, 10)
    aid = sched.assign(job.id, 0, em.session_id)
    assert job.result(timeout=WAIT) == [55]
    [reg] = tap.registrations_of(job.id)
    assert reg.request.session_id == em.session_id == session_of(storage)
    assert registration_items(reg) == ["context"]
    assert len(storage_beats(tap, em.em_id)) == beats, "an equal session caused a refresh"
    wait_until(lambda: sched.is_acked(aid), timeout=WAIT, what="ack")
    assert sched.outstanding() == set()


@pytest.mark.parametrize("cutoff", [60.0])
def test_registration_with_stale_session_refreshes_and_drops(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tap: StorageTap,
) -> None:
    em = make_em(heartbeat_interval=60.0)
    wait_until(lambda: storage_beats(tap, em.em_id), timeout=WAIT, what="the first beat")
    known = em.session_id
    storage.restart()  # the EM does not know yet
    new = session_of(storage)
    job = submit(client, it.fibonacci, 10)
    aid = sched.assign(job.id, 0, known)  # equal to the EM's session, stale for storage
    wait_until(lambda: sched.is_acked(aid), timeout=WAIT, what="the dropped assignment's ack")
    [reg] = tap.registrations_of(job.id)
    assert reg.code == grpc.StatusCode.NOT_FOUND
    wait_until(lambda: em.session_id == new, timeout=WAIT, what="the refresh")
    assert any(c.seq > reg.seq for c in storage_beats(tap, em.em_id)), "no refresh heartbeat"
    assert tap.reports_of(job.id) == []
    p = progress(job)
    assert (p.running, p.succeeded) == (0, 0)
    # Still serving.
    sched.assign(job.id, 0, new)
    assert job.result(timeout=WAIT) == [55]
    assert sched.outstanding() == set()


def test_rejected_registrations_are_dropped_and_the_em_keeps_serving(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tap: StorageTap,
) -> None:
    session = session_of(storage)
    make_em(processes=1)
    done = submit(client, it.fibonacci, 5)
    sched.assign(done.id, 0, session)
    assert done.result(timeout=WAIT) == [5]
    not_started = submit(client, it.fibonacci, 6, start=False)
    cancelled = submit(client, it.fibonacci, 7)
    cancelled.cancel()
    assert cancelled.wait(timeout=WAIT) == JobState.CANCELLED
    reports_before = tap.count("ReportTaskOutcomes")
    # Handed out together: a terminal task, a job not started, a cancelled job, a task index
    # that does not exist and a stale session.
    rejected = [
        sched.assign(done.id, 0, session),
        sched.assign(not_started.id, 0, session),
        sched.assign(cancelled.id, 0, session),
        sched.assign(done.id, 5, session),
        sched.assign(done.id, 0, session - 1),
    ]
    wait_until(
        lambda: all(sched.is_acked(a) for a in rejected),
        timeout=WAIT,
        what="acks of the rejected assignments",
    )
    regs = tap.of("RegisterTaskInstances")[1:]
    assert all(r.code == grpc.StatusCode.OK for r in regs)
    assert [item for r in regs for item in registration_items(r)] == ["error"] * 4
    assert tap.count("ReportTaskOutcomes") == reports_before
    assert not_started.state == JobState.READY
    # Still serving.
    good = submit(client, it.fibonacci, 10)
    sched.assign(good.id, 0, session)
    assert good.result(timeout=WAIT) == [55]
    assert em_threads(), "the EM stopped"
    assert sched.outstanding() == set()


REFUSALS = pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL],
    ids=["invalid_argument", "internal"],
)


@REFUSALS
def test_registration_refused_as_a_whole_hands_the_assignments_back(
    code: grpc.StatusCode,
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tap: StorageTap,
    caplog: pytest.LogCaptureFixture,
) -> None:
    em = make_em()
    session = session_of(storage)
    warm = submit(client, it.fibonacci, 5)
    sched.assign(warm.id, 0, session)
    assert warm.result(timeout=WAIT) == [5]
    stale_job = submit(client, it.fibonacci, 6)
    job = submit(client, it.fibonacci, 10)
    tap.fail_next("RegisterTaskInstances", code)
    # One poll: an assignment of an older session (acknowledged without storage) and one that
    # storage refuses as a whole.
    stale, refused = sched.assign_many([(stale_job.id, 0, session - 1), (job.id, 0, session)])
    [(_, shutdown)] = wait_until(lambda: sched.shutdowns, timeout=WAIT, what="the hand-back")
    # A Shutdown for the EM's own id: it acknowledges what the EM is done with (the pending ack
    # rides along) and leaves the refused assignment for the scheduler to reschedule.
    assert shutdown.execution_manager_id == em.em_id
    assert [r.assignment_id for r in shutdown.prev_assignments] == [stale]
    assert sched.outstanding() == {refused}
    [reg] = tap.registrations_of(job.id)
    assert reg.code == code
    assert any(
        r.levelname == "ERROR" and "cannot register task instances" in r.getMessage()
        for r in caplog.records
    )
    assert sample(em, "orbweaver_worker_assignments_rejected_total", reason=code.name.lower()) == 1
    # The EM goes on: the rescheduled task is offered again and runs.
    again = sched.assign(job.id, 0, session)
    assert job.result(timeout=WAIT) == [55]
    wait_until(lambda: sched.is_acked(again), timeout=WAIT, what="the ack of the rerun")
    assert sched.outstanding() == {refused}
    assert len(sched.shutdowns) == 1
    assert em_threads()


@REFUSALS
def test_registration_refused_as_a_whole_is_rescheduled_by_the_scheduler(
    code: grpc.StatusCode,
    make_em: Callable[..., ExecutionManager],
    real_scheduler: SchedulerProcess,
    client: Client,
    tap: StorageTap,
) -> None:
    em = make_em(scheduler=real_scheduler.address, processes=1)
    tap.fail_next("RegisterTaskInstances", code)
    job = submit(client, it.fibonacci, 10)
    assert job.result(timeout=WAIT) == [55]
    regs = tap.registrations_of(job.id)
    assert [r.code for r in regs] == [code, grpc.StatusCode.OK]
    assert {r.request.execution_manager_id for r in regs} == {em.em_id}
    later = submit(client, it.fibonacci, 11)
    assert later.result(timeout=WAIT) == [89]


# ---------------------------------------------------------------------------------------------
# 10-12: running and reporting
# ---------------------------------------------------------------------------------------------


@BACKENDS
def test_success_is_reported_with_its_identity_and_outputs(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    stap: SchedulerTap,
    client: Client,
    tap: StorageTap,
) -> None:
    em = make_em(scheduler=stap.address)
    session = session_of(storage)
    job = submit(client, it.fibonacci, 10)
    assert job.result(timeout=WAIT) == [55]
    [reg] = tap.registrations_of(job.id)
    assert reg.reply is not None
    [item] = pb.RegisterTaskInstancesReply.FromString(reg.reply).items
    [report] = tap.reports_of(job.id)
    # Storage applied the report before the tap saw its reply go back: wait for that.
    assert report.done.wait(WAIT)
    assert report.code == grpc.StatusCode.OK
    assert report.request.execution_manager_id == em.em_id
    assert report.request.session_id == session
    [outcome] = report.request.outcomes
    assert (outcome.job_id, outcome.task_id.index) == (job.id, 0)
    assert outcome.task_instance_id == item.context.task_instance_id > 0
    assert outcome.WhichOneof("outcome") == "serialized_outputs"
    assert decode(outcome.serialized_outputs) == [55]
    # The scheduler handed the task out once, with the session storage runs, and got its ack.
    [(aid, assignment)] = stap.delivered(job.id).items()
    assert assignment.session_id == session
    wait_until(lambda: aid in stap.acked(), timeout=WAIT, what="ack")
    assert stap.outstanding() == set()


def test_a_failure_then_a_success(
    make_em: Callable[..., ExecutionManager],
    stap: SchedulerTap,
    client: Client,
    tap: StorageTap,
) -> None:
    make_em(scheduler=stap.address)
    bad = submit(client, it.always_fail)
    assert bad.wait(timeout=WAIT) == JobState.FAILED
    good = submit(client, it.fibonacci, 10)
    assert good.result(timeout=WAIT) == [55]
    error = bad.error() or ""
    assert "ValueError" in error and "always_fail" in error
    [bad_report] = tap.reports_of(bad.id)
    [good_report] = tap.reports_of(good.id)
    assert bad_report.request.outcomes[0].WhichOneof("outcome") == "error_message"
    assert good_report.request.outcomes[0].WhichOneof("outcome") == "serialized_outputs"
    assert len(stap.delivered(bad.id)) == len(stap.delivered(good.id)) == 1
    wait_until(lambda: stap.outstanding() == set(), timeout=WAIT, what="every ack")


def test_storage_outage_while_reporting(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    stap: SchedulerTap,
    client: Client,
    tap: StorageTap,
) -> None:
    em = make_em(scheduler=stap.address)
    old_session = session_of(storage)
    job = submit(client, it.nap, 1.5)
    wait_until(
        lambda: [r for r in tap.registrations_of(job.id) if r.code == grpc.StatusCode.OK],
        timeout=WAIT,
        what="registration",
    )
    storage.kill()
    # The task finishes while storage is down: the report is retried, not lost or fatal.
    wait_until(lambda: len(tap.reports_of(job.id)) >= 2, timeout=WAIT, what="report retries")
    reports = tap.reports_of(job.id)[:2]
    assert all(r.done.wait(WAIT) for r in reports)
    assert all(r.code == grpc.StatusCode.UNAVAILABLE for r in reports)
    assert em_threads()
    storage.start()  # same port, new session: the report is stale now
    new_session = session_of(storage)
    assert new_session > old_session
    wait_until(
        lambda: sample(em, "orbweaver_worker_reports_dropped_total", reason="stale_session") == 1,
        timeout=WAIT,
        what="the stale report to be dropped",
    )
    # Storage recovered the job and re-offered its task; the scheduler hands it out again under
    # the new session and the same EM runs it.
    assert job.result(timeout=WAIT) == [1.5]
    accepted = wait_until(lambda: accepted_reports(tap, job.id), timeout=WAIT, what="the report")
    assert [r.request.session_id for r in accepted] == [new_session]
    assert sorted(a.session_id for a in stap.delivered(job.id).values()) == [
        old_session,
        new_session,
    ]
    later = submit(client, it.fibonacci, 10)
    assert later.result(timeout=WAIT) == [55]
    assert tap.count("RegisterExecutionManager") == 1


def test_acknowledgements_follow_storage_in_the_order_the_em_made_its_calls(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
) -> None:
    # Both peers recorded in one log: the order across scheduler and storage is the EM's.
    recorder = PeerRecorder()
    with make_channel(sched.address) as to_scheduler, make_channel(storage.address) as to_storage:
        em = make_em(
            peers={
                "scheduler": recorder.wrap(
                    "scheduler",
                    pb_grpc.SchedulerServiceStub(to_scheduler),
                    ("NextTasks", "Heartbeat", "Shutdown"),
                ),
                "storage": recorder.wrap(
                    "storage",
                    GrpcStorage(to_storage),
                    (
                        "RegisterExecutionManager",
                        "UpdateExecutionManagerHeartbeat",
                        "RegisterTaskInstances",
                        "ReportTaskOutcomes",
                    ),
                ),
            }
        )
        job = submit(client, it.fibonacci, 10)
        aid = sched.assign(job.id, 0, session_of(storage))
        assert job.result(timeout=WAIT) == [55]
        wait_until(lambda: sched.is_acked(aid), timeout=WAIT, what="the ack")
        em.stop()
    [delivery] = [
        c
        for c in recorder.of("NextTasks")
        if c.reply is not None and aid in [a.assignment_id for a in c.reply.assignments]
    ]
    [registration] = recorder.of("RegisterTaskInstances")
    [report] = recorder.of("ReportTaskOutcomes")
    assert registration.outcome == report.outcome == "ok"
    assert delivery.done_seq is not None and registration.done_seq is not None
    assert delivery.done_seq < registration.seq, "registered before the poll returned"
    # Acknowledged only once storage had taken the assignment.
    carrying = [c for c in recorder.of("NextTasks") if aid in acks_of(c.request.acks)]
    carrying += [c for c in recorder.of("Shutdown") if aid in acks_of(c.request.prev_assignments)]
    assert carrying, "the ack was never sent"
    assert all(c.seq > registration.done_seq for c in carrying)
    assert report.seq > registration.done_seq
    # Nothing reached either peer after the final Shutdown.
    [shutdown] = recorder.of("Shutdown")
    assert shutdown.request.execution_manager_id == em.em_id and shutdown.outcome == "ok"
    assert max(c.seq for c in recorder.calls) == shutdown.seq


# ---------------------------------------------------------------------------------------------
# 13-15: liveness and shutdown
# ---------------------------------------------------------------------------------------------


def test_stop_closes_the_metrics_endpoint(
    make_em: Callable[..., ExecutionManager], stap: SchedulerTap
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    em = make_em(scheduler=stap.address, metrics_port=port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert b"orbweaver_worker_prefetch_limit" in reply.read()
    em.stop()
    with socket.socket() as again:
        # Free again: nothing of the stopped component listens (REUSEADDR: only the closed
        # connections' TIME_WAIT may remain, and a listener would still make this fail).
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("0.0.0.0", port))
        again.listen()


def test_no_heartbeats_after_stop(
    make_em: Callable[..., ExecutionManager], stap: SchedulerTap, tap: StorageTap
) -> None:
    em = make_em(scheduler=stap.address, heartbeat_interval=0.1)
    wait_until(
        lambda: len(storage_beats(tap, em.em_id)) >= 3 and len(stap.heartbeats(em.em_id)) >= 3,
        timeout=WAIT,
        what="heartbeats",
    )
    em.stop()
    storage_count, scheduler_count = len(storage_beats(tap, em.em_id)), len(stap.heartbeats())
    time.sleep(1.0)  # ten intervals
    assert len(storage_beats(tap, em.em_id)) == storage_count
    assert len(stap.heartbeats()) == scheduler_count
    [shutdown] = stap.shutdowns()
    assert all(h.seq < shutdown.seq for h in stap.heartbeats()), "a heartbeat after Shutdown"


def test_storage_and_scheduler_heartbeats_in_lockstep(
    make_em: Callable[..., ExecutionManager], stap: SchedulerTap, tap: StorageTap
) -> None:
    em = make_em(scheduler=stap.address, heartbeat_interval=0.2)
    wait_until(
        lambda: len(storage_beats(tap, em.em_id)) >= 15,
        timeout=WAIT,
        what="three seconds of heartbeats",
    )
    storage_count = len(storage_beats(tap, em.em_id))
    scheduler_count = len(stap.heartbeats(em.em_id))
    assert abs(storage_count - scheduler_count) <= 2, (storage_count, scheduler_count)


def test_stop_during_registration_leaves_the_assignment_unacked(
    make_em: Callable[..., ExecutionManager],
    stap: SchedulerTap,
    client: Client,
    tap: StorageTap,
) -> None:
    em = make_em(scheduler=stap.address)
    release = tap.hold_next("RegisterTaskInstances")  # the registration stays in flight
    try:
        job = submit(client, it.fibonacci, 10)
        [reg] = wait_until(
            lambda: tap.registrations_of(job.id),
            timeout=WAIT,
            what="the registration to be in flight",
        )
        assert reg.code is None
        [aid] = stap.delivered(job.id)
        started = time.monotonic()
        em.stop()
        assert time.monotonic() - started < 10.0, "stop() waited for the registration"
    finally:
        release.set()
    assert reg.done.wait(WAIT) and reg.code == grpc.StatusCode.CANCELLED  # storage never saw it
    [shutdown] = stap.shutdowns()
    assert shutdown.request.execution_manager_id == em.em_id
    assert shutdown.done.wait(WAIT) and shutdown.code == grpc.StatusCode.OK
    assert aid not in stap.acked()
    assert stap.outstanding() == {aid}
    # Not acknowledged, so the scheduler reschedules it when the EM leaves: another EM runs it.
    other = make_em(scheduler=stap.address)
    assert job.result(timeout=WAIT) == [55]
    [again] = set(stap.delivered(job.id)) - {aid}
    ran = [r for r in tap.registrations_of(job.id) if r.code == grpc.StatusCode.OK]
    assert [r.request.execution_manager_id for r in ran] == [other.em_id]
    wait_until(lambda: again in stap.acked(), timeout=WAIT, what="the rerun's ack")


# ---------------------------------------------------------------------------------------------
# Dead EM, concurrency, hard timeouts
# ---------------------------------------------------------------------------------------------


def test_em_declared_dead_registers_again_and_keeps_working(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tap: StorageTap,
) -> None:
    em = make_em(heartbeat_interval=0.2)
    old_id = em.em_id
    paused = threading.Event()
    beat = em._beat

    def pausable_beat() -> None:
        if not paused.is_set():
            beat()

    em._beat = pausable_beat  # type: ignore[method-assign]
    paused.set()
    try:
        wait_until(
            lambda: declared_dead(storage, old_id),
            timeout=WAIT,
            what="storage to declare the silent EM dead",
        )
    finally:
        paused.clear()
    wait_until(lambda: em.em_id != old_id, timeout=WAIT, what="a new registration")
    assert tap.count("RegisterExecutionManager") == 2
    # The scheduler is told to reschedule what the old id held.
    wait_until(
        lambda: any(s.execution_manager_id == old_id for _, s in sched.shutdowns),
        timeout=WAIT,
        what="Shutdown for the old id",
    )
    job = submit(client, it.fibonacci, 10)
    sched.assign(job.id, 0, session_of(storage))
    assert job.result(timeout=WAIT) == [55]
    [reg] = tap.registrations_of(job.id)
    assert reg.request.execution_manager_id == em.em_id != old_id


def test_tasks_run_concurrently_up_to_processes(
    make_em: Callable[..., ExecutionManager],
    real_scheduler: SchedulerProcess,
    client: Client,
    tmp_path: Path,
) -> None:
    processes = 3
    make_em(scheduler=real_scheduler.address, processes=processes)
    record = tmp_path / "intervals"
    record.mkdir()
    g = ow.TaskGraph()
    names = [f"t{i}" for i in range(2 * processes)]
    inputs: list[Any] = []
    for name in names:
        g.add(it.interval)
        inputs += [str(record), name, 1.0]
    job = client.submit(g, inputs)
    pids = job.result(timeout=60)
    spans = [json.loads((record / f"{n}.json").read_text()) for n in names]
    assert pids == [s[2] for s in spans]
    assert len(set(pids)) == processes, "not every executor was used"

    def running_at(t: float) -> int:
        return sum(1 for start, end, _ in spans if start <= t < end)

    peak = max(running_at(start) for start, _, _ in spans)
    assert peak == processes, f"at most {peak} tasks ran at once"


def test_real_scheduler_full_path(
    make_em: Callable[..., ExecutionManager],
    real_scheduler: SchedulerProcess,
    client: Client,
    storage: StorageProcess,
    tap: StorageTap,
) -> None:
    em = make_em(scheduler=real_scheduler.address, processes=2)
    jobs = [submit(client, it.fibonacci, n) for n in range(12)]
    bad = submit(client, it.always_fail)
    assert [j.result(timeout=WAIT) for j in jobs] == [[it.fibonacci(n)] for n in range(12)]
    assert bad.wait(timeout=WAIT) == JobState.FAILED
    regs = tap.of("RegisterTaskInstances")
    assert {r.request.execution_manager_id for r in regs} == {em.em_id}
    # A storage restart in the middle of a task: the job still completes.
    slow = submit(client, it.nap, 1.5)
    wait_until(lambda: progress(slow).running == 1, timeout=WAIT, what="the nap to run")
    storage.restart()
    assert slow.result(timeout=60) == [1.5]
    after = submit(client, it.fibonacci, 10)
    assert after.result(timeout=WAIT) == [55]


def test_tiny_tasks_are_fetched_in_growing_batches(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tap: StorageTap,
) -> None:
    processes = 2
    em = make_em(processes=processes)
    session = session_of(storage)
    count = 3000
    g = ow.TaskGraph()
    for _ in range(count):
        g.add(it.fibonacci)
    job = client.submit(g, [1] * count)
    for index in range(count):
        sched.assign(job.id, index, session)
    assert job.result(timeout=90) == [1] * count
    polls = [p for p in sched.polls if p.em_id == em.em_id and not p.failed]
    # Before any task ran, the EM asks for a few tasks per executor only.
    assert polls[0].max_items == processes * (1 + PREFETCH_INITIAL)
    # Once tiny tasks were seen it holds far more, and fetches and registers them in batches
    # many times that size (one per task would be 3000 registrations).
    limit = sample(em, "orbweaver_worker_prefetch_limit")
    assert limit > processes * (1 + 4 * PREFETCH_INITIAL), limit
    sizes = [len(r.request.items) for r in tap.registrations_of(job.id)]
    assert sum(sizes) == count
    assert max(sizes) >= 4 * polls[0].max_items, sizes
    assert len(sizes) <= count // 20, sizes
    wait_until(lambda: sched.outstanding() == set(), timeout=WAIT, what="every ack")


def test_hard_timeout_fails_the_task_and_respawns_the_executor(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tap: StorageTap,
) -> None:
    em = make_em(processes=1)
    [executor] = em._pool.pids()
    session = session_of(storage)
    job = submit(client, it.sleep_forever, hard_timeout=0.5)
    sched.assign(job.id, 0, session)
    assert job.wait(timeout=WAIT) == JobState.FAILED
    assert "hard timeout" in (job.error() or "")
    [report] = tap.reports_of(job.id)
    assert "hard timeout (500 ms) exceeded" in report.request.outcomes[0].error_message
    [respawned] = em._pool.pids()
    assert respawned != executor
    assert (
        not psutil.pid_exists(executor) or psutil.Process(executor).status() == psutil.STATUS_ZOMBIE
    )
    later = submit(client, it.pid)
    sched.assign(later.id, 0, session)
    assert later.result(timeout=WAIT) == [respawned]


@pytest.mark.parametrize("task_state", ["finished", "running"])
def test_stop_kills_the_processes_tasks_left_behind(
    task_state: str,
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tmp_path: Path,
) -> None:
    em = make_em(processes=1, drain_timeout=1.0)
    [executor] = em._pool.pids()
    pidfile = tmp_path / "child.pid"
    then = "return" if task_state == "finished" else "hang"
    job = submit(client, ct.leave_child, "popen", then, str(pidfile))
    sched.assign(job.id, 0, session_of(storage))
    if task_state == "finished":
        [child] = job.result(timeout=WAIT)
    else:
        wait_until(pidfile.exists, timeout=WAIT, what="the task's child")
        child = int(pidfile.read_text())
    procs = [psutil.Process(executor), psutil.Process(child)]
    assert procs[1].is_running()
    em.stop()  # a running task is interrupted after the drain timeout
    for p in procs:
        wait_until(
            lambda p=p: not p.is_running() or p.status() == psutil.STATUS_ZOMBIE,
            timeout=WAIT,
            what=f"process {p.pid} to die",
        )
    assert em_threads() == []


def test_an_unusable_executor_pool_is_fatal_and_blames_no_task(
    storage: StorageProcess,
    make_em: Callable[..., ExecutionManager],
    sched: FakeScheduler,
    client: Client,
    tap: StorageTap,
    tmp_path: Path,
) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(TASKS_DIR / "integration_tasks.py", tasks)
    em = make_em(tasks_dir=tasks, processes=1)
    session = session_of(storage)
    warm = submit(client, it.pid)  # the executor imports the tasks module
    sched.assign(warm.id, 0, session)
    assert warm.result(timeout=WAIT) == em._pool.pids()
    shutil.rmtree(tasks)  # from now on no executor can start: the pool cannot respawn
    # Handed out together: a task that times out (its executor is killed and cannot be
    # replaced), then one that never gets an executor.
    timed_out = submit(client, it.sleep_forever, hard_timeout=0.5)
    never_ran = submit(client, it.fibonacci, 10)
    aids = sched.assign_many([(timed_out.id, 0, session), (never_ran.id, 0, session)])
    assert em.wait(timeout=WAIT), "the EM went on with a broken executor pool"
    assert em.exit_code == 1
    em.stop()
    assert em_threads() == []
    # The timeout happened before the pool broke: it is reported, not lost.
    assert timed_out.state == JobState.FAILED
    assert "hard timeout (500 ms) exceeded" in (timed_out.error() or "")
    # The task that never ran is not blamed for the pool's failure.
    assert tap.reports_of(never_ran.id) == [], "a task was blamed for the pool's failure"
    assert never_ran.state == JobState.RUNNING
    assert sample(em, "orbweaver_worker_tasks_total", result="not_run") == 1
    assert all(sched.is_acked(a) for a in aids)  # registered: storage owns and recovers them
    assert [s.execution_manager_id for _, s in sched.shutdowns] == [em.em_id]
