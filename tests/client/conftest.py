"""Client test fixtures: a real `LocalCluster` (storage, scheduler, worker processes) on SQLite
or MariaDB whose executors import `tasks/client_tasks.py`, and gates that tests open to decide
when a `gated` task ends."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_support import FakeStorage, Gates, Runner

import orbweaver as ow
from support.liveness import SCHEDULER_CONFIG, STORAGE_CONFIG

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(TASKS_DIR))


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    path = tmp_path / "markers"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def gates(markers: Path) -> Gates:
    return Gates(markers)


@pytest.fixture
def cluster(db_url: str, tmp_path: Path, markers: Path) -> Iterator[ow.LocalCluster]:
    """Three executors: up to three gated jobs run at once."""
    storage_cfg = tmp_path / "storage.toml"
    storage_cfg.write_text(STORAGE_CONFIG)
    scheduler_cfg = tmp_path / "scheduler.toml"
    scheduler_cfg.write_text(SCHEDULER_CONFIG)
    with ow.LocalCluster(
        workers=3,
        db=db_url,
        tasks_dir=TASKS_DIR,
        log_dir=tmp_path / "logs",
        storage_args=["--config", str(storage_cfg)],
        scheduler_args=["--config", str(scheduler_cfg)],
        env={"CLIENT_TEST_MARKERS": str(markers)},
    ) as c:
        yield c


@pytest.fixture
def run() -> Runner:
    return Runner()


@pytest.fixture
def storages() -> Iterator[list[FakeStorage]]:
    """Fake storages a test makes (append them); stopped afterwards."""
    made: list[FakeStorage] = []
    yield made
    for s in made:
        s.server.stop(0)
