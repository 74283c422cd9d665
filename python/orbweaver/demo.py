"""`orbweaver demo`: a real multi-task job with a commit task on an embedded local cluster."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from rich.console import Console

SHARDS = [
    "It was the best of times, it was the worst of times, it was the age of wisdom",
    "it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity",
    "it was the season of Light, it was the season of Darkness, it was the spring of hope",
    "it was the winter of despair, we had everything before us, we had nothing before us",
]


def run_demo(workers: int = 2) -> int:
    from orbweaver.local import LocalCluster

    console = Console()
    tasks_dir = Path(__file__).resolve().parent / "_demo"
    if str(tasks_dir) not in sys.path:
        sys.path.insert(0, str(tasks_dir))
    demo = importlib.import_module("wordcount_demo")
    graph = demo.build_graph()
    console.print(
        f"[bold]orbweaver demo[/bold]: {len(graph)} tasks (4 word counts, 3 merges,"
        " 1 summary) + a commit task, on a local cluster with"
        f" {workers} executor processes"
    )
    started = time.perf_counter()
    with LocalCluster(workers=workers, tasks_dir=tasks_dir) as cluster:
        console.print(
            f"cluster up in {time.perf_counter() - started:.1f} s"
            f" (storage {cluster.address}, embedded SQLite)"
        )
        job = cluster.client().submit(graph, SHARDS)
        top, total = job.result(timeout=120)
        console.print(f"job {job.id}: [green]{job.state.name}[/green]")
    console.print(f"top words: {top}")
    console.print(f"total words: {total}")
    console.print(f"published by the commit task: {demo.publish_dir() / f'job-{job.id}.json'}")
    return 0
