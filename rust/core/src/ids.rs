//! Identifiers. Database ids are plain `u64`s (the DB assigns them); a task is addressed inside
//! its job by [`TaskId`].

pub type JobId = u64;
pub type ResourceGroupId = u64;
pub type ExecutionManagerId = u64;
pub type TaskInstanceId = u64;
/// Position of a task in the graph's insertion (= topological) order. `u32` keeps tables small.
pub type TaskIndex = u32;

/// Job-local task identity: a regular task or one of the two termination tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskId {
    Index(TaskIndex),
    Commit,
    Cleanup,
}

impl TaskId {
    /// Integer encoding used by the binding: `>= 0` regular index, -1 commit, -2 cleanup.
    pub const COMMIT_CODE: i64 = -1;
    pub const CLEANUP_CODE: i64 = -2;

    #[must_use]
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            Self::COMMIT_CODE => Some(Self::Commit),
            Self::CLEANUP_CODE => Some(Self::Cleanup),
            _ => TaskIndex::try_from(code).ok().map(Self::Index),
        }
    }

    #[must_use]
    pub const fn code(self) -> i64 {
        match self {
            Self::Index(i) => i as i64,
            Self::Commit => Self::COMMIT_CODE,
            Self::Cleanup => Self::CLEANUP_CODE,
        }
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Index(i) => write!(f, "task {i}"),
            Self::Commit => f.write_str("commit task"),
            Self::Cleanup => f.write_str("cleanup task"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_codes_round_trip() {
        for id in [
            TaskId::Index(0),
            TaskId::Index(u32::MAX),
            TaskId::Commit,
            TaskId::Cleanup,
        ] {
            assert_eq!(TaskId::from_code(id.code()), Some(id));
        }
        assert_eq!(TaskId::from_code(-3), None);
        assert_eq!(TaskId::from_code(i64::from(u32::MAX) + 1), None);
    }
}
