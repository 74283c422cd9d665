"""`StorageLock`: one SQLite database file has one storage service.

The lock is the storage service's, not the DB layer's: the DB layer still opens a locked file
(tools, and the recovery tests that prepare rows before a restart, rely on it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orbweaver.storage.db import open_database
from orbweaver.storage.db.sqlite import DatabaseInUse, StorageLock

REPO = Path(__file__).resolve().parents[2]


def test_a_second_claim_is_refused_naming_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    first = StorageLock(str(db), listen="127.0.0.1:0")
    try:
        first.update(listen="127.0.0.1:50051")
        with pytest.raises(DatabaseInUse) as info:
            StorageLock(str(db), listen="127.0.0.1:50052")
        message = str(info.value)
        assert message.startswith(
            f"database {db} is in use by the storage service pid {os.getpid()} on host "
            f"{socket.gethostname()} (listening on 127.0.0.1:50051) since "
        ), message
        assert message.endswith("; one database file has one storage"), message
        assert not db.exists()  # nothing touched the database itself
    finally:
        first.release()
    second = StorageLock(str(db), listen="127.0.0.1:50052")  # released: free again
    second.release()
    second.release()  # idempotent


def test_every_path_to_the_file_finds_the_same_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    first = StorageLock("real/jobs.db", listen="127.0.0.1:1")
    try:
        for other in ("link/jobs.db", str(tmp_path / "real" / "jobs.db"), "./real/../real/jobs.db"):
            with pytest.raises(DatabaseInUse, match="in use by the storage service"):
                StorageLock(other, listen="127.0.0.1:2")
    finally:
        first.release()


def test_a_lock_file_left_by_a_dead_holder_does_not_block(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    stale = {"pid": 999_999_999, "host": "gone", "listen": "127.0.0.1:1", "since": "long ago"}
    Path(f"{db}.lock").write_text(json.dumps(stale))
    lock = StorageLock(str(db), listen="127.0.0.1:7")
    try:
        holder = json.loads(Path(f"{db}.lock").read_text())
        assert (holder["pid"], holder["listen"]) == (os.getpid(), "127.0.0.1:7")
    finally:
        lock.release()


def test_the_lock_dies_with_its_holder_process(tmp_path: Path) -> None:
    """SIGKILL, no clean-up at all: the next claim succeeds at once."""
    db = tmp_path / "jobs.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from orbweaver.storage.db.sqlite import StorageLock
                StorageLock({str(db)!r}, listen="127.0.0.1:9")
                print("locked", flush=True)
                time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "python")},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DatabaseInUse, match=f"pid {holder.pid} on host"):
            StorageLock(str(db), listen="127.0.0.1:10")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    StorageLock(str(db), listen="127.0.0.1:10").release()


def test_the_db_layer_itself_does_not_take_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    lock = StorageLock(str(db), listen="127.0.0.1:1")
    try:
        database = open_database(f"sqlite:///{db}")
        try:
            assert database.add_resource_group("g", b"pw") > 0
        finally:
            database.close()
    finally:
        lock.release()


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        StorageLock(str(tmp_path / "no" / "such" / "jobs.db"), listen="127.0.0.1:1")
