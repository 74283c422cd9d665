"""Across hosts: W1-like throughput on a cluster spread over network-namespace hosts, with 0 ms
and with 20 ms of added round-trip delay between any two hosts.

The cluster is the test suite's (``tests/support/multihost.py``): MariaDB, storage, scheduler,
two worker hosts (one executor each) and a client host, each a network namespace on one bridge,
addresses in 198.18.0.0/15; the delay is ``netem`` on every host's interface or, on a kernel
without ``netem``, the userspace delaying switch of ``tests/support/delayswitch.py`` (the results
say which). The timed client runs on the client host (this script, run there with ``--child``):
per run, one job of ``--tasks`` independent ``inc(x)`` tasks is built, submitted, waited for
and its outputs checked. Needs root.

    sudo python benches/multihost.py            # ~2 min

Writes ``benches/results/multihost.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
sys.path[:0] = [str(HERE), str(PEERS)]
if "orbweaver" not in sys.modules:
    sys.path.insert(0, str(HERE.parent / "python"))

import _harness as h  # noqa: E402


def child(args: argparse.Namespace) -> int:
    """On the client host: warm up, then `--repeat` runs of one wide job; JSON on stdout."""
    import ow_tasks as t

    import orbweaver as ow

    with ow.Client(timeout=120.0, connect_timeout=30.0) as client:
        name = f"bench-{args.rtt_ms:g}ms"  # one group per run of this child
        rg = client.add_resource_group(name, "bench-password")
        warm = ow.TaskGraph()
        for _ in range(40):
            warm.add(t.inc)
        client.submit(warm, list(range(40)), resource_group=rg).result(timeout=args.timeout)
        runs = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            g = ow.TaskGraph()
            for _ in range(args.tasks):
                g.add(t.inc)
            job = client.submit(g, list(range(args.tasks)), resource_group=rg)
            t1 = time.perf_counter()
            outputs = job.result(timeout=args.timeout)
            wall = time.perf_counter() - t0
            runs.append(
                {
                    "wall_s": round(wall, 4),
                    "submit_s": round(t1 - t0, 4),
                    "correct": outputs == [x + 1 for x in range(args.tasks)],
                }
            )
    print(json.dumps({"runs": runs}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the wide job")
    parser.add_argument("--repeat", type=int, default=3, help="runs per delay")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 20.0],
                        help="round-trip delays in ms")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=h.RESULTS_DIR / "multihost.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rtt-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    sys.path.insert(0, str(HERE.parent / "tests"))
    from support.multihost import MultiHostCluster

    h.warn_if_busy()
    results = []
    failed = False
    with (
        tempfile.TemporaryDirectory(prefix="owbench-multihost-") as tmp,
        MultiHostCluster(Path(tmp), PEERS) as cluster,
    ):
        mechanism = "netem" if cluster.net.netem else "userspace delaying switch"
        for delay in args.delays:
            cluster.delay(delay)
            proc = cluster.run(
                [__file__, "--child", "--rtt-ms", str(delay), "--tasks", str(args.tasks),
                 "--repeat", str(args.repeat), "--timeout", str(args.timeout)],
                timeout=args.timeout * (args.repeat + 1),
            )  # fmt: skip
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                results.append({"rtt_ms": delay, "error": proc.stderr[-2000:]})
                failed = True
                continue
            runs = json.loads(proc.stdout)["runs"]
            wall = h.median([r["wall_s"] for r in runs])
            ok = all(r["correct"] for r in runs)
            failed |= not ok
            results.append(
                {
                    "rtt_ms": delay,
                    "wall_s": round(wall, 3),
                    "tasks_per_s": round(args.tasks / wall, 1),
                    "correct": ok,
                    "runs": runs,
                }
            )
            print(f"  {delay:g} ms RTT: {wall:.2f} s, {args.tasks / wall:,.0f} tasks/s"
                  f"{'' if ok else ' WRONG'}", file=sys.stderr, flush=True)  # fmt: skip
    payload = {
        "benchmark": "multihost",
        "versions": {"orbweaver": h.orbweaver_version()},
        "setup": {
            "hosts": "db, storage, scheduler, worker1, worker2, client: one network namespace "
            "each, veth pairs on one bridge, 198.18.0.0/15",
            "workers": "2 worker hosts, 1 executor each",
            "database": "MariaDB (private server on the db host)",
            "delay": mechanism,
            "workload": f"one job of {args.tasks} independent inc(x) tasks (W1-like)",
            "repeat": args.repeat,
            "statistic": "median over repeats",
        },
        "results": results,
    }
    h.write_results(args.out, payload)
    for r in results:
        if "error" in r:
            print(f"{r['rtt_ms']:g} ms RTT: failed")
        else:
            print(f"{r['rtt_ms']:g} ms RTT: {r['wall_s']:.2f} s, {r['tasks_per_s']:,.0f} tasks/s")
    print(f"delay by {mechanism}; results written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
