"""Size and count limits of the core: submissions (graph, inputs, tasks)."""

from __future__ import annotations

import json

import msgpack
import pytest

from orbweaver import _core as core

from ._helpers import graph, task

MiB = 1 << 20


def _flat_doc(n: int) -> bytes:
    return json.dumps(graph([task("a", 1, 1, None) for _ in range(n)])).encode()


def _inputs(n: int, size: int = 1) -> bytes:
    return core.wire_encode([msgpack.packb(b"x" * size) for _ in range(n)])


def test_limit_error_is_a_core_error_with_its_own_class() -> None:
    assert issubclass(core.LimitExceededError, core.CoreError)
    assert issubclass(core.LimitExceededError, ValueError)
    assert not issubclass(core.LimitExceededError, core.InvalidGraphError)


def test_a_zstd_bomb_of_inputs_is_refused_at_the_input_limit() -> None:
    doc = core.compress(_flat_doc(1))
    frame = _inputs(1, 8 * MiB)
    bomb = core.compress(frame)
    assert len(bomb) < 4096
    with pytest.raises(core.LimitExceededError) as e:
        core.Submission(doc, bomb, max_input_bytes=MiB)
    assert e.value.kind == "InputsTooLarge"
    assert str(e.value) == (
        f"graph inputs decompress to {len(frame)} bytes (limit max_input_bytes = {MiB})"
    )
    # Exactly at the limit is accepted; the default (1 GiB) accepts it too.
    assert core.Submission(doc, bomb, max_input_bytes=len(frame)).num_inputs == 1
    assert core.Submission(doc, bomb).num_inputs == 1
    shared = core.Submission(doc, core.compress(_inputs(1))).graph
    with pytest.raises(core.LimitExceededError) as e:
        core.Submission.with_graph(shared, bomb, max_input_bytes=MiB)
    assert e.value.kind == "InputsTooLarge"
    assert core.Submission.with_graph(shared, bomb).num_inputs == 1


def test_a_graph_json_over_the_graph_limit_is_refused() -> None:
    doc = _flat_doc(50)
    with pytest.raises(core.LimitExceededError) as e:
        core.Submission(core.compress(doc), core.compress(_inputs(50)), max_graph_bytes=1000)
    assert e.value.kind == "GraphTooLarge"
    assert "(limit max_graph_bytes = 1000)" in str(e.value)
    ok = core.Submission(
        core.compress(doc), core.compress(_inputs(50)), max_graph_bytes=len(doc), max_tasks=50
    )
    assert ok.graph.num_tasks == 50


def test_too_many_tasks_names_the_count_and_the_limit() -> None:
    # A tiny compressed graph of many tasks (the amplification the limit closes).
    doc = core.compress(_flat_doc(2500))
    assert len(doc) < 2000
    with pytest.raises(core.LimitExceededError) as e:
        core.Submission(doc, core.compress(_inputs(2500)), max_tasks=1000)
    assert e.value.kind == "TooManyTasks"
    assert str(e.value) == "the graph has 2500 tasks, above the limit of 1000 (max_tasks)"
    assert core.Submission(doc, core.compress(_inputs(2500))).graph.num_tasks == 2500
