//! Warm starts: a table's records and partition positions written to a file, so a restarted
//! sidecar reads from Kafka only what happened since. The log stays the truth: a snapshot is one
//! more way a partition gets its starting position, checked against the broker before use.

pub mod format;
pub mod load;
pub mod local;
pub mod remote;
pub mod writer;
