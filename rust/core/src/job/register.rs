//! Registration of task instances (what an execution manager receives to run one), and the
//! instance bookkeeping outside reports: liveness, loss with the EM, soft timeouts.

use std::sync::Arc;

use super::{Inner, Job};
use crate::codec;
use crate::error::{CoreError, Result};
use crate::graph::TdlContext;
use crate::ids::{ExecutionManagerId, JobId, ResourceGroupId, TaskId, TaskInstanceId};
use crate::instances::{InstanceEntry, InstanceTable};
use crate::policy::ExecutionPolicy;
use crate::tcb::Tcb;
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

impl Job {
    /// Register a new instance of `task` and record it in `table`.
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
    #[expect(
        clippy::too_many_arguments,
        reason = "a batch call: the instance table, the limits and the reply budget travel together"
    )]
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
                let size = inner.io_size_of(t).unwrap_or(0);
                if b.used && size > b.remaining {
                    out.push(Err(CoreError::limit(
                        REPLY_FULL,
                        format!(
                            "job {} {t:?}: the reply is full ({size} bytes of inputs do not fit \
                             the {} left); register it again",
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

    #[expect(
        clippy::too_many_arguments,
        reason = "shared by single and batch registration, under the caller's lock guard"
    )]
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
            if let Some(size) = inner.task_io_size(task, task_io.as_ref()) {
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
                registered_ms: now_ms,
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

    /// Whether `id` is still a live instance of `task` in a job that is in the task's lane state.
    #[must_use]
    pub fn instance_is_live(&self, task: TaskId, id: TaskInstanceId) -> bool {
        let inner = self.inner.read();
        if self.guard(&inner, task).is_err() {
            return false;
        }
        inner
            .tcb_of(task)
            .is_some_and(|t| !t.state().is_terminal() && t.is_live(id))
    }

    /// Drop an instance lost with its EM (no retry consumed). Returns whether it was live (then
    /// the caller re-offers the task).
    pub fn force_remove(&self, task: TaskId, id: TaskInstanceId, table: &InstanceTable) -> bool {
        let inner = self.inner.read();
        let removed = inner.tcb_of(task).is_some_and(|t| t.force_remove(id));
        table.remove(id);
        removed && self.guard(&inner, task).is_ok()
    }

    /// Soft timeout passed: remember it for `explain`.
    pub fn mark_soft_timeout(&self, task: TaskId) {
        let inner = self.inner.read();
        if let Some(t) = inner.tcb_of(task) {
            t.mark_soft_timeout();
        }
    }
}

impl Inner {
    /// The size of the `task_io` a registration of `task` would hand out (None: unknown yet).
    fn io_size_of(&self, task: TaskId) -> Option<usize> {
        match task {
            TaskId::Index(_) => self.task_io_size(task, None),
            TaskId::Commit => self.outputs.get().map(|o| o.len()),
            TaskId::Cleanup => self
                .graph_inputs
                .as_deref()
                .map(|inputs| inputs.iter().map(|p| 4 + p.len()).sum::<usize>() + 4),
        }
    }

    /// Size of the `task_io` a registration of `task` would hand out, computed from the stored
    /// sizes (no buffer is built). `None` while an input is not produced yet (the registration
    /// itself then refuses the task).
    fn task_io_size(&self, task: TaskId, io: Option<&TaskIo>) -> Option<usize> {
        if let Some(io) = io {
            return Some(io.len());
        }
        let (TaskId::Index(t), Some(run)) = (task, self.run.as_ref()) else {
            return None;
        };
        let mut size = 4usize;
        for r in &run.readers[run.graph.task_inputs_span(t)] {
            size = size.saturating_add(4 + r.len(&run.slots)?);
        }
        Some(size)
    }
}
