//! The snapshot file: what a table held and where each partition was, in one self-checking file.
//!
//! ```text
//! "CDCSNAP\0"  u32 LE format version  u32 LE metadata length  metadata (JSON)
//! zstd frame: records, each [varint key len][key][varint value len][value]
//!                           [varint partition][varint offset][zigzag varint timestamp]
//! "CDCSEND\0"  u64 LE record count  u32 LE CRC-32 of the metadata and the uncompressed records
//! ```
//!
//! Pure over `io::Read`/`io::Write`: no files or tables here, so every corruption is a unit test.
//! A reader that finds anything amiss (wrong magic or version, a short file, a count or checksum
//! that does not match) refuses the whole snapshot: a half-written or damaged file is never loaded.

use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"CDCSNAP\0";
const END_MAGIC: &[u8; 8] = b"CDCSEND\0";
pub const FORMAT_VERSION: u32 = 1;
/// Metadata larger than this is not ours (a guard against reading a huge length from garbage).
const MAX_METADATA_BYTES: u32 = 16 << 20;
/// zstd level 1: the fastest, and CDC rows still shrink several times.
const ZSTD_LEVEL: i32 = 1;

/// What a snapshot is of, checked against the configuration and the broker before it is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub table: String,
    pub topic: String,
    /// The row format the records were decoded with (`raw`, `debezium`).
    pub format: String,
    /// The columns the rows kept (`--project`, sorted, comma-separated); absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<String>,
    /// Where each partition's records end: loading resumes every partition here.
    pub partitions: Vec<PartitionPosition>,
    /// Wall clock when the positions were taken, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// The cdc-cache version that wrote it (informational).
    pub writer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPosition {
    pub partition: i32,
    /// Next offset to read: every record below it is in the snapshot (or was deleted).
    pub position: i64,
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a cdc-cache snapshot (bad magic)")]
    Magic,
    #[error("snapshot format version {0}; this cdc-cache reads version {FORMAT_VERSION}")]
    Version(u32),
    #[error("snapshot metadata: {0}")]
    Metadata(String),
    #[error("snapshot is truncated or damaged: {0}")]
    Damaged(String),
    #[error("snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("snapshot record count mismatch (stored {stored}, read {read})")]
    Count { stored: u64, read: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Writes a snapshot: the metadata, then records fed one at a time, then the trailer.
pub struct Writer<W: Write> {
    encoder: zstd::stream::write::Encoder<'static, W>,
    crc: crc32fast::Hasher,
    count: u64,
    scratch: Vec<u8>,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, metadata: &Metadata) -> Result<Self, SnapshotError> {
        let json = serde_json::to_vec(metadata).map_err(|e| SnapshotError::Metadata(e.to_string()))?;
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&(json.len() as u32).to_le_bytes())?;
        out.write_all(&json)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&json);
        Ok(Self {
            encoder: zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?,
            crc,
            count: 0,
            scratch: Vec::with_capacity(256),
        })
    }

    pub fn record(
        &mut self,
        key: &[u8],
        value: &[u8],
        partition: i32,
        offset: i64,
        timestamp_ms: i64,
    ) -> io::Result<()> {
        let buf = &mut self.scratch;
        buf.clear();
        put_varint(buf, key.len() as u64);
        buf.extend_from_slice(key);
        put_varint(buf, value.len() as u64);
        buf.extend_from_slice(value);
        put_varint(buf, partition as u32 as u64);
        put_varint(buf, offset as u64);
        put_varint(buf, zigzag(timestamp_ms));
        self.crc.update(buf);
        self.count += 1;
        self.encoder.write_all(buf)
    }

    /// Ends the compressed records and writes the trailer; returns the inner writer.
    pub fn finish(self) -> Result<W, SnapshotError> {
        let mut out = self.encoder.finish()?;
        out.write_all(END_MAGIC)?;
        out.write_all(&self.count.to_le_bytes())?;
        out.write_all(&self.crc.finalize().to_le_bytes())?;
        out.flush()?;
        Ok(out)
    }
}

/// Reads the metadata only: enough to choose a snapshot without decompressing it.
pub fn read_metadata(input: &mut impl Read) -> Result<Metadata, SnapshotError> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(short)?;
    if &magic != MAGIC {
        return Err(SnapshotError::Magic);
    }
    let version = read_u32(input)?;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version(version));
    }
    let len = read_u32(input)?;
    if len > MAX_METADATA_BYTES {
        return Err(SnapshotError::Damaged(format!("metadata length {len}")));
    }
    let mut json = vec![0u8; len as usize];
    input.read_exact(&mut json).map_err(short)?;
    serde_json::from_slice(&json).map_err(|e| SnapshotError::Metadata(e.to_string()))
}

/// Reads a whole snapshot, handing each record to `each` as it is decoded (the record's buffers
/// are reused: copy what you keep). The records are only trustworthy once this returns Ok: a
/// caller that applied some must discard them on error.
pub fn read(
    input: impl BufRead,
    mut each: impl FnMut(&SnapshotRecord),
) -> Result<(Metadata, u64), SnapshotError> {
    let mut input = input;
    let metadata = read_metadata(&mut input)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&serde_json::to_vec(&metadata).map_err(|e| SnapshotError::Metadata(e.to_string()))?);
    // Records are read a few bytes at a time: buffer the decompressed stream, and checksum it
    // in the buffer's chunks rather than byte by byte.
    let decoder = zstd::stream::read::Decoder::with_buffer(input)?.single_frame();
    let mut reader = io::BufReader::with_capacity(
        1 << 16,
        Checked {
            inner: decoder,
            crc: &mut crc,
        },
    );
    let mut read_count = 0u64;
    let mut record = SnapshotRecord {
        key: Vec::new(),
        value: Vec::new(),
        partition: 0,
        offset: 0,
        timestamp_ms: 0,
    };
    while read_record(&mut reader, &mut record)? {
        read_count += 1;
        each(&record);
    }
    let mut input = reader.into_inner().inner.finish();
    let mut end = [0u8; 8];
    input.read_exact(&mut end).map_err(short)?;
    if &end != END_MAGIC {
        return Err(SnapshotError::Damaged("no end marker after the records".into()));
    }
    let mut count = [0u8; 8];
    input.read_exact(&mut count).map_err(short)?;
    let stored_count = u64::from_le_bytes(count);
    let stored_crc = read_u32(&mut input)?;
    let computed = crc.finalize();
    if stored_crc != computed {
        return Err(SnapshotError::Checksum {
            stored: stored_crc,
            computed,
        });
    }
    if stored_count != read_count {
        return Err(SnapshotError::Count {
            stored: stored_count,
            read: read_count,
        });
    }
    Ok((metadata, read_count))
}

/// A reader that feeds every byte it yields into the checksum.
struct Checked<'a, R> {
    inner: R,
    crc: &'a mut crc32fast::Hasher,
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads the next record into `record`; false at the clean end of the records.
fn read_record(input: &mut impl BufRead, record: &mut SnapshotRecord) -> Result<bool, SnapshotError> {
    let Some(key_len) = read_varint(input, true)? else {
        return Ok(false);
    };
    read_bytes(input, key_len, &mut record.key)?;
    let value_len = field(input)?;
    read_bytes(input, value_len, &mut record.value)?;
    let partition = field(input)?;
    let offset = field(input)?;
    let timestamp = field(input)?;
    record.partition =
        i32::try_from(partition).map_err(|_| SnapshotError::Damaged(format!("partition {partition}")))?;
    record.offset = i64::try_from(offset).map_err(|_| SnapshotError::Damaged(format!("offset {offset}")))?;
    record.timestamp_ms = unzigzag(timestamp);
    Ok(true)
}

/// A number inside a record, where the end of input is damage.
fn field(input: &mut impl BufRead) -> Result<u64, SnapshotError> {
    read_varint(input, false)?.ok_or_else(|| SnapshotError::Damaged("a record ends early".into()))
}

fn read_bytes(input: &mut impl BufRead, len: u64, into: &mut Vec<u8>) -> Result<(), SnapshotError> {
    into.clear();
    // A damaged length must not allocate gigabytes: read what is there, up to the length.
    input.take(len).read_to_end(into)?;
    if into.len() as u64 != len {
        return Err(SnapshotError::Damaged("a record ends early".into()));
    }
    Ok(())
}

/// LEB128; `at_record_start`: a clean end of input there is the end of the records (None).
fn read_varint(input: &mut impl BufRead, at_record_start: bool) -> Result<Option<u64>, SnapshotError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = match input.fill_buf()?.first() {
            Some(&byte) => byte,
            None if shift == 0 && at_record_start => return Ok(None),
            None => return Err(SnapshotError::Damaged("a record ends early".into())),
        };
        input.consume(1);
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(SnapshotError::Damaged("a number longer than 64 bits".into()))
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn read_u32(input: &mut impl Read) -> Result<u32, SnapshotError> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes).map_err(short)?;
    Ok(u32::from_le_bytes(bytes))
}

fn short(error: io::Error) -> SnapshotError {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        SnapshotError::Damaged("the file ends early".into())
    } else {
        SnapshotError::Io(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Metadata {
        Metadata {
            table: "customers".into(),
            topic: "dbz.public.customers".into(),
            format: "debezium".into(),
            projection: None,
            partitions: vec![
                PartitionPosition {
                    partition: 0,
                    position: 120,
                },
                PartitionPosition {
                    partition: 1,
                    position: 0,
                },
            ],
            created_at_ms: 1_700_000_000_000,
            writer: "test".into(),
        }
    }

    fn records() -> Vec<SnapshotRecord> {
        (0..1000)
            .map(|i| SnapshotRecord {
                key: format!(r#"{{"id":{i}}}"#).into_bytes(),
                value: if i % 10 == 0 {
                    Vec::new()
                } else {
                    format!(r#"{{"id":{i},"name":"customer {i}"}}"#).into_bytes()
                },
                partition: i % 2,
                offset: i64::from(i) * 3,
                timestamp_ms: if i == 7 {
                    -1
                } else {
                    1_700_000_000_000 + i64::from(i)
                },
            })
            .collect()
    }

    fn write(records: &[SnapshotRecord]) -> Vec<u8> {
        let mut writer = Writer::new(Vec::new(), &metadata()).unwrap();
        for r in records {
            writer
                .record(&r.key, &r.value, r.partition, r.offset, r.timestamp_ms)
                .unwrap();
        }
        writer.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<(Metadata, Vec<SnapshotRecord>), SnapshotError> {
        let mut got = Vec::new();
        let (metadata, count) = read(bytes, |r| got.push(r.clone()))?;
        assert_eq!(count as usize, got.len());
        Ok((metadata, got))
    }

    #[test]
    fn round_trip_keeps_every_record_and_the_metadata() {
        let bytes = write(&records());
        let (meta, got) = read_all(&bytes).unwrap();
        assert_eq!(meta, metadata());
        assert_eq!(got, records());
        assert_eq!(read_metadata(&mut bytes.as_slice()).unwrap(), metadata());
        // CDC rows compress: well below the raw bytes.
        let raw: usize = records().iter().map(|r| r.key.len() + r.value.len()).sum();
        assert!(bytes.len() < raw / 2, "{} of {raw}", bytes.len());
    }

    #[test]
    fn an_empty_table_is_a_valid_snapshot() {
        let (_, got) = read_all(&write(&[])).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = write(&records());
        for cut in [0, 7, 12, 20, bytes.len() / 2, bytes.len() - 13, bytes.len() - 1] {
            let error = read_all(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(
                    error,
                    SnapshotError::Damaged(_) | SnapshotError::Magic | SnapshotError::Io(_)
                ),
                "cut at {cut}: {error}"
            );
        }
    }

    #[test]
    fn flipped_bits_are_refused() {
        let bytes = write(&records());
        let body_start = 16 + serde_json::to_vec(&metadata()).unwrap().len();
        for at in [body_start + 10, bytes.len() / 2, bytes.len() - 5, 20] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(read_all(&damaged).is_err(), "flip at {at} not noticed");
        }
    }

    #[test]
    fn foreign_files_and_versions_are_named() {
        assert!(matches!(
            read_all(b"PK\x03\x04 a zip file"),
            Err(SnapshotError::Magic)
        ));
        let mut bytes = write(&[]);
        bytes[8] = 9;
        assert!(matches!(read_all(&bytes), Err(SnapshotError::Version(9))));
    }
}
