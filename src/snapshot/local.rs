//! Snapshots in a local directory (an `emptyDir` that survives container restarts):
//! `DIR/<table>/<created ms>-<pid>-<random>.cdcsnap`, written under a hidden temporary name and
//! renamed into place once complete, so a reader never sees a half-written file; several writers
//! never collide; the newest files are kept and older ones pruned.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;

use super::format::{self, Metadata, PartitionPosition, SnapshotError};
use crate::clock::now_ms;
use crate::store::Table;

const EXTENSION: &str = "cdcsnap";

/// A snapshot file found in the directory, newest first when listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub created_at_ms: i64,
}

/// What writing a snapshot did.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    pub entries: u64,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct LocalSnapshots {
    dir: PathBuf,
    keep: usize,
}

impl LocalSnapshots {
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            dir: dir.into(),
            keep: keep.max(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn table_dir(&self, table: &str) -> PathBuf {
        self.dir.join(table)
    }

    /// The table's complete snapshots, newest first.
    pub fn candidates(&self, table: &str) -> Vec<Candidate> {
        let Ok(entries) = fs::read_dir(self.table_dir(table)) else {
            return Vec::new();
        };
        let mut found: Vec<Candidate> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let path = entry.path();
                let name = path.file_name()?.to_str()?;
                if name.starts_with('.') || path.extension()?.to_str()? != EXTENSION {
                    return None;
                }
                let created_at_ms = name.split('-').next()?.parse().ok()?;
                Some(Candidate { path, created_at_ms })
            })
            .collect();
        found.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.path.cmp(&a.path)));
        found
    }

    /// Writes a snapshot of `table`: the partition positions are taken first, then the records
    /// are read from the live map (ingest goes on; any record newer than a position is read
    /// again from Kafka on load, which converges to the same map). Prunes older snapshots.
    pub fn write(&self, table: &Table) -> Result<Written, SnapshotError> {
        let started = Instant::now();
        let dir = self.table_dir(table.name());
        fs::create_dir_all(&dir)?;
        let created_at_ms = now_ms();
        let name = format!(
            "{created_at_ms:013}-{}-{:08x}.{EXTENSION}",
            std::process::id(),
            rand::rng().random::<u32>()
        );
        let metadata = Metadata {
            table: table.name().to_string(),
            topic: table.topic().to_string(),
            format: table.format().to_string(),
            projection: table.projection().map(ToString::to_string),
            partitions: table
                .partitions()
                .iter()
                .map(|p| PartitionPosition {
                    partition: p.partition(),
                    position: p.position(),
                })
                .collect(),
            created_at_ms,
            writer: concat!("cdc-cache ", env!("CARGO_PKG_VERSION")).to_string(),
        };
        let temporary = dir.join(format!(".{name}.tmp"));
        let result = (|| {
            let file = File::create(&temporary)?;
            let mut writer = format::Writer::new(BufWriter::with_capacity(1 << 20, file), &metadata)?;
            let mut entries = 0u64;
            let mut failure = None;
            table.for_each_record(|key, value, origin| {
                if failure.is_none() {
                    entries += 1;
                    if let Err(e) =
                        writer.record(key, value, origin.partition, origin.offset, origin.timestamp_ms)
                    {
                        failure = Some(e);
                    }
                }
            });
            if let Some(e) = failure {
                return Err(SnapshotError::Io(e));
            }
            let mut out = writer.finish()?;
            out.flush()?;
            let file = out.into_inner().map_err(|e| SnapshotError::Io(e.into_error()))?;
            file.sync_all()?;
            Ok(entries)
        })();
        let entries = match result {
            Ok(entries) => entries,
            Err(e) => {
                let _ = fs::remove_file(&temporary);
                return Err(e);
            }
        };
        let path = dir.join(&name);
        fs::rename(&temporary, &path)?;
        // The rename is durable once the directory is.
        if let Ok(dir) = File::open(&dir) {
            let _ = dir.sync_all();
        }
        let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.prune(table.name());
        Ok(Written {
            path,
            bytes,
            entries,
            duration: started.elapsed(),
        })
    }

    /// Keeps the newest `keep` snapshots; removes older ones and temporaries left by a crash.
    pub fn prune(&self, table: &str) {
        for old in self.candidates(table).into_iter().skip(self.keep) {
            let _ = fs::remove_file(old.path);
        }
        let Ok(entries) = fs::read_dir(self.table_dir(table)) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            // A temporary this old belongs to a writer that died.
            if name.starts_with('.') && name.ends_with(".tmp") && stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Opens a snapshot file for [`format::read`].
pub fn open(path: &Path) -> Result<BufReader<File>, SnapshotError> {
    Ok(BufReader::with_capacity(1 << 20, File::open(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TableConfig;
    use crate::format::Format;
    use crate::store::{Change, PartitionState};

    fn table() -> Table {
        let table = Table::new(&TableConfig {
            topic: "orders".into(),
            table: "orders".into(),
            format: Format::Raw,
            compression: Default::default(),
            projection: None,
        });
        table.set_initial_partitions([PartitionState::new(0, 0, 10), PartitionState::new(1, 0, 10)]);
        for (p, offset, key) in [(0, 0, "a"), (0, 1, "b"), (1, 0, "c")] {
            let partition = table.partition(p).unwrap();
            table.apply(
                &partition,
                offset,
                Some(1000 + offset),
                Change::Upsert {
                    key: key.into(),
                    value: format!("{key}-value").into_bytes(),
                },
            );
        }
        table
    }

    #[test]
    fn written_snapshots_are_listed_newest_first_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = LocalSnapshots::new(dir.path(), 2);
        let table = table();
        let mut written = Vec::new();
        for _ in 0..3 {
            written.push(snapshots.write(&table).unwrap());
            std::thread::sleep(Duration::from_millis(3));
        }
        assert_eq!(written[2].entries, 3);
        let listed = snapshots.candidates("orders");
        assert_eq!(listed.len(), 2, "pruned to the newest two");
        assert_eq!(listed[0].path, written[2].path);
        assert_eq!(listed[1].path, written[1].path);
        let mut keys = Vec::new();
        let (metadata, count) =
            format::read(open(&listed[0].path).unwrap(), |r| keys.push(r.key.clone())).unwrap();
        assert_eq!(count, 3);
        keys.sort();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(metadata.topic, "orders");
        let positions: Vec<_> = metadata
            .partitions
            .iter()
            .map(|p| (p.partition, p.position))
            .collect();
        assert_eq!(positions, vec![(0, 2), (1, 1)]);
    }

    #[test]
    fn temporaries_and_foreign_files_are_not_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = LocalSnapshots::new(dir.path(), 2);
        fs::create_dir_all(dir.path().join("orders")).unwrap();
        fs::write(dir.path().join("orders/.1700000000000-1-0.cdcsnap.tmp"), b"half").unwrap();
        fs::write(dir.path().join("orders/notes.txt"), b"x").unwrap();
        assert!(snapshots.candidates("orders").is_empty());
        assert!(snapshots.candidates("missing").is_empty());
    }
}
