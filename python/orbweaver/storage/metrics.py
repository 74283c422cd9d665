"""Prometheus metrics of the storage service (one registry per service instance)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orbweaver.states import JobState

log = logging.getLogger("orbweaver.storage.metrics")


class _LiveCollector(Collector):
    """Values read at scrape time: queue depths, cache size, live instances, jobs by state."""

    def __init__(
        self,
        depths: Callable[[], tuple[int, int, int]],
        cached_jobs: Callable[[], int],
        live_instances: Callable[[], int],
        jobs_by_state: Callable[[], dict[int, int]],
        taken_entries: Callable[[], int],
    ) -> None:
        self._taken = taken_entries
        self._depths = depths
        self._cached_jobs = cached_jobs
        self._live_instances = live_instances
        self._jobs_by_state = jobs_by_state
        self._state_cache: tuple[float, dict[int, int]] = (0.0, {})

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "orbweaver_storage_queue_depth",
            "Entries waiting in each inbound-queue lane",
            labels=["lane"],
        )
        for lane, value in zip(("task", "commit", "cleanup"), self._depths(), strict=True):
            depth.add_metric([lane], value)
        yield depth
        yield GaugeMetricFamily(
            "orbweaver_storage_cached_jobs", "Jobs in the job cache", value=self._cached_jobs()
        )
        yield GaugeMetricFamily(
            "orbweaver_storage_live_task_instances",
            "Registered task instances not yet collected",
            value=self._live_instances(),
        )
        yield GaugeMetricFamily(
            "orbweaver_storage_taken_entries",
            "Ready entries a scheduler took that no execution manager registered yet",
            value=self._taken(),
        )
        jobs = GaugeMetricFamily(
            "orbweaver_storage_jobs", "Jobs in the database by state", labels=["state"]
        )
        # The per-state count is a DB query; refresh it at most every 10 s.
        at, counts = self._state_cache
        if time.monotonic() - at > 10:
            try:
                counts = self._jobs_by_state()
                self._state_cache = (time.monotonic(), counts)
            except Exception as exc:
                log.warning("cannot count jobs by state: %s", exc)
        for state in JobState:
            jobs.add_metric([state.name], counts.get(int(state), 0))
        yield jobs


class StorageMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs_registered = Counter(
            "orbweaver_storage_jobs_registered", "Jobs registered", registry=r
        )
        self.jobs_terminated = Counter(
            "orbweaver_storage_jobs_terminated",
            "Jobs that reached a terminal state",
            ["state"],
            registry=r,
        )
        self.instances_registered = Counter(
            "orbweaver_storage_task_instances_registered", "Task instances registered", registry=r
        )
        self.instances_lost = Counter(
            "orbweaver_storage_task_instances_lost",
            "Task instances registered for a live execution manager that never reached it "
            "(offered again)",
            registry=r,
        )
        self.instances_taken = Counter(
            "orbweaver_storage_task_instances_taken",
            "Task instances registered for an idle execution manager that asked storage for the "
            "next ready task (TakeReadyTasks, without the scheduler)",
            registry=r,
        )
        self.instances_continued = Counter(
            "orbweaver_storage_task_instances_continued",
            "Task instances registered for the execution manager that reported their parents "
            "(in its report's reply, without the scheduler)",
            registry=r,
        )
        self.task_successes = Counter(
            "orbweaver_storage_task_successes", "Task success reports accepted", registry=r
        )
        self.task_failures = Counter(
            "orbweaver_storage_task_failures", "Task failure reports accepted", registry=r
        )
        self.recovery_seconds = Gauge(
            "orbweaver_storage_recovery_seconds", "Duration of the last cache recovery", registry=r
        )
        self.jobs_recovered = Gauge(
            "orbweaver_storage_jobs_recovered",
            "Jobs recovered into the cache at start, by state",
            ["state"],
            registry=r,
        )
        self.jobs_unrecoverable = Gauge(
            "orbweaver_storage_jobs_unrecoverable",
            "Jobs marked FAILED at start because they could not be rebuilt",
            registry=r,
        )
        self.evicted = Counter(
            "orbweaver_storage_jobs_evicted", "Terminated jobs evicted from the cache", registry=r
        )
        self.requeued = Counter(
            "orbweaver_storage_tasks_requeued",
            "Tasks re-offered by the instance GC",
            ["reason"],
            registry=r,
        )
        self.dead_ems = Counter(
            "orbweaver_storage_dead_execution_managers",
            "Execution managers declared dead",
            registry=r,
        )
        self.leader = Gauge(
            "orbweaver_storage_leader",
            "1 while this storage leads (holds the lease and serves), 0 while it stands by",
            registry=r,
        )
        self.session = Gauge(
            "orbweaver_storage_session", "The storage session this process leads in", registry=r
        )
        self.terms = Counter(
            "orbweaver_storage_leadership_terms",
            "Leadership terms begun (a new session, the cache rebuilt)",
            registry=r,
        )
        self.task_outputs_written = Counter(
            "orbweaver_storage_task_outputs_written",
            'Task outputs of durability="task" jobs written to the database',
            registry=r,
        )
        self.task_durability_fallbacks = Counter(
            "orbweaver_storage_task_durability_fallbacks",
            'Jobs of durability="task" that fell back to job-level durability (queue full, '
            "outputs too large for the database, or a write refused)",
            registry=r,
        )
        self.pending_transitions = Gauge(
            "orbweaver_storage_pending_transitions",
            "Job transitions waiting for the database to return",
            registry=r,
        )

    def job_terminated(self, state: JobState) -> None:
        self.jobs_terminated.labels(state.name).inc()

    def attach(
        self,
        depths: Callable[[], tuple[int, int, int]],
        cached_jobs: Callable[[], int],
        live_instances: Callable[[], int],
        jobs_by_state: Callable[[], dict[int, int]],
        taken_entries: Callable[[], int],
    ) -> None:
        self.registry.register(
            _LiveCollector(depths, cached_jobs, live_instances, jobs_by_state, taken_entries)
        )
