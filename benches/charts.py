"""PNG charts of the recorded benchmark results (`benches/results/*.json`), for
docs/performance.md:

* ``throughput.png``: tasks/s per end-to-end workload, Orbweaver against Ray and Dask in the
  same run (``e2e.json``), plus the W2 variants of the asyncio client and the plain loop
  (``e2e-w2-async.json``, ``e2e-w2-each.json``) against Ray's W2 of their own runs;
* ``recovery.png``: start-to-serving and recovery time of a restarted storage against the
  number of running jobs (``recovery.json``), with the failover time (``failover.json``);
* ``latency.png``: the distribution (CDF) of the submit-to-result latency of a one-task job per
  system, from every ``lat`` sample of ``e2e-shapes.json``;
* ``utilisation.png``: core utilisation per task duration (``t1``, ``t10``, ``t100`` of
  ``e2e-shapes.json``) per system, with the 90 % target at 10 ms.

    python benches/charts.py            # needs matplotlib: pip install '.[bench]'

Writes them to ``docs/img/`` (the last two only when ``e2e-shapes.json`` exists).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE.parent / "docs" / "img"
SYSTEMS = ("orbweaver", "ray", "dask")
COLOURS = {"orbweaver": "#2b6cb0", "ray": "#dd6b20", "dask": "#718096"}
TITLES = {"w1": "W1 wide job", "w2": "W2 small jobs", "nn": "NN 10x1,000"}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _rates(payload: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {(r["workload"], r["system"]): float(r["tasks_per_s"]) for r in payload["results"]}


def throughput(out: Path) -> Path:
    import matplotlib.pyplot as plt

    e2e = _load("e2e.json")
    if e2e is None:
        raise SystemExit("benches/results/e2e.json is missing: run benches/e2e.py first")
    rates = _rates(e2e)
    groups: list[tuple[str, dict[str, float]]] = [
        (TITLES[w], {s: rates[(w, s)] for s in SYSTEMS if (w, s) in rates})
        for w in ("w1", "w2", "nn")
        if (w, "orbweaver") in rates
    ]
    for name, label in (("e2e-w2-async.json", "W2 asyncio"), ("e2e-w2-each.json", "W2 plain loop")):
        variant = _load(name)
        if variant is not None:
            r = _rates(variant)
            groups.append((label, {s: r[("w2", s)] for s in SYSTEMS if ("w2", s) in r}))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.26
    for i, (_, values) in enumerate(groups):
        for j, system in enumerate(SYSTEMS):
            if system in values:
                x = i + (j - 1) * width
                ax.bar(x, values[system], width, color=COLOURS[system],
                       label=system if i == 0 else None)  # fmt: skip
                ax.annotate(f"{values[system]:,.0f}", (x, values[system]), ha="center",
                            va="bottom", fontsize=7)  # fmt: skip
    ax.set_xticks(range(len(groups)), [label for label, _ in groups])
    ax.set_ylabel("tasks / s (higher is better)")
    ax.set_title("End to end on 2 cores, Orbweaver with MariaDB persistence")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def recovery(out: Path) -> Path:
    import matplotlib.pyplot as plt

    rec = _load("recovery.json")
    if rec is None:
        raise SystemExit("benches/results/recovery.json is missing: run benches/recovery.py")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for db, style in (("mariadb", "-o"), ("sqlite", "--s")):
        rows = sorted((r for r in rec["results"] if r["db"] == db), key=lambda r: r["jobs"])
        if rows:
            ax.plot([r["jobs"] for r in rows], [r["ready_s"] for r in rows], style,
                    label=f"restart to serving ({db})")  # fmt: skip
    failover = _load("failover.json")
    if failover is not None:
        rows = sorted(failover["results"], key=lambda r: r["running_jobs"])
        ax.plot([r["running_jobs"] for r in rows], [r["failover_s"] for r in rows], "-^",
                label=f"failover: leader SIGKILL to first accepted job "
                f"(lease {failover['lease_s']:g} s)")  # fmt: skip
    ax.set_xlabel("running jobs (10 tasks each)")
    ax.set_ylabel("seconds (lower is better)")
    ax.set_title("Storage restart and failover against the jobs to recover")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "recovery.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency(out: Path, shapes: dict[str, Any]) -> Path | None:
    import matplotlib.pyplot as plt

    rows = [r for r in shapes["results"] if r["workload"] == "lat" and r.get("runs")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in rows:
        samples = sorted(x for run in row["runs"] for x in run["latency_ms"])
        share = [(i + 1) / len(samples) for i in range(len(samples))]
        ms = row["latency_ms"]
        ax.step(samples, share, where="post", color=COLOURS[row["system"]],
                label=f"{row['system']}: p50 {ms['p50']:.1f}, p99 {ms['p99']:.1f} ms")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("submit to result, ms (log scale)")
    ax.set_ylabel("share of jobs")
    jobs = shapes["setup"]["sizes"]["lat"]["jobs"]
    ax.set_title(f"Latency of a one-task job, {jobs} jobs one after the other")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def utilisation(out: Path, shapes: dict[str, Any]) -> Path | None:
    import matplotlib.pyplot as plt

    found = {
        (r["workload"], r["system"]): float(r["utilisation"])
        for r in shapes["results"]
        if r.get("utilisation") is not None
    }
    durations = [w for w in ("t1", "t10", "t100") if any(k[0] == w for k in found)]
    if not durations:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.26
    for i, workload in enumerate(durations):
        for j, system in enumerate(SYSTEMS):
            if (workload, system) in found:
                x, value = i + (j - 1) * width, 100 * found[(workload, system)]
                ax.bar(x, value, width, color=COLOURS[system], label=system if i == 0 else None)
                ax.annotate(f"{value:.0f}", (x, value), ha="center", va="bottom", fontsize=7)
    ax.axhline(90, color="black", linestyle="--", linewidth=0.8, label="target at 10 ms")
    ax.set_xticks(range(len(durations)), [f"{w[1:]} ms tasks" for w in durations])
    ax.set_ylim(0, 118)  # room for the legend above the bars
    ax.set_ylabel("core utilisation, % (higher is better)")
    ax.set_title(f"Busy executor time / (cores x wall), {shapes['setup']['workers']} cores")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncols=4)
    fig.tight_layout()
    path = out / "utilisation.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        print("matplotlib is missing: pip install '.[bench]'", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [throughput(args.out), recovery(args.out)]
    shapes = _load("e2e-shapes.json")
    if shapes is None:
        print("benches/results/e2e-shapes.json is missing: no latency or utilisation chart")
    else:
        paths += [p for p in (latency(args.out, shapes), utilisation(args.out, shapes)) if p]
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
