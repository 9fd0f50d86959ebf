//! Wall-clock time as the milliseconds since the Unix epoch that Kafka timestamps use, in one
//! place, so staleness figures in metrics, Status and the CLI are computed from the same clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is set before it).
pub fn now_ms() -> i64 {
    millis_since_epoch(SystemTime::now())
}

/// A point in time as milliseconds since the Unix epoch.
pub fn millis_since_epoch(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
