"""Map-reduce over a folder of web-server access logs, on an embedded Orbweaver cluster.

    python examples/log_mapreduce/main.py LOG_DIR OUT_FILE [--workers N] [--db URL]

One map task per log file counts requests by status code, path and client; merge tasks combine
the counts pairwise; a summary task ranks the top paths and clients; the commit task publishes
the summary to OUT_FILE as JSON, atomically, once every task has succeeded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import logstats

import orbweaver as ow

HERE = Path(__file__).resolve().parent


def log_files(log_dir: Path) -> list[Path]:
    """Every file whose name contains ".log": access.log, access.log.1, access.log.2.gz, ..."""
    return sorted(p for p in log_dir.iterdir() if p.is_file() and ".log" in p.name)


def print_summary(summary: logstats.Summary) -> None:
    def hits(items: list[logstats.Hit]) -> str:
        return ", ".join(f"{h.key} {h.requests}" for h in items)

    print(
        f"requests      {summary.requests} from {summary.files} files"
        f" ({summary.malformed} malformed line{'s' * (summary.malformed != 1)} skipped)"
    )
    print(f"bytes served  {summary.bytes_served:,}")
    print("status codes  " + "  ".join(f"{c}: {n}" for c, n in sorted(summary.status.items())))
    print(f"top paths     {hits(summary.top_paths)}")
    print(f"top clients   {hits(summary.top_clients)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log_dir", metavar="LOG_DIR", type=Path, help="folder of access logs")
    parser.add_argument("out_file", metavar="OUT_FILE", type=Path, help="where to publish JSON")
    parser.add_argument("--workers", type=int, default=2, help="executor processes (default 2)")
    parser.add_argument(
        "--db", help="database URL, e.g. sqlite:///jobs.db (default: a temporary SQLite file)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the job")
    args = parser.parse_args(argv)
    if not args.log_dir.is_dir():
        parser.error(f"{args.log_dir} is not a directory")
    files = log_files(args.log_dir)
    if not files:
        parser.error(f"no log files (names containing '.log') in {args.log_dir}")

    graph = logstats.build_graph(len(files))
    # Executors may run in another working directory: hand them absolute paths.
    inputs = [str(args.out_file.resolve()), *(str(f.resolve()) for f in files)]
    print(
        f"counting {len(files)} log files in {args.log_dir} with {len(graph)} tasks"
        f" on {args.workers} executor processes"
    )
    with ow.LocalCluster(workers=args.workers, db=args.db, tasks_dir=HERE) as cluster:
        started = time.perf_counter()
        job = cluster.client().submit(graph, inputs)
        try:
            summary, destination = job.result(timeout=args.timeout)
        except ow.JobFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except ow.JobTimeout:
            print(f"job {job.id} did not finish within {args.timeout:g} s", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - started
    print(f"job {job.id} SUCCEEDED in {elapsed:.1f} s")
    print_summary(summary)
    print(f"published     {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
