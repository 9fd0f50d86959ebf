//! One librdkafka consumer per table, on its own thread: find the partitions and where their logs
//! end, assign them all from the beginning, apply every record in offset order, and keep tailing.
//!
//! Partitions are assigned, never subscribed: no consumer group coordination, no committed
//! offsets. The log is the state, so every start reads it again from its first offset.
//!
//! A log that is reset underneath (deleted and created again, truncated, its start moved past
//! the position) is detected by [`super::log_check`] and the partition is rebuilt: read again from
//! its log start while the rows it held keep answering, and the rows its new log no longer has
//! removed once it has caught up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::batch::{self, Decoders, Incoming};
use super::context::IngestContext;
use super::kafka_config::{client_config, is_secret_key};
use super::log_check::{LogBounds, LogWatch, Reset};
use super::rate_limit::RateLimit;
use super::schemas::SchemaLookup;
use crate::clock::now_ms;
use crate::config::{Config, OnDecodeError};
use crate::format::DecodeError;
use crate::metrics::{Metrics, TableMetrics};
use crate::schema_registry::SchemaRegistry;
use crate::snapshot::load::{load_newest, Outcome as LoadOutcome};
use crate::snapshot::local::LocalSnapshots;
use crate::snapshot::remote::RemoteSnapshots;
use crate::store::{Applied, PartitionState, Store, Table};

/// How long one poll waits for a record; also how quickly a shutdown request is noticed.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Bound on metadata and watermark requests, so a dead broker delays shutdown at most this long.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At most one line per this interval for each kind of repeated warning.
const LOG_INTERVAL: Duration = Duration::from_secs(5);
/// How often positions are compared with the log bounds the broker reports.
const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a discovery pass looks again at a topic that seemed gone.
const CONFIRM_INTERVAL: Duration = Duration::from_secs(1);
/// While fetches fail, how often the partitions are sought to their positions again: a seek
/// restarts fetching, and the end-of-partition event that follows a good fetch proves progress
/// even on an idle topic.
const RESEEK_INTERVAL: Duration = Duration::from_secs(5);

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
    let decoders = Arc::new(
        Decoders::new(config.decode_threads).map_err(|reason| IngestError::Client {
            table: "(all)".into(),
            reason,
        })?,
    );
    let registry = config
        .schema_registry
        .clone()
        .map(|registry| Arc::new(SchemaRegistry::new(registry)));
    let mut workers = Vec::new();
    for table in store.tables() {
        let table_metrics = metrics.table(table.name());
        let context = IngestContext::new(table.clone(), table_metrics.clone());
        let consumer: BaseConsumer<IngestContext> = client_config(config)
            .create_with_context(context)
            .map_err(|e| creation_error(table.name(), e))?;
        table.set_end_offsets(end_offsets(client_config(config), table.topic().to_string()));
        workers.push(Worker {
            consumer,
            table: table.clone(),
            store: store.clone(),
            metrics: table_metrics,
            on_decode_error: config.on_decode_error,
            decoders: decoders.clone(),
            schemas: registry
                .as_ref()
                .filter(|_| table.format().needs_schema_registry())
                .map(|registry| SchemaLookup::new(registry.clone(), table.clone(), cancel.clone())),
            discovery_interval: config.partition_discovery_interval,
            cancel: cancel.clone(),
            partitions: HashMap::new(),
            watches: HashMap::new(),
            rebuilds: HashMap::new(),
            unassigned: Vec::new(),
            topic_missing: false,
            missing_sightings: 0,
            next_discovery: Instant::now(),
            paused: false,
            snapshots: config.snapshots.as_ref().map(|s| WarmStart {
                local: LocalSnapshots::new(&s.dir, s.keep),
                remote: s.remote.clone(),
                max_age: s.max_age,
            }),
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

fn creation_error(table: &str, error: KafkaError) -> IngestError {
    match error {
        // Name the option, never its value (it may be a secret).
        KafkaError::ClientConfig(_, reason, key, value) => IngestError::KafkaOption {
            reason: if is_secret_key(&key) {
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
    /// Prepare batches of records in parallel (shared by every table).
    decoders: Arc<Decoders>,
    /// Where an `avro` table's writer schemas are looked up.
    schemas: Option<SchemaLookup>,
    discovery_interval: Duration,
    cancel: CancellationToken,
    /// The table's partitions, cached here so the hot path takes no lock.
    partitions: HashMap<i32, Arc<PartitionState>>,
    /// Evidence of a log reset, per partition.
    watches: HashMap<i32, LogWatch>,
    /// Partitions being read again after a reset, with the keys they held that their new log has
    /// not written yet.
    rebuilds: HashMap<i32, HashSet<Box<[u8]>>>,
    /// Partitions found by discovery whose assignment failed; retried at the next discovery.
    unassigned: Vec<i32>,
    /// The topic was missing from the broker's metadata at the last looks (confirmed).
    topic_missing: bool,
    /// Discovery passes in a row that found the topic missing; one alone may be a blip.
    missing_sightings: u32,
    /// When the next discovery pass runs; errors that say the topic is gone bring it forward.
    next_discovery: Instant,
    /// Loading stopped (memory near the limit): partitions paused, nothing more is applied.
    paused: bool,
    /// Where to look for a snapshot to start from, and the oldest one to accept.
    snapshots: Option<WarmStart>,
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
        if !self.warm_start(&ids)? {
            info!(
                table = self.table.name(),
                topic = self.table.topic(),
                partitions = ids.len(),
                "reading topic from the beginning"
            );
            self.assign(&ids, false)
                .map_err(|source| self.assign_error(source))?;
        }
        for &id in &ids {
            let state = self.table.partition(id).expect("registered before assignment");
            self.partitions.insert(id, state);
        }

        self.next_discovery = Instant::now() + self.discovery_interval;
        let mut next_log_check = Instant::now() + LOG_CHECK_INTERVAL;
        let mut next_reseek = Instant::now() + RESEEK_INTERVAL;
        while !self.cancel.is_cancelled() {
            // Changes made outside a batch (rows a reset log no longer has) reach watchers here.
            self.table.publish_changes();
            if !self.paused && self.store.loading_stopped().is_some() {
                self.pause();
            }
            if self.paused {
                // Serve librdkafka's callbacks; the paused partitions deliver nothing.
                let _ = self.consumer.poll(POLL_TIMEOUT);
                continue;
            }
            // Prepared here, so the messages (which borrow the consumer) are released before
            // the records change the worker's state.
            let (records, event) = batch::take(
                &self.consumer,
                POLL_TIMEOUT,
                &self.table,
                &self.decoders,
                self.schemas.as_ref(),
            );
            let applied = !records.is_empty();
            if applied {
                self.made_progress();
            }
            for record in records {
                self.apply(record)?;
            }
            let reached_end = matches!(event, Some(KafkaError::PartitionEOF(_)));
            match event {
                None => {}
                Some(KafkaError::PartitionEOF(partition)) => self.reached_end(partition),
                Some(error) => self.consumer_error(error),
            }
            if applied || reached_end {
                self.table.publish_changes();
                self.table.note_advanced();
            }
            let now = Instant::now();
            if now >= next_log_check {
                self.check_logs(now);
                next_log_check = now + LOG_CHECK_INTERVAL;
            }
            if now >= next_reseek {
                if self.table.fetch_failing() {
                    self.reseek();
                }
                next_reseek = now + RESEEK_INTERVAL;
            }
            if now >= self.next_discovery {
                self.next_discovery = Instant::now() + self.discovery_interval;
                self.discover();
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
                Ok(partitions) => {
                    self.table.set_problem(None);
                    return Some(partitions);
                }
                Err(problem) => {
                    if let Some(code) = problem.code {
                        self.metrics.record_kafka_error(code);
                    }
                    let reason = problem.to_string();
                    self.table.set_problem(Some(format!(
                        "cannot read topic {}: {reason}",
                        self.table.topic()
                    )));
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

    fn fetch_partition_bounds(&self) -> Result<Vec<PartitionState>, MetadataProblem> {
        let ids = self.fetch_partition_ids()?;
        let mut partitions = Vec::with_capacity(ids.len());
        for id in ids {
            let (low, high) = self.watermarks(id).map_err(|e| MetadataProblem {
                code: e.rdkafka_error_code(),
                reason: format!("partition {id}: cannot read log bounds: {e}"),
            })?;
            partitions.push(PartitionState::new(id, low, high));
        }
        Ok(partitions)
    }

    fn watermarks(&self, id: i32) -> Result<(i64, i64), KafkaError> {
        self.consumer
            .fetch_watermarks(self.table.topic(), id, METADATA_TIMEOUT)
    }

    fn fetch_partition_ids(&self) -> Result<Vec<i32>, MetadataProblem> {
        let topic = self.table.topic();
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| MetadataProblem {
                code: e.rdkafka_error_code(),
                reason: format!("metadata request failed: {e}"),
            })?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| MetadataProblem {
                code: None,
                reason: "topic missing from the metadata response".into(),
            })?;
        if let Some(error) = found.error() {
            let code = RDKafkaErrorCode::from(error);
            return Err(MetadataProblem {
                code: Some(code),
                reason: format!("broker reports {} ({code})", code_name(code)),
            });
        }
        if found.partitions().is_empty() {
            return Err(MetadataProblem {
                code: Some(RDKafkaErrorCode::UnknownTopicOrPartition),
                reason: "topic has no partitions (does it exist?)".into(),
            });
        }
        Ok(found.partitions().iter().map(|p| p.id()).collect())
    }

    /// Assigns `ids` at their partitions' positions, replacing an earlier assignment of them
    /// if `again` (a snapshot that proved damaged after fetching from its positions began).
    fn assign(&self, ids: &[i32], again: bool) -> Result<(), KafkaError> {
        let mut assignment = TopicPartitionList::new();
        for &id in ids {
            let state = self.table.partition(id).expect("registered before assignment");
            // Start at the log start captured with the end offset, or where a snapshot left the
            // partition; a log start that moves on before the first fetch is a reset like any
            // other (log_check).
            assignment.add_partition_offset(self.table.topic(), id, Offset::Offset(state.position()))?;
        }
        if again {
            // Fetches from the old positions stop, and what they queued is dropped.
            self.consumer.incremental_unassign(&assignment)?;
        }
        self.consumer.incremental_assign(&assignment)
    }

    /// Starts from the newest usable snapshot, if snapshots are on: its records go into the map
    /// and its positions into the partitions, so only what happened since is read from Kafka.
    /// The partitions are assigned as soon as a snapshot's positions are known, so librdkafka
    /// connects and fetches what happened since while the records load. Returns whether the
    /// partitions are assigned (false: a cold start, not assigned yet).
    fn warm_start(&self, ids: &[i32]) -> Result<bool, IngestError> {
        let Some(warm) = &self.snapshots else {
            self.metrics.set_bootstrap_source("kafka");
            return Ok(false);
        };
        // The newest snapshot in object storage comes into the local directory first; the
        // loader then weighs it like any local one (the newest usable wins).
        let downloaded = warm.remote.as_ref().and_then(|remote| {
            match remote.download_newest(self.table.name(), &warm.local) {
                Ok(path) => path,
                Err(error) => {
                    self.metrics.record_snapshot_load("refused");
                    warn!(table = self.table.name(), url = remote.url(), %error, "cannot download a snapshot; trying local ones");
                    None
                }
            }
        });
        let bounds = self
            .table
            .partitions()
            .iter()
            .map(|p| (p.partition(), (p.log_start(), p.end_offset())))
            .collect();
        let started = Instant::now();
        let mut assigned = false;
        let mut assign_failed = None;
        let outcome = load_newest(
            &warm.local,
            &self.table,
            &bounds,
            warm.max_age,
            now_ms(),
            || match self.assign(ids, assigned) {
                Ok(()) => assigned = true,
                Err(error) => assign_failed = Some(error),
            },
        );
        if let Some(error) = assign_failed {
            return Err(self.assign_error(error));
        }
        let refused = match &outcome {
            LoadOutcome::Loaded { refused, .. } | LoadOutcome::ColdStart { refused } => refused,
        };
        for reason in refused {
            self.metrics.record_snapshot_load("refused");
            warn!(table = self.table.name(), reason, "snapshot not used");
        }
        match outcome {
            LoadOutcome::Loaded {
                path, age, records, ..
            } => {
                self.metrics.record_snapshot_load("loaded");
                self.metrics.set_snapshot_loaded_age(age);
                let remote = downloaded.is_some_and(|d| d.display().to_string() == path);
                self.metrics.set_bootstrap_source(if remote {
                    "snapshot-remote"
                } else {
                    "snapshot-local"
                });
                info!(
                    table = self.table.name(),
                    path,
                    records,
                    age_s = age.as_secs(),
                    load_ms = started.elapsed().as_millis() as u64,
                    "started from a snapshot; reading from Kafka what happened since"
                );
                Ok(true)
            }
            LoadOutcome::ColdStart { .. } => {
                self.metrics.set_bootstrap_source("kafka");
                if assigned {
                    // Every candidate proved damaged: back to the log start.
                    info!(
                        table = self.table.name(),
                        topic = self.table.topic(),
                        "reading topic from the beginning"
                    );
                    self.assign(ids, true)
                        .map_err(|source| self.assign_error(source))?;
                }
                Ok(assigned)
            }
        }
    }

    fn assign_error(&self, source: KafkaError) -> IngestError {
        IngestError::Assign {
            table: self.table.name().to_string(),
            topic: self.table.topic().to_string(),
            reason: source.to_string(),
        }
    }

    fn apply(&mut self, record: Incoming) -> Result<(), IngestError> {
        let Incoming {
            bytes,
            partition: id,
            offset,
            timestamp,
            prepared,
        } = record;
        let Some(partition) = self.partitions.get(&id).cloned() else {
            debug!(
                table = self.table.name(),
                partition = id,
                "record of an unassigned partition"
            );
            return Ok(());
        };
        self.table.note_fetched(bytes);
        if !partition.is_new(offset) {
            return Ok(()); // a redelivery (brokers and restarts do this): already applied or skipped
        }
        let position = partition.position();
        if offset > position {
            // A gap (compaction, or a broker that skipped to a new log start): log_check judges.
            self.watches
                .entry(id)
                .or_default()
                .on_record(position, offset, Instant::now());
        }
        match prepared {
            Ok(change) => {
                if let Some(stale) = self.rebuilds.get_mut(&id) {
                    if let Some(key) = change.key() {
                        stale.remove(key);
                    }
                }
                match self.table.apply_prepared(&partition, offset, timestamp, change) {
                    Applied::Upserted => self.metrics.record_upserts(1),
                    Applied::Deleted => self.metrics.record_deletes(1),
                    Applied::Truncated => self.metrics.record_truncates(1),
                    Applied::Superseded => self.metrics.record_superseded(1),
                    Applied::Duplicate => {}
                }
            }
            Err(error) => {
                self.reject(id, offset, error)?;
                self.metrics.record_skipped(1);
                self.table.skip(&partition, offset, timestamp);
            }
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

    fn reached_end(&mut self, id: i32) {
        let Some(partition) = self.partitions.get(&id).cloned() else {
            return;
        };
        self.made_progress();
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

    /// A record or an end of partition: fetches work.
    fn made_progress(&mut self) {
        self.table.note_broker_contact(now_ms());
        if self.table.fetch_failing() {
            self.table.set_fetch_failing(false);
            self.table.set_problem(None);
            info!(table = self.table.name(), "fetching again");
        }
    }

    fn consumer_error(&mut self, error: KafkaError) {
        let code = error.rdkafka_error_code();
        if let Some(code) = code {
            self.metrics.record_kafka_error(code);
        }
        if let Some(suppressed) = self.error_log.check() {
            warn!(table = self.table.name(), %error, suppressed, "kafka consumer error; retrying");
        }
        match code {
            // `auto.offset.reset=error`: the broker refused a fetch position. The error does not
            // name the partition, so every partition's position is checked against its bounds.
            Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange) => {
                self.check_out_of_range()
            }
            // The topic may be gone: look now rather than at the next discovery interval.
            Some(
                RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicId,
            ) => {
                self.next_discovery = self.next_discovery.min(Instant::now() + CONFIRM_INTERVAL);
                self.note_fetch_failure(code.expect("matched"));
            }
            Some(code) if is_fetch_failure(code) => self.note_fetch_failure(code),
            _ => {}
        }
    }

    /// Fetching fails although the connection may be up: statistics stop counting as progress,
    /// Status says why, and the partitions are sought again every few seconds until a record or
    /// an end of partition proves fetching works again.
    fn note_fetch_failure(&mut self, code: RDKafkaErrorCode) {
        if self.table.fetch_failing() {
            return;
        }
        self.table.set_fetch_failing(true);
        self.table.set_problem(Some(format!(
            "fetching topic {} fails: {} ({code})",
            self.table.topic(),
            code_name(code)
        )));
    }

    fn check_out_of_range(&mut self) {
        for (id, partition) in self.partitions.clone() {
            let (log_start, high_watermark) = match self.watermarks(id) {
                Ok(bounds) => bounds,
                Err(error) => {
                    warn!(table = self.table.name(), partition = id, %error, "cannot read log bounds after an out-of-range fetch; retrying");
                    // The refused partition stopped fetching: the re-seek every few seconds
                    // starts it again, and the next out-of-range answer brings us back here.
                    if let Some(code) = error.rdkafka_error_code() {
                        self.note_fetch_failure(code);
                    }
                    continue;
                }
            };
            let position = partition.position();
            if position < log_start || position > high_watermark {
                let bounds = LogBounds {
                    log_start,
                    high_watermark,
                };
                let reset = self
                    .watches
                    .entry(id)
                    .or_default()
                    .on_out_of_range(position, bounds);
                self.reset_partition(id, reset);
            } else {
                // Not this partition, or the log moved back in the meantime: the partition the
                // broker refused stopped fetching (auto.offset.reset=error), so every partition in
                // bounds resumes at its position.
                let _ = self
                    .consumer
                    .seek(self.table.topic(), id, Offset::Offset(position), Duration::ZERO);
            }
        }
    }

    /// Compares every partition's position with the bounds the broker last reported.
    fn check_logs(&mut self, now: Instant) {
        for (id, partition) in self.partitions.clone() {
            let bounds = LogBounds {
                log_start: partition.reported_log_start(),
                high_watermark: partition.high_watermark(),
            };
            if let Some(reset) = self
                .watches
                .entry(id)
                .or_default()
                .check(partition.position(), bounds, now)
            {
                self.reset_partition(id, reset);
            }
        }
    }

    /// Reads a partition again from `reset.from`: the rows it holds stay and are overwritten as
    /// the new log is read; those the new log no longer has go once the partition caught up.
    fn reset_partition(&mut self, id: i32, reset: Reset) {
        let Some(partition) = self.partitions.get(&id).cloned() else {
            return;
        };
        let position = partition.position();
        let end = self
            .watermarks(id)
            .map_or(partition.high_watermark(), |(_, high)| high);
        let mut stale: HashSet<Box<[u8]>> = self.table.keys_of_partition(id).into_iter().collect();
        if let Some(earlier) = self.rebuilds.remove(&id) {
            stale.extend(earlier);
        }
        self.metrics.record_partition_reset(id, reset.reason);
        if self.table.key_conflicts() > 0 {
            // Keys held from two partitions were resolved against records this rebuild cannot
            // see again in order; a cold start resolves them exactly.
            warn!(
                table = self.table.name(),
                partition = id,
                key_conflicts = self.table.key_conflicts(),
                "this table has keys in two partitions: after the rebuild such keys may differ from a cold start until the sidecar restarts"
            );
        }
        warn!(
            table = self.table.name(),
            topic = self.table.topic(),
            partition = id,
            reason = reset.reason.as_str(),
            position,
            from = reset.from,
            end,
            keys_to_recheck = stale.len(),
            "the partition's log was reset; reading it again (its rows keep answering until the new log replaces them)"
        );
        partition.begin_rebuild(reset.from, end);
        self.rebuilds.insert(id, stale);
        let mut assignment = TopicPartitionList::new();
        let _ = assignment.add_partition(self.table.topic(), id);
        let _ = self.consumer.incremental_unassign(&assignment);
        let mut assignment = TopicPartitionList::new();
        let result = assignment
            .add_partition_offset(self.table.topic(), id, Offset::Offset(reset.from))
            .and_then(|()| self.consumer.incremental_assign(&assignment));
        if let Err(error) = result {
            warn!(table = self.table.name(), partition = id, %error, "cannot reassign the partition; retrying at the next discovery");
            self.unassigned.push(id);
        }
    }

    /// A rebuilt partition caught up: rows it held that its new log did not write go.
    fn finish_rebuild(&mut self, id: i32) {
        let Some(stale) = self.rebuilds.remove(&id) else {
            return;
        };
        let removed = stale
            .iter()
            .filter(|key| self.table.remove_from_partition(key, id))
            .count();
        if let Some(partition) = self.partitions.get(&id) {
            partition.end_rebuild();
        }
        info!(
            table = self.table.name(),
            partition = id,
            removed,
            "partition rebuilt; rows its log no longer has are removed"
        );
    }

    fn partition_caught_up(&mut self, partition: i32, position: i64) {
        info!(
            table = self.table.name(),
            partition, position, "partition caught up"
        );
        if self.rebuilds.contains_key(&partition) {
            self.finish_rebuild(partition);
        }
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

    /// Stops fetching every partition, for good: memory is near the limit.
    fn pause(&mut self) {
        self.paused = true;
        match self.consumer.assignment() {
            Ok(assignment) => {
                if let Err(error) = self.consumer.pause(&assignment) {
                    warn!(table = self.table.name(), %error, "cannot pause the partitions");
                }
            }
            Err(error) => warn!(table = self.table.name(), %error, "cannot read the assignment to pause it"),
        }
    }

    /// Seeks every partition to its position: fetching restarts, and the next good fetch ends in
    /// a record or an end-of-partition event that clears the failure.
    fn reseek(&self) {
        for (id, partition) in &self.partitions {
            let _ = self.consumer.seek(
                self.table.topic(),
                *id,
                Offset::Offset(partition.position()),
                Duration::ZERO,
            );
        }
    }

    /// Looks at the topic's metadata: new partitions are read from their beginning; a topic
    /// that vanished is reported; one that came back was created again and is read anew.
    fn discover(&mut self) {
        let ids = match self.fetch_partition_ids() {
            Ok(ids) => {
                self.missing_sightings = 0;
                ids
            }
            Err(problem) => {
                if problem.code == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
                    self.topic_vanished(&problem);
                } else {
                    debug!(
                        table = self.table.name(),
                        reason = %problem,
                        "partition discovery failed; will retry"
                    );
                }
                return;
            }
        };
        if std::mem::take(&mut self.topic_missing) {
            self.topic_recreated(&ids);
        }
        let mut assignment = TopicPartitionList::new();
        let mut added = Vec::new();
        for id in ids {
            if let Some(state) = self.table.add_partition(id) {
                self.partitions.insert(id, state);
                added.push(id);
            }
        }
        let retry: Vec<i32> = std::mem::take(&mut self.unassigned);
        for &id in added.iter().chain(&retry) {
            let from = self.partitions.get(&id).map_or(0, |p| p.position());
            let _ = assignment.add_partition_offset(self.table.topic(), id, Offset::Offset(from));
        }
        if assignment.count() == 0 {
            return;
        }
        if !added.is_empty() {
            info!(table = self.table.name(), partitions = ?added, "new partitions found; reading them from the beginning");
        }
        if let Err(error) = self.consumer.incremental_assign(&assignment) {
            warn!(table = self.table.name(), %error, partitions = ?added.iter().chain(&retry).collect::<Vec<_>>(), "cannot assign partitions; retrying at the next discovery");
            self.unassigned.extend(added.into_iter().chain(retry));
        }
    }

    fn topic_vanished(&mut self, problem: &MetadataProblem) {
        self.missing_sightings += 1;
        if self.missing_sightings < 2 {
            // One answer may be a blip (a broker restarting): look again shortly.
            self.next_discovery = Instant::now() + CONFIRM_INTERVAL;
            return;
        }
        if !self.topic_missing {
            self.topic_missing = true;
            // Nothing can be fetched now, whatever the connection says.
            self.table.set_fetch_failing(true);
            self.metrics
                .record_kafka_error(RDKafkaErrorCode::UnknownTopicOrPartition);
            self.table.set_problem(Some(format!(
                "topic {} no longer exists on the broker ({problem}); serving the rows read before, and reading it anew if it is created again",
                self.table.topic()
            )));
            tracing::error!(
                table = self.table.name(),
                topic = self.table.topic(),
                reason = %problem,
                "topic deleted; serving the rows read before, and reading it anew if it is created again"
            );
        }
    }

    /// The topic is back after it was missing: offsets started again, so every partition is
    /// read anew, and partitions the new topic lacks lose their rows.
    fn topic_recreated(&mut self, ids: &[i32]) {
        self.table.set_problem(None);
        let known: Vec<i32> = self.partitions.keys().copied().collect();
        for id in known {
            if !ids.contains(&id) {
                self.retire_partition(id);
                continue;
            }
            let (log_start, high_watermark) = self.watermarks(id).unwrap_or((0, 0));
            let bounds = LogBounds {
                log_start,
                high_watermark,
            };
            let reset = self.watches.entry(id).or_default().on_topic_recreated(bounds);
            self.reset_partition(id, reset);
        }
    }

    /// A partition the recreated topic no longer has: its rows go with it.
    fn retire_partition(&mut self, id: i32) {
        let keys = self.table.keys_of_partition(id);
        let removed = keys
            .iter()
            .filter(|key| self.table.remove_from_partition(key, id))
            .count();
        self.metrics
            .record_partition_reset(id, super::log_check::ResetReason::TopicRecreated);
        let mut assignment = TopicPartitionList::new();
        let _ = assignment.add_partition(self.table.topic(), id);
        let _ = self.consumer.incremental_unassign(&assignment);
        self.partitions.remove(&id);
        self.watches.remove(&id);
        self.rebuilds.remove(&id);
        self.table.remove_partition(id);
        warn!(
            table = self.table.name(),
            topic = self.table.topic(),
            partition = id,
            removed,
            "the recreated topic has no such partition; its rows are removed"
        );
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

/// Asks the broker for partitions' end offsets: one ListOffsets request (timestamp -1, latest)
/// per leader for all of them, at the consumer's isolation level, so read_committed gives the
/// last stable offset. On a client of its own, created at the first request with the tables'
/// settings: on the ingest consumer's connection the request would queue behind a fetch the
/// broker holds for up to `fetch.wait.max.ms` (brokers answer a connection's requests in order),
/// which made every latest read take 500 ms.
fn end_offsets(mut config: rdkafka::ClientConfig, topic: String) -> crate::store::EndOffsets {
    // Nothing polls this client, so statistics would pile up in its queue, a report a second.
    config.set("statistics.interval.ms", "0");
    let client: OnceLock<Result<BaseConsumer, String>> = OnceLock::new();
    Box::new(move |ids, timeout| {
        let consumer = client
            .get_or_init(|| {
                config
                    .create()
                    .map_err(|e| format!("cannot create the client for end offsets: {e}"))
            })
            .as_ref()?;
        let mut request = TopicPartitionList::new();
        for &id in ids {
            request
                .add_partition_offset(&topic, id, Offset::End)
                .map_err(|e| e.to_string())?;
        }
        let answer = consumer
            .offsets_for_times(request, timeout)
            .map_err(|e| format!("cannot read the end offsets of topic {topic}: {e}"))?;
        answer
            .elements()
            .iter()
            .map(|p| {
                if let Err(e) = p.error() {
                    return Err(format!(
                        "partition {}: cannot read its end offset: {e}",
                        p.partition()
                    ));
                }
                match p.offset() {
                    Offset::Offset(end) => Ok((p.partition(), end)),
                    other => Err(format!("partition {}: no end offset ({other:?})", p.partition())),
                }
            })
            .collect()
    })
}

/// Where a table may start warm from.
struct WarmStart {
    local: LocalSnapshots,
    remote: Option<RemoteSnapshots>,
    /// The oldest snapshot to accept.
    max_age: Duration,
}

/// Why the topic's metadata could not be read, with the Kafka error code where there is one.
#[derive(Debug)]
struct MetadataProblem {
    code: Option<RDKafkaErrorCode>,
    reason: String,
}

impl std::fmt::Display for MetadataProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Errors that mean fetching this topic does not work, as opposed to a connection blip that
/// librdkafka retries on its own. Not GROUP_AUTHORIZATION_FAILED: librdkafka looks up the
/// group's coordinator even for assign(), and a principal without Describe on the group still
/// fetches.
fn is_fetch_failure(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::UnknownTopicId
    )
}

/// An error code as the `code` label of `cdc_cache_kafka_errors_total`: the variant name in
/// upper snake case (`TOPIC_AUTHORIZATION_FAILED`).
pub fn code_name(code: RDKafkaErrorCode) -> String {
    let camel: Vec<char> = format!("{code:?}").chars().collect();
    let mut name = String::with_capacity(camel.len() + 8);
    for (i, &c) in camel.iter().enumerate() {
        // A word starts at a capital after a lower-case letter, or at the last capital of a
        // run followed by a lower-case letter (`SSLHandshake` -> `SSL_HANDSHAKE`).
        let starts_word = i > 0
            && c.is_ascii_uppercase()
            && (camel[i - 1].is_ascii_lowercase()
                || camel[i - 1].is_ascii_digit()
                || camel.get(i + 1).is_some_and(|n| n.is_ascii_lowercase())
                    && camel[i - 1].is_ascii_uppercase());
        if starts_word {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_become_upper_snake_labels() {
        assert_eq!(
            code_name(RDKafkaErrorCode::TopicAuthorizationFailed),
            "TOPIC_AUTHORIZATION_FAILED"
        );
        assert_eq!(
            code_name(RDKafkaErrorCode::UnknownTopicOrPartition),
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
        assert_eq!(code_name(RDKafkaErrorCode::AutoOffsetReset), "AUTO_OFFSET_RESET");
        assert_eq!(code_name(RDKafkaErrorCode::SSL), "SSL");
        assert_eq!(code_name(RDKafkaErrorCode::UnknownTopicId), "UNKNOWN_TOPIC_ID");
    }
}
