//! Kafka to store: one consumer thread per table reads every partition from its beginning,
//! decodes each record and applies it in offset order.

pub mod batch;
mod consumer;
mod context;
pub mod kafka_config;
pub mod log_check;
mod rate_limit;
pub mod schemas;

pub use consumer::{code_name, start, IngestError, IngestHandle};
