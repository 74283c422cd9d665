//! `orbweaver._core`: thin PyO3 glue over `orbweaver-core`. Nothing here holds state of its own;
//! every call converts arguments, runs the core (without the GIL where it can wait or loop) and
//! converts the result.

// The glue needs no unsafe code of its own (PyO3's macros generate what the FFI needs).
#![forbid(unsafe_code)]

use pyo3::prelude::*;

mod cache;
mod codec;
mod errors;
mod graph;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TASK_COMMIT", orbweaver_core::TaskId::COMMIT_CODE)?;
    m.add("TASK_CLEANUP", orbweaver_core::TaskId::CLEANUP_CODE)?;
    for s in orbweaver_core::JobState::ALL {
        let name = match s {
            orbweaver_core::JobState::Ready => "JOB_READY",
            orbweaver_core::JobState::Running => "JOB_RUNNING",
            orbweaver_core::JobState::CommitReady => "JOB_COMMIT_READY",
            orbweaver_core::JobState::CleanupReady => "JOB_CLEANUP_READY",
            orbweaver_core::JobState::Succeeded => "JOB_SUCCEEDED",
            orbweaver_core::JobState::Failed => "JOB_FAILED",
            orbweaver_core::JobState::Cancelled => "JOB_CANCELLED",
        };
        m.add(name, s.code())?;
    }
    m.add("LANE_TASK", 0)?;
    m.add("LANE_COMMIT", 1)?;
    m.add("LANE_CLEANUP", 2)?;
    m.add("OUTCOME_JOB_COMPLETED", 1)?;
    m.add("OUTCOME_JOB_FAILED", 2)?;
    m.add("OUTCOME_COMMIT_SUCCEEDED", 3)?;
    m.add("OUTCOME_CLEANUP_SUCCEEDED", 4)?;

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
