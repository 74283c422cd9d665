"""Tasks a careless user writes (imported by the executors of the hostile tests)."""

from __future__ import annotations

import os

import orbweaver as ow


@ow.task
def big_out(mib: int) -> bytes:
    """Random (incompressible) bytes: too big for MariaDB's default 16 MiB packet at 20."""
    return os.urandom(mib << 20)


@ow.task
def big_in(b: bytes) -> int:
    return len(b)


@ow.task
def small(x: int) -> int:
    return x + 1
