"""The `complex` example package called through a real executor process (analogue of Spider's
tdl-integration `complex.rs`): typed inputs are encoded from the task's
annotations, outputs decoded back into dataclasses."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import orbweaver as ow
from orbweaver import _core
from orbweaver.worker.pool import ExecutorPool, ResultKind, TaskRequest, TaskResult

pytestmark = pytest.mark.timeout(120)

WORKER_TASKS = Path(__file__).resolve().parents[1] / "worker" / "tasks"
if str(WORKER_TASKS) not in sys.path:
    sys.path.insert(0, str(WORKER_TASKS))

import complex as cx  # noqa: E402

C = cx.Complex


def vec(*values: complex) -> cx.ComplexVec:
    return cx.ComplexVec([C(v.real, v.imag) for v in values])


@pytest.fixture(scope="module")
def pool() -> Iterator[ExecutorPool]:
    with ExecutorPool(WORKER_TASKS, 1) as p:
        yield p


def call(pool: ExecutorPool, fn: ow.TaskFunction[Any, Any], *args: Any) -> TaskResult:
    payloads = [p.type.encode(a) for p, a in zip(fn.params, args, strict=True)]
    return pool.run(
        TaskRequest(
            job_id=1,
            task_id=0,
            instance_id=1,
            resource_group_id=1,
            package=fn.package,
            task_func=fn.task_func,
            task_io=_core.wire_encode(payloads),
            hard_timeout_ms=30_000,
        )
    )


def value(fn: ow.TaskFunction[Any, Any], result: TaskResult) -> Any:
    assert result.kind is ResultKind.SUCCESS, result.error
    assert result.outputs is not None
    [payload] = _core.wire_decode(result.outputs)
    return fn.outputs[0].decode(payload)


A = (1 + 2j, 3 + 4j, 5 + 6j)
B = (7 - 8j, -9 + 10j, 11 + 0.5j)


def test_package_address() -> None:
    assert cx.add.package == "complex" and cx.add.task_func == "add"
    assert cx.add.tasks_dir == WORKER_TASKS


def test_add(pool: ExecutorPool) -> None:
    assert value(cx.add, call(pool, cx.add, vec(*A), vec(*B))) == vec(
        *(a + b for a, b in zip(A, B, strict=True))
    )


def test_sub(pool: ExecutorPool) -> None:
    assert value(cx.sub, call(pool, cx.sub, vec(*A), vec(*B))) == vec(
        *(a - b for a, b in zip(A, B, strict=True))
    )


def test_add_with_unequal_lengths(pool: ExecutorPool) -> None:
    result = call(pool, cx.add, vec(1, 2, 3), vec(1, 2))
    assert result.kind is ResultKind.TASK_ERROR
    assert result.error is not None
    assert result.error.startswith("ValueError: length mismatch: 3 != 2")


def test_dot_product(pool: ExecutorPool) -> None:
    expected = sum(a * b for a, b in zip(A, B, strict=True))
    got = value(cx.dot_product, call(pool, cx.dot_product, vec(*A), vec(*B)))
    assert got == C(expected.real, expected.imag)


def test_cross_product_of_unit_vectors(pool: ExecutorPool) -> None:
    i_hat, j_hat, k_hat = vec(1, 0, 0), vec(0, 1, 0), vec(0, 0, 1)
    assert value(cx.cross_product, call(pool, cx.cross_product, i_hat, j_hat)) == k_hat


def test_cross_product_needs_length_3(pool: ExecutorPool) -> None:
    result = call(pool, cx.cross_product, vec(1, 2), vec(3, 4))
    assert result.kind is ResultKind.TASK_ERROR
    assert result.error is not None and "length 3" in result.error


def test_always_fail_custom_error(pool: ExecutorPool) -> None:
    result = call(pool, cx.always_fail, vec(1))
    assert result.kind is ResultKind.TASK_ERROR
    assert result.error is not None
    assert result.error.startswith("complex.ComplexError: always fails (custom error)")


def test_unknown_task(pool: ExecutorPool) -> None:
    result = pool.run(TaskRequest(1, 0, 1, 1, "complex", "nope", _core.wire_encode([]), 30_000))
    assert result.kind is ResultKind.TASK_ERROR
    assert result.error == "TaskNotFoundError: `complex.nope`: `complex.nope` does not exist"


def test_graph_of_complex_tasks_encodes_struct_inputs() -> None:
    g = ow.TaskGraph()
    s = g.add(cx.add)
    g.add(cx.dot_product, s, s)
    assert [i.type.name for i in g.graph_inputs] == ["ComplexVec", "ComplexVec"]
    data = g.encode_inputs([vec(1), vec(2j)])
    payloads = _core.wire_decode(_core.decompress(data))
    assert [cx.add.params[0].type.decode(p) for p in payloads] == [vec(1), vec(2j)]
