"""End-to-end benchmark: the workloads of docs/performance.md on a multi-process Orbweaver cluster
with MariaDB persistence, and the same workloads on Ray and Dask distributed, in one run.

* ``w1`` wide job: one job of 10,000 independent ``inc(x: int) -> int`` tasks; the time covers
  building the graph, submitting it, waiting and gathering every output.
* ``w2`` small jobs: 1,000 diamond jobs (4 tasks each) submitted back to back, then all waited for
  and their outputs gathered. Orbweaver submits them with ``Client.submit_many`` and collects them
  with ``Client.gather`` (the APIs for many jobs, as Ray's and Dask's submissions are non-blocking
  and they collect with ``ray.get`` / ``gather`` of a list); ``--w2-submit each`` uses one blocking
  ``Client.submit`` and one ``Job.result`` per job instead (the plain loop), ``--w2-submit async``
  an ``AsyncClient`` and ``await asyncio.gather(*(run(x) for x in range(1000)))`` where ``run``
  submits one diamond and awaits its result (concurrent submissions share transactions).
* ``nn``: Spider's neural-net workload, 10 x 1,000 neurons with 25 inputs each (relu / sigmoid /
  identity by layer); wall time, and the outputs checked against an in-process computation to a
  relative tolerance of 1e-12.

Workload shapes (``--workloads lat,t1,t10,t100,fanout,clients4,topology``; the default is
``w1,w2,nn``):

* ``lat``: latency of one small job. ``--latency-jobs`` (500) one-task jobs ``inc(x)``, each
  submitted and waited for before the next, after 20 untimed ones: Orbweaver
  ``client.submit(g, [x]).result()`` (the durable submission included), Ray
  ``ray.get(inc.remote(x))``, Dask ``client.submit(inc, x, pure=False).result()``. Every sample
  is kept (``latency_ms`` of each run); the summary gives p50 / p90 / p99 / mean over all runs.
* ``t1``, ``t10``, ``t100``: independent tasks that busy-spin for 1, 10 or 100 ms, as one wide
  job (Ray remote calls, Dask ``client.map``), ``--spin-cpu-s`` (6) busy seconds of them per
  shape. Core utilisation = the spin time each task measured and returned, summed, / (workers x
  wall): the share of the executors' time spent running tasks. Target: >= 90 % at 10 ms.
  Also recorded: the same with each task counted at its nominal duration (``nominal_utilisation``),
  which a spin stretched by other work preempting it does not inflate.
* ``fanout``: one task makes ``--fanout-bytes`` (1 MiB) of bytes, ``--fanout-readers`` (100)
  children each return ``len << 32 | crc32`` of them. Wall time, the peak resident size of each
  role's processes (VmHWM, reset before the run through ``/proc/PID/clear_refs``) and its growth
  over the run, and the bytes moved where the system counts them (Dask: bytes sent between
  workers; Orbweaver and Ray count none).
* ``clients4``: ``--clients`` (4) client processes each run ``--client-jobs`` (250) diamond jobs
  one after the other (submit, wait for the result), all at once: Orbweaver ``Client``s of the
  cluster's storage, Ray drivers (``ray.init(address=...)``), Dask ``Client(scheduler_address)``.
  Each connects and warms up before the clock starts; aggregate tasks/s.
* ``topology``: W2 (as ``--w2-submit`` says) on the usual cluster, then on one of the other
  shape: Orbweaver 1 execution manager with 2 executors against 2 execution managers with 1
  executor each (a LocalCluster with one executor plus ``orbweaver worker`` processes); Dask 2
  workers of 1 thread against 1 worker of 2 threads; not run on Ray.

Every run also records the CPU seconds and the peak memory of each role (storage, scheduler,
execution manager, executors, mariadbd; raylet, gcs_server, ray workers and helpers; dask
workers; "driver" is the harness process of the system, with its client and, for Dask, the
scheduler).

Orbweaver runs as ``orbweaver.LocalCluster(workers=2, db=<MariaDB on a private server started
here>, tasks_dir=benches/peers)``: storage, scheduler and an execution manager with 2 executor
processes. Ray runs with ``ray.init(num_cpus=2)``, Dask with ``LocalCluster(n_workers=2,
threads_per_worker=1)``. Every system runs the same task bodies (``benches/peers/workloads.py``),
in its own child process of this harness, after a warm-up; cluster start-up is not timed.

    python benches/e2e.py --compare ray,dask
    python benches/e2e.py --compare ray,dask --workloads lat,t1,t10,t100,fanout,clients4,topology

The private MariaDB flushes its log to disk at every commit (``innodb_flush_log_at_trx_commit=1``,
MariaDB's default): a submission is on disk when ``submit`` returns. ``--innodb-flush 2`` writes
it to the operating system at every commit and to disk once a second (it survives a crash of
any process, MariaDB's included, not of the machine), as the test suite's servers do.

``--durability task`` submits Orbweaver's jobs with ``durability="task"`` (each succeeded task's
outputs persisted in the background, so a storage restart resumes running jobs): its cost.

Writes ``benches/results/e2e.json`` (``--out``; the shapes' figures in docs/performance.md are in
``e2e-shapes.json``, which ``benches/charts.py`` draws) and prints a table, and a second one with
the shapes' own figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
sys.path[:0] = [str(HERE), str(PEERS)]
with contextlib.suppress(ImportError):  # a plain checkout without `pip install -e .`
    import orbweaver  # noqa: F401
if "orbweaver" not in sys.modules:
    sys.path.insert(0, str(HERE.parent / "python"))

import _harness as h  # noqa: E402
import workloads as w  # noqa: E402

SYSTEMS = ("orbweaver", "ray", "dask")
SPINS = {f"t{ms}": ms for ms in w.SPIN_MS}
WORKLOADS = ("w1", "w2", "nn", "lat", *SPINS, "fanout", "clients4", "topology")
DEFAULT_WORKLOADS = ("w1", "w2", "nn")
SHAPES = ("lat", *SPINS, "fanout", "topology")  # with figures of their own beyond tasks/s
WORKLOAD_TITLES = {
    "w1": "W1 wide job",
    "w2": "W2 small jobs",
    "nn": "NN",
    "lat": "latency of one small job",
    **{name: f"{ms} ms tasks" for name, ms in SPINS.items()},
    "fanout": "fan-out",
    "clients4": "concurrent clients",
    "topology": "W2 by topology",
}
TARGET_SPEEDUP_VS_RAY = 2.0
TARGET_UTILISATION = {"t10": 0.9}


class NotApplicable(Exception):
    """A workload a system does not run (its row says so; not a failure)."""


# -- one workload run --


class Sizes:
    def __init__(self, args: argparse.Namespace) -> None:
        self.wide = args.wide_tasks
        self.jobs = args.small_jobs
        self.nn_layers = args.nn_layers
        self.nn_width = args.nn_width
        self.latency_jobs = args.latency_jobs
        self.spin_cpu_s = args.spin_cpu_s
        self.fanout_bytes = args.fanout_bytes
        self.fanout_readers = args.fanout_readers
        self.clients = args.clients
        self.client_jobs = args.client_jobs

    def spin_tasks(self, workload: str) -> int:
        return w.spin_tasks(SPINS[workload], self.spin_cpu_s)

    def tasks(self, workload: str) -> int:
        if workload in SPINS:
            return self.spin_tasks(workload)
        return {
            "w1": self.wide,
            "w2": self.jobs * w.DIAMOND_TASKS,
            "nn": self.nn_layers * self.nn_width,
            "lat": self.latency_jobs,
            "fanout": 1 + self.fanout_readers,
            "clients4": self.clients * self.client_jobs * w.DIAMOND_TASKS,
            "topology": 2 * self.jobs * w.DIAMOND_TASKS,
        }[workload]

    def describe(self) -> dict[str, Any]:
        return {
            "w1": {"tasks": self.wide},
            "w2": {"jobs": self.jobs, "tasks_per_job": 4},
            "nn": {
                "layers": self.nn_layers,
                "width": self.nn_width,
                "fan_in": w.NN_FAN_IN,
                "seed": w.NN_SEED,
                "rtol": w.NN_RTOL,
            },
            "lat": {"jobs": self.latency_jobs, "tasks_per_job": 1, "warm_up_jobs": 20},
            **{name: {"tasks": self.spin_tasks(name), "spin_ms": ms} for name, ms in SPINS.items()},
            "fanout": {"bytes": self.fanout_bytes, "readers": self.fanout_readers},
            "clients4": {"clients": self.clients, "jobs_per_client": self.client_jobs},
            "topology": {"jobs": self.jobs, "tasks_per_job": 4},
        }


def check(workload: str, got: list[Any], sizes: Sizes, nn: w.NeuralNetwork | None) -> str | None:
    """None when the outputs are right, else what is wrong."""
    if workload in SPINS:
        return w.spin_problem(got, SPINS[workload], sizes.spin_tasks(workload))
    if workload == "w1":
        want: list[Any] = w.wide_expected(sizes.wide)
    elif workload == "w2":
        want = [w.diamond_expected(x) for x in range(sizes.jobs)]
    elif workload == "lat":
        want = [w.inc(x) for x in range(sizes.latency_jobs)]
    elif workload == "fanout":
        want = w.fanout_expected(sizes.fanout_bytes, sizes.fanout_readers)
    elif workload == "clients4":
        want = [w.diamond_expected(x) for x in range(sizes.clients * sizes.client_jobs)]
    elif workload == "topology":
        want = [w.diamond_expected(x) for x in range(sizes.jobs)] * 2
    else:
        assert nn is not None
        return w.check_close(got, nn.reference())
    if got == want:
        return None
    bad = [i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b]
    return f"{len(got)} outputs (want {len(want)}), {len(bad)} differ" + (
        f"; first: output {bad[0]} = {got[bad[0]]!r}, want {want[bad[0]]!r}" if bad else ""
    )


class Runner:
    """What a system provides: start/stop, a warm-up, and one function per workload that returns
    (outputs, phase timings, other measures); ``clients4`` and the timing of ``topology`` are the
    harness's own (``measure``)."""

    name: str
    topology: str  # the cluster's shape, e.g. "1 EM x 2 executors"

    def start(self) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def warm_up(self) -> None:
        raise NotImplementedError

    def run(
        self, workload: str, sizes: Sizes, nn: w.NeuralNetwork | None
    ) -> tuple[list[Any], dict[str, float], dict[str, Any]]:
        raise NotImplementedError

    def bytes_moved(self) -> tuple[int | None, str]:
        """Bytes moved between processes so far if the system counts them, and how."""
        raise NotImplementedError

    def other_topology(self, sizes: Sizes) -> tuple[str, float, list[Any]]:
        """W2 on a cluster of the other shape (started and warmed up here, not timed): its
        shape, the seconds of W2 and the outputs."""
        raise NotApplicable(f"{self.name} has no second topology here")

    def client_env(self) -> dict[str, str]:
        """What a client process (``--client``) needs in its environment to join the cluster."""
        raise NotImplementedError


class PeerRunner(Runner):
    """Ray or Dask through their module in ``benches/peers``."""

    def __init__(self, name: str, workers: int) -> None:
        import importlib

        self.name = name
        self.workers = workers
        self.peer: Any = importlib.import_module(f"{name}_peer")
        self.topology = f"{workers} workers x 1 thread" if name == "dask" else f"num_cpus={workers}"

    def start(self) -> dict[str, Any]:
        self.peer.start(self.workers)
        return {"version": self.peer.version()}

    def stop(self) -> None:
        self.peer.stop()

    def warm_up(self) -> None:
        self.peer.warm_up(self.workers)

    def run(
        self, workload: str, sizes: Sizes, nn: w.NeuralNetwork | None
    ) -> tuple[list[Any], dict[str, float], dict[str, Any]]:
        if workload in SPINS:
            return self.peer.spin_tasks(SPINS[workload], sizes.spin_tasks(workload)), {}, {}
        if workload == "w1":
            return self.peer.wide(sizes.wide), {}, {}
        if workload == "w2":
            return self.peer.small_jobs(list(range(sizes.jobs))), {}, {}
        if workload == "lat":
            outputs, samples = self.peer.latency(sizes.latency_jobs)
            return outputs, {}, {"latency_ms": samples}
        if workload == "fanout":
            return self.peer.fanout(sizes.fanout_bytes, sizes.fanout_readers), {}, {}
        assert workload == "nn" and nn is not None
        return self.peer.neural_network(nn), {}, {}

    def bytes_moved(self) -> tuple[int | None, str]:
        moved, how = self.peer.bytes_moved()
        return moved, how

    def other_topology(self, sizes: Sizes) -> tuple[str, float, list[Any]]:
        if not hasattr(self.peer, "other_topology"):
            return super().other_topology(sizes)
        label, seconds, outputs = self.peer.other_topology(self.workers, sizes.jobs)
        return label, seconds, outputs

    def client_env(self) -> dict[str, str]:
        return {CLIENT_ADDRESS_ENV: self.peer.address()}


class OrbweaverRunner(Runner):
    name = "orbweaver"

    def __init__(
        self,
        workers: int,
        db: str,
        timeout: float,
        workdir: Path,
        w2_submit: str = "many",
        durability: str = "job",
        innodb_flush: int = 1,
    ) -> None:
        self.workers = workers
        self.innodb_flush = innodb_flush
        self.topology = f"1 EM x {workers} executors"
        self.w2_submit = w2_submit
        self.durability = durability
        self.db = db
        self.timeout = timeout
        self.workdir = workdir
        self._stack = contextlib.ExitStack()
        self.server: Any = None
        self.cluster: Any = None

    def start(self) -> dict[str, Any]:
        info: dict[str, Any] = {"version": h.orbweaver_version()}
        if self.db == "mariadb":
            self.server = self._stack.enter_context(h.private_server(flush=self.innodb_flush))
            info["database"] = (
                f"MariaDB {h.server_version(self.server)} (private server, loopback TCP, "
                f"innodb_flush_log_at_trx_commit={self.innodb_flush})"
            )
        else:
            import sqlite3

            info["database"] = f"SQLite {sqlite3.sqlite_version} (file)"
        started = time.perf_counter()
        self.cluster = self._cluster(self._stack, self.workers, "jobs")
        info["cluster_start_s"] = round(time.perf_counter() - started, 2)
        return info

    def _cluster(self, stack: contextlib.ExitStack, workers: int, name: str) -> Any:
        """A started LocalCluster on a new database of its own, stopped when ``stack`` closes."""
        import orbweaver as ow

        if self.server is not None:
            url = self.server.create_database()
        else:
            url = f"sqlite:///{self.workdir / f'{name}.db'}"
        cluster = ow.LocalCluster(
            workers=workers,
            db=url,
            tasks_dir=PEERS,
            log_dir=self.workdir / f"logs-{name}",
            start_timeout=120,
        )
        cluster.start()
        stack.callback(cluster.stop)
        return cluster

    def stop(self) -> None:
        self._stack.close()

    def warm_up(self) -> None:
        self._warm_up(self.cluster.client())

    def _warm_up(self, client: Any) -> None:
        import ow_tasks as t

        import orbweaver as ow

        g = ow.TaskGraph()
        for _ in range(20 * self.workers):
            g.add(t.inc)
        client.submit(g, list(range(20 * self.workers))).result(timeout=self.timeout)
        client.submit(self.diamond(), [1]).result(timeout=self.timeout)
        g = ow.TaskGraph()
        g.add(t.dense_relu)
        client.submit(g, [0.0] * w.NN_FAN_IN).result(timeout=self.timeout)

    @staticmethod
    def diamond() -> Any:
        import ow_tasks as t

        import orbweaver as ow

        g = ow.TaskGraph()
        a = g.add(t.inc)
        g.add(t.add, g.add(t.double, a), g.add(t.inc, a))
        return g

    def run(
        self, workload: str, sizes: Sizes, nn: w.NeuralNetwork | None
    ) -> tuple[list[Any], dict[str, float], dict[str, Any]]:
        import ow_tasks as t

        import orbweaver as ow

        client = self.cluster.client()
        if workload == "w2":
            return (*self._w2(self.cluster, sizes.jobs), {})
        if workload == "lat":
            g = ow.TaskGraph()
            g.add(t.inc)

            def one(x: int) -> int:
                job = client.submit(g, [x], durability=self.durability)
                return int(job.result(timeout=self.timeout)[0])

            outputs, samples = w.sample_latency(one, sizes.latency_jobs)
            return outputs, {}, {"latency_ms": samples}
        t0 = time.perf_counter()
        g = ow.TaskGraph()
        if workload == "w1":
            for _ in range(sizes.wide):
                g.add(t.inc)
            inputs: list[Any] = list(range(sizes.wide))
        elif workload in SPINS:
            n = sizes.spin_tasks(workload)
            for _ in range(n):
                g.add(t.spin)
            inputs = [SPINS[workload]] * n
        elif workload == "fanout":
            data = g.add(t.blob)
            for _ in range(sizes.fanout_readers):
                g.add(t.digest, data)
            inputs = [sizes.fanout_bytes]
        else:
            assert workload == "nn" and nn is not None
            previous = [g.add(t.dense_relu) for _ in range(nn.width)]
            for layer in range(1, nn.layers):
                fn = t.LAYER_TASKS[layer % 3]
                previous = [
                    g.add(fn, *[previous[i] for i in nn.sources[layer][n]]) for n in range(nn.width)
                ]
            inputs = nn.inputs
        t1 = time.perf_counter()
        job = client.submit(g, inputs, durability=self.durability)
        t2 = time.perf_counter()
        outputs = list(job.result(timeout=self.timeout))
        t3 = time.perf_counter()
        return (
            outputs,
            {"build_s": t1 - t0, "submit_s": t2 - t1, "wait_and_outputs_s": t3 - t2},
            {},
        )

    def _w2(self, cluster: Any, jobs: int) -> tuple[list[Any], dict[str, float]]:
        client = cluster.client()
        t0 = time.perf_counter()
        g = self.diamond()
        t1 = time.perf_counter()
        if self.w2_submit == "async":
            outputs = asyncio.run(self._w2_async(cluster, g, jobs))
            return outputs, {"build_s": t1 - t0, "submit_and_wait_s": time.perf_counter() - t1}
        if self.w2_submit == "many":  # one call (and one transaction) per 1,000 jobs
            submitted = client.submit_many(
                g, [[x] for x in range(jobs)], durability=self.durability
            )
        else:  # one blocking call per job
            submitted = [client.submit(g, [x], durability=self.durability) for x in range(jobs)]
        t2 = time.perf_counter()
        outputs: list[Any] = []
        if self.w2_submit == "many":  # as ray.get / Dask's gather of a list
            for result in client.gather(submitted, timeout=self.timeout):
                outputs.extend(result)
        else:
            for job in submitted:
                outputs.extend(job.result(timeout=self.timeout))
        t3 = time.perf_counter()
        return outputs, {"build_s": t1 - t0, "submit_s": t2 - t1, "wait_and_outputs_s": t3 - t2}

    async def _w2_async(self, cluster: Any, g: Any, jobs: int) -> list[Any]:
        """What asyncio code writes: one coroutine per job, each submitting and awaiting."""
        async with cluster.async_client() as client:

            async def run(x: int) -> list[Any]:
                job = await client.submit(g, [x], durability=self.durability)
                return list(await job.result(timeout=self.timeout))

            results = await asyncio.gather(*(run(x) for x in range(jobs)))
        return [value for result in results for value in result]

    def bytes_moved(self) -> tuple[int | None, str]:
        return None, "not exposed (no metric of the output bytes storage or a worker serves)"

    def other_topology(self, sizes: Sizes) -> tuple[str, float, list[Any]]:
        """``workers`` execution managers of one executor each: a LocalCluster's own EM plus
        more ``orbweaver worker`` processes started as the tests start them."""
        from support.procs import ServiceProcess

        with contextlib.ExitStack() as stack:
            cluster = self._cluster(stack, 1, "topology")
            for i in range(2, self.workers + 1):
                em = ServiceProcess(
                    f"worker-{i}",
                    [
                        "worker",
                        "--storage",
                        cluster.address,
                        "--scheduler",
                        cluster.scheduler_address,
                        "--tasks-dir",
                        str(PEERS),
                        "--processes",
                        "1",
                    ],
                    self.workdir,
                    env={"ORBWEAVER_TOKEN": cluster.token},
                )
                stack.callback(em.terminate)
                em.start(timeout=120)
            self._warm_up(cluster.client())
            started = time.perf_counter()
            outputs, _ = self._w2(cluster, sizes.jobs)
            return f"{self.workers} EMs x 1 executor", time.perf_counter() - started, outputs

    def client_env(self) -> dict[str, str]:
        group = self.cluster.resource_group
        return {
            "ORBWEAVER_STORAGE": self.cluster.address,
            "ORBWEAVER_OPERATOR_TOKEN": self.cluster.operator_token,
            "ORBWEAVER_RESOURCE_GROUP": group.name,
            "ORBWEAVER_PASSWORD": group.password.decode(),
        }


# -- workloads the harness drives itself --


def measure(
    runner: Runner,
    workload: str,
    sizes: Sizes,
    nn: w.NeuralNetwork | None,
    timeout: float,
    durability: str,
) -> tuple[list[Any], dict[str, float], dict[str, Any]]:
    """One run of ``workload``: outputs, phase timings, other measures. ``extra["wall_s"]``,
    when present, is the wall time of the measured part (without starting client processes)."""
    if workload == "clients4":
        return run_clients(runner, sizes, timeout, durability)
    if workload != "topology":
        return runner.run(workload, sizes, nn)
    started = time.perf_counter()
    outputs, _, _ = runner.run("w2", sizes, None)
    first = time.perf_counter() - started
    label, second, more = runner.other_topology(sizes)
    tasks = sizes.jobs * w.DIAMOND_TASKS
    shapes = [
        {"topology": name, "wall_s": round(s, 4), "tasks_per_s": round(tasks / s, 1)}
        for name, s in ((runner.topology, first), (label, second))
    ]
    return outputs + more, {}, {"topologies": shapes, "wall_s": first + second}


CLIENT_ADDRESS_ENV = "OWBENCH_ADDRESS"
CLIENT_LINE = "owbench-client"


def run_clients(
    runner: Runner, sizes: Sizes, timeout: float, durability: str
) -> tuple[list[Any], dict[str, float], dict[str, Any]]:
    """``sizes.clients`` client processes (``--client``) each run ``sizes.client_jobs`` diamond
    jobs one after the other, all at once: each connects and warms up, says it is ready, and
    starts when every one is; the wall time runs from that start to the last one's end."""
    env = {**os.environ, **runner.client_env()}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--client",
                runner.name,
                "--client-index",
                str(i),
                "--client-jobs",
                str(sizes.client_jobs),
                "--timeout",
                str(timeout),
                "--durability",
                durability,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for i in range(sizes.clients)
    ]
    try:
        for proc in procs:
            _client_says(proc, "ready")
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs: list[Any] = []
        for proc in procs:
            outputs.extend(json.loads(_client_says(proc, "outputs")))
        wall = time.perf_counter() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs, {}, {"wall_s": wall}


def _client_says(proc: subprocess.Popen[str], what: str) -> str:
    """The next protocol line ``what`` of a client process (other output is passed on, e.g.
    what a system prints when it connects)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"{CLIENT_LINE} {what}"):
            return line[len(f"{CLIENT_LINE} {what}") :].strip()
        sys.stderr.write(line)
    raise RuntimeError(f"a client process exited ({proc.wait()}) before it said {what}")


def client_main(system: str, index: int, jobs: int, timeout: float, durability: str) -> int:
    """A client process of ``run_clients``: diamond jobs ``index * jobs ..``, one at a time."""
    one: Callable[[int], int]
    if system == "orbweaver":
        import orbweaver as ow

        client = ow.Client(tasks_dir=PEERS)  # address and credentials: from the environment
        g = OrbweaverRunner.diamond()

        def one(x: int) -> int:
            return int(client.submit(g, [x], durability=durability).result(timeout=timeout)[0])
    else:
        import importlib

        peer: Any = importlib.import_module(f"{system}_peer")
        peer.connect(os.environ[CLIENT_ADDRESS_ENV])
        one = peer.diamond
    for x in range(5):  # warm-up (Ray starts workers for each driver)
        one(x)
    print(f"{CLIENT_LINE} ready", flush=True)
    sys.stdin.readline()
    outputs = [one(x) for x in range(index * jobs, (index + 1) * jobs)]
    print(f"{CLIENT_LINE} outputs {json.dumps(outputs)}", flush=True)
    return 0


# -- CPU and memory accounting --


def _label(proc: Any, me: int) -> str:
    """A short name for a process of a system under test."""
    if proc.pid == me:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except Exception:
        return "other"
    for needle, label in (
        ("orbweaver storage", "storage"),
        ("orbweaver scheduler", "scheduler"),
        ("orbweaver worker", "execution manager"),
        ("orbweaver.worker.executor", "executors"),
        ("mariadbd", "mariadbd"),
        ("raylet", "raylet"),
        ("gcs_server", "gcs_server"),
        ("ray::", "ray workers"),
        ("default_worker.py", "ray workers"),
        ("/ray/", "ray helpers"),  # its agents and monitors (Python processes)
        ("multiprocessing", "dask workers"),
    ):
        if needle in cmd or needle in name:
            return label
    return name or "other"


def _processes() -> Iterator[tuple[Any, str]]:
    """This process and every descendant, with its label."""
    import psutil

    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        yield proc, _label(proc, me.pid)


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of this process and every descendant, by pid."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    for proc, label in _processes():
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[proc.pid] = (label, t.user + t.system)
    return out


def cpu_delta(before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent since ``before``, summed by process label (processes that exited in
    between are not counted)."""
    totals: dict[str, float] = {}
    for pid, (label, cpu) in cpu_snapshot().items():
        spent = cpu - before.get(pid, (label, 0.0))[1]
        totals[label] = totals.get(label, 0.0) + spent
    return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def _status_kib(pid: int, field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return None


def memory_reset() -> dict[int, int]:
    """Reset the peak resident size (VmHWM) of this process and every descendant to its current
    size (``clear_refs``: 5), and return that size (KiB) by pid."""
    out: dict[int, int] = {}
    for proc, _ in _processes():
        with contextlib.suppress(OSError):
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        rss = _status_kib(proc.pid, "VmRSS")
        if rss is not None:
            out[proc.pid] = rss
    return out


def memory_peaks(before: dict[int, int]) -> dict[str, dict[str, float]]:
    """By process label: how many processes, the sum of their peak resident sizes (VmHWM) since
    ``memory_reset`` returned ``before``, and the sum of each one's peak above its size then
    (MiB)."""
    roles: dict[str, dict[str, float]] = {}
    for proc, label in _processes():
        peak = _status_kib(proc.pid, "VmHWM")
        if peak is None:
            continue
        role = roles.setdefault(label, {"processes": 0, "peak_rss_mib": 0.0, "growth_mib": 0.0})
        role["processes"] += 1
        role["peak_rss_mib"] += peak / 1024
        role["growth_mib"] += max(0, peak - before.get(proc.pid, peak)) / 1024
    return {
        label: {k: round(v, 1) for k, v in role.items()}
        for label, role in sorted(roles.items(), key=lambda kv: -kv[1]["peak_rss_mib"])
    }


# -- a child process runs one system --


def measure_once(
    runner: Runner,
    workload: str,
    sizes: Sizes,
    nn: w.NeuralNetwork | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One run of ``workload`` with its CPU time, peak memory and checked outputs (and, by
    workload, latency samples, core utilisation, bytes moved or the topologies' figures)."""
    moved_before = runner.bytes_moved()[0] if workload == "fanout" else None
    cpu_before = cpu_snapshot()
    rss_before = memory_reset()
    started = time.perf_counter()
    outputs, phases, extra = measure(runner, workload, sizes, nn, args.timeout, args.durability)
    wall = extra.pop("wall_s", time.perf_counter() - started)
    cpu = cpu_delta(cpu_before)
    memory = memory_peaks(rss_before)
    problem = check(workload, outputs, sizes, nn)
    run: dict[str, Any] = {
        "wall_s": round(wall, 4),
        "phases": {k: round(v, 4) for k, v in phases.items()},
        "cpu_s": cpu,
        "peak_rss": memory,
        "correct": problem is None,
        "problem": problem,
    }
    if "latency_ms" in extra:
        run["latency_ms"] = [round(x, 3) for x in extra.pop("latency_ms")]
    if workload in SPINS:
        # Busy executor time (what the tasks measured) over the cores' time.
        busy = sum(x for x in outputs if isinstance(x, float))
        run["utilisation"] = round(busy / (args.workers * wall), 4)
        # The same with every task counted at its nominal duration: a spin the machine's other
        # work preempted measures longer than it asked for, this does not count that.
        nominal = sizes.spin_tasks(workload) * SPINS[workload] / 1000
        run["nominal_utilisation"] = round(nominal / (args.workers * wall), 4)
    if workload == "fanout":
        moved, how = runner.bytes_moved()
        run["bytes_moved"] = None if moved is None or moved_before is None else moved - moved_before
        run["bytes_moved_how"] = how
    return {**run, **extra}


def run_system(args: argparse.Namespace) -> dict[str, Any]:
    sizes = Sizes(args)
    workdir = Path(tempfile.mkdtemp(prefix=f"owbench-{args.child}-"))
    runner: Runner
    if args.child == "orbweaver":
        runner = OrbweaverRunner(
            args.workers,
            args.db,
            args.timeout,
            workdir,
            args.w2_submit,
            args.durability,
            args.innodb_flush,
        )
    else:
        runner = PeerRunner(args.child, args.workers)
    out: dict[str, Any] = {"system": args.child, "results": {}}
    nn = w.neural_network(sizes.nn_layers, sizes.nn_width) if "nn" in args.workloads else None
    try:
        out["info"] = runner.start()
        runner.warm_up()
        for workload in args.workloads:
            runs: list[dict[str, Any]] = []
            errors: list[str] = []
            result: dict[str, Any] = {"runs": runs, "errors": errors}
            out["results"][workload] = result
            for i in range(args.repeat):
                try:
                    run = measure_once(runner, workload, sizes, nn, args)
                except NotApplicable as exc:
                    result["not_applicable"] = str(exc)
                    print(f"  {args.child} {workload}: {exc}", file=sys.stderr, flush=True)
                    break
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    traceback.print_exc()
                    break
                runs.append(run)
                problem = run["problem"]
                print(
                    f"  {args.child} {workload} run {i + 1}: {run['wall_s']:.2f} s "
                    f"({sizes.tasks(workload) / run['wall_s']:,.0f} tasks/s)"
                    f"{'' if problem is None else ' WRONG: ' + problem}",
                    file=sys.stderr,
                    flush=True,
                )
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            runner.stop()
    failed = "error" in out or any(
        r["errors"] or not all(x["correct"] for x in r["runs"]) for r in out["results"].values()
    )
    if failed:
        print(f"  {args.child}: logs kept in {workdir}", file=sys.stderr, flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def spawn_system(system: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_file = Path(f.name)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        system,
        "--result-file",
        str(result_file),
        "--workloads",
        ",".join(args.workloads),
        "--repeat",
        str(args.repeat),
        "--db",
        args.db,
        "--workers",
        str(args.workers),
        "--timeout",
        str(args.timeout),
        "--wide-tasks",
        str(args.wide_tasks),
        "--small-jobs",
        str(args.small_jobs),
        "--nn-layers",
        str(args.nn_layers),
        "--nn-width",
        str(args.nn_width),
        "--w2-submit",
        args.w2_submit,
        "--durability",
        args.durability,
        "--innodb-flush",
        str(args.innodb_flush),
        "--latency-jobs",
        str(args.latency_jobs),
        "--spin-cpu-s",
        str(args.spin_cpu_s),
        "--fanout-bytes",
        str(args.fanout_bytes),
        "--fanout-readers",
        str(args.fanout_readers),
        "--clients",
        str(args.clients),
        "--client-jobs",
        str(args.client_jobs),
    ]
    env = dict(os.environ)
    # Ray and Dask workers unpickle the task functions by module name: let them import them.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(PEERS), str(HERE.parent / "python"), env.get("PYTHONPATH", "")] if p
    )
    print(f"== {system}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, env=env, timeout=args.timeout * 10, check=False)
        if result_file.stat().st_size == 0:
            return {
                "system": system,
                "error": f"the {system} run exited with {proc.returncode} without results",
                "results": {},
            }
        return dict(json.loads(result_file.read_text()))
    except subprocess.TimeoutExpired:
        return {"system": system, "error": "the run timed out", "results": {}}
    finally:
        result_file.unlink(missing_ok=True)


# -- summary --


def shape_figures(workload: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of a workload beyond wall time and tasks/s, over its runs: latency
    percentiles of every sample, the median core utilisation, each role's largest peak memory
    and growth, the median tasks/s of each topology."""
    if workload == "lat":
        samples = [x for r in runs for x in r["latency_ms"]]
        return {
            "latency_ms": {
                "p50": round(h.percentile(samples, 50), 3),
                "p90": round(h.percentile(samples, 90), 3),
                "p99": round(h.percentile(samples, 99), 3),
                "mean": round(sum(samples) / len(samples), 3),
                "samples": len(samples),
            }
        }
    if workload in SPINS:
        figures: dict[str, Any] = {
            key: h.median([r[key] for r in runs]) for key in ("utilisation", "nominal_utilisation")
        }
        if workload in TARGET_UTILISATION:
            target = TARGET_UTILISATION[workload]
            figures.update(target=target, met=figures["utilisation"] >= target)
        return figures
    if workload == "fanout":
        roles: dict[str, dict[str, float]] = {}
        for r in runs:
            for label, role in r["peak_rss"].items():
                mine = roles.setdefault(label, {"peak_rss_mib": 0.0, "growth_mib": 0.0})
                for key in mine:
                    mine[key] = max(mine[key], role[key])
        moved = [r["bytes_moved"] for r in runs if r["bytes_moved"] is not None]
        return {
            "peak_rss": roles,
            "bytes_moved": max(moved) if moved else None,
            "bytes_moved_how": runs[0]["bytes_moved_how"],
        }
    if workload == "topology":
        names = [t["topology"] for t in runs[0]["topologies"]]
        return {
            "topologies": {
                name: h.median([r["topologies"][i]["tasks_per_s"] for r in runs])
                for i, name in enumerate(names)
            }
        }
    return {}


def summarize(args: argparse.Namespace, systems: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = Sizes(args)
    rows = []
    for sysres in systems:
        for workload in args.workloads:
            res = sysres.get("results", {}).get(workload)
            tasks = sizes.tasks(workload)
            row: dict[str, Any] = {"workload": workload, "system": sysres["system"], "tasks": tasks}
            runs = res["runs"] if res else []
            if res and runs and not res["errors"]:
                walls = [r["wall_s"] for r in runs]
                wall = h.median(walls)
                row.update(
                    {
                        "wall_s": round(wall, 3),
                        "best_wall_s": round(min(walls), 3),
                        "tasks_per_s": round(tasks / wall, 1),
                        "correct": all(r["correct"] for r in runs),
                        **shape_figures(workload, runs),
                        "runs": runs,
                    }
                )
            elif res and "not_applicable" in res:
                row.update(
                    {
                        "wall_s": None,
                        "tasks_per_s": None,
                        "correct": True,
                        "not_applicable": res["not_applicable"],
                    }
                )
            else:
                row.update(
                    {
                        "wall_s": None,
                        "tasks_per_s": None,
                        "correct": False,
                        "runs": runs,
                        "error": (res["errors"] if res else None) or sysres.get("error", "not run"),
                    }
                )
            rows.append(row)
    by = {(r["workload"], r["system"]): r for r in rows}
    ratios: dict[str, Any] = {}
    for workload in args.workloads:
        ours, ray = by.get((workload, "orbweaver")), by.get((workload, "ray"))
        if ours and ray and ours["tasks_per_s"] and ray["tasks_per_s"]:
            ratio = ours["tasks_per_s"] / ray["tasks_per_s"]
            ratios[workload] = {"orbweaver_over_ray": round(ratio, 3)}
            if workload in ("w1", "w2"):
                ratios[workload]["target"] = TARGET_SPEEDUP_VS_RAY
                ratios[workload]["met"] = ratio >= TARGET_SPEEDUP_VS_RAY
    versions = {"orbweaver": h.orbweaver_version()}
    for s in systems:
        if "info" in s:
            versions[s["system"]] = s["info"].get("version")
    return {
        "benchmark": "e2e",
        "versions": versions,
        "setup": {
            "workers": args.workers,
            "repeat": args.repeat,
            "statistic": "median over repeats",
            "orbweaver": {
                "db": args.db,
                "w2_submit": {
                    "many": "Client.submit_many + Client.gather",
                    "each": "Client.submit + Job.result per job",
                    "async": "AsyncClient: asyncio.gather of (await submit, await result)",
                }[args.w2_submit],
                "durability": args.durability,
                "cluster": f"LocalCluster(workers={args.workers}, "
                f"db=<{args.db}>, tasks_dir=benches/peers)",
                **next((s.get("info", {}) for s in systems if s["system"] == "orbweaver"), {}),
            },
            "ray": f"ray.init(num_cpus={args.workers})",
            "dask": f"distributed.LocalCluster(n_workers={args.workers}, threads_per_worker=1)",
            "sizes": sizes.describe(),
        },
        "results": rows,
        "orbweaver_vs_ray": ratios,
        "errors": {s["system"]: s["error"] for s in systems if s.get("error")},
    }


def shape_cell(workload: str, row: dict[str, Any]) -> str:
    """A workload's own figures for the second table ("" for workloads measured by tasks/s
    alone, "-" when the system did not run it)."""
    if workload not in SHAPES:
        return ""
    if "not_applicable" in row:
        return "n/a"
    if not row.get("wall_s"):
        return "-"
    if workload == "lat":
        ms = row["latency_ms"]
        return f"p50 {ms['p50']:.2f} / p90 {ms['p90']:.2f} / p99 {ms['p99']:.2f} ms"
    if workload in SPINS:
        return (
            f"{row['utilisation']:.0%} of the cores busy "
            f"({row['nominal_utilisation']:.0%} at nominal durations)"
        )
    if workload == "topology":
        return ", ".join(f"{name}: {rate:,.0f} tasks/s" for name, rate in row["topologies"].items())
    growth = sum(v["growth_mib"] for v in row["peak_rss"].values())
    moved = row["bytes_moved"]
    return f"cluster peak RSS +{growth:.0f} MiB" + (
        "" if moved is None else f", {moved / 2**20:.1f} MiB moved"
    )


def print_table(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = payload["results"]
    systems = list(dict.fromkeys(r["system"] for r in rows))
    setup = payload["setup"]
    table = Table(
        title=f"End to end, {setup['workers']} workers, median of {setup['repeat']} "
        f"(Orbweaver on {setup['orbweaver']['db']}, durability {setup['orbweaver']['durability']})"
    )
    table.add_column("workload")
    table.add_column("tasks", justify="right")
    for s in systems:
        table.add_column(f"{s}\nwall s", justify="right")
        table.add_column(f"{s}\ntasks/s", justify="right")
    for workload in dict.fromkeys(r["workload"] for r in rows):
        title = WORKLOAD_TITLES[workload]
        if workload == "nn":
            nn = payload["setup"]["sizes"]["nn"]
            title += f" {nn['layers']}x{nn['width']}"
        cells = [title]
        wrows = {r["system"]: r for r in rows if r["workload"] == workload}
        cells.append(f"{next(iter(wrows.values()))['tasks']:,}")
        for s in systems:
            r = wrows[s]
            if "not_applicable" in r:
                cells += ["n/a", ""]
                continue
            if r["wall_s"] is None:
                cells += ["[red]failed[/red]", ""]
                continue
            mark = "" if r["correct"] else " [red]WRONG[/red]"
            cells += [f"{r['wall_s']:.2f}{mark}", f"{r['tasks_per_s']:,.0f}"]
        table.add_row(*cells)
    console = Console(width=max(Console().width, 40 + 24 * len(systems)))
    console.print(table)
    shapes = [wl for wl in dict.fromkeys(r["workload"] for r in rows) if wl in SHAPES]
    if shapes:
        detail = Table(title="Workload shapes")
        detail.add_column("workload")
        for s in systems:
            detail.add_column(s, justify="right")
        for workload in shapes:
            wrows = {r["system"]: r for r in rows if r["workload"] == workload}
            detail.add_row(
                WORKLOAD_TITLES[workload], *(shape_cell(workload, wrows[s]) for s in systems)
            )
        console.print(detail)
    for workload, ratio in payload["orbweaver_vs_ray"].items():
        line = f"{WORKLOAD_TITLES[workload]}: Orbweaver / Ray = {ratio['orbweaver_over_ray']:.2f}x"
        if "met" in ratio:
            line += f" (target {ratio['target']:g}x: {'met' if ratio['met'] else 'NOT met'})"
        console.print(line)
    for system, error in payload["errors"].items():
        console.print(f"[red]{system} failed:[/red] {error}")


# -- command line --


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        items = [v.strip().lower() for v in value.split(",") if v.strip()]
        unknown = [v for v in items if v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)} (choose from {', '.join(choices)})"
            )
        return items

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workloads",
        type=_csv(WORKLOADS),
        default=list(DEFAULT_WORKLOADS),
        help=f"comma-separated, of {','.join(WORKLOADS)} (default: {','.join(DEFAULT_WORKLOADS)})",
    )
    parser.add_argument(
        "--systems",
        type=_csv(SYSTEMS),
        default=None,
        help="comma-separated: orbweaver,ray,dask (default: orbweaver)",
    )
    parser.add_argument(
        "--compare", type=_csv(SYSTEMS), default=[], help="peers to run too, e.g. ray,dask"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload and system")
    parser.add_argument(
        "--db",
        choices=["mariadb", "sqlite"],
        default="mariadb",
        help="Orbweaver's database (default: a private MariaDB server)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes per system")
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="seconds a single workload run may take"
    )
    parser.add_argument("--wide-tasks", type=int, default=w.WIDE_TASKS)
    parser.add_argument("--small-jobs", type=int, default=w.SMALL_JOBS)
    parser.add_argument("--nn-layers", type=int, default=w.NN_LAYERS)
    parser.add_argument("--nn-width", type=int, default=w.NN_WIDTH)
    parser.add_argument(
        "--latency-jobs", type=int, default=w.LATENCY_JOBS, help="lat: one-task jobs timed"
    )
    parser.add_argument(
        "--spin-cpu-s",
        type=float,
        default=w.SPIN_CPU_SECONDS,
        help="t1/t10/t100: busy seconds per shape (tasks = this / task duration)",
    )
    parser.add_argument("--fanout-bytes", type=int, default=w.FANOUT_BYTES)
    parser.add_argument("--fanout-readers", type=int, default=w.FANOUT_READERS)
    parser.add_argument("--clients", type=int, default=w.CLIENTS, help="clients4: client processes")
    parser.add_argument(
        "--client-jobs",
        type=int,
        default=w.CLIENT_JOBS,
        help="clients4: diamond jobs per client process",
    )
    parser.add_argument(
        "--w2-submit",
        choices=["many", "each", "async"],
        default="many",
        help="Orbweaver W2: Client.submit_many + gather (default), submit + result per job, or "
        "AsyncClient coroutines (submit + await result each, gathered)",
    )
    parser.add_argument(
        "--durability",
        choices=["job", "task"],
        default="job",
        help='Orbweaver\'s jobs: job-level durability (default) or durability="task"',
    )
    parser.add_argument(
        "--innodb-flush",
        type=int,
        choices=[1, 2],
        default=1,
        help="the private MariaDB's innodb_flush_log_at_trx_commit: 1 (default, MariaDB's own) "
        "the log reaches the disk at every commit; 2 the OS at every commit, the disk within a "
        "second",
    )
    parser.add_argument("--out", type=Path, default=h.RESULTS_DIR / "e2e.json")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--client-index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_main(
            args.client, args.client_index, args.client_jobs, args.timeout, args.durability
        )
    if args.repeat < 1 or args.workers < 1:
        parser.error("--repeat and --workers must be positive")
    if args.nn_width < w.NN_FAN_IN:
        parser.error(f"--nn-width must be at least {w.NN_FAN_IN}")

    if args.child:
        result = run_system(args)
        args.result_file.write_text(json.dumps(result))
        return 0

    systems = list(dict.fromkeys((args.systems or ["orbweaver"]) + args.compare))
    h.warn_if_busy()
    results = [spawn_system(s, args) for s in systems]
    payload = summarize(args, results)
    h.write_results(args.out, payload)
    print_table(payload)
    print(f"results written to {args.out}")
    failed = any(
        (r["wall_s"] is None and "not_applicable" not in r) or not r["correct"]
        for r in payload["results"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
