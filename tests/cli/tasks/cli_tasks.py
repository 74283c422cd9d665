"""Task modules for the CLI tests: `orbweaver submit cli_tasks:GRAPH --tasks-dir tests/cli/tasks`
loads a graph from here, and the executors of `orbweaver local --tasks-dir ...` import the same
module. MODULE:GRAPH may name a TaskGraph or a function that returns one; both forms are here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import orbweaver as ow


@ow.task
def double(x: int) -> int:
    return 2 * x


@ow.task
def add(a: int, b: int) -> int:
    return a + b


@ow.task
def fail(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


@dataclass
class Segment:
    label: str
    length: float


@ow.task
def make_segment(label: str, x: float, y: float) -> Segment:
    return Segment(label.upper(), (x * x + y * y) ** 0.5)


@ow.task
def wait_for_file(path: str) -> str:
    """Block until `path` exists (at most a minute): the test decides when the task ends."""
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path


@ow.task
def mark_cleaned(ctx: ow.TaskContext) -> None:
    """Cleanup task: record that it ran, next to the file named by graph input 0."""
    (path,) = ctx.graph_inputs or [""]
    Path(path + ".cleaned").write_text(str(ctx.job_id))


def _diamond() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(add, g.add(double), g.add(double))
    return g


diamond = _diamond()  # a TaskGraph object: `cli_tasks:diamond`


def failing() -> ow.TaskGraph:  # a function returning a TaskGraph: `cli_tasks:failing`
    g = ow.TaskGraph()
    g.add(fail)
    return g


def segment() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(make_segment)
    return g


def blocked() -> ow.TaskGraph:
    """One task that waits for a file, and a cleanup task that runs if the job is cancelled."""
    g = ow.TaskGraph(cleanup=mark_cleaned)
    g.add(wait_for_file)
    return g
