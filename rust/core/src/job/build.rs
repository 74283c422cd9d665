//! Building a job: a fresh one from a submission, or a persisted one rebuilt in the shape of its
//! state (recovery).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use super::{Inner, Job, Outcome, OutputLimits, Progress, Run};
use crate::codec;
use crate::error::{CoreError, Result};
use crate::graph::TaskGraph;
use crate::ids::{JobId, ResourceGroupId, TaskIndex};
use crate::slot::SlotTable;
use crate::state::JobState;
use crate::submission::Submission;
use crate::tcb::{Tcb, TerminationTcb};
use crate::Payload;

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
        let run = Run::new(&submission.graph, &submission.inputs)?;
        Self::with_run(id, resource_group, submission, state, run)
    }

    fn with_run(
        id: JobId,
        resource_group: ResourceGroupId,
        submission: &Submission,
        state: JobState,
        run: Run,
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
                run: Some(run),
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

    /// Rebuild a persisted job with a dedicated shape per state (docs/internals.md, "Recovery shapes"); a built graph
    /// is never mutated to simulate progress:
    /// * Ready / Running: a fresh graph (Running restarts the DAG from the input tasks; see
    ///   [`Self::recover_running`] for a job whose task outputs were persisted);
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

    /// Rebuild a Running job whose succeeded tasks had their outputs persisted one by one
    /// (durability "task"): `finished` holds `(task, outputs wire frame)` pairs, in any order.
    ///
    /// A persisted task counts as succeeded only if every parent does too (a task whose parent
    /// must run again runs again: its inputs may change); index order is a topological order, so
    /// one pass decides. Succeeded tasks get their outputs back in their slots and are never
    /// offered; each other task waits only for its parents that did not succeed, so exactly the
    /// remaining frontier is Ready. Nothing is enqueued.
    ///
    /// Returns the job and, when every task had succeeded (the job's completion itself was not
    /// persisted), the `JobCompleted` outcome: the caller persists it and calls `complete`, as
    /// for a report.
    ///
    /// # Errors
    /// `Recovery` `InvalidTaskOutputs` naming the task when a persisted entry names no task of
    /// the graph, appears twice, is not a wire frame or holds the wrong number of values.
    pub fn recover_running(
        id: JobId,
        resource_group: ResourceGroupId,
        submission: &Submission,
        finished: &[(TaskIndex, &[u8])],
    ) -> Result<(Self, Option<Outcome>)> {
        let g = &submission.graph;
        let n = g.num_tasks();
        let invalid =
            |m: String| CoreError::recovery("InvalidTaskOutputs", format!("job {id}: {m}"));
        let mut values: Vec<Option<Vec<&[u8]>>> = vec![None; n];
        for &(t, frame) in finished {
            let slot = values.get_mut(t as usize).ok_or_else(|| {
                invalid(format!(
                    "outputs were persisted for task {t} but the graph has {n} tasks"
                ))
            })?;
            if slot.is_some() {
                return Err(invalid(format!(
                    "outputs were persisted twice for task {t}"
                )));
            }
            let v = codec::wire_decode(frame).map_err(|e| {
                invalid(format!(
                    "the persisted outputs of task {t} are not a wire frame: {e}"
                ))
            })?;
            let declared = g.task_outputs(t).len();
            if v.len() != declared {
                return Err(invalid(format!(
                    "the persisted outputs of task {t} hold {} values but the task declares \
                     {declared}",
                    v.len()
                )));
            }
            *slot = Some(v);
        }
        let mut done = vec![false; n];
        for t in 0..n {
            done[t] =
                values[t].is_some() && g.parents(t as TaskIndex).iter().all(|&p| done[p as usize]);
        }
        let mut run = Run::new(g, &submission.inputs)?;
        let mut held = 0u64;
        for (t, v) in values.into_iter().enumerate() {
            let (true, Some(v)) = (done[t], v) else {
                continue;
            };
            for (d, value) in g.task_outputs(t as TaskIndex).zip(v) {
                let w = run.writers.get(d as usize).ok_or_else(|| {
                    CoreError::internal("TaskGraphCorrupted", "output slot out of range")
                })?;
                held += value.len() as u64;
                w.write(&run.slots, Payload::from(value))?;
            }
        }
        run.tcbs = (0..n)
            .map(|t| {
                let retries = g.policy(t as TaskIndex).max_num_retry;
                if done[t] {
                    Tcb::succeeded(retries)
                } else {
                    let parents = g.parents(t as TaskIndex);
                    let waiting = parents.iter().filter(|&&p| !done[p as usize]).count();
                    Tcb::new(waiting as u32, retries)
                }
            })
            .collect();
        let succeeded = done.iter().filter(|&&d| d).count();
        *run.incomplete.get_mut() = (n - succeeded) as u32;
        *run.held.get_mut() += held;
        let job = Self::with_run(id, resource_group, submission, JobState::Running, run)?;
        let outcome = if succeeded == n {
            let inner = job.inner.read();
            Some(job.completed(&inner, job.run(&inner)?)?)
        } else {
            None
        };
        Ok((job, outcome))
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
}
