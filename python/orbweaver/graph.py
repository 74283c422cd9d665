"""`TaskGraph`: build a job's task graph from `@task` functions.

    g = TaskGraph(commit=publish, cleanup=discard)
    shard = g.add(read_shard)                 # no sources: an input task, params are graph inputs
    counts = g.add(count, shard)              # a single-output handle
    g.add(summarize, counts[0], counts[1])    # handle[i]: output i of a multi-output task

The graph serialises to the Spider task-graph JSON schema (0.1.0) and is validated by the Rust
core. Graph inputs are the parameters of the input tasks in task order, then position; job outputs
are all outputs of the tasks without children, in task order, then position.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, get_args

from orbweaver import _core, errors
from orbweaver.tdl.task import TaskFunction, TaskPolicy
from orbweaver.tdl.types import ValueMismatchError, ValueType, describe_value

__all__ = [
    "Durability",
    "GraphInput",
    "GraphOutput",
    "OutputRef",
    "TaskGraph",
    "TaskHandle",
    "check_durability",
]

SCHEMA_VERSION: Final = "0.1.0"

Durability = Literal["job", "task"]
"""What a storage restart keeps of a running job: ``"job"`` (the default) persists its outputs
when it completes, and a restart runs its tasks again; ``"task"`` also persists each succeeded
task's outputs (in the background), and a restart resumes the job without running them again."""


def check_durability(value: object) -> Durability:
    """`value` if it is a `Durability`; else `InvalidArgument` naming it."""
    if isinstance(value, str) and value in get_args(Durability):
        return value  # type: ignore[return-value]
    raise errors.InvalidArgument(f"durability must be 'job' or 'task', got {describe_value(value)}")


class OutputRef:
    """Output `position` of the task behind `handle` (made with ``handle[position]``)."""

    __slots__ = ("handle", "position")

    def __init__(self, handle: TaskHandle, position: int) -> None:
        self.handle = handle
        self.position = position

    @property
    def type(self) -> ValueType:
        return self.handle.fn.outputs[self.position]

    def __repr__(self) -> str:
        return f"<output {self.position} of task {self.handle.index} ({self.handle.name})>"


class TaskHandle:
    """A task added to a `TaskGraph`. Use it as a source when it has exactly one output, or
    pick an output with ``handle[i]``; iterating yields every output."""

    __slots__ = ("fn", "graph", "index")

    def __init__(self, graph: TaskGraph, index: int, fn: TaskFunction[Any, Any]) -> None:
        self.graph = graph
        self.index = index
        self.fn = fn

    @property
    def name(self) -> str:
        return self.fn.qualified_name

    @property
    def num_outputs(self) -> int:
        return len(self.fn.outputs)

    @property
    def outputs(self) -> tuple[OutputRef, ...]:
        return tuple(OutputRef(self, i) for i in range(self.num_outputs))

    def __getitem__(self, position: int) -> OutputRef:
        if isinstance(position, bool) or not isinstance(position, int):
            raise TypeError(f"output positions are ints, got {describe_value(position)}")
        n = self.num_outputs
        if not 0 <= position < n:
            raise errors.InvalidGraph(
                f"task {self.index} (`{self.name}`) has {n} output{'s' * (n != 1)}; "
                f"output {position} does not exist"
            )
        return OutputRef(self, position)

    def __iter__(self) -> Iterator[OutputRef]:
        return iter(self.outputs)

    def __repr__(self) -> str:
        return f"<task {self.index} ({self.name})>"


@dataclasses.dataclass(frozen=True)
class GraphInput:
    """Graph input `index`: parameter `param` (at `position`) of input task `task_index`."""

    index: int
    task_index: int
    function: str
    param: str
    position: int
    type: ValueType


@dataclasses.dataclass(frozen=True)
class GraphOutput:
    """Job output `index`: output `position` of task `task_index` (a task without children)."""

    index: int
    task_index: int
    function: str
    position: int
    type: ValueType


class _Task(NamedTuple):
    fn: TaskFunction[Any, Any]
    policy: TaskPolicy
    sources: tuple[tuple[int, int], ...] | None  # None: an input task


class TaskGraph:
    """An ordered DAG of tasks; insertion order is a topological order."""

    def __init__(
        self,
        *,
        commit: TaskFunction[Any, Any] | None = None,
        cleanup: TaskFunction[Any, Any] | None = None,
        durability: Durability = "job",
    ) -> None:
        """`durability`: what a storage restart keeps of this graph's running jobs (see
        `Durability`); a submission may override it."""
        self._durability = check_durability(durability)
        self._tasks: list[_Task] = []
        self._has_children: list[bool] = []
        self._commit = _termination("commit", commit)
        self._cleanup = _termination("cleanup", cleanup)
        self._json: str | None = None
        self._compressed: bytes | None = None  # the wire form of `_json`, made once

    # -- building --------------------------------------------------------------------------------

    def add(
        self,
        fn: TaskFunction[Any, Any],
        *sources: TaskHandle | OutputRef,
        retries: int | None = None,
        instances: int | None = None,
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
    ) -> TaskHandle:
        """Add a task. Without sources it is an input task whose parameters are graph inputs;
        otherwise give exactly one source per parameter: a single-output `TaskHandle` or
        ``handle[i]``, whose type must equal the parameter's. Policy options (timeouts in
        seconds) override the ones given to `@task`."""
        index = len(self._tasks)
        if not isinstance(fn, TaskFunction):
            raise errors.InvalidGraph(f"task {index}: {fn!r} is not an @orbweaver.task function")
        label = f"task {index} (`{fn.qualified_name}`)"
        try:
            fn.package  # noqa: B018 - raises when the function has no executor address
        except errors.InvalidArgument as exc:
            raise errors.InvalidGraph(f"{label}: {exc}") from None
        try:
            policy = fn.policy.with_overrides(
                retries=retries,
                instances=instances,
                soft_timeout=soft_timeout,
                hard_timeout=hard_timeout,
            )
        except errors.InvalidArgument as exc:
            raise errors.InvalidGraph(f"{label}: invalid execution policy: {exc}") from None

        resolved: tuple[tuple[int, int], ...] | None = None
        if sources:
            params = fn.params
            if len(sources) != len(params):
                names = ", ".join(p.name for p in params) or "none"
                raise errors.InvalidGraph(
                    f"{label} takes {len(params)} parameter{'s' * (len(params) != 1)} "
                    f"({names}) but {len(sources)} source{'s' * (len(sources) != 1)} "
                    "were given (give one source per parameter, or none for an input task)"
                )
            resolved = tuple(
                # Fast path for the common source (a single-output task of this graph whose type
                # is the parameter's); anything else gets the full check and its error message.
                (src.index, 0)
                if type(src) is TaskHandle
                and src.graph is self
                and len(outs := src.fn.outputs) == 1
                and outs[0] == param.type
                else self._source(label, pos, param.name, param.type, src)
                for pos, (param, src) in enumerate(zip(params, sources, strict=True))
            )

        self._tasks.append(_Task(fn, policy, resolved))
        self._has_children.append(False)
        for parent, _ in resolved or ():
            self._has_children[parent] = True
        self._json = self._compressed = None
        return TaskHandle(self, index, fn)

    def _source(
        self, label: str, pos: int, pname: str, ptype: ValueType, src: object
    ) -> tuple[int, int]:
        where = f"{label} parameter `{pname}` (position {pos})"
        if isinstance(src, TaskHandle):
            n = src.num_outputs
            if n != 1:
                what = "no outputs" if n == 0 else f"{n} outputs; pick one with handle[i]"
                raise errors.InvalidGraph(
                    f"{where}: source task {src.index} (`{src.name}`) has {what}"
                )
            src = src[0]
        if not isinstance(src, OutputRef):
            raise errors.InvalidGraph(
                f"{where}: a source must be a TaskHandle or handle[i], got {describe_value(src)} "
                "(values are passed as graph inputs at submission)"
            )
        h = src.handle
        if h.graph is not self:
            raise errors.InvalidGraph(f"{where}: source task `{h.name}` belongs to another graph")
        stype = src.type
        if stype != ptype:
            raise errors.InvalidGraph(
                f"{where} has type {ptype.name} but its source, output {src.position} of task "
                f"{h.index} (`{h.name}`), has type {stype.name}"
            )
        return (h.index, src.position)

    # -- shape -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def tasks(self) -> tuple[TaskHandle, ...]:
        return tuple(TaskHandle(self, i, t.fn) for i, t in enumerate(self._tasks))

    @property
    def commit(self) -> TaskFunction[Any, Any] | None:
        return self._commit

    @property
    def durability(self) -> Durability:
        """What a storage restart keeps of this graph's running jobs (see `Durability`)."""
        return self._durability

    @durability.setter
    def durability(self, value: Durability) -> None:
        self._durability = check_durability(value)

    @property
    def cleanup(self) -> TaskFunction[Any, Any] | None:
        return self._cleanup

    @property
    def graph_inputs(self) -> list[GraphInput]:
        """The graph inputs in order: parameters of the input tasks, task order then position."""
        out: list[GraphInput] = []
        for ti, t in enumerate(self._tasks):
            if t.sources is None:
                for pos, p in enumerate(t.fn.params):
                    out.append(GraphInput(len(out), ti, t.fn.qualified_name, p.name, pos, p.type))
        return out

    @property
    def graph_outputs(self) -> list[GraphOutput]:
        """The job outputs in order: outputs of the tasks without children."""
        out: list[GraphOutput] = []
        for ti, t in enumerate(self._tasks):
            if not self._has_children[ti]:
                for pos, vt in enumerate(t.fn.outputs):
                    out.append(GraphOutput(len(out), ti, t.fn.qualified_name, pos, vt))
        return out

    def functions(self) -> list[TaskFunction[Any, Any]]:
        """The distinct task functions used, termination tasks included, in graph order."""
        fns = [t.fn for t in self._tasks] + [f for f in (self._commit, self._cleanup) if f]
        return list(dict.fromkeys(fns))

    def tasks_dirs(self) -> list[Path]:
        """The distinct tasks directories of the functions used (termination tasks included)."""
        return list(dict.fromkeys(fn.tasks_dir for fn in self.functions()))

    # -- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The graph as a Spider task-graph JSON object (not validated)."""
        tasks = []
        for t in self._tasks:
            d = _task_json(t.fn, t.policy)
            d["input_sources"] = (
                None
                if t.sources is None
                else [{"task_idx": ti, "position": pos} for ti, pos in t.sources]
            )
            tasks.append(d)
        return {
            "schema_version": SCHEMA_VERSION,
            "tasks": tasks,
            "commit_task": _termination_json(self._commit),
            "cleanup_task": _termination_json(self._cleanup),
        }

    def _serialize(self) -> str:
        """``json.dumps(self.to_dict())``, compact, built from text: every task of one function
        and policy shares the JSON of everything but its sources, so a 10,000-task graph costs
        one small dump per distinct function instead of dicts for 250,000 typed inputs."""
        heads: dict[tuple[int, TaskPolicy], str] = {}
        parts = []
        for t in self._tasks:
            key = (id(t.fn), t.policy)
            head = heads.get(key)
            if head is None:
                head = heads[key] = _dumps(_task_json(t.fn, t.policy))[:-1] + ',"input_sources":'
            if t.sources is None:
                parts.append(head + "null}")
            else:
                sources = ",".join(f'{{"task_idx":{i},"position":{p}}}' for i, p in t.sources)
                parts.append(f"{head}[{sources}]}}")
        tail = {
            "commit_task": _termination_json(self._commit),
            "cleanup_task": _termination_json(self._cleanup),
        }
        return (
            f'{{"schema_version":{_dumps(SCHEMA_VERSION)},"tasks":[{",".join(parts)}],'
            f"{_dumps(tail)[1:]}"
        )

    def to_json(self) -> str:
        """The graph in the Spider task-graph JSON schema, validated by the Rust core."""
        if self._json is None:
            if not self._tasks:
                raise errors.InvalidGraph("the graph has no tasks")
            text = self._serialize()
            try:
                _core.TaskGraph.from_json(text)
            except _core.InvalidGraphError as exc:
                raise errors.InvalidGraph(str(exc)) from None
            self._json = text
        return self._json

    def compressed(self) -> bytes:
        """The zstd-compressed JSON graph (the wire form)."""
        if self._compressed is None or self._json is None:
            self._compressed = _core.compress(self.to_json().encode())
        return self._compressed

    # -- values ----------------------------------------------------------------------------------

    def encode_inputs(self, values: Sequence[Any]) -> bytes:
        """Type-check the job inputs and encode them: one msgpack payload per graph input, in a
        wire frame, zstd-compressed. Raises `InvalidInput` naming the input at fault."""
        if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Sequence):
            raise errors.InvalidInput(
                f"job inputs must be a list with one value per graph input, got "
                f"{describe_value(values)}"
            )
        specs = self.graph_inputs
        if len(values) != len(specs):
            expected = (
                ", ".join(f"{s.param}: {s.type.name} (task {s.task_index})" for s in specs)
                or "none"
            )
            raise errors.InvalidInput(
                f"expected {len(specs)} inputs, got {len(values)} (graph inputs: {expected})"
            )
        payloads = []
        for spec, value in zip(specs, values, strict=True):
            try:
                payloads.append(spec.type.encode(value))
            except ValueMismatchError as exc:
                raise errors.InvalidInput(
                    f"graph input {spec.index} (task {spec.task_index} `{spec.function}`, "
                    f"parameter `{spec.param}` of type {spec.type.name}): {exc}"
                ) from None
        return _core.compress(_core.wire_encode(payloads))

    def decode_outputs(self, payloads: Sequence[bytes]) -> list[Any]:
        """Decode the job outputs (one msgpack payload each) into typed Python values."""
        specs = self.graph_outputs
        if len(payloads) != len(specs):
            raise errors.InvalidArgument(
                f"the graph has {len(specs)} job outputs but {len(payloads)} were given"
            )
        out = []
        for spec, data in zip(specs, payloads, strict=True):
            try:
                out.append(spec.type.decode(data))
            except ValueMismatchError as exc:
                raise errors.InvalidArgument(
                    f"job output {spec.index} (output {spec.position} of task "
                    f"{spec.task_index} `{spec.function}`, type {spec.type.name}): {exc}"
                ) from None
        return out

    def decode_serialized_outputs(self, data: bytes) -> list[Any]:
        """Decode job outputs in the self-describing form storage keeps (option byte + frame)."""
        try:
            payloads = _core.decode_outputs(data)
        except _core.CodecError as exc:
            raise errors.InvalidArgument(f"malformed job outputs: {exc}") from None
        return self.decode_outputs(payloads)

    def __repr__(self) -> str:
        return f"<TaskGraph with {len(self._tasks)} tasks>"


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _task_json(fn: TaskFunction[Any, Any], policy: TaskPolicy) -> dict[str, Any]:
    """A task's JSON object without its ``input_sources``."""
    d: dict[str, Any] = {"tdl_context": _tdl_context(fn)}
    policy_json = policy.to_json()
    if policy_json is not None:
        d["execution_policy"] = policy_json
    d["inputs"] = [p.type.descriptor for p in fn.params]
    d["outputs"] = [vt.descriptor for vt in fn.outputs]
    return d


def _tdl_context(fn: TaskFunction[Any, Any]) -> dict[str, str]:
    return {"package": fn.package, "task_func": fn.task_func}


def _termination(kind: str, fn: TaskFunction[Any, Any] | None) -> TaskFunction[Any, Any] | None:
    if fn is None:
        return None
    if not isinstance(fn, TaskFunction):
        raise errors.InvalidGraph(f"{kind} task: {fn!r} is not an @orbweaver.task function")
    try:
        fn.package  # noqa: B018
    except errors.InvalidArgument as exc:
        raise errors.InvalidGraph(f"{kind} task: {exc}") from None
    if fn.params or fn.outputs:
        raise errors.InvalidGraph(
            f"{kind} task `{fn.qualified_name}` must take no parameters besides the optional "
            f"TaskContext and return None (it has {len(fn.params)} parameters and "
            f"{len(fn.outputs)} outputs); the context carries the "
            f"{'job outputs' if kind == 'commit' else 'graph inputs'}"
        )
    return fn


def _termination_json(fn: TaskFunction[Any, Any] | None) -> dict[str, Any] | None:
    if fn is None:
        return None
    d: dict[str, Any] = {"tdl_context": _tdl_context(fn)}
    policy = fn.policy.to_json()
    if policy is not None:
        d["execution_policy"] = policy
    return d
