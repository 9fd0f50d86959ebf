//! Values stored compressed with a zstd dictionary trained per table from its own rows.
//!
//! CDC rows are redundant: every row of a table repeats the same field names and shapes, and
//! many values repeat. One value alone is too short for zstd to find that; a dictionary trained
//! on a few thousand of the table's rows gives it the table's vocabulary up front. Keys stay as
//! they are (lookups compare them directly); values are decompressed by the read that returns
//! them.
//!
//! Life of a table's compression (`--compression auto`):
//! 1. The first values applied are sampled (up to [`SAMPLE_BYTES`]); they are stored plain.
//! 2. Once the sample is full, or the table is ready with at least [`MIN_SAMPLE_VALUES`], the
//!    maintenance thread ([`maintain`]) trains a dictionary off the ingest path. If the sample
//!    does not compress at least [`MIN_RATIO`] times with it, the table stays uncompressed.
//! 3. The dictionary is published as the next generation: values applied from then on are
//!    compressed inline, and the plain ones already held are compressed in the background.
//! 4. When new values compress markedly worse than the sample did (the rows changed shape), a
//!    new sample is taken and a new generation trained; records move to it in the background.
//!
//! Generations are never freed (a record may still name one): at most [`MAX_GENERATIONS`]
//! decoding dictionaries of a few tens of KiB each per table, after which retraining stops.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zstd::zstd_safe::{CCtx, CDict, DCtx, DDict};

use super::record::{Origin, Record, Stored};
use super::{Store, Table};

/// Whether values are stored compressed (`--compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CompressionMode {
    /// Train a dictionary per table and compress values where it pays.
    #[default]
    Auto,
    /// Store values as received.
    Off,
}

impl CompressionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionMode::Auto => "auto",
            CompressionMode::Off => "off",
        }
    }
}

/// Values shorter than this are stored as they are: a zstd frame's header and a dictionary
/// reference leave nothing to gain.
const MIN_VALUE_LEN: usize = 32;
/// Bytes of values sampled for training: zstd's guidance is about a hundred times the
/// dictionary's size.
pub const SAMPLE_BYTES: usize = 4 << 20;
/// A ready table with fewer sampled values than this is too small to be worth a dictionary.
pub const MIN_SAMPLE_VALUES: usize = 200;
const DICTIONARY_BYTES: usize = 32 << 10;
/// zstd's level for values: compression runs on the ingest path, so the fast end.
const LEVEL: i32 = 1;
/// A dictionary that shrinks its own sample less than this is not used.
const MIN_RATIO: f64 = 1.25;
/// Values compressed before the ratio is compared with the sample's again.
const RETRAIN_WINDOW_BYTES: u64 = 4 << 20;
/// Retrain when the recent ratio falls below this share of the sample's.
const RETRAIN_BELOW: f64 = 0.7;
pub const MAX_GENERATIONS: usize = 16;
/// Records collected per round of background recompression; bounds the memory it borrows.
const RECOMPRESS_BATCH: usize = 16_384;
/// How often the maintenance thread looks at every table.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(250);

/// A published dictionary, for compressing.
struct Encoder {
    generation: u32,
    dictionary: CDict<'static>,
    /// How many times the sample shrank with it.
    trained_ratio: f64,
}

/// Values collected to train from.
#[derive(Default)]
struct Sample {
    bytes: Vec<u8>,
    sizes: Vec<usize>,
}

/// A table's compression state: the dictionaries, the sample being taken, the ratio since.
pub struct Compression {
    mode: CompressionMode,
    /// Generation `g`'s decoding dictionary at `g - 1`; set once, never removed.
    decoders: [OnceLock<DDict<'static>>; MAX_GENERATIONS],
    encoder: RwLock<Option<Arc<Encoder>>>,
    /// True while values are being sampled (spares the lock otherwise).
    sampling: AtomicBool,
    sample: Mutex<Sample>,
    /// The table's values did not compress well enough; nothing more is tried.
    gave_up: AtomicBool,
    /// Bytes in and out of compression since the last ratio check.
    window_raw: AtomicU64,
    window_stored: AtomicU64,
}

thread_local! {
    static COMPRESSOR: RefCell<CCtx<'static>> = RefCell::new(CCtx::create());
    static DECOMPRESSOR: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
    static FRAME: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Compression {
    pub fn new(mode: CompressionMode) -> Self {
        Self {
            mode,
            decoders: std::array::from_fn(|_| OnceLock::new()),
            encoder: RwLock::new(None),
            sampling: AtomicBool::new(mode == CompressionMode::Auto),
            sample: Mutex::new(Sample::default()),
            gave_up: AtomicBool::new(false),
            window_raw: AtomicU64::new(0),
            window_stored: AtomicU64::new(0),
        }
    }

    pub fn mode(&self) -> CompressionMode {
        self.mode
    }

    /// The dictionary generation in use (0: none).
    pub fn generation(&self) -> u32 {
        self.current().map_or(0, |e| e.generation)
    }

    fn current(&self) -> Option<Arc<Encoder>> {
        self.encoder.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The record for a value applied now: compressed with the current dictionary if there is
    /// one and it pays, sampled for training if a sample is being taken.
    pub fn record(&self, key: &[u8], value: &[u8], origin: Origin) -> Record {
        if self.sampling.load(Ordering::Relaxed) {
            self.add_to_sample(value);
        }
        match self.current() {
            Some(encoder) if value.len() >= MIN_VALUE_LEN => {
                let record = self.compressed_record(&encoder, key, value, origin);
                let stored = record.stored_len() as usize - key.len();
                self.window_raw.fetch_add(value.len() as u64, Ordering::Relaxed);
                self.window_stored.fetch_add(stored as u64, Ordering::Relaxed);
                record
            }
            _ => Record::with_value(key, Stored::Plain(value), origin),
        }
    }

    fn compressed_record(&self, encoder: &Encoder, key: &[u8], value: &[u8], origin: Origin) -> Record {
        FRAME.with(|frame| {
            let mut frame = frame.borrow_mut();
            frame.clear();
            frame.reserve(zstd::zstd_safe::compress_bound(value.len()));
            let compressed = COMPRESSOR.with(|cctx| {
                cctx.borrow_mut()
                    .compress_using_cdict(&mut *frame, value, &encoder.dictionary)
            });
            let stored = match compressed {
                // Only when it pays, the generation and length it must carry counted.
                Ok(len) if len + 4 < value.len() => Stored::Compressed {
                    generation: encoder.generation,
                    raw_len: value.len(),
                    frame: &frame[..len],
                },
                _ => Stored::Incompressible(value),
            };
            Record::with_value(key, stored, origin)
        })
    }

    fn add_to_sample(&self, value: &[u8]) {
        if value.len() < MIN_VALUE_LEN {
            return;
        }
        let mut sample = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        if sample.bytes.len() >= SAMPLE_BYTES {
            return;
        }
        // A few very long values must not be the whole sample.
        let take = value.len().min(SAMPLE_BYTES / 64);
        sample.bytes.extend_from_slice(&value[..take]);
        sample.sizes.push(take);
    }

    /// The value of a stored record, as received. A compressed value names a generation that
    /// was published before the record was made, so its dictionary is there.
    pub fn value(&self, stored: Stored<'_>) -> Bytes {
        match stored {
            Stored::Plain(bytes) | Stored::Incompressible(bytes) => Bytes::copy_from_slice(bytes),
            Stored::Compressed { raw_len, .. } => {
                let mut out = vec![0; raw_len];
                self.decompress_into(stored, &mut out);
                Bytes::from(out)
            }
        }
    }

    /// Writes the value as received into `out`, which is exactly `stored.raw_len()` long.
    pub fn decompress_into(&self, stored: Stored<'_>, out: &mut [u8]) {
        match stored {
            Stored::Plain(bytes) | Stored::Incompressible(bytes) => out.copy_from_slice(bytes),
            Stored::Compressed {
                generation, frame, ..
            } => {
                let dictionary = self.decoders[generation as usize - 1]
                    .get()
                    .expect("a record names only published dictionary generations");
                let written = DECOMPRESSOR
                    .with(|dctx| dctx.borrow_mut().decompress_using_ddict(out, frame, dictionary));
                // Our own frame, made by this process: anything else is memory corruption, and
                // serving a wrong row is worse than stopping.
                assert_eq!(
                    written,
                    Ok(out.len()),
                    "a stored value did not decompress to its length"
                );
            }
        }
    }

    /// Whether a sample is ready to train from: full, or the table is ready with enough.
    fn sample_due(&self, table_ready: bool) -> bool {
        if !self.sampling.load(Ordering::Relaxed) {
            return false;
        }
        let sample = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        sample.bytes.len() >= SAMPLE_BYTES || (table_ready && sample.sizes.len() >= MIN_SAMPLE_VALUES)
    }

    fn take_sample(&self) -> Sample {
        self.sampling.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.sample.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Starts a new sample when recent values compress markedly worse than the sample did.
    fn check_ratio(&self, table: &str) {
        let raw = self.window_raw.load(Ordering::Relaxed);
        if raw < RETRAIN_WINDOW_BYTES {
            return;
        }
        let stored = self.window_stored.swap(0, Ordering::Relaxed).max(1);
        self.window_raw.store(0, Ordering::Relaxed);
        let Some(encoder) = self.current() else { return };
        let recent = raw as f64 / stored as f64;
        if recent < encoder.trained_ratio * RETRAIN_BELOW && (encoder.generation as usize) < MAX_GENERATIONS {
            info!(
                table,
                generation = encoder.generation,
                trained_ratio = encoder.trained_ratio,
                recent_ratio = recent,
                "values compress worse than when the dictionary was trained; sampling to retrain"
            );
            self.sampling.store(true, Ordering::Relaxed);
        }
    }

    /// Trains and publishes the next generation from `sample`; false if it does not pay.
    fn train(&self, table: &str, sample: &Sample) -> bool {
        // Every eighth value is held out to measure the dictionary: the values it was trained
        // on are partly inside it and would flatter it.
        let (mut training, mut held_out) = (Sample::default(), Sample::default());
        let mut at = 0;
        for (i, &size) in sample.sizes.iter().enumerate() {
            let part = if i % 8 == 7 { &mut held_out } else { &mut training };
            part.bytes.extend_from_slice(&sample.bytes[at..at + size]);
            part.sizes.push(size);
            at += size;
        }
        let dictionary = match zstd::dict::from_continuous(&training.bytes, &training.sizes, DICTIONARY_BYTES)
        {
            Ok(dictionary) => dictionary,
            Err(error) => {
                warn!(table, %error, values = sample.sizes.len(), "cannot train a compression dictionary; values stay as they are");
                return false;
            }
        };
        let generation = self.generation() + 1;
        let encoder = Encoder {
            generation,
            dictionary: CDict::create(&dictionary, LEVEL),
            trained_ratio: 1.0,
        };
        // The ratio the held-out values get: the reference for later values.
        let mut raw = 0usize;
        let mut stored = 0usize;
        let mut frame = Vec::new();
        let mut at = 0;
        COMPRESSOR.with(|cctx| {
            let mut cctx = cctx.borrow_mut();
            for &size in &held_out.sizes {
                let value = &held_out.bytes[at..at + size];
                at += size;
                frame.clear();
                frame.reserve(zstd::zstd_safe::compress_bound(size));
                let len = cctx
                    .compress_using_cdict(&mut frame, value, &encoder.dictionary)
                    .map_or(size, |len| len.min(size));
                raw += size;
                stored += len + 2;
            }
        });
        let trained_ratio = raw as f64 / stored.max(1) as f64;
        if trained_ratio < MIN_RATIO {
            info!(
                table,
                ratio = trained_ratio,
                "values do not compress enough to pay; stored as they are"
            );
            return false;
        }
        if self.decoders[generation as usize - 1]
            .set(DDict::create(&dictionary))
            .is_err()
        {
            return false;
        }
        *self.encoder.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Encoder {
            trained_ratio,
            ..encoder
        }));
        self.window_raw.store(0, Ordering::Relaxed);
        self.window_stored.store(0, Ordering::Relaxed);
        info!(
            table,
            generation,
            values = sample.sizes.len(),
            ratio = format!("{trained_ratio:.2}"),
            dictionary_bytes = dictionary.len(),
            "compression dictionary trained"
        );
        true
    }

    /// Whether a record should be (re)compressed with the current dictionary.
    fn needs_recompression(&self, record: &Record, generation: u32) -> bool {
        match record.value_and_origin().0 {
            Stored::Plain(value) => value.len() >= MIN_VALUE_LEN,
            Stored::Incompressible(_) => false,
            Stored::Compressed { generation: g, .. } => g != generation,
        }
    }
}

impl Table {
    /// Compresses, in rounds of at most [`RECOMPRESS_BATCH`] records, every record not yet
    /// compressed with the current dictionary. Each record is swapped only if it is still the
    /// one read (ingest may have replaced it meanwhile), under its shard's lock for the swap
    /// alone.
    fn recompress(&self, cancel: &CancellationToken) -> usize {
        let compression = self.compression();
        let Some(encoder) = compression.current() else {
            return 0;
        };
        let mut swapped = 0;
        loop {
            let keys: Vec<Box<[u8]>> = self
                .entries
                .iter()
                .filter(|entry| compression.needs_recompression(entry.key(), encoder.generation))
                .take(RECOMPRESS_BATCH)
                .map(|entry| Box::from(entry.key().key()))
                .collect();
            if keys.is_empty() || cancel.is_cancelled() {
                return swapped;
            }
            for key in keys {
                let Some((origin, value, stored_len)) = self.entries.get(&*key).and_then(|entry| {
                    let record = entry.key();
                    let (stored, origin) = record.value_and_origin();
                    compression
                        .needs_recompression(record, encoder.generation)
                        .then(|| (origin, compression.value(stored), record.stored_len()))
                }) else {
                    continue;
                };
                let record = compression.compressed_record(&encoder, &key, &value, origin);
                // The same write still held: same origin, same stored size, same value. (A
                // partition rebuilt after a log reset can repeat an origin with another value.)
                let unchanged = |held: &Record| {
                    let (stored, held_origin) = held.value_and_origin();
                    held_origin == origin
                        && held.stored_len() == stored_len
                        && compression.value(stored) == value
                };
                if self.replace_if_unchanged(record, unchanged) {
                    swapped += 1;
                }
            }
        }
    }
}

/// Runs every table's compression upkeep (training, recompression, ratio checks) until
/// `cancel`, on a thread of its own so none of it is on the ingest or serving path.
pub fn maintain(store: Arc<Store>, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        for table in store.tables() {
            upkeep(table, &cancel);
        }
        std::thread::sleep(MAINTENANCE_INTERVAL);
    }
}

/// One round of a table's upkeep: retrain if due, then move its records to the new dictionary.
fn upkeep(table: &Table, cancel: &CancellationToken) {
    let compression = table.compression();
    if compression.mode() == CompressionMode::Off || compression.gave_up.load(Ordering::Relaxed) {
        return;
    }
    compression.check_ratio(table.name());
    if !compression.sample_due(table.is_ready()) {
        return;
    }
    let sample = compression.take_sample();
    if compression.train(table.name(), &sample) {
        let swapped = table.recompress(cancel);
        // The plain records replaced were freed; give their pages back.
        crate::memory::release_free_memory();
        info!(
            table = table.name(),
            records = swapped,
            ratio = format!("{:.2}", table.compression_ratio()),
            "records compressed with the new dictionary"
        );
    } else if compression.current().is_none() {
        compression.gave_up.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TableConfig;
    use crate::format::Format;
    use crate::sample_rows::{self, Rng};
    use crate::store::{Change, PartitionState};

    fn ready_table(mode: CompressionMode) -> Table {
        let table = Table::new(&TableConfig {
            topic: "customers".into(),
            table: "customers".into(),
            format: Format::Raw,
            compression: mode,
            projection: None,
        });
        table.set_initial_partitions([PartitionState::already_caught_up(0)]);
        assert!(table.try_mark_ready());
        table
    }

    /// Applies `rows` as upserts of keys `first..`, returning what each key should hold.
    fn apply(table: &Table, first: u64, rows: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let partition = table.partition(0).unwrap();
        let mut applied = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let id = first + i as u64;
            let key = sample_rows::key(id).into_bytes();
            let offset = partition.position();
            table.apply(
                &partition,
                offset,
                Some(1000),
                Change::Upsert {
                    key: key.clone(),
                    value: row.clone(),
                },
            );
            applied.push((key, row.clone()));
        }
        applied
    }

    fn customers(n: u64, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|id| sample_rows::customer(id, &mut rng).into_bytes())
            .collect()
    }

    fn assert_holds(table: &Table, rows: &[(Vec<u8>, Vec<u8>)]) {
        for (key, row) in rows {
            let found = table.get(key).expect("key held");
            assert_eq!(found.value.as_ref(), row.as_slice());
        }
        let keys: Vec<&[u8]> = rows.iter().map(|(k, _)| k.as_slice()).collect();
        let many = table.get_many(&keys, usize::MAX).unwrap();
        for (hit, (_, row)) in many.iter().zip(rows) {
            assert_eq!(hit.as_ref().unwrap().value.as_ref(), row.as_slice());
        }
    }

    #[test]
    fn a_trained_dictionary_compresses_held_and_new_rows_and_every_read_sees_them_whole() {
        let table = ready_table(CompressionMode::Auto);
        let mut rows = apply(&table, 0, &customers(3000, 1));
        assert_eq!(table.compression().generation(), 0);
        assert_eq!(table.stored_bytes(), table.data_bytes(), "plain until trained");

        upkeep(&table, &CancellationToken::new());
        assert_eq!(table.compression().generation(), 1);
        let ratio = table.compression_ratio();
        assert!(ratio > 2.0, "customer rows compress {ratio:.2}x");
        assert_holds(&table, &rows);

        // Rows applied after training are compressed as they come, overwrites included.
        rows.extend(apply(&table, 3000, &customers(1000, 2)));
        let overwritten = apply(&table, 0, &customers(10, 3));
        rows.splice(0..10, overwritten);
        assert_holds(&table, &rows);
        assert!(table.compression_ratio() > 2.0);

        // A snapshot sees the rows as received.
        let mut visited = 0;
        table.for_each_record(|key, value, _| {
            let id: usize = std::str::from_utf8(&key[6..key.len() - 1])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(value, rows[id].1.as_slice());
            visited += 1;
        });
        assert_eq!(visited, rows.len());

        // Deleting every row leaves no bytes counted either way.
        let partition = table.partition(0).unwrap();
        for (key, _) in &rows {
            let offset = partition.position();
            table.apply(
                &partition,
                offset,
                Some(1000),
                Change::Delete { key: key.clone() },
            );
        }
        assert_eq!((table.data_bytes(), table.stored_bytes()), (0, 0));
    }

    #[test]
    fn off_stores_values_as_received() {
        let table = ready_table(CompressionMode::Off);
        let rows = apply(&table, 0, &customers(1000, 1));
        upkeep(&table, &CancellationToken::new());
        assert_eq!(table.compression().generation(), 0);
        assert_eq!(table.stored_bytes(), table.data_bytes());
        assert_holds(&table, &rows);
    }

    #[test]
    fn values_that_do_not_compress_stay_as_they_are() {
        let table = ready_table(CompressionMode::Auto);
        let mut rng = Rng::new(9);
        let noise: Vec<Vec<u8>> = (0..1000)
            .map(|_| (0..80).map(|_| rng.next_u64() as u8).collect())
            .collect();
        let rows = apply(&table, 0, &noise);
        upkeep(&table, &CancellationToken::new());
        assert_eq!(table.compression().generation(), 0);
        assert!(table.compression().gave_up.load(Ordering::Relaxed));
        assert_eq!(table.stored_bytes(), table.data_bytes());
        assert_holds(&table, &rows);
    }

    #[test]
    fn rows_of_another_shape_bring_a_new_dictionary_and_old_records_move_to_it() {
        let table = ready_table(CompressionMode::Auto);
        let mut rows = apply(&table, 0, &customers(3000, 1));
        upkeep(&table, &CancellationToken::new());
        assert_eq!(table.compression().generation(), 1);
        // The topic starts carrying order rows: the customer dictionary knows none of their
        // fields, the ratio falls, and a new sample is taken.
        let mut rng = Rng::new(5);
        let orders: Vec<Vec<u8>> = (0..40_000)
            .map(|id| sample_rows::order(id, &mut rng).into_bytes())
            .collect();
        rows.extend(apply(&table, 3000, &orders[..20_000]));
        upkeep(&table, &CancellationToken::new());
        assert!(
            table.compression().sampling.load(Ordering::Relaxed),
            "retraining not started"
        );
        rows.extend(apply(&table, 23_000, &orders[20_000..]));
        upkeep(&table, &CancellationToken::new());
        assert_eq!(table.compression().generation(), 2);
        assert_holds(&table, &rows);
        let mut old_generation = 0;
        for entry in table.entries.iter() {
            if let Stored::Compressed { generation: 1, .. } = entry.key().value_and_origin().0 {
                old_generation += 1;
            }
        }
        assert_eq!(old_generation, 0, "every record moved to generation 2");
    }
}
