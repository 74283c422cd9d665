"""The storage service's settings: defaults < TOML file < environment < flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from orbweaver._config import Loadable, setting
from orbweaver._limits import MESSAGE_OVERHEAD_BYTES
from orbweaver._rpc import DEFAULT_MAX_MESSAGE_BYTES, Security
from orbweaver.storage.db.url import ENV_DB_URL


@dataclass(frozen=True, slots=True)
class StorageConfig(Loadable):
    """Every setting of the storage service (`orbweaver storage`, TOML table `[storage]`,
    variables `ORBWEAVER_STORAGE_<NAME>`; see `orbweaver._config`)."""

    SERVICE: ClassVar[str] = "storage"

    db_url: str = setting(
        "sqlite:///orbweaver.db",
        help="database URL: sqlite:///PATH or mariadb://USER@HOST:PORT/DB",
        flag="--db",
        env=(ENV_DB_URL,),
        metavar="URL",
    )
    listen: str = setting(
        "127.0.0.1:50051", help="host:port to listen on (port 0: any free port)", metavar="ADDR"
    )
    advertise: str | None = setting(
        None,
        help="host:port clients are sent to while this storage leads (default: the listen "
        "address; needed when listening on 0.0.0.0)",
        metavar="ADDR",
    )
    # Several storages may run on one database: one leads, the others stand by (failover).
    lease: float = setting(
        3.0,
        help="leadership lease: a leader silent this long is replaced by a standby",
        unit="seconds",
    )
    security: Security = field(default_factory=Security)
    # Without an operator token, anyone who reaches the service may create resource groups.
    operator_token: str | None = setting(
        None,
        help="the operator (admin) credential: sees every resource group, creates them",
        env=("ORBWEAVER_OPERATOR_TOKEN",),
        secret=True,
    )
    max_message_bytes: int = setting(
        DEFAULT_MAX_MESSAGE_BYTES, help="largest gRPC message accepted or sent", unit="bytes"
    )
    # Limits on what a submission may hold, checked after decompression (docs/security.md).
    max_graph_bytes: int = setting(
        64 << 20, help="a submitted graph's JSON, once decompressed", unit="bytes"
    )
    max_input_bytes: int = setting(
        32 << 20, help="a job's graph inputs, once decompressed", unit="bytes"
    )
    max_tasks: int = setting(100_000, help="tasks in one job's graph")
    # Limits on what a job may hold in memory while it runs.
    max_task_output_bytes: int = setting(
        32 << 20, help="one task's reported outputs (beyond: the job fails)", unit="bytes"
    )
    max_job_bytes: int = setting(
        256 << 20,
        help="graph inputs plus task outputs one running job keeps (beyond: the job fails)",
        unit="bytes",
    )
    task_outputs_queue_bytes: int = setting(
        64 << 20,
        help='task outputs of durability="task" jobs waiting to be written (beyond: that job '
        "falls back to job-level durability)",
        unit="bytes",
    )
    # Each task's inputs are copied into the reply that registers it: a value read by many
    # tasks registered together would otherwise cost the storage (and the execution manager)
    # one copy per reader at once.
    registration_reply_bytes: int = setting(
        8 << 20,
        help="task inputs one registration reply carries in all (a single task's always fit; "
        "the others are registered by the next call)",
        unit="bytes",
    )
    # Each submission being parsed may hold max_graph_bytes + max_input_bytes.
    max_concurrent_submissions: int = setting(4, help="submissions decompressed and parsed at once")
    cached_outputs_bytes: int = setting(
        1 << 20,
        help="succeeded jobs keep outputs up to this size in memory (larger: read from the DB)",
        unit="bytes",
    )
    visibility_timeout: float = setting(
        60.0,
        help="a ready entry a scheduler took but nobody registered within this is offered again",
        unit="seconds",
    )
    grpc_workers: int = setting(256, help="gRPC handler threads")
    task_capacity: int = setting(1 << 20, help="inbound-queue capacity of the task lane")
    commit_capacity: int = setting(1024, help="inbound-queue capacity of the commit lane")
    cleanup_capacity: int = setting(1024, help="inbound-queue capacity of the cleanup lane")
    em_stale_cutoff: float = setting(
        60.0, help="an execution manager without heartbeats this long is dead", unit="seconds"
    )
    instance_gc_interval: float = setting(
        5.0, help="period of the dead-EM sweep and soft-timeout pass", unit="seconds"
    )
    job_cache_retention: float = setting(
        300.0, help="terminated jobs stay in memory this long", unit="seconds"
    )
    job_cache_gc_interval: float = setting(
        30.0, help="period of the job-cache sweep", unit="seconds"
    )
    job_retention: float | None = setting(
        7 * 24 * 3600.0,
        help="terminated jobs are deleted from the database after this (none: kept forever)",
        unit="seconds",
    )
    db_gc_interval: float = setting(3600.0, help="period of the database sweep", unit="seconds")
    recovery_page_size: int = setting(500, help="rows per page when rebuilding the cache at start")
    max_wait: float = setting(
        60.0, help="longest server-side wait of WaitJob and polls", unit="seconds"
    )
    metrics_port: int | None = setting(None, help="serve Prometheus metrics on this port")
    metrics_host: str | None = setting(
        None, help="address of the metrics endpoint (default: the host of listen)"
    )
    db_retry_deadline: float = setting(
        5.0,
        help="how long a call retries an unreachable database before it answers UNAVAILABLE",
        unit="seconds",
    )

    def __post_init__(self) -> None:
        for name in (
            "task_capacity",
            "commit_capacity",
            "cleanup_capacity",
            "grpc_workers",
            "recovery_page_size",
            "max_message_bytes",
            "max_graph_bytes",
            "max_input_bytes",
            "max_tasks",
            "max_task_output_bytes",
            "max_job_bytes",
            "max_concurrent_submissions",
            "task_outputs_queue_bytes",
            "registration_reply_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"storage config: {name} must be > 0")
        for name in (
            "em_stale_cutoff",
            "instance_gc_interval",
            "job_cache_retention",
            "job_cache_gc_interval",
            "db_gc_interval",
            "max_wait",
            "db_retry_deadline",
            "visibility_timeout",
            "lease",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"storage config: {name} must be > 0 seconds")
        if self.job_retention is not None and self.job_retention <= 0:
            raise ValueError("storage config: job_retention must be > 0 seconds (or unset)")
        if self.max_input_bytes > self.max_message_bytes - MESSAGE_OVERHEAD_BYTES:
            # A cleanup task receives the graph inputs in one message.
            raise ValueError(
                f"storage config: max_input_bytes ({self.max_input_bytes}) must leave room in "
                f"max_message_bytes ({self.max_message_bytes}) for 64 KiB of framing"
            )
        if self.operator_token is not None and self.operator_token == self.security.token:
            raise ValueError(
                "storage config: the operator token must differ from the cluster token (the "
                "cluster token is handed to every scheduler and execution manager)"
            )

    def replace(self, **changes: Any) -> StorageConfig:
        return dataclasses.replace(self, **changes)
