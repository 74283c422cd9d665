//! The exception hierarchy of `_core.pyi`, built at import with `type(...)` so classes can also
//! derive from `ValueError` / `LookupError` (a `#[pyclass]` cannot multiply inherit). Every class
//! has a `kind` class attribute (its own name); raised instances carry the precise variant in
//! `kind`.

use orbweaver_core::CoreError;
use pyo3::exceptions::{PyException, PyLookupError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

pub(crate) struct ErrorTypes {
    pub core: Py<PyType>,
    pub invalid_graph: Py<PyType>,
    pub invalid_input_value: Py<PyType>,
    pub codec: Py<PyType>,
    pub invalid_request: Py<PyType>,
    pub job_not_found: Py<PyType>,
    pub limit_exceeded: Py<PyType>,
    pub task_inputs_too_large: Py<PyType>,
    pub outputs_released: Py<PyType>,
    pub stale: Py<PyType>,
    pub recovery: Py<PyType>,
    pub internal: Py<PyType>,
}

static TYPES: PyOnceLock<ErrorTypes> = PyOnceLock::new();

/// `kind` of the `InvalidGraph` errors raised as `InvalidInputValueError`.
pub(crate) use orbweaver_core::value::INVALID_INPUT_VALUE;

/// `kind` of the `LimitExceeded` errors raised as `TaskInputsTooLargeError`.
pub(crate) use orbweaver_core::job::TASK_INPUTS_TOO_LARGE;

fn make(py: Python<'_>, name: &str, bases: &[Bound<'_, PyAny>], doc: &str) -> PyResult<Py<PyType>> {
    let dict = PyDict::new(py);
    dict.set_item("__module__", "orbweaver._core")?;
    dict.set_item("__doc__", doc)?;
    dict.set_item("kind", name)?;
    let ty = py
        .get_type::<PyType>()
        .call1((name, PyTuple::new(py, bases)?, dict))?;
    Ok(ty.cast_into::<PyType>()?.unbind())
}

pub(crate) fn types(py: Python<'_>) -> PyResult<&'static ErrorTypes> {
    TYPES.get_or_try_init(py, || {
        let core = make(
            py,
            "CoreError",
            &[py.get_type::<PyException>().into_any()],
            "Base class of every error raised by the Orbweaver core; `kind` names the variant.",
        )?;
        let c = || core.bind(py).clone().into_any();
        let value = || py.get_type::<PyValueError>().into_any();
        let limit_exceeded = make(
            py,
            "LimitExceededError",
            &[c(), value()],
            "A configured size or count limit was exceeded (graph or inputs too large once \
             decompressed, too many tasks, ...); the message names the size when known, the \
             limit and the setting.",
        )?;
        let invalid_graph = make(
            py,
            "InvalidGraphError",
            &[c(), value()],
            "A submitted graph or its inputs break a validation rule; the message names the \
             task and position at fault.",
        )?;
        Ok(ErrorTypes {
            invalid_input_value: make(
                py,
                "InvalidInputValueError",
                &[invalid_graph.bind(py).clone().into_any()],
                "A graph-input payload does not fit its declared type (wrong msgpack type, \
                 integer out of range, not msgpack at all); the message names the graph input, \
                 the task and input it feeds, and what was wrong.",
            )?,
            invalid_graph,
            codec: make(
                py,
                "CodecError",
                &[c(), value()],
                "Malformed wire frame, self-describing outputs or zstd stream.",
            )?,
            invalid_request: make(
                py,
                "InvalidRequestError",
                &[c(), value()],
                "A request that does not fit the job: unknown task index, wrong output count, ...",
            )?,
            job_not_found: make(
                py,
                "JobNotFoundError",
                &[c(), py.get_type::<PyLookupError>().into_any()],
                "The job is not in the cache.",
            )?,
            task_inputs_too_large: make(
                py,
                "TaskInputsTooLargeError",
                &[limit_exceeded.bind(py).clone().into_any()],
                "A registration was refused because the task's task_io (its inputs; a commit \
                 task's job outputs; a cleanup task's graph inputs) is larger than \
                 max_task_io_bytes. Nothing changed; the caller fails the job.",
            )?,
            limit_exceeded,
            outputs_released: make(
                py,
                "OutputsReleasedError",
                &[c(), py.get_type::<PyLookupError>().into_any()],
                "The job's outputs were released from the cache (drop_outputs); read them from \
                 the database.",
            )?,
            stale: make(
                py,
                "StaleError",
                &[c()],
                "An expected race (instance limit reached, task already terminal, job no longer \
                 running, job already started/terminated, ...): reject the caller, nothing is wrong.",
            )?,
            recovery: make(
                py,
                "RecoveryError",
                &[c()],
                "A persisted job cannot be rebuilt (CommitReady without outputs, unrecoverable \
                 state, ...).",
            )?,
            internal: make(py, "InternalError", &[c()], "A broken invariant of the engine.")?,
            core,
        })
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let t = types(m.py())?;
    for (name, ty) in [
        ("CoreError", &t.core),
        ("InvalidGraphError", &t.invalid_graph),
        ("InvalidInputValueError", &t.invalid_input_value),
        ("CodecError", &t.codec),
        ("InvalidRequestError", &t.invalid_request),
        ("JobNotFoundError", &t.job_not_found),
        ("LimitExceededError", &t.limit_exceeded),
        ("TaskInputsTooLargeError", &t.task_inputs_too_large),
        ("OutputsReleasedError", &t.outputs_released),
        ("StaleError", &t.stale),
        ("RecoveryError", &t.recovery),
        ("InternalError", &t.internal),
    ] {
        m.add(name, ty.clone_ref(m.py()))?;
    }
    Ok(())
}

/// The exception *instance* for `e` (batch calls return these instead of raising).
pub(crate) fn instance<'py>(py: Python<'py>, e: &CoreError) -> PyResult<Bound<'py, PyAny>> {
    let t = types(py)?;
    let ty = match e {
        CoreError::InvalidGraph { kind, .. } if *kind == INVALID_INPUT_VALUE => {
            &t.invalid_input_value
        }
        CoreError::InvalidGraph { .. } => &t.invalid_graph,
        CoreError::Codec { .. } => &t.codec,
        CoreError::InvalidRequest { .. } => &t.invalid_request,
        CoreError::JobNotFound(_) => &t.job_not_found,
        CoreError::LimitExceeded { kind, .. } if *kind == TASK_INPUTS_TOO_LARGE => {
            &t.task_inputs_too_large
        }
        CoreError::LimitExceeded { .. } => &t.limit_exceeded,
        CoreError::OutputsReleased(_) => &t.outputs_released,
        CoreError::Stale { .. } => &t.stale,
        CoreError::Recovery { .. } => &t.recovery,
        CoreError::Internal { .. } => &t.internal,
    };
    let obj = ty.bind(py).call1((e.to_string(),))?;
    obj.setattr("kind", e.kind())?;
    Ok(obj)
}

/// Convert a core error into a raisable `PyErr`.
pub(crate) fn to_pyerr(e: &CoreError) -> PyErr {
    Python::attach(|py| match instance(py, e) {
        Ok(obj) => PyErr::from_value(obj),
        Err(err) => err,
    })
}

/// `?`-friendly conversion for core results.
pub(crate) trait IntoPyResult<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, CoreError> {
    fn py(self) -> PyResult<T> {
        self.map_err(|e| to_pyerr(&e))
    }
}

/// An `InvalidRequestError` for binding-level argument problems (bad lane, bad task id, ...).
pub(crate) fn invalid_request(kind: &'static str, message: String) -> PyErr {
    to_pyerr(&CoreError::InvalidRequest { kind, message })
}
