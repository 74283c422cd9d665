"""Recovery benchmark: how fast a restarted storage service rebuilds its job cache.

For each database backend and each job count N, a fresh database is filled with N Running jobs of
10 tasks each (the rows a started submission writes), then a storage
process (``python -m orbweaver storage --db URL --listen 127.0.0.1:0 --ready-file F``) is started
on it, ``--repeat`` times. Measured per start:

* ``ready_s``: from spawning the process to its ready file (written after recovery, once the gRPC
  server is serving and the recovered ready work has been re-offered);
* ``recovery_s``: the recovery itself, as the storage logs it (``job cache recovered``);
* ``peak_rss``: VmHWM of the storage process once it is ready;
* ``rss``: VmRSS once ready (after a short settle); ``cache_bytes_per_task`` is ``rss`` minus the
  RSS of an idle storage on an empty database of the same backend, divided by ``10 * N``.

Each start is checked: the log must report N recovered jobs and a sample job must be RUNNING with
10 tasks, 2 of them ready, through the public client.

    python benches/recovery.py --jobs 10000 100000 --db mariadb sqlite

Writes ``benches/results/recovery.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]
with contextlib.suppress(ImportError):  # a plain checkout without `pip install -e .`
    import orbweaver  # noqa: F401
if "orbweaver" not in sys.modules:
    sys.path.insert(0, str(HERE.parent / "python"))

import _harness as h  # noqa: E402
import ow_tasks as t  # noqa: E402

import orbweaver as ow  # noqa: E402
from orbweaver.storage.db import Database, DbJobState, open_database  # noqa: E402

TASKS_PER_JOB = 10
BULK_BATCH = 1000
API_SAMPLE = 50
READY_TIMEOUT_S = 600.0
OPERATOR_TOKEN = secrets.token_hex(16)
SETTLE_S = 1.0
TARGET_JOBS = 100_000
TARGET_READY_S = 10.0


# -- the job --


def job_graph() -> ow.TaskGraph:
    """10 tasks, 2 int graph inputs: two inputs fan out to four, pairwise joins, a final join and
    a tail (double x2 -> inc x4 -> add x2 -> add -> inc)."""
    g = ow.TaskGraph()
    a = g.add(t.double)
    b = g.add(t.double)
    c = [g.add(t.inc, a), g.add(t.inc, b), g.add(t.inc, a), g.add(t.inc, b)]
    d1 = g.add(t.add, c[0], c[1])
    d2 = g.add(t.add, c[2], c[3])
    g.add(t.inc, g.add(t.add, d1, d2))
    assert len(g) == TASKS_PER_JOB
    return g


# -- filling the database --


def _running_rows(db: Database) -> Any:
    """(state, blobs, outputs, error, ended) of every job: what recovery reads."""
    rows = db._transaction(  # type: ignore[attr-defined]
        lambda cur: (
            cur.execute(
                "SELECT state, compressed_serialized_task_graph, compressed_serialized_job_inputs, "
                "serialized_job_outputs, error_message, ended_at, resource_group_id "
                "FROM jobs ORDER BY id"
            ),
            cur.fetchall(),
        )[1],
        write=False,
    )
    return [tuple(bytes(v) if isinstance(v, (bytes, bytearray)) else v for v in r) for r in rows]


def seed(url: str, jobs: int, method: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Insert `jobs` Running jobs as a started submission does. ``api``: ``register_job(...,
    start=True)`` per job (a thread pool). ``bulk``: the first jobs that way, the rest with
    ``register_jobs(..., start=True)`` (what ``Client.submit_many`` runs), many jobs per
    transaction; every row is then compared with the API-made ones (only ids and timestamps
    differ)."""
    g = job_graph()
    graph = g.compressed()
    db = open_database(url)
    started = time.perf_counter()
    try:
        rg = db.add_resource_group("bench", b"")

        def api_job(i: int) -> None:
            db.register_job(rg, graph, g.encode_inputs([i, i + 1]), None, start=True)

        n_api = jobs if method == "api" else min(jobs, API_SAMPLE)
        if n_api:
            from concurrent.futures import ThreadPoolExecutor

            threads = 8 if url.startswith(("mariadb", "mysql")) else 1
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(api_job, range(n_api), chunksize=64))
        running = DbJobState.RUNNING.db_name
        for lo in range(n_api, jobs, BULK_BATCH):
            hi = min(jobs, lo + BULK_BATCH)
            db.register_jobs(
                rg, graph, [(g.encode_inputs([i, i + 1]), None) for i in range(lo, hi)], start=True
            )
            if hi % 20_000 == 0:
                log(f"  seeded {hi:,} jobs")
        seconds = time.perf_counter() - started
        rows = _running_rows(db)
        if len(rows) != jobs:
            raise RuntimeError(f"seeded {len(rows)} jobs, expected {jobs}")
        # Apart from the inputs (job i gets [i, i + 1]), every row, API-made or bulk, must be the
        # same plain Running job: state, graph, no outputs, no error, not ended, the same group.
        if {(r[0], r[1], r[3], r[4], r[5], r[6]) for r in rows} != {
            (running, graph, None, None, None, rg)
        }:
            raise RuntimeError("a seeded row is not what a started submission writes")
        expected_inputs = sorted(g.encode_inputs([i, i + 1]) for i in range(jobs))
        if sorted(r[2] for r in rows) != expected_inputs:
            raise RuntimeError("seeded inputs differ from what a submission stores")
    finally:
        db.close()
    return {"method": method, "seconds": round(seconds, 2), "api_jobs": n_api}


# -- one storage start --


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _recovery_line(log_path: Path) -> dict[str, Any] | None:
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if entry.get("msg") == "job cache recovered":
                return dict(entry)
    return None


@dataclass
class Start:
    ready_s: float
    recovery_s: float | None
    recovered: int | None
    peak_rss: int
    rss: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "ready_s": round(self.ready_s, 3),
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 3),
            "recovered_jobs": self.recovered,
            "peak_rss_bytes": self.peak_rss,
            "rss_bytes": self.rss,
        }


@contextlib.contextmanager
def storage_process(
    url: str, workdir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, float, Path]]:
    ready = workdir / "storage.ready"
    ready.unlink(missing_ok=True)
    log_path = workdir / "storage.log"
    log_path.unlink(missing_ok=True)
    env = {
        **os.environ,
        "ORBWEAVER_LOG_LEVEL": "INFO",
        # The sample check reads a job as the operator (a job belongs to a resource group).
        "ORBWEAVER_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "PYTHONPATH": os.pathsep.join(
            p for p in [str(HERE.parent / "python"), os.environ.get("PYTHONPATH", "")] if p
        ),
    }
    cmd = [
        sys.executable,
        "-m",
        "orbweaver",
        "storage",
        "--db",
        url,
        "--listen",
        "127.0.0.1:0",
        "--ready-file",
        str(ready),
    ]
    with log_path.open("wb") as log_file:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = started + READY_TIMEOUT_S
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"storage exited with {proc.returncode}:\n"
                    f"{log_path.read_text(errors='replace')[-4000:]}"
                )
            if time.perf_counter() > deadline:
                raise RuntimeError(f"storage not ready within {READY_TIMEOUT_S:g} s")
            time.sleep(0.002)
        ready_s = time.perf_counter() - started
        yield proc, ready, ready_s, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


def start_storage(url: str, workdir: Path, jobs: int, sample_job: int | None) -> Start:
    with storage_process(url, workdir) as (proc, ready, ready_s, log_path):
        port = int(json.loads(ready.read_text())["port"])
        time.sleep(SETTLE_S)
        mem = _status(proc.pid)
        line = _recovery_line(log_path)
        recovered = None if line is None else int(line.get("jobs", -1))
        if recovered != jobs:
            raise RuntimeError(f"storage recovered {recovered} jobs, expected {jobs}")
        if sample_job is not None:
            with ow.Client(f"127.0.0.1:{port}", operator_token=OPERATOR_TOKEN) as client:
                job = client.get_job(sample_job)
                p = job.progress()
                if (p.state, p.total, p.ready) != (ow.JobState.RUNNING, TASKS_PER_JOB, 2):
                    raise RuntimeError(f"job {sample_job} after recovery: {p}")
        return Start(
            ready_s,
            None if line is None else float(line["seconds"]),
            recovered,
            mem["VmHWM"],
            mem["VmRSS"],
        )


# -- databases --


@contextlib.contextmanager
def backend(
    name: str, workdir: Path
) -> Iterator[tuple[Callable[[], str], Callable[[str], None], str]]:
    """Yields (new empty database URL, drop it, server description)."""
    if name == "sqlite":
        counter = iter(range(1_000_000))

        def new_sqlite() -> str:
            return f"sqlite:///{workdir / f'recovery-{next(counter)}.db'}"

        def drop_sqlite(url: str) -> None:
            path = Path(url.removeprefix("sqlite:///"))
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(path) + suffix).unlink(missing_ok=True)

        import sqlite3

        yield new_sqlite, drop_sqlite, f"SQLite {sqlite3.sqlite_version} (file, embedded)"
        return
    with h.private_server() as server:
        yield (
            server.create_database,
            server.drop_database,
            f"MariaDB {h.server_version(server)} (private server, loopback TCP)",
        )


# -- the run --


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    servers: dict[str, str] = {}
    g = job_graph()
    workdir = Path(tempfile.mkdtemp(prefix="owbench-recovery-"))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        for db_name in args.db:
            with backend(db_name, workdir) as (new_db, drop_db, description):
                servers[db_name] = description
                url = new_db()
                idle = [start_storage(url, workdir, 0, None) for _ in range(args.repeat)]
                drop_db(url)
                idle_rss = h.median([s.rss for s in idle])
                log(
                    f"{db_name}: idle storage ready in {h.median([s.ready_s for s in idle]):.2f}"
                    f" s, RSS {idle_rss / 2**20:.1f} MiB"
                )
                for jobs in args.jobs:
                    url = new_db()
                    try:
                        log(f"{db_name}: seeding {jobs:,} Running jobs ({args.seed})")
                        seeded = seed(url, jobs, args.seed, log)
                        log(f"  seeded in {seeded['seconds']:.1f} s")
                        starts = []
                        for i in range(args.repeat):
                            s = start_storage(url, workdir, jobs, jobs // 2 + 1 if jobs else None)
                            log(
                                f"  start {i + 1}: ready {s.ready_s:.2f} s, recovery "
                                f"{s.recovery_s:.2f} s, peak RSS {s.peak_rss / 2**20:.0f} MiB"
                            )
                            starts.append(s)
                    finally:
                        drop_db(url)
                    tasks = jobs * TASKS_PER_JOB
                    rss = h.median([s.rss for s in starts])
                    results.append(
                        {
                            "db": db_name,
                            "jobs": jobs,
                            "tasks": tasks,
                            "seed": seeded,
                            "ready_s": round(h.median([s.ready_s for s in starts]), 3),
                            "recovery_s": round(h.median([s.recovery_s or 0.0 for s in starts]), 3),
                            "peak_rss_bytes": int(h.median([s.peak_rss for s in starts])),
                            "rss_bytes": int(rss),
                            "idle_rss_bytes": int(idle_rss),
                            "cache_bytes_per_task": round((rss - idle_rss) / tasks, 1),
                            "idle_ready_s": round(h.median([s.ready_s for s in idle]), 3),
                            "runs": [s.as_dict() for s in starts],
                            "idle_runs": [s.as_dict() for s in idle],
                        }
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    target = [r for r in results if r["jobs"] == TARGET_JOBS]
    return {
        "benchmark": "recovery",
        "versions": {"orbweaver": h.orbweaver_version()},
        "databases": servers,
        "job": {
            "tasks": TASKS_PER_JOB,
            "graph_inputs": 2,
            "shape": "double x2 -> inc x4 -> add x2 -> add -> inc",
            "compressed_graph_bytes": len(g.compressed()),
            "compressed_inputs_bytes": len(g.encode_inputs([1, 2])),
            "state": "Running",
        },
        "repeat": args.repeat,
        "statistic": "median over repeats",
        "target": {
            "jobs": TARGET_JOBS,
            "ready_under_s": TARGET_READY_S,
            "met": {r["db"]: r["ready_s"] < TARGET_READY_S for r in target},
        },
        "results": results,
    }


def print_table(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Storage recovery (Running jobs of 10 tasks; median of {payload['repeat']} starts)"
    )
    for col in (
        "db",
        "jobs",
        "start to serving (s)",
        "recovery (s)",
        "peak RSS (MiB)",
        "RSS idle -> recovered (MiB)",
        "cache bytes / task",
    ):
        table.add_column(col, justify="left" if col == "db" else "right")
    for r in payload["results"]:
        table.add_row(
            r["db"],
            f"{r['jobs']:,}",
            f"{r['ready_s']:.2f}",
            f"{r['recovery_s']:.2f}",
            f"{r['peak_rss_bytes'] / 2**20:.0f}",
            f"{r['idle_rss_bytes'] / 2**20:.0f} -> {r['rss_bytes'] / 2**20:.0f}",
            f"{r['cache_bytes_per_task']:.0f}",
        )
    Console(width=max(Console().width, 120)).print(table)
    for db_name, met in payload["target"]["met"].items():
        print(
            f"target: {TARGET_JOBS:,} jobs recovered and serving in < {TARGET_READY_S:g} s on "
            f"{db_name}: {'met' if met else 'NOT met'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--db", nargs="+", choices=["mariadb", "sqlite"], default=["mariadb", "sqlite"]
    )
    parser.add_argument("--repeat", type=int, default=3, help="storage starts per case")
    parser.add_argument(
        "--seed",
        choices=["bulk", "api"],
        default="bulk",
        help="bulk: register_jobs, many jobs per transaction (default); api: register_job per job",
    )
    parser.add_argument("--out", type=Path, default=h.RESULTS_DIR / "recovery.json")
    args = parser.parse_args(argv)
    if args.repeat < 1 or any(n < 1 for n in args.jobs):
        parser.error("--repeat and --jobs must be positive")
    h.warn_if_busy()
    payload = run(args)
    h.write_results(args.out, payload)
    print_table(payload)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
