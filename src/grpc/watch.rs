//! Watch: a table's changes streamed to the app, resumable, bounded.
//!
//! Each stream is a task on the process's main runtime (filtering and copying stay off the
//! serving thread), reading the table's change feed (`store::Feed`) through its own cursor and
//! handing events to tonic through a small channel. A client that reads slowly only stalls its
//! own task: the changes it has not read yet stay in the shared history, and the ingest thread
//! drops the watcher once it is more than half that history behind. The stream then ends with
//! RESOURCE_EXHAUSTED and the position to resume from, which the history still holds.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::config::WatchConfig;
use crate::metrics::{GrpcMethod, Metrics};
use crate::proto::change_event::Type;
use crate::proto::{ChangeEvent, WatchRequest};
use crate::store::{Cursor, Feed, FeedEvent, ResumeError, Store, Table};

/// The trailer naming the position a stream that ended early can be resumed from.
pub const RESUME_TRAILER: &str = "cdc-cache-resume-from";
/// Events handed to tonic ahead of the client; the rest wait in the shared history.
const CHANNEL_EVENTS: usize = 64;
/// Changes read from the history per turn.
const READ_BATCH: usize = 256;
/// A watcher whose filter skipped changes hears of its new position this often at most.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How long a table's first watcher waits for its ingest thread to start numbering changes.
const FEED_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Map shards copied out for `include_initial` and not yet sent, across all streams: each is
/// 1/8 of a table on 2 CPUs, so this bounds what initial reads hold (and how many shards are
/// read-locked for copying at once). Streams beyond it wait their turn.
const INITIAL_READS: usize = 2;
/// An initial read whose client takes no row for this long gives its turn up (its stream ends):
/// a stalled client must not keep the others waiting.
const INITIAL_SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub type EventSender = mpsc::Sender<Result<ChangeEvent, Status>>;

/// What the service needs to start streams.
pub struct Watches {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    config: WatchConfig,
    max_keys: usize,
    /// Streams open, across tables, against --max-watchers.
    open: Arc<AtomicUsize>,
    /// Turns at copying a shard out for `include_initial` and sending it (`INITIAL_READS`).
    initial_reads: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the server stops accepting calls: every stream ends, so shutdown waits
    /// for none.
    stop: CancellationToken,
    /// The main runtime, where stream tasks run.
    runtime: tokio::runtime::Handle,
}

/// Which keys a watcher wants.
enum Filter {
    All,
    Keys(HashSet<Bytes>),
    Prefix(Bytes),
}

impl Filter {
    fn matches(&self, key: &[u8]) -> bool {
        match self {
            Filter::All => true,
            Filter::Keys(keys) => keys.contains(key),
            Filter::Prefix(prefix) => key.starts_with(prefix),
        }
    }
}

/// A request checked and resolved, ready to stream.
struct Plan {
    table: Arc<Table>,
    filter: Filter,
    include_initial: bool,
    resume_from: Option<String>,
}

impl Watches {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        config: WatchConfig,
        max_keys: usize,
        stop: CancellationToken,
    ) -> Self {
        Self {
            store,
            metrics,
            config,
            max_keys,
            open: Arc::default(),
            initial_reads: Arc::new(tokio::sync::Semaphore::new(INITIAL_READS)),
            stop,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Checks the request and starts its stream; a bad request fails the call at once.
    pub fn start(
        &self,
        request: WatchRequest,
    ) -> Result<mpsc::Receiver<Result<ChangeEvent, Status>>, Status> {
        let plan = self.plan(request).inspect_err(|status| {
            self.metrics
                .grpc()
                .observe_stream(GrpcMethod::Watch, status.code());
        })?;
        let open = OpenStream::claim(&self.open, self.config.max_watchers).ok_or_else(|| {
            plan.table.note_watch_refused();
            let status = match self.config.max_watchers {
                0 => Status::resource_exhausted("Watch is turned off on this sidecar (--max-watchers 0)"),
                max => Status::resource_exhausted(format!(
                    "{max} Watch streams are open, the most allowed (--max-watchers); retry later"
                )),
            };
            self.metrics
                .grpc()
                .observe_stream(GrpcMethod::Watch, status.code());
            status
        })?;
        let (sender, receiver) = mpsc::channel(CHANNEL_EVENTS);
        let stream = Stream {
            plan,
            config: self.config,
            initial_reads: self.initial_reads.clone(),
            sender,
            stop: self.stop.clone(),
            metrics: self.metrics.clone(),
        };
        self.runtime.spawn(async move {
            let _open = open;
            stream.run().await;
        });
        Ok(receiver)
    }

    fn plan(&self, request: WatchRequest) -> Result<Plan, Status> {
        let table = self
            .store
            .table(&request.table)
            .map_err(|e| Status::from(super::RequestError::from(e)))
            .cloned()?;
        let bad = |message: String| Err(Status::invalid_argument(message));
        if !request.keys.is_empty() && !request.prefix.is_empty() {
            return bad("keys and prefix: give one or the other".into());
        }
        if request.include_initial && !request.resume_from.is_empty() {
            return bad(
                "include_initial and resume_from: a resumed stream continues after its position; re-read without resume_from"
                    .into(),
            );
        }
        if request.keys.len() > self.max_keys {
            return bad(format!(
                "{} keys in one Watch; the limit is {} (--max-multiget-keys); watch a prefix or all keys instead",
                request.keys.len(),
                self.max_keys
            ));
        }
        let filter = if !request.keys.is_empty() {
            let keys = super::service::canonical_keys(&table, &request.keys)
                .map_err(Status::from)?
                .iter()
                .map(|key| Bytes::copy_from_slice(key))
                .collect();
            Filter::Keys(keys)
        } else if !request.prefix.is_empty() {
            Filter::Prefix(request.prefix)
        } else {
            Filter::All
        };
        Ok(Plan {
            table,
            filter,
            include_initial: request.include_initial,
            resume_from: Some(request.resume_from).filter(|p| !p.is_empty()),
        })
    }
}

/// One open stream, counted against --max-watchers until dropped.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn claim(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Self(open.clone()))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a stream ended early.
struct End(Status);

impl End {
    /// An ending that names the position to resume from, in the message and the trailer.
    fn resumable(code: Code, reason: &str, position: Option<String>) -> Self {
        let mut metadata = MetadataMap::new();
        let message = match &position {
            Some(position) => {
                if let Ok(value) = MetadataValue::try_from(position.as_str()) {
                    metadata.insert(RESUME_TRAILER, value);
                }
                format!("{reason}; resume_from {position:?} continues without a gap")
            }
            None => format!("{reason}; watch again"),
        };
        End(Status::with_metadata(code, message, metadata))
    }
}

/// Why sending stopped.
enum Stop {
    ClientGone,
    ShuttingDown,
}

impl Stop {
    fn end(self, position: Option<String>) -> End {
        match self {
            Stop::ClientGone => End(Status::cancelled("the client went away")),
            Stop::ShuttingDown => End::resumable(Code::Unavailable, "the sidecar is shutting down", position),
        }
    }
}

/// A stream's task.
struct Stream {
    plan: Plan,
    config: WatchConfig,
    initial_reads: Arc<tokio::sync::Semaphore>,
    sender: EventSender,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Stream {
    async fn run(self) {
        // A place in the channel for the ending, taken now: a stream ends early mostly because
        // its client stopped reading, and waiting for room then could hold the task (and its
        // place among --max-watchers) for as long as the client keeps the connection open.
        let Ok(ending) = self.sender.clone().reserve_owned().await else {
            return self.metrics.grpc().observe_stream(GrpcMethod::Watch, Code::Ok);
        };
        let code = match self.stream().await {
            Ok(()) => Code::Ok,
            // The client closing its stream is how a watch ends normally.
            Err(End(status)) if status.code() == Code::Cancelled => Code::Ok,
            Err(End(status)) => {
                let code = status.code();
                ending.send(Err(status));
                code
            }
        };
        self.metrics.grpc().observe_stream(GrpcMethod::Watch, code);
    }

    async fn stream(&self) -> Result<(), End> {
        let table = &self.plan.table;
        self.until(table.ready_latch().wait()).await?;
        let feed = table.start_feed(self.config.history);
        self.until_acknowledged(feed).await?;
        let next = match &self.plan.resume_from {
            Some(position) => feed.resume(position).map_err(|error| {
                let code = match error {
                    ResumeError::Malformed(_) | ResumeError::Ahead(_) => Code::InvalidArgument,
                    ResumeError::OtherRun(_) | ResumeError::TooOld { .. } => Code::OutOfRange,
                };
                End(Status::new(code, error.to_string()))
            })?,
            None => feed.assigned() + 1,
        };
        let cursor = Registered::new(feed, next);
        let synced_at = if self.plan.include_initial {
            self.send_initial_rows(&cursor).await?
        } else {
            Vec::new()
        };
        self.follow(feed, &cursor, synced_at).await
    }

    /// Sends the matching rows shard by shard; returns, per shard, the number of the last change
    /// its rows show (the changes up to it must not be sent again).
    async fn send_initial_rows(&self, cursor: &Registered<'_>) -> Result<Vec<u64>, End> {
        let table = &self.plan.table;
        let keys: Option<Arc<[Bytes]>> = match &self.plan.filter {
            Filter::Keys(keys) => Some(keys.iter().cloned().collect()),
            _ => None,
        };
        let prefix = match &self.plan.filter {
            Filter::Prefix(prefix) => prefix.clone(),
            _ => Bytes::new(),
        };
        let mut shown = Vec::with_capacity(table.shard_count());
        for shard in 0..table.shard_count() {
            if cursor.0.is_dropped() {
                return Err(End::resumable(
                    Code::ResourceExhausted,
                    "the watcher fell more than half of --watch-history behind while reading the initial rows",
                    None,
                ));
            }
            // A turn covers copying the shard and sending its rows: what the copy holds.
            let turn = self.initial_reads.clone().acquire_owned();
            let _turn = self
                .until(turn)
                .await?
                .map_err(|_| End(Status::unavailable("the sidecar is shutting down; watch again")))?;
            let (table, keys, prefix) = (table.clone(), keys.clone(), prefix.clone());
            // Copying a shard's rows holds its lock: off the async threads.
            let (seq, rows) = tokio::task::spawn_blocking(move || {
                table.watch_shard(shard, keys.as_deref(), |key| key.starts_with(&prefix))
            })
            .await
            .map_err(|e| End(Status::internal(format!("reading the rows failed: {e}"))))?;
            shown.push(seq);
            for row in rows {
                let (key, found) = self.plan.table.held_row(&row);
                let event = ChangeEvent {
                    r#type: Type::Initial.into(),
                    key,
                    value: found.value,
                    partition: found.partition,
                    offset: found.offset,
                    timestamp_ms: found.timestamp_ms,
                    position: String::new(),
                };
                match tokio::time::timeout(INITIAL_SEND_TIMEOUT, self.send(event)).await {
                    Ok(sent) => sent.map_err(|stop| stop.end(None))?,
                    Err(_) => {
                        return Err(End::resumable(
                            Code::ResourceExhausted,
                            &format!(
                                "the client took no initial row for {INITIAL_SEND_TIMEOUT:?}, holding up other watchers' initial reads"
                            ),
                            None,
                        ))
                    }
                }
            }
        }
        Ok(shown)
    }

    /// Streams changes from the cursor on. `shown` (after initial rows) holds, per shard, the
    /// last change the rows showed: those are skipped, and the changes up to the latest of them
    /// go without a position, before SYNCED.
    async fn follow(&self, feed: &Feed, cursor: &Registered<'_>, shown: Vec<u64>) -> Result<(), End> {
        let table = &self.plan.table;
        let synced = shown.iter().copied().max().unwrap_or(0).max(cursor.0.next() - 1);
        let mut next = cursor.0.next();
        let mut sent_synced = false;
        let mut batch = Vec::with_capacity(READ_BATCH);
        // Changes skipped (not matching) since the last event sent.
        let mut skipped = false;
        let mut last_sent = Instant::now();
        loop {
            let resume_from = |next: u64| sent_synced.then(|| feed.position(next - 1));
            if !sent_synced && next > synced {
                self.send(position_event(Type::Synced, feed.position(synced)))
                    .await
                    .map_err(|stop| stop.end(None))?;
                sent_synced = true;
                last_sent = Instant::now();
                continue;
            }
            let published = feed.published().notified();
            tokio::pin!(published);
            published.as_mut().enable();
            let lost = || {
                End(Status::out_of_range(format!(
                    "the changes after this stream's position left the history before it read them (more than --watch-history changes at once); re-read: watch with include_initial{}",
                    if sent_synced { "" } else { " again" }
                )))
            };
            if cursor.0.is_dropped() {
                if !feed.holds(next) {
                    return Err(lost());
                }
                return Err(End::resumable(
                    Code::ResourceExhausted,
                    "the watcher fell more than half of --watch-history behind (it reads too slowly)",
                    resume_from(next),
                ));
            }
            batch.clear();
            if feed.read(next, READ_BATCH, &mut batch).is_none() {
                return Err(lost());
            }
            if batch.is_empty() {
                let progress_due = (skipped && sent_synced).then_some(last_sent + PROGRESS_INTERVAL);
                tokio::select! {
                    _ = &mut published => {}
                    _ = self.stop.cancelled() => return Err(Stop::ShuttingDown.end(resume_from(next))),
                    _ = self.sender.closed() => return Ok(()),
                    _ = sleep_until(progress_due) => {
                        self.send(position_event(Type::Progress, feed.position(next - 1)))
                            .await
                            .map_err(|stop| stop.end(resume_from(next)))?;
                        skipped = false;
                        last_sent = Instant::now();
                    }
                }
                continue;
            }
            let mut sent = 0;
            for (seq, event) in batch.drain(..) {
                let before_synced = seq <= synced;
                let shown_already = before_synced && table.already_shown(&shown, seq, &event.key);
                if self.plan.filter.matches(&event.key) && !shown_already {
                    let position = if before_synced {
                        String::new()
                    } else {
                        feed.position(seq)
                    };
                    self.send(change_event(event, position))
                        .await
                        .map_err(|stop| stop.end(resume_from(next)))?;
                    sent += 1;
                    last_sent = Instant::now();
                    skipped = false;
                } else if !before_synced {
                    skipped = true;
                }
                next = seq + 1;
                cursor.0.set_next(next);
                if !sent_synced && next > synced {
                    break;
                }
            }
            feed.note_sent(sent);
            if skipped && sent_synced && last_sent.elapsed() >= PROGRESS_INTERVAL {
                self.send(position_event(Type::Progress, feed.position(next - 1)))
                    .await
                    .map_err(|stop| stop.end(resume_from(next)))?;
                skipped = false;
                last_sent = Instant::now();
            }
        }
    }

    /// Hands one event to tonic, waiting while the client is behind; ends the stream if the
    /// client went away or the sidecar stops.
    async fn send(&self, event: ChangeEvent) -> Result<(), Stop> {
        tokio::select! {
            sent = self.sender.send(Ok(event)) => sent.map_err(|_| Stop::ClientGone),
            _ = self.stop.cancelled() => Err(Stop::ShuttingDown),
        }
    }

    /// Waits for `future` unless the sidecar stops or the client goes first.
    async fn until<T>(&self, future: impl std::future::Future<Output = T>) -> Result<T, End> {
        tokio::select! {
            output = future => Ok(output),
            _ = self.stop.cancelled() => Err(Stop::ShuttingDown.end(None)),
            _ = self.sender.closed() => Err(Stop::ClientGone.end(None)),
        }
    }

    /// Waits for the ingest thread to number changes (a table's first watcher only).
    async fn until_acknowledged(&self, feed: &Feed) -> Result<(), End> {
        let deadline = tokio::time::Instant::now() + FEED_START_TIMEOUT;
        loop {
            let published = feed.published().notified();
            tokio::pin!(published);
            published.as_mut().enable();
            if feed.is_acknowledged() {
                return Ok(());
            }
            let table = self.plan.table.name();
            tokio::select! {
                _ = &mut published => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(End(Status::unavailable(format!(
                        "table {table:?}: its ingest thread did not pick the watcher up within {FEED_START_TIMEOUT:?}; see Status"
                    ))));
                }
                result = self.until(std::future::pending()) => return result,
            }
        }
    }
}

/// A cursor registered with the feed until the stream ends.
struct Registered<'a>(Arc<Cursor>, &'a Feed);

impl<'a> Registered<'a> {
    fn new(feed: &'a Feed, next: u64) -> Self {
        Self(feed.register(next), feed)
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.1.unregister(&self.0);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn position_event(kind: Type, position: String) -> ChangeEvent {
    ChangeEvent {
        r#type: kind.into(),
        position,
        ..ChangeEvent::default()
    }
}

fn change_event(event: FeedEvent, position: String) -> ChangeEvent {
    let (kind, value) = match event.value {
        Some(value) => (Type::Upsert, value),
        None => (Type::Delete, Bytes::new()),
    };
    ChangeEvent {
        r#type: kind.into(),
        key: event.key,
        value,
        partition: event.partition,
        offset: event.offset,
        timestamp_ms: event.timestamp_ms,
        position,
    }
}
