"""Tasks of `orbweaver demo`: count words in text shards, merge the counts pairwise, summarise,
and publish the summary atomically from the commit task."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import orbweaver as ow


@ow.task
def count_words(shard: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for word in re.findall(r"[a-z']+", shard.lower()):
        counts[word] = counts.get(word, 0) + 1
    return counts


@ow.task
def merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    merged = dict(a)
    for word, n in b.items():
        merged[word] = merged.get(word, 0) + n
    return merged


@ow.task
def summarize(counts: dict[str, int]) -> tuple[list[str], int]:
    top = sorted(counts, key=lambda w: (-counts[w], w))[:5]
    return top, sum(counts.values())


def publish_dir() -> Path:
    return Path(
        os.environ.get("ORBWEAVER_DEMO_DIR", Path(tempfile.gettempdir()) / "orbweaver-demo")
    )


@ow.task(retries=2)
def publish(ctx: ow.TaskContext) -> None:
    """Commit task: write the job outputs once, atomically (idempotent on re-runs)."""
    top, total = ctx.job_outputs or [[], 0]
    out = publish_dir()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".job-{ctx.job_id}.json.tmp"
    tmp.write_text(json.dumps({"job": ctx.job_id, "top_words": top, "total_words": total}))
    os.replace(tmp, out / f"job-{ctx.job_id}.json")


def build_graph() -> ow.TaskGraph:
    g = ow.TaskGraph(commit=publish)
    shards = [g.add(count_words) for _ in range(4)]
    left = g.add(merge, shards[0], shards[1])
    right = g.add(merge, shards[2], shards[3])
    g.add(summarize, g.add(merge, left, right))
    return g
