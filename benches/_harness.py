"""Shared pieces of the benchmark harnesses (``recovery.py``, ``e2e.py``).

* :func:`private_server`: a private MariaDB server (``tests/support/mariadb_server.py``, shared
  with the tests): ``mariadb-install-db`` into a temporary directory, then ``mariadbd`` on a free
  loopback port and a socket, with a password-less ``root``; stopped with SIGTERM (then SIGKILL).
  ``ORBWEAVER_BENCH_MARIADB_URL`` (``mariadb://user:pw@host:port``) uses an existing server.
* :func:`machine_info`, :func:`write_results`: what every results file records.
* :func:`median`, :func:`percentile`: the statistics of the summaries.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.mariadb_server import MariaDBServer, external_server
from support.mariadb_server import private_server as _private_server

EXTERNAL_ENV = "ORBWEAVER_BENCH_MARIADB_URL"


@contextlib.contextmanager
def private_server(buffer_pool: str = "1G", flush: int = 2) -> Iterator[MariaDBServer]:
    """A private MariaDB server for the ``with`` block (the test suite's own, from
    ``tests/support/mariadb_server.py``), or ``$ORBWEAVER_BENCH_MARIADB_URL``.

    The settings are those of the test suite except a buffer pool big enough to hold the
    benchmark's tables (the test suite's 64 MiB is sized for tiny databases). `flush`:
    ``innodb_flush_log_at_trx_commit`` (2: every commit reaches the OS, the disk within a
    second; 1: the disk at every commit).
    """
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        yield external_server(external)
        return
    with _private_server(
        buffer_pool=buffer_pool, prefix="owbench-", flush_log_at_trx_commit=flush
    ) as server:
        yield server


def server_version(server: MariaDBServer) -> str:
    return server.version()


# -- results files --

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benches" / "results"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


_LOAD_AT_START = os.getloadavg()


def machine_info() -> dict[str, Any]:
    """The machine, and its load average (1, 5, 15 min) when the harness started and ended: the
    benchmarks share the machine with whatever else runs on it."""
    import psutil

    return {
        "load_average_start": [round(x, 2) for x in _LOAD_AT_START],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def warn_if_busy(threshold: float = 0.5) -> None:
    """Say so when something else keeps the CPUs busy: the figures would not mean much."""
    load = os.getloadavg()[0]
    if load > threshold:
        print(
            f"warning: load average {load:.2f} before the benchmark; other work on this "
            "machine will distort the figures",
            file=sys.stderr,
            flush=True,
        )


def orbweaver_version() -> str:
    import orbweaver

    return str(getattr(orbweaver, "__version__", "unknown"))


def write_results(path: Path, payload: dict[str, Any]) -> None:
    payload = {
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python", *[shlex.quote(a) for a in sys.argv]]),
        "git_commit": _git_commit(),
        "machine": machine_info(),
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
