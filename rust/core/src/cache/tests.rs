use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::codec::wire_encode;
use crate::error::StaleKind;
use crate::policy::ExecutionPolicy;
use crate::state::TaskState;
use crate::workloads;

fn cache() -> JobCache {
    JobCache::new(1024, 16, 16).expect("cache")
}

fn one_task() -> Submission {
    workloads::flat(1, 4, ExecutionPolicy::default(), false)
}

#[test]
fn job_cache_insert_and_get() {
    let c = cache();
    c.insert(1, 7, &one_task()).expect("insert");
    let j = c.get(1).expect("get");
    assert_eq!(
        (j.id(), j.resource_group(), j.state()),
        (1, 7, JobState::Ready)
    );
    assert!(c.contains(1));
    assert_eq!(c.len(), 1);
    assert_eq!(c.job_ids(), vec![1]);
}

#[test]
fn job_cache_remove_returns_count() {
    let c = cache();
    c.insert(1, 7, &one_task()).expect("insert");
    assert_eq!(c.remove(&[1]), 1);
    assert!(c.is_empty());
}

#[test]
fn job_cache_remove_batch_removes_existing_jobs_once() {
    let c = cache();
    c.insert(1, 1, &one_task()).expect("insert");
    c.insert(2, 1, &one_task()).expect("insert");
    assert_eq!(c.remove(&[1, 3, 2, 1]), 2);
    assert!(c.is_empty());
}

#[test]
fn job_cache_get_returns_not_found_for_nonexistent_job() {
    let c = cache();
    assert_eq!(c.get(42).expect_err("missing"), CoreError::JobNotFound(42));
}

#[test]
fn job_cache_insert_duplicate_returns_error() {
    let c = cache();
    c.insert(1, 1, &one_task()).expect("insert");
    let e = c.insert(1, 1, &one_task()).expect_err("duplicate");
    assert!(
        matches!(
            e,
            CoreError::Internal {
                kind: "JobAlreadyExists",
                ..
            }
        ),
        "{e:?}"
    );
    let e = c
        .recover(1, 1, &one_task(), JobState::Running, None)
        .expect_err("duplicate");
    assert_eq!(e.kind(), "JobAlreadyExists");
}

#[test]
fn job_cache_concurrent_insert_get() {
    let c = Arc::new(cache());
    let s = Arc::new(one_task());
    let handles: Vec<_> = (0..10u64)
        .map(|i| {
            let (c, s) = (Arc::clone(&c), Arc::clone(&s));
            std::thread::spawn(move || {
                for round in 0..50u64 {
                    let id = i * 1000 + round;
                    c.insert(id, i, &s).expect("insert");
                    assert_eq!(c.get(id).expect("get").resource_group(), i);
                    assert_eq!(c.remove(&[id]), 1);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert!(c.is_empty());
}

#[test]
fn job_cache_resend_ready_tasks_sends_for_running_job() {
    let c = cache();
    c.insert(1, 3, &one_task()).expect("insert");
    c.insert(2, 3, &one_task()).expect("insert");
    assert_eq!(c.resend_ready(), 0, "Ready jobs are not resent");
    assert_eq!(c.start(1).expect("start"), 1);
    assert_eq!(c.poll(Lane::Task, 10, Duration::ZERO, None).len(), 1);
    assert_eq!(c.resend_ready(), 1);
    let got = c.poll(Lane::Task, 10, Duration::ZERO, None);
    assert_eq!(
        got,
        vec![Entry {
            resource_group: 3,
            job: 1,
            task: TaskId::Index(0)
        }]
    );
    // A task with a live instance is not resent.
    c.register(1, TaskId::Index(0), 1, 0).expect("register");
    assert_eq!(c.resend_ready(), 0);
}

#[test]
fn resend_for_commit_and_cleanup_ready() {
    let c = cache();
    let s = workloads::flat(2, 4, ExecutionPolicy::default(), true);
    let out = crate::codec::encode_outputs(&[b"a".as_slice(), b"b"]).expect("enc");
    c.recover(1, 1, &s, JobState::CommitReady, Some(&out))
        .expect("recover");
    c.recover(2, 1, &s, JobState::CleanupReady, None)
        .expect("recover");
    assert_eq!(c.resend_ready(), 2);
    let [t, cm, cl] = c.poll_all([10, 10, 10], Duration::ZERO, None);
    assert!(t.is_empty());
    assert_eq!(
        cm,
        vec![Entry {
            resource_group: 1,
            job: 1,
            task: TaskId::Commit
        }]
    );
    assert_eq!(
        cl,
        vec![Entry {
            resource_group: 1,
            job: 2,
            task: TaskId::Cleanup
        }]
    );
}

fn terminated(c: &JobCache, id: JobId, now_ms: u64) {
    c.insert(id, 1, &one_task()).expect("insert");
    c.cancel(id, now_ms).expect("cancel");
}

#[test]
fn gc_cycle_keeps_jobs_until_retention_expires() {
    let c = cache();
    terminated(&c, 1, 1_000);
    assert!(
        c.evict_terminated(10_000, 10_000).is_empty(),
        "9 s < 10 s retention"
    );
    assert!(c.contains(1));
}

#[test]
fn gc_cycle_removes_jobs_after_retention_expires() {
    let c = cache();
    terminated(&c, 1, 1_000);
    assert_eq!(c.evict_terminated(11_000, 10_000), vec![1], "exactly 10 s");
    assert!(!c.contains(1));
}

#[test]
fn gc_cycle_removes_all_expired_jobs_and_keeps_live_ones() {
    let c = cache();
    for id in 1..=5 {
        terminated(&c, id, 0);
    }
    terminated(&c, 6, 5_000);
    c.insert(7, 1, &one_task()).expect("live job");
    assert_eq!(c.evict_terminated(10_000, 10_000), vec![1, 2, 3, 4, 5]);
    assert_eq!(c.job_ids(), vec![6, 7]);
}

fn running(c: &JobCache, id: JobId, n: usize, instances: u32) {
    let s = workloads::flat(
        n,
        4,
        ExecutionPolicy {
            max_num_instances: instances,
            ..ExecutionPolicy::default()
        },
        false,
    );
    c.insert(id, 1, &s).expect("insert");
    c.start(id).expect("start");
    c.poll(Lane::Task, 1000, Duration::ZERO, None);
}

#[test]
fn gc_removes_all_terminated_tasks() {
    let c = cache();
    running(&c, 1, 10, 1);
    let ctxs: Vec<_> = (0..10)
        .map(|t| c.register(1, TaskId::Index(t), 5, 0).expect("register"))
        .collect();
    // Mark terminal behind the table's back: the table still has the entries.
    for (t, ctx) in ctxs.iter().enumerate() {
        let job = c.get(1).expect("job");
        job.report_success(
            TaskId::Index(t as u32),
            ctx.instance_id,
            &wire_encode(&[b"x"]).expect("f"),
            &InstanceTable::new(),
        )
        .expect("success");
    }
    assert_eq!(c.live_instances(), 10);
    let r = c.gc_instances(0, &[]);
    assert_eq!(r.removed_terminal, 10);
    assert_eq!(r.requeued_dead + r.requeued_soft_timeout, 0);
    assert_eq!(c.live_instances(), 0);
    assert_eq!(c.queue().depths(), [0, 0, 0], "nothing re-enqueued");
}

#[test]
fn gc_re_enqueues_all_soft_timed_out_tasks_and_keeps_them() {
    let c = cache();
    running(&c, 1, 10, 1);
    for t in 0..10 {
        c.register(1, TaskId::Index(t), 5, 0).expect("register");
    }
    let soft = ExecutionPolicy::default().timeout_policy.soft_timeout_ms;
    let r = c.gc_instances(soft - 1, &[]);
    assert_eq!(r, InstanceGcReport::default(), "not yet");
    let r = c.gc_instances(soft, &[]);
    assert_eq!(r.requeued_soft_timeout, 10);
    assert_eq!(c.live_instances(), 10, "kept");
    assert!(c
        .instances()
        .snapshot()
        .iter()
        .all(|(_, e)| e.soft_timeout_handled));
    assert_eq!(c.queue().depths()[0], 10);
    let r = c.gc_instances(soft * 2, &[]);
    assert_eq!(r.requeued_soft_timeout, 0, "at most once per instance");
    // With the default instance limit, the re-offered entry cannot start a second instance.
    let e = c.register(1, TaskId::Index(0), 5, 0).expect_err("limit");
    assert_eq!(e.stale_kind(), Some(StaleKind::TaskInstanceLimitExceeded));
    let why = c.get(1).expect("job").explain(1);
    assert_eq!(why[0].1, "instance_limit");
}

#[test]
fn gc_re_enqueues_and_removes_all_tasks_for_dead_em() {
    let c = cache();
    running(&c, 1, 10, 1);
    for t in 0..10 {
        c.register(1, TaskId::Index(t), 5, 0).expect("register");
    }
    let r = c.gc_instances(0, &[5]);
    assert_eq!((r.removed_dead, r.requeued_dead), (10, 10));
    assert_eq!(c.live_instances(), 0);
    assert_eq!(c.queue().depths()[0], 10);
    // Tasks are Ready again; no retry was consumed.
    c.register(1, TaskId::Index(0), 6, 0).expect("re-register");
}

#[test]
fn gc_removes_terminated_tasks_for_dead_em_without_re_enqueue() {
    let c = cache();
    running(&c, 1, 3, 1);
    let ctxs: Vec<_> = (0..3)
        .map(|t| c.register(1, TaskId::Index(t), 5, 0).expect("register"))
        .collect();
    c.cancel(1, 0).expect("cancel");
    assert_eq!(c.live_instances(), 0, "cancel releases entries eagerly");
    // Re-create entries as if left behind, then GC with the EM dead: terminal wins.
    for ctx in &ctxs {
        c.instances().insert(
            ctx.instance_id,
            crate::instances::InstanceEntry {
                job: 1,
                task: ctx.task_id,
                em: 5,
                registered_ms: 0,
                soft_deadline_ms: 0,
                soft_timeout_handled: false,
            },
        );
    }
    let r = c.gc_instances(0, &[5]);
    assert_eq!(
        (r.removed_terminal, r.removed_dead, r.requeued_dead),
        (3, 0, 0)
    );
    assert_eq!(c.queue().depths(), [0, 0, 0]);
}

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "one short name per instance, keyed to the comment that lists them"
)]
fn gc_comprehensive() {
    let c = cache();
    running(&c, 1, 5, 1);
    let soft = ExecutionPolicy::default().timeout_policy.soft_timeout_ms;
    // 0: terminal, alive EM; 1: soft-timed-out, alive; 2: healthy (registered later);
    // 3: terminal on dead EM; 4: running on dead EM.
    let a = c.register(1, TaskId::Index(0), 1, 0).expect("0");
    let b = c.register(1, TaskId::Index(1), 1, 0).expect("1");
    let h = c.register(1, TaskId::Index(2), 1, soft).expect("2");
    let d = c.register(1, TaskId::Index(3), 2, 0).expect("3");
    let e = c.register(1, TaskId::Index(4), 2, 0).expect("4");
    let job = c.get(1).expect("job");
    let side = InstanceTable::new();
    let out = wire_encode(&[b"x"]).expect("f");
    job.report_success(TaskId::Index(0), a.instance_id, &out, &side)
        .expect("ok");
    job.report_success(TaskId::Index(3), d.instance_id, &out, &side)
        .expect("ok");
    let r = c.gc_instances(soft, &[2]);
    assert_eq!(r.removed_terminal, 2);
    assert_eq!((r.removed_dead, r.requeued_dead), (1, 1));
    assert_eq!(r.requeued_soft_timeout, 1);
    let left: HashSet<u64> = c
        .instances()
        .snapshot()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, [b.instance_id, h.instance_id].into_iter().collect());
    let offered: Vec<TaskId> = c
        .poll(Lane::Task, 10, Duration::ZERO, None)
        .into_iter()
        .map(|e| e.task)
        .collect();
    assert_eq!(offered.len(), 2);
    assert!(offered.contains(&TaskId::Index(1)) && offered.contains(&TaskId::Index(4)));
    let _ = e;
}

#[test]
fn evicted_job_entries_are_dropped_by_gc() {
    let c = cache();
    running(&c, 1, 1, 1);
    c.register(1, TaskId::Index(0), 1, 0).expect("register");
    c.remove(&[1]);
    let r = c.gc_instances(0, &[]);
    assert_eq!(r.removed_terminal, 1);
    assert_eq!(c.live_instances(), 0);
}

#[test]
fn spilled_entries_of_a_cancelled_job_are_skipped() {
    let c = JobCache::new(2, 1, 1).expect("cache");
    let s = workloads::flat(10, 4, ExecutionPolicy::default(), false);
    c.insert(1, 1, &s).expect("insert");
    c.insert(2, 1, &s).expect("insert");
    c.start(1).expect("start");
    c.start(2).expect("start");
    assert_eq!(c.queue().depths()[0], 2);
    assert_eq!(c.queue().spilled()[0], 18);
    c.cancel(2, 0).expect("cancel");
    let mut got = Vec::new();
    loop {
        let batch = c.poll(Lane::Task, 3, Duration::from_millis(1), None);
        if batch.is_empty() {
            break;
        }
        got.extend(batch);
    }
    assert_eq!(
        got.iter().filter(|e| e.job == 1).count(),
        10,
        "every entry of job 1 exactly once"
    );
    assert!(
        got.iter().filter(|e| e.job == 2).count() <= 2,
        "parked entries of the cancelled job skipped"
    );
}

#[test]
#[expect(
    clippy::similar_names,
    reason = "i0 and i1 are the instances of tasks 0 and 1"
)]
fn batches_report_per_item_errors() {
    let c = cache();
    running(&c, 1, 3, 1);
    let regs = c.register_batch(
        &[
            (1, TaskId::Index(0)),
            (1, TaskId::Index(1)),
            (9, TaskId::Index(0)),
            (1, TaskId::Index(0)),
        ],
        1,
        0,
    );
    assert!(regs[0].is_ok() && regs[1].is_ok());
    assert_eq!(regs[2].as_ref().expect_err("missing").kind(), "JobNotFound");
    assert_eq!(
        regs[3].as_ref().expect_err("limit").stale_kind(),
        Some(StaleKind::TaskInstanceLimitExceeded)
    );
    let f = wire_encode(&[b"x"]).expect("f");
    let i0 = regs[0].as_ref().expect("ok").instance_id;
    let i1 = regs[1].as_ref().expect("ok").instance_id;
    let reps = c.report_batch(&[
        (1, TaskId::Index(0), i0, Report::Success(&f)),
        (1, TaskId::Index(1), i1, Report::Failure("boom")),
        (1, TaskId::Index(0), i0, Report::Success(&f)),
    ]);
    assert!(matches!(reps[0], Ok(None)));
    let o = reps[1].as_ref().expect("ok").as_ref().expect("outcome");
    assert_eq!(o.kind, crate::job::OutcomeKind::JobFailed);
    assert_eq!(
        reps[2].as_ref().expect_err("stale").stale_kind(),
        Some(StaleKind::InvalidTaskInstanceId)
    );
}

fn drain_lane(c: &JobCache, lane: Lane, now_ms: u64) -> Vec<Entry> {
    let mut got = Vec::new();
    loop {
        let batch = c.poll(lane, 7, Duration::ZERO, Some(now_ms));
        if batch.is_empty() {
            return got;
        }
        got.extend(batch);
    }
}

fn sorted(mut v: Vec<Entry>) -> Vec<Entry> {
    v.sort_unstable_by_key(|e| (e.job, e.task));
    v
}

const VISIBILITY: u64 = 30_000;

#[test]
fn taken_but_unregistered_entries_are_offered_again_exactly_once() {
    // A small lane: part of the work sits in the spill while it is polled.
    let c = JobCache::new(16, 4, 4).expect("cache");
    for job in 1..=3 {
        c.insert(
            job,
            10 + job,
            &workloads::flat(40, 4, ExecutionPolicy::default(), false),
        )
        .expect("insert");
        c.start(job).expect("start");
    }
    let first = sorted(drain_lane(&c, Lane::Task, 1_000));
    assert_eq!(first.len(), 120);
    assert_eq!(c.taken_len(), 120);
    // Nobody registers them. Not yet expired at exactly the timeout.
    assert_eq!(c.requeue_expired(1_000 + VISIBILITY, VISIBILITY), 0);
    assert_eq!(c.requeue_expired(1_001 + VISIBILITY, VISIBILITY), 120);
    assert_eq!(c.taken_len(), 0, "expired entries leave the ledger");
    assert_eq!(
        c.requeue_expired(1_001 + VISIBILITY, VISIBILITY),
        0,
        "offered once"
    );
    let second = drain_lane(&c, Lane::Task, 50_000);
    assert_eq!(
        sorted(second.clone()),
        first,
        "every entry again, none lost, none twice"
    );
    assert_eq!(c.taken_len(), 120, "re-recorded when polled again");
    assert!(drain_lane(&c, Lane::Task, 50_000).is_empty());
    // And again after the second timeout: the cycle does not lose anything either.
    assert_eq!(c.requeue_expired(50_001 + VISIBILITY, VISIBILITY), 120);
    assert_eq!(sorted(drain_lane(&c, Lane::Task, 90_000)), first);
}

#[test]
fn registered_tasks_are_not_offered_again() {
    let c = cache();
    running_unpolled(&c, 1, 10);
    let got = drain_lane(&c, Lane::Task, 0);
    assert_eq!(got.len(), 10);
    // Four through a batch (one of them twice: the duplicate is refused and changes nothing),
    // one alone.
    let items: Vec<(JobId, TaskId)> = got[..4].iter().map(|e| (e.job, e.task)).collect();
    let mut with_dup = items.clone();
    with_dup.push(items[0]);
    let regs = c.register_batch(&with_dup, 1, 0);
    assert!(regs[..4].iter().all(Result::is_ok));
    assert!(regs[4].is_err());
    c.register(1, got[4].task, 1, 0).expect("register");
    assert_eq!(c.taken_len(), 5);
    assert_eq!(c.requeue_expired(VISIBILITY + 1, VISIBILITY), 5);
    let again = sorted(drain_lane(&c, Lane::Task, VISIBILITY + 1));
    assert_eq!(again, sorted(got[5..].to_vec()));
    // Registering everything empties the ledger; nothing is offered after the timeout.
    for e in &again {
        c.register(e.job, e.task, 1, 0).expect("register");
    }
    assert_eq!(c.taken_len(), 0);
    assert_eq!(c.requeue_expired(u64::MAX, 0), 0);
    assert!(drain_lane(&c, Lane::Task, 0).is_empty());
}

fn running_unpolled(c: &JobCache, id: JobId, n: usize) {
    c.insert(
        id,
        1,
        &workloads::flat(n, 4, ExecutionPolicy::default(), false),
    )
    .expect("insert");
    c.start(id).expect("start");
}

#[test]
fn expired_entries_that_are_no_longer_schedulable_are_dropped() {
    let c = cache();
    running_unpolled(&c, 1, 2);
    let got = drain_lane(&c, Lane::Task, 0);
    assert_eq!(got.len(), 2);
    // Task 0 gets its (only allowed) instance without going through the cache's ledger.
    c.get(1)
        .expect("job")
        .register(TaskId::Index(0), 1, 0, c.instances())
        .expect("register");
    assert_eq!(c.taken_len(), 2);
    assert_eq!(c.requeue_expired(VISIBILITY + 1, VISIBILITY), 1);
    assert_eq!(c.taken_len(), 0);
    assert_eq!(
        drain_lane(&c, Lane::Task, 0)
            .iter()
            .map(|e| e.task)
            .collect::<Vec<_>>(),
        vec![TaskId::Index(1)]
    );
}

#[test]
fn taken_entries_leave_with_their_job() {
    let c = cache();
    for job in 1..=5 {
        running_unpolled(&c, job, 3);
    }
    assert_eq!(drain_lane(&c, Lane::Task, 0).len(), 15);
    assert_eq!(c.taken_len(), 15);
    c.cancel(1, 0).expect("cancel");
    assert_eq!(c.taken_len(), 12);
    c.fail(2, "boom", 0).expect("fail");
    assert_eq!(c.taken_len(), 9);
    assert_eq!(c.remove(&[3]), 1);
    assert_eq!(c.taken_len(), 6);
    c.cancel(4, 0).expect("cancel");
    assert_eq!(c.evict_terminated(10, 0), vec![1, 2, 4]);
    assert_eq!(c.taken_len(), 3);
    // resend_ready offers what is still Ready and forgets the ledger.
    assert_eq!(c.resend_ready(), 3);
    assert_eq!(c.taken_len(), 0);
    assert_eq!(drain_lane(&c, Lane::Task, 0).len(), 3);
    // Polls without a time are not recorded.
    assert_eq!(c.resend_ready(), 3);
    assert_eq!(c.poll(Lane::Task, 10, Duration::ZERO, None).len(), 3);
    assert_eq!(c.taken_len(), 0);
}

#[test]
fn commit_and_cleanup_entries_are_tracked_too() {
    let c = cache();
    let s = workloads::flat(2, 4, ExecutionPolicy::default(), true);
    let out = crate::codec::encode_outputs(&[b"a".as_slice(), b"b"]).expect("enc");
    c.recover(1, 1, &s, JobState::CommitReady, Some(&out))
        .expect("recover");
    c.recover(2, 1, &s, JobState::CleanupReady, None)
        .expect("recover");
    c.resend_ready();
    let [t, cm, cl] = c.poll_all([10, 10, 10], Duration::ZERO, Some(5));
    assert_eq!((t.len(), cm.len(), cl.len()), (0, 1, 1));
    assert_eq!(c.taken_len(), 2);
    assert_eq!(c.requeue_expired(6, 0), 2);
    let [_, cm2, cl2] = c.poll_all([10, 10, 10], Duration::ZERO, Some(6));
    assert_eq!((cm2, cl2), (cm, cl));
    c.register(1, TaskId::Commit, 1, 6).expect("commit");
    assert_eq!(c.taken_len(), 1);
}

fn limited(max_task_output_bytes: u64, max_job_bytes: u64) -> JobCache {
    JobCache::with_limits(
        1024,
        16,
        16,
        OutputLimits {
            max_task_output_bytes,
            max_job_bytes,
        },
    )
    .expect("cache")
}

fn frame_of(len: usize) -> Vec<u8> {
    wire_encode(&[vec![7u8; len]]).expect("frame")
}

#[test]
fn outputs_over_the_task_limit_are_not_stored_and_fail_the_job_once() {
    let c = limited(100, u64::MAX);
    running(&c, 1, 3, 1);
    let regs = c.register_batch(
        &[
            (1, TaskId::Index(0)),
            (1, TaskId::Index(1)),
            (1, TaskId::Index(2)),
        ],
        1,
        0,
    );
    let ids: Vec<u64> = regs
        .iter()
        .map(|r| r.as_ref().expect("ok").instance_id)
        .collect();
    // Exactly at the limit is stored.
    assert!(c
        .report_success(1, TaskId::Index(0), ids[0], &frame_of(100))
        .expect("ok")
        .is_none());
    let o = c
        .report_success(1, TaskId::Index(1), ids[1], &frame_of(101))
        .expect("ok")
        .expect("outcome");
    assert_eq!(o.kind, crate::job::OutcomeKind::JobFailed);
    assert_eq!(
        o.message.as_deref(),
        Some(
            "task 1 (`bench.inc`): output of 101 bytes exceeds the limit of 100 bytes \
             (max_task_output_bytes)"
        )
    );
    let job = c.get(1).expect("job");
    assert_eq!(job.task_state(TaskId::Index(1)), Some(TaskState::Failed));
    assert_eq!(
        job.state(),
        JobState::Running,
        "the core leaves the job to the caller"
    );
    // A second refusal in the same job produces no second outcome; the instance is consumed.
    assert!(c
        .report_success(1, TaskId::Index(2), ids[2], &frame_of(500))
        .expect("ok")
        .is_none());
    assert_eq!(c.live_instances(), 0);
    // A stale report (instance no longer live) is refused as such, whatever its size.
    let e = c
        .report_success(1, TaskId::Index(1), ids[1], &frame_of(500))
        .expect_err("stale");
    assert!(e.is_stale());
    assert_eq!(
        c.fail(1, "outputs too large", 1).expect("fail"),
        JobState::Failed
    );
}

#[test]
fn outputs_that_would_make_the_job_hold_too_much_fail_it() {
    // Each graph input of `flat(.., 4, ..)` is 6 bytes of msgpack bin: 3 tasks hold 18 bytes.
    let c = limited(1000, 18 + 2 * 40);
    running(&c, 1, 3, 1);
    let regs = c.register_batch(
        &[
            (1, TaskId::Index(0)),
            (1, TaskId::Index(1)),
            (1, TaskId::Index(2)),
        ],
        1,
        0,
    );
    let ids: Vec<u64> = regs
        .iter()
        .map(|r| r.as_ref().expect("ok").instance_id)
        .collect();
    for t in 0..2 {
        assert!(c
            .report_success(1, TaskId::Index(t), ids[t as usize], &frame_of(40))
            .expect("ok")
            .is_none());
    }
    let o = c
        .report_success(1, TaskId::Index(2), ids[2], &frame_of(1))
        .expect("ok")
        .expect("outcome");
    assert_eq!(o.kind, crate::job::OutcomeKind::JobFailed);
    assert_eq!(
        o.message.as_deref(),
        Some(
            "task 2 (`bench.inc`): output of 1 bytes would make the job hold 99 bytes, above the \
             limit of 98 bytes (max_job_bytes)"
        )
    );
}

#[test]
fn empty_outputs_never_exceed_the_job_limit() {
    let c = limited(0, 1);
    running(&c, 1, 1, 1);
    let ctx = c.register(1, TaskId::Index(0), 1, 0).expect("register");
    let o = c
        .report_success(1, TaskId::Index(0), ctx.instance_id, &frame_of(0))
        .expect("ok")
        .expect("the job completes");
    assert_eq!(o.kind, crate::job::OutcomeKind::JobCompleted);
}

#[test]
fn registration_refuses_task_io_over_the_limit_and_changes_nothing() {
    let c = cache();
    // Regular task: its inputs frame is 4 + 4 + 6 = 14 bytes.
    running(&c, 1, 1, 1);
    let e = c
        .register_limited(1, TaskId::Index(0), 1, 0, Some(13))
        .expect_err("too large");
    assert_eq!(e.kind(), "TaskInputsTooLarge");
    assert!(matches!(e, CoreError::LimitExceeded { .. }));
    assert_eq!(
        e.to_string(),
        "job 1 task 0 (`bench.inc`): task inputs of 14 bytes exceed the limit of 13 bytes \
         (max_task_io_bytes)"
    );
    let job = c.get(1).expect("job");
    assert_eq!(job.task_state(TaskId::Index(0)), Some(TaskState::Ready));
    assert_eq!(c.live_instances(), 0);
    let batch = c.register_batch_limited(&[(1, TaskId::Index(0))], 1, 0, Some(13), None);
    assert_eq!(
        batch[0].as_ref().expect_err("big").kind(),
        "TaskInputsTooLarge"
    );
    let ctx = c
        .register_limited(1, TaskId::Index(0), 1, 0, Some(14))
        .expect("exactly at the limit");
    assert_eq!(ctx.task_io.len(), 14);
    // A registration refused anyway gets that error, not the size error.
    let e = c
        .register_limited(1, TaskId::Index(0), 1, 0, Some(1))
        .expect_err("limit");
    assert_eq!(e.stale_kind(), Some(StaleKind::TaskInstanceLimitExceeded));

    // Commit task: the job outputs; cleanup task: the graph inputs.
    let s = workloads::flat(2, 4, ExecutionPolicy::default(), true);
    let out = crate::codec::encode_outputs(&[b"a".as_slice(), b"b"]).expect("enc");
    c.recover(2, 1, &s, JobState::CommitReady, Some(&out))
        .expect("recover");
    c.recover(3, 1, &s, JobState::CleanupReady, None)
        .expect("recover");
    let e = c
        .register_limited(2, TaskId::Commit, 1, 0, Some(out.len() - 1))
        .expect_err("commit");
    assert!(
        e.to_string().starts_with(&format!(
            "job 2 commit task (`bench.commit`): job outputs of {} bytes",
            out.len()
        )),
        "{e}"
    );
    let e = c
        .register_limited(3, TaskId::Cleanup, 1, 0, Some(10))
        .expect_err("cleanup");
    assert!(
        e.to_string()
            .starts_with("job 3 cleanup task (`bench.cleanup`): graph inputs of 24 bytes"),
        "{e}"
    );
    assert_eq!(c.live_instances(), 1);
    c.register_limited(3, TaskId::Cleanup, 1, 0, Some(24))
        .expect("fits");
}

#[test]
fn a_batch_registers_only_what_fits_its_reply_and_always_makes_progress() {
    let c = cache();
    // Three jobs of one task each; every task's inputs frame is 14 bytes.
    for job in 1..=3 {
        running(&c, job, 1, 1);
    }
    let items = [
        (1, TaskId::Index(0)),
        (2, TaskId::Index(0)),
        (3, TaskId::Index(0)),
    ];
    let batch = c.register_batch_limited(&items, 1, 0, None, Some(30));
    assert!(batch[0].is_ok() && batch[1].is_ok());
    let e = batch[2].as_ref().expect_err("no room left");
    assert_eq!(e.kind(), "ReplyFull");
    assert_eq!(
        e.to_string(),
        "job 3 Index(0): the reply is full (14 bytes of inputs do not fit the 2 left); register \
         it again"
    );
    assert!(matches!(e, CoreError::LimitExceeded { .. }));
    // Left out means untouched: it registers in the next call.
    let job = c.get(3).expect("job");
    assert_eq!(job.task_state(TaskId::Index(0)), Some(TaskState::Ready));
    assert_eq!(c.live_instances(), 2);
    // The first registration of a batch always goes through, whatever the budget.
    let again = c.register_batch_limited(&items[2..], 1, 0, None, Some(1));
    assert_eq!(again[0].as_ref().expect("first fits").task_io.len(), 14);
}

#[test]
fn dropped_outputs_are_gone_but_a_commit_ready_job_keeps_its_own() {
    let c = cache();
    let s = workloads::flat(1, 4, ExecutionPolicy::default(), true);
    let out = crate::codec::encode_outputs(&[b"a".as_slice()]).expect("enc");
    c.recover(1, 1, &s, JobState::CommitReady, Some(&out))
        .expect("recover");
    assert!(
        !c.drop_outputs(1).expect("job"),
        "the commit task still needs them"
    );
    assert_eq!(&*c.outputs(1).expect("kept"), &out[..]);
    let ctx = c.register(1, TaskId::Commit, 1, 0).expect("commit");
    c.report_success(1, TaskId::Commit, ctx.instance_id, b"")
        .expect("ok");
    assert_eq!(c.finish(1, 0).expect("finish"), JobState::Succeeded);
    assert!(c.drop_outputs(1).expect("job"));
    let e = c.outputs(1).expect_err("released");
    assert_eq!(e, CoreError::OutputsReleased(1));
    assert_eq!(e.kind(), "OutputsReleased");
    assert!(!c.drop_outputs(1).expect("job"), "already released");
    running(&c, 2, 1, 1);
    assert!(!c.drop_outputs(2).expect("job"), "running: no outputs yet");
    assert_eq!(c.drop_outputs(9), Err(CoreError::JobNotFound(9)));
}

#[test]
fn recover_running_offers_only_the_remaining_tasks() {
    let c = cache();
    let s = workloads::diamond(None);
    let a = wire_encode(&[b"a".as_slice()]).expect("frame");
    let out = c.recover_running(3, 1, &s, &[(0, &a)]).expect("recover");
    assert!(out.is_none());
    assert_eq!(c.progress(3).expect("progress").succeeded, 1);
    assert_eq!(c.resend_ready(), 2, "B and C, not A");
    let got = c.poll(Lane::Task, 10, Duration::ZERO, None);
    let mut tasks: Vec<TaskId> = got.iter().map(|e| e.task).collect();
    tasks.sort_by_key(|t| t.code());
    assert_eq!(tasks, vec![TaskId::Index(1), TaskId::Index(2)]);
    let e = c
        .recover_running(3, 1, &s, &[])
        .expect_err("already cached");
    assert_eq!(e.kind(), "JobAlreadyExists");
    let e = c
        .recover_running(4, 1, &s, &[(9, &a)])
        .expect_err("no task 9");
    assert_eq!(e.kind(), "InvalidTaskOutputs");
    assert!(!c.contains(4), "a refused job is not cached");
}

const fn continuing(em: ExecutionManagerId, accept: usize) -> Continuation {
    Continuation {
        em,
        accept,
        now_ms: 0,
        max_io: None,
        max_total_io: None,
    }
}

#[test]
fn a_report_hands_the_children_it_made_ready_to_the_reporting_em() {
    let c = cache();
    c.insert(1, 1, &workloads::diamond(None)).expect("insert");
    c.start(1).expect("start");
    let root = c.poll(Lane::Task, 10, Duration::ZERO, None);
    assert_eq!(root.len(), 1);
    let ctx = c.register(1, TaskId::Index(0), 5, 0).expect("register");
    let f = wire_encode(&[b"x"]).expect("f");
    // Room for one: b goes to EM 5, c is offered as usual.
    let (reps, continued) = c.report_batch_continuing(
        &[(1, TaskId::Index(0), ctx.instance_id, Report::Success(&f))],
        Some(continuing(5, 1)),
    );
    assert!(matches!(reps[0], Ok(None)));
    assert_eq!(continued.len(), 1);
    assert_eq!(continued[0].task_id, TaskId::Index(1));
    assert_eq!(
        c.instances().len(),
        1,
        "b is registered, the root's instance is gone"
    );
    let offered = c.poll(Lane::Task, 10, Duration::ZERO, None);
    assert_eq!(offered.len(), 1);
    assert_eq!(offered[0].task, TaskId::Index(2));
    // c runs elsewhere; with something waiting in the task lane, nothing is continued.
    c.insert(2, 1, &one_task()).expect("insert");
    c.start(2).expect("start");
    let cc = c.register(1, TaskId::Index(2), 6, 0).expect("register c");
    let (_, none) = c.report_batch_continuing(
        &[(
            1,
            TaskId::Index(1),
            continued[0].instance_id,
            Report::Success(&f),
        )],
        Some(continuing(5, 4)),
    );
    assert!(none.is_empty());
    c.poll(Lane::Task, 10, Duration::ZERO, None); // job 2's task
                                                  // The lane is empty again: d (made ready by c's report) goes to the reporting EM 6.
    let (_, d) = c.report_batch_continuing(
        &[(1, TaskId::Index(2), cc.instance_id, Report::Success(&f))],
        Some(continuing(6, 4)),
    );
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].task_id, TaskId::Index(3));
    assert!(c.poll(Lane::Task, 10, Duration::ZERO, None).is_empty());
}

#[test]
fn a_child_that_cannot_be_registered_is_offered_instead() {
    let c = cache();
    c.insert(1, 1, &workloads::diamond(None)).expect("insert");
    c.start(1).expect("start");
    c.poll(Lane::Task, 10, Duration::ZERO, None);
    let ctx = c.register(1, TaskId::Index(0), 5, 0).expect("register");
    let f = wire_encode(&[b"some output"]).expect("f");
    let too_small = Some(Continuation {
        max_io: Some(1),
        ..continuing(5, 2)
    });
    let (_, continued) = c.report_batch_continuing(
        &[(1, TaskId::Index(0), ctx.instance_id, Report::Success(&f))],
        too_small,
    );
    assert!(continued.is_empty());
    assert_eq!(c.poll(Lane::Task, 10, Duration::ZERO, None).len(), 2);
}

#[test]
fn an_instance_its_em_does_not_hold_is_offered_again_after_the_grace() {
    let c = cache();
    running(&c, 1, 3, 1);
    let a = c.register(1, TaskId::Index(0), 5, 100).expect("a");
    let b = c.register(1, TaskId::Index(1), 5, 100).expect("b");
    let other = c.register(1, TaskId::Index(2), 6, 100).expect("other EM");
    let held: HashSet<TaskInstanceId> = [a.instance_id].into_iter().collect();
    // Registered at 100: not before 100, so possibly still in a reply in flight.
    assert_eq!(c.reconcile_em(5, &held, 100), 0);
    assert_eq!(c.live_instances(), 3);
    // Later: b was lost on the way; a (held) and the other EM's instance stay.
    assert_eq!(c.reconcile_em(5, &held, 101), 1);
    assert_eq!(c.live_instances(), 2);
    let offered = c.poll(Lane::Task, 10, Duration::ZERO, None);
    assert_eq!(offered.len(), 1);
    assert_eq!(offered[0].task, TaskId::Index(1));
    // A late report of the lost instance is stale; a new instance may be registered.
    let f = wire_encode(&[b"x"]).expect("f");
    assert!(c
        .report_success(1, TaskId::Index(1), b.instance_id, &f)
        .is_err());
    c.register(1, TaskId::Index(1), 6, 200).expect("again");
    assert!(c
        .report_success(1, TaskId::Index(2), other.instance_id, &f)
        .is_ok());
}

#[test]
fn poll_first_records_its_entries_as_taken_and_give_back_offers_them_again() {
    let c = cache();
    c.insert(1, 1, &workloads::diamond(None)).expect("insert");
    c.start(1).expect("start");
    let got = c.poll_first(1, Duration::ZERO, 0);
    assert_eq!(got.len(), 1);
    assert_eq!(c.taken_len(), 1, "taken until registered");
    assert_eq!(c.give_back(&got), 1);
    assert_eq!(c.taken_len(), 0);
    let again = c.poll_first(4, Duration::ZERO, 0);
    assert_eq!(again, got, "offered again");
    c.register(1, TaskId::Index(0), 5, 0).expect("register");
    assert_eq!(c.taken_len(), 0, "registration clears it");
    assert_eq!(
        c.give_back(&again),
        0,
        "a registered task is not offered again"
    );
    assert!(c.poll(Lane::Task, 10, Duration::ZERO, None).is_empty());
}
