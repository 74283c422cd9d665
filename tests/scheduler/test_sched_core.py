"""The pure placement core: ingest rules, sessions, round-robin order and its fairness."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbweaver import errors
from orbweaver.scheduler.core import (
    POLICY_GROUP_ROUND_ROBIN,
    POLICY_JOB_ROUND_ROBIN,
    Assignment,
    CoreConfig,
    InvalidSessionId,
    Lane,
    ReadyEntry,
    SchedulerCore,
)

pytestmark = pytest.mark.timeout(120)

COMMIT = -1  # any distinct ints work: the core never interprets task ids
CLEANUP = -2
SESSION = 1
BOTH_POLICIES = pytest.mark.parametrize(
    "policy", [POLICY_JOB_ROUND_ROBIN, POLICY_GROUP_ROUND_ROBIN]
)


def make_core(
    capacity: int = 16, policy: str = POLICY_JOB_ROUND_ROBIN, **kwargs: object
) -> SchedulerCore:
    config = CoreConfig(policy=policy, active_job_queue_capacity=capacity, **kwargs)  # type: ignore[arg-type]
    core = SchedulerCore(config)
    core.observe_session(SESSION)
    return core


def ready_batch(
    jobs: list[tuple[int, int]], tasks_per_job: int, dup_every: int = 0
) -> list[ReadyEntry]:
    """Task r of every job, then task r+1 ...; every `dup_every`-th entry duplicated."""
    entries: list[ReadyEntry] = []
    emitted = 0
    for index in range(tasks_per_job):
        for job, rg in jobs:
            entry = ReadyEntry(rg, job, index)
            entries.append(entry)
            emitted += 1
            if dup_every and emitted % dup_every == 0:
                entries.append(entry)
    return entries


def drain(core: SchedulerCore, free: int = 10_000) -> list[Assignment]:
    out: list[Assignment] = []
    while True:
        got = core.decide(free)
        core.check_invariants()
        if not got:
            return out
        out.extend(got)


def triples(assignments: list[Assignment]) -> list[tuple[int, int, int]]:
    return [(a.job_id, a.resource_group_id, a.task_id) for a in assignments]


def strict_rotation(jobs: list[tuple[int, int]], rounds: int) -> list[tuple[int, int, int]]:
    return [(job, rg, r) for r in range(rounds) for job, rg in jobs]


# ---------------------------------------------------------------------------------------------
# Reference round-robin scenarios
# ---------------------------------------------------------------------------------------------


@BOTH_POLICIES
def test_single_capacity_serves_jobs_serially_in_arrival_order(policy: str) -> None:
    core = make_core(capacity=1, policy=policy)
    jobs = [(100 + i, 1) for i in range(4)]
    core.ingest(SESSION, ready_batch(jobs, 5), now=0)
    got = triples(drain(core, free=3))
    assert got == [(job, rg, i) for job, rg in jobs for i in range(5)]


@BOTH_POLICIES
def test_strict_rotation_across_ten_jobs_with_duplicates(policy: str) -> None:
    core = make_core(capacity=16, policy=policy)
    # Distinct resource groups: the group policy then rotates exactly like the job policy.
    jobs = [(100 + i, 200 + i) for i in range(10)]
    result = core.ingest(SESSION, ready_batch(jobs, 8, dup_every=3), now=0)
    assert result.accepted == 80
    assert result.ignored == 80 // 3
    core.check_invariants()
    got = drain(core, free=7)
    assert triples(got) == strict_rotation(jobs, 8)
    assert all(a.session_id == SESSION and a.lane == Lane.TASK for a in got)
    ids = [a.assignment_id for a in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_duplicates_in_later_batches_are_ignored_while_buffered() -> None:
    core = make_core()
    jobs = [(1, 1), (2, 1)]
    core.ingest(SESSION, ready_batch(jobs, 3), now=0)
    again = core.ingest(SESSION, ready_batch(jobs, 3), now=0)
    assert again.accepted == 0 and again.ignored == 6
    assert len(drain(core)) == 6


@BOTH_POLICIES
def test_pending_job_promotion_keeps_round_robin_property(policy: str) -> None:
    capacity, tasks = 4, 5
    core = make_core(capacity=capacity, policy=policy)
    jobs = [(100 + i, 7) for i in range(3 * capacity)]
    core.ingest(SESSION, ready_batch(jobs, tasks, dup_every=4), now=0)
    assert core.active_jobs == capacity and core.pending_jobs == 2 * capacity
    got = drain(core, free=3)
    assert len(got) == len(jobs) * tasks
    # With equal task counts no job leaves mid-pass, so every aligned pass serves each of the
    # `capacity` active jobs exactly once, generation after generation.
    for start in range(0, len(got), capacity):
        window = {a.job_id for a in got[start : start + capacity]}
        assert len(window) == capacity, got[start : start + capacity]
    # Generations are served in arrival order, each job's tasks FIFO with its resource group.
    generations = [
        {a.job_id for a in got[g * capacity * tasks : (g + 1) * capacity * tasks]} for g in range(3)
    ]
    assert generations == [
        {job for job, _ in jobs[g * capacity : (g + 1) * capacity]} for g in range(3)
    ]
    per_job: dict[int, list[int]] = {}
    for a in got:
        assert a.resource_group_id == 7
        per_job.setdefault(a.job_id, []).append(a.task_id)
    assert per_job == {job: list(range(tasks)) for job, _ in jobs}


def test_jobs_of_unequal_length_all_complete_fifo() -> None:
    core = make_core(capacity=4)
    lengths = {100 + i: 2 + (i % 5) for i in range(10)}
    entries = [ReadyEntry(7, job, i) for i in range(6) for job, n in lengths.items() if i < n]
    core.ingest(SESSION, entries, now=0)
    got = drain(core, free=5)
    per_job: dict[int, list[int]] = {}
    for a in got:
        per_job.setdefault(a.job_id, []).append(a.task_id)
    assert per_job == {job: list(range(n)) for job, n in lengths.items()}
    # A job is never served twice in a row while other jobs are active.
    for i in range(1, len(got)):
        remaining = {a.job_id for a in got[i:]}
        assert got[i - 1].job_id != got[i].job_id or len(remaining) == 1


def test_pending_jobs_are_served_in_arrival_order() -> None:
    core = make_core(capacity=2)
    jobs = [(100 + i, 1) for i in range(6)]
    core.ingest(SESSION, ready_batch(jobs, 1), now=0)
    assert [a.job_id for a in drain(core)] == [job for job, _ in jobs]


def test_commit_lane_drains_up_to_capacity_per_pass_cleanup_one_per_pass() -> None:
    core = make_core(capacity=2)
    commits = [ReadyEntry(1, 10 + i, COMMIT) for i in range(5)]
    cleanups = [ReadyEntry(1, 20 + i, CLEANUP) for i in range(3)]
    jobs = [(30, 1), (31, 2)]
    core.ingest(SESSION, ready_batch(jobs, 3), commits, cleanups, now=0)
    got = [(a.lane, a.job_id) for a in drain(core)]
    c, k, t = Lane.COMMIT, Lane.CLEANUP, Lane.TASK
    assert got == [
        (c, 10), (c, 11), (k, 20), (t, 30), (t, 31),
        (c, 12), (c, 13), (k, 21), (t, 30), (t, 31),
        (c, 14), (k, 22), (t, 30), (t, 31),
    ]  # fmt: skip


def test_commit_before_cleanup_before_regular_even_with_one_free_slot() -> None:
    core = make_core(capacity=4)
    core.ingest(
        SESSION,
        [ReadyEntry(1, 1, 0)],
        [ReadyEntry(1, 2, COMMIT)],
        [ReadyEntry(1, 3, CLEANUP)],
        now=0,
    )
    assert [a.lane for a in drain(core, free=1)] == [Lane.COMMIT, Lane.CLEANUP, Lane.TASK]


@BOTH_POLICIES
def test_finalizing_batch_retires_active_job_and_discards_pending_job(policy: str) -> None:
    core = make_core(capacity=1, policy=policy)
    a, b, c = (1, 9), (2, 9), (3, 9)
    core.ingest(SESSION, ready_batch([a, b, c], 3), now=0)
    assert core.active_jobs == 1 and core.pending_jobs == 2
    result = core.ingest(
        SESSION,
        ready_batch([a, b], 2),  # late regular entries of finalizing jobs: ignored
        [ReadyEntry(9, 1, COMMIT)],
        [ReadyEntry(9, 2, CLEANUP)],
        now=0,
    )
    assert result.accepted == 2 and result.ignored == 4
    core.check_invariants()
    assert core.buffered_tasks == 3  # only job 3's tasks survive
    got = drain(core)
    assert [(x.lane, x.job_id, x.task_id) for x in got] == [
        (Lane.COMMIT, 1, COMMIT),
        (Lane.CLEANUP, 2, CLEANUP),
        (Lane.TASK, 3, 0),
        (Lane.TASK, 3, 1),
        (Lane.TASK, 3, 2),
    ]


@BOTH_POLICIES
def test_finalizing_tasks_dispatched_once_and_later_regular_tasks_ignored(policy: str) -> None:
    core = make_core(capacity=4, policy=policy)
    finalizing = [(1, 5), (2, 5)]
    others = [(3, 6), (4, 7)]
    core.ingest(SESSION, ready_batch(finalizing + others, 2), now=0)
    core.ingest(
        SESSION,
        (),
        [ReadyEntry(5, 1, COMMIT), ReadyEntry(5, 1, COMMIT)],
        [ReadyEntry(5, 2, CLEANUP), ReadyEntry(5, 2, CLEANUP)],
        now=1,
    )
    core.ingest(SESSION, ready_batch(finalizing, 4), now=2)  # ignored: finalizing
    core.ingest(SESSION, [ReadyEntry(6, 3, 2), ReadyEntry(7, 4, 2)], now=2)
    got = drain(core)
    final = Counter((a.job_id, a.lane) for a in got if a.lane != Lane.TASK)
    assert final == {(1, Lane.COMMIT): 1, (2, Lane.CLEANUP): 1}
    regular = [a for a in got if a.lane == Lane.TASK]
    assert {a.job_id for a in regular} == {3, 4}
    for job in (3, 4):
        assert [a.task_id for a in regular if a.job_id == job] == [0, 1, 2]
    assert core.is_finalizing(1) and core.is_finalizing(2)


def test_finalizing_marks_expire_with_the_supplied_clock() -> None:
    core = make_core(finalizing_job_expiration_s=10.0)
    core.ingest(SESSION, (), [ReadyEntry(1, 1, COMMIT)], now=100.0)
    core.ingest(SESSION, (), (), [ReadyEntry(1, 2, CLEANUP)], now=105.0)
    drain(core)
    assert core.expire_finalizing(109.9) == 0
    core.ingest(SESSION, [ReadyEntry(1, 1, 0)], now=109.9)
    assert core.buffered_tasks == 0
    assert core.expire_finalizing(110.0) == 1
    assert not core.is_finalizing(1) and core.is_finalizing(2)
    core.ingest(SESSION, [ReadyEntry(1, 1, 0)], now=110.0)
    assert core.buffered_tasks == 1
    assert core.expire_finalizing(1000.0) == 1 and core.finalizing_jobs == 0


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------


@BOTH_POLICIES
def test_session_bump_clears_everything_and_new_assignments_carry_new_session(
    policy: str,
) -> None:
    core = make_core(capacity=2, policy=policy)
    jobs = [(1, 1), (2, 2), (3, 3)]
    core.ingest(SESSION, ready_batch(jobs, 3), [ReadyEntry(4, 4, COMMIT)], now=0)
    before = core.decide(2)
    assert core.buffered > 0 and core.finalizing_jobs == 1
    result = core.ingest(SESSION + 1, [ReadyEntry(1, 1, 0)], now=1)
    assert result.session_bumped and core.session_id == SESSION + 1
    core.check_invariants()
    assert core.buffered == 1 and core.finalizing_jobs == 0 and core.pending_jobs == 0
    got = drain(core)
    assert triples(got) == [(1, 1, 0)]
    assert got[0].session_id == SESSION + 1
    assert got[0].assignment_id > max(a.assignment_id for a in before)
    # The same job's tasks are accepted again under the new session.
    core.ingest(SESSION + 1, [ReadyEntry(4, 4, 0)], now=2)
    assert core.buffered_tasks == 1


def test_same_session_is_not_a_bump_and_older_session_is_rejected() -> None:
    core = make_core()
    assert not core.ingest(SESSION, [ReadyEntry(1, 1, 0)], now=0).session_bumped
    with pytest.raises(InvalidSessionId) as info:
        core.ingest(SESSION - 1, [ReadyEntry(1, 1, 1)], now=0)
    assert isinstance(info.value, errors.InvalidArgument)
    assert core.buffered_tasks == 1


# ---------------------------------------------------------------------------------------------
# Rescheduling
# ---------------------------------------------------------------------------------------------


def test_rescheduled_assignment_redispatched_with_current_session_and_new_id() -> None:
    core = make_core()
    core.ingest(SESSION, [ReadyEntry(1, 1, 0)], [ReadyEntry(1, 2, COMMIT)], now=0)
    first = drain(core)
    assert len(first) == 2
    assert core.reschedule(first, now=1) == 2
    again = drain(core)
    assert sorted(triples(again)) == sorted(triples(first))
    assert {a.lane for a in again} == {Lane.TASK, Lane.COMMIT}
    assert all(a.session_id == SESSION for a in again)
    assert not {a.assignment_id for a in again} & {a.assignment_id for a in first}


def test_stale_session_reschedule_is_dropped() -> None:
    core = make_core()
    core.ingest(SESSION, [ReadyEntry(1, 1, 0)], now=0)
    old = drain(core)
    core.ingest(SESSION + 1, (), now=1)
    assert core.reschedule(old, now=1) == 0
    assert drain(core) == []


def test_reschedule_deduplicates_against_an_inbound_copy() -> None:
    core = make_core()
    core.ingest(SESSION, [ReadyEntry(1, 1, 0), ReadyEntry(1, 1, 1)], now=0)
    first = core.decide(1)
    assert triples(first) == [(1, 1, 0)]
    # Storage re-offered the same task (e.g. a resend) before the reschedule arrived.
    core.ingest(SESSION, [ReadyEntry(1, 1, 0)], now=1)
    assert core.reschedule(first, now=1) == 0
    got = triples(drain(core))
    assert sorted(got) == [(1, 1, 0), (1, 1, 1)]


def test_reschedule_of_regular_task_of_finalizing_job_is_dropped() -> None:
    core = make_core()
    core.ingest(SESSION, [ReadyEntry(1, 1, 0)], now=0)
    first = drain(core)
    core.ingest(SESSION, (), [ReadyEntry(1, 1, COMMIT)], now=1)
    assert core.reschedule(first, now=1) == 0
    assert [a.lane for a in drain(core)] == [Lane.COMMIT]


@BOTH_POLICIES
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), jobs=st.integers(1, 12), tasks=st.integers(1, 8))
def test_randomly_rescheduled_assignments_are_redispatched_expected_times(
    policy: str, seed: int, jobs: int, tasks: int
) -> None:
    rng = random.Random(seed)
    core = make_core(capacity=rng.randint(1, 4), policy=policy)
    job_list = [(100 + j, rng.randint(1, 3)) for j in range(jobs)]
    core.ingest(SESSION, ready_batch(job_list, tasks), now=0)
    dispatched: Counter[tuple[int, int]] = Counter()
    rescheduled: Counter[tuple[int, int]] = Counter()
    seen_ids: set[int] = set()
    held: list[Assignment] = []
    budget = jobs * tasks  # total reschedules allowed
    while True:
        got = core.decide(rng.randint(1, 6))
        core.check_invariants()
        for a in got:
            assert a.assignment_id not in seen_ids
            seen_ids.add(a.assignment_id)
            dispatched[(a.job_id, a.task_id)] += 1
        held.extend(got)
        rng.shuffle(held)
        lost = [a for a in held if budget > 0 and rng.random() < 0.3][:budget]
        budget -= len(lost)
        held = [a for a in held if a not in lost]
        for a in lost:
            rescheduled[(a.job_id, a.task_id)] += 1
        assert core.reschedule(lost, now=0) == len(lost)
        if not got and not lost:
            break
    assert core.buffered == 0
    for job, _ in job_list:
        for index in range(tasks):
            assert dispatched[(job, index)] == 1 + rescheduled[(job, index)]


# ---------------------------------------------------------------------------------------------
# Resource-group fairness (the default policy)
# ---------------------------------------------------------------------------------------------


def test_default_policy_is_group_round_robin() -> None:
    assert CoreConfig().policy == POLICY_GROUP_ROUND_ROBIN


def test_small_group_gets_every_other_assignment_until_it_runs_out() -> None:
    core = SchedulerCore()  # defaults: group round robin, 16 active jobs per group
    core.observe_session(SESSION)
    group_a = [(1000 + j, 1) for j in range(20)]
    group_b = [(2000, 2)]
    # Group A's jobs arrive first and in bulk.
    core.ingest(SESSION, ready_batch(group_a, 10), now=0)
    core.ingest(SESSION, ready_batch(group_b, 10), now=0)
    got = drain(core, free=3)
    assert len(got) == 210
    groups = [a.resource_group_id for a in got]
    assert groups[:20] == [1, 2] * 10
    assert groups[20:] == [1] * 190
    assert [a.task_id for a in got if a.resource_group_id == 2] == list(range(10))
    # Within group A, its jobs still rotate: every job of A appears in A's first 16 assignments.
    first_a = [a.job_id for a in got if a.resource_group_id == 1][:16]
    assert len(set(first_a)) == 16


def test_job_policy_lets_the_big_group_starve_the_small_one() -> None:
    core = make_core(capacity=16, policy=POLICY_JOB_ROUND_ROBIN)
    core.ingest(SESSION, ready_batch([(1000 + j, 1) for j in range(20)], 10), now=0)
    core.ingest(SESSION, ready_batch([(2000, 2)], 10), now=0)
    groups = [a.resource_group_id for a in drain(core)]
    assert 2 not in groups[:16]


def test_group_policy_rotates_groups_then_jobs_within_a_group() -> None:
    core = make_core(capacity=2, policy=POLICY_GROUP_ROUND_ROBIN)
    core.ingest(SESSION, ready_batch([(1, 10), (2, 10), (3, 10)], 2), now=0)
    core.ingest(SESSION, ready_batch([(4, 20)], 3), now=0)
    got = [(a.resource_group_id, a.job_id, a.task_id) for a in drain(core)]
    assert got == [
        (10, 1, 0), (20, 4, 0),
        (10, 2, 0), (20, 4, 1),
        (10, 1, 1), (20, 4, 2),
        (10, 2, 1),
        (10, 3, 0),  # job 3 was pending in group 10 until a slot freed
        (10, 3, 1),
    ]  # fmt: skip


def test_group_policy_per_group_pending_promotion_in_arrival_order() -> None:
    core = make_core(capacity=1, policy=POLICY_GROUP_ROUND_ROBIN)
    core.ingest(SESSION, ready_batch([(1, 10), (2, 10), (3, 10)], 2), now=0)
    assert core.active_jobs == 1 and core.pending_jobs == 2
    assert [a.job_id for a in drain(core)] == [1, 1, 2, 2, 3, 3]


# ---------------------------------------------------------------------------------------------
# Budgets, config, random operations
# ---------------------------------------------------------------------------------------------


def test_poll_budget_reflects_buffer_headroom() -> None:
    core = make_core(
        ready_task_capacity=10, commit_ready_task_capacity=3, cleanup_ready_task_capacity=2
    )
    budget = core.poll_budget()
    assert (budget.tasks, budget.commit, budget.cleanup) == (10, 3, 2)
    core.ingest(
        SESSION,
        [ReadyEntry(1, 1, i) for i in range(12)],
        [ReadyEntry(1, 2, COMMIT)],
        [ReadyEntry(1, 3, CLEANUP), ReadyEntry(1, 4, CLEANUP)],
        now=0,
    )
    budget = core.poll_budget()
    assert (budget.tasks, budget.commit, budget.cleanup) == (0, 2, 0)
    assert core.decide(0) == []
    drain(core)
    assert bool(core.poll_budget())


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(errors.InvalidArgument, match="policy"):
        CoreConfig(policy="fifo")
    with pytest.raises(errors.InvalidArgument, match="active_job_queue_capacity"):
        CoreConfig(active_job_queue_capacity=0)


@BOTH_POLICIES
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_random_operations_keep_invariants_and_lose_nothing(
    policy: str, data: st.DataObject
) -> None:
    core = make_core(capacity=data.draw(st.integers(1, 3)), policy=policy)
    expected: set[tuple[int, int]] = set()  # regular entries that must come out
    finalizing: set[int] = set()
    delivered: list[Assignment] = []
    entry = st.builds(ReadyEntry, st.integers(1, 3), st.integers(1, 8), st.integers(0, 5))
    for _ in range(data.draw(st.integers(1, 25))):
        op = data.draw(st.sampled_from(["ingest", "final", "decide"]))
        if op == "ingest":
            # A job keeps one resource group.
            batch = [
                ReadyEntry(e.job_id % 3 + 1, e.job_id, e.task_id)
                for e in data.draw(st.lists(entry, max_size=10))
            ]
            core.ingest(SESSION, batch, now=0)
            expected |= {(e.job_id, e.task_id) for e in batch if e.job_id not in finalizing}
        elif op == "final":
            job = data.draw(st.integers(1, 8))
            core.ingest(SESSION, (), [ReadyEntry(job % 3 + 1, job, COMMIT)], now=0)
            finalizing.add(job)
            expected = {k for k in expected if k[0] != job}
            expected.add((job, COMMIT))
        else:
            got = core.decide(data.draw(st.integers(0, 5)))
            delivered.extend(got)
            expected -= {(a.job_id, a.task_id) for a in got}
        core.check_invariants()
    rest = drain(core)
    expected -= {(a.job_id, a.task_id) for a in rest}
    assert expected == set()
    assert core.buffered == 0
