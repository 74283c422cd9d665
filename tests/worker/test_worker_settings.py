"""The worker's executor settings: sizes, validation, and how the `worker` command reads them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orbweaver._units import format_size, parse_size
from orbweaver.worker.manager import WorkerConfig
from orbweaver.worker.pool import ExecutorPool

pytestmark = pytest.mark.timeout(60)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
PYTHON_ROOT = Path(__file__).resolve().parents[2] / "python"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("512MiB", 512 * 1024**2),
        ("512 MiB", 512 * 1024**2),
        ("512mib", 512 * 1024**2),
        ("64k", 64 * 1024),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("500MB", 500_000_000),
        ("2G", 2 * 1024**3),
        ("1TB", 10**12),
    ],
)
def test_parse_size(text: Any, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "memory_limit: cannot read 'lots' as a size"),
        ("12 parsecs", "memory_limit: cannot read '12 parsecs' as a size"),
        ("-5MiB", "memory_limit: cannot read '-5MiB' as a size"),
        (-1, "memory_limit must not be negative, got -1"),
        (True, "memory_limit must be a number of bytes or a size like '512MiB', got True"),
        (1.5, "memory_limit must be a number of bytes or a size like '512MiB', got 1.5"),
        ("1e400", "memory_limit: cannot read '1e400' as a size"),
        ("99999999999TiB", "memory_limit: '99999999999TiB' is too large"),
    ],
)
def test_parse_size_errors_name_the_setting_and_the_value(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value, "memory_limit")
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (900, "900 B"),
        (64 * 1024, "64 KiB"),
        (512 * 1024**2, "512 MiB"),
        (int(19.8 * 1024**2), "19.8 MiB"),
        (3 * 1024**3 // 2, "1.5 GiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize("field", ["executor_output_rate", "executor_output_burst"])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_worker_config_refuses_a_bad_output_budget(field: str, bad: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"worker: {field} must be an int >= 1"):
        WorkerConfig(storage="a:1", scheduler="b:1", tasks_dir=tmp_path, **{field: bad})


@pytest.mark.parametrize("field", ["output_rate", "output_burst"])
def test_pool_refuses_a_bad_output_budget(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be an int >= 1, got 0"):
        ExecutorPool(TASKS_DIR, 1, **{field: 0})


def worker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORBWEAVER_")}
    env["PYTHONPATH"] = str(PYTHON_ROOT)
    addresses = ["--storage", "127.0.0.1:9", "--scheduler", "127.0.0.1:9"]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "orbweaver",
            "worker",
            *addresses,
            "--tasks-dir",
            str(TASKS_DIR),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--executor-output-rate", "fast"],
            "worker: executor_output_rate from --executor-output-rate: "
            "cannot read 'fast' as a size",
        ),
        (
            ["--executor-output-burst", "0"],
            "worker: executor_output_burst must be an int >= 1 (bytes), got 0",
        ),
    ],
)
def test_worker_command_refuses_a_bad_output_budget(args: list[str], message: str) -> None:
    proc = worker_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
