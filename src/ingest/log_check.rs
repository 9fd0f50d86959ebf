//! Whether a partition's log still holds what the cache was built from. Pure decisions over the
//! offsets applied and the log bounds the broker reports; the consumer feeds them and carries out
//! the resets they return.
//!
//! A log that does anything other than grow at its end (a topic deleted and created again, a log
//! truncated by an unclean leader election, a log start moved past the position by retention or
//! DeleteRecords) leaves records in the map that the log no longer has, or deletes the cache never
//! saw. Offsets alone cannot tell: after a reset, new records look like redeliveries. So every such
//! sign resets the partition: its keys are rebuilt by reading it again from the log start.

use std::time::{Duration, Instant};

/// How long the position may stay above the high watermark before the log counts as truncated.
/// A new leader's high watermark can trail the old one's for a moment after a clean election, and
/// statistics lag the records by up to their interval.
pub const TRUNCATION_GRACE: Duration = Duration::from_secs(10);

/// Why a partition is read again from its beginning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetReason {
    /// The log ends below the position: an unclean leader election or a log rewritten.
    LogTruncated,
    /// The log start moved past the position: records (and deletes) were never seen.
    LogStartMoved,
    /// The topic disappeared from the broker's metadata and came back: offsets restarted.
    TopicRecreated,
    /// The broker refused the fetch offset and its bounds do not say why.
    OffsetOutOfRange,
}

impl ResetReason {
    pub const ALL: [ResetReason; 4] = [
        ResetReason::LogTruncated,
        ResetReason::LogStartMoved,
        ResetReason::TopicRecreated,
        ResetReason::OffsetOutOfRange,
    ];

    /// The `reason` label of `cdc_cache_partition_resets_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::LogTruncated => "log_truncated",
            ResetReason::LogStartMoved => "log_start_moved",
            ResetReason::TopicRecreated => "topic_recreated",
            ResetReason::OffsetOutOfRange => "offset_out_of_range",
        }
    }
}

/// The log's bounds as the broker reports them; -1 where unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    pub log_start: i64,
    pub high_watermark: i64,
}

/// A decision to read a partition again from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    pub reason: ResetReason,
    pub from: i64,
}

/// One partition's evidence between checks.
#[derive(Debug, Default)]
pub struct LogWatch {
    /// The latest jump in offsets: (the position before it, the offset of the record after it,
    /// when). Compaction makes such gaps; a log start inside a recent one means the broker
    /// skipped to a new log start. An old gap tells nothing: the bounds reported since would
    /// have shown the skip.
    last_gap: Option<(i64, i64, Instant)>,
    above_high_watermark_since: Option<Instant>,
}

impl LogWatch {
    /// A record at `offset` was applied while the position was `position_before`.
    pub fn on_record(&mut self, position_before: i64, offset: i64, now: Instant) {
        if offset > position_before {
            self.last_gap = Some((position_before, offset, now));
        }
    }

    /// Compares the position with the bounds last reported; called every few seconds and after
    /// each statistics report.
    pub fn check(&mut self, position: i64, bounds: LogBounds, now: Instant) -> Option<Reset> {
        if bounds.log_start >= 0 && position < bounds.log_start {
            return Some(self.reset(ResetReason::LogStartMoved, bounds.log_start));
        }
        if let Some((before, after, at)) = self.last_gap {
            let recent = now.duration_since(at) < TRUNCATION_GRACE;
            if recent && bounds.log_start > before && bounds.log_start <= after {
                // The first record after the gap sits at the new log start: the records between
                // were removed by retention, not compaction, and may have held deletes.
                return Some(self.reset(ResetReason::LogStartMoved, bounds.log_start));
            }
        }
        if bounds.high_watermark >= 0 && position > bounds.high_watermark {
            let since = *self.above_high_watermark_since.get_or_insert(now);
            if now.duration_since(since) >= TRUNCATION_GRACE {
                return Some(self.reset(ResetReason::LogTruncated, bounds.log_start.max(0)));
            }
        } else {
            self.above_high_watermark_since = None;
        }
        None
    }

    /// The broker refused the fetch position (`auto.offset.reset=error`): always a reset, with
    /// the reason the bounds give.
    pub fn on_out_of_range(&mut self, position: i64, bounds: LogBounds) -> Reset {
        let reason = if bounds.high_watermark >= 0 && position > bounds.high_watermark {
            ResetReason::LogTruncated
        } else if position < bounds.log_start {
            ResetReason::LogStartMoved
        } else {
            ResetReason::OffsetOutOfRange
        };
        self.reset(reason, bounds.log_start.max(0))
    }

    /// The topic came back after it was missing from the metadata.
    pub fn on_topic_recreated(&mut self, bounds: LogBounds) -> Reset {
        self.reset(ResetReason::TopicRecreated, bounds.log_start.max(0))
    }

    fn reset(&mut self, reason: ResetReason, from: i64) -> Reset {
        *self = LogWatch::default();
        Reset { reason, from }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(log_start: i64, high_watermark: i64) -> LogBounds {
        LogBounds {
            log_start,
            high_watermark,
        }
    }

    #[test]
    fn a_log_that_grows_and_compacts_is_never_reset() {
        let mut watch = LogWatch::default();
        let now = Instant::now();
        // Compaction gaps with the log start behind them.
        watch.on_record(0, 0, now);
        watch.on_record(1, 7, now);
        watch.on_record(8, 20, now);
        assert_eq!(watch.check(21, bounds(0, 21), now), None);
        assert_eq!(
            watch.check(21, bounds(0, 500), now),
            None,
            "behind is lag, not a reset"
        );
        // A log start that moves but stays behind the position is retention doing its job.
        assert_eq!(watch.check(21, bounds(21, 21), now), None);
        // Also when it lands in an old compaction gap.
        let later = now + TRUNCATION_GRACE;
        assert_eq!(watch.check(21, bounds(15, 21), later), None);
    }

    #[test]
    fn a_log_start_past_the_position_resets_from_the_new_start() {
        let mut watch = LogWatch::default();
        assert_eq!(
            watch.check(10, bounds(50, 90), Instant::now()),
            Some(Reset {
                reason: ResetReason::LogStartMoved,
                from: 50
            })
        );
    }

    #[test]
    fn a_gap_that_ends_at_the_new_log_start_was_retention() {
        // A broker that answers a fetch below the log start with the records from the log start
        // (no out-of-range error): the position is past the start by the time the bounds arrive.
        let mut watch = LogWatch::default();
        watch.on_record(10, 50, Instant::now());
        let reset = watch.check(51, bounds(50, 90), Instant::now()).unwrap();
        assert_eq!(reset.reason, ResetReason::LogStartMoved);
        assert_eq!(reset.from, 50);
        assert_eq!(
            watch.check(51, bounds(50, 90), Instant::now()),
            None,
            "reset once"
        );
    }

    #[test]
    fn a_position_above_the_high_watermark_resets_only_when_it_persists() {
        let mut watch = LogWatch::default();
        let start = Instant::now();
        assert_eq!(watch.check(100, bounds(0, 40), start), None);
        assert_eq!(
            watch.check(100, bounds(0, 40), start + TRUNCATION_GRACE / 2),
            None
        );
        let reset = watch.check(100, bounds(0, 40), start + TRUNCATION_GRACE).unwrap();
        assert_eq!(reset.reason, ResetReason::LogTruncated);
        assert_eq!(reset.from, 0);
        // A watermark that catches up in time (a clean leader change, stale statistics) is not.
        let mut watch = LogWatch::default();
        assert_eq!(watch.check(100, bounds(0, 40), start), None);
        assert_eq!(
            watch.check(100, bounds(0, 100), start + TRUNCATION_GRACE / 2),
            None
        );
        assert_eq!(watch.check(100, bounds(0, 40), start + TRUNCATION_GRACE), None);
    }

    #[test]
    fn out_of_range_names_the_side_it_fell_off() {
        let mut watch = LogWatch::default();
        assert_eq!(
            watch.on_out_of_range(100, bounds(0, 40)).reason,
            ResetReason::LogTruncated
        );
        assert_eq!(
            watch.on_out_of_range(10, bounds(50, 90)),
            Reset {
                reason: ResetReason::LogStartMoved,
                from: 50
            }
        );
        assert_eq!(
            watch.on_out_of_range(60, bounds(50, 90)).reason,
            ResetReason::OffsetOutOfRange
        );
        assert_eq!(watch.on_topic_recreated(bounds(0, 3)).from, 0);
    }
}
