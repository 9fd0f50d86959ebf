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

use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
struct AdminState {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    health: Health,
}

pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    health: &Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let http = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            store,
            metrics,
            health: health.clone(),
        });
    let grpc_health = Routes::new(crate::grpc::health_service(health.reporter())).into_axum_router();
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

/// Ready: the same status as the gRPC health service (caught up, not shutting down, loading not
/// stopped), with the reason in the body when not.
async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    if state.health.is_serving() {
        return (StatusCode::OK, "ready\n".into());
    }
    let mut body = String::from("not ready\n");
    if let Some(reason) = state.store.loading_stopped() {
        body.push_str(reason);
        body.push('\n');
    }
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
