//! The app-facing gRPC server: the `cdc_cache.v1.Cache` service, the standard health service and
//! server reflection, on a loopback TCP port or a unix socket.

mod consistency;
mod errors;
mod latest;
mod runtime;
mod service;
mod watch;

use std::future::Future;

use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

pub use errors::RequestError;
pub use runtime::ServingRuntime;
pub use service::CacheService;
pub use watch::RESUME_TRAILER;

use crate::listeners::GrpcListener;
use crate::proto::cache_server::CacheServer;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot move the listener to the serving thread: {0}")]
    Listener(#[from] std::io::Error),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// The health service names that track readiness: the whole server and the cache service.
pub const HEALTH_SERVICES: [&str; 2] = ["", "cdc_cache.v1.Cache"];

/// A health service reading the reporter's statuses; mounted on the gRPC and the admin listener.
pub fn health_service(reporter: &HealthReporter) -> HealthServer<HealthService> {
    HealthServer::new(HealthService::from_health_reporter(reporter.clone()))
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight calls finish.
/// Runs on the [`ServingRuntime`]; the listener, bound on the main runtime, moves over to it.
pub async fn serve(
    listener: GrpcListener,
    cache: CacheService,
    health: &HealthReporter,
    max_message_bytes: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // Both reflection versions, as grpc-go serves them: grpc.reflection.v1 for current clients,
    // v1alpha for Python's grpcio-reflection, older grpcurl and several GUI clients.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("embedded descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("embedded descriptor sets are valid");
    let cache = CacheServer::new(cache)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let routes = Routes::new(cache)
        .add_service(health_service(health))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let mut server = tonic::transport::Server::builder();
    let router = server.add_routes(routes);
    match listener {
        GrpcListener::Tcp(listener) => {
            let listener = tokio::net::TcpListener::from_std(listener.into_std()?)?;
            // Small request/response pairs: send each at once instead of waiting to coalesce.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            Ok(router.serve_with_incoming_shutdown(incoming, shutdown).await?)
        }
        GrpcListener::Unix(listener, _socket_file) => {
            let listener = tokio::net::UnixListener::from_std(listener.into_std()?)?;
            Ok(router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await?)
        }
    }
}
