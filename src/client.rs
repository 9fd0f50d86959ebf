//! `cdc-cache get`, `watch`, `status` and `wait`: a small gRPC client for people and scripts.
//!
//! `get` with one key prints the bare value; with several, `KEY<TAB>VALUE` lines; with
//! `--output json`, one JSON object per key. Missing keys are reported on stderr and make the
//! exit code 1, so scripts can test for presence. `watch` prints changes until interrupted,
//! resuming by itself when the server drops it for reading too slowly. `wait` returns once the
//! server is ready.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::cli::{ClientArgs, GetArgs, KeyFormat, Output, WaitArgs, WatchArgs};
use crate::clock::now_ms;
use crate::config::ListenAddr;
use crate::proto::cache_client::CacheClient;
use crate::proto::change_event::Type as EventType;
use crate::proto::{
    ChangeEvent, Consistency, GetRequest, GetResponse, MultiGetRequest, StatusRequest, StatusResponse,
    WatchRequest,
};

/// How often `wait` asks again.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--addr {addr:?}: {reason}")]
    Addr { addr: String, reason: String },
    #[error("key {key:?}: {reason} (--key-format)")]
    Key { key: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("{method} failed: {} ({:?})", .status.message(), .status.code())]
    Call {
        method: &'static str,
        status: tonic::Status,
    },
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Connects to a cdc-cache gRPC address (`HOST:PORT` or `unix:/path`).
pub async fn connect(addr: &str) -> Result<CacheClient<Channel>, ClientError> {
    Ok(CacheClient::new(channel(addr).await?).max_decoding_message_size(usize::MAX))
}

/// A channel to a gRPC address (`HOST:PORT` or `unix:/path`), for any service served there.
pub async fn channel(addr: &str) -> Result<Channel, ClientError> {
    let parsed: ListenAddr = addr.parse().map_err(|reason| ClientError::Addr {
        addr: addr.to_string(),
        reason,
    })?;
    let connect_error = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let channel = match parsed {
        ListenAddr::Tcp(socket) => Endpoint::from_shared(format!("http://{socket}"))
            .expect("a socket address is a valid URI authority")
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(connect_error)?,
        ListenAddr::Unix(path) => {
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
                .map_err(connect_error)?
        }
    };
    Ok(channel)
}

/// The read options of `get`, if any was given.
fn consistency(args: &GetArgs) -> Option<Consistency> {
    if !args.latest && args.min_offset.is_empty() && args.max_staleness.is_none() {
        return None;
    }
    Some(Consistency {
        min_offsets: args.min_offset.iter().copied().collect(),
        max_staleness_ms: args.max_staleness.map_or(0, |d| d.as_millis().max(1) as i64),
        // Not clamped: past the server's 5 min limit the server refuses it, naming the field.
        wait_timeout_ms: args.wait_timeout.as_millis().max(1) as i64,
        include_offsets: false,
        latest: args.latest,
    })
}

/// Prints the values of `args.keys`; returns false when any key was missing.
pub async fn get(args: &GetArgs) -> Result<bool, ClientError> {
    let keys = args
        .keys
        .iter()
        .map(|key| decode_key(key, args.key_format))
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = connect(&args.client.addr).await?;
    let consistency = consistency(args);
    let results = if let [key] = keys.as_slice() {
        let response = client
            .get(GetRequest {
                table: args.table.clone(),
                key: key.clone().into(),
                consistency: consistency.clone(),
            })
            .await
            .map_err(|status| ClientError::Call {
                method: "Get",
                status,
            })?
            .into_inner();
        vec![response]
    } else {
        client
            .multi_get(MultiGetRequest {
                table: args.table.clone(),
                keys: keys.iter().map(|k| k.clone().into()).collect(),
                consistency,
            })
            .await
            .map_err(|status| ClientError::Call {
                method: "MultiGet",
                status,
            })?
            .into_inner()
            .results
    };
    let mut out = std::io::stdout().lock();
    let mut all_found = true;
    let single = args.keys.len() == 1;
    for (key, result) in args.keys.iter().zip(&results) {
        all_found &= result.found;
        match args.output {
            Output::Json => {
                serde_json::to_writer(&mut out, &json_line(key, result)).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
            }
            Output::Text if !result.found => eprintln!("not found: {key}"),
            Output::Text => {
                if !single {
                    out.write_all(key.as_bytes())?;
                    out.write_all(b"\t")?;
                }
                out.write_all(&result.value)?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(all_found)
}

/// Prints the changes `args` asks for until the server ends the stream. A stream dropped for
/// reading too slowly (RESOURCE_EXHAUSTED with a position) is resumed from that position.
pub async fn watch(args: &WatchArgs) -> Result<(), ClientError> {
    let keys = args
        .keys
        .iter()
        .map(|key| decode_key(key, args.key_format).map(Into::into))
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = connect(&args.client.addr).await?;
    let mut request = WatchRequest {
        table: args.table.clone(),
        keys,
        prefix: args.prefix.clone().unwrap_or_default().into(),
        include_initial: args.initial,
        resume_from: args.resume_from.clone().unwrap_or_default(),
    };
    let call_error = |status| ClientError::Call {
        method: "Watch",
        status,
    };
    loop {
        let mut stream = client
            .watch(request.clone())
            .await
            .map_err(call_error)?
            .into_inner();
        let status = loop {
            match stream.message().await {
                Ok(Some(event)) => match print_event(&event, args.output) {
                    // The reader (`| head`) has what it wanted.
                    Err(ClientError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        return Ok(())
                    }
                    other => other?,
                },
                Ok(None) => return Ok(()),
                Err(status) => break status,
            }
        };
        let resume_from = status
            .metadata()
            .get(crate::grpc::RESUME_TRAILER)
            .and_then(|value| value.to_str().ok())
            .filter(|position| !position.is_empty());
        match resume_from {
            Some(position) if status.code() == tonic::Code::ResourceExhausted => {
                eprintln!("{}; resuming", status.message());
                request.resume_from = position.to_string();
                request.include_initial = false;
            }
            _ => return Err(call_error(status)),
        }
    }
}

fn print_event(event: &ChangeEvent, output: Output) -> Result<(), ClientError> {
    let kind = event.r#type();
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            let name = kind.as_str_name().to_ascii_lowercase();
            let mut line = serde_json::json!({ "type": name, "position": event.position });
            if matches!(kind, EventType::Upsert | EventType::Delete | EventType::Initial) {
                put_bytes(&mut line, "key", &event.key);
                if kind != EventType::Delete {
                    put_bytes(&mut line, "value", &event.value);
                }
                line["partition"] = event.partition.into();
                line["offset"] = event.offset.into();
                line["timestamp_ms"] = event.timestamp_ms.into();
            }
            serde_json::to_writer(&mut out, &line).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        Output::Text => match kind {
            EventType::Upsert | EventType::Initial | EventType::Delete => {
                let name = kind.as_str_name().to_ascii_lowercase();
                out.write_all(name.as_bytes())?;
                out.write_all(b"\t")?;
                out.write_all(&event.key)?;
                if kind != EventType::Delete {
                    out.write_all(b"\t")?;
                    out.write_all(&event.value)?;
                }
                out.write_all(b"\n")?;
            }
            EventType::Synced => eprintln!("watching (position {})", event.position),
            EventType::Progress | EventType::Unspecified => {}
        },
    }
    // A line at a time: the reader is often a pipe to a script waiting on each change.
    out.flush()?;
    Ok(())
}

/// Puts `bytes` in `line` as a string when they are UTF-8 text, else base64 under `NAME_base64`.
fn put_bytes(line: &mut serde_json::Value, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => line[name] = text.into(),
        Err(_) => {
            line[format!("{name}_base64")] = base64::engine::general_purpose::STANDARD.encode(bytes).into()
        }
    }
}

/// A KEY argument as the bytes to ask for.
fn decode_key(key: &str, format: KeyFormat) -> Result<Vec<u8>, ClientError> {
    let bad = |reason: String| ClientError::Key {
        key: key.to_string(),
        reason,
    };
    match format {
        KeyFormat::Utf8 => Ok(key.as_bytes().to_vec()),
        KeyFormat::Base64 => base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|e| bad(format!("not base64: {e}"))),
        KeyFormat::Hex => {
            let digits = key.as_bytes();
            if !digits.len().is_multiple_of(2) {
                return Err(bad("odd number of hex digits".into()));
            }
            digits
                .chunks(2)
                .map(|pair| {
                    std::str::from_utf8(pair)
                        .ok()
                        .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                        .ok_or_else(|| bad(format!("not hex: {:?}", String::from_utf8_lossy(pair))))
                })
                .collect()
        }
    }
}

/// One `--output json` line. The value is a string when it is UTF-8 text and base64 otherwise
/// (`value_base64`), so binary values of raw tables survive.
fn json_line(key: &str, result: &GetResponse) -> serde_json::Value {
    let mut line = serde_json::json!({ "key": key, "found": result.found });
    if result.found {
        put_bytes(&mut line, "value", &result.value);
        line["partition"] = result.partition.into();
        line["offset"] = result.offset.into();
        line["timestamp_ms"] = result.timestamp_ms.into();
    }
    line
}

/// Waits until the server's health service says SERVING; false when `args.timeout` passed
/// first. Connection failures are retried: the server may not be listening yet.
pub async fn wait(args: &WaitArgs) -> Result<bool, ClientError> {
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last_state = String::new();
    loop {
        let state = match channel(&args.client.addr).await {
            Ok(channel) => match HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            {
                Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => {
                    return Ok(true)
                }
                Ok(_) => "not ready yet".to_string(),
                Err(status) => format!("health check failed: {}", status.message()),
            },
            Err(e @ ClientError::Addr { .. }) => return Err(e),
            Err(e) => e.to_string(),
        };
        if state != last_state {
            eprintln!("waiting for cdc-cache at {}: {state}", args.client.addr);
            last_state = state;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "cdc-cache at {} not ready within {:?}",
                args.client.addr, args.timeout
            );
            return Ok(false);
        }
        tokio::time::sleep(WAIT_POLL_INTERVAL.min(deadline - tokio::time::Instant::now())).await;
    }
}

/// Prints a table of per-table and per-partition progress.
pub async fn status(args: &ClientArgs) -> Result<(), ClientError> {
    let mut client = connect(&args.addr).await?;
    let response = client
        .status(StatusRequest {})
        .await
        .map_err(|status| ClientError::Call {
            method: "Status",
            status,
        })?
        .into_inner();
    std::io::stdout()
        .lock()
        .write_all(render_status(&response).as_bytes())?;
    Ok(())
}

fn render_status(status: &StatusResponse) -> String {
    let now_ms = now_ms();
    let mut out = format!(
        "ready: {}  up: {}  resident memory: {}  limit: {}\n",
        yes_no(status.ready),
        seconds(now_ms - status.started_at_ms),
        mebibytes(status.resident_memory_bytes),
        match status.memory_limit_bytes {
            0 => "none".to_string(),
            limit => mebibytes(limit),
        }
    );
    for t in &status.tables {
        out.push_str(&format!(
            "\ntable {} (topic {}, {}): ready={} entries={} data={}B stored={}B ({:.2}x) skipped={} key_conflicts={} broker_silence={} bootstrap={}\n",
            t.table,
            t.topic,
            t.format,
            yes_no(t.ready),
            t.entries,
            t.data_bytes,
            t.stored_bytes,
            t.compression_ratio,
            t.skipped_records,
            t.key_conflicts,
            seconds(t.broker_silence_ms),
            seconds(t.bootstrap_duration_ms),
        ));
        if !t.projection.is_empty() {
            out.push_str(&format!(
                "  projection: key columns and {}\n",
                t.projection.join(", ")
            ));
        }
        if !t.problem.is_empty() {
            out.push_str(&format!("  problem: {}\n", t.problem));
        }
        out.push_str(&format!(
            "  {:>9} {:>12} {:>12} {:>14} {:>10} {:>9} {:>10} {:>6} {:>12}\n",
            "partition",
            "position",
            "end_offset",
            "high_watermark",
            "lag",
            "caught_up",
            "rebuilding",
            "resets",
            "last_record"
        ));
        for p in &t.partitions {
            let age = if p.last_record_timestamp_ms > 0 {
                format!("{} ago", seconds(now_ms - p.last_record_timestamp_ms))
            } else {
                "-".into()
            };
            out.push_str(&format!(
                "  {:>9} {:>12} {:>12} {:>14} {:>10} {:>9} {:>10} {:>6} {:>12}\n",
                p.partition,
                p.position,
                p.end_offset,
                p.high_watermark,
                p.lag,
                yes_no(p.caught_up),
                yes_no(p.rebuilding),
                p.resets,
                age
            ));
        }
    }
    out
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / (1 << 20) as f64)
}

fn seconds(ms: i64) -> String {
    format!("{:.1}s", ms.max(0) as f64 / 1000.0)
}
