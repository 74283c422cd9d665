"""A layered drawing of a job's task graph: each task in the layer after its deepest parent,
layers left to right, tasks within a layer ordered by their parents' positions (a barycenter
pass), the commit and cleanup tasks in a last layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_DRAWN_TASKS", "Layout", "layout"]

# Bigger graphs get the task table only (an SVG of more nodes helps nobody).
MAX_DRAWN_TASKS = 2000
NODE_W = 150
NODE_H = 34
GAP_X = 60
GAP_Y = 16
MARGIN = 12


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    label: str
    title: str
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True, slots=True)
class Layout:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int
    node_w: int = NODE_W
    node_h: int = NODE_H


def _label(task: dict[str, Any] | None, fallback: str) -> tuple[str, str]:
    ctx = (task or {}).get("tdl_context") or {}
    func = str(ctx.get("task_func", "")) or fallback
    package = str(ctx.get("package", ""))
    short = func if len(func) <= 18 else func[:17] + "…"
    return short, f"{package}.{func}" if package else func


def parents_of(graph: dict[str, Any]) -> list[list[int]]:
    out: list[list[int]] = []
    for task in graph.get("tasks") or []:
        sources = task.get("input_sources") or []
        out.append(sorted({int(s["task_idx"]) for s in sources}))
    return out


def layout(graph: dict[str, Any]) -> Layout | None:
    """None when the graph has more than `MAX_DRAWN_TASKS` tasks."""
    tasks = graph.get("tasks") or []
    n = len(tasks)
    if n > MAX_DRAWN_TASKS:
        return None
    parents = parents_of(graph)
    depth = [0] * n
    children: list[list[int]] = [[] for _ in range(n)]
    waiting = [0] * n
    for i in range(n):
        for p in parents[i]:
            if 0 <= p < n:
                children[p].append(i)
                waiting[i] += 1
    frontier = [i for i in range(n) if waiting[i] == 0]
    while frontier:  # Kahn's order: a task after all its parents (the core refused cycles)
        p = frontier.pop()
        for c in children[p]:
            depth[c] = max(depth[c], depth[p] + 1)
            waiting[c] -= 1
            if waiting[c] == 0:
                frontier.append(c)
    layers: dict[int, list[int]] = {}
    for i in range(n):
        layers.setdefault(depth[i], []).append(i)
    row: dict[int, float] = {}
    for d in sorted(layers):
        members = layers[d]
        if d > 0:
            members.sort(
                key=lambda i: (
                    sum(row[p] for p in parents[i]) / len(parents[i]) if parents[i] else 0.0,
                    i,
                )
            )
        for r, i in enumerate(members):
            row[i] = float(r)
    extra = [("commit", graph.get("commit_task")), ("cleanup", graph.get("cleanup_task"))]
    terminations = [(name, t) for name, t in extra if t]
    n_layers = (max(layers) + 1 if layers else 0) + (1 if terminations else 0)
    tallest = max([len(m) for m in layers.values()] + [len(terminations)])
    height = 2 * MARGIN + tallest * NODE_H + max(0, tallest - 1) * GAP_Y
    width = 2 * MARGIN + n_layers * NODE_W + max(0, n_layers - 1) * GAP_X

    def place(layer: int, r: int, count: int) -> tuple[int, int]:
        # Each layer centred vertically.
        column_h = count * NODE_H + max(0, count - 1) * GAP_Y
        top = (height - column_h) // 2
        return MARGIN + layer * (NODE_W + GAP_X), top + r * (NODE_H + GAP_Y)

    pos: dict[int, tuple[int, int]] = {}
    nodes: list[Node] = []
    for d, members in layers.items():
        for r, i in enumerate(members):
            pos[i] = place(d, r, len(members))
            label, title = _label(tasks[i], f"task {i}")
            nodes.append(Node(str(i), f"{i}: {label}", title, *pos[i]))
    edges = [
        Edge(pos[p][0] + NODE_W, pos[p][1] + NODE_H // 2, pos[i][0], pos[i][1] + NODE_H // 2)
        for i in range(n)
        for p in parents[i]
        if p in pos
    ]
    for r, (name, task) in enumerate(terminations):
        x, y = place(n_layers - 1, r, len(terminations))
        label, title = _label(task, name)
        nodes.append(Node(name, f"{name}: {label}", title, x, y))
    return Layout(nodes, edges, width, height)
