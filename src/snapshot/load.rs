//! Choosing and loading a snapshot at start-up. A snapshot is used only if it is of this table
//! (same topic and format), young enough that compaction cannot have dropped a tombstone it
//! would need, and every partition's position lies within the broker's current log. Anything
//! else is refused with the reason, and the next older snapshot is tried; none left means a cold
//! start from the log start, which is always correct.

use std::collections::BTreeMap;
use std::time::Duration;

use super::format::{self, Metadata};
use super::local::{self, LocalSnapshots};
use crate::store::Table;

/// How a table's bootstrap began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Loaded {
        path: String,
        age: Duration,
        records: u64,
        /// Snapshots refused before this one was found, with why.
        refused: Vec<String>,
    },
    ColdStart {
        /// Every snapshot found, with why it was not used (empty: there was none).
        refused: Vec<String>,
    },
}

/// Whether a snapshot's metadata fits the table and the log as the broker has it now:
/// `bounds` maps each partition to its `(log start, end)`.
pub fn check(
    metadata: &Metadata,
    table: &Table,
    bounds: &BTreeMap<i32, (i64, i64)>,
    max_age: Duration,
    now_ms: i64,
) -> Result<(), String> {
    if metadata.table != table.name() || metadata.topic != table.topic() {
        return Err(format!(
            "it is of table {} (topic {}), not of table {} (topic {})",
            metadata.table,
            metadata.topic,
            table.name(),
            table.topic()
        ));
    }
    if metadata.format != table.format().as_str() {
        return Err(format!(
            "it was decoded as {}, the table is {}",
            metadata.format,
            table.format()
        ));
    }
    let projection = table.projection().map(ToString::to_string);
    if metadata.projection != projection {
        let columns = |p: &Option<String>| {
            p.as_ref()
                .map_or("every column".to_string(), |c| format!("columns {c}"))
        };
        return Err(format!(
            "its rows kept {}, the table keeps {} (--project)",
            columns(&metadata.projection),
            columns(&projection)
        ));
    }
    let age = now_ms.saturating_sub(metadata.created_at_ms).max(0) as u64;
    if Duration::from_millis(age) > max_age {
        return Err(format!(
            "it is {} old, more than --snapshot-max-age {} (compaction may have dropped deletes it would need)",
            humantime::format_duration(Duration::from_secs(age / 1000)),
            humantime::format_duration(max_age)
        ));
    }
    for p in &metadata.partitions {
        let Some(&(log_start, end)) = bounds.get(&p.partition) else {
            return Err(format!("partition {} no longer exists", p.partition));
        };
        if p.position < log_start || p.position > end {
            return Err(format!(
                "partition {} position {} is outside the log [{log_start}, {end}] (the log was reset or truncated since)",
                p.partition, p.position
            ));
        }
    }
    Ok(())
}

/// Loads the newest usable snapshot of `table` into it and restores its partitions' positions;
/// the partitions must be registered.
///
/// `positioned` is called once a candidate's positions are in the partitions and before its
/// records are read, so the caller can start fetching from Kafka while the records load (the
/// fetch then overlaps the load instead of following it). If the candidate turns out damaged,
/// the positions go back to the log start and the next candidate calls it again; after a cold
/// start the partitions are at their log start.
pub fn load_newest(
    snapshots: &LocalSnapshots,
    table: &Table,
    bounds: &BTreeMap<i32, (i64, i64)>,
    max_age: Duration,
    now_ms: i64,
    mut positioned: impl FnMut(),
) -> Outcome {
    let mut refused = Vec::new();
    for candidate in snapshots.candidates(table.name()) {
        let name = candidate.path.display().to_string();
        let metadata = match local::open(&candidate.path).and_then(|mut f| format::read_metadata(&mut f)) {
            Ok(metadata) => metadata,
            Err(e) => {
                refused.push(format!("{name}: {e}"));
                continue;
            }
        };
        if let Err(reason) = check(&metadata, table, bounds, max_age, now_ms) {
            refused.push(format!("{name}: {reason}"));
            continue;
        }
        let file = match local::open(&candidate.path) {
            Ok(file) => file,
            Err(e) => {
                refused.push(format!("{name}: {e}"));
                continue;
            }
        };
        for p in &metadata.partitions {
            if let Some(state) = table.partition(p.partition) {
                state.restore_position(p.position);
            }
        }
        positioned();
        match read_into(file, table) {
            Ok((metadata, records)) => {
                return Outcome::Loaded {
                    path: name,
                    age: Duration::from_millis(now_ms.saturating_sub(metadata.created_at_ms).max(0) as u64),
                    records,
                    refused,
                };
            }
            Err(e) => {
                // Records read before the damage was found are not trusted.
                table.clear();
                for state in table.partitions() {
                    state.restore_position(state.log_start());
                }
                refused.push(format!("{name}: {e}"));
            }
        }
    }
    Outcome::ColdStart { refused }
}

/// Records decoded and not yet in the map: one flat buffer of keys and values, and where each
/// record's parts are. Batches keep the hand-over between the two threads cheap.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// (key length, value length, partition, offset, timestamp), in order.
    records: Vec<(u32, u32, i32, i64, i64)>,
}

/// Records per batch handed from the decoding thread to the inserting one.
const BATCH_RECORDS: usize = 4096;

/// Reads a snapshot into `table` on two threads: this one decompresses and checks, a scoped one
/// inserts. The warm start of a million events took a quarter less time than with one thread
/// doing both (before/after in BENCHMARKS.md).
fn read_into(file: impl std::io::BufRead, table: &Table) -> Result<(Metadata, u64), format::SnapshotError> {
    let (send, receive) = std::sync::mpsc::sync_channel::<Batch>(4);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for batch in receive {
                let mut at = 0;
                for &(key_len, value_len, partition, offset, timestamp_ms) in &batch.records {
                    let key = &batch.bytes[at..at + key_len as usize];
                    at += key_len as usize;
                    let value = &batch.bytes[at..at + value_len as usize];
                    at += value_len as usize;
                    table.restore(key, value, partition, offset, timestamp_ms);
                }
            }
        });
        let mut batch = Batch::default();
        let result = format::read(file, |r| {
            batch.bytes.extend_from_slice(&r.key);
            batch.bytes.extend_from_slice(&r.value);
            batch.records.push((
                r.key.len() as u32,
                r.value.len() as u32,
                r.partition,
                r.offset,
                r.timestamp_ms,
            ));
            if batch.records.len() == BATCH_RECORDS {
                // The inserting thread only ends when this side drops the sender.
                let _ = send.send(std::mem::take(&mut batch));
            }
        });
        if !batch.records.is_empty() {
            let _ = send.send(batch);
        }
        drop(send);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TableConfig;
    use crate::format::Format;
    use crate::snapshot::format::PartitionPosition;
    use crate::store::{Change, PartitionState};

    fn table(topic: &str) -> Table {
        let table = Table::new(&TableConfig {
            topic: topic.into(),
            table: "orders".into(),
            format: Format::Raw,
            compression: Default::default(),
            projection: None,
        });
        table.set_initial_partitions([PartitionState::new(0, 0, 100)]);
        table
    }

    fn metadata(position: i64, created_at_ms: i64) -> Metadata {
        Metadata {
            table: "orders".into(),
            topic: "orders".into(),
            format: "raw".into(),
            projection: None,
            partitions: vec![PartitionPosition {
                partition: 0,
                position,
            }],
            created_at_ms,
            writer: "test".into(),
        }
    }

    #[test]
    fn only_a_matching_young_snapshot_within_the_log_is_used() {
        let orders = table("orders");
        let bounds = BTreeMap::from([(0, (10, 100))]);
        let day = Duration::from_secs(86_400);
        let now = 1_700_000_000_000;
        assert_eq!(
            check(&metadata(50, now - 1000), &orders, &bounds, day, now),
            Ok(())
        );
        let cases = [
            (metadata(5, now), "outside the log [10, 100]"),
            (metadata(101, now), "outside the log"),
            (metadata(50, now - 2 * 86_400_000), "more than --snapshot-max-age"),
        ];
        for (meta, want) in cases {
            let error = check(&meta, &orders, &bounds, day, now).unwrap_err();
            assert!(error.contains(want), "{error}");
        }
        let other = table("payments");
        let error = check(&metadata(50, now), &other, &bounds, day, now).unwrap_err();
        assert!(error.contains("topic orders"), "{error}");
        let error = check(&metadata(50, now), &orders, &BTreeMap::new(), day, now).unwrap_err();
        assert!(error.contains("partition 0 no longer exists"), "{error}");
        // Rows kept with other columns than the table keeps now.
        let projected = metadata(50, now);
        let projected = Metadata {
            projection: Some("email,id".into()),
            ..projected
        };
        let error = check(&projected, &orders, &bounds, day, now).unwrap_err();
        assert!(
            error.contains("kept columns email,id, the table keeps every column (--project)"),
            "{error}"
        );
    }

    #[test]
    fn a_damaged_newest_snapshot_falls_back_to_an_older_one_and_then_to_a_cold_start() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = LocalSnapshots::new(dir.path(), 5);
        let source = table("orders");
        let p = source.partition(0).unwrap();
        for offset in 0..20 {
            source.apply(
                &p,
                offset,
                Some(offset),
                Change::Upsert {
                    key: format!("k{offset}").into_bytes(),
                    value: b"v".to_vec(),
                },
            );
        }
        let older = snapshots.write(&source).unwrap();
        std::thread::sleep(Duration::from_millis(3));
        let newer = snapshots.write(&source).unwrap();
        // Damage the newest: cut it short.
        let bytes = std::fs::read(&newer.path).unwrap();
        std::fs::write(&newer.path, &bytes[..bytes.len() - 7]).unwrap();

        let bounds = BTreeMap::from([(0, (0, 20))]);
        let mut positioned = 0;
        let restored = table("orders");
        let outcome = load_newest(
            &snapshots,
            &restored,
            &bounds,
            Duration::from_secs(60),
            crate::clock::now_ms(),
            || positioned += 1,
        );
        let Outcome::Loaded {
            path,
            records,
            refused,
            ..
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(path, older.path.display().to_string());
        assert_eq!(records, 20);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(restored.len(), 20);
        assert_eq!(restored.partition(0).unwrap().position(), 20);
        assert_eq!(positioned, 2, "the damaged candidate and the one loaded");

        // Both damaged: a cold start, with both reasons, and nothing half-loaded.
        let bytes = std::fs::read(&older.path).unwrap();
        std::fs::write(&older.path, &bytes[..bytes.len() / 2]).unwrap();
        let cold = table("orders");
        let outcome = load_newest(
            &snapshots,
            &cold,
            &bounds,
            Duration::from_secs(60),
            crate::clock::now_ms(),
            || positioned += 1,
        );
        assert!(
            matches!(&outcome, Outcome::ColdStart { refused } if refused.len() == 2),
            "{outcome:?}"
        );
        assert!(cold.is_empty());
        assert_eq!(cold.partition(0).unwrap().position(), 0);
        // The older one is cut inside its metadata: refused before its positions are used.
        assert_eq!(positioned, 3, "{outcome:?}");
    }
}
