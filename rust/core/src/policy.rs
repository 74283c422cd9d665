//! Execution policy (retries, instance limit, timeouts) with the Spider defaults and bounds.

use serde::{Deserialize, Serialize};

pub const DEFAULT_MAX_NUM_RETRY: u32 = 0;
pub const DEFAULT_MAX_NUM_INSTANCES: u32 = 1;
pub const DEFAULT_SOFT_TIMEOUT_MS: u64 = 150_000;
pub const DEFAULT_HARD_TIMEOUT_MS: u64 = 300_000;
pub const MIN_TIMEOUT_MS: u64 = 100;
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutPolicy {
    pub soft_timeout_ms: u64,
    pub hard_timeout_ms: u64,
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        Self {
            soft_timeout_ms: DEFAULT_SOFT_TIMEOUT_MS,
            hard_timeout_ms: DEFAULT_HARD_TIMEOUT_MS,
        }
    }
}

/// JSON form: `max_num_retry` and `max_num_instances` are required when the object is given,
/// `timeout_policy` may be omitted (defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionPolicy {
    pub max_num_retry: u32,
    pub max_num_instances: u32,
    #[serde(default)]
    pub timeout_policy: TimeoutPolicy,
}

impl Default for ExecutionPolicy {
    fn default() -> Self {
        Self {
            max_num_retry: DEFAULT_MAX_NUM_RETRY,
            max_num_instances: DEFAULT_MAX_NUM_INSTANCES,
            timeout_policy: TimeoutPolicy::default(),
        }
    }
}

impl ExecutionPolicy {
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// # Errors
    /// A human-readable reason (the caller prefixes which task it belongs to).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_num_instances == 0 {
            return Err("max_num_instances must be at least 1".into());
        }
        let TimeoutPolicy {
            soft_timeout_ms: soft,
            hard_timeout_ms: hard,
        } = self.timeout_policy;
        for (name, v) in [("soft_timeout_ms", soft), ("hard_timeout_ms", hard)] {
            if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&v) {
                return Err(format!(
                    "{name} = {v} is outside [{MIN_TIMEOUT_MS} ms, {MAX_TIMEOUT_MS} ms]"
                ));
            }
        }
        if hard <= soft {
            return Err(format!(
                "hard_timeout_ms ({hard}) must be greater than soft_timeout_ms ({soft})"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(inst: u32, soft: u64, hard: u64) -> ExecutionPolicy {
        ExecutionPolicy {
            max_num_retry: 0,
            max_num_instances: inst,
            timeout_policy: TimeoutPolicy {
                soft_timeout_ms: soft,
                hard_timeout_ms: hard,
            },
        }
    }

    #[test]
    fn defaults_and_bounds() {
        let d = ExecutionPolicy::default();
        assert_eq!((d.max_num_retry, d.max_num_instances), (0, 1));
        assert_eq!(d.timeout_policy.soft_timeout_ms, 150_000);
        assert_eq!(d.timeout_policy.hard_timeout_ms, 300_000);
        d.validate().expect("default is valid");
        p(1, 100, 101).validate().expect("lower bound");
        p(1, MAX_TIMEOUT_MS - 1, MAX_TIMEOUT_MS)
            .validate()
            .expect("upper bound");
        assert!(p(0, 100, 200).validate().is_err());
        assert!(p(1, 99, 200).validate().is_err());
        assert!(p(1, 100, MAX_TIMEOUT_MS + 1).validate().is_err());
        assert!(p(1, 200, 200).validate().is_err());
        assert!(p(1, 300, 200).validate().is_err());
    }

    #[test]
    fn json_requires_counts_but_not_timeouts() {
        let d: ExecutionPolicy =
            serde_json::from_str(r#"{"max_num_retry":2,"max_num_instances":3}"#).expect("json");
        assert_eq!(d.timeout_policy, TimeoutPolicy::default());
        assert!(serde_json::from_str::<ExecutionPolicy>(r#"{"max_num_retry":2}"#).is_err());
        assert!(serde_json::from_str::<ExecutionPolicy>(
            r#"{"max_num_retry":2,"max_num_instances":3,"x":1}"#
        )
        .is_err());
    }
}
