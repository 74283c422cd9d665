//! Orbweaver core: the sans-IO engine behind the storage service.
//!
//! Every operation is a state transition that returns what must happen next (tasks that became
//! ready, outputs to persist, a job that reached a terminal state). No database, no network, no
//! clock: times are passed in by the caller (the only wait is the inbound queue's bounded poll).

pub mod codec;
pub mod error;
pub mod graph;
pub mod ids;
pub mod names;
pub mod policy;
pub mod session;
pub mod state;
pub mod submission;
pub mod types;

pub use error::{CoreError, Result, StaleKind};
pub use graph::{GraphBuilder, TaskDescriptor, TaskGraph, TaskOutputRef, TdlContext};
pub use ids::{ExecutionManagerId, JobId, ResourceGroupId, TaskId, TaskIndex, TaskInstanceId};
pub use state::{JobState, TaskState};
pub use submission::Submission;

/// Immutable, shared payload bytes (msgpack values are opaque to the engine).
pub type Payload = std::sync::Arc<[u8]>;
