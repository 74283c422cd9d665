"""Fixtures for storage-service tests: a real storage process per test (SQLite and MariaDB) and a
driver that plays client, scheduler and execution manager over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.driver import Driver
from support.procs import StorageProcess


@pytest.fixture
def storage(db_url: str, tmp_path: Path) -> Iterator[StorageProcess]:
    proc = StorageProcess(db_url, tmp_path)
    proc.start()
    yield proc
    proc.close()
    proc.terminate()


@pytest.fixture
def driver(storage: StorageProcess) -> Driver:
    return Driver(storage).setup()
