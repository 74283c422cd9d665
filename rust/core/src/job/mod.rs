//! Job control block (JCB): the state of one job in the cache.
//!
//! Locking: per-task operations (register / report) take the JCB *read* lock and are serialised
//! per task by the TCB mutex, so many tasks of one job progress in parallel; job-level transitions
//! (start, complete, cancel, fail, finish) take the *write* lock. Nothing here ever enqueues: the
//! operations return the tasks to offer and the cache offers them after the lock is released, so a
//! full queue lane can never block a lock holder.
//!
//! Job-level transitions are two-phase because the caller persists them first: a report returns
//! an [`Outcome`] (produced exactly once), the caller writes the DB, then calls
//! `complete` / `fail` / `finish`, which re-validate against the current state.
//!
//! Every request is validated before anything is mutated (bogus task index, wrong output count,
//! malformed outputs frame => `InvalidRequest`, nothing changed).
//!
//! The control block is split by phase, each an `impl Job` of its own:
//! * `build`: a fresh job and the recovery of a persisted one;
//! * `register`: task instances handed out, and their bookkeeping outside reports (liveness,
//!   loss with their EM, soft timeouts);
//! * `report`: success and failure reports, readiness propagation, job-level outcomes;
//! * `transition`: job-level transitions (start, complete, cancel, fail, finish);
//! * `inspect`: read-only views for the queue and for operators (`explain`).
//!
//! This file holds the state they share and the lane guards every phase validates against.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use crate::error::{CoreError, Result, StaleKind};
use crate::graph::TaskGraph;
use crate::ids::{JobId, ResourceGroupId, TaskId, TaskIndex};
use crate::slot::{SlotReader, SlotTable, SlotWriter};
use crate::state::{JobState, TaskState};
use crate::tcb::{Tcb, TerminationTcb};
use crate::Payload;

mod build;
mod inspect;
mod register;
mod report;
mod transition;

pub use register::{ExecutionContext, ReplyBudget, TaskIo, REPLY_FULL, TASK_INPUTS_TOO_LARGE};
pub use report::{Outcome, OutcomeKind, Report, Reported};
pub use transition::Transition;

/// Task counts by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub pending: u32,
    pub ready: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
}

impl Progress {
    fn add(&mut self, s: TaskState) {
        match s {
            TaskState::Pending => self.pending += 1,
            TaskState::Ready => self.ready += 1,
            TaskState::Running => self.running += 1,
            TaskState::Succeeded => self.succeeded += 1,
            TaskState::Failed => self.failed += 1,
            TaskState::Cancelled => self.cancelled += 1,
        }
    }
}

/// Byte limits on what a job keeps in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Summed payload size of one success report's outputs.
    pub max_task_output_bytes: u64,
    /// Task outputs plus graph inputs held by one running job.
    pub max_job_bytes: u64,
}

impl OutputLimits {
    /// 1 GiB per task's outputs, no per-job limit.
    pub const DEFAULT: Self = Self {
        max_task_output_bytes: 1 << 30,
        max_job_bytes: u64::MAX,
    };
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The regular task graph of a running job: TCBs, slots and the capabilities on them. Dropped as a
/// whole when the job leaves Running (or fails), which frees every intermediate value.
#[derive(Debug)]
struct Run {
    graph: Arc<TaskGraph>,
    slots: SlotTable,
    /// Input readers, laid out like `graph.all_task_inputs()`.
    readers: Box<[SlotReader]>,
    /// One writer per data object, indexed by dependency index (graph-input writers were used
    /// once, at construction).
    writers: Box<[SlotWriter]>,
    /// Job-output readers.
    outputs: Box<[SlotReader]>,
    tcbs: Box<[Tcb]>,
    /// Regular tasks not yet succeeded; the report that takes it to zero completes the job.
    incomplete: AtomicU32,
    /// Payload bytes held in the slots: graph inputs plus every stored task output.
    held: AtomicU64,
}

impl Run {
    fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for t in &*self.tcbs {
            p.add(t.state());
        }
        p
    }
}

#[derive(Debug)]
struct Inner {
    state: JobState,
    run: Option<Run>,
    commit: Option<TerminationTcb>,
    cleanup: Option<TerminationTcb>,
    /// Graph inputs, kept for the cleanup task's `task_io` (only when there is a cleanup task).
    graph_inputs: Option<Arc<[Payload]>>,
    /// Self-describing job outputs, set once by the completing report (or by recovery).
    outputs: OnceLock<Payload>,
    /// `drop_outputs` freed them (Succeeded only).
    outputs_released: bool,
    error: Option<Box<str>>,
    terminal_at_ms: Option<u64>,
    /// Counts frozen when the run was released.
    final_progress: Progress,
    /// A `JobFailed` outcome was produced (at most one per job).
    failure_reported: AtomicBool,
}

/// One job in the cache.
#[derive(Debug)]
pub struct Job {
    id: JobId,
    resource_group: ResourceGroupId,
    total_tasks: u32,
    has_commit: bool,
    has_cleanup: bool,
    limits: OutputLimits,
    inner: RwLock<Inner>,
}

fn stale<T>(kind: StaleKind, msg: String) -> Result<T> {
    Err(CoreError::stale(kind, msg))
}

impl Job {
    #[must_use]
    pub const fn limits(&self) -> OutputLimits {
        self.limits
    }

    #[must_use]
    pub const fn id(&self) -> JobId {
        self.id
    }

    #[must_use]
    pub const fn resource_group(&self) -> ResourceGroupId {
        self.resource_group
    }

    #[must_use]
    pub const fn has_commit(&self) -> bool {
        self.has_commit
    }

    #[must_use]
    pub const fn has_cleanup(&self) -> bool {
        self.has_cleanup
    }

    #[must_use]
    pub const fn total_tasks(&self) -> u32 {
        self.total_tasks
    }

    #[must_use]
    pub fn state(&self) -> JobState {
        self.inner.read().state
    }

    #[must_use]
    pub fn error(&self) -> Option<String> {
        self.inner.read().error.as_deref().map(str::to_string)
    }

    #[must_use]
    pub fn terminal_at_ms(&self) -> Option<u64> {
        self.inner.read().terminal_at_ms
    }

    /// Free the cached outputs of a Succeeded job (the caller keeps them in its database).
    /// Returns whether outputs were freed; any other state (a CommitReady job's commit task still
    /// needs them) or outputs already released: `false`, nothing changes.
    pub fn drop_outputs(&self) -> bool {
        let mut inner = self.inner.write();
        if inner.state != JobState::Succeeded || inner.outputs.get().is_none() {
            return false;
        }
        inner.outputs = OnceLock::new();
        inner.outputs_released = true;
        true
    }

    /// Self-describing job outputs (Succeeded, or CommitReady where the commit task reads them).
    ///
    /// # Errors
    /// Stale `JobNotSucceeded` in any other state; `OutputsReleased` after [`Self::drop_outputs`].
    pub fn outputs(&self) -> Result<Payload> {
        let inner = self.inner.read();
        if inner.outputs_released {
            return Err(CoreError::OutputsReleased(self.id));
        }
        match (inner.state, inner.outputs.get()) {
            (JobState::Succeeded | JobState::CommitReady, Some(o)) => Ok(Arc::clone(o)),
            (s, _) => stale(
                StaleKind::JobNotSucceeded,
                format!(
                    "job {} is {s}; outputs are only available once it succeeded",
                    self.id
                ),
            ),
        }
    }

    #[must_use]
    pub fn progress(&self) -> Progress {
        let inner = self.inner.read();
        inner
            .run
            .as_ref()
            .map_or(inner.final_progress, Run::progress)
    }

    fn check_index(&self, t: TaskIndex) -> Result<()> {
        if t < self.total_tasks {
            Ok(())
        } else {
            Err(CoreError::request(
                "TaskIndexOutOfBound",
                format!(
                    "job {} has no task {t} (it has {} tasks)",
                    self.id, self.total_tasks
                ),
            ))
        }
    }

    fn termination<'a>(&self, inner: &'a Inner, task: TaskId) -> Result<&'a TerminationTcb> {
        let (tcb, has, kind, name) = match task {
            TaskId::Commit => (
                &inner.commit,
                self.has_commit,
                "UndefinedCommitTask",
                "commit",
            ),
            _ => (
                &inner.cleanup,
                self.has_cleanup,
                "UndefinedCleanupTask",
                "cleanup",
            ),
        };
        if !has {
            return Err(CoreError::request(
                kind,
                format!("job {} has no {name} task", self.id),
            ));
        }
        tcb.as_ref().ok_or_else(|| {
            CoreError::internal(
                "TaskGraphCorrupted",
                format!("job {} lost its {name} task control block", self.id),
            )
        })
    }

    /// Validate the task id and the job-state guard of its lane.
    fn guard(&self, inner: &Inner, task: TaskId) -> Result<()> {
        let s = inner.state;
        match task {
            TaskId::Index(t) => {
                self.check_index(t)?;
                match s {
                    JobState::Running => Ok(()),
                    JobState::Ready => stale(
                        StaleKind::JobNotStarted,
                        format!("job {} has not been started", self.id),
                    ),
                    _ => stale(
                        StaleKind::JobNoLongerRunning,
                        format!("job {} is no longer running (it is {s})", self.id),
                    ),
                }
            }
            TaskId::Commit => {
                self.termination(inner, task)?;
                match s {
                    JobState::CommitReady => Ok(()),
                    JobState::Ready | JobState::Running => stale(
                        StaleKind::JobNotCommitReady,
                        format!("job {} is {s}, not CommitReady yet", self.id),
                    ),
                    _ => stale(
                        StaleKind::JobNoLongerCommitReady,
                        format!("job {} is no longer CommitReady (it is {s})", self.id),
                    ),
                }
            }
            TaskId::Cleanup => {
                self.termination(inner, task)?;
                match s {
                    JobState::CleanupReady => Ok(()),
                    s if s.is_terminal() => stale(
                        StaleKind::JobNoLongerCleanupReady,
                        format!("job {} is no longer CleanupReady (it is {s})", self.id),
                    ),
                    _ => stale(
                        StaleKind::JobNotCleanupReady,
                        format!("job {} is {s}, not CleanupReady", self.id),
                    ),
                }
            }
        }
    }

    fn run<'a>(&self, inner: &'a Inner) -> Result<&'a Run> {
        inner.run.as_ref().ok_or_else(|| {
            CoreError::internal(
                "TaskGraphCorrupted",
                format!("running job {} has no task graph", self.id),
            )
        })
    }
}

impl Inner {
    fn tcb_of(&self, task: TaskId) -> Option<&Tcb> {
        match task {
            TaskId::Index(t) => self.run.as_ref()?.tcbs.get(t as usize),
            TaskId::Commit => self.commit.as_ref().map(|t| &t.tcb),
            TaskId::Cleanup => self.cleanup.as_ref().map(|t| &t.tcb),
        }
    }

    fn max_instances(&self, task: TaskId) -> u32 {
        match task {
            TaskId::Index(t) => self
                .run
                .as_ref()
                .map_or(1, |r| r.graph.policy(t).max_num_instances),
            TaskId::Commit => self
                .commit
                .as_ref()
                .map_or(1, |t| t.policy.max_num_instances),
            TaskId::Cleanup => self
                .cleanup
                .as_ref()
                .map_or(1, |t| t.policy.max_num_instances),
        }
    }
}

#[cfg(test)]
mod tests;
