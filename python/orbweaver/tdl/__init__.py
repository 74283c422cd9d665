"""Task definitions: the `@task` decorator, `TaskContext`, execution policies and value types."""

from orbweaver.tdl.context import TaskContext
from orbweaver.tdl.task import TaskFunction, TaskPolicy, task
from orbweaver.tdl.types import Float32, Float64, Int8, Int16, Int32, Int64

__all__ = [
    "Float32",
    "Float64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "TaskContext",
    "TaskFunction",
    "TaskPolicy",
    "task",
]
