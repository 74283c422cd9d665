"""Raw Spider task-graph JSON for tests that drive storage without the TDL layer."""

from __future__ import annotations

import json
from typing import Any

import msgpack

from orbweaver import _core

INT = {"Value": {"Primitive": {"Int": "Int64"}}}
BYTES = {"Value": {"Bytes": {}}}


def task(
    func: str,
    inputs: int = 1,
    outputs: int = 1,
    sources: list[tuple[int, int]] | None = None,
    policy: dict[str, Any] | None = None,
    package: str = "testpkg",
) -> dict[str, Any]:
    t: dict[str, Any] = {
        "tdl_context": {"package": package, "task_func": func},
        "inputs": [INT] * inputs,
        "outputs": [INT] * outputs,
        "input_sources": (
            [{"task_idx": i, "position": p} for i, p in sources] if sources is not None else None
        ),
    }
    if policy is not None:
        t["execution_policy"] = policy
    return t


def policy(
    retries: int = 0, instances: int = 1, soft_ms: int = 150_000, hard_ms: int = 300_000
) -> dict[str, Any]:
    return {
        "max_num_retry": retries,
        "max_num_instances": instances,
        "timeout_policy": {"soft_timeout_ms": soft_ms, "hard_timeout_ms": hard_ms},
    }


def graph(
    tasks: list[dict[str, Any]],
    commit: bool = False,
    cleanup: bool = False,
    termination_policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    def term(name: str) -> dict[str, Any]:
        t: dict[str, Any] = {"tdl_context": {"package": "testpkg", "task_func": name}}
        if termination_policy is not None:
            t["execution_policy"] = termination_policy
        return t

    return {
        "schema_version": "0.1.0",
        "tasks": tasks,
        "commit_task": term("commit") if commit else None,
        "cleanup_task": term("cleanup") if cleanup else None,
    }


def single(**kw: Any) -> dict[str, Any]:
    """One task, one int input, one int output."""
    return graph([task("single", policy=kw.pop("policy", None))], **kw)


def diamond(**kw: Any) -> dict[str, Any]:
    """a -> (b, c) -> d; one graph input, one job output."""
    return graph(
        [
            task("a"),
            task("b", sources=[(0, 0)]),
            task("c", sources=[(0, 0)]),
            task("d", inputs=2, sources=[(1, 0), (2, 0)]),
        ],
        **kw,
    )


def flat(n: int, **kw: Any) -> dict[str, Any]:
    return graph([task(f"t{i}") for i in range(n)], **kw)


def compressed(g: dict[str, Any]) -> bytes:
    return _core.compress(json.dumps(g).encode())


def int_inputs(*values: int) -> bytes:
    return _core.compress(_core.wire_encode([msgpack.packb(v) for v in values]))


def outputs_frame(*values: int) -> bytes:
    return _core.wire_encode([msgpack.packb(v) for v in values])


def decode_job_outputs(serialized: bytes) -> list[Any]:
    return [msgpack.unpackb(p) for p in _core.decode_outputs(serialized)]
