//! Fresh reads (`Consistency` on Get and MultiGet): refuse an answer from a table cut off from
//! its broker for too long, and wait, bounded, until given offsets are applied. The wait is
//! async on the gRPC thread and wakes when the ingest thread moves positions on
//! ([`Table::note_advanced`]), so waiting reads cost nothing while they wait.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use super::errors::RequestError;
use super::latest::Rounds;
use crate::clock::now_ms;
use crate::proto::Consistency;
use crate::store::Table;

/// How long a read waits for offsets when neither the request nor its gRPC deadline says.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest `wait_timeout_ms` accepted.
const MAX_WAIT_MS: i64 = 300_000;

/// Checks `consistency` against `table` and waits until it holds. `deadline` is the call's
/// gRPC deadline (`grpc-timeout`), if the client set one; `rounds` asks the broker for `latest`.
pub async fn wait_until_fresh(
    table: &Arc<Table>,
    rounds: &Arc<Rounds>,
    consistency: &Consistency,
    deadline: Option<Duration>,
) -> Result<(), RequestError> {
    let bad = |reason: String| RequestError::BadConsistency { reason };
    if consistency.max_staleness_ms < 0 {
        return Err(bad(format!(
            "max_staleness_ms {} is negative",
            consistency.max_staleness_ms
        )));
    }
    if !(0..=MAX_WAIT_MS).contains(&consistency.wait_timeout_ms) {
        return Err(bad(format!(
            "wait_timeout_ms {} is outside 0..={MAX_WAIT_MS}",
            consistency.wait_timeout_ms
        )));
    }
    let mut wanted = BTreeMap::new();
    for (&partition, &offset) in &consistency.min_offsets {
        if table.partition(partition).is_none() {
            return Err(bad(format!(
                "min_offsets: table {:?} (topic {}) has no partition {partition}",
                table.name(),
                table.topic()
            )));
        }
        // -1 (nothing applied, as applied_offsets reports it) asks for nothing.
        if offset < -1 {
            return Err(bad(format!(
                "min_offsets: offset {offset} for partition {partition} is below -1"
            )));
        }
        wanted.insert(partition, offset);
    }

    if consistency.max_staleness_ms > 0 {
        let silence = table.broker_silence_ms(now_ms());
        if silence > consistency.max_staleness_ms {
            return Err(RequestError::Stale {
                table: table.name().to_string(),
                silence_ms: silence,
                max_staleness_ms: consistency.max_staleness_ms,
            });
        }
    }
    if wanted.is_empty() && !consistency.latest {
        return Ok(());
    }
    let asked = match consistency.wait_timeout_ms {
        0 => DEFAULT_WAIT,
        ms => Duration::from_millis(ms as u64),
    };
    let wait = match deadline {
        // Never past the call's deadline, where nobody would get the answer.
        Some(deadline) => asked.min(short_of(deadline)),
        None => asked,
    };
    let until = Instant::now() + wait;
    if consistency.latest {
        let ends = tokio::time::timeout_at(until, rounds.end_offsets(table))
            .await
            .map_err(|_| RequestError::WaitTimedOut {
                table: table.name().to_string(),
                waited: wait,
                reached: "the broker did not report the end offsets in time".into(),
            })?
            .map_err(|reason| RequestError::EndOffsets {
                table: table.name().to_string(),
                reason,
            })?;
        // Applied up to the end offset: everything before it applied.
        for &(partition, end) in ends.iter().filter(|(_, end)| *end > 0) {
            let offset = wanted.entry(partition).or_insert(end - 1);
            *offset = (*offset).max(end - 1);
        }
    }
    let wanted: Vec<_> = wanted
        .into_iter()
        .filter_map(|(partition, offset)| Some((table.partition(partition)?, offset)))
        .collect();
    loop {
        // Registered before the positions are read: an advance in between still wakes us.
        let advanced = table.advanced().notified();
        tokio::pin!(advanced);
        advanced.as_mut().enable();
        let behind: Vec<_> = wanted
            .iter()
            .filter(|(state, offset)| state.position() <= *offset)
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::timeout_at(until, advanced).await.is_err() {
            let mut reached = String::new();
            for (state, offset) in behind {
                let _ = write!(
                    reached,
                    "{}partition {} applied up to {}, waiting for {offset}",
                    if reached.is_empty() { "" } else { "; " },
                    state.partition(),
                    state.position() - 1,
                );
            }
            return Err(RequestError::WaitTimedOut {
                table: table.name().to_string(),
                waited: wait,
                reached,
            });
        }
    }
}

/// A wait bounded by the call's gRPC deadline ends a little before it: tonic's server drops the
/// call at the deadline itself (CANCELLED, "Timeout expired"), and the caller is owed
/// DEADLINE_EXCEEDED naming the offsets reached.
fn short_of(deadline: Duration) -> Duration {
    deadline.saturating_sub((deadline / 10).min(Duration::from_millis(50)))
}

/// Per partition, the highest offset the table has applied (-1: none).
pub fn applied_offsets(table: &Table) -> HashMap<i32, i64> {
    table
        .partitions()
        .iter()
        .map(|p| (p.partition(), p.position() - 1))
        .collect()
}

/// The call's deadline from its `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u
/// n), if any.
pub fn grpc_deadline(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let deadline = |value: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            grpc_deadline(&metadata)
        };
        assert_eq!(deadline("2S"), Some(Duration::from_secs(2)));
        assert_eq!(deadline("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(deadline("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(deadline("3M"), Some(Duration::from_secs(180)));
        assert_eq!(deadline("250u"), Some(Duration::from_micros(250)));
        assert_eq!(deadline("99n"), Some(Duration::from_nanos(99)));
        assert_eq!(deadline("5x"), None);
        assert_eq!(deadline("S"), None);
        assert_eq!(grpc_deadline(&MetadataMap::new()), None);
    }
}
