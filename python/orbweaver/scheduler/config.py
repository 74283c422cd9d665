"""The scheduler's settings: defaults < TOML file < environment < flags (`orbweaver._config`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from orbweaver import _rpc, errors
from orbweaver._config import Loadable, setting
from orbweaver.scheduler.core import POLICIES, CoreConfig

DEFAULT_LISTEN = "0.0.0.0:50052"


@dataclass(frozen=True, slots=True)
class SchedulerConfig(Loadable):
    """Every setting of a scheduler process (`orbweaver scheduler`, TOML table `[scheduler]`,
    variables `ORBWEAVER_SCHEDULER_<NAME>`)."""

    SERVICE: ClassVar[str] = "scheduler"

    storage: str = setting(
        "127.0.0.1:50051",
        help="storage address host:port (several storages: a:50051,b:50051)",
        env=("ORBWEAVER_STORAGE",),
        metavar="ADDR",
    )
    listen: str = setting(
        DEFAULT_LISTEN,
        help="host:port the execution managers reach (port 0: any free port)",
        metavar="ADDR",
    )
    # What is registered with storage; derived from `listen` (and the bound port) when None.
    advertised_host: str | None = setting(
        None, help="host the storage records for this scheduler", flag="--advertise"
    )
    advertised_port: int | None = setting(
        None, help="port the storage records for this scheduler (default: the bound port)"
    )
    security: _rpc.Security = field(default_factory=_rpc.Security)
    max_message_bytes: int = setting(
        _rpc.DEFAULT_MAX_MESSAGE_BYTES, help="largest gRPC message accepted or sent", unit="bytes"
    )
    policy: str = setting(
        "group_round_robin",
        help="placement: group_round_robin (fair across resource groups, then jobs) or "
        "job_round_robin (fair across jobs only)",
    )
    active_job_queue_capacity: int = setting(
        16, help="active jobs per resource group in the rotation (others wait, FIFO)"
    )
    dispatch_queue_capacity: int = setting(256, help="assignments decided ahead of EM requests")
    ready_task_capacity: int = setting(65_536, help="buffered ready entries of the task lane")
    commit_ready_task_capacity: int = setting(256, help="buffered ready entries of the commit lane")
    cleanup_ready_task_capacity: int = setting(
        256, help="buffered ready entries of the cleanup lane"
    )
    finalizing_job_expiration: float = setting(
        300.0,
        help="how long a committing or cleaning job's regular entries are ignored",
        unit="seconds",
    )
    # New work ends the wait at once; what else the core loop does between polls (rescheduling
    # a lost EM's assignments, expiring finalizing jobs) can wait this long. At 10 ms an idle
    # cluster's storage and scheduler spent 10 % and 7 % of a core polling.
    storage_poll_wait: float = setting(
        0.1, help="server-side wait of each inbound-queue poll", unit="seconds"
    )
    storage_rpc_timeout: float = setting(10.0, help="deadline of a storage call", unit="seconds")
    retry_backoff_base: float = setting(
        0.05, help="first delay of registration and poll retries", unit="seconds"
    )
    retry_backoff_cap: float = setting(
        2.0, help="longest delay of registration and poll retries", unit="seconds"
    )
    registration_timeout: float | None = setting(
        None,
        help="give up registering with storage after this (none: retry until stopped)",
        unit="seconds",
    )
    dead_em_cutoff: float = setting(
        30.0,
        help="an EM silent this long has its unacknowledged assignments rescheduled",
        unit="seconds",
    )
    liveness_tracking_interval: float = setting(
        1.0, help="period of the EM liveness check", unit="seconds"
    )
    max_long_poll: float = setting(
        30.0, help="longest server-side wait of an EM's NextTasks call", unit="seconds"
    )
    max_batch_items: int = setting(256, help="most assignments in one NextTasks answer")
    grpc_workers: int = setting(256, help="gRPC handler threads (each waiting EM poll holds one)")
    stop_timeout: float = setting(
        30.0, help="how long a stop waits for the scheduling loop", unit="seconds"
    )
    metrics_port: int | None = setting(
        None, help="serve Prometheus metrics on this port (0: any free port)"
    )
    # None: the host of `listen`, so a scheduler reachable only from this machine keeps its
    # metrics private.
    metrics_host: str | None = setting(
        None, help="address of the metrics endpoint (default: the host of listen)"
    )

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise errors.InvalidArgument(
                f"unknown scheduling policy {self.policy!r}; expected one of {', '.join(POLICIES)}"
            )
        self.core_config()  # validates the capacities
        positive = (
            "dispatch_queue_capacity",
            "storage_rpc_timeout",
            "dead_em_cutoff",
            "liveness_tracking_interval",
            "max_batch_items",
            "grpc_workers",
            "max_message_bytes",
            "retry_backoff_cap",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise errors.InvalidArgument(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("storage_poll_wait", "max_long_poll", "stop_timeout", "retry_backoff_base"):
            if getattr(self, name) < 0:
                raise errors.InvalidArgument(
                    f"{name} must not be negative, got {getattr(self, name)}"
                )
        if ":" not in self.storage:
            raise errors.InvalidArgument(f"storage address must be host:port, got {self.storage!r}")
        if ":" not in self.listen:
            raise errors.InvalidArgument(f"listen address must be host:port, got {self.listen!r}")

    @property
    def retry_backoff(self) -> _rpc.Backoff:
        """Retry policy for registration and polling (exponential with full jitter, capped)."""
        return _rpc.Backoff(base=self.retry_backoff_base, cap=self.retry_backoff_cap)

    def core_config(self) -> CoreConfig:
        return CoreConfig(
            policy=self.policy,
            active_job_queue_capacity=self.active_job_queue_capacity,
            ready_task_capacity=self.ready_task_capacity,
            commit_ready_task_capacity=self.commit_ready_task_capacity,
            cleanup_ready_task_capacity=self.cleanup_ready_task_capacity,
            finalizing_job_expiration_s=self.finalizing_job_expiration,
        )

    def describe(self) -> dict[str, Any]:
        """The configuration as loggable fields (no secrets)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "security"}
        out["token"] = self.security.token is not None
        out["tls"] = self.security.tls is not None
        return out
