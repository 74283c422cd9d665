//! `JobCache`, `ExecutionContext`, `Outcome`, `InstanceGcReport`. The GIL is released around
//! everything that can wait or loop over many items (poll, batches, resend, gc, eviction).

use std::sync::Arc;
use std::time::Duration;

use orbweaver_core::cache::{
    Continuation, JobCache as CoreCache, DEFAULT_CLEANUP_CAPACITY, DEFAULT_COMMIT_CAPACITY,
    DEFAULT_TASK_CAPACITY,
};
use orbweaver_core::graph::TdlContext;
use orbweaver_core::{
    CoreError, Entry, ExecutionContext as CoreContext, JobState, Lane, Outcome as CoreOutcome,
    OutputLimits, Payload, Report, TaskId, TaskIo,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::codec::job_state;
use crate::errors::{instance, invalid_request, IntoPyResult};
use crate::graph::Submission;

fn task_id(code: i64) -> Result<TaskId, CoreError> {
    TaskId::from_code(code).ok_or_else(|| CoreError::InvalidRequest {
        kind: "InvalidTaskId",
        message: format!("invalid task id {code} (a task index >= 0, TASK_COMMIT or TASK_CLEANUP)"),
    })
}

fn py_task_id(code: i64) -> PyResult<TaskId> {
    task_id(code).py()
}

fn lane(code: i64) -> PyResult<Lane> {
    Lane::from_code(code)
        .ok_or_else(|| invalid_request("InvalidLane", format!("invalid lane {code}")))
}

#[pyclass(frozen, module = "orbweaver._core", name = "ExecutionContext")]
#[derive(Debug)]
pub struct ExecutionContext {
    #[pyo3(get)]
    instance_id: u64,
    #[pyo3(get)]
    job_id: u64,
    #[pyo3(get)]
    task_id: i64,
    #[pyo3(get)]
    resource_group_id: u64,
    context: Arc<TdlContext>,
    #[pyo3(get)]
    soft_timeout_ms: u64,
    #[pyo3(get)]
    hard_timeout_ms: u64,
    #[pyo3(get)]
    task_io: Py<PyBytes>,
}

fn io_bytes<'py>(py: Python<'py>, io: &TaskIo) -> PyResult<Bound<'py, PyBytes>> {
    match io {
        TaskIo::Encoded(b) => Ok(PyBytes::new(py, b)),
        TaskIo::Frame(_) => PyBytes::new_with(py, io.len(), |buf| {
            io.write_to(buf);
            Ok(())
        }),
    }
}

impl ExecutionContext {
    fn from_core(py: Python<'_>, c: CoreContext) -> PyResult<Self> {
        Ok(Self {
            instance_id: c.instance_id,
            job_id: c.job_id,
            task_id: c.task_id.code(),
            resource_group_id: c.resource_group_id,
            context: c.context,
            soft_timeout_ms: c.soft_timeout_ms,
            hard_timeout_ms: c.hard_timeout_ms,
            task_io: io_bytes(py, &c.task_io)?.unbind(),
        })
    }
}

#[pymethods]
impl ExecutionContext {
    #[getter]
    fn package(&self) -> &str {
        &self.context.package
    }

    #[getter]
    fn task_func(&self) -> &str {
        &self.context.task_func
    }

    fn __repr__(&self) -> String {
        format!(
            "ExecutionContext(instance_id={}, job_id={}, task_id={}, task={})",
            self.instance_id, self.job_id, self.task_id, self.context
        )
    }
}

#[pyclass(frozen, module = "orbweaver._core", name = "Outcome")]
#[derive(Debug)]
pub struct Outcome {
    #[pyo3(get)]
    kind: u8,
    #[pyo3(get)]
    job_id: u64,
    out: Option<Payload>,
    #[pyo3(get)]
    message: Option<String>,
    #[pyo3(get)]
    has_commit: bool,
}

impl From<CoreOutcome> for Outcome {
    fn from(o: CoreOutcome) -> Self {
        Self {
            kind: o.kind.code(),
            job_id: o.job_id,
            out: o.outputs,
            message: o.message,
            has_commit: o.has_commit,
        }
    }
}

#[pymethods]
impl Outcome {
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.out.as_ref().map(|b| PyBytes::new(py, b))
    }

    fn __repr__(&self) -> String {
        format!(
            "Outcome(kind={}, job_id={}, has_commit={}, message={})",
            self.kind,
            self.job_id,
            if self.has_commit { "True" } else { "False" },
            self.message
                .as_deref()
                .map_or_else(|| "None".to_string(), |m| format!("{m:?}"))
        )
    }
}

#[pyclass(frozen, module = "orbweaver._core", name = "InstanceGcReport")]
#[derive(Debug)]
pub struct InstanceGcReport {
    #[pyo3(get)]
    removed_terminal: usize,
    #[pyo3(get)]
    removed_dead: usize,
    #[pyo3(get)]
    requeued_dead: usize,
    #[pyo3(get)]
    requeued_soft_timeout: usize,
}

#[pymethods]
impl InstanceGcReport {
    fn __repr__(&self) -> String {
        format!(
            "InstanceGcReport(removed_terminal={}, removed_dead={}, requeued_dead={}, \
             requeued_soft_timeout={})",
            self.removed_terminal,
            self.removed_dead,
            self.requeued_dead,
            self.requeued_soft_timeout
        )
    }
}

type EntryTuple = (u64, u64, i64);

fn entries(v: Vec<Entry>) -> Vec<EntryTuple> {
    v.into_iter()
        .map(|e| (e.resource_group, e.job, e.task.code()))
        .collect()
}

#[pyclass(frozen, module = "orbweaver._core", name = "JobCache")]
#[derive(Debug)]
pub struct JobCache {
    inner: CoreCache,
}

/// One decoded report item (borrowing from the Python objects, which outlive the call).
enum Payloadish<'a> {
    Bytes(&'a [u8]),
    Str(&'a str),
}

#[pymethods]
impl JobCache {
    #[new]
    #[pyo3(
        signature = (*, task_capacity = DEFAULT_TASK_CAPACITY, commit_capacity = DEFAULT_COMMIT_CAPACITY, cleanup_capacity = DEFAULT_CLEANUP_CAPACITY, max_task_output_bytes = OutputLimits::DEFAULT.max_task_output_bytes, max_job_bytes = None),
        text_signature = "(*, task_capacity=65536, commit_capacity=1024, cleanup_capacity=1024, max_task_output_bytes=1073741824, max_job_bytes=None)"
    )]
    fn new(
        task_capacity: usize,
        commit_capacity: usize,
        cleanup_capacity: usize,
        max_task_output_bytes: u64,
        max_job_bytes: Option<u64>,
    ) -> PyResult<Self> {
        let limits = OutputLimits {
            max_task_output_bytes,
            max_job_bytes: max_job_bytes.unwrap_or(u64::MAX),
        };
        Ok(Self {
            inner: CoreCache::with_limits(task_capacity, commit_capacity, cleanup_capacity, limits)
                .py()?,
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, job_id: u64) -> bool {
        self.inner.contains(job_id)
    }

    fn job_ids(&self) -> Vec<u64> {
        self.inner.job_ids()
    }

    fn insert(
        &self,
        py: Python<'_>,
        job_id: u64,
        resource_group_id: u64,
        submission: &Submission,
    ) -> PyResult<()> {
        let s = &submission.inner;
        py.detach(|| self.inner.insert(job_id, resource_group_id, s))
            .py()
    }

    #[pyo3(signature = (job_id, resource_group_id, submission, state, outputs, finished = None))]
    #[expect(
        clippy::too_many_arguments,
        reason = "the persisted row's fields, passed as Python gives them"
    )]
    fn recover(
        &self,
        py: Python<'_>,
        job_id: u64,
        resource_group_id: u64,
        submission: &Submission,
        state: i64,
        outputs: Option<&[u8]>,
        finished: Option<Vec<(u32, PyBackedBytes)>>,
    ) -> PyResult<Option<Outcome>> {
        let state = job_state(state)?;
        let s = &submission.inner;
        let Some(finished) = finished else {
            return py
                .detach(|| {
                    self.inner
                        .recover(job_id, resource_group_id, s, state, outputs)
                })
                .py()
                .map(|()| None);
        };
        if state != JobState::Running {
            return Err(invalid_request(
                "UnexpectedTaskOutputs",
                format!(
                    "job {job_id}: finished tasks are recovered for Running jobs only, not {state}"
                ),
            ));
        }
        let items: Vec<(u32, &[u8])> = finished.iter().map(|(t, b)| (*t, &**b)).collect();
        let outcome = py
            .detach(|| {
                self.inner
                    .recover_running(job_id, resource_group_id, s, &items)
            })
            .py()?;
        Ok(outcome.map(Outcome::from))
    }

    fn state(&self, job_id: u64) -> PyResult<u8> {
        Ok(self.inner.get(job_id).py()?.state().code())
    }

    fn resource_group(&self, job_id: u64) -> PyResult<u64> {
        Ok(self.inner.get(job_id).py()?.resource_group())
    }

    fn has_commit(&self, job_id: u64) -> PyResult<bool> {
        Ok(self.inner.get(job_id).py()?.has_commit())
    }

    fn has_cleanup(&self, job_id: u64) -> PyResult<bool> {
        Ok(self.inner.get(job_id).py()?.has_cleanup())
    }

    fn outputs<'py>(&self, py: Python<'py>, job_id: u64) -> PyResult<Bound<'py, PyBytes>> {
        let out = self.inner.outputs(job_id).py()?;
        Ok(PyBytes::new(py, &out))
    }

    fn drop_outputs(&self, job_id: u64) -> PyResult<bool> {
        self.inner.drop_outputs(job_id).py()
    }

    fn error(&self, job_id: u64) -> PyResult<Option<String>> {
        Ok(self.inner.get(job_id).py()?.error())
    }

    fn progress(&self, py: Python<'_>, job_id: u64) -> PyResult<(u32, u32, u32, u32, u32, u32)> {
        let p = py.detach(|| self.inner.progress(job_id)).py()?;
        Ok((
            p.pending,
            p.ready,
            p.running,
            p.succeeded,
            p.failed,
            p.cancelled,
        ))
    }

    fn total_tasks(&self, job_id: u64) -> PyResult<u32> {
        Ok(self.inner.get(job_id).py()?.total_tasks())
    }

    fn explain(
        &self,
        py: Python<'_>,
        job_id: u64,
        limit: usize,
    ) -> PyResult<Vec<(i64, &'static str, String)>> {
        let job = self.inner.get(job_id).py()?;
        let items = py.detach(|| job.explain(limit));
        Ok(items
            .into_iter()
            .map(|(t, reason, detail)| (t.code(), reason, detail))
            .collect())
    }

    fn task_states(&self, py: Python<'_>, job_id: u64) -> PyResult<Vec<(i64, u8, u32, usize)>> {
        let job = self.inner.get(job_id).py()?;
        let items = py.detach(|| job.task_states());
        Ok(items
            .into_iter()
            .map(|(t, state, failures, live)| (t.code(), state.code(), failures, live))
            .collect())
    }

    fn check_transition(&self, job_id: u64, target: i64) -> PyResult<u8> {
        let target = job_state(target)?;
        Ok(self.inner.check_transition(job_id, target).py()?.code())
    }

    fn start(&self, py: Python<'_>, job_id: u64) -> PyResult<usize> {
        py.detach(|| self.inner.start(job_id)).py()
    }

    fn complete(&self, py: Python<'_>, job_id: u64, now_ms: u64) -> PyResult<u8> {
        Ok(py
            .detach(|| self.inner.complete(job_id, now_ms))
            .py()?
            .code())
    }

    fn cancel(&self, py: Python<'_>, job_id: u64, now_ms: u64) -> PyResult<u8> {
        Ok(py.detach(|| self.inner.cancel(job_id, now_ms)).py()?.code())
    }

    fn fail(&self, py: Python<'_>, job_id: u64, message: &str, now_ms: u64) -> PyResult<()> {
        py.detach(|| self.inner.fail(job_id, message, now_ms))
            .py()?;
        Ok(())
    }

    fn finish(&self, py: Python<'_>, job_id: u64, now_ms: u64) -> PyResult<u8> {
        Ok(py.detach(|| self.inner.finish(job_id, now_ms)).py()?.code())
    }

    #[pyo3(signature = (job_id, task_id, em_id, now_ms, *, max_task_io_bytes = None))]
    fn register(
        &self,
        py: Python<'_>,
        job_id: u64,
        task_id: i64,
        em_id: u64,
        now_ms: u64,
        max_task_io_bytes: Option<usize>,
    ) -> PyResult<ExecutionContext> {
        let task = py_task_id(task_id)?;
        let ctx = py
            .detach(|| {
                self.inner
                    .register_limited(job_id, task, em_id, now_ms, max_task_io_bytes)
            })
            .py()?;
        ExecutionContext::from_core(py, ctx)
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "PyO3 extracts a Python list into an owned `Vec`"
    )]
    #[pyo3(signature = (items, em_id, now_ms, *, max_task_io_bytes = None, max_total_io_bytes = None))]
    fn register_batch<'py>(
        &self,
        py: Python<'py>,
        items: Vec<(u64, i64)>,
        em_id: u64,
        now_ms: u64,
        max_task_io_bytes: Option<usize>,
        max_total_io_bytes: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let parsed: Vec<Result<(u64, TaskId), CoreError>> = items
            .iter()
            .map(|&(j, t)| task_id(t).map(|t| (j, t)))
            .collect();
        let results = py.detach(|| {
            let valid: Vec<(u64, TaskId)> = parsed
                .iter()
                .filter_map(|r| r.as_ref().ok().copied())
                .collect();
            let mut done = self
                .inner
                .register_batch_limited(
                    &valid,
                    em_id,
                    now_ms,
                    max_task_io_bytes,
                    max_total_io_bytes,
                )
                .into_iter();
            parsed
                .iter()
                .map(|r| match r {
                    Ok(_) => done.next().unwrap_or_else(|| {
                        Err(CoreError::Internal {
                            kind: "BatchMismatch",
                            message: "register_batch returned too few results".into(),
                        })
                    }),
                    Err(e) => Err(e.clone()),
                })
                .collect::<Vec<_>>()
        });
        let list = PyList::empty(py);
        for r in results {
            match r {
                Ok(ctx) => list.append(ExecutionContext::from_core(py, ctx)?)?,
                Err(e) => list.append(instance(py, &e)?)?,
            }
        }
        Ok(list)
    }

    fn report_success(
        &self,
        py: Python<'_>,
        job_id: u64,
        task_id: i64,
        instance_id: u64,
        outputs: &[u8],
    ) -> PyResult<Option<Outcome>> {
        let task = py_task_id(task_id)?;
        let o = py
            .detach(|| {
                self.inner
                    .report_success(job_id, task, instance_id, outputs)
            })
            .py()?;
        Ok(o.map(Outcome::from))
    }

    fn report_failure(
        &self,
        py: Python<'_>,
        job_id: u64,
        task_id: i64,
        instance_id: u64,
        message: &str,
    ) -> PyResult<Option<Outcome>> {
        let task = py_task_id(task_id)?;
        let o = py
            .detach(|| {
                self.inner
                    .report_failure(job_id, task, instance_id, message)
            })
            .py()?;
        Ok(o.map(Outcome::from))
    }

    fn report_batch<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        Ok(self.report(py, items, None)?.0)
    }

    #[pyo3(signature = (items, em_id, accept, now_ms, *, max_task_io_bytes = None, max_total_io_bytes = None))]
    #[expect(
        clippy::too_many_arguments,
        reason = "the report, who reported, and the limits of a registration"
    )]
    fn report_batch_continuing<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        em_id: u64,
        accept: usize,
        now_ms: u64,
        max_task_io_bytes: Option<usize>,
        max_total_io_bytes: Option<usize>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let continuation = Continuation {
            em: em_id,
            accept,
            now_ms,
            max_io: max_task_io_bytes,
            max_total_io: max_total_io_bytes,
        };
        self.report(py, items, Some(continuation))
    }
    #[expect(
        clippy::needless_pass_by_value,
        reason = "PyO3 extracts a Python list into an owned `Vec`"
    )]
    fn gc_instances(&self, py: Python<'_>, now_ms: u64, dead_ems: Vec<u64>) -> InstanceGcReport {
        let r = py.detach(|| self.inner.gc_instances(now_ms, &dead_ems));
        InstanceGcReport {
            removed_terminal: r.removed_terminal,
            removed_dead: r.removed_dead,
            requeued_dead: r.requeued_dead,
            requeued_soft_timeout: r.requeued_soft_timeout,
        }
    }

    fn reconcile_em(
        &self,
        py: Python<'_>,
        em_id: u64,
        held: Vec<u64>,
        registered_before_ms: u64,
    ) -> usize {
        let held: std::collections::HashSet<u64> = held.into_iter().collect();
        py.detach(|| self.inner.reconcile_em(em_id, &held, registered_before_ms))
    }

    fn live_instances(&self) -> usize {
        self.inner.live_instances()
    }

    #[pyo3(signature = (lane, max_items, wait_ms, now_ms = None))]
    fn poll(
        &self,
        py: Python<'_>,
        lane: i64,
        max_items: usize,
        wait_ms: u64,
        now_ms: Option<u64>,
    ) -> PyResult<Vec<EntryTuple>> {
        let lane = self::lane(lane)?;
        let got = py.detach(|| {
            self.inner
                .poll(lane, max_items, Duration::from_millis(wait_ms), now_ms)
        });
        Ok(entries(got))
    }

    #[pyo3(signature = (max_tasks, max_commit, max_cleanup, wait_ms, now_ms = None))]
    fn poll_all(
        &self,
        py: Python<'_>,
        max_tasks: usize,
        max_commit: usize,
        max_cleanup: usize,
        wait_ms: u64,
        now_ms: Option<u64>,
    ) -> (Vec<EntryTuple>, Vec<EntryTuple>, Vec<EntryTuple>) {
        let [a, b, c] = py.detach(|| {
            self.inner.poll_all(
                [max_tasks, max_commit, max_cleanup],
                Duration::from_millis(wait_ms),
                now_ms,
            )
        });
        (entries(a), entries(b), entries(c))
    }

    fn poll_first(
        &self,
        py: Python<'_>,
        max_items: usize,
        wait_ms: u64,
        now_ms: u64,
    ) -> Vec<EntryTuple> {
        let got = py.detach(|| {
            self.inner
                .poll_first(max_items, Duration::from_millis(wait_ms), now_ms)
        });
        entries(got)
    }

    fn give_back(&self, py: Python<'_>, entries: Vec<EntryTuple>) -> PyResult<usize> {
        let entries = entries
            .into_iter()
            .map(|(resource_group, job, task)| {
                Ok(Entry {
                    resource_group,
                    job,
                    task: py_task_id(task)?,
                })
            })
            .collect::<PyResult<Vec<Entry>>>()?;
        Ok(py.detach(|| self.inner.give_back(&entries)))
    }

    fn requeue_expired(&self, py: Python<'_>, now_ms: u64, visibility_ms: u64) -> usize {
        py.detach(|| self.inner.requeue_expired(now_ms, visibility_ms))
    }

    fn taken_entries(&self) -> usize {
        self.inner.taken_len()
    }

    fn queue_depths(&self) -> (usize, usize, usize) {
        let q = self.inner.queue();
        let d = q.depths();
        let s = q.spilled();
        (d[0] + s[0], d[1] + s[1], d[2] + s[2])
    }

    fn resend_ready(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.resend_ready())
    }

    fn close(&self) {
        self.inner.queue().close();
    }

    fn evict_terminated(&self, py: Python<'_>, now_ms: u64, retention_ms: u64) -> Vec<u64> {
        py.detach(|| self.inner.evict_terminated(now_ms, retention_ms))
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "PyO3 extracts a Python list into an owned `Vec`"
    )]
    fn remove(&self, py: Python<'_>, job_ids: Vec<u64>) -> usize {
        py.detach(|| self.inner.remove(&job_ids))
    }

    fn __repr__(&self) -> String {
        format!(
            "JobCache(jobs={}, live_instances={})",
            self.inner.len(),
            self.inner.live_instances()
        )
    }
}

impl JobCache {
    /// `report_batch` and `report_batch_continuing`: the per-item results and the contexts of
    /// the tasks registered for the reporting EM.
    fn report<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        continuation: Option<Continuation>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        // Extract everything first (type errors raise before anything changes), keeping the
        // Python objects alive so their buffers can be borrowed without the GIL.
        let mut keep: Vec<Bound<'py, PyAny>> = Vec::new();
        let mut raw: Vec<(u64, i64, u64)> = Vec::new();
        for item in items.try_iter()? {
            let item = item?;
            let t = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err(
                    "report_batch items must be (job_id, task_id, instance_id, bytes | str) tuples",
                )
            })?;
            if t.len() != 4 {
                return Err(PyTypeError::new_err(
                    "report_batch items must be 4-tuples (job_id, task_id, instance_id, bytes | str)",
                ));
            }
            raw.push((
                t.get_item(0)?.extract()?,
                t.get_item(1)?.extract()?,
                t.get_item(2)?.extract()?,
            ));
            let p = t.get_item(3)?;
            if !(p.is_instance_of::<PyBytes>() || p.is_instance_of::<PyString>()) {
                return Err(PyTypeError::new_err(format!(
                    "report_batch payload must be bytes (success) or str (failure), got {}",
                    p.get_type()
                )));
            }
            keep.push(p);
        }
        let mut payloads: Vec<Payloadish<'_>> = Vec::with_capacity(keep.len());
        for p in &keep {
            if let Ok(b) = p.cast::<PyBytes>() {
                payloads.push(Payloadish::Bytes(b.as_bytes()));
            } else {
                payloads.push(Payloadish::Str(p.cast::<PyString>()?.to_str()?));
            }
        }
        let (results, continued) = py.detach(|| {
            let mut parsed = Vec::with_capacity(raw.len());
            let mut bad: Vec<Option<CoreError>> = Vec::with_capacity(raw.len());
            for (&(j, t, i), p) in raw.iter().zip(&payloads) {
                match task_id(t) {
                    Ok(task) => {
                        let r = match p {
                            Payloadish::Bytes(b) => Report::Success(b),
                            Payloadish::Str(s) => Report::Failure(s),
                        };
                        parsed.push((j, task, i, r));
                        bad.push(None);
                    }
                    Err(e) => bad.push(Some(e)),
                }
            }
            let (done, continued) = self.inner.report_batch_continuing(&parsed, continuation);
            let mut done = done.into_iter();
            let results = bad
                .into_iter()
                .map(|b| match b {
                    Some(e) => Err(e),
                    None => done.next().unwrap_or_else(|| {
                        Err(CoreError::Internal {
                            kind: "BatchMismatch",
                            message: "report_batch returned too few results".into(),
                        })
                    }),
                })
                .collect::<Vec<_>>();
            (results, continued)
        });
        let list = PyList::empty(py);
        for r in results {
            match r {
                Ok(Some(o)) => list.append(Outcome::from(o))?,
                Ok(None) => list.append(py.None())?,
                Err(e) => list.append(instance(py, &e)?)?,
            }
        }
        let contexts = PyList::empty(py);
        for ctx in continued {
            contexts.append(ExecutionContext::from_core(py, ctx)?)?;
        }
        Ok((list, contexts))
    }
}
