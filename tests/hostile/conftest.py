"""Hostile-input tests: what a careless or malicious caller sends, against real storage processes
(SQLite and MariaDB) and real clusters. Every case must get a precise status, and no process may
die for it."""

from __future__ import annotations

import pytest

from support.driver import Driver
from support.procs import StorageProcess


@pytest.fixture
def driver(storage: StorageProcess) -> Driver:
    return Driver(storage).setup()
