"""Storage-service configuration: defaults, a TOML config file, and command-line overrides."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orbweaver._config import read_table
from orbweaver._limits import MESSAGE_OVERHEAD_BYTES
from orbweaver._rpc import DEFAULT_MAX_MESSAGE_BYTES, Security


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Every knob of the storage service. Times are seconds unless the name says otherwise."""

    db_url: str = "sqlite:///orbweaver.db"
    listen: str = "127.0.0.1:50051"
    security: Security = field(default_factory=Security)
    # The operator (admin) credential: sees every resource group, creates resource groups.
    # Without it, anyone who reaches the service may create resource groups.
    operator_token: str | None = field(default=None, repr=False)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Limits on what a submission may hold, checked after decompression (docs/security.md).
    max_graph_bytes: int = 64 << 20
    max_input_bytes: int = 32 << 20
    max_tasks: int = 100_000
    # Limits on what a job may hold in memory while it runs: one task's reported outputs, and
    # its graph inputs plus every task output it keeps.
    max_task_output_bytes: int = 32 << 20
    max_job_bytes: int = 256 << 20
    # Submissions parsed at once (each may hold max_graph_bytes + max_input_bytes meanwhile).
    max_concurrent_submissions: int = 4
    # Succeeded jobs keep outputs up to this size in the cache; larger ones are read from the
    # database when asked for.
    cached_outputs_bytes: int = 1 << 20
    # A ready entry a scheduler took but no execution manager registered within this many
    # seconds is offered again.
    visibility_timeout: float = 60.0
    grpc_workers: int = 256
    # Inbound queue lane capacities.
    task_capacity: int = 1 << 20
    commit_capacity: int = 1024
    cleanup_capacity: int = 1024
    # Task-instance pool: EMs silent for longer than the cutoff are declared dead.
    em_stale_cutoff: float = 60.0
    instance_gc_interval: float = 5.0
    # Job cache: terminated jobs stay cached for `job_cache_retention`.
    job_cache_retention: float = 300.0
    job_cache_gc_interval: float = 30.0
    # Terminated jobs are deleted from the database after `job_retention` (None: kept forever).
    job_retention: float | None = 7 * 24 * 3600.0
    db_gc_interval: float = 3600.0
    # Recovery reads recoverable jobs in pages of this many rows.
    recovery_page_size: int = 500
    # Longest server-side wait of WaitJob / polls, whatever the client asks for.
    max_wait: float = 60.0
    metrics_port: int | None = None
    # Where the metrics endpoint listens (None: the host of `listen`).
    metrics_host: str | None = None
    # Seconds a call keeps retrying a transient database error before it answers UNAVAILABLE
    # (client calls) or leaves a job transition a task report decided waiting for the database.
    db_retry_deadline: float = 5.0

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

    @staticmethod
    def load(
        path: Path | None = None, env: dict[str, str] | None = None, **overrides: Any
    ) -> StorageConfig:
        """Defaults, then the `[storage]` table of a TOML file, then the environment
        (`ORBWEAVER_TOKEN`, `ORBWEAVER_OPERATOR_TOKEN`, `ORBWEAVER_TLS_*`), then explicit
        overrides (None values ignored)."""
        environ = dict(os.environ if env is None else env)
        security = Security.from_env(environ)
        values: dict[str, Any] = {"security": security}
        if path is not None:
            values = read_table(path, "storage", StorageConfig, security)
        if environ.get("ORBWEAVER_OPERATOR_TOKEN"):
            values["operator_token"] = environ["ORBWEAVER_OPERATOR_TOKEN"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return StorageConfig(**values)
