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

Orbweaver runs as ``orbweaver.LocalCluster(workers=2, db=<MariaDB on a private server started
here>, tasks_dir=benches/peers)``: storage, scheduler and an execution manager with 2 executor
processes. Ray runs with ``ray.init(num_cpus=2)``, Dask with ``LocalCluster(n_workers=2,
threads_per_worker=1)``. Every system runs the same task bodies (``benches/peers/workloads.py``),
in its own child process of this harness, after a warm-up; cluster start-up is not timed.

    python benches/e2e.py --compare ray,dask

``--durability task`` submits Orbweaver's jobs with ``durability="task"`` (each succeeded task's
outputs persisted in the background, so a storage restart resumes running jobs): its cost.

Writes ``benches/results/e2e.json`` and prints a table.
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
from collections.abc import Callable
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
WORKLOADS = ("w1", "w2", "nn")
WORKLOAD_TITLES = {"w1": "W1 wide job", "w2": "W2 small jobs", "nn": "NN"}
TARGET_SPEEDUP_VS_RAY = 2.0


# -- one workload run --


class Sizes:
    def __init__(self, args: argparse.Namespace) -> None:
        self.wide = args.wide_tasks
        self.jobs = args.small_jobs
        self.nn_layers = args.nn_layers
        self.nn_width = args.nn_width

    def tasks(self, workload: str) -> int:
        return {
            "w1": self.wide,
            "w2": self.jobs * w.DIAMOND_TASKS,
            "nn": self.nn_layers * self.nn_width,
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
        }


def check(workload: str, got: list[Any], sizes: Sizes, nn: w.NeuralNetwork | None) -> str | None:
    """None when the outputs are right, else what is wrong."""
    if workload == "w1":
        want: list[Any] = w.wide_expected(sizes.wide)
    elif workload == "w2":
        want = [w.diamond_expected(x) for x in range(sizes.jobs)]
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
    (outputs, phase timings)."""

    name: str

    def start(self) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def warm_up(self) -> None:
        raise NotImplementedError

    def run(
        self, workload: str, sizes: Sizes, nn: w.NeuralNetwork | None
    ) -> tuple[list[Any], dict[str, float]]:
        raise NotImplementedError


class PeerRunner(Runner):
    """Ray or Dask through their module in ``benches/peers``."""

    def __init__(self, name: str, workers: int) -> None:
        import importlib

        self.name = name
        self.workers = workers
        self.peer: Any = importlib.import_module(f"{name}_peer")

    def start(self) -> dict[str, Any]:
        self.peer.start(self.workers)
        return {"version": self.peer.version()}

    def stop(self) -> None:
        self.peer.stop()

    def warm_up(self) -> None:
        self.peer.warm_up(self.workers)

    def run(
        self, workload: str, sizes: Sizes, nn: w.NeuralNetwork | None
    ) -> tuple[list[Any], dict[str, float]]:
        if workload == "w1":
            return self.peer.wide(sizes.wide), {}
        if workload == "w2":
            return self.peer.small_jobs(list(range(sizes.jobs))), {}
        assert nn is not None
        return self.peer.neural_network(nn), {}


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
    ) -> None:
        self.workers = workers
        self.w2_submit = w2_submit
        self.durability = durability
        self.db = db
        self.timeout = timeout
        self.workdir = workdir
        self._stack = contextlib.ExitStack()
        self.cluster: Any = None

    def start(self) -> dict[str, Any]:
        import orbweaver as ow

        info: dict[str, Any] = {"version": h.orbweaver_version()}
        if self.db == "mariadb":
            server = self._stack.enter_context(h.private_server())
            url = server.create_database()
            info["database"] = f"MariaDB {h.server_version(server)} (private server, loopback TCP)"
        else:
            import sqlite3

            url = f"sqlite:///{self.workdir / 'jobs.db'}"
            info["database"] = f"SQLite {sqlite3.sqlite_version} (file)"
        started = time.perf_counter()
        self.cluster = ow.LocalCluster(
            workers=self.workers,
            db=url,
            tasks_dir=PEERS,
            log_dir=self.workdir / "logs",
            start_timeout=120,
        )
        self.cluster.start()
        self._stack.callback(self.cluster.stop)
        info["cluster_start_s"] = round(time.perf_counter() - started, 2)
        return info

    def stop(self) -> None:
        self._stack.close()

    def warm_up(self) -> None:
        import ow_tasks as t

        import orbweaver as ow

        client = self.cluster.client()
        g = ow.TaskGraph()
        for _ in range(20 * self.workers):
            g.add(t.inc)
        client.submit(g, list(range(20 * self.workers))).result(timeout=self.timeout)
        client.submit(self._diamond(), [1]).result(timeout=self.timeout)
        g = ow.TaskGraph()
        g.add(t.dense_relu)
        client.submit(g, [0.0] * w.NN_FAN_IN).result(timeout=self.timeout)

    @staticmethod
    def _diamond() -> Any:
        import ow_tasks as t

        import orbweaver as ow

        g = ow.TaskGraph()
        a = g.add(t.inc)
        g.add(t.add, g.add(t.double, a), g.add(t.inc, a))
        return g

    def run(
        self, workload: str, sizes: Sizes, nn: w.NeuralNetwork | None
    ) -> tuple[list[Any], dict[str, float]]:
        import ow_tasks as t

        import orbweaver as ow

        client = self.cluster.client()
        t0 = time.perf_counter()
        if workload == "w1":
            g = ow.TaskGraph()
            for _ in range(sizes.wide):
                g.add(t.inc)
            t1 = time.perf_counter()
            jobs = [client.submit(g, list(range(sizes.wide)), durability=self.durability)]
        elif workload == "w2" and self.w2_submit == "async":
            g = self._diamond()
            t1 = time.perf_counter()
            outputs = asyncio.run(self._w2_async(g, sizes.jobs))
            t2 = time.perf_counter()
            return outputs, {"build_s": t1 - t0, "submit_and_wait_s": t2 - t1}
        elif workload == "w2":
            g = self._diamond()
            t1 = time.perf_counter()
            if self.w2_submit == "many":  # one call (and one transaction) per 1,000 jobs
                jobs = client.submit_many(
                    g, [[x] for x in range(sizes.jobs)], durability=self.durability
                )
            else:  # one blocking call per job
                jobs = [
                    client.submit(g, [x], durability=self.durability) for x in range(sizes.jobs)
                ]
        else:
            assert nn is not None
            g = ow.TaskGraph()
            previous = [g.add(t.dense_relu) for _ in range(nn.width)]
            for layer in range(1, nn.layers):
                fn = t.LAYER_TASKS[layer % 3]
                previous = [
                    g.add(fn, *[previous[i] for i in nn.sources[layer][n]]) for n in range(nn.width)
                ]
            t1 = time.perf_counter()
            jobs = [client.submit(g, nn.inputs, durability=self.durability)]
        t2 = time.perf_counter()
        outputs: list[Any] = []
        if workload == "w2" and self.w2_submit == "many":  # as ray.get / Dask's gather of a list
            for result in client.gather(jobs, timeout=self.timeout):
                outputs.extend(result)
        else:
            for job in jobs:
                outputs.extend(job.result(timeout=self.timeout))
        t3 = time.perf_counter()
        return outputs, {"build_s": t1 - t0, "submit_s": t2 - t1, "wait_and_outputs_s": t3 - t2}

    async def _w2_async(self, g: Any, jobs: int) -> list[Any]:
        """What asyncio code writes: one coroutine per job, each submitting and awaiting."""
        async with self.cluster.async_client() as client:

            async def run(x: int) -> list[Any]:
                job = await client.submit(g, [x], durability=self.durability)
                return list(await job.result(timeout=self.timeout))

            results = await asyncio.gather(*(run(x) for x in range(jobs)))
        return [value for result in results for value in result]


# -- CPU accounting --


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
        ("multiprocessing", "dask workers"),
    ):
        if needle in cmd or needle in name:
            return label
    return name or "other"


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of this process and every descendant, by pid."""
    import psutil

    me = psutil.Process()
    out: dict[int, tuple[str, float]] = {}
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[proc.pid] = (_label(proc, me.pid), t.user + t.system)
    return out


def cpu_delta(before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent since ``before``, summed by process label (processes that exited in
    between are not counted)."""
    totals: dict[str, float] = {}
    for pid, (label, cpu) in cpu_snapshot().items():
        spent = cpu - before.get(pid, (label, 0.0))[1]
        totals[label] = totals.get(label, 0.0) + spent
    return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v >= 0.01}


# -- a child process runs one system --


def run_system(args: argparse.Namespace) -> dict[str, Any]:
    sizes = Sizes(args)
    workdir = Path(tempfile.mkdtemp(prefix=f"owbench-{args.child}-"))
    runner: Runner
    if args.child == "orbweaver":
        runner = OrbweaverRunner(
            args.workers, args.db, args.timeout, workdir, args.w2_submit, args.durability
        )
    else:
        runner = PeerRunner(args.child, args.workers)
    out: dict[str, Any] = {"system": args.child, "results": {}}
    nn = w.neural_network(sizes.nn_layers, sizes.nn_width) if "nn" in args.workloads else None
    try:
        out["info"] = runner.start()
        runner.warm_up()
        for workload in args.workloads:
            runs = []
            errors: list[str] = []
            for i in range(args.repeat):
                cpu_before = cpu_snapshot()
                started = time.perf_counter()
                try:
                    outputs, phases = runner.run(workload, sizes, nn)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    traceback.print_exc()
                    break
                wall = time.perf_counter() - started
                cpu = cpu_delta(cpu_before)
                problem = check(workload, outputs, sizes, nn)
                runs.append(
                    {
                        "wall_s": round(wall, 4),
                        "phases": {k: round(v, 4) for k, v in phases.items()},
                        "cpu_s": cpu,
                        "correct": problem is None,
                        "problem": problem,
                    }
                )
                print(
                    f"  {args.child} {workload} run {i + 1}: {wall:.2f} s "
                    f"({sizes.tasks(workload) / wall:,.0f} tasks/s)"
                    f"{'' if problem is None else ' WRONG: ' + problem}",
                    file=sys.stderr,
                    flush=True,
                )
            out["results"][workload] = {"runs": runs, "errors": errors}
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
                        "runs": runs,
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
            if r["wall_s"] is None:
                cells += ["[red]failed[/red]", ""]
                continue
            mark = "" if r["correct"] else " [red]WRONG[/red]"
            cells += [f"{r['wall_s']:.2f}{mark}", f"{r['tasks_per_s']:,.0f}"]
        table.add_row(*cells)
    console = Console(width=max(Console().width, 40 + 24 * len(systems)))
    console.print(table)
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
        default=list(WORKLOADS),
        help="comma-separated: w1,w2,nn (default: all)",
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
    parser.add_argument("--out", type=Path, default=h.RESULTS_DIR / "e2e.json")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
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
    failed = any(r["wall_s"] is None or not r["correct"] for r in payload["results"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
