//! Reports of task instances: a success stores the outputs and offers the children that became
//! ready, a failure consumes a retry; either may produce a job-level [`Outcome`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Inner, Job, Run};
use crate::codec;
use crate::error::{CoreError, Result, StaleKind};
use crate::ids::{JobId, TaskId, TaskInstanceId};
use crate::instances::InstanceTable;
use crate::state::vocabulary;
use crate::tcb::FailureEffect;
use crate::Payload;

vocabulary! {
    /// What a job-level [`Outcome`] asks the caller to persist and apply.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl Job {
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

    /// Report a successful instance (and propagate readiness).
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

    /// Report a failed instance: one retry consumed, re-offered if retryable, `JobFailed` (once per
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
    /// one caller takes it to zero and produces `JobCompleted` with the encoded outputs.
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
        self.completed(inner, run).map(Some)
    }

    /// Every regular task succeeded: gather the job outputs (every output slot is filled by
    /// now), keep them, and return the `JobCompleted` outcome. Called once per job.
    pub(super) fn completed(&self, inner: &Inner, run: &Run) -> Result<Outcome> {
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
        Ok(Outcome {
            kind: OutcomeKind::JobCompleted,
            job_id: self.id,
            outputs: Some(encoded),
            message: None,
            has_commit: self.has_commit,
        })
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the batch entry points share one lock guard and the offer and success tallies"
    )]
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
            return self.termination_succeeded(inner, task, id, table);
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

    /// The commit or cleanup task succeeded: its outcome, for the caller to persist and `finish`.
    fn termination_succeeded(
        &self,
        inner: &Inner,
        task: TaskId,
        id: TaskInstanceId,
        table: &InstanceTable,
    ) -> Result<Option<Outcome>> {
        let term = self.termination(inner, task)?;
        let r = term.tcb.succeed(id);
        Self::settle(table, id, &r);
        r?;
        Ok(Some(Outcome {
            kind: if task == TaskId::Commit {
                OutcomeKind::CommitSucceeded
            } else {
                OutcomeKind::CleanupSucceeded
            },
            job_id: self.id,
            outputs: None,
            message: None,
            has_commit: self.has_commit,
        }))
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
}
