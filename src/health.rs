//! Whether the sidecar is serving, kept in one place: the gRPC health service (on the gRPC and
//! the admin listener) and `/readyz` report the same status. Serving means every table is ready,
//! loading has not stopped short of the memory limit, and shutdown has not begun; the three facts
//! are combined under one lock, so a late "ready" can never overwrite a "stopped".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::grpc::HEALTH_SERVICES;

#[derive(Debug, Default, Clone, Copy)]
struct Facts {
    ready: bool,
    loading_stopped: bool,
    shutting_down: bool,
}

impl Facts {
    fn serving(self) -> bool {
        self.ready && !self.loading_stopped && !self.shutting_down
    }
}

#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    facts: Arc<Mutex<Facts>>,
    /// The last status published, for `/readyz` without taking the lock.
    serving: Arc<AtomicBool>,
}

impl Health {
    /// Starts NOT_SERVING.
    pub async fn new() -> Self {
        let health = Self {
            reporter: HealthReporter::new(),
            facts: Arc::new(Mutex::new(Facts::default())),
            serving: Arc::new(AtomicBool::new(false)),
        };
        health.update(|_| {}).await;
        health
    }

    /// Every table has caught up.
    pub async fn ready(&self) {
        self.update(|facts| facts.ready = true).await;
    }

    /// Loading stopped short of the memory limit: NOT_SERVING for good.
    pub async fn loading_stopped(&self) {
        self.update(|facts| facts.loading_stopped = true).await;
    }

    /// Shutdown began: NOT_SERVING for good.
    pub async fn shutting_down(&self) {
        self.update(|facts| facts.shutting_down = true).await;
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }

    async fn update(&self, change: impl FnOnce(&mut Facts)) {
        let mut facts = self.facts.lock().await;
        change(&mut facts);
        let serving = facts.serving();
        self.serving.store(serving, Ordering::Release);
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        // Still under the lock: statuses are published in the order the facts changed.
        for service in HEALTH_SERVICES {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_after_stop_stays_not_serving() {
        let health = Health::new().await;
        assert!(!health.is_serving());
        health.loading_stopped().await;
        health.ready().await;
        assert!(!health.is_serving(), "a late ready does not undo a stop");
        let health = Health::new().await;
        health.ready().await;
        assert!(health.is_serving());
        health.shutting_down().await;
        assert!(!health.is_serving());
    }
}
