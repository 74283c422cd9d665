//! `TaskGraph` and `Submission`.

use std::sync::Arc;

use orbweaver_core::codec::DEFAULT_MAX_DECOMPRESSED_SIZE;
use orbweaver_core::graph::TaskGraph as CoreGraph;
use orbweaver_core::submission::SubmissionLimits;
use orbweaver_core::Submission as CoreSubmission;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::errors::IntoPyResult;

#[pyclass(frozen, module = "orbweaver._core", name = "TaskGraph")]
#[derive(Debug)]
pub struct TaskGraph {
    pub inner: Arc<CoreGraph>,
}

#[pymethods]
impl TaskGraph {
    #[staticmethod]
    fn from_json(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<Self> {
        let g = if let Ok(s) = data.cast::<PyString>() {
            let s = s.to_str()?;
            py.detach(|| CoreGraph::from_json(s.as_bytes()))
        } else if let Ok(b) = data.cast::<PyBytes>() {
            let b = b.as_bytes();
            py.detach(|| CoreGraph::from_json(b))
        } else {
            return Err(PyTypeError::new_err(
                "TaskGraph.from_json expects str or bytes",
            ));
        };
        Ok(Self {
            inner: Arc::new(g.py()?),
        })
    }

    #[staticmethod]
    fn from_compressed(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let g = py
            .detach(|| CoreGraph::from_compressed(data, DEFAULT_MAX_DECOMPRESSED_SIZE))
            .py()?;
        Ok(Self { inner: Arc::new(g) })
    }

    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    fn to_compressed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let out = py.detach(|| self.inner.to_compressed()).py()?;
        Ok(PyBytes::new(py, &out))
    }

    #[getter]
    fn num_tasks(&self) -> usize {
        self.inner.num_tasks()
    }

    #[getter]
    fn num_graph_inputs(&self) -> usize {
        self.inner.graph_inputs().len()
    }

    #[getter]
    fn num_graph_outputs(&self) -> usize {
        self.inner.graph_outputs().len()
    }

    #[getter]
    fn has_commit(&self) -> bool {
        self.inner.commit().is_some()
    }

    #[getter]
    fn has_cleanup(&self) -> bool {
        self.inner.cleanup().is_some()
    }

    fn graph_input_types(&self) -> Vec<String> {
        let g = &self.inner;
        g.graph_inputs()
            .iter()
            .filter_map(|&d| {
                g.dep_type(d)
                    .map(orbweaver_core::types::DataTypeDescriptor::to_json)
            })
            .collect()
    }

    fn graph_output_types(&self) -> Vec<String> {
        let g = &self.inner;
        g.graph_outputs()
            .iter()
            .filter_map(|&d| {
                g.dep_type(d)
                    .map(orbweaver_core::types::DataTypeDescriptor::to_json)
            })
            .collect()
    }

    fn tdl_contexts(&self) -> Vec<(String, String)> {
        self.inner
            .contexts()
            .iter()
            .map(|c| (c.package.to_string(), c.task_func.to_string()))
            .collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "TaskGraph(num_tasks={}, num_graph_inputs={}, num_graph_outputs={})",
            self.inner.num_tasks(),
            self.inner.graph_inputs().len(),
            self.inner.graph_outputs().len()
        )
    }
}

#[pyclass(frozen, module = "orbweaver._core", name = "Submission")]
#[derive(Debug)]
pub struct Submission {
    pub inner: CoreSubmission,
}

#[pymethods]
impl Submission {
    #[new]
    #[pyo3(
        signature = (compressed_graph, compressed_inputs, *, max_graph_bytes = DEFAULT_MAX_DECOMPRESSED_SIZE, max_input_bytes = DEFAULT_MAX_DECOMPRESSED_SIZE, max_tasks = None),
        text_signature = "(compressed_graph, compressed_inputs, *, max_graph_bytes=1073741824, max_input_bytes=1073741824, max_tasks=None)"
    )]
    fn new(
        py: Python<'_>,
        compressed_graph: &[u8],
        compressed_inputs: &[u8],
        max_graph_bytes: usize,
        max_input_bytes: usize,
        max_tasks: Option<usize>,
    ) -> PyResult<Self> {
        let limits = SubmissionLimits {
            max_graph_bytes,
            max_input_bytes,
            max_tasks: max_tasks.unwrap_or(usize::MAX),
        };
        let inner = py
            .detach(|| CoreSubmission::parse_limited(compressed_graph, compressed_inputs, &limits))
            .py()?;
        Ok(Self { inner })
    }

    /// A submission of `graph` (already parsed, shared, not copied) with new inputs.
    #[staticmethod]
    #[pyo3(
        signature = (graph, compressed_inputs, *, max_input_bytes = DEFAULT_MAX_DECOMPRESSED_SIZE),
        text_signature = "(graph, compressed_inputs, *, max_input_bytes=1073741824)"
    )]
    fn with_graph(
        py: Python<'_>,
        graph: &TaskGraph,
        compressed_inputs: &[u8],
        max_input_bytes: usize,
    ) -> PyResult<Self> {
        let shared = Arc::clone(&graph.inner);
        let inner = py
            .detach(|| {
                CoreSubmission::with_graph_limited(shared, compressed_inputs, max_input_bytes)
            })
            .py()?;
        Ok(Self { inner })
    }

    #[getter]
    fn graph(&self) -> TaskGraph {
        TaskGraph {
            inner: Arc::clone(&self.inner.graph),
        }
    }

    #[getter]
    fn num_inputs(&self) -> usize {
        self.inner.inputs.len()
    }
}
