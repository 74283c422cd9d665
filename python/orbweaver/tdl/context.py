"""`TaskContext`: what a running task knows about itself (its optional first parameter)."""

from __future__ import annotations

import dataclasses
from typing import Any

from orbweaver._core import TASK_CLEANUP, TASK_COMMIT


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """Identity of the running task instance.

    `task_id` is the task's index in the graph, or a negative sentinel for the commit / cleanup
    task (see `is_commit` / `is_cleanup`). In a commit task `job_outputs` holds the job outputs and
    in a cleanup task `graph_inputs` holds the job's graph inputs (both msgpack-decoded, untyped);
    otherwise they are None.
    """

    job_id: int
    task_id: int
    instance_id: int
    resource_group_id: int
    job_outputs: list[Any] | None = None
    graph_inputs: list[Any] | None = None

    @property
    def is_commit(self) -> bool:
        return self.task_id == TASK_COMMIT

    @property
    def is_cleanup(self) -> bool:
        return self.task_id == TASK_CLEANUP

    @property
    def task_label(self) -> str:
        """ "commit", "cleanup" or "task <index>"."""
        if self.is_commit:
            return "commit"
        if self.is_cleanup:
            return "cleanup"
        return f"task {self.task_id}"
