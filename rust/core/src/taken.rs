//! The ledger of queue entries handed out by `poll` / `poll_all` and not yet followed by a
//! registration (a visibility timeout, as in message queues).
//!
//! A poller takes entries for good: if it never registers them (a rogue poller, a scheduler that
//! dies or stalls before registering) the work would be stranded. The ledger remembers each taken
//! entry with the time it was taken; a successful registration of an instance of the task forgets
//! it; `requeue_expired` hands back what was taken too long ago and is still schedulable.
//!
//! Layout: `JobId -> (resource group, task code -> taken_at_ms)`, sharded by job id behind
//! `parking_lot` mutexes. Poll records and registration clears one job's tasks per lock, per-job
//! clearing (termination, eviction, removal) is one map removal, and an atomic entry count lets
//! registration skip the ledger entirely while nothing is outstanding.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::hash::IdMap;
use crate::ids::{JobId, ResourceGroupId, TaskId};
use crate::queue::Entry;

const SHARDS: usize = 16;

#[derive(Debug)]
struct JobTaken {
    resource_group: ResourceGroupId,
    /// `TaskId::code()` -> time taken (ms).
    tasks: IdMap<i64, u64>,
}

#[derive(Debug)]
pub struct TakenLedger {
    shards: Box<[Mutex<IdMap<JobId, JobTaken>>]>,
    len: AtomicUsize,
}

impl Default for TakenLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl TakenLedger {
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(IdMap::default())).collect(),
            len: AtomicUsize::new(0),
        }
    }

    fn shard(&self, job: JobId) -> &Mutex<IdMap<JobId, JobTaken>> {
        &self.shards[(job as usize) % SHARDS]
    }

    /// Entries currently recorded.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record entries taken at `now_ms` (a task taken again gets the new time).
    pub fn record(&self, entries: &[Entry], now_ms: u64) {
        let mut added = 0;
        // Entries of one job are usually contiguous: one lock per run.
        for run in entries.chunk_by(|a, b| a.job == b.job) {
            let mut shard = self.shard(run[0].job).lock();
            let job = shard.entry(run[0].job).or_insert_with(|| JobTaken {
                resource_group: run[0].resource_group,
                tasks: IdMap::default(),
            });
            // One allocation per run, not a rehash per doubling.
            job.tasks.reserve(run.len());
            for e in run {
                if job.tasks.insert(e.task.code(), now_ms).is_none() {
                    added += 1;
                }
            }
        }
        if added > 0 {
            self.len.fetch_add(added, Ordering::AcqRel);
        }
    }

    /// Forget tasks of one job (they were registered).
    pub fn clear_tasks(&self, job: JobId, tasks: impl IntoIterator<Item = TaskId>) {
        if self.is_empty() {
            return;
        }
        let mut shard = self.shard(job).lock();
        let Some(taken) = shard.get_mut(&job) else {
            return;
        };
        let mut removed = 0;
        for t in tasks {
            if taken.tasks.remove(&t.code()).is_some() {
                removed += 1;
            }
        }
        if taken.tasks.is_empty() {
            shard.remove(&job);
        }
        drop(shard);
        if removed > 0 {
            self.len.fetch_sub(removed, Ordering::AcqRel);
        }
    }

    /// Forget every entry of `job`.
    pub fn clear_job(&self, job: JobId) {
        if self.is_empty() {
            return;
        }
        let removed = self.shard(job).lock().remove(&job);
        if let Some(taken) = removed {
            self.len.fetch_sub(taken.tasks.len(), Ordering::AcqRel);
        }
    }

    /// Forget everything.
    pub fn clear(&self) {
        for shard in &*self.shards {
            let mut shard = shard.lock();
            let n: usize = shard.values().map(|j| j.tasks.len()).sum();
            shard.clear();
            drop(shard);
            self.len.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Remove and return every entry taken more than `visibility_ms` before `now_ms`, grouped by
    /// job (tasks in code order within a job).
    pub fn take_expired(
        &self,
        now_ms: u64,
        visibility_ms: u64,
    ) -> Vec<(JobId, ResourceGroupId, Vec<TaskId>)> {
        let mut out = Vec::new();
        for shard in &*self.shards {
            let mut shard = shard.lock();
            let mut removed = 0;
            shard.retain(|&job, taken| {
                let mut expired: Vec<TaskId> = Vec::new();
                taken.tasks.retain(|&code, &mut at| {
                    let keep = now_ms.saturating_sub(at) <= visibility_ms;
                    if !keep {
                        if let Some(t) = TaskId::from_code(code) {
                            expired.push(t);
                        }
                        removed += 1;
                    }
                    keep
                });
                if !expired.is_empty() {
                    expired.sort_unstable();
                    out.push((job, taken.resource_group, expired));
                }
                !taken.tasks.is_empty()
            });
            drop(shard);
            if removed > 0 {
                self.len.fetch_sub(removed, Ordering::AcqRel);
            }
        }
        out.sort_unstable_by_key(|(job, _, _)| *job);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(job: JobId, task: TaskId) -> Entry {
        Entry {
            resource_group: 9,
            job,
            task,
        }
    }

    #[test]
    fn record_clear_and_expire() {
        let l = TakenLedger::new();
        l.record(
            &[
                e(1, TaskId::Index(0)),
                e(1, TaskId::Index(1)),
                e(2, TaskId::Commit),
            ],
            100,
        );
        assert_eq!(l.len(), 3);
        l.record(&[e(1, TaskId::Index(1))], 150);
        assert_eq!(l.len(), 3, "taken again: same entry, new time");
        l.clear_tasks(1, [TaskId::Index(0), TaskId::Index(7)]);
        assert_eq!(l.len(), 2);
        assert!(
            l.take_expired(150, 50).is_empty(),
            "exactly the timeout is not expired"
        );
        assert_eq!(l.take_expired(151, 50), vec![(2, 9, vec![TaskId::Commit])]);
        assert_eq!(l.len(), 1);
        assert_eq!(
            l.take_expired(1000, 50),
            vec![(1, 9, vec![TaskId::Index(1)])]
        );
        assert!(l.is_empty());
        assert!(
            l.take_expired(10_000, 0).is_empty(),
            "expired entries are handed out once"
        );
        l.record(&[e(3, TaskId::Cleanup), e(4, TaskId::Index(2))], 0);
        l.clear_job(3);
        assert_eq!(l.len(), 1);
        l.clear();
        assert!(l.is_empty());
    }
}
