"""Orbweaver value types: Python annotations <-> Spider type descriptors, and the msgpack codec.

Supported annotations (docs/concepts.md):

========================  ==================================================
annotation                Spider descriptor (inside ``{"Value": ...}``)
========================  ==================================================
``int`` / ``Int64``       ``{"Primitive": {"Int": "Int64"}}``
``Int8/Int16/Int32``      ``{"Primitive": {"Int": "Int8"}}`` ...
``float`` / ``Float64``   ``{"Primitive": {"Float": "Float64"}}``
``Float32``               ``{"Primitive": {"Float": "Float32"}}``
``bool``                  ``{"Primitive": "Boolean"}``
``bytes``                 ``{"Bytes": {}}``
``str``                   ``{"String": {}}`` (an Orbweaver extension)
``list[T]``               ``{"List": <T>}``
``dict[K, V]``            ``{"Map": {"key": <K>, "value": <V>}}``, K an int type, str or bytes
a dataclass               ``{"Struct": "<module>.<qualname>"}``
========================  ==================================================

Every value is one msgpack payload. Dataclasses travel as positional msgpack arrays (as Spider's
Rust structs do), ``bytes`` as msgpack bin and ``str`` as msgpack str, so the two never mix.
Floats are always written as float64 (a ``Float32`` value is rounded to single precision first),
so every f64 round-trips bit-exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import operator
import reprlib
import struct
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, TypeAlias

import msgpack

__all__ = [
    "Float32",
    "Float64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "ValueMismatchError",
    "ValueType",
    "decode_plain",
    "decode_value",
    "describe_value",
    "encode_value",
    "type_descriptor",
    "value_type",
]


@dataclasses.dataclass(frozen=True)
class _IntWidth:
    name: str
    bits: int

    @property
    def min(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def max(self) -> int:
        return (1 << (self.bits - 1)) - 1


@dataclasses.dataclass(frozen=True)
class _FloatWidth:
    name: str


Int8: TypeAlias = Annotated[int, _IntWidth("Int8", 8)]
Int16: TypeAlias = Annotated[int, _IntWidth("Int16", 16)]
Int32: TypeAlias = Annotated[int, _IntWidth("Int32", 32)]
Int64: TypeAlias = Annotated[int, _IntWidth("Int64", 64)]
Float32: TypeAlias = Annotated[float, _FloatWidth("Float32")]
Float64: TypeAlias = Annotated[float, _FloatWidth("Float64")]

_INT64: Final = _IntWidth("Int64", 64)
_SUPPORTED: Final = (
    "supported: int, float, bool, bytes, str, list[T], dict[K, V] (K an int type, str or bytes), "
    "dataclasses, orbweaver.Int8/Int16/Int32/Int64/Float32/Float64"
)

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = 4
_repr.maxdict = 4


def describe_value(value: object) -> str:
    """`str 'abc'`, `int 300`, `list [1, 2, ...]`: the value's type and a short repr."""
    return f"{type(value).__qualname__} {_repr.repr(value)}"


class ValueMismatchError(TypeError, ValueError):
    """A value does not fit a type (wrong Python type, integer out of range, undecodable payload).

    `path` locates the offending part inside the value (e.g. ``.items[2].re``), `expected` is the
    type's display name and `reason` the explanation."""

    def __init__(self, expected: str, reason: str, path: str = "") -> None:
        self.expected = expected
        self.reason = reason
        self.path = path
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"at {self.path}: " if self.path else ""
        return f"{where}{self.reason}"

    def prefixed(self, step: str) -> ValueMismatchError:
        self.path = step + self.path
        self.args = (self._text(),)
        return self

    @staticmethod
    def wrong_type(expected: str, value: object) -> ValueMismatchError:
        return ValueMismatchError(expected, f"expected {expected}, got {describe_value(value)}")


# -------------------------------------------------------------------------------------------------
# Value types
# -------------------------------------------------------------------------------------------------


class ValueType:
    """A resolved value type: its Spider descriptor and the msgpack conversion both ways.

    `pack` checks a Python value and turns it into a msgpack-ready object; `unpack` checks a
    msgpack-decoded object and turns it back into the Python value (dataclasses rebuilt)."""

    __slots__ = ("annotation", "name")

    annotation: Any
    name: str

    def value_descriptor(self) -> Any:
        """The descriptor without the outer ``{"Value": ...}`` wrapper."""
        raise NotImplementedError

    def key_descriptor(self) -> Any:
        """The descriptor when used as a map key (None: not allowed as a key)."""
        return None

    @property
    def descriptor(self) -> dict[str, Any]:
        return {"Value": self.value_descriptor()}

    def pack(self, value: Any) -> Any:
        raise NotImplementedError

    def unpack(self, obj: Any) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> bytes:
        """Check `value` and encode it as one msgpack payload; raises `ValueMismatchError`."""
        return bytes(msgpack.packb(self.pack(value), use_bin_type=True))

    def decode(self, data: bytes) -> Any:
        """Decode one msgpack payload into a typed value; raises `ValueMismatchError`."""
        return self.unpack(_unpackb(data, self.name))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValueType) and self.descriptor == other.descriptor

    def __hash__(self) -> int:
        return hash(repr(self.descriptor))

    def __repr__(self) -> str:
        return f"<ValueType {self.name}>"


def _unpackb(data: bytes, expected: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for malformed data
        detail = str(exc) or type(exc).__name__
        raise ValueMismatchError(
            expected, f"cannot decode a msgpack {expected} payload of {len(data)} bytes: {detail}"
        ) from None


def decode_plain(data: bytes) -> Any:
    """Decode a msgpack payload without a type (commit job outputs, cleanup graph inputs)."""
    return _unpackb(data, "value")


class _IntType(ValueType):
    __slots__ = ("_max", "_min", "width")

    def __init__(self, annotation: Any, width: _IntWidth, name: str) -> None:
        self.annotation = annotation
        self.width = width
        self.name = name
        self._min = width.min
        self._max = width.max

    def value_descriptor(self) -> Any:
        return {"Primitive": {"Int": self.width.name}}

    def key_descriptor(self) -> Any:
        return {"Int": self.width.name}

    def _check(self, value: Any) -> int:
        if type(value) is not int:
            if isinstance(value, bool):
                raise ValueMismatchError.wrong_type(self.name, value)
            try:
                value = operator.index(value)
            except TypeError:
                raise ValueMismatchError.wrong_type(self.name, value) from None
        if not self._min <= value <= self._max:
            raise ValueMismatchError(
                self.name,
                f"{value} is out of range for {self.width.name} [{self._min}, {self._max}]",
            )
        return int(value)

    def pack(self, value: Any) -> Any:
        return self._check(value)

    def unpack(self, obj: Any) -> Any:
        if type(obj) is not int:
            raise ValueMismatchError.wrong_type(self.name, obj)
        return self._check(obj)


_F32 = struct.Struct("<f")


class _FloatType(ValueType):
    __slots__ = ("single",)

    def __init__(self, annotation: Any, single: bool, name: str) -> None:
        self.annotation = annotation
        self.single = single
        self.name = name

    def value_descriptor(self) -> Any:
        return {"Primitive": {"Float": "Float32" if self.single else "Float64"}}

    def _to_float(self, value: Any) -> float:
        if type(value) is float:
            f = value
        elif isinstance(value, bool) or not isinstance(value, (int, float, numbers.Real)):
            raise ValueMismatchError.wrong_type(self.name, value)
        else:
            try:
                f = float(value)
            except OverflowError:
                raise ValueMismatchError(
                    self.name, f"{value} is out of range for {self.name}"
                ) from None
        if self.single:
            try:
                f = float(_F32.unpack(_F32.pack(f))[0])
            except OverflowError:
                raise ValueMismatchError(self.name, f"{f!r} is out of range for Float32") from None
        return f

    def pack(self, value: Any) -> Any:
        return self._to_float(value)

    def unpack(self, obj: Any) -> Any:
        if type(obj) is float:
            return obj
        if type(obj) is int:  # another producer may write integral floats as ints
            return self._to_float(obj)
        raise ValueMismatchError.wrong_type(self.name, obj)


class _BoolType(ValueType):
    __slots__ = ()

    def __init__(self) -> None:
        self.annotation = bool
        self.name = "bool"

    def value_descriptor(self) -> Any:
        return {"Primitive": "Boolean"}

    def pack(self, value: Any) -> Any:
        if type(value) is not bool:
            raise ValueMismatchError.wrong_type(self.name, value)
        return value

    def unpack(self, obj: Any) -> Any:
        return self.pack(obj)


class _BytesType(ValueType):
    __slots__ = ()

    def __init__(self) -> None:
        self.annotation = bytes
        self.name = "bytes"

    def value_descriptor(self) -> Any:
        return {"Bytes": {}}

    def key_descriptor(self) -> Any:
        return {"Bytes": {}}

    def pack(self, value: Any) -> Any:
        if type(value) is bytes:
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        raise ValueMismatchError.wrong_type(self.name, value)

    def unpack(self, obj: Any) -> Any:
        if type(obj) is bytes:
            return obj
        # Spider's Rust `Bytes` (Vec<u8>) is written by serde as an array of small ints.
        if type(obj) is list and all(type(b) is int and 0 <= b <= 255 for b in obj):
            return bytes(obj)
        raise ValueMismatchError.wrong_type(self.name, obj)


class _StrType(ValueType):
    __slots__ = ()

    def __init__(self) -> None:
        self.annotation = str
        self.name = "str"

    def value_descriptor(self) -> Any:
        return {"String": {}}

    def key_descriptor(self) -> Any:
        return {"String": {}}

    def pack(self, value: Any) -> Any:
        if type(value) is not str:
            if isinstance(value, str):
                return str(value)
            raise ValueMismatchError.wrong_type(self.name, value)
        return value

    def unpack(self, obj: Any) -> Any:
        return self.pack(obj)


class _ListType(ValueType):
    __slots__ = ("item",)

    def __init__(self, annotation: Any, item: ValueType) -> None:
        self.annotation = annotation
        self.item = item
        self.name = f"list[{item.name}]"

    def value_descriptor(self) -> Any:
        return {"List": self.item.value_descriptor()}

    def pack(self, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise ValueMismatchError.wrong_type(self.name, value)
        return self._map(self.item.pack, value)

    def unpack(self, obj: Any) -> Any:
        if type(obj) is not list:
            raise ValueMismatchError.wrong_type(self.name, obj)
        return self._map(self.item.unpack, obj)

    @staticmethod
    def _map(fn: typing.Callable[[Any], Any], items: Any) -> list[Any]:
        try:
            return [fn(x) for x in items]
        except ValueMismatchError as exc:
            # Slow path only on error: find the offending index for the message.
            for i, x in enumerate(items):
                try:
                    fn(x)
                except ValueMismatchError:
                    raise exc.prefixed(f"[{i}]") from None
            raise


class _MapType(ValueType):
    __slots__ = ("key", "value")

    def __init__(self, annotation: Any, key: ValueType, value: ValueType) -> None:
        self.annotation = annotation
        self.key = key
        self.value = value
        self.name = f"dict[{key.name}, {value.name}]"

    def value_descriptor(self) -> Any:
        return {"Map": {"key": self.key.key_descriptor(), "value": self.value.value_descriptor()}}

    def pack(self, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueMismatchError.wrong_type(self.name, value)
        return self._map(self.key.pack, self.value.pack, value)

    def unpack(self, obj: Any) -> Any:
        if type(obj) is not dict:
            raise ValueMismatchError.wrong_type(self.name, obj)
        return self._map(self.key.unpack, self.value.unpack, obj)

    @staticmethod
    def _map(
        kf: typing.Callable[[Any], Any], vf: typing.Callable[[Any], Any], m: Mapping[Any, Any]
    ) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for k, v in m.items():
            try:
                key = kf(k)
            except ValueMismatchError as exc:
                raise exc.prefixed(f"<key {_repr.repr(k)}>") from None
            try:
                out[key] = vf(v)
            except ValueMismatchError as exc:
                raise exc.prefixed(f"[{_repr.repr(k)}]") from None
        return out


class _StructType(ValueType):
    __slots__ = ("cls", "fields", "struct_name")

    def __init__(self, cls: type) -> None:
        self.annotation = cls
        self.cls = cls
        self.name = cls.__qualname__
        try:
            module = module_name(cls.__module__)
        except ValueError:  # an interactive session: executors cannot import it anyway
            module = cls.__module__
        self.struct_name = f"{module}.{cls.__qualname__}"
        self.fields: list[tuple[str, ValueType]] = []

    def value_descriptor(self) -> Any:
        return {"Struct": self.struct_name}

    def pack(self, value: Any) -> Any:
        if isinstance(value, self.cls):
            items = [getattr(value, name) for name, _ in self.fields]
        elif isinstance(value, Mapping) and set(value) == {n for n, _ in self.fields}:
            items = [value[name] for name, _ in self.fields]
        else:
            raise ValueMismatchError.wrong_type(self.name, value)
        out = []
        for (name, ftype), item in zip(self.fields, items, strict=True):
            try:
                out.append(ftype.pack(item))
            except ValueMismatchError as exc:
                raise exc.prefixed(f".{name}") from None
        return out

    def unpack(self, obj: Any) -> Any:
        if type(obj) is list:
            if len(obj) != len(self.fields):
                raise ValueMismatchError(
                    self.name,
                    f"expected {self.name} with {len(self.fields)} fields, "
                    f"got an array of {len(obj)}",
                )
            items = obj
        elif type(obj) is dict and set(obj) == {n for n, _ in self.fields}:
            items = [obj[name] for name, _ in self.fields]  # a map-encoded struct (spider-py)
        else:
            raise ValueMismatchError.wrong_type(self.name, obj)
        args = []
        for (name, ftype), item in zip(self.fields, items, strict=True):
            try:
                args.append(ftype.unpack(item))
            except ValueMismatchError as exc:
                raise exc.prefixed(f".{name}") from None
        return self.cls(*args)


# -------------------------------------------------------------------------------------------------
# Annotation resolution
# -------------------------------------------------------------------------------------------------


def module_name(module: str) -> str:
    """The importable name of a module; for `__main__` the name an executor would import it by
    (the `-m` module name, else the script's file stem). Raises ValueError when `__main__` has no
    file (an interactive session)."""
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None):
        return str(spec.name)
    file = getattr(main, "__file__", None)
    if not file:
        raise ValueError(
            "objects defined in an interactive session cannot be used by executors; "
            "define them in a module file"
        )
    return Path(file).stem


_cache: dict[Any, ValueType] = {}
_structs: dict[type, _StructType] = {}
_BOOL: Final = _BoolType()
_BYTES: Final = _BytesType()
_STR: Final = _StrType()


def value_type(annotation: Any, where: str = "") -> ValueType:
    """Resolve an annotation into a `ValueType`. Raises TypeError for unsupported annotations;
    `where` (e.g. "task `pkg.fn`, parameter `x`") prefixes the message."""
    try:
        cached = _cache.get(annotation)
    except TypeError:  # unhashable annotation
        cached = None
    if cached is not None:
        return cached
    try:
        vt = _resolve(annotation)
    except _UnsupportedError as exc:
        prefix = f"{where}: " if where else ""
        raise TypeError(f"{prefix}{exc}; {_SUPPORTED}") from None
    with contextlib.suppress(TypeError):  # unhashable annotations are not cached
        _cache[annotation] = vt
    return vt


class _UnsupportedError(Exception):
    pass


def _show(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


def _resolve(ann: Any) -> ValueType:
    origin = typing.get_origin(ann)
    if origin is Annotated:
        base, *meta = typing.get_args(ann)
        for m in meta:
            if isinstance(m, _IntWidth):
                if base is not int:
                    raise _UnsupportedError(f"{m.name} must annotate int, not {_show(base)}")
                return _IntType(ann, m, m.name)
            if isinstance(m, _FloatWidth):
                if base is not float:
                    raise _UnsupportedError(f"{m.name} must annotate float, not {_show(base)}")
                return _FloatType(ann, m.name == "Float32", m.name)
        return _resolve(base)
    if ann is bool:
        return _BOOL
    if ann is int:
        return _IntType(int, _INT64, "int")
    if ann is float:
        return _FloatType(float, False, "float")
    if ann is bytes:
        return _BYTES
    if ann is str:
        return _STR
    if origin is list:
        args = typing.get_args(ann)
        if len(args) != 1:
            raise _UnsupportedError(f"unsupported type {_show(ann)} (list needs an item type)")
        return _ListType(ann, _resolve(args[0]))
    if origin is dict:
        args = typing.get_args(ann)
        if len(args) != 2:
            raise _UnsupportedError(
                f"unsupported type {_show(ann)} (dict needs key and value types)"
            )
        key = _resolve(args[0])
        if key.key_descriptor() is None:
            raise _UnsupportedError(
                f"unsupported map key type {_show(args[0])} in {_show(ann)} "
                "(keys must be an int type, str or bytes)"
            )
        return _MapType(ann, key, _resolve(args[1]))
    if isinstance(ann, type) and dataclasses.is_dataclass(ann):
        return _struct(ann)
    if ann is list or ann is dict:
        raise _UnsupportedError(f"unsupported bare {ann.__name__}: give the item types")
    raise _UnsupportedError(f"unsupported type {_show(ann)}")


def _struct(cls: type) -> _StructType:
    existing = _structs.get(cls)
    if existing is not None:
        return existing  # also terminates recursive dataclasses
    st = _StructType(cls)
    _structs[cls] = st
    try:
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
        except Exception as exc:
            raise _UnsupportedError(
                f"cannot resolve the field types of {cls.__qualname__}: {exc}"
            ) from None
        for f in dataclasses.fields(cls):
            if not f.init:
                raise _UnsupportedError(
                    f"dataclass {cls.__qualname__} field `{f.name}` has init=False "
                    "(struct fields are passed positionally)"
                )
            try:
                st.fields.append((f.name, _resolve(hints[f.name])))
            except _UnsupportedError as exc:
                raise _UnsupportedError(
                    f"dataclass {cls.__qualname__} field `{f.name}`: {exc}"
                ) from None
    except BaseException:
        del _structs[cls]
        raise
    return st


def type_descriptor(annotation: Any) -> dict[str, Any]:
    """The Spider type descriptor of an annotation, e.g. ``{"Value": {"Bytes": {}}}``."""
    return value_type(annotation).descriptor


def encode_value(annotation: Any, value: Any) -> bytes:
    """Check `value` against `annotation` and encode it as one msgpack payload."""
    return value_type(annotation).encode(value)


def decode_value(annotation: Any, data: bytes) -> Any:
    """Decode one msgpack payload as a value of type `annotation`."""
    return value_type(annotation).decode(data)
