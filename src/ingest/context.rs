//! librdkafka callbacks for one table's consumer: statistics keep the high watermark and broker
//! liveness current between records; log and error lines go to tracing with the table attached.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Statistics;

use crate::metrics::TableMetrics;
use crate::store::Table;

pub struct IngestContext {
    table: Arc<Table>,
    metrics: Arc<TableMetrics>,
}

impl IngestContext {
    pub fn new(table: Arc<Table>, metrics: Arc<TableMetrics>) -> Self {
        Self { table, metrics }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
            self.table.note_broker_contact(now_ms());
        }
        if let Some(topic) = statistics.topics.get(self.table.topic()) {
            for (id, stats) in &topic.partitions {
                // The "-1" partition aggregates unassigned messages; skip it and unknown ones.
                if let Some(partition) = self.table.partition(*id) {
                    partition.observe_high_watermark(stats.hi_offset);
                }
            }
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let table = self.table.name();
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
        tracing::warn!(table = self.table.name(), %error, reason, "kafka client error");
    }
}

impl ConsumerContext for IngestContext {}
