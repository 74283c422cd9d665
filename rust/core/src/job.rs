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

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use crate::codec;
use crate::error::{CoreError, Result, StaleKind};
use crate::graph::{TaskGraph, TdlContext};
use crate::ids::{ExecutionManagerId, JobId, ResourceGroupId, TaskId, TaskIndex, TaskInstanceId};
use crate::instances::{InstanceEntry, InstanceTable};
use crate::policy::ExecutionPolicy;
use crate::slot::{SlotReader, SlotTable, SlotWriter};
use crate::state::{JobState, TaskState};
use crate::submission::Submission;
use crate::tcb::{FailureEffect, Tcb, TcbSnapshot, TerminationTcb};
use crate::Payload;

/// The bytes an instance receives as `task_io`.
#[derive(Debug, Clone)]
pub enum TaskIo {
    /// Wire frame of these payloads (regular task inputs; cleanup: the graph inputs). Kept as
    /// shared payloads so the binding can write the frame straight into its output buffer.
    Frame(Vec<Payload>),
    /// Already encoded (commit: the self-describing job outputs).
    Encoded(Payload),
}

impl TaskIo {
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::Frame(p) => codec::wire_size(p.iter().map(|p| &p[..])),
            Self::Encoded(b) => b.len(),
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write exactly `self.len()` bytes into `out`.
    pub fn write_to(&self, out: &mut [u8]) {
        match self {
            Self::Encoded(b) => out.copy_from_slice(b),
            Self::Frame(payloads) => {
                let mut at = 0;
                let mut put = |bytes: &[u8]| {
                    out[at..at + bytes.len()].copy_from_slice(bytes);
                    at += bytes.len();
                };
                // Lengths were bounded by u32 when the payloads were decoded from a frame.
                put(&(payloads.len() as u32).to_le_bytes());
                for p in payloads {
                    put(&(p.len() as u32).to_le_bytes());
                    put(p);
                }
            }
        }
    }

    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        self.write_to(&mut v);
        v
    }
}

/// What an EM needs to run one instance.
#[derive(Debug, Clone)]
pub struct ExecutionContext {
    pub instance_id: TaskInstanceId,
    pub job_id: JobId,
    pub task_id: TaskId,
    pub resource_group_id: ResourceGroupId,
    pub context: Arc<TdlContext>,
    pub soft_timeout_ms: u64,
    pub hard_timeout_ms: u64,
    pub task_io: TaskIo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OutcomeKind {
    /// Every regular task succeeded: persist `outputs`, then call `complete`.
    JobCompleted = 1,
    /// A task exhausted its retries: persist `message`, then call `fail`.
    JobFailed = 2,
    /// The commit task succeeded: persist, then `finish` (-> Succeeded).
    CommitSucceeded = 3,
    /// The cleanup task succeeded: persist, then `finish` (-> Cancelled).
    CleanupSucceeded = 4,
}

/// A job-level consequence of a report that the caller must persist and then apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub job_id: JobId,
    /// `JobCompleted`: self-describing job outputs.
    pub outputs: Option<Payload>,
    /// `JobFailed`: the failure message.
    pub message: Option<String>,
    pub has_commit: bool,
}

/// One report: the outputs wire frame of a success, or a failure message.
#[derive(Debug, Clone, Copy)]
pub enum Report<'a> {
    Success(&'a [u8]),
    Failure(&'a str),
}

/// Result of a report: an optional job-level outcome and the tasks to offer to the queue.
#[derive(Debug, Default)]
pub struct Reported {
    pub outcome: Option<Outcome>,
    pub offers: Vec<TaskId>,
}

/// Result of a job-level transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: JobState,
    pub offers: Vec<TaskId>,
}

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

/// `kind` of the `LimitExceeded` error of a registration whose `task_io` is too large.
pub const TASK_INPUTS_TOO_LARGE: &str = "TaskInputsTooLarge";
/// `LimitExceeded` kind of a batch registration left out because the task inputs already
/// registered in the batch fill the reply: nothing changed, register the task again.
pub const REPLY_FULL: &str = "ReplyFull";

/// How many bytes of task inputs one batch registration may still hand out. The first
/// registration of a batch always fits (it is bounded by `max_io` alone), so a batch always
/// makes progress.
#[derive(Debug, Clone, Copy)]
pub struct ReplyBudget {
    pub remaining: usize,
    pub used: bool,
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
    fn new(graph: &Arc<TaskGraph>, inputs: &[Payload]) -> Result<Self> {
        let (slots, writers) = SlotTable::new(graph.num_deps());
        let corrupted = |m: &str| CoreError::internal("TaskGraphCorrupted", m.to_string());
        if inputs.len() != graph.graph_inputs().len() {
            return Err(corrupted("graph input count mismatch"));
        }
        for (&d, v) in graph.graph_inputs().iter().zip(inputs) {
            writers
                .get(d as usize)
                .ok_or_else(|| corrupted("graph input slot out of range"))?
                .write(&slots, Arc::clone(v))?;
        }
        let n = graph.num_tasks() as u32;
        let tcbs = (0..n)
            .map(|t| Tcb::new(graph.parents(t).len() as u32, graph.policy(t).max_num_retry))
            .collect();
        Ok(Self {
            readers: graph
                .all_task_inputs()
                .iter()
                .map(|&d| SlotTable::reader(d))
                .collect(),
            outputs: graph
                .graph_outputs()
                .iter()
                .map(|&d| SlotTable::reader(d))
                .collect(),
            writers: writers.into_boxed_slice(),
            slots,
            tcbs,
            incomplete: AtomicU32::new(n),
            held: AtomicU64::new(inputs.iter().map(|p| p.len() as u64).sum()),
            graph: Arc::clone(graph),
        })
    }

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
    /// A JOB_FAILED outcome was produced (at most one per job).
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
    /// A fresh job in state Ready (nothing enqueued).
    ///
    /// # Errors
    /// Internal only if the submission is inconsistent (it was validated).
    pub fn new(
        id: JobId,
        resource_group: ResourceGroupId,
        submission: &Submission,
    ) -> Result<Self> {
        Self::fresh(id, resource_group, submission, JobState::Ready)
    }

    fn fresh(
        id: JobId,
        resource_group: ResourceGroupId,
        submission: &Submission,
        state: JobState,
    ) -> Result<Self> {
        let g = &submission.graph;
        let total_tasks = u32::try_from(g.num_tasks())
            .map_err(|_| CoreError::internal("TaskGraphCorrupted", "too many tasks"))?;
        Ok(Self {
            id,
            resource_group,
            total_tasks,
            has_commit: g.commit().is_some(),
            has_cleanup: g.cleanup().is_some(),
            limits: OutputLimits::DEFAULT,
            inner: RwLock::new(Inner {
                state,
                run: Some(Run::new(g, &submission.inputs)?),
                commit: g
                    .commit()
                    .map(|t| TerminationTcb::new(Arc::clone(&t.context), t.policy)),
                cleanup: g
                    .cleanup()
                    .map(|t| TerminationTcb::new(Arc::clone(&t.context), t.policy)),
                graph_inputs: g.cleanup().map(|_| Arc::clone(&submission.inputs)),
                outputs: OnceLock::new(),
                outputs_released: false,
                error: None,
                terminal_at_ms: None,
                final_progress: Progress::default(),
                failure_reported: AtomicBool::new(false),
            }),
        })
    }

    /// Rebuild a persisted job (storage spec 7.1) with a dedicated shape per state; a built graph
    /// is never mutated to simulate progress:
    /// * Ready / Running: a fresh graph (Running restarts the DAG from the input tasks);
    /// * CommitReady: no regular TCBs, the persisted outputs, a fresh commit TCB (and a fresh
    ///   cleanup TCB if the graph has one, so the job can still be cancelled);
    /// * CleanupReady: no regular TCBs, a fresh cleanup TCB.
    ///
    /// Nothing is enqueued (the caller re-offers with `resend_ready` once it is serving).
    ///
    /// # Errors
    /// `Recovery` with a readable reason for any other state or missing piece.
    pub fn recover(
        id: JobId,
        resource_group: ResourceGroupId,
        submission: &Submission,
        state: JobState,
        outputs: Option<&[u8]>,
    ) -> Result<Self> {
        let g = &submission.graph;
        let err = |kind, m: String| Err(CoreError::recovery(kind, format!("job {id}: {m}")));
        match state {
            JobState::Ready | JobState::Running => {
                Self::fresh(id, resource_group, submission, state)
            }
            JobState::CommitReady => {
                let Some(commit) = g.commit() else {
                    return err(
                        "UndefinedCommitTask",
                        "state is CommitReady but the graph has no commit task".into(),
                    );
                };
                let Some(outputs) = outputs else {
                    return err(
                        "MissingJobOutputs",
                        "state is CommitReady but no job outputs were persisted".into(),
                    );
                };
                match codec::decode_outputs(outputs, codec::DEFAULT_MAX_DECOMPRESSED_SIZE) {
                    Ok(v) if v.len() == g.graph_outputs().len() => {}
                    Ok(v) => {
                        return err(
                            "InvalidJobOutputs",
                            format!(
                                "persisted job outputs hold {} values but the graph has {}",
                                v.len(),
                                g.graph_outputs().len()
                            ),
                        )
                    }
                    Err(e) => {
                        return err("InvalidJobOutputs", format!("persisted job outputs: {e}"))
                    }
                }
                let job = Self::terminal_shape(id, resource_group, submission, state);
                {
                    let mut inner = job.inner.write();
                    inner.commit = Some(TerminationTcb::new(
                        Arc::clone(&commit.context),
                        commit.policy,
                    ));
                    inner.cleanup = g
                        .cleanup()
                        .map(|t| TerminationTcb::new(Arc::clone(&t.context), t.policy));
                    inner.outputs = OnceLock::from(Payload::from(outputs));
                    inner.final_progress.succeeded = job.total_tasks;
                }
                Ok(job)
            }
            JobState::CleanupReady => {
                let Some(cleanup) = g.cleanup() else {
                    return err(
                        "UndefinedCleanupTask",
                        "state is CleanupReady but the graph has no cleanup task".into(),
                    );
                };
                let job = Self::terminal_shape(id, resource_group, submission, state);
                {
                    let mut inner = job.inner.write();
                    inner.cleanup = Some(TerminationTcb::new(
                        Arc::clone(&cleanup.context),
                        cleanup.policy,
                    ));
                    inner.final_progress.cancelled = job.total_tasks;
                }
                Ok(job)
            }
            s => err(
                "UnrecoverableState",
                format!("jobs in state {s} are not recovered into the cache"),
            ),
        }
    }

    /// Shape without regular TCBs (CommitReady / CleanupReady recovery).
    fn terminal_shape(
        id: JobId,
        resource_group: ResourceGroupId,
        submission: &Submission,
        state: JobState,
    ) -> Self {
        let g = &submission.graph;
        Self {
            id,
            resource_group,
            total_tasks: g.num_tasks() as u32,
            has_commit: g.commit().is_some(),
            has_cleanup: g.cleanup().is_some(),
            limits: OutputLimits::DEFAULT,
            inner: RwLock::new(Inner {
                state,
                run: None,
                commit: None,
                cleanup: None,
                graph_inputs: g.cleanup().map(|_| Arc::clone(&submission.inputs)),
                outputs: OnceLock::new(),
                outputs_released: false,
                error: None,
                terminal_at_ms: None,
                final_progress: Progress::default(),
                failure_reported: AtomicBool::new(false),
            }),
        }
    }

    /// The same job with other output limits (set before the job is shared).
    #[must_use]
    pub fn with_limits(mut self, limits: OutputLimits) -> Self {
        self.limits = limits;
        self
    }

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

    /// Validate the task id and the job-state guard of its lane (spec 1.3 guard predicates).
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

    /// Register a new instance of `task` (spec 1.5 step 1) and record it in `table`.
    ///
    /// # Errors
    /// `InvalidRequest` (bogus task), `Stale` (lane guard, terminal, Pending, instance limit).
    pub fn register(
        &self,
        task: TaskId,
        em: ExecutionManagerId,
        now_ms: u64,
        table: &InstanceTable,
    ) -> Result<ExecutionContext> {
        self.register_limited(task, em, now_ms, table, None)
    }

    /// [`Self::register`] refusing a task whose `task_io` would exceed `max_io` bytes.
    ///
    /// # Errors
    /// As [`Self::register`]; `LimitExceeded` `TaskInputsTooLarge` (nothing changed).
    pub fn register_limited(
        &self,
        task: TaskId,
        em: ExecutionManagerId,
        now_ms: u64,
        table: &InstanceTable,
        max_io: Option<usize>,
    ) -> Result<ExecutionContext> {
        let inner = self.inner.read();
        self.register_in(&inner, task, table.next_id(), em, now_ms, table, max_io)
    }

    /// Several registrations under one read lock (batch entry point); `max_io` as for
    /// [`Self::register_limited`]; with a `budget`, a task whose inputs no longer fit the
    /// batch's reply is left out (`LimitExceeded` `ReplyFull`, nothing changed).
    #[allow(clippy::too_many_arguments)]
    pub fn register_many(
        &self,
        tasks: &[TaskId],
        em: ExecutionManagerId,
        now_ms: u64,
        table: &InstanceTable,
        max_io: Option<usize>,
        mut budget: Option<&mut ReplyBudget>,
        out: &mut Vec<Result<ExecutionContext>>,
    ) {
        let inner = self.inner.read();
        let ids = table.reserve(tasks.len());
        for (&t, id) in tasks.iter().zip(ids) {
            if let Some(b) = budget.as_deref() {
                let size = self.io_size_of(&inner, t).unwrap_or(0);
                if b.used && size > b.remaining {
                    out.push(Err(CoreError::limit(
                        REPLY_FULL,
                        format!(
                            "job {} {t:?}: the reply is full ({size} bytes of inputs do not fit                              the {} left); register it again",
                            self.id, b.remaining
                        ),
                    )));
                    continue;
                }
            }
            let result = self.register_in(&inner, t, id, em, now_ms, table, max_io);
            if let (Ok(ctx), Some(b)) = (&result, budget.as_deref_mut()) {
                b.remaining = b.remaining.saturating_sub(ctx.task_io.len());
                b.used = true;
            }
            out.push(result);
        }
    }

    /// The size of the `task_io` a registration of `task` would hand out (None: unknown yet).
    fn io_size_of(&self, inner: &Inner, task: TaskId) -> Option<usize> {
        match task {
            TaskId::Index(_) => self.task_io_size(inner, task, None),
            TaskId::Commit => inner.outputs.get().map(|o| o.len()),
            TaskId::Cleanup => inner
                .graph_inputs
                .as_deref()
                .map(|inputs| inputs.iter().map(|p| 4 + p.len()).sum::<usize>() + 4),
        }
    }

    /// Size of the `task_io` a registration of `task` would hand out, computed from the stored
    /// sizes (no buffer is built). `None` while an input is not produced yet (the registration
    /// itself then refuses the task).
    fn task_io_size(&self, inner: &Inner, task: TaskId, io: Option<&TaskIo>) -> Option<usize> {
        if let Some(io) = io {
            return Some(io.len());
        }
        let (TaskId::Index(t), Some(run)) = (task, inner.run.as_ref()) else {
            return None;
        };
        let mut size = 4usize;
        for r in &run.readers[run.graph.task_inputs_span(t)] {
            size = size.saturating_add(4 + r.len(&run.slots)?);
        }
        Some(size)
    }

    #[allow(clippy::too_many_arguments)]
    fn register_in(
        &self,
        inner: &Inner,
        task: TaskId,
        id: TaskInstanceId,
        em: ExecutionManagerId,
        now_ms: u64,
        table: &InstanceTable,
        max_io: Option<usize>,
    ) -> Result<ExecutionContext> {
        self.guard(inner, task)?;
        let (tcb, policy, context, task_io): (&Tcb, ExecutionPolicy, &Arc<TdlContext>, _) =
            match task {
                TaskId::Index(t) => {
                    let run = self.run(inner)?;
                    let tcb = &run.tcbs[t as usize];
                    let policy = *run.graph.policy(t);
                    (tcb, policy, run.graph.context(t), None)
                }
                _ => {
                    let term = self.termination(inner, task)?;
                    let io = if task == TaskId::Commit {
                        let out = inner.outputs.get().ok_or_else(|| {
                            CoreError::internal(
                                "MissingJobOutputs",
                                format!("CommitReady job {} has no outputs", self.id),
                            )
                        })?;
                        TaskIo::Encoded(Arc::clone(out))
                    } else {
                        TaskIo::Frame(
                            inner
                                .graph_inputs
                                .as_deref()
                                .map(<[_]>::to_vec)
                                .unwrap_or_default(),
                        )
                    };
                    (&term.tcb, term.policy, &term.context, Some(io))
                }
            };
        if let Some(max) = max_io {
            // Only a registration that would otherwise succeed is refused for its size.
            tcb.can_register(policy.max_num_instances)?;
            if let Some(size) = self.task_io_size(inner, task, task_io.as_ref()) {
                if size > max {
                    let (who, what) = match task {
                        TaskId::Index(t) => (format!("task {t}"), "task inputs"),
                        TaskId::Commit => ("commit task".to_string(), "job outputs"),
                        TaskId::Cleanup => ("cleanup task".to_string(), "graph inputs"),
                    };
                    return Err(CoreError::limit(
                        TASK_INPUTS_TOO_LARGE,
                        format!(
                            "job {} {who} (`{context}`): {what} of {size} bytes exceed the limit \
                             of {max} bytes (max_task_io_bytes)",
                            self.id
                        ),
                    ));
                }
            }
        }
        tcb.register(id, policy.max_num_instances)?;
        let task_io = match task_io {
            Some(io) => io,
            None => {
                let run = self.run(inner)?;
                let TaskId::Index(t) = task else {
                    return Err(CoreError::internal("TaskGraphCorrupted", "unreachable"));
                };
                let mut inputs = Vec::with_capacity(run.graph.task_inputs_span(t).len());
                for r in &run.readers[run.graph.task_inputs_span(t)] {
                    match r.read(&run.slots) {
                        Some(v) => inputs.push(v),
                        None => {
                            // Undo the registration: the error is internal, but leave no ghost.
                            tcb.force_remove(id);
                            return Err(CoreError::internal(
                                "TaskInputNotReady",
                                format!("job {} task {t}: an input slot is empty", self.id),
                            ));
                        }
                    }
                }
                TaskIo::Frame(inputs)
            }
        };
        table.insert(
            id,
            InstanceEntry {
                job: self.id,
                task,
                em,
                soft_deadline_ms: now_ms.saturating_add(policy.timeout_policy.soft_timeout_ms),
                soft_timeout_handled: false,
            },
        );
        Ok(ExecutionContext {
            instance_id: id,
            job_id: self.id,
            task_id: task,
            resource_group_id: self.resource_group,
            context: Arc::clone(context),
            soft_timeout_ms: policy.timeout_policy.soft_timeout_ms,
            hard_timeout_ms: policy.timeout_policy.hard_timeout_ms,
            task_io,
        })
    }

    /// Forget `id` in the instance table when the TCB consumed it (success or
    /// `TaskAlreadyTerminated`); an id that was not live here may belong to another task.
    fn settle<T>(table: &InstanceTable, id: TaskInstanceId, r: &Result<T>) {
        let consumed = match r {
            Ok(_) => true,
            Err(e) => e.stale_kind() == Some(StaleKind::TaskAlreadyTerminated),
        };
        if consumed {
            table.remove(id);
        }
    }

    /// Report a successful instance (spec 1.5 step 2 and readiness propagation, spec 2.4).
    ///
    /// `outputs` is the wire frame of the task's outputs (ignored for termination tasks).
    ///
    /// Outputs over the job's [`OutputLimits`] (one report's payloads above
    /// `max_task_output_bytes`, or the job's held graph inputs + outputs would pass
    /// `max_job_bytes`) are not stored: the task fails for good and a `JobFailed` outcome naming
    /// the size and the limit is returned (once per job, like exhausted retries). The job itself
    /// stays where it is: the caller persists the failure, then calls `fail`.
    ///
    /// # Errors
    /// `InvalidRequest` (bogus task, malformed frame, wrong output count; nothing changed),
    /// `Stale`, or `Internal` for broken invariants.
    pub fn report_success(
        &self,
        task: TaskId,
        id: TaskInstanceId,
        outputs: &[u8],
        table: &InstanceTable,
    ) -> Result<Reported> {
        self.report(task, id, Report::Success(outputs), table)
    }

    /// Report a failed instance: one retry consumed, re-offered if retryable, JOB_FAILED (once per
    /// job) when exhausted.
    ///
    /// # Errors
    /// `InvalidRequest`, `Stale`, `Internal` as for [`Self::report_success`].
    pub fn report_failure(
        &self,
        task: TaskId,
        id: TaskInstanceId,
        message: &str,
        table: &InstanceTable,
    ) -> Result<Reported> {
        self.report(task, id, Report::Failure(message), table)
    }

    fn report(
        &self,
        task: TaskId,
        id: TaskInstanceId,
        report: Report<'_>,
        table: &InstanceTable,
    ) -> Result<Reported> {
        let inner = self.inner.read();
        let mut offers = Vec::new();
        let mut done = 0;
        let outcome = self.report_in(&inner, task, id, report, table, &mut offers, &mut done)?;
        let completed = self.count_successes(&inner, done)?;
        Ok(Reported {
            outcome: outcome.or(completed),
            offers,
        })
    }

    /// Several reports under one read lock (batch entry point). Results go to `out` (one per
    /// item), tasks to offer to `offers`. The job-completion outcome, if this batch completed the
    /// job, is attached to the last successful regular report.
    pub fn report_many<'a>(
        &self,
        items: impl IntoIterator<Item = (TaskId, TaskInstanceId, Report<'a>)>,
        table: &InstanceTable,
        out: &mut Vec<Result<Option<Outcome>>>,
        offers: &mut Vec<TaskId>,
    ) {
        let inner = self.inner.read();
        let mut done = 0;
        let mut last_success = None;
        for (task, id, report) in items {
            let before = done;
            out.push(self.report_in(&inner, task, id, report, table, offers, &mut done));
            if done > before {
                last_success = Some(out.len() - 1);
            }
        }
        match (self.count_successes(&inner, done), last_success) {
            (Ok(Some(o)), Some(i)) => out[i] = Ok(Some(o)),
            (Err(e), Some(i)) => out[i] = Err(e),
            _ => {}
        }
    }

    /// Account `n` regular successes on the incomplete counter (one atomic per batch). Exactly
    /// one caller takes it to zero and produces JOB_COMPLETED with the encoded outputs.
    fn count_successes(&self, inner: &Inner, n: u32) -> Result<Option<Outcome>> {
        if n == 0 {
            return Ok(None);
        }
        let run = self.run(inner)?;
        let prev = run
            .incomplete
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(n))
            .map_err(|_| {
                CoreError::internal("TaskGraphCorrupted", "incomplete-task counter underflow")
            })?;
        if prev != n {
            return Ok(None);
        }
        // Last task: gather the job outputs (every output slot must be filled by now).
        let mut values = Vec::with_capacity(run.outputs.len());
        for r in &*run.outputs {
            values.push(r.read(&run.slots).ok_or_else(|| {
                CoreError::internal("TaskGraphCorrupted", "a job output slot is empty")
            })?);
        }
        let encoded: Payload = codec::encode_outputs(&values)?.into();
        inner
            .outputs
            .set(Arc::clone(&encoded))
            .map_err(|_| CoreError::internal("JobOutputsAlreadySet", "job completed twice"))?;
        Ok(Some(Outcome {
            kind: OutcomeKind::JobCompleted,
            job_id: self.id,
            outputs: Some(encoded),
            message: None,
            has_commit: self.has_commit,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn report_in(
        &self,
        inner: &Inner,
        task: TaskId,
        id: TaskInstanceId,
        report: Report<'_>,
        table: &InstanceTable,
        offers: &mut Vec<TaskId>,
        done: &mut u32,
    ) -> Result<Option<Outcome>> {
        self.guard(inner, task)?;
        let outputs = match report {
            Report::Failure(message) => {
                return self.fail_in(inner, task, id, message, table, offers)
            }
            Report::Success(outputs) => outputs,
        };
        let TaskId::Index(t) = task else {
            let term = self.termination(inner, task)?;
            let r = term.tcb.succeed(id);
            Self::settle(table, id, &r);
            r?;
            return Ok(Some(Outcome {
                kind: if task == TaskId::Commit {
                    OutcomeKind::CommitSucceeded
                } else {
                    OutcomeKind::CleanupSucceeded
                },
                job_id: self.id,
                outputs: None,
                message: None,
                has_commit: self.has_commit,
            }));
        };
        let run = self.run(inner)?;
        // Validate the payload before touching any state.
        let values = codec::wire_decode(outputs).map_err(|e| {
            CoreError::request(
                "MalformedOutputs",
                format!(
                    "job {} task {t}: outputs are not a valid wire frame: {e}",
                    self.id
                ),
            )
        })?;
        let out_deps = run.graph.task_outputs(t);
        if values.len() != out_deps.len() {
            return Err(CoreError::request(
                "TaskOutputsLengthMismatch",
                format!(
                    "job {} task {t} ({}): reported {} outputs but the task declares {}",
                    self.id,
                    run.graph.context(t),
                    values.len(),
                    out_deps.len()
                ),
            ));
        }
        let tcb = &run.tcbs[t as usize];
        let add: u64 = values.iter().map(|v| v.len() as u64).sum();
        let limits = self.limits;
        let mut refusal = None;
        // Admission runs under the TCB lock once the instance is known to be live, so a stale
        // report can neither reserve bytes nor fail the task.
        let r = tcb.succeed_if(id, || {
            let who = || format!("task {t} (`{}`)", run.graph.context(t));
            if add > limits.max_task_output_bytes {
                refusal = Some(format!(
                    "{}: output of {add} bytes exceeds the limit of {} bytes \
                     (max_task_output_bytes)",
                    who(),
                    limits.max_task_output_bytes
                ));
                return false;
            }
            let reserved = run
                .held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                    h.checked_add(add)
                        .filter(|&n| add == 0 || n <= limits.max_job_bytes)
                });
            if let Err(held) = reserved {
                refusal = Some(format!(
                    "{}: output of {add} bytes would make the job hold {} bytes, above the \
                     limit of {} bytes (max_job_bytes)",
                    who(),
                    held.saturating_add(add),
                    limits.max_job_bytes
                ));
                return false;
            }
            true
        });
        Self::settle(table, id, &r);
        if !r? {
            // Not stored: the task failed for good, and the job with it (once per job).
            let first = !inner.failure_reported.swap(true, Ordering::AcqRel);
            return Ok(first.then_some(Outcome {
                kind: OutcomeKind::JobFailed,
                job_id: self.id,
                outputs: None,
                message: refusal,
                has_commit: self.has_commit,
            }));
        }

        for (d, v) in out_deps.zip(values) {
            let w = run.writers.get(d as usize).ok_or_else(|| {
                CoreError::internal("TaskGraphCorrupted", "output slot out of range")
            })?;
            w.write(&run.slots, Payload::from(v))?;
        }
        for &c in run.graph.children(t) {
            if run.tcbs[c as usize].parent_succeeded()? {
                offers.push(TaskId::Index(c));
            }
        }
        *done += 1;
        Ok(None)
    }

    fn fail_in(
        &self,
        inner: &Inner,
        task: TaskId,
        id: TaskInstanceId,
        message: &str,
        table: &InstanceTable,
        offers: &mut Vec<TaskId>,
    ) -> Result<Option<Outcome>> {
        let (tcb, who) = match task {
            TaskId::Index(t) => {
                let run = self.run(inner)?;
                (
                    &run.tcbs[t as usize],
                    format!("task {t} ({})", run.graph.context(t)),
                )
            }
            _ => {
                let term = self.termination(inner, task)?;
                (&term.tcb, format!("{task} ({})", term.context))
            }
        };
        let r = tcb.fail(id);
        Self::settle(table, id, &r);
        match r? {
            FailureEffect::Retry => {
                offers.push(task);
                Ok(None)
            }
            FailureEffect::Exhausted => {
                let first = !inner.failure_reported.swap(true, Ordering::AcqRel);
                Ok(first.then(|| Outcome {
                    kind: OutcomeKind::JobFailed,
                    job_id: self.id,
                    outputs: None,
                    message: Some(format!("{who} failed: {message}")),
                    has_commit: self.has_commit,
                }))
            }
        }
    }

    /// Whether `id` is still a live instance of `task` in a job that is in the task's lane state.
    #[must_use]
    pub fn instance_is_live(&self, task: TaskId, id: TaskInstanceId) -> bool {
        let inner = self.inner.read();
        if self.guard(&inner, task).is_err() {
            return false;
        }
        self.tcb_of(&inner, task)
            .is_some_and(|t| !t.state().is_terminal() && t.is_live(id))
    }

    fn tcb_of<'a>(&self, inner: &'a Inner, task: TaskId) -> Option<&'a Tcb> {
        match task {
            TaskId::Index(t) => inner.run.as_ref()?.tcbs.get(t as usize),
            TaskId::Commit => inner.commit.as_ref().map(|t| &t.tcb),
            TaskId::Cleanup => inner.cleanup.as_ref().map(|t| &t.tcb),
        }
    }

    fn max_instances(&self, inner: &Inner, task: TaskId) -> u32 {
        match task {
            TaskId::Index(t) => inner
                .run
                .as_ref()
                .map_or(1, |r| r.graph.policy(t).max_num_instances),
            TaskId::Commit => inner
                .commit
                .as_ref()
                .map_or(1, |t| t.policy.max_num_instances),
            TaskId::Cleanup => inner
                .cleanup
                .as_ref()
                .map_or(1, |t| t.policy.max_num_instances),
        }
    }

    /// Drop an instance lost with its EM (no retry consumed). Returns whether it was live (then
    /// the caller re-offers the task).
    pub fn force_remove(&self, task: TaskId, id: TaskInstanceId, table: &InstanceTable) -> bool {
        let inner = self.inner.read();
        let removed = self
            .tcb_of(&inner, task)
            .is_some_and(|t| t.force_remove(id));
        table.remove(id);
        removed && self.guard(&inner, task).is_ok()
    }

    /// Soft timeout passed: remember it for `explain`.
    pub fn mark_soft_timeout(&self, task: TaskId) {
        let inner = self.inner.read();
        if let Some(t) = self.tcb_of(&inner, task) {
            t.mark_soft_timeout();
        }
    }

    /// Whether a queue entry for `task` is still worth delivering (spill refill): the job is in
    /// the task's lane state and an instance could still start.
    #[must_use]
    pub fn is_schedulable(&self, task: TaskId) -> bool {
        let inner = self.inner.read();
        self.guard(&inner, task).is_ok()
            && self
                .tcb_of(&inner, task)
                .is_some_and(|t| t.is_schedulable(self.max_instances(&inner, task)))
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

    /// Test / tooling view of one TCB.
    #[cfg(any(test, feature = "test-support"))]
    #[must_use]
    pub fn task_state(&self, task: TaskId) -> Option<TaskState> {
        let inner = self.inner.read();
        self.tcb_of(&inner, task).map(Tcb::state)
    }

    /// Whether the regular graph (TCBs and slots) is still held.
    #[cfg(any(test, feature = "test-support"))]
    #[must_use]
    pub fn holds_graph(&self) -> bool {
        self.inner.read().run.is_some()
    }
}

#[cfg(test)]
mod tests;
