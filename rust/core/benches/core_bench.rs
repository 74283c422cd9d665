//! Core benchmarks (run: `cargo bench -p orbweaver-core --bench core_bench`).
//!
//! * task transitions per second: register + succeed with readiness propagation, through the
//!   `JobCache` API (queue poll included), single-threaded and with 2 threads, with polls that do
//!   not and that do record taken entries (the visibility-timeout ledger), alternating;
//! * resident bytes per task of a flat 10,000-task job and per dataflow edge of the 10 x 1,000
//!   neural-net graph (25 inputs per task), payloads excluded, measured with a counting global
//!   allocator.
//!
//! One task = 2 transitions (Ready -> Running at registration, Running -> Succeeded at the report).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orbweaver_core::codec::wire_encode;
use orbweaver_core::policy::ExecutionPolicy;
use orbweaver_core::workloads;
use orbweaver_core::{JobCache, Lane, Report, Submission, TaskId};

struct Counting;

static CURRENT: AtomicIsize = AtomicIsize::new(0);

#[allow(
    unsafe_code,
    reason = "a counting global allocator must implement the unsafe `GlobalAlloc` trait"
)]
// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees hold; the counter is a side effect that allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        CURRENT.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from this allocator, that is from `System`, with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        CURRENT.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `System` with layout `l`; the caller upholds the size contract.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn current() -> isize {
    CURRENT.load(Ordering::Relaxed)
}

/// Payload bytes held by a submission: each `Arc<[u8]>` allocation (16-byte header plus the
/// value, rounded up to the 8-byte alignment), which is per value, not per task or edge.
fn payload_bytes(s: &Submission) -> isize {
    s.inputs
        .iter()
        .map(|p| (16 + p.len()).next_multiple_of(8) as isize)
        .sum()
}

fn memory() {
    // Flat 10,000-task job (one input, one output per task).
    let before = current();
    let s = workloads::flat(10_000, 16, ExecutionPolicy::default(), true);
    let cache = JobCache::new(65_536, 16, 16).expect("cache");
    cache.insert(1, 1, &s).expect("insert");
    let payload = payload_bytes(&s);
    drop(s);
    let resident = current() - before - payload;
    assert!(
        resident <= 256 * 10_000,
        "flat job exceeds 256 bytes per task"
    );
    println!(
        "memory/flat_10k: {} bytes total, {:.1} bytes per task (payloads excluded)",
        resident,
        resident as f64 / 10_000.0
    );
    let before_start = current();
    cache.start(1).expect("start");
    let queued = current() - before_start;
    println!(
        "memory/flat_10k: + {:.1} bytes per task while all 10,000 sit in the task lane",
        queued as f64 / 10_000.0
    );
    drop(cache);

    // Neural net: 10 layers x 1,000 tasks, 25 inputs per inner task, 128-byte payloads.
    let before = current();
    let s = workloads::neural_net(10, 1000, 25, 128, ExecutionPolicy::default(), 42);
    let edges = s.graph.num_edges();
    let cache = JobCache::new(65_536, 16, 16).expect("cache");
    cache.insert(1, 1, &s).expect("insert");
    let payload = payload_bytes(&s);
    drop(s);
    let resident = current() - before - payload;
    assert!(
        resident <= 32 * edges as isize,
        "NN graph exceeds 32 bytes per edge"
    );
    println!(
        "memory/nn_10x1000x25: {} bytes total, {} edges, {:.1} bytes per edge (payloads excluded; \
         includes the per-task state)",
        resident,
        edges,
        resident as f64 / edges as f64
    );
}

/// Run every task of `job` on this thread: poll, register, succeed (propagation included).
/// `tracked`: polls record the taken entries (visibility timeout), as the storage service does.
fn drain(
    cache: &JobCache,
    em: u64,
    outputs: &[u8],
    batch: usize,
    total: &AtomicUsize,
    target: usize,
    tracked: bool,
) -> usize {
    let mut done = 0;
    let mut items = Vec::with_capacity(batch);
    while total.load(Ordering::Relaxed) < target {
        let entries = cache.poll(Lane::Task, batch, Duration::ZERO, tracked.then_some(0));
        if entries.is_empty() {
            // The other thread holds the ready tasks; don't sleep on the queue's deadline.
            std::thread::yield_now();
            continue;
        }
        items.clear();
        items.extend(entries.iter().map(|e| (e.job, e.task)));
        let regs = cache.register_batch(&items, em, 0);
        let reports: Vec<(u64, TaskId, u64, Report<'_>)> = regs
            .iter()
            .zip(&items)
            .filter_map(|(r, &(job, task))| {
                r.as_ref()
                    .ok()
                    .map(|ctx| (job, task, ctx.instance_id, Report::Success(outputs)))
            })
            .collect();
        let n = cache
            .report_batch(&reports)
            .iter()
            .filter(|r| r.is_ok())
            .count();
        done += n;
        total.fetch_add(n, Ordering::Relaxed);
    }
    done
}

/// Best and median tasks/s of `ROUNDS` rounds for untracked and tracked polls; the two modes
/// alternate round by round so machine noise hits both alike.
fn throughput(name: &str, make: &dyn Fn() -> Submission, jobs: u64, threads: usize) {
    const ROUNDS: usize = 9;
    let s = make();
    let per_job = s.graph.num_tasks();
    let outputs = wire_encode(&[vec![7u8; 16]]).expect("frame");
    let target = per_job * jobs as usize;
    let mut times: [Vec<f64>; 2] = [Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS)];
    for round in 0..=ROUNDS {
        for (mode, tracked) in [false, true].into_iter().enumerate() {
            let cache = Arc::new(JobCache::new(1 << 20, 16, 16).expect("cache"));
            for j in 1..=jobs {
                cache.insert(j, 1, &s).expect("insert");
            }
            let total = Arc::new(AtomicUsize::new(0));
            let t0 = Instant::now();
            for j in 1..=jobs {
                cache.start(j).expect("start");
            }
            std::thread::scope(|sc| {
                for t in 0..threads {
                    let (cache, total, outputs) =
                        (Arc::clone(&cache), Arc::clone(&total), &outputs);
                    sc.spawn(move || {
                        drain(&cache, t as u64, outputs, 256, &total, target, tracked)
                    });
                }
            });
            let dt = t0.elapsed().as_secs_f64();
            assert_eq!(total.load(Ordering::Relaxed), target);
            assert_eq!(cache.taken_len(), 0, "every taken entry was registered");
            if round > 0 {
                // Round 0 warms up allocator and caches.
                times[mode].push(dt);
            }
        }
    }
    for (mode, times) in times.iter_mut().enumerate() {
        times.sort_by(f64::total_cmp);
        let best = target as f64 / times[0];
        let median = target as f64 / times[times.len() / 2];
        let polls = if mode == 0 { "untracked" } else { "tracked" };
        println!(
            "throughput/{name}/threads={threads}/polls={polls}: {target} tasks/round, best {:.0} \
             tasks/s ({:.0} transitions/s), median {:.0} tasks/s ({:.0} transitions/s) over \
             {ROUNDS} rounds",
            best,
            2.0 * best,
            median,
            2.0 * median
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it
    // (then only a smoke run of the memory measurement happens, no timing).
    if !std::env::args().any(|a| a == "--bench") {
        memory();
        return;
    }
    memory();
    let flat = || workloads::flat(10_000, 16, ExecutionPolicy::default(), false);
    let nn = || workloads::neural_net(10, 1000, 25, 16, ExecutionPolicy::default(), 42);
    for threads in [1, 2] {
        throughput("flat_10k_x10_jobs", &flat, 10, threads);
        throughput("nn_10x1000x25", &nn, 1, threads);
    }
}
