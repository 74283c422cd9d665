"""The execution manager's settings (`orbweaver worker` builds them from its options)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from orbweaver._rpc import Security
from orbweaver.worker.isolation import parse_env_allow
from orbweaver.worker.pool import DEFAULT_OUTPUT_BURST, DEFAULT_OUTPUT_RATE


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    storage: str
    scheduler: str
    tasks_dir: Path
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    security: Security = field(default_factory=Security)
    ip_address: str = ""
    # Most tasks queued ahead of an executor process; the EM holds about 50 ms of work per
    # executor (see `PrefetchSizer`), this is the upper bound for tiny tasks.
    prefetch: int = 256
    # Most tasks handed to one executor in one round trip (amortises IPC for tiny tasks); a
    # batch also holds no more than about 50 ms of work.
    executor_batch: int = 64
    poll_wait: float = 1.0
    heartbeat_interval: float = 1.0
    report_batch: int = 512
    drain_timeout: float = 30.0
    metrics_port: int | None = None
    # The worker listens on no address of its own: metrics stay on loopback unless asked.
    metrics_host: str = "127.0.0.1"
    # Each executor's budget of forwarded output (task prints and executor logs): bytes per
    # second and largest burst; the excess is dropped and counted in a periodic warning.
    executor_output_rate: int = DEFAULT_OUTPUT_RATE
    executor_output_burst: int = DEFAULT_OUTPUT_BURST
    # Variables of the worker's environment that executors (task code) may see besides the
    # minimal base: names or fnmatch patterns. Secret ORBWEAVER_* variables never pass.
    executor_env: tuple[str, ...] = ()
    # A cgroup v2 per executor where this process may create them (else process groups only).
    executor_cgroups: bool = True

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError("worker: --processes must be at least 1")
        for name in ("executor_output_rate", "executor_output_burst"):
            amount = getattr(self, name)
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
                raise ValueError(f"worker: {name} must be an int >= 1 (bytes), got {amount!r}")
        if isinstance(self.executor_env, str) or not all(
            isinstance(name, str) for name in self.executor_env
        ):
            raise ValueError(
                f"worker: executor_env must be a tuple of names, got {self.executor_env!r}"
            )
        object.__setattr__(self, "executor_env", parse_env_allow(self.executor_env))
        if self.prefetch < 1:
            raise ValueError(f"worker: prefetch must be at least 1, got {self.prefetch}")
        if not self.tasks_dir.is_dir():
            raise ValueError(f"worker: tasks directory {self.tasks_dir} does not exist")
