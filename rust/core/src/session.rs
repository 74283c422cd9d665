//! Session tracker: the storage session id only ever moves forward, so a client that has seen a
//! newer session never goes back to an older one (fences stale work across restarts).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct SessionTracker(AtomicU64);

impl SessionTracker {
    #[must_use]
    pub(crate) const fn new(initial: u64) -> Self {
        Self(AtomicU64::new(initial))
    }

    #[must_use]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Advance to `observed` if it is newer. Returns true if this call moved the session.
    pub(crate) fn try_advance(&self, observed: u64) -> bool {
        // fetch_max is a CAS loop to the maximum value: concurrent callers converge to the max.
        self.0.fetch_max(observed, Ordering::AcqRel) < observed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn try_advance_forward() {
        let s = SessionTracker::new(1);
        assert!(s.try_advance(5));
        assert_eq!(s.get(), 5);
    }

    #[test]
    fn try_advance_stale_or_equal() {
        let s = SessionTracker::new(5);
        assert!(!s.try_advance(5));
        assert!(!s.try_advance(3));
        assert_eq!(s.get(), 5);
    }

    #[test]
    fn concurrent_advance_converges_to_max() {
        let s = Arc::new(SessionTracker::new(0));
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        s.try_advance(t * 1000 + i);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert_eq!(s.get(), 7999);
    }
}
