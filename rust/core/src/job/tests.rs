use std::sync::{Arc, Barrier};

use super::*;
use crate::codec::{decode_outputs, wire_decode, wire_encode, DEFAULT_MAX_DECOMPRESSED_SIZE};
use crate::instances::InstanceTable;
use crate::policy::ExecutionPolicy;
use crate::submission::Submission;
use crate::workloads;

fn frame(values: &[&[u8]]) -> Vec<u8> {
    wire_encode(values).expect("frame")
}

fn inputs_of(ctx: &ExecutionContext) -> Vec<Vec<u8>> {
    wire_decode(&ctx.task_io.to_vec())
        .expect("task io is a frame")
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect()
}

fn xor(v: &[u8], k: u8) -> Vec<u8> {
    v.iter().map(|b| b ^ k).collect()
}

fn started(s: &Submission) -> (Job, InstanceTable) {
    let job = Job::new(1, 9, s).expect("job");
    let t = job.start().expect("start");
    assert_eq!(t.state, JobState::Running);
    (job, InstanceTable::new())
}

fn stale_kind<T: std::fmt::Debug>(r: Result<T>) -> StaleKind {
    r.expect_err("stale").stale_kind().expect("stale kind")
}

/// Run task `t` with `f(inputs) -> outputs`; returns the report.
fn run_task(
    job: &Job,
    table: &InstanceTable,
    t: u32,
    f: impl Fn(&[Vec<u8>]) -> Vec<u8>,
) -> (Vec<Vec<u8>>, Reported) {
    let ctx = job
        .register(TaskId::Index(t), 1, 0, table)
        .expect("register");
    let inputs = inputs_of(&ctx);
    let out = f(&inputs);
    let r = job
        .report_success(TaskId::Index(t), ctx.instance_id, &frame(&[&out]), table)
        .expect("success");
    (inputs, r)
}

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "tasks a, b, c, d named after the diamond they form"
)]
fn diamond_sequential_execution() {
    let s = workloads::diamond(None);
    let (job, table) = started(&s);
    let x = s.inputs[0].to_vec();
    let (seen_a, r) = run_task(&job, &table, 0, |i| xor(&i[0], 0x01));
    assert_eq!(seen_a, vec![x.clone()]);
    assert_eq!(
        r.offers,
        vec![TaskId::Index(1), TaskId::Index(2)],
        "A makes B and C ready"
    );
    let a = xor(&x, 0x01);
    let (seen_b, r) = run_task(&job, &table, 1, |i| xor(&i[0], 0x02));
    assert_eq!(seen_b, vec![a.clone()]);
    assert!(r.offers.is_empty(), "B alone does not make D ready");
    assert!(r.outcome.is_none());
    let (seen_c, r) = run_task(&job, &table, 2, |i| xor(&i[0], 0x04));
    assert_eq!(seen_c, vec![a.clone()]);
    assert_eq!(r.offers, vec![TaskId::Index(3)], "C makes D ready");
    let b = xor(&a, 0x02);
    let c = xor(&a, 0x04);
    let (seen_d, r) = run_task(&job, &table, 3, |i| {
        i[0].iter().zip(&i[1]).map(|(p, q)| p ^ q).collect()
    });
    assert_eq!(seen_d, vec![b.clone(), c.clone()]);
    assert!(r.offers.is_empty(), "D has no children");
    let o = r.outcome.expect("last task completes the job");
    assert_eq!(o.kind, OutcomeKind::JobCompleted);
    let expected: Vec<u8> = b.iter().zip(&c).map(|(p, q)| p ^ q).collect();
    let outputs = decode_outputs(&o.outputs.expect("outputs"), DEFAULT_MAX_DECOMPRESSED_SIZE)
        .expect("decode");
    assert_eq!(outputs, vec![expected]);
    assert!(table.is_empty(), "every reported instance left the table");
}

#[test]
fn diamond_concurrent_bc_execution() {
    for _ in 0..200 {
        let s = workloads::diamond(None);
        let (job, table) = started(&s);
        run_task(&job, &table, 0, |i| xor(&i[0], 0x01));
        let ctx_b = job.register(TaskId::Index(1), 1, 0, &table).expect("B");
        let ctx_c = job.register(TaskId::Index(2), 1, 0, &table).expect("C");
        let job = Arc::new(job);
        let table = Arc::new(table);
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [(1u32, ctx_b, 0x02u8), (2, ctx_c, 0x04)]
            .into_iter()
            .map(|(t, ctx, k)| {
                let (job, table, barrier) =
                    (Arc::clone(&job), Arc::clone(&table), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let out = xor(&inputs_of(&ctx)[0], k);
                    barrier.wait();
                    job.report_success(TaskId::Index(t), ctx.instance_id, &frame(&[&out]), &table)
                        .expect("report")
                })
            })
            .collect();
        let reports: Vec<Reported> = handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect();
        let ready: Vec<_> = reports.iter().filter(|r| !r.offers.is_empty()).collect();
        assert_eq!(ready.len(), 1, "exactly one of B/C observes D ready");
        assert_eq!(ready[0].offers, vec![TaskId::Index(3)]);
        let (seen_d, r) = run_task(&job, &table, 3, |i| {
            i[0].iter().zip(&i[1]).map(|(p, q)| p ^ q).collect()
        });
        let x = xor(&s.inputs[0], 0x01);
        assert_eq!(seen_d, vec![xor(&x, 0x02), xor(&x, 0x04)]);
        let o = r.outcome.expect("completed");
        let out = decode_outputs(&o.outputs.expect("outputs"), 1 << 20).expect("decode");
        let expected: Vec<u8> = xor(&x, 0x02)
            .iter()
            .zip(&xor(&x, 0x04))
            .map(|(p, q)| p ^ q)
            .collect();
        assert_eq!(out, vec![expected]);
    }
}

#[test]
fn invalid_requests_change_nothing() {
    let s = workloads::diamond(None);
    let (job, table) = started(&s);
    let ctx = job
        .register(TaskId::Index(0), 1, 0, &table)
        .expect("register");
    let before = (job.progress(), table.len());
    let bad = [
        job.report_success(TaskId::Index(9), ctx.instance_id, &frame(&[b"x"]), &table),
        job.report_success(TaskId::Index(0), ctx.instance_id, &frame(&[]), &table),
        job.report_success(
            TaskId::Index(0),
            ctx.instance_id,
            &frame(&[b"x", b"y"]),
            &table,
        ),
        job.report_success(TaskId::Index(0), ctx.instance_id, b"\x05\x00", &table),
        job.report_failure(TaskId::Index(4), ctx.instance_id, "boom", &table),
        job.report_success(TaskId::Commit, ctx.instance_id, b"", &table),
    ];
    for r in bad {
        let e = r.expect_err("invalid");
        assert!(matches!(e, CoreError::InvalidRequest { .. }), "{e:?}");
    }
    assert!(job.register(TaskId::Index(4), 1, 0, &table).is_err());
    assert_eq!((job.progress(), table.len()), before, "nothing changed");
    // The task can still succeed normally afterwards.
    job.report_success(TaskId::Index(0), ctx.instance_id, &frame(&[b"x"]), &table)
        .expect("valid report still works");
}

#[test]
fn register_pending_task_is_stale() {
    let s = workloads::diamond(None);
    let (job, table) = started(&s);
    assert_eq!(
        stale_kind(job.register(TaskId::Index(3), 1, 0, &table)),
        StaleKind::TaskNotReady
    );
}

#[test]
fn register_before_start_and_after_end_is_stale() {
    let s = workloads::diamond(None);
    let job = Job::new(1, 1, &s).expect("job");
    let table = InstanceTable::new();
    assert_eq!(
        stale_kind(job.register(TaskId::Index(0), 1, 0, &table)),
        StaleKind::JobNotStarted
    );
    job.start().expect("start");
    job.cancel(1, &table).expect("cancel");
    assert_eq!(
        stale_kind(job.register(TaskId::Index(0), 1, 0, &table)),
        StaleKind::JobNoLongerRunning
    );
    assert_eq!(
        job.register(TaskId::Commit, 1, 0, &table)
            .expect_err("no commit")
            .kind(),
        "UndefinedCommitTask"
    );
}

#[test]
fn start_twice_is_stale() {
    let s = workloads::diamond(None);
    let (job, _) = started(&s);
    assert_eq!(stale_kind(job.start()), StaleKind::JobAlreadyStarted);
}

fn flat(n: usize, termination: bool, retry: u32) -> Submission {
    workloads::flat(
        n,
        4,
        ExecutionPolicy {
            max_num_retry: retry,
            max_num_instances: 2,
            ..ExecutionPolicy::default()
        },
        termination,
    )
}

fn succeed_all(job: &Job, table: &InstanceTable) -> Option<Outcome> {
    let mut last = None;
    for t in 0..job.total_tasks() {
        let ctx = job
            .register(TaskId::Index(t), 1, 0, table)
            .expect("register");
        let r = job
            .report_success(TaskId::Index(t), ctx.instance_id, &frame(&[b"o"]), table)
            .expect("success");
        if r.outcome.is_some() {
            last = r.outcome;
        }
    }
    last
}

#[test]
fn completion_with_commit_then_finish() {
    let s = flat(3, true, 0);
    let (job, table) = started(&s);
    let o = succeed_all(&job, &table).expect("completed");
    assert!(o.has_commit);
    assert_eq!(
        job.state(),
        JobState::Running,
        "two-phase: nothing changes before complete()"
    );
    let t = job.complete(10, &table).expect("complete");
    assert_eq!(t.state, JobState::CommitReady);
    assert_eq!(t.offers, vec![TaskId::Commit]);
    assert!(!job.holds_graph(), "graph released");
    assert_eq!(job.progress().succeeded, 3);
    let outputs = job.outputs().expect("commit-ready outputs");
    let ctx = job.register(TaskId::Commit, 1, 0, &table).expect("commit");
    assert_eq!(
        &ctx.task_io.to_vec()[..],
        &outputs[..],
        "commit receives the job outputs"
    );
    assert_eq!(
        stale_kind(job.register(TaskId::Index(0), 1, 0, &table)),
        StaleKind::JobNoLongerRunning
    );
    let r = job
        .report_success(TaskId::Commit, ctx.instance_id, b"ignored", &table)
        .expect("ok");
    assert_eq!(
        r.outcome.expect("outcome").kind,
        OutcomeKind::CommitSucceeded
    );
    assert_eq!(
        job.finish(20, &table).expect("finish").state,
        JobState::Succeeded
    );
    assert_eq!(job.terminal_at_ms(), Some(20));
    assert_eq!(
        decode_outputs(&job.outputs().expect("outputs"), 1 << 20)
            .expect("d")
            .len(),
        3
    );
    assert!(table.is_empty());
}

#[test]
fn complete_requires_all_tasks() {
    let s = flat(2, false, 0);
    let (job, table) = started(&s);
    let e = job.complete(0, &table).expect_err("not done");
    assert!(matches!(e, CoreError::InvalidRequest { .. }));
    assert_eq!(job.state(), JobState::Running);
}

#[test]
fn cancel_racing_with_completion_is_consistent() {
    let s = flat(2, true, 0);
    let (job, table) = started(&s);
    assert!(succeed_all(&job, &table).is_some());
    assert_eq!(
        job.cancel(5, &table).expect("cancel").state,
        JobState::CleanupReady
    );
    assert_eq!(
        stale_kind(job.complete(6, &table)),
        StaleKind::JobNoLongerRunning
    );
}

#[test]
fn cancel_semantics() {
    // Ready with cleanup: nothing ran, no cleanup.
    let s = flat(2, true, 0);
    let job = Job::new(1, 1, &s).expect("job");
    let table = InstanceTable::new();
    let t = job.cancel(1, &table).expect("cancel ready");
    assert_eq!((t.state, t.offers), (JobState::Cancelled, vec![]));
    assert_eq!(job.progress().cancelled, 2);
    assert_eq!(
        stale_kind(job.cancel(2, &table)),
        StaleKind::JobAlreadyCancelled
    );
    assert_eq!(stale_kind(job.start()), StaleKind::JobAlreadyStarted);

    // Running with cleanup -> CleanupReady, cleanup offered, receives the graph inputs.
    let (job, table) = started(&s);
    let live = job
        .register(TaskId::Index(0), 1, 0, &table)
        .expect("register");
    let t = job.cancel(1, &table).expect("cancel");
    assert_eq!(
        (t.state, t.offers),
        (JobState::CleanupReady, vec![TaskId::Cleanup])
    );
    assert!(table.is_empty(), "cancelled instances leave the table");
    assert!(!job.holds_graph());
    assert_eq!(
        stale_kind(job.report_success(TaskId::Index(0), live.instance_id, &frame(&[b"x"]), &table)),
        StaleKind::JobNoLongerRunning
    );
    assert_eq!(
        stale_kind(job.cancel(2, &table)),
        StaleKind::JobCancellationAlreadyRequested
    );
    let ctx = job
        .register(TaskId::Cleanup, 1, 0, &table)
        .expect("cleanup");
    let ins: Vec<Vec<u8>> = s.inputs.iter().map(|p| p.to_vec()).collect();
    assert_eq!(inputs_of(&ctx), ins, "cleanup receives the graph inputs");
    let r = job
        .report_success(TaskId::Cleanup, ctx.instance_id, b"", &table)
        .expect("ok");
    assert_eq!(
        r.outcome.expect("outcome").kind,
        OutcomeKind::CleanupSucceeded
    );
    assert_eq!(
        job.finish(3, &table).expect("finish").state,
        JobState::Cancelled
    );
    assert_eq!(
        stale_kind(job.cancel(4, &table)),
        StaleKind::JobAlreadyCancelled
    );
    assert_eq!(stale_kind(job.outputs()), StaleKind::JobNotSucceeded);

    // Running without cleanup -> Cancelled.
    let s2 = flat(2, false, 0);
    let (job, table) = started(&s2);
    assert_eq!(
        job.cancel(1, &table).expect("cancel").state,
        JobState::Cancelled
    );
    assert_eq!(job.terminal_at_ms(), Some(1));

    // CommitReady without cleanup -> stale; with cleanup -> CleanupReady.
    let mut b = crate::graph::GraphBuilder::new();
    b.insert_task(&crate::graph::TaskDescriptor {
        package: "p".into(),
        task_func: "f".into(),
        policy: None,
        inputs: vec![],
        outputs: vec![crate::types::DataTypeDescriptor::bytes()],
        input_sources: None,
    })
    .expect("task");
    b.set_commit("p", "commit", None).expect("commit");
    let s3 = Submission::new(Arc::new(b.build()), vec![]).expect("sub");
    let (job, table) = started(&s3);
    succeed_all(&job, &table).expect("done");
    job.complete(1, &table).expect("complete");
    assert_eq!(
        stale_kind(job.cancel(2, &table)),
        StaleKind::InvalidJobStateTransition
    );
    assert_eq!(job.state(), JobState::CommitReady);

    let (job, table) = started(&s);
    succeed_all(&job, &table).expect("done");
    job.complete(1, &table).expect("complete");
    let t = job.cancel(2, &table).expect("cancel commit-ready");
    assert_eq!(
        (t.state, t.offers),
        (JobState::CleanupReady, vec![TaskId::Cleanup])
    );
    assert_eq!(job.task_state(TaskId::Commit), Some(TaskState::Cancelled));
}

#[test]
fn failure_outcome_once_and_fail_releases_graph() {
    let s = flat(3, false, 0);
    let (job, table) = started(&s);
    let ctxs: Vec<_> = (0..3)
        .map(|t| {
            job.register(TaskId::Index(t), 1, 0, &table)
                .expect("register")
        })
        .collect();
    let r0 = job
        .report_failure(TaskId::Index(0), ctxs[0].instance_id, "boom", &table)
        .expect("f0");
    let o = r0
        .outcome
        .expect("first exhausted failure reports JOB_FAILED");
    assert_eq!(o.kind, OutcomeKind::JobFailed);
    assert!(o.message.as_deref().expect("msg").contains("boom"));
    assert!(o
        .message
        .as_deref()
        .expect("msg")
        .contains("task 0 (bench.inc)"));
    let r1 = job
        .report_failure(TaskId::Index(1), ctxs[1].instance_id, "again", &table)
        .expect("f1");
    assert!(r1.outcome.is_none(), "JOB_FAILED is produced once per job");
    assert_eq!(table.len(), 1);
    job.fail("task 0 failed: boom", 7, &table).expect("fail");
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.error().as_deref(), Some("task 0 failed: boom"));
    assert!(!job.holds_graph(), "a failed job releases its graph");
    assert!(table.is_empty(), "and its instance-table entries");
    let p = job.progress();
    assert_eq!((p.failed, p.cancelled), (2, 1));
    assert_eq!(
        stale_kind(job.fail("x", 8, &table)),
        StaleKind::JobAlreadyTerminated
    );
    assert_eq!(
        stale_kind(job.report_success(
            TaskId::Index(2),
            ctxs[2].instance_id,
            &frame(&[b"x"]),
            &table
        )),
        StaleKind::JobNoLongerRunning
    );
}

#[test]
fn retry_requeues_and_explains() {
    let s = flat(1, false, 2);
    let (job, table) = started(&s);
    let ctx = job
        .register(TaskId::Index(0), 1, 0, &table)
        .expect("register");
    let r = job
        .report_failure(TaskId::Index(0), ctx.instance_id, "x", &table)
        .expect("retry");
    assert_eq!(r.offers, vec![TaskId::Index(0)]);
    let e = job.explain(10);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].1, "retrying");
    assert!(
        e[0].2.contains("1 retry left") || e[0].2.contains("retries left"),
        "{}",
        e[0].2
    );
}

#[test]
fn check_transition_validates_without_changing() {
    let s = flat(1, true, 0);
    let job = Job::new(1, 1, &s).expect("job");
    assert_eq!(
        job.check_transition(JobState::Running).expect("ok"),
        JobState::Ready
    );
    assert_eq!(
        stale_kind(job.check_transition(JobState::Succeeded)),
        StaleKind::InvalidJobStateTransition
    );
    assert_eq!(job.state(), JobState::Ready);
    job.start().expect("start");
    assert_eq!(
        stale_kind(job.check_transition(JobState::Running)),
        StaleKind::JobAlreadyStarted
    );
    let s2 = flat(1, false, 0);
    let job2 = Job::new(2, 1, &s2).expect("job");
    assert!(matches!(
        job2.check_transition(JobState::CommitReady),
        Err(CoreError::InvalidRequest { .. })
    ));
}

#[test]
fn recovery_shapes() {
    let s = flat(3, true, 0);
    let table = InstanceTable::new();
    let ready = Job::recover(1, 1, &s, JobState::Ready, None).expect("ready");
    assert_eq!(ready.state(), JobState::Ready);
    assert!(ready.ready_entries().is_empty());
    let running = Job::recover(2, 1, &s, JobState::Running, None).expect("running");
    assert_eq!(running.state(), JobState::Running);
    assert_eq!(
        running.ready_entries().len(),
        3,
        "DAG restarts from the input tasks"
    );

    let outputs = crate::codec::encode_outputs(&[b"a".as_slice(), b"b", b"c"]).expect("enc");
    let cr = Job::recover(3, 1, &s, JobState::CommitReady, Some(&outputs)).expect("commit-ready");
    assert!(!cr.holds_graph(), "no regular TCBs");
    assert_eq!(cr.ready_entries(), vec![TaskId::Commit]);
    assert_eq!(
        stale_kind(cr.register(TaskId::Index(0), 1, 0, &table)),
        StaleKind::JobNoLongerRunning
    );
    let ctx = cr.register(TaskId::Commit, 1, 0, &table).expect("commit");
    assert_eq!(ctx.task_io.to_vec(), outputs);

    let cl = Job::recover(4, 1, &s, JobState::CleanupReady, None).expect("cleanup-ready");
    assert_eq!(cl.ready_entries(), vec![TaskId::Cleanup]);
    assert!(!cl.holds_graph());

    let kind = |r: Result<Job>| r.expect_err("recovery error").kind();
    assert_eq!(
        kind(Job::recover(5, 1, &s, JobState::CommitReady, None)),
        "MissingJobOutputs"
    );
    assert_eq!(
        kind(Job::recover(5, 1, &s, JobState::CommitReady, Some(b"\x07"))),
        "InvalidJobOutputs"
    );
    let short = crate::codec::encode_outputs(&[b"a".as_slice()]).expect("enc");
    assert_eq!(
        kind(Job::recover(5, 1, &s, JobState::CommitReady, Some(&short))),
        "InvalidJobOutputs"
    );
    let plain = flat(1, false, 0);
    let one = crate::codec::encode_outputs(&[b"a".as_slice()]).expect("enc");
    assert_eq!(
        kind(Job::recover(
            5,
            1,
            &plain,
            JobState::CommitReady,
            Some(&one)
        )),
        "UndefinedCommitTask"
    );
    assert_eq!(
        kind(Job::recover(5, 1, &plain, JobState::CleanupReady, None)),
        "UndefinedCleanupTask"
    );
    for st in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
        let e = Job::recover(5, 1, &s, st, None).expect_err("terminal");
        assert!(matches!(e, CoreError::Recovery { .. }));
        assert!(e.to_string().contains("job 5"), "{e}");
    }
}

/// The outputs frames tasks A and B of a diamond reported on a first run (the input is `x`).
fn diamond_first_run(s: &Submission) -> (Vec<u8>, Vec<u8>) {
    let (job, table) = started(s);
    let (_, _) = run_task(&job, &table, 0, |i| xor(&i[0], 0x01));
    let (_, _) = run_task(&job, &table, 1, |i| xor(&i[0], 0x02));
    let x = s.inputs[0].to_vec();
    let a = xor(&x, 0x01);
    let b = xor(&a, 0x02);
    (frame(&[&a]), frame(&[&b]))
}

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "tasks a, b, c, d named after the diamond they form"
)]
fn recover_running_resumes_from_the_frontier() {
    let s = workloads::diamond(None);
    let (fa, fb) = diamond_first_run(&s);
    let table = InstanceTable::new();
    // Persisted in any order.
    let (job, outcome) = Job::recover_running(7, 1, &s, &[(1, &fb), (0, &fa)]).expect("recover");
    assert!(outcome.is_none());
    assert_eq!(job.state(), JobState::Running);
    assert_eq!(
        job.ready_entries(),
        vec![TaskId::Index(2)],
        "only C is left to start"
    );
    let p = job.progress();
    assert_eq!((p.succeeded, p.ready, p.pending), (2, 1, 1));
    for t in [0, 1] {
        assert_eq!(
            stale_kind(job.register(TaskId::Index(t), 1, 0, &table)),
            StaleKind::TaskAlreadyTerminated,
            "a recovered task never runs again"
        );
    }
    assert_eq!(
        stale_kind(job.register(TaskId::Index(3), 1, 0, &table)),
        StaleKind::TaskNotReady,
        "D still waits for C"
    );
    let x = s.inputs[0].to_vec();
    let a = xor(&x, 0x01);
    let b = xor(&a, 0x02);
    let (seen_c, r) = run_task(&job, &table, 2, |i| xor(&i[0], 0x04));
    assert_eq!(seen_c, vec![a.clone()], "C reads A's persisted output");
    assert_eq!(r.offers, vec![TaskId::Index(3)], "C makes D ready");
    let c = xor(&a, 0x04);
    let (seen_d, r) = run_task(&job, &table, 3, |i| {
        i[0].iter().zip(&i[1]).map(|(p, q)| p ^ q).collect()
    });
    assert_eq!(
        seen_d,
        vec![b.clone(), c.clone()],
        "D reads B's persisted output"
    );
    let o = r.outcome.expect("the last task completes the job");
    assert_eq!(o.kind, OutcomeKind::JobCompleted);
    let d: Vec<u8> = b.iter().zip(&c).map(|(p, q)| p ^ q).collect();
    let outputs = decode_outputs(&o.outputs.expect("outputs"), DEFAULT_MAX_DECOMPRESSED_SIZE)
        .expect("decode");
    assert_eq!(outputs, vec![d]);
    assert_eq!(
        job.complete(1, &table).expect("complete").state,
        JobState::Succeeded
    );
}

#[test]
fn recover_running_reruns_tasks_whose_parent_must_run_again() {
    let s = workloads::diamond(None);
    let (_, fb) = diamond_first_run(&s);
    let table = InstanceTable::new();
    // B's outputs were persisted but A's were not (a write that did not land): B runs again.
    let (job, outcome) = Job::recover_running(7, 1, &s, &[(1, &fb)]).expect("recover");
    assert!(outcome.is_none());
    assert_eq!(job.ready_entries(), vec![TaskId::Index(0)]);
    let p = job.progress();
    assert_eq!((p.succeeded, p.ready, p.pending), (0, 1, 3));
    let (_, r) = run_task(&job, &table, 0, |i| xor(&i[0], 0x01));
    assert_eq!(r.offers, vec![TaskId::Index(1), TaskId::Index(2)]);
    // The same with nothing persisted: the DAG restarts from its input task.
    let (fresh, _) = Job::recover_running(8, 1, &s, &[]).expect("recover");
    assert_eq!(fresh.ready_entries(), vec![TaskId::Index(0)]);
}

#[test]
fn recover_running_with_every_task_persisted_completes() {
    let s = flat(3, true, 0);
    let o = frame(&[b"o"]);
    let finished: Vec<(u32, &[u8])> = (0..3).map(|t| (t, o.as_slice())).collect();
    let (job, outcome) = Job::recover_running(7, 1, &s, &finished).expect("recover");
    let outcome = outcome.expect("every task succeeded: the job completes");
    assert_eq!(outcome.kind, OutcomeKind::JobCompleted);
    assert!(outcome.has_commit);
    let values = decode_outputs(
        &outcome.outputs.expect("outputs"),
        DEFAULT_MAX_DECOMPRESSED_SIZE,
    )
    .expect("decode");
    assert_eq!(values, vec![b"o".to_vec(); 3]);
    assert!(job.ready_entries().is_empty(), "nothing is left to run");
    let table = InstanceTable::new();
    assert_eq!(
        job.complete(1, &table).expect("complete").state,
        JobState::CommitReady
    );
    assert_eq!(job.ready_entries(), vec![TaskId::Commit]);
}

/// A persisted `(task, outputs frame)` entry.
type Finished<'a> = (u32, &'a [u8]);

#[test]
fn recover_running_refuses_bad_persisted_outputs() {
    let s = workloads::diamond(None);
    let one = frame(&[b"x"]);
    let two = frame(&[b"x", b"y"]);
    let cases: [(&[Finished<'_>], &str); 4] = [
        (&[(4, &one)], "task 4 but the graph has 4 tasks"),
        (&[(0, &one), (0, &one)], "twice for task 0"),
        (&[(1, b"\xff")], "task 1 are not a wire frame"),
        (&[(2, &two)], "task 2 hold 2 values but the task declares 1"),
    ];
    for (finished, what) in cases {
        let e = Job::recover_running(7, 1, &s, finished).expect_err("refused");
        assert!(matches!(e, CoreError::Recovery { .. }), "{e:?}");
        assert_eq!(e.kind(), "InvalidTaskOutputs");
        let text = e.to_string();
        assert!(text.contains("job 7") && text.contains(what), "{text}");
    }
}

#[test]
fn soft_timeout_and_force_remove() {
    let s = flat(1, false, 0);
    let (job, table) = started(&s);
    let ctx = job
        .register(TaskId::Index(0), 1, 0, &table)
        .expect("register");
    assert!(job.instance_is_live(TaskId::Index(0), ctx.instance_id));
    job.mark_soft_timeout(TaskId::Index(0));
    assert!(job.force_remove(TaskId::Index(0), ctx.instance_id, &table));
    assert!(!job.force_remove(TaskId::Index(0), ctx.instance_id, &table));
    assert_eq!(job.task_state(TaskId::Index(0)), Some(TaskState::Ready));
    assert!(table.is_empty());
}

#[test]
fn job_failed_is_produced_once_under_concurrency() {
    for _ in 0..50 {
        let s = flat(16, false, 0);
        let (job, table) = started(&s);
        let ctxs: Vec<_> = (0..16)
            .map(|t| {
                job.register(TaskId::Index(t), 1, 0, &table)
                    .expect("register")
            })
            .collect();
        let job = Arc::new(job);
        let table = Arc::new(table);
        let barrier = Arc::new(Barrier::new(16));
        let handles: Vec<_> = ctxs
            .into_iter()
            .map(|ctx| {
                let (job, table, barrier) =
                    (Arc::clone(&job), Arc::clone(&table), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    job.report_failure(ctx.task_id, ctx.instance_id, "x", &table)
                        .expect("report")
                        .outcome
                })
            })
            .collect();
        let outcomes = handles
            .into_iter()
            .filter_map(|h| h.join().expect("join"))
            .count();
        assert_eq!(outcomes, 1);
    }
}

#[test]
fn job_completed_is_produced_once_under_concurrency() {
    for _ in 0..50 {
        let s = flat(16, false, 0);
        let (job, table) = started(&s);
        let ctxs: Vec<_> = (0..16)
            .map(|t| {
                job.register(TaskId::Index(t), 1, 0, &table)
                    .expect("register")
            })
            .collect();
        let job = Arc::new(job);
        let table = Arc::new(table);
        let barrier = Arc::new(Barrier::new(16));
        let handles: Vec<_> = ctxs
            .into_iter()
            .map(|ctx| {
                let (job, table, barrier) =
                    (Arc::clone(&job), Arc::clone(&table), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    job.report_success(ctx.task_id, ctx.instance_id, &frame(&[b"v"]), &table)
                        .expect("report")
                        .outcome
                })
            })
            .collect();
        let outcomes: Vec<Outcome> = handles
            .into_iter()
            .filter_map(|h| h.join().expect("join"))
            .collect();
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].kind, OutcomeKind::JobCompleted);
    }
}

#[test]
fn task_states_show_each_tasks_state_and_failed_attempts() {
    let policy = ExecutionPolicy {
        max_num_retry: 1,
        ..ExecutionPolicy::default()
    };
    let s = workloads::diamond(Some(policy));
    let (job, table) = started(&s);
    let first = job
        .register(TaskId::Index(0), 1, 0, &table)
        .expect("register");
    let r = job
        .report_failure(TaskId::Index(0), first.instance_id, "boom", &table)
        .expect("retried");
    assert!(r.outcome.is_none());
    run_task(&job, &table, 0, |i| xor(&i[0], 0x01));
    job.register(TaskId::Index(1), 1, 0, &table)
        .expect("register b");
    assert_eq!(
        job.task_states(),
        vec![
            (TaskId::Index(0), TaskState::Succeeded, 1, 0),
            (TaskId::Index(1), TaskState::Running, 0, 1),
            (TaskId::Index(2), TaskState::Ready, 0, 0),
            (TaskId::Index(3), TaskState::Pending, 0, 0),
        ]
    );
    // The failure that exhausts the retries counts too.
    let c = job
        .register(TaskId::Index(2), 1, 0, &table)
        .expect("register c");
    job.report_failure(TaskId::Index(2), c.instance_id, "once", &table)
        .expect("retried");
    let c = job
        .register(TaskId::Index(2), 1, 0, &table)
        .expect("register c again");
    job.report_failure(TaskId::Index(2), c.instance_id, "twice", &table)
        .expect("exhausted");
    assert_eq!(
        job.task_states()[2],
        (TaskId::Index(2), TaskState::Failed, 2, 0)
    );
}
