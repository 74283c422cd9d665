"""One small job followed through every hop: where the submit-to-result latency goes.

Starts an Orbweaver cluster (storage, scheduler, one execution manager with 2 executors; MariaDB
on a private server, or SQLite with ``--db sqlite``) with timeline tracing on
(``ORBWEAVER_TRACE_DIR``, see ``python/orbweaver/_trace.py``), submits one-task jobs one after
the other (``client.submit(g, [x])`` then ``job.result()``, as a user's loop does), and prints,
the median time since ``submit()`` was called at which each event happened, and the total.

    python benches/timeline.py --jobs 500

Writes ``benches/results/timeline.json``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
sys.path[:0] = [str(HERE), str(PEERS)]

import _harness as h  # noqa: E402

# What each event marks; the timeline prints them in the order they happen (median time since
# `client.submit`), each with the time since the event before it.
EVENTS = {
    "client.submit": "client: submit() called",
    "storage.register": "storage: RegisterJob handler entered (client -> storage, gRPC)",
    "storage.committed": "storage: credentials checked, graph parsed, job row committed",
    "storage.polled": "storage: job cached, its task handed to the scheduler's long poll",
    "storage.offered": "storage: job cached, its task handed to the EM's waiting take",
    "client.submitted": "client: submit() returned (reply)",
    "client.result": "client: result() called (its WaitJob travels meanwhile)",
    "scheduler.polled": "scheduler: PollAll reply received",
    "scheduler.handed": "scheduler: task placed, handed to the EM's long poll (NextTasks)",
    "em.fetched": "EM: NextTasks reply received",
    "storage.instances": "storage: instance registered (RegisterTaskInstances, TakeReadyTasks)",
    "em.registered": "EM: registration (or take) reply received",
    "em.run": "EM: batch started (by the taker itself on the taken path, else a runner thread)",
    "em.ran": "EM: outcome back from the executor (pipe both ways, decode, call, encode)",
    "em.report": "EM: ReportTaskOutcomes sent (the taker itself, or the reporter thread)",
    "storage.report": "storage: report received",
    "storage.completed": "storage: job outputs committed",
    "storage.waited": "storage: the job's WaitJob woken",
    "client.resulted": "client: result() returned (reply, outputs decoded)",
}


def read_traces(directory: Path) -> dict[int, dict[str, int]]:
    """job id -> event -> first time (ns) it happened."""
    jobs: dict[int, dict[str, int]] = collections.defaultdict(dict)
    for path in directory.glob("*.trace"):
        for line in path.read_text().splitlines():
            stamp, event, job = line.split()
            jobs[int(job)].setdefault(event, int(stamp))
    return jobs


# The two paths of a job's first task: taken from storage by an idle execution manager
# (TakeReadyTasks), or placed by the scheduler (PollAll, NextTasks, RegisterTaskInstances).
SCHEDULER_ONLY = {"storage.polled", "scheduler.polled", "scheduler.handed", "em.fetched"}
PATHS = {
    "taken": [n for n in EVENTS if n not in SCHEDULER_ONLY],
    "scheduler": [n for n in EVENTS if n != "storage.offered"],
}


def summarise(jobs: dict[int, dict[str, int]], wanted: set[int]) -> dict[str, Any]:
    """One timeline per path; jobs are sorted by the path their events show."""
    paths: dict[str, Any] = {}
    for path, events in PATHS.items():
        complete = [
            jobs[j]
            for j in wanted
            if all(n in jobs.get(j, {}) for n in events)
            and (path == "scheduler") == ("scheduler.polled" in jobs[j])
        ]
        if complete:
            paths[path] = timeline_of(complete, events)
    if not paths:
        raise SystemExit("no job has every event: is tracing reaching every process?")
    return {"jobs": sum(p["jobs"] for p in paths.values()), "paths": paths}


def timeline_of(complete: list[dict[str, int]], events: list[str]) -> dict[str, Any]:
    offsets = {
        name: statistics.median((e[name] - e["client.submit"]) / 1e6 for e in complete)
        for name in events
    }
    timeline = []
    previous = 0.0
    for name in sorted(events, key=lambda n: offsets[n]):
        timeline.append(
            {
                "event": name,
                "what": EVENTS[name],
                "at_ms": round(offsets[name], 3),
                "step_ms": round(offsets[name] - previous, 3),
            }
        )
        previous = offsets[name]
    totals = [(e["client.resulted"] - e["client.submit"]) / 1e6 for e in complete]
    return {
        "jobs": len(complete),
        "timeline": timeline,
        "total_p50_ms": round(statistics.median(totals), 3),
        "total_p99_ms": round(statistics.quantiles(totals, n=100)[98], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--db", choices=("mariadb", "sqlite"), default="mariadb")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="owtimeline-")))
        trace_dir = work / "trace"
        # Every process of the cluster (and this one) reads it when it imports orbweaver.
        os.environ["ORBWEAVER_TRACE_DIR"] = str(trace_dir)
        import ow_tasks as t

        import orbweaver as ow

        if args.db == "mariadb":
            url = stack.enter_context(h.private_server()).create_database()
        else:
            url = f"sqlite:///{work / 'jobs.db'}"
        cluster = ow.LocalCluster(workers=2, db=url, tasks_dir=PEERS, log_dir=work / "logs")
        cluster.start()
        stack.callback(cluster.stop)
        client = cluster.client()
        g = ow.TaskGraph()
        g.add(t.inc)
        for x in range(50):  # warm-up: imports, connections, the executors' first calls
            client.submit(g, [x]).result(timeout=60)
        measured = set()
        for x in range(args.jobs):
            job = client.submit(g, [x])
            if job.result(timeout=60) != [x + 1]:
                raise SystemExit(f"job {job.id}: wrong output")
            measured.add(job.id)
        time.sleep(0.2)  # the last lines of the other processes
        summary = summarise(read_traces(trace_dir), measured)
    summary["database"] = args.db
    for path, result in summary["paths"].items():
        print(f"\n{path}: {result['jobs']} of {summary['jobs']} jobs")
        print(f"{'event':<18} {'at ms':>7} {'step ms':>7}  what (medians)")
        for row in result["timeline"]:
            print(f"{row['event']:<18} {row['at_ms']:>7.3f} {row['step_ms']:>7.3f}  {row['what']}")
        p50, p99 = result["total_p50_ms"], result["total_p99_ms"]
        print(f"submit() called to result() returned: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    h.write_results(h.RESULTS_DIR / "timeline.json", summary)


if __name__ == "__main__":
    main()
