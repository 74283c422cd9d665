use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn all(_: JobId, _: TaskId) -> bool {
    true
}

fn q(cap: usize) -> InboundQueue {
    InboundQueue::new(cap, cap, cap).expect("queue")
}

#[test]
fn zero_capacity_is_rejected() {
    assert!(InboundQueue::new(0, 1, 1).is_err());
    assert!(InboundQueue::new(1, 0, 1).is_err());
    assert!(InboundQueue::new(1, 1, 0).is_err());
}

#[test]
fn recv_returns_early_when_max_items_reached() {
    let q = Arc::new(q(1));
    let producer = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            for i in 0..4 {
                std::thread::sleep(Duration::from_millis(5));
                q.offer(Lane::Task, 1, 10, &[TaskId::Index(i)]);
            }
        })
    };
    let t0 = Instant::now();
    let got = q.poll(Lane::Task, 4, Duration::from_secs(10), &all);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "returned as soon as 4 arrived"
    );
    producer.join().expect("producer");
    let tasks: Vec<TaskId> = got.iter().map(|e| e.task).collect();
    assert_eq!(
        tasks,
        (0..4).map(TaskId::Index).collect::<Vec<_>>(),
        "order preserved"
    );
    assert!(got.iter().all(|e| e.job == 10 && e.resource_group == 1));
}

#[test]
fn capacity_one_lane_with_burst_spills_and_keeps_order() {
    let q = q(1);
    let tasks: Vec<TaskId> = (0..4).map(TaskId::Index).collect();
    q.offer(Lane::Task, 1, 10, &tasks);
    assert_eq!(q.depths()[0], 1, "lane bounded by its capacity");
    assert_eq!(q.spilled()[0], 3, "the rest is parked, not lost");
    let t0 = Instant::now();
    let got = q.poll(Lane::Task, 4, Duration::from_secs(10), &all);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(got.iter().map(|e| e.task).collect::<Vec<_>>(), tasks);
}

#[test]
fn recv_returns_empty_when_wait_elapses() {
    let q = q(4);
    let t0 = Instant::now();
    let got = q.poll(Lane::Commit, 3, Duration::from_millis(100), &all);
    assert!(got.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(100));
}

#[test]
fn partial_batch_waits_for_the_shared_deadline() {
    let q = q(4);
    q.offer(Lane::Task, 1, 1, &[TaskId::Index(0)]);
    let t0 = Instant::now();
    let got = q.poll(Lane::Task, 2, Duration::from_millis(80), &all);
    assert_eq!(got.len(), 1);
    let e = t0.elapsed();
    assert!(
        e >= Duration::from_millis(80) && e < Duration::from_secs(5),
        "{e:?}"
    );
}

#[test]
fn max_items_zero_returns_immediately() {
    let q = q(4);
    q.offer(Lane::Task, 1, 1, &[TaskId::Index(0)]);
    let t0 = Instant::now();
    assert!(q
        .poll(Lane::Task, 0, Duration::from_secs(10), &all)
        .is_empty());
    assert!(q
        .poll_all([0, 0, 0], Duration::from_secs(10), &all)
        .iter()
        .all(Vec::is_empty));
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(q.depths()[0], 1);
}

#[test]
fn lanes_are_independent_and_poll_all_returns_on_any_work() {
    let q = Arc::new(q(8));
    let poller = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || q.poll_all([10, 10, 10], Duration::from_secs(10), &all))
    };
    std::thread::sleep(Duration::from_millis(20));
    q.offer(Lane::Cleanup, 2, 5, &[TaskId::Cleanup]);
    let t0 = Instant::now();
    let [t, c, cl] = poller.join().expect("poller");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(t.is_empty() && c.is_empty());
    assert_eq!(
        cl,
        vec![Entry {
            resource_group: 2,
            job: 5,
            task: TaskId::Cleanup
        }]
    );
}

#[test]
fn close_wakes_pollers() {
    let q = Arc::new(q(8));
    let pollers: Vec<_> = (0..3)
        .map(|i| {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                if i == 0 {
                    q.poll_all([1, 1, 1], Duration::from_secs(30), &all)[0].len()
                } else {
                    q.poll(Lane::Task, 5, Duration::from_secs(30), &all).len()
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    let t0 = Instant::now();
    q.close();
    for p in pollers {
        assert_eq!(p.join().expect("poller"), 0);
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(q.is_closed());
    let t1 = Instant::now();
    assert!(q
        .poll(Lane::Task, 5, Duration::from_secs(30), &all)
        .is_empty());
    assert!(
        t1.elapsed() < Duration::from_secs(1),
        "later polls return immediately"
    );
}

#[test]
fn stale_spilled_entries_are_skipped_on_refill() {
    let q = q(1);
    let tasks: Vec<TaskId> = (0..6).map(TaskId::Index).collect();
    q.offer(Lane::Task, 1, 10, &tasks);
    let even = |_: JobId, t: TaskId| matches!(t, TaskId::Index(i) if i % 2 == 0);
    let got = q.poll(Lane::Task, 10, Duration::from_millis(50), &even);
    // Entry 0 went straight into the lane; of the parked ones only the wanted survive.
    assert_eq!(
        got.iter().map(|e| e.task).collect::<Vec<_>>(),
        vec![TaskId::Index(0), TaskId::Index(2), TaskId::Index(4)]
    );
    assert_eq!(q.spilled(), [0, 0, 0]);
}

#[test]
fn spill_and_refill_deliver_every_entry_exactly_once_under_concurrency() {
    const PRODUCERS: u64 = 4;
    const PER_PRODUCER: u32 = 5_000;
    let q = Arc::new(q(16));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                let mut i = 0;
                while i < PER_PRODUCER {
                    // Mixed batch sizes: singles and bursts larger than the capacity.
                    let n = if i % 3 == 0 { 40 } else { 1 }.min(PER_PRODUCER - i);
                    let tasks: Vec<TaskId> = (i..i + n).map(TaskId::Index).collect();
                    q.offer(Lane::Task, 0, p, &tasks);
                    i += n;
                }
            })
        })
        .collect();
    let total = (PRODUCERS * u64::from(PER_PRODUCER)) as usize;
    let seen = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let q = Arc::clone(&q);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while seen.lock().len() < total && Instant::now() < deadline {
                    let got = q.poll(Lane::Task, 7, Duration::from_millis(5), &all);
                    assert!(q.depths()[0] <= 16, "lane stays bounded");
                    seen.lock().extend(got);
                }
            })
        })
        .collect();
    for p in producers {
        p.join().expect("producer");
    }
    for c in consumers {
        c.join().expect("consumer");
    }
    let seen = seen.lock();
    assert_eq!(seen.len(), total);
    let distinct: HashSet<(JobId, TaskId)> = seen.iter().map(|e| (e.job, e.task)).collect();
    assert_eq!(distinct.len(), total, "no duplicates, nothing lost");
    // FIFO per producer.
    for p in 0..PRODUCERS {
        let order: Vec<TaskId> = seen.iter().filter(|e| e.job == p).map(|e| e.task).collect();
        assert_eq!(order.len(), PER_PRODUCER as usize);
    }
    assert_eq!(q.spilled(), [0, 0, 0]);
}

#[test]
fn a_first_served_poller_gets_its_entries_before_poll_all() {
    let q = Arc::new(q(8));
    let first = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            q.poll_first(Lane::Task, 1, Duration::from_secs(10), &all, &|| true)
        })
    };
    // Wait until its promise is in place, then let the scheduler's poll compete.
    while q.state.lock().promised[Lane::Task as usize] == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let scheduler = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || q.poll_all([10, 10, 10], Duration::from_secs(10), &all))
    };
    std::thread::sleep(Duration::from_millis(20));
    q.offer(
        Lane::Task,
        1,
        7,
        &[TaskId::Index(0), TaskId::Index(1), TaskId::Index(2)],
    );
    let got = first.join().expect("first");
    let [tasks, _, _] = scheduler.join().expect("scheduler");
    assert_eq!(got.len(), 1, "the first-served poller got one entry");
    assert_eq!(
        tasks.len(),
        2,
        "poll_all took the others, not the promised one"
    );
    let mut all_tasks: Vec<TaskId> = got.iter().chain(&tasks).map(|e| e.task).collect();
    all_tasks.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(
        all_tasks,
        vec![TaskId::Index(0), TaskId::Index(1), TaskId::Index(2)]
    );
    assert_eq!(
        q.state.lock().promised,
        [0, 0, 0],
        "no promise outlives its poller"
    );
}

#[test]
fn a_first_served_poller_that_leaves_empty_handed_takes_its_promise_along() {
    let q = q(8);
    assert!(q
        .poll_first(Lane::Task, 2, Duration::from_millis(5), &all, &|| true)
        .is_empty());
    assert_eq!(q.state.lock().promised, [0, 0, 0]);
    q.offer(Lane::Task, 1, 7, &[TaskId::Index(0)]);
    let [tasks, _, _] = q.poll_all([10, 10, 10], Duration::ZERO, &all);
    assert_eq!(tasks.len(), 1);
    q.offer(Lane::Task, 1, 7, &[TaskId::Index(1)]);
    assert_eq!(
        q.poll_first(Lane::Task, 2, Duration::ZERO, &all, &|| true)
            .len(),
        1
    );
    assert_eq!(q.state.lock().promised, [0, 0, 0]);
}

#[test]
fn a_first_served_poller_leaves_entries_to_poll_all_while_it_may_not_take() {
    let q = q(8);
    q.offer(Lane::Task, 1, 7, &[TaskId::Index(0)]);
    assert!(q
        .poll_first(Lane::Task, 1, Duration::from_millis(5), &all, &|| false)
        .is_empty());
    assert_eq!(q.state.lock().promised, [0, 0, 0]);
    let [tasks, _, _] = q.poll_all([10, 10, 10], Duration::ZERO, &all);
    assert_eq!(tasks.len(), 1, "the scheduler's");
}
