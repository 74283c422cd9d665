"""TaskGraph and Submission through the binding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orbweaver import _core as core

from ._helpers import graph, submission, task

EXAMPLE = (Path(__file__).parents[2] / "rust/core/tests/data/task-graph-example.json").read_text()


def test_example_graph() -> None:
    for data in (EXAMPLE, EXAMPLE.encode()):
        g = core.TaskGraph.from_json(data)
        assert (g.num_tasks, g.num_graph_inputs, g.num_graph_outputs) == (3, 2, 2)
        assert g.has_commit and g.has_cleanup
    assert g.graph_input_types() == [
        '{"Value":{"Bytes":{}}}',
        '{"Value":{"Primitive":{"Int":"Int32"}}}',
    ]
    assert g.graph_output_types() == [
        '{"Value":{"Struct":"Summary"}}',
        '{"Value":{"Primitive":{"Float":"Float64"}}}',
    ]
    assert g.tdl_contexts() == [
        ("wordcount", f) for f in ("read_shard", "count", "summarize", "publish", "discard")
    ]


def test_round_trips() -> None:
    g = core.TaskGraph.from_json(EXAMPLE)
    again = core.TaskGraph.from_json(g.to_json())
    assert again.to_json() == g.to_json()
    assert core.TaskGraph.from_compressed(g.to_compressed()).to_json() == g.to_json()
    doc = json.loads(g.to_json())
    assert "execution_policy" not in doc["tasks"][0]
    assert doc["tasks"][1]["execution_policy"]["max_num_instances"] == 2
    assert list(doc) == ["schema_version", "tasks", "commit_task", "cleanup_task"]


def test_errors_name_task_and_position() -> None:
    doc = graph([task("a", 1, 1, None), task("b", 2, 0, [(0, 0), (3, 0)])])
    with pytest.raises(core.InvalidGraphError) as e:
        core.TaskGraph.from_json(json.dumps(doc))
    assert str(e.value) == "task 1 (tests.b): input 1: source task 3 does not exist yet"
    assert e.value.kind == "InvalidTaskInputs"


@pytest.mark.parametrize(
    ("mutate", "kind"),
    [
        (lambda d: d.pop("tasks"), "MalformedGraph"),
        (lambda d: d.update(extra=1), "MalformedGraph"),
        (lambda d: d.update(schema_version="0.2.0"), "IncompatibleSchemaVersion"),
        (lambda d: d.update(schema_version="zero"), "InvalidSchemaVersion"),
        (lambda d: d["tasks"][0]["tdl_context"].update(package="../x"), "InvalidTaskName"),
        (
            lambda d: d["tasks"][0].update(
                execution_policy={"max_num_retry": 0, "max_num_instances": 0}
            ),
            "InvalidExecutionPolicy",
        ),
    ],
)
def test_rejections(mutate: object, kind: str) -> None:
    doc = graph([task("a", 1, 1, None)])
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(core.InvalidGraphError) as e:
        core.TaskGraph.from_json(json.dumps(doc))
    assert e.value.kind == kind


def test_from_json_type_errors() -> None:
    with pytest.raises(TypeError):
        core.TaskGraph.from_json(42)  # type: ignore[arg-type]
    with pytest.raises(core.InvalidGraphError):
        core.TaskGraph.from_compressed(b"not zstd")


def test_submission_rules() -> None:
    doc = graph([task("a", 2, 1, None)])
    s = submission(doc, [b"x", b"y"])
    assert s.num_inputs == 2 and s.graph.num_tasks == 1
    with pytest.raises(core.InvalidGraphError) as e:
        submission(doc, [b"x"])
    assert e.value.kind == "TaskGraphInputSizeMismatch"
    assert "expects 2" in str(e.value)
    with pytest.raises(core.InvalidGraphError) as e:
        submission(graph([]), [])
    assert e.value.kind == "TaskGraphEmpty"
    with pytest.raises(core.InvalidGraphError) as e:
        core.Submission(core.compress(json.dumps(doc).encode()), b"junk")
    assert e.value.kind == "MalformedInputs"
    with pytest.raises(core.InvalidGraphError) as e:
        core.Submission(core.compress(b"invalid json"), core.compress(b"\0\0\0\0"))
    assert e.value.kind == "MalformedGraph"
