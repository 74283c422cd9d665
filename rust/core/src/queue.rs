//! The inbound ("ready") queue: three bounded lanes (task / commit / cleanup) of "this task is
//! schedulable" entries, drained by the scheduler through `poll`.
//!
//! Design — a full lane never blocks anybody who holds a lock:
//!
//! * The reference awaited a full channel while holding the job's lock, so a slow scheduler could
//!   deadlock the service. Here offers are non-blocking and are made by the cache *after* the job
//!   lock is released (job operations only return the tasks to offer).
//! * An offer pushes what fits; the rest is *parked* in a per-lane spill list: a FIFO of
//!   `(job, [task ids])` groups (one group per offer, so parking a whole job costs one id per
//!   task, not one entry). Lane memory stays bounded by its capacity; nothing is lost and nobody
//!   waits.
//! * Whoever frees space (a poller after taking entries, or a producer right after parking)
//!   refills the lane from the spill in FIFO order. Refill asks the caller whether a parked
//!   entry is still wanted (task still schedulable, job still in the lane's state) and skips stale
//!   ones, so a long spill does not deliver garbage. The predicate is evaluated with no queue lock
//!   held (it takes job locks; producers never hold a job lock while they touch the queue, so
//!   there is no lock-order cycle).
//! * While the spill of a lane is non-empty, new offers go to the spill too, so FIFO order is
//!   kept across the two stores.
//! * Pollers wait on a per-lane `Condvar` (plus one for `poll_all`) until the *shared* deadline;
//!   nobody spins. Each entry is popped under the queue mutex, so it goes to exactly one poller.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{CoreError, Result};
use crate::ids::{JobId, ResourceGroupId, TaskId};
use crate::state::vocabulary;

vocabulary! {
    /// An inbound-queue lane: the kind of task its entries name. The codes index per-lane arrays.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Lane {
        Task = 0,
        Commit = 1,
        Cleanup = 2,
    }
}

impl Lane {
    #[must_use]
    pub const fn of(task: TaskId) -> Self {
        match task {
            TaskId::Index(_) => Self::Task,
            TaskId::Commit => Self::Commit,
            TaskId::Cleanup => Self::Cleanup,
        }
    }
}

/// One schedulable task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    pub resource_group: ResourceGroupId,
    pub job: JobId,
    pub task: TaskId,
}

#[derive(Debug)]
struct SpillGroup {
    resource_group: ResourceGroupId,
    job: JobId,
    tasks: VecDeque<TaskId>,
}

#[derive(Debug, Default)]
struct QueueState {
    lanes: [VecDeque<Entry>; 3],
    /// Entries promised to first-served pollers waiting now (see [`InboundQueue::poll_first`]):
    /// `poll_all` leaves that many in the lane for them.
    promised: [usize; 3],
    closed: bool,
}

/// Bounded three-lane queue with spill (see the module docs).
#[derive(Debug)]
pub struct InboundQueue {
    state: Mutex<QueueState>,
    lane_cv: [Condvar; 3],
    any_cv: Condvar,
    capacity: [usize; 3],
    spill: [Mutex<VecDeque<SpillGroup>>; 3],
    /// Parked entries per lane (fast path: no spill lock when zero).
    spilled: [AtomicUsize; 3],
}

impl InboundQueue {
    /// # Errors
    /// `InvalidRequest` if a capacity is zero.
    pub fn new(task: usize, commit: usize, cleanup: usize) -> Result<Self> {
        for (name, c) in [("task", task), ("commit", commit), ("cleanup", cleanup)] {
            if c == 0 {
                return Err(CoreError::request(
                    "InvalidQueueCapacity",
                    format!("{name} lane capacity must be greater than 0"),
                ));
            }
        }
        Ok(Self {
            state: Mutex::new(QueueState::default()),
            lane_cv: Default::default(),
            any_cv: Condvar::new(),
            capacity: [task, commit, cleanup],
            spill: Default::default(),
            spilled: Default::default(),
        })
    }

    fn notify(&self, lane: Lane) {
        self.lane_cv[lane as usize].notify_all();
        self.any_cv.notify_all();
    }

    /// Offer entries of one job; never blocks. What does not fit is parked in the spill list.
    pub fn offer(&self, lane: Lane, resource_group: ResourceGroupId, job: JobId, tasks: &[TaskId]) {
        if tasks.is_empty() {
            return;
        }
        let l = lane as usize;
        let mut pushed = 0;
        if self.spilled[l].load(Ordering::Acquire) == 0 {
            let mut st = self.state.lock();
            let free = self.capacity[l].saturating_sub(st.lanes[l].len());
            pushed = free.min(tasks.len());
            st.lanes[l].extend(tasks[..pushed].iter().map(|&task| Entry {
                resource_group,
                job,
                task,
            }));
        }
        if pushed < tasks.len() {
            let rest = &tasks[pushed..];
            let mut spill = self.spill[l].lock();
            match spill.back_mut() {
                Some(g) if g.job == job => g.tasks.extend(rest),
                _ => spill.push_back(SpillGroup {
                    resource_group,
                    job,
                    tasks: rest.iter().copied().collect(),
                }),
            }
            self.spilled[l].fetch_add(rest.len(), Ordering::AcqRel);
        }
        // Take the queue lock before notifying so a poller that checked "nothing to do" is
        // already waiting (no lost wake-up).
        drop(self.state.lock());
        self.notify(lane);
    }

    /// Move parked entries into the lane while it has room; `wanted` filters stale ones.
    pub fn refill(&self, lane: Lane, wanted: &dyn Fn(JobId, TaskId) -> bool) {
        let l = lane as usize;
        while self.spilled[l].load(Ordering::Acquire) > 0 {
            let free = {
                let st = self.state.lock();
                self.capacity[l].saturating_sub(st.lanes[l].len())
            };
            if free == 0 {
                return;
            }
            // Take up to `free` candidates from the front of the spill.
            let mut batch: Vec<Entry> = Vec::with_capacity(free.min(1024));
            {
                let mut spill = self.spill[l].lock();
                while batch.len() < free {
                    let Some(g) = spill.front_mut() else { break };
                    while batch.len() < free {
                        let Some(task) = g.tasks.pop_front() else {
                            break;
                        };
                        batch.push(Entry {
                            resource_group: g.resource_group,
                            job: g.job,
                            task,
                        });
                    }
                    if g.tasks.is_empty() {
                        spill.pop_front();
                    }
                }
                self.spilled[l].fetch_sub(batch.len(), Ordering::AcqRel);
            }
            if batch.is_empty() {
                return;
            }
            batch.retain(|e| wanted(e.job, e.task));
            if batch.is_empty() {
                continue;
            }
            let leftover = {
                let mut st = self.state.lock();
                let free = self.capacity[l].saturating_sub(st.lanes[l].len());
                let n = free.min(batch.len());
                st.lanes[l].extend(batch.drain(..n));
                batch
            };
            if !leftover.is_empty() {
                // Lost a race with a direct offer: put them back at the front, in order.
                let mut spill = self.spill[l].lock();
                for e in leftover.iter().rev() {
                    spill.push_front(SpillGroup {
                        resource_group: e.resource_group,
                        job: e.job,
                        tasks: VecDeque::from([e.task]),
                    });
                }
                self.spilled[l].fetch_add(leftover.len(), Ordering::AcqRel);
            }
            drop(self.state.lock());
            self.notify(lane);
            if !leftover.is_empty() {
                return;
            }
        }
    }

    fn has_room_and_spill(&self, st: &QueueState, l: usize) -> bool {
        self.spilled[l].load(Ordering::Acquire) > 0 && st.lanes[l].len() < self.capacity[l]
    }

    /// Up to `max_items` entries of one lane; returns as soon as `max_items` are collected or the
    /// shared deadline (`now + wait`) passes. `max_items == 0` returns immediately.
    pub fn poll(
        &self,
        lane: Lane,
        max_items: usize,
        wait: Duration,
        wanted: &dyn Fn(JobId, TaskId) -> bool,
    ) -> Vec<Entry> {
        self.poll_lane(lane, max_items, wait, wanted, None)
    }

    /// [`Self::poll`] served before [`Self::poll_all`]: while this poller waits and `may_take()`
    /// holds, the next `max_items` entries of the lane are its own (`poll_all` leaves them), so
    /// a consumer with room gets the next entry rather than racing the scheduler for it. While
    /// `may_take()` is false (it is asked under the queue lock whenever entries are there), it
    /// takes and holds back nothing: they are the scheduler's.
    pub fn poll_first(
        &self,
        lane: Lane,
        max_items: usize,
        wait: Duration,
        wanted: &dyn Fn(JobId, TaskId) -> bool,
        may_take: &dyn Fn() -> bool,
    ) -> Vec<Entry> {
        self.poll_lane(lane, max_items, wait, wanted, Some(may_take))
    }

    fn poll_lane(
        &self,
        lane: Lane,
        max_items: usize,
        wait: Duration,
        wanted: &dyn Fn(JobId, TaskId) -> bool,
        first: Option<&dyn Fn() -> bool>,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        if max_items == 0 {
            return out;
        }
        let l = lane as usize;
        let deadline = Instant::now().checked_add(wait);
        let mut promised = 0;
        loop {
            self.refill(lane, wanted);
            let mut st = self.state.lock();
            let allowed = match first {
                Some(may_take) => st.lanes[l].is_empty() || may_take(),
                None => true,
            };
            let take = if allowed {
                (max_items - out.len()).min(st.lanes[l].len())
            } else {
                0
            };
            out.extend(st.lanes[l].drain(..take));
            // The promise is what is still wanted, updated under the lock of the take; it goes
            // with the poller when it leaves (entries that came meanwhile were just taken).
            let done = out.len() >= max_items
                || st.closed
                || deadline.is_some_and(|d| Instant::now() >= d);
            let outstanding = if first.is_some() && allowed && !done {
                max_items - out.len()
            } else {
                0
            };
            st.promised[l] = st.promised[l] - promised + outstanding;
            if outstanding < promised && !st.lanes[l].is_empty() {
                // poll_all may have left these for us: they are its own again.
                self.any_cv.notify_all();
            }
            promised = outstanding;
            if done {
                break;
            }
            if self.has_room_and_spill(&st, l) {
                continue;
            }
            match deadline {
                Some(d) => {
                    self.lane_cv[l].wait_until(&mut st, d);
                }
                None => self.lane_cv[l].wait(&mut st),
            }
        }
        // We freed room: pull parked entries in for the next poller.
        self.refill(lane, wanted);
        out
    }

    /// Poll the three lanes at once; returns when any lane yields work or the wait elapses.
    pub fn poll_all(
        &self,
        max_items: [usize; 3],
        wait: Duration,
        wanted: &dyn Fn(JobId, TaskId) -> bool,
    ) -> [Vec<Entry>; 3] {
        let mut out: [Vec<Entry>; 3] = Default::default();
        if max_items.iter().all(|&m| m == 0) {
            return out;
        }
        let deadline = Instant::now().checked_add(wait);
        loop {
            for lane in Lane::ALL {
                if max_items[lane as usize] > 0 {
                    self.refill(lane, wanted);
                }
            }
            let mut st = self.state.lock();
            for l in 0..3 {
                let free = st.lanes[l].len().saturating_sub(st.promised[l]);
                let take = max_items[l].min(free);
                out[l].extend(st.lanes[l].drain(..take));
            }
            if out.iter().any(|o| !o.is_empty()) || st.closed {
                break;
            }
            if (0..3).any(|l| max_items[l] > 0 && self.has_room_and_spill(&st, l)) {
                continue;
            }
            match deadline {
                Some(d) if Instant::now() < d => {
                    self.any_cv.wait_until(&mut st, d);
                }
                Some(_) => break,
                None => self.any_cv.wait(&mut st),
            }
        }
        for lane in Lane::ALL {
            self.refill(lane, wanted);
        }
        out
    }

    /// Entries currently in each lane (parked entries excluded).
    #[must_use]
    pub fn depths(&self) -> [usize; 3] {
        let st = self.state.lock();
        [st.lanes[0].len(), st.lanes[1].len(), st.lanes[2].len()]
    }

    /// Nothing waits in `lane`, in the queue or parked.
    #[must_use]
    pub fn is_lane_empty(&self, lane: Lane) -> bool {
        let l = lane as usize;
        self.spilled[l].load(Ordering::Acquire) == 0 && self.state.lock().lanes[l].is_empty()
    }

    /// Parked entries per lane.
    #[must_use]
    pub fn spilled(&self) -> [usize; 3] {
        [
            self.spilled[0].load(Ordering::Acquire),
            self.spilled[1].load(Ordering::Acquire),
            self.spilled[2].load(Ordering::Acquire),
        ]
    }

    #[must_use]
    pub fn capacity(&self, lane: Lane) -> usize {
        self.capacity[lane as usize]
    }

    /// Wake every poller; later polls return immediately.
    pub fn close(&self) {
        self.state.lock().closed = true;
        for cv in &self.lane_cv {
            cv.notify_all();
        }
        self.any_cv.notify_all();
    }

    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}

#[cfg(test)]
mod tests;
