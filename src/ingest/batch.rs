//! Records come off the consumer in batches, and each batch is prepared (decoded, and its
//! stored records built and compressed: the costly part) in parallel, by the ingest thread and a
//! small thread pool shared by every table. The ingest thread then applies the prepared records
//! one at a time in the order they were polled, so each partition's records still land in offset
//! order and the store sees exactly what a one-record-at-a-time loop would give it.
//!
//! Why batches: a poll hands over one record, and a thread hand-off per record would cost more
//! than decoding it. While a table is tailing, batches hold a record or two and are prepared on
//! the ingest thread without a hand-off.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::schemas::{Found, SchemaLookup, Wanted};
use crate::format::avro::{self, Datum, Part};
use crate::format::confluent::{self, SchemaRef, KEY_SCHEMA_HEADER, VALUE_SCHEMA_HEADER};
use crate::format::{self, DecodeError};
use crate::store::{Prepared, Table};

/// Most records taken off the consumer at once.
pub const MAX_RECORDS: usize = 2048;
/// Most key and value bytes taken off the consumer at once: a batch of large rows is held
/// twice (as fetched and as prepared) until it is applied.
const MAX_BYTES: usize = 8 << 20;
/// Smaller batches are prepared on the ingest thread: a hand-off costs more than they do. So
/// are raw records stored uncompressed: copying them costs less than waking the pool's threads.
const PARALLEL_MIN: usize = 64;

/// The threads that prepare records alongside the ingest thread; none when there is one CPU.
pub struct Decoders(Option<rayon::ThreadPool>);

impl Decoders {
    /// `threads` in all, the ingest thread included.
    pub fn new(threads: usize) -> Result<Decoders, String> {
        if threads <= 1 {
            return Ok(Decoders(None));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads - 1)
            .thread_name(|i| format!("decode-{i}"))
            .build()
            .map(|pool| Decoders(Some(pool)))
            .map_err(|e| format!("cannot start {threads} decode threads: {e}"))
    }
}

/// A record taken off the consumer, prepared.
pub struct Incoming {
    /// Key and value bytes, as fetched.
    pub bytes: usize,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub prepared: Result<Prepared, DecodeError>,
}

/// What a batch ended on besides records: an end of partition or an error, to be handled after
/// the records polled before it.
pub type Event = Option<KafkaError>;

/// Polls up to a batch of records (waiting up to `timeout` for the first), and prepares them.
/// An `avro` table's schemas are looked up first (`schemas`), which may wait for the registry;
/// cancelled meanwhile, the batch is dropped unapplied (the process is stopping).
pub fn take<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    timeout: Duration,
    table: &Table,
    decoders: &Decoders,
    schemas: Option<&SchemaLookup>,
) -> (Vec<Incoming>, Event) {
    let mut messages: Vec<BorrowedMessage<'_>> = Vec::new();
    let mut bytes = 0;
    let mut wait = timeout;
    let mut event = None;
    while messages.len() < MAX_RECORDS && bytes < MAX_BYTES {
        match consumer.poll(wait) {
            None => break,
            Some(Ok(message)) => {
                bytes += message.key_len() + message.payload_len();
                messages.push(message);
                // Only what is already fetched joins the batch.
                wait = Duration::ZERO;
            }
            Some(Err(error)) => {
                event = Some(error);
                break;
            }
        }
    }
    let mut fetched: Vec<Fetched<'_>> = messages
        .iter()
        .map(|m| Fetched {
            key: m.key(),
            payload: m.payload(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            avro: None,
        })
        .collect();
    if table.format().needs_schema_registry() {
        let Some(()) = look_up_schemas(&messages, &mut fetched, schemas) else {
            return (Vec::new(), None);
        };
    }
    (prepare(&fetched, table, decoders), event)
}

/// A key's or value's frame: the schema it names and the datum after it.
type Frame<'a> = Option<Result<(SchemaRef, &'a [u8]), DecodeError>>;

fn frame<'a>(bytes: Option<&'a [u8]>, message: &BorrowedMessage<'_>, header: &str, what: &str) -> Frame<'a> {
    let header_value = message
        .headers()
        .and_then(|headers| headers.iter().find(|h| h.key == header).and_then(|h| h.value));
    bytes.map(|bytes| {
        confluent::read(bytes, header_value).map_err(|e| DecodeError::Frame(format!("{what} {e}")))
    })
}

/// Reads every record's frames, looks the schemas they name up, and gives each record its
/// datums; `None` when cancelled while waiting for the registry.
fn look_up_schemas<'a>(
    messages: &'a [BorrowedMessage<'_>],
    fetched: &mut [Fetched<'a>],
    schemas: Option<&SchemaLookup>,
) -> Option<()> {
    let frames: Vec<(Frame<'a>, Frame<'a>)> = messages
        .iter()
        .map(|m| {
            (
                frame(m.key(), m, KEY_SCHEMA_HEADER, "key"),
                frame(m.payload(), m, VALUE_SCHEMA_HEADER, "value"),
            )
        })
        .collect();
    let mut wanted = Wanted::new();
    for (m, (key, value)) in messages.iter().zip(&frames) {
        for (schema, _) in [key, value].into_iter().flatten().flatten() {
            wanted.entry(*schema).or_insert((m.partition(), m.offset()));
        }
    }
    let found = match schemas {
        Some(lookup) => lookup.look_up(&wanted)?,
        None => Found::new(),
    };
    let part = |frame: Frame<'a>| -> Part<'a> {
        frame.map(|framed| {
            let (schema, bytes) = framed?;
            let plan = match found.get(&schema) {
                Some(plan) => plan.clone()?,
                None => {
                    return Err(DecodeError::Schema(format!(
                        "schema {schema}: no schema registry configured"
                    )))
                }
            };
            Ok(Datum { bytes, schema, plan })
        })
    };
    for (record, (key, value)) in fetched.iter_mut().zip(frames) {
        record.avro = Some((part(key), part(value)));
    }
    Some(())
}

/// What a decode thread needs of a message (which itself may not leave the ingest thread).
pub struct Fetched<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    /// An `avro` record's key and value, frames read and schemas looked up.
    pub avro: Option<(Part<'a>, Part<'a>)>,
}

impl Fetched<'_> {
    fn prepare(&self, table: &Table) -> Incoming {
        let change = match &self.avro {
            Some((key, value)) => avro::decode(key, value),
            None => format::decode(table.format(), self.key, self.payload),
        };
        let prepared =
            change.map(|change| table.prepare(self.partition, self.offset, self.timestamp, change));
        Incoming {
            bytes: self.key.map_or(0, <[u8]>::len) + self.payload.map_or(0, <[u8]>::len),
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            prepared,
        }
    }
}

/// Prepares a batch, in its order; on the pool when that pays. Public for the ingest benchmark,
/// which replays records through this same path.
pub fn prepare(batch: &[Fetched<'_>], table: &Table, decoders: &Decoders) -> Vec<Incoming> {
    match &decoders.0 {
        Some(pool) if batch.len() >= PARALLEL_MIN && table.costly_to_prepare() => {
            // The ingest thread takes the first share itself rather than sleeping while the
            // pool works: the pool has one thread fewer than there are CPUs, so no idle pool
            // thread spins for a CPU while the ingest thread applies the batch.
            let shares = pool.current_num_threads() + 1;
            let share = batch.len().div_ceil(shares);
            let mut parts: Vec<Vec<Incoming>> = (0..shares).map(|_| Vec::new()).collect();
            pool.in_place_scope(|scope| {
                let (first, rest) = parts.split_first_mut().expect("at least two shares");
                for (part, records) in rest.iter_mut().zip(batch.chunks(share).skip(1)) {
                    scope.spawn(move |_| *part = records.iter().map(|r| r.prepare(table)).collect());
                }
                *first = batch[..share.min(batch.len())]
                    .iter()
                    .map(|r| r.prepare(table))
                    .collect();
            });
            parts.into_iter().flatten().collect()
        }
        _ => batch.iter().map(|record| record.prepare(table)).collect(),
    }
}
