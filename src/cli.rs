//! The command line: clap types for every subcommand. Every serve flag is also an environment
//! variable (`CDC_CACHE_<FLAG>`) because Kubernetes configures containers through env.
//! [`crate::config`] validates what is parsed here into a [`Config`].

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, ConfigError, OnDecodeError};
use crate::format::Format;

/// The address both the server and its clients default to.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";

#[derive(Debug, Parser)]
#[command(name = "cdc-cache", version, about, propagate_version = true)]
pub struct Cli {
    /// Log output: `text` for people, `json` for log pipelines.
    #[arg(long, env = "CDC_CACHE_LOG_FORMAT", global = true, default_value = "text")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load compacted topics into memory and serve them over gRPC.
    Serve(ServeArgs),
    /// Run against an embedded Kafka mock seeded with a sample table; nothing else needed.
    Demo(DemoArgs),
    /// Look keys up in a running cdc-cache and print their values.
    Get(GetArgs),
    /// Print the changes to a table of a running cdc-cache as they happen.
    Watch(WatchArgs),
    /// Print the bootstrap and tailing progress of a running cdc-cache.
    Status(ClientArgs),
    /// Wait until a running cdc-cache is ready (for a postStart hook or a script).
    Wait(WaitArgs),
}

/// Where `avro` topics' writer schemas come from. Secrets come from env (a Kubernetes secret),
/// so they stay out of `ps` and the pod spec; they are never logged.
#[derive(Debug, Args, Default)]
pub struct SchemaRegistryArgs {
    /// The Confluent Schema Registry (or Apicurio's Confluent-compatible API) that `avro`
    /// topics' schema ids are looked up in. Several, comma-separated, are tried in order.
    #[arg(long, env = "CDC_CACHE_SCHEMA_REGISTRY_URL", value_name = "URL[,URL...]")]
    pub schema_registry_url: Option<String>,

    /// Basic-auth user for the registry (with CDC_CACHE_SCHEMA_REGISTRY_PASSWORD).
    #[arg(long, env = "CDC_CACHE_SCHEMA_REGISTRY_USER", value_name = "USER")]
    pub schema_registry_user: Option<String>,

    /// Basic-auth password for the registry; prefer the env var.
    #[arg(
        long,
        env = "CDC_CACHE_SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub schema_registry_password: Option<String>,

    /// Bearer token for the registry; prefer the env var.
    #[arg(
        long,
        env = "CDC_CACHE_SCHEMA_REGISTRY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub schema_registry_token: Option<String>,

    /// A file holding the bearer token, read again before each request (rotated tokens).
    #[arg(long, env = "CDC_CACHE_SCHEMA_REGISTRY_TOKEN_FILE", value_name = "FILE")]
    pub schema_registry_token_file: Option<std::path::PathBuf>,

    /// PEM certificates to trust for the registry's TLS, besides the system's (a private CA).
    #[arg(long, env = "CDC_CACHE_SCHEMA_REGISTRY_CA_FILE", value_name = "FILE")]
    pub schema_registry_ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CDC_CACHE_BROKERS", value_name = "HOST:PORT[,...]")]
    pub brokers: String,

    /// A compacted topic to cache, optionally with a table name and a format
    /// (`orders`, `orders=orders_v1`, `dbz.public.orders=orders:debezium`). Repeatable; the env var
    /// takes a comma-separated list.
    #[arg(
        long = "topic",
        env = "CDC_CACHE_TOPICS",
        value_name = "TOPIC[=TABLE][:FORMAT]",
        value_delimiter = ','
    )]
    pub topics: Vec<String>,

    #[command(flatten)]
    pub options: ServeOptions,
}

impl ServeArgs {
    /// Validates the arguments. `env` is the process environment, passed in so that tests never
    /// have to mutate the real one (see [`config::Config`] for what is read from it).
    pub fn into_config(self, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::NoBrokers);
        }
        let tables = config::parse_topics(&self.topics, self.options.format)?;
        self.options
            .into_config(self.brokers.trim().to_string(), tables, env)
    }
}

/// Options shared by `serve` and `demo`.
#[derive(Debug, Args)]
pub struct ServeOptions {
    /// How record keys and values are decoded, for topics that name no format.
    #[arg(long, env = "CDC_CACHE_FORMAT", default_value = "raw")]
    pub format: Format,

    /// gRPC address: HOST:PORT, or `unix:/path` for a unix socket.
    #[arg(long, env = "CDC_CACHE_GRPC_LISTEN", default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_listen: String,

    /// Permissions of the unix socket (octal). The default lets the socket's group connect: in a
    /// pod that is the fsGroup shared with the app container.
    #[arg(
        long,
        env = "CDC_CACHE_GRPC_SOCKET_MODE",
        default_value = "0660",
        value_name = "OCTAL"
    )]
    pub grpc_socket_mode: String,

    /// Allow --grpc-listen on a non-loopback address (the cache holds the app's data).
    #[arg(long, env = "CDC_CACHE_ALLOW_REMOTE")]
    pub allow_remote: bool,

    /// Admin HTTP address: /metrics, /healthz, /readyz and the gRPC health service
    /// [default: 127.0.0.1:9464]. `[::]:PORT` listens on IPv6 and IPv4 (IPv4 only where the
    /// kernel has no IPv6).
    #[arg(long, env = "CDC_CACHE_ADMIN_LISTEN", value_name = "HOST:PORT")]
    pub admin_listen: Option<String>,

    /// Deprecated name of --admin-listen.
    #[arg(long, env = "CDC_CACHE_METRICS_LISTEN", hide = true, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,

    /// A librdkafka property (TLS, SASL, timeouts), taken whole: a value may contain commas.
    /// Repeatable. From the environment: one CDC_CACHE_KAFKA_<KEY> per property (dots as
    /// underscores, e.g. CDC_CACHE_KAFKA_SASL_PASSWORD), or CDC_CACHE_KAFKA_OPTIONS with
    /// comma-separated KEY=VALUE pairs (write a comma inside a value as `\,`).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,

    /// The client.id the brokers see, for quotas and broker logs [default: cdc-cache-$POD_NAME
    /// when POD_NAME is set, else cdc-cache].
    #[arg(long, env = "CDC_CACHE_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,

    /// Most keys accepted in one MultiGet.
    #[arg(long, env = "CDC_CACHE_MAX_MULTIGET_KEYS", default_value_t = 10_000)]
    pub max_multiget_keys: usize,

    /// Most Watch streams open at once; one more is refused with RESOURCE_EXHAUSTED (0 turns
    /// Watch off).
    #[arg(long, env = "CDC_CACHE_MAX_WATCHERS", default_value_t = 256, value_name = "N")]
    pub max_watchers: usize,

    /// Changes kept per watched table, for Watch streams to resume from (the table's first
    /// watcher starts keeping them). A watcher more than half of this behind is dropped with the
    /// position to resume from.
    #[arg(
        long,
        env = "CDC_CACHE_WATCH_HISTORY",
        default_value_t = 65_536,
        value_name = "CHANGES"
    )]
    pub watch_history: usize,

    /// At most this many bytes of changes kept per watched table (suffixes Ki, Mi, Gi); the
    /// oldest go first. A watcher more than half of this behind is dropped, as for
    /// --watch-history.
    #[arg(long, env = "CDC_CACHE_WATCH_HISTORY_BYTES", default_value = "64Mi", value_name = "BYTES", value_parser = parse_bytes)]
    pub watch_history_bytes: u64,

    /// Largest gRPC message sent or received, in bytes (values of several MB must fit).
    #[arg(long, env = "CDC_CACHE_GRPC_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub grpc_max_message_bytes: usize,

    /// After SIGTERM, keep answering for this long before shutting down, so an app that got
    /// the same signal can finish its own requests (classic sidecar mode).
    #[arg(long, env = "CDC_CACHE_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// How long in-flight gRPC calls may take to finish once shutdown starts.
    #[arg(long, env = "CDC_CACHE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How often topics are checked for partitions added since start-up.
    #[arg(long, env = "CDC_CACHE_PARTITION_DISCOVERY_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub partition_discovery_interval: Duration,

    /// What an undecodable record does: `skip` counts and logs it, `fail` stops the sidecar.
    #[arg(long, env = "CDC_CACHE_ON_DECODE_ERROR", default_value = "skip")]
    pub on_decode_error: OnDecodeError,

    /// Keep only these columns of a table's rows, besides the key's, to save the memory of
    /// columns the app never reads: `customers=id,email,tier`. Repeatable, one table each; the
    /// env var takes several separated by `;`. Row formats only (debezium, avro).
    #[arg(
        long,
        env = "CDC_CACHE_PROJECT",
        value_name = "TABLE=COLUMN[,COLUMN...]",
        value_delimiter = ';'
    )]
    pub project: Vec<String>,

    #[command(flatten)]
    pub schema_registry: SchemaRegistryArgs,

    /// Threads that decode records (and compress values) in parallel, across the records of
    /// every partition; each partition's records are still applied in offset order. 0: one per
    /// CPU the container may use (its CPU limit, rounded up), so a sidecar limited to one CPU
    /// decodes on its ingest thread alone.
    #[arg(long, env = "CDC_CACHE_DECODE_THREADS", default_value_t = 0, value_name = "N")]
    pub decode_threads: usize,

    /// How values are stored: `auto` trains a zstd dictionary per table from its own rows and
    /// keeps values compressed where it pays (keys stay as they are); `off` stores them as
    /// received.
    #[arg(long, env = "CDC_CACHE_COMPRESSION", default_value = "auto")]
    pub compression: crate::store::CompressionMode,

    /// Stop loading (NOT_SERVING, with an error naming the table) once resident memory reaches
    /// this share of the container's memory limit, instead of being OOM-killed. 0 turns it off.
    #[arg(
        long,
        env = "CDC_CACHE_MEMORY_LIMIT_RATIO",
        default_value_t = 0.9,
        value_name = "RATIO"
    )]
    pub memory_limit_ratio: f64,

    /// A directory for snapshots (an emptyDir in Kubernetes): at start-up each table loads its
    /// newest usable snapshot and reads from Kafka only what happened since; while running, and
    /// at shutdown, every ready table is written there.
    #[arg(long, env = "CDC_CACHE_SNAPSHOT_DIR", value_name = "DIR")]
    pub snapshot_dir: Option<std::path::PathBuf>,

    /// Snapshots in object storage (s3://bucket/prefix, file:///path): a table with no usable
    /// local snapshot downloads the newest one into --snapshot-dir. Credentials come from the
    /// usual environment (AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ENDPOINT_URL, ...).
    #[arg(long, env = "CDC_CACHE_SNAPSHOT_URL", value_name = "URL")]
    pub snapshot_url: Option<String>,

    /// Also upload every snapshot written to --snapshot-url (one publisher per table is enough;
    /// several are safe).
    #[arg(long, env = "CDC_CACHE_SNAPSHOT_PUBLISH")]
    pub snapshot_publish: bool,

    /// How often ready tables are written to --snapshot-dir (0s: only at shutdown).
    #[arg(long, env = "CDC_CACHE_SNAPSHOT_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub snapshot_interval: Duration,

    /// Snapshots kept per table.
    #[arg(long, env = "CDC_CACHE_SNAPSHOT_KEEP", default_value_t = 2)]
    pub snapshot_keep: usize,

    /// Older snapshots are not loaded: compaction may have dropped tombstones they would need.
    /// Keep it below the topics' delete.retention.ms (Kafka's default is 24h).
    #[arg(long, env = "CDC_CACHE_SNAPSHOT_MAX_AGE", default_value = "12h", value_parser = parse_duration)]
    pub snapshot_max_age: Duration,

    /// The memory limit to stay under, in bytes (suffixes Ki, Mi, Gi) [default: the container's
    /// cgroup limit, if any].
    #[arg(long, env = "CDC_CACHE_MEMORY_LIMIT", value_name = "BYTES", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Rows in the sample table.
    #[arg(long, env = "CDC_CACHE_DEMO_ROWS", default_value_t = 5_000)]
    pub rows: u32,

    /// Seconds between live updates written to the sample topic while serving (0: none).
    #[arg(long, env = "CDC_CACHE_DEMO_UPDATE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub update_interval: Duration,

    #[command(flatten)]
    pub options: ServeOptions,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Address of the cdc-cache gRPC listener (HOST:PORT or unix:/path).
    #[arg(long, env = "CDC_CACHE_GRPC_LISTEN", default_value = DEFAULT_GRPC_ADDR)]
    pub addr: String,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Table to read; may be omitted when the server has a single table.
    #[arg(long, default_value = "")]
    pub table: String,

    /// How the KEY arguments are written: as text, or as the bytes in hex or base64 (for
    /// binary keys of raw tables).
    #[arg(long, default_value = "utf8")]
    pub key_format: KeyFormat,

    /// `text`: one key prints the bare value, several print KEY<TAB>VALUE lines. `json`: one
    /// JSON object per key and line, with found, value, partition, offset and timestamp_ms.
    #[arg(long, default_value = "text")]
    pub output: Output,

    /// Answer only once the table has applied everything the broker had acknowledged when
    /// the call was made (read-your-writes after a write to the source database has reached
    /// Kafka).
    #[arg(long)]
    pub latest: bool,

    /// Answer only once PARTITION has applied OFFSET (the offset a producer got back).
    /// Repeatable.
    #[arg(long, value_name = "PARTITION:OFFSET", value_parser = parse_min_offset)]
    pub min_offset: Vec<(i32, i64)>,

    /// Refuse the answer if the table has not heard from its broker for longer than this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_staleness: Option<Duration>,

    /// The longest wait for --latest or --min-offset.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub wait_timeout: Duration,

    /// Keys to look up.
    #[arg(required = true, value_name = "KEY")]
    pub keys: Vec<String>,

    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Table to watch; may be omitted when the server has a single table.
    #[arg(long, default_value = "")]
    pub table: String,

    /// Only keys starting with this (for debezium tables, the key's canonical JSON text, e.g.
    /// '{"tenant":"acme",').
    #[arg(long, conflicts_with = "keys")]
    pub prefix: Option<String>,

    /// First print every matching row held now (type `initial`), then the changes.
    #[arg(long)]
    pub initial: bool,

    /// Continue after this position (from an earlier `--output json` line) instead of now.
    #[arg(long, value_name = "POSITION", conflicts_with = "initial")]
    pub resume_from: Option<String>,

    /// How the KEY arguments are written (see `get`).
    #[arg(long, default_value = "utf8")]
    pub key_format: KeyFormat,

    /// `text`: `upsert KEY VALUE`, `delete KEY` and `initial KEY VALUE` lines, tab-separated.
    /// `json`: one JSON object per event, with type, key, value, partition, offset,
    /// timestamp_ms and position (synced and progress events included).
    #[arg(long, default_value = "text")]
    pub output: Output,

    /// Only these keys (none: every key).
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,

    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_min_offset(text: &str) -> Result<(i32, i64), String> {
    let (partition, offset) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected PARTITION:OFFSET, e.g. 0:1234"))?;
    let partition = partition
        .parse()
        .map_err(|_| format!("{text:?}: partition {partition:?} is not a number"))?;
    let offset = offset
        .parse()
        .map_err(|_| format!("{text:?}: offset {offset:?} is not a number"))?;
    Ok((partition, offset))
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How `cdc-cache get` reads its KEY arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyFormat {
    Utf8,
    Hex,
    Base64,
}

/// How `cdc-cache get` prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => return Err(format!("unknown unit {unit:?} (expected bytes, or Ki, Mi, Gi)")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| "expected a positive number of bytes, e.g. 536870912 or 512Mi".to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 2m)"))
}
