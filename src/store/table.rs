//! One cached topic: the key-value map plus the progress of every partition feeding it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;

use super::compression::Compression;
use super::feed::{Feed, FeedEvent, FeedSettings};
use super::partition::PartitionState;
use super::readiness::Latch;
use super::record::{Found, Origin, Record};
use crate::clock::now_ms;
use crate::config::TableConfig;
use crate::format::{Format, KeyShapes, Projection};

/// Asks the broker for every partition's end offset, blocking up to the timeout.
pub type EndOffsets = Box<dyn Fn(&[i32], Duration) -> Result<Vec<(i32, i64)>, String> + Send + Sync>;

/// A decoded record: what it does to the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Upsert {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// The source table was truncated. Only the keys this record's partition wrote go: how
    /// the truncate orders against records of other partitions is unknown, and a rule that
    /// depends on arrival order would give another map after every restart.
    Truncate,
}

/// A change made ready to apply: an upsert's record is built (and its value compressed) here,
/// so the costly part can run on any thread, in parallel across records; applying it is then
/// a map update. See [`Table::prepare`].
#[derive(Debug)]
pub enum Prepared {
    /// The record, and the value as received when the table is watched: the Watch feed takes it
    /// from here rather than decompressing it out of the record on the ingest thread.
    Upsert(Record, Option<Bytes>),
    Delete {
        key: Vec<u8>,
    },
    Truncate,
}

impl Prepared {
    /// The key the change concerns; None for a truncate.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Prepared::Upsert(record, _) => Some(record.key()),
            Prepared::Delete { key } => Some(key),
            Prepared::Truncate => None,
        }
    }
}

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Upserted,
    Deleted,
    Truncated,
    /// The offset was applied before (a redelivery); nothing changed.
    Duplicate,
    /// The key is held from another partition with a newer record; it stays (see
    /// [`Table::apply`]).
    Superseded,
}

/// Which of two records of one key from different partitions is the newer: the later Kafka
/// timestamp, then the higher partition number. Arbitrary for equal timestamps, but the same on
/// every replay, so a restart never turns a row into another.
fn newer(a: (i64, i32), b: (i64, i32)) -> bool {
    a > b
}

/// A MultiGet whose values would not fit in one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// Keys whose values fitted before the limit was passed.
    pub keys_answered: usize,
    pub max_bytes: usize,
}

/// How far a bootstrap has got, for "not ready yet" answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub read: i64,
    pub total: i64,
    pub partitions: usize,
    pub partitions_caught_up: usize,
}

/// A record's key and value bytes, as received and as stored.
#[derive(Debug, Clone, Copy, Default)]
struct Sizes {
    data: i64,
    stored: i64,
}

impl Sizes {
    fn of(record: &Record) -> Self {
        let (data, stored) = record.lens();
        Sizes { data, stored }
    }

    fn add(&mut self, other: Sizes) {
        self.data += other.data;
        self.stored += other.stored;
    }
}

/// A row copied out for a watcher; see [`Table::watch_shard`].
pub struct HeldRow(Record);

pub struct Table {
    name: String,
    topic: String,
    format: Format,
    /// The columns rows keep besides the key's; None keeps them all.
    projection: Option<Projection>,
    pub(super) entries: DashMap<Record, ()>,
    /// How values are stored: the dictionaries and the sample being taken.
    compression: Compression,
    partitions: RwLock<BTreeMap<i32, Arc<PartitionState>>>,
    /// Set once the partitions present at start-up are registered; until then nothing is ready.
    partitions_known: AtomicBool,
    /// Bytes of keys and values held, as received (not counting map overhead).
    data_bytes: AtomicI64,
    /// The same keys and values as stored (compressed where it pays).
    stored_bytes: AtomicI64,
    /// Keys deleted during bootstrap, with the (timestamp, partition) of the delete: while
    /// partitions are replayed in no particular order, an older row of the same key from another
    /// partition must not come back after its delete. Dropped once the table is ready.
    bootstrap_deletes: DashMap<Box<[u8]>, (i64, i32)>,
    /// Records of a key that arrived from a partition other than the one holding it.
    key_conflicts: AtomicU64,
    /// Key and value bytes of the records fetched from Kafka so far (redeliveries included), and
    /// the figure when the table became ready.
    fetched_bytes: AtomicU64,
    bootstrap_fetched_bytes: OnceLock<u64>,
    skipped: AtomicU64,
    /// Wall-clock ms of the last sign that fetching works: a record, an end of partition, or a
    /// statistics report with a broker up while no fetch error is outstanding.
    last_broker_contact_ms: AtomicI64,
    /// Fetches fail (topic gone, authorization revoked) though the connection may be fine.
    fetch_failing: AtomicBool,
    /// What keeps the table from being current, for Status; None when nothing is known wrong.
    problem: RwLock<Option<String>>,
    /// Field names and types of the keys seen (debezium tables), to explain wrong-type misses.
    key_shapes: KeyShapes,
    ready: Latch,
    /// Woken after the ingest thread moved positions on (records applied, an end of partition
    /// reached), for reads that wait for an offset.
    advanced: tokio::sync::Notify,
    /// Asks the broker for every partition's end offset now (blocking); set by ingest.
    end_offsets: OnceLock<EndOffsets>,
    /// Broker requests made for `latest` reads.
    end_offset_requests: AtomicU64,
    /// The changes made, for watchers; started by the first Watch.
    feed: OnceLock<Feed>,
    /// Watch streams refused because --max-watchers were open.
    watchers_refused: AtomicU64,
    started: Instant,
    started_at_ms: i64,
    bootstrap_duration: OnceLock<Duration>,
}

impl fmt::Debug for Table {
    // The map can hold millions of entries: show its size, not its keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .field("format", &self.format)
            .field("entries", &self.len())
            .field("data_bytes", &self.data_bytes())
            .field("partitions", &self.partitions())
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Table {
    pub fn new(config: &TableConfig) -> Self {
        Self {
            name: config.table.clone(),
            topic: config.topic.clone(),
            format: config.format,
            projection: config.projection.clone(),
            entries: DashMap::new(),
            compression: Compression::new(config.compression),
            partitions: RwLock::new(BTreeMap::new()),
            partitions_known: AtomicBool::new(false),
            data_bytes: AtomicI64::new(0),
            stored_bytes: AtomicI64::new(0),
            bootstrap_deletes: DashMap::new(),
            key_conflicts: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            bootstrap_fetched_bytes: OnceLock::new(),
            skipped: AtomicU64::new(0),
            last_broker_contact_ms: AtomicI64::new(0),
            fetch_failing: AtomicBool::new(false),
            problem: RwLock::new(None),
            key_shapes: KeyShapes::new(),
            ready: Latch::new(),
            advanced: tokio::sync::Notify::new(),
            end_offsets: OnceLock::new(),
            end_offset_requests: AtomicU64::new(0),
            feed: OnceLock::new(),
            watchers_refused: AtomicU64::new(0),
            started: Instant::now(),
            started_at_ms: now_ms(),
            bootstrap_duration: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The columns rows keep besides the key's (`--project`), if the table is projected.
    pub fn projection(&self) -> Option<&Projection> {
        self.projection.as_ref()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn data_bytes(&self) -> u64 {
        self.data_bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// Key and value bytes as stored; below [`Table::data_bytes`] once values are compressed.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// How many times smaller the keys and values are as stored (1.0: not compressed).
    pub fn compression_ratio(&self) -> f64 {
        match self.stored_bytes() {
            0 => 1.0,
            stored => self.data_bytes() as f64 / stored as f64,
        }
    }

    pub fn compression(&self) -> &Compression {
        &self.compression
    }

    /// Counts a record's bytes in (`sign` 1) or out (-1) of the byte totals.
    fn account(&self, sizes: Sizes, sign: i64) {
        self.data_bytes.fetch_add(sign * sizes.data, Ordering::Relaxed);
        self.stored_bytes
            .fetch_add(sign * sizes.stored, Ordering::Relaxed);
    }

    /// A record of `bytes` key and value bytes came from Kafka.
    pub fn note_fetched(&self, bytes: usize) {
        self.fetched_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes fetched until the table was ready.
    pub fn bootstrap_fetched_bytes(&self) -> Option<u64> {
        self.bootstrap_fetched_bytes.get().copied()
    }

    /// Records of a key that arrived from another partition than the one that wrote it (a key
    /// whose bytes changed, so the producer's partitioner sent it elsewhere).
    pub fn key_conflicts(&self) -> u64 {
        self.key_conflicts.load(Ordering::Relaxed)
    }

    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.is_open()
    }

    pub fn ready_latch(&self) -> &Latch {
        &self.ready
    }

    pub fn bootstrap_duration(&self) -> Option<Duration> {
        self.bootstrap_duration.get().copied()
    }

    pub fn last_broker_contact_ms(&self) -> i64 {
        self.last_broker_contact_ms.load(Ordering::Relaxed)
    }

    pub fn note_broker_contact(&self, now_ms: i64) {
        self.last_broker_contact_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// A statistics report says a broker is up: progress unless fetches are failing, which a live
    /// connection does not fix.
    pub fn note_broker_up(&self, now_ms: i64) {
        if !self.fetch_failing.load(Ordering::Relaxed) {
            self.note_broker_contact(now_ms);
        }
    }

    /// Fetches fail (cleared by the next record or end of partition).
    pub fn fetch_failing(&self) -> bool {
        self.fetch_failing.load(Ordering::Relaxed)
    }

    pub fn set_fetch_failing(&self, failing: bool) {
        self.fetch_failing.store(failing, Ordering::Relaxed);
    }

    /// What keeps the table from being current (a missing topic, failing fetches), if anything.
    pub fn problem(&self) -> Option<String> {
        self.problem.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_problem(&self, problem: Option<String>) {
        *self.problem.write().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Milliseconds since the consumer last heard from the broker (counted from start-up before
    /// the first contact). The one computation behind the metric and `Status`.
    pub fn broker_silence_ms(&self, now_ms: i64) -> i64 {
        let contact = self.last_broker_contact_ms();
        let since = if contact > 0 { contact } else { self.started_at_ms };
        (now_ms - since).max(0)
    }

    /// Wakes the reads waiting for positions to move on; called by the ingest thread after it
    /// applied a batch or reached the end of a partition.
    pub fn note_advanced(&self) {
        self.advanced.notify_waiters();
    }

    /// The change feed, once a watcher started it.
    pub fn feed(&self) -> Option<&Feed> {
        self.feed.get()
    }

    /// The change feed, started with `settings` if this is the first watcher. Changes are
    /// numbered from the ingest thread's next batch on ([`Feed::is_acknowledged`]).
    pub fn start_feed(&self, settings: FeedSettings) -> &Feed {
        self.feed.get_or_init(|| Feed::new(settings))
    }

    /// A Watch stream on this table was refused: --max-watchers were open.
    pub fn note_watch_refused(&self) {
        self.watchers_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn watchers_refused(&self) -> u64 {
        self.watchers_refused.load(Ordering::Relaxed)
    }

    /// Hands the changes made since the last call to the watchers; called by the ingest thread
    /// between batches (cheap when nobody watches).
    pub fn publish_changes(&self) {
        if let Some(feed) = self.feed.get() {
            feed.acknowledge();
            feed.publish();
        }
    }

    /// What a read waiting for an offset waits on: register with `notified()` (and `enable` it)
    /// before checking the positions, so no advance between the check and the wait is missed.
    pub fn advanced(&self) -> &tokio::sync::Notify {
        &self.advanced
    }

    /// Installs how to ask the broker for the partitions' end offsets (ingest does, with the
    /// table's consumer).
    pub fn set_end_offsets(&self, ask: EndOffsets) {
        let _ = self.end_offsets.set(ask);
    }

    /// Every partition's end offset (the high watermark, or the last stable offset when reading
    /// committed records) as the broker reports it now. Blocks for a broker round trip.
    pub fn fetch_end_offsets(&self, timeout: Duration) -> Result<Vec<(i32, i64)>, String> {
        let ask = self
            .end_offsets
            .get()
            .ok_or_else(|| "the table's consumer is not started".to_string())?;
        let ids: Vec<i32> = self.partitions().iter().map(|p| p.partition()).collect();
        self.end_offset_requests.fetch_add(1, Ordering::Relaxed);
        ask(&ids, timeout)
    }

    /// Broker requests made by [`Table::fetch_end_offsets`].
    pub fn end_offset_requests(&self) -> u64 {
        self.end_offset_requests.load(Ordering::Relaxed)
    }

    /// The shapes of the keys stored so far (debezium tables).
    pub fn key_shapes(&self) -> &KeyShapes {
        &self.key_shapes
    }

    /// Registers the partitions present at start-up with their log bounds.
    pub fn set_initial_partitions(&self, partitions: impl IntoIterator<Item = PartitionState>) {
        let mut map = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        let mut records = 0;
        for p in partitions {
            records += (p.end_offset() - p.log_start()).max(0) as u64;
            map.insert(p.partition(), Arc::new(p));
        }
        drop(map);
        self.reserve(records);
        self.partitions_known.store(true, Ordering::Release);
    }

    /// Sizes the map for about `records` keys before loading. Growing instead rehashes every
    /// key held at each doubling, and reading a key means a cache miss on its record: measured,
    /// that was 40% of the ingest thread's time during a bootstrap of 1M records. A compacted
    /// log holds at most a few records per key (a dirty head up to `min.cleanable.dirty.ratio`),
    /// so the map ends up between half-full and full, as it would by growing; the cap bounds
    /// what a topic that is mostly updates can reserve (9 bytes a slot: 72 MB).
    fn reserve(&self, records: u64) {
        const MAX_RESERVED: u64 = 8 << 20;
        let shards = self.entries.shards();
        let per_shard = (records.min(MAX_RESERVED) as usize).div_ceil(shards.len());
        let hasher = self.entries.hasher();
        for shard in shards {
            let mut shard = shard.write();
            let additional = per_shard.saturating_sub(shard.len());
            shard.reserve(additional, |(record, _)| {
                std::hash::BuildHasher::hash_one(hasher, record)
            });
        }
    }

    /// Whether preparing this table's records costs enough to spread over threads: decoding
    /// JSON or compressing values does; copying raw bytes does not.
    pub fn costly_to_prepare(&self) -> bool {
        self.format != Format::Raw || self.compression.generation() > 0
    }

    /// Registers a partition found after start-up; returns it, or None if already known.
    pub fn add_partition(&self, partition: i32) -> Option<Arc<PartitionState>> {
        let mut map = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&partition) {
            return None;
        }
        let state = Arc::new(PartitionState::already_caught_up(partition));
        map.insert(partition, state.clone());
        Some(state)
    }

    /// Forgets a partition the topic no longer has (its rows are removed by the caller).
    pub fn remove_partition(&self, partition: i32) {
        self.partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition);
    }

    pub fn partition(&self, partition: i32) -> Option<Arc<PartitionState>> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .cloned()
    }

    /// A snapshot of all partitions, ordered by partition number.
    pub fn partitions(&self) -> Vec<Arc<PartitionState>> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Applies one record of `partition` at `offset`. Redeliveries (offsets already applied) are
    /// ignored, so the map always equals the last write per key in offset order.
    ///
    /// Within a partition, offset order decides. A key held from another partition (Debezium
    /// sends a row elsewhere once its key's bytes change, and compaction never removes the old
    /// copy) is replaced or deleted only by a newer record by [`newer`]'s rule, so the row that
    /// wins does not depend on the order partitions are replayed in.
    /// Returns what happened.
    pub fn apply(
        &self,
        partition: &PartitionState,
        offset: i64,
        timestamp_ms: Option<i64>,
        change: Change,
    ) -> Applied {
        let prepared = self.prepare(partition.partition(), offset, timestamp_ms, change);
        self.apply_prepared(partition, offset, timestamp_ms, prepared)
    }

    /// The first half of [`Table::apply`], with no effect on the map: builds an upsert's record.
    /// Safe to call from any thread, for records of any partitions in any order.
    pub fn prepare(
        &self,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        change: Change,
    ) -> Prepared {
        match change {
            Change::Upsert { key, value } => {
                let value = match &self.projection {
                    Some(projection) => projection.apply(&key, value),
                    None => value,
                };
                let origin = Origin {
                    partition,
                    offset,
                    timestamp_ms: timestamp_ms.unwrap_or(-1),
                };
                let record = self.compression.record(&key, &value, origin);
                // Kept only while watched; `Bytes::from` takes a vector without copying.
                let raw = self.feed.get().map(|_| Bytes::from(value));
                Prepared::Upsert(record, raw)
            }
            Change::Delete { key } => Prepared::Delete { key },
            Change::Truncate => Prepared::Truncate,
        }
    }

    /// The second half of [`Table::apply`]: `prepared` must come from [`Table::prepare`] with
    /// the same partition, offset and timestamp. Records of one partition are applied in offset
    /// order, one at a time.
    pub fn apply_prepared(
        &self,
        partition: &PartitionState,
        offset: i64,
        timestamp_ms: Option<i64>,
        prepared: Prepared,
    ) -> Applied {
        if !partition.is_new(offset) {
            return Applied::Duplicate;
        }
        let feed = self.feed.get();
        let applied = match prepared {
            Prepared::Upsert(record, raw) => {
                let incoming = (timestamp_ms.unwrap_or(-1), partition.partition());
                let added = Sizes::of(&record);
                // Built before the record moves into the map; numbered only if it is applied.
                // The value as received comes from prepare, unless the feed started in between.
                let event = feed.map(|_| FeedEvent {
                    key: Bytes::copy_from_slice(record.key()),
                    value: Some(raw.unwrap_or_else(|| self.compression.value(record.value_and_origin().0))),
                    partition: incoming.1,
                    offset,
                    timestamp_ms: incoming.0,
                });
                let number = |event: Option<FeedEvent>| {
                    if let (Some(feed), Some(event)) = (feed, event) {
                        feed.number(event);
                    }
                };
                // Replace key and value in place, so a concurrent reader never sees the key absent.
                match self.entries.entry(record) {
                    dashmap::Entry::Occupied(entry) => {
                        let held = entry.key().origin();
                        if held.partition != incoming.1 {
                            self.key_conflicts.fetch_add(1, Ordering::Relaxed);
                            if newer((held.timestamp_ms, held.partition), incoming) {
                                partition.advance_past(offset, timestamp_ms);
                                return Applied::Superseded;
                            }
                        }
                        // Numbered while the shard is locked (see the feed module).
                        number(event);
                        let removed = Sizes::of(&entry.replace_entry(()).0);
                        self.account(added, 1);
                        self.account(removed, -1);
                        Applied::Upserted
                    }
                    dashmap::Entry::Vacant(entry) => {
                        // Deletes are remembered only until ready: skip the lookup afterwards.
                        let key = entry.key().key();
                        let deleted_later = !self.is_ready()
                            && self
                                .bootstrap_deletes
                                .get(key)
                                .is_some_and(|delete| delete.1 != incoming.1 && newer(*delete, incoming));
                        if deleted_later {
                            self.key_conflicts.fetch_add(1, Ordering::Relaxed);
                            drop(entry);
                            partition.advance_past(offset, timestamp_ms);
                            return Applied::Superseded;
                        }
                        // Only a new key can bring a new shape; overwrites pay nothing.
                        if self.format.json_keys() {
                            self.key_shapes.observe(key);
                        }
                        number(event);
                        entry.insert(());
                        self.account(added, 1);
                        Applied::Upserted
                    }
                }
            }
            Prepared::Delete { key } => {
                let incoming = (timestamp_ms.unwrap_or(-1), partition.partition());
                let mut held_elsewhere_newer = false;
                let removed = self.entries.remove_if(key.as_slice(), |record, ()| {
                    let held = record.origin();
                    let keep =
                        held.partition != incoming.1 && newer((held.timestamp_ms, held.partition), incoming);
                    held_elsewhere_newer = keep;
                    if !keep {
                        // Runs with the shard locked: numbered as the feed module requires.
                        self.number_deletion(feed, record, incoming.1, offset, incoming.0);
                    }
                    !keep
                });
                if let Some((record, ())) = removed {
                    if record.origin().partition != incoming.1 {
                        self.key_conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    self.account(Sizes::of(&record), -1);
                }
                if !self.is_ready() {
                    self.remember_delete(key.into_boxed_slice(), incoming);
                }
                if held_elsewhere_newer {
                    self.key_conflicts.fetch_add(1, Ordering::Relaxed);
                    Applied::Superseded
                } else {
                    Applied::Deleted
                }
            }
            Prepared::Truncate => {
                let truncated = partition.partition();
                let bootstrapping = !self.is_ready();
                let incoming = (timestamp_ms.unwrap_or(-1), truncated);
                let mut removed = Sizes::default();
                let mut removed_keys = Vec::new();
                self.entries.retain(|record, ()| {
                    let keep = record.origin().partition != truncated;
                    if !keep {
                        self.number_deletion(feed, record, truncated, offset, incoming.0);
                        removed.add(Sizes::of(record));
                        if bootstrapping {
                            removed_keys.push(Box::from(record.key()));
                        }
                    }
                    keep
                });
                self.account(removed, -1);
                // As for a delete: an older copy of these keys from another partition, replayed
                // later, must not come back.
                for key in removed_keys {
                    self.remember_delete(key, incoming);
                }
                Applied::Truncated
            }
        };
        partition.advance_past(offset, timestamp_ms);
        applied
    }

    /// Moves past a record that could not be applied (undecodable, no key), counting it.
    pub fn skip(&self, partition: &PartitionState, offset: i64, timestamp_ms: Option<i64>) {
        if partition.is_new(offset) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            partition.advance_past(offset, timestamp_ms);
        }
    }

    /// Numbers the deletion of `record` for the watchers, if any; the caller holds its shard.
    fn number_deletion(
        &self,
        feed: Option<&Feed>,
        record: &Record,
        partition: i32,
        offset: i64,
        timestamp_ms: i64,
    ) {
        if let Some(feed) = feed {
            feed.number(FeedEvent {
                key: Bytes::copy_from_slice(record.key()),
                value: None,
                partition,
                offset,
                timestamp_ms,
            });
        }
    }

    /// Remembers a delete seen during bootstrap, keeping the newest per key: the rule must not
    /// depend on the order the partitions are replayed in.
    fn remember_delete(&self, key: Box<[u8]>, delete: (i64, i32)) {
        self.bootstrap_deletes
            .entry(key)
            .and_modify(|held| {
                if newer(delete, *held) {
                    *held = delete;
                }
            })
            .or_insert(delete);
    }

    /// The keys held from `partition`, for a rebuild to remove those the partition's new log
    /// no longer has.
    pub fn keys_of_partition(&self, partition: i32) -> Vec<Box<[u8]>> {
        self.entries
            .iter()
            .filter(|entry| entry.key().origin().partition == partition)
            .map(|entry| Box::from(entry.key().key()))
            .collect()
    }

    /// Removes `key` if it is still held from `partition`; true when it was.
    pub fn remove_from_partition(&self, key: &[u8], partition: i32) -> bool {
        let feed = self.feed.get();
        let removed = self.entries.remove_if(key, |record, ()| {
            let remove = record.origin().partition == partition;
            if remove {
                // No record removes it: the partition's new log lacks it. Offset -1 says so.
                self.number_deletion(feed, record, partition, -1, -1);
            }
            remove
        });
        match removed {
            Some((record, ())) => {
                self.account(Sizes::of(&record), -1);
                true
            }
            None => false,
        }
    }

    /// Visits every record, its value as received. The map is read shard by shard, each
    /// read-locked while it is visited: readers go on, writers to that shard wait that long.
    pub fn for_each_record(&self, mut visit: impl FnMut(&[u8], &[u8], Origin)) {
        let mut value = Vec::new();
        for entry in self.entries.iter() {
            let record = entry.key();
            let (stored, origin) = record.value_and_origin();
            value.resize(stored.raw_len(), 0);
            self.compression.decompress_into(stored, &mut value);
            visit(record.key(), &value, origin);
        }
    }

    /// Puts a record from a snapshot in place, as it was written (no offset checks: the
    /// partitions' positions are restored with it).
    pub fn restore(&self, key: &[u8], value: &[u8], partition: i32, offset: i64, timestamp_ms: i64) {
        let origin = Origin {
            partition,
            offset,
            timestamp_ms,
        };
        let record = self.compression.record(key, value, origin);
        self.account(Sizes::of(&record), 1);
        match self.entries.entry(record) {
            dashmap::Entry::Occupied(entry) => {
                self.account(Sizes::of(&entry.replace_entry(()).0), -1);
            }
            dashmap::Entry::Vacant(entry) => {
                entry.insert(());
                if self.format.json_keys() {
                    self.key_shapes.observe(key);
                }
            }
        }
    }

    /// Puts `record` in place of the one held for its key if `unchanged` says that one is still
    /// the record it was made from (the same write, to be stored another way); true if it did.
    pub(super) fn replace_if_unchanged(&self, record: Record, unchanged: impl Fn(&Record) -> bool) -> bool {
        let added = Sizes::of(&record);
        match self.entries.entry(record) {
            dashmap::Entry::Occupied(entry) if unchanged(entry.key()) => {
                let removed = Sizes::of(&entry.replace_entry(()).0);
                self.account(added, 1);
                self.account(removed, -1);
                true
            }
            _ => false,
        }
    }

    /// Drops every record (a snapshot that failed to load half-way).
    pub fn clear(&self) {
        self.entries.clear();
        self.data_bytes.store(0, Ordering::Relaxed);
        self.stored_bytes.store(0, Ordering::Relaxed);
    }

    pub fn get(&self, key: &[u8]) -> Option<Found> {
        // The shard guard lives only for this expression: copy out and release.
        self.entries.get(key).map(|entry| {
            let (stored, origin) = entry.key().value_and_origin();
            origin.with_value(self.compression.value(stored))
        })
    }

    /// Looks up every key in order. The values found are copied into one buffer that the results
    /// share (slices of it), instead of one allocation per value; a result kept alive keeps the
    /// whole buffer. Stops with [`TooLarge`] once the values pass `max_bytes`, so a request
    /// for many large rows never builds an answer that cannot be sent.
    pub fn get_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        max_bytes: usize,
    ) -> Result<Vec<Option<Found>>, TooLarge> {
        let mut values = BytesMut::new();
        let mut hits = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            // As in `get`, each shard guard lives only while its value is copied out.
            let hit = self.entries.get(key.as_ref()).map(|entry| {
                let (value, origin) = entry.key().value_and_origin();
                let len = value.raw_len();
                if values.capacity() == 0 {
                    // Sized from the first value, so the buffer rarely grows (and copies) while
                    // a guard is held; never beyond what may be sent.
                    values.reserve((len.max(16) * (keys.len() - index)).min(max_bytes));
                }
                let start = values.len();
                if start + len <= max_bytes {
                    values.resize(start + len, 0);
                    self.compression.decompress_into(value, &mut values[start..]);
                }
                (start..start + len, origin)
            });
            if let Some((range, _)) = &hit {
                if range.end > max_bytes {
                    return Err(TooLarge {
                        keys_answered: index,
                        max_bytes,
                    });
                }
            }
            hits.push(hit);
        }
        let values = values.freeze();
        Ok(hits
            .into_iter()
            .map(|hit| hit.map(|(range, origin)| origin.with_value(values.slice(range))))
            .collect())
    }

    /// How many shards the map has: [`Table::watch_shard`] reads one at a time.
    pub fn shard_count(&self) -> usize {
        self.entries.shards().len()
    }

    /// The shard that holds `key`.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        self.entries.determine_map(key)
    }

    /// Copies out the rows of one shard whose keys pass `wanted` (all of them, with `keys`
    /// None; else those of `keys` in this shard), with the number of the last change the feed
    /// had numbered while the shard was locked: the rows show every change to the shard's keys
    /// numbered up to it and none after (the feed module says why). The shard is read-locked
    /// only while records are copied, their values still compressed ([`Table::held_row`]).
    #[allow(unsafe_code)]
    pub fn watch_shard(
        &self,
        shard: usize,
        keys: Option<&[Bytes]>,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> (u64, Vec<HeldRow>) {
        let guard = self.entries.shards()[shard].read();
        let seq = self.feed.get().map_or(0, Feed::assigned);
        let copy = |record: &Record| {
            let (stored, origin) = record.value_and_origin();
            HeldRow(Record::with_value(record.key(), stored, origin))
        };
        let rows = match keys {
            Some(keys) => keys
                .iter()
                .filter(|key| self.shard_of(key) == shard && wanted(key))
                .filter_map(|key| {
                    let hash = self.entries.hash_usize(&key.as_ref()) as u64;
                    guard.get(hash, |(record, _)| record.key() == key.as_ref())
                })
                .map(|(record, _)| copy(record))
                .collect(),
            // SAFETY: hashbrown's raw iterator is unsafe only because it could outlive its table;
            // it and every reference it yields live within this block, while `guard` keeps the
            // shard's table alive and unchanged. Dashmap reads one shard under its lock only
            // through this raw table, and a watcher needs that: rows and change numbers read in
            // one locked moment are what makes include_initial exact.
            None => unsafe {
                guard
                    .iter()
                    .map(|bucket| &bucket.as_ref().0)
                    .filter(|record| wanted(record.key()))
                    .map(copy)
                    .collect()
            },
        };
        (seq, rows)
    }

    /// Whether rows read by [`Table::watch_shard`] already show change `seq` of `key`: `shown`
    /// holds, per shard, the number [`Table::watch_shard`] returned for it.
    pub fn already_shown(&self, shown: &[u64], seq: u64, key: &[u8]) -> bool {
        shown.get(self.shard_of(key)).is_some_and(|&last| seq <= last)
    }

    /// A row copied out by [`Table::watch_shard`], its value as received.
    pub fn held_row(&self, row: &HeldRow) -> (Bytes, Found) {
        let (stored, origin) = row.0.value_and_origin();
        (
            Bytes::copy_from_slice(row.0.key()),
            origin.with_value(self.compression.value(stored)),
        )
    }

    /// True when the start-up partitions are known and every one has caught up.
    pub fn all_caught_up(&self) -> bool {
        self.partitions_known.load(Ordering::Acquire)
            && self
                .partitions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .all(|p| p.is_caught_up())
    }

    /// Opens the readiness latch if every partition has caught up. Returns true the first time.
    pub fn try_mark_ready(&self) -> bool {
        if !self.all_caught_up() {
            return false;
        }
        let _ = self.bootstrap_duration.set(self.started.elapsed());
        let _ = self
            .bootstrap_fetched_bytes
            .set(self.fetched_bytes.load(Ordering::Relaxed));
        let first = self.ready.open();
        if first {
            // Replay order no longer matters: records now arrive as they are written.
            self.bootstrap_deletes.clear();
            self.bootstrap_deletes.shrink_to_fit();
        }
        first
    }

    pub fn progress(&self) -> Progress {
        let partitions = self.partitions();
        let mut progress = Progress {
            read: 0,
            total: 0,
            partitions: partitions.len(),
            partitions_caught_up: 0,
        };
        for p in &partitions {
            let span = (p.end_offset() - p.log_start()).max(0);
            progress.total += span;
            if p.is_caught_up() {
                progress.partitions_caught_up += 1;
                progress.read += span;
            } else {
                progress.read += (p.position() - p.log_start()).clamp(0, span);
            }
        }
        progress
    }
}
