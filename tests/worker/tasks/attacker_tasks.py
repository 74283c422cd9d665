"""Task code looking for secrets it should not see (for the isolation tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import orbweaver as ow


def _read(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<{type(exc).__name__}>"


@ow.task
def environment() -> dict[str, str]:
    return dict(os.environ)


@ow.task
def snoop(secret: str) -> str:
    """As JSON: this task's environment, its parent's (the worker's) environ and cmdline as far
    as it can read them, and every process whose environ it can read and finds `secret` in."""
    holders = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if secret.encode() in data:
            holders.append(int(entry))
    ppid = os.getppid()
    return json.dumps(
        {
            "environ": dict(os.environ),
            "ppid": ppid,
            "parent_environ": _read(f"/proc/{ppid}/environ"),
            "parent_cmdline": _read(f"/proc/{ppid}/cmdline"),
            "holders": holders,
        }
    )
