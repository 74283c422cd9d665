"""The scheduler's placement logic: pure, single-threaded, no I/O, no clock.

`SchedulerCore` buffers the entries polled from storage's inbound queue and decides in which order
they become assignments. It is driven by exactly one thread (the runtime's core loop):

* `ingest(session, tasks, commits, cleanups, now=...)` loads a poll result (5.4 ingest rules;
  a higher session clears every piece of placement state first, 5.6);
* `reschedule(assignments, now=...)` re-buffers assignments that an execution manager lost
  (stale sessions are dropped, copies that are already buffered are deduplicated);
* `decide(free_slots)` turns buffered entries into at most `free_slots` assignments (5.5 rules);
* `expire_finalizing(now)` forgets old "this job is finalizing" marks.

Order of service. The rotation is a list of slots `[COMMIT, CLEANUP, unit, unit, ...]` walked by a
persistent cursor. Visiting COMMIT dispatches up to `active_job_queue_capacity` commit tasks,
visiting CLEANUP exactly one cleanup task, visiting a unit exactly one regular task:

* policy `"group_round_robin"` (default): a unit is a resource group; each group keeps its own
  rotation of up to `active_job_queue_capacity` active jobs plus a FIFO of pending jobs, so every
  group with work gets one assignment per pass however many jobs it has;
* policy `"job_round_robin"` (the reference's policy): a unit is an active job; at most
  `active_job_queue_capacity` jobs are active, later jobs wait in one global FIFO.

A job whose queue is found empty when the cursor reaches it is retired (deferred retirement) and
the oldest pending job takes its place at the end of the rotation.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from orbweaver import _core, errors
from orbweaver.states import check_against_core

log = logging.getLogger("orbweaver.scheduler.core")

T = TypeVar("T")

POLICY_GROUP_ROUND_ROBIN = "group_round_robin"
POLICY_JOB_ROUND_ROBIN = "job_round_robin"
POLICIES = (POLICY_GROUP_ROUND_ROBIN, POLICY_JOB_ROUND_ROBIN)


class InvalidSessionId(errors.InvalidArgument):
    """A storage session id that is not newer than the current one where a newer one is needed."""

    def __init__(self, session_id: int, current: int) -> None:
        super().__init__(f"session id {session_id} is not newer than the current session {current}")
        self.session_id = session_id
        self.current = current


class Lane(enum.IntEnum):
    """The inbound-queue lane an entry came from (and the kind of its task); the core's lanes."""

    TASK = _core.LANE_TASK
    COMMIT = _core.LANE_COMMIT
    CLEANUP = _core.LANE_CLEANUP


check_against_core(Lane, _core.LANES, "inbound-queue lanes")


@dataclass(frozen=True, slots=True)
class ReadyEntry:
    """One inbound-queue entry: "task `task_id` of job `job_id` is ready"."""

    resource_group_id: int
    job_id: int
    task_id: int


@dataclass(frozen=True, slots=True)
class Assignment:
    """A scheduling decision: offer this task to an execution manager."""

    assignment_id: int
    session_id: int
    lane: Lane
    resource_group_id: int
    job_id: int
    task_id: int


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Placement parameters (defaults as in the reference deployment)."""

    policy: str = POLICY_GROUP_ROUND_ROBIN
    # Jobs served round-robin at once (per resource group under the group policy).
    active_job_queue_capacity: int = 16
    # Buffered regular tasks / commit tasks / cleanup tasks (the poll budgets derive from them).
    ready_task_capacity: int = 65_536
    commit_ready_task_capacity: int = 256
    cleanup_ready_task_capacity: int = 256
    # How long a job stays marked as finalizing (its late regular entries are ignored meanwhile).
    finalizing_job_expiration_s: float = 300.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise errors.InvalidArgument(
                f"unknown scheduling policy {self.policy!r}; expected one of {', '.join(POLICIES)}"
            )
        for name in (
            "active_job_queue_capacity",
            "ready_task_capacity",
            "commit_ready_task_capacity",
            "cleanup_ready_task_capacity",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise errors.InvalidArgument(f"{name} must be a positive integer, got {value!r}")
        if self.finalizing_job_expiration_s < 0:
            raise errors.InvalidArgument(
                "finalizing_job_expiration_s must not be negative, "
                f"got {self.finalizing_job_expiration_s!r}"
            )


@dataclass(frozen=True, slots=True)
class PollBudget:
    """How many entries of each lane the buffers can still take."""

    tasks: int
    commit: int
    cleanup: int

    def __bool__(self) -> bool:
        return self.tasks > 0 or self.commit > 0 or self.cleanup > 0


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What `ingest` did: whether the session advanced (state was cleared) and how many entries
    were buffered (the rest were duplicates or belonged to finalizing jobs)."""

    session_bumped: bool
    accepted: int
    ignored: int


# ---------------------------------------------------------------------------------------------
# Internal structures
# ---------------------------------------------------------------------------------------------


class _Ring(Generic[T]):
    """An ordered rotation with a persistent cursor; removal keeps the order of the others."""

    __slots__ = ("cursor", "items")

    def __init__(self, items: Iterable[T] = ()) -> None:
        self.items: list[T] = list(items)
        self.cursor = 0

    def __len__(self) -> int:
        return len(self.items)

    def current(self) -> T:
        if self.cursor >= len(self.items):
            self.cursor = 0
        return self.items[self.cursor]

    def advance(self) -> None:
        self.cursor += 1
        if self.cursor >= len(self.items):
            self.cursor = 0

    def remove_at(self, index: int) -> None:
        del self.items[index]
        if index < self.cursor:
            self.cursor -= 1
        if self.cursor >= len(self.items):
            self.cursor = 0

    def remove(self, item: T) -> bool:
        for index, candidate in enumerate(self.items):
            if candidate is item:
                self.remove_at(index)
                return True
        return False

    def append(self, item: T) -> None:
        self.items.append(item)


class _Job:
    """The FIFO of one job's buffered regular tasks."""

    __slots__ = ("active", "job_id", "resource_group_id", "tasks")

    def __init__(self, job_id: int, resource_group_id: int) -> None:
        self.job_id = job_id
        self.resource_group_id = resource_group_id
        self.tasks: deque[int] = deque()
        self.active = False


class _Group:
    """Group policy: one resource group's rotation of active jobs and FIFO of pending jobs."""

    __slots__ = ("jobs", "pending", "resource_group_id")

    def __init__(self, resource_group_id: int) -> None:
        self.resource_group_id = resource_group_id
        self.jobs: _Ring[_Job] = _Ring()
        self.pending: OrderedDict[int, _Job] = OrderedDict()


class _Special(enum.Enum):
    COMMIT = "commit"
    CLEANUP = "cleanup"


_Slot = _Special | _Job | _Group


# ---------------------------------------------------------------------------------------------
# The core
# ---------------------------------------------------------------------------------------------


class SchedulerCore:
    """Buffers ready entries and produces assignments in fair order. Not thread-safe: exactly one
    thread may call it."""

    def __init__(
        self,
        config: CoreConfig | None = None,
        *,
        session_id: int = 0,
        first_assignment_id: int = 1,
    ) -> None:
        self._config = config or CoreConfig()
        self._by_group = self._config.policy == POLICY_GROUP_ROUND_ROBIN
        self._session = session_id
        self._next_assignment_id = first_assignment_id
        self._reset()

    def _reset(self) -> None:
        # (job_id, task_id) of every buffered entry: regular, commit and cleanup.
        self._buffered: set[tuple[int, int]] = set()
        # Every active or pending job with buffered regular tasks (or awaiting retirement).
        self._jobs: dict[int, _Job] = {}
        self._ring: _Ring[_Slot] = _Ring([_Special.COMMIT, _Special.CLEANUP])
        # Job policy: the global FIFO of pending jobs. Group policy: per group, in `_groups`.
        self._pending: OrderedDict[int, _Job] = OrderedDict()
        self._groups: dict[int, _Group] = {}
        self._commits: deque[ReadyEntry] = deque()
        self._cleanups: deque[ReadyEntry] = deque()
        # job_id -> time it was marked; insertion order == time order.
        self._finalizing: OrderedDict[int, float] = OrderedDict()
        self._num_regular = 0

    # -- introspection --------------------------------------------------------------------------

    @property
    def config(self) -> CoreConfig:
        return self._config

    @property
    def session_id(self) -> int:
        return self._session

    @property
    def buffered(self) -> int:
        """Every buffered entry (regular, commit and cleanup)."""
        return len(self._buffered)

    @property
    def buffered_tasks(self) -> int:
        return self._num_regular

    @property
    def buffered_commits(self) -> int:
        return len(self._commits)

    @property
    def buffered_cleanups(self) -> int:
        return len(self._cleanups)

    @property
    def active_jobs(self) -> int:
        return sum(1 for job in self._jobs.values() if job.active)

    @property
    def pending_jobs(self) -> int:
        return sum(1 for job in self._jobs.values() if not job.active)

    @property
    def finalizing_jobs(self) -> int:
        return len(self._finalizing)

    def is_finalizing(self, job_id: int) -> bool:
        return job_id in self._finalizing

    def poll_budget(self) -> PollBudget:
        """How many entries of each lane to ask storage for (buffer headroom, floored at 0)."""
        cfg = self._config
        return PollBudget(
            tasks=max(0, cfg.ready_task_capacity - self._num_regular),
            commit=max(0, cfg.commit_ready_task_capacity - len(self._commits)),
            cleanup=max(0, cfg.cleanup_ready_task_capacity - len(self._cleanups)),
        )

    # -- sessions -------------------------------------------------------------------------------

    def observe_session(self, session_id: int) -> bool:
        """Adopt `session_id` if it is newer, clearing all placement state.
        Returns whether it was newer; raises `InvalidSessionId` if it is older."""
        if session_id < self._session:
            raise InvalidSessionId(session_id, self._session)
        if session_id == self._session:
            return False
        log.info(
            "new storage session: clearing placement state",
            extra={"old_session": self._session, "session": session_id},
        )
        self._session = session_id
        self._reset()
        return True

    # -- ingest ---------------------------------------------------------------------------------

    def ingest(
        self,
        session_id: int,
        tasks: Iterable[ReadyEntry] = (),
        commits: Iterable[ReadyEntry] = (),
        cleanups: Iterable[ReadyEntry] = (),
        *,
        now: float,
    ) -> IngestResult:
        """Load one poll result. Commit and cleanup entries go first so that a job that is
        finalizing in this very batch is never (re-)admitted by its regular entries."""
        bumped = self.observe_session(session_id)
        accepted = ignored = 0
        for entry in commits:
            if self._add_final(entry, Lane.COMMIT, now):
                accepted += 1
            else:
                ignored += 1
        for entry in cleanups:
            if self._add_final(entry, Lane.CLEANUP, now):
                accepted += 1
            else:
                ignored += 1
        for entry in tasks:
            if self._add_regular(entry):
                accepted += 1
            else:
                ignored += 1
        return IngestResult(bumped, accepted, ignored)

    def reschedule(self, assignments: Iterable[Assignment], *, now: float) -> int:
        """Re-buffer assignments that were lost with their execution manager. Assignments from
        an older session are dropped; the rest take the ingest path of their lane (and are
        therefore deduplicated against buffered copies). Returns how many were re-buffered."""
        accepted = 0
        for assignment in assignments:
            if assignment.session_id != self._session:
                log.debug(
                    "dropping rescheduled assignment from another session",
                    extra={
                        "assignment_id": assignment.assignment_id,
                        "assignment_session": assignment.session_id,
                        "session": self._session,
                    },
                )
                continue
            entry = ReadyEntry(assignment.resource_group_id, assignment.job_id, assignment.task_id)
            if assignment.lane == Lane.TASK:
                ok = self._add_regular(entry)
            else:
                ok = self._add_final(entry, assignment.lane, now)
            accepted += ok
        return accepted

    def _add_final(self, entry: ReadyEntry, lane: Lane, now: float) -> bool:
        key = (entry.job_id, entry.task_id)
        if key in self._buffered:
            return False
        self._buffered.add(key)
        self._finalizing.pop(entry.job_id, None)
        self._finalizing[entry.job_id] = now
        (self._commits if lane == Lane.COMMIT else self._cleanups).append(entry)
        job = self._jobs.get(entry.job_id)
        if job is not None:
            self._drop_job(job)
        return True

    def _add_regular(self, entry: ReadyEntry) -> bool:
        if entry.job_id in self._finalizing:
            return False
        key = (entry.job_id, entry.task_id)
        if key in self._buffered:
            return False
        self._buffered.add(key)
        self._num_regular += 1
        job = self._jobs.get(entry.job_id)
        if job is None:
            job = _Job(entry.job_id, entry.resource_group_id)
            self._jobs[entry.job_id] = job
            self._admit(job)
        job.tasks.append(entry.task_id)
        return True

    # -- job admission and retirement -----------------------------------------------------------

    def _admit(self, job: _Job) -> None:
        capacity = self._config.active_job_queue_capacity
        if self._by_group:
            group = self._groups.get(job.resource_group_id)
            if group is None:
                group = _Group(job.resource_group_id)
                self._groups[job.resource_group_id] = group
                self._ring.append(group)
            if len(group.jobs) < capacity:
                job.active = True
                group.jobs.append(job)
            else:
                group.pending[job.job_id] = job
        elif len(self._ring) - 2 < capacity:
            job.active = True
            self._ring.append(job)
        else:
            self._pending[job.job_id] = job

    def _drop_job(self, job: _Job) -> None:
        """Remove a job that started finalizing, discarding its buffered regular tasks."""
        for task_id in job.tasks:
            self._buffered.discard((job.job_id, task_id))
        self._num_regular -= len(job.tasks)
        job.tasks.clear()
        if self._by_group:
            group = self._groups[job.resource_group_id]
            if job.active:
                group.jobs.remove(job)
                self._forget(job)
                self._promote_in_group(group)
            else:
                del group.pending[job.job_id]
                self._forget(job)
            if not group.jobs and not group.pending:
                self._ring.remove(group)
                del self._groups[group.resource_group_id]
        elif job.active:
            self._ring.remove(job)
            self._forget(job)
            self._promote_global()
        else:
            del self._pending[job.job_id]
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        job.active = False
        del self._jobs[job.job_id]

    def _promote_global(self) -> None:
        if self._pending:
            _, job = self._pending.popitem(last=False)
            job.active = True
            self._ring.append(job)

    @staticmethod
    def _promote_in_group(group: _Group) -> None:
        if group.pending:
            _, job = group.pending.popitem(last=False)
            job.active = True
            group.jobs.append(job)

    # -- decisions ------------------------------------------------------------------------------

    def decide(self, free_slots: int) -> list[Assignment]:
        """Produce up to `free_slots` assignments, walking the rotation from where the previous
        call stopped. Each assignment gets a fresh id and the current session."""
        out: list[Assignment] = []
        if free_slots <= 0:
            return out
        ring = self._ring
        commit_batch = self._config.active_job_queue_capacity
        fruitless = 0
        while len(out) < free_slots and self._buffered:
            before = len(out)
            changed = False
            slot = ring.current()
            if slot is _Special.COMMIT:
                for _ in range(min(commit_batch, free_slots - len(out))):
                    if not self._commits:
                        break
                    out.append(self._emit_final(self._commits.popleft(), Lane.COMMIT))
                ring.advance()
            elif slot is _Special.CLEANUP:
                if self._cleanups:
                    out.append(self._emit_final(self._cleanups.popleft(), Lane.CLEANUP))
                ring.advance()
            elif isinstance(slot, _Job):
                if slot.tasks:
                    out.append(self._emit_regular(slot, slot.tasks.popleft()))
                    ring.advance()
                else:
                    ring.remove_at(ring.cursor)
                    self._forget(slot)
                    self._promote_global()
                    changed = True
            else:
                assert isinstance(slot, _Group)
                picked = self._take_from_group(slot)
                if picked is not None:
                    out.append(picked)
                    ring.advance()
                else:
                    ring.remove_at(ring.cursor)
                    del self._groups[slot.resource_group_id]
                    changed = True
            if changed or len(out) > before:
                fruitless = 0
            else:
                fruitless += 1
                if fruitless > len(ring) + 1:
                    raise errors.InternalError(
                        f"scheduler core: {len(self._buffered)} buffered entries are unreachable"
                    )
        return out

    def _take_from_group(self, group: _Group) -> Assignment | None:
        jobs = group.jobs
        while jobs:
            job = jobs.current()
            if job.tasks:
                assignment = self._emit_regular(job, job.tasks.popleft())
                jobs.advance()
                return assignment
            jobs.remove_at(jobs.cursor)
            self._forget(job)
            self._promote_in_group(group)
        return None

    def _emit_regular(self, job: _Job, task_id: int) -> Assignment:
        self._buffered.discard((job.job_id, task_id))
        self._num_regular -= 1
        return self._new_assignment(Lane.TASK, job.resource_group_id, job.job_id, task_id)

    def _emit_final(self, entry: ReadyEntry, lane: Lane) -> Assignment:
        self._buffered.discard((entry.job_id, entry.task_id))
        return self._new_assignment(lane, entry.resource_group_id, entry.job_id, entry.task_id)

    def _new_assignment(self, lane: Lane, rg: int, job_id: int, task_id: int) -> Assignment:
        assignment_id = self._next_assignment_id
        self._next_assignment_id += 1
        return Assignment(assignment_id, self._session, lane, rg, job_id, task_id)

    # -- housekeeping ---------------------------------------------------------------------------

    def expire_finalizing(self, now: float) -> int:
        """Forget finalizing marks older than the expiration timeout; returns how many."""
        limit = now - self._config.finalizing_job_expiration_s
        expired = 0
        while self._finalizing:
            job_id, marked = next(iter(self._finalizing.items()))
            if marked > limit:
                break
            del self._finalizing[job_id]
            expired += 1
        return expired

    def check_invariants(self) -> None:
        """Raise `AssertionError` if the internal bookkeeping is inconsistent (for tests)."""
        regular = {(job.job_id, t) for job in self._jobs.values() for t in job.tasks}
        final = {(e.job_id, e.task_id) for e in (*self._commits, *self._cleanups)}
        assert len(regular) == self._num_regular, "regular task count drifted"
        assert regular.isdisjoint(final), "an entry is buffered twice"
        assert regular | final == self._buffered, "buffered set out of sync"
        assert not any(job_id in self._finalizing for job_id, _ in regular)
        assert self._ring.items[:2] == [_Special.COMMIT, _Special.CLEANUP]
        units = self._ring.items[2:]
        capacity = self._config.active_job_queue_capacity
        if self._by_group:
            assert not self._pending
            assert {id(g) for g in units} == {id(g) for g in self._groups.values()}
            for group in self._groups.values():
                assert len(group.jobs) <= capacity
                assert not group.pending or len(group.jobs) == capacity
                for job in group.jobs.items:
                    assert job.active and self._jobs[job.job_id] is job
                for job in group.pending.values():
                    assert not job.active and self._jobs[job.job_id] is job
            counted = sum(len(g.jobs) + len(g.pending) for g in self._groups.values())
            assert counted == len(self._jobs)
        else:
            assert len(units) <= capacity
            assert not self._pending or len(units) == capacity
            for unit in units:
                assert isinstance(unit, _Job) and unit.active
                assert self._jobs[unit.job_id] is unit
            assert len(units) + len(self._pending) == len(self._jobs)
