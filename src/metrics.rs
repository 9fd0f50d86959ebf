//! Prometheus metrics: every name as a const, described once, rendered on `/metrics`.
//!
//! The recorder is owned by the app rather than installed globally, so several apps (tests) can
//! live in one process without mixing their series. Event counters are pre-registered handles
//! bumped on the hot path; state gauges (entries, positions, lag) are read from the store at
//! scrape time, so they can never drift from what the store holds. Process metrics
//! (`process_resident_memory_bytes`, CPU, open fds) come from the `metrics-process` collector,
//! also at scrape time.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::store::{Store, Table};

pub const READY: &str = "cdc_cache_ready";
pub const TABLE_READY: &str = "cdc_cache_table_ready";
pub const ENTRIES: &str = "cdc_cache_entries";
pub const DATA_BYTES: &str = "cdc_cache_data_bytes";
pub const STORED_BYTES: &str = "cdc_cache_stored_bytes";
pub const COMPRESSION_RATIO: &str = "cdc_cache_compression_ratio";
pub const COMPRESSION_DICTIONARY: &str = "cdc_cache_compression_dictionary_generation";
pub const MEMORY_LIMIT_BYTES: &str = "cdc_cache_memory_limit_bytes";
pub const PARTITION_POSITION: &str = "cdc_cache_partition_position";
pub const PARTITION_HIGH_WATERMARK: &str = "cdc_cache_partition_high_watermark";
pub const PARTITION_LAG_RECORDS: &str = "cdc_cache_partition_lag_records";
pub const LAST_RECORD_TIMESTAMP_SECONDS: &str = "cdc_cache_last_record_timestamp_seconds";
pub const RECORDS_TOTAL: &str = "cdc_cache_records_total";
pub const DECODE_ERRORS_TOTAL: &str = "cdc_cache_decode_errors_total";
pub const KAFKA_ERRORS_TOTAL: &str = "cdc_cache_kafka_errors_total";
pub const PARTITION_RESETS_TOTAL: &str = "cdc_cache_partition_resets_total";
pub const PARTITION_REBUILDING: &str = "cdc_cache_partition_rebuilding";
pub const KEY_CONFLICTS_TOTAL: &str = "cdc_cache_key_conflicts_total";
pub const END_OFFSET_REQUESTS_TOTAL: &str = "cdc_cache_end_offset_requests_total";
pub const WATCHERS: &str = "cdc_cache_watchers";
pub const WATCHERS_DROPPED_TOTAL: &str = "cdc_cache_watchers_dropped_total";
pub const WATCH_EVENTS_TOTAL: &str = "cdc_cache_watch_events_total";
pub const WATCH_HISTORY_BYTES: &str = "cdc_cache_watch_history_bytes";
pub const TABLE_PROBLEM: &str = "cdc_cache_table_problem";
pub const LOADING_STOPPED: &str = "cdc_cache_loading_stopped";
pub const BOOTSTRAP_SOURCE: &str = "cdc_cache_bootstrap_source";
pub const BOOTSTRAP_FETCHED_BYTES: &str = "cdc_cache_bootstrap_fetched_bytes";
pub const SNAPSHOT_LOADS_TOTAL: &str = "cdc_cache_snapshot_loads_total";
pub const SNAPSHOT_LOADED_AGE_SECONDS: &str = "cdc_cache_snapshot_loaded_age_seconds";
pub const SNAPSHOT_WRITES_TOTAL: &str = "cdc_cache_snapshot_writes_total";
pub const SNAPSHOT_LAST_WRITE_SECONDS: &str = "cdc_cache_snapshot_last_write_timestamp_seconds";
pub const SNAPSHOT_WRITE_DURATION_SECONDS: &str = "cdc_cache_snapshot_write_duration_seconds";
pub const SNAPSHOT_BYTES: &str = "cdc_cache_snapshot_bytes";
pub const BOOTSTRAP_DURATION_SECONDS: &str = "cdc_cache_bootstrap_duration_seconds";
pub const GRPC_REQUESTS_TOTAL: &str = "cdc_cache_grpc_requests_total";
pub const GRPC_REQUEST_DURATION_SECONDS: &str = "cdc_cache_grpc_request_duration_seconds";
pub const MULTIGET_KEYS: &str = "cdc_cache_multiget_keys";
pub const KAFKA_BROKERS_UP: &str = "cdc_cache_kafka_brokers_up";
pub const BROKER_SILENCE_SECONDS: &str = "cdc_cache_broker_silence_seconds";
pub const START_TIME_SECONDS: &str = "cdc_cache_start_time_seconds";

/// 10 µs to 1 s in roughly 1-2.5-5 steps: a cache hit is tens of microseconds, a slow call a second.
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0,
];
const MULTIGET_KEYS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// The gRPC methods measured, in the order of [`GrpcMethod`]; the unary ones first, as only
/// they have a latency histogram (a stream's duration says nothing about the server).
const METHODS: [&str; 4] = ["Get", "MultiGet", "Status", "Watch"];
const UNARY_METHODS: usize = 3;
/// gRPC status codes by number, as their canonical names.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcMethod {
    Get = 0,
    MultiGet = 1,
    Status = 2,
    Watch = 3,
}

/// The app's metrics registry.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    started_at_seconds: f64,
    grpc: GrpcMetrics,
    process: metrics_process::Collector,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(GRPC_REQUEST_DURATION_SECONDS.into()),
                LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(MULTIGET_KEYS.into()), MULTIGET_KEYS_BUCKETS)
            })
            .expect("bucket lists are non-empty constants")
            .build_recorder();
        let recorder = Arc::new(recorder);
        let handle = recorder.handle();
        describe(&recorder);
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(recorder.as_ref(), || process.describe());
        let grpc = GrpcMetrics::new(&recorder);
        let started_at_seconds = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Arc::new(Self {
            recorder,
            handle,
            started_at_seconds,
            grpc,
            process,
        })
    }

    /// Handles for one table's ingest thread. The counters exist (at zero) from start-up, so
    /// rate() and alert expressions see them before the first event.
    pub fn table(&self, table: &str) -> Arc<TableMetrics> {
        let op = |op: &'static str| self.counter(RECORDS_TOTAL, vec![label("table", table), label("op", op)]);
        Arc::new(TableMetrics {
            recorder: self.recorder.clone(),
            table: table.to_string(),
            upserts: op("upsert"),
            deletes: op("delete"),
            truncates: op("truncate"),
            skipped: op("skipped"),
            superseded: op("superseded"),
            decode_errors: self.counter(DECODE_ERRORS_TOTAL, vec![label("table", table)]),
            brokers_up: self.gauge(KAFKA_BROKERS_UP, vec![label("table", table)]),
        })
    }

    pub fn grpc(&self) -> &GrpcMetrics {
        &self.grpc
    }

    /// Renders the exposition text, first refreshing the gauges that mirror the store.
    pub fn render(&self, store: &Store) -> String {
        self.refresh_state(store);
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; run every few seconds so memory stays bounded
    /// between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    fn refresh_state(&self, store: &Store) {
        metrics::with_local_recorder(self.recorder.as_ref(), || self.process.collect());
        self.gauge(MEMORY_LIMIT_BYTES, vec![])
            .set(store.memory_limit().unwrap_or(0) as f64);
        self.gauge(LOADING_STOPPED, vec![])
            .set(bool_value(store.loading_stopped().is_some()));
        self.gauge(START_TIME_SECONDS, vec![])
            .set(self.started_at_seconds);
        self.gauge(READY, vec![]).set(bool_value(store.ready().is_open()));
        let now_ms = crate::clock::now_ms();
        for table in store.tables() {
            self.refresh_table(table, now_ms);
        }
    }

    fn refresh_table(&self, table: &Table, now_ms: i64) {
        let name = table.name();
        let labels = || vec![label("table", name)];
        self.gauge(TABLE_READY, labels())
            .set(bool_value(table.is_ready()));
        self.gauge(ENTRIES, labels()).set(table.len() as f64);
        self.gauge(TABLE_PROBLEM, labels())
            .set(bool_value(table.problem().is_some()));
        self.counter(KEY_CONFLICTS_TOTAL, labels())
            .absolute(table.key_conflicts());
        self.counter(END_OFFSET_REQUESTS_TOTAL, labels())
            .absolute(table.end_offset_requests());
        self.refresh_watch(table);
        self.gauge(DATA_BYTES, labels()).set(table.data_bytes() as f64);
        self.gauge(STORED_BYTES, labels())
            .set(table.stored_bytes() as f64);
        self.gauge(COMPRESSION_RATIO, labels())
            .set(table.compression_ratio());
        self.gauge(COMPRESSION_DICTIONARY, labels())
            .set(f64::from(table.compression().generation()));
        let bootstrap = table.bootstrap_duration().unwrap_or(Duration::ZERO);
        self.gauge(BOOTSTRAP_DURATION_SECONDS, labels())
            .set(bootstrap.as_secs_f64());
        self.gauge(BOOTSTRAP_FETCHED_BYTES, labels())
            .set(table.bootstrap_fetched_bytes().unwrap_or(0) as f64);
        self.gauge(BROKER_SILENCE_SECONDS, labels())
            .set(table.broker_silence_ms(now_ms) as f64 / 1000.0);
        for p in table.partitions() {
            let labels = || vec![label("table", name), label("partition", p.partition())];
            self.gauge(PARTITION_POSITION, labels()).set(p.position() as f64);
            self.gauge(PARTITION_HIGH_WATERMARK, labels())
                .set(p.high_watermark() as f64);
            self.gauge(PARTITION_LAG_RECORDS, labels()).set(p.lag() as f64);
            self.gauge(PARTITION_REBUILDING, labels())
                .set(bool_value(p.is_rebuilding()));
            self.gauge(LAST_RECORD_TIMESTAMP_SECONDS, labels())
                .set(p.last_timestamp_ms().max(0) as f64 / 1000.0);
        }
    }

    /// Watch metrics exist from start-up, at zero until the table's first watcher.
    fn refresh_watch(&self, table: &Table) {
        let name = table.name();
        let labels = || vec![label("table", name)];
        let feed = table.feed();
        let (history_bytes, watchers, dropped, sent) = feed.map_or((0, 0, 0, 0), |feed| {
            let (_, bytes) = feed.history_size();
            (bytes, feed.watcher_count(), feed.dropped(), feed.sent())
        });
        self.gauge(WATCHERS, labels()).set(watchers as f64);
        self.gauge(WATCH_HISTORY_BYTES, labels())
            .set(history_bytes as f64);
        self.counter(WATCH_EVENTS_TOTAL, labels()).absolute(sent);
        for (reason, count) in [("slow", dropped), ("limit", table.watchers_refused())] {
            self.counter(
                WATCHERS_DROPPED_TOTAL,
                vec![label("table", name), label("reason", reason)],
            )
            .absolute(count);
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }
}

/// Counters and gauges fed by one table's ingest thread and librdkafka callbacks.
pub struct TableMetrics {
    recorder: Arc<PrometheusRecorder>,
    table: String,
    upserts: Counter,
    deletes: Counter,
    truncates: Counter,
    skipped: Counter,
    superseded: Counter,
    decode_errors: Counter,
    brokers_up: Gauge,
}

impl TableMetrics {
    pub fn record_upserts(&self, n: u64) {
        self.upserts.increment(n);
    }

    pub fn record_deletes(&self, n: u64) {
        self.deletes.increment(n);
    }

    pub fn record_truncates(&self, n: u64) {
        self.truncates.increment(n);
    }

    /// Records of a key held from another partition with a newer record: not applied.
    pub fn record_superseded(&self, n: u64) {
        self.superseded.increment(n);
    }

    /// A consumer or metadata error, by its code name (`TOPIC_AUTHORIZATION_FAILED`). Rare, so
    /// the counter is looked up on each call.
    pub fn record_kafka_error(&self, code: rdkafka::types::RDKafkaErrorCode) {
        let labels = vec![
            label("table", &self.table),
            label("code", crate::ingest::code_name(code)),
        ];
        self.recorder
            .register_counter(&Key::from_parts(KAFKA_ERRORS_TOTAL, labels), &METADATA)
            .increment(1);
    }

    /// Where the table's bootstrap began: `snapshot-local` or `kafka` (1 for the source used).
    pub fn set_bootstrap_source(&self, source: &'static str) {
        for candidate in ["snapshot-local", "snapshot-remote", "kafka"] {
            let labels = vec![label("table", &self.table), label("source", candidate)];
            self.recorder
                .register_gauge(&Key::from_parts(BOOTSTRAP_SOURCE, labels), &METADATA)
                .set(if candidate == source { 1.0 } else { 0.0 });
        }
    }

    /// A snapshot considered at start-up: `loaded`, or `refused` (damaged, too old, of another
    /// topic, outside the log).
    pub fn record_snapshot_load(&self, outcome: &'static str) {
        let labels = vec![label("table", &self.table), label("outcome", outcome)];
        self.recorder
            .register_counter(&Key::from_parts(SNAPSHOT_LOADS_TOTAL, labels), &METADATA)
            .increment(1);
    }

    pub fn set_snapshot_loaded_age(&self, age: Duration) {
        self.recorder
            .register_gauge(
                &Key::from_parts(SNAPSHOT_LOADED_AGE_SECONDS, vec![label("table", &self.table)]),
                &METADATA,
            )
            .set(age.as_secs_f64());
    }

    pub fn record_snapshot_written(&self, bytes: u64, duration: Duration) {
        let table = || vec![label("table", &self.table)];
        let outcome = vec![label("table", &self.table), label("outcome", "ok")];
        self.recorder
            .register_counter(&Key::from_parts(SNAPSHOT_WRITES_TOTAL, outcome), &METADATA)
            .increment(1);
        self.recorder
            .register_gauge(&Key::from_parts(SNAPSHOT_LAST_WRITE_SECONDS, table()), &METADATA)
            .set(crate::clock::now_ms() as f64 / 1000.0);
        self.recorder
            .register_gauge(
                &Key::from_parts(SNAPSHOT_WRITE_DURATION_SECONDS, table()),
                &METADATA,
            )
            .set(duration.as_secs_f64());
        self.recorder
            .register_gauge(&Key::from_parts(SNAPSHOT_BYTES, table()), &METADATA)
            .set(bytes as f64);
    }

    pub fn record_snapshot_failed(&self) {
        let labels = vec![label("table", &self.table), label("outcome", "error")];
        self.recorder
            .register_counter(&Key::from_parts(SNAPSHOT_WRITES_TOTAL, labels), &METADATA)
            .increment(1);
    }

    /// A partition's log was reset and the partition is read again.
    pub fn record_partition_reset(&self, partition: i32, reason: crate::ingest::log_check::ResetReason) {
        let labels = vec![
            label("table", &self.table),
            label("partition", partition),
            label("reason", reason.as_str()),
        ];
        self.recorder
            .register_counter(&Key::from_parts(PARTITION_RESETS_TOTAL, labels), &METADATA)
            .increment(1);
    }

    pub fn record_skipped(&self, n: u64) {
        self.skipped.increment(n);
    }

    pub fn record_decode_error(&self) {
        self.decode_errors.increment(1);
    }

    pub fn set_brokers_up(&self, brokers: usize) {
        self.brokers_up.set(brokers as f64);
    }
}

/// Request counters by method and code, registered on first use (a series per code that
/// actually happened), and latency histograms per method.
pub struct GrpcMetrics {
    recorder: Arc<PrometheusRecorder>,
    requests: [[OnceLock<Counter>; CODES.len()]; METHODS.len()],
    durations: [Histogram; UNARY_METHODS],
    multiget_keys: Histogram,
}

impl GrpcMetrics {
    fn new(recorder: &Arc<PrometheusRecorder>) -> Self {
        let histogram = |name: &'static str, labels: Vec<Label>| {
            recorder.register_histogram(&Key::from_parts(name, labels), &METADATA)
        };
        Self {
            recorder: recorder.clone(),
            requests: Default::default(),
            durations: std::array::from_fn(|m| {
                histogram(GRPC_REQUEST_DURATION_SECONDS, vec![label("method", METHODS[m])])
            }),
            multiget_keys: histogram(MULTIGET_KEYS, vec![]),
        }
    }

    /// Records one finished call.
    pub fn observe(&self, method: GrpcMethod, code: tonic::Code, started: Instant) {
        if let Some(durations) = self.durations.get(method as usize) {
            durations.record(started.elapsed().as_secs_f64());
        }
        self.observe_stream(method, code);
    }

    /// Records one finished stream (or call) by its code only.
    pub fn observe_stream(&self, method: GrpcMethod, code: tonic::Code) {
        let m = method as usize;
        let c = (code as usize).min(CODES.len() - 1);
        self.requests[m][c]
            .get_or_init(|| {
                let labels = vec![label("method", METHODS[m]), label("code", CODES[c])];
                self.recorder
                    .register_counter(&Key::from_parts(GRPC_REQUESTS_TOTAL, labels), &METADATA)
            })
            .increment(1);
    }

    pub fn observe_multiget_keys(&self, keys: usize) {
        self.multiget_keys.record(keys as f64);
    }
}

static METADATA: Metadata<'static> = Metadata::new("cdc_cache", metrics::Level::INFO, None);

fn label(key: &'static str, value: impl ToString) -> Label {
    Label::new(key, value.to_string())
}

fn bool_value(value: bool) -> f64 {
    if value {
        1.0
    } else {
        0.0
    }
}

fn describe(recorder: &PrometheusRecorder) {
    let gauge = |name: &'static str, unit: Option<Unit>, help: &'static str| {
        recorder.describe_gauge(name.into(), unit, help.into())
    };
    let counter =
        |name: &'static str, help: &'static str| recorder.describe_counter(name.into(), None, help.into());
    let histogram = |name: &'static str, unit: Option<Unit>, help: &'static str| {
        recorder.describe_histogram(name.into(), unit, help.into())
    };
    gauge(
        READY,
        None,
        "1 when every table has caught up with the end of its topic as it was at start-up.",
    );
    gauge(
        TABLE_READY,
        None,
        "1 when the table has caught up with the end of its topic as it was at start-up.",
    );
    gauge(ENTRIES, None, "Live keys held in memory.");
    gauge(WATCHERS, None, "Watch streams open on the table.");
    counter(
        WATCHERS_DROPPED_TOTAL,
        "Watch streams ended by the sidecar: reason=slow, more than half of --watch-history behind (they resume from the position given); reason=limit, refused at --max-watchers.",
    );
    counter(
        WATCH_EVENTS_TOTAL,
        "Changes sent to watchers (each stream counts its own).",
    );
    gauge(
        WATCH_HISTORY_BYTES,
        Some(Unit::Bytes),
        "Memory taken by the changes kept for watchers to resume from (--watch-history, --watch-history-bytes).",
    );
    gauge(
        DATA_BYTES,
        Some(Unit::Bytes),
        "Bytes of keys and values held, as received (map overhead not included; process_resident_memory_bytes is the process's memory).",
    );
    gauge(
        STORED_BYTES,
        Some(Unit::Bytes),
        "Bytes the same keys and values take as stored: values compressed with the table's dictionary where it pays (--compression).",
    );
    gauge(
        COMPRESSION_RATIO,
        None,
        "cdc_cache_data_bytes / cdc_cache_stored_bytes: how many times smaller the table's keys and values are as stored (1: not compressed).",
    );
    gauge(
        COMPRESSION_DICTIONARY,
        None,
        "The table's compression dictionary generation in use: 0 none yet (sampling, --compression off, or values that do not compress), 1 after the first training, more after retraining.",
    );
    gauge(
        MEMORY_LIMIT_BYTES,
        Some(Unit::Bytes),
        "The memory limit in force: --memory-limit, else the container's cgroup limit (0 when there is none).",
    );
    gauge(
        BOOTSTRAP_SOURCE,
        None,
        "Where the table's bootstrap began: source=snapshot-local or snapshot-remote (then Kafka since the snapshot), or kafka (from the log start).",
    );
    gauge(
        BOOTSTRAP_FETCHED_BYTES,
        Some(Unit::Bytes),
        "Key and value bytes of the records fetched from Kafka until the table was ready, redeliveries included (0 until then).",
    );
    counter(
        SNAPSHOT_LOADS_TOTAL,
        "Snapshots considered at start-up: outcome=loaded, or refused (damaged, too old, of another topic, outside the log).",
    );
    gauge(
        SNAPSHOT_LOADED_AGE_SECONDS,
        Some(Unit::Seconds),
        "Age of the snapshot the table started from, when it was loaded.",
    );
    counter(
        SNAPSHOT_WRITES_TOTAL,
        "Snapshots written, by outcome (ok, error).",
    );
    gauge(
        SNAPSHOT_LAST_WRITE_SECONDS,
        Some(Unit::Seconds),
        "When the table's last snapshot was written, Unix seconds.",
    );
    gauge(
        SNAPSHOT_WRITE_DURATION_SECONDS,
        Some(Unit::Seconds),
        "How long the last snapshot took to write.",
    );
    gauge(
        SNAPSHOT_BYTES,
        Some(Unit::Bytes),
        "Size of the last snapshot written.",
    );
    gauge(
        LOADING_STOPPED,
        None,
        "1 once loading stopped because resident memory reached --memory-limit-ratio of the limit.",
    );
    gauge(PARTITION_POSITION, None, "Next offset to apply, per partition.");
    gauge(
        PARTITION_HIGH_WATERMARK,
        None,
        "Latest high watermark reported by the broker, per partition.",
    );
    gauge(
        PARTITION_LAG_RECORDS,
        None,
        "Records between the applied position and the high watermark (never negative).",
    );
    gauge(
        LAST_RECORD_TIMESTAMP_SECONDS,
        Some(Unit::Seconds),
        "Kafka timestamp of the last applied record (0 before the first).",
    );
    counter(
        RECORDS_TOTAL,
        "Records by what they did: upsert, delete, truncate, skipped (undecodable or without key), or superseded (a newer row of the key came from another partition).",
    );
    counter(
        DECODE_ERRORS_TOTAL,
        "Records whose key or value could not be decoded.",
    );
    counter(
        KAFKA_ERRORS_TOTAL,
        "Kafka consumer and metadata errors by code (TOPIC_AUTHORIZATION_FAILED, UNKNOWN_TOPIC_OR_PARTITION, ...).",
    );
    counter(
        PARTITION_RESETS_TOTAL,
        "Partitions read again because their log was reset: log_truncated, log_start_moved, topic_recreated, offset_out_of_range.",
    );
    gauge(
        PARTITION_REBUILDING,
        None,
        "1 while a partition is read again after a reset (its old rows answer until replaced).",
    );
    counter(
        KEY_CONFLICTS_TOTAL,
        "Records of a key that arrived from a partition other than the one holding it (the newer record wins).",
    );
    counter(
        END_OFFSET_REQUESTS_TOTAL,
        "Broker requests for the partitions' end offsets made by latest reads (a burst of reads shares one).",
    );
    gauge(
        TABLE_PROBLEM,
        None,
        "1 while something keeps the table from being current (topic missing, fetches failing); Status says what.",
    );
    gauge(
        BOOTSTRAP_DURATION_SECONDS,
        Some(Unit::Seconds),
        "Time from start-up to caught up (0 until ready).",
    );
    counter(
        GRPC_REQUESTS_TOTAL,
        "Finished gRPC calls by method and status code. A Watch counts when its stream ends: OK when the client closed it, else the status the sidecar ended it with.",
    );
    histogram(
        GRPC_REQUEST_DURATION_SECONDS,
        Some(Unit::Seconds),
        "Server-side gRPC call latency.",
    );
    histogram(MULTIGET_KEYS, None, "Keys per MultiGet call.");
    gauge(
        KAFKA_BROKERS_UP,
        None,
        "Brokers the table's consumer is connected to, from librdkafka statistics.",
    );
    gauge(
        BROKER_SILENCE_SECONDS,
        Some(Unit::Seconds),
        "Seconds since the table's last fetch progress (a record, an end of partition, or a broker up while no fetch error is outstanding).",
    );
    gauge(
        START_TIME_SECONDS,
        Some(Unit::Seconds),
        "Process start time, seconds since the Unix epoch.",
    );
}
