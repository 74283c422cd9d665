"""The execution manager's bookkeeping and decisions: pure, no I/O, no threads, no clock (the
drain deadline is computed from a time passed in).

`ManagerCore` knows every assignment the EM holds, from the poll that brought it to the moment it
is settled, and decides what happens to it. The manager (`manager.py`) owns the threads, timers
and gRPC calls: it feeds the core what happened (events) and carries out what the core asks for
(actions). Not thread-safe: the manager calls it under one lock and never does I/O under it.

An assignment gets a key (consecutive from 1, in delivery order) and lives in one `Stage` at a
time until it is settled with one `Fate`:

    FETCHED -> REGISTERING -> QUEUED -> RUNNING -> REPORTING -> REPORTED | REPORT_DROPPED
       |  ^---------'  (per-item UNAVAILABLE)  '-> ABANDONED
       +------------+-> RETURNING -> HANDED_BACK  (refused, no valid task, or cut short by a stop)
       |            +-> HANDED_BACK               (this EM was declared dead)
       '------------'-> DROPPED                   (stale session, or storage rejected it)

Pull methods hand out the next piece of work for a thread (`start_poll`, `next_registration`,
`take_batch`, `next_report`, `next_hand_back`); event methods take the result of a call and
return actions (`Settled`, `Refused`, `Refresh`, `RegisterAgain`, `ShutdownOldId`, `Shutdown`,
`SessionAdvanced`, `Fatal`).

The behaviours it owns:

* Adaptive prefetch: the EM holds at most `sizer.limit` tasks (reserved for a poll, being
  registered, queued or running; `PrefetchSizer`, about 50 ms of queued work per executor). A
  poll asks for every free place under the limit at the time; the window only grows through a
  poll, so `held` never exceeds the limit that was in force when it last grew (the limit may
  shrink below it when tasks get slower; then no poll until enough finished). A scheduler that
  delivers more than asked is taken at its word: `held` counts all of it.
* Acknowledgements: an assignment is acknowledged only once storage accepted its registration or
  definitively rejected it (responsibility moves from the scheduler to storage there); pending
  acknowledgements ride on the next poll, hand-back or Shutdown and are removed only when that
  call succeeded, so none is lost. One that is handed back is never acknowledged.
* Stale sessions: an assignment of an older storage session is acknowledged and dropped without
  touching storage; one of a newer session first waits for a refresh (a heartbeat that teaches
  the EM the session and, if storage declared it dead meanwhile, a new id); a registration or a
  report storage answers NOT_FOUND (stale session) is dropped and a refresh asked for. Outcomes
  of an older session than the current one are dropped, not reported; the current session's
  work is never dropped for being stale.
* Per-item UNAVAILABLE: storage had no room left in its reply for the item's inputs; the item is
  registered again (first, before any other group), not acknowledged meanwhile. Other per-item
  errors are acknowledged and dropped, counted by status code.
* Refused registrations: storage refusing a registration as a whole (INVALID_ARGUMENT,
  INTERNAL, ...) leaves the assignments un-acknowledged; they are handed back with a `Shutdown`
  for this EM's own id carrying the pending acks, which makes the scheduler reschedule exactly
  them, so a hand-back is issued only while no poll is in flight and nothing else is waiting for
  or in a registration. While one is owed, no poll is started. An assignment that names no valid
  task goes back the same way (storage would refuse the whole registration it is in).
* Declared dead: a registration answered FAILED_PRECONDITION means storage declared this EM dead;
  the assignments are not acknowledged and the EM registers again, which tells the scheduler to
  reschedule what the old id held (`ShutdownOldId`, with the pending acks: those reached storage,
  which now owns them). The same when a heartbeat says storage no longer knows this EM.
* Fair-share runner batches: an idle runner takes at most its fair share of the queue (queued
  tasks spread over every idle executor), at most `executor_batch`, and at most `sizer.ahead`
  (about 50 ms of work) tasks.
* Outcomes: outputs, or the error clipped to a few KiB (`clip_message`); outputs larger than a
  report can carry become an error naming the sizes, so the job fails instead of waiting.
* Report batching: up to `report_batch` outcomes at a time, split by session and then into
  groups whose values fit one message (`by_size`). A report offers the executors that would be
  idle (`Report.accept`); storage may answer with tasks it registered for this EM (the children
  the outcomes made ready, while nothing else waits to be scheduled), which are queued as
  registered work with nothing to acknowledge. Per-outcome refusals are dropped as "stale";
  a report storage refused, or that a stop cut short, is dropped with its reason (shutdown,
  stale_session, rejected, error), never silently. (The manager retries transient failures.)
* Taking work directly: an idle EM (no assignment at all, a scheduler poll in flight) also asks
  storage for the next ready task (`Take`, one place beyond the limit); storage serves it
  before the scheduler while the scheduler holds nothing it is ordering, and answers with the
  task registered for this EM, queued like a continued one. As soon as there is anything to
  order, the scheduler orders it.
* Fatal pool failure: tasks the executor pool could not run are abandoned (acknowledged, not
  reported: storage recovers them once this EM is gone) and the EM stops fetching and exits with
  code 1, unless it is stopping anyway; results of tasks that did run are still reported.
* Drain on stop: a stop first stops fetching (registrations not yet made are cut short and
  handed back by the final Shutdown), then waits until every registered task was reported or the
  drain deadline passed; the final `Shutdown` carries every pending ack and hands back whatever
  was never acknowledged.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

from orbweaver import errors
from orbweaver._limits import MAX_VALUE_IN_MESSAGE, clip_message
from orbweaver.worker.pool import ResultKind, TaskRequest, TaskResult
from orbweaver.worker.prefetch import PrefetchSizer

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
_CODE_NAMES = {code.value[0]: code.name.lower() for code in grpc.StatusCode}
# What an outcome adds to a report besides its value (ids; an error message is clipped).
_OUTCOME_OVERHEAD = 64


class Stage(enum.Enum):
    """Where a held assignment is."""

    FETCHED = "fetched"  # delivered by a poll, waiting for its registration
    REGISTERING = "registering"  # in a registration call
    QUEUED = "queued"  # registered (acknowledged), waiting for an executor
    RUNNING = "running"  # handed to the executor pool
    REPORTING = "reporting"  # ran; its outcome waits for a report or is in one
    RETURNING = "returning"  # not acknowledged; to be handed back to the scheduler


class Fate(enum.Enum):
    """How an assignment left the EM."""

    DROPPED = "dropped"  # acknowledged without running: stale session, or storage rejected it
    HANDED_BACK = "handed_back"  # never acknowledged: the scheduler reschedules it
    REPORTED = "reported"  # storage accepted its outcome
    REPORT_DROPPED = "report_dropped"  # ran, but its outcome was not accepted or not sent
    ABANDONED = "abandoned"  # registered, never run (the pool broke); storage recovers it


# Counted against the prefetch limit.
HELD_STAGES = frozenset({Stage.FETCHED, Stage.REGISTERING, Stage.QUEUED, Stage.RUNNING})
# In flight: storage holds a task instance for it that this EM has not settled yet.
REGISTERED_STAGES = frozenset({Stage.QUEUED, Stage.RUNNING, Stage.REPORTING})


class Phase(enum.Enum):
    FETCHING = "fetching"
    DRAINING = "draining"  # no new work (a stop, or a fatal error); held work goes on
    STOPPED = "stopped"  # wound down: calls still made are cut short


# ---------------------------------------------------------------------------------------------
# What comes in
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assigned:
    """One assignment a poll brought (the scheduler's `TaskAssignment`); `task_id` None: it
    named no valid task (storage would refuse its registration as a whole)."""

    assignment_id: int
    scheduler_id: int
    session_id: int
    job_id: int
    task_id: int | None


@dataclass(frozen=True, slots=True)
class Accepted:
    """Storage registered an item: what to run (from its execution context)."""

    request: TaskRequest
    label: str


@dataclass(frozen=True, slots=True)
class ItemError:
    """Storage did not register an item: a gRPC status code and message."""

    code: int
    message: str


class RegistrationFailure(enum.Enum):
    """Why a registration call as a whole did not go through."""

    STOPPING = "stopping"  # cut short by a stop (cancelled, or stopped while retrying)
    STALE_SESSION = "stale_session"  # NOT_FOUND: storage restarted
    DECLARED_DEAD = "declared_dead"  # FAILED_PRECONDITION: storage declared this EM dead
    REFUSED = "refused"  # anything else: retrying will not help


class HandBackResult(enum.Enum):
    TAKEN = "taken"  # the scheduler took the Shutdown
    UNKNOWN_EM = "unknown_em"  # NOT_FOUND: it holds nothing for this EM any more
    FAILED = "failed"  # not taken (or stopping): try again later


class ReportFailure(enum.Enum):
    CANCELLED = "cancelled"  # cut short by the stop
    STALE_SESSION = "stale_session"  # NOT_FOUND
    REFUSED = "refused"  # any other status
    ERROR = "error"  # not a status at all (a bug or a broken connection object)


# ---------------------------------------------------------------------------------------------
# What goes out
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgement for the scheduler (a `TaskAssignmentRecord`)."""

    key: int
    assignment_id: int
    scheduler_id: int


@dataclass(frozen=True, slots=True)
class Item:
    """An assignment to register."""

    key: int
    job_id: int
    task_id: int


@dataclass(frozen=True, slots=True)
class Work:
    """A registered task for an executor."""

    key: int
    session_id: int
    request: TaskRequest
    label: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """A task's outcome for storage: outputs (bytes) or an error message (str)."""

    key: int
    session_id: int
    job_id: int
    task_id: int
    instance_id: int
    value: bytes | str


@dataclass(frozen=True, slots=True)
class Poll:
    """Ask the scheduler for up to `max_items` assignments, acknowledging `acks`."""

    em_id: int
    acks: tuple[Ack, ...]
    max_items: int


@dataclass(frozen=True, slots=True)
class Take:
    """Ask storage for the next ready task (`TakeReadyTasks`, a long poll): an idle EM's one
    place beyond the poll's, so that a job arriving at an idle cluster skips the scheduler."""

    em_id: int
    session_id: int
    max_items: int = 1


@dataclass(frozen=True, slots=True)
class Register:
    """Register these assignments (one session) as task instances with storage."""

    em_id: int
    session_id: int
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class Run:
    """Run these tasks on the executor pool (one round trip)."""

    work: tuple[Work, ...]


@dataclass(frozen=True, slots=True)
class Report:
    """Report these outcomes (one session, one message) to storage; `accept`: how many tasks
    this EM would start at once, which storage may register for it in the reply (the tasks
    these outcomes made ready, while nothing else waits to be scheduled)."""

    em_id: int
    session_id: int
    outcomes: tuple[Outcome, ...]
    accept: int = 0


@dataclass(frozen=True, slots=True)
class HandBack:
    """A `Shutdown` for this EM's own id: the scheduler takes `acks` and reschedules what else it
    holds for this EM, which is exactly `keys`."""

    em_id: int
    acks: tuple[Ack, ...]
    keys: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Settled:
    """These assignments left the EM: `fate`, with a reason (a metric label) and details for
    the log (a storage message; the labels of abandoned tasks)."""

    keys: tuple[int, ...]
    fate: Fate
    reason: str = ""
    detail: str = ""
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """Storage refused to register these as a whole (`reason`: the status); they are handed
    back."""

    keys: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Refresh:
    """Ask for a heartbeat now, to learn the current session (and EM id); `wait`: before
    going on."""

    wait: bool


@dataclass(frozen=True, slots=True)
class RegisterAgain:
    """Storage no longer accepts `stale_id`: register with it again (unless that happened)."""

    stale_id: int


@dataclass(frozen=True, slots=True)
class ShutdownOldId:
    """A `Shutdown` for the id storage declared dead, so that the scheduler reschedules what it
    held; `acks` ride along (those assignments reached storage) and stay pending."""

    em_id: int
    acks: tuple[Ack, ...]


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The final `Shutdown`: every pending ack; the scheduler reschedules the rest (`keys`)."""

    em_id: int
    acks: tuple[Ack, ...]
    keys: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SessionAdvanced:
    """Storage restarted: a new session."""

    old: int
    new: int


@dataclass(frozen=True, slots=True)
class Fatal:
    """The EM cannot go on (the executor pool broke): it stops fetching and exits with 1."""

    reason: str


Action = (
    Settled | Refused | Refresh | RegisterAgain | ShutdownOldId | Shutdown | SessionAdvanced | Fatal
)


def by_size(outcomes: Iterable[Outcome], limit: int = MAX_VALUE_IN_MESSAGE) -> list[list[Outcome]]:
    """Consecutive groups whose values fit one report message of `limit` bytes (an outcome too
    large on its own gets a group of its own)."""
    groups: list[list[Outcome]] = []
    size = limit + 1
    for o in outcomes:
        value = len(o.value) + _OUTCOME_OVERHEAD
        if size + value > limit:
            groups.append([])
            size = 0
        groups[-1].append(o)
        size += value
    return groups


def outcome_value(result: TaskResult, label: str, limit: int = MAX_VALUE_IN_MESSAGE) -> bytes | str:
    """What a report says about `result`: the outputs, or a clipped error naming the task."""
    outputs = result.outputs or b""
    if result.kind is ResultKind.SUCCESS and len(outputs) > limit:
        # It could never reach storage; its job fails with the reason instead of waiting.
        return (
            f"{label}: output of {len(outputs)} bytes exceeds the limit "
            f"of {limit} bytes a report can carry"
        )
    if result.kind is ResultKind.SUCCESS:
        return outputs
    return clip_message(f"{label}: {result.error or result.kind.name.lower()}")


class _Entry:
    __slots__ = ("assigned", "key", "outcome", "stage", "work")

    def __init__(self, key: int, assigned: Assigned) -> None:
        self.key = key
        self.assigned = assigned
        self.stage = Stage.FETCHED
        self.work: Work | None = None
        self.outcome: Outcome | None = None


class ManagerCore:
    """The execution manager's state: held assignments, pending acks, session and EM id,
    in-flight counts, prefetch sizing, runner and report queues. Not thread-safe."""

    def __init__(
        self,
        executors: int,
        *,
        prefetch: int = 256,
        executor_batch: int = 64,
        report_batch: int = 512,
        max_report_bytes: int = MAX_VALUE_IN_MESSAGE,
        max_queued_bytes: int = 16 << 20,
        continue_tasks: bool = True,
        take_tasks: bool = True,
    ) -> None:
        self.sizer = PrefetchSizer(executors, prefetch)
        self._continue_tasks = continue_tasks
        self._take_tasks = take_tasks
        self._max_queued_bytes = max(1, max_queued_bytes)
        self._queued_bytes = 0  # the task inputs of the QUEUED entries
        self._executor_batch = max(1, executor_batch)
        self._report_batch = max(1, report_batch)
        self._max_report_bytes = max_report_bytes
        self._em_id = 0
        self._session = 0
        self._phase = Phase.FETCHING
        self._fatal: str | None = None
        self._workers_stopped = False
        self._drain_until: float | None = None
        self._issued = 0
        self._entries: dict[int, _Entry] = {}
        self._acks: dict[int, Ack] = {}  # pending, in order
        self._poll: Poll | None = None  # the poll in flight
        self._reserved = 0  # its places
        self._take: Take | None = None  # the TakeReadyTasks call in flight
        self._take_reserved = 0  # its places (beyond the limit: see `can_take`)
        self._held = 0  # reserved + entries in HELD_STAGES
        self._in_flight = 0  # entries in REGISTERED_STAGES
        self._to_register: deque[tuple[int, list[int]]] = deque()  # (session, keys)
        self._queue: deque[int] = deque()  # QUEUED
        self._idle_runners = 0
        self._reports: deque[int] = deque()  # REPORTING, not taken yet
        self._report_groups: deque[list[int]] = deque()  # REPORTING, taken, not handed out
        self._returning: list[int] = []
        self._hand_back: HandBack | None = None

    # -- introspection --------------------------------------------------------------------------

    @property
    def em_id(self) -> int:
        return self._em_id

    @property
    def session_id(self) -> int:
        return self._session

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def fatal(self) -> str | None:
        """Why the EM cannot go on (None: it can)."""
        return self._fatal

    @property
    def limit(self) -> int:
        return self.sizer.limit

    @property
    def held(self) -> int:
        """Places reserved for the poll in flight plus assignments fetched, being registered,
        queued or running."""
        return self._held

    @property
    def in_flight(self) -> int:
        """Registered tasks not settled yet (queued, running or being reported)."""
        return self._in_flight

    @property
    def issued(self) -> int:
        """Keys handed out so far (the last key)."""
        return self._issued

    @property
    def pending_acks(self) -> tuple[Ack, ...]:
        return tuple(self._acks.values())

    def stage(self, key: int) -> Stage | None:
        """Where the assignment is (None: settled, or never issued)."""
        entry = self._entries.get(key)
        return None if entry is None else entry.stage

    def live(self) -> dict[int, Stage]:
        return {key: entry.stage for key, entry in self._entries.items()}

    @property
    def can_poll(self) -> bool:
        """A poll may start: fetching, room under the limit, nothing in between (a poll in
        flight, assignments waiting for registration, a hand-back owed)."""
        return (
            self._phase is Phase.FETCHING
            and self._poll is None
            and not self._to_register
            and not self._returning
            and self._held - self._take_reserved < self.sizer.limit
        )

    @property
    def can_take(self) -> bool:
        """A direct request to storage for the next ready task may start: fetching, with
        `take_tasks`, none in flight, and this EM idle -- no assignment at all (not even an
        outcome being reported: the take would compete with the report for both ends' CPU),
        only the scheduler poll in flight. Its one place is beyond the prefetch limit (the poll
        holds every free one), and storage serves it only while the scheduler holds nothing it
        is ordering: placement has nothing to decide. Only while idle: a busy EM's tasks come
        in the scheduler's batches (one take per task cost more than it saved in throughput)
        and in its reports' replies."""
        return (
            self._phase is Phase.FETCHING
            and self._take_tasks
            and self._take is None
            and self._poll is not None
            and self._em_id != 0
            and self._session != 0
            and not self._entries
        )

    @property
    def can_register(self) -> bool:
        """A registration may start: assignments wait for one and, while fetching, the tasks
        registered but not running yet hold less than `max_queued_bytes` of inputs (a value
        read by many tasks is held once per task: they are registered as executors free up).
        Once fetching stopped, waiting registrations are cut short at once."""
        return bool(self._to_register) and (
            self._phase is not Phase.FETCHING
            or not self._queue
            or self._queued_bytes < self._max_queued_bytes
        )

    def held_instances(self) -> tuple[int, tuple[int, ...]]:
        """The current session and the task instances of it this EM holds (registered, not
        settled: queued, running or being reported), for storage to reconcile with."""
        session = self._session
        return session, tuple(
            entry.work.request.instance_id
            for entry in self._entries.values()
            if entry.stage in REGISTERED_STAGES
            and entry.work is not None
            and entry.work.session_id == session
        )

    @property
    def work_queued(self) -> bool:
        return bool(self._queue)

    @property
    def reports_waiting(self) -> bool:
        return bool(self._reports or self._report_groups)

    @property
    def workers_stopped(self) -> bool:
        """Runners and the reporter end once their queues are empty."""
        return self._workers_stopped

    # -- identity and session -------------------------------------------------------------------

    def registered(self, em_id: int, session_id: int) -> list[Action]:
        """Storage registered this EM as `em_id`. After a re-registration, the scheduler is told
        to reschedule what the old id held."""
        old, self._em_id = self._em_id, em_id
        actions = self._advance(session_id)
        if old:
            actions.append(ShutdownOldId(old, self.pending_acks))
        return actions

    def session_seen(self, session_id: int) -> list[Action]:
        """A heartbeat reply named storage's session."""
        return self._advance(session_id)

    def storage_forgot(self, em_id: int) -> list[Action]:
        """A heartbeat for `em_id` was refused: storage declared it dead or does not know it."""
        return [RegisterAgain(em_id)] if em_id == self._em_id else []

    def _advance(self, session_id: int) -> list[Action]:
        if session_id <= self._session:
            return []
        old, self._session = self._session, session_id
        return [SessionAdvanced(old, session_id)] if old else []

    # -- fetching -------------------------------------------------------------------------------

    def start_poll(self) -> Poll | None:
        """Reserve every free place under the limit for a poll, with the pending acks."""
        if not self.can_poll:
            return None
        free = self.sizer.limit - (self._held - self._take_reserved)
        self._reserved = free
        self._held += free
        self._poll = Poll(self._em_id, self.pending_acks, free)
        return self._poll

    def poll_failed(self) -> None:
        """The poll did not go through: its places are free again, its acks stay pending."""
        self._end_poll()

    def fetched(self, assignments: Sequence[Assigned]) -> list[Action]:
        """The poll succeeded (its acks were taken) and brought `assignments`, which get the
        next keys in order."""
        poll = self._end_poll()
        for ack in poll.acks:
            self._acks.pop(ack.key, None)
        actions: list[Action] = []
        stale: list[int] = []
        invalid: list[int] = []
        groups: dict[int, list[int]] = {}
        for a in assignments:
            self._issued += 1
            key = self._issued
            if a.session_id < self._session:
                # Polled before storage restarted; storage re-offers the task itself.
                self._acks[key] = Ack(key, a.assignment_id, a.scheduler_id)
                stale.append(key)
                continue
            self._entries[key] = _Entry(key, a)
            if a.task_id is None:
                # Nothing storage could register: handed back like a refused registration.
                self._entries[key].stage = Stage.RETURNING
                self._returning.append(key)
                invalid.append(key)
                continue
            self._held += 1
            groups.setdefault(a.session_id, []).append(key)
        if stale:
            actions.append(Settled(tuple(stale), Fate.DROPPED, "stale_session"))
        if invalid:
            actions.append(Refused(tuple(invalid), "invalid_argument"))
        if any(session > self._session for session in groups):
            # Storage restarted and this EM has not heard yet: catch up first.
            actions.append(Refresh(wait=True))
        self._to_register.extend(groups.items())
        return actions

    def start_take(self) -> Take | None:
        """Reserve this idle EM's extra place for a `TakeReadyTasks` call (see `can_take`)."""
        if not self.can_take:
            return None
        self._take = Take(self._em_id, self._session, 1)
        self._take_reserved = self._take.max_items
        self._held += self._take_reserved
        return self._take

    def took(self, take: Take, tasks: Sequence[Accepted]) -> list[Action]:
        """Storage answered the take with `tasks` it registered for this EM: they are queued to
        run like any registered task (storage owns them: nothing to acknowledge)."""
        self._end_take(take)
        self._queue_registered(take.session_id, tasks)
        return []

    def take_failed(self, take: Take) -> None:
        """The take did not go through: its place is free again."""
        self._end_take(take)

    def _end_take(self, take: Take) -> None:
        if self._take is not take:
            raise errors.InternalError("execution manager core: not the take in flight")
        self._take = None
        self._held -= self._take_reserved
        self._take_reserved = 0

    def _queue_registered(self, session_id: int, tasks: Sequence[Accepted]) -> None:
        """Queue tasks storage registered for this EM on its own initiative (continued or
        taken): they are held and in flight from here, with no assignment to acknowledge."""
        for accepted in tasks:
            self._issued += 1
            key = self._issued
            request = accepted.request
            entry = _Entry(key, Assigned(0, 0, session_id, request.job_id, request.task_id))
            entry.stage = Stage.QUEUED
            entry.work = Work(key, session_id, request, accepted.label)
            self._entries[key] = entry
            self._held += 1
            self._in_flight += 1
            self._queue.append(key)
            self._queued_bytes += len(request.task_io)

    def _end_poll(self) -> Poll:
        if self._poll is None:
            raise errors.InternalError("execution manager core: no poll in flight")
        poll, self._poll = self._poll, None
        self._held -= self._reserved
        self._reserved = 0
        return poll

    # -- registration ---------------------------------------------------------------------------

    def next_registration(self) -> Register | None:
        """The next group to register (one session), with the EM id as of now. Once the EM stops
        fetching, what waits is cut short instead: not acknowledged, so handed back."""
        if not self.can_register:
            return None
        if self._phase is not Phase.FETCHING:
            while self._to_register:
                _, keys = self._to_register.popleft()
                self._to_returning(keys)
            return None
        session_id, keys = self._to_register.popleft()
        items = []
        for key in keys:
            entry = self._at(key, Stage.FETCHED)
            entry.stage = Stage.REGISTERING
            assert entry.assigned.task_id is not None
            items.append(Item(key, entry.assigned.job_id, entry.assigned.task_id))
        return Register(self._em_id, session_id, tuple(items))

    def registration_done(
        self, register: Register, results: Sequence[Accepted | ItemError]
    ) -> list[Action]:
        """Storage answered the registration item by item."""
        if len(results) != len(register.items):
            raise errors.InternalError(
                f"registration of {len(register.items)} items answered with {len(results)}"
            )
        actions: list[Action] = []
        full: list[int] = []
        for item, result in zip(register.items, results, strict=True):
            entry = self._at(item.key, Stage.REGISTERING)
            if isinstance(result, ItemError) and result.code == UNAVAILABLE:
                # The reply had no room for its inputs: register it again.
                entry.stage = Stage.FETCHED
                full.append(item.key)
                continue
            self._ack(entry)
            if isinstance(result, ItemError):
                self._settle([entry])
                reason = _CODE_NAMES.get(result.code, "unknown")
                actions.append(Settled((item.key,), Fate.DROPPED, reason, result.message))
                continue
            entry.stage = Stage.QUEUED
            entry.work = Work(item.key, register.session_id, result.request, result.label)
            self._in_flight += 1
            self._queue.append(item.key)
            self._queued_bytes += len(result.request.task_io)
        if full:
            self._to_register.appendleft((register.session_id, full))
        return actions

    def registration_failed(
        self, register: Register, failure: RegistrationFailure, reason: str = ""
    ) -> list[Action]:
        """The registration call as a whole did not go through (`reason`: the status, for
        REFUSED)."""
        entries = [self._at(item.key, Stage.REGISTERING) for item in register.items]
        keys = tuple(e.key for e in entries)
        if failure is RegistrationFailure.STOPPING:
            # The scheduler still owns these; the final Shutdown hands them back.
            self._to_returning(list(keys))
            return []
        if failure is RegistrationFailure.STALE_SESSION:
            # Storage restarted and re-offers these tasks itself.
            for entry in entries:
                self._ack(entry)
            self._settle(entries)
            return [Settled(keys, Fate.DROPPED, "stale_session"), Refresh(wait=False)]
        if failure is RegistrationFailure.DECLARED_DEAD:
            # Registering again tells the scheduler to reschedule what the old id held,
            # these assignments included.
            self._settle(entries)
            return [
                Settled(keys, Fate.HANDED_BACK, "declared_dead"),
                RegisterAgain(register.em_id),
            ]
        self._to_returning(list(keys))
        return [Refused(keys, reason or "error")]

    # -- handing back ---------------------------------------------------------------------------

    def next_hand_back(self) -> HandBack | None:
        """The hand-back owed for refused registrations, once nothing else is un-acknowledged
        here (no poll in flight, nothing waiting for or in a registration): the scheduler
        reschedules everything un-acknowledged it holds for this EM."""
        if (
            not self._returning
            or self._phase is not Phase.FETCHING
            or self._poll is not None
            or self._hand_back is not None
            or self._to_register
            or any(e.stage is Stage.REGISTERING for e in self._entries.values())
        ):
            return None
        self._hand_back = HandBack(self._em_id, self.pending_acks, tuple(self._returning))
        return self._hand_back

    def hand_back_done(self, hand_back: HandBack, result: HandBackResult) -> list[Action]:
        if hand_back is not self._hand_back:
            raise errors.InternalError("execution manager core: no such hand-back in flight")
        self._hand_back = None
        if result is HandBackResult.FAILED:
            return []
        if result is HandBackResult.TAKEN:
            for ack in hand_back.acks:
                self._acks.pop(ack.key, None)
        # UNKNOWN_EM: the scheduler holds nothing for this EM; the acks wait for the next poll.
        # (What the final Shutdown handed back meanwhile is settled already.)
        handed = set(hand_back.keys) & set(self._returning)
        if not handed:
            return []
        self._returning = [k for k in self._returning if k not in handed]
        keys = tuple(k for k in hand_back.keys if k in handed)
        self._settle([self._at(key, Stage.RETURNING) for key in keys])
        return [Settled(keys, Fate.HANDED_BACK, "refused")]

    # -- running --------------------------------------------------------------------------------

    def runner_idle(self) -> None:
        """A runner waits for work (call `take_batch` when it wakes)."""
        self._idle_runners += 1

    def take_batch(self) -> Run | None:
        """The next batch for a runner that was idle (None: nothing queued). A runner takes only
        its fair share of the queue, so queued tasks spread over every idle executor instead of
        running one after the other on the first runner that woke up."""
        self._idle_runners = max(0, self._idle_runners - 1)
        if not self._queue:
            return None
        share = -(-len(self._queue) // (self._idle_runners + 1))  # ceil
        return self._pop_batch(min(self._executor_batch, max(1, share), self.sizer.ahead))

    def claim_taken(self) -> Run | None:
        """What a take just brought, for the taker thread to run and report itself (None:
        nothing came, or the EM is no longer idle). The take is made only while the EM is
        idle; if nothing started running since, every executor is free, and handing the task
        to a runner and its outcome to the reporter would add two thread hand-offs to the
        latency of a job that found the cluster idle, and save nothing."""
        if not self._queue or any(e.stage is not Stage.QUEUED for e in self._entries.values()):
            return None
        return self._pop_batch(self._executor_batch)

    def _pop_batch(self, limit: int) -> Run:
        work: list[Work] = []
        while self._queue and len(work) < limit:
            entry = self._at(self._queue.popleft(), Stage.QUEUED)
            entry.stage = Stage.RUNNING
            assert entry.work is not None
            work.append(entry.work)
            self._queued_bytes -= len(entry.work.request.task_io)
        return Run(tuple(work))

    def ran(
        self,
        run: Run,
        results: Sequence[TaskResult],
        *,
        pool_failure: str | None = None,
        pool_closed: bool = False,
    ) -> list[Action]:
        """The pool answered a batch (`pool_failure`: it cannot start executors any more)."""
        if len(results) != len(run.work):
            raise errors.InternalError(
                f"a batch of {len(run.work)} tasks answered with {len(results)} results"
            )
        for result in results:
            self.sizer.observe(result.elapsed_s)
        not_run: list[tuple[Work, TaskResult]] = []
        for work, result in zip(run.work, results, strict=True):
            if result.kind is ResultKind.NOT_RUN:
                not_run.append((work, result))
                continue
            # Reported, even if the pool broke afterwards.
            entry = self._at(work.key, Stage.RUNNING)
            req = work.request
            value = outcome_value(result, work.label, self._max_report_bytes)
            entry.outcome = Outcome(
                work.key, work.session_id, req.job_id, req.task_id, req.instance_id, value
            )
            entry.stage = Stage.REPORTING
            self._held -= 1
            self._reports.append(work.key)
        if not_run:
            reason = not_run[0][1].error or "not run"
            return self._abandon([w for w, _ in not_run], reason, pool_closed)
        if pool_failure is not None:
            return self._abandon([], pool_failure, pool_closed)
        return []

    def abandoned(self, run: Run, reason: str, *, pool_closed: bool) -> list[Action]:
        """The pool refused the whole batch (it is closed or broken): none of it ran."""
        return self._abandon(list(run.work), reason, pool_closed)

    def _abandon(self, work: list[Work], reason: str, pool_closed: bool) -> list[Action]:
        """The executor pool cannot run tasks: fatal, unless the EM is stopping anyway. `work`
        did not run; not its fault, so it is not reported as failed."""
        actions: list[Action] = []
        if not (self._phase is Phase.STOPPED or pool_closed):
            actions += self._fail(f"executor pool failure: {reason}")
        if work:
            entries = [self._at(w.key, Stage.RUNNING) for w in work]
            self._settle(entries)
            actions.append(
                Settled(
                    tuple(w.key for w in work),
                    Fate.ABANDONED,
                    "not_run",
                    reason,
                    tuple(w.label for w in work),
                )
            )
        return actions

    def _fail(self, reason: str) -> list[Action]:
        if self._phase is Phase.FETCHING:
            self._phase = Phase.DRAINING
        if self._fatal is not None:
            return []
        self._fatal = reason
        return [Fatal(reason)]

    # -- reporting ------------------------------------------------------------------------------

    def next_report(self) -> Report | Settled | None:
        """The next report to send, or outcomes dropped because their session is over (None:
        nothing waits). Outcomes are taken `report_batch` at a time, split by session, then into
        groups that fit one message."""
        if not self._report_groups:
            if not self._reports:
                return None
            batch = [
                self._reports.popleft() for _ in range(min(self._report_batch, len(self._reports)))
            ]
            by_session: dict[int, list[Outcome]] = {}
            for key in batch:
                outcome = self._outcome(self._at(key, Stage.REPORTING))
                by_session.setdefault(outcome.session_id, []).append(outcome)
            for same_session in by_session.values():
                for group in by_size(same_session, self._max_report_bytes):
                    self._report_groups.append([o.key for o in group])
        entries = [self._at(key, Stage.REPORTING) for key in self._report_groups.popleft()]
        outcomes = tuple(self._outcome(e) for e in entries)
        session_id = outcomes[0].session_id
        if session_id < self._session:
            # Storage restarted while these ran; it has re-offered the tasks itself.
            self._settle(entries)
            return Settled(tuple(o.key for o in outcomes), Fate.REPORT_DROPPED, "stale_session")
        return Report(self._em_id, session_id, outcomes, self._idle_places())

    def _idle_places(self) -> int:
        """Places of the prefetch window not taken by work (fetched, being registered, queued
        or running); those reserved for a poll in flight count as free, as that poll waits for
        work nobody else has (0 unless fetching, and while the queued tasks hold
        `max_queued_bytes` of inputs, as for registrations)."""
        if self._phase is not Phase.FETCHING or not self._continue_tasks:
            return 0
        if self._queue and self._queued_bytes >= self._max_queued_bytes:
            return 0
        return max(0, self.sizer.limit - (self._held - self._reserved - self._take_reserved))

    def report_done(
        self,
        report: Report,
        statuses: Sequence[tuple[int, str]],
        continued: Sequence[Accepted] = (),
    ) -> list[Action]:
        """Storage answered the report outcome by outcome: (status code, message), 0 = taken;
        `continued`: tasks it registered for this EM in the reply (see `Report.accept`), queued
        to run like any registered task (storage owns them: there is nothing to acknowledge)."""
        if len(statuses) != len(report.outcomes):
            raise errors.InternalError(
                f"a report of {len(report.outcomes)} outcomes answered with {len(statuses)}"
            )
        self._queue_registered(report.session_id, continued)
        entries = [self._at(o.key, Stage.REPORTING) for o in report.outcomes]
        self._settle(entries)
        taken = tuple(
            o.key for o, (code, _) in zip(report.outcomes, statuses, strict=True) if not code
        )
        actions: list[Action] = []
        if taken:
            actions.append(Settled(taken, Fate.REPORTED))
        for o, (code, message) in zip(report.outcomes, statuses, strict=True):
            if code:
                actions.append(Settled((o.key,), Fate.REPORT_DROPPED, "stale", message))
        return actions

    def report_failed(self, report: Report, failure: ReportFailure) -> list[Action]:
        """The report as a whole did not go through: its outcomes are dropped."""
        entries = [self._at(o.key, Stage.REPORTING) for o in report.outcomes]
        self._settle(entries)
        keys = tuple(o.key for o in report.outcomes)
        if failure is ReportFailure.STALE_SESSION:
            return [Settled(keys, Fate.REPORT_DROPPED, "stale_session"), Refresh(wait=False)]
        if failure is ReportFailure.REFUSED:
            reason = "shutdown" if self._phase is Phase.STOPPED else "rejected"
        elif failure is ReportFailure.CANCELLED:
            reason = "shutdown"
        else:
            reason = "error"
        return [Settled(keys, Fate.REPORT_DROPPED, reason)]

    # -- stopping -------------------------------------------------------------------------------

    def stop_fetching(self) -> None:
        """No new work: no poll starts, registrations not yet made are cut short."""
        if self._phase is Phase.FETCHING:
            self._phase = Phase.DRAINING

    def drain(self, now: float, timeout: float) -> None:
        """Registered tasks may finish and report until `now + timeout`."""
        self.stop_fetching()
        self._drain_until = now + timeout

    def drained(self, now: float) -> bool:
        """Every registered task was settled, or the drain deadline passed."""
        return self._in_flight == 0 or (self._drain_until is not None and now >= self._drain_until)

    def wind_down(self) -> None:
        """The drain is over: calls still made from now on are cut short."""
        self.stop_fetching()
        self._phase = Phase.STOPPED

    def final_shutdown(self) -> list[Action]:
        """The final Shutdown, with every pending ack; what was never acknowledged (refused, cut
        short, or never registered) is handed back by it."""
        self.wind_down()
        if not self._em_id:
            return []  # never registered: nothing was fetched
        while self._to_register:
            self._to_returning(self._to_register.popleft()[1])
        returning = tuple(self._returning)
        self._settle([self._at(key, Stage.RETURNING) for key in returning])
        self._returning = []
        acks = self.pending_acks
        self._acks.clear()
        actions: list[Action] = [Shutdown(self._em_id, acks, returning)]
        if returning:
            actions.append(Settled(returning, Fate.HANDED_BACK, "shutdown"))
        return actions

    def stop_workers(self) -> None:
        """Runners and the reporter end once their queues are empty."""
        self._workers_stopped = True

    # -- bookkeeping ----------------------------------------------------------------------------

    def _at(self, key: int, stage: Stage) -> _Entry:
        entry = self._entries.get(key)
        if entry is None or entry.stage is not stage:
            found = "settled" if entry is None else entry.stage.value
            raise errors.InternalError(
                f"execution manager core: assignment {key} is {found}, expected {stage.value}"
            )
        return entry

    @staticmethod
    def _outcome(entry: _Entry) -> Outcome:
        assert entry.outcome is not None, "an entry being reported has its outcome"
        return entry.outcome

    def _ack(self, entry: _Entry) -> None:
        a = entry.assigned
        self._acks[entry.key] = Ack(entry.key, a.assignment_id, a.scheduler_id)

    def _to_returning(self, keys: list[int]) -> None:
        for key in keys:
            entry = self._entries[key]
            if entry.stage in HELD_STAGES:
                self._held -= 1
            entry.stage = Stage.RETURNING
            self._returning.append(key)

    def _settle(self, entries: list[_Entry]) -> None:
        for entry in entries:
            if entry.stage in HELD_STAGES:
                self._held -= 1
            if entry.stage in REGISTERED_STAGES:
                self._in_flight -= 1
            del self._entries[entry.key]

    def check_invariants(self) -> None:
        """Raise `AssertionError` if the bookkeeping is inconsistent (for tests)."""
        stages = [e.stage for e in self._entries.values()]
        held = sum(1 for s in stages if s in HELD_STAGES)
        assert self._held == self._reserved + self._take_reserved + held, "held count drifted"
        assert self._take is not None or self._take_reserved == 0
        assert self._in_flight == sum(1 for s in stages if s in REGISTERED_STAGES)
        assert self._held >= 0 and self._in_flight >= 0
        assert self._poll is not None or self._reserved == 0
        waiting = [k for _, keys in self._to_register for k in keys]
        assert len(waiting) == len(set(waiting))
        assert {k for k, e in self._entries.items() if e.stage is Stage.FETCHED} == set(waiting)
        assert list(self._queue) == [
            k for k in self._queue if self._entries[k].stage is Stage.QUEUED
        ]
        assert {k for k, e in self._entries.items() if e.stage is Stage.QUEUED} == set(self._queue)
        assert self._queued_bytes == sum(
            len(w.request.task_io) for k in self._queue if (w := self._entries[k].work) is not None
        )
        reporting = list(self._reports) + [k for g in self._report_groups for k in g]
        # (The rest of REPORTING is in a report under way.)
        assert {k for k, e in self._entries.items() if e.stage is Stage.REPORTING} >= set(reporting)
        assert len(reporting) == len(set(reporting))
        assert {k for k, e in self._entries.items() if e.stage is Stage.RETURNING} == set(
            self._returning
        )
        # Acknowledged only once storage took responsibility (or rejected it for good).
        unacked = {Stage.FETCHED, Stage.REGISTERING, Stage.RETURNING}
        assert not any(self._entries[k].stage in unacked for k in self._acks if k in self._entries)
        for entry in self._entries.values():
            if entry.stage in REGISTERED_STAGES:
                assert entry.work is not None
