"""Codecs, constants and small helpers of `orbweaver._core`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orbweaver import _core as core

payload_lists = st.lists(st.binary(max_size=2048), max_size=12)


def test_constants() -> None:
    assert (core.JOB_READY, core.JOB_CANCELLED) == (1, 7)
    assert [core.LANE_TASK, core.LANE_COMMIT, core.LANE_CLEANUP] == [0, 1, 2]
    assert core.TASK_COMMIT < 0 and core.TASK_CLEANUP < 0 and core.TASK_COMMIT != core.TASK_CLEANUP
    assert (
        len(
            {
                core.OUTCOME_JOB_COMPLETED,
                core.OUTCOME_JOB_FAILED,
                core.OUTCOME_COMMIT_SUCCEEDED,
                core.OUTCOME_CLEANUP_SUCCEEDED,
            }
        )
        == 4
    )
    assert isinstance(core.__version__, str) and core.__version__


def test_wire_layout() -> None:
    assert core.wire_encode([]) == b"\0\0\0\0"
    assert core.wire_encode([b"ab", b""]) == b"\x02\0\0\0\x02\0\0\0ab\0\0\0\0"
    assert core.wire_decode(b"\x01\0\0\0\x01\0\0\0z") == [b"z"]


@given(payload_lists)
def test_wire_round_trip(payloads: list[bytes]) -> None:
    assert core.wire_decode(core.wire_encode(payloads)) == payloads


@given(payload_lists)
def test_outputs_round_trip(payloads: list[bytes]) -> None:
    enc = core.encode_outputs(payloads)
    assert enc[0] == (1 if sum(map(len, payloads)) > 1024 else 0)
    assert core.decode_outputs(enc) == payloads


@given(st.binary(max_size=4096))
def test_zstd_round_trip(data: bytes) -> None:
    assert core.decompress(core.compress(data)) == data


@given(st.binary(max_size=64))
def test_garbage_never_crashes(data: bytes) -> None:
    for fn in (core.wire_decode, core.decode_outputs, core.decompress):
        try:
            fn(data)
        except core.CodecError as e:
            assert e.kind
            assert isinstance(e, ValueError)


@pytest.mark.parametrize(
    "frame",
    [b"", b"\x01", b"\x01\0\0\0", b"\x01\0\0\0\x05\0\0\0ab", b"\xff\xff\xff\xff", b"\0\0\0\0x"],
)
def test_malformed_frames(frame: bytes) -> None:
    with pytest.raises(core.CodecError) as e:
        core.wire_decode(frame)
    assert e.value.kind == "MalformedWireFrame"


def test_malformed_outputs() -> None:
    for bad in (b"", b"\x02\0\0\0\0", b"\x01garbage"):
        with pytest.raises(core.CodecError):
            core.decode_outputs(bad)


def test_zstd_bomb_is_bounded() -> None:
    bomb = core.compress(bytes(32 << 20))
    assert len(bomb) < 32 << 10
    with pytest.raises(core.CodecError, match="more than 1048576 bytes") as e:
        core.decompress(bomb, 1 << 20)
    assert e.value.kind == "DecompressedTooLarge"
    assert len(core.decompress(bomb, 32 << 20)) == 32 << 20
    with pytest.raises(core.CodecError):
        core.decode_outputs(b"\x01" + bomb, 1 << 20)


def test_sequences_of_bytes_only() -> None:
    with pytest.raises(TypeError):
        core.wire_encode(["text"])  # type: ignore[list-item]
    assert core.wire_encode((b"a",)) == core.wire_encode([b"a"])


def test_transition_table() -> None:
    allowed = {
        (core.JOB_READY, core.JOB_RUNNING),
        (core.JOB_RUNNING, core.JOB_COMMIT_READY),
        (core.JOB_RUNNING, core.JOB_CLEANUP_READY),
        (core.JOB_COMMIT_READY, core.JOB_CLEANUP_READY),
        (core.JOB_RUNNING, core.JOB_SUCCEEDED),
        (core.JOB_COMMIT_READY, core.JOB_SUCCEEDED),
        (core.JOB_RUNNING, core.JOB_FAILED),
        (core.JOB_COMMIT_READY, core.JOB_FAILED),
        (core.JOB_CLEANUP_READY, core.JOB_FAILED),
        (core.JOB_READY, core.JOB_CANCELLED),
        (core.JOB_RUNNING, core.JOB_CANCELLED),
        (core.JOB_CLEANUP_READY, core.JOB_CANCELLED),
    }
    for a in range(1, 8):
        for b in range(1, 8):
            assert core.is_valid_transition(a, b) == ((a, b) in allowed)
    assert [core.is_terminal(s) for s in range(1, 8)] == [False] * 4 + [True] * 3
    with pytest.raises(core.InvalidRequestError):
        core.is_terminal(0)


@pytest.mark.parametrize(("package", "func"), [("pkg", "f"), ("_p", "A.b_c"), ("p" * 255, "f")])
def test_valid_task_names(package: str, func: str) -> None:
    core.validate_task_name(package, func)


@pytest.mark.parametrize(
    ("package", "func"),
    [
        ("", "f"),
        ("a/b", "f"),
        ("..", "f"),
        ("p", "a..b"),
        ("p", "/abs"),
        ("p", "a."),
        ("1p", "f"),
        ("p" * 256, "f"),
        ("p", "os.system('x')"),
        ("pé", "f"),
    ],
)
def test_invalid_task_names(package: str, func: str) -> None:
    with pytest.raises(core.InvalidGraphError) as e:
        core.validate_task_name(package, func)
    assert e.value.kind == "InvalidTaskName"
    assert isinstance(e.value, ValueError) and isinstance(e.value, core.CoreError)


def test_exception_hierarchy() -> None:
    for cls in (core.InvalidGraphError, core.CodecError, core.InvalidRequestError):
        assert issubclass(cls, core.CoreError) and issubclass(cls, ValueError)
    assert issubclass(core.JobNotFoundError, LookupError)
    for other in (core.StaleError, core.RecoveryError, core.InternalError):
        assert issubclass(other, core.CoreError) and not issubclass(other, ValueError)
    assert core.StaleError.kind == "StaleError"
    assert core.CoreError.__module__ == "orbweaver._core"
