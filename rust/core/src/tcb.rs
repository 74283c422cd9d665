//! Task control blocks: the per-task state machine (docs/internals.md, "Task states", "Task instances") behind a small
//! `parking_lot` mutex, plus the atomic unfinished-parent counter used for readiness propagation.
//! The same type serves regular and termination (commit / cleanup) tasks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{CoreError, Result, StaleKind};
use crate::graph::TdlContext;
use crate::ids::TaskInstanceId;
use crate::policy::ExecutionPolicy;
use crate::state::TaskState;

#[derive(Debug)]
struct Inner {
    state: TaskState,
    /// Set by the instance GC when a live instance passed its soft deadline (for `explain`).
    soft_timed_out: bool,
    retries_left: u32,
    /// Live instance ids; tiny (bounded by `max_num_instances`), so a Vec beats a set.
    live: Vec<TaskInstanceId>,
}

/// What a reported failure did to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureEffect {
    /// Retry consumed; the task must be re-offered (Ready, or Running with other instances).
    Retry,
    /// No retry left: the task is Failed.
    Exhausted,
}

/// Point-in-time view for progress / explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcbSnapshot {
    pub state: TaskState,
    pub live: usize,
    pub retries_left: u32,
    pub soft_timed_out: bool,
    pub unfinished_parents: u32,
}

#[derive(Debug)]
pub struct Tcb {
    inner: Mutex<Inner>,
    unfinished_parents: AtomicU32,
}

fn set(inner: &mut Inner, to: TaskState) -> Result<()> {
    if TaskState::is_valid_transition(inner.state, to) {
        inner.state = to;
        Ok(())
    } else {
        Err(CoreError::internal(
            "InvalidTaskStateTransition",
            format!(
                "task state {} -> {} is not allowed",
                inner.state.name(),
                to.name()
            ),
        ))
    }
}

impl Tcb {
    /// A task with `num_parents` parents: Ready when it has none, Pending otherwise.
    #[must_use]
    pub fn new(num_parents: u32, max_num_retry: u32) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: if num_parents == 0 {
                    TaskState::Ready
                } else {
                    TaskState::Pending
                },
                soft_timed_out: false,
                retries_left: max_num_retry,
                live: Vec::new(),
            }),
            unfinished_parents: AtomicU32::new(num_parents),
        }
    }

    /// A task recovered as already Succeeded (its outputs were persisted before a restart):
    /// nothing is waited for and no instance can start.
    #[must_use]
    pub fn succeeded(max_num_retry: u32) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: TaskState::Succeeded,
                soft_timed_out: false,
                retries_left: max_num_retry,
                live: Vec::new(),
            }),
            unfinished_parents: AtomicU32::new(0),
        }
    }

    #[must_use]
    pub fn state(&self) -> TaskState {
        self.inner.lock().state
    }

    #[must_use]
    pub fn snapshot(&self) -> TcbSnapshot {
        let i = self.inner.lock();
        TcbSnapshot {
            state: i.state,
            live: i.live.len(),
            retries_left: i.retries_left,
            soft_timed_out: i.soft_timed_out,
            unfinished_parents: self.unfinished_parents.load(Ordering::Acquire),
        }
    }

    /// Whether an instance could still be started (Ready, or Running below the instance limit).
    #[must_use]
    pub fn is_schedulable(&self, max_instances: u32) -> bool {
        let i = self.inner.lock();
        match i.state {
            TaskState::Ready => true,
            TaskState::Running => i.live.len() < max_instances.max(1) as usize,
            _ => false,
        }
    }

    #[must_use]
    pub fn is_live(&self, id: TaskInstanceId) -> bool {
        self.inner.lock().live.contains(&id)
    }

    fn check_register(i: &Inner, max_instances: u32) -> Result<()> {
        match i.state {
            s if s.is_terminal() => Err(CoreError::stale(
                StaleKind::TaskAlreadyTerminated,
                format!("task is already {}", s.name()),
            )),
            TaskState::Pending => Err(CoreError::stale(
                StaleKind::TaskNotReady,
                "task is not ready yet (parents unfinished)",
            )),
            _ if i.live.len() >= max_instances.max(1) as usize => Err(CoreError::stale(
                StaleKind::TaskInstanceLimitExceeded,
                format!(
                    "task already has {} live instance(s) (limit {max_instances})",
                    i.live.len()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Whether [`Self::register`] would accept an instance now (nothing changes).
    ///
    /// # Errors
    /// The error `register` would return.
    pub fn can_register(&self, max_instances: u32) -> Result<()> {
        Self::check_register(&self.inner.lock(), max_instances)
    }

    /// Register a new instance.
    ///
    /// # Errors
    /// Stale `TaskAlreadyTerminated`, `TaskNotReady` (Pending: a duplicate or stale queue entry
    /// can cause it), `TaskInstanceLimitExceeded`.
    pub fn register(&self, id: TaskInstanceId, max_instances: u32) -> Result<()> {
        let mut i = self.inner.lock();
        Self::check_register(&i, max_instances)?;
        set(&mut i, TaskState::Running)?;
        i.live.push(id);
        Ok(())
    }

    fn take_live(i: &mut Inner, id: TaskInstanceId) -> Result<()> {
        match i.live.iter().position(|&x| x == id) {
            Some(p) => {
                i.live.swap_remove(p);
                if i.live.is_empty() {
                    i.live = Vec::new();
                }
                Ok(())
            }
            None => Err(CoreError::stale(
                StaleKind::InvalidTaskInstanceId,
                format!("task instance {id} is not a live instance of this task"),
            )),
        }
    }

    /// First success wins.
    ///
    /// # Errors
    /// Stale `InvalidTaskInstanceId` / `TaskAlreadyTerminated`; internal if not Running.
    pub fn succeed(&self, id: TaskInstanceId) -> Result<()> {
        self.succeed_if(id, || true).map(|_| ())
    }

    /// A success that `admit` may still refuse (its outputs are too large to keep): once `id` is
    /// known to be a live instance of this Running task, `admit` runs under the TCB lock; `true`
    /// -> Succeeded, `false` -> Failed for good (no retry: the same outputs would come back).
    /// Returns what `admit` said.
    ///
    /// # Errors
    /// As [`Self::succeed`] (then `admit` did not run).
    pub fn succeed_if(&self, id: TaskInstanceId, admit: impl FnOnce() -> bool) -> Result<bool> {
        let mut i = self.inner.lock();
        Self::take_live(&mut i, id)?;
        if i.state.is_terminal() {
            return Err(CoreError::stale(
                StaleKind::TaskAlreadyTerminated,
                format!("task is already {}", i.state.name()),
            ));
        }
        if i.state != TaskState::Running {
            return Err(CoreError::internal(
                "TaskNotRunning",
                format!("live instance reported on a {} task", i.state.name()),
            ));
        }
        let admitted = admit();
        set(
            &mut i,
            if admitted {
                TaskState::Succeeded
            } else {
                TaskState::Failed
            },
        )?;
        Ok(admitted)
    }

    /// A reported failure consumes one retry.
    ///
    /// # Errors
    /// Stale `InvalidTaskInstanceId` / `TaskAlreadyTerminated`; internal if not Running.
    pub fn fail(&self, id: TaskInstanceId) -> Result<FailureEffect> {
        let mut i = self.inner.lock();
        Self::take_live(&mut i, id)?;
        if i.state.is_terminal() {
            return Err(CoreError::stale(
                StaleKind::TaskAlreadyTerminated,
                format!("task is already {}", i.state.name()),
            ));
        }
        if i.state != TaskState::Running {
            return Err(CoreError::internal(
                "TaskNotRunning",
                format!("live instance reported on a {} task", i.state.name()),
            ));
        }
        if i.retries_left == 0 {
            set(&mut i, TaskState::Failed)?;
            return Ok(FailureEffect::Exhausted);
        }
        i.retries_left -= 1;
        let to = if i.live.is_empty() {
            TaskState::Ready
        } else {
            TaskState::Running
        };
        set(&mut i, to)?;
        Ok(FailureEffect::Retry)
    }

    /// Drop an instance lost with its EM (no retry consumed). Returns whether it was live.
    pub fn force_remove(&self, id: TaskInstanceId) -> bool {
        let mut i = self.inner.lock();
        if Self::take_live(&mut i, id).is_err() {
            return false;
        }
        if i.state == TaskState::Running && i.live.is_empty() {
            i.state = TaskState::Ready;
        }
        true
    }

    /// Mark that a live instance passed its soft deadline.
    pub fn mark_soft_timeout(&self) {
        self.inner.lock().soft_timed_out = true;
    }

    /// Cancel if non-terminal; returns the live instance ids so the caller can forget them.
    pub fn cancel(&self) -> Vec<TaskInstanceId> {
        let mut i = self.inner.lock();
        if !i.state.is_terminal() {
            i.state = TaskState::Cancelled;
        }
        std::mem::take(&mut i.live)
    }

    /// Ids of live instances (for releasing instance-table entries).
    #[must_use]
    pub fn live_instances(&self) -> Vec<TaskInstanceId> {
        self.inner.lock().live.clone()
    }

    /// One parent finished. Returns true for exactly one caller: the one that takes the counter
    /// to zero, which also moves the task Pending -> Ready.
    ///
    /// # Errors
    /// Internal if the counter is already zero or the child is not Pending.
    pub fn parent_succeeded(&self) -> Result<bool> {
        let prev = self
            .unfinished_parents
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
            .map_err(|_| {
                CoreError::internal(
                    "TaskGraphCorrupted",
                    "unfinished-parent counter decremented below zero",
                )
            })?;
        if prev != 1 {
            return Ok(false);
        }
        // Cancellation takes the job's write lock, propagation runs under its read lock, so the
        // child is Pending here; anything else is a broken invariant (reported by `set`).
        set(&mut self.inner.lock(), TaskState::Ready)?;
        Ok(true)
    }
}

/// Control block of a commit or cleanup task: a TCB plus its own context and policy (it outlives
/// the regular task graph, which is released when the job leaves Running).
#[derive(Debug)]
pub struct TerminationTcb {
    pub tcb: Tcb,
    pub context: Arc<TdlContext>,
    pub policy: ExecutionPolicy,
}

impl TerminationTcb {
    /// Always created Ready with the full retry budget.
    #[must_use]
    pub fn new(context: Arc<TdlContext>, policy: ExecutionPolicy) -> Self {
        Self {
            tcb: Tcb::new(0, policy.max_num_retry),
            context,
            policy,
        }
    }
}

#[cfg(test)]
mod tests;
