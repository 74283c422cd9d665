//! Synthetic task graphs shared by tests and benchmarks : a flat
//! job, a diamond and the neural-net layers. Built through the same validating builder as parsed
//! graphs.

use std::sync::Arc;

use crate::graph::{GraphBuilder, TaskDescriptor, TaskOutputRef};
use crate::policy::ExecutionPolicy;
use crate::submission::Submission;
use crate::types::DataTypeDescriptor;
use crate::Payload;

/// Small deterministic RNG (`SplitMix64`) so workloads are reproducible without dependencies.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn task(
    name: &str,
    policy: Option<ExecutionPolicy>,
    n_in: usize,
    n_out: usize,
    sources: Option<Vec<TaskOutputRef>>,
) -> TaskDescriptor {
    TaskDescriptor {
        package: "bench".into(),
        task_func: name.into(),
        policy,
        inputs: vec![DataTypeDescriptor::bytes(); n_in],
        outputs: vec![DataTypeDescriptor::bytes(); n_out],
        input_sources: sources,
    }
}

/// `n` graph inputs: msgpack bin values (the inputs are typed `Bytes`) of `size` content bytes.
fn payloads(n: usize, size: usize) -> Vec<Payload> {
    (0..n)
        .map(|i| {
            let v: Vec<u8> = (0..size).map(|k| (i + k) as u8).collect();
            Payload::from(crate::value::msgpack_bin(&v))
        })
        .collect()
}

fn finish(b: GraphBuilder, payload_size: usize) -> Submission {
    let g = Arc::new(b.build());
    let n = g.graph_inputs().len();
    Submission::new(g, payloads(n, payload_size)).unwrap_or_else(|e| panic!("workload: {e}"))
}

/// `n` independent single-input / single-output tasks.
///
/// # Panics
/// Never for sensible sizes (the graph is valid by construction).
#[must_use]
pub fn flat(
    n: usize,
    payload_size: usize,
    policy: ExecutionPolicy,
    termination: bool,
) -> Submission {
    let mut b = GraphBuilder::new();
    let p = (!policy.is_default()).then_some(policy);
    for _ in 0..n {
        b.insert_task(&task("inc", p, 1, 1, None))
            .unwrap_or_else(|e| panic!("workload: {e}"));
    }
    if termination {
        b.set_commit("bench", "commit", None)
            .unwrap_or_else(|e| panic!("workload: {e}"));
        b.set_cleanup("bench", "cleanup", None)
            .unwrap_or_else(|e| panic!("workload: {e}"));
    }
    finish(b, payload_size)
}

/// A -> {B, C} -> D, one input, one output each (D takes B and C).
///
/// # Panics
/// Never.
#[must_use]
pub fn diamond(policy: Option<ExecutionPolicy>) -> Submission {
    let mut b = GraphBuilder::new();
    let src = |t| TaskOutputRef {
        task_idx: t,
        position: 0,
    };
    let ok = |r: crate::Result<u32>| r.unwrap_or_else(|e| panic!("workload: {e}"));
    ok(b.insert_task(&task("a", policy, 1, 1, None)));
    ok(b.insert_task(&task("b", policy, 1, 1, Some(vec![src(0)]))));
    ok(b.insert_task(&task("c", policy, 1, 1, Some(vec![src(0)]))));
    ok(b.insert_task(&task("d", policy, 2, 1, Some(vec![src(1), src(2)]))));
    finish(b, 1)
}

/// Spider's neural-net workload: `layers` x `width` tasks; layer 0 tasks take one graph input,
/// every later task takes `fan_in` inputs drawn (seeded) from the previous layer's outputs.
///
/// # Panics
/// Never for `width > 0`.
#[must_use]
pub fn neural_net(
    layers: usize,
    width: usize,
    fan_in: usize,
    payload_size: usize,
    policy: ExecutionPolicy,
    seed: u64,
) -> Submission {
    let mut rng = SplitMix64::new(seed);
    let mut b = GraphBuilder::new();
    let p = (!policy.is_default()).then_some(policy);
    for layer in 0..layers {
        for _ in 0..width {
            let d = if layer == 0 {
                task("neuron", p, 1, 1, None)
            } else {
                let base = ((layer - 1) * width) as u64;
                let sources = (0..fan_in)
                    .map(|_| TaskOutputRef {
                        task_idx: (base + rng.below(width as u64)) as u32,
                        position: 0,
                    })
                    .collect();
                task("neuron", p, fan_in, 1, Some(sources))
            };
            b.insert_task(&d)
                .unwrap_or_else(|e| panic!("workload: {e}"));
        }
    }
    finish(b, payload_size)
}
