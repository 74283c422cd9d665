//! Mock scheduler + execution managers driving a job through the cache.
//! The harness also plays the storage service: after each `Outcome` it "persists" and applies
//! `complete` / `fail` / `finish`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orbweaver_core::codec::{wire_decode, wire_encode};
use orbweaver_core::{CoreError, JobCache, JobState, OutcomeKind, Submission, TaskId};
use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelPolicy {
    Never,
    Immediately,
    AfterOneMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// Succeed, but for 50% of first-seen tasks run two concurrent instances that both fail.
    InjectDoubleFailures,
    AlwaysFail,
}

/// The task function: each output byte is the wrapping sum of the inputs' bytes plus one
/// (payloads keep the size of the first input).
pub(crate) fn neuron(inputs: &[&[u8]]) -> Vec<u8> {
    let n = inputs.first().map_or(0, |i| i.len());
    (0..n)
        .map(|k| {
            inputs.iter().fold(1u8, |acc, i| {
                acc.wrapping_add(i.get(k).copied().unwrap_or(0))
            })
        })
        .collect()
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub successes: AtomicUsize,
    pub failures: AtomicUsize,
    pub registrations: AtomicUsize,
    pub stale: AtomicUsize,
    pub commit_runs: AtomicUsize,
    pub cleanup_runs: AtomicUsize,
    pub succeeded_tasks: Mutex<HashSet<u32>>,
    pub unexpected: Mutex<Vec<String>>,
}

pub(crate) struct Run {
    pub state: JobState,
    pub stats: Arc<Stats>,
    pub outputs: Option<Vec<u8>>,
    pub error: Option<String>,
}

struct Shared {
    cache: JobCache,
    job: u64,
    stats: Arc<Stats>,
    done: AtomicBool,
    clock: AtomicU64,
    first_seen: Mutex<HashSet<TaskId>>,
    behaviour: Behaviour,
    seed: AtomicU64,
}

impl Shared {
    fn now(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn unexpected(&self, what: &str, e: &CoreError) {
        self.stats
            .unexpected
            .lock()
            .push(format!("{what}: {:?} {e}", std::mem::discriminant(e)));
        self.done.store(true, Ordering::Release);
    }

    fn check<T>(&self, what: &str, r: Result<T, CoreError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) if e.is_stale() => {
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                self.unexpected(what, &e);
                None
            }
        }
    }

    /// Play the storage service: persist (nothing to do here) and apply.
    fn apply(&self, o: Option<orbweaver_core::Outcome>) {
        let Some(o) = o else { return };
        let now = self.now();
        let state = match o.kind {
            OutcomeKind::JobCompleted => {
                assert!(o.outputs.is_some(), "JOB_COMPLETED carries outputs");
                self.check("complete", self.cache.complete(self.job, now))
            }
            OutcomeKind::JobFailed => {
                let msg = o.message.unwrap_or_default();
                self.check("fail", self.cache.fail(self.job, &msg, now))
            }
            OutcomeKind::CommitSucceeded => {
                self.stats.commit_runs.fetch_add(1, Ordering::Relaxed);
                self.check("finish", self.cache.finish(self.job, now))
            }
            OutcomeKind::CleanupSucceeded => {
                self.stats.cleanup_runs.fetch_add(1, Ordering::Relaxed);
                self.check("finish", self.cache.finish(self.job, now))
            }
        };
        if state.is_some_and(JobState::is_terminal) {
            self.done.store(true, Ordering::Release);
        }
    }

    fn coin(&self) -> bool {
        let s = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 0
    }

    fn run_instance(&self, task: TaskId, em: u64) {
        let Some(ctx) = self.check(
            "register",
            self.cache.register(self.job, task, em, self.now()),
        ) else {
            return;
        };
        self.stats.registrations.fetch_add(1, Ordering::Relaxed);
        let io = ctx.task_io.to_vec();
        if self.behaviour == Behaviour::AlwaysFail {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            let r = self
                .cache
                .report_failure(self.job, task, ctx.instance_id, "always fails");
            if let Some(o) = self.check("report_failure", r) {
                self.apply(o);
            }
            return;
        }
        let outputs = match task {
            TaskId::Index(_) => {
                let inputs = match wire_decode(&io) {
                    Ok(v) => v,
                    Err(e) => return self.unexpected("task io", &e),
                };
                wire_encode(&[neuron(&inputs)]).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let r = self
            .cache
            .report_success(self.job, task, ctx.instance_id, &outputs);
        if let Some(o) = self.check("report_success", r) {
            if let TaskId::Index(i) = task {
                self.stats.successes.fetch_add(1, Ordering::Relaxed);
                assert!(
                    self.stats.succeeded_tasks.lock().insert(i),
                    "task {i} succeeded twice"
                );
            }
            self.apply(o);
        }
    }

    /// Two concurrent instances of `task` that both fail.
    fn double_failure(&self, task: TaskId, em: u64) {
        let regs: Vec<_> = (0..2)
            .filter_map(|_| {
                self.check(
                    "register",
                    self.cache.register(self.job, task, em, self.now()),
                )
            })
            .collect();
        self.stats
            .registrations
            .fetch_add(regs.len(), Ordering::Relaxed);
        std::thread::scope(|s| {
            for ctx in &regs {
                s.spawn(move || {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let r = self
                        .cache
                        .report_failure(self.job, task, ctx.instance_id, "injected");
                    if let Some(o) = self.check("report_failure", r) {
                        self.apply(o);
                    }
                });
            }
        });
    }

    fn worker(&self, em: u64) {
        while !self.done.load(Ordering::Acquire) {
            let [tasks, commit, cleanup] =
                self.cache
                    .poll_all([4, 1, 1], Duration::from_millis(5), Some(0));
            for e in tasks.into_iter().chain(commit).chain(cleanup) {
                assert_eq!(e.job, self.job);
                let inject = self.behaviour == Behaviour::InjectDoubleFailures
                    && matches!(e.task, TaskId::Index(_))
                    && self.first_seen.lock().insert(e.task)
                    && self.coin();
                if inject {
                    self.double_failure(e.task, em);
                } else {
                    self.run_instance(e.task, em);
                }
            }
        }
    }
}

/// Drive one job to a terminal state with `workers` mock EMs.
pub(crate) fn drive(
    submission: &Submission,
    workers: usize,
    behaviour: Behaviour,
    cancel: CancelPolicy,
    seed: u64,
) -> Run {
    let shared = Arc::new(Shared {
        cache: JobCache::new(65_536, 16, 16).expect("cache"),
        job: 1,
        stats: Arc::new(Stats::default()),
        done: AtomicBool::new(false),
        clock: AtomicU64::new(1),
        first_seen: Mutex::new(HashSet::new()),
        behaviour,
        seed: AtomicU64::new(seed),
    });
    shared.cache.insert(1, 1, submission).expect("insert");
    shared
        .cache
        .check_transition(1, JobState::Running)
        .expect("check");
    shared.cache.start(1).expect("start");
    let mut canceller = None;
    match cancel {
        CancelPolicy::Never => {}
        CancelPolicy::Immediately => {
            let st = shared.cache.cancel(1, shared.now()).expect("cancel");
            if st.is_terminal() {
                shared.done.store(true, Ordering::Release);
            }
        }
        CancelPolicy::AfterOneMs => {
            let s = Arc::clone(&shared);
            canceller = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1));
                if let Some(st) = s.check("cancel", s.cache.cancel(1, s.now())) {
                    if st.is_terminal() {
                        s.done.store(true, Ordering::Release);
                    }
                }
            }));
        }
    }
    let handles: Vec<_> = (0..workers)
        .map(|em| {
            let s = Arc::clone(&shared);
            std::thread::spawn(move || s.worker(em as u64))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !shared.done.load(Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    shared.done.store(true, Ordering::Release);
    shared.cache.queue().close();
    for h in handles {
        h.join().expect("worker panicked");
    }
    if let Some(c) = canceller {
        c.join().expect("canceller");
    }
    let job = shared.cache.get(1).expect("job");
    let state = job.state();
    let unexpected = shared.stats.unexpected.lock().clone();
    assert!(unexpected.is_empty(), "unexpected errors: {unexpected:?}");
    assert!(
        state.is_terminal(),
        "job did not terminate in time: {state}"
    );
    assert_eq!(
        shared.cache.live_instances(),
        0,
        "no instance-table entry leaked"
    );
    assert!(!job.holds_graph(), "terminal job released its graph");
    Run {
        state,
        stats: Arc::clone(&shared.stats),
        outputs: job.outputs().ok().map(|o| o.to_vec()),
        error: job.error(),
    }
}
