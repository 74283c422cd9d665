"""Prometheus metrics of one scheduler runtime (each runtime owns its `CollectorRegistry`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

LANES = ("task", "commit", "cleanup")


class SchedulerMetrics:
    """Every metric the scheduler exports; names start with `orbweaver_scheduler_`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.buffered_tasks = Gauge(
            "orbweaver_scheduler_buffered_tasks",
            "Entries buffered in the scheduler core, by inbound-queue lane.",
            ["lane"],
            registry=r,
        )
        self.active_jobs = Gauge(
            "orbweaver_scheduler_active_jobs",
            "Jobs currently served round-robin by the scheduler core.",
            registry=r,
        )
        self.pending_jobs = Gauge(
            "orbweaver_scheduler_pending_jobs",
            "Jobs with buffered tasks waiting for an active slot.",
            registry=r,
        )
        self.dispatch_queue_depth = Gauge(
            "orbweaver_scheduler_dispatch_queue_depth",
            "Assignments waiting in the dispatch queue for an execution manager.",
            registry=r,
        )
        self.assignments_enqueued = Counter(
            "orbweaver_scheduler_assignments_enqueued",
            "Assignments the core placed into the dispatch queue, by lane.",
            ["lane"],
            registry=r,
        )
        self.assignments_dispatched = Counter(
            "orbweaver_scheduler_assignments_dispatched",
            "Assignments handed to execution managers.",
            registry=r,
        )
        self.assignments_acknowledged = Counter(
            "orbweaver_scheduler_assignments_acknowledged",
            "Assignment acknowledgements that completed an outstanding assignment.",
            registry=r,
        )
        self.assignments_rescheduled = Counter(
            "orbweaver_scheduler_assignments_rescheduled",
            "Assignments taken back from dead, departed or unreachable execution managers.",
            registry=r,
        )
        self.known_execution_managers = Gauge(
            "orbweaver_scheduler_known_execution_managers",
            "Execution managers currently tracked by the liveness registry.",
            registry=r,
        )
        self.session_id = Gauge(
            "orbweaver_scheduler_session_id",
            "The storage session the scheduler currently works under.",
            registry=r,
        )
        self.storage_polls = Counter(
            "orbweaver_scheduler_storage_polls",
            "Inbound-queue polls sent to storage.",
            registry=r,
        )
        self.storage_poll_errors = Counter(
            "orbweaver_scheduler_storage_poll_errors",
            "Inbound-queue polls that failed (they are retried with backoff).",
            registry=r,
        )
        self.session_bumps = Counter(
            "orbweaver_scheduler_session_bumps",
            "Storage restarts observed (a newer session id in a poll result).",
            registry=r,
        )
        for lane in LANES:
            self.buffered_tasks.labels(lane=lane)
            self.assignments_enqueued.labels(lane=lane)
