"""Graph builders and drivers for the `orbweaver._core` binding tests."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import msgpack

from orbweaver import _core as core

BYTES: dict[str, Any] = {"Value": {"Bytes": {}}}


def task(
    func: str,
    n_in: int,
    n_out: int,
    sources: Sequence[tuple[int, int]] | None,
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    t: dict[str, Any] = {
        "tdl_context": {"package": "tests", "task_func": func},
        "inputs": [BYTES] * n_in,
        "outputs": [BYTES] * n_out,
        "input_sources": None
        if sources is None
        else [{"task_idx": i, "position": p} for i, p in sources],
    }
    if policy is not None:
        t["execution_policy"] = policy
    return t


def graph(
    tasks: list[dict[str, Any]], *, commit: bool = False, cleanup: bool = False
) -> dict[str, Any]:
    term = {"tdl_context": {"package": "tests", "task_func": "term"}}
    return {
        "schema_version": "0.1.0",
        "tasks": tasks,
        "commit_task": term if commit else None,
        "cleanup_task": term if cleanup else None,
    }


def bin_value(data: bytes) -> bytes:
    """A `bytes` value as the client encodes it (msgpack bin): what a `Bytes` input must hold."""
    return bytes(msgpack.packb(data, use_bin_type=True))


def submission(doc: dict[str, Any], inputs: Sequence[bytes], **limits: Any) -> core.Submission:
    """Every graph input of these graphs is typed `Bytes`: each raw value travels as msgpack bin."""
    return core.Submission(
        core.compress(json.dumps(doc).encode()),
        core.compress(core.wire_encode([bin_value(i) for i in inputs])),
        **limits,
    )


def flat(n: int, *, policy: dict[str, Any] | None = None, **term: bool) -> core.Submission:
    doc = graph([task("inc", 1, 1, None, policy) for _ in range(n)], **term)
    return submission(doc, [i.to_bytes(4, "little") for i in range(n)])


def layered(layers: int, width: int, fan_in: int, seed: int = 7, **term: bool) -> core.Submission:
    """Neural-net style graph: every task after layer 0 reads `fan_in` outputs of the previous
    layer (diamonds everywhere)."""
    rng = random.Random(seed)
    tasks = []
    for layer in range(layers):
        for _ in range(width):
            if layer == 0:
                tasks.append(task("neuron", 1, 1, None))
            else:
                base = (layer - 1) * width
                srcs = [(base + rng.randrange(width), 0) for _ in range(fan_in)]
                tasks.append(task("neuron", fan_in, 1, srcs))
    return submission(graph(tasks, **term), [bytes([i % 256]) * 8 for i in range(width)])


def neuron(inputs: list[bytes]) -> bytes:
    """Each output byte is the wrapping sum of the inputs' bytes plus one."""
    return bytes((1 + sum(col)) % 256 for col in zip(*inputs, strict=True))


def expected_outputs(doc_tasks: list[dict[str, Any]], inputs: Sequence[bytes]) -> list[bytes]:
    """In-process evaluation of a single-output `neuron` graph (graph inputs as `submission`
    encodes them)."""
    values: list[bytes] = []
    it = iter(bin_value(i) for i in inputs)
    has_child = [False] * len(doc_tasks)
    for t in doc_tasks:
        for s in t["input_sources"] or []:
            has_child[s["task_idx"]] = True
    for t in doc_tasks:
        if t["input_sources"] is None:
            ins = [next(it) for _ in t["inputs"]]
        else:
            ins = [values[s["task_idx"]] for s in t["input_sources"]]
        values.append(neuron(ins))
    return [v for v, c in zip(values, has_child, strict=True) if not c]
