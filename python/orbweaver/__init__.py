"""Orbweaver: fault-tolerant distributed task graphs for Python, with a Rust core.

import orbweaver as ow

@ow.task
def double(x: int) -> int:
    return 2 * x

g = ow.TaskGraph()
a, b = g.add(double), g.add(double)
g.add(add, a, b)
with ow.LocalCluster(workers=2) as cluster:
    print(cluster.client().submit(g, [3, 4]).result(timeout=60))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orbweaver._core import __version__
from orbweaver.errors import (
    AlreadyExists,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    InvalidGraph,
    InvalidInput,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimeout,
    LimitExceeded,
    MessageTooLarge,
    NotFound,
    OrbweaverError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from orbweaver.graph import Durability, OutputRef, TaskGraph, TaskHandle
from orbweaver.states import JobState
from orbweaver.tdl import (
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    TaskContext,
    TaskFunction,
    TaskPolicy,
    task,
)

if TYPE_CHECKING:
    from orbweaver.async_client import AsyncClient, AsyncJob, as_completed
    from orbweaver.client import Client, Job, JobInfo, Progress, ResourceGroup
    from orbweaver.local import LocalCluster

# The client side (gRPC) is imported on first use: executors import `orbweaver` for `@task`
# and should not pay for grpc at every start and respawn.
_LAZY = {
    "AsyncClient": "orbweaver.async_client",
    "AsyncJob": "orbweaver.async_client",
    "as_completed": "orbweaver.async_client",
    "Client": "orbweaver.client",
    "Job": "orbweaver.client",
    "JobInfo": "orbweaver.client",
    "Progress": "orbweaver.client",
    "ResourceGroup": "orbweaver.client",
    "LocalCluster": "orbweaver.local",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orbweaver' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "AsyncJob",
    "Client",
    "Durability",
    "FailedPrecondition",
    "Float32",
    "Float64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "InternalError",
    "InvalidArgument",
    "InvalidGraph",
    "InvalidInput",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobInfo",
    "JobNotFound",
    "JobState",
    "JobTimeout",
    "LimitExceeded",
    "LocalCluster",
    "MessageTooLarge",
    "NotFound",
    "OrbweaverError",
    "OutputRef",
    "PermissionDenied",
    "Progress",
    "ResourceGroup",
    "TaskContext",
    "TaskFunction",
    "TaskGraph",
    "TaskHandle",
    "TaskPolicy",
    "Unauthenticated",
    "Unavailable",
    "__version__",
    "as_completed",
    "task",
]
