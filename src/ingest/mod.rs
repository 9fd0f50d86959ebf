//! Kafka to store: one consumer thread per table reads every partition from its beginning,
//! decodes each record and applies it in offset order.

pub mod cdc;
mod consumer;
mod context;
mod rate_limit;

pub use consumer::{start, IngestError, IngestHandle};
pub use context::now_ms;
