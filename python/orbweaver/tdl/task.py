"""`@task`: turn a module-level Python function into an Orbweaver task.

A task is addressed as ``(package, task_func)``: `package` is the top-level module inside the
tasks directory, `task_func` the dotted path from it to the function (``fn``, ``sub.fn``).
Executors import only from the tasks directory and run only functions registered here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Generic, NamedTuple, ParamSpec, TypeVar, overload

from orbweaver import _core, errors
from orbweaver._units import parse_size
from orbweaver.tdl.context import TaskContext
from orbweaver.tdl.types import ValueType, module_name, value_type

__all__ = ["TaskFunction", "TaskParam", "TaskPolicy", "is_registered", "registered_task", "task"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_RETRIES: Final = 0
DEFAULT_INSTANCES: Final = 1
DEFAULT_SOFT_TIMEOUT_MS: Final = 150_000
DEFAULT_HARD_TIMEOUT_MS: Final = 300_000
MIN_TIMEOUT_MS: Final = 100
MAX_TIMEOUT_MS: Final = 24 * 3600 * 1000
# Below this a memory limit is most likely a unit mistake (512 meant as MiB, not bytes).
MIN_MEMORY_LIMIT: Final = 1024 * 1024
_U32_MAX: Final = 2**32 - 1


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g} s"


@dataclasses.dataclass(frozen=True)
class TaskPolicy:
    """Spider's execution policy of a task, and its resource limits.

    * `retries`: how many times a failed task is retried before the job fails;
    * `instances`: how many instances may run at once (a soft timeout starts another one);
    * `soft_timeout_ms`: after this long storage may start another instance;
    * `hard_timeout_ms`: after this long the executor is killed and the instance fails.

    Both timeouts lie in [0.1 s, 24 h] and hard > soft.

    * `memory_limit`: bytes of address space the task may add to its executor (at least 1 MiB);
    * `cpu_time_limit`: seconds of CPU time the task may use (at least 1 s).

    None means no limit. The executor applies the limits around the task call, reading them from
    the task it imports; they are not part of the graph sent to storage (`to_json`).
    """

    retries: int = DEFAULT_RETRIES
    instances: int = DEFAULT_INSTANCES
    soft_timeout_ms: int = DEFAULT_SOFT_TIMEOUT_MS
    hard_timeout_ms: int = DEFAULT_HARD_TIMEOUT_MS
    memory_limit: int | None = None
    cpu_time_limit: float | None = None

    def __post_init__(self) -> None:
        for field in ("retries", "instances", "soft_timeout_ms", "hard_timeout_ms"):
            value = getattr(self, field)
            if type(value) is not int:
                raise errors.InvalidArgument(f"{field} must be an int, got {value!r}")
        if not 0 <= self.retries <= _U32_MAX:
            raise errors.InvalidArgument(f"retries must be >= 0, got {self.retries}")
        if not 1 <= self.instances <= _U32_MAX:
            raise errors.InvalidArgument(f"instances must be >= 1, got {self.instances}")
        for field in ("soft_timeout", "hard_timeout"):
            ms = getattr(self, field + "_ms")
            if not MIN_TIMEOUT_MS <= ms <= MAX_TIMEOUT_MS:
                raise errors.InvalidArgument(
                    f"{field} must be between 0.1 s and 24 h (86400 s), got {_seconds(ms)}"
                )
        if self.hard_timeout_ms <= self.soft_timeout_ms:
            raise errors.InvalidArgument(
                f"hard_timeout ({_seconds(self.hard_timeout_ms)}) must be greater than "
                f"soft_timeout ({_seconds(self.soft_timeout_ms)})"
            )
        memory = self.memory_limit
        if memory is not None:
            if type(memory) is not int:
                raise errors.InvalidArgument(
                    f"memory_limit must be an int number of bytes, got {memory!r}"
                )
            if memory < MIN_MEMORY_LIMIT:
                raise errors.InvalidArgument(
                    f"memory_limit must be at least 1 MiB, got {memory} bytes "
                    "(give a size such as '512MiB')"
                )
        cpu = self.cpu_time_limit
        if cpu is not None:
            if isinstance(cpu, bool) or not isinstance(cpu, (int, float)):
                raise errors.InvalidArgument(
                    f"cpu_time_limit must be a number of seconds, got {cpu!r}"
                )
            if not math.isfinite(cpu) or cpu < 1:
                raise errors.InvalidArgument(
                    f"cpu_time_limit must be at least 1 s (the kernel counts whole seconds), "
                    f"got {cpu!r}"
                )

    @property
    def is_default(self) -> bool:
        """Whether the Spider execution policy is the default one (limits left out)."""
        return (
            self.retries,
            self.instances,
            self.soft_timeout_ms,
            self.hard_timeout_ms,
        ) == (
            DEFAULT_RETRIES,
            DEFAULT_INSTANCES,
            DEFAULT_SOFT_TIMEOUT_MS,
            DEFAULT_HARD_TIMEOUT_MS,
        )

    def with_overrides(
        self,
        *,
        retries: int | None = None,
        instances: int | None = None,
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        memory_limit: int | str | None = None,
        cpu_time_limit: float | None = None,
    ) -> TaskPolicy:
        """A copy with the given fields replaced (timeouts in seconds, `memory_limit` in bytes
        or as a size such as ``"512MiB"``). When only one timeout is
        given and it conflicts with the other one, the other one follows it: a hard timeout at
        or below the soft timeout moves the soft timeout to half of it (at least 0.1 s), a soft
        timeout at or above the hard timeout moves the hard timeout to twice it (at most 24 h).
        """
        soft_ms = self.soft_timeout_ms if soft_timeout is None else _to_ms("soft", soft_timeout)
        hard_ms = self.hard_timeout_ms if hard_timeout is None else _to_ms("hard", hard_timeout)
        if hard_timeout is not None and soft_timeout is None and soft_ms >= hard_ms:
            soft_ms = max(MIN_TIMEOUT_MS, hard_ms // 2)
        if soft_timeout is not None and hard_timeout is None and hard_ms <= soft_ms:
            hard_ms = min(MAX_TIMEOUT_MS, soft_ms * 2)
        if memory_limit is not None and not isinstance(memory_limit, bool):
            try:
                memory_limit = parse_size(memory_limit, "memory_limit")
            except ValueError as exc:
                raise errors.InvalidArgument(str(exc)) from None
        return TaskPolicy(
            retries=self.retries if retries is None else retries,
            instances=self.instances if instances is None else instances,
            soft_timeout_ms=soft_ms,
            hard_timeout_ms=hard_ms,
            memory_limit=self.memory_limit if memory_limit is None else memory_limit,
            cpu_time_limit=self.cpu_time_limit if cpu_time_limit is None else cpu_time_limit,
        )

    def to_json(self) -> dict[str, Any] | None:
        """The Spider ``execution_policy`` object, or None for the default policy. The resource
        limits are not in it: the executor reads them from the task itself."""
        if self.is_default:
            return None
        return {
            "max_num_retry": self.retries,
            "max_num_instances": self.instances,
            "timeout_policy": {
                "soft_timeout_ms": self.soft_timeout_ms,
                "hard_timeout_ms": self.hard_timeout_ms,
            },
        }


_DEFAULT_POLICY: Final = TaskPolicy()


def _to_ms(which: str, seconds: float) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise errors.InvalidArgument(
            f"{which}_timeout must be a number of seconds, got {seconds!r}"
        )
    if not math.isfinite(seconds):
        raise errors.InvalidArgument(f"{which}_timeout must be finite, got {seconds!r}")
    return round(seconds * 1000)


class TaskParam(NamedTuple):
    """A task parameter: its name, annotation and resolved value type."""

    name: str
    annotation: Any
    type: ValueType


# (package, task_func) -> TaskFunction
_registry: dict[tuple[str, str], TaskFunction[Any, Any]] = {}


def registered_task(package: str, task_func: str) -> TaskFunction[Any, Any] | None:
    """The task registered under ``(package, task_func)`` in this process, if any."""
    return _registry.get((package, task_func))


def registered_tasks_dirs() -> list[Path]:
    """The distinct tasks directories of the tasks registered in this process so far (Orbweaver's
    own and unaddressable ones left out), in registration order."""
    seen: dict[Path, None] = {}
    for (package, _), fn in list(_registry.items()):
        if package == "orbweaver":
            continue
        try:
            seen.setdefault(fn.tasks_dir, None)
        except errors.InvalidArgument:
            continue
    return list(seen)


def is_registered(obj: object) -> bool:
    """Whether `obj` is a `TaskFunction` registered under its own address."""
    if not isinstance(obj, TaskFunction) or obj._address is None:
        return False
    return _registry.get(obj._address) is obj


class TaskFunction(Generic[P, R]):
    """A function decorated with `@task`. Calling it calls the function directly.

    Attributes: `package`, `task_func`, `tasks_dir` (where `package` is importable from),
    `params` (without the optional context parameter), `outputs` (one `ValueType` per output),
    `takes_context` and `policy`.
    """

    # Set by functools.update_wrapper from the wrapped function.
    __name__: str
    __qualname__: str
    __wrapped__: Callable[P, R]

    def __init__(self, fn: Callable[P, R], *, name: str | None, policy: TaskPolicy) -> None:
        self._qualname: str = getattr(fn, "__qualname__", repr(fn))
        self._module: str = getattr(fn, "__module__", None) or "?"
        label = f"task function `{self._module}.{self._qualname}`"
        self._label = label
        _check_callable(fn, label)
        functools.update_wrapper(self, fn)
        self.fn: Callable[P, R] = fn
        self.policy = policy
        self.takes_context, self.params, self.outputs = _analyse(fn, label)

        # Address. A module that cannot be imported by name (an interactive session, a script
        # whose file name is not an identifier) only fails when the task is used in a graph.
        self._address: tuple[str, str] | None = None
        self._address_error: str | None = None
        if name is not None:
            try:
                _core.validate_task_name("x", name)
            except _core.InvalidGraphError as exc:
                raise errors.InvalidArgument(
                    f"{label}: invalid task name {name!r}: {exc}"
                ) from None
        try:
            mod = module_name(fn.__module__)
        except ValueError as exc:
            self._address_error = f"{label}: {exc}"
        else:
            package, *prefix = mod.split(".")
            task_func = ".".join([*prefix, name or fn.__name__])
            try:
                _core.validate_task_name(package, task_func)
            except _core.InvalidGraphError as exc:
                self._address_error = f"{label} cannot be addressed by executors: {exc}"
            else:
                self._address = (package, task_func)
                _register(self)

    # -- addressing ------------------------------------------------------------------------------

    def _require_address(self) -> tuple[str, str]:
        if self._address is None:
            raise errors.InvalidArgument(self._address_error or f"{self._label} has no address")
        return self._address

    @property
    def package(self) -> str:
        """The top-level module inside the tasks directory."""
        return self._require_address()[0]

    @property
    def task_func(self) -> str:
        """The dotted path from `package` to the function, e.g. ``fn`` or ``sub.fn``."""
        return self._require_address()[1]

    @property
    def qualified_name(self) -> str:
        """``package.task_func`` (or the Python name when the task has no address)."""
        if self._address is None:
            return f"{self._module}.{self._qualname}"
        return f"{self._address[0]}.{self._address[1]}"

    @functools.cached_property
    def tasks_dir(self) -> Path:
        """The directory from which `package` is importable."""
        package = self.package
        top = sys.modules.get(package)
        if top is None and self._module == "__main__":
            top = sys.modules.get("__main__")
        path = getattr(top, "__path__", None)
        if path:
            return Path(next(iter(path))).resolve().parent
        file = getattr(top, "__file__", None)
        if not file:
            raise errors.InvalidArgument(
                f"{self._label}: cannot find the directory of module `{package}`"
            )
        return Path(file).resolve().parent

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    # -- calling ---------------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> str:
        # Pickle by reference: the module attribute named like the function is this object.
        return self._qualname

    def __repr__(self) -> str:
        return f"<orbweaver task {self.qualified_name}>"


def _register(fn: TaskFunction[Any, Any]) -> None:
    assert fn._address is not None
    existing = _registry.get(fn._address)
    if existing is not None and existing._qualname != fn._qualname:
        raise errors.InvalidArgument(
            f"task name `{'.'.join(fn._address)}` is used by both "
            f"`{existing._module}.{existing._qualname}` and `{fn._module}.{fn._qualname}`"
        )
    _registry[fn._address] = fn  # a re-import (reload, __main__ vs module) replaces the entry


def _check_callable(fn: object, label: str) -> None:
    if not inspect.isfunction(fn):
        raise TypeError(f"@task can only decorate functions, not {type(fn).__qualname__} {fn!r}")
    qualname = fn.__qualname__
    if "<locals>" in qualname:
        raise TypeError(
            f"{label} is defined inside another function; tasks must be module-level functions "
            "so that executors can import them"
        )
    if fn.__name__ == "<lambda>":
        raise TypeError(f"{label}: a lambda cannot be a task; use a module-level def")
    if "." in qualname:
        raise TypeError(f"{label} is defined in a class; tasks must be module-level functions")
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(f"{label} is async; tasks must be plain functions")
    if inspect.isgeneratorfunction(fn):
        raise TypeError(f"{label} is a generator; tasks must return their outputs")


def _analyse(fn: Any, label: str) -> tuple[bool, tuple[TaskParam, ...], tuple[ValueType, ...]]:
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise TypeError(f"{label}: cannot resolve its type annotations: {exc}") from None
    sig = inspect.signature(fn)

    takes_context = False
    params: list[TaskParam] = []
    for i, p in enumerate(sig.parameters.values()):
        if p.kind is p.VAR_POSITIONAL or p.kind is p.VAR_KEYWORD:
            raise TypeError(
                f"{label}: parameter `{p.name}` is variadic; tasks take a fixed list of parameters"
            )
        if p.kind is p.KEYWORD_ONLY:
            raise TypeError(
                f"{label}: parameter `{p.name}` is keyword-only; task parameters are positional"
            )
        ann = hints.get(p.name, inspect.Parameter.empty)
        if ann is TaskContext:
            if i != 0:
                raise TypeError(
                    f"{label}: the TaskContext parameter `{p.name}` must be the first parameter"
                )
            takes_context = True
            continue
        if i == 0 and p.name == "ctx" and ann is inspect.Parameter.empty:
            takes_context = True
            continue
        if ann is inspect.Parameter.empty:
            raise TypeError(f"{label}: parameter `{p.name}` needs a type annotation")
        vt = value_type(ann, where=f"{label}, parameter `{p.name}`")
        params.append(TaskParam(p.name, ann, vt))

    if "return" not in hints:
        raise TypeError(f"{label} needs a return annotation (use `-> None` for no outputs)")
    ret = hints["return"]
    outputs: list[ValueType] = []
    if ret is None or ret is type(None):
        pass
    elif typing.get_origin(ret) is tuple:
        items = typing.get_args(ret)
        if Ellipsis in items:
            raise TypeError(
                f"{label}: return type {ret} has a variable length; "
                "use tuple[A, B, ...] with one type per output"
            )
        for pos, item in enumerate(items):
            outputs.append(value_type(item, where=f"{label}, output {pos}"))
    elif ret is tuple:
        raise TypeError(f"{label}: bare `tuple` return type; give one type per output")
    else:
        outputs.append(value_type(ret, where=f"{label}, return type"))
    return takes_context, tuple(params), tuple(outputs)


@overload
def task(fn: Callable[P, R], /) -> TaskFunction[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    retries: int | None = None,
    instances: int | None = None,
    soft_timeout: float | None = None,
    hard_timeout: float | None = None,
    memory_limit: int | str | None = None,
    cpu_time_limit: float | None = None,
) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int | None = None,
    instances: int | None = None,
    soft_timeout: float | None = None,
    hard_timeout: float | None = None,
    memory_limit: int | str | None = None,
    cpu_time_limit: float | None = None,
) -> TaskFunction[P, R] | Callable[[Callable[P, R]], TaskFunction[P, R]]:
    """Declare a task. Use bare (``@task``) or with options (``@task(retries=2)``).

    `name` replaces the function's name in `task_func`; `retries`, `instances`, `soft_timeout`
    and `hard_timeout` (seconds) set the default execution policy, which `TaskGraph.add` can
    override per task. `memory_limit` (bytes, or a size such as ``"512MiB"``) and
    `cpu_time_limit` (seconds) bound what one run of the task may use in its executor; a task
    that exceeds them fails with ``MemoryError`` / ``CpuTimeLimitExceeded``.
    """
    policy = _DEFAULT_POLICY.with_overrides(
        retries=retries,
        instances=instances,
        soft_timeout=soft_timeout,
        hard_timeout=hard_timeout,
        memory_limit=memory_limit,
        cpu_time_limit=cpu_time_limit,
    )

    def wrap(f: Callable[P, R]) -> TaskFunction[P, R]:
        return TaskFunction(f, name=name, policy=policy)

    if fn is not None:
        return wrap(fn)
    return wrap
