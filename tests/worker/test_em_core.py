"""`ManagerCore`, the execution manager's sans-IO bookkeeping: events in, actions out, no
processes, no network, no clock. One test per behaviour its docstring lists, then a hypothesis
state machine that drives it through random interleavings of polls, registrations, runs,
reports, hand-backs, session changes and stops and checks its invariants after every step."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import grpc
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from orbweaver import errors
from orbweaver._limits import MAX_ERROR_BYTES
from orbweaver.worker.core import (
    REGISTERED_STAGES,
    UNAVAILABLE,
    Accepted,
    Ack,
    Action,
    Assigned,
    Fatal,
    Fate,
    HandBack,
    HandBackResult,
    Item,
    ItemError,
    ManagerCore,
    Outcome,
    Phase,
    Poll,
    Refresh,
    Refused,
    Register,
    RegisterAgain,
    RegistrationFailure,
    Report,
    ReportFailure,
    Run,
    SessionAdvanced,
    Settled,
    Shutdown,
    ShutdownOldId,
    Stage,
    Take,
    by_size,
)
from orbweaver.worker.pool import ResultKind, TaskRequest, TaskResult
from orbweaver.worker.prefetch import PREFETCH_INITIAL

EM = 7
SESSION = 3
SCHEDULER = 77
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
TINY_S = 50e-6
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def make_core(executors: int = 1, **options: int | bool) -> ManagerCore:
    core = ManagerCore(executors, **options)  # type: ignore[arg-type]
    assert core.registered(EM, SESSION) == []
    return core


def assignments(count: int, session: int = SESSION, first: int = 100) -> list[Assigned]:
    return [Assigned(first + i, SCHEDULER, session, 1, i) for i in range(count)]


def accepted(item: Item) -> Accepted:
    request = TaskRequest(1, item.task_id, 1000 + item.key, 1, "pkg", "fn", b"io", 0)
    return Accepted(request, f"pkg.fn (job 1, task {item.task_id})")


def accept_all(register: Register) -> list[Accepted | ItemError]:
    return [accepted(i) for i in register.items]


def success(elapsed: float = 0.01, outputs: bytes = b"out") -> TaskResult:
    return TaskResult(ResultKind.SUCCESS, outputs, None, elapsed)


def fetch(core: ManagerCore, batch: Sequence[Assigned]) -> tuple[Poll, list[Action]]:
    poll = core.start_poll()
    assert poll is not None
    return poll, core.fetched(batch)


def registered_work(core: ManagerCore, count: int) -> None:
    """Fetch and register `count` assignments (they end up queued)."""
    fetch(core, assignments(count, first=100 + core.issued))
    register = core.next_registration()
    assert register is not None
    assert core.registration_done(register, accept_all(register)) == []


def run_all(core: ManagerCore, results: Iterable[TaskResult] | None = None) -> list[Action]:
    core.runner_idle()
    run = core.take_batch()
    assert run is not None
    given = list(results) if results is not None else [success() for _ in run.work]
    return core.ran(run, given)


def acked(core: ManagerCore) -> list[int]:
    return [a.assignment_id for a in core.pending_acks]


def settled(actions: Iterable[object]) -> list[Settled]:
    return [a for a in actions if isinstance(a, Settled)]


# ---------------------------------------------------------------------------------------------
# Identity and sessions
# ---------------------------------------------------------------------------------------------


def test_a_re_registration_has_the_scheduler_reschedule_what_the_old_id_held() -> None:
    core = make_core()
    fetch(core, assignments(1, session=SESSION - 1))  # dropped and acknowledged
    assert acked(core) == [100]
    actions = core.registered(EM + 1, SESSION + 1)
    assert actions == [
        SessionAdvanced(SESSION, SESSION + 1),
        ShutdownOldId(EM, (Ack(1, 100, SCHEDULER),)),
    ]
    assert core.em_id == EM + 1
    assert acked(core) == [100], "the acks stay pending for the new id's next poll"


def test_sessions_only_move_forward() -> None:
    core = make_core()
    assert core.session_seen(SESSION - 1) == []
    assert core.session_seen(SESSION) == []
    assert core.session_seen(SESSION + 2) == [SessionAdvanced(SESSION, SESSION + 2)]
    assert core.session_id == SESSION + 2
    assert ManagerCore(1).session_seen(5) == [], "the first session is no restart"


def test_a_refused_heartbeat_registers_again_unless_the_id_was_replaced() -> None:
    core = make_core()
    assert core.storage_forgot(EM) == [RegisterAgain(EM)]
    core.registered(EM + 1, SESSION)
    assert core.storage_forgot(EM) == []


# ---------------------------------------------------------------------------------------------
# Adaptive prefetch
# ---------------------------------------------------------------------------------------------


def test_a_poll_asks_for_every_free_place_under_the_limit() -> None:
    core = make_core(executors=2)
    assert core.limit == 2 * (1 + PREFETCH_INITIAL)
    poll = core.start_poll()
    assert poll == Poll(EM, (), core.limit)
    assert core.held == core.limit
    assert core.start_poll() is None, "one poll at a time"
    core.fetched(assignments(3))
    assert core.held == 3, "places the poll did not fill are free again"
    register = core.next_registration()
    assert register is not None
    core.registration_done(register, accept_all(register))
    poll = core.start_poll()
    assert poll is not None and poll.max_items == core.limit - 3
    core.poll_failed()
    assert core.held == 3


def test_tiny_tasks_widen_the_window_and_slow_ones_close_it() -> None:
    core = make_core(executors=1)
    registered_work(core, 5)
    core.runner_idle()
    run = core.take_batch()
    assert run is not None and len(run.work) == PREFETCH_INITIAL
    assert core.ran(run, [success(TINY_S) for _ in run.work]) == []
    assert core.limit == 1 + 2**4 * PREFETCH_INITIAL  # twofold per observation
    assert run_all(core, [success(1.0)]) == []
    assert (core.limit, core.held) == (2, 0)  # one slow task closes it at once
    registered_work(core, 2)
    assert not core.can_poll, "the window is full"
    run_all(core, [success(1.0)])
    assert core.held == 1 < core.limit
    assert core.can_poll


def test_the_window_shrinking_below_what_is_held_stops_polling_until_enough_finished() -> None:
    core = make_core(executors=1)
    registered_work(core, 5)  # the whole initial window
    core.runner_idle()
    run = core.take_batch()
    assert run is not None and len(run.work) == 4
    core.ran(run, [success(1.0) for _ in run.work])  # slow: the limit drops to 2
    assert (core.held, core.limit) == (1, 2)
    assert core.start_poll() == Poll(EM, core.pending_acks, 1)


# ---------------------------------------------------------------------------------------------
# Acknowledgements
# ---------------------------------------------------------------------------------------------


def test_acks_ride_on_the_next_poll_and_leave_only_when_it_succeeded() -> None:
    core = make_core(executors=2)
    registered_work(core, 2)
    assert acked(core) == [100, 101]
    poll = core.start_poll()
    assert poll is not None and [a.assignment_id for a in poll.acks] == [100, 101]
    core.poll_failed()
    assert acked(core) == [100, 101], "a failed poll keeps them"
    poll = core.start_poll()
    assert poll is not None
    core.fetched([Assigned(200, SCHEDULER, SESSION - 1, 1, 0)])  # acknowledged meanwhile
    assert acked(core) == [200], "exactly the acks the poll carried left"


def test_nothing_is_acknowledged_before_storage_answered() -> None:
    core = make_core()
    fetch(core, assignments(2))
    register = core.next_registration()
    assert register is not None
    assert acked(core) == []
    assert {core.stage(1), core.stage(2)} == {Stage.REGISTERING}
    core.registration_done(register, accept_all(register))
    assert acked(core) == [100, 101]


# ---------------------------------------------------------------------------------------------
# Stale sessions
# ---------------------------------------------------------------------------------------------


def test_an_older_session_is_acknowledged_and_dropped_without_registration() -> None:
    core = make_core()
    _, actions = fetch(core, [*assignments(1, SESSION - 1), *assignments(1, SESSION, 200)])
    assert actions == [Settled((1,), Fate.DROPPED, "stale_session")]
    assert acked(core) == [100]
    register = core.next_registration()
    assert register is not None and [i.key for i in register.items] == [2]
    assert core.next_registration() is None


def test_a_newer_session_waits_for_a_refresh_and_each_session_registers_apart() -> None:
    core = make_core()
    batch = [*assignments(1, SESSION + 1), *assignments(1, SESSION, 200)]
    _, actions = fetch(core, [*batch, Assigned(300, SCHEDULER, SESSION + 1, 2, 0)])
    assert actions == [Refresh(wait=True)]
    core.registered(EM + 1, SESSION + 1)  # what the refresh taught it
    first = core.next_registration()
    second = core.next_registration()
    assert first is not None and second is not None
    assert (first.em_id, first.session_id, [i.key for i in first.items]) == (
        EM + 1,
        SESSION + 1,
        [1, 3],
    )
    assert (second.session_id, [i.key for i in second.items]) == (SESSION, [2])


def test_a_stale_session_registration_is_acknowledged_dropped_and_refreshes() -> None:
    core = make_core()
    fetch(core, assignments(2))
    register = core.next_registration()
    assert register is not None
    actions = core.registration_failed(register, RegistrationFailure.STALE_SESSION)
    assert actions == [Settled((1, 2), Fate.DROPPED, "stale_session"), Refresh(wait=False)]
    assert acked(core) == [100, 101]
    assert core.held == 0


def test_outcomes_of_an_older_session_are_dropped_and_the_current_ones_reported() -> None:
    core = make_core(executors=2)
    registered_work(core, 1)
    run_all(core)
    core.session_seen(SESSION + 1)
    fetch(core, assignments(1, SESSION + 1, 200))
    register = core.next_registration()
    assert register is not None
    core.registration_done(register, accept_all(register))
    run_all(core)
    assert core.next_report() == Settled((1,), Fate.REPORT_DROPPED, "stale_session")
    report = core.next_report()
    assert isinstance(report, Report) and report.session_id == SESSION + 1
    assert [o.key for o in report.outcomes] == [2]
    assert core.in_flight == 1


# ---------------------------------------------------------------------------------------------
# Per-item results
# ---------------------------------------------------------------------------------------------


def test_per_item_results_queue_drop_or_register_again() -> None:
    core = make_core(executors=2)
    fetch(core, assignments(3))
    register = core.next_registration()
    assert register is not None
    first, second, third = register.items
    actions = core.registration_done(
        register,
        [accepted(first), ItemError(UNAVAILABLE, "no room"), ItemError(NOT_FOUND, "gone")],
    )
    assert actions == [Settled((third.key,), Fate.DROPPED, "not_found", "gone")]
    assert acked(core) == [100, 102], "the item to register again is not acknowledged"
    assert core.stage(first.key) is Stage.QUEUED
    assert core.stage(second.key) is Stage.FETCHED
    assert not core.can_poll, "the retry comes first"
    again = core.next_registration()
    assert again is not None and again.items == (second,)
    core.registration_done(again, [accepted(second)])
    assert acked(core) == [100, 102, 101]
    assert core.in_flight == 2 and core.held == 2


def accepted_with_inputs(item: Item, size: int) -> Accepted:
    request = TaskRequest(1, item.task_id, 1000 + item.key, 1, "pkg", "fn", b"i" * size, 0)
    return Accepted(request, f"pkg.fn (job 1, task {item.task_id})")


def test_registrations_wait_while_the_queued_tasks_hold_enough_input() -> None:
    """A value read by many tasks is held once per registered task: with `max_queued_bytes`
    of inputs waiting for an executor, the next registration waits for a runner to take
    some; a stop still cuts the waiting one short at once."""
    core = make_core(executors=1, max_queued_bytes=1000)
    fetch(core, assignments(4))
    register = core.next_registration()
    assert register is not None
    first, second, third, fourth = register.items
    core.registration_done(
        register,
        [
            accepted_with_inputs(first, 600),
            accepted_with_inputs(second, 600),
            ItemError(UNAVAILABLE, "no room"),
            ItemError(UNAVAILABLE, "no room"),
        ],
    )
    assert not core.can_register and core.next_registration() is None, "1,200 bytes queued"
    assert core.stage(third.key) is Stage.FETCHED and not core.can_poll
    core.runner_idle()
    run = core.take_batch()
    assert run is not None and [w.key for w in run.work] == [first.key, second.key]
    assert core.can_register
    again = core.next_registration()
    assert again is not None and again.items == (third, fourth)
    core.registration_done(again, [accepted_with_inputs(third, 600), ItemError(UNAVAILABLE, "")])
    assert core.can_register, "600 bytes queued: below the limit"
    core.stop_fetching()
    assert core.next_registration() is None
    assert core.stage(fourth.key) is Stage.RETURNING, "a stop cuts the waiting one short"
    core.check_invariants()


def test_an_unknown_status_code_is_still_counted() -> None:
    core = make_core()
    fetch(core, assignments(1))
    register = core.next_registration()
    assert register is not None
    [drop] = core.registration_done(register, [ItemError(99, "what")])
    assert drop == Settled((1,), Fate.DROPPED, "unknown", "what")


def test_a_reply_of_the_wrong_length_is_a_broken_invariant() -> None:
    core = make_core()
    fetch(core, assignments(2))
    register = core.next_registration()
    assert register is not None
    with pytest.raises(errors.InternalError, match="2 items answered with 1"):
        core.registration_done(register, [accepted(register.items[0])])


# ---------------------------------------------------------------------------------------------
# Refused registrations and declared-dead EMs
# ---------------------------------------------------------------------------------------------


def test_a_refused_registration_is_handed_back_with_the_pending_acks() -> None:
    core = make_core()
    fetch(core, [*assignments(1, SESSION - 1), *assignments(2, SESSION, 200)])
    register = core.next_registration()
    assert register is not None
    actions = core.registration_failed(register, RegistrationFailure.REFUSED, "internal")
    assert actions == [Refused((2, 3), "internal")]
    assert core.held == 0 and acked(core) == [100]
    assert not core.can_poll, "no poll while a hand-back is owed"
    hand_back = core.next_hand_back()
    assert hand_back == HandBack(EM, (Ack(1, 100, SCHEDULER),), (2, 3))
    assert core.next_hand_back() is None, "one at a time"
    assert core.hand_back_done(hand_back, HandBackResult.FAILED) == []
    hand_back = core.next_hand_back()
    assert hand_back is not None
    actions = core.hand_back_done(hand_back, HandBackResult.TAKEN)
    assert actions == [Settled((2, 3), Fate.HANDED_BACK, "refused")]
    assert acked(core) == [] and core.live() == {}
    assert core.can_poll


def test_a_scheduler_that_forgot_this_em_holds_nothing_to_hand_back() -> None:
    core = make_core()
    fetch(core, [*assignments(1, SESSION - 1), *assignments(1, SESSION, 200)])
    register = core.next_registration()
    assert register is not None
    core.registration_failed(register, RegistrationFailure.REFUSED, "invalid_argument")
    hand_back = core.next_hand_back()
    assert hand_back is not None
    assert core.hand_back_done(hand_back, HandBackResult.UNKNOWN_EM) == [
        Settled((2,), Fate.HANDED_BACK, "refused")
    ]
    assert acked(core) == [100], "the acks wait for the next poll"


def test_no_hand_back_while_anything_else_is_unacknowledged() -> None:
    # The scheduler would reschedule every un-acknowledged assignment of this EM, not only
    # the refused ones.
    core = make_core()
    fetch(core, [*assignments(1, SESSION), *assignments(1, SESSION + 1, 200)])
    register = core.next_registration()
    assert register is not None
    core.registration_failed(register, RegistrationFailure.REFUSED, "internal")
    assert core.next_hand_back() is None, "another group waits for its registration"
    other = core.next_registration()
    assert other is not None
    assert core.next_hand_back() is None, "another group is being registered"
    core.registration_done(other, accept_all(other))
    assert core.next_hand_back() is not None


def test_an_assignment_without_a_valid_task_is_handed_back() -> None:
    core = make_core()
    _, actions = fetch(core, [Assigned(100, SCHEDULER, SESSION, 1, None), *assignments(1)])
    assert actions == [Refused((1,), "invalid_argument")]
    assert core.stage(1) is Stage.RETURNING
    register = core.next_registration()
    assert register is not None and [i.key for i in register.items] == [2]
    core.registration_done(register, accept_all(register))
    hand_back = core.next_hand_back()
    assert hand_back is not None and hand_back.keys == (1,)


def test_a_declared_dead_em_registers_again_instead_of_acknowledging() -> None:
    core = make_core()
    fetch(core, assignments(2))
    register = core.next_registration()
    assert register is not None
    core.registered(EM + 1, SESSION)  # a heartbeat re-registered meanwhile
    actions = core.registration_failed(register, RegistrationFailure.DECLARED_DEAD)
    assert actions == [Settled((1, 2), Fate.HANDED_BACK, "declared_dead"), RegisterAgain(EM)]
    assert acked(core) == [] and core.held == 0


# ---------------------------------------------------------------------------------------------
# Fair-share runner batches
# ---------------------------------------------------------------------------------------------


def test_an_idle_runner_takes_its_fair_share_of_the_queue() -> None:
    core = make_core(executors=4, prefetch=256)
    for _ in range(8):
        core.sizer.observe(TINY_S)
    registered_work(core, 10)
    for _ in range(3):
        core.runner_idle()
    first = core.take_batch()  # two others idle: ceil(10 / 3)
    second = core.take_batch()  # one other: ceil(6 / 2)
    third = core.take_batch()  # alone: the rest
    assert [len(r.work) for r in (first, second, third) if r is not None] == [4, 3, 3]
    core.runner_idle()
    assert core.take_batch() is None


def test_a_batch_holds_at_most_executor_batch_and_about_fifty_milliseconds() -> None:
    core = make_core(executors=1, executor_batch=3, prefetch=256)
    for _ in range(8):
        core.sizer.observe(TINY_S)
    registered_work(core, 10)
    core.runner_idle()
    run = core.take_batch()
    assert run is not None and len(run.work) == 3
    slow = make_core(executors=1)
    slow.sizer.observe(1.0)
    registered_work(slow, 2)
    slow.runner_idle()
    run = slow.take_batch()
    assert run is not None and len(run.work) == slow.sizer.ahead == 1


# ---------------------------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------------------------


def _reported_value(result: TaskResult, **options: int) -> bytes | str:
    core = make_core(**options)
    registered_work(core, 1)
    assert run_all(core, [result]) == []
    report = core.next_report()
    assert isinstance(report, Report)
    [outcome] = report.outcomes
    assert (outcome.job_id, outcome.task_id, outcome.instance_id) == (1, 0, 1001)
    return outcome.value


def test_outputs_are_reported_as_they_are() -> None:
    assert _reported_value(success(outputs=b"frame")) == b"frame"
    assert _reported_value(TaskResult(ResultKind.SUCCESS, None, None, 0.01)) == b""


def test_errors_name_the_task_and_are_clipped() -> None:
    value = _reported_value(TaskResult(ResultKind.TASK_ERROR, None, "ValueError: x" * 10**4, 0.1))
    assert isinstance(value, str)
    assert value.startswith("pkg.fn (job 1, task 0): ValueError")
    assert "bytes cut" in value and len(value.encode()) <= MAX_ERROR_BYTES
    crash = _reported_value(TaskResult(ResultKind.CRASH, None, None, 0.1))
    assert crash == "pkg.fn (job 1, task 0): crash"


def test_outputs_too_large_for_a_report_fail_the_task_instead() -> None:
    value = _reported_value(success(outputs=b"x" * 2000), max_report_bytes=1000)
    assert value == (
        "pkg.fn (job 1, task 0): output of 2000 bytes exceeds the limit of 1000 bytes a report"
        " can carry"
    )


# ---------------------------------------------------------------------------------------------
# Report batching
# ---------------------------------------------------------------------------------------------


def test_by_size_groups_consecutive_outcomes_that_fit_one_message() -> None:
    def outcome(key: int, size: int) -> Outcome:
        return Outcome(key, SESSION, 1, key, key, b"x" * size)

    sizes = [100, 100, 600, 1000, 10, 10]
    groups = by_size([outcome(k, s) for k, s in enumerate(sizes)], limit=900)
    assert [[o.key for o in g] for g in groups] == [[0, 1], [2], [3], [4, 5]]
    assert by_size([], limit=900) == []


def test_reports_take_report_batch_outcomes_split_by_session_then_size() -> None:
    core = make_core(executors=8, report_batch=5, max_report_bytes=400)
    registered_work(core, 3)
    core.session_seen(SESSION + 1)
    fetch(core, assignments(4, SESSION + 1, 200))
    register = core.next_registration()
    assert register is not None
    core.registration_done(register, accept_all(register))
    while core.work_queued:
        run_all(core, None)
    got: list[tuple[str, int, list[int]]] = []
    while (item := core.next_report()) is not None:
        if isinstance(item, Settled):
            got.append((item.reason, -1, list(item.keys)))
        else:
            got.append(("report", item.session_id, [o.key for o in item.outcomes]))
    # Five outcomes at a time: the first five split by session (the older one is over), then
    # the last two; each group would fit five outcomes of 64 + 3 bytes.
    assert got == [
        ("stale_session", -1, [1, 2, 3]),
        ("report", SESSION + 1, [4, 5]),
        ("report", SESSION + 1, [6, 7]),
    ]


def test_report_statuses_settle_each_outcome() -> None:
    core = make_core(executors=2)
    registered_work(core, 2)
    run_all(core)
    report = core.next_report()
    assert isinstance(report, Report)
    actions = core.report_done(report, [(0, ""), (FAILED_PRECONDITION, "stale instance")])
    assert actions == [
        Settled((1,), Fate.REPORTED),
        Settled((2,), Fate.REPORT_DROPPED, "stale", "stale instance"),
    ]
    assert core.in_flight == 0 and core.live() == {}


def test_a_report_offers_free_places_and_queues_what_storage_registered_for_it() -> None:
    core = make_core(executors=3)
    registered_work(core, 2)
    core.runner_idle()
    core.runner_idle()
    run = core.take_batch()
    assert run is not None and len(run.work) == 1  # fair share: the other runner takes one
    core.ran(run, [success()])
    report = core.next_report()
    assert isinstance(report, Report)
    assert report.accept == core.limit - 1  # the window, but for the task still queued
    child = TaskRequest(1, 9, 5001, 1, "pkg", "fn", b"in", 0)
    actions = core.report_done(report, [(0, "")], [Accepted(child, "pkg.fn (job 1, task 9)")])
    assert actions == [Settled((1,), Fate.REPORTED)]
    key = core.issued
    assert core.stage(key) is Stage.QUEUED and core.in_flight == 2
    assert core.pending_acks == tuple(a for a in core.pending_acks if a.key != key)
    core.check_invariants()
    # It runs and is reported like any registered task; it is never acknowledged.
    while core.work_queued:
        run_all(core)
    report = core.next_report()
    assert isinstance(report, Report) and {o.key for o in report.outcomes} == {2, key}
    assert report.accept == core.limit
    core.report_done(report, [(0, ""), (0, "")])
    assert core.live() == {} and key not in {a.key for a in core.pending_acks}


def test_heartbeats_list_the_instances_held_until_their_report_is_answered() -> None:
    core = make_core(executors=2)
    assert core.held_instances() == (SESSION, ())
    registered_work(core, 2)  # instances 1001 and 1002
    assert core.held_instances() == (SESSION, (1001, 1002))
    run_all(core)
    report = core.next_report()
    assert isinstance(report, Report)
    assert core.held_instances() == (SESSION, (1001, 1002))  # the report may not arrive
    core.report_done(report, [(0, ""), (0, "")])
    assert core.held_instances() == (SESSION, ())


@pytest.mark.parametrize("why", ["stopping", "turned off", "inputs queued"])
def test_an_em_that_is_stopping_full_or_told_not_to_offers_nothing(why: str) -> None:
    core = make_core(executors=2, continue_tasks=why != "turned off", max_queued_bytes=2)
    registered_work(core, 1)
    run_all(core)
    if why == "stopping":
        core.stop_fetching()
    if why == "inputs queued":
        registered_work(core, 1)  # b"io": the queued tasks hold 2 bytes of inputs
    report = core.next_report()
    assert isinstance(report, Report) and report.accept == 0


def test_an_idle_em_takes_one_task_from_storage_beyond_its_window() -> None:
    core = make_core(executors=2)
    assert not core.can_take, "only alongside the scheduler poll"
    poll = core.start_poll()
    assert poll is not None and core.held == core.limit
    take = core.start_take()
    assert take == Take(EM, SESSION, 1)
    assert core.held == core.limit + 1 and not core.can_take
    core.check_invariants()
    task = TaskRequest(4, 0, 4001, 1, "pkg", "fn", b"in", 0)
    assert core.took(take, [Accepted(task, "pkg.fn (job 4, task 0)")]) == []
    key = core.issued
    assert core.stage(key) is Stage.QUEUED and core.in_flight == 1
    assert core.held_instances() == (SESSION, (4001,))
    assert not core.can_take, "busy: its next tasks come from the scheduler and its reports"
    core.check_invariants()
    # It runs and is reported like any registered task, and is never acknowledged; the report
    # offers the whole window (the poll's places count as free, as for continuation).
    run_all(core)
    report = core.next_report()
    assert isinstance(report, Report) and report.accept == core.limit
    assert not core.can_take, "not while a report is under way either"
    core.report_done(report, [(0, "")])
    assert core.pending_acks == () and core.live() == {}
    assert core.can_take, "idle again"
    # A take that failed frees its place; the next poll asks for the whole window again.
    take = core.start_take()
    assert take is not None
    core.take_failed(take)
    core.fetched([])
    again = core.start_poll()
    assert again is not None and again.max_items == core.limit
    core.check_invariants()


def test_the_taker_runs_what_an_idle_em_took_itself_and_nothing_of_a_busy_one() -> None:
    core = make_core(executors=2, take_tasks=True)
    core.start_poll()
    take = core.start_take()
    assert take is not None
    task = TaskRequest(4, 0, 77, 1, "pkg", "fn", b"t", 0)
    core.took(take, [Accepted(task, "pkg.fn (job 4, task 0)")])
    run = core.claim_taken()
    assert run is not None and [w.request.instance_id for w in run.work] == [77]
    assert not core.work_queued, "no runner is left anything to wake for"
    assert core.claim_taken() is None, "nothing more came"
    # Something runs already (the scheduler's poll brought it meanwhile): a runner's work.
    core.ran(run, [success()])
    report = core.next_report()
    assert isinstance(report, Report) and len(report.outcomes) == 1
    core.report_done(report, [(0, "")])
    # Idle again; the scheduler's poll brings two tasks and a runner starts one of them.
    core.fetched([])  # the poll that was waiting alongside the take
    registered_work(core, 2)
    core.runner_idle()
    core.runner_idle()
    running = core.take_batch()
    assert running is not None and len(running.work) == 1 and core.work_queued
    assert core.claim_taken() is None, "an executor is busy: the runners share the queue"
    core.check_invariants()


@pytest.mark.parametrize("why", ["busy", "reporting", "stopping", "turned off", "not registered"])
def test_an_em_that_is_busy_reporting_stopping_or_told_not_to_takes_nothing(why: str) -> None:
    if why == "not registered":
        core = ManagerCore(2)
    else:
        core = make_core(executors=2, take_tasks=why != "turned off")
    if why == "busy":
        registered_work(core, 1)
    elif why == "reporting":
        registered_work(core, 1)
        run_all(core)
        assert isinstance(core.next_report(), Report)
    core.start_poll()
    if why == "stopping":
        core.stop_fetching()
    assert not core.can_take and core.start_take() is None


@pytest.mark.parametrize(
    ("failure", "phase", "expected"),
    [
        (ReportFailure.CANCELLED, Phase.STOPPED, [Settled((1,), Fate.REPORT_DROPPED, "shutdown")]),
        (
            ReportFailure.STALE_SESSION,
            Phase.FETCHING,
            [Settled((1,), Fate.REPORT_DROPPED, "stale_session"), Refresh(wait=False)],
        ),
        (ReportFailure.REFUSED, Phase.FETCHING, [Settled((1,), Fate.REPORT_DROPPED, "rejected")]),
        (ReportFailure.REFUSED, Phase.STOPPED, [Settled((1,), Fate.REPORT_DROPPED, "shutdown")]),
        (ReportFailure.ERROR, Phase.FETCHING, [Settled((1,), Fate.REPORT_DROPPED, "error")]),
    ],
)
def test_a_report_that_did_not_go_through_is_dropped_with_its_reason(
    failure: ReportFailure, phase: Phase, expected: list[Action]
) -> None:
    core = make_core()
    registered_work(core, 1)
    run_all(core)
    report = core.next_report()
    assert isinstance(report, Report)
    if phase is Phase.STOPPED:
        core.wind_down()
    assert core.report_failed(report, failure) == expected
    assert core.in_flight == 0


# ---------------------------------------------------------------------------------------------
# Fatal pool failure
# ---------------------------------------------------------------------------------------------


def test_tasks_the_pool_could_not_run_are_abandoned_and_the_em_gives_up() -> None:
    core = make_core(executors=2)
    registered_work(core, 3)
    not_run = TaskResult(ResultKind.NOT_RUN, None, "not run: cannot respawn", 0.0)
    actions = run_all(core, [success(), not_run, not_run])
    assert actions == [
        Fatal("executor pool failure: not run: cannot respawn"),
        Settled(
            (2, 3),
            Fate.ABANDONED,
            "not_run",
            "not run: cannot respawn",
            ("pkg.fn (job 1, task 1)", "pkg.fn (job 1, task 2)"),
        ),
    ]
    assert core.fatal == "executor pool failure: not run: cannot respawn"
    assert core.phase is Phase.DRAINING and not core.can_poll
    report = core.next_report()
    assert isinstance(report, Report) and [o.key for o in report.outcomes] == [1]
    assert acked(core) == [100, 101, 102], "abandoned tasks stay acknowledged"


def test_a_pool_that_broke_after_running_the_batch_is_fatal_too_but_only_once() -> None:
    core = make_core(executors=2)
    registered_work(core, 2)
    core.runner_idle()
    core.runner_idle()
    first, second = core.take_batch(), core.take_batch()
    assert first is not None and second is not None
    assert core.ran(first, [success()], pool_failure="cannot respawn") == [
        Fatal("executor pool failure: cannot respawn")
    ]
    [abandoned] = settled(core.abandoned(second, "pool broken", pool_closed=False))
    assert abandoned.fate is Fate.ABANDONED
    assert core.fatal == "executor pool failure: cannot respawn"
    assert isinstance(core.next_report(), Report), "what ran is still reported"


@pytest.mark.parametrize("why", ["stopped", "closed"])
def test_a_closed_pool_while_stopping_is_not_fatal(why: str) -> None:
    core = make_core()
    registered_work(core, 1)
    core.runner_idle()
    run = core.take_batch()
    assert run is not None
    if why == "stopped":
        core.wind_down()
    actions = core.abandoned(run, "pool closed", pool_closed=why == "closed")
    assert [type(a) for a in actions] == [Settled]
    assert core.fatal is None


# ---------------------------------------------------------------------------------------------
# Drain on stop
# ---------------------------------------------------------------------------------------------


def test_a_stop_cuts_short_what_waits_for_registration_and_drains_the_rest() -> None:
    core = make_core(executors=2)
    fetch(core, [*assignments(1), *assignments(2, SESSION + 1, 200)])
    first = core.next_registration()
    assert first is not None and [i.key for i in first.items] == [1]
    core.registration_done(first, accept_all(first))
    core.drain(now=100.0, timeout=5.0)
    assert core.next_registration() is None
    assert {core.stage(2), core.stage(3)} == {Stage.RETURNING}
    assert core.next_hand_back() is None, "the final Shutdown hands them back"
    assert not core.can_poll
    assert not core.drained(now=104.9)
    assert core.drained(now=105.0)
    run_all(core)
    report = core.next_report()
    assert isinstance(report, Report)
    core.report_done(report, [(0, "")])
    assert core.drained(now=100.0)
    actions = core.final_shutdown()
    assert actions == [
        Shutdown(EM, (Ack(1, 100, SCHEDULER),), (2, 3)),
        Settled((2, 3), Fate.HANDED_BACK, "shutdown"),
    ]
    assert core.pending_acks == () and core.live() == {}


def test_a_registration_cut_short_is_handed_back_by_the_final_shutdown() -> None:
    core = make_core()
    fetch(core, assignments(1))
    register = core.next_registration()
    assert register is not None
    core.stop_fetching()
    assert core.registration_failed(register, RegistrationFailure.STOPPING) == []
    [shutdown, _] = core.final_shutdown()
    assert shutdown == Shutdown(EM, (), (1,))


def test_a_hand_back_answered_after_the_final_shutdown_settles_nothing_twice() -> None:
    core = make_core()
    fetch(core, assignments(1))
    register = core.next_registration()
    assert register is not None
    core.registration_failed(register, RegistrationFailure.REFUSED, "internal")
    hand_back = core.next_hand_back()
    assert hand_back is not None
    [shutdown, handed] = core.final_shutdown()  # the stop did not wait for the hand-back
    assert shutdown == Shutdown(EM, (), (1,)) and handed == Settled(
        (1,), Fate.HANDED_BACK, "shutdown"
    )
    assert core.hand_back_done(hand_back, HandBackResult.TAKEN) == []


def test_an_em_that_never_registered_has_nothing_to_say() -> None:
    assert ManagerCore(1).final_shutdown() == []


def test_runners_and_reporter_end_once_their_queues_are_empty() -> None:
    core = make_core()
    registered_work(core, 1)
    core.stop_workers()
    assert core.workers_stopped and core.work_queued
    run_all(core)
    core.runner_idle()
    assert core.take_batch() is None
    assert isinstance(core.next_report(), Report)
    assert core.next_report() is None


def test_an_event_for_an_assignment_in_another_stage_is_a_broken_invariant() -> None:
    core = make_core()
    fetch(core, assignments(1))
    register = core.next_registration()
    assert register is not None
    core.registration_done(register, accept_all(register))
    with pytest.raises(errors.InternalError, match="assignment 1 is queued, expected registering"):
        core.registration_done(register, accept_all(register))
    with pytest.raises(errors.InternalError, match="no poll in flight"):
        core.fetched([])


# ---------------------------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------------------------

EXECUTORS = 2
ITEM_ERRORS = [NOT_FOUND, FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT.value[0]]
# Mostly successes; a task that could not be run makes the EM give up, so it comes rarely.
RESULT_KINDS = [ResultKind.SUCCESS] * 12 + [
    ResultKind.TASK_ERROR,
    ResultKind.CRASH,
    ResultKind.TIMEOUT,
    ResultKind.NOT_RUN,
]
# Acknowledged for good: storage took responsibility (or rejected the assignment).
ACKED_FATES = {Fate.DROPPED, Fate.REPORTED, Fate.REPORT_DROPPED, Fate.ABANDONED}


def _has(machine: CoreMachine, stage: Stage) -> bool:
    return stage in machine.core.live().values()


class CoreMachine(RuleBasedStateMachine):
    """Random interleavings of everything the manager's threads and its peers do. Storage's
    session is modelled, so storage answers NOT_FOUND exactly for older sessions, like storage.
    Each rule is enabled only when it has something to do, so that runs get far."""

    def __init__(self) -> None:
        super().__init__()
        self.core = ManagerCore(
            EXECUTORS, prefetch=6, executor_batch=3, report_batch=4, max_queued_bytes=5
        )
        self.core.registered(1, 1)
        self.storage_session = 1
        self.next_em_id = 2
        self.next_assignment = 1
        self.session_of: dict[int, int] = {}
        self.fates: dict[int, Fate] = {}
        self.delivered: set[int] = set()  # keys whose ack the scheduler took
        # Keys of tasks storage registered in a report's reply: never acknowledged.
        self.continued: set[int] = set()
        self.bound = self.core.limit  # the limit in force when the window last grew
        self.poll: Poll | None = None
        self.take_call: Take | None = None  # a TakeReadyTasks in flight
        self.registrations: list[Register] = []
        self.runs: list[Run] = []
        self.reports: list[Report] = []
        self.hand_back_in_flight: HandBack | None = None
        self.idle = 0
        self.shut_down = False

    # -- bookkeeping of the model ------------------------------------------------------------

    def take(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Settled):
                for key in action.keys:
                    assert key not in self.fates, f"{key} settled twice"
                    self.fates[key] = action.fate
                    if action.reason == "stale_session":
                        # Only the work of a session that is over.
                        assert self.session_of[key] < self.storage_session
            elif isinstance(action, Fatal):
                assert self.core.fatal == action.reason

    def acks_taken(self, acks: Iterable[Ack]) -> None:
        for ack in acks:
            assert self.fates.get(ack.key) is not Fate.HANDED_BACK
            self.delivered.add(ack.key)

    def pick(self, data: st.DataObject, items: list[T]) -> T:
        return items.pop(data.draw(st.integers(0, len(items) - 1), label="which"))

    # -- the scheduler -----------------------------------------------------------------------

    @precondition(lambda self: self.poll is None and self.core.can_poll)
    @rule()
    def start_poll(self) -> None:
        taking = 0 if self.take_call is None else self.take_call.max_items
        free = self.core.limit - self.core.held + taking
        poll = self.core.start_poll()
        assert poll is not None
        assert poll.max_items == free > 0
        assert poll.em_id == self.core.em_id
        assert set(poll.acks) == set(self.core.pending_acks)
        assert self.core.held == self.core.limit + taking, "a take's place is beyond the limit"
        self.bound = self.core.limit
        self.poll = poll

    @precondition(lambda self: self.poll is not None)
    @rule(data=st.data())
    def poll_answered(self, data: st.DataObject) -> None:
        poll, self.poll = self.poll, None
        assert poll is not None
        if data.draw(st.integers(0, 5), label="fails") == 0:
            pending = self.core.pending_acks
            self.core.poll_failed()
            assert self.core.pending_acks == pending, "a failed poll keeps its acks"
            return
        count = data.draw(st.integers(0, poll.max_items), label="count")
        batch = []
        for _ in range(count):
            session = data.draw(
                st.integers(max(1, self.core.session_id - 1), self.storage_session), label="session"
            )
            task = data.draw(st.sampled_from([0, 1, 2, 3, 4, None]), label="task")
            batch.append(Assigned(self.next_assignment, SCHEDULER, session, 1, task))
            self.next_assignment += 1
        first = self.core.issued + 1
        current = self.core.session_id
        self.acks_taken(poll.acks)
        actions = self.core.fetched(batch)
        for key, a in enumerate(batch, start=first):
            self.session_of[key] = a.session_id
        self.take(actions)
        stale = {k for a in settled(actions) if a.reason == "stale_session" for k in a.keys}
        assert stale == {k for k, a in enumerate(batch, first) if a.session_id < current}
        newer = any(a.session_id > current for a in batch if a.task_id is not None)
        assert (Refresh(wait=True) in actions) == newer

    # -- storage, asked directly by an idle EM ------------------------------------------------

    @precondition(lambda self: self.take_call is None and self.core.can_take)
    @rule()
    def start_take(self) -> None:
        assert not self.core.live(), "idle"
        held = self.core.held
        take = self.core.start_take()
        assert take is not None and take.max_items == 1
        assert take.session_id == self.core.session_id and take.em_id == self.core.em_id
        assert self.core.held == held + 1
        assert not self.core.can_take, "one at a time"
        self.take_call = take

    @precondition(lambda self: self.take_call is not None)
    @rule(data=st.data())
    def take_answered(self, data: st.DataObject) -> None:
        take, self.take_call = self.take_call, None
        assert take is not None
        held = self.core.held
        if take.session_id < self.storage_session or data.draw(st.booleans(), label="fails"):
            self.core.take_failed(take)  # NOT_FOUND for an older session, or unreachable
            assert self.core.held == held - 1
            return
        count = data.draw(st.integers(0, take.max_items), label="taken")
        first = self.core.issued + 1
        tasks = [
            Accepted(TaskRequest(1, 7, 9000 + first + i, 1, "pkg", "fn", b"t", 0), "pkg.fn (taken)")
            for i in range(count)
        ]
        self.take(self.core.took(take, tasks))
        assert self.core.held == held - 1 + count
        for key in range(first, first + count):
            assert self.core.stage(key) is Stage.QUEUED
            self.session_of[key] = take.session_id
            self.continued.add(key)
        if data.draw(st.booleans(), label="the taker runs it"):
            live = self.core.live()
            idle = bool(live) and all(stage is Stage.QUEUED for stage in live.values())
            run = self.core.claim_taken()
            assert (run is not None) == idle, "only what an idle EM took, all executors free"
            if run is not None:
                assert {w.key for w in run.work} >= set(range(first, first + count))
                assert all(self.core.stage(w.key) is Stage.RUNNING for w in run.work)
                self.runs.append(run)

    @precondition(lambda self: self.hand_back_in_flight is None and _has(self, Stage.RETURNING))
    @rule()
    def hand_back(self) -> None:
        hand_back = self.core.next_hand_back()
        if hand_back is None:
            return
        live = self.core.live()
        assert self.poll is None and self.core.phase is Phase.FETCHING
        assert not any(s in (Stage.FETCHED, Stage.REGISTERING) for s in live.values())
        assert set(hand_back.keys) == {k for k, s in live.items() if s is Stage.RETURNING}
        assert set(hand_back.acks) == set(self.core.pending_acks)
        self.hand_back_in_flight = hand_back

    @precondition(lambda self: self.hand_back_in_flight is not None)
    @rule(result=st.sampled_from(HandBackResult))
    def hand_back_answered(self, result: HandBackResult) -> None:
        hand_back, self.hand_back_in_flight = self.hand_back_in_flight, None
        assert hand_back is not None
        if result is HandBackResult.TAKEN:
            self.acks_taken(hand_back.acks)
        self.take(self.core.hand_back_done(hand_back, result))

    # -- storage -----------------------------------------------------------------------------

    @rule(event=st.sampled_from(["heartbeat", "heartbeat", "restart", "register again"]))
    def storage(self, event: str) -> None:
        if event == "restart":
            self.storage_session += 1
        elif event == "heartbeat":
            session, before = self.core.session_id, dict(self.fates)
            actions = self.core.session_seen(self.storage_session)
            assert (actions != []) == (self.storage_session > session)
            self.take(actions)
            assert self.fates == before, "learning of a new session alone drops nothing"
        else:
            old = self.core.em_id
            actions = self.core.registered(self.next_em_id, self.storage_session)
            self.next_em_id += 1
            assert ShutdownOldId(old, self.core.pending_acks) in actions
            self.take(actions)

    @precondition(lambda self: _has(self, Stage.FETCHED))
    @rule()
    def next_registration(self) -> None:
        waiting = {k for k, s in self.core.live().items() if s is Stage.FETCHED}
        held_back = not self.core.can_register
        register = self.core.next_registration()
        if register is None and held_back:
            # Queued tasks hold enough input: nothing moves until a runner takes some.
            assert self.core.phase is Phase.FETCHING and self.core.work_queued
            assert all(self.core.stage(k) is Stage.FETCHED for k in waiting)
            return
        if register is None:
            assert self.core.phase is not Phase.FETCHING
            assert all(self.core.stage(k) is Stage.RETURNING for k in waiting)
            return
        assert register.em_id == self.core.em_id
        assert {self.session_of[i.key] for i in register.items} == {register.session_id}
        assert {i.key for i in register.items} <= waiting
        self.registrations.append(register)

    @precondition(lambda self: self.registrations)
    @rule(data=st.data())
    def registration_answered(self, data: st.DataObject) -> None:
        register = self.pick(data, self.registrations)
        if register.session_id < self.storage_session:
            failure: RegistrationFailure | None = RegistrationFailure.STALE_SESSION
        else:
            failure = data.draw(st.sampled_from([None] * 6 + list(RegistrationFailure)))
            if failure is RegistrationFailure.STALE_SESSION:
                failure = None
        if failure is not None:
            self.take(self.core.registration_failed(register, failure, "internal"))
            return
        results: list[Accepted | ItemError] = []
        for item in register.items:
            choice = data.draw(st.sampled_from(["ok"] * 4 + ["full", "error"]))
            if choice == "ok":
                results.append(accepted(item))
            elif choice == "full":
                results.append(ItemError(UNAVAILABLE, "no room"))
            else:
                results.append(ItemError(data.draw(st.sampled_from(ITEM_ERRORS)), "no"))
        self.take(self.core.registration_done(register, results))

    @precondition(lambda self: self.core.reports_waiting)
    @rule()
    def next_report(self) -> None:
        item = self.core.next_report()
        if isinstance(item, Settled):
            assert all(self.session_of[k] < self.core.session_id for k in item.keys)
            self.take([item])
        else:
            assert isinstance(item, Report)
            assert item.session_id >= self.core.session_id
            assert 1 <= len(item.outcomes) <= 4
            self.reports.append(item)

    @precondition(lambda self: self.reports)
    @rule(data=st.data())
    def report_answered(self, data: st.DataObject) -> None:
        report = self.pick(data, self.reports)
        if report.session_id < self.storage_session:
            self.take(self.core.report_failed(report, ReportFailure.STALE_SESSION))
            return
        failure = data.draw(st.sampled_from([None] * 6 + list(ReportFailure)))
        if failure is ReportFailure.STALE_SESSION:
            failure = None
        if failure is not None:
            self.take(self.core.report_failed(report, failure))
            return
        codes = data.draw(
            st.lists(
                st.sampled_from([0, 0, 0, FAILED_PRECONDITION]),
                min_size=len(report.outcomes),
                max_size=len(report.outcomes),
            )
        )
        assert 0 <= report.accept <= self.core.limit
        count = data.draw(st.integers(0, report.accept), label="continued")
        first = self.core.issued + 1
        continued = [
            Accepted(
                TaskRequest(1, 5 + i, 5000 + first + i, 1, "pkg", "fn", b"i", 0), "pkg.fn (cont)"
            )
            for i in range(count)
        ]
        actions = self.core.report_done(report, [(c, "") for c in codes], continued)
        for key in range(first, first + count):
            assert self.core.stage(key) is Stage.QUEUED
            self.session_of[key] = report.session_id
            self.continued.add(key)
        self.take(actions)
        for o in report.outcomes:
            assert self.session_of[o.key] == self.storage_session or self.fates[o.key] in (
                Fate.REPORTED,
                Fate.REPORT_DROPPED,
            )

    # -- the executor pool -------------------------------------------------------------------

    @precondition(lambda self: self.idle + len(self.runs) < EXECUTORS)
    @rule()
    def runner_waits(self) -> None:
        self.core.runner_idle()
        self.idle += 1

    @precondition(lambda self: self.idle > 0 and self.core.work_queued)
    @rule()
    def runner_takes(self) -> None:
        queued = sum(1 for s in self.core.live().values() if s is Stage.QUEUED)
        run = self.core.take_batch()
        self.idle -= 1
        assert run is not None
        share = -(-queued // (self.idle + 1))
        assert 1 <= len(run.work) <= min(3, share, self.core.sizer.ahead)
        assert all(self.core.stage(w.key) is Stage.RUNNING for w in run.work)
        self.runs.append(run)

    @precondition(lambda self: self.runs)
    @rule(data=st.data())
    def run_finishes(self, data: st.DataObject) -> None:
        run = self.pick(data, self.runs)
        if data.draw(st.integers(0, 19), label="pool closed") == 0:
            self.take(self.core.abandoned(run, "pool closed", pool_closed=True))
            return
        results = [
            TaskResult(
                data.draw(st.sampled_from(RESULT_KINDS)),
                b"x" * data.draw(st.integers(0, 3)),
                "boom",
                data.draw(st.sampled_from([0.0, TINY_S, 0.01, 0.2])),
            )
            for _ in run.work
        ]
        failure = data.draw(st.sampled_from([None] * 19 + ["cannot respawn"]))
        self.take(self.core.ran(run, results, pool_failure=failure))
        assert all(self.core.stage(w.key) is not Stage.RUNNING for w in run.work)

    # -- stopping ----------------------------------------------------------------------------

    @precondition(lambda self: self.core.phase is Phase.FETCHING and self.core.issued >= 12)
    @rule()
    def stop_fetching(self) -> None:
        self.core.stop_fetching()
        assert not self.core.can_poll

    @precondition(lambda self: self.core.phase is not Phase.FETCHING and not self.shut_down)
    @rule()
    def final_shutdown(self) -> None:
        live = self.core.live()
        unacked = {k for k, s in live.items() if s in (Stage.RETURNING, Stage.FETCHED)}
        actions = self.core.final_shutdown()
        self.shut_down = True
        [shutdown] = [a for a in actions if isinstance(a, Shutdown)]
        assert set(shutdown.keys) == unacked
        self.acks_taken(shutdown.acks)
        self.take(actions)
        assert self.core.pending_acks == ()
        # Every assignment storage took responsibility for was acknowledged.
        for key, fate in self.fates.items():
            if fate in ACKED_FATES and key not in self.continued:
                assert key in self.delivered, f"the ack of {key} was lost"

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def bookkeeping_is_consistent(self) -> None:
        self.core.check_invariants()

    @invariant()
    def every_assignment_is_in_exactly_one_place(self) -> None:
        live = self.core.live()
        assert live.keys().isdisjoint(self.fates.keys())
        assert live.keys() | self.fates.keys() == set(range(1, self.core.issued + 1))

    @invariant()
    def heartbeats_list_exactly_the_registered_work_of_the_session(self) -> None:
        session, held = self.core.held_instances()
        assert session == self.core.session_id
        live = self.core.live()
        registered = {k for k, stage in live.items() if stage in REGISTERED_STAGES}
        assert len(held) == len(set(held))
        assert len(held) == sum(1 for k in registered if self.session_of[k] == session)

    @invariant()
    def a_fatal_error_stops_fetching(self) -> None:
        assert self.core.fatal is None or self.core.phase is not Phase.FETCHING

    @invariant()
    def the_window_never_exceeds_its_limit(self) -> None:
        # Beyond it only by what storage registered in reports' replies (each report offers
        # at most the window's places no work holds).
        live = self.core.live()
        extra = sum(1 for k in self.continued if live.get(k) in (Stage.QUEUED, Stage.RUNNING))
        taking = 0 if self.take_call is None else self.take_call.max_items
        assert 0 <= self.core.held <= self.bound + extra + taking
        assert self.core.in_flight >= 0

    @invariant()
    def no_ack_is_dropped_and_none_is_premature(self) -> None:
        pending = {a.key for a in self.core.pending_acks}
        for key, stage in self.core.live().items():
            if key in self.continued:
                assert key not in pending and key not in self.delivered
            elif stage in REGISTERED_STAGES:
                assert key in pending or key in self.delivered
            else:
                assert key not in pending and key not in self.delivered
        for key, fate in self.fates.items():
            if key in self.continued:
                assert key not in pending and key not in self.delivered
            elif fate in ACKED_FATES:
                assert key in pending or key in self.delivered, f"the ack of {key} was lost"
            else:
                assert key not in pending and key not in self.delivered


CoreMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=40, deadline=None, database=None
)
test_core_state_machine = CoreMachine.TestCase
