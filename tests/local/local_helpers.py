"""Helpers of the `tests/local` tests: run a program in the background, read its output lines,
list and inspect the process tree it started, and wait for that tree to be gone."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from support.cli import base_env

TASKS = Path(__file__).resolve().parent / "tasks"
START_TIMEOUT = 120.0
# A component stops cleanly when its parent dies; the worker also stops its executors, which may
# finish a task first. Generous: this bounds a hang, it does not measure anything.
GONE_TIMEOUT = 120.0


class Program:
    """A background process whose stdout lines are collected as they come."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.popen = subprocess.Popen(
            args,
            env=env if env is not None else base_env(),
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, marker: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.popen.kill()
                raise AssertionError(
                    f"no line with {marker!r} from {self.popen.args}: {self.lines}\n"
                    f"stderr:\n{self.stderr()[-4000:]}"
                )
            self.lines.append(line)
            if marker in line:
                return line

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.popen.pid).children(recursive=True)


def cmdline(proc: psutil.Process) -> str:
    """The process's command line exactly as every local user sees it (/proc/PID/cmdline)."""
    return Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")


def role(proc: psutil.Process) -> str:
    """storage, scheduler, worker or executor (or the program's own command line)."""
    line = cmdline(proc).split("\0")
    if "orbweaver.worker.executor" in line:
        return "executor"
    for name in ("storage", "scheduler", "worker", "local"):
        if name in line:
            return name
    return " ".join(line)


def roles(procs: Iterable[psutil.Process]) -> list[str]:
    return sorted(role(p) for p in procs)


def running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie has exited; its new parent may simply not reap it)."""
    alive = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_gone(procs: list[psutil.Process], timeout: float = GONE_TIMEOUT) -> list[str]:
    """Wait until none of `procs` runs; returns the descriptions of those left running."""
    deadline = time.monotonic() + timeout
    while running(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = []
    for p in running(procs):
        with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError):
            left.append(f"{p.pid} {role(p)}: {' '.join(p.cmdline())}")
    return left


def kill_all(procs: Iterable[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
