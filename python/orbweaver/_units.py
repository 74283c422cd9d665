"""Byte sizes as people write them: ``512MiB``, ``1.5 GB``, ``64k``, ``1048576``."""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = ["format_size", "parse_size"]

_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_size(value: object, what: str = "size") -> int:
    """A number of bytes from an int or a string such as ``"512MiB"`` (binary: KiB, MiB, GiB,
    TiB and the single letters K, M, G, T; decimal: KB, MB, GB, TB). Raises `ValueError` naming
    `what` and the value."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of bytes or a size like '512MiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a number of bytes or a size like '512MiB', got {value!r}")
    m = _SIZE.fullmatch(value)
    unit = m and _UNITS.get(m[2].lower())
    if m is None or unit is None:
        raise ValueError(
            f"{what}: cannot read {value!r} as a size (use bytes or a unit: KiB, MiB, GiB, "
            "TiB, KB, MB, GB, TB)"
        )
    size = float(m[1]) * unit
    if not math.isfinite(size) or size >= 2**63:
        raise ValueError(f"{what}: {value!r} is too large")
    return round(size)


def format_size(n: int | float) -> str:
    """``512 MiB``, ``19.8 MiB``, ``64 KiB``, ``900 B``."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(n)} B"
