"""Per-task resource limits (`@task(memory_limit=..., cpu_time_limit=...)`): validated when the
task is declared, applied by real executors around the task call, reported readably, restored
afterwards (the executor keeps serving), and never sent to storage."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import orbweaver as ow
from orbweaver import _core
from orbweaver.tdl.task import TaskPolicy
from orbweaver.worker.pool import ExecutorPool, ResultKind, TaskRequest, TaskResult

pytestmark = pytest.mark.timeout(120)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(TASKS_DIR))
import limits_tasks  # noqa: E402


def run(pool: ExecutorPool, func: str, *values: Any) -> TaskResult:
    io = _core.wire_encode([msgpack.packb(v, use_bin_type=True) for v in values])
    return pool.run(TaskRequest(1, 0, 1, 1, "limits_tasks", func, io, 60_000))


def value(result: TaskResult) -> Any:
    assert result.kind is ResultKind.SUCCESS, result
    assert result.outputs is not None
    [payload] = _core.wire_decode(result.outputs)
    return msgpack.unpackb(payload, raw=False)


@pytest.fixture(scope="module")
def pool() -> Iterator[ExecutorPool]:
    with ExecutorPool(TASKS_DIR, 1) as p:
        yield p


# -------------------------------------------------------------------------------------------------
# Real executors
# -------------------------------------------------------------------------------------------------


def test_memory_limit(pool: ExecutorPool) -> None:
    [executor] = pool.pids()
    assert value(run(pool, "allocate_limited", 16)) == 16  # within the limit
    result = run(pool, "allocate_limited", 256)
    assert result.kind is ResultKind.TASK_ERROR
    assert result.error is not None
    assert result.error.startswith("MemoryError: task exceeded its memory limit of 64 MiB\n")
    assert "limits_tasks.py" in result.error  # the task's own frames
    # The limit is lifted afterwards: the same executor serves a task that needs more.
    assert value(run(pool, "allocate", 256)) == 256
    assert pool.pids() == [executor]


def test_cpu_time_limit(pool: ExecutorPool) -> None:
    [executor] = pool.pids()
    assert value(run(pool, "spin_limited", 0.2)) == 0.2
    result = run(pool, "spin_limited", 30.0)
    assert result.kind is ResultKind.TASK_ERROR
    assert result.error is not None
    assert result.error.startswith(
        "CpuTimeLimitExceeded: task exceeded its CPU time limit of 1 s\n"
    ), result.error
    # Lifted afterwards: a task without a limit may spin longer than the limit on that executor.
    assert value(run(pool, "spin", 2.5)) == 2.5
    assert pool.pids() == [executor]


def test_cpu_time_limit_cannot_be_swallowed_by_except_exception(pool: ExecutorPool) -> None:
    result = run(pool, "spin_stubbornly", 30.0)
    assert result.kind is ResultKind.TASK_ERROR
    assert (result.error or "").startswith("CpuTimeLimitExceeded: task exceeded its CPU time")


def test_limits_are_not_sent_to_storage() -> None:
    g = ow.TaskGraph()
    g.add(limits_tasks.allocate_limited)
    g.add(limits_tasks.spin_limited, retries=2)
    for text in (json.dumps(g.to_dict()), g._serialize()):  # what the client sends
        assert "memory" not in text and "cpu" not in text
        assert str(64 * 1024 * 1024) not in text
    [first, second] = g.to_dict()["tasks"]
    assert "execution_policy" not in first  # a limit alone leaves the Spider policy default
    assert second["execution_policy"]["max_num_retry"] == 2
    # Overrides at graph level keep the task's limits.
    assert limits_tasks.spin_limited.policy.with_overrides(retries=2).cpu_time_limit == 1


# -------------------------------------------------------------------------------------------------
# Declaration
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory", "expected"),
    [("512MiB", 512 * 1024**2), (2 * 1024**3, 2 * 1024**3), ("1.5 GB", 1_500_000_000)],
)
def test_memory_limit_values(memory: Any, expected: int) -> None:
    assert TaskPolicy().with_overrides(memory_limit=memory).memory_limit == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"memory_limit": 512}, "memory_limit must be at least 1 MiB, got 512 bytes"),
        ({"memory_limit": "lots"}, "memory_limit: cannot read 'lots' as a size"),
        ({"memory_limit": 1.5}, "memory_limit must be a number of bytes or a size"),
        ({"memory_limit": True}, "memory_limit must be an int number of bytes, got True"),
        ({"cpu_time_limit": 0.5}, "cpu_time_limit must be at least 1 s"),
        ({"cpu_time_limit": float("inf")}, "cpu_time_limit must be at least 1 s"),
        ({"cpu_time_limit": "2"}, "cpu_time_limit must be a number of seconds, got '2'"),
        ({"cpu_time_limit": True}, "cpu_time_limit must be a number of seconds, got True"),
    ],
)
def test_invalid_limits_are_refused_when_the_task_is_declared(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ow.InvalidArgument) as info:

        @ow.task(**options)
        def limited() -> None:  # pragma: no cover - never declared
            return None

    assert str(info.value).startswith(message), str(info.value)
