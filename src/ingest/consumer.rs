//! One librdkafka consumer per table, on its own thread: find the partitions and where their logs
//! end, assign them all from the beginning, apply every record in offset order, and keep tailing.
//!
//! Partitions are assigned, never subscribed: no consumer group coordination, no committed
//! offsets. The log is the state, so every start reads it again from its first offset.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::cdc::{self, DecodeError};
use super::context::{now_ms, IngestContext};
use super::rate_limit::RateLimit;
use crate::config::{is_secret_kafka_key, Config, OnDecodeError};
use crate::metrics::{Metrics, TableMetrics};
use crate::store::{Applied, PartitionState, Store, Table};

/// How long one poll waits for a record; also how quickly a shutdown request is noticed.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Bound on metadata and watermark requests, so a dead broker delays shutdown at most this long.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At most one line per this interval for each kind of repeated warning.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    // Deliberately without the value: it may be a password.
    #[error("--kafka-option {key}: {reason}")]
    KafkaOption { key: String, reason: String },
    #[error("table {table}: cannot create the kafka consumer: {reason}")]
    Client { table: String, reason: String },
    #[error("table {table}: cannot assign partitions of topic {topic}: {reason}")]
    Assign {
        table: String,
        topic: String,
        reason: String,
    },
    #[error(
        "table {table}: undecodable record in topic {topic} partition {partition} at offset {offset}: {source} (stopping because --on-decode-error=fail)"
    )]
    Decode {
        table: String,
        topic: String,
        partition: i32,
        offset: i64,
        source: DecodeError,
    },
    #[error("table {table}: ingest thread panicked")]
    Panicked { table: String },
    #[error("ingest threads did not stop within {0:?}")]
    StopTimeout(Duration),
}

/// The running consumer threads.
pub struct IngestHandle {
    threads: Vec<(String, JoinHandle<Result<(), IngestError>>)>,
}

impl IngestHandle {
    /// Waits up to `deadline` for every thread (after the cancel token fired); returns the first
    /// error a thread stopped with.
    pub async fn join(self, deadline: Duration) -> Result<(), IngestError> {
        let joined = tokio::task::spawn_blocking(move || {
            let mut first_error = None;
            for (table, thread) in self.threads {
                let result = thread.join().unwrap_or(Err(IngestError::Panicked { table }));
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        });
        match tokio::time::timeout(deadline, joined).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(IngestError::Panicked {
                table: "(join)".into(),
            }),
            Err(_) => Err(IngestError::StopTimeout(deadline)),
        }
    }
}

/// Creates every table's consumer (so a bad librdkafka option fails start-up, naming the
/// option), then starts one thread per table. A thread that stops with an error cancels `fatal`.
pub fn start(
    config: &Config,
    store: &Arc<Store>,
    metrics: &Metrics,
    cancel: CancellationToken,
    fatal: CancellationToken,
) -> Result<IngestHandle, IngestError> {
    let mut workers = Vec::new();
    for table in store.tables() {
        let table_metrics = metrics.table(table.name());
        let context = IngestContext::new(table.clone(), table_metrics.clone());
        let consumer: BaseConsumer<IngestContext> = client_config(config, table)
            .create_with_context(context)
            .map_err(|e| creation_error(table.name(), e))?;
        workers.push(Worker {
            consumer,
            table: table.clone(),
            store: store.clone(),
            metrics: table_metrics,
            on_decode_error: config.on_decode_error,
            discovery_interval: config.partition_discovery_interval,
            cancel: cancel.clone(),
            partitions: HashMap::new(),
            decode_log: RateLimit::new(LOG_INTERVAL),
            error_log: RateLimit::new(LOG_INTERVAL),
        });
    }
    let mut threads = Vec::new();
    for worker in workers {
        let name = worker.table.name().to_string();
        let fatal = fatal.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ingest-{name}"))
            .spawn(move || {
                let result = worker.run();
                if let Err(error) = &result {
                    tracing::error!(%error, "ingest stopped");
                    fatal.cancel();
                }
                result
            })
            .map_err(|e| IngestError::Client {
                table: name.clone(),
                reason: format!("cannot start thread: {e}"),
            })?;
        threads.push((name, thread));
    }
    Ok(IngestHandle { threads })
}

fn client_config(config: &Config, table: &Table) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        // assign() still needs a group id, though no group is joined and nothing is committed.
        .set("group.id", "cdc-cache")
        .set("client.id", format!("cdc-cache-{}", table.name()))
        // The log is the state: offsets are never committed, every start reads from the beginning.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // End-of-partition events say a partition has caught up, even when its log ends in
        // control records (transaction markers) that never reach the application.
        .set("enable.partition.eof", "true")
        // If retention or DeleteRecords moves the log start past our position, resume at the new
        // start rather than stop.
        .set("auto.offset.reset", "earliest")
        // Records of aborted transactions must never reach the cache.
        .set("isolation.level", "read_committed")
        // Statistics keep the high watermark (lag) and broker liveness current between records.
        .set("statistics.interval.ms", "1000")
        // A sidecar outage is stale data: after a broker restart, reconnect within seconds
        // instead of librdkafka's default backoff of up to 10 s.
        .set("reconnect.backoff.max.ms", "2000")
        .set_log_level(RDKafkaLogLevel::Info);
    for (key, value) in &config.kafka_options {
        client.set(key, value);
    }
    client
}

fn creation_error(table: &str, error: KafkaError) -> IngestError {
    match error {
        // Name the option, never its value (it may be a secret).
        KafkaError::ClientConfig(_, reason, key, value) => IngestError::KafkaOption {
            reason: if is_secret_kafka_key(&key) {
                reason.replace(&value, "<redacted>")
            } else {
                reason
            },
            key,
        },
        other => IngestError::Client {
            table: table.to_string(),
            reason: other.to_string(),
        },
    }
}

struct Worker {
    consumer: BaseConsumer<IngestContext>,
    table: Arc<Table>,
    store: Arc<Store>,
    metrics: Arc<TableMetrics>,
    on_decode_error: OnDecodeError,
    discovery_interval: Duration,
    cancel: CancellationToken,
    /// The table's partitions, cached here so the hot path takes no lock.
    partitions: HashMap<i32, Arc<PartitionState>>,
    decode_log: RateLimit,
    error_log: RateLimit,
}

impl Worker {
    fn run(mut self) -> Result<(), IngestError> {
        let Some(initial) = self.initial_partitions() else {
            return Ok(()); // cancelled before the broker answered
        };
        self.table.set_initial_partitions(initial);
        let ids: Vec<i32> = self.table.partitions().iter().map(|p| p.partition()).collect();
        info!(
            table = self.table.name(),
            topic = self.table.topic(),
            partitions = ids.len(),
            records = self.table.progress().total,
            "reading topic from the beginning"
        );
        self.assign(&ids)?;
        // Empty topics are caught up before the first record.
        self.on_partition_progress();

        let mut next_discovery = Instant::now() + self.discovery_interval;
        while !self.cancel.is_cancelled() {
            match self.consumer.poll(POLL_TIMEOUT) {
                None => {}
                Some(Ok(message)) => self.apply(&message)?,
                Some(Err(KafkaError::PartitionEOF(partition))) => self.reached_end(partition),
                Some(Err(error)) => {
                    if let Some(suppressed) = self.error_log.check() {
                        warn!(table = self.table.name(), %error, suppressed, "kafka consumer error; retrying");
                    }
                }
            }
            if Instant::now() >= next_discovery {
                self.discover_new_partitions();
                next_discovery = Instant::now() + self.discovery_interval;
            }
        }
        debug!(table = self.table.name(), "ingest stopped");
        Ok(())
    }

    /// Asks the broker for the topic's partitions and their log bounds until it answers. A broker
    /// that is down or a topic that does not exist yet means waiting, not failing.
    fn initial_partitions(&self) -> Option<Vec<PartitionState>> {
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            if self.cancel.is_cancelled() {
                return None;
            }
            match self.fetch_partition_bounds() {
                Ok(partitions) => return Some(partitions),
                Err(reason) => {
                    if let Some(suppressed) = self.error_log.check() {
                        warn!(
                            table = self.table.name(),
                            topic = self.table.topic(),
                            reason,
                            suppressed,
                            retry_in_ms = backoff.as_millis() as u64,
                            "cannot read topic metadata; not ready, retrying"
                        );
                    }
                }
            }
            if self.cancel_aware_sleep(backoff) {
                return None;
            }
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
    }

    fn fetch_partition_bounds(&self) -> Result<Vec<PartitionState>, String> {
        let ids = self.fetch_partition_ids()?;
        let mut partitions = Vec::with_capacity(ids.len());
        for id in ids {
            let (low, high) = self
                .consumer
                .fetch_watermarks(self.table.topic(), id, METADATA_TIMEOUT)
                .map_err(|e| format!("partition {id}: cannot read log bounds: {e}"))?;
            partitions.push(PartitionState::new(id, low, high));
        }
        Ok(partitions)
    }

    fn fetch_partition_ids(&self) -> Result<Vec<i32>, String> {
        let topic = self.table.topic();
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| format!("metadata request failed: {e}"))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| "topic missing from the metadata response".to_string())?;
        if let Some(error) = found.error() {
            return Err(format!(
                "broker reports {:?}",
                rdkafka::types::RDKafkaErrorCode::from(error)
            ));
        }
        if found.partitions().is_empty() {
            return Err("topic has no partitions (does it exist?)".into());
        }
        Ok(found.partitions().iter().map(|p| p.id()).collect())
    }

    fn assign(&mut self, ids: &[i32]) -> Result<(), IngestError> {
        let mut assignment = TopicPartitionList::new();
        for &id in ids {
            let state = self.table.partition(id).expect("registered before assignment");
            // Start at the log start captured with the end offset; `auto.offset.reset` covers a
            // log start that moves on before the first fetch.
            assignment
                .add_partition_offset(self.table.topic(), id, Offset::Offset(state.log_start()))
                .map_err(|source| self.assign_error(source))?;
            self.partitions.insert(id, state);
        }
        self.consumer
            .incremental_assign(&assignment)
            .map_err(|source| self.assign_error(source))
    }

    fn assign_error(&self, source: KafkaError) -> IngestError {
        IngestError::Assign {
            table: self.table.name().to_string(),
            topic: self.table.topic().to_string(),
            reason: source.to_string(),
        }
    }

    fn apply(&self, message: &BorrowedMessage<'_>) -> Result<(), IngestError> {
        let id = message.partition();
        let offset = message.offset();
        let Some(partition) = self.partitions.get(&id).cloned() else {
            debug!(
                table = self.table.name(),
                partition = id,
                "record of an unassigned partition"
            );
            return Ok(());
        };
        self.table.note_broker_contact(now_ms());
        if !partition.is_new(offset) {
            return Ok(()); // a redelivery (brokers and restarts do this): already applied or skipped
        }
        let timestamp = message.timestamp().to_millis();
        let caught_up = match cdc::decode(self.table.format(), message.key(), message.payload()) {
            Ok(change) => {
                let (applied, caught_up) = self.table.apply(&partition, offset, timestamp, change);
                match applied {
                    Applied::Upserted => self.metrics.record_upserts(1),
                    Applied::Deleted | Applied::Truncated => self.metrics.record_deletes(1),
                    Applied::Duplicate => {}
                }
                caught_up
            }
            Err(error) => {
                self.reject(id, offset, error)?;
                self.metrics.record_skipped(1);
                self.table.skip(&partition, offset, timestamp)
            }
        };
        if caught_up {
            self.partition_caught_up(id, offset + 1);
        }
        Ok(())
    }

    /// Counts and logs a record that cannot be applied; with `--on-decode-error fail`, stops.
    fn reject(&self, partition: i32, offset: i64, error: DecodeError) -> Result<(), IngestError> {
        let table = self.table.name();
        let topic = self.table.topic();
        if matches!(error, DecodeError::NullKey) {
            // Not corrupt, just not addressable: skipped and counted, whatever the policy.
            debug!(table, topic, partition, offset, "skipping record without key");
            return Ok(());
        }
        self.metrics.record_decode_error();
        if self.on_decode_error == OnDecodeError::Fail {
            return Err(IngestError::Decode {
                table: table.to_string(),
                topic: topic.to_string(),
                partition,
                offset,
                source: error,
            });
        }
        if let Some(suppressed) = self.decode_log.check() {
            warn!(table, topic, partition, offset, %error, suppressed, "skipping undecodable record");
        }
        Ok(())
    }

    fn reached_end(&self, id: i32) {
        let Some(partition) = self.partitions.get(&id).cloned() else {
            return;
        };
        self.table.note_broker_contact(now_ms());
        // The consumer's position is past any control records at the end of the log.
        let position = self.consumer.position().ok().and_then(|positions| {
            positions
                .find_partition(self.table.topic(), id)
                .and_then(|p| p.offset().to_raw())
                .filter(|&offset| offset >= 0)
        });
        if partition.reached_end(position) {
            self.partition_caught_up(id, partition.position());
        }
    }

    fn partition_caught_up(&self, partition: i32, position: i64) {
        info!(
            table = self.table.name(),
            partition, position, "partition caught up"
        );
        self.on_partition_progress();
    }

    fn on_partition_progress(&self) {
        if self.store.note_caught_up(&self.table) {
            crate::memory::release_free_memory();
            info!(
                table = self.table.name(),
                entries = self.table.len(),
                bootstrap_ms = self.table.bootstrap_duration().unwrap_or_default().as_millis() as u64,
                "table ready"
            );
        }
    }

    /// Picks up partitions added to the topic since start-up and reads them from the beginning.
    fn discover_new_partitions(&mut self) {
        let ids = match self.fetch_partition_ids() {
            Ok(ids) => ids,
            Err(reason) => {
                debug!(
                    table = self.table.name(),
                    reason, "partition discovery failed; will retry"
                );
                return;
            }
        };
        let mut assignment = TopicPartitionList::new();
        let mut added = Vec::new();
        for id in ids {
            if let Some(state) = self.table.add_partition(id) {
                let _ = assignment.add_partition_offset(self.table.topic(), id, Offset::Beginning);
                self.partitions.insert(id, state);
                added.push(id);
            }
        }
        if added.is_empty() {
            return;
        }
        info!(table = self.table.name(), partitions = ?added, "new partitions found; reading them from the beginning");
        if let Err(error) = self.consumer.incremental_assign(&assignment) {
            warn!(table = self.table.name(), %error, "cannot assign new partitions");
        }
    }

    /// Sleeps unless cancelled first; returns true when cancelled.
    fn cancel_aware_sleep(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            if self.cancel.is_cancelled() {
                return true;
            }
            // Polling serves librdkafka's callbacks (statistics, errors) while waiting.
            let _ = self
                .consumer
                .poll(POLL_TIMEOUT.min(until.saturating_duration_since(Instant::now())));
        }
        self.cancel.is_cancelled()
    }
}
