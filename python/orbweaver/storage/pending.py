"""Job transitions waiting for the database.

The storage service stays up while the database is away (docs/reliability.md): a job transition
that a task report decided (completion, failure, end of a commit or cleanup task) and that cannot
be written now is parked here, and applied, in the usual order (database first, then cache),
as soon as the database answers again. Until then the job stays in its current state in the
cache; client calls that would change it answer UNAVAILABLE, and everything else is served
from the cache.

A parked transition is also how a write whose commit outcome is unknown gets settled: the
database is read back first, and the transition is applied to the cache if the write did land,
written again if it did not, and anything else is a broken invariant.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from orbweaver._rpc import Backoff
from orbweaver.states import JobState
from orbweaver.storage.db import errors as db_errors

log = logging.getLogger("orbweaver.storage")


@dataclass(slots=True)
class Transition:
    """One job-level state change: `persist` writes `source -> target` to the database, then
    `apply` makes the same change in the cache and returns the job's new cache state."""

    job_id: int
    what: str
    source: JobState
    target: JobState
    persist: Callable[[], object]
    apply: Callable[[], JobState]


class PendingTransitions:
    """At most one parked transition per job, retried by one owned thread with backoff.

    `settle(transition)` is called by the owner (the service) under the job's lock; it returns
    the new cache state, None when the database is still away, or raises for anything else.
    """

    def __init__(
        self,
        settle: Callable[[Transition], JobState | None],
        on_settled: Callable[[Transition, JobState], None],
        on_broken: Callable[[Transition, BaseException], None],
    ) -> None:
        self._settle = settle
        self._on_settled = on_settled
        self._on_broken = on_broken
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: OrderedDict[int, Transition] = OrderedDict()
        self._thread = threading.Thread(target=self._run, name="pending-transitions", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def __contains__(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._pending

    def park(self, transition: Transition) -> None:
        with self._lock:
            if transition.job_id in self._pending:
                return  # the job's first decided transition wins; later ones are moot
            self._pending[transition.job_id] = transition
        log.warning(
            "database unavailable: %s waits for it",
            transition.what,
            extra={"job_id": transition.job_id, "pending": len(self)},
        )
        self._wake.set()

    def _run(self) -> None:
        delays = Backoff(base=0.1, cap=2.0).delays()
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            if self._drain():
                delays = Backoff(base=0.1, cap=2.0).delays()
            else:
                # The database is still away: try again later (or when something new is parked).
                self._stop.wait(next(delays))
                self._wake.set()

    def _drain(self) -> bool:
        """Settle parked transitions in the order they were parked; False if the database is
        still unavailable."""
        while not self._stop.is_set():
            with self._lock:
                if not self._pending:
                    return True
                job_id, transition = next(iter(self._pending.items()))
            try:
                state = self._settle(transition)
            except db_errors.DbUnavailable:
                return False
            except Exception as exc:
                with self._lock:
                    self._pending.pop(job_id, None)
                self._on_broken(transition, exc)
                continue
            if state is None:
                return False
            with self._lock:
                self._pending.pop(job_id, None)
            log.info("%s applied after the database returned", transition.what)
            self._on_settled(transition, state)
        return True
