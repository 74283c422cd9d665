"""Value types: annotation -> Spider descriptor mapping and the msgpack codec."""

from __future__ import annotations

import math
import struct
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import orbweaver as ow
from orbweaver.tdl.types import (
    ValueMismatchError,
    decode_plain,
    decode_value,
    encode_value,
    type_descriptor,
    value_type,
)


@dataclass(frozen=True)
class Point:
    x: float
    y: ow.Int32


@dataclass
class Tagged:
    name: str
    data: bytes
    tags: list[str]
    weights: dict[str, float]


@dataclass
class Nested:
    origin: Point
    points: list[Point]
    by_id: dict[ow.Int16, Tagged]


@dataclass
class Tree:
    value: int
    children: list[Tree]


@dataclass
class Empty:
    pass


def INT(width: str) -> dict[str, Any]:
    return {"Value": {"Primitive": {"Int": width}}}


def _struct(cls: type) -> dict[str, Any]:
    return {"Value": {"Struct": f"{cls.__module__}.{cls.__qualname__}"}}


@pytest.mark.parametrize(
    ("annotation", "descriptor"),
    [
        (int, INT("Int64")),
        (ow.Int8, INT("Int8")),
        (ow.Int16, INT("Int16")),
        (ow.Int32, INT("Int32")),
        (ow.Int64, INT("Int64")),
        (float, {"Value": {"Primitive": {"Float": "Float64"}}}),
        (ow.Float64, {"Value": {"Primitive": {"Float": "Float64"}}}),
        (ow.Float32, {"Value": {"Primitive": {"Float": "Float32"}}}),
        (bool, {"Value": {"Primitive": "Boolean"}}),
        (bytes, {"Value": {"Bytes": {}}}),
        (str, {"Value": {"String": {}}}),
        (list[int], {"Value": {"List": {"Primitive": {"Int": "Int64"}}}}),
        (list[list[bytes]], {"Value": {"List": {"List": {"Bytes": {}}}}}),
        (typing.List[str], {"Value": {"List": {"String": {}}}}),  # noqa: UP006
        (
            dict[bytes, int],
            {"Value": {"Map": {"key": {"Bytes": {}}, "value": {"Primitive": {"Int": "Int64"}}}}},
        ),
        (
            dict[ow.Int32, list[float]],
            {
                "Value": {
                    "Map": {
                        "key": {"Int": "Int32"},
                        "value": {"List": {"Primitive": {"Float": "Float64"}}},
                    }
                }
            },
        ),
        (
            dict[str, bool],
            {"Value": {"Map": {"key": {"String": {}}, "value": {"Primitive": "Boolean"}}}},
        ),
        (Point, _struct(Point)),
        (list[Point], {"Value": {"List": {"Struct": f"{__name__}.Point"}}}),
        (Tree, _struct(Tree)),
    ],
)
def test_type_mapping(annotation: Any, descriptor: dict[str, Any]) -> None:
    assert type_descriptor(annotation) == descriptor


def test_int_and_int64_are_the_same_type() -> None:
    assert value_type(int) == value_type(ow.Int64)
    assert value_type(int) != value_type(ow.Int32)
    assert value_type(bytes) != value_type(str)
    assert value_type(int).name == "int" and value_type(ow.Int32).name == "Int32"


@pytest.mark.parametrize(
    ("annotation", "fragment"),
    [
        (tuple[int, int], "unsupported type tuple[int, int]"),
        (set[int], "unsupported type set[int]"),
        (typing.Optional[int], "unsupported type"),  # noqa: UP045
        (int | None, "unsupported type"),
        (dict[float, int], "unsupported map key type float"),
        (dict[Point, int], "unsupported map key type Point"),
        (list, "bare list"),
        (dict, "bare dict"),
        (object, "unsupported type object"),
        (complex, "unsupported type complex"),
        (typing.Annotated[float, typing.get_args(ow.Int32)[1]], "Int32 must annotate int"),
        (list[tuple[int]], "unsupported type tuple[int]"),
    ],
)
def test_unsupported_annotations(annotation: Any, fragment: str) -> None:
    with pytest.raises(TypeError, match="supported: int, float") as info:
        value_type(annotation, where="task `m.f`, parameter `p`")
    assert fragment in str(info.value)
    assert str(info.value).startswith("task `m.f`, parameter `p`: ")


def test_unsupported_dataclass_field_is_named() -> None:
    @dataclass
    class Bad:
        ok: int
        wrong: complex

    with pytest.raises(TypeError, match=r"dataclass .*Bad field `wrong`: unsupported type complex"):
        value_type(Bad)
    # A failed struct does not linger half-built.
    with pytest.raises(TypeError):
        value_type(Bad)


def test_init_false_dataclass_fields_are_rejected() -> None:
    @dataclass
    class Derived:
        a: int
        b: int = field(init=False, default=0)

    with pytest.raises(TypeError, match="init=False"):
        value_type(Derived)


# -------------------------------------------------------------------------------------------------
# Codec round trips
# -------------------------------------------------------------------------------------------------


def _int_range(bits: int) -> st.SearchStrategy[int]:
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


_LEAVES: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (int, _int_range(64)),
    (ow.Int8, _int_range(8)),
    (ow.Int16, _int_range(16)),
    (ow.Int32, _int_range(32)),
    (ow.Int64, _int_range(64)),
    (float, st.floats(allow_nan=True, allow_infinity=True)),
    (ow.Float32, st.floats(width=32, allow_nan=False)),
    (bool, st.booleans()),
    (bytes, st.binary(max_size=20)),
    (str, st.text(max_size=20)),
]
_KEYS: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (int, _int_range(64)),
    (ow.Int8, _int_range(8)),
    (str, st.text(max_size=8)),
    (bytes, st.binary(max_size=8)),
]


def _points() -> st.SearchStrategy[Point]:
    return st.builds(Point, st.floats(allow_nan=False), _int_range(32))


def _tagged() -> st.SearchStrategy[Tagged]:
    return st.builds(
        Tagged,
        st.text(max_size=8),
        st.binary(max_size=8),
        st.lists(st.text(max_size=4), max_size=3),
        st.dictionaries(st.text(max_size=4), st.floats(allow_nan=False), max_size=3),
    )


def _trees(depth: int = 2) -> st.SearchStrategy[Tree]:
    if depth == 0:
        return st.builds(Tree, _int_range(64), st.just([]))
    return st.builds(Tree, _int_range(64), st.lists(_trees(depth - 1), max_size=2))


_STRUCTS: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (Point, _points()),
    (Tagged, _tagged()),
    (
        Nested,
        st.builds(
            Nested,
            _points(),
            st.lists(_points(), max_size=3),
            st.dictionaries(_int_range(16), _tagged(), max_size=2),
        ),
    ),
    (Tree, _trees()),
    (Empty, st.just(Empty())),
]


def _typed(depth: int = 2) -> st.SearchStrategy[tuple[Any, st.SearchStrategy[Any]]]:
    base = st.sampled_from(_LEAVES + _STRUCTS)
    if depth == 0:
        return base

    def as_list(inner: tuple[Any, st.SearchStrategy[Any]]) -> tuple[Any, Any]:
        return list[inner[0]], st.lists(inner[1], max_size=4)  # type: ignore[valid-type]

    def as_map(
        pair: tuple[tuple[Any, st.SearchStrategy[Any]], tuple[Any, st.SearchStrategy[Any]]],
    ) -> tuple[Any, Any]:
        (k, ks), (v, vs) = pair
        return dict[k, v], st.dictionaries(ks, vs, max_size=4)  # type: ignore[valid-type]

    inner = _typed(depth - 1)
    return st.one_of(
        base,
        inner.map(as_list),
        st.tuples(st.sampled_from(_KEYS), inner).map(as_map),
    )


def _canonical(value: Any) -> Any:
    """Comparable form: floats by their bits (NaN == NaN, 0.0 != -0.0)."""
    if isinstance(value, float):
        return ("f", struct.pack("<d", value))
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return sorted(((repr(k), _canonical(v)) for k, v in value.items()), key=repr)
    if hasattr(value, "__dataclass_fields__"):
        return (type(value).__name__, _canonical(list(vars(value).values())))
    return (type(value).__name__, value)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_round_trip(data: st.DataObject) -> None:
    annotation, values = data.draw(_typed())
    value = data.draw(values)
    payload = encode_value(annotation, value)
    decoded = decode_value(annotation, payload)
    assert _canonical(decoded) == _canonical(value)
    assert type(decoded) is type(value)


@settings(max_examples=100, deadline=None)
@given(st.floats())
def test_float32_values_round_to_single_precision(x: float) -> None:
    try:
        expected = struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        with pytest.raises(ValueMismatchError, match="out of range for Float32"):
            encode_value(ow.Float32, x)
        return
    got = decode_value(ow.Float32, encode_value(ow.Float32, x))
    assert struct.pack("<d", got) == struct.pack("<d", expected)


_F64_EDGES = [
    0.0,
    -0.0,
    math.inf,
    -math.inf,
    math.nan,
    struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0],  # NaN with a payload
    struct.unpack("<d", b"\x00\x00\x00\x00\x00\x00\xf8\xff")[0],  # negative NaN
    5e-324,
    -5e-324,
    sys.float_info.min,
    sys.float_info.max,
    -sys.float_info.max,
    sys.float_info.epsilon,
    1 / 3,
    2.0**53 + 1,
]


@pytest.mark.parametrize("x", _F64_EDGES, ids=[repr(x) for x in _F64_EDGES])
def test_f64_round_trips_bit_exactly(x: float) -> None:
    payload = encode_value(float, x)
    assert payload[0] == 0xCB and len(payload) == 9  # always a msgpack float 64
    y = decode_value(float, payload)
    assert struct.pack("<d", y) == struct.pack("<d", x)
    # Inside containers and structs too.
    [z] = decode_value(list[float], encode_value(list[float], [x]))
    assert struct.pack("<d", z) == struct.pack("<d", x)


def test_structs_are_positional_msgpack_arrays() -> None:
    assert encode_value(Point, Point(1.5, 2)) == msgpack.packb([1.5, 2])
    nested = Nested(Point(0.0, 1), [Point(2.0, 3)], {7: Tagged("n", b"\x00", ["t"], {"w": 0.5})})
    assert msgpack.unpackb(encode_value(Nested, nested), strict_map_key=False) == [
        [0.0, 1],
        [[2.0, 3]],
        {7: ["n", b"\x00", ["t"], {"w": 0.5}]},
    ]
    # A map-encoded struct (spider-py style) is accepted when decoding.
    assert decode_value(Point, msgpack.packb({"x": 1.0, "y": 2})) == Point(1.0, 2)
    # ... and a mapping with exactly the field names is accepted when encoding (JSON inputs).
    assert decode_value(Point, encode_value(Point, {"x": 1.0, "y": 2})) == Point(1.0, 2)


def test_bytes_and_str_never_mix() -> None:
    assert encode_value(bytes, b"ab")[0] == 0xC4  # bin 8
    assert encode_value(str, "ab")[0] == 0xA2  # fixstr
    with pytest.raises(ValueMismatchError, match="expected bytes, got str 'ab'"):
        encode_value(bytes, "ab")
    with pytest.raises(ValueMismatchError, match="expected str, got bytes b'ab'"):
        encode_value(str, b"ab")
    with pytest.raises(ValueMismatchError, match="expected bytes, got str"):
        decode_value(bytes, msgpack.packb("ab", use_bin_type=True))
    with pytest.raises(ValueMismatchError, match="expected str, got bytes"):
        decode_value(str, msgpack.packb(b"ab", use_bin_type=True))
    # Spider's Rust `Bytes` (Vec<u8>) arrives as an array of small ints.
    assert decode_value(bytes, msgpack.packb([97, 98])) == b"ab"
    assert encode_value(bytes, bytearray(b"x")) == encode_value(bytes, b"x")


@pytest.mark.parametrize(
    ("annotation", "value", "fragment"),
    [
        (ow.Int8, 128, "128 is out of range for Int8 [-128, 127]"),
        (ow.Int8, -129, "-129 is out of range for Int8 [-128, 127]"),
        (ow.Int16, 1 << 15, "out of range for Int16"),
        (ow.Int32, -(1 << 31) - 1, "out of range for Int32"),
        (int, 1 << 63, "out of range for Int64"),
        (ow.Int64, -(1 << 63) - 1, "out of range for Int64"),
        (int, True, "expected int, got bool True"),
        (int, 1.0, "expected int, got float 1.0"),
        (int, "1", "expected int, got str '1'"),
        (float, "1.5", "expected float, got str"),
        (float, True, "expected float, got bool"),
        (float, 1 << 1100, "out of range for float"),
        (ow.Float32, 1e39, "out of range for Float32"),
        (bool, 1, "expected bool, got int 1"),
        (list[int], (1, "x"), "at [1]: expected int, got str 'x'"),
        (list[int], {1, 2}, "expected list[int], got set"),
        (list[int], "abc", "expected list[int], got str"),
        (dict[str, int], {"a": 1, "b": None}, "at ['b']: expected int, got NoneType None"),
        (dict[str, int], {1: 1}, "at <key 1>: expected str, got int 1"),
        (Point, Point(1.0, 1 << 40), "at .y: "),
        (list[Point], [Point(1.0, 1), (1.0, 2)], "at [1]: expected Point, got tuple"),
        (
            Nested,
            Nested(Point(0.0, 0), [], {1: Tagged("a", "b", [], {})}),  # type: ignore[arg-type]
            "at .by_id[1].data: expected bytes, got str 'b'",
        ),
    ],
)
def test_value_mismatches(annotation: Any, value: Any, fragment: str) -> None:
    with pytest.raises(ValueMismatchError) as info:
        encode_value(annotation, value)
    assert fragment in str(info.value)


def test_in_range_boundaries_and_numeric_conversions() -> None:
    for bits, ann in ((8, ow.Int8), (16, ow.Int16), (32, ow.Int32), (64, ow.Int64)):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        assert decode_value(ann, encode_value(ann, lo)) == lo
        assert decode_value(ann, encode_value(ann, hi)) == hi
    assert decode_value(float, encode_value(float, 3)) == 3.0  # ints are accepted for floats
    assert type(decode_value(float, encode_value(float, 3))) is float
    assert decode_value(float, msgpack.packb(3)) == 3.0  # an integral float from elsewhere
    assert (
        decode_value(ow.Float32, encode_value(ow.Float32, 0.1))
        == struct.unpack("<f", struct.pack("<f", 0.1))[0]
    )


def test_decoding_range_and_type_errors() -> None:
    with pytest.raises(ValueMismatchError, match="300 is out of range for Int8"):
        decode_value(ow.Int8, msgpack.packb(300))
    with pytest.raises(ValueMismatchError, match="expected int, got bool"):
        decode_value(int, msgpack.packb(True))
    with pytest.raises(ValueMismatchError, match="expected Point with 2 fields, got an array of 3"):
        decode_value(Point, msgpack.packb([1.0, 2, 3]))
    with pytest.raises(ValueMismatchError, match=r"at \.points\[0\]\.x: expected float, got str"):
        decode_value(Nested, msgpack.packb([[0.0, 0], [["x", 1]], {}]))


def test_malformed_payloads() -> None:
    with pytest.raises(ValueMismatchError, match="cannot decode a msgpack int payload of 0 bytes"):
        decode_value(int, b"")
    with pytest.raises(ValueMismatchError, match="cannot decode"):
        decode_value(int, msgpack.packb(1) + b"\x01")  # trailing data
    with pytest.raises(ValueMismatchError, match="cannot decode"):
        decode_value(str, b"\xa5ab")  # truncated


def test_decode_plain() -> None:
    assert decode_plain(msgpack.packb({1: [b"x", "y"]}, use_bin_type=True)) == {1: [b"x", "y"]}
    with pytest.raises(ValueMismatchError):
        decode_plain(b"")
