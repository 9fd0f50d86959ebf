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
//! - [`cli`]: the command line (clap); [`config`]: flags and env vars validated into a
//!   [`config::Config`].
//! - [`ingest`]: one librdkafka consumer per table assigns every partition from its beginning
//!   and applies records in offset order.
//! - [`format`]: the row formats, pure: record bytes to a change, request keys to stored keys.
//! - [`store`]: the concurrent maps, per-partition positions and the readiness latch.
//! - [`grpc`]: the `cdc_cache.v1.Cache` service; the only place errors become gRPC statuses.
//! - [`admin`] and [`metrics`]: Prometheus metrics and probes; [`resources`]: resident memory
//!   and the container's limit; [`memory_guard`]: stop loading short of that limit.
//! - [`app`]: wiring and ordered shutdown; [`shutdown`]: signals; [`listeners`]: binding;
//!   [`clock`]: the one wall clock.
//! - [`client`] and [`demo`]: the `get`/`status` commands and the self-contained demo.

// `deny`, not `forbid`: two measured wins allow it, each with its figures in the module doc:
// memory.rs (one FFI call, malloc_trim) and store/record.rs (thin record pointers); and one
// read of a map shard under its lock (store/table.rs, `watch_shard`), which Watch needs to be exact.
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
pub mod format;
pub mod grpc;
pub mod health;
pub mod ingest;
pub mod listeners;
pub mod memory;
pub mod memory_guard;
pub mod metrics;
pub mod resources;
pub mod sample_rows;
pub mod schema_registry;
pub mod shutdown;
pub mod snapshot;
pub mod store;

/// Generated gRPC types for `proto/cdc_cache/v1/cache.proto`.
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("cdc_cache.v1");

    /// Encoded descriptors of the proto files, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/cdc_cache_descriptor.bin"));
}
