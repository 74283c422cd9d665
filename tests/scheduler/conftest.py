"""Fixtures for the scheduler tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sched_helpers import FakeStorage


@pytest.fixture
def fake_storage() -> Iterator[FakeStorage]:
    storage = FakeStorage()
    storage.start()
    try:
        yield storage
    finally:
        storage.stop()
