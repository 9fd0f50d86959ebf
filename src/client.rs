//! `cdc-cache get` and `cdc-cache status`: a small gRPC client for people and scripts.
//!
//! `get` with one key prints the bare value; with several, `KEY<TAB>VALUE` lines. Missing keys
//! are reported on stderr and make the exit code 1, so scripts can test for presence.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::{ClientArgs, GetArgs, ListenAddr};
use crate::proto::cache_client::CacheClient;
use crate::proto::{GetRequest, MultiGetRequest, StatusRequest, StatusResponse};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--addr {addr:?}: {reason}")]
    Addr { addr: String, reason: String },
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

/// Prints the values of `args.keys`; returns false when any key was missing.
pub async fn get(args: &GetArgs) -> Result<bool, ClientError> {
    let mut client = connect(&args.client.addr).await?;
    let mut out = std::io::stdout().lock();
    if let [key] = args.keys.as_slice() {
        let response = client
            .get(GetRequest {
                table: args.table.clone(),
                key: key.clone().into_bytes().into(),
            })
            .await
            .map_err(|status| ClientError::Call {
                method: "Get",
                status,
            })?
            .into_inner();
        if !response.found {
            eprintln!("not found: {key}");
            return Ok(false);
        }
        out.write_all(&response.value)?;
        out.write_all(b"\n")?;
        return Ok(true);
    }
    let response = client
        .multi_get(MultiGetRequest {
            table: args.table.clone(),
            keys: args.keys.iter().map(|k| k.clone().into_bytes().into()).collect(),
        })
        .await
        .map_err(|status| ClientError::Call {
            method: "MultiGet",
            status,
        })?
        .into_inner();
    let mut all_found = true;
    for (key, result) in args.keys.iter().zip(&response.results) {
        if result.found {
            out.write_all(key.as_bytes())?;
            out.write_all(b"\t")?;
            out.write_all(&result.value)?;
            out.write_all(b"\n")?;
        } else {
            eprintln!("not found: {key}");
            all_found = false;
        }
    }
    Ok(all_found)
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
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut out = format!(
        "ready: {}  up: {}\n",
        yes_no(status.ready),
        seconds(now_ms - status.started_at_ms)
    );
    for t in &status.tables {
        out.push_str(&format!(
            "\ntable {} (topic {}, {}): ready={} entries={} memory={}B skipped={} broker_silence={} bootstrap={}\n",
            t.table,
            t.topic,
            t.format,
            yes_no(t.ready),
            t.entries,
            t.memory_bytes,
            t.skipped_records,
            seconds(t.broker_silence_ms),
            seconds(t.bootstrap_duration_ms),
        ));
        out.push_str(&format!(
            "  {:>9} {:>12} {:>12} {:>14} {:>10} {:>9} {:>12}\n",
            "partition", "position", "end_offset", "high_watermark", "lag", "caught_up", "last_record"
        ));
        for p in &t.partitions {
            let age = if p.last_record_timestamp_ms > 0 {
                format!("{} ago", seconds(now_ms - p.last_record_timestamp_ms))
            } else {
                "-".into()
            };
            out.push_str(&format!(
                "  {:>9} {:>12} {:>12} {:>14} {:>10} {:>9} {:>12}\n",
                p.partition,
                p.position,
                p.end_offset,
                p.high_watermark,
                p.lag,
                yes_no(p.caught_up),
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

fn seconds(ms: i64) -> String {
    format!("{:.1}s", ms.max(0) as f64 / 1000.0)
}
