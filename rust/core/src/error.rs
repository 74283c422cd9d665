//! One error type for the whole engine. The variant is the *policy* (what the caller should do),
//! `kind` is the machine-readable reason. Stale errors are expected races (reject the caller, all
//! is well); internal errors mean an engine invariant broke.

use crate::ids::JobId;

/// Expected races: the request came too late / too early / twice. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaleKind {
    TaskInstanceLimitExceeded,
    TaskAlreadyTerminated,
    InvalidTaskInstanceId,
    TaskNotReady,
    JobNotStarted,
    JobNoLongerRunning,
    JobNotCommitReady,
    JobNoLongerCommitReady,
    JobNotCleanupReady,
    JobNoLongerCleanupReady,
    JobAlreadyTerminated,
    JobCancellationAlreadyRequested,
    JobAlreadyCancelled,
    JobAlreadyStarted,
    JobNotSucceeded,
    InvalidJobStateTransition,
}

impl StaleKind {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TaskInstanceLimitExceeded => "TaskInstanceLimitExceeded",
            Self::TaskAlreadyTerminated => "TaskAlreadyTerminated",
            Self::InvalidTaskInstanceId => "InvalidTaskInstanceId",
            Self::TaskNotReady => "TaskNotReady",
            Self::JobNotStarted => "JobNotStarted",
            Self::JobNoLongerRunning => "JobNoLongerRunning",
            Self::JobNotCommitReady => "JobNotCommitReady",
            Self::JobNoLongerCommitReady => "JobNoLongerCommitReady",
            Self::JobNotCleanupReady => "JobNotCleanupReady",
            Self::JobNoLongerCleanupReady => "JobNoLongerCleanupReady",
            Self::JobAlreadyTerminated => "JobAlreadyTerminated",
            Self::JobCancellationAlreadyRequested => "JobCancellationAlreadyRequested",
            Self::JobAlreadyCancelled => "JobAlreadyCancelled",
            Self::JobAlreadyStarted => "JobAlreadyStarted",
            Self::JobNotSucceeded => "JobNotSucceeded",
            Self::InvalidJobStateTransition => "InvalidJobStateTransition",
        }
    }
}

impl std::fmt::Display for StaleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A submitted graph or its inputs break a validation rule.
    #[error("{message}")]
    InvalidGraph { kind: &'static str, message: String },
    /// Malformed wire frame, self-describing outputs or zstd stream.
    #[error("{message}")]
    Codec { kind: &'static str, message: String },
    /// A request that does not fit the job (bogus index, wrong output count, ...). Nothing changed.
    #[error("{message}")]
    InvalidRequest { kind: &'static str, message: String },
    #[error("job {0} is not in the cache")]
    JobNotFound(JobId),
    /// The job's outputs were released from the cache (`drop_outputs`); the database has them.
    #[error("job {0}: its outputs were released from the cache; read them from the database")]
    OutputsReleased(JobId),
    #[error("{message}")]
    Stale { kind: StaleKind, message: String },
    /// A configured size or count limit was exceeded (submission too large, task inputs too
    /// large to hand out). The message names the size when known, the limit and its setting.
    #[error("{message}")]
    LimitExceeded { kind: &'static str, message: String },
    /// A persisted job cannot be rebuilt.
    #[error("{message}")]
    Recovery { kind: &'static str, message: String },
    /// A broken engine invariant.
    #[error("{message}")]
    Internal { kind: &'static str, message: String },
}

impl CoreError {
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidGraph { kind, .. }
            | Self::Codec { kind, .. }
            | Self::InvalidRequest { kind, .. }
            | Self::LimitExceeded { kind, .. }
            | Self::Recovery { kind, .. }
            | Self::Internal { kind, .. } => kind,
            Self::JobNotFound(_) => "JobNotFound",
            Self::OutputsReleased(_) => "OutputsReleased",
            Self::Stale { kind, .. } => kind.as_str(),
        }
    }

    #[must_use]
    pub fn stale_kind(&self) -> Option<StaleKind> {
        match self {
            Self::Stale { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    #[must_use]
    pub fn is_stale(&self) -> bool {
        matches!(self, Self::Stale { .. })
    }

    pub(crate) fn graph(kind: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidGraph {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn codec(kind: &'static str, message: impl Into<String>) -> Self {
        Self::Codec {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn request(kind: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn limit(kind: &'static str, message: impl Into<String>) -> Self {
        Self::LimitExceeded {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn stale(kind: StaleKind, message: impl Into<String>) -> Self {
        Self::Stale {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn recovery(kind: &'static str, message: impl Into<String>) -> Self {
        Self::Recovery {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn internal(kind: &'static str, message: impl Into<String>) -> Self {
        Self::Internal {
            kind,
            message: message.into(),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
