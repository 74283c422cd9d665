//! Codecs and small stateless helpers: wire frames, self-describing outputs, zstd, job-state
//! table, task-name validation.

use orbweaver_core::codec;
use orbweaver_core::names;
use orbweaver_core::JobState;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::errors::{invalid_request, to_pyerr, IntoPyResult, INVALID_INPUT_VALUE};

/// Borrow every item of a Python sequence of `bytes` (no copies).
pub(crate) fn bytes_items<'py>(seq: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let mut out = Vec::with_capacity(seq.len().unwrap_or(0));
    for item in seq.try_iter()? {
        let item = item?;
        let b = item.cast_into::<PyBytes>().map_err(|e| {
            PyTypeError::new_err(format!(
                "expected a sequence of bytes, got an item of type {}",
                e.into_inner().get_type()
            ))
        })?;
        out.push(b);
    }
    Ok(out)
}

fn list_of_bytes<'py>(py: Python<'py>, items: &[&[u8]]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, items.iter().map(|b| PyBytes::new(py, b)))
}

#[pyfunction]
pub(crate) fn wire_encode<'py>(
    py: Python<'py>,
    payloads: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let items = bytes_items(payloads)?;
    let slices: Vec<&[u8]> = items.iter().map(PyBytesMethods::as_bytes).collect();
    let frame = codec::wire_encode(&slices).py()?;
    Ok(PyBytes::new(py, &frame))
}

#[pyfunction]
pub(crate) fn wire_decode<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let parts = codec::wire_decode(data).py()?;
    list_of_bytes(py, &parts)
}

#[pyfunction]
pub(crate) fn encode_outputs<'py>(
    py: Python<'py>,
    payloads: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let items = bytes_items(payloads)?;
    let slices: Vec<&[u8]> = items.iter().map(PyBytesMethods::as_bytes).collect();
    let out = py.detach(|| codec::encode_outputs(&slices)).py()?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
#[pyo3(signature = (data, max_size = codec::DEFAULT_MAX_DECOMPRESSED_SIZE))]
pub(crate) fn decode_outputs<'py>(
    py: Python<'py>,
    data: &[u8],
    max_size: usize,
) -> PyResult<Bound<'py, PyList>> {
    let parts = py.detach(|| codec::decode_outputs(data, max_size)).py()?;
    PyList::new(py, parts.iter().map(|b| PyBytes::new(py, b)))
}

#[pyfunction]
pub(crate) fn compress<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let out = py.detach(|| codec::compress(data)).py()?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
#[pyo3(signature = (data, max_size = codec::DEFAULT_MAX_DECOMPRESSED_SIZE))]
pub(crate) fn decompress<'py>(
    py: Python<'py>,
    data: &[u8],
    max_size: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let out = py.detach(|| codec::decompress(data, max_size)).py()?;
    Ok(PyBytes::new(py, &out))
}

pub(crate) fn job_state(code: i64) -> PyResult<JobState> {
    JobState::from_code(code)
        .ok_or_else(|| invalid_request("UnknownJobState", format!("unknown job state {code}")))
}

#[pyfunction]
pub(crate) fn is_valid_transition(from_state: i64, to_state: i64) -> PyResult<bool> {
    Ok(JobState::is_valid_transition(
        job_state(from_state)?,
        job_state(to_state)?,
    ))
}

#[pyfunction]
pub(crate) fn is_terminal(state: i64) -> PyResult<bool> {
    Ok(job_state(state)?.is_terminal())
}

#[pyfunction]
pub(crate) fn validate_task_name(package: &str, task_func: &str) -> PyResult<()> {
    names::validate_task_name(package, task_func).py()
}

/// Check one msgpack payload against a type descriptor, as submissions check graph inputs.
#[pyfunction]
pub(crate) fn validate_value(type_json: &str, payload: &[u8]) -> PyResult<()> {
    let ty = orbweaver_core::types::DataTypeDescriptor::from_json(type_json).map_err(|e| {
        invalid_request(
            "InvalidTypeDescriptor",
            format!("not a type descriptor: {e}"),
        )
    })?;
    orbweaver_core::value::validate(ty.value_type(), payload).map_err(|e| {
        to_pyerr(&orbweaver_core::CoreError::InvalidGraph {
            kind: INVALID_INPUT_VALUE,
            message: e.to_string(),
        })
    })
}
