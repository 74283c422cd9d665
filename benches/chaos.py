"""Chaos run: a long mixed workload under random SIGKILLs and database restarts, verified job by
job (the engine is ``tests/support/chaos.py``; ``tests/e2e/test_chaos_run.py`` runs it short).

A ``LocalCluster`` with extra workers on a private MariaDB server (or SQLite) runs chains,
fan-out/fan-in jobs, jobs with a commit task, jobs with a cleanup task cancelled mid-run, failing
jobs and jobs with a flaky task, submitted concurrently by several resource groups, while a fault
injector SIGKILLs the storage service (also while it recovers), the scheduler, workers and single
executors, and restarts MariaDB. At the end every job must be terminal (stuck = 0), end as its
kind dictates (wrong = 0) and be found exactly once (lost = 0, no extra job); each group must see
exactly its own jobs.

    python benches/chaos.py --duration 720 --jobs 1500 --seed 1

Writes ``benches/results/chaos.json``, prints a summary table (and with ``--markdown`` the
tables of docs/reliability.md). The exit status is 1 when anything went wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]
with contextlib.suppress(ImportError):  # a plain checkout without `pip install -e .`
    import orbweaver  # noqa: F401
if "orbweaver" not in sys.modules:
    sys.path.insert(0, str(HERE.parent / "python"))

import _harness as h  # noqa: E402  (puts tests/ on sys.path)

from support.chaos import FAULT_KINDS, JOB_KINDS, ChaosConfig, ChaosReport, run_chaos  # noqa: E402

FAULT_TITLES = {
    "storage": "storage SIGKILLed, restarted",
    "storage_in_recovery": "storage SIGKILLed, then again while recovering",
    "scheduler": "scheduler SIGKILLed, restarted",
    "worker": "worker (EM + executors) SIGKILLed, restarted",
    "executor": "executor(s) SIGKILLed",
    "mariadb": "MariaDB SIGKILLed, restarted",
}


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fault_rows(report: ChaosReport) -> list[tuple[str, int, str]]:
    rows = []
    for kind in FAULT_KINDS:
        faults = [f for f in report.faults if f.kind == kind]
        if not faults:
            continue
        if kind == "executor":
            hits = report.executor_hits
            note = (
                f"{hits.get('running a task', 0)} killed a running task, "
                f"{hits.get('idle', 0)} an idle executor"
            )
        elif kind == "mariadb":
            down = report.mariadb_outages()["down_s"]
            stayed = sum(1 for f in faults if f.detail == "storage stayed up")
            note = (
                f"down {_s(down['median'])} s median, {_s(down['max'])} s max; "
                f"storage stayed up {stayed}/{len(faults)}"
            )
        else:
            seconds = sorted(f.seconds for f in faults)
            note = (
                f"back in {_s(seconds[len(seconds) // 2])} s median, {_s(seconds[-1])} s max"
                " (kill to ready)"
            )
        rows.append((FAULT_TITLES[kind], len(faults), note))
    return rows


def print_summary(report: ChaosReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    data = report.to_json()
    jobs = Table(title=f"Jobs ({data['jobs']['total']}, {report.database})")
    jobs.add_column("kind")
    jobs.add_column("jobs", justify="right")
    for kind in JOB_KINDS:
        jobs.add_row(kind, str(report.jobs_by_kind.get(kind, 0)))
    jobs.add_row("final states", ", ".join(f"{k} {v}" for k, v in report.final_states.items()))
    console.print(jobs)

    faults = Table(title=f"Faults ({len(report.faults)} in {report.run_s:.0f} s)")
    faults.add_column("fault")
    faults.add_column("count", justify="right")
    faults.add_column("")
    for row in _fault_rows(report):
        faults.add_row(row[0], str(row[1]), row[2])
    console.print(faults)

    rec = report.storage_recovery()
    verdict = Table(title="Verdict")
    verdict.add_column("figure")
    verdict.add_column("value", justify="right")
    for name in ("lost", "stuck", "wrong", "extra", "isolation_violations", "unexpected_exits"):
        value = data["verdict"][name]
        verdict.add_row(name, f"[{'green' if value == 0 else 'red'}]{value}[/]")
    verdict.add_row("storage restarts", str(rec["restarts"]))
    verdict.add_row(
        "time to recover (kill to next call), median / max s",
        f"{_s(rec['time_to_first_call_s']['median'])} / {_s(rec['time_to_first_call_s']['max'])}",
    )
    for name, title in (("commit_runs_per_job", "commit"), ("cleanup_runs_per_job", "cleanup")):
        runs = data[name]
        verdict.add_row(
            f"{title} runs per job (distribution)",
            f"mean {runs['mean']}, max {runs['max']} {runs['distribution']}",
        )
    console.print(verdict)
    for problem in report.problems():
        console.print(f"[red]{problem}[/red]")


def markdown(report: ChaosReport, command: str) -> str:
    """The figures as the tables of docs/reliability.md."""
    data = report.to_json()
    rec = report.storage_recovery()
    out = [
        f"`{command}` ({data['jobs']['total']} jobs, {len(report.faults)} faults in "
        f"{report.run_s:.0f} s, then {report.drain_s:.0f} s to drain; {report.database}):",
        "",
        "| jobs | count | final state |",
        "|---|---:|---|",
    ]
    want = {
        "chain": "SUCCEEDED, outputs right",
        "fanout": "SUCCEEDED, outputs right",
        "commit": "SUCCEEDED, outputs right, published",
        "cancel": "CANCELLED mid-run, cleanup got the graph inputs",
        "fail": "FAILED with the task's error",
        "flaky": "SUCCEEDED after 2 failed attempts",
    }
    for kind in JOB_KINDS:
        out.append(f"| {kind} | {report.jobs_by_kind.get(kind, 0)} | {want[kind]} |")
    out += ["", "| fault | count | |", "|---|---:|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in _fault_rows(report)]
    first = rec["time_to_first_call_s"]
    ready = rec["time_to_ready_s"]
    commit, cleanup = data["commit_runs_per_job"], data["cleanup_runs_per_job"]
    v = data["verdict"]
    out += [
        "",
        "| figure | value |",
        "|---|---|",
        f"| lost / stuck / wrong | {v['lost']} / {v['stuck']} / {v['wrong']} |",
        f"| extra jobs, isolation violations | {v['extra']}, {v['isolation_violations']} |",
        f"| components that exited unasked | {v['unexpected_exits']} |",
        f"| storage recoveries | {rec['restarts']} ({rec['killed_during_recovery']} "
        "killed again while recovering) |",
        f"| time to recover: kill to ready, median / max | {_s(ready['median'])} / "
        f"{_s(ready['max'])} s |",
        f"| time to recover: kill to next client call, median / max | {_s(first['median'])} / "
        f"{_s(first['max'])} s |",
        f"| jobs in the cache rebuilt per restart, median / max | "
        f"{rec['jobs_recovered_per_start']['median']} / {rec['jobs_recovered_per_start']['max']} |",
        f"| commit runs per job: mean, max, distribution | {commit['mean']}, {commit['max']}, "
        f"{_dist(commit['distribution'])} |",
        f"| cleanup runs per job: mean, max, distribution | {cleanup['mean']}, {cleanup['max']}, "
        f"{_dist(cleanup['distribution'])} |",
    ]
    return "\n".join(out)


def _dist(distribution: dict[str, int]) -> str:
    return ", ".join(
        f"{runs} run{'s' if runs != '1' else ''}: {n} job{'s' if n != 1 else ''}"
        for runs, n in distribution.items()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=720.0, help="seconds of chaos")
    parser.add_argument("--jobs", type=int, default=1500, help="jobs, spread over the duration")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--fault-pause", type=float, default=2.5, help="mean seconds between two faults"
    )
    parser.add_argument("--db", choices=["mariadb", "sqlite"], default="mariadb")
    parser.add_argument("--groups", type=int, default=3, help="resource groups besides default")
    parser.add_argument("--extra-workers", type=int, default=2)
    parser.add_argument("--executors", type=int, default=2, help="executors per worker")
    parser.add_argument(
        "--burst", type=int, default=25, help="submissions each group makes back to back"
    )
    parser.add_argument(
        "--step-seconds", type=float, default=0.2, help="how long each regular task sleeps"
    )
    parser.add_argument("--out", type=Path, default=h.RESULTS_DIR / "chaos.json")
    parser.add_argument("--markdown", action="store_true", help="print the docs tables too")
    parser.add_argument("--keep", action="store_true", help="keep logs and markers")
    parser.add_argument("--quiet", action="store_true", help="do not print every fault")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.burst < 1 or args.duration <= 0 or args.fault_pause <= 0:
        parser.error("--jobs, --burst, --duration and --fault-pause must be positive")

    config = ChaosConfig(
        jobs=args.jobs,
        duration=args.duration,
        seed=args.seed,
        fault_pause=args.fault_pause,
        groups=args.groups,
        extra_workers=args.extra_workers,
        executors=args.executors,
        step_seconds=args.step_seconds,
        burst=args.burst,
    )
    h.warn_if_busy()
    workdir = Path(tempfile.mkdtemp(prefix="owchaos-"))

    def say(message: str) -> None:
        if not args.quiet or not message.startswith(" "):
            print(message, file=sys.stderr, flush=True)

    info: dict[str, Any] = {"orbweaver": h.orbweaver_version()}
    with contextlib.ExitStack() as stack:
        server = None
        if args.db == "mariadb":
            server = stack.enter_context(h.private_server(buffer_pool="256M"))
            if server.pid is None:
                parser.error("MariaDB restarts need a private server, not an external one")
            info["database"] = f"MariaDB {h.server_version(server)} (private server)"
        else:
            import sqlite3

            info["database"] = f"SQLite {sqlite3.sqlite_version} (file)"
        report = run_chaos(config, workdir, args.db, server, progress=say)
    command = " ".join(["python", "benches/chaos.py", *(argv or sys.argv[1:])])
    h.write_results(args.out, {"benchmark": "chaos", "versions": info, **report.to_json()})
    print_summary(report)
    if args.markdown:
        print(markdown(report, command))
    print(f"results written to {args.out}")
    if args.keep or report.problems():
        print(f"logs and markers kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
