//! The Spider task-graph JSON schema (`schema_version` 0.1.x): parsing with the checks of docs/internals.md
//! ("Task graphs") in their order, and emission (policies only when non-default).

use serde::de::{DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{GraphBuilder, TaskDescriptor, TaskGraph, TaskOutputRef};
use crate::error::{CoreError, Result};
use crate::policy::ExecutionPolicy;
use crate::types::DataTypeDescriptor;

/// Version written by this implementation.
pub const CURRENT_SCHEMA_VERSION: &str = "0.1.0";
/// Versions accepted on read.
pub const SCHEMA_VERSION_REQ: &str = ">=0.1.0, <0.2.0";

fn malformed(m: impl std::fmt::Display) -> CoreError {
    CoreError::graph("MalformedGraph", format!("malformed task graph: {m}"))
}

/// Top level: exactly these four keys. Raw values defer interpretation until the version check
/// passed; serde's derive rejects missing, duplicated and (with `deny_unknown_fields`) unknown keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc<'a> {
    schema_version: String,
    #[serde(borrow)]
    tasks: &'a RawValue,
    #[serde(borrow)]
    commit_task: &'a RawValue,
    #[serde(borrow)]
    cleanup_task: &'a RawValue,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ContextDoc {
    package: String,
    task_func: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TerminationDoc {
    tdl_context: ContextDoc,
    #[serde(default)]
    execution_policy: Option<ExecutionPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskDoc {
    tdl_context: ContextDoc,
    #[serde(default)]
    execution_policy: Option<ExecutionPolicy>,
    inputs: Vec<DataTypeDescriptor>,
    outputs: Vec<DataTypeDescriptor>,
    #[serde(default)]
    input_sources: Option<Vec<TaskOutputRef>>,
}

pub(super) fn parse(data: &[u8], max_tasks: usize) -> Result<TaskGraph> {
    let text = std::str::from_utf8(data).map_err(|e| malformed(format!("not UTF-8: {e}")))?;
    let doc: Doc<'_> = serde_json::from_str(text).map_err(malformed)?;

    let version = semver::Version::parse(&doc.schema_version).map_err(|e| {
        CoreError::graph(
            "InvalidSchemaVersion",
            format!(
                "schema_version {:?} is not a semantic version: {e}",
                doc.schema_version
            ),
        )
    })?;
    let req = semver::VersionReq::parse(SCHEMA_VERSION_REQ)
        .map_err(|e| CoreError::internal("SchemaVersionReq", e.to_string()))?;
    if !req.matches(&version) {
        return Err(CoreError::graph(
            "IncompatibleSchemaVersion",
            format!(
                "schema_version {version} is not supported (this build reads {SCHEMA_VERSION_REQ})"
            ),
        ));
    }

    let mut b = GraphBuilder::new();
    let commit: Option<TerminationDoc> = serde_json::from_str(doc.commit_task.get())
        .map_err(|e| malformed(format!("commit_task: {e}")))?;
    let cleanup: Option<TerminationDoc> = serde_json::from_str(doc.cleanup_task.get())
        .map_err(|e| malformed(format!("cleanup_task: {e}")))?;
    if let Some(c) = commit {
        b.set_commit(
            &c.tdl_context.package,
            &c.tdl_context.task_func,
            c.execution_policy,
        )?;
    }
    if let Some(c) = cleanup {
        b.set_cleanup(
            &c.tdl_context.package,
            &c.tdl_context.task_func,
            c.execution_policy,
        )?;
    }

    // Tasks are streamed straight into the builder (no vector of every raw task first), so a
    // graph over `max_tasks` costs at most `max_tasks` built tasks before it is refused.
    let mut failure = None;
    let mut de = serde_json::Deserializer::from_str(doc.tasks.get());
    let streamed = TasksSeed {
        builder: &mut b,
        max_tasks,
        failure: &mut failure,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(e) = failure {
        return Err(e);
    }
    streamed.map_err(|e| malformed(format!("tasks: {e}")))?;
    Ok(b.build())
}

/// Inserts each element of the `tasks` array as it is read. A rule violation is kept in
/// `failure` (serde errors carry only text) and the walk stops.
struct TasksSeed<'a> {
    builder: &'a mut GraphBuilder,
    max_tasks: usize,
    failure: &'a mut Option<CoreError>,
}

impl<'de> DeserializeSeed<'de> for TasksSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TasksSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of tasks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let stop = |failure: &mut Option<CoreError>, e: CoreError| {
            *failure = Some(e);
            serde::de::Error::custom("invalid task")
        };
        let mut i = 0usize;
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if i == self.max_tasks {
                // Count the rest without building anything, to name the actual size.
                let mut total = i + 1;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    total += 1;
                }
                return Err(stop(
                    self.failure,
                    CoreError::limit(
                        "TooManyTasks",
                        format!(
                            "the graph has {total} tasks, above the limit of {} (max_tasks)",
                            self.max_tasks
                        ),
                    ),
                ));
            }
            let t: TaskDoc = match serde_json::from_str(raw.get()) {
                Ok(t) => t,
                Err(e) => return Err(stop(self.failure, malformed(format!("task {i}: {e}")))),
            };
            if let Err(e) = self.builder.insert_task(&TaskDescriptor {
                package: t.tdl_context.package,
                task_func: t.tdl_context.task_func,
                policy: t.execution_policy,
                inputs: t.inputs,
                outputs: t.outputs,
                input_sources: t.input_sources,
            }) {
                return Err(stop(self.failure, e));
            }
            i += 1;
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct TerminationOut<'a> {
    tdl_context: ContextRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_policy: Option<ExecutionPolicy>,
}

#[derive(Serialize)]
struct ContextRef<'a> {
    package: &'a str,
    task_func: &'a str,
}

#[derive(Serialize)]
struct TaskOut<'a> {
    tdl_context: ContextRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_policy: Option<ExecutionPolicy>,
    inputs: Vec<&'a DataTypeDescriptor>,
    outputs: Vec<&'a DataTypeDescriptor>,
    input_sources: Option<Vec<TaskOutputRef>>,
}

#[derive(Serialize)]
struct DocOut<'a> {
    schema_version: &'static str,
    tasks: Vec<TaskOut<'a>>,
    commit_task: Option<TerminationOut<'a>>,
    cleanup_task: Option<TerminationOut<'a>>,
}

pub(super) fn emit(g: &TaskGraph) -> String {
    fn term(t: Option<&super::TerminationTask>) -> Option<TerminationOut<'_>> {
        t.map(|t| TerminationOut {
            tdl_context: ContextRef {
                package: &t.context.package,
                task_func: &t.context.task_func,
            },
            execution_policy: (!t.policy.is_default()).then_some(t.policy),
        })
    }
    let tasks = (0..g.num_tasks() as u32)
        .map(|t| {
            let ctx = g.context(t);
            let policy = g.policy(t);
            let inputs = g.task_inputs(t);
            TaskOut {
                tdl_context: ContextRef {
                    package: &ctx.package,
                    task_func: &ctx.task_func,
                },
                execution_policy: (!policy.is_default()).then_some(*policy),
                inputs: inputs.iter().filter_map(|&d| g.dep_type(d)).collect(),
                outputs: g.task_outputs(t).filter_map(|d| g.dep_type(d)).collect(),
                input_sources: (!g.is_input_task(t))
                    .then(|| inputs.iter().filter_map(|&d| g.dep_source(d)).collect()),
            }
        })
        .collect();
    let doc = DocOut {
        schema_version: CURRENT_SCHEMA_VERSION,
        tasks,
        commit_task: term(g.commit.as_ref()),
        cleanup_task: term(g.cleanup.as_ref()),
    };
    // Plain structs of strings and integers: serialization cannot fail.
    serde_json::to_string(&doc).unwrap_or_default()
}
