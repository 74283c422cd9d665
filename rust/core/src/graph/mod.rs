//! The task graph: a validated DAG in compact, interned form.
//!
//! Tasks are inserted in topological order (a source must name an *earlier* task), so the graph is
//! acyclic by construction. Control flow is derived from data flow: A is a parent of B iff some
//! input of B is an output of A. Per-task data lives in flat CSR arrays of `u32` and TDL contexts,
//! policies and type descriptors are interned, so a task costs a few dozen bytes and an edge a few
//! words regardless of how verbose the JSON was.

mod json;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use json::{CURRENT_SCHEMA_VERSION, SCHEMA_VERSION_REQ};

use crate::codec::DecompressError;
use crate::error::{CoreError, Result};
use crate::ids::TaskIndex;
use crate::names::validate_task_name;
use crate::policy::ExecutionPolicy;
use crate::types::DataTypeDescriptor;

/// Index of a data object (graph input or task output) in insertion order.
pub type DepIndex = u32;

const NO_SOURCE: u32 = u32::MAX;

/// `(package, task_func)` of a task; shared (`Arc`) between tasks with the same function.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TdlContext {
    pub package: Box<str>,
    pub task_func: Box<str>,
}

impl TdlContext {
    #[must_use]
    pub fn new(package: &str, task_func: &str) -> Self {
        Self {
            package: package.into(),
            task_func: task_func.into(),
        }
    }
}

impl std::fmt::Display for TdlContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.package, self.task_func)
    }
}

/// `(task_idx, position)`: an output of an earlier task feeding an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskOutputRef {
    pub task_idx: u32,
    pub position: u32,
}

/// Everything needed to insert one task (what the JSON schema describes per task).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDescriptor {
    pub package: String,
    pub task_func: String,
    /// `None` = default policy.
    pub policy: Option<ExecutionPolicy>,
    pub inputs: Vec<DataTypeDescriptor>,
    pub outputs: Vec<DataTypeDescriptor>,
    /// `None`: input task, every input is a fresh graph input.
    pub input_sources: Option<Vec<TaskOutputRef>>,
}

/// Commit or cleanup task: a context and a policy, no inputs or outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminationTask {
    pub context: Arc<TdlContext>,
    pub policy: ExecutionPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TaskEntry {
    context: u32,
    policy: u32,
    inputs_start: u32,
    parents_start: u32,
    outputs_start: u32,
    num_outputs: u32,
    input_task: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dep {
    ty: u32,
    src_task: u32,
    src_pos: u32,
}

/// A validated, immutable task graph.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskGraph {
    contexts: Vec<Arc<TdlContext>>,
    policies: Vec<ExecutionPolicy>,
    types: Vec<DataTypeDescriptor>,
    tasks: Vec<TaskEntry>,
    inputs: Vec<DepIndex>,
    parents: Vec<TaskIndex>,
    children: Vec<TaskIndex>,
    children_start: Vec<u32>,
    deps: Vec<Dep>,
    graph_inputs: Box<[DepIndex]>,
    graph_outputs: Box<[DepIndex]>,
    commit: Option<TerminationTask>,
    cleanup: Option<TerminationTask>,
}

fn csr<T>(v: &[T], start: u32, end: Option<u32>) -> &[T] {
    let end = end.map_or(v.len(), |e| e as usize);
    v.get(start as usize..end).unwrap_or(&[])
}

impl TaskGraph {
    /// Parse the Spider JSON schema (every rule of docs/internals.md, "Task graphs").
    ///
    /// # Errors
    /// `InvalidGraph` naming the task and input position at fault.
    pub fn from_json(data: &[u8]) -> Result<Self> {
        json::parse(data, usize::MAX)
    }

    /// [`Self::from_json`] refusing graphs of more than `max_tasks` tasks. The tasks are read as
    /// a stream: at most `max_tasks` are built, the rest of the array is only counted (so the
    /// error names the actual count).
    ///
    /// # Errors
    /// `InvalidGraph`, or `LimitExceeded` `TooManyTasks`.
    pub fn from_json_limited(data: &[u8], max_tasks: usize) -> Result<Self> {
        json::parse(data, max_tasks)
    }

    /// Parse zstd(JSON).
    ///
    /// # Errors
    /// `InvalidGraph` (zstd failures are reported as invalid graphs, the first rule of docs/internals.md, "Task graphs");
    /// `LimitExceeded` `GraphTooLarge` when the JSON is larger than `max_size`.
    pub fn from_compressed(data: &[u8], max_size: usize) -> Result<Self> {
        Self::from_compressed_limited(data, max_size, usize::MAX)
    }

    /// [`Self::from_compressed`] with a task-count limit (see [`Self::from_json_limited`]).
    ///
    /// # Errors
    /// `InvalidGraph`; `LimitExceeded` `GraphTooLarge` or `TooManyTasks`.
    pub fn from_compressed_limited(
        data: &[u8],
        max_graph_bytes: usize,
        max_tasks: usize,
    ) -> Result<Self> {
        let json =
            crate::codec::decompress_bounded(data, max_graph_bytes).map_err(|e| match e {
                DecompressError::TooLarge { declared } => CoreError::limit(
                    "GraphTooLarge",
                    match declared {
                        Some(n) => format!(
                        "the task graph JSON decompresses to {n} bytes (limit max_graph_bytes = \
                         {max_graph_bytes})"
                    ),
                        None => format!(
                        "the task graph JSON decompresses to more than {max_graph_bytes} bytes \
                         (limit max_graph_bytes = {max_graph_bytes})"
                    ),
                    },
                ),
                DecompressError::Malformed(m) => CoreError::graph(
                    "MalformedGraph",
                    format!("task graph is not valid zstd: {m}"),
                ),
            })?;
        Self::from_json_limited(&json, max_tasks)
    }

    #[must_use]
    pub fn to_json(&self) -> String {
        json::emit(self)
    }

    /// # Errors
    /// Only if zstd fails.
    pub fn to_compressed(&self) -> Result<Vec<u8>> {
        crate::codec::compress(self.to_json().as_bytes())
    }

    #[must_use]
    pub fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    #[must_use]
    pub fn num_deps(&self) -> usize {
        self.deps.len()
    }

    /// Total number of task inputs (= dataflow edges incl. graph-input edges).
    #[must_use]
    pub fn num_edges(&self) -> usize {
        self.inputs.len()
    }

    fn task(&self, t: TaskIndex) -> Option<&TaskEntry> {
        self.tasks.get(t as usize)
    }

    fn next_task(&self, t: TaskIndex) -> Option<&TaskEntry> {
        self.tasks.get(t as usize + 1)
    }

    /// Input dependency indices of task `t` in position order (empty if `t` is out of range).
    #[must_use]
    pub fn task_inputs(&self, t: TaskIndex) -> &[DepIndex] {
        self.task(t).map_or(&[], |e| {
            csr(
                &self.inputs,
                e.inputs_start,
                self.next_task(t).map(|n| n.inputs_start),
            )
        })
    }

    /// Position of task `t`'s inputs in the flat per-edge arrays (parallel arrays such as a job's
    /// slot readers use the same layout).
    #[must_use]
    pub fn task_inputs_span(&self, t: TaskIndex) -> Range<usize> {
        self.task(t).map_or(0..0, |e| {
            let end = self
                .next_task(t)
                .map_or(self.inputs.len(), |n| n.inputs_start as usize);
            e.inputs_start as usize..end
        })
    }

    /// All task inputs, flat (see [`Self::task_inputs_span`]).
    #[must_use]
    pub fn all_task_inputs(&self) -> &[DepIndex] {
        &self.inputs
    }

    /// Output dependency indices of task `t` (contiguous).
    #[must_use]
    pub fn task_outputs(&self, t: TaskIndex) -> Range<DepIndex> {
        self.task(t)
            .map_or(0..0, |e| e.outputs_start..e.outputs_start + e.num_outputs)
    }

    /// Distinct parents, sorted.
    #[must_use]
    pub fn parents(&self, t: TaskIndex) -> &[TaskIndex] {
        self.task(t).map_or(&[], |e| {
            csr(
                &self.parents,
                e.parents_start,
                self.next_task(t).map(|n| n.parents_start),
            )
        })
    }

    /// Distinct children, sorted.
    #[must_use]
    pub fn children(&self, t: TaskIndex) -> &[TaskIndex] {
        let i = t as usize;
        match (self.children_start.get(i), self.children_start.get(i + 1)) {
            (Some(&s), Some(&e)) => csr(&self.children, s, Some(e)),
            _ => &[],
        }
    }

    #[must_use]
    pub fn is_input_task(&self, t: TaskIndex) -> bool {
        self.task(t).is_some_and(|e| e.input_task)
    }

    /// # Panics
    /// Never for `t < num_tasks()`; callers index with validated task indices.
    #[must_use]
    pub fn context(&self, t: TaskIndex) -> &Arc<TdlContext> {
        &self.contexts[self.tasks[t as usize].context as usize]
    }

    /// # Panics
    /// Never for `t < num_tasks()`.
    #[must_use]
    pub fn policy(&self, t: TaskIndex) -> &ExecutionPolicy {
        &self.policies[self.tasks[t as usize].policy as usize]
    }

    #[must_use]
    pub fn dep_type(&self, d: DepIndex) -> Option<&DataTypeDescriptor> {
        self.deps
            .get(d as usize)
            .map(|dep| &self.types[dep.ty as usize])
    }

    /// `(task, output position)` producing dependency `d`; `None` for graph inputs.
    #[must_use]
    pub fn dep_source(&self, d: DepIndex) -> Option<TaskOutputRef> {
        self.deps
            .get(d as usize)
            .filter(|dep| dep.src_task != NO_SOURCE)
            .map(|dep| TaskOutputRef {
                task_idx: dep.src_task,
                position: dep.src_pos,
            })
    }

    /// `(task, input position)` consumers of dependency `d` (computed by a scan; not stored, to
    /// keep the graph small — only tests and tooling ask).
    #[must_use]
    pub fn dep_destinations(&self, d: DepIndex) -> Vec<TaskOutputRef> {
        (0..self.tasks.len() as u32)
            .flat_map(|t| {
                self.task_inputs(t)
                    .iter()
                    .enumerate()
                    .filter(move |(_, &x)| x == d)
                    .map(move |(p, _)| TaskOutputRef {
                        task_idx: t,
                        position: p as u32,
                    })
            })
            .collect()
    }

    /// Task outputs nobody consumes.
    #[must_use]
    pub fn dangling_outputs(&self) -> Vec<DepIndex> {
        let mut used = vec![false; self.deps.len()];
        for &d in &self.inputs {
            used[d as usize] = true;
        }
        (0..self.deps.len() as u32)
            .filter(|&d| self.deps[d as usize].src_task != NO_SOURCE && !used[d as usize])
            .collect()
    }

    /// Graph inputs (dependency indices) in task-index then position order.
    #[must_use]
    pub fn graph_inputs(&self) -> &[DepIndex] {
        &self.graph_inputs
    }

    /// Job outputs: every output of every task without children, in task then position order.
    #[must_use]
    pub fn graph_outputs(&self) -> &[DepIndex] {
        &self.graph_outputs
    }

    #[must_use]
    pub fn commit(&self) -> Option<&TerminationTask> {
        self.commit.as_ref()
    }

    #[must_use]
    pub fn cleanup(&self) -> Option<&TerminationTask> {
        self.cleanup.as_ref()
    }

    /// Distinct TDL contexts (termination tasks included), in first-use order.
    #[must_use]
    pub fn contexts(&self) -> Vec<Arc<TdlContext>> {
        let mut out: Vec<Arc<TdlContext>> = self.contexts.clone();
        for t in [&self.commit, &self.cleanup].into_iter().flatten() {
            if !out.iter().any(|c| c == &t.context) {
                out.push(Arc::clone(&t.context));
            }
        }
        out
    }

    /// Reconstruct the descriptor of task `t` (used to emit JSON).
    #[must_use]
    pub fn descriptor(&self, t: TaskIndex) -> Option<TaskDescriptor> {
        let e = self.task(t)?;
        let ctx = self.context(t);
        let policy = self.policy(t);
        let inputs = self.task_inputs(t);
        Some(TaskDescriptor {
            package: ctx.package.to_string(),
            task_func: ctx.task_func.to_string(),
            policy: (!policy.is_default()).then_some(*policy),
            inputs: inputs
                .iter()
                .filter_map(|&d| self.dep_type(d).cloned())
                .collect(),
            outputs: self
                .task_outputs(t)
                .filter_map(|d| self.dep_type(d).cloned())
                .collect(),
            input_sources: (!e.input_task)
                .then(|| inputs.iter().filter_map(|&d| self.dep_source(d)).collect()),
        })
    }

    /// Bytes owned by this graph (capacity-based estimate; the benches measure exactly).
    #[must_use]
    pub fn heap_size(&self) -> usize {
        use std::mem::size_of;
        self.tasks.capacity() * size_of::<TaskEntry>()
            + (self.inputs.capacity() + self.parents.capacity() + self.children.capacity()) * 4
            + self.children_start.capacity() * 4
            + self.deps.capacity() * size_of::<Dep>()
            + (self.graph_inputs.len() + self.graph_outputs.len()) * 4
    }
}

/// Incremental builder: `insert_task` validates everything before touching any state, so a
/// rejected insert leaves the builder exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GraphBuilder {
    g: TaskGraph,
    context_ids: HashMap<Arc<TdlContext>, u32>,
    policy_ids: HashMap<ExecutionPolicy, u32>,
    type_ids: HashMap<DataTypeDescriptor, u32>,
}

fn too_large(what: &str) -> CoreError {
    CoreError::graph(
        "TaskGraphTooLarge",
        format!("task graph has too many {what}"),
    )
}

fn intern<K: Eq + std::hash::Hash + Clone>(
    ids: &mut HashMap<K, u32>,
    table: &mut Vec<K>,
    k: &K,
) -> u32 {
    if let Some(&i) = ids.get(k) {
        return i;
    }
    let i = table.len() as u32;
    table.push(k.clone());
    ids.insert(k.clone(), i);
    i
}

impl GraphBuilder {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Graph under construction (children / graph outputs are only filled by [`Self::build`]).
    #[must_use]
    pub fn partial(&self) -> &TaskGraph {
        &self.g
    }

    #[must_use]
    pub fn num_tasks(&self) -> usize {
        self.g.tasks.len()
    }

    /// # Errors
    /// Invalid policy or task name.
    pub fn set_commit(
        &mut self,
        package: &str,
        task_func: &str,
        policy: Option<ExecutionPolicy>,
    ) -> Result<()> {
        self.g.commit = Some(Self::termination("commit", package, task_func, policy)?);
        Ok(())
    }

    /// # Errors
    /// Invalid policy or task name.
    pub fn set_cleanup(
        &mut self,
        package: &str,
        task_func: &str,
        policy: Option<ExecutionPolicy>,
    ) -> Result<()> {
        self.g.cleanup = Some(Self::termination("cleanup", package, task_func, policy)?);
        Ok(())
    }

    fn termination(
        which: &str,
        package: &str,
        task_func: &str,
        policy: Option<ExecutionPolicy>,
    ) -> Result<TerminationTask> {
        let policy = policy.unwrap_or_default();
        policy.validate().map_err(|m| {
            CoreError::graph(
                "InvalidExecutionPolicy",
                format!("{which} task ({package}.{task_func}): invalid execution policy: {m}"),
            )
        })?;
        validate_task_name(package, task_func)
            .map_err(|e| CoreError::graph("InvalidTaskName", format!("{which} task: {e}")))?;
        Ok(TerminationTask {
            context: Arc::new(TdlContext::new(package, task_func)),
            policy,
        })
    }

    /// Validate and append one task; returns its index.
    ///
    /// # Errors
    /// `InvalidGraph` with a message naming the task index and input position; the builder is
    /// unchanged.
    #[expect(
        clippy::too_many_lines,
        reason = "every check in the order it runs, before the one place that mutates the builder"
    )]
    pub fn insert_task(&mut self, desc: &TaskDescriptor) -> Result<TaskIndex> {
        let g = &self.g;
        let t = u32::try_from(g.tasks.len()).map_err(|_| too_large("tasks"))?;
        let who = format!("task {t} ({}.{})", desc.package, desc.task_func);
        let bad = |kind: &'static str, m: String| CoreError::graph(kind, format!("{who}: {m}"));

        // Resolve inputs without mutating anything.
        let mut input_deps: Vec<DepIndex> = Vec::new();
        let mut parents: Vec<TaskIndex> = Vec::new();
        if let Some(sources) = &desc.input_sources {
            if desc.inputs.is_empty() {
                return Err(bad(
                    "InvalidTaskInputs",
                    "a task without inputs cannot have input sources".into(),
                ));
            }
            if sources.len() != desc.inputs.len() {
                return Err(bad(
                    "InvalidTaskInputs",
                    format!(
                        "{} inputs but {} input sources",
                        desc.inputs.len(),
                        sources.len()
                    ),
                ));
            }
            input_deps.reserve_exact(sources.len());
            for (p, (src, ty)) in sources.iter().zip(&desc.inputs).enumerate() {
                let Some(src_task) = g.task(src.task_idx) else {
                    return Err(bad(
                        "InvalidTaskInputs",
                        format!("input {p}: source task {} does not exist yet", src.task_idx),
                    ));
                };
                if src.position >= src_task.num_outputs {
                    return Err(bad(
                        "InvalidTaskInputs",
                        format!(
                            "input {p}: source task {} has no output {} (it has {})",
                            src.task_idx, src.position, src_task.num_outputs
                        ),
                    ));
                }
                let dep = src_task.outputs_start + src.position;
                let src_ty = &g.types[g.deps[dep as usize].ty as usize];
                if src_ty != ty {
                    return Err(bad(
                        "InvalidTaskInputs",
                        format!(
                            "input {p}: type {} does not match output {} of task {} ({})",
                            ty.to_json(),
                            src.position,
                            src.task_idx,
                            src_ty.to_json()
                        ),
                    ));
                }
                input_deps.push(dep);
                parents.push(src.task_idx);
            }
            parents.sort_unstable();
            parents.dedup();
        }
        let policy = desc.policy.unwrap_or_default();
        policy.validate().map_err(|m| {
            bad(
                "InvalidExecutionPolicy",
                format!("invalid execution policy: {m}"),
            )
        })?;
        validate_task_name(&desc.package, &desc.task_func)
            .map_err(|e| CoreError::graph("InvalidTaskName", format!("task {t}: {e}")))?;
        let fresh_inputs = if desc.input_sources.is_none() {
            desc.inputs.len()
        } else {
            0
        };
        let new_deps = g.deps.len() + fresh_inputs + desc.outputs.len();
        if new_deps >= NO_SOURCE as usize
            || g.inputs.len() + desc.inputs.len() > u32::MAX as usize
            || desc.outputs.len() > u32::MAX as usize
        {
            return Err(too_large("dataflow dependencies"));
        }

        // Validated: mutate.
        let ctx = Arc::new(TdlContext::new(&desc.package, &desc.task_func));
        let context = intern(&mut self.context_ids, &mut self.g.contexts, &ctx);
        let policy = intern(&mut self.policy_ids, &mut self.g.policies, &policy);
        let g = &mut self.g;
        let entry = TaskEntry {
            context,
            policy,
            inputs_start: g.inputs.len() as u32,
            parents_start: g.parents.len() as u32,
            outputs_start: 0,
            num_outputs: desc.outputs.len() as u32,
            input_task: desc.input_sources.is_none(),
        };
        if desc.input_sources.is_none() {
            for ty in &desc.inputs {
                let ty = intern(&mut self.type_ids, &mut g.types, ty);
                g.inputs.push(g.deps.len() as u32);
                g.deps.push(Dep {
                    ty,
                    src_task: NO_SOURCE,
                    src_pos: 0,
                });
            }
        } else {
            g.inputs.extend_from_slice(&input_deps);
            g.parents.extend_from_slice(&parents);
        }
        let outputs_start = g.deps.len() as u32;
        for (pos, ty) in desc.outputs.iter().enumerate() {
            let ty = intern(&mut self.type_ids, &mut g.types, ty);
            g.deps.push(Dep {
                ty,
                src_task: t,
                src_pos: pos as u32,
            });
        }
        g.tasks.push(TaskEntry {
            outputs_start,
            ..entry
        });
        Ok(t)
    }

    /// Freeze: compute children, graph inputs/outputs, and shrink every table.
    #[must_use]
    pub fn build(self) -> TaskGraph {
        let mut g = self.g;
        let n = g.tasks.len();
        // Children CSR from the parents CSR (counting sort keeps each list sorted).
        let mut counts = vec![0u32; n + 1];
        for &p in &g.parents {
            counts[p as usize + 1] += 1;
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut children = vec![0u32; g.parents.len()];
        for t in 0..n as u32 {
            for &p in g.parents(t) {
                children[fill[p as usize] as usize] = t;
                fill[p as usize] += 1;
            }
        }
        g.children = children;
        g.children_start = counts;
        g.graph_inputs = (0..g.deps.len() as u32)
            .filter(|&d| g.deps[d as usize].src_task == NO_SOURCE)
            .collect();
        g.graph_outputs = (0..n as u32)
            .filter(|&t| g.children(t).is_empty())
            .flat_map(|t| g.task_outputs(t))
            .collect();
        g.contexts.shrink_to_fit();
        g.policies.shrink_to_fit();
        g.types.shrink_to_fit();
        g.tasks.shrink_to_fit();
        g.inputs.shrink_to_fit();
        g.parents.shrink_to_fit();
        g.deps.shrink_to_fit();
        g
    }
}

#[cfg(test)]
mod tests;
