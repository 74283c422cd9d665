//! Building a job: a fresh one from a submission, or a persisted one rebuilt in the shape of its
//! state (recovery).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use super::{Inner, Job, OutputLimits, Progress, Run};
use crate::codec;
use crate::error::{CoreError, Result};
use crate::graph::TaskGraph;
use crate::ids::{JobId, ResourceGroupId};
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

    /// Rebuild a persisted job with a dedicated shape per state (docs/internals.md, "Recovery shapes"); a built graph
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
}
