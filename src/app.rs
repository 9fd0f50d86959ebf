//! Wires ingest, store, gRPC and admin together and runs them until shutdown.
//!
//! Shutdown order: health NOT_SERVING (probes and clients move away), keep answering for
//! `--shutdown-delay` (an app that got the same SIGTERM drains through us), stop accepting and
//! let in-flight calls finish within the grace period, stop ingest, and close the admin listener
//! last so metrics stay scrapeable throughout.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::grpc::{CacheService, ServingRuntime};
use crate::health::Health;
use crate::ingest::{self, IngestError};
use crate::listeners::Listeners;
use crate::metrics::Metrics;
use crate::snapshot::local::LocalSnapshots;
use crate::snapshot::writer::SnapshotWriter;
use crate::store::Store;

/// How long ingest threads get to stop: one poll plus one metadata request in flight.
const INGEST_STOP_DEADLINE: Duration = Duration::from_secs(10);
const ADMIN_STOP_DEADLINE: Duration = Duration::from_secs(2);
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("grpc server: {0}")]
    Grpc(#[from] crate::grpc::ServeError),
    #[error("cannot start a thread: {0}")]
    GrpcThread(std::io::Error),
}

/// Runs the sidecar on already-bound listeners until `shutdown` is cancelled or ingest fails.
pub async fn run(config: Config, listeners: Listeners, shutdown: CancellationToken) -> Result<(), AppError> {
    for deprecation in &config.deprecations {
        warn!("{deprecation}");
    }
    let memory_limit = config
        .memory_limit
        .or_else(crate::resources::container_memory_limit);
    let store = Arc::new(Store::with_memory_limit(&config.tables, memory_limit));
    let metrics = Metrics::new();
    let health = Health::new().await;

    let grpc_runtime = ServingRuntime::start().map_err(AppError::GrpcThread)?;

    let snapshot_writer = match &config.snapshots {
        Some(s) => Some(
            SnapshotWriter::spawn(
                store.clone(),
                metrics.clone(),
                LocalSnapshots::new(&s.dir, s.keep),
                s.remote.clone().filter(|_| s.publish),
                s.interval,
            )
            .map_err(AppError::GrpcThread)?,
        ),
        None => None,
    };

    // Compression upkeep (dictionary training, background recompression) off the ingest path;
    // it stops with ingest.
    let ingest_stop = CancellationToken::new();
    std::thread::Builder::new()
        .name("compression".into())
        .spawn({
            let (store, stop) = (store.clone(), ingest_stop.clone());
            move || crate::store::compression::maintain(store, stop)
        })
        .map_err(AppError::GrpcThread)?;
    let ingest_failed = CancellationToken::new();
    let ingest = ingest::start(
        &config,
        &store,
        &metrics,
        ingest_stop.clone(),
        ingest_failed.clone(),
    )?;

    let stopping = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn({
        let (store, metrics, health) = (store.clone(), metrics.clone(), health.clone());
        let stop = admin_stop.clone().cancelled_owned();
        async move { crate::admin::serve(listeners.admin, store, metrics, &health, stop).await }
    });
    let grpc_stop = CancellationToken::new();
    let mut grpc = grpc_runtime.spawn({
        let cache = CacheService::new(
            store.clone(),
            metrics.clone(),
            config.max_multiget_keys,
            config.grpc_max_message_bytes,
            config.watch,
            grpc_stop.clone(),
        );
        let health = health.clone();
        let stop = grpc_stop.clone().cancelled_owned();
        let max_bytes = config.grpc_max_message_bytes;
        async move { crate::grpc::serve(listeners.grpc, cache, health.reporter(), max_bytes, stop).await }
    });
    let announce = tokio::spawn(announce_ready(store.clone(), health.clone(), stopping.clone()));
    tokio::spawn(metrics_upkeep(metrics.clone(), stopping.clone()));
    if let Some(threshold) = crate::memory_guard::threshold(memory_limit, config.memory_limit_ratio) {
        let (store, health, stopping) = (store.clone(), health.clone(), stopping.clone());
        let limit = memory_limit.unwrap_or_default();
        tokio::spawn(async move {
            crate::memory_guard::run(store.clone(), limit, threshold, stopping).await;
            if store.loading_stopped().is_some() {
                health.loading_stopped().await;
            }
        });
    }

    let grpc_early_exit = tokio::select! {
        _ = shutdown.cancelled() => None,
        _ = ingest_failed.cancelled() => None,
        result = &mut grpc => Some(result),
    };

    stopping.cancel();
    health.shutting_down().await;
    let _ = announce.await;
    let mut grpc_result = grpc_early_exit;
    if grpc_result.is_none() && !config.shutdown_delay.is_zero() && !ingest_failed.is_cancelled() {
        info!(delay = ?config.shutdown_delay, "still answering while the app drains (--shutdown-delay)");
        tokio::select! {
            _ = tokio::time::sleep(config.shutdown_delay) => {}
            result = &mut grpc => grpc_result = Some(result),
        }
    }
    let grpc_result = match grpc_result {
        Some(result) => result,
        None => {
            grpc_stop.cancel();
            match tokio::time::timeout(config.shutdown_grace, &mut grpc).await {
                Ok(result) => result,
                Err(_) => {
                    warn!(grace = ?config.shutdown_grace, "grace period expired with calls in flight; closing them");
                    grpc.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    ingest_stop.cancel();
    let ingest_result = ingest.join(INGEST_STOP_DEADLINE).await;
    if let Some(writer) = snapshot_writer {
        // Positions are final now: the next start reads only what comes after them.
        writer.finish().await;
    }
    admin_stop.cancel();
    // A client holding a health Watch stream open would keep the admin server draining forever.
    let mut admin = admin;
    match tokio::time::timeout(ADMIN_STOP_DEADLINE, &mut admin).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "admin server stopped with an error"),
        Err(_) => {
            debug!("admin connections still open at exit; closing them");
            admin.abort();
        }
        _ => {}
    }

    ingest_result?;
    match grpc_result {
        Ok(result) => result?,
        Err(join_error) => error!(%join_error, "grpc server task failed"),
    }
    info!("stopped");
    Ok(())
}

/// Flips health to SERVING once every table has caught up, unless shutdown came first.
async fn announce_ready(store: Arc<Store>, health: Health, stopping: CancellationToken) {
    tokio::select! {
        _ = store.ready().wait() => {}
        _ = stopping.cancelled() => return,
    }
    health.ready().await;
    let entries: usize = store.tables().iter().map(|t| t.len()).sum();
    let serving = health.is_serving();
    info!(
        tables = store.tables().len(),
        entries, serving, "all tables caught up"
    );
}

async fn metrics_upkeep(metrics: Arc<Metrics>, stopping: CancellationToken) {
    let mut interval = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => metrics.run_upkeep(),
            _ = stopping.cancelled() => return,
        }
    }
}
