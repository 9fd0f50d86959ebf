//! Writes every ready table to the snapshot directory every interval, and once more at shutdown
//! (after ingest stopped, so the positions are final), on a thread of its own: snapshotting is
//! blocking file I/O and must not hold up the async runtime.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::local::LocalSnapshots;
use super::remote::RemoteSnapshots;
use crate::metrics::Metrics;
use crate::store::Store;

/// The snapshot thread; [`SnapshotWriter::finish`] writes the final snapshots and joins it.
pub struct SnapshotWriter {
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl SnapshotWriter {
    pub fn spawn(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        snapshots: LocalSnapshots,
        publish: Option<RemoteSnapshots>,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let thread = std::thread::Builder::new().name("snapshots".into()).spawn({
            let stop = stop.clone();
            move || {
                let mut next = Instant::now() + interval;
                while !stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(100));
                    if !interval.is_zero() && Instant::now() >= next {
                        write_all(&store, &metrics, &snapshots, publish.as_ref());
                        next = Instant::now() + interval;
                    }
                }
                write_all(&store, &metrics, &snapshots, publish.as_ref());
            }
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Writes the final snapshots (call after ingest stopped) and waits for them.
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Snapshots every ready table; a table not ready yet has nothing worth keeping.
fn write_all(
    store: &Store,
    metrics: &Metrics,
    snapshots: &LocalSnapshots,
    publish: Option<&RemoteSnapshots>,
) {
    for table in store.tables().iter().filter(|t| t.is_ready()) {
        let table_metrics = metrics.table(table.name());
        match snapshots.write(table) {
            Ok(written) => {
                table_metrics.record_snapshot_written(written.bytes, written.duration);
                info!(
                    table = table.name(),
                    path = %written.path.display(),
                    entries = written.entries,
                    bytes = written.bytes,
                    ms = written.duration.as_millis() as u64,
                    "snapshot written"
                );
                if let Some(remote) = publish {
                    match remote.publish(table.name(), &written.path) {
                        Ok(()) => info!(table = table.name(), url = remote.url(), "snapshot published"),
                        Err(error) => {
                            table_metrics.record_snapshot_failed();
                            warn!(table = table.name(), url = remote.url(), %error, "cannot publish a snapshot");
                        }
                    }
                }
            }
            Err(error) => {
                table_metrics.record_snapshot_failed();
                warn!(table = table.name(), dir = %snapshots.dir().display(), %error, "cannot write a snapshot");
            }
        }
    }
}
