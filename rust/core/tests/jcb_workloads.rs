//! Without a database: flat and neural-net jobs under 64 concurrent mock EMs
//! with injected double failures, cancellation races and an always-failing job.

mod common;

use std::sync::atomic::Ordering;

use common::{drive, neuron, Behaviour, CancelPolicy};
use orbweaver_core::codec::decode_outputs;
use orbweaver_core::policy::ExecutionPolicy;
use orbweaver_core::workloads;
use orbweaver_core::{JobState, Submission};

const WORKERS: usize = 64;

fn policy() -> ExecutionPolicy {
    ExecutionPolicy {
        max_num_retry: 3,
        max_num_instances: 2,
        ..ExecutionPolicy::default()
    }
}

fn flat(n: usize, termination: bool) -> Submission {
    workloads::flat(n, 1024, policy(), termination)
}

fn nn() -> Submission {
    workloads::neural_net(10, 1000, 25, 128, policy(), 42)
}

/// The job outputs computed in-process, for comparison.
fn expected_outputs(s: &Submission) -> Vec<Vec<u8>> {
    let g = &s.graph;
    let mut values: Vec<Option<Vec<u8>>> = vec![None; g.num_deps()];
    for (&d, v) in g.graph_inputs().iter().zip(s.inputs.iter()) {
        values[d as usize] = Some(v.to_vec());
    }
    for t in 0..g.num_tasks() as u32 {
        let ins: Vec<&[u8]> = g
            .task_inputs(t)
            .iter()
            .map(|&d| values[d as usize].as_deref().expect("topological order"))
            .collect();
        let out = neuron(&ins);
        for d in g.task_outputs(t) {
            values[d as usize] = Some(out.clone());
        }
    }
    g.graph_outputs()
        .iter()
        .map(|&d| values[d as usize].clone().expect("output"))
        .collect()
}

#[test]
fn test_flat_success_without_db() {
    let s = flat(10_000, true);
    let run = drive(
        &s,
        WORKERS,
        Behaviour::InjectDoubleFailures,
        CancelPolicy::Never,
        1,
    );
    assert_eq!(run.state, JobState::Succeeded);
    assert_eq!(run.stats.successes.load(Ordering::Relaxed), 10_000);
    assert_eq!(run.stats.succeeded_tasks.lock().len(), 10_000);
    assert!(
        run.stats.failures.load(Ordering::Relaxed) > 0,
        "double failures were injected"
    );
    assert_eq!(
        run.stats.commit_runs.load(Ordering::Relaxed),
        1,
        "commit runs once"
    );
    assert_eq!(
        run.stats.cleanup_runs.load(Ordering::Relaxed),
        0,
        "cleanup never"
    );
    let outputs = decode_outputs(&run.outputs.expect("outputs"), 1 << 30).expect("decode");
    assert_eq!(outputs, expected_outputs(&s));
}

#[test]
fn test_flat_cancel_without_db() {
    let s = flat(10_000, true);
    let run = drive(
        &s,
        WORKERS,
        Behaviour::InjectDoubleFailures,
        CancelPolicy::Immediately,
        2,
    );
    assert_eq!(run.state, JobState::Cancelled);
    assert_eq!(run.stats.commit_runs.load(Ordering::Relaxed), 0);
    assert_eq!(
        run.stats.cleanup_runs.load(Ordering::Relaxed),
        1,
        "cleanup runs once"
    );
}

#[test]
fn test_neural_net_success_without_db() {
    let s = nn();
    assert_eq!(s.graph.num_edges(), 1000 + 9 * 1000 * 25);
    let run = drive(
        &s,
        WORKERS,
        Behaviour::InjectDoubleFailures,
        CancelPolicy::Never,
        3,
    );
    assert_eq!(run.state, JobState::Succeeded);
    assert_eq!(run.stats.succeeded_tasks.lock().len(), 10_000);
    assert_eq!(run.stats.commit_runs.load(Ordering::Relaxed), 0);
    assert_eq!(run.stats.cleanup_runs.load(Ordering::Relaxed), 0);
    let outputs = decode_outputs(&run.outputs.expect("outputs"), 1 << 30).expect("decode");
    assert_eq!(
        outputs,
        expected_outputs(&s),
        "matches the in-process computation"
    );
}

#[test]
fn test_neural_net_cancel_without_db() {
    let run = drive(
        &nn(),
        WORKERS,
        Behaviour::InjectDoubleFailures,
        CancelPolicy::Immediately,
        4,
    );
    assert_eq!(run.state, JobState::Cancelled);
    assert_eq!(run.stats.commit_runs.load(Ordering::Relaxed), 0);
    assert_eq!(run.stats.cleanup_runs.load(Ordering::Relaxed), 0);
}

#[test]
fn test_always_fail_terminates_job_without_db() {
    let s = workloads::flat(3, 16, policy(), false);
    let run = drive(&s, WORKERS, Behaviour::AlwaysFail, CancelPolicy::Never, 5);
    assert_eq!(run.state, JobState::Failed);
    assert_eq!(run.stats.successes.load(Ordering::Relaxed), 0);
    assert!(run.error.is_some_and(|e| e.contains("always fails")));
}

#[test]
fn test_concurrent_success_and_cancel_without_db() {
    let mut seen = std::collections::HashSet::new();
    for seed in 0..20 {
        for termination in [false, true] {
            let s = flat(100, termination);
            let run = drive(
                &s,
                WORKERS,
                Behaviour::InjectDoubleFailures,
                CancelPolicy::AfterOneMs,
                seed,
            );
            assert!(
                matches!(run.state, JobState::Succeeded | JobState::Cancelled),
                "ended {}",
                run.state
            );
            let commits = run.stats.commit_runs.load(Ordering::Relaxed);
            let cleanups = run.stats.cleanup_runs.load(Ordering::Relaxed);
            if run.state == JobState::Succeeded {
                assert_eq!(cleanups, 0);
                assert_eq!(commits, usize::from(termination));
            } else {
                assert_eq!(cleanups, usize::from(termination));
            }
            seen.insert(run.state);
        }
    }
    assert!(!seen.is_empty());
}
