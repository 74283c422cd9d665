//! Orbweaver core: the sans-IO engine behind the storage service.
//!
//! Every operation is a state transition that returns what must happen next (tasks that became
//! ready, outputs to persist, a job that reached a terminal state). No database, no network, no
//! clock: times are passed in by the caller (the only wait is the inbound queue's bounded poll).

// Safe code only, and nothing printed: the core returns values, the services log.
#![forbid(unsafe_code)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod cache;
pub mod codec;
pub mod error;
pub mod graph;
pub mod hash;
pub mod ids;
pub mod instances;
pub mod job;
pub mod names;
pub mod policy;
pub mod queue;
// No production user (the services track sessions themselves): kept with its tests only.
#[cfg(test)]
mod session;
pub mod slot;
pub mod state;
pub mod submission;
pub mod taken;
pub mod tcb;
pub mod types;
pub mod value;
#[cfg(any(test, feature = "test-support"))]
pub mod workloads;

pub use cache::{Continuation, JobCache};
pub use error::{CoreError, Result, StaleKind};
pub use graph::{GraphBuilder, TaskDescriptor, TaskGraph, TaskOutputRef, TdlContext};
pub use ids::{ExecutionManagerId, JobId, ResourceGroupId, TaskId, TaskIndex, TaskInstanceId};
pub use instances::InstanceGcReport;
pub use job::{
    ExecutionContext, Job, Outcome, OutcomeKind, OutputLimits, Progress, Report, TaskIo,
};
pub use queue::{Entry, Lane};
pub use state::{JobState, TaskState};
pub use submission::Submission;

/// Immutable, shared payload bytes (msgpack values are opaque to the engine).
pub type Payload = std::sync::Arc<[u8]>;

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn everything_is_send_and_sync() {
        assert_send_sync::<crate::JobCache>();
        assert_send_sync::<crate::Job>();
        assert_send_sync::<crate::queue::InboundQueue>();
        assert_send_sync::<crate::instances::InstanceTable>();
        assert_send_sync::<crate::TaskGraph>();
        assert_send_sync::<crate::Submission>();
        assert_send_sync::<crate::ExecutionContext>();
        assert_send_sync::<crate::Outcome>();
        assert_send_sync::<crate::session::SessionTracker>();
    }
}
