"""The database cost of one small job: its registration and its completion, as storage makes them.

On a private MariaDB (the harness's, ``innodb_flush_log_at_trx_commit=1`` by default: every commit
on disk), one job at a time: ``register_job_groups`` with one job (a lone submission, as the
group commit makes it when nothing else is being committed) then ``commit_outputs_many`` of that
job (a lone completion), ``--jobs`` times after ``--warm-up`` untimed ones. Prints the p50 / p90
of the pair and the p50 of each, in microseconds; ``--out`` also writes them as JSON.

    python benches/db_commit.py --jobs 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

from orbweaver.storage.db import JobGroup, open_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--warm-up", type=int, default=200)
    parser.add_argument(
        "--innodb-flush", type=int, default=1, help="innodb_flush_log_at_trx_commit (1 or 2)"
    )
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    with h.private_server(flush=args.innodb_flush) as server:
        db = open_database(server.create_database(), lead=True)
        try:
            group = db.add_resource_group("bench", b"pw")
            graph = b"g" * 224  # about a one-task graph, compressed

            def one_job() -> tuple[float, float]:
                """(registration, completion) in microseconds."""
                job = JobGroup(group, graph, [(b"inputs", uuid.uuid4().hex)], start=True)
                began = time.perf_counter()
                [registered] = db.register_job_groups([job])
                registered_at = time.perf_counter()
                assert isinstance(registered, list), registered
                [(job_id, _)] = registered
                db.commit_outputs_many([(job_id, b"outputs", False)])
                ended = time.perf_counter()
                return (registered_at - began) * 1e6, (ended - registered_at) * 1e6

            for _ in range(args.warm_up):
                one_job()
            pairs = [one_job() for _ in range(args.jobs)]
        finally:
            db.close()
    samples = sorted(r + c for r, c in pairs)
    figures = {
        "jobs": args.jobs,
        "innodb_flush_log_at_trx_commit": args.innodb_flush,
        "p50_us": round(statistics.median(samples)),
        "p90_us": round(samples[int(len(samples) * 0.9)]),
        "register_p50_us": round(statistics.median(r for r, _ in pairs)),
        "complete_p50_us": round(statistics.median(c for _, c in pairs)),
    }
    print(
        f"register + complete one job: p50 {figures['p50_us']} us, p90 {figures['p90_us']} us "
        f"(register p50 {figures['register_p50_us']} us, complete p50 "
        f"{figures['complete_p50_us']} us; {args.jobs} jobs, "
        f"innodb_flush_log_at_trx_commit={args.innodb_flush})"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
