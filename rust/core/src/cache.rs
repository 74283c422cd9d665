//! The job cache: `JobId -> Arc<Job>` behind sharded `parking_lot` `RwLock`s, plus the inbound
//! queue and the task-instance table it feeds. This is the sans-IO façade the storage service
//! drives: it persists job-level facts first and then applies the matching transition here.
//!
//! Lock order: cache shard -> (released) -> job lock -> TCB mutex -> instance-table shard. Queue
//! offers happen only after the job lock is released (see `queue`). The taken-entry ledger's
//! shard locks are leaves, taken with no other lock held (after a poll returns, after a
//! registration released the job lock).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::error::{CoreError, Result};
use crate::hash::IdMap;
use crate::ids::{ExecutionManagerId, JobId, ResourceGroupId, TaskId, TaskIndex, TaskInstanceId};
use crate::instances::{InstanceGcReport, InstanceTable};
pub use crate::job::Report;
use crate::job::{
    ExecutionContext, Job, Outcome, OutputLimits, Progress, ReplyBudget, Reported, Transition,
};
use crate::queue::{Entry, InboundQueue, Lane};
use crate::state::JobState;
use crate::submission::Submission;
use crate::taken::TakenLedger;
use crate::Payload;

const SHARDS: usize = 16;

/// Default lane capacities.
pub const DEFAULT_TASK_CAPACITY: usize = 65_536;
pub const DEFAULT_COMMIT_CAPACITY: usize = 1024;
pub const DEFAULT_CLEANUP_CAPACITY: usize = 1024;

type Shard = RwLock<IdMap<JobId, Arc<Job>>>;

/// Who reported, and how many newly ready tasks it would take at once (see
/// [`JobCache::report_batch_continuing`]); the limits of [`JobCache::register_batch_limited`].
#[derive(Debug, Clone, Copy)]
pub struct Continuation {
    pub em: ExecutionManagerId,
    pub accept: usize,
    pub now_ms: u64,
    pub max_io: Option<usize>,
    pub max_total_io: Option<usize>,
}

#[derive(Debug)]
pub struct JobCache {
    shards: Box<[Shard]>,
    queue: InboundQueue,
    instances: InstanceTable,
    /// Entries handed out by polls and not yet registered (visibility timeout).
    taken: TakenLedger,
    /// Applied to every job inserted or recovered.
    limits: OutputLimits,
}

impl JobCache {
    /// # Errors
    /// `InvalidRequest` if a capacity is zero.
    pub fn new(
        task_capacity: usize,
        commit_capacity: usize,
        cleanup_capacity: usize,
    ) -> Result<Self> {
        Self::with_limits(
            task_capacity,
            commit_capacity,
            cleanup_capacity,
            OutputLimits::DEFAULT,
        )
    }

    /// [`Self::new`] with byte limits on the outputs its jobs keep (see [`Job::report_success`]:
    /// a success over a limit is not stored and produces `JobFailed`).
    ///
    /// # Errors
    /// `InvalidRequest` if a capacity is zero.
    pub fn with_limits(
        task_capacity: usize,
        commit_capacity: usize,
        cleanup_capacity: usize,
        limits: OutputLimits,
    ) -> Result<Self> {
        Ok(Self {
            shards: (0..SHARDS).map(|_| RwLock::new(IdMap::default())).collect(),
            queue: InboundQueue::new(task_capacity, commit_capacity, cleanup_capacity)?,
            instances: InstanceTable::new(),
            taken: TakenLedger::new(),
            limits,
        })
    }

    #[must_use]
    pub const fn limits(&self) -> OutputLimits {
        self.limits
    }

    fn shard(&self, id: JobId) -> &Shard {
        // Job ids are sequential: the low bits spread them evenly.
        &self.shards[(id as usize) % SHARDS]
    }

    #[must_use]
    pub fn queue(&self) -> &InboundQueue {
        &self.queue
    }

    #[must_use]
    pub fn instances(&self) -> &InstanceTable {
        &self.instances
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[must_use]
    pub fn contains(&self, id: JobId) -> bool {
        self.shard(id).read().contains_key(&id)
    }

    #[must_use]
    pub fn job_ids(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self
            .shards
            .iter()
            .flat_map(|s| s.read().keys().copied().collect::<Vec<_>>())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// # Errors
    /// `JobNotFound`.
    pub fn get(&self, id: JobId) -> Result<Arc<Job>> {
        self.shard(id)
            .read()
            .get(&id)
            .cloned()
            .ok_or(CoreError::JobNotFound(id))
    }

    fn insert_job(&self, job: Job) -> Result<()> {
        let id = job.id();
        let mut shard = self.shard(id).write();
        if shard.contains_key(&id) {
            return Err(CoreError::internal(
                "JobAlreadyExists",
                format!("job {id} is already in the cache"),
            ));
        }
        shard.insert(id, Arc::new(job));
        Ok(())
    }

    /// Insert a freshly registered job (state Ready; nothing enqueued).
    ///
    /// # Errors
    /// Internal `JobAlreadyExists`.
    pub fn insert(&self, id: JobId, rg: ResourceGroupId, submission: &Submission) -> Result<()> {
        if self.contains(id) {
            return Err(CoreError::internal(
                "JobAlreadyExists",
                format!("job {id} is already in the cache"),
            ));
        }
        self.insert_job(Job::new(id, rg, submission)?.with_limits(self.limits))
    }

    /// Rebuild a persisted job (docs/internals.md, "Recovery shapes"); nothing enqueued.
    ///
    /// # Errors
    /// `Recovery` with a readable reason; internal `JobAlreadyExists`.
    pub fn recover(
        &self,
        id: JobId,
        rg: ResourceGroupId,
        submission: &Submission,
        state: JobState,
        outputs: Option<&[u8]>,
    ) -> Result<()> {
        if self.contains(id) {
            return Err(CoreError::internal(
                "JobAlreadyExists",
                format!("job {id} is already in the cache"),
            ));
        }
        self.insert_job(Job::recover(id, rg, submission, state, outputs)?.with_limits(self.limits))
    }

    /// Rebuild a Running job with the tasks whose outputs were persisted (durability "task"),
    /// see [`Job::recover_running`]; nothing enqueued. Returns the `JobCompleted` outcome when
    /// every task had succeeded: persist it, then call [`Self::complete`].
    ///
    /// # Errors
    /// `Recovery` `InvalidTaskOutputs`; internal `JobAlreadyExists`.
    pub fn recover_running(
        &self,
        id: JobId,
        rg: ResourceGroupId,
        submission: &Submission,
        finished: &[(TaskIndex, &[u8])],
    ) -> Result<Option<Outcome>> {
        if self.contains(id) {
            return Err(CoreError::internal(
                "JobAlreadyExists",
                format!("job {id} is already in the cache"),
            ));
        }
        let (job, outcome) = Job::recover_running(id, rg, submission, finished)?;
        self.insert_job(job.with_limits(self.limits))?;
        Ok(outcome)
    }

    /// Remove jobs (and their taken-entry records); counts each id that was present once.
    pub fn remove(&self, ids: &[JobId]) -> usize {
        let mut n = 0;
        for &id in ids {
            if self.shard(id).write().remove(&id).is_some() {
                n += 1;
            }
            self.taken.clear_job(id);
        }
        n
    }

    /// Evict terminal jobs whose terminal time is at least `retention_ms` ago.
    pub fn evict_terminated(&self, now_ms: u64, retention_ms: u64) -> Vec<JobId> {
        let mut evicted = Vec::new();
        for shard in &*self.shards {
            let expired: Vec<JobId> = shard
                .read()
                .iter()
                .filter(|(_, j)| {
                    j.terminal_at_ms()
                        .is_some_and(|t| now_ms.saturating_sub(t) >= retention_ms)
                })
                .map(|(&id, _)| id)
                .collect();
            if expired.is_empty() {
                continue;
            }
            let mut w = shard.write();
            for id in expired {
                // Re-check under the write lock (cheap, and robust to concurrent removal).
                if w.remove(&id).is_some() {
                    self.taken.clear_job(id);
                    evicted.push(id);
                }
            }
        }
        evicted.sort_unstable();
        evicted
    }

    fn wanted(&self) -> impl Fn(JobId, TaskId) -> bool + '_ {
        move |job, task| self.get(job).is_ok_and(|j| j.is_schedulable(task))
    }

    fn offer(&self, job: &Job, tasks: &[TaskId]) {
        let mut rest = tasks;
        // Offers are grouped by lane (a transition only ever offers one kind, but be general).
        while let Some(&first) = rest.first() {
            let lane = Lane::of(first);
            let n = rest.iter().take_while(|&&t| Lane::of(t) == lane).count();
            self.queue
                .offer(lane, job.resource_group(), job.id(), &rest[..n]);
            if self.queue.spilled()[lane as usize] > 0 {
                self.queue.refill(lane, &self.wanted());
            }
            rest = &rest[n..];
        }
    }

    fn offer_transition(&self, job: &Job, t: &Transition) -> JobState {
        self.offer(job, &t.offers);
        t.state
    }

    /// # Errors
    /// `JobNotFound`; stale if `target` is not reachable now.
    pub fn check_transition(&self, id: JobId, target: JobState) -> Result<JobState> {
        self.get(id)?.check_transition(target)
    }

    /// Ready -> Running; offers the input tasks. Returns how many.
    ///
    /// # Errors
    /// `JobNotFound`, stale `JobAlreadyStarted`.
    pub fn start(&self, id: JobId) -> Result<usize> {
        let job = self.get(id)?;
        let t = job.start()?;
        let n = t.offers.len();
        self.offer_transition(&job, &t);
        Ok(n)
    }

    /// # Errors
    /// See [`Job::complete`].
    pub fn complete(&self, id: JobId, now_ms: u64) -> Result<JobState> {
        let job = self.get(id)?;
        let t = job.complete(now_ms, &self.instances)?;
        // No regular task is schedulable any more: forget their taken entries before the commit
        // task is offered.
        self.taken.clear_job(id);
        Ok(self.offer_transition(&job, &t))
    }

    /// # Errors
    /// See [`Job::cancel`].
    pub fn cancel(&self, id: JobId, now_ms: u64) -> Result<JobState> {
        let job = self.get(id)?;
        let t = job.cancel(now_ms, &self.instances)?;
        self.taken.clear_job(id);
        Ok(self.offer_transition(&job, &t))
    }

    /// # Errors
    /// See [`Job::fail`].
    pub fn fail(&self, id: JobId, message: &str, now_ms: u64) -> Result<JobState> {
        let job = self.get(id)?;
        let state = job.fail(message, now_ms, &self.instances)?.state;
        self.taken.clear_job(id);
        Ok(state)
    }

    /// # Errors
    /// See [`Job::finish`].
    pub fn finish(&self, id: JobId, now_ms: u64) -> Result<JobState> {
        let job = self.get(id)?;
        let state = job.finish(now_ms, &self.instances)?.state;
        self.taken.clear_job(id);
        Ok(state)
    }

    /// # Errors
    /// `JobNotFound` or the job's registration errors.
    pub fn register(
        &self,
        id: JobId,
        task: TaskId,
        em: ExecutionManagerId,
        now_ms: u64,
    ) -> Result<ExecutionContext> {
        self.register_limited(id, task, em, now_ms, None)
    }

    /// [`Self::register`] refusing, with `LimitExceeded` `TaskInputsTooLarge`, a task whose
    /// `task_io` would exceed `max_io` bytes (nothing changes; the caller fails the job).
    ///
    /// # Errors
    /// `JobNotFound`, the job's registration errors, `TaskInputsTooLarge`.
    pub fn register_limited(
        &self,
        id: JobId,
        task: TaskId,
        em: ExecutionManagerId,
        now_ms: u64,
        max_io: Option<usize>,
    ) -> Result<ExecutionContext> {
        let ctx = self
            .get(id)?
            .register_limited(task, em, now_ms, &self.instances, max_io)?;
        self.taken.clear_tasks(id, [task]);
        Ok(ctx)
    }

    /// Many registrations for one EM; one result per item. Consecutive items of the same job
    /// share one job lookup and one read lock.
    pub fn register_batch(
        &self,
        items: &[(JobId, TaskId)],
        em: ExecutionManagerId,
        now_ms: u64,
    ) -> Vec<Result<ExecutionContext>> {
        self.register_batch_limited(items, em, now_ms, None, None)
    }

    /// [`Self::register_batch`] with the `max_io` bound of [`Self::register_limited`]; with
    /// `max_total_io`, the registered tasks' inputs add up to at most that many bytes (beyond
    /// the first), the others are left out with `ReplyFull` (see [`Job::register_many`]).
    pub fn register_batch_limited(
        &self,
        items: &[(JobId, TaskId)],
        em: ExecutionManagerId,
        now_ms: u64,
        max_io: Option<usize>,
        max_total_io: Option<usize>,
    ) -> Vec<Result<ExecutionContext>> {
        let mut out = Vec::with_capacity(items.len());
        let mut budget = max_total_io.map(|remaining| ReplyBudget {
            remaining,
            used: false,
        });
        for run in items.chunk_by(|a, b| a.0 == b.0) {
            match self.get(run[0].0) {
                Ok(job) => {
                    let tasks: Vec<TaskId> = run.iter().map(|&(_, t)| t).collect();
                    let start = out.len();
                    job.register_many(
                        &tasks,
                        em,
                        now_ms,
                        &self.instances,
                        max_io,
                        budget.as_mut(),
                        &mut out,
                    );
                    let registered = tasks
                        .iter()
                        .zip(&out[start..])
                        .filter(|(_, r)| r.is_ok())
                        .map(|(&t, _)| t);
                    self.taken.clear_tasks(job.id(), registered);
                }
                Err(e) => out.extend(run.iter().map(|_| Err(e.clone()))),
            }
        }
        out
    }

    fn apply(&self, job: &Job, r: Reported) -> Option<Outcome> {
        self.offer(job, &r.offers);
        r.outcome
    }

    /// # Errors
    /// See [`Job::report_success`].
    pub fn report_success(
        &self,
        id: JobId,
        task: TaskId,
        instance: TaskInstanceId,
        outputs: &[u8],
    ) -> Result<Option<Outcome>> {
        let job = self.get(id)?;
        let r = job.report_success(task, instance, outputs, &self.instances)?;
        Ok(self.apply(&job, r))
    }

    /// # Errors
    /// See [`Job::report_failure`].
    pub fn report_failure(
        &self,
        id: JobId,
        task: TaskId,
        instance: TaskInstanceId,
        message: &str,
    ) -> Result<Option<Outcome>> {
        let job = self.get(id)?;
        let r = job.report_failure(task, instance, message, &self.instances)?;
        Ok(self.apply(&job, r))
    }

    /// Many reports; one result per item. Consecutive items of the same job share one lookup,
    /// one read lock and one offer.
    pub fn report_batch(
        &self,
        items: &[(JobId, TaskId, TaskInstanceId, Report<'_>)],
    ) -> Vec<Result<Option<Outcome>>> {
        self.report_batch_continuing(items, None).0
    }

    /// [`Self::report_batch`] where, with a [`Continuation`], up to `accept` of the regular
    /// tasks these reports made ready are registered straight for the reporting EM instead of
    /// being offered (returned as the second value): the EM that ran the parents runs the
    /// children, without a trip through the scheduler. Only while the task lane is empty, so
    /// nothing another job waits for is overtaken (the scheduler's order applies as soon as
    /// there is anything to order). A task whose registration fails (its inputs too large, the
    /// reply budget spent) is offered as usual.
    pub fn report_batch_continuing(
        &self,
        items: &[(JobId, TaskId, TaskInstanceId, Report<'_>)],
        continuation: Option<Continuation>,
    ) -> (Vec<Result<Option<Outcome>>>, Vec<ExecutionContext>) {
        let mut out = Vec::with_capacity(items.len());
        let mut continued = Vec::new();
        let mut left = match continuation {
            Some(c) if c.accept > 0 && self.queue.is_lane_empty(Lane::Task) => c.accept,
            _ => 0,
        };
        let mut budget = continuation
            .and_then(|c| c.max_total_io)
            .map(|remaining| ReplyBudget {
                remaining,
                used: false,
            });
        let mut offers = Vec::new();
        let mut registered = Vec::new();
        for run in items.chunk_by(|a, b| a.0 == b.0) {
            match self.get(run[0].0) {
                Ok(job) => {
                    offers.clear();
                    job.report_many(
                        run.iter().map(|&(_, t, i, r)| (t, i, r)),
                        &self.instances,
                        &mut out,
                        &mut offers,
                    );
                    let n = match continuation {
                        Some(_) if left > 0 => offers
                            .iter()
                            .take(left)
                            .take_while(|t| matches!(t, TaskId::Index(_)))
                            .count(),
                        _ => 0,
                    };
                    if let (Some(c), true) = (continuation, n > 0) {
                        registered.clear();
                        job.register_many(
                            &offers[..n],
                            c.em,
                            c.now_ms,
                            &self.instances,
                            c.max_io,
                            budget.as_mut(),
                            &mut registered,
                        );
                        let mut rest = Vec::with_capacity(offers.len());
                        for (&task, result) in offers[..n].iter().zip(registered.drain(..)) {
                            match result {
                                Ok(ctx) => {
                                    continued.push(ctx);
                                    left -= 1;
                                }
                                Err(_) => rest.push(task),
                            }
                        }
                        rest.extend_from_slice(&offers[n..]);
                        self.offer(&job, &rest);
                    } else {
                        self.offer(&job, &offers);
                    }
                }
                Err(e) => out.extend(run.iter().map(|_| Err(e.clone()))),
            }
        }
        (out, continued)
    }

    /// Spec 4.3's pass: terminal / no longer live => drop; dead EM => force-remove, re-offer,
    /// drop; soft deadline passed and not yet handled => mark, re-offer once, keep.
    pub fn gc_instances(&self, now_ms: u64, dead_ems: &[ExecutionManagerId]) -> InstanceGcReport {
        let dead: HashSet<ExecutionManagerId> = dead_ems.iter().copied().collect();
        let mut report = InstanceGcReport::default();
        let mut requeue: Vec<(Arc<Job>, TaskId)> = Vec::new();
        for (iid, e) in self.instances.snapshot() {
            let Ok(job) = self.get(e.job) else {
                self.instances.remove(iid);
                report.removed_terminal += 1;
                continue;
            };
            if !job.instance_is_live(e.task, iid) {
                self.instances.remove(iid);
                report.removed_terminal += 1;
            } else if dead.contains(&e.em) {
                if job.force_remove(e.task, iid, &self.instances) {
                    report.requeued_dead += 1;
                    requeue.push((job, e.task));
                }
                report.removed_dead += 1;
            } else if !e.soft_timeout_handled && now_ms >= e.soft_deadline_ms {
                self.instances.mark_soft_timeout_handled(iid);
                job.mark_soft_timeout(e.task);
                report.requeued_soft_timeout += 1;
                requeue.push((job, e.task));
            }
        }
        for (job, task) in requeue {
            self.offer(&job, &[task]);
        }
        report
    }

    /// An execution manager listed the instances it holds (`held`): every instance registered
    /// for it before `registered_before_ms` that it does not hold was lost on the way (the
    /// reply that carried it never arrived) and is removed and its task offered again, as for
    /// a dead EM. Instances registered since may still be in a reply in flight: left alone.
    /// Returns how many were offered again.
    pub fn reconcile_em(
        &self,
        em: ExecutionManagerId,
        held: &HashSet<TaskInstanceId>,
        registered_before_ms: u64,
    ) -> usize {
        let mut requeue: Vec<(Arc<Job>, TaskId)> = Vec::new();
        // Every heartbeat of every EM asks: only this EM's suspects are copied.
        let suspects = self.instances.select(|iid, e| {
            e.em == em && e.registered_ms < registered_before_ms && !held.contains(&iid)
        });
        for (iid, e) in suspects {
            let Ok(job) = self.get(e.job) else {
                self.instances.remove(iid);
                continue;
            };
            if job.force_remove(e.task, iid, &self.instances) {
                requeue.push((job, e.task));
            }
        }
        let n = requeue.len();
        for (job, task) in requeue {
            self.offer(&job, &[task]);
        }
        n
    }

    #[must_use]
    pub fn live_instances(&self) -> usize {
        self.instances.len()
    }

    /// Up to `max_items` entries of `lane` (see [`InboundQueue::poll`]). With `now_ms`, the
    /// entries are recorded as taken at that time (see [`Self::requeue_expired`]); without, they
    /// are handed out for good.
    pub fn poll(
        &self,
        lane: Lane,
        max_items: usize,
        wait: Duration,
        now_ms: Option<u64>,
    ) -> Vec<Entry> {
        let got = self.queue.poll(lane, max_items, wait, &self.wanted());
        if let Some(now) = now_ms {
            self.taken.record(&got, now);
        }
        got
    }

    /// The three lanes at once (see [`InboundQueue::poll_all`]); `now_ms` as for [`Self::poll`].
    pub fn poll_all(
        &self,
        max_items: [usize; 3],
        wait: Duration,
        now_ms: Option<u64>,
    ) -> [Vec<Entry>; 3] {
        let got = self.queue.poll_all(max_items, wait, &self.wanted());
        if let Some(now) = now_ms {
            for lane in &got {
                self.taken.record(lane, now);
            }
        }
        got
    }

    /// Up to `max_items` regular tasks for an execution manager with room, served before the
    /// scheduler's `poll_all` (see [`InboundQueue::poll_first`]) while the scheduler holds no
    /// entry it polled and nobody registered yet (so nothing it is ordering is overtaken);
    /// recorded as taken at `now_ms` like a poll's, until the caller registers them (or
    /// [`Self::give_back`]s them).
    pub fn poll_first(&self, max_items: usize, wait: Duration, now_ms: u64) -> Vec<Entry> {
        let got = self
            .queue
            .poll_first(Lane::Task, max_items, wait, &self.wanted(), &|| {
                self.taken.is_empty()
            });
        self.taken.record(&got, now_ms);
        got
    }

    /// Offer again, at once, entries a poll took and nobody will register (the poller went
    /// away); those no longer schedulable are dropped. Returns how many were offered.
    pub fn give_back(&self, entries: &[Entry]) -> usize {
        let mut n = 0;
        for run in entries.chunk_by(|a, b| a.job == b.job) {
            let tasks: Vec<TaskId> = run.iter().map(|e| e.task).collect();
            self.taken.clear_tasks(run[0].job, tasks.iter().copied());
            n += self.offer_schedulable(run[0].job, tasks);
        }
        n
    }

    /// Offer those of `tasks` that are still schedulable (the job cached and in the lane's
    /// state, the instance limit not reached); returns how many.
    fn offer_schedulable(&self, id: JobId, tasks: Vec<TaskId>) -> usize {
        let Ok(job) = self.get(id) else { return 0 };
        let offers: Vec<TaskId> = tasks
            .into_iter()
            .filter(|&t| job.is_schedulable(t))
            .collect();
        self.offer(&job, &offers);
        offers.len()
    }

    /// Re-offer every entry taken by a poll more than `visibility_ms` before `now_ms` and not
    /// registered since, if its task is still schedulable (job in the lane's state, instance limit
    /// not reached); expired entries leave the ledger either way (a re-offered entry is recorded
    /// again when it is polled again). Returns how many entries were offered.
    ///
    /// A registration racing with this call can cause a duplicate entry, never a lost one: the
    /// scheduler de-duplicates and the instance limit refuses a second instance.
    pub fn requeue_expired(&self, now_ms: u64, visibility_ms: u64) -> usize {
        let mut n = 0;
        for (id, _rg, tasks) in self.taken.take_expired(now_ms, visibility_ms) {
            n += self.offer_schedulable(id, tasks);
        }
        n
    }

    /// Entries taken by polls (with `now_ms`) and not yet registered, expired or cleared.
    #[must_use]
    pub fn taken_len(&self) -> usize {
        self.taken.len()
    }

    /// Re-offer every Ready task / commit / cleanup of the cached jobs; returns how many. The
    /// taken-entry ledger is cleared (everything still schedulable is offered anyway).
    pub fn resend_ready(&self) -> usize {
        self.taken.clear();
        let mut n = 0;
        for shard in &*self.shards {
            // Snapshot, then offer without holding the shard lock.
            let jobs: Vec<Arc<Job>> = shard.read().values().cloned().collect();
            for job in jobs {
                let entries = job.ready_entries();
                n += entries.len();
                self.offer(&job, &entries);
            }
        }
        n
    }

    /// # Errors
    /// `JobNotFound`; see [`Job::outputs`].
    pub fn outputs(&self, id: JobId) -> Result<Payload> {
        self.get(id)?.outputs()
    }

    /// See [`Job::drop_outputs`].
    ///
    /// # Errors
    /// `JobNotFound`.
    pub fn drop_outputs(&self, id: JobId) -> Result<bool> {
        Ok(self.get(id)?.drop_outputs())
    }

    /// # Errors
    /// `JobNotFound`.
    pub fn progress(&self, id: JobId) -> Result<Progress> {
        Ok(self.get(id)?.progress())
    }
}

#[cfg(test)]
mod tests;
