"""The execution manager's Prometheus metrics (served by `--metrics-port`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Counter(
            "orbweaver_worker_tasks", "Tasks run, by result", ["result"], registry=r
        )
        self.in_flight = Gauge(
            "orbweaver_worker_tasks_in_flight", "Registered tasks not yet reported", registry=r
        )
        self.prefetch_limit = Gauge(
            "orbweaver_worker_prefetch_limit",
            "Tasks the EM may hold at a time (being fetched or registered, queued or running)",
            registry=r,
        )
        self.rejected = Counter(
            "orbweaver_worker_assignments_rejected",
            "Assignments storage refused to register",
            ["reason"],
            registry=r,
        )
        self.reports_dropped = Counter(
            "orbweaver_worker_reports_dropped",
            "Outcomes dropped because storage moved on",
            ["reason"],
            registry=r,
        )
