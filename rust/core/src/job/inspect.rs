//! Read-only views of a job: what the queue may still deliver, what `resend_ready` offers, why
//! tasks are not running (`explain`) and every task's state and attempts (`task_states`).

use super::Job;
use crate::ids::TaskId;
use crate::policy::ExecutionPolicy;
use crate::state::{JobState, TaskState};
use crate::tcb::TcbSnapshot;

impl Job {
    /// Whether a queue entry for `task` is still worth delivering (spill refill): the job is in
    /// the task's lane state and an instance could still start.
    #[must_use]
    pub fn is_schedulable(&self, task: TaskId) -> bool {
        let inner = self.inner.read();
        self.guard(&inner, task).is_ok()
            && inner
                .tcb_of(task)
                .is_some_and(|t| t.is_schedulable(inner.max_instances(task)))
    }

    /// Entries `resend_ready` offers: every Ready task (Running), the commit task (CommitReady),
    /// the cleanup task (CleanupReady).
    #[must_use]
    pub fn ready_entries(&self) -> Vec<TaskId> {
        let inner = self.inner.read();
        match inner.state {
            JobState::Running => inner.run.as_ref().map_or_else(Vec::new, |run| {
                (0..self.total_tasks)
                    .filter(|&t| run.tcbs[t as usize].state() == TaskState::Ready)
                    .map(TaskId::Index)
                    .collect()
            }),
            JobState::CommitReady if inner.commit.is_some() => vec![TaskId::Commit],
            JobState::CleanupReady if inner.cleanup.is_some() => vec![TaskId::Cleanup],
            _ => Vec::new(),
        }
    }

    /// Why non-terminal tasks are not running: `(task, reason, detail)`, at most `limit`.
    #[must_use]
    pub fn explain(&self, limit: usize) -> Vec<(TaskId, &'static str, String)> {
        let inner = self.inner.read();
        let mut out = Vec::new();
        let mut push = |task: TaskId, s: TcbSnapshot, policy: &ExecutionPolicy, parents: usize| {
            if out.len() >= limit || s.state.is_terminal() {
                return;
            }
            let max_i = policy.max_num_instances;
            let failures = policy.max_num_retry - s.retries_left.min(policy.max_num_retry);
            let item = match s.state {
                TaskState::Pending => (
                    "pending_parents",
                    format!("waiting for {} of {parents} parent task(s)", s.unfinished_parents),
                ),
                TaskState::Ready if failures > 0 => (
                    "retrying",
                    format!(
                        "failed {failures} time(s), {} retr{} left; waiting for an execution manager",
                        s.retries_left,
                        if s.retries_left == 1 { "y" } else { "ies" }
                    ),
                ),
                TaskState::Ready => ("queued", "ready; waiting for an execution manager".into()),
                TaskState::Running if s.soft_timed_out && s.live as u32 >= max_i => (
                    "instance_limit",
                    format!(
                        "soft timeout passed but {} of {max_i} instance(s) are live; no new \
                         instance can start",
                        s.live
                    ),
                ),
                _ => ("running", format!("{} of {max_i} instance(s) live", s.live)),
            };
            out.push((task, item.0, item.1));
        };
        if let Some(run) = &inner.run {
            if inner.state == JobState::Running {
                for t in 0..self.total_tasks {
                    push(
                        TaskId::Index(t),
                        run.tcbs[t as usize].snapshot(),
                        run.graph.policy(t),
                        run.graph.parents(t).len(),
                    );
                }
            }
        }
        for (task, term, st) in [
            (TaskId::Commit, &inner.commit, JobState::CommitReady),
            (TaskId::Cleanup, &inner.cleanup, JobState::CleanupReady),
        ] {
            if let (Some(term), true) = (term, inner.state == st) {
                push(task, term.tcb.snapshot(), &term.policy, 0);
            }
        }
        out
    }

    /// Every task's state, failed attempts and live instances: the regular tasks while the job
    /// holds its graph (until it leaves Running), then its commit and cleanup tasks, if any.
    #[must_use]
    pub fn task_states(&self) -> Vec<(TaskId, TaskState, u32, usize)> {
        let inner = self.inner.read();
        let mut out = Vec::new();
        let mut push = |task: TaskId, s: TcbSnapshot, policy: &ExecutionPolicy| {
            let retries_used = policy.max_num_retry - s.retries_left.min(policy.max_num_retry);
            // The failure that exhausted the retries consumed none.
            let failures = retries_used + u32::from(s.state == TaskState::Failed);
            out.push((task, s.state, failures, s.live));
        };
        if let Some(run) = &inner.run {
            for t in 0..self.total_tasks {
                push(
                    TaskId::Index(t),
                    run.tcbs[t as usize].snapshot(),
                    run.graph.policy(t),
                );
            }
        }
        for (task, term) in [
            (TaskId::Commit, &inner.commit),
            (TaskId::Cleanup, &inner.cleanup),
        ] {
            if let Some(term) = term {
                push(task, term.tcb.snapshot(), &term.policy);
            }
        }
        out
    }

    /// Test / tooling view of one TCB.
    #[cfg(any(test, feature = "test-support"))]
    #[must_use]
    pub fn task_state(&self, task: TaskId) -> Option<TaskState> {
        let inner = self.inner.read();
        inner.tcb_of(task).map(crate::tcb::Tcb::state)
    }

    /// Whether the regular graph (TCBs and slots) is still held.
    #[cfg(any(test, feature = "test-support"))]
    #[must_use]
    pub fn holds_graph(&self) -> bool {
        self.inner.read().run.is_some()
    }
}
