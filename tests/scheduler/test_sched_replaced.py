"""Only the registered scheduler takes ready work: when a second scheduler registers with the
same storage, the first one's polls are refused and it stops (exit status 1, saying why)
instead of re-registering and taking the queue back; the second one serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.procs import ServiceProcess, StorageProcess, wait_until


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_replaced_scheduler_stops(storage: StorageProcess, tmp_path: Path) -> None:
    def scheduler(name: str) -> ServiceProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        proc = ServiceProcess(
            "scheduler",
            ["scheduler", "--storage", storage.address, "--listen", "127.0.0.1:0"],
            workdir,
        )
        proc.start()
        return proc

    first = scheduler("first")
    second = scheduler("second")
    try:
        assert first.popen is not None
        status = wait_until(lambda: first.popen.poll() is not None, timeout=60, what="exit")  # type: ignore[union-attr]
        assert status and first.popen.returncode == 1
        assert "replaced by another scheduler" in first.logs()
        assert second.alive
    finally:
        for proc in (first, second):
            proc.terminate()
