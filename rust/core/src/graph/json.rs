//! The Spider task-graph JSON schema (`schema_version` 0.1.x): parsing with the checks of storage
//! spec 2.3 in their documented order, and emission (policies only when non-default).

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

pub(super) fn parse(data: &[u8]) -> Result<TaskGraph> {
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

    let tasks: Vec<&RawValue> =
        serde_json::from_str(doc.tasks.get()).map_err(|e| malformed(format!("tasks: {e}")))?;
    for (i, raw) in tasks.into_iter().enumerate() {
        let t: TaskDoc =
            serde_json::from_str(raw.get()).map_err(|e| malformed(format!("task {i}: {e}")))?;
        b.insert_task(&TaskDescriptor {
            package: t.tdl_context.package,
            task_func: t.tdl_context.task_func,
            policy: t.execution_policy,
            inputs: t.inputs,
            outputs: t.outputs,
            input_sources: t.input_sources,
        })?;
    }
    Ok(b.build())
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
