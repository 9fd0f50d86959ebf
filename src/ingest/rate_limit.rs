//! Keeps repeated warnings (a stream of corrupt records, a broker that stays down) from flooding
//! the logs while still saying how many were held back.

use std::cell::Cell;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl RateLimit {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// Returns `Some(suppressed since the last emitted line)` when a line may be emitted now.
    pub fn check(&self) -> Option<u64> {
        let now = Instant::now();
        match self.last.get() {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.take())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_first_then_counts_suppressed() {
        let limit = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        limit.last.set(Some(Instant::now() - Duration::from_secs(7200)));
        assert_eq!(limit.check(), Some(2));
    }
}
