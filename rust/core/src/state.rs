//! Job and task state machines (docs/internals.md, "Job states", "Task states").

/// Job state; the discriminants are the protobuf `JobState` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum JobState {
    Ready = 1,
    Running = 2,
    CommitReady = 3,
    CleanupReady = 4,
    Succeeded = 5,
    Failed = 6,
    Cancelled = 7,
}

impl JobState {
    pub const ALL: [Self; 7] = [
        Self::Ready,
        Self::Running,
        Self::CommitReady,
        Self::CleanupReady,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    #[must_use]
    pub const fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Self::Ready,
            2 => Self::Running,
            3 => Self::CommitReady,
            4 => Self::CleanupReady,
            5 => Self::Succeeded,
            6 => Self::Failed,
            7 => Self::Cancelled,
            _ => return None,
        })
    }

    #[must_use]
    pub const fn code(self) -> u8 {
        self as u8
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Running => "Running",
            Self::CommitReady => "CommitReady",
            Self::CleanupReady => "CleanupReady",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
        }
    }

    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The authoritative job table (docs/internals.md, "Job states"; also enforced by the DB layer). Nothing leaves a
    /// terminal state and nothing enters Ready.
    #[must_use]
    #[expect(
        clippy::unnested_or_patterns,
        reason = "one row per target state, like the table it mirrors"
    )]
    pub const fn is_valid_transition(from: Self, to: Self) -> bool {
        use JobState::{Cancelled, CleanupReady, CommitReady, Failed, Ready, Running, Succeeded};
        matches!(
            (from, to),
            (Ready, Running)
                | (Running, CommitReady)
                | (Running | CommitReady, CleanupReady)
                | (Running | CommitReady, Succeeded)
                | (Running | CommitReady | CleanupReady, Failed)
                | (Ready | Running | CleanupReady, Cancelled)
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Task state (in memory only). A failed task's message travels in the job-level outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TaskState {
    Pending,
    Ready,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Ready => "Ready",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
        }
    }

    /// The task table (docs/internals.md, "Task states").
    #[must_use]
    pub const fn is_valid_transition(from: Self, to: Self) -> bool {
        use TaskState::{Cancelled, Failed, Pending, Ready, Running, Succeeded};
        match (from, to) {
            (Pending, Ready)
            | (Ready | Running, Running)
            | (Running, Succeeded | Ready | Failed) => true,
            (f, Cancelled) => !f.is_terminal(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_table_matches_spec() {
        use JobState::*;
        let allowed = [
            (Ready, Running),
            (Running, CommitReady),
            (Running, CleanupReady),
            (CommitReady, CleanupReady),
            (Running, Succeeded),
            (CommitReady, Succeeded),
            (Running, Failed),
            (CommitReady, Failed),
            (CleanupReady, Failed),
            (Ready, Cancelled),
            (Running, Cancelled),
            (CleanupReady, Cancelled),
        ];
        for from in JobState::ALL {
            for to in JobState::ALL {
                assert_eq!(
                    JobState::is_valid_transition(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn job_codes() {
        for s in JobState::ALL {
            assert_eq!(JobState::from_code(i64::from(s.code())), Some(s));
        }
        assert_eq!(JobState::from_code(0), None);
        assert_eq!(JobState::from_code(8), None);
        assert_eq!(JobState::Ready.code(), 1);
        assert_eq!(JobState::Cancelled.code(), 7);
    }

    #[test]
    fn task_table_matches_spec() {
        use TaskState::*;
        let all = [Pending, Ready, Running, Succeeded, Failed, Cancelled];
        let allowed = [
            (Pending, Ready),
            (Ready, Running),
            (Running, Running),
            (Running, Succeeded),
            (Running, Ready),
            (Running, Failed),
            (Pending, Cancelled),
            (Ready, Cancelled),
            (Running, Cancelled),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    TaskState::is_valid_transition(from, to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }
}
