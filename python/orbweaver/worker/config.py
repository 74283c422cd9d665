"""The execution manager's settings: defaults < TOML file < environment < flags
(`orbweaver._config`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from orbweaver._config import Loadable, setting
from orbweaver._rpc import Security
from orbweaver.worker.isolation import parse_env_allow
from orbweaver.worker.pool import DEFAULT_OUTPUT_BURST, DEFAULT_OUTPUT_RATE


@dataclass(frozen=True, slots=True)
class WorkerConfig(Loadable):
    """Every setting of an execution manager (`orbweaver worker`, TOML table `[worker]`,
    variables `ORBWEAVER_WORKER_<NAME>`)."""

    SERVICE: ClassVar[str] = "worker"

    storage: str = setting(
        help="storage address host:port (several storages: a:50051,b:50051)",
        env=("ORBWEAVER_STORAGE",),
        metavar="ADDR",
    )
    scheduler: str = setting(help="scheduler address host:port", metavar="ADDR")
    tasks_dir: Path = setting(
        help="directory of task modules (imported from there only)",
        env=("ORBWEAVER_TASKS_DIR",),
        metavar="DIR",
    )
    processes: int = setting(
        help="executor processes, i.e. tasks run at once (default: the CPU count)",
        default_factory=lambda: os.cpu_count() or 1,
    )
    security: Security = field(default_factory=Security)
    ip_address: str = setting(
        "", help="address registered with storage (default: the outbound address)", flag="--ip"
    )
    # The EM holds about 50 ms of work per executor (see `PrefetchSizer`); this bounds it for
    # tiny tasks.
    prefetch: int = setting(256, help="most tasks held ahead of the executors")
    # Amortises IPC for tiny tasks; a batch also holds no more than about 50 ms of work.
    executor_batch: int = setting(64, help="most tasks handed to one executor at once")
    # A value read by many tasks is held once per task registered: registrations wait while the
    # tasks waiting for an executor hold this much input.
    queued_input_bytes: int = setting(
        16 << 20,
        help="task inputs the tasks registered but not running yet may hold (more tasks are "
        "registered as executors take them; a single task's always fit)",
        unit="bytes",
    )
    poll_wait: float = setting(
        1.0, help="server-side wait of each poll of the scheduler", unit="seconds"
    )
    heartbeat_interval: float = setting(
        1.0, help="period of heartbeats to storage and scheduler", unit="seconds"
    )
    report_batch: int = setting(512, help="most task outcomes in one report to storage")
    # Storage then registers the tasks a report made ready for this EM in the report's reply
    # (only while nothing else waits to be scheduled): one trip through the scheduler less.
    continue_tasks: bool = setting(
        True, help="offer free places with each report, for the tasks the outcomes made ready"
    )
    # An idle EM's long poll on storage: a job's first task then skips the scheduler's two hops
    # and the registration (only while the EM is idle: placement has nothing to decide).
    take_tasks: bool = setting(
        True, help="while idle, also ask storage directly for the next ready task"
    )
    drain_timeout: float = setting(
        30.0, help="on SIGTERM, how long running tasks may finish", unit="seconds"
    )
    metrics_port: int | None = setting(None, help="serve Prometheus metrics on this port")
    # The worker listens on no address of its own: metrics stay on loopback unless asked.
    metrics_host: str = setting("127.0.0.1", help="address of the metrics endpoint")
    # The excess is dropped and counted in a periodic warning.
    executor_output_rate: int = setting(
        DEFAULT_OUTPUT_RATE,
        help="task output (stdout, stderr) forwarded per executor and second",
        unit="bytes",
    )
    executor_output_burst: int = setting(
        DEFAULT_OUTPUT_BURST,
        help="largest burst of forwarded task output per executor",
        unit="bytes",
    )
    # Secret ORBWEAVER_* variables never pass, even when listed.
    executor_env: tuple[str, ...] = setting(
        (),
        help="variables of this environment task code may see: names or patterns like 'AWS_*'",
        env=("ORBWEAVER_EXECUTOR_ENV",),
    )
    # Process groups contain executors either way.
    executor_cgroups: bool = setting(
        True, help="a cgroup v2 per executor where this process may create one"
    )

    def __post_init__(self) -> None:
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
        for name in ("processes", "executor_batch", "report_batch", "queued_input_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"worker: {name} must be at least 1, got {getattr(self, name)}")
        for name in ("poll_wait", "heartbeat_interval", "drain_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"worker: {name} must be > 0 seconds, got {getattr(self, name)}")
        object.__setattr__(self, "tasks_dir", Path(self.tasks_dir).resolve())
        if not self.tasks_dir.is_dir():
            raise ValueError(f"worker: tasks directory {self.tasks_dir} does not exist")
