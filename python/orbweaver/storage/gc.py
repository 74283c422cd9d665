"""Background loops of the storage service, each one owned thread with a clear stop path:

* instance GC: declare silent EMs dead, force-remove their instances and re-offer the tasks,
  re-offer soft-timed-out tasks once;
* cache GC: evict terminated jobs after the retention period;
* DB GC: delete terminated jobs older than the configured job retention.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from orbweaver.storage.db import errors as db_errors
from orbweaver.storage.service import StorageService, now_ms

log = logging.getLogger("orbweaver.storage.gc")


class _Loop:
    def __init__(
        self, name: str, interval: float, body: Callable[[], None], stop: threading.Event
    ) -> None:
        self.name = name
        self._interval = interval
        self._body = body
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("background loop did not stop in time", extra={"loop": self.name})

    def _run(self) -> None:
        # First tick after one interval, as in the reference (startup already did the work).
        while not self._stop.wait(self._interval):
            try:
                self._body()
            except db_errors.Fenced as exc:
                # Another storage leads: the runtime drops this term (and stops this loop).
                log.warning("background loop pass refused: %s", exc, extra={"loop": self.name})
            except Exception:
                # A failing pass (e.g. the DB is briefly unreachable) is retried next interval.
                log.exception("background loop pass failed", extra={"loop": self.name})


class BackgroundLoops:
    def __init__(self, service: StorageService, serving: Callable[[], bool] = lambda: True) -> None:
        """`serving`: whether calls are served (a leader whose lease ran out refuses them, so
        execution managers cannot heartbeat meanwhile)."""
        self.service = service
        self._serving = serving
        self._stop = threading.Event()
        cfg = service.config
        self._loops = [
            _Loop("instance-gc", cfg.instance_gc_interval, self.instance_gc_pass, self._stop),
            _Loop("cache-gc", cfg.job_cache_gc_interval, self.cache_gc_pass, self._stop),
        ]
        if cfg.job_retention is not None:
            self._loops.append(_Loop("db-gc", cfg.db_gc_interval, self.db_gc_pass, self._stop))

    def start(self) -> None:
        for loop in self._loops:
            loop.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for loop in self._loops:
            loop.join(timeout)

    def instance_gc_pass(self) -> None:
        svc = self.service
        cutoff = svc.config.em_stale_cutoff
        dead: list[int] = []
        # Heartbeats could not be recorded while storage or its database was away, or while
        # this storage did not serve: nobody is declared dead until a whole cutoff has passed
        # with both answering.
        if not self._serving():
            svc.note_heartbeat_gap()
        if time.monotonic() - svc.heartbeat_gap_at > cutoff:
            asked = time.monotonic()
            try:
                dead = svc.db.get_dead_execution_managers(cutoff, deadline=asked + cutoff / 2)
            except db_errors.DbUnavailable as exc:
                svc.note_heartbeat_gap()
                log.warning("instance GC: database unavailable: %s", exc)
            # A database that stalled (rather than failed) held the heartbeats up too: what
            # it answers after the stall says nothing about the execution managers.
            if time.monotonic() - asked > cutoff / 2 or not self._serving():
                svc.note_heartbeat_gap()
                dead = []
        if dead:
            svc.mark_dead(dead)
            svc.metrics.dead_ems.inc(len(dead))
            log.warning("execution managers declared dead", extra={"em_ids": dead})
        now = now_ms()
        report = svc.cache.gc_instances(now, dead)
        svc.metrics.requeued.labels("dead_em").inc(report.requeued_dead)
        svc.metrics.requeued.labels("soft_timeout").inc(report.requeued_soft_timeout)
        # Ready work a scheduler took but nobody registered in time is offered again.
        requeued = svc.cache.requeue_expired(now, int(svc.config.visibility_timeout * 1000))
        if requeued:
            svc.metrics.requeued.labels("visibility_timeout").inc(requeued)
            log.warning(
                "re-offered ready work nobody registered in time", extra={"count": requeued}
            )

    def cache_gc_pass(self) -> None:
        svc = self.service
        evicted = svc.cache.evict_terminated(now_ms(), int(svc.config.job_cache_retention * 1000))
        if evicted:
            svc.metrics.evicted.inc(len(evicted))
            log.debug("evicted terminated jobs", extra={"count": len(evicted)})

    def db_gc_pass(self) -> None:
        svc = self.service
        retention = svc.config.job_retention
        if retention is None:
            return
        deleted = svc.db.delete_expired_terminated_jobs(retention)
        if deleted:
            log.info("deleted expired jobs", extra={"count": deleted})
