//! The in-memory side: one [`Table`] per cached topic, and readiness for the whole process.
//!
//! Ingest is the only writer; gRPC, status and metrics only read.

pub mod compression;
mod feed;
mod partition;
mod readiness;
mod record;
mod table;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

pub use compression::CompressionMode;
pub use feed::{Cursor, Feed, FeedEvent, FeedSettings, ResumeError};
pub use partition::PartitionState;
pub use readiness::Latch;
pub use record::{Found, Origin};
pub use table::{Applied, Change, EndOffsets, HeldRow, Prepared, Progress, Table, TooLarge};

use crate::config::TableConfig;

#[derive(Debug)]
pub struct Store {
    tables: Vec<Arc<Table>>,
    ready: Latch,
    started_at: SystemTime,
    /// The memory limit in force (flag or container), if any.
    memory_limit: Option<u64>,
    /// Set once when resident memory neared the limit: why loading stopped.
    loading_stopped: OnceLock<String>,
}

/// Why a table name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableLookupError {
    #[error("table is required: this server has {} tables ({})", .tables.len(), .tables.join(", "))]
    Ambiguous { tables: Vec<String> },
    #[error("unknown table {name:?}; configured tables: {}", .tables.join(", "))]
    Unknown { name: String, tables: Vec<String> },
}

impl Store {
    pub fn new(tables: &[TableConfig]) -> Self {
        Self::with_memory_limit(tables, None)
    }

    pub fn with_memory_limit(tables: &[TableConfig], memory_limit: Option<u64>) -> Self {
        Self {
            tables: tables.iter().map(|t| Arc::new(Table::new(t))).collect(),
            ready: Latch::new(),
            started_at: SystemTime::now(),
            memory_limit,
            loading_stopped: OnceLock::new(),
        }
    }

    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    /// Stops every table's loading (memory near the limit); the reason becomes their problem.
    pub fn stop_loading(&self, reason: String) {
        for table in &self.tables {
            table.set_problem(Some(reason.clone()));
        }
        let _ = self.loading_stopped.set(reason);
    }

    /// Why loading stopped, once it has.
    pub fn loading_stopped(&self) -> Option<&str> {
        self.loading_stopped.get().map(String::as_str)
    }

    pub fn tables(&self) -> &[Arc<Table>] {
        &self.tables
    }

    /// Resolves a request's table name; empty means the only table when there is exactly one.
    pub fn table(&self, name: &str) -> Result<&Arc<Table>, TableLookupError> {
        if name.is_empty() {
            return match self.tables.as_slice() {
                [only] => Ok(only),
                _ => Err(TableLookupError::Ambiguous {
                    tables: self.table_names(),
                }),
            };
        }
        self.tables
            .iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| TableLookupError::Unknown {
                name: name.to_string(),
                tables: self.table_names(),
            })
    }

    /// Opens the process-wide latch once every table is ready.
    pub fn ready(&self) -> &Latch {
        &self.ready
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Called after a partition of `table` caught up: marks the table, then the process, ready
    /// when everything is. Returns true when this call made `table` ready.
    pub fn note_caught_up(&self, table: &Table) -> bool {
        let table_became_ready = table.try_mark_ready();
        if self.tables.iter().all(|t| t.is_ready()) {
            self.ready.open();
        }
        table_became_ready
    }

    fn table_names(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.name().to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::format::Format;

    fn config(table: &str) -> TableConfig {
        TableConfig {
            topic: format!("topic.{table}"),
            table: table.to_string(),
            format: Format::Raw,
            compression: Default::default(),
            projection: None,
        }
    }

    fn upsert(key: &str, value: &str) -> Change {
        Change::Upsert {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn delete(key: &str) -> Change {
        Change::Delete {
            key: key.as_bytes().to_vec(),
        }
    }

    fn one_partition_table(end_offset: i64) -> (Table, Arc<PartitionState>) {
        let table = Table::new(&config("t"));
        table.set_initial_partitions([PartitionState::new(0, 0, end_offset)]);
        let p = table.partition(0).unwrap();
        (table, p)
    }

    #[test]
    fn the_map_is_sized_for_the_log_before_loading() {
        let table = Table::new(&config("t"));
        table.set_initial_partitions([
            PartitionState::new(0, 10, 50_010),
            PartitionState::new(1, 0, 30_000),
        ]);
        let capacity: usize = table.entries.shards().iter().map(|s| s.read().capacity()).sum();
        assert!(capacity >= 80_000, "{capacity}");
        // Far more than the cap is not reserved: a topic of updates must not take the memory.
        let huge = Table::new(&config("huge"));
        huge.set_initial_partitions([PartitionState::new(0, 0, 1 << 40)]);
        let capacity: usize = huge.entries.shards().iter().map(|s| s.read().capacity()).sum();
        assert!(capacity < 20 << 20, "{capacity}");
    }

    #[test]
    fn prepared_records_apply_like_changes() {
        let (table, p) = one_partition_table(3);
        // Prepared on another thread, applied here, in offset order.
        let prepared = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    [(0, upsert("a", "1")), (1, upsert("b", "2")), (2, delete("a"))]
                        .map(|(offset, change)| table.prepare(0, offset, Some(1000 + offset), change))
                })
                .join()
                .unwrap()
        });
        let applied: Vec<Applied> = prepared
            .into_iter()
            .enumerate()
            .map(|(offset, change)| {
                table.apply_prepared(&p, offset as i64, Some(1000 + offset as i64), change)
            })
            .collect();
        assert_eq!(applied, [Applied::Upserted, Applied::Upserted, Applied::Deleted]);
        assert_eq!(table.get(b"a"), None);
        assert_eq!(table.get(b"b").unwrap().value, Bytes::from_static(b"2"));
        assert_eq!(table.get(b"b").unwrap().offset, 1);
        assert_eq!(p.position(), 3);
    }

    #[test]
    fn upsert_delete_and_last_write_wins() {
        let (table, p) = one_partition_table(100);
        assert_eq!(
            table.apply(&p, 0, Some(1000), upsert("a", "1")),
            Applied::Upserted
        );
        table.apply(&p, 1, Some(1001), upsert("b", "2"));
        table.apply(&p, 2, Some(1002), upsert("a", "3"));
        let a = table.get(b"a").unwrap();
        assert_eq!(a.value, Bytes::from_static(b"3"));
        assert_eq!((a.partition, a.offset, a.timestamp_ms), (0, 2, 1002));
        assert_eq!(table.apply(&p, 3, None, delete("b")), Applied::Deleted);
        assert_eq!(table.get(b"b"), None);
        assert_eq!(table.len(), 1);
        assert_eq!(table.data_bytes(), 2, "key a + value 3");
    }

    #[test]
    fn get_many_answers_in_key_order_like_get() {
        let (table, p) = one_partition_table(100);
        table.apply(&p, 0, Some(1000), upsert("a", "first"));
        table.apply(&p, 1, None, upsert("b", ""));
        table.apply(&p, 2, Some(1002), upsert("c", "third value"));
        let keys: [&[u8]; 5] = [b"c", b"missing", b"a", b"b", b"c"];
        let many = table.get_many(&keys, usize::MAX).unwrap();
        let one_by_one: Vec<_> = keys.iter().map(|k| table.get(k)).collect();
        assert_eq!(many, one_by_one);
        assert_eq!(
            many[0].as_ref().unwrap().value,
            Bytes::from_static(b"third value")
        );
        assert_eq!(many[1], None);
        assert_eq!(many[3].as_ref().unwrap().offset, 1);
        assert!(table.get_many::<&[u8]>(&[], 1024).unwrap().is_empty());
        // Values beyond the limit: refused before the buffer is built.
        let big = table.get_many(&[b"c", b"a", b"c"], 20).unwrap_err();
        assert_eq!(
            big.keys_answered, 2,
            "11 + 5 bytes fit in 20, the third value does not"
        );
        assert_eq!(table.get_many(&[b"c", b"a"], 16).unwrap().len(), 2);
    }

    /// What include_initial relies on: rows read shard by shard while ingest goes on, plus the
    /// changes numbered after the start that the rows do not already show, are the table,
    /// and no change is both in the rows and sent.
    #[test]
    fn rows_read_during_changes_plus_the_changes_not_shown_are_the_table() {
        let (table, p) = one_partition_table(1_000_000);
        let table = Arc::new(table);
        for offset in 0..2_000 {
            table.apply(&p, offset, None, upsert(&format!("k{offset}"), "0"));
        }
        let feed = table.start_feed(FeedSettings {
            history_events: 1_000_000,
            history_bytes: 1 << 30,
        });
        table.publish_changes();
        assert!(feed.is_acknowledged());
        let start = feed.assigned() + 1;
        let writer = {
            let (table, p) = (table.clone(), p.clone());
            std::thread::spawn(move || {
                for offset in 2_000..200_000i64 {
                    let key = format!("k{}", offset % 3_000);
                    let change = if offset % 5 == 0 {
                        delete(&key)
                    } else {
                        upsert(&key, &offset.to_string())
                    };
                    table.apply(&p, offset, None, change);
                    if offset % 64 == 0 {
                        table.publish_changes();
                    }
                }
                table.publish_changes();
            })
        };
        let mut view = HashMap::new();
        let mut shown = Vec::new();
        let mut overlapped = 0;
        for shard in 0..table.shard_count() {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let (seq, rows) = table.watch_shard(shard, None, |_| true);
            overlapped += usize::from(seq >= start);
            shown.push(seq);
            for row in rows {
                let (key, found) = table.held_row(&row);
                view.insert(key, (found.value, found.offset));
            }
        }
        writer.join().unwrap();
        assert!(overlapped > 0, "the writer ran while rows were read");
        let mut events = Vec::new();
        feed.read(start, usize::MAX, &mut events).unwrap();
        for (seq, event) in events {
            if table.already_shown(&shown, seq, &event.key) {
                continue;
            }
            if let Some((_, offset)) = view.get(&event.key) {
                assert!(*offset < event.offset, "change {seq} repeats a row read");
            }
            match event.value {
                Some(value) => view.insert(event.key, (value, event.offset)),
                None => view.remove(&event.key),
            };
        }
        let mut table_now = HashMap::new();
        table.for_each_record(|key, value, origin| {
            table_now.insert(
                Bytes::copy_from_slice(key),
                (Bytes::copy_from_slice(value), origin.offset),
            );
        });
        assert_eq!(view.len(), table_now.len());
        assert!(view == table_now, "rows plus changes differ from the table");
    }

    #[test]
    fn readers_never_see_a_key_missing_while_it_is_overwritten() {
        let (table, p) = one_partition_table(1_000_000);
        table.apply(&p, 0, None, upsert("k", "0"));
        let table = Arc::new(table);
        let writer = {
            let table = table.clone();
            std::thread::spawn(move || {
                for offset in 1..20_000 {
                    let value = if offset % 2 == 0 {
                        "short"
                    } else {
                        "a longer value"
                    };
                    table.apply(&p, offset, None, upsert("k", value));
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() || reads == 0 {
            let found = table.get(b"k").expect("an overwrite never removes the key");
            // Value and origin come from one record: an even offset wrote "short".
            let want: &[u8] = match found.offset {
                0 => b"0",
                o if o % 2 == 0 => b"short",
                _ => b"a longer value",
            };
            assert_eq!(found.value.as_ref(), want, "offset {}", found.offset);
            reads += 1;
        }
        writer.join().unwrap();
        assert!(reads > 1, "the reader ran alongside the writer ({reads} reads)");
        assert_eq!(table.data_bytes(), 1 + "a longer value".len() as u64);
    }

    #[test]
    fn empty_value_is_stored_not_deleted() {
        let (table, p) = one_partition_table(10);
        table.apply(&p, 0, None, upsert("k", ""));
        let found = table.get(b"k").expect("empty value is a value");
        assert!(found.value.is_empty());
        assert_eq!(found.timestamp_ms, -1, "no timestamp is reported as -1");
    }

    #[test]
    fn redelivered_offsets_are_ignored() {
        let (table, p) = one_partition_table(10);
        table.apply(&p, 0, None, upsert("k", "old"));
        table.apply(&p, 1, None, upsert("k", "new"));
        assert_eq!(table.apply(&p, 0, None, upsert("k", "old")), Applied::Duplicate);
        assert_eq!(table.apply(&p, 1, None, delete("k")), Applied::Duplicate);
        assert_eq!(table.get(b"k").unwrap().value, Bytes::from_static(b"new"));
    }

    #[test]
    fn truncate_clears_what_its_partition_wrote() {
        let table = Table::new(&config("t"));
        table.set_initial_partitions([PartitionState::new(0, 0, 10), PartitionState::new(1, 0, 10)]);
        let (p0, p1) = (table.partition(0).unwrap(), table.partition(1).unwrap());
        table.apply(&p0, 0, None, upsert("a", "1"));
        table.apply(&p0, 1, None, upsert("b", "1"));
        table.apply(&p1, 0, None, upsert("c", "22"));
        assert_eq!(table.apply(&p0, 2, None, Change::Truncate), Applied::Truncated);
        assert_eq!(table.get(b"a"), None);
        assert_eq!(table.get(b"b"), None);
        assert_eq!(
            table.get(b"c").unwrap().value,
            Bytes::from_static(b"22"),
            "another partition's key stays"
        );
        assert_eq!(table.data_bytes(), 3);
        table.apply(&p0, 3, None, upsert("d", "1"));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn skipped_records_count_and_advance() {
        let (table, p) = one_partition_table(2);
        table.skip(&p, 0, None);
        table.skip(&p, 0, None); // a redelivered skip is not counted twice
        assert_eq!(table.skipped(), 1);
        table.skip(&p, 1, None);
        assert_eq!(p.position(), 2, "skipped records are passed");
    }

    #[test]
    fn readiness_waits_for_every_partition_and_every_table() {
        let store = Store::new(&[config("a"), config("b")]);
        let [a, b] = store.tables() else { unreachable!() };
        assert!(!a.all_caught_up(), "unknown partitions are not caught up");
        a.set_initial_partitions([PartitionState::new(0, 0, 1), PartitionState::new(1, 0, 0)]);
        b.set_initial_partitions([PartitionState::new(0, 5, 5)]);
        assert!(b.partition(0).unwrap().reached_end(Some(5)));
        assert!(
            store.note_caught_up(b),
            "an empty table is ready at its first end of partition"
        );
        assert!(!store.ready().is_open());
        let p0 = a.partition(0).unwrap();
        a.apply(&p0, 0, None, upsert("k", "v"));
        assert!(!store.note_caught_up(a), "the end offset alone is not the end");
        assert!(a.partition(1).unwrap().reached_end(Some(0)));
        assert!(p0.reached_end(Some(1)));
        assert!(store.note_caught_up(a));
        assert!(store.ready().is_open());
        assert!(a.bootstrap_duration().is_some());
        assert!(!store.note_caught_up(a), "ready only once");
    }

    #[test]
    fn table_lookup_by_name() {
        let store = Store::new(&[config("a"), config("b")]);
        assert_eq!(store.table("b").unwrap().name(), "b");
        let err = store.table("").unwrap_err();
        assert_eq!(
            err.to_string(),
            "table is required: this server has 2 tables (a, b)"
        );
        let err = store.table("c").unwrap_err();
        assert_eq!(err.to_string(), "unknown table \"c\"; configured tables: a, b");
        let single = Store::new(&[config("only")]);
        assert_eq!(single.table("").unwrap().name(), "only");
    }

    #[test]
    fn progress_reports_read_share_of_start_up_log() {
        let table = Table::new(&config("t"));
        table.set_initial_partitions([PartitionState::new(0, 0, 100), PartitionState::new(1, 50, 150)]);
        let p1 = table.partition(1).unwrap();
        table.apply(&p1, 89, None, upsert("k", "v"));
        let progress = table.progress();
        assert_eq!((progress.read, progress.total), (40, 200));
        assert_eq!((progress.partitions, progress.partitions_caught_up), (2, 0));
    }

    /// A record as the consumer may see it: redelivered, out of step across partitions, with gaps.
    #[derive(Debug, Clone)]
    struct LogRecord {
        partition: i32,
        offset: i64,
        key: u8,
        value: Option<u8>,
    }

    fn arbitrary_logs() -> impl Strategy<Value = (Vec<LogRecord>, Vec<usize>)> {
        // Per partition, strictly increasing offsets with gaps (compaction), keys from a small set
        // so that overwrites and deletes collide. Keys are partitioned as a producer would.
        let partition_log = |partition: i32| {
            prop::collection::vec((1i64..4, 0u8..6, prop::option::weighted(0.8, any::<u8>())), 0..40)
                .prop_map(move |steps| {
                    let mut offset = -1;
                    steps
                        .into_iter()
                        .map(|(gap, key, value)| {
                            offset += gap;
                            LogRecord {
                                partition,
                                offset,
                                key: key * 3 + partition as u8,
                                value,
                            }
                        })
                        .collect::<Vec<_>>()
                })
        };
        (partition_log(0), partition_log(1), partition_log(2)).prop_flat_map(|(a, b, c)| {
            let logs = vec![a, b, c];
            let total: usize = logs.iter().map(Vec::len).sum();
            // A delivery schedule: indexes into the logs' concatenation, replayed with rewinds.
            let flat: Vec<LogRecord> = logs.into_iter().flatten().collect();
            (
                Just(flat),
                prop::collection::vec(0..total.max(1), 0..(total * 2 + 1)),
            )
        })
    }

    proptest! {
        #[test]
        fn map_equals_last_write_per_key((log, rewinds) in arbitrary_logs()) {
            let table = Table::new(&config("t"));
            table.set_initial_partitions((0..3).map(|p| PartitionState::new(p, 0, 1000)));
            // Deliver each partition in offset order, but after each rewind point replay a
            // stretch of already-delivered records, as brokers and restarts do.
            let mut delivered: Vec<&LogRecord> = Vec::new();
            for (i, record) in log.iter().enumerate() {
                delivered.push(record);
                if rewinds.contains(&i) {
                    let replay: Vec<&LogRecord> = delivered.iter().rev().take(5).rev().copied().collect();
                    for old in replay {
                        deliver(&table, old);
                    }
                }
                deliver(&table, record);
            }
            let mut expected: HashMap<u8, (u8, i64)> = HashMap::new();
            for record in &log {
                match record.value {
                    Some(v) => { expected.insert(record.key, (v, record.offset)); }
                    None => { expected.remove(&record.key); }
                }
            }
            prop_assert_eq!(table.len(), expected.len());
            for (key, (value, offset)) in &expected {
                let found = table.get(&[*key]).expect("live key present");
                prop_assert_eq!(found.value.as_ref(), &[*value]);
                prop_assert_eq!(found.offset, *offset);
            }
            prop_assert_eq!(table.data_bytes(), 2 * expected.len() as u64);
        }
    }

    /// One partition's log where keys also appear in the other partition (a key whose bytes
    /// changed moves between partitions): (key, value or delete, timestamp), timestamps rising.
    fn shared_key_log() -> impl Strategy<Value = Vec<(u8, Option<u8>, i64)>> {
        prop::collection::vec((0u8..4, prop::option::weighted(0.7, any::<u8>()), 1i64..5), 0..25).prop_map(
            |steps| {
                let mut ts = 0;
                steps
                    .into_iter()
                    .map(|(key, value, step)| {
                        ts += step;
                        (key, value, ts)
                    })
                    .collect()
            },
        )
    }

    fn replay(logs: &[Vec<(u8, Option<u8>, i64)>; 2], order: &[usize]) -> Vec<(u8, Option<Found>)> {
        let table = Table::new(&config("t"));
        table.set_initial_partitions((0..2).map(|p| PartitionState::new(p, 0, 1000)));
        let mut next = [0usize; 2];
        for &p in order {
            let Some(&(key, value, ts)) = logs[p].get(next[p]) else {
                continue;
            };
            let partition = table.partition(p as i32).unwrap();
            let change = match value {
                Some(v) => Change::Upsert {
                    key: vec![key],
                    value: vec![v],
                },
                None => Change::Delete { key: vec![key] },
            };
            table.apply(&partition, next[p] as i64, Some(ts), change);
            next[p] += 1;
        }
        (0..4u8).map(|k| (k, table.get(&[k]))).collect()
    }

    proptest! {
        /// During bootstrap the partitions are replayed in no particular order: whatever the
        /// interleaving, every key ends the same (the newest record by timestamp and partition).
        #[test]
        fn keys_in_two_partitions_do_not_depend_on_replay_order(
            log0 in shared_key_log(),
            log1 in shared_key_log(),
            interleaving in prop::collection::vec(0usize..2, 0..120),
        ) {
            let logs = [log0, log1];
            let total = logs[0].len() + logs[1].len();
            let first_all_0: Vec<usize> = std::iter::repeat_n(0, logs[0].len()).chain(std::iter::repeat_n(1, logs[1].len())).collect();
            let first_all_1: Vec<usize> = std::iter::repeat_n(1, logs[1].len()).chain(std::iter::repeat_n(0, logs[0].len())).collect();
            // The random interleaving, then whatever it left of each log.
            let mut mixed = interleaving;
            mixed.extend(std::iter::repeat_n(0, total));
            mixed.extend(std::iter::repeat_n(1, total));
            let a = replay(&logs, &first_all_0);
            prop_assert_eq!(&a, &replay(&logs, &first_all_1));
            prop_assert_eq!(&a, &replay(&logs, &mixed));
        }
    }

    fn deliver(table: &Table, record: &LogRecord) {
        let p = table.partition(record.partition).unwrap();
        let change = match record.value {
            Some(v) => Change::Upsert {
                key: vec![record.key],
                value: vec![v],
            },
            None => Change::Delete {
                key: vec![record.key],
            },
        };
        table.apply(&p, record.offset, None, change);
    }
}
