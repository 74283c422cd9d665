"""The pool <-> executor protocol: msgpack messages in length-prefixed frames over pipes.

A frame is a 4-byte big-endian body length followed by a msgpack map. Messages:

executor -> pool, once at start::

    {"op": "hello", "pid": int, "version": str, "protocol": int}

pool -> executor::

    {"op": "run", "tasks": [{"id": int, "package": str, "func": str,
                             "ctx": {"job_id": int, "task_id": int, "instance_id": int,
                                     "resource_group_id": int},
                             "io": bytes}, ...]}
    {"op": "shutdown"}

executor -> pool, one per task of a run request, in order, each as soon as the task finished::

    {"id": int, "ok": True, "outputs": bytes, "elapsed_us": int}
    {"id": int, "ok": False, "error": {"type": str, "message": str, "traceback": str},
     "elapsed_us": int}

`io` is the task's input: a wire frame of msgpack inputs for a regular task, the self-describing
job outputs for the commit task and a wire frame of the graph inputs for the cleanup task.
`outputs` is a wire frame of msgpack outputs. The executor exits with status 0 on `shutdown` or
when its stdin reaches end of file.
"""

from __future__ import annotations

import struct
from typing import IO, Any, Final

import msgpack

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "FrameReader",
    "FrameTooLargeError",
    "ProtocolError",
    "decode_body",
    "encode_frame",
]

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
_HEADER: Final = struct.Struct(">I")
HEADER_BYTES: Final = _HEADER.size


class ProtocolError(Exception):
    """A malformed or truncated frame."""


class FrameTooLargeError(ProtocolError):
    """A frame exceeds the configured maximum size."""

    def __init__(self, size: int, limit: int, what: str = "frame") -> None:
        super().__init__(
            f"{what} of {size} bytes exceeds the executor frame limit of {limit} bytes"
        )
        self.size = size
        self.limit = limit


def encode_frame(message: dict[str, Any], max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Header + msgpack body; raises `FrameTooLargeError` when the body exceeds `max_bytes`."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > max_bytes:
        raise FrameTooLargeError(len(body), max_bytes)
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"malformed frame body: {exc or type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a frame must hold a map, got {type(message).__name__}")
    return message


class FrameReader:
    """Reads frames from a binary stream (a pipe)."""

    def __init__(self, stream: IO[bytes], max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._stream = stream
        self._max = max_bytes

    def _read_exactly(self, n: int, at_boundary: bool) -> bytes | None:
        chunks = []
        remaining = n
        while remaining:
            chunk = self._stream.read(remaining)
            if not chunk:
                if at_boundary and remaining == n:
                    return None
                raise ProtocolError(f"stream ended inside a frame ({n - remaining}/{n} bytes)")
            chunks.append(chunk)
            remaining -= len(chunk)
            at_boundary = False
        return b"".join(chunks)

    def read(self) -> dict[str, Any] | None:
        """The next message, or None at a clean end of stream (between frames)."""
        header = self._read_exactly(HEADER_BYTES, at_boundary=True)
        if header is None:
            return None
        (size,) = _HEADER.unpack(header)
        if size > self._max:
            raise FrameTooLargeError(size, self._max)
        body = self._read_exactly(size, at_boundary=False)
        assert body is not None
        return decode_body(body)
