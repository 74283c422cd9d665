//! Task-instance table (sans-IO): which instances are live, on which EM, and when
//! their soft timeout passes. Instance ids come from an atomic counter starting at 1 (they are
//! only unique within a storage session; the session id fences older ones).
//!
//! Entries are removed eagerly when an instance reports or its job releases the task graph, so
//! the table only holds instances that are actually running; `gc` (driven by the caller's timer)
//! handles the rest: dead EMs and soft timeouts. The table's locks are leaves: nothing else is
//! locked while one is held.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::hash::IdMap;
use crate::ids::{ExecutionManagerId, JobId, TaskId, TaskInstanceId};

const SHARDS: usize = 16;
const ID_BLOCK_BITS: u32 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceEntry {
    pub job: JobId,
    pub task: TaskId,
    pub em: ExecutionManagerId,
    /// When it was registered (the caller's clock), for [`crate::JobCache::reconcile_em`].
    pub registered_ms: u64,
    pub soft_deadline_ms: u64,
    pub soft_timeout_handled: bool,
}

/// Counts of one GC pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceGcReport {
    pub removed_terminal: usize,
    pub removed_dead: usize,
    pub requeued_dead: usize,
    pub requeued_soft_timeout: usize,
}

#[derive(Debug)]
pub struct InstanceTable {
    next_id: AtomicU64,
    shards: Box<[Mutex<IdMap<TaskInstanceId, InstanceEntry>>]>,
}

impl Default for InstanceTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InstanceTable {
    #[must_use]
    pub fn new() -> Self {
        Self {
            next_id: AtomicU64::new(1),
            shards: (0..SHARDS).map(|_| Mutex::new(IdMap::default())).collect(),
        }
    }

    fn shard(&self, id: TaskInstanceId) -> &Mutex<IdMap<TaskInstanceId, InstanceEntry>> {
        // Blocks of consecutive ids share a shard: a batch reserves a block, so concurrent batches
        // on different threads touch different shards instead of bouncing all of them.
        &self.shards[((id >> ID_BLOCK_BITS) as usize) % SHARDS]
    }

    /// A fresh instance id (1, 2, 3, ... per process).
    pub fn next_id(&self) -> TaskInstanceId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// `n` consecutive fresh ids (one atomic operation for a whole batch).
    pub fn reserve(&self, n: usize) -> std::ops::Range<TaskInstanceId> {
        let start = self.next_id.fetch_add(n as u64, Ordering::Relaxed);
        start..start + n as u64
    }

    pub fn insert(&self, id: TaskInstanceId, entry: InstanceEntry) {
        self.shard(id).lock().insert(id, entry);
    }

    pub fn remove(&self, id: TaskInstanceId) -> Option<InstanceEntry> {
        self.shard(id).lock().remove(&id)
    }

    #[must_use]
    pub fn get(&self, id: TaskInstanceId) -> Option<InstanceEntry> {
        self.shard(id).lock().get(&id).copied()
    }

    pub fn mark_soft_timeout_handled(&self, id: TaskInstanceId) {
        if let Some(e) = self.shard(id).lock().get_mut(&id) {
            e.soft_timeout_handled = true;
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy of every entry (GC works on a snapshot so no table lock is held while it takes job
    /// locks).
    #[must_use]
    pub fn snapshot(&self) -> Vec<(TaskInstanceId, InstanceEntry)> {
        let mut out = Vec::new();
        for s in &*self.shards {
            out.extend(s.lock().iter().map(|(&k, &v)| (k, v)));
        }
        out
    }

    /// Copy of the entries `keep` selects, scanning each shard under its lock (no copy of the
    /// whole table, for a question about a few of them).
    #[must_use]
    pub fn select(
        &self,
        keep: impl Fn(TaskInstanceId, &InstanceEntry) -> bool,
    ) -> Vec<(TaskInstanceId, InstanceEntry)> {
        let mut out = Vec::new();
        for s in &*self.shards {
            out.extend(
                s.lock()
                    .iter()
                    .filter(|(&k, v)| keep(k, v))
                    .map(|(&k, &v)| (k, v)),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_increase() {
        let t = InstanceTable::new();
        assert_eq!(t.next_id(), 1);
        assert_eq!(t.next_id(), 2);
        assert_eq!(t.reserve(3), 3..6);
        assert_eq!(t.next_id(), 6);
    }

    #[test]
    fn insert_remove_mark() {
        let t = InstanceTable::new();
        let e = InstanceEntry {
            job: 1,
            task: TaskId::Index(0),
            em: 3,
            registered_ms: 0,
            soft_deadline_ms: 10,
            soft_timeout_handled: false,
        };
        t.insert(7, e);
        assert_eq!(t.len(), 1);
        t.mark_soft_timeout_handled(7);
        assert!(t.get(7).expect("entry").soft_timeout_handled);
        assert_eq!(t.snapshot().len(), 1);
        assert!(t.remove(7).is_some());
        assert!(t.is_empty());
    }

    #[test]
    fn select_copies_only_what_it_keeps_across_every_shard() {
        let t = InstanceTable::new();
        let entry = |em| InstanceEntry {
            job: 1,
            task: TaskId::Index(0),
            em,
            registered_ms: 0,
            soft_deadline_ms: 10,
            soft_timeout_handled: false,
        };
        // Ids far apart land in different shards.
        for id in 1..=200u64 {
            t.insert(id << ID_BLOCK_BITS, entry(id % 4));
        }
        let mut picked: Vec<_> = t
            .select(|_, e| e.em == 1)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        picked.sort_unstable();
        let want: Vec<_> = (1..=200u64)
            .filter(|id| id % 4 == 1)
            .map(|id| id << ID_BLOCK_BITS)
            .collect();
        assert_eq!(picked, want);
        assert!(t.select(|id, _| id == 5).is_empty());
    }
}
