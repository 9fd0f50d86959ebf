//! Looking up the writer schemas a batch of `avro` records names, before the batch is decoded,
//! and deciding what a failed lookup means:
//!
//! - **Registry unavailable** (refused, timeout, 5xx, credentials refused): the table waits,
//!   asking again with backoff for as long as it takes. No record is skipped for it: the table
//!   stays not ready (or falls behind while tailing, which the lag metrics show), Status names
//!   the registry and the record waiting, and the logs say so every few seconds.
//! - **Schema not found** (404): asked again with backoff a few times (a registry replica may lag
//!   behind the one the producer registered with), then the records naming it are undecodable
//!   and handled under `--on-decode-error`. The answer is remembered for a minute, so the next
//!   records naming it do not wait again.
//! - **Schema unusable** (not Avro, references, invalid): undecodable at once; an id's schema
//!   never changes, so asking again cannot help.
//!
//! While it waits the consumer is not polled: a record polled and dropped would be lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::rate_limit::RateLimit;
use crate::format::avro::Plan;
use crate::format::confluent::SchemaRef;
use crate::format::DecodeError;
use crate::schema_registry::{FetchError, SchemaRegistry};
use crate::store::Table;

/// Attempts at a schema the registry says it does not have, and the first pause between them
/// (doubling: 0.5 + 1 + 2 + 4 s).
const NOT_FOUND_ATTEMPTS: u32 = 5;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The schemas a batch needs, each with the first record that names it (for messages).
pub type Wanted = BTreeMap<SchemaRef, (i32, i64)>;
/// What came of looking each one up.
pub type Found = HashMap<SchemaRef, Result<Arc<Plan>, DecodeError>>;

/// A table's view of the registry.
pub struct SchemaLookup {
    registry: Arc<SchemaRegistry>,
    table: Arc<Table>,
    cancel: CancellationToken,
    log: RateLimit,
}

impl SchemaLookup {
    pub fn new(registry: Arc<SchemaRegistry>, table: Arc<Table>, cancel: CancellationToken) -> Self {
        SchemaLookup {
            registry,
            table,
            cancel,
            log: RateLimit::new(LOG_INTERVAL),
        }
    }

    /// Looks every wanted schema up; `None` when cancelled while waiting for the registry.
    pub fn look_up(&self, wanted: &Wanted) -> Option<Found> {
        let mut found = Found::with_capacity(wanted.len());
        for (&schema, &(partition, offset)) in wanted {
            let result = match self.registry.cached(schema) {
                Some(known) => known,
                None => self.fetch(schema, partition, offset)?,
            };
            found.insert(schema, result.map_err(|e| self.undecodable(e)));
        }
        Some(found)
    }

    fn undecodable(&self, error: FetchError) -> DecodeError {
        DecodeError::Schema(match error {
            FetchError::NotFound(schema) => format!(
                "schema {schema} is not in the schema registry ({}), asked {NOT_FOUND_ATTEMPTS} times",
                self.registry.display_urls()
            ),
            other => other.to_string(),
        })
    }

    fn fetch(&self, schema: SchemaRef, partition: i32, offset: i64) -> Option<Result<Arc<Plan>, FetchError>> {
        let mut backoff = BACKOFF_MIN;
        let mut not_found = 0;
        let mut waited = false;
        let started = Instant::now();
        let answer = loop {
            match self.registry.fetch(schema) {
                Err(FetchError::NotFound(_)) if not_found + 1 < NOT_FOUND_ATTEMPTS => {
                    not_found += 1;
                    if let Some(suppressed) = self.log.check() {
                        warn!(
                            table = self.table.name(),
                            %schema,
                            partition,
                            offset,
                            attempt = not_found,
                            suppressed,
                            "schema registry has no such schema yet; asking again"
                        );
                    }
                }
                Err(error @ FetchError::Unavailable { .. }) => {
                    waited = true;
                    let problem = format!(
                        "{error}; waiting to read schema {schema} for partition {partition} offset {offset}"
                    );
                    if let Some(suppressed) = self.log.check() {
                        warn!(table = self.table.name(), suppressed, "{problem}");
                    }
                    self.table.set_problem(Some(problem));
                }
                Err(error @ FetchError::NotFound(_)) => {
                    self.registry.remember_missing(schema);
                    break Err(error);
                }
                answer => break answer,
            }
            if self.sleep(backoff) {
                return None;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        };
        if waited {
            self.table.set_problem(None);
            info!(
                table = self.table.name(),
                %schema,
                waited_ms = started.elapsed().as_millis() as u64,
                "schema registry answered"
            );
        }
        Some(answer)
    }

    /// Sleeps unless cancelled first; true when cancelled.
    fn sleep(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        while !self.cancel.is_cancelled() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        true
    }
}
