//! librdkafka callbacks for one table's consumer: statistics keep the high watermark and broker
//! liveness current between records; log and error lines go to tracing with the table attached,
//! at most one line per facility (or error code) every few seconds, saying how many were held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Statistics;

use super::rate_limit::RateLimit;
use crate::clock::now_ms;
use crate::metrics::TableMetrics;
use crate::store::Table;

/// At most one librdkafka line per facility (or error) in this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

pub struct IngestContext {
    table: Arc<Table>,
    metrics: Arc<TableMetrics>,
    /// Callbacks come from librdkafka's threads, hence the lock.
    log_limits: Mutex<HashMap<String, RateLimit>>,
}

impl IngestContext {
    pub fn new(table: Arc<Table>, metrics: Arc<TableMetrics>) -> Self {
        Self {
            table,
            metrics,
            log_limits: Mutex::new(HashMap::new()),
        }
    }

    /// Some(lines held back since the last one) when a line of `kind` may be written now.
    fn may_log(&self, kind: &str) -> Option<u64> {
        let mut limits = self.log_limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = limits.get(kind) {
            return limit.check();
        }
        let limit = RateLimit::new(LOG_INTERVAL);
        let first = limit.check();
        limits.insert(kind.to_string(), limit);
        first
    }
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        // Bootstrap pseudo-brokers (nodeid -1) say nothing about the cluster.
        let brokers_up = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0 && b.state == "UP")
            .count();
        self.metrics.set_brokers_up(brokers_up);
        if brokers_up > 0 {
            self.table.note_broker_up(now_ms());
        }
        if let Some(topic) = statistics.topics.get(self.table.topic()) {
            for (id, stats) in &topic.partitions {
                // The "-1" partition aggregates unassigned messages; skip it and unknown ones.
                if let Some(partition) = self.table.partition(*id) {
                    // Under read_committed nothing past the last stable offset can be read yet:
                    // lag counts to it, not to the high watermark.
                    let readable_end = if stats.ls_offset >= 0 {
                        stats.ls_offset
                    } else {
                        stats.hi_offset
                    };
                    partition.observe_high_watermark(readable_end);
                    partition.observe_log_start(stats.lo_offset);
                }
            }
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let table = self.table.name();
        let loud = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        );
        if loud {
            let Some(suppressed) = self.may_log(facility) else {
                return;
            };
            if suppressed > 0 {
                tracing::warn!(target: "librdkafka", table, facility, suppressed, "{message}");
                return;
            }
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", table, facility, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", table, facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", table, facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", table, facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // End of partition is reported here too; the consumer loop handles it as progress.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        // librdkafka reconnects on its own; these are transient until proven otherwise, and the
        // staleness they cause is visible in Status and the lag metrics.
        if let Some(suppressed) = self.may_log(&format!("error:{error}")) {
            tracing::warn!(table = self.table.name(), %error, reason, suppressed, "kafka client error");
        }
    }
}

impl ConsumerContext for IngestContext {}
