"""What task code can see of the worker: the executors' environment, and the worker process.

Executors get a small fixed environment (`BASE_NAMES`, ``LC_*``, the harmless ``ORBWEAVER_*``
settings in `HARMLESS_ORBWEAVER`, and what Python needs to import Orbweaver) plus the variables
an operator allow-lists by name or fnmatch pattern (`WorkerConfig.executor_env`). Any other
``ORBWEAVER_*`` variable -- the cluster token, passwords, database URLs, TLS key paths -- is never
passed, allow-listed or not.

The worker process itself (`harden_worker_process`) drops the secret ``ORBWEAVER_*`` variables
from its environment once it has read them, overwriting them in the initial environment block
that ``/proc/<pid>/environ`` shows, and makes itself non-dumpable, so that task code running as
the same user cannot read that file, its memory or attach a debugger.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fnmatch
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "BASE_NAMES",
    "BASE_PATTERNS",
    "HARMLESS_ORBWEAVER",
    "denied",
    "executor_environment",
    "forget_secrets",
    "harden_worker_process",
    "ignored_entries",
    "make_non_dumpable",
    "parse_env_allow",
]

log = logging.getLogger("orbweaver.worker")

# What every executor gets from the worker's environment (when set there).
BASE_NAMES: Final = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "USER",
        "LOGNAME",
        # The interpreter may need these to start or to find its own libraries.
        "LD_LIBRARY_PATH",
        "PYTHONHOME",
        "PYTHONHASHSEED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONPYCACHEPREFIX",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONWARNINGS",
        "PYTHONDEVMODE",
        "PYTHONFAULTHANDLER",
    }
)
BASE_PATTERNS: Final = ("LC_*",)
# ORBWEAVER_* settings that hold no secret: a directory, a log level, the demo's output
# directory. Every other ORBWEAVER_* name is denied to executors.
HARMLESS_ORBWEAVER: Final = frozenset(
    {"ORBWEAVER_TASKS_DIR", "ORBWEAVER_LOG_LEVEL", "ORBWEAVER_DEMO_DIR"}
)
_PREFIX: Final = "ORBWEAVER_"
_NAME_PATTERN: Final = re.compile(r"[^\s=,]+")


def denied(name: str) -> bool:
    """Whether `name` is never passed to executors, even when allow-listed."""
    return name.startswith(_PREFIX) and name not in HARMLESS_ORBWEAVER


def parse_env_allow(value: str | Iterable[str]) -> tuple[str, ...]:
    """Allow-list entries from ``"NAME,PATTERN*"`` (or several such strings). Raises
    `ValueError` for an entry that cannot be a variable name or pattern."""
    items = [value] if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        for part in item.split(","):
            name = part.strip()
            if not name:
                continue
            if not _NAME_PATTERN.fullmatch(name):
                raise ValueError(
                    f"executor_env: {name!r} is not an environment variable name or pattern"
                )
            names.append(name)
    return tuple(dict.fromkeys(names))


def executor_environment(
    environ: Mapping[str, str],
    allow: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
    python_root: str | None = None,
) -> dict[str, str]:
    """The environment of an executor: from `environ` the base variables and those matching
    `allow` (never a denied ``ORBWEAVER_*`` one), then `extra` as given (set explicitly by the
    code that builds the pool), with `python_root` first on ``PYTHONPATH`` and unbuffered
    output."""
    patterns = (*BASE_PATTERNS, *allow)
    env = {
        name: value
        for name, value in environ.items()
        if not denied(name)
        and (
            name in BASE_NAMES
            or name in HARMLESS_ORBWEAVER
            or any(fnmatch.fnmatchcase(name, p) for p in patterns)
        )
    }
    env.update(extra or {})
    inherited = (extra or {}).get("PYTHONPATH", environ.get("PYTHONPATH", ""))
    paths = [*([python_root] if python_root else []), *filter(None, inherited.split(os.pathsep))]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ignored_entries(allow: Sequence[str]) -> list[str]:
    """Allow-list entries that name a denied variable outright (they have no effect)."""
    return [name for name in allow if denied(name) and not _is_pattern(name)]


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


# -------------------------------------------------------------------------------------------------
# The worker process
# -------------------------------------------------------------------------------------------------

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


def harden_worker_process() -> None:
    """What a worker process does at start, once its settings are read: forget the secrets in
    its environment and become non-dumpable. Not for a process that embeds an execution manager
    among other things (a test run, an application): there it is the embedder's decision."""
    removed = forget_secrets()
    dumpable = not make_non_dumpable()
    log.info(
        "worker process hardened",
        extra={"removed_from_environment": removed, "dumpable": dumpable},
    )
