//! Job-level transitions under the write lock: start, and the way to a terminal state
//! (complete, cancel, fail, finish), each re-validated against the current state.

use std::sync::atomic::Ordering;

use super::{stale, Inner, Job};
use crate::error::{CoreError, Result, StaleKind};
use crate::ids::TaskId;
use crate::instances::InstanceTable;
use crate::state::{JobState, TaskState};

/// Result of a job-level transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: JobState,
    pub offers: Vec<TaskId>,
}

impl Job {
    /// Validate `target` against the current state without changing anything.
    ///
    /// # Errors
    /// Stale with the kind matching the spec's guard predicates.
    pub fn check_transition(&self, target: JobState) -> Result<JobState> {
        let cur = self.inner.read().state;
        self.check(cur, target)?;
        Ok(cur)
    }

    fn check(&self, cur: JobState, target: JobState) -> Result<()> {
        let id = self.id;
        if target == JobState::CommitReady && !self.has_commit {
            return Err(CoreError::request(
                "UndefinedCommitTask",
                format!("job {id} has no commit task"),
            ));
        }
        if target == JobState::CleanupReady && !self.has_cleanup {
            return Err(CoreError::request(
                "UndefinedCleanupTask",
                format!("job {id} has no cleanup task"),
            ));
        }
        if JobState::is_valid_transition(cur, target) {
            return Ok(());
        }
        let kind = match (cur, target) {
            (JobState::Cancelled, JobState::Cancelled | JobState::CleanupReady) => {
                StaleKind::JobAlreadyCancelled
            }
            (c, _) if c.is_terminal() => StaleKind::JobAlreadyTerminated,
            (_, JobState::Running) => StaleKind::JobAlreadyStarted,
            (JobState::CleanupReady, JobState::Cancelled | JobState::CleanupReady) => {
                StaleKind::JobCancellationAlreadyRequested
            }
            _ => StaleKind::InvalidJobStateTransition,
        };
        stale(kind, format!("job {id} cannot go from {cur} to {target}"))
    }

    /// Ready -> Running. Offers the input tasks.
    ///
    /// # Errors
    /// Stale `JobAlreadyStarted` unless Ready.
    pub fn start(&self) -> Result<Transition> {
        let mut inner = self.inner.write();
        if inner.state != JobState::Ready {
            return stale(
                StaleKind::JobAlreadyStarted,
                format!(
                    "job {} was already started (it is {})",
                    self.id, inner.state
                ),
            );
        }
        let run = self.run(&inner)?;
        let offers = (0..self.total_tasks)
            .filter(|&t| run.tcbs[t as usize].state() == TaskState::Ready)
            .map(TaskId::Index)
            .collect();
        inner.state = JobState::Running;
        Ok(Transition {
            state: JobState::Running,
            offers,
        })
    }

    /// Drop the regular graph, forgetting the instance-table entries of still-live instances.
    fn release(inner: &mut Inner, table: &InstanceTable) {
        if let Some(run) = inner.run.take() {
            for t in &*run.tcbs {
                for id in t.cancel() {
                    table.remove(id);
                }
            }
            inner.final_progress = run.progress();
        }
    }

    fn cancel_tasks(inner: &mut Inner, table: &InstanceTable, commit: bool, cleanup: bool) {
        if let Some(run) = &inner.run {
            for t in &*run.tcbs {
                for id in t.cancel() {
                    table.remove(id);
                }
            }
        }
        let terms = [
            commit.then_some(&inner.commit),
            cleanup.then_some(&inner.cleanup),
        ];
        for t in terms.into_iter().flatten().flatten() {
            for id in t.tcb.cancel() {
                table.remove(id);
            }
        }
    }

    /// After `JobCompleted` was persisted: Running -> CommitReady (commit offered) or Succeeded.
    /// Releases the task graph; the outputs stay.
    ///
    /// # Errors
    /// Stale if the job is no longer Running (e.g. a cancel won the race); `InvalidRequest` if
    /// tasks are still unfinished.
    pub fn complete(&self, now_ms: u64, table: &InstanceTable) -> Result<Transition> {
        let mut inner = self.inner.write();
        match inner.state {
            JobState::Running => {}
            JobState::Ready => {
                return stale(
                    StaleKind::JobNotStarted,
                    format!("job {} has not been started", self.id),
                )
            }
            s => {
                return stale(
                    StaleKind::JobNoLongerRunning,
                    format!("job {} is no longer running (it is {s})", self.id),
                )
            }
        }
        let left = self.run(&inner)?.incomplete.load(Ordering::Acquire);
        if left > 0 || inner.outputs.get().is_none() {
            return Err(CoreError::request(
                "JobNotCompleted",
                format!("job {} still has {left} unfinished task(s)", self.id),
            ));
        }
        Self::release(&mut inner, table);
        if inner.commit.is_some() {
            inner.state = JobState::CommitReady;
            Ok(Transition {
                state: JobState::CommitReady,
                offers: vec![TaskId::Commit],
            })
        } else {
            inner.state = JobState::Succeeded;
            inner.terminal_at_ms = Some(now_ms);
            Ok(Transition {
                state: JobState::Succeeded,
                offers: Vec::new(),
            })
        }
    }

    /// Cancel: Ready -> Cancelled (nothing ran, so no cleanup); Running / CommitReady ->
    /// CleanupReady when there is a cleanup task (cleanup offered), Running -> Cancelled otherwise.
    /// Every non-terminal task is cancelled and the graph released.
    ///
    /// # Errors
    /// Stale: CommitReady without cleanup (not in the table), CleanupReady
    /// (`JobCancellationAlreadyRequested`), terminal (`JobAlreadyCancelled` /
    /// `JobAlreadyTerminated`).
    pub fn cancel(&self, now_ms: u64, table: &InstanceTable) -> Result<Transition> {
        let mut inner = self.inner.write();
        let target = match inner.state {
            JobState::CleanupReady => {
                return stale(
                    StaleKind::JobCancellationAlreadyRequested,
                    format!("job {} is already being cancelled (CleanupReady)", self.id),
                )
            }
            JobState::Ready => JobState::Cancelled,
            JobState::Running | JobState::CommitReady if self.has_cleanup => JobState::CleanupReady,
            _ => JobState::Cancelled,
        };
        self.check(inner.state, target)?;
        Self::cancel_tasks(&mut inner, table, true, false);
        Self::release(&mut inner, table);
        inner.state = target;
        if target == JobState::CleanupReady {
            Ok(Transition {
                state: target,
                offers: vec![TaskId::Cleanup],
            })
        } else {
            Self::cancel_tasks(&mut inner, table, true, true);
            inner.terminal_at_ms = Some(now_ms);
            Ok(Transition {
                state: target,
                offers: Vec::new(),
            })
        }
    }

    /// -> Failed: cancels every other task and releases the graph (a failed job leaks nothing).
    ///
    /// # Errors
    /// Stale if terminal (or Ready, which cannot fail).
    pub fn fail(&self, message: &str, now_ms: u64, table: &InstanceTable) -> Result<Transition> {
        let mut inner = self.inner.write();
        self.check(inner.state, JobState::Failed)?;
        Self::cancel_tasks(&mut inner, table, true, true);
        Self::release(&mut inner, table);
        inner.state = JobState::Failed;
        inner.error = Some(message.into());
        inner.terminal_at_ms = Some(now_ms);
        Ok(Transition {
            state: JobState::Failed,
            offers: Vec::new(),
        })
    }

    /// After a termination task's success was persisted: CommitReady -> Succeeded, CleanupReady
    /// -> Cancelled.
    ///
    /// # Errors
    /// Stale in any other state; `InvalidRequest` if the termination task has not succeeded.
    pub fn finish(&self, now_ms: u64, table: &InstanceTable) -> Result<Transition> {
        let mut inner = self.inner.write();
        let (task, target) = match inner.state {
            JobState::CommitReady => (TaskId::Commit, JobState::Succeeded),
            JobState::CleanupReady => (TaskId::Cleanup, JobState::Cancelled),
            s if s.is_terminal() => {
                return stale(
                    StaleKind::JobAlreadyTerminated,
                    format!("job {} already terminated ({s})", self.id),
                )
            }
            s => {
                return stale(
                    StaleKind::InvalidJobStateTransition,
                    format!("job {} is {s}: no termination task to finish", self.id),
                )
            }
        };
        let term = self.termination(&inner, task)?;
        if term.tcb.state() != TaskState::Succeeded {
            return Err(CoreError::request(
                "TerminationTaskNotSucceeded",
                format!("job {}: the {task} has not succeeded", self.id),
            ));
        }
        Self::cancel_tasks(&mut inner, table, true, true);
        inner.state = target;
        inner.terminal_at_ms = Some(now_ms);
        Ok(Transition {
            state: target,
            offers: Vec::new(),
        })
    }
}
