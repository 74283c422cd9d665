"""Hypothesis strategies for hostile requests, shared by `tests/hostile` (a bounded number of
examples in every CI run) and `benches/fuzz.py` (long runs).

* `messages(descriptor)`: any protobuf message of the contract, field by field from its
  descriptor (every field type, oneofs, nested and repeated fields, out-of-range enum values),
  with wait/timeout fields kept short so a case never blocks;
* `graph_json()`: task-graph JSON from valid to absurd (wrong types, missing keys, huge indices,
  cycles, deep nesting);
* `msgpack_payloads()`: valid msgpack of every kind and arbitrary bytes;
* `wire_frames()`: input frames, well-formed or not;
* `executor_frames(names)`: what a broken pool could write to an executor.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import msgpack
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from orbweaver import _core
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver.worker.protocol import (
    FrameReader,
    Hello,
    TaskFailed,
    TaskSucceeded,
    decode_executor_message,
)

# Fields that make the server wait: kept short so that no example blocks for long.
_WAIT_FIELDS = frozenset({"wait_ms", "timeout_ms", "wait_time_ms"})
_U64 = st.one_of(
    st.integers(0, 8),
    st.integers(0, 2**16),
    st.integers(2**63 - 2, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
_U32 = st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1))
_I64 = st.integers(-(2**63), 2**63 - 1)


def _scalar(field: FieldDescriptor, ids: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    t = field.type
    if field.name in _WAIT_FIELDS:
        return st.integers(0, 30)
    if field.name.endswith("_id") and t in (FieldDescriptor.TYPE_UINT64,):
        return st.one_of(ids, _U64)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _U64
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _U32
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return _I64
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return st.integers(-(2**31), 2**31 - 1)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.text(max_size=40), st.text(min_size=200, max_size=400))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=64),
            st.builds(lambda g: _core.compress(g.encode()), graph_json()),
            st.builds(_core.compress, wire_frames()),
            wire_frames(),
        )
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(0, 12)  # proto3 enums are open: unknown values arrive too
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True)
    raise AssertionError(f"unhandled field type {t} of {field.full_name}")


def messages(
    descriptor: Descriptor, ids: st.SearchStrategy[int] | None = None, depth: int = 0
) -> st.SearchStrategy[Any]:
    """Messages of type `descriptor`; `ids` biases id fields towards values that exist."""
    ids = ids if ids is not None else st.integers(0, 8)
    cls = getattr(pb, descriptor.name, None) or _nested(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            inner = messages(field.message_type, ids, depth + 1)
        else:
            inner = _scalar(field, ids)
        if field.is_repeated:
            fields[field.name] = st.lists(inner, max_size=4)
        else:
            fields[field.name] = st.one_of(st.none(), inner)

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        message = cls()
        chosen_oneofs: set[str] = set()
        for field in descriptor.fields:
            if field.name not in fields:
                continue
            oneof = field.containing_oneof
            if oneof is not None and oneof.name in chosen_oneofs:
                continue
            value = draw(fields[field.name])
            if value is None or value == []:
                continue
            if oneof is not None:
                chosen_oneofs.add(oneof.name)
            if field.is_repeated:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    getattr(message, field.name).extend(value)
                else:
                    getattr(message, field.name).extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, field.name).CopyFrom(value)
            else:
                setattr(message, field.name, value)
        return message

    return build()


def _nested(descriptor: Descriptor) -> Any:
    outer = getattr(pb, descriptor.containing_type.name)
    return getattr(outer, descriptor.name)


# -- task graphs -------------------------------------------------------------------------------

_INT = {"Value": {"Primitive": {"Int": "Int64"}}}
_TYPES = st.sampled_from(
    [
        _INT,
        {"Value": {"Primitive": {"Int": "Int8"}}},
        {"Value": {"Primitive": {"Float": "Float32"}}},
        {"Value": {"Primitive": "Boolean"}},
        {"Value": {"Bytes": {}}},
        {"Value": {"String": {}}},
        {"Value": {"List": {"Primitive": {"Int": "Int64"}}}},
        {"Value": {"Map": {"key": {"String": {}}, "value": {"Bytes": {}}}}},
        {"Value": {"Struct": "Point"}},
        {"Value": {"Struct": ""}},
        {"Value": {"Nope": {}}},
        "Int64",
        None,
        42,
    ]
)
_NAMES = st.one_of(
    st.sampled_from(["pkg", "tasks", "a_b", "../evil", "os", "", "1abc", "a.b", "__import__"]),
    st.text(max_size=20),
)
_MSGPACK_INT = st.integers(-(2**63), 2**64 - 1)  # what msgpack can encode
_JSONISH = st.recursive(
    st.none() | st.booleans() | _MSGPACK_INT | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _task(draw: st.DrawFn, n_tasks: int) -> dict[str, Any]:
    inputs = draw(st.lists(_TYPES, max_size=4))
    task: dict[str, Any] = {
        "tdl_context": {"package": draw(_NAMES), "task_func": draw(_NAMES)},
        "inputs": inputs,
        "outputs": draw(st.lists(_TYPES, max_size=3)),
        "input_sources": draw(
            st.one_of(
                st.none(),
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "task_idx": st.one_of(st.integers(0, n_tasks), _U64),
                            "position": st.integers(-1, 4),
                        }
                    ),
                    max_size=len(inputs) + 1,
                ),
            )
        ),
    }
    if draw(st.booleans()):
        task["execution_policy"] = draw(
            st.fixed_dictionaries(
                {
                    "max_num_retry": st.integers(-1, 2**33),
                    "max_num_instances": st.integers(-1, 2**33),
                },
                optional={
                    "timeout_policy": st.fixed_dictionaries(
                        {
                            "soft_timeout_ms": st.integers(-1, 2**64),
                            "hard_timeout_ms": st.integers(-1, 2**64),
                        }
                    )
                },
            )
        )
    if draw(st.integers(0, 9)) == 0:
        task[draw(st.text(max_size=6))] = draw(_JSONISH)
    return task


@st.composite
def _graph(draw: st.DrawFn) -> str:
    n = draw(st.integers(0, 6))
    graph: dict[str, Any] = {
        "schema_version": draw(st.sampled_from(["0.1.0", "0.1.7", "0.2.0", "1.0", "", "x"])),
        "tasks": [draw(_task(n)) for _ in range(n)],
        "commit_task": draw(
            st.one_of(st.none(), st.just({"tdl_context": {"package": "p", "task_func": "c"}}))
        ),
        "cleanup_task": None,
    }
    if draw(st.integers(0, 9)) == 0:
        del graph[draw(st.sampled_from(sorted(graph)))]
    return json.dumps(graph)


def graph_json() -> st.SearchStrategy[str]:
    return st.one_of(_graph(), st.builds(json.dumps, _JSONISH), st.text(max_size=50))


# -- values --------------------------------------------------------------------------------------

_MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)


def msgpack_payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(lambda v: msgpack.packb(v, use_bin_type=True), _MSGPACK_VALUES),
        st.binary(max_size=32),
        st.just(b"\xc1"),  # never used in msgpack
        st.just(b"\xdd\xff\xff\xff\xff"),  # an array claiming 4 billion elements
        st.just(b"\x91" * 10_000 + b"\xc0"),  # 10,000 nested arrays
    )


def wire_frames() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(_core.wire_encode, st.lists(msgpack_payloads(), max_size=4)),
        st.binary(max_size=48),
        st.just(b"\xff\xff\xff\xff"),  # a count that cannot fit
    )


# -- executor frames ---------------------------------------------------------------------------

_HEADER = struct.Struct(">I")


@st.composite
def _task_request(draw: st.DrawFn, names: list[tuple[str, str]]) -> Any:
    package, func = draw(st.sampled_from([*names, ("os", "system"), ("../x", "y"), ("", "")]))
    request: dict[Any, Any] = {
        "id": draw(st.one_of(st.integers(-1, 2**64 - 1), st.none(), st.text(max_size=4))),
        "package": draw(st.one_of(st.just(package), st.text(max_size=12), _MSGPACK_INT)),
        "func": draw(st.one_of(st.just(func), st.text(max_size=12), st.none())),
        "ctx": draw(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "job_id": st.integers(0, 2**64 - 1),
                        "task_id": st.integers(-3, 2**32),
                        "instance_id": st.integers(0, 2**64 - 1),
                        "resource_group_id": st.integers(0, 9),
                    }
                ),
                _JSONISH,
            )
        ),
        "io": draw(st.one_of(wire_frames(), st.text(max_size=8), st.none())),
    }
    if draw(st.booleans()):
        del request[draw(st.sampled_from(sorted(request)))]
    return draw(st.one_of(st.just(request), _MSGPACK_VALUES))


@st.composite
def executor_frames(draw: st.DrawFn, names: list[tuple[str, str]]) -> bytes:
    """What a broken or hostile pool could write to an executor: well-framed run requests with
    wrong fields, other ops, bodies that are not msgpack maps, lying length headers."""
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        body = msgpack.packb(
            {"op": "run", "tasks": draw(st.lists(_task_request(names), max_size=3))},
            use_bin_type=True,
        )
    elif kind == 3:
        body = msgpack.packb(
            draw(st.dictionaries(st.text(max_size=6), _MSGPACK_VALUES, max_size=3)),
            use_bin_type=True,
        )
    elif kind == 4:
        body = draw(msgpack_payloads())
    else:
        return draw(st.binary(max_size=32))  # anything at all, header included
    claimed = draw(st.one_of(st.just(len(body)), st.integers(0, 2**32 - 1)))
    return _HEADER.pack(claimed) + body


# -- driving a storage process -------------------------------------------------------------------

STORAGE_SERVICES = (
    "JobOrchestrationService",
    "TaskInstanceManagementService",
    "InboundQueueService",
    "ResourceGroupManagementService",
    "ExecutionManagerLivenessService",
    "SchedulerRegistrationService",
    "SessionManagementService",
)


def storage_methods() -> list[tuple[str, str, Descriptor]]:
    """(service, method, request descriptor) of every storage RPC."""
    return [
        (service, method.name, method.input_type)
        for service in STORAGE_SERVICES
        for method in pb.DESCRIPTOR.services_by_name[service].methods
    ]


def call_raw(
    channel: grpc.Channel, service: str, method: str, request: Any, metadata: Any = ()
) -> grpc.StatusCode:
    """Send `request` (a message, or raw bytes) and return the status code."""
    serialize = (lambda m: m) if isinstance(request, bytes) else (lambda m: m.SerializeToString())
    fn = channel.unary_unary(
        f"/orbweaver.v1.{service}/{method}",
        request_serializer=serialize,
        response_deserializer=lambda b: b,
    )
    try:
        fn(request, metadata=metadata, timeout=20)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# A precise answer is anything but these.
IMPRECISE = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
)


# -- driving an executor -----------------------------------------------------------------------

EXIT_OK, EXIT_PROTOCOL = 0, 3


def run_executor(frame: bytes, tasks_dir: Path) -> tuple[int, bytes, bytes]:
    """Start an executor, skip its hello, write `frame`, close its input; (exit status,
    responses, log)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orbweaver.worker.executor", "--tasks-dir", str(tasks_dir),
         "--max-frame-bytes", str(1 << 20)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(frame)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    out = bytearray()
    deadline = time.monotonic() + 60
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the executor hung on {frame[:80]!r}"
        chunk = os.read(proc.stdout.fileno(), 1 << 16)
        if not chunk:
            break
        out += chunk
    status = proc.wait(30)
    return status, bytes(out), proc.stderr.read()


def check_executor_frame(frame: bytes, tasks_dir: Path) -> int:
    """Feed `frame` to a real executor: it answers each task request with a well-formed
    response or exits with its protocol-error status, without a traceback or a hang. Returns
    its exit status."""
    status, out, logs = run_executor(frame, tasks_dir)
    assert status in (EXIT_OK, EXIT_PROTOCOL), (status, frame[:80], logs[-2000:])
    assert b"Traceback" not in logs, logs[-2000:]
    # Decoding checks every field of every response (and raises on a malformed one).
    reader = FrameReader(io.BytesIO(out), decode=decode_executor_message)
    hello = reader.read()
    assert isinstance(hello, Hello), hello
    while (response := reader.read()) is not None:
        assert isinstance(response, (TaskSucceeded, TaskFailed)), response
        if isinstance(response, TaskFailed):
            assert response.error.type, response
    return status
