"""Fixtures for storage-service tests: with the real storage process of the shared `storage`
fixture (SQLite and MariaDB), a driver that plays client, scheduler and execution manager over
gRPC."""

from __future__ import annotations

import pytest

from support.driver import Driver
from support.procs import StorageProcess


@pytest.fixture
def driver(storage: StorageProcess) -> Driver:
    return Driver(storage).setup()
