"""End-to-end fixtures: a real LocalCluster (storage, scheduler, EM + executors as processes) on
SQLite or MariaDB, with short liveness settings so failures are detected within a test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import orbweaver as ow
from support.liveness import SCHEDULER_CONFIG, STORAGE_CONFIG
from support.procs import ServiceProcess

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def make_cluster(
    db_url: str,
    tmp_path: Path,
    workers: int = 2,
    scheduler_settings: str = "",
    worker_args: list[str] | None = None,
    metrics_port: int | None = None,
) -> ow.LocalCluster:
    """`scheduler_settings`: extra lines for the scheduler's `[scheduler]` table."""
    storage_cfg = tmp_path / "storage.toml"
    storage_cfg.write_text(STORAGE_CONFIG)
    scheduler_cfg = tmp_path / "scheduler.toml"
    scheduler_cfg.write_text(SCHEDULER_CONFIG + scheduler_settings)
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    return ow.LocalCluster(
        workers=workers,
        db=db_url,
        tasks_dir=TASKS_DIR,
        log_dir=tmp_path / "logs",
        storage_args=["--config", str(storage_cfg)],
        scheduler_args=["--config", str(scheduler_cfg)],
        env={"E2E_TEST_MARKERS": str(markers)},
        worker_args=worker_args,
        metrics_port=metrics_port,
    )


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    path = tmp_path / "markers"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def cluster_factory() -> Callable[..., ow.LocalCluster]:
    """`make_cluster` for tests that need their own settings (a fixture, not an import: two
    test folders have a `conftest` module)."""
    return make_cluster


@pytest.fixture
def cluster(db_url: str, tmp_path: Path, markers: Path) -> Iterator[ow.LocalCluster]:
    c = make_cluster(db_url, tmp_path)
    with c:
        yield c


@pytest.fixture
def sqlite_cluster(sqlite_url: str, tmp_path: Path, markers: Path) -> Iterator[ow.LocalCluster]:
    c = make_cluster(sqlite_url, tmp_path)
    with c:
        yield c


@pytest.fixture
def extra_workers(
    tmp_path: Path, markers: Path
) -> Iterator[Callable[[ow.LocalCluster, int], list[ServiceProcess]]]:
    """Start `count` more `orbweaver worker` processes (one executor each) for a cluster."""
    started: list[ServiceProcess] = []

    def start(cluster: ow.LocalCluster, count: int) -> list[ServiceProcess]:
        procs = []
        for i in range(count):
            workdir = tmp_path / f"extra-worker-{len(started)}"
            workdir.mkdir()
            proc = ServiceProcess(
                "worker",
                [
                    "worker",
                    "--storage",
                    cluster.address,
                    "--scheduler",
                    cluster.scheduler_address,
                    "--tasks-dir",
                    str(TASKS_DIR),
                    "--processes",
                    "1",
                    "--ip",
                    "127.0.0.1",
                ],
                workdir,
                env={
                    "ORBWEAVER_TOKEN": cluster.token,
                    "E2E_TEST_MARKERS": str(markers),
                    "ORBWEAVER_EXECUTOR_ENV": "E2E_TEST_MARKERS",
                },
            )
            proc.start()
            started.append(proc)
            procs.append(proc)
            assert proc.port > 0, f"extra worker {i} has no EM id"
        return procs

    yield start
    for proc in started:
        proc.terminate()
        proc.kill()
