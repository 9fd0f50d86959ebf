//! The single place where request failures become gRPC statuses.

use tonic::Status;

use crate::format::DecodeError;
use crate::store::{Progress, TableLookupError, TooLarge};

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Table(#[from] TableLookupError),
    #[error(
        "table {table:?} is not ready: bootstrap has read {} of {} records, {} of {} partitions caught up; retry later or watch grpc.health.v1.Health",
        .progress.read, .progress.total, .progress.partitions_caught_up, .progress.partitions
    )]
    NotReady { table: String, progress: Progress },
    #[error("{count} keys in one MultiGet; the limit is {max} (--max-multiget-keys)")]
    TooManyKeys { count: usize, max: usize },
    #[error("key {index}: {source}")]
    BadKey { index: usize, source: DecodeError },
    /// A key that cannot match any stored key: its fields or JSON types differ from every key the
    /// table holds (`{"id":"42"}` where ids are numbers).
    #[error("key {index}: {reason}")]
    KeyShape { index: usize, reason: String },
    #[error(
        "the values of {} keys pass the {} byte response limit (--grpc-max-message-bytes) after {} keys; ask for fewer keys per call",
        .keys, .limit.max_bytes, .limit.keys_answered
    )]
    ResponseTooLarge { keys: usize, limit: TooLarge },
    #[error("consistency: {reason}")]
    BadConsistency { reason: String },
    #[error(
        "table {table:?} has not heard from its broker for {silence_ms} ms, more than max_staleness_ms {max_staleness_ms}; see Status for why"
    )]
    Stale {
        table: String,
        silence_ms: i64,
        max_staleness_ms: i64,
    },
    #[error("table {table:?}: cannot answer a latest read: {reason}")]
    EndOffsets { table: String, reason: String },
    #[error("table {table:?}: offsets not applied within {waited:?}: {reached}")]
    WaitTimedOut {
        table: String,
        waited: std::time::Duration,
        reached: String,
    },
}

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Self {
        let message = error.to_string();
        match error {
            RequestError::Table(TableLookupError::Unknown { .. }) => Status::not_found(message),
            RequestError::Table(TableLookupError::Ambiguous { .. }) => Status::invalid_argument(message),
            RequestError::NotReady { .. } | RequestError::Stale { .. } | RequestError::EndOffsets { .. } => {
                Status::unavailable(message)
            }
            RequestError::WaitTimedOut { .. } => Status::deadline_exceeded(message),
            RequestError::ResponseTooLarge { .. } => Status::resource_exhausted(message),
            RequestError::TooManyKeys { .. }
            | RequestError::BadKey { .. }
            | RequestError::KeyShape { .. }
            | RequestError::BadConsistency { .. } => Status::invalid_argument(message),
        }
    }
}
