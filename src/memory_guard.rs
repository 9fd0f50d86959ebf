//! Stops loading short of the memory limit instead of being OOM-killed: a kill during bootstrap
//! becomes a restart loop that replays the topic each time, and with a native sidecar the app
//! never starts. Stopping says what is wrong (the table and its size, a metric, NOT_SERVING)
//! while the process stays up to be looked at.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::resources::resident_memory_bytes;
use crate::store::Store;

/// Often enough that a fast bootstrap (hundreds of MB/s from a nearby broker) cannot overshoot
/// the margin between the ratio and the limit between two checks; one check reads
/// /proc/self/stat and costs microseconds.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The resident memory at which loading stops: `ratio` of `limit`; None when either is unset.
pub fn threshold(limit: Option<u64>, ratio: f64) -> Option<u64> {
    let limit = limit?;
    (ratio > 0.0).then_some((limit as f64 * ratio) as u64)
}

/// Checks resident memory every [`CHECK_INTERVAL`] until `stopping`; past `threshold`, stops every table's
/// loading with a message naming the largest table, and returns.
pub async fn run(store: Arc<Store>, limit: u64, threshold: u64, stopping: CancellationToken) {
    let mut interval = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopping.cancelled() => return,
        }
        let Some(resident) = resident_memory_bytes() else {
            return; // the platform does not say: nothing to guard with
        };
        if resident < threshold {
            continue;
        }
        let largest = store.tables().iter().max_by_key(|t| t.data_bytes());
        let (table, entries, data_bytes) =
            largest.map_or(("", 0, 0), |t| (t.name(), t.len(), t.data_bytes()));
        let message = format!(
            "loading stopped: resident memory {} MiB reached {:.0}% of the {} MiB limit (largest table {table}: {entries} entries, {} MiB of keys and values); raise the container's memory limit (see the sizing rule in the README) and restart",
            resident >> 20,
            threshold as f64 * 100.0 / limit as f64,
            limit >> 20,
            data_bytes >> 20,
        );
        error!(resident, limit, table, entries, data_bytes, "{message}");
        store.stop_loading(message);
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_needs_a_limit_and_a_ratio() {
        assert_eq!(threshold(Some(1000), 0.9), Some(900));
        assert_eq!(threshold(None, 0.9), None);
        assert_eq!(threshold(Some(1000), 0.0), None);
    }
}
