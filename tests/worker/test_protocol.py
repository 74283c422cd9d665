"""The executor protocol without processes: every message survives a round trip in its version-1
wire form, decoding names the field that is wrong, and the one frame decoder gives the same
messages however the bytes are cut -- and for garbage raises nothing but `ProtocolError`."""

from __future__ import annotations

import io
import itertools
import os
import re
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbweaver.worker.protocol import (
    HEADER_BYTES,
    PROTOCOL_VERSION,
    BytesLike,
    FrameDecoder,
    FrameReader,
    FrameTooLargeError,
    Hello,
    Message,
    ProtocolError,
    RejectedTask,
    RunRequest,
    RunTask,
    Shutdown,
    TaskError,
    TaskFailed,
    TaskSucceeded,
    decode_body,
    decode_executor_message,
    decode_message,
    decode_pool_message,
)
from support.fuzzing import executor_frames, msgpack_payloads

pytestmark = pytest.mark.timeout(120)

EXAMPLES = max(50, int(os.environ.get("ORBWEAVER_FUZZ_EXAMPLES", "150")))

_INTS = st.integers(-(2**63), 2**64 - 1)  # every int msgpack carries
_TEXT = st.text(max_size=20)
_BLOBS = st.binary(max_size=300)

hellos = st.builds(Hello, pid=_INTS, version=_TEXT, protocol=_INTS)
run_tasks = st.builds(
    RunTask,
    id=_INTS,
    package=_TEXT,
    func=_TEXT,
    job_id=_INTS,
    task_id=_INTS,
    instance_id=_INTS,
    resource_group_id=_INTS,
    io=_BLOBS,
)
run_requests = st.builds(RunRequest, st.lists(run_tasks, max_size=4).map(tuple))
shutdowns = st.just(Shutdown())
successes = st.builds(TaskSucceeded, id=_INTS, outputs=_BLOBS, elapsed_us=_INTS)
failures = st.builds(
    TaskFailed,
    id=_INTS,
    error=st.builds(TaskError, type=_TEXT, message=st.text(max_size=200), traceback=st.text()),
    elapsed_us=_INTS,
)
pool_messages = st.one_of(run_requests, shutdowns)
executor_messages = st.one_of(hellos, successes, failures)
messages = st.one_of(pool_messages, executor_messages)


def body(message: Message) -> bytes:
    return message.encode()[HEADER_BYTES:]


def frame_of(wire: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(wire, use_bin_type=True)
    return struct.pack(">I", len(packed)) + packed


# -------------------------------------------------------------------------------------------------
# Messages
# -------------------------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES)
@given(message=messages)
def test_every_message_survives_a_round_trip(message: Message) -> None:
    assert decode_message(body(message)) == message
    assert FrameDecoder(decode_message).feed(message.encode()) == [message]


@settings(max_examples=EXAMPLES)
@given(message=pool_messages)
def test_pool_messages_decode_only_as_pool_messages(message: Message) -> None:
    assert decode_pool_message(body(message)) == message
    with pytest.raises(ProtocolError) as info:
        decode_executor_message(body(message))
    assert info.value.field == "op"


@settings(max_examples=EXAMPLES)
@given(message=executor_messages)
def test_executor_messages_decode_only_as_executor_messages(message: Message) -> None:
    assert decode_executor_message(body(message)) == message
    with pytest.raises(ProtocolError) as info:
        decode_pool_message(body(message))
    assert info.value.field == "op"


_TASK = RunTask(4, "pkg", "mod.fn", 7, -1, 11, 5, b"\x00io")


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (Hello(12, "0.1.0"), {"op": "hello", "pid": 12, "version": "0.1.0", "protocol": 1}),
        (
            RunRequest((_TASK,)),
            {
                "op": "run",
                "tasks": [
                    {
                        "id": 4,
                        "package": "pkg",
                        "func": "mod.fn",
                        "ctx": {
                            "job_id": 7,
                            "task_id": -1,
                            "instance_id": 11,
                            "resource_group_id": 5,
                        },
                        "io": b"\x00io",
                    }
                ],
            },
        ),
        (Shutdown(), {"op": "shutdown"}),
        (
            TaskSucceeded(4, b"out", 250),
            {"id": 4, "ok": True, "outputs": b"out", "elapsed_us": 250},
        ),
        (
            TaskFailed(4, TaskError("ValueError", "bad", "Traceback ..."), 9),
            {
                "id": 4,
                "ok": False,
                "error": {"type": "ValueError", "message": "bad", "traceback": "Traceback ..."},
                "elapsed_us": 9,
            },
        ),
    ],
    ids=["hello", "run", "shutdown", "succeeded", "failed"],
)
def test_the_wire_format_is_that_of_version_1(message: Message, wire: dict[str, Any]) -> None:
    # A change here is a new protocol version: bump PROTOCOL_VERSION (the pool checks it).
    assert PROTOCOL_VERSION == 1
    assert message.encode() == frame_of(wire)
    assert decode_message(frame_of(wire)[HEADER_BYTES:]) == message


def test_a_frame_is_a_big_endian_length_and_a_msgpack_map() -> None:
    assert Shutdown().encode() == b"\x00\x00\x00\x0d\x81\xa2op\xa8shutdown"


# -- fields --------------------------------------------------------------------------------------

_KINDS: dict[str, type] = {
    "op": str,
    "pid": int,
    "version": str,
    "protocol": int,
    "tasks": list,
    "id": int,
    "package": str,
    "func": str,
    "ctx": dict,
    "job_id": int,
    "task_id": int,
    "instance_id": int,
    "resource_group_id": int,
    "io": bytes,
    "ok": bool,
    "outputs": bytes,
    "error": dict,
    "type": str,
    "message": str,
    "traceback": str,
    "elapsed_us": int,
}
_VALUES: list[Any] = [None, True, 3, 2.5, "text", b"bin", [1, 2], {"k": 1}]


def _paths(value: Any, prefix: str = "") -> list[str]:
    """Every field of a wire map, nested ones included (``tasks[0].ctx.job_id``)."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        path = f"{prefix}[{key}]" if isinstance(value, list) else f"{prefix}{key}"
        found.append(path)
        if isinstance(item, dict):
            found += _paths(item, path + ".")
        elif isinstance(item, list):
            found += _paths(item, path)
    return found


def _locate(wire: dict[str, Any], path: str) -> tuple[Any, Any]:
    """The container of the field at `path` and its key there."""
    steps = path.replace("[", ".[").split(".")
    container: Any = wire
    for step in steps[:-1]:
        container = container[int(step[1:-1])] if step.startswith("[") else container[step]
    last = steps[-1]
    return container, int(last[1:-1]) if last.startswith("[") else last


def _kind(path: str) -> type:
    last = path.rsplit(".", 1)[-1]
    return dict if last.endswith("]") else _KINDS[last]


def _wrong(value: Any, kind: type) -> bool:
    return not isinstance(value, kind) or (kind is int and isinstance(value, bool))


@st.composite
def broken_fields(draw: st.DrawFn) -> tuple[Message, str, dict[str, Any]]:
    """A message, one of its fields, and its wire map with that field of a wrong type or
    missing."""
    message = draw(messages)
    wire = decode_body(body(message))
    path = draw(st.sampled_from(_paths(wire)))
    container, key = _locate(wire, path)
    if key != "op" and isinstance(container, dict) and draw(st.booleans()):
        del container[key]
    else:
        container[key] = draw(st.sampled_from([v for v in _VALUES if _wrong(v, _kind(path))]))
    return message, path, wire


@settings(max_examples=EXAMPLES * 2)
@given(case=broken_fields())
def test_a_wrong_field_is_named(case: tuple[Message, str, dict[str, Any]]) -> None:
    message, path, wire = case
    decode: Callable[[BytesLike], Message]
    decode = decode_pool_message if isinstance(message, RunRequest) else decode_executor_message
    task_field = path.startswith("tasks[") and "." in path and not path.endswith(".id")
    if not task_field:
        with pytest.raises(ProtocolError) as info:
            decode(frame_of(wire)[HEADER_BYTES:])
        assert info.value.field == path
        assert f"`{path}`" in str(info.value)
        return
    # A task whose id is readable is rejected alone; the others are decoded.
    assert isinstance(message, RunRequest)
    decoded = decode(frame_of(wire)[HEADER_BYTES:])
    assert isinstance(decoded, RunRequest)
    index = int(path[len("tasks[") : path.index("]")])
    for i, (sent, got) in enumerate(zip(message.tasks, decoded.tasks, strict=True)):
        if i != index:
            assert got == sent
            continue
        assert isinstance(got, RejectedTask) and isinstance(sent, RunTask)
        assert got.id == sent.id
        assert got.field == path.split(".", 1)[1]
        assert f"`{path}`" in got.reason


def test_a_task_with_a_wrong_field_is_rejected_alone() -> None:
    bad = _TASK.to_wire() | {"id": 8, "io": "text"}
    request = decode_pool_message(frame_of({"op": "run", "tasks": [bad, _TASK.to_wire()]})[4:])
    assert request == RunRequest(
        (
            RejectedTask(8, "io", "field `tasks[0].io` must be bytes, got str 'text'"),
            _TASK,
        )
    )
    with pytest.raises(ValueError, match="task 8 was rejected"):
        request.encode()


def test_an_int_is_never_a_bool_nor_a_bool_an_int() -> None:
    with pytest.raises(ProtocolError, match="field `pid` must be an int, got bool True"):
        decode_executor_message(
            frame_of({"op": "hello", "pid": True, "version": "", "protocol": 1})[4:]
        )
    with pytest.raises(ProtocolError, match="field `ok` must be a bool, got int 1"):
        decode_executor_message(frame_of({"id": 1, "ok": 1, "outputs": b"", "elapsed_us": 0})[4:])


def test_unknown_ops_and_bodies_that_are_not_maps() -> None:
    with pytest.raises(ProtocolError, match=r"unexpected request op 'stop'"):
        decode_pool_message(frame_of({"op": "stop"})[4:])
    with pytest.raises(ProtocolError, match=r"a frame must hold a map, got list"):
        decode_message(msgpack.packb([1, 2]))
    with pytest.raises(ProtocolError, match=r"malformed frame body: .*extra data"):
        decode_message(msgpack.packb({}) + b"\x00")


# -------------------------------------------------------------------------------------------------
# Frames
# -------------------------------------------------------------------------------------------------


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=EXAMPLES)
@given(sent=st.lists(messages, max_size=6), data=st.data())
def test_any_split_of_a_stream_yields_the_same_messages(sent: list[Message], data: Any) -> None:
    stream = b"".join(m.encode() for m in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    decoder = FrameDecoder(decode_message)
    received = []
    for chunk in _cut(stream, cuts):
        received += decoder.feed(chunk)
        assert decoder.wanted >= 1
    assert received == sent
    assert decoder.at_boundary
    decoder.end()
    reader = FrameReader(io.BytesIO(stream))
    assert [reader.read() for _ in sent] == sent
    assert reader.read() is None


def _decode_all(chunks: list[bytes], max_bytes: int) -> tuple[list[Message], str | None]:
    """What a decoder makes of a stream cut into `chunks`: the messages, then the error."""
    decoder = FrameDecoder(decode_message, max_bytes)
    received: list[Message] = []
    try:
        for chunk in chunks:
            received += decoder.feed(chunk)
        received += decoder.feed()
        decoder.end()
    except ProtocolError as exc:
        return received, f"{type(exc).__name__}: {exc}"
    return received, None


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """Streams from plausible to absurd: good frames around bad ones, frames of arbitrary
    msgpack, lying headers, flipped and missing bytes, any bytes at all."""
    parts = draw(
        st.lists(
            st.one_of(
                messages.map(lambda m: m.encode()),
                msgpack_payloads().map(lambda b: struct.pack(">I", len(b)) + b),
                executor_frames([("pkg", "fn")]),
                st.binary(max_size=16),
            ),
            min_size=1,
            max_size=5,
        )
    )
    stream = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 3))):
        if not stream:
            break
        pos = draw(st.integers(0, len(stream) - 1))
        if draw(st.booleans()):
            stream[pos] ^= draw(st.integers(1, 255))
        else:
            del stream[pos:]
    return bytes(stream)


@settings(max_examples=EXAMPLES * 2)
@given(stream=garbage(), data=st.data())
def test_garbage_raises_only_protocol_errors_wherever_it_is_cut(stream: bytes, data: Any) -> None:
    whole = _decode_all([stream], 1 << 16)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert _decode_all(_cut(stream, cuts), 1 << 16) == whole
    reader = FrameReader(io.BytesIO(stream), 1 << 16)
    received: list[Message] = []
    try:
        while (message := reader.read()) is not None:
            received.append(message)
    except ProtocolError as exc:
        assert (received, f"{type(exc).__name__}: {exc}") == whole
    else:
        assert (received, None) == whole


def test_messages_before_a_malformed_frame_come_first() -> None:
    good = TaskSucceeded(1, b"out", 5)
    decoder = FrameDecoder(decode_executor_message)
    bad = frame_of({"id": 2, "ok": "yes"})
    assert decoder.feed(good.encode() + bad + good.encode()) == [good]
    with pytest.raises(ProtocolError, match="field `ok` must be a bool, got str 'yes'"):
        decoder.feed()
    with pytest.raises(ProtocolError, match="field `ok`"):  # a decoder that failed stays failed
        decoder.feed(good.encode())
    with pytest.raises(ProtocolError, match="field `ok`"):
        decoder.end()


def test_the_size_bound_applies_as_soon_as_the_header_is_in() -> None:
    decoder = FrameDecoder(decode_message, max_bytes=100)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(b"\x00\x65")  # 101 bytes announced, none of them sent
    assert (info.value.size, info.value.limit) == (101, 100)
    assert "frame of 101 bytes exceeds the executor frame limit of 100 bytes" in str(info.value)


def test_a_frame_of_exactly_the_limit_passes_and_one_byte_more_does_not() -> None:
    overhead = len(TaskSucceeded(1, b"", 0).encode()) - HEADER_BYTES
    limit = 1000
    # Outputs of 256 bytes or more take a 3-byte bin header, the empty ones a 2-byte one.
    fits = TaskSucceeded(1, b"x" * (limit - overhead - 1), 0)
    assert len(fits.encode()) - HEADER_BYTES == limit
    assert FrameDecoder(decode_message, limit).feed(fits.encode(limit)) == [fits]
    too_large = TaskSucceeded(1, b"x" * (limit - overhead), 0)
    with pytest.raises(FrameTooLargeError, match="frame of 1001 bytes"):
        too_large.encode(limit)
    with pytest.raises(FrameTooLargeError):
        FrameDecoder(decode_message, limit).feed(too_large.encode())


def test_the_end_of_a_stream_inside_a_frame_is_an_error() -> None:
    frame = Hello(1, "v").encode()
    for cut, what in ((2, "frame header (2/4 bytes)"), (HEADER_BYTES + 3, "frame (3/")):
        decoder = FrameDecoder(decode_executor_message)
        assert decoder.feed(frame[:cut]) == []
        assert not decoder.at_boundary
        with pytest.raises(ProtocolError, match=re.escape(f"stream ended inside a {what}")):
            decoder.end()
        with pytest.raises(ProtocolError, match="stream ended inside a"):
            FrameReader(io.BytesIO(frame[:cut])).read()


def test_the_blocking_reader_never_waits_for_bytes_past_its_frame() -> None:
    # The writer keeps its end open: a reader asking for more than one frame would hang here.
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as stream, os.fdopen(write_fd, "wb", buffering=0) as pipe:
        reader = FrameReader(stream, decode=decode_pool_message)
        for message in (RunRequest((_TASK, _TASK)), Shutdown(), RunRequest(())):
            pipe.write(message.encode())
            assert reader.read() == message
        pipe.write(Shutdown().encode()[:3])
        pipe.close()
        with pytest.raises(ProtocolError, match="stream ended inside a frame header"):
            reader.read()


@pytest.mark.parametrize("cuts", [[], [2], [HEADER_BYTES], [1000, 70_000, 70_001]])
def test_a_large_frame_decodes_whole_or_in_pieces(cuts: list[int]) -> None:
    message = TaskSucceeded(3, os.urandom(200_000), 1)
    decoder = FrameDecoder(decode_executor_message)
    received = [m for chunk in _cut(message.encode(), cuts) for m in decoder.feed(chunk)]
    assert received == [message]
    assert decoder.at_boundary


def test_a_decoder_keeps_no_hold_on_a_buffer_it_was_fed() -> None:
    # The caller may resize its buffer afterwards, even after a malformed frame.
    buffer = bytearray(Hello(1, "v").encode() + frame_of({"op": 1}) + b"\x00")
    decoder = FrameDecoder(decode_executor_message)
    assert decoder.feed(buffer) == [Hello(1, "v")]
    buffer += b"more"
    with pytest.raises(ProtocolError, match="field `op` must be a str, got int 1"):
        decoder.feed()
    buffer.clear()
    large = TaskSucceeded(1, bytes(100_000), 0)
    buffer = bytearray(large.encode())
    assert FrameDecoder(decode_executor_message).feed(buffer) == [large]
    buffer += b"more"
    for bad in (frame_of({"op": 1}), b"\x00\x00\x00\x01\xc1"):
        buffer = bytearray(bad)
        with pytest.raises(ProtocolError):
            FrameDecoder(decode_executor_message).feed(buffer)
        buffer += b"more"
