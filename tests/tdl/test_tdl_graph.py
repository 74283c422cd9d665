"""The `TaskGraph` builder: structure, type checks, JSON, inputs and outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

import orbweaver as ow
from orbweaver import _core, errors

TASKS = Path(__file__).resolve().parent / "tasks"
WORKER_TASKS = Path(__file__).resolve().parents[1] / "worker" / "tasks"
for _p in (TASKS, WORKER_TASKS):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import graph_tasks as gt  # noqa: E402
import integration_tasks as it  # noqa: E402
import wordcount as wc  # noqa: E402

# The Spider task-graph JSON (schema 0.1.x) of the word-count example: two graph inputs feed
# `read_shard`, its output feeds `count`, whose two outputs feed `summarize`, whose two outputs
# are the job outputs. Orbweaver names structs `<module>.<qualname>`.
EXPECTED: dict[str, Any] = {
    "schema_version": "0.1.0",
    "commit_task": {
        "tdl_context": {"package": "wordcount", "task_func": "publish"},
        "execution_policy": {
            "max_num_retry": 2,
            "max_num_instances": 1,
            "timeout_policy": {"soft_timeout_ms": 60000, "hard_timeout_ms": 120000},
        },
    },
    "cleanup_task": {"tdl_context": {"package": "wordcount", "task_func": "discard"}},
    "tasks": [
        {
            "tdl_context": {"package": "wordcount", "task_func": "read_shard"},
            "inputs": [{"Value": {"Bytes": {}}}, {"Value": {"Primitive": {"Int": "Int32"}}}],
            "outputs": [{"Value": {"List": {"Bytes": {}}}}],
            "input_sources": None,
        },
        {
            "tdl_context": {"package": "wordcount", "task_func": "count"},
            "execution_policy": {
                "max_num_retry": 3,
                "max_num_instances": 2,
                "timeout_policy": {"soft_timeout_ms": 5000, "hard_timeout_ms": 30000},
            },
            "inputs": [{"Value": {"List": {"Bytes": {}}}}],
            "outputs": [
                {
                    "Value": {
                        "Map": {"key": {"Bytes": {}}, "value": {"Primitive": {"Int": "Int64"}}}
                    }
                },
                {"Value": {"Primitive": "Boolean"}},
            ],
            "input_sources": [{"task_idx": 0, "position": 0}],
        },
        {
            "tdl_context": {"package": "wordcount", "task_func": "summarize"},
            "inputs": [
                {
                    "Value": {
                        "Map": {"key": {"Bytes": {}}, "value": {"Primitive": {"Int": "Int64"}}}
                    }
                },
                {"Value": {"Primitive": "Boolean"}},
            ],
            "outputs": [
                {"Value": {"Struct": "wordcount.Summary"}},
                {"Value": {"Primitive": {"Float": "Float64"}}},
            ],
            "input_sources": [{"task_idx": 1, "position": 0}, {"task_idx": 1, "position": 1}],
        },
    ],
}
INT = {"Value": {"Primitive": {"Int": "Int64"}}}


def _inputs(data: bytes) -> list[Any]:
    return [msgpack.unpackb(p, raw=False) for p in _core.wire_decode(_core.decompress(data))]


def test_reproduces_the_reference_example() -> None:
    g = ow.TaskGraph(commit=wc.publish, cleanup=wc.discard)
    shard = g.add(wc.read_shard)
    counts = g.add(wc.count, shard)
    g.add(wc.summarize, counts[0], counts[1])

    assert json.loads(g.to_json()) == EXPECTED
    assert set(json.loads(g.to_json())) == {
        "schema_version",
        "tasks",
        "commit_task",
        "cleanup_task",
    }

    core = _core.TaskGraph.from_json(g.to_json())
    assert core.num_tasks == 3 and core.num_graph_inputs == 2 and core.num_graph_outputs == 2
    assert core.has_commit and core.has_cleanup
    assert _core.TaskGraph.from_compressed(g.compressed()).to_json() == core.to_json()

    assert [(i.index, i.task_index, i.param, i.type.name) for i in g.graph_inputs] == [
        (0, 0, "data", "bytes"),
        (1, 0, "shard", "Int32"),
    ]
    assert [(o.index, o.task_index, o.position, o.type.name) for o in g.graph_outputs] == [
        (0, 2, 0, "Summary"),
        (1, 2, 1, "float"),
    ]
    assert _inputs(g.encode_inputs([b"a b a", 0])) == [b"a b a", 0]
    summary = msgpack.packb([3, 2])
    ratio = msgpack.packb(2 / 3)
    assert g.decode_outputs([summary, ratio]) == [wc.Summary(3, 2), 2 / 3]
    assert g.decode_serialized_outputs(_core.encode_outputs([summary, ratio])) == [
        wc.Summary(3, 2),
        2 / 3,
    ]
    assert g.tasks_dirs() == [TASKS]
    assert len(g) == 3


def test_diamond() -> None:
    g = ow.TaskGraph()
    a = g.add(gt.double)
    b = g.add(gt.double, a)
    c = g.add(gt.double, a)
    d = g.add(gt.add, b, c)
    assert (a.index, b.index, c.index, d.index) == (0, 1, 2, 3)
    tasks = json.loads(g.to_json())["tasks"]
    assert [t["input_sources"] for t in tasks] == [
        None,
        [{"task_idx": 0, "position": 0}],
        [{"task_idx": 0, "position": 0}],
        [{"task_idx": 1, "position": 0}, {"task_idx": 2, "position": 0}],
    ]
    assert all(t["tdl_context"]["package"] == "graph_tasks" for t in tasks)
    assert all("execution_policy" not in t for t in tasks)
    assert [i.param for i in g.graph_inputs] == ["x"]
    assert [(o.task_index, o.position) for o in g.graph_outputs] == [(3, 0)]
    assert _inputs(g.encode_inputs([3])) == [3]
    assert g.decode_outputs([msgpack.packb(24)]) == [24]


def test_the_wire_form_is_made_once_and_follows_every_added_task() -> None:
    g = ow.TaskGraph()
    a = g.add(gt.double)
    first = g.compressed()
    assert g.compressed() is first, "made once per shape of the graph"
    g.add(gt.double, a)
    grown = g.compressed()
    assert grown != first
    assert _core.TaskGraph.from_compressed(grown).num_tasks == 2


def test_multi_output_tasks_and_handle_indexing() -> None:
    g = ow.TaskGraph()
    s = g.add(gt.split)
    g.add(gt.add, s[0], s[1])
    g.add(gt.add, s[1], s[1])
    low, high = s  # iterating a handle yields its outputs
    assert (low.position, high.position) == (0, 1)
    assert [t["input_sources"] for t in json.loads(g.to_json())["tasks"]][1:] == [
        [{"task_idx": 0, "position": 0}, {"task_idx": 0, "position": 1}],
        [{"task_idx": 0, "position": 1}, {"task_idx": 0, "position": 1}],
    ]
    # Two output tasks, one output each.
    assert [(o.task_index, o.position) for o in g.graph_outputs] == [(1, 0), (2, 0)]

    with pytest.raises(errors.InvalidGraph) as info:
        g.add(gt.double, s)
    assert str(info.value) == (
        "task 3 (`graph_tasks.double`) parameter `x` (position 0): source task 0 "
        "(`graph_tasks.split`) has 2 outputs; pick one with handle[i]"
    )
    with pytest.raises(errors.InvalidGraph, match=r"has 2 outputs; output 2 does not exist"):
        s[2]
    with pytest.raises(TypeError):
        s["0"]  # type: ignore[index]


def test_dangling_outputs_of_a_task_with_children_are_not_job_outputs() -> None:
    g = ow.TaskGraph()
    s = g.add(gt.split)
    g.add(gt.double, s[0])
    assert [(o.task_index, o.position) for o in g.graph_outputs] == [(1, 0)]


def test_type_mismatch_names_task_and_position() -> None:
    g = ow.TaskGraph()
    text = g.add(gt.to_str)
    number = g.add(gt.double)
    with pytest.raises(errors.InvalidGraph) as info:
        g.add(gt.concat, text, number)
    assert str(info.value) == (
        "task 2 (`graph_tasks.concat`) parameter `b` (position 1) has type str but its source, "
        "output 0 of task 1 (`graph_tasks.double`), has type int"
    )
    # Widths must match exactly.
    narrow = g.add(gt.narrow)
    with pytest.raises(errors.InvalidGraph, match=r"has type int but its source.*has type Int32"):
        g.add(gt.double, narrow)
    # A failed add leaves the graph unchanged.
    assert len(g) == 3


def test_struct_types_flow_between_tasks() -> None:
    g = ow.TaskGraph()
    p = g.add(gt.make_point)
    g.add(gt.norm, p)
    assert [i.type.name for i in g.graph_inputs] == ["float", "float"]
    assert json.loads(g.to_json())["tasks"][1]["inputs"] == [
        {"Value": {"Struct": "graph_tasks.Point"}}
    ]
    with pytest.raises(errors.InvalidGraph, match=r"has type float but its source.*Point"):
        g.add(gt.make_point, p, p)


def test_wrong_source_count() -> None:
    g = ow.TaskGraph()
    a = g.add(gt.double)
    with pytest.raises(errors.InvalidGraph) as info:
        g.add(gt.add, a)
    assert str(info.value) == (
        "task 1 (`graph_tasks.add`) takes 2 parameters (a, b) but 1 source were given "
        "(give one source per parameter, or none for an input task)"
    )
    with pytest.raises(errors.InvalidGraph, match=r"takes 0 parameters \(none\) but 1 source"):
        g.add(gt.constant, a)


def test_bad_sources() -> None:
    g = ow.TaskGraph()
    other = ow.TaskGraph()
    foreign = other.add(gt.double)
    with pytest.raises(errors.InvalidGraph, match="belongs to another graph"):
        g.add(gt.double, foreign)
    with pytest.raises(
        errors.InvalidGraph,
        match=r"a source must be a TaskHandle or handle\[i\], "
        r"got int 3 \(values are passed as graph inputs",
    ):
        g.add(gt.double, 3)  # type: ignore[arg-type]
    sink = g.add(gt.sink)
    with pytest.raises(errors.InvalidGraph, match=r"source task 0 .* has no outputs"):
        g.add(gt.double, sink)
    with pytest.raises(errors.InvalidGraph, match=r"is not an @orbweaver.task function"):
        g.add(it.not_a_task)  # type: ignore[arg-type]


def test_zero_parameter_tasks_are_input_tasks() -> None:
    g = ow.TaskGraph()
    c = g.add(gt.constant)
    g.add(gt.double, c)
    assert g.graph_inputs == []
    assert json.loads(g.to_json())["tasks"][0]["input_sources"] is None
    assert _inputs(g.encode_inputs([])) == []


def test_commit_and_cleanup_tasks() -> None:
    g = ow.TaskGraph(commit=gt.commit_ok, cleanup=gt.cleanup_no_ctx)
    g.add(gt.double)
    d = json.loads(g.to_json())
    assert d["commit_task"] == {
        "tdl_context": {"package": "graph_tasks", "task_func": "commit_ok"},
        "execution_policy": {
            "max_num_retry": 1,
            "max_num_instances": 1,
            "timeout_policy": {"soft_timeout_ms": 5000, "hard_timeout_ms": 10000},
        },
    }
    assert d["cleanup_task"] == {
        "tdl_context": {"package": "graph_tasks", "task_func": "cleanup_no_ctx"}
    }
    assert g.commit is gt.commit_ok and g.cleanup is gt.cleanup_no_ctx
    plain = ow.TaskGraph()
    plain.add(gt.double)
    assert json.loads(plain.to_json())["commit_task"] is None
    assert json.loads(plain.to_json())["cleanup_task"] is None


def test_termination_tasks_must_take_nothing_and_return_nothing() -> None:
    with pytest.raises(errors.InvalidGraph) as info:
        ow.TaskGraph(commit=gt.double)
    assert "commit task `graph_tasks.double` must take no parameters" in str(info.value)
    assert "(it has 1 parameters and 1 outputs)" in str(info.value)
    with pytest.raises(errors.InvalidGraph, match=r"cleanup task `graph_tasks.constant`"):
        ow.TaskGraph(cleanup=gt.constant)
    with pytest.raises(errors.InvalidGraph, match=r"is not an @orbweaver.task function"):
        ow.TaskGraph(commit=it.not_a_task)  # type: ignore[arg-type]


def test_per_task_policy_overrides() -> None:
    g = ow.TaskGraph()
    g.add(gt.double, retries=3, instances=2, hard_timeout=1)
    g.add(gt.double)
    tasks = json.loads(g.to_json())["tasks"]
    assert tasks[0]["execution_policy"] == {
        "max_num_retry": 3,
        "max_num_instances": 2,
        "timeout_policy": {"soft_timeout_ms": 500, "hard_timeout_ms": 1000},
    }
    assert "execution_policy" not in tasks[1]
    with pytest.raises(errors.InvalidGraph) as info:
        g.add(gt.double, instances=0)
    assert str(info.value) == (
        "task 2 (`graph_tasks.double`): invalid execution policy: instances must be >= 1, got 0"
    )


def test_json_text_is_exactly_the_dumped_dict() -> None:
    """to_json builds the text without the dicts; it must be byte for byte json.dumps(to_dict())
    for every shape: policies shared and overridden, multi-output sources, termination tasks."""
    g = ow.TaskGraph(commit=gt.commit_ok, cleanup=gt.cleanup_no_ctx)
    a = g.add(gt.double)
    b = g.add(gt.double, retries=3, instances=2, hard_timeout=1)
    c = g.add(gt.double, a, retries=3, instances=2, hard_timeout=1)
    g.add(gt.double, b)
    pair = g.add(gt.split, c)
    g.add(gt.concat, g.add(gt.to_str, pair[1]), g.add(gt.to_str, pair[0]))
    g.add(gt.norm, g.add(gt.make_point))
    g.add(gt.constant)
    text = g.to_json()
    assert text == json.dumps(g.to_dict(), separators=(",", ":"))
    assert json.loads(text)["tasks"][5]["input_sources"] == [{"task_idx": 4, "position": 1}]
    plain = ow.TaskGraph()
    plain.add(gt.double)
    assert plain.to_json() == json.dumps(plain.to_dict(), separators=(",", ":"))


def test_durability_is_checked_and_stays_out_of_the_graph_json() -> None:
    g = ow.TaskGraph()
    g.add(gt.double)
    assert g.durability == "job"
    durable = ow.TaskGraph(durability="task")
    durable.add(gt.double)
    assert durable.durability == "task"
    # The Spider JSON has no place for it: the submission carries it.
    assert durable.to_json() == g.to_json()
    for bad in ("Task", "tasks", "", 2, None):
        with pytest.raises(errors.InvalidArgument, match="durability must be 'job' or 'task'"):
            ow.TaskGraph(durability=bad)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match="'always'"):
        g.durability = "always"  # type: ignore[assignment]
    assert g.durability == "job"
    g.durability = "task"
    assert g.durability == "task"


def test_empty_graph_is_invalid() -> None:
    with pytest.raises(errors.InvalidGraph, match="no tasks"):
        ow.TaskGraph().to_json()


def test_encode_inputs_checks_count_and_types() -> None:
    g = ow.TaskGraph()
    g.add(wc.read_shard)
    g.add(gt.make_point)
    with pytest.raises(errors.InvalidInput) as info:
        g.encode_inputs([b"x"])
    assert str(info.value).startswith("expected 4 inputs, got 1 (graph inputs: data: bytes")
    with pytest.raises(errors.InvalidInput) as info:
        g.encode_inputs([b"x", "0", 1.0, 2.0])
    assert str(info.value) == (
        "graph input 1 (task 0 `wordcount.read_shard`, parameter `shard` of type Int32): "
        "expected Int32, got str '0'"
    )
    with pytest.raises(errors.InvalidInput, match=r"graph input 1 .*: 2147483648 is out of range"):
        g.encode_inputs([b"x", 2**31, 1.0, 2.0])
    with pytest.raises(
        errors.InvalidInput,
        match=r"graph input 3 \(task 1 `graph_tasks.make_point`"
        r", parameter `y` of type float\)",
    ):
        g.encode_inputs([b"x", 1, 1.0, None])
    with pytest.raises(errors.InvalidInput, match="must be a list with one value per graph input"):
        g.encode_inputs("abcd")
    with pytest.raises(errors.InvalidInput, match="must be a list"):
        g.encode_inputs({"a": 1})  # type: ignore[arg-type]
    assert _inputs(g.encode_inputs((b"x", 1, 1.0, 2))) == [b"x", 1, 1.0, 2.0]


def test_decode_outputs_errors() -> None:
    g = ow.TaskGraph()
    g.add(gt.make_point)
    with pytest.raises(errors.InvalidArgument, match="has 1 job outputs but 2 were given"):
        g.decode_outputs([b"", b""])
    with pytest.raises(errors.InvalidArgument) as info:
        g.decode_outputs([msgpack.packb([1.0])])
    assert str(info.value) == (
        "job output 0 (output 0 of task 0 `graph_tasks.make_point`, type Point): "
        "expected Point with 2 fields, got an array of 1"
    )
    with pytest.raises(errors.InvalidArgument, match="malformed job outputs"):
        g.decode_serialized_outputs(b"\x07")
    assert g.decode_outputs([msgpack.packb([1.0, 2.0])]) == [gt.Point(1.0, 2.0)]


def test_tasks_dirs_covers_every_function() -> None:
    g = ow.TaskGraph(commit=it.assert_outputs_sum_zero)
    g.add(gt.double)
    g.add(it.fibonacci)
    assert g.tasks_dirs() == [TASKS, WORKER_TASKS]


def test_graph_is_validated_by_the_core() -> None:
    g = ow.TaskGraph()
    g.add(gt.double)
    text = g.to_json()
    assert g.to_json() is text  # cached until the next add
    g.add(gt.double)
    assert g.to_json() != text
    # The core rejects what the builder would never produce; the error type is translated.
    bad = json.loads(text)
    bad["tasks"][0]["input_sources"] = []
    with pytest.raises(_core.InvalidGraphError):
        _core.TaskGraph.from_json(json.dumps(bad))
    # Tamper with the builder's state so that the core sees a bad source: InvalidGraph.
    g._tasks[1] = g._tasks[1]._replace(sources=((0, 5),))
    g._json = None
    with pytest.raises(errors.InvalidGraph, match="task 1"):
        g.to_json()
