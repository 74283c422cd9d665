"""The layered drawing of a job's graph: each task one layer right of its deepest parent, the
commit and cleanup tasks in a last layer, edges from parent to child, big graphs not drawn."""

from __future__ import annotations

import json

import dash_tasks

from orbweaver.dashboard.layout import MAX_DRAWN_TASKS, NODE_W, layout


def test_diamond_layers() -> None:
    drawn = layout(json.loads(dash_tasks.gated_diamond().to_json()))
    assert drawn is not None
    x = {n.id: n.x for n in drawn.nodes}
    assert x["0"] < x["1"] == x["2"] < x["3"]
    labels = {n.id: n.label for n in drawn.nodes}
    assert labels == {"0": "0: first", "1": "1: left", "2": "2: right", "3": "3: join"}
    # Four edges, each from a parent's right side to a child's left side.
    assert len(drawn.edges) == 4
    assert {(e.x1, e.x2) for e in drawn.edges} == {
        (x["0"] + NODE_W, x["1"]),
        (x["1"] + NODE_W, x["3"]),
    }
    assert all(n.y >= 0 and n.y + drawn.node_h <= drawn.height for n in drawn.nodes)


def test_commit_task_in_a_last_layer() -> None:
    graph = json.loads(dash_tasks.doubling().to_json())
    graph["commit_task"] = {"tdl_context": {"package": "dash_tasks", "task_func": "publish"}}
    drawn = layout(graph)
    assert drawn is not None
    x = {n.id: n.x for n in drawn.nodes}
    assert x["0"] < x["commit"]


def test_a_task_listed_before_its_parent() -> None:
    graph = {
        "tasks": [
            {"tdl_context": {"task_func": "b"}, "input_sources": [{"task_idx": 1, "position": 0}]},
            {"tdl_context": {"task_func": "a"}, "input_sources": None},
        ]
    }
    drawn = layout(graph)
    assert drawn is not None
    x = {n.id: n.x for n in drawn.nodes}
    assert x["1"] < x["0"]


def test_big_graphs_are_not_drawn() -> None:
    tasks = [{"tdl_context": {"task_func": "f"}, "input_sources": None}] * (MAX_DRAWN_TASKS + 1)
    assert layout({"tasks": tasks}) is None
