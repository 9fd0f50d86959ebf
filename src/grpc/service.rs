//! `cdc_cache.v1.Cache`: lookups answered from the in-memory tables.

use std::sync::Arc;
use std::time::Instant;

use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

use super::consistency::{applied_offsets, grpc_deadline, wait_until_fresh};
use super::errors::RequestError;
use super::latest::Rounds;
use super::watch::Watches;
use crate::clock::{millis_since_epoch, now_ms};
use crate::config::WatchConfig;
use crate::format;
use crate::metrics::{GrpcMethod, Metrics};
use crate::proto::cache_server::Cache;
use crate::proto::{
    ChangeEvent, Consistency, GetRequest, GetResponse, MultiGetRequest, MultiGetResponse, PartitionStatus,
    StatusRequest, StatusResponse, TableStatus, WatchRequest,
};
use crate::store::{Found, Store, Table};

pub struct CacheService {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    max_multiget_keys: usize,
    /// Room for values in one response: the message limit less framing for every result.
    max_response_bytes: usize,
    /// Per table, the shared broker requests of `latest` reads.
    latest: std::collections::HashMap<String, Arc<Rounds>>,
    watches: Watches,
}

/// Protobuf framing of one MultiGet result beyond its value: tags, lengths, partition, offset
/// and timestamp varints, at most.
const RESULT_FRAMING_BYTES: usize = 40;

impl CacheService {
    /// Must be called on the runtime where Watch streams are to run (the main one); they all
    /// end when `stop` is cancelled.
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        max_multiget_keys: usize,
        max_message_bytes: usize,
        watch: WatchConfig,
        stop: CancellationToken,
    ) -> Self {
        let latest = store
            .tables()
            .iter()
            .map(|t| (t.name().to_string(), Arc::default()))
            .collect();
        let watches = Watches::new(store.clone(), metrics.clone(), watch, max_multiget_keys, stop);
        Self {
            store,
            metrics,
            max_multiget_keys,
            max_response_bytes: max_message_bytes,
            latest,
            watches,
        }
    }

    /// Resolves the table and refuses reads until it has caught up: before that, an absent key
    /// might only be not-yet-read, and a present one might be stale.
    fn ready_table(&self, name: &str) -> Result<&Arc<Table>, RequestError> {
        let table = self.store.table(name)?;
        if !table.is_ready() {
            return Err(RequestError::NotReady {
                table: table.name().to_string(),
                progress: table.progress(),
            });
        }
        Ok(table)
    }

    /// The ready table, once it is as fresh as the request asks (which may mean waiting).
    async fn fresh_table(
        &self,
        name: &str,
        consistency: Option<&Consistency>,
        deadline: Option<std::time::Duration>,
    ) -> Result<&Arc<Table>, RequestError> {
        let table = self.ready_table(name)?;
        if let Some(consistency) = consistency {
            let rounds = &self.latest[table.name()];
            wait_until_fresh(table, rounds, consistency, deadline).await?;
        }
        Ok(table)
    }

    async fn get(
        &self,
        request: GetRequest,
        deadline: Option<std::time::Duration>,
    ) -> Result<GetResponse, RequestError> {
        let consistency = request.consistency.as_ref();
        let table = self.fresh_table(&request.table, consistency, deadline).await?;
        let key = format::canonical_key(table.format(), &request.key)
            .map_err(|source| RequestError::BadKey { index: 0, source })?;
        // Read before the key: the row is at least as fresh as the offsets reported.
        let offsets = with_offsets(table, consistency);
        let found = table.get(&key);
        if found.is_none() {
            explain_miss(table, 0, &key)?;
        }
        Ok(GetResponse {
            applied_offsets: offsets,
            ..response(found)
        })
    }

    async fn multi_get(
        &self,
        request: MultiGetRequest,
        deadline: Option<std::time::Duration>,
    ) -> Result<MultiGetResponse, RequestError> {
        let consistency = request.consistency.as_ref();
        let table = self.fresh_table(&request.table, consistency, deadline).await?;
        self.metrics.grpc().observe_multiget_keys(request.keys.len());
        if request.keys.len() > self.max_multiget_keys {
            return Err(RequestError::TooManyKeys {
                count: request.keys.len(),
                max: self.max_multiget_keys,
            });
        }
        let keys = canonical_keys(table, &request.keys)?;
        let offsets = with_offsets(table, consistency);
        let room = self
            .max_response_bytes
            .saturating_sub(keys.len() * RESULT_FRAMING_BYTES);
        let found = table
            .get_many(&keys, room)
            .map_err(|limit| RequestError::ResponseTooLarge {
                keys: keys.len(),
                limit,
            })?;
        for (index, (key, found)) in keys.iter().zip(&found).enumerate() {
            if found.is_none() {
                explain_miss(table, index, key)?;
            }
        }
        let results = found.into_iter().map(response).collect();
        Ok(MultiGetResponse {
            results,
            applied_offsets: offsets,
        })
    }

    fn status(&self) -> StatusResponse {
        let now = now_ms();
        StatusResponse {
            ready: self.store.ready().is_open(),
            tables: self.store.tables().iter().map(|t| table_status(t, now)).collect(),
            started_at_ms: millis_since_epoch(self.store.started_at()),
            resident_memory_bytes: crate::resources::resident_memory_bytes().unwrap_or(0),
            memory_limit_bytes: self.store.memory_limit().unwrap_or(0),
        }
    }

    fn finish<T>(
        &self,
        method: GrpcMethod,
        started: Instant,
        result: Result<T, RequestError>,
    ) -> Result<Response<T>, Status> {
        let result = result.map_err(Status::from);
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics.grpc().observe(method, code, started);
        result.map(Response::new)
    }
}

#[tonic::async_trait]
impl Cache for CacheService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let started = Instant::now();
        let deadline = grpc_deadline(request.metadata());
        let result = CacheService::get(self, request.into_inner(), deadline).await;
        self.finish(GrpcMethod::Get, started, result)
    }

    async fn multi_get(
        &self,
        request: Request<MultiGetRequest>,
    ) -> Result<Response<MultiGetResponse>, Status> {
        let started = Instant::now();
        let deadline = grpc_deadline(request.metadata());
        let result = CacheService::multi_get(self, request.into_inner(), deadline).await;
        self.finish(GrpcMethod::MultiGet, started, result)
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let started = Instant::now();
        let result = Ok(CacheService::status(self));
        self.finish(GrpcMethod::Status, started, result)
    }

    type WatchStream = ReceiverStream<Result<ChangeEvent, Status>>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let events = self.watches.start(request.into_inner())?;
        Ok(Response::new(ReceiverStream::new(events)))
    }
}

/// Request keys as the table stores them; a bad one is named by its index.
pub(super) fn canonical_keys<'a>(
    table: &Table,
    keys: &'a [bytes::Bytes],
) -> Result<Vec<std::borrow::Cow<'a, [u8]>>, RequestError> {
    keys.iter()
        .enumerate()
        .map(|(index, key)| {
            format::canonical_key(table.format(), key)
                .map_err(|source| RequestError::BadKey { index, source })
        })
        .collect()
}

fn response(found: Option<Found>) -> GetResponse {
    match found {
        Some(found) => GetResponse {
            found: true,
            value: found.value,
            partition: found.partition,
            offset: found.offset,
            timestamp_ms: found.timestamp_ms,
            applied_offsets: Default::default(),
        },
        None => GetResponse::default(),
    }
}

/// The table's applied offsets when the request asked for them, else none.
fn with_offsets(table: &Table, consistency: Option<&Consistency>) -> std::collections::HashMap<i32, i64> {
    if consistency.is_some_and(|c| c.include_offsets) {
        applied_offsets(table)
    } else {
        Default::default()
    }
}

/// A key of a debezium table that was not found: INVALID_ARGUMENT when its shape (field names
/// and JSON types) matches no stored key, so a type mistake is not mistaken for a missing row.
fn explain_miss(table: &Table, index: usize, key: &[u8]) -> Result<(), RequestError> {
    if !table.format().json_keys() {
        return Ok(());
    }
    match table.key_shapes().mismatch(key) {
        Some(reason) => Err(RequestError::KeyShape { index, reason }),
        None => Ok(()),
    }
}

fn table_status(table: &Table, now_ms: i64) -> TableStatus {
    TableStatus {
        table: table.name().to_string(),
        topic: table.topic().to_string(),
        entries: table.len() as u64,
        ready: table.is_ready(),
        partitions: table
            .partitions()
            .iter()
            .map(|p| PartitionStatus {
                partition: p.partition(),
                position: p.position(),
                end_offset: p.end_offset(),
                high_watermark: p.high_watermark(),
                lag: p.lag(),
                caught_up: p.is_caught_up(),
                last_record_timestamp_ms: p.last_timestamp_ms(),
                rebuilding: p.is_rebuilding(),
                resets: p.resets(),
            })
            .collect(),
        data_bytes: table.data_bytes(),
        format: table.format().to_string(),
        skipped_records: table.skipped(),
        broker_silence_ms: table.broker_silence_ms(now_ms),
        bootstrap_duration_ms: table.bootstrap_duration().map_or(0, |d| d.as_millis() as i64),
        problem: table.problem().unwrap_or_default(),
        key_conflicts: table.key_conflicts(),
        stored_bytes: table.stored_bytes(),
        compression_ratio: table.compression_ratio(),
        projection: table
            .projection()
            .map_or_else(Vec::new, |p| p.columns().map(String::from).collect()),
    }
}
