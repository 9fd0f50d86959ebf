//! Per-partition progress: what has been applied, where the log ended at start-up, where it ends now.
//!
//! A partition has caught up once the consumer reached its end: an end-of-partition event, which
//! librdkafka raises when a fetch leaves nothing more to read. The end offset asked for at start-up
//! (ListOffsets) only feeds the progress report: some brokers under-report it (Tansu 0.6 on
//! multi-partition topics), and readiness must not open on such a figure.
//!
//! Written only by the table's ingest thread, read by gRPC status calls and metrics, hence atomics
//! rather than locks.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

#[derive(Debug)]
pub struct PartitionState {
    partition: i32,
    /// The log start offset when reading began; bounds the bootstrap progress report.
    log_start: AtomicI64,
    /// The log end offset at start-up (or when a reset began), as the broker reported it: the
    /// bootstrap progress report counts towards it.
    end_offset: AtomicI64,
    /// Next offset to apply. Records below it are redeliveries and are ignored.
    position: AtomicI64,
    /// Latest high watermark (or last stable offset) heard from the broker.
    high_watermark: AtomicI64,
    /// Latest log start offset heard from the broker (-1 until known).
    reported_log_start: AtomicI64,
    /// Being read again after a reset; rows it no longer has go once it has caught up.
    rebuilding: AtomicBool,
    /// Resets since start-up.
    resets: AtomicU64,
    /// Kafka timestamp of the last applied record (ms since the epoch; 0 before the first).
    last_timestamp_ms: AtomicI64,
    caught_up: AtomicBool,
}

impl PartitionState {
    /// A partition present at start-up, whose log spans `[log_start, end_offset)`.
    pub fn new(partition: i32, log_start: i64, end_offset: i64) -> Self {
        let log_start = log_start.max(0);
        let end_offset = end_offset.max(log_start);
        Self {
            partition,
            log_start: AtomicI64::new(log_start),
            end_offset: AtomicI64::new(end_offset),
            position: AtomicI64::new(log_start),
            high_watermark: AtomicI64::new(end_offset),
            reported_log_start: AtomicI64::new(-1),
            rebuilding: AtomicBool::new(false),
            resets: AtomicU64::new(0),
            last_timestamp_ms: AtomicI64::new(0),
            caught_up: AtomicBool::new(false),
        }
    }

    /// A partition that counts as caught up from the start: one added to the topic after
    /// start-up. It is read from its beginning like any other, but it does not hold readiness
    /// back: the table already served a complete snapshot.
    pub fn already_caught_up(partition: i32) -> Self {
        let state = Self::new(partition, 0, 0);
        state.caught_up.store(true, Ordering::Release);
        state
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn log_start(&self) -> i64 {
        self.log_start.load(Ordering::Acquire)
    }

    pub fn end_offset(&self) -> i64 {
        self.end_offset.load(Ordering::Acquire)
    }

    /// The log start offset the broker last reported (-1 until known).
    pub fn reported_log_start(&self) -> i64 {
        self.reported_log_start.load(Ordering::Relaxed)
    }

    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding.load(Ordering::Acquire)
    }

    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// Starts reading the partition again from `from` after its log was reset; it counts as
    /// caught up again at its next end of partition. `end_offset` is the log's end now.
    pub fn begin_rebuild(&self, from: i64, end_offset: i64) {
        let from = from.max(0);
        let end_offset = end_offset.max(from);
        self.resets.fetch_add(1, Ordering::Relaxed);
        self.rebuilding.store(true, Ordering::Release);
        self.log_start.store(from, Ordering::Release);
        // The old log's start, as statistics reported it, says nothing about the new log: it is
        // unknown until the first fetch of the new assignment reports it.
        self.reported_log_start.store(-1, Ordering::Relaxed);
        self.end_offset.store(end_offset, Ordering::Release);
        self.position.store(from, Ordering::Release);
        self.high_watermark.store(end_offset, Ordering::Relaxed);
        self.caught_up.store(false, Ordering::Release);
    }

    /// Starts at a snapshot's position instead of the log start (everything below it is in the
    /// map already), or back at the log start when the snapshot proves damaged. Only before any
    /// record of the partition is applied.
    pub fn restore_position(&self, position: i64) {
        self.position.store(position, Ordering::Release);
        self.high_watermark.fetch_max(position, Ordering::Relaxed);
    }

    /// The rebuild is complete (the stale rows are gone).
    pub fn end_rebuild(&self) {
        self.rebuilding.store(false, Ordering::Release);
    }

    pub fn position(&self) -> i64 {
        self.position.load(Ordering::Acquire)
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Relaxed)
    }

    pub fn last_timestamp_ms(&self) -> i64 {
        self.last_timestamp_ms.load(Ordering::Relaxed)
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Records behind the broker's end of log; never negative.
    pub fn lag(&self) -> i64 {
        (self.high_watermark() - self.position()).max(0)
    }

    /// Whether a record at `offset` is new (not a redelivery of one already applied).
    pub fn is_new(&self, offset: i64) -> bool {
        offset >= self.position()
    }

    /// Marks everything below `offset + 1` as applied.
    pub fn advance_past(&self, offset: i64, timestamp_ms: Option<i64>) {
        if let Some(ts) = timestamp_ms {
            self.last_timestamp_ms.store(ts, Ordering::Relaxed);
        }
        self.move_position_to(offset + 1);
    }

    /// The consumer reached the end of the partition; `consumer_position` is where librdkafka
    /// says the next fetch starts (past transaction markers, which never reach the app).
    /// Returns true when this made the partition catch up.
    pub fn reached_end(&self, consumer_position: Option<i64>) -> bool {
        if let Some(position) = consumer_position {
            self.move_position_to(position);
        }
        // End of partition means every offset below the broker's end has been delivered.
        self.high_watermark.fetch_max(self.position(), Ordering::Relaxed);
        !self.caught_up.swap(true, Ordering::AcqRel)
    }

    pub fn observe_high_watermark(&self, high_watermark: i64) {
        if high_watermark >= 0 {
            self.high_watermark.store(high_watermark, Ordering::Relaxed);
        }
    }

    pub fn observe_log_start(&self, log_start: i64) {
        if log_start >= 0 {
            self.reported_log_start.store(log_start, Ordering::Relaxed);
        }
    }

    fn move_position_to(&self, position: i64) {
        let previous = self.position.fetch_max(position, Ordering::AcqRel);
        self.high_watermark
            .fetch_max(previous.max(position), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_end_of_partition_catches_up() {
        // Even an empty log waits for the consumer's word: the start-up end may be under-reported.
        let empty = PartitionState::new(0, 0, 0);
        assert!(!empty.is_caught_up());
        assert!(empty.reached_end(Some(0)));
        assert!(PartitionState::already_caught_up(3).is_caught_up());
        // A broker that reported 3 as the end of a log holding 5 records.
        let p = PartitionState::new(1, 0, 3);
        p.advance_past(0, Some(10));
        p.advance_past(2, Some(12));
        assert!(!p.is_caught_up(), "reaching the reported end is not enough");
        p.advance_past(4, Some(14));
        assert!(p.reached_end(Some(5)));
        assert!(!p.reached_end(Some(5)), "reports catching up only once");
        assert_eq!(p.position(), 5);
        assert_eq!(p.last_timestamp_ms(), 14);
    }

    #[test]
    fn offset_gaps_and_log_start_above_zero() {
        // Compaction left offsets 40, 47 and 99 of a log that starts at 40 and ends at 100.
        let p = PartitionState::new(0, 40, 100);
        assert_eq!(p.position(), 40);
        assert_eq!(p.lag(), 60);
        p.advance_past(40, None);
        p.advance_past(47, None);
        p.advance_past(99, None);
        assert_eq!(p.lag(), 0);
        assert!(p.reached_end(Some(100)));
    }

    #[test]
    fn log_ending_in_a_transaction_marker_catches_up_at_end_of_partition() {
        // Records 0..=8, commit marker at 9, end offset 10: the app never sees offset 9.
        let p = PartitionState::new(0, 0, 10);
        p.advance_past(8, None);
        assert!(!p.is_caught_up());
        assert!(p.reached_end(Some(10)));
        assert_eq!(p.position(), 10);
        assert_eq!(p.lag(), 0);
        assert!(!p.reached_end(Some(10)));
    }

    #[test]
    fn redeliveries_are_not_new_and_position_never_moves_back() {
        let p = PartitionState::new(0, 0, 10);
        p.advance_past(5, None);
        assert!(!p.is_new(3));
        assert!(!p.is_new(5));
        assert!(p.is_new(6));
        p.reached_end(Some(2));
        assert_eq!(p.position(), 6);
    }

    #[test]
    fn lag_follows_the_high_watermark_and_is_never_negative() {
        let p = PartitionState::new(0, 0, 10);
        p.advance_past(9, None);
        p.observe_high_watermark(25);
        assert_eq!(p.lag(), 15);
        p.observe_high_watermark(3);
        assert_eq!(p.lag(), 0);
        p.observe_high_watermark(-1);
        assert_eq!(p.high_watermark(), 3, "an unknown (-1) watermark is ignored");
    }

    #[test]
    fn a_rebuild_reads_again_from_the_new_start_and_catches_up_at_the_next_end() {
        let p = PartitionState::new(0, 0, 10);
        p.advance_past(9, None);
        assert!(p.reached_end(Some(10)));
        p.begin_rebuild(0, 4);
        assert!(p.is_rebuilding() && !p.is_caught_up());
        assert_eq!((p.position(), p.end_offset(), p.resets()), (0, 4, 1));
        assert!(p.is_new(0), "offsets of the new log are not redeliveries");
        p.advance_past(3, None);
        assert!(p.reached_end(Some(4)));
        p.end_rebuild();
        assert!(!p.is_rebuilding());
    }
}
