"""Weather-station pipeline with dataclass values and a cleanup task, on an embedded cluster.

    python examples/sensor_pipeline/main.py DATA_DIR [--cancel-after SECONDS] [--json]

Every ``*.csv`` file in DATA_DIR holds one station's readings. The job ingests them into
dataclasses, validates them, stages the valid readings in a staging directory, computes
per-station statistics and combines them into a report; the last task removes the staging
directory. With --cancel-after the job is cancelled once it has staged files, and the cleanup
task (which gets the graph inputs, the staging directory first) removes the directory instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sensors

import orbweaver as ow

HERE = Path(__file__).resolve().parent
POLL_S = 0.05


def print_report(report: sensors.Report) -> None:
    print(
        f"{'station':<10} {'kept':>5} {'rejected':>8} {'min °C':>7} {'max °C':>7}"
        f" {'mean °C':>8} {'mean RH %':>9}"
    )
    for s in report.stations:
        print(
            f"{s.station:<10} {s.readings:>5} {s.rejected:>8} {s.min_c:>7.1f} {s.max_c:>7.1f}"
            f" {s.mean_c:>8.2f} {s.mean_humidity_pct:>9.1f}"
        )
    print(
        f"{report.readings} readings kept, {report.rejected} rejected;"
        f" warmest {report.warmest}, coldest {report.coldest}"
    )


def staged_files(staging: Path) -> list[Path]:
    return sorted(staging.glob("*.csv")) if staging.is_dir() else []


def wait_for_staging(job: ow.Job, staging: Path, timeout: float) -> int:
    """Wait until the job has staged at least one file (or ended); returns how many it staged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = staged_files(staging)
        if files or job.state.is_terminal:
            return len(files)
        time.sleep(POLL_S)
    return len(staged_files(staging))


def run(args: argparse.Namespace, files: list[Path], staging: Path, out: dict[str, Any]) -> int:
    graph = sensors.build_graph(len(files))
    inputs = [str(staging), *(str(f.resolve()) for f in files)]
    throttle = args.throttle
    if throttle is None:  # leave something to cancel
        throttle = 3.0 if args.cancel_after is not None else 0.0
    env = {sensors.THROTTLE_ENV: str(throttle)}
    say = print if not args.json else (lambda *a, **k: None)
    say(
        f"sensor pipeline: {len(files)} station{'s' * (len(files) != 1)} from {args.data_dir},"
        f" staging in {staging}"
    )
    with ow.LocalCluster(workers=args.workers, db=args.db, tasks_dir=HERE, env=env) as cluster:
        job = cluster.client().submit(graph, inputs)
        out["job"] = job.id
        if args.cancel_after is not None:
            staged = wait_for_staging(job, staging, args.timeout)
            out["staged_before_cancel"] = staged
            say(f"job {job.id} has staged {staged} files; cancelling in {args.cancel_after:g} s")
            time.sleep(args.cancel_after)
            try:
                state = job.cancel()
            except ow.FailedPrecondition as exc:
                print(f"could not cancel: {exc}", file=sys.stderr)
                return 1
            say(f"job {job.id} cancelled: {state.name}, waiting for the cleanup task")
        state = job.wait(timeout=args.timeout)
        out["state"] = state.name
        say(f"job {job.id} {state.name}")
        if state == ow.JobState.SUCCEEDED:
            (report,) = job.outputs()
            out["report"] = dataclasses.asdict(report)
            if not args.json:
                print_report(report)
        elif state == ow.JobState.FAILED:
            print(f"error: {job.error()}", file=sys.stderr)
    out["staging_exists"] = staging.exists()
    say(f"staging directory {staging}: {'still there' if staging.exists() else 'removed'}")
    expected = ow.JobState.CANCELLED if args.cancel_after is not None else ow.JobState.SUCCEEDED
    return 0 if state == expected else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", metavar="DATA_DIR", type=Path, help="folder of station CSVs")
    parser.add_argument(
        "--cancel-after",
        type=float,
        metavar="SECONDS",
        help="cancel the job this long after it has staged its first file",
    )
    parser.add_argument(
        "--throttle",
        type=float,
        metavar="SECONDS",
        help="pause in each station's statistics step, to simulate slow work"
        " (default: 3 with --cancel-after, else 0)",
    )
    parser.add_argument(
        "--staging", type=Path, help="staging directory (default: a new one in the temp dir)"
    )
    parser.add_argument("--workers", type=int, default=2, help="executor processes (default 2)")
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the job")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir} is not a directory")
    files = sorted(args.data_dir.glob("*.csv"))
    if not files:
        parser.error(f"no *.csv files in {args.data_dir}")
    if args.cancel_after is not None and args.cancel_after < 0:
        parser.error("--cancel-after must be >= 0")
    default_staging = Path(tempfile.gettempdir()) / f"sensor-staging-{uuid.uuid4().hex[:8]}"
    staging = (args.staging or default_staging).resolve()

    out: dict[str, Any] = {"staging": str(staging)}
    code = run(args, files, staging, out)
    if args.json:
        print(json.dumps(out, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
