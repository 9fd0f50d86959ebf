//! One cached topic: the key-value map plus the progress of every partition feeding it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dashmap::DashMap;

use super::partition::PartitionState;
use super::readiness::Latch;
use super::record::{Found, Record};
use crate::config::{Format, TableConfig};

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
    /// The source table was truncated: every key goes.
    Truncate,
}

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Upserted,
    Deleted,
    Truncated,
    /// The offset was applied before (a redelivery); nothing changed.
    Duplicate,
}

/// How far a bootstrap has got, for "not ready yet" answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub read: i64,
    pub total: i64,
    pub partitions: usize,
    pub partitions_caught_up: usize,
}

#[derive(Debug)]
pub struct Table {
    name: String,
    topic: String,
    format: Format,
    entries: DashMap<Record, ()>,
    partitions: RwLock<BTreeMap<i32, Arc<PartitionState>>>,
    /// Set once the partitions present at start-up are registered; until then nothing is ready.
    partitions_known: AtomicBool,
    /// Bytes of keys and values held (not counting map overhead).
    data_bytes: AtomicI64,
    skipped: AtomicU64,
    /// Wall-clock ms of the last sign of life from the broker (a record, end of partition, or a
    /// statistics report with a broker up).
    last_broker_contact_ms: AtomicI64,
    ready: Latch,
    started: Instant,
    bootstrap_duration: OnceLock<Duration>,
}

impl Table {
    pub fn new(config: &TableConfig) -> Self {
        Self {
            name: config.table.clone(),
            topic: config.topic.clone(),
            format: config.format,
            entries: DashMap::new(),
            partitions: RwLock::new(BTreeMap::new()),
            partitions_known: AtomicBool::new(false),
            data_bytes: AtomicI64::new(0),
            skipped: AtomicU64::new(0),
            last_broker_contact_ms: AtomicI64::new(0),
            ready: Latch::new(),
            started: Instant::now(),
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

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn data_bytes(&self) -> u64 {
        self.data_bytes.load(Ordering::Relaxed).max(0) as u64
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

    /// Registers the partitions present at start-up with their log bounds.
    pub fn set_initial_partitions(&self, partitions: impl IntoIterator<Item = PartitionState>) {
        let mut map = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        for p in partitions {
            map.insert(p.partition(), Arc::new(p));
        }
        drop(map);
        self.partitions_known.store(true, Ordering::Release);
    }

    /// Registers a partition found after start-up; returns it, or None if already known.
    pub fn add_partition(&self, partition: i32) -> Option<Arc<PartitionState>> {
        let mut map = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&partition) {
            return None;
        }
        let state = Arc::new(PartitionState::discovered(partition));
        map.insert(partition, state.clone());
        Some(state)
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
    /// Returns what happened and whether the partition caught up with its start-up end.
    pub fn apply(
        &self,
        partition: &PartitionState,
        offset: i64,
        timestamp_ms: Option<i64>,
        change: Change,
    ) -> (Applied, bool) {
        if !partition.is_new(offset) {
            return (Applied::Duplicate, false);
        }
        let applied = match change {
            Change::Upsert { key, value } => {
                let added = (key.len() + value.len()) as i64;
                let record = Record::new(
                    &key,
                    &value,
                    partition.partition(),
                    offset,
                    timestamp_ms.unwrap_or(-1),
                );
                // Replace key and value in place, so a concurrent reader never sees the key absent.
                let removed = match self.entries.entry(record) {
                    dashmap::Entry::Occupied(entry) => entry.replace_entry(()).0.data_len(),
                    dashmap::Entry::Vacant(entry) => {
                        entry.insert(());
                        0
                    }
                };
                self.data_bytes.fetch_add(added - removed, Ordering::Relaxed);
                Applied::Upserted
            }
            Change::Delete { key } => {
                if let Some((record, ())) = self.entries.remove(key.as_slice()) {
                    self.data_bytes.fetch_sub(record.data_len(), Ordering::Relaxed);
                }
                Applied::Deleted
            }
            Change::Truncate => {
                self.entries.clear();
                self.data_bytes.store(0, Ordering::Relaxed);
                Applied::Truncated
            }
        };
        let caught_up = partition.advance_past(offset, timestamp_ms);
        (applied, caught_up)
    }

    /// Moves past a record that could not be applied (undecodable, no key), counting it.
    /// Returns whether the partition caught up.
    pub fn skip(&self, partition: &PartitionState, offset: i64, timestamp_ms: Option<i64>) -> bool {
        if !partition.is_new(offset) {
            return false;
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        partition.advance_past(offset, timestamp_ms)
    }

    pub fn get(&self, key: &[u8]) -> Option<Found> {
        // The shard guard lives only for this expression: copy out and release.
        self.entries.get(key).map(|entry| entry.key().found())
    }

    /// Looks up every key in order. The values found are copied into one buffer that the results
    /// share (slices of it), instead of one allocation per value; a result kept alive keeps the
    /// whole buffer.
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<Option<Found>> {
        let mut values = BytesMut::new();
        let hits: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                // As in `get`, each shard guard lives only while its value is copied out.
                self.entries.get(key.as_ref()).map(|entry| {
                    let (value, origin) = entry.key().value_and_origin();
                    if values.capacity() == 0 {
                        // Sized from the first value, so the buffer rarely grows (and copies)
                        // while a guard is held.
                        values.reserve(value.len().max(16) * (keys.len() - index));
                    }
                    let start = values.len();
                    values.extend_from_slice(value);
                    (start..values.len(), origin)
                })
            })
            .collect();
        let values = values.freeze();
        hits.into_iter()
            .map(|hit| hit.map(|(range, origin)| origin.with_value(values.slice(range))))
            .collect()
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
        self.ready.open()
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
            let span = p.end_offset() - p.log_start();
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
