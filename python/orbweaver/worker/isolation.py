"""What task code can see of the worker (the executors' environment, the worker process), and
the cgroups that contain executors where the kernel allows it.

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

import contextlib
import fnmatch
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from orbweaver._hardening import (
    HARMLESS_ORBWEAVER,
    denied,
    forget_secrets,
    harden_process,
    make_non_dumpable,
)

__all__ = [
    "BASE_NAMES",
    "BASE_PATTERNS",
    "HARMLESS_ORBWEAVER",
    "CgroupTree",
    "denied",
    "executor_environment",
    "forget_secrets",
    "harden_worker_process",
    "ignored_entries",
    "in_cgroup",
    "kill_cgroup",
    "make_non_dumpable",
    "own_cgroup",
    "parse_env_allow",
    "remove_cgroup",
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
_NAME_PATTERN: Final = re.compile(r"[^\s=,]+")


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


def harden_worker_process() -> None:
    """What a worker process does at start, once its settings are read (see
    `orbweaver._hardening`). Not for a process that embeds an execution manager among other
    things (a test run, an application): there it is the embedder's decision."""
    harden_process("worker")


# -------------------------------------------------------------------------------------------------
# cgroup v2
# -------------------------------------------------------------------------------------------------


def own_cgroup() -> Path | None:
    """The directory of this process's cgroup v2 (unified hierarchy), or None where there is
    none (no cgroup v2 mount, not Linux)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        relative = next(line[3:] for line in lines if line.startswith("0::"))
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except (OSError, StopIteration):
        return None
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if right.split()[:1] != ["cgroup2"] or len(fields) < 5:
            continue
        root, mount = fields[3], fields[4]
        if root == "/":
            inside = relative
        elif relative == root or relative.startswith(root + "/"):
            inside = relative[len(root) :]
        else:
            continue
        return Path(mount, inside.lstrip("/"))
    return None


def kill_cgroup(path: Path) -> None:
    """SIGKILL every process of the cgroup at `path` (``cgroup.kill``, Linux 5.14+; else each
    listed process, until none is left). Silent when it cannot."""
    try:
        (path / "cgroup.kill").write_text("1")
        return
    except FileNotFoundError:
        pass
    except OSError:
        return
    for _ in range(100):
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


class CgroupTree:
    """A cgroup v2 directory for one pool's executors, one child cgroup each, created under this
    process's own cgroup where the kernel lets it (writable, delegated or root); `create`
    returns None elsewhere and containment falls back to process groups. A child of an executor
    that leaves its process group (``setsid``) stays in the cgroup and dies with it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seq = 0

    @staticmethod
    def create() -> CgroupTree | None:
        base = own_cgroup()
        if base is None or not os.access(base, os.W_OK):
            return None
        _sweep_stale(base)
        path = base / f"{_TREE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except OSError:
            return None
        return CgroupTree(path)

    def new_child(self) -> Path | None:
        """A new empty child cgroup, or None when it cannot be created."""
        self._seq += 1
        child = self.path / f"executor-{self._seq}"
        try:
            child.mkdir()
        except OSError:
            return None
        return child

    @staticmethod
    def join(child: Path, pid: int) -> bool:
        """Move `pid` into `child`; False (and `child` removed) when the kernel refuses."""
        try:
            (child / "cgroup.procs").write_text(str(pid))
            return True
        except OSError:
            remove_cgroup(child)
            return False

    def remove(self) -> None:
        for child in self.path.glob("executor-*"):
            kill_cgroup(child)
            remove_cgroup(child)
        remove_cgroup(self.path)


_TREE_PREFIX: Final = "orbweaver-executors-"


def _sweep_stale(base: Path) -> None:
    """Remove the empty cgroups left by pools whose process died (their executors killed
    themselves, but nobody was left to remove the directories). Nothing is killed here."""
    for tree in base.glob(f"{_TREE_PREFIX}*"):
        try:
            pid = int(tree.name[len(_TREE_PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        for cgroup in [*tree.glob("executor-*"), tree]:
            if not _holds_processes(cgroup):
                # Processes that just died may keep it busy a moment longer.
                _rmdir_retrying(cgroup)


def _holds_processes(cgroup: Path) -> bool:
    """Whether a process is still in `cgroup` (unreadable: assume so, and leave it alone)."""
    try:
        return bool((cgroup / "cgroup.procs").read_text().strip())
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_cgroup(path: Path) -> None:
    """Remove an empty cgroup (its killed processes may take a moment to leave it)."""
    if not _rmdir_retrying(path):
        log.warning("cannot remove the cgroup %s", path)


def _rmdir_retrying(path: Path) -> bool:
    """Remove an empty cgroup, for up to half a second while it stays busy; False if it did."""
    for _ in range(50):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(0.01)
    return False


def in_cgroup(path: Path) -> bool:
    """Whether this process is in the cgroup at `path`."""
    return own_cgroup() == path
