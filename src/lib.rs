//! cdc-cache keeps compacted CDC topics in memory and serves them to the app next to it.
//!
//! Data flows one way:
//!
//! ```text
//!  Kafka ──> ingest ──> store ──> grpc ──> app (127.0.0.1 / unix socket)
//!            consumer    Table     Get, MultiGet, Status, health, reflection
//!            cdc decode  readiness
//!                          └──────> admin: /metrics, /healthz, /readyz, gRPC health (pod network)
//! ```
//!
//! - [`config`]: flags and env vars, validated into a [`config::Config`].
//! - [`ingest`]: one librdkafka consumer per table assigns every partition from its beginning
//!   and applies records in offset order; [`ingest::cdc`] is the pure record decoder.
//! - [`store`]: the concurrent maps, per-partition positions and the readiness latch.
//! - [`grpc`]: the `cdc_cache.v1.Cache` service; the only place errors become gRPC statuses.
//! - [`admin`] and [`metrics`]: Prometheus metrics and probes.
//! - [`app`]: wiring and ordered shutdown; [`shutdown`]: signals; [`listeners`]: binding.
//! - [`client`] and [`demo`]: the `get`/`status` commands and the self-contained demo.

// `deny`, not `forbid`: two measured wins allow it, each with its figures in the module doc:
// memory.rs (one FFI call, malloc_trim) and store/record.rs (thin record pointers).
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod client;
pub mod config;
pub mod demo;
pub mod grpc;
pub mod ingest;
pub mod listeners;
pub mod memory;
pub mod metrics;
pub mod shutdown;
pub mod store;

/// Generated gRPC types for `proto/cdc_cache/v1/cache.proto`.
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("cdc_cache.v1");

    /// Encoded descriptors of the proto files, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/cdc_cache_descriptor.bin"));
}
