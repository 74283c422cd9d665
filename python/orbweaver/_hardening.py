"""Keeping a service's secrets from code of the same user: once a process has read its
settings, it forgets the secret ``ORBWEAVER_*`` variables (removed from its environment and
overwritten in the initial environment block that ``/proc/<pid>/environ`` shows) and makes itself
non-dumpable (its ``/proc`` files, memory and ptrace are root's only). Every service does it at
start (`orbweaver storage`, `scheduler`, `worker`); executors never get those variables at all
(`orbweaver.worker.isolation`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from pathlib import Path
from typing import Final

__all__ = [
    "HARMLESS_ORBWEAVER",
    "denied",
    "forget_secrets",
    "harden_process",
    "make_non_dumpable",
]

log = logging.getLogger("orbweaver")

# ORBWEAVER_* settings that hold no secret: a directory, a log level, the demo's output
# directory. Every other ORBWEAVER_* name is treated as a secret.
HARMLESS_ORBWEAVER: Final = frozenset(
    {"ORBWEAVER_TASKS_DIR", "ORBWEAVER_LOG_LEVEL", "ORBWEAVER_DEMO_DIR"}
)
_PREFIX: Final = "ORBWEAVER_"


def denied(name: str) -> bool:
    """Whether `name` is a secret (never passed to executors, even when allow-listed)."""
    return name.startswith(_PREFIX) and name not in HARMLESS_ORBWEAVER


_PR_SET_DUMPABLE: Final = 4


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def make_non_dumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``: no core dumps, no ptrace, and ``/proc/<pid>/environ``,
    ``mem``, ``fd`` and friends owned by root, for this process (its executors are dumpable
    again: ``execve`` resets it). Linux only; False where it could not be done."""
    libc = _libc()
    if libc is None:
        return False
    return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0


def forget_secrets(environ: dict[str, str] | os._Environ[str] | None = None) -> list[str]:
    """Remove the denied ``ORBWEAVER_*`` variables from this process's environment (``os.environ``
    by default) and overwrite them in the initial environment block, which
    ``/proc/<pid>/environ`` shows whatever ``os.environ`` holds. Call it once their values were
    read. Returns the names removed."""
    env = os.environ if environ is None else environ
    names = [name for name in env if denied(name)]
    for name in names:
        del env[name]
    if env is os.environ and names:
        _wipe_initial_environ({name.encode() for name in names})
    return names


def _wipe_initial_environ(names: set[bytes]) -> None:
    """Zero the ``NAME=value`` strings of `names` in the environment block the kernel set up at
    exec (the range ``/proc/self/stat`` gives). libc no longer points at them once they were
    unset, so nothing reads them afterwards."""
    if not sys.platform.startswith("linux"):
        return
    try:
        stat = Path("/proc/self/stat").read_bytes()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50, 51)
    except (OSError, ValueError, IndexError):
        return
    if not 0 < start < end:
        return
    offset = 0
    for entry in ctypes.string_at(start, end - start).split(b"\0"):
        if entry and entry.partition(b"=")[0] in names:
            ctypes.memset(start + offset, 0, len(entry))
        offset += len(entry) + 1


def harden_process(component: str) -> None:
    """What a service process does once its settings are read: forget the secrets in its
    environment and become non-dumpable."""
    removed = forget_secrets()
    dumpable = not make_non_dumpable()
    log.info(
        f"{component} process hardened",
        extra={"removed_from_environment": removed, "dumpable": dumpable},
    )
