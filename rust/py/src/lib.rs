//! `orbweaver._core`: thin PyO3 glue over `orbweaver-core`. Nothing here holds state of its own;
//! every call converts arguments, runs the core (without the GIL where it can wait or loop) and
//! converts the result.

// The glue needs no unsafe code of its own (PyO3's macros generate what the FFI needs).
#![forbid(unsafe_code)]

use orbweaver_core::{JobState, Lane, OutcomeKind, TaskState};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

mod cache;
mod codec;
mod errors;
mod graph;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TASK_COMMIT", orbweaver_core::TaskId::COMMIT_CODE)?;
    m.add("TASK_CLEANUP", orbweaver_core::TaskId::CLEANUP_CODE)?;
    // The shared vocabularies, generated from the core's enums (the Python enums are built from
    // the tuples). Task states get no constants: `TASK_` names task ids.
    let job_states = JobState::ALL.map(|s| (s.name(), s.code()));
    let task_states = TaskState::ALL.map(|s| (s.name(), s.code()));
    let lanes = Lane::ALL.map(|l| (l.name(), l.code()));
    let outcome_kinds = OutcomeKind::ALL.map(|k| (k.name(), k.code()));
    vocabulary(m, "JOB_STATES", Some("JOB"), job_states)?;
    vocabulary(m, "TASK_STATES", None, task_states)?;
    vocabulary(m, "LANES", Some("LANE"), lanes)?;
    vocabulary(m, "OUTCOME_KINDS", Some("OUTCOME"), outcome_kinds)?;

    errors::register(m)?;
    m.add_function(wrap_pyfunction!(codec::wire_encode, m)?)?;
    m.add_function(wrap_pyfunction!(codec::wire_decode, m)?)?;
    m.add_function(wrap_pyfunction!(codec::encode_outputs, m)?)?;
    m.add_function(wrap_pyfunction!(codec::decode_outputs, m)?)?;
    m.add_function(wrap_pyfunction!(codec::compress, m)?)?;
    m.add_function(wrap_pyfunction!(codec::decompress, m)?)?;
    m.add_function(wrap_pyfunction!(codec::is_valid_transition, m)?)?;
    m.add_function(wrap_pyfunction!(codec::is_terminal, m)?)?;
    m.add_function(wrap_pyfunction!(codec::validate_task_name, m)?)?;
    m.add_function(wrap_pyfunction!(codec::validate_value, m)?)?;
    m.add_class::<graph::TaskGraph>()?;
    m.add_class::<graph::Submission>()?;
    m.add_class::<cache::ExecutionContext>()?;
    m.add_class::<cache::Outcome>()?;
    m.add_class::<cache::InstanceGcReport>()?;
    m.add_class::<cache::JobCache>()?;
    // PyO3 maintains `__all__`; the checked stub is the source of truth for the public names.
    if m.hasattr("__all__")? {
        m.delattr("__all__")?;
    }
    Ok(())
}

/// Export one vocabulary as `table` (a tuple of `(NAME, code)` pairs, NAME the variant's name in
/// upper snake case: `CommitReady` -> `COMMIT_READY`) and, with a `prefix`, one `PREFIX_NAME`
/// integer constant per value.
fn vocabulary(
    m: &Bound<'_, PyModule>,
    table: &str,
    prefix: Option<&str>,
    values: impl IntoIterator<Item = (&'static str, u8)>,
) -> PyResult<()> {
    let pairs: Vec<(String, u8)> = values
        .into_iter()
        .map(|(name, code)| (upper_snake(name), code))
        .collect();
    if let Some(prefix) = prefix {
        for (name, code) in &pairs {
            m.add(format!("{prefix}_{name}").as_str(), *code)?;
        }
    }
    m.add(table, PyTuple::new(m.py(), pairs)?)
}

fn upper_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn upper_snake() {
        assert_eq!(super::upper_snake("CommitReady"), "COMMIT_READY");
        assert_eq!(super::upper_snake("JobCompleted"), "JOB_COMPLETED");
        assert_eq!(super::upper_snake("Task"), "TASK");
    }
}
