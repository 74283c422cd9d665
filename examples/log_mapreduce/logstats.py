"""Tasks of the log map-reduce example: count web-server access logs, one map task per file,
merge the counts pairwise, summarise, and publish the summary atomically from the commit task.

Executors import this module from the example's folder (the tasks directory), so it holds the
task functions and the dataclasses they exchange, and nothing runs at import time.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orbweaver as ow

TOP_N = 5

# Combined Log Format (Apache / nginx), e.g.
# 203.0.113.9 - - [12/Mar/2025:06:25:24 +0000] "GET /index.html HTTP/1.1" 200 5316 "-" "curl/8.5"
LINE = re.compile(
    r"(?P<ip>\S+) \S+ \S+ \[[^\]]+\] "
    r'"(?P<method>[A-Z]+) (?P<target>\S+)(?: [^"]*)?" '
    r"(?P<status>\d{3}) (?P<size>\d+|-)"
)


@dataclass
class LogCounts:
    """What the map tasks produce and the reduce tasks merge."""

    files: int
    requests: int
    malformed: int  # lines that are not in the Combined Log Format
    bytes_served: int
    status: dict[int, int]
    paths: dict[str, int]  # request path without the query string
    clients: dict[str, int]  # client IP address


@dataclass
class Hit:
    key: str
    requests: int


@dataclass
class Summary:
    files: int
    requests: int
    malformed: int
    bytes_served: int
    status: dict[int, int]
    top_paths: list[Hit]
    top_clients: list[Hit]

    @classmethod
    def from_plain(cls, raw: list[Any]) -> Summary:
        """Rebuild a Summary from its wire form: a commit task receives the job outputs as plain
        msgpack values, where a dataclass is a list of its fields in declaration order."""
        files, requests, malformed, bytes_served, status, top_paths, top_clients = raw
        return cls(
            files,
            requests,
            malformed,
            bytes_served,
            {int(code): n for code, n in status.items()},
            [Hit(*hit) for hit in top_paths],
            [Hit(*hit) for hit in top_clients],
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = {str(code): n for code, n in sorted(self.status.items())}
        return data


def open_log(path: Path) -> Any:
    """A text stream over a log file; rotated logs may be gzip-compressed (``access.log.2.gz``)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


# -- map ------------------------------------------------------------------------------------------


@ow.task
def count_file(path: str) -> LogCounts:
    """Map: parse one access log and count requests by status, path and client."""
    status: Counter[int] = Counter()
    paths: Counter[str] = Counter()
    clients: Counter[str] = Counter()
    requests = malformed = bytes_served = 0
    with open_log(Path(path)) as lines:
        for line in lines:
            if not line.strip():
                continue
            m = LINE.match(line)
            if m is None:
                malformed += 1
                continue
            requests += 1
            status[int(m["status"])] += 1
            paths[m["target"].split("?", 1)[0]] += 1
            clients[m["ip"]] += 1
            if m["size"] != "-":
                bytes_served += int(m["size"])
    return LogCounts(1, requests, malformed, bytes_served, dict(status), dict(paths), dict(clients))


# -- reduce ---------------------------------------------------------------------------------------


def _add(a: dict[Any, int], b: dict[Any, int]) -> dict[Any, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    return out


@ow.task
def merge(a: LogCounts, b: LogCounts) -> LogCounts:
    """Reduce: merge two partial counts (the reduce tree merges them pairwise)."""
    return LogCounts(
        a.files + b.files,
        a.requests + b.requests,
        a.malformed + b.malformed,
        a.bytes_served + b.bytes_served,
        _add(a.status, b.status),
        _add(a.paths, b.paths),
        _add(a.clients, b.clients),
    )


def _top(counts: dict[str, int], n: int = TOP_N) -> list[Hit]:
    """The `n` largest counts, ties broken by key so that the result is deterministic."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [Hit(key, requests) for key, requests in ranked[:n]]


@ow.task
def summarize(counts: LogCounts, destination: str) -> tuple[Summary, str]:
    """The final task: its outputs are the job outputs, which the commit task receives."""
    summary = Summary(
        counts.files,
        counts.requests,
        counts.malformed,
        counts.bytes_served,
        dict(sorted(counts.status.items())),
        _top(counts.paths),
        _top(counts.clients),
    )
    return summary, destination


# -- destination and commit -----------------------------------------------------------------------


@ow.task
def check_destination(destination: str) -> str:
    """An input task: fail the job early, with a readable error, when the result could not be
    published; otherwise pass the destination on to the final task."""
    path = Path(destination)
    if not path.is_absolute():
        raise ValueError(f"the destination must be an absolute path, got {destination!r}")
    if path.is_dir():
        raise IsADirectoryError(f"the destination {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the destination directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"the destination directory {path.parent} is not writable")
    return str(path)


def write_atomically(destination: Path, text: str, tag: str) -> None:
    """Write `text` to a temporary file next to `destination`, flush it to disk, then rename it
    over `destination`: readers see the old file or the new one, never a partial one."""
    tmp = destination.with_name(f".{destination.name}.{tag}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


@ow.task(retries=2)
def publish(ctx: ow.TaskContext) -> None:
    """The commit task: runs once every task succeeded, with the job outputs.

    Delivery is at-least-once, so this may run more than once for a job; it writes the same
    bytes each time, so re-running it is harmless (idempotent).
    """
    raw_summary, destination = ctx.job_outputs or [None, None]
    summary = Summary.from_plain(raw_summary)
    text = json.dumps({"job": ctx.job_id, **summary.to_json()}, indent=2) + "\n"
    write_atomically(Path(destination), text, tag=f"job{ctx.job_id}-{ctx.instance_id}")


# -- the graph ------------------------------------------------------------------------------------


def build_graph(num_files: int) -> ow.TaskGraph:
    """Graph inputs, in order: the destination, then one log file path per map task."""
    if num_files < 1:
        raise ValueError("the map-reduce needs at least one log file")
    g = ow.TaskGraph(commit=publish)
    destination = g.add(check_destination)
    level = [g.add(count_file) for _ in range(num_files)]
    while len(level) > 1:  # a balanced tree of pairwise merges
        merged = [g.add(merge, a, b) for a, b in zip(level[0::2], level[1::2], strict=False)]
        if len(level) % 2:
            merged.append(level[-1])
        level = merged
    g.add(summarize, level[0], destination)
    return g
