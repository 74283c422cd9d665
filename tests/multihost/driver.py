"""The multi-host tests' client: run on the cluster's client host, prints one JSON object.

    python driver.py submit --jobs 2 --tasks 8 --hold 0.3 --first 100 [--commit]
        {"jobs": [[job_id, [x, ...]], ...]}   jobs of `where(x, hold)` tasks, x counting up
                                              (--commit: each job with the `publish` commit task)
    python driver.py results JOB_ID ... --timeout 120
        {"jobs": {"<id>": {"state": "SUCCEEDED", "outputs": [...], "error": null}, ...}}

It reaches the storage through `$ORBWEAVER_STORAGE` with the operator token
(`$ORBWEAVER_OPERATOR_TOKEN`), submitting into the resource group `multihost` (created on first
use). A job that has not ended within the timeout is reported with its current state.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "tasks"))
import multihost_tasks as mt

import orbweaver as ow
from orbweaver import errors

GROUP = "multihost"


def group(client: ow.Client) -> Any:
    for g in client.resource_groups():
        if g.name == GROUP:
            return g
    return client.add_resource_group(GROUP, "multihost-password")


def submit(client: ow.Client, args: argparse.Namespace) -> dict[str, Any]:
    rg = group(client)
    jobs = []
    x = args.first
    for _ in range(args.jobs):
        g = ow.TaskGraph(commit=mt.publish if args.commit else None)
        inputs: list[int | float] = []
        xs = []
        for _ in range(args.tasks):
            g.add(mt.where)
            inputs += [x, args.hold]
            xs.append(x)
            x += 1
        jobs.append([client.submit(g, inputs, resource_group=rg).id, xs])
    return {"jobs": jobs}


def results(client: ow.Client, args: argparse.Namespace) -> dict[str, Any]:
    rg = group(client)
    deadline = time.monotonic() + args.timeout
    out: dict[str, Any] = {}
    for job_id in args.job_ids:
        job = client.get_job(job_id, resource_group=rg)
        entry: dict[str, Any] = {"outputs": None, "error": None}
        try:
            entry["outputs"] = job.result(timeout=max(0.0, deadline - time.monotonic()))
        except (errors.JobFailed, errors.JobCancelled, errors.JobTimeout) as exc:
            entry["error"] = str(exc)
        entry["state"] = job.state.name
        out[str(job_id)] = entry
    return {"jobs": out}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit")
    s.add_argument("--jobs", type=int, default=1)
    s.add_argument("--tasks", type=int, default=4)
    s.add_argument("--hold", type=float, default=0.0)
    s.add_argument("--first", type=int, default=0)
    s.add_argument("--commit", action="store_true")
    r = sub.add_parser("results")
    r.add_argument("job_ids", type=int, nargs="+")
    r.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    with ow.Client(timeout=60.0, connect_timeout=30.0) as client:
        reply = submit(client, args) if args.command == "submit" else results(client, args)
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
