"""The execution manager's Prometheus metrics (served by `--metrics-port`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from orbweaver.worker.core import Fate, Refused, Settled


class WorkerMetrics:
    """Tasks run by result, assignments rejected and outcomes dropped by reason, tasks in
    flight and the prefetch limit."""

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

    def count(self, action: Settled | Refused) -> None:
        """Count what the core decided about some assignments."""
        n = len(action.keys)
        if isinstance(action, Refused) or action.fate is Fate.DROPPED:
            self.rejected.labels(action.reason).inc(n)
        elif action.fate is Fate.REPORT_DROPPED:
            self.reports_dropped.labels(action.reason).inc(n)
        elif action.fate is Fate.ABANDONED:
            self.tasks.labels("not_run").inc(n)
