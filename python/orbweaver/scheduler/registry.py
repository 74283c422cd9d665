"""The execution-manager registry: who holds which assignment, and who is still alive.

An EM is registered implicitly by its first `NextTask`/`NextTasks`/`Heartbeat`. Every assignment
handed to an EM stays *outstanding* until the EM acknowledges it (after storage accepted or
definitively rejected the task-instance registration). An EM that stays silent for longer than
the dead cutoff, or that shuts down, loses its entry and every outstanding assignment is pushed
onto the reschedule queue, which the core loop drains.

Thread-safe: service handlers, the liveness tracker (one thread for all EMs) and the core loop
share it behind one lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from orbweaver.scheduler.core import Assignment

log = logging.getLogger("orbweaver.scheduler.registry")


class _Em:
    __slots__ = ("last_seen", "outstanding")

    def __init__(self, now: float) -> None:
        self.last_seen = now
        self.outstanding: dict[int, Assignment] = {}


class EmRegistry:
    """Outstanding assignments and liveness of every known execution manager."""

    def __init__(
        self,
        *,
        dead_cutoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_reschedule: Callable[[int], None] | None = None,
    ) -> None:
        if dead_cutoff_s <= 0:
            raise ValueError(f"dead_cutoff_s must be positive, got {dead_cutoff_s}")
        self._cutoff = dead_cutoff_s
        self._clock = clock
        self._on_reschedule = on_reschedule
        self._lock = threading.Lock()
        self._ems: dict[int, _Em] = {}
        self._reschedule: deque[Assignment] = deque()
        self._rescheduled_total = 0
        self._tracker: threading.Thread | None = None
        self._stop = threading.Event()

    # -- queries --------------------------------------------------------------------------------

    @property
    def dead_cutoff_s(self) -> float:
        return self._cutoff

    def __contains__(self, em_id: object) -> bool:
        with self._lock:
            return em_id in self._ems

    def __len__(self) -> int:
        with self._lock:
            return len(self._ems)

    def em_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._ems)

    def outstanding(self, em_id: int) -> list[Assignment]:
        """The EM's unacknowledged assignments, oldest first ([] for an unknown EM)."""
        with self._lock:
            em = self._ems.get(em_id)
            return list(em.outstanding.values()) if em is not None else []

    @property
    def rescheduled_total(self) -> int:
        with self._lock:
            return self._rescheduled_total

    def pending_reschedules(self) -> int:
        with self._lock:
            return len(self._reschedule)

    # -- updates from the service ---------------------------------------------------------------

    def _touch(self, em_id: int) -> _Em:
        now = self._clock()
        em = self._ems.get(em_id)
        if em is None:
            em = _Em(now)
            self._ems[em_id] = em
            log.info("execution manager registered", extra={"em_id": em_id})
        else:
            em.last_seen = now
        return em

    def heartbeat(self, em_id: int) -> None:
        """Refresh the EM's liveness, registering it if it is new."""
        with self._lock:
            self._touch(em_id)

    def assign(self, em_id: int, assignments: Iterable[Assignment]) -> None:
        """Record assignments handed to the EM (registering it if needed)."""
        with self._lock:
            em = self._touch(em_id)
            for assignment in assignments:
                em.outstanding[assignment.assignment_id] = assignment

    def complete(self, em_id: int, assignment_id: int) -> bool:
        """Acknowledge an assignment. Idempotent: an unknown EM or assignment (a repeated ack,
        or one for an assignment that was already rescheduled) is ignored. Returns whether
        something was completed."""
        with self._lock:
            em = self._ems.get(em_id)
            if em is None:
                log.debug(
                    "ack from unknown execution manager ignored",
                    extra={"em_id": em_id, "assignment_id": assignment_id},
                )
                return False
            em.last_seen = self._clock()
            if em.outstanding.pop(assignment_id, None) is None:
                log.debug(
                    "ack for unknown assignment ignored",
                    extra={"em_id": em_id, "assignment_id": assignment_id},
                )
                return False
            return True

    def mark_as_dead(self, em_id: int) -> int | None:
        """Forget the EM and reschedule everything it still holds. Returns how many assignments
        were rescheduled, or None if the EM is unknown."""
        with self._lock:
            em = self._ems.pop(em_id, None)
            if em is None:
                return None
            count = self._release(em)
        log.info("execution manager removed", extra={"em_id": em_id, "rescheduled": count})
        self._notify(count)
        return count

    def requeue(self, assignments: Iterable[Assignment]) -> int:
        """Push assignments that never reached an EM (e.g. the call was cancelled) back onto
        the reschedule queue."""
        with self._lock:
            before = len(self._reschedule)
            self._reschedule.extend(assignments)
            count = len(self._reschedule) - before
            self._rescheduled_total += count
        self._notify(count)
        return count

    # -- the core loop's side -------------------------------------------------------------------

    def drain_reschedule(self) -> list[Assignment]:
        """Take every assignment waiting to be rescheduled."""
        with self._lock:
            out = list(self._reschedule)
            self._reschedule.clear()
            return out

    # -- liveness tracking ----------------------------------------------------------------------

    def expire(self, now: float | None = None) -> list[int]:
        """Remove every EM silent for at least the dead cutoff; returns their ids."""
        now = self._clock() if now is None else now
        dead: list[tuple[int, int]] = []
        with self._lock:
            for em_id, em in list(self._ems.items()):
                if now - em.last_seen >= self._cutoff:
                    del self._ems[em_id]
                    dead.append((em_id, self._release(em)))
        total = 0
        for em_id, count in dead:
            total += count
            log.warning(
                "execution manager declared dead",
                extra={"em_id": em_id, "rescheduled": count, "cutoff_s": self._cutoff},
            )
        self._notify(total)
        return [em_id for em_id, _ in dead]

    def _release(self, em: _Em) -> int:
        # Caller holds the lock.
        count = len(em.outstanding)
        self._reschedule.extend(em.outstanding.values())
        self._rescheduled_total += count
        em.outstanding.clear()
        return count

    def _notify(self, count: int) -> None:
        if count and self._on_reschedule is not None:
            try:
                self._on_reschedule(count)
            except Exception:
                log.exception("reschedule callback failed")

    def start_tracking(self, interval_s: float) -> None:
        """Start the single tracker thread that expires silent EMs every `interval_s`."""
        if self._tracker is not None:
            raise RuntimeError("liveness tracking already started")
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.expire()
                except Exception:
                    log.exception("liveness tracking failed; continuing")

        self._tracker = threading.Thread(
            target=run, name="orbweaver-scheduler-liveness", daemon=True
        )
        self._tracker.start()

    def stop_tracking(self, timeout: float = 5.0) -> None:
        self._stop.set()
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.join(timeout)
