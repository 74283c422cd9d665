"""The chaos engine shared by `benches/chaos.py` (the long run) and `tests/e2e/test_chaos_run.py`
(the short one).

A `LocalCluster` (storage, scheduler, one worker) plus extra `orbweaver worker` processes, on a
private MariaDB server (or SQLite), runs a mixed workload submitted concurrently by several
resource groups while a fault injector SIGKILLs components and restarts MariaDB:

* jobs (`JOB_KINDS`): chains, fan-out/fan-in, jobs with a commit task, jobs with a cleanup task
  cancelled mid-run, jobs whose task always fails, jobs with a flaky (retried) task; some chains
  are submitted in batches with `submit_many`;
* faults (`FAULT_KINDS`): storage SIGKILLed and restarted; storage SIGKILLed, restarted and
  SIGKILLed again after it connected to the database, before it serves (during recovery); the
  scheduler; a worker with its executors (restarted after a pause); single executors; MariaDB
  SIGKILLed for a few seconds (the storage rides it out without a restart). Faults are drawn in
  rounds (each kind once per round, in random order), with random pauses between them.

Every fault is recorded with its time; storage restarts with the time to recover (kill to ready,
and kill to the next successful client call). At the end every job must be terminal within a
bounded wait (stuck), end as its kind dictates (wrong), and be found exactly once (lost, extra);
each group must see exactly its own jobs. Commit and cleanup runs per job are counted (they are
at-least-once). `ChaosReport.problems()` lists everything that went wrong; the short test asserts
it is empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

import orbweaver as ow
from orbweaver import errors
from orbweaver._service import LIFELINE_FD_ENV, PARENT_PID_ENV
from orbweaver.client import JobInfo, ResourceGroup
from orbweaver.local import Component
from support.liveness import SCHEDULER_CONFIG, STORAGE_CONFIG
from support.mariadb_server import MariaDBServer

TASKS_DIR = Path(__file__).resolve().parents[1] / "e2e" / "tasks"
if str(TASKS_DIR) not in sys.path:
    sys.path.insert(0, str(TASKS_DIR))
import chaos_tasks as ct  # noqa: E402

JOB_KINDS = ("chain", "fanout", "commit", "cancel", "fail", "flaky")
FAULT_KINDS = ("storage", "storage_in_recovery", "scheduler", "worker", "executor", "mariadb")
# Relative frequency of each submission slot; "batch" is a submit_many of BATCH chain jobs.
SLOT_WEIGHTS = {
    "chain": 3,
    "batch": 1,
    "fanout": 2,
    "commit": 2,
    "cancel": 1,
    "fail": 1,
    "flaky": 1,
}
BATCH = 3


@dataclass
class ChaosConfig:
    jobs: int = 40
    """Jobs to submit, spread over `duration`."""
    duration: float = 60.0
    """Seconds of submissions and faults (faults go on until `min_fault_rounds` are done)."""
    seed: int = 1
    fault_pause: float = 2.0
    """Mean pause in seconds between two faults (exponentially distributed)."""
    faults: tuple[str, ...] = FAULT_KINDS
    min_fault_rounds: int = 1
    """Faults go on after `duration` until this many rounds (each kind once) are done."""
    fault_rounds: int | None = None
    """Exactly this many rounds instead, whatever the duration: with the seed, a fixed
    sequence of faults."""
    groups: int = 3
    """Resource groups besides the operator's default one, each submitting from its thread."""
    extra_workers: int = 1
    executors: int = 2
    """Executor processes per worker."""
    outage: tuple[float, float] = (2.0, 5.0)
    """Seconds MariaDB stays down (uniform)."""
    worker_pause: tuple[float, float] = (0.0, 2.0)
    """Seconds a killed worker stays down (uniform)."""
    drain_timeout: float = 300.0
    """How long the jobs may take to finish once the faults stopped (then they are stuck)."""
    client_timeout: float = 180.0
    burst: int = 1
    """Slots each group submits back to back (bursts keep many jobs in flight at a fault)."""
    step_seconds: float = 0.05
    """How long each regular task sleeps (longer: more work in flight when a fault hits)."""


# -- the workload ---------------------------------------------------------------------------------


@dataclass
class JobSpec:
    kind: str
    graph: ow.TaskGraph
    inputs: list[Any]
    expected: Any
    """The outputs; for "fail" the text the error must contain."""
    token: str = ""


def _iterate(fn: Callable[[int], int], x: int, times: int) -> int:
    for _ in range(times):
        x = fn(x)
    return x


def make_job(kind: str, rng: random.Random, length: int | None = None) -> JobSpec:
    """One job of `kind`, with its expected result computed in-process."""
    x = rng.randrange(100_000)
    token = uuid.UUID(int=rng.getrandbits(128)).hex[:16]
    if kind == "chain":
        length = length or rng.randint(3, 10)
        g = ow.TaskGraph()
        h = g.add(ct.step)
        for _ in range(length - 1):
            h = g.add(ct.step, h)
        return JobSpec(kind, g, [x], [_iterate(ct.step_value, x, length)])
    if kind == "fanout":
        g = ow.TaskGraph()
        root = g.add(ct.spread)
        squares = [g.add(ct.square, root[i]) for i in range(4)]
        g.add(ct.step, g.add(ct.total, *squares))
        fan_in = sum(ct.square_value(v) for v in ct.spread_values(x)) % ct.MODULUS
        return JobSpec(kind, g, [x], [ct.step_value(fan_in)])
    if kind == "commit":
        y = rng.randrange(100_000)
        g = ow.TaskGraph(commit=ct.publish)
        a = g.add(ct.step)
        g.add(ct.combine, g.add(ct.step, a), g.add(ct.square, a))
        g.add(ct.step)
        a_val = ct.step_value(x)
        want = [ct.combine_value(ct.step_value(a_val), ct.square_value(a_val)), ct.step_value(y)]
        return JobSpec(kind, g, [x, y], want)
    if kind == "cancel":
        g = ow.TaskGraph(cleanup=ct.cleanup)
        p = g.add(ct.prepare)
        g.add(ct.step, g.add(ct.gate, p[0], p[1]))
        return JobSpec(kind, g, [x, token], repr([x, token]), token)
    if kind == "fail":
        g = ow.TaskGraph(commit=ct.publish)
        g.add(ct.explode, g.add(ct.step))
        return JobSpec(kind, g, [x], ct.failure_text(ct.step_value(x)))
    if kind == "flaky":
        g = ow.TaskGraph()
        g.add(ct.step, g.add(ct.flaky_step))
        return JobSpec(kind, g, [x, token], [_iterate(ct.step_value, x, 2)], token)
    raise ValueError(f"unknown job kind {kind!r}")


@dataclass
class Submitted:
    spec: JobSpec
    group: str
    job: ow.Job
    via: str
    at_s: float
    cancel: str = ""
    """What the cancel call returned (a state name) or raised."""


# -- processes ------------------------------------------------------------------------------------


class ChaosCluster(ow.LocalCluster):
    """A LocalCluster that tells whether a component is still running (for the supervisor)."""

    def exit_code(self, name: Component) -> int | None:
        return self._procs[name].popen.poll()


class WorkerProcess:
    """An extra `orbweaver worker` of a cluster; it dies with this process (lifeline pipe)."""

    def __init__(
        self,
        name: str,
        cluster: ChaosCluster,
        executors: int,
        env: dict[str, str],
        lifeline: int,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.executors = executors
        self.lifeline = lifeline
        self.log_path = cluster.log_dir / f"{name}.log"
        self.ready = cluster.log_dir / f"{name}.ready"
        self.env = {**os.environ, **env, "ORBWEAVER_TOKEN": cluster.token}
        # Executors see only the variables a worker lets through (the same list LocalCluster
        # builds for its own worker from its env).
        self.env["ORBWEAVER_EXECUTOR_ENV"] = ",".join(env)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p
            for p in [str(Path(ow.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]
            if p
        )
        self.env[LIFELINE_FD_ENV] = str(lifeline)
        self.env.pop(PARENT_PID_ENV, None)  # restarted from other threads: the lifeline serves
        for secret in ("ORBWEAVER_OPERATOR_TOKEN", "ORBWEAVER_PASSWORD", "ORBWEAVER_DB"):
            self.env.pop(secret, None)
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def start(self, timeout: float = 120.0) -> None:
        self.ready.unlink(missing_ok=True)
        c = self.cluster
        args = [
            sys.executable,
            "-m",
            "orbweaver",
            "worker",
            "--storage",
            c.address,
            "--scheduler",
            c.scheduler_address,
            "--tasks-dir",
            str(c.tasks_dir),
            "--processes",
            str(self.executors),
            "--ip",
            "127.0.0.1",
            "--ready-file",
            str(self.ready),
        ]
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                pass_fds=(self.lifeline,),
            )
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            code = self.popen.poll()
            if code is not None:
                raise errors.Unavailable(f"{self.name} exited with {code} during start-up")
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"{self.name} was not ready within {timeout:g} s")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(30)

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(30)
        self.kill()


# -- the report -----------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    target: str
    at_s: float
    """When it was injected, seconds since the run started."""
    seconds: float = 0.0
    """Storage, scheduler, worker: kill to ready again; MariaDB: how long it was down."""
    first_call_s: float | None = None
    """Storage and MariaDB: kill to the next successful client call."""
    detail: str = ""


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "median": None, "max": None}
    return {
        "count": len(values),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def _runs_summary(runs: dict[int, int]) -> dict[str, Any]:
    values = list(runs.values())
    return {
        "jobs": len(values),
        "distribution": {str(k): v for k, v in sorted(Counter(values).items())},
        "max": max(values, default=0),
        "mean": round(statistics.fmean(values), 3) if values else None,
    }


@dataclass
class ChaosReport:
    config: dict[str, Any]
    database: str
    jobs_by_kind: dict[str, int]
    jobs_by_group: dict[str, int]
    jobs_by_via: dict[str, int]
    final_states: dict[str, int]
    faults: list[Fault]
    lost: list[str]
    stuck: list[str]
    wrong: list[str]
    extra: list[str]
    isolation: list[str]
    unexpected_exits: list[str]
    driver_errors: list[str]
    commit_runs: dict[int, int]
    cleanup_runs: dict[int, int]
    flaky_attempts: dict[int, int]
    cancel_replies: dict[str, int]
    submit_retries: int
    executor_hits: dict[str, int]
    recovery_phases: dict[str, int]
    jobs_recovered: list[int]
    log_errors: dict[str, int]
    run_s: float
    drain_s: float

    def problems(self) -> list[str]:
        """Everything that went wrong, one line each (empty: the run proved what it should)."""
        out = [f"lost: {x}" for x in self.lost]
        out += [f"stuck: {x}" for x in self.stuck]
        out += [f"wrong: {x}" for x in self.wrong]
        out += [f"extra job: {x}" for x in self.extra]
        out += [f"isolation: {x}" for x in self.isolation]
        out += [f"unexpected exit: {x}" for x in self.unexpected_exits]
        out += [f"driver: {x}" for x in self.driver_errors]
        return out

    def faults_by_kind(self) -> dict[str, int]:
        counts = Counter(f.kind for f in self.faults)
        return {k: counts[k] for k in FAULT_KINDS if k in counts}

    def storage_recovery(self) -> dict[str, Any]:
        kills = [f for f in self.faults if f.kind in ("storage", "storage_in_recovery")]
        return {
            "restarts": len(kills),
            "killed_during_recovery": sum(1 for f in kills if f.kind == "storage_in_recovery"),
            "time_to_ready_s": _stats([f.seconds for f in kills]),
            "time_to_first_call_s": _stats(
                [f.first_call_s for f in kills if f.first_call_s is not None]
            ),
            "jobs_recovered_per_start": _stats([float(n) for n in self.jobs_recovered]),
            "second_kill_phase": dict(self.recovery_phases),
        }

    def mariadb_outages(self) -> dict[str, Any]:
        outages = [f for f in self.faults if f.kind == "mariadb"]
        return {
            "outages": len(outages),
            "down_s": _stats([f.seconds for f in outages]),
            "down_to_first_call_s": _stats(
                [f.first_call_s for f in outages if f.first_call_s is not None]
            ),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "database": self.database,
            "run_s": round(self.run_s, 1),
            "drain_s": round(self.drain_s, 1),
            "jobs": {
                "total": sum(self.jobs_by_kind.values()),
                "by_kind": self.jobs_by_kind,
                "by_group": self.jobs_by_group,
                "by_submission": self.jobs_by_via,
                "final_states": self.final_states,
                "cancel_replies": self.cancel_replies,
                "driver_submit_retries": self.submit_retries,
            },
            "faults": {
                "total": len(self.faults),
                "by_kind": self.faults_by_kind(),
                "executor_kills_that_hit": self.executor_hits,
                "events": [vars(f) for f in self.faults],
            },
            "storage_recovery": self.storage_recovery(),
            "mariadb": self.mariadb_outages(),
            "verdict": {
                "lost": len(self.lost),
                "stuck": len(self.stuck),
                "wrong": len(self.wrong),
                "extra": len(self.extra),
                "isolation_violations": len(self.isolation),
                "unexpected_exits": len(self.unexpected_exits),
                "driver_errors": len(self.driver_errors),
                "problems": self.problems(),
            },
            "commit_runs_per_job": _runs_summary(self.commit_runs),
            "cleanup_runs_per_job": _runs_summary(self.cleanup_runs),
            "flaky_attempts_per_job": _runs_summary(self.flaky_attempts),
            "error_log_lines": self.log_errors,
        }


# -- the run --------------------------------------------------------------------------------------


@dataclass
class _Group:
    name: str
    client: ow.Client
    group: ResourceGroup
    jobs: list[Submitted] = field(default_factory=list)
    cancels: queue.Queue[Submitted | None] = field(default_factory=queue.Queue)


class ChaosRun:
    """One chaos run; `run()` returns its report (the cluster is stopped either way)."""

    def __init__(
        self,
        config: ChaosConfig,
        workdir: Path,
        db_url: str,
        server: MariaDBServer | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if server is None and "mariadb" in config.faults:
            raise ValueError("MariaDB restarts need a private MariaDB server (server=)")
        self.config = config
        self.workdir = workdir
        self.db_url = db_url
        self.server = server
        self.say = progress or (lambda _msg: None)
        self.markers = workdir / "markers"
        self.markers.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(config.seed)
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.unexpected: list[str] = []
        self.driver_errors: list[str] = []
        self.recovery_phases: Counter[str] = Counter()
        self.submit_retries = 0
        self.stop_faults = threading.Event()
        self.expected_down: set[str] = set()
        self.t0 = 0.0
        self.cluster: ChaosCluster | None = None
        self.workers: list[WorkerProcess] = []
        self.groups: list[_Group] = []
        self.operator: ow.Client | None = None
        self._lifeline: tuple[int, int] | None = None

    # -- set-up --------------------------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def _start(self) -> None:
        cfg = self.config
        storage_cfg = self.workdir / "storage.toml"
        storage_cfg.write_text(STORAGE_CONFIG)
        scheduler_cfg = self.workdir / "scheduler.toml"
        scheduler_cfg.write_text(SCHEDULER_CONFIG)
        self.cluster = ChaosCluster(
            workers=cfg.executors,
            db=self.db_url,
            tasks_dir=TASKS_DIR,
            log_dir=self.workdir / "logs",
            start_timeout=120,
            storage_args=["--config", str(storage_cfg)],
            scheduler_args=["--config", str(scheduler_cfg)],
            env=self._task_env(),
        )
        self.cluster.start()
        self._lifeline = os.pipe()
        for i in range(cfg.extra_workers):
            w = WorkerProcess(
                f"worker-{i + 2}", self.cluster, cfg.executors, self._task_env(), self._lifeline[0]
            )
            w.start()
            self.workers.append(w)
        timeouts = {"timeout": cfg.client_timeout, "connect_timeout": cfg.client_timeout}
        self.operator = self.cluster.new_client(**timeouts)
        self.groups.append(_Group("default", self.operator, self.cluster.resource_group))
        for i in range(cfg.groups):
            name = f"group-{i + 1}"
            group = self.operator.add_resource_group(name, uuid.uuid4().hex)
            client = self.cluster.new_client(operator=False, resource_group=group, **timeouts)
            client.jobs(limit=1)  # reached once: later calls retry through outages
            self.groups.append(_Group(name, client, group))

    def _task_env(self) -> dict[str, str]:
        return {
            "CHAOS_TEST_MARKERS": str(self.markers),
            "CHAOS_STEP_SECONDS": str(self.config.step_seconds),
        }

    def _stop(self) -> None:
        for group in self.groups:
            if group.client is not self.operator:
                group.client.close()
        if self.operator is not None:
            self.operator.close()
        for w in self.workers:
            w.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self._lifeline is not None:
            for fd in self._lifeline:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> ChaosReport:
        try:
            self._start()
            self.say(
                f"cluster up: {1 + len(self.workers)} workers x {self.config.executors} "
                f"executors, {len(self.groups)} resource groups"
            )
            self.t0 = time.monotonic()
            threads = [
                threading.Thread(target=self._guard, args=(self._inject,), name="faults"),
            ]
            slots = self._deal_slots()
            for group, group_slots in zip(self.groups, slots, strict=True):
                threads.append(
                    threading.Thread(
                        target=self._guard,
                        args=(self._submit_loop, group, group_slots),
                        name=f"submit-{group.name}",
                    )
                )
                threads.append(
                    threading.Thread(
                        target=self._guard,
                        args=(self._cancel_loop, group),
                        name=f"cancel-{group.name}",
                    )
                )
            for t in threads:
                t.start()
            for t in threads:
                if t.name.startswith("submit-"):
                    t.join()
            for group in self.groups:
                group.cancels.put(None)
            for t in threads:
                if t.name.startswith("cancel-"):
                    t.join()
            threads[0].join()  # the fault injector ends on its own (duration, rounds)
            self._supervise()
            run_s = self._now()
            self.say(f"submissions and faults done after {run_s:.0f} s; draining")
            return self._verify(run_s)
        finally:
            self._stop()

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            with self.lock:
                self.driver_errors.append(
                    f"{threading.current_thread().name}: {type(exc).__name__}: {exc}"
                )
            self.stop_faults.set()

    def _deal_slots(self) -> list[list[str]]:
        """The submission slots of each group: drawn by weight until `jobs` jobs, dealt
        round-robin so every group gets every kind."""
        kinds = list(SLOT_WEIGHTS)
        weights = [SLOT_WEIGHTS[k] for k in kinds]
        bag: list[str] = []
        total = 0
        # First one of each kind (the short run must see every kind), then by weight.
        for kind in kinds:
            if total < self.config.jobs:
                bag.append(kind)
                total += BATCH if kind == "batch" else 1
        while total < self.config.jobs:
            kind = self.rng.choices(kinds, weights)[0]
            bag.append(kind)
            total += BATCH if kind == "batch" else 1
        self.rng.shuffle(bag)
        slots: list[list[str]] = [[] for _ in self.groups]
        for i, kind in enumerate(bag):
            slots[i % len(self.groups)].append(kind)
        return slots

    # -- submissions -----------------------------------------------------------------------------

    def _submit_loop(self, group: _Group, slots: list[str]) -> None:
        rng = random.Random(f"{self.config.seed}-{group.name}")
        bursts = max(1, -(-len(slots) // self.config.burst))
        spacing = self.config.duration / bursts
        for i, slot in enumerate(slots):
            if i % self.config.burst == 0:  # a burst's jobs go back to back
                due = self.t0 + (i // self.config.burst + rng.random()) * spacing
                time.sleep(max(0.0, due - time.monotonic()))
            if slot == "batch":
                self._submit_batch(group, rng)
                continue
            spec = make_job(slot, rng)
            sub = self._submit_one(group, spec)
            if sub is not None and slot == "cancel":
                group.cancels.put(sub)

    def _submit_one(self, group: _Group, spec: JobSpec) -> Submitted | None:
        # One idempotency key for every attempt: a resubmission never creates a second job.
        key = uuid.uuid4().hex
        last: Exception | None = None
        for _attempt in range(5):
            try:
                job = group.client.submit(spec.graph, spec.inputs, idempotency_key=key)
            except errors.Unavailable as exc:
                last = exc
                with self.lock:
                    self.submit_retries += 1
                time.sleep(1.0)
                continue
            sub = Submitted(spec, group.name, job, "submit", self._now())
            with self.lock:
                group.jobs.append(sub)
            return sub
        with self.lock:
            self.driver_errors.append(f"{group.name}: a {spec.kind} job not acknowledged: {last}")
        return None

    def _submit_batch(self, group: _Group, rng: random.Random) -> None:
        length = rng.randint(3, 10)
        specs = [make_job("chain", rng, length) for _ in range(BATCH)]
        graph = specs[0].graph  # one graph for the batch: same shape, own inputs
        try:
            jobs = group.client.submit_many(graph, [s.inputs for s in specs])
        except errors.Unavailable as exc:
            with self.lock:
                self.driver_errors.append(f"{group.name}: a batch not acknowledged: {exc}")
            return
        now = self._now()
        with self.lock:
            for spec, job in zip(specs, jobs, strict=True):
                spec.graph = graph
                group.jobs.append(Submitted(spec, group.name, job, "submit_many", now))

    def _cancel_loop(self, group: _Group) -> None:
        # One thread per job: a gate holds an executor until its own job is cancelled, so gates
        # waiting for a busy canceller could take every executor.
        cancellers: list[threading.Thread] = []
        while True:
            sub = group.cancels.get()
            if sub is None:
                break
            t = threading.Thread(
                target=self._guard, args=(self._cancel, sub), name=f"cancel-{group.name}-job"
            )
            t.start()
            cancellers.append(t)
        for t in cancellers:
            t.join()

    def _cancel(self, sub: Submitted) -> None:
        """Cancel mid-run: once the first task succeeded and the gate holds the job. Then
        release the gate (whose executor would otherwise stay busy)."""
        job = sub.job
        deadline = time.monotonic() + self.config.client_timeout
        try:
            while time.monotonic() < deadline:
                progress = job.progress()
                if progress.state.is_terminal:
                    break
                if progress.state == ow.JobState.RUNNING and progress.succeeded >= 1:
                    break
                time.sleep(0.1)
            sub.cancel = job.cancel().name
        except errors.OrbweaverError as exc:
            sub.cancel = f"{type(exc).__name__}: {exc}"
        finally:
            (self.markers / f"release-{sub.spec.token}").write_text("")

    # -- faults ----------------------------------------------------------------------------------

    def _inject(self) -> None:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}-faults")
        end = self.t0 + cfg.duration
        rounds = 0
        while True:
            kinds = list(cfg.faults)
            rng.shuffle(kinds)
            for kind in kinds:
                if cfg.fault_rounds is None:
                    if time.monotonic() >= end and rounds >= cfg.min_fault_rounds:
                        return
                elif rounds >= cfg.fault_rounds:
                    return
                if self.stop_faults.wait(rng.expovariate(1.0 / cfg.fault_pause)):
                    return
                self._supervise()
                fault = getattr(self, f"_fault_{kind}")(rng)
                with self.lock:
                    self.faults.append(fault)
                self.say(
                    f"{fault.at_s:7.1f} s  {fault.kind:<20} {fault.target:<10} "
                    f"{fault.seconds:6.2f} s  {fault.detail}"
                )
                self._supervise()
            rounds += 1

    def _first_call(self, t0: float) -> float | None:
        """Seconds from `t0` until the operator's next successful call (a job listing, which
        needs both the storage and the database)."""
        assert self.operator is not None
        try:
            self.operator.jobs(limit=1)
        except errors.OrbweaverError as exc:
            with self.lock:
                self.driver_errors.append(f"no successful call after a fault: {exc}")
            return None
        return time.monotonic() - t0

    def _restart(self, name: Component) -> None:
        """Restart a component, a few attempts (a failed start is a finding, not the end)."""
        assert self.cluster is not None
        for attempt in range(5):
            try:
                self.cluster.restart(name)
                return
            except Exception as exc:
                self.cluster.kill(name)
                with self.lock:
                    self.unexpected.append(
                        f"{name} failed to restart (attempt {attempt + 1}): {exc}"[:2000]
                    )
                time.sleep(1.0)
        raise RuntimeError(f"{name} could not be restarted")

    def _kill_restart(self, name: Component, pause: float = 0.0) -> float:
        assert self.cluster is not None
        t0 = time.monotonic()
        self.expected_down.add(name)
        try:
            self.cluster.kill(name)
            time.sleep(pause)
            self._restart(name)
        finally:
            self.expected_down.discard(name)
        return time.monotonic() - t0

    def _fault_storage(self, rng: random.Random) -> Fault:
        at = self._now()
        t0 = time.monotonic()
        seconds = self._kill_restart("storage")
        return Fault("storage", "storage", at, seconds, self._first_call(t0))

    def _fault_storage_in_recovery(self, rng: random.Random) -> Fault:
        """SIGKILL the storage, restart it, and SIGKILL the new process as soon as it has
        connected to the database (it recovers the job cache right then), before it serves;
        then restart it for good."""
        cluster = self.cluster
        assert cluster is not None
        at = self._now()
        t0 = time.monotonic()
        self.expected_down.add("storage")
        log = cluster.log_dir / "storage.log"
        try:
            old_pid = cluster.pid("storage")
            cluster.kill("storage")
            offset = log.stat().st_size
            outcome: list[BaseException | None] = []

            def restart() -> None:
                try:
                    cluster.restart("storage")
                    outcome.append(None)
                except BaseException as exc:  # the kill below makes it fail: expected
                    outcome.append(exc)

            starter = threading.Thread(target=restart, name="storage-restart")
            starter.start()
            pid = _wait_for_connect(cluster, old_pid, log, offset, starter)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            starter.join(120)
            phase = _start_phase(log, offset, pid)
            with self.lock:
                self.recovery_phases[phase] += 1
            cluster.kill("storage")  # reaps the killed process, closes its log
            self._restart("storage")
        finally:
            self.expected_down.discard("storage")
        seconds = time.monotonic() - t0
        detail = f"second kill: {phase}"
        return Fault("storage_in_recovery", "storage", at, seconds, self._first_call(t0), detail)

    def _fault_scheduler(self, rng: random.Random) -> Fault:
        at = self._now()
        return Fault("scheduler", "scheduler", at, self._kill_restart("scheduler"))

    def _fault_worker(self, rng: random.Random) -> Fault:
        at = self._now()
        pause = rng.uniform(*self.config.worker_pause)
        index = rng.randrange(1 + len(self.workers))
        if index == 0:
            seconds = self._kill_restart("worker", pause)
            return Fault("worker", "worker-1", at, seconds, detail=f"down {pause:.1f} s")
        w = self.workers[index - 1]
        t0 = time.monotonic()
        self.expected_down.add(w.name)
        try:
            w.kill()
            time.sleep(pause)
            w.start()
        finally:
            self.expected_down.discard(w.name)
        return Fault("worker", w.name, at, time.monotonic() - t0, detail=f"down {pause:.1f} s")

    def _fault_executor(self, rng: random.Random) -> Fault:
        assert self.cluster is not None
        at = self._now()
        targets = [("worker-1", self.cluster.pid("worker"))] + [
            (w.name, w.pid) for w in self.workers
        ]
        name, pid = targets[rng.randrange(len(targets))]
        # The same draws whatever is found: the fault sequence depends on the seed alone.
        kill_all, pick = rng.random() < 0.2, rng.random()
        try:
            children = psutil.Process(pid).children()
        except psutil.Error:
            children = []
        if not children:
            return Fault("executor", name, at, detail="no executor to kill")
        victims = children if kill_all else [children[int(pick * len(children))]]
        for child in victims:
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGKILL)
        return Fault("executor", name, at, detail=f"{len(victims)} of {len(children)} killed")

    def _fault_mariadb(self, rng: random.Random) -> Fault:
        assert self.server is not None and self.cluster is not None
        at = self._now()
        storage_pid = self.cluster.pid("storage")
        down = rng.uniform(*self.config.outage)
        t0 = time.monotonic()
        self.server.kill()
        time.sleep(down)
        self.server.restart()
        seconds = time.monotonic() - t0
        first = self._first_call(t0)
        same = (
            self.cluster.pid("storage") == storage_pid and self.cluster.exit_code("storage") is None
        )
        detail = "storage stayed up" if same else "STORAGE DID NOT STAY UP"
        return Fault("mariadb", "mariadb", at, seconds, first, detail)

    def _supervise(self) -> None:
        """A component that exited without being killed here is a finding: record why, then
        restart it so the run goes on."""
        cluster = self.cluster
        assert cluster is not None
        names: tuple[Component, ...] = ("storage", "scheduler", "worker")
        for name in names:
            if name in self.expected_down:
                continue
            code = cluster.exit_code(name)
            if code is not None:
                tail = cluster.logs(name)[-1500:]
                with self.lock:
                    self.unexpected.append(
                        f"{name} exited with {code} at {self._now():.1f} s; log tail:\n{tail}"
                    )
                cluster.kill(name)
                self._restart(name)
        for w in self.workers:
            if w.name in self.expected_down:
                continue
            code = w.exit_code()
            if code is not None:
                with self.lock:
                    self.unexpected.append(f"{w.name} exited with {code} at {self._now():.1f} s")
                w.kill()
                w.start()

    # -- verification ----------------------------------------------------------------------------

    def _verify(self, run_s: float) -> ChaosReport:
        assert self.operator is not None and self.cluster is not None
        subs = [s for g in self.groups for s in g.jobs]
        drain_start = time.monotonic()
        end = drain_start + self.config.drain_timeout
        stuck: list[str] = []
        states: dict[int, ow.JobState] = {}
        for sub in subs:
            try:
                state = sub.job.wait(timeout=max(0.0, end - time.monotonic()))
            except errors.JobNotFound:
                continue  # lost: counted below
            states[sub.job.id] = state
            if not state.is_terminal:
                explain = sub.job.progress(explain=3)
                stuck.append(f"job {sub.job.id} ({sub.spec.kind}) {state.name}: {explain}")
        drain_s = time.monotonic() - drain_start
        self.say(f"drained in {drain_s:.0f} s; verifying {len(subs)} jobs")

        lost: list[str] = []
        wrong: list[str] = []
        commit_runs: dict[int, int] = {}
        cleanup_runs: dict[int, int] = {}
        flaky_attempts: dict[int, int] = {}
        for sub in subs:
            jid = sub.job.id
            try:
                self.operator.get_job(jid)
            except errors.JobNotFound:
                lost.append(f"job {jid} ({sub.spec.kind}, {sub.group}) not found")
                continue
            state = states.get(jid)
            if state is None or not state.is_terminal:
                continue
            problem = self._check(sub, state)
            if problem:
                wrong.append(f"job {jid} ({sub.spec.kind}, {sub.group}): {problem}")
            commit = _count_lines(self.markers / f"commit-{jid}.runs")
            cleanup = _count_lines(self.markers / f"cleanup-{jid}.runs")
            if sub.spec.kind == "commit" and state == ow.JobState.SUCCEEDED:
                commit_runs[jid] = commit
            if sub.spec.kind == "cancel" and state == ow.JobState.CANCELLED:
                cleanup_runs[jid] = cleanup
            if sub.spec.kind == "flaky":
                path = self.markers / f"flaky-{sub.spec.token}"
                flaky_attempts[jid] = int(path.read_text() or 0) if path.exists() else 0

        unlisted, extra, isolation = self._check_listings(subs)
        lost += unlisted
        executor_hits = self._executor_hits()
        return ChaosReport(
            config={k: v for k, v in vars(self.config).items()},
            database=self.db_url.split(":", 1)[0],
            jobs_by_kind=dict(Counter(s.spec.kind for s in subs)),
            jobs_by_group=dict(Counter(s.group for s in subs)),
            jobs_by_via=dict(Counter(s.via for s in subs)),
            final_states=dict(Counter(s.name for s in states.values())),
            faults=list(self.faults),
            lost=lost,
            stuck=stuck,
            wrong=wrong,
            extra=extra,
            isolation=isolation,
            unexpected_exits=list(self.unexpected),
            driver_errors=list(self.driver_errors),
            commit_runs=commit_runs,
            cleanup_runs=cleanup_runs,
            flaky_attempts=flaky_attempts,
            cancel_replies=dict(Counter(s.cancel for s in subs if s.spec.kind == "cancel")),
            submit_retries=self.submit_retries,
            executor_hits=executor_hits,
            recovery_phases=dict(self.recovery_phases),
            jobs_recovered=self._jobs_recovered(),
            log_errors=self._log_errors(),
            run_s=run_s,
            drain_s=drain_s,
        )

    def _check(self, sub: Submitted, state: ow.JobState) -> str | None:
        """What is wrong with a terminal job, given its kind (None: nothing)."""
        spec, job, jid = sub.spec, sub.job, sub.job.id
        commit_marker = self.markers / f"commit-{jid}"
        cleanup_marker = self.markers / f"cleanup-{jid}"
        if spec.kind == "fail":
            if state != ow.JobState.FAILED:
                return f"{state.name}, want FAILED"
            error = job.error() or ""
            if f"ValueError: {spec.expected}" not in error:
                return f"error {error[:300]!r} does not name {spec.expected!r}"
            if (
                commit_marker.exists()
                or commit_marker.with_name(f"{commit_marker.name}.runs").exists()
            ):
                return "the commit task ran for a failed job"
            return None
        if spec.kind == "cancel":
            if state != ow.JobState.CANCELLED:
                return f"{state.name}, want CANCELLED (cancel returned {sub.cancel!r})"
            if not cleanup_marker.exists():
                return "CANCELLED without a cleanup run"
            got = cleanup_marker.read_text()
            if got != spec.expected:
                return f"cleanup received {got!r}, want the graph inputs {spec.expected!r}"
            return None
        if state != ow.JobState.SUCCEEDED:
            error = job.error() if state == ow.JobState.FAILED else None
            return f"{state.name}, want SUCCEEDED" + (f": {error[:500]}" if error else "")
        outputs = job.outputs()
        if outputs != spec.expected:
            return f"outputs {outputs!r}, want {spec.expected!r}"
        if spec.kind == "commit":
            if not commit_marker.exists():
                return "SUCCEEDED without a publication"
            published = commit_marker.read_text()
            if published != repr(spec.expected):
                return f"published {published!r}, want {spec.expected!r}"
        if cleanup_marker.exists():
            return "a cleanup ran for a job that was not cancelled"
        return None

    def _check_listings(self, subs: list[Submitted]) -> tuple[list[str], list[str], list[str]]:
        """The operator's listing holds exactly the submitted jobs (none missing: lost; none
        created twice: extra); each group's listing holds exactly its own; a group cannot see
        another's."""
        assert self.operator is not None
        extra: list[str] = []
        isolation: list[str] = []
        by_id = {s.job.id: s for s in subs}
        group_ids = {g.name: g.group.id for g in self.groups}
        listed = _list_all(self.operator)
        for info in listed:
            sub = by_id.get(info.id)
            if sub is None:
                extra.append(f"job {info.id} of group {info.resource_group_id} ({info.state.name})")
            elif info.resource_group_id != group_ids[sub.group]:
                isolation.append(
                    f"job {info.id} listed in group {info.resource_group_id}, "
                    f"submitted to {sub.group}"
                )
        missing = sorted(set(by_id) - {i.id for i in listed})
        lost = [f"job {j} acknowledged but not in the operator's listing" for j in missing]
        for g in self.groups:
            own = {s.job.id for s in g.jobs}
            if g.client is self.operator:
                seen = {i.id for i in _list_all(self.operator, g.group)}
            else:
                seen = {i.id for i in _list_all(g.client)}
            if seen != own:
                isolation.append(
                    f"{g.name} lists {len(seen)} jobs, submitted {len(own)}: "
                    f"{sorted(seen ^ own)[:10]} differ"
                )
        # A group's credentials do not reach another group's job (not found, like a missing one).
        clients = [g for g in self.groups if g.client is not self.operator]
        for g in clients:
            others = [s for s in subs if s.group != g.name][:3]
            for sub in others:
                try:
                    g.client.get_job(sub.job.id)
                except errors.JobNotFound:
                    continue
                isolation.append(f"{g.name} sees job {sub.job.id} of {sub.group}")
        return lost, extra, isolation

    # -- logs ------------------------------------------------------------------------------------

    def _log_lines(self, pattern: str) -> Iterator[dict[str, Any]]:
        assert self.cluster is not None
        for path in sorted(self.cluster.log_dir.glob(pattern)):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        yield json.loads(line)

    def _executor_hits(self) -> dict[str, int]:
        """Executor kills that hit a running task (it failed, a retry consumed) and those that
        hit an idle executor, from the workers' logs."""
        hits: Counter[str] = Counter()
        for entry in self._log_lines("worker*.log"):
            msg = str(entry.get("msg", ""))
            if msg.startswith("executor crashed (killed by signal 9)"):
                hits["running a task"] += 1
            elif msg == "executor died while idle":
                hits["idle"] += 1
        return dict(hits)

    def _jobs_recovered(self) -> list[int]:
        """Jobs each storage start recovered into its cache (the first start recovers none)."""
        return [
            int(e.get("jobs", 0))
            for e in self._log_lines("storage.log")
            if e.get("msg") == "job cache recovered"
        ][1:]

    def _log_errors(self) -> dict[str, int]:
        """Error and critical log lines of every component, by component and message."""
        counts: Counter[str] = Counter()
        for entry in self._log_lines("*.log"):
            if entry.get("level") in ("error", "critical"):
                counts[f"{entry.get('component')}: {str(entry.get('msg'))[:160]}"] += 1
        return dict(counts.most_common(30))


def _list_all(client: ow.Client, group: ResourceGroup | None = None) -> list[JobInfo]:
    out: list[JobInfo] = []
    before: int | None = None
    while True:
        page = client.jobs(limit=1000, before=before, resource_group=group)
        out.extend(page)
        if len(page) < 1000:
            return out
        before = page[-1].id


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for_connect(
    cluster: ChaosCluster, old_pid: int, log: Path, offset: int, starter: threading.Thread
) -> int | None:
    """The pid of the restarting storage once it logged that it connected to the database
    (None if the restart ended first). Polls every millisecond: recovery is short."""
    deadline = time.monotonic() + 120
    pid: int | None = None
    while time.monotonic() < deadline and starter.is_alive():
        with contextlib.suppress(KeyError):
            current = cluster.pid("storage")
            if current != old_pid:
                pid = current
        if pid is not None and _logged(log, offset, pid, "connected to the database"):
            return pid
        time.sleep(0.001)
    return pid


def _logged(log: Path, offset: int, pid: int, msg: str) -> bool:
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    needle = f'"pid": {pid},'
    return any(needle in line and f'"msg": "{msg}"' in line for line in text.splitlines())


def _start_phase(log: Path, offset: int, pid: int | None) -> str:
    """How far the storage process `pid` got before the second SIGKILL."""
    if pid is None:
        return "not started"
    if _logged(log, offset, pid, "storage serving"):
        return "serving"
    if _logged(log, offset, pid, "job cache recovered"):
        return "recovered, not serving"
    if _logged(log, offset, pid, "connected to the database"):
        return "recovering"
    return "starting"


def run_chaos(
    config: ChaosConfig,
    workdir: Path,
    db: str = "mariadb",
    server: MariaDBServer | None = None,
    progress: Callable[[str], None] | None = None,
) -> ChaosReport:
    """Run the chaos workload on a fresh database: a new database on `server` (a private
    MariaDB server, which the run may kill and restart) or a SQLite file (no MariaDB faults)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if db == "sqlite":
        config.faults = tuple(f for f in config.faults if f != "mariadb")
        url = f"sqlite:///{workdir / 'jobs.db'}"
        return ChaosRun(config, workdir, url, None, progress).run()
    if server is None:
        raise ValueError("a MariaDB chaos run needs a private server")
    return ChaosRun(
        config, workdir, server.create_database("orbweaver_chaos"), server, progress
    ).run()
