//! The admin listener, the one port opened to the pod network: Prometheus `/metrics`, `/healthz`
//! and `/readyz` for HTTP probes, and the gRPC health service for kubelet's gRPC probes. The
//! cache itself stays on loopback.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
struct AdminState {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    health: &HealthReporter,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let http = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState { store, metrics });
    let grpc_health = Routes::new(crate::grpc::health_service(health)).into_axum_router();
    axum::serve(listener, http.merge(grpc_health))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(&state.store),
    )
}

/// Alive: the process answers. Deliberately true while bootstrapping a large topic, so a liveness
/// probe never kills a sidecar that is merely still reading.
async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    if state.store.ready().is_open() {
        return (StatusCode::OK, "ready\n".into());
    }
    let mut body = String::from("not ready\n");
    for table in state.store.tables() {
        let p = table.progress();
        body.push_str(&format!(
            "table {}: ready={} read {} of {} records, {} of {} partitions caught up\n",
            table.name(),
            table.is_ready(),
            p.read,
            p.total,
            p.partitions_caught_up,
            p.partitions
        ));
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}
