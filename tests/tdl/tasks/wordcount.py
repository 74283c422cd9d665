"""The tasks of the example graph in docs/concepts.md: read shards, count, summarize."""

from __future__ import annotations

from dataclasses import dataclass

import orbweaver as ow


@dataclass(frozen=True)
class Summary:
    words: int
    distinct: int


@ow.task(retries=2, soft_timeout=60, hard_timeout=120)
def publish(ctx: ow.TaskContext) -> None:
    assert ctx.job_outputs is not None


@ow.task
def discard(ctx: ow.TaskContext) -> None:
    assert ctx.graph_inputs is not None


@ow.task
def read_shard(data: bytes, shard: ow.Int32) -> list[bytes]:
    return data.split()[shard::2]


@ow.task(retries=3, instances=2, soft_timeout=5, hard_timeout=30)
def count(words: list[bytes]) -> tuple[dict[bytes, int], bool]:
    counts: dict[bytes, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return counts, len(counts) > 1000


@ow.task
def summarize(counts: dict[bytes, int], truncated: bool) -> tuple[Summary, float]:
    total = sum(counts.values())
    return Summary(total, len(counts)), (len(counts) / total if total else 0.0)
