"""Micro-benchmarks of the `orbweaver._core` binding (pytest-benchmark; never timed assertions).

Run:
    pytest benches/bench_core.py --benchmark-enable -p no:cacheprovider

One task = register (Ready -> Running) + report success (Running -> Succeeded): 2 transitions.
Each round runs a fresh 10,000-task flat job through `register_batch` + `report_batch` in chunks
of CHUNK tasks, the way a storage service would serve batched RPCs.
"""

from __future__ import annotations

import gc
import json
import os
import threading
from typing import Any

import msgpack
import pytest

from orbweaver import _core as core

N_TASKS = 10_000
CHUNK = 500
OUTPUT = core.wire_encode([b"\x01" * 16])
# A `bytes` graph input as the client sends it: msgpack bin of 16 bytes (2 header bytes).
INPUT = msgpack.packb(b"\x00" * 16)


def _submission(n: int) -> core.Submission:
    t: dict[str, Any] = {
        "tdl_context": {"package": "bench", "task_func": "inc"},
        "inputs": [{"Value": {"Bytes": {}}}],
        "outputs": [{"Value": {"Bytes": {}}}],
        "input_sources": None,
    }
    doc = {"schema_version": "0.1.0", "tasks": [t] * n, "commit_task": None, "cleanup_task": None}
    return core.Submission(
        core.compress(json.dumps(doc).encode()),
        core.compress(core.wire_encode([INPUT] * n)),
    )


SUBMISSION = _submission(N_TASKS)


def _setup() -> tuple[tuple[core.JobCache], dict[str, Any]]:
    cache = core.JobCache()
    cache.insert(1, 1, SUBMISSION)
    cache.start(1)
    return (cache,), {}


def _worker(cache: core.JobCache, em: int, tracked: bool) -> int:
    done = 0
    while True:
        # `tracked`: the poll records what it hands out (the visibility-timeout ledger).
        entries = cache.poll(core.LANE_TASK, CHUNK, 0, 0 if tracked else None)
        if not entries:
            return done
        regs = cache.register_batch([(j, t) for _, j, t in entries], em, 0)
        reports = [
            (c.job_id, c.task_id, c.instance_id, OUTPUT)
            for c in regs
            if isinstance(c, core.ExecutionContext)
        ]
        results = cache.report_batch(reports)
        done += sum(1 for r in results if not isinstance(r, core.CoreError))


def _run(cache: core.JobCache, threads: int, tracked: bool) -> None:
    if threads == 1:
        assert _worker(cache, 0, tracked) == N_TASKS
    else:
        counts = [0] * threads

        def work(i: int) -> None:
            counts[i] = _worker(cache, i, tracked)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert sum(counts) == N_TASKS
    assert cache.state(1) == core.JOB_RUNNING
    assert cache.progress(1)[3] == N_TASKS
    assert cache.taken_entries() == 0


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
@pytest.mark.parametrize("threads", [1, 2])
def test_register_report_batch_flat_10k(benchmark: Any, threads: int, tracked: bool) -> None:
    benchmark.extra_info.update(tasks=N_TASKS, chunk=CHUNK, threads=threads, tracked=tracked)
    benchmark.pedantic(
        lambda cache: _run(cache, threads, tracked), setup=_setup, rounds=15, warmup_rounds=2
    )
    if benchmark.stats is not None:
        best = benchmark.stats.stats.min
        benchmark.extra_info["tasks_per_s_best"] = N_TASKS / best
        benchmark.extra_info["transitions_per_s_best"] = 2 * N_TASKS / best
        benchmark.extra_info["us_per_task_best"] = best / N_TASKS * 1e6


def test_submission_parse_flat_10k(benchmark: Any) -> None:
    graph = core.compress(SUBMISSION.graph.to_json().encode())
    inputs = core.compress(core.wire_encode([INPUT] * N_TASKS))
    benchmark(core.Submission, graph, inputs)


JOBS_FOR_MEMORY = 20
# Each task's one input value (18 bytes) behind a 16-byte `Arc` header: payload, not state.
PAYLOAD_PER_TASK = len(INPUT) + 16


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_resident_bytes_per_task_flat_10k(benchmark: Any) -> None:
    """Seen from Python: how much the process grows per task when 20 flat 10,000-task jobs,
    each parsed from its own submission, sit in a `JobCache` (payloads excluded). Timed: the
    parse + insert of the 20 jobs. Allocator slack included, unlike the Rust bench's count of
    the bytes requested."""
    held: list[core.JobCache] = []

    def fill() -> None:
        cache = core.JobCache()
        for job in range(1, JOBS_FOR_MEMORY + 1):
            cache.insert(job, 1, _submission(N_TASKS))
        held.append(cache)

    gc.collect()
    before = _resident_bytes()
    benchmark.pedantic(fill, rounds=1, iterations=1)
    gc.collect()
    grown = _resident_bytes() - before
    tasks = JOBS_FOR_MEMORY * N_TASKS
    per_task = grown / tasks - PAYLOAD_PER_TASK
    benchmark.extra_info.update(jobs=JOBS_FOR_MEMORY, tasks=tasks, resident_bytes_per_task=per_task)
    print(f"\nresident bytes per flat task, from Python: {per_task:.1f} (payloads excluded)")
    assert len(held[0]) == JOBS_FOR_MEMORY
