//! Whether the sidecar is serving, kept in one place: the gRPC health service (on the gRPC and
//! the admin listener) and `/readyz` report the same status, which turns NOT_SERVING until every
//! table is ready, at shutdown, and when loading stopped short of the memory limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::grpc::HEALTH_SERVICES;

#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    serving: Arc<AtomicBool>,
}

impl Health {
    /// Starts NOT_SERVING.
    pub async fn new() -> Self {
        let health = Self {
            reporter: HealthReporter::new(),
            serving: Arc::new(AtomicBool::new(false)),
        };
        health.set(false).await;
        health
    }

    pub async fn set(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in HEALTH_SERVICES {
            self.reporter.set_service_status(service, status).await;
        }
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }
}
