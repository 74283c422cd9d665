"""Graph inputs are checked against their declared types at submission: everything the Python
client's encoder produces for a type is accepted, every other msgpack type is refused."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbweaver import Float32, Int8, Int16, Int32
from orbweaver import _core as core
from orbweaver.tdl.types import value_type

from ._helpers import graph


@dataclasses.dataclass
class Point:
    x: Int32
    y: float
    label: str


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    tags: dict[str, bytes]
    closed: bool


def _ints(bits: int) -> st.SearchStrategy[int]:
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


_points = st.builds(Point, _ints(32), st.floats(), st.text())
CASES: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (int, _ints(64)),
    (Int8, _ints(8)),
    (Int16, _ints(16)),
    (Int32, _ints(32)),
    (float, st.floats()),
    (Float32, st.floats(width=32)),
    (bool, st.booleans()),
    (bytes, st.binary(max_size=300)),
    (str, st.text(max_size=100)),
    (list[int], st.lists(_ints(64), max_size=20)),
    (list[list[str]], st.lists(st.lists(st.text(max_size=5), max_size=4), max_size=4)),
    (dict[str, Int8], st.dictionaries(st.text(max_size=10), _ints(8), max_size=10)),
    (dict[Int16, list[bytes]], st.dictionaries(_ints(16), st.lists(st.binary(max_size=9)))),
    (dict[bytes, float], st.dictionaries(st.binary(max_size=8), st.floats(), max_size=10)),
    (Point, _points),
    (
        Shape,
        st.builds(
            Shape,
            st.text(max_size=10),
            st.lists(_points, max_size=4),
            st.dictionaries(st.text(max_size=5), st.binary(max_size=5), max_size=3),
            st.booleans(),
        ),
    ),
    (list[Shape], st.lists(st.builds(Shape, st.text(), st.just([]), st.just({}), st.booleans()))),
]


def _type_json(annotation: Any) -> str:
    return json.dumps(value_type(annotation).descriptor, separators=(",", ":"))


@pytest.mark.parametrize(("annotation", "values"), CASES, ids=[str(c[0]) for c in CASES])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_value_the_client_encodes_is_accepted(
    annotation: Any, values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    vt = value_type(annotation)
    payload = vt.encode(data.draw(values))
    core.validate_value(_type_json(annotation), payload)


@settings(max_examples=300, deadline=None)
@given(
    annotation=st.sampled_from([c[0] for c in CASES]),
    payload=st.binary(max_size=64),
)
def test_random_bytes_are_refused_cleanly_or_accepted(annotation: Any, payload: bytes) -> None:
    try:
        core.validate_value(_type_json(annotation), payload)
    except core.InvalidInputValueError as e:
        assert e.kind == "InvalidInputValue" and str(e)


@pytest.mark.parametrize(
    ("annotation", "value", "message"),
    [
        (Int32, "7", "expected Int32, got str"),
        (Int8, 300, "value 300 out of range for Int8"),
        (int, (1 << 63) - 1, None),
        (int, 1 << 63, "value 9223372036854775808 out of range for Int64"),
        (int, -(1 << 63), None),
        (float, 1, "expected Float64, got int"),
        (bytes, "text", "expected Bytes, got str"),
        (str, b"raw", "expected String, got bin"),
        (bool, 0, "expected Boolean, got int"),
        (list[int], {"a": 1}, "expected List[Int64], got map"),
        (list[int], [1, 2, "x"], "at [2]: expected Int64, got str"),
        (dict[str, int], {1: 1}, "at {entry 0: key}: expected String key, got int"),
        (Point, {"x": 1, "y": 2.0, "label": "p"}, "expected Struct"),
        (Point, [1, None], "at [1]: expected a value of an Orbweaver type, got nil"),
    ],
)
def test_other_msgpack_types_are_refused(annotation: Any, value: Any, message: str | None) -> None:
    payload = msgpack.packb(value, use_bin_type=True)
    if message is None:
        core.validate_value(_type_json(annotation), payload)
        return
    with pytest.raises(core.InvalidInputValueError) as e:
        core.validate_value(_type_json(annotation), payload)
    assert message in str(e.value)


def test_payloads_that_are_not_one_msgpack_value_are_refused() -> None:
    bytes_type = _type_json(bytes)
    for payload, message in [
        (b"", "not valid msgpack: truncated"),
        (b"\xc1", "reserved byte 0xc1"),
        (msgpack.packb(b"x") + b"\x00", "1 trailing bytes"),
        (b"\xc4\x09ab", "truncated"),
    ]:
        with pytest.raises(core.InvalidInputValueError, match=message):
            core.validate_value(bytes_type, payload)
    deep = b"\x91" * 100_000 + b"\x01"
    with pytest.raises(core.InvalidInputValueError, match="deeper than 512"):
        core.validate_value(_type_json(Point), deep)
    with pytest.raises(core.InvalidRequestError):
        core.validate_value("{}", b"\x01")


def _int_graph() -> bytes:
    t = {
        "tdl_context": {"package": "pkg", "task_func": "fn"},
        "inputs": [value_type(bytes).descriptor, value_type(Int32).descriptor],
        "outputs": [],
        "input_sources": None,
    }
    return core.compress(json.dumps(graph([t])).encode())


def test_a_submission_names_the_input_task_and_position_at_fault() -> None:
    g = _int_graph()
    ok = [msgpack.packb(b"x"), msgpack.packb(5)]
    assert core.Submission(g, core.compress(core.wire_encode(ok))).num_inputs == 2
    for inputs, message in [
        (
            [msgpack.packb(b"x"), msgpack.packb("5")],
            "graph input 1 (task 0 `pkg.fn`, input 1): expected Int32, got str",
        ),
        (
            [msgpack.packb(b"x"), msgpack.packb(1 << 40)],
            f"graph input 1 (task 0 `pkg.fn`, input 1): value {1 << 40} out of range for Int32",
        ),
    ]:
        with pytest.raises(core.InvalidInputValueError) as e:
            core.Submission(g, core.compress(core.wire_encode(inputs)))
        assert str(e.value) == message
        assert e.value.kind == "InvalidInputValue"
        assert isinstance(e.value, core.InvalidGraphError)
    with pytest.raises(core.InvalidInputValueError, match=r"input 0.*not valid msgpack"):
        core.Submission(g, core.compress(core.wire_encode([b"\xc4\x05", msgpack.packb(1)])))
    shared = core.Submission(g, core.compress(core.wire_encode(ok))).graph
    with pytest.raises(core.InvalidInputValueError):
        core.Submission.with_graph(
            shared, core.compress(core.wire_encode([b"raw", msgpack.packb(1)]))
        )
