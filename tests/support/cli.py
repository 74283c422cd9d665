"""Running the `orbweaver` command line as users do: a clean environment (no ORBWEAVER_*
variables of the test process), this checkout on PYTHONPATH, captured output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.mariadb_server import free_port

__all__ = ["ORBWEAVER", "REPO", "base_env", "cli", "free_port", "show"]

REPO = Path(__file__).resolve().parents[2]
ORBWEAVER = [sys.executable, "-m", "orbweaver"]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORBWEAVER_")}
    paths = [str(REPO / "python"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["COLUMNS"] = "200"  # wide rich tables: one row per line
    env.update(extra)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ORBWEAVER, *args],
        env=env if env is not None else base_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
