//! The validated configuration of `serve` (and `demo`): typed values checked once at start-up,
//! so a bad flag fails with its name before anything runs. The clap types live in [`crate::cli`].
//!
//! librdkafka settings come from `--kafka-option KEY=VALUE`, from `CDC_CACHE_KAFKA_OPTIONS`, or
//! from one `CDC_CACHE_KAFKA_<KEY>` variable each (`CDC_CACHE_KAFKA_SASL_PASSWORD` ->
//! `sasl.password`), so a secret can be injected with `secretKeyRef` without ever appearing in a
//! command line.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum;

use crate::cli::ServeOptions;
use crate::format::{Format, Projection};
use crate::ingest::kafka_config;
use crate::schema_registry::{Auth, RegistryConfig};
use crate::store::CompressionMode;

/// Prefix of the env vars that carry one librdkafka property each.
pub const KAFKA_ENV_PREFIX: &str = "CDC_CACHE_KAFKA_";
/// The env var with several comma-separated librdkafka properties.
pub const KAFKA_OPTIONS_ENV: &str = "CDC_CACHE_KAFKA_OPTIONS";
/// Set by the Helm chart from the downward API; names the pod in the Kafka client id.
const POD_NAME_ENV: &str = "POD_NAME";
const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9464";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnDecodeError {
    Skip,
    Fail,
}

/// One cached topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    pub topic: String,
    pub table: String,
    pub format: Format,
    pub compression: CompressionMode,
    /// The columns rows keep besides the key's (`--project`); None keeps every column.
    pub projection: Option<Projection>,
}

/// Where the gRPC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("expected unix:/path/to/socket".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| "expected HOST:PORT with a numeric IP (e.g. 127.0.0.1:50051) or unix:/path".into())
    }
}

/// Where and how often tables are snapshotted.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    pub dir: PathBuf,
    /// Zero: only at shutdown.
    pub interval: Duration,
    pub keep: usize,
    pub max_age: Duration,
    /// Object storage shared by a fleet: where snapshots are downloaded from (and published to).
    pub remote: Option<crate::snapshot::remote::RemoteSnapshots>,
    pub publish: bool,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub brokers: String,
    pub tables: Vec<TableConfig>,
    pub grpc_listen: ListenAddr,
    /// Permission bits of a unix socket.
    pub grpc_socket_mode: u32,
    pub admin_listen: SocketAddr,
    /// librdkafka properties from the user, applied over cdc-cache's defaults.
    pub kafka_options: BTreeMap<String, String>,
    /// The librdkafka `client.id` of every table's consumer.
    pub client_id: String,
    pub max_multiget_keys: usize,
    pub watch: WatchConfig,
    pub grpc_max_message_bytes: usize,
    pub shutdown_delay: Duration,
    pub shutdown_grace: Duration,
    pub partition_discovery_interval: Duration,
    pub on_decode_error: OnDecodeError,
    /// Threads decoding records in parallel; 1: on the ingest thread alone.
    pub decode_threads: usize,
    /// Share of the memory limit at which loading stops; 0 for never.
    pub memory_limit_ratio: f64,
    /// The memory limit given by flag; None: the container's (cgroup) limit.
    pub memory_limit: Option<u64>,
    /// Local snapshots, if enabled.
    pub snapshots: Option<SnapshotConfig>,
    /// Where `avro` tables' schemas come from; set when there is one.
    pub schema_registry: Option<RegistryConfig>,
    /// Deprecated spellings that were used, each with what replaces it; logged at start-up.
    pub deprecations: Vec<String>,
}

/// Watch streams: how many, and how much history each watched table keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    pub max_watchers: usize,
    pub history: crate::store::FeedSettings,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("no topic configured: pass --topic TOPIC[=TABLE][:FORMAT] or set CDC_CACHE_TOPICS")]
    NoTopic,
    #[error("--brokers: empty; expected HOST:PORT[,...]")]
    NoBrokers,
    #[error("--decode-threads {0}: at most {MAX_DECODE_THREADS} (0: one per CPU)")]
    DecodeThreads(usize),
    #[error("--topic {value:?}: {reason}")]
    Topic { value: String, reason: String },
    #[error("--grpc-listen {value:?}: {reason}")]
    GrpcListen { value: String, reason: String },
    #[error(
        "--grpc-listen {0}: not a loopback address; the cache holds the app's data, so pass --allow-remote (CDC_CACHE_ALLOW_REMOTE=true) to expose it"
    )]
    RemoteWithoutOptIn(SocketAddr),
    #[error("--grpc-socket-mode {value:?}: expected octal permission bits such as 0660 or 0600")]
    SocketMode { value: String },
    #[error("{flag} {value:?}: expected HOST:PORT with a numeric IP (e.g. [::]:9464 or 0.0.0.0:9464)")]
    AdminListen { flag: &'static str, value: String },
    #[error("--kafka-option {value:?}: expected KEY=VALUE")]
    KafkaOptionSyntax { value: String },
    #[error("--kafka-option {key}: set by cdc-cache itself ({reason})")]
    KafkaOptionReserved { key: String, reason: &'static str },
    #[error("--kafka-option {key}: {reason}")]
    KafkaOptionValue { key: String, reason: &'static str },
    #[error("--client-id: empty")]
    ClientId,
    #[error("--project {value:?}: {reason}")]
    Project { value: String, reason: String },
    #[error("--watch-history {0}: must be at least {MIN_WATCH_HISTORY} changes (twice the largest batch ingest applies at once)")]
    WatchHistory(usize),
    #[error("--watch-history-bytes {0}: must be at least 1Mi")]
    WatchHistoryBytes(u64),
    #[error("--max-multiget-keys: must be at least 1")]
    MaxMultigetKeys,
    #[error("--grpc-max-message-bytes: must be at least 1024")]
    GrpcMaxMessageBytes,
    #[error("--partition-discovery-interval: must be at least 1s")]
    DiscoveryInterval,
    #[error("--snapshot-url {value:?}: {reason}")]
    SnapshotUrl { value: String, reason: String },
    #[error("--snapshot-url needs --snapshot-dir: the local directory snapshots are downloaded into and written in")]
    SnapshotUrlWithoutDir,
    #[error("--snapshot-publish needs --snapshot-url: where to publish")]
    SnapshotPublishWithoutUrl,
    #[error("--memory-limit-ratio {0}: expected 0 (off) or a share between 0.1 and 1")]
    MemoryLimitRatio(String),
    #[error("{flag}: {reason}")]
    SchemaRegistry { flag: &'static str, reason: String },
}

impl ServeOptions {
    /// Validates the options for the given brokers and tables (the demo supplies its own).
    /// `env` is the process environment: `CDC_CACHE_KAFKA_*` and `POD_NAME` are read from it.
    pub fn into_config(
        self,
        brokers: String,
        tables: Vec<TableConfig>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut tables: Vec<TableConfig> = tables
            .into_iter()
            .map(|table| TableConfig {
                compression: self.compression,
                ..table
            })
            .collect();
        set_projections(&mut tables, &self.project)?;
        let schema_registry = schema_registry(&self.schema_registry, &tables)?;
        let grpc_listen: ListenAddr = self
            .grpc_listen
            .parse()
            .map_err(|reason| ConfigError::GrpcListen {
                value: self.grpc_listen.clone(),
                reason,
            })?;
        if let ListenAddr::Tcp(addr) = grpc_listen {
            if !addr.ip().is_loopback() && !self.allow_remote {
                return Err(ConfigError::RemoteWithoutOptIn(addr));
            }
        }
        let grpc_socket_mode =
            parse_socket_mode(&self.grpc_socket_mode).ok_or_else(|| ConfigError::SocketMode {
                value: self.grpc_socket_mode.clone(),
            })?;
        let mut deprecations = Vec::new();
        let (flag, admin) = match (self.admin_listen, self.metrics_listen) {
            (Some(admin), _) => ("--admin-listen", admin),
            (None, Some(old)) => {
                deprecations.push(
                    "--metrics-listen (CDC_CACHE_METRICS_LISTEN) is deprecated: use --admin-listen (CDC_CACHE_ADMIN_LISTEN)"
                        .to_string(),
                );
                ("--metrics-listen", old)
            }
            (None, None) => ("--admin-listen", DEFAULT_ADMIN_ADDR.to_string()),
        };
        let admin_listen = admin.parse().map_err(|_| ConfigError::AdminListen {
            flag,
            value: admin.clone(),
        })?;
        if self.max_multiget_keys == 0 {
            return Err(ConfigError::MaxMultigetKeys);
        }
        if self.watch_history < MIN_WATCH_HISTORY {
            return Err(ConfigError::WatchHistory(self.watch_history));
        }
        if self.watch_history_bytes < 1 << 20 {
            return Err(ConfigError::WatchHistoryBytes(self.watch_history_bytes));
        }
        let watch = WatchConfig {
            max_watchers: self.max_watchers,
            history: crate::store::FeedSettings {
                history_events: self.watch_history,
                history_bytes: usize::try_from(self.watch_history_bytes).unwrap_or(usize::MAX),
            },
        };
        if self.grpc_max_message_bytes < 1024 {
            return Err(ConfigError::GrpcMaxMessageBytes);
        }
        if self.partition_discovery_interval < Duration::from_secs(1) {
            return Err(ConfigError::DiscoveryInterval);
        }
        let ratio = self.memory_limit_ratio;
        if !(ratio == 0.0 || (0.1..=1.0).contains(&ratio)) {
            return Err(ConfigError::MemoryLimitRatio(ratio.to_string()));
        }
        let remote = match &self.snapshot_url {
            Some(url) => Some(
                crate::snapshot::remote::RemoteSnapshots::from_url(
                    url,
                    self.snapshot_keep,
                    env.iter().cloned(),
                )
                .map_err(|reason| ConfigError::SnapshotUrl {
                    value: url.clone(),
                    reason,
                })?,
            ),
            None => None,
        };
        if self.snapshot_publish && remote.is_none() {
            return Err(ConfigError::SnapshotPublishWithoutUrl);
        }
        let snapshots = match self.snapshot_dir {
            Some(dir) => Some(SnapshotConfig {
                dir,
                interval: self.snapshot_interval,
                keep: self.snapshot_keep.max(1),
                max_age: self.snapshot_max_age,
                remote,
                publish: self.snapshot_publish,
            }),
            None if remote.is_some() => return Err(ConfigError::SnapshotUrlWithoutDir),
            None => None,
        };
        let client_id = match self.client_id {
            Some(id) if id.trim().is_empty() => return Err(ConfigError::ClientId),
            Some(id) => id.trim().to_string(),
            None => match env.iter().find(|(k, v)| k == POD_NAME_ENV && !v.is_empty()) {
                Some((_, pod)) => format!("cdc-cache-{pod}"),
                None => "cdc-cache".to_string(),
            },
        };
        Ok(Config {
            brokers,
            tables,
            grpc_listen,
            grpc_socket_mode,
            admin_listen,
            kafka_options: kafka_options(&self.kafka_options, env)?,
            client_id,
            max_multiget_keys: self.max_multiget_keys,
            watch,
            grpc_max_message_bytes: self.grpc_max_message_bytes,
            shutdown_delay: self.shutdown_delay,
            shutdown_grace: self.shutdown_grace,
            partition_discovery_interval: self.partition_discovery_interval,
            on_decode_error: self.on_decode_error,
            decode_threads: decode_threads(self.decode_threads)?,
            memory_limit_ratio: ratio,
            memory_limit: self.memory_limit,
            snapshots,
            schema_registry,
            deprecations,
        })
    }
}

/// The registry settings, checked: required when a table is `avro`, its URLs parsed (user info
/// in a URL becomes basic auth and leaves the URL), one kind of credential at most, the CA file
/// read now so a wrong path fails start-up.
fn schema_registry(
    args: &crate::cli::SchemaRegistryArgs,
    tables: &[TableConfig],
) -> Result<Option<RegistryConfig>, ConfigError> {
    let bad = |flag: &'static str, reason: String| ConfigError::SchemaRegistry { flag, reason };
    let Some(urls) = args
        .schema_registry_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    else {
        if let Some(table) = tables.iter().find(|t| t.format.needs_schema_registry()) {
            return Err(bad(
                "--schema-registry-url",
                format!(
                    "table {:?} (topic {}) is {}: its records name their schema by id, so a schema registry is needed (CDC_CACHE_SCHEMA_REGISTRY_URL)",
                    table.table, table.topic, table.format
                ),
            ));
        }
        return Ok(None);
    };
    let mut parsed = Vec::new();
    let mut url_user = None;
    for text in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let mut url = url::Url::parse(text).map_err(|e| {
            bad(
                "--schema-registry-url",
                format!("{:?} is not a URL: {e}", redact_userinfo(text)),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(
                "--schema-registry-url",
                format!("{:?}: expected an http:// or https:// URL", redact_userinfo(text)),
            ));
        }
        if !url.username().is_empty() {
            let user = percent_decode(url.username());
            let password = percent_decode(url.password().unwrap_or(""));
            url_user = Some((user, password));
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        parsed.push(url);
    }
    let user = args.schema_registry_user.clone().filter(|u| !u.is_empty());
    let password = args.schema_registry_password.clone().filter(|p| !p.is_empty());
    let basic = match (user, password, url_user) {
        (Some(user), Some(password), _) => Some((user, password)),
        (Some(_), None, _) => {
            return Err(bad(
                "--schema-registry-user",
                "set without a password (CDC_CACHE_SCHEMA_REGISTRY_PASSWORD)".into(),
            ))
        }
        (None, Some(_), _) => {
            return Err(bad(
                "--schema-registry-password",
                "set without a user (CDC_CACHE_SCHEMA_REGISTRY_USER)".into(),
            ))
        }
        (None, None, from_url) => from_url,
    };
    let token = args.schema_registry_token.clone().filter(|t| !t.is_empty());
    let token_file = args.schema_registry_token_file.clone();
    let auth = match (basic, token, token_file) {
        (None, None, None) => Auth::None,
        (Some((user, password)), None, None) => Auth::Basic { user, password },
        (None, Some(token), None) => Auth::Bearer(token),
        (None, None, Some(file)) => {
            std::fs::metadata(&file)
                .map_err(|e| bad("--schema-registry-token-file", format!("{}: {e}", file.display())))?;
            Auth::BearerFile(file)
        }
        _ => {
            return Err(bad(
                "--schema-registry-token",
                "more than one kind of registry credential is set (user and password, token, token file): keep one"
                    .into(),
            ))
        }
    };
    let ca_pem = match &args.schema_registry_ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| bad("--schema-registry-ca-file", format!("{}: {e}", path.display())))?;
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                bad(
                    "--schema-registry-ca-file",
                    format!("{}: not PEM certificates: {e}", path.display()),
                )
            })?;
            Some((path.clone(), pem))
        }
        None => None,
    };
    Ok(Some(RegistryConfig {
        urls: parsed,
        auth,
        ca_pem,
    }))
}

/// A URL as text with any password replaced, for error messages.
fn redact_userinfo(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://<redacted>@{}", &text[..scheme_end], &text[at + 1..])
        }
        _ => text.to_string(),
    }
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The least history a watched table may keep: twice the largest batch ingest publishes at once
/// (`ingest::batch::MAX_RECORDS`), so one batch cannot move past a watcher that kept up.
const MIN_WATCH_HISTORY: usize = 4096;

/// Most decode threads accepted: more than the machine's CPUs only adds switching.
const MAX_DECODE_THREADS: usize = 64;

/// `--decode-threads`: 0 is one per CPU the process may use (std reads the cgroup CPU quota).
fn decode_threads(flag: usize) -> Result<usize, ConfigError> {
    match flag {
        0 => Ok(std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DECODE_THREADS))),
        n if n <= MAX_DECODE_THREADS => Ok(n),
        n => Err(ConfigError::DecodeThreads(n)),
    }
}

fn parse_socket_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8).ok().filter(|mode| *mode <= 0o777)
}

/// Parses `TOPIC[=TABLE][:FORMAT]` specs. Kafka topic names never contain `=` or `:`, so the
/// separators are unambiguous.
/// Gives each table named by a `--project TABLE=COLUMN,...` its projection. Only row formats
/// have columns: a raw table's values are opaque bytes.
fn set_projections(tables: &mut [TableConfig], specs: &[String]) -> Result<(), ConfigError> {
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let bad = |reason: String| ConfigError::Project {
            value: spec.to_string(),
            reason,
        };
        let (name, columns) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected TABLE=COLUMN[,COLUMN...]".into()))?;
        let names: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
        let known = names.join(", ");
        let table = tables
            .iter_mut()
            .find(|t| t.table == name.trim())
            .ok_or_else(|| bad(format!("no table {:?}; configured tables: {known}", name.trim())))?;
        if table.format == Format::Raw {
            return Err(bad(format!(
                "table {:?} is raw: its values are bytes, not rows with columns; projection needs a row format (debezium or avro)",
                table.table
            )));
        }
        if table.projection.is_some() {
            return Err(bad(format!("table {:?} is projected twice", table.table)));
        }
        table.projection = Some(Projection::parse(columns).map_err(|e| bad(e.to_string()))?);
    }
    Ok(())
}

pub fn parse_topics(specs: &[String], default_format: Format) -> Result<Vec<TableConfig>, ConfigError> {
    let mut tables = Vec::new();
    let mut topics_seen = HashSet::new();
    let mut tables_seen = HashSet::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let bad = |reason: &str| ConfigError::Topic {
            value: spec.to_string(),
            reason: reason.to_string(),
        };
        let (rest, format) = match spec.split_once(':') {
            Some((rest, format)) => (
                rest,
                Format::from_str(format, true)
                    .map_err(|_| bad(&format!("unknown format {format:?}; expected raw or debezium")))?,
            ),
            None => (spec, default_format),
        };
        let (topic, table) = match rest.split_once('=') {
            Some((topic, table)) => (topic, table),
            None => (rest, rest),
        };
        validate_topic_name(topic).map_err(|reason| bad(&reason))?;
        if table.is_empty() {
            return Err(bad("empty table name after '='"));
        }
        if !topics_seen.insert(topic.to_string()) {
            return Err(bad(&format!("topic {topic:?} is configured twice")));
        }
        if !tables_seen.insert(table.to_string()) {
            return Err(bad(&format!("table name {table:?} is used twice")));
        }
        tables.push(TableConfig {
            topic: topic.to_string(),
            table: table.to_string(),
            format,
            compression: CompressionMode::default(),
            projection: None,
        });
    }
    if tables.is_empty() {
        return Err(ConfigError::NoTopic);
    }
    Ok(tables)
}

/// Kafka's own rule: 1-249 characters of ASCII letters, digits, '.', '_' and '-'.
fn validate_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("empty topic name".into());
    }
    if topic.len() > 249 {
        return Err("topic name longer than 249 characters".into());
    }
    if topic == "." || topic == ".." {
        return Err("topic name cannot be '.' or '..'".into());
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid character {c:?} in topic name (allowed: letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// Merges the three sources of librdkafka options; later sources win: `CDC_CACHE_KAFKA_<KEY>`
/// variables, then `CDC_CACHE_KAFKA_OPTIONS`, then `--kafka-option` flags.
fn kafka_options(
    flags: &[String],
    env: Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut options = BTreeMap::new();
    let mut list = None;
    for (name, value) in env {
        if name == KAFKA_OPTIONS_ENV {
            list = Some(value);
        } else if let Some(key) = name.strip_prefix(KAFKA_ENV_PREFIX) {
            if !key.is_empty() {
                options.insert(key.to_ascii_lowercase().replace('_', "."), value);
            }
        }
    }
    let listed = list.as_deref().map(split_option_list).unwrap_or_default();
    for option in listed.iter().chain(flags).filter(|o| !o.trim().is_empty()) {
        let (key, value) = option
            .split_once('=')
            .filter(|(key, _)| !key.trim().is_empty())
            .ok_or_else(|| ConfigError::KafkaOptionSyntax {
                value: redact_option_text(option),
            })?;
        options.insert(key.trim().to_string(), value.to_string());
    }
    for (key, value) in &options {
        if let Some(reason) = kafka_config::refusal(key) {
            return Err(ConfigError::KafkaOptionReserved {
                key: key.clone(),
                reason,
            });
        }
        if let Some(reason) = kafka_config::bad_value(key, value) {
            return Err(ConfigError::KafkaOptionValue {
                key: key.clone(),
                reason,
            });
        }
    }
    Ok(options)
}

/// Splits `CDC_CACHE_KAFKA_OPTIONS` at commas; `\,` is a comma inside a value and `\\` a
/// backslash.
fn split_option_list(list: &str) -> Vec<String> {
    let mut options = vec![String::new()];
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ (',' | '\\')) => options.last_mut().expect("never empty").push(next),
                Some(other) => {
                    let current = options.last_mut().expect("never empty");
                    current.push('\\');
                    current.push(other);
                }
                None => options.last_mut().expect("never empty").push('\\'),
            },
            ',' => options.push(String::new()),
            c => options.last_mut().expect("never empty").push(c),
        }
    }
    options
}

/// A malformed option may still hold a secret: show only what precedes any '='.
fn redact_option_text(flag: &str) -> String {
    match flag.split_once('=') {
        Some((key, _)) => format!("{key}=<redacted>"),
        None if flag.len() > 40 || kafka_config::is_secret_key(&flag.to_ascii_lowercase()) => {
            "<redacted>".into()
        }
        None => flag.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn serve(args: &[&str]) -> Result<Config, String> {
        serve_with_env(args, &[])
    }

    fn serve_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let cli =
            Cli::try_parse_from(["cdc-cache", "serve"].iter().chain(args)).map_err(|e| e.to_string())?;
        let Command::Serve(serve) = cli.command else {
            unreachable!("parsed a serve command")
        };
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        serve.into_config(env).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_serve_uses_documented_defaults() {
        let config = serve(&["--brokers", "k:9092", "--topic", "orders"]).unwrap();
        assert_eq!(config.brokers, "k:9092");
        assert_eq!(
            config.tables,
            vec![TableConfig {
                topic: "orders".into(),
                table: "orders".into(),
                format: Format::Raw,
                compression: CompressionMode::Auto,
                projection: None,
            }]
        );
        assert_eq!(
            config.grpc_listen,
            ListenAddr::Tcp("127.0.0.1:50051".parse().unwrap())
        );
        assert_eq!(config.admin_listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(config.grpc_socket_mode, 0o660);
        assert_eq!(config.client_id, "cdc-cache");
        assert_eq!(config.shutdown_delay, Duration::ZERO);
        assert_eq!(config.memory_limit_ratio, 0.9);
        assert!(config.deprecations.is_empty());
        assert_eq!(config.max_multiget_keys, 10_000);
        assert_eq!(config.watch.max_watchers, 256);
        assert_eq!(config.watch.history.history_events, 65_536);
        assert_eq!(config.watch.history.history_bytes, 64 << 20);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.on_decode_error, OnDecodeError::Skip);
        assert!(config.kafka_options.is_empty());
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(config.decode_threads, cpus.min(MAX_DECODE_THREADS));
    }

    #[test]
    fn decode_threads_are_bounded() {
        let with = |n: &str| serve(&["--brokers", "k:9092", "--topic", "t", "--decode-threads", n]);
        assert_eq!(with("1").unwrap().decode_threads, 1);
        assert_eq!(with("64").unwrap().decode_threads, 64);
        assert_eq!(
            with("65").unwrap_err(),
            "--decode-threads 65: at most 64 (0: one per CPU)"
        );
        assert!(with("-1").is_err());
    }

    #[test]
    fn topic_specs_carry_table_and_format() {
        let config = serve(&[
            "--brokers",
            "k:9092",
            "--format",
            "debezium",
            "--topic",
            "dbz.public.orders=orders",
            "--topic",
            "users=people:raw",
            "--topic",
            "plain",
        ])
        .unwrap();
        let got: Vec<_> = config
            .tables
            .iter()
            .map(|t| (t.topic.as_str(), t.table.as_str(), t.format))
            .collect();
        assert_eq!(
            got,
            vec![
                ("dbz.public.orders", "orders", Format::Debezium),
                ("users", "people", Format::Raw),
                ("plain", "plain", Format::Debezium),
            ]
        );
    }

    #[test]
    fn bad_topic_specs_name_the_flag_and_value() {
        let cases = [
            ("orders:xml", "unknown format \"xml\""),
            ("ord ers", "invalid character ' '"),
            ("orders=", "empty table name"),
            ("=t", "empty topic name"),
        ];
        for (spec, want) in cases {
            let err = serve(&["--brokers", "k:9092", "--topic", spec]).unwrap_err();
            assert!(err.starts_with(&format!("--topic {spec:?}")), "{err}");
            assert!(err.contains(want), "{spec}: {err}");
        }
        let err = serve(&["--brokers", "k:9092", "--topic", "a", "--topic", "a=b"]).unwrap_err();
        assert!(err.contains("configured twice"), "{err}");
        let err = serve(&["--brokers", "k:9092", "--topic", "a=t", "--topic", "b=t"]).unwrap_err();
        assert!(err.contains("used twice"), "{err}");
    }

    #[test]
    fn missing_topic_and_brokers_are_reported() {
        assert_eq!(
            serve(&["--brokers", "k:9092"]).unwrap_err(),
            ConfigError::NoTopic.to_string()
        );
        let err = serve(&["--topic", "a"]).unwrap_err();
        assert!(err.contains("--brokers"), "{err}");
    }

    #[test]
    fn non_loopback_grpc_needs_allow_remote() {
        let err = serve(&[
            "--brokers",
            "k:9092",
            "--topic",
            "a",
            "--grpc-listen",
            "0.0.0.0:50051",
        ])
        .unwrap_err();
        assert!(err.starts_with("--grpc-listen 0.0.0.0:50051"), "{err}");
        assert!(err.contains("--allow-remote"), "{err}");
        let config = serve(&[
            "--brokers",
            "k:9092",
            "--topic",
            "a",
            "--grpc-listen",
            "0.0.0.0:50051",
            "--allow-remote",
        ])
        .unwrap();
        assert_eq!(
            config.grpc_listen,
            ListenAddr::Tcp("0.0.0.0:50051".parse().unwrap())
        );
        let config = serve(&[
            "--brokers",
            "k:9092",
            "--topic",
            "a",
            "--grpc-listen",
            "[::1]:7000",
        ])
        .unwrap();
        assert_eq!(config.grpc_listen, ListenAddr::Tcp("[::1]:7000".parse().unwrap()));
    }

    #[test]
    fn unix_socket_and_bad_addresses() {
        let config = serve(&[
            "--brokers",
            "k:9092",
            "--topic",
            "a",
            "--grpc-listen",
            "unix:/run/c.sock",
        ])
        .unwrap();
        assert_eq!(config.grpc_listen, ListenAddr::Unix("/run/c.sock".into()));
        let err = serve(&[
            "--brokers",
            "k:9092",
            "--topic",
            "a",
            "--grpc-listen",
            "localhost:1",
        ])
        .unwrap_err();
        assert!(err.starts_with("--grpc-listen \"localhost:1\""), "{err}");
        let err = serve(&["--brokers", "k:9092", "--topic", "a", "--admin-listen", "nope"]).unwrap_err();
        assert!(err.starts_with("--admin-listen \"nope\""), "{err}");
        let err = serve(&[
            "--brokers",
            "k:9092",
            "--topic",
            "a",
            "--grpc-socket-mode",
            "0999",
        ])
        .unwrap_err();
        assert!(err.starts_with("--grpc-socket-mode \"0999\""), "{err}");
        let config = serve(&["--brokers", "k:9092", "--topic", "a", "--grpc-socket-mode", "600"]).unwrap();
        assert_eq!(config.grpc_socket_mode, 0o600);
    }

    #[test]
    fn typed_flags_reject_bad_values_with_the_flag_name() {
        let err = serve(&["--brokers", "k", "--topic", "a", "--max-multiget-keys", "many"]).unwrap_err();
        assert!(err.contains("--max-multiget-keys"), "{err}");
        let err = serve(&["--brokers", "k", "--topic", "a", "--shutdown-grace", "soon"]).unwrap_err();
        assert!(err.contains("--shutdown-grace"), "{err}");
        let err = serve(&["--brokers", "k", "--topic", "a", "--max-multiget-keys", "0"]).unwrap_err();
        assert!(err.contains("--max-multiget-keys"), "{err}");
        let err = serve(&["--brokers", "k", "--topic", "a", "--format", "protobuf"]).unwrap_err();
        assert!(err.contains("--format"), "{err}");
    }

    #[test]
    fn kafka_options_merge_env_and_flags_and_flags_win() {
        let config = serve_with_env(
            &[
                "--brokers",
                "k",
                "--topic",
                "a",
                "--kafka-option",
                "security.protocol=SASL_SSL",
                "--kafka-option",
                "sasl.username=flag-user",
            ],
            &[
                ("CDC_CACHE_KAFKA_SASL_PASSWORD", "s3cret"),
                ("CDC_CACHE_KAFKA_SASL_USERNAME", "env-user"),
                ("CDC_CACHE_BROKERS", "ignored-here"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        let got: Vec<_> = config
            .kafka_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("sasl.password", "s3cret"),
                ("sasl.username", "flag-user"),
                ("security.protocol", "SASL_SSL"),
            ]
        );
    }

    #[test]
    fn kafka_option_errors_never_echo_a_value() {
        let err = serve(&["--brokers", "k", "--topic", "a", "--kafka-option", "=hunter2"]).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.starts_with("--kafka-option"), "{err}");
        let err = serve(&[
            "--brokers",
            "k",
            "--topic",
            "a",
            "--kafka-option",
            "bootstrap.servers=x:1",
        ])
        .unwrap_err();
        assert!(err.contains("use --brokers"), "{err}");
        let err = serve_with_env(
            &["--brokers", "k", "--topic", "a"],
            &[("CDC_CACHE_KAFKA_ISOLATION_LEVEL", "read_uncommitted")],
        )
        .unwrap_err();
        assert!(err.starts_with("--kafka-option isolation.level"), "{err}");
    }

    #[test]
    fn the_old_admin_flag_and_env_var_still_work_and_are_reported_as_deprecated() {
        let config = serve(&[
            "--brokers",
            "k",
            "--topic",
            "a",
            "--metrics-listen",
            "0.0.0.0:9000",
        ])
        .unwrap();
        assert_eq!(config.admin_listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.deprecations.len(), 1);
        assert!(
            config.deprecations[0].contains("--admin-listen"),
            "{:?}",
            config.deprecations
        );
        let err = serve(&["--brokers", "k", "--topic", "a", "--metrics-listen", "bad"]).unwrap_err();
        assert!(err.starts_with("--metrics-listen \"bad\""), "{err}");
        let config = serve(&[
            "--brokers",
            "k",
            "--topic",
            "a",
            "--metrics-listen",
            "0.0.0.0:9000",
            "--admin-listen",
            "[::]:9001",
        ])
        .unwrap();
        assert_eq!(
            config.admin_listen,
            "[::]:9001".parse().unwrap(),
            "the new name wins"
        );
    }

    #[test]
    fn a_kafka_option_flag_is_taken_whole_and_the_list_variable_has_an_escape() {
        let config = serve_with_env(
            &[
                "--brokers",
                "k",
                "--topic",
                "a",
                "--kafka-option",
                "debug=broker,fetch",
            ],
            &[(
                "CDC_CACHE_KAFKA_OPTIONS",
                r"ssl.cipher.suites=A\,B,security.protocol=SSL,sasl.username=x\\y",
            )],
        )
        .unwrap();
        let got: Vec<_> = config
            .kafka_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("debug", "broker,fetch"),
                ("sasl.username", r"x\y"),
                ("security.protocol", "SSL"),
                ("ssl.cipher.suites", "A,B"),
            ]
        );
        // The list variable is not an option of its own.
        assert!(!config.kafka_options.contains_key("options"));
    }

    #[test]
    fn kafka_option_sources_override_in_order() {
        let config = serve_with_env(
            &[
                "--brokers",
                "k",
                "--topic",
                "a",
                "--kafka-option",
                "fetch.wait.max.ms=30",
            ],
            &[
                ("CDC_CACHE_KAFKA_FETCH_WAIT_MAX_MS", "10"),
                ("CDC_CACHE_KAFKA_SOCKET_TIMEOUT_MS", "1000"),
                (
                    "CDC_CACHE_KAFKA_OPTIONS",
                    "fetch.wait.max.ms=20,socket.timeout.ms=2000",
                ),
            ],
        )
        .unwrap();
        assert_eq!(config.kafka_options["fetch.wait.max.ms"], "30");
        assert_eq!(config.kafka_options["socket.timeout.ms"], "2000");
    }

    #[test]
    fn client_id_comes_from_the_flag_or_the_pod_name() {
        let config = serve_with_env(
            &["--brokers", "k", "--topic", "a"],
            &[("POD_NAME", "orders-7f9c")],
        )
        .unwrap();
        assert_eq!(config.client_id, "cdc-cache-orders-7f9c");
        let config = serve_with_env(
            &["--brokers", "k", "--topic", "a", "--client-id", "orders-app"],
            &[("POD_NAME", "orders-7f9c")],
        )
        .unwrap();
        assert_eq!(config.client_id, "orders-app");
        let err = serve(&["--brokers", "k", "--topic", "a", "--client-id", " "]).unwrap_err();
        assert!(err.starts_with("--client-id"), "{err}");
    }

    #[test]
    fn shutdown_delay_and_memory_ratio_are_checked() {
        let config = serve(&["--brokers", "k", "--topic", "a", "--shutdown-delay", "5s"]).unwrap();
        assert_eq!(config.shutdown_delay, Duration::from_secs(5));
        for bad in ["1.5", "0.05", "2"] {
            let err = serve(&["--brokers", "k", "--topic", "a", "--memory-limit-ratio", bad]).unwrap_err();
            assert!(err.contains("--memory-limit-ratio"), "{bad}: {err}");
        }
        let config = serve(&["--brokers", "k", "--topic", "a", "--memory-limit-ratio", "0"]).unwrap();
        assert_eq!(config.memory_limit_ratio, 0.0);
    }

    #[test]
    fn watch_flags_are_bounded_by_name() {
        let config = serve(&[
            "--brokers",
            "k",
            "--topic",
            "a",
            "--watch-history",
            "5000",
            "--watch-history-bytes",
            "8Mi",
            "--max-watchers",
            "3",
        ])
        .unwrap();
        assert_eq!(config.watch.max_watchers, 3);
        assert_eq!(config.watch.history.history_events, 5000);
        assert_eq!(config.watch.history.history_bytes, 8 << 20);
        let err = serve(&["--brokers", "k", "--topic", "a", "--watch-history", "4000"]).unwrap_err();
        assert!(
            err.contains("--watch-history 4000: must be at least 4096"),
            "{err}"
        );
        let err = serve(&["--brokers", "k", "--topic", "a", "--watch-history-bytes", "512Ki"]).unwrap_err();
        assert!(err.contains("--watch-history-bytes"), "{err}");
        let err = serve(&["--brokers", "k", "--topic", "a", "--max-watchers", "many"]).unwrap_err();
        assert!(err.contains("--max-watchers"), "{err}");
    }

    #[test]
    fn projections_name_a_row_table_and_columns() {
        let topics = [
            "--brokers",
            "k",
            "--topic",
            "dbz.a=a:debezium",
            "--topic",
            "dbz.b=b:debezium",
            "--topic",
            "r",
        ];
        let with = |project: &[&str]| {
            let mut args = topics.to_vec();
            args.extend_from_slice(project);
            serve(&args)
        };
        let config = with(&["--project", "a=id, email", "--project", "b=x"]).unwrap();
        let columns = |i: usize| config.tables[i].projection.as_ref().map(ToString::to_string);
        assert_eq!(
            (columns(0), columns(1), columns(2)),
            (Some("email,id".into()), Some("x".into()), None)
        );
        // The env var's form: several tables separated by ';'.
        let config = with(&["--project", "a=id;b=y,z"]).unwrap();
        assert_eq!(config.tables[1].projection.as_ref().unwrap().to_string(), "y,z");
        for (project, want) in [
            ("nope=id", "no table \"nope\"; configured tables: a, b, r"),
            ("r=id", "table \"r\" is raw"),
            ("a", "expected TABLE=COLUMN"),
            ("a=id,,x", "an empty column name"),
        ] {
            let err = with(&["--project", project]).unwrap_err();
            assert!(
                err.contains("--project") && err.contains(want),
                "{project}: {err}"
            );
        }
        let err = with(&["--project", "a=id", "--project", "a=x"]).unwrap_err();
        assert!(err.contains("projected twice"), "{err}");
    }

    #[test]
    fn avro_topics_need_a_schema_registry() {
        let error = serve(&["--brokers", "b:9092", "--topic", "dbz.customers=customers:avro"]).unwrap_err();
        assert!(
            error.contains("--schema-registry-url") && error.contains("\"customers\""),
            "{error}"
        );
        let config = serve(&[
            "--brokers",
            "b:9092",
            "--topic",
            "dbz.customers=customers:avro",
            "--schema-registry-url",
            "https://alice:s%3Acret@registry:8081/base/,http://backup:8081",
            "--project",
            "customers=email",
        ])
        .unwrap();
        let registry = config.schema_registry.expect("configured");
        assert_eq!(
            registry.display_urls(),
            "https://registry:8081/base/,http://backup:8081/"
        );
        assert!(
            registry.auth
                == Auth::Basic {
                    user: "alice".into(),
                    password: "s:cret".into()
                }
        );
        // The password never shows in Debug output.
        assert!(!format!("{registry:?}").contains("s:cret"));
    }

    #[test]
    fn bad_schema_registry_settings_name_their_flag() {
        let base = [
            "--brokers",
            "b:9092",
            "--topic",
            "t:avro",
            "--schema-registry-url",
        ];
        let with = |rest: &[&str]| serve(&base.iter().chain(rest).copied().collect::<Vec<_>>()).unwrap_err();
        let error = with(&["ftp://registry"]);
        assert!(
            error.starts_with("--schema-registry-url") && error.contains("http"),
            "{error}"
        );
        let error = with(&["not a url"]);
        assert!(error.starts_with("--schema-registry-url"), "{error}");
        let error = with(&["http://r", "--schema-registry-user", "u"]);
        assert!(
            error.starts_with("--schema-registry-user") && error.contains("password"),
            "{error}"
        );
        let error = with(&[
            "http://r",
            "--schema-registry-token",
            "t",
            "--schema-registry-user",
            "u",
            "--schema-registry-password",
            "p",
        ]);
        assert!(error.contains("more than one kind"), "{error}");
        let error = with(&["http://r", "--schema-registry-ca-file", "/nonexistent/ca.pem"]);
        assert!(
            error.starts_with("--schema-registry-ca-file") && error.contains("/nonexistent/ca.pem"),
            "{error}"
        );
        let error = with(&["http://r", "--schema-registry-token-file", "/nonexistent/token"]);
        assert!(error.starts_with("--schema-registry-token-file"), "{error}");
        // A URL with a password is never echoed with it.
        let error = with(&["https://u:hunter2@[bad"]);
        assert!(!error.contains("hunter2"), "{error}");
    }
}
