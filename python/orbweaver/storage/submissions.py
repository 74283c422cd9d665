"""Parse job submissions, sharing one parsed graph between the jobs of a graph.

Jobs are usually submitted many at a time from one ``TaskGraph`` (``Client.submit_many``, a
program submitting in a loop), and recovery reads thousands of jobs that often share a graph.
Parsing the JSON graph once per distinct graph, and sharing the immutable parsed graph between
those jobs' cache entries, saves the parse time and the memory of a copy per job.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from orbweaver import _core

__all__ = ["SubmissionLimits", "SubmissionParser"]


@dataclass(frozen=True, slots=True)
class SubmissionLimits:
    """Decompressed sizes and task count a submission may reach (the storage settings of the
    same names); the defaults only keep a bomb from costing more than 1 GiB."""

    max_graph_bytes: int = 1 << 30
    max_input_bytes: int = 1 << 30
    max_tasks: int | None = None


class SubmissionParser:
    """``_core.Submission`` with a bounded LRU of parsed graphs keyed by their exact bytes.

    Only graphs of at most ``max_graph_bytes`` (compressed) are remembered, at most
    ``max_graphs`` of them and ``max_tasks`` tasks in all (a parsed graph's memory grows with
    its tasks, not with its compressed size). Thread-safe.
    """

    def __init__(
        self,
        limits: SubmissionLimits | None = None,
        *,
        max_graphs: int = 128,
        max_graph_bytes: int = 256 * 1024,
        max_tasks: int = 200_000,
    ) -> None:
        self.limits = limits or SubmissionLimits()
        self._max_graphs = max_graphs
        self._max_graph_bytes = max_graph_bytes
        self._max_tasks = max_tasks
        self._tasks = 0
        self._lock = threading.Lock()
        self._graphs: OrderedDict[bytes, _core.TaskGraph] = OrderedDict()

    def parse(self, compressed_graph: bytes, compressed_inputs: bytes) -> _core.Submission:
        """Validate and parse within the limits; raises ``_core.CoreError`` exactly as
        ``_core.Submission`` does."""
        key = bytes(compressed_graph)
        limits = self.limits
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
        if graph is not None:
            return _core.Submission.with_graph(
                graph, compressed_inputs, max_input_bytes=limits.max_input_bytes
            )
        submission = _core.Submission(
            key,
            compressed_inputs,
            max_graph_bytes=limits.max_graph_bytes,
            max_input_bytes=limits.max_input_bytes,
            max_tasks=limits.max_tasks,
        )
        tasks = submission.graph.num_tasks
        if len(key) <= self._max_graph_bytes and self._max_graphs > 0 and tasks <= self._max_tasks:
            with self._lock:
                if key not in self._graphs:
                    self._graphs[key] = submission.graph
                    self._tasks += tasks
                while len(self._graphs) > self._max_graphs or self._tasks > self._max_tasks:
                    _, evicted = self._graphs.popitem(last=False)
                    self._tasks -= evicted.num_tasks
        return submission

    def __len__(self) -> int:
        with self._lock:
            return len(self._graphs)
