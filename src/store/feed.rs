//! The change feed behind Watch: every change the ingest thread makes to a watched table, in the
//! order it was applied, numbered, and kept for a while so a watcher can resume where it left off.
//!
//! One feed per table, created by its first watcher; until then ingest pays one atomic load per
//! record. The history is shared: a hundred watchers cost one copy of each change, and a slow
//! watcher holds nothing of its own, only a cursor into the history. A watcher whose cursor falls
//! more than half the history behind is dropped (its stream ends with the position reached), so
//! it can still resume from that position for at least another half history.
//!
//! Numbering: a change gets its number while the ingest thread holds the map shard of its key,
//! so a reader holding that shard sees numbers and map consistent: every change numbered up to
//! the number it reads is in the shard, none after. That is what lets `include_initial` read the
//! rows and then send exactly the changes the rows do not show (see [`super::Table::watch_shard`]).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

/// How much history a watched table keeps: whichever bound is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedSettings {
    pub history_events: usize,
    pub history_bytes: usize,
}

/// One change to the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    pub key: Bytes,
    /// The new value; None for a deletion.
    pub value: Option<Bytes>,
    pub partition: i32,
    /// -1 for a row removed because its partition's log no longer has it (a reset log).
    pub offset: i64,
    pub timestamp_ms: i64,
}

impl FeedEvent {
    /// What the event costs the history: its bytes and a fixed share for the bookkeeping.
    fn cost(&self) -> u64 {
        const OVERHEAD: u64 = 96;
        (self.key.len() + self.value.as_ref().map_or(0, Bytes::len)) as u64 + OVERHEAD
    }
}

/// Where a watcher is: the number of the next change it will look at.
#[derive(Debug)]
pub struct Cursor {
    next: AtomicU64,
    /// Set by ingest when the watcher fell too far behind; the watcher ends its stream.
    dropped: AtomicBool,
}

impl Cursor {
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    pub fn set_next(&self, next: u64) {
        self.next.store(next, Ordering::Release);
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }
}

/// A position a watcher cannot continue from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("resume_from {0:?} is not a position this sidecar gave out")]
    Malformed(String),
    #[error(
        "resume_from {0:?} comes from an earlier run of the sidecar (changes are kept in memory only) or another table; re-read: watch with include_initial"
    )]
    OtherRun(String),
    #[error(
        "resume_from {position:?} is older than the changes kept ({oldest} is the oldest; --watch-history); re-read: watch with include_initial"
    )]
    TooOld { position: String, oldest: String },
    #[error("resume_from {0:?} is ahead of every change this table has had")]
    Ahead(String),
}

/// The changes kept, numbered from `first`.
#[derive(Default)]
struct History {
    first: u64,
    /// Each change with the running total of history costs up to and including it.
    events: VecDeque<(FeedEvent, u64)>,
    /// Running total of costs, through the last change.
    total: u64,
}

impl History {
    /// The running total through change `seq - 1` (what a cursor at `seq` has consumed).
    fn total_before(&self, seq: u64) -> u64 {
        match seq.checked_sub(self.first) {
            Some(0) | None => self.events.front().map_or(self.total, |(e, t)| t - e.cost()),
            Some(index) => self
                .events
                .get(index as usize - 1)
                .map_or(self.total, |(_, t)| *t),
        }
    }

    fn bytes(&self) -> u64 {
        self.total - self.total_before(self.first)
    }
}

pub struct Feed {
    /// Tells this feed's positions from those of an earlier run (or another table).
    epoch: u64,
    settings: FeedSettings,
    /// The number of the last change numbered (0: none yet). Written by the ingest thread only.
    assigned: AtomicU64,
    /// Numbered changes not yet in the history: the ingest thread publishes them in bulk.
    pending: Mutex<Vec<FeedEvent>>,
    history: RwLock<History>,
    /// Set by the ingest thread once it numbers changes (see [`Feed::acknowledge`]).
    acknowledged: AtomicBool,
    /// Woken when changes are published or a watcher is dropped.
    published: tokio::sync::Notify,
    watchers: Mutex<Vec<Arc<Cursor>>>,
    dropped: AtomicU64,
    sent: AtomicU64,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("settings", &self.settings)
            .field("assigned", &self.assigned())
            .field("watchers", &self.watcher_count())
            .finish_non_exhaustive()
    }
}

impl Feed {
    pub fn new(settings: FeedSettings) -> Self {
        Self {
            epoch: rand::random::<u64>() | 1,
            settings,
            assigned: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            history: RwLock::new(History {
                first: 1,
                ..History::default()
            }),
            acknowledged: AtomicBool::new(false),
            published: tokio::sync::Notify::new(),
            watchers: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> FeedSettings {
        self.settings
    }

    /// The number of the last change numbered so far.
    pub fn assigned(&self) -> u64 {
        self.assigned.load(Ordering::Acquire)
    }

    /// Numbers a change; called by the ingest thread while it holds the key's map shard.
    pub(super) fn number(&self, event: FeedEvent) {
        let seq = self.assigned.load(Ordering::Relaxed) + 1;
        self.assigned.store(seq, Ordering::Release);
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }

    /// Called by the ingest thread between batches: from now on it numbers every change.
    /// Watchers wait for this before they read rows, so no change made by a record whose
    /// application began before the feed existed can slip between rows and changes.
    pub(super) fn acknowledge(&self) {
        if !self.acknowledged.swap(true, Ordering::AcqRel) {
            self.published.notify_waiters();
        }
    }

    pub fn is_acknowledged(&self) -> bool {
        self.acknowledged.load(Ordering::Acquire)
    }

    /// Moves the numbered changes into the history, drops what passes its bounds and the
    /// watchers too far behind, and wakes the watchers. Ingest thread only.
    ///
    /// How far behind a watcher is, is measured before this batch: it could not have read the
    /// batch yet, so a large batch alone (a truncate, a rebuilt partition) drops nobody. A batch
    /// larger than the history can still move past a watcher's position; that watcher finds
    /// its next change gone ([`Feed::read`]) and must re-read.
    pub(super) fn publish(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return;
        }
        let (max_events, max_bytes) = (self.settings.history_events, self.settings.history_bytes as u64);
        let mut history = self.history.write().unwrap_or_else(|e| e.into_inner());
        let head = history.first + history.events.len() as u64;
        let mut dropped = 0;
        for cursor in self.watchers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let next = cursor.next();
            if next < history.first {
                continue; // already past: the watcher ends when it reads
            }
            let behind_events = head.saturating_sub(next);
            let behind_bytes = history.total - history.total_before(next);
            let too_far = behind_events > (max_events / 2) as u64 || behind_bytes > max_bytes / 2;
            if too_far && !cursor.dropped.swap(true, Ordering::AcqRel) {
                dropped += 1;
            }
        }
        for event in batch {
            history.total += event.cost();
            let total = history.total;
            history.events.push_back((event, total));
        }
        // The newest change stays, whatever its size: a watcher needs it to move on.
        while history.events.len() > 1 && (history.events.len() > max_events || history.bytes() > max_bytes) {
            history.events.pop_front();
            history.first += 1;
        }
        drop(history);
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.published.notify_waiters();
    }

    /// Whether change `next` (a cursor's) is still in the history or yet to come.
    pub fn holds(&self, next: u64) -> bool {
        next >= self.history.read().unwrap_or_else(|e| e.into_inner()).first
    }

    /// What watchers wait on: register with `notified()` (and `enable` it) before reading.
    pub fn published(&self) -> &tokio::sync::Notify {
        &self.published
    }

    /// Registers a watcher starting at change `next`.
    pub fn register(&self, next: u64) -> Arc<Cursor> {
        let cursor = Arc::new(Cursor {
            next: AtomicU64::new(next),
            dropped: AtomicBool::new(false),
        });
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cursor.clone());
        cursor
    }

    pub fn unregister(&self, cursor: &Arc<Cursor>) {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| !Arc::ptr_eq(c, cursor));
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Watchers dropped for falling behind, since the feed started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts events sent to watchers.
    pub fn note_sent(&self, events: u64) {
        if events > 0 {
            self.sent.fetch_add(events, Ordering::Relaxed);
        }
    }

    /// Events sent to watchers, since the feed started (initial rows and markers not counted).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Changes kept, and their cost in bytes.
    pub fn history_size(&self) -> (usize, u64) {
        let history = self.history.read().unwrap_or_else(|e| e.into_inner());
        (history.events.len(), history.bytes())
    }

    /// Appends published changes numbered from `next` on, at most `max`, with their numbers.
    /// None when change `next` has left the history.
    pub fn read(&self, next: u64, max: usize, out: &mut Vec<(u64, FeedEvent)>) -> Option<()> {
        let history = self.history.read().unwrap_or_else(|e| e.into_inner());
        let skip = next.checked_sub(history.first)? as usize;
        out.extend(
            history
                .events
                .iter()
                .skip(skip)
                .take(max)
                .zip(next..)
                .map(|((event, _), seq)| (seq, event.clone())),
        );
        Some(())
    }

    /// The position of change `seq`, as watchers see it.
    pub fn position(&self, seq: u64) -> String {
        format!("{:016x}-{seq}", self.epoch)
    }

    /// The number of the first change after `position`.
    pub fn resume(&self, position: &str) -> Result<u64, ResumeError> {
        let malformed = || ResumeError::Malformed(position.to_string());
        let (epoch, seq) = position.split_once('-').ok_or_else(malformed)?;
        let epoch = u64::from_str_radix(epoch, 16).map_err(|_| malformed())?;
        let seq: u64 = seq.parse().map_err(|_| malformed())?;
        if epoch != self.epoch {
            return Err(ResumeError::OtherRun(position.to_string()));
        }
        if seq > self.assigned() {
            return Err(ResumeError::Ahead(position.to_string()));
        }
        let first = self.history.read().unwrap_or_else(|e| e.into_inner()).first;
        if seq + 1 < first {
            return Err(ResumeError::TooOld {
                position: position.to_string(),
                oldest: self.position(first - 1),
            });
        }
        Ok(seq + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, value: Option<&str>) -> FeedEvent {
        FeedEvent {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            partition: 0,
            offset: 0,
            timestamp_ms: -1,
        }
    }

    fn feed(history_events: usize) -> Feed {
        Feed::new(FeedSettings {
            history_events,
            history_bytes: 1 << 20,
        })
    }

    fn keys(feed: &Feed, next: u64) -> Option<Vec<(u64, String)>> {
        let mut out = Vec::new();
        feed.read(next, usize::MAX, &mut out)?;
        Some(
            out.into_iter()
                .map(|(seq, e)| (seq, String::from_utf8(e.key.to_vec()).unwrap()))
                .collect(),
        )
    }

    #[test]
    fn changes_are_read_in_order_once_published() {
        let feed = feed(10);
        feed.number(event("a", Some("1")));
        feed.number(event("b", None));
        assert_eq!(feed.assigned(), 2);
        assert_eq!(keys(&feed, 1), Some(vec![]), "not published yet");
        feed.publish();
        assert_eq!(keys(&feed, 1), Some(vec![(1, "a".into()), (2, "b".into())]));
        assert_eq!(keys(&feed, 2), Some(vec![(2, "b".into())]));
        assert_eq!(keys(&feed, 3), Some(vec![]));
    }

    #[test]
    fn history_keeps_the_newest_and_says_when_a_change_has_left() {
        let feed = feed(4);
        for i in 0..10 {
            feed.number(event(&i.to_string(), Some("v")));
        }
        feed.publish();
        assert_eq!(feed.history_size().0, 4);
        assert_eq!(keys(&feed, 6), None, "change 6 has left");
        assert_eq!(keys(&feed, 7).unwrap().len(), 4);
    }

    #[test]
    fn the_byte_bound_holds_but_the_newest_change_stays() {
        let feed = Feed::new(FeedSettings {
            history_events: 100,
            history_bytes: 1000,
        });
        for _ in 0..20 {
            feed.number(event("k", Some(&"x".repeat(200))));
        }
        feed.publish();
        let (events, bytes) = feed.history_size();
        assert!(bytes <= 1000, "{bytes}");
        assert_eq!(events, 3);
        feed.number(event("k", Some(&"x".repeat(5000))));
        feed.publish();
        assert_eq!(feed.history_size().0, 1, "the newest change stays");
    }

    #[test]
    fn positions_resume_after_themselves_and_name_what_is_wrong() {
        let feed = feed(4);
        for i in 0..3 {
            feed.number(event(&i.to_string(), None));
        }
        feed.publish();
        assert_eq!(feed.resume(&feed.position(2)), Ok(3));
        assert_eq!(feed.resume(&feed.position(0)), Ok(1), "before the first change");
        assert!(matches!(
            feed.resume(&feed.position(9)),
            Err(ResumeError::Ahead(_))
        ));
        assert!(matches!(feed.resume("x"), Err(ResumeError::Malformed(_))));
        assert!(matches!(feed.resume("zz-1"), Err(ResumeError::Malformed(_))));
        let other = super::Feed::new(feed.settings());
        assert!(matches!(
            feed.resume(&other.position(1)),
            Err(ResumeError::OtherRun(_))
        ));
        for i in 0..10 {
            feed.number(event(&i.to_string(), None));
        }
        feed.publish();
        let error = feed.resume(&feed.position(2)).unwrap_err();
        assert!(matches!(error, ResumeError::TooOld { .. }), "{error}");
        assert!(error.to_string().contains("--watch-history"), "{error}");
        assert_eq!(
            feed.resume(&feed.position(9)),
            Ok(10),
            "the oldest kept, less one"
        );
    }

    #[test]
    fn a_watcher_more_than_half_the_history_behind_is_dropped_while_still_resumable() {
        let feed = feed(10);
        let slow = feed.register(1);
        let keeping_up = feed.register(1);
        let publish = |n: usize| {
            for i in 0..n {
                feed.number(event(&i.to_string(), None));
            }
            feed.publish();
        };
        // One batch of 6: nobody could have read it yet, so nobody is dropped.
        publish(6);
        assert!(!slow.is_dropped() && !keeping_up.is_dropped());
        keeping_up.set_next(7);
        // Measured before the next batch: the slow one is 6 behind (more than 5), the other 0.
        publish(1);
        assert!(slow.is_dropped(), "6 behind");
        assert!(!keeping_up.is_dropped());
        assert_eq!(feed.dropped(), 1);
        assert!(feed.holds(slow.next()));
        assert_eq!(
            feed.resume(&feed.position(slow.next() - 1)),
            Ok(1),
            "the dropped watcher's position still resumes"
        );
    }

    #[test]
    fn a_batch_larger_than_the_history_moves_past_a_position_which_then_says_so() {
        let feed = feed(10);
        let cursor = feed.register(1);
        for i in 0..25 {
            feed.number(event(&i.to_string(), None));
        }
        feed.publish();
        assert!(!cursor.is_dropped(), "not behind before the batch");
        assert!(!feed.holds(cursor.next()));
        assert_eq!(keys(&feed, cursor.next()), None);
    }

    #[test]
    fn unregistered_watchers_are_not_counted() {
        let feed = feed(10);
        let a = feed.register(1);
        let _b = feed.register(1);
        feed.unregister(&a);
        assert_eq!(feed.watcher_count(), 1);
    }
}
