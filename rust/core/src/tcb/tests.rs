//! The tests run for both regular and termination TCBs.

use std::sync::{Arc, Barrier};

use super::*;
use crate::policy::ExecutionPolicy;

fn regular(max_retry: u32) -> Arc<Tcb> {
    Arc::new(Tcb::new(0, max_retry))
}

fn termination(max_retry: u32) -> Arc<Tcb> {
    let policy = ExecutionPolicy {
        max_num_retry: max_retry,
        ..ExecutionPolicy::default()
    };
    let t = TerminationTcb::new(Arc::new(TdlContext::new("pkg", "commit")), policy);
    assert_eq!(
        t.tcb.state(),
        TaskState::Ready,
        "termination TCBs are created Ready"
    );
    Arc::new(t.tcb)
}

fn concurrent_register(tcb: &Arc<Tcb>, n: u64, limit: u32) -> Vec<Result<()>> {
    let barrier = Arc::new(Barrier::new(n as usize));
    let handles: Vec<_> = (1..=n)
        .map(|id| {
            let tcb = Arc::clone(tcb);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                tcb.register(id, limit)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}

fn kind_of(r: &Result<impl std::fmt::Debug>) -> Option<StaleKind> {
    r.as_ref().err().and_then(CoreError::stale_kind)
}

macro_rules! tcb_tests {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn concurrent_registration_up_to_limit() {
                let tcb = $make(0);
                let r = concurrent_register(&tcb, 10, 10);
                assert!(r.iter().all(Result::is_ok), "{r:?}");
                assert_eq!(tcb.snapshot().live, 10);
                assert_eq!(tcb.state(), TaskState::Running);
            }

            #[test]
            fn concurrent_registration_exceeding_limit() {
                let tcb = $make(0);
                let r = concurrent_register(&tcb, 16, 10);
                assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 10);
                assert_eq!(
                    r.iter()
                        .filter(|r| kind_of(r) == Some(StaleKind::TaskInstanceLimitExceeded))
                        .count(),
                    6
                );
            }

            #[test]
            fn registration_after_termination() {
                let tcb = $make(0);
                tcb.register(100, 1).expect("register");
                tcb.succeed(100).expect("succeed");
                let r = concurrent_register(&tcb, 10, 10);
                assert!(
                    r.iter()
                        .all(|r| kind_of(r) == Some(StaleKind::TaskAlreadyTerminated)),
                    "{r:?}"
                );
            }

            #[test]
            fn fail_first_instance_then_succeed_new() {
                let tcb = $make(1);
                tcb.register(1, 1).expect("A");
                assert_eq!(tcb.fail(1).expect("fail A"), FailureEffect::Retry);
                assert!(!tcb.state().is_terminal());
                assert_eq!(tcb.state(), TaskState::Ready);
                tcb.register(2, 1).expect("B");
                tcb.succeed(2).expect("succeed B");
                assert_eq!(tcb.state(), TaskState::Succeeded);
            }

            #[test]
            fn fail_instance_then_reject_stale_and_surviving() {
                let tcb = $make(0);
                tcb.register(1, 2).expect("A");
                tcb.register(2, 2).expect("B");
                assert_eq!(tcb.fail(1).expect("fail A"), FailureEffect::Exhausted);
                assert_eq!(tcb.state(), TaskState::Failed);
                assert_eq!(
                    kind_of(&tcb.succeed(1)),
                    Some(StaleKind::InvalidTaskInstanceId)
                );
                assert_eq!(
                    kind_of(&tcb.succeed(2)),
                    Some(StaleKind::TaskAlreadyTerminated)
                );
                assert_eq!(
                    tcb.snapshot().live,
                    0,
                    "surviving id removed as a side effect"
                );
            }

            #[test]
            fn force_remove_only_instance_resets_to_ready() {
                let tcb = $make(0);
                tcb.register(1, 1).expect("A");
                assert!(tcb.force_remove(1));
                assert_eq!(tcb.state(), TaskState::Ready);
                assert_eq!(
                    kind_of(&tcb.succeed(1)),
                    Some(StaleKind::InvalidTaskInstanceId)
                );
                tcb.register(2, 1).expect("new registration");
                tcb.succeed(2).expect("succeed");
                assert_eq!(tcb.snapshot().retries_left, 0, "no retry consumed");
            }

            #[test]
            fn force_remove_one_of_two_instances() {
                let tcb = $make(0);
                tcb.register(1, 2).expect("A");
                tcb.register(2, 2).expect("B");
                assert!(tcb.force_remove(1));
                assert!(!tcb.force_remove(1), "second removal is a no-op");
                assert_eq!(tcb.state(), TaskState::Running);
                assert_eq!(
                    kind_of(&tcb.succeed(1)),
                    Some(StaleKind::InvalidTaskInstanceId)
                );
                tcb.succeed(2).expect("B succeeds");
            }

            #[test]
            fn retries_are_counted_exactly() {
                // max_num_retry = 3 tolerates 3 failures and fails on the 4th.
                let tcb = $make(3);
                for id in 1..=3 {
                    tcb.register(id, 1).expect("register");
                    assert_eq!(tcb.fail(id).expect("fail"), FailureEffect::Retry);
                }
                tcb.register(4, 1).expect("register");
                assert_eq!(tcb.fail(4).expect("fail"), FailureEffect::Exhausted);
                assert_eq!(tcb.state(), TaskState::Failed);
            }

            #[test]
            fn failure_with_other_live_instance_stays_running() {
                let tcb = $make(1);
                tcb.register(1, 2).expect("A");
                tcb.register(2, 2).expect("B");
                assert_eq!(tcb.fail(1).expect("fail"), FailureEffect::Retry);
                assert_eq!(tcb.state(), TaskState::Running);
                tcb.register(3, 2).expect("re-registration up to the limit");
            }

            #[test]
            fn cancel_returns_live_ids() {
                let tcb = $make(0);
                tcb.register(7, 2).expect("A");
                assert_eq!(tcb.cancel(), vec![7]);
                assert_eq!(tcb.state(), TaskState::Cancelled);
                assert_eq!(
                    kind_of(&tcb.register(8, 2)),
                    Some(StaleKind::TaskAlreadyTerminated)
                );
            }
        }
    };
}

tcb_tests!(regular_tcb, regular);
tcb_tests!(termination_tcb, termination);

#[test]
fn registration_on_pending_task_is_stale_task_not_ready() {
    let tcb = Tcb::new(2, 0);
    let r = tcb.register(1, 1);
    assert_eq!(kind_of(&r), Some(StaleKind::TaskNotReady));
    assert!(!tcb.parent_succeeded().expect("first parent"));
    assert!(tcb.parent_succeeded().expect("second parent"));
    assert_eq!(tcb.state(), TaskState::Ready);
    assert!(tcb.parent_succeeded().is_err(), "underflow is internal");
}

#[test]
fn exactly_one_parent_observes_readiness() {
    for _ in 0..200 {
        let tcb = Arc::new(Tcb::new(8, 0));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let tcb = Arc::clone(&tcb);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    tcb.parent_succeeded().expect("decrement")
                })
            })
            .collect();
        let ready = handles
            .into_iter()
            .filter(|_| true)
            .map(|h| h.join().expect("thread"))
            .filter(|&b| b)
            .count();
        assert_eq!(ready, 1);
    }
}

#[test]
fn a_refused_success_fails_the_task_for_good_and_admission_runs_only_for_live_instances() {
    let tcb = regular(3);
    tcb.register(1, 2).expect("register");
    tcb.register(2, 2).expect("register");
    let mut ran = 0;
    let e = tcb
        .succeed_if(9, || {
            ran += 1;
            true
        })
        .expect_err("not live");
    assert_eq!(e.stale_kind(), Some(StaleKind::InvalidTaskInstanceId));
    assert_eq!(ran, 0, "admission never runs for a stale report");
    assert!(!tcb.succeed_if(1, || false).expect("live"));
    assert_eq!(
        tcb.state(),
        TaskState::Failed,
        "no retry, retries left or not"
    );
    assert_eq!(
        tcb.succeed(2).expect_err("terminal").stale_kind(),
        Some(StaleKind::TaskAlreadyTerminated)
    );
}

#[test]
fn can_register_answers_like_register_without_changing_anything() {
    let tcb = Arc::new(Tcb::new(1, 0));
    assert_eq!(
        tcb.can_register(1).expect_err("pending").stale_kind(),
        Some(StaleKind::TaskNotReady)
    );
    assert!(tcb.parent_succeeded().expect("ready"));
    tcb.can_register(1).expect("ready");
    assert_eq!(tcb.state(), TaskState::Ready);
    tcb.register(1, 1).expect("register");
    assert_eq!(
        tcb.can_register(1).expect_err("limit").stale_kind(),
        Some(StaleKind::TaskInstanceLimitExceeded)
    );
    tcb.can_register(2).expect("below a higher limit");
    assert_eq!(tcb.snapshot().live, 1);
}
