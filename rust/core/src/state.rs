//! Job and task state machines (docs/internals.md, "Job states", "Task states"), and the macro
//! that writes out each shared vocabulary (job and task states, inbound-queue lanes, outcome
//! kinds) once: the binding exports the names and codes it generates, and the Python enums are
//! built from those exports.

/// A fieldless `#[repr(u8)]` enum whose variants are written once, with its code table:
/// `ALL` (in declaration order), `code`, `from_code` and `name` (the variant's identifier).
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $vis:vis enum $enum:ident {
            $($(#[$vmeta:meta])* $variant:ident = $code:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        $vis enum $enum {
            $($(#[$vmeta])* $variant = $code,)+
        }

        impl $enum {
            /// Every value, in declaration (and code) order.
            pub const ALL: [Self; <[&str]>::len(&[$(stringify!($variant)),+])] =
                [$(Self::$variant),+];

            #[must_use]
            pub const fn code(self) -> u8 {
                self as u8
            }

            #[must_use]
            pub const fn from_code(code: i64) -> Option<Self> {
                $(if code == $code {
                    return Some(Self::$variant);
                })+
                None
            }

            /// The variant's identifier (`"CommitReady"`), as messages and the binding spell it.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant),)+
                }
            }
        }
    };
}
pub(crate) use vocabulary;

vocabulary! {
    /// Job state; the codes are the protobuf `JobState` values.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum JobState {
        Ready = 1,
        Running = 2,
        CommitReady = 3,
        CleanupReady = 4,
        Succeeded = 5,
        Failed = 6,
        Cancelled = 7,
    }
}

impl JobState {
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The authoritative job table (docs/internals.md, "Job states"); the DB layer checks its
    /// updates against this one through the binding. Nothing leaves a terminal state and nothing
    /// enters Ready.
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

vocabulary! {
    /// Task state (in memory only). A failed task's message travels in the job-level outcome.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum TaskState {
        Pending = 0,
        Ready = 1,
        Running = 2,
        Succeeded = 3,
        Failed = 4,
        Cancelled = 5,
    }
}

impl TaskState {
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
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
        assert_eq!(JobState::CommitReady.name(), "CommitReady");
    }

    #[test]
    fn task_codes() {
        assert_eq!(TaskState::ALL.len(), 6);
        for (i, s) in TaskState::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(s.code()), i, "{s:?}");
            assert_eq!(TaskState::from_code(i64::from(s.code())), Some(s));
        }
        assert_eq!(TaskState::from_code(6), None);
        assert_eq!(TaskState::Pending.name(), "Pending");
    }

    #[test]
    fn task_table_matches_spec() {
        use TaskState::*;
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
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                assert_eq!(
                    TaskState::is_valid_transition(from, to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }
}
