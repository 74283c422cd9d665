"""Analogue of Spider's `complex` example: vectors of complex numbers."""

from __future__ import annotations

from dataclasses import dataclass

import orbweaver as ow


@dataclass(frozen=True)
class Complex:
    re: float
    im: float

    def __add__(self, other: Complex) -> Complex:
        return Complex(self.re + other.re, self.im + other.im)

    def __sub__(self, other: Complex) -> Complex:
        return Complex(self.re - other.re, self.im - other.im)

    def __mul__(self, other: Complex) -> Complex:
        return Complex(
            self.re * other.re - self.im * other.im, self.re * other.im + self.im * other.re
        )


@dataclass(frozen=True)
class ComplexVec:
    items: list[Complex]


class ComplexError(Exception):
    """A custom error type (reported with its qualified name)."""


def _same_length(a: ComplexVec, b: ComplexVec) -> None:
    if len(a.items) != len(b.items):
        raise ValueError(f"length mismatch: {len(a.items)} != {len(b.items)}")


@ow.task
def add(a: ComplexVec, b: ComplexVec) -> ComplexVec:
    _same_length(a, b)
    return ComplexVec([x + y for x, y in zip(a.items, b.items, strict=True)])


@ow.task
def sub(a: ComplexVec, b: ComplexVec) -> ComplexVec:
    _same_length(a, b)
    return ComplexVec([x - y for x, y in zip(a.items, b.items, strict=True)])


@ow.task
def dot_product(a: ComplexVec, b: ComplexVec) -> Complex:
    _same_length(a, b)
    total = Complex(0.0, 0.0)
    for x, y in zip(a.items, b.items, strict=True):
        total = total + x * y
    return total


@ow.task
def cross_product(a: ComplexVec, b: ComplexVec) -> ComplexVec:
    if len(a.items) != 3 or len(b.items) != 3:
        raise ValueError("cross product needs vectors of length 3")
    (a1, a2, a3), (b1, b2, b3) = a.items, b.items
    return ComplexVec([a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1])


@ow.task
def always_fail(a: ComplexVec) -> ComplexVec:
    raise ComplexError("always fails (custom error)")
