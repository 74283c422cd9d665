"""Hostile executor frames: whatever a broken pool writes to a real executor process, it answers
each task request with a well-formed response (an error for a malformed one), or exits with its
protocol-error status; it never hangs and never dies with a traceback. And the frame decoder
raises nothing but `ProtocolError` for any bytes."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orbweaver.worker.protocol import FrameReader, ProtocolError, decode_body
from support.fuzzing import check_executor_frame, executor_frames

TASKS = Path(__file__).resolve().parents[1] / "worker" / "tasks"
NAMES = [("integration_tasks", "fibonacci"), ("integration_tasks", "always_fail")]
EXAMPLES = max(10, int(os.environ.get("ORBWEAVER_FUZZ_EXAMPLES", "150")) // 5)
EXIT_OK, EXIT_PROTOCOL = 0, 3


@settings(max_examples=EXAMPLES * 10, deadline=None, database=None)
@given(data=st.binary(max_size=200))
def test_the_frame_reader_raises_only_protocol_errors(data: bytes) -> None:
    reader = FrameReader(io.BytesIO(data), max_bytes=1 << 20)
    try:
        while reader.read() is not None:
            pass
    except ProtocolError:
        pass
    with contextlib.suppress(ProtocolError):
        decode_body(data)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(frame=executor_frames(NAMES))
def test_an_executor_answers_or_refuses_any_frame(frame: bytes) -> None:
    check_executor_frame(frame, TASKS)
