//! Command line and environment, validated into typed values.
//!
//! Every flag is also an environment variable (`CDC_CACHE_<FLAG>`) because Kubernetes configures
//! containers through env. librdkafka settings come from `--kafka-option KEY=VALUE` or from
//! `CDC_CACHE_KAFKA_<KEY>` variables (`CDC_CACHE_KAFKA_SASL_PASSWORD` -> `sasl.password`), so a
//! secret can be injected with `secretKeyRef` without ever appearing in a command line.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Prefix of the env vars that carry one librdkafka property each.
pub const KAFKA_ENV_PREFIX: &str = "CDC_CACHE_KAFKA_";
const KAFKA_OPTIONS_ENV: &str = "CDC_CACHE_KAFKA_OPTIONS";

/// librdkafka properties that cdc-cache sets itself because its guarantees depend on them.
const RESERVED_KAFKA_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "use --brokers"),
    (
        "enable.partition.eof",
        "readiness depends on end-of-partition events",
    ),
    (
        "enable.auto.commit",
        "the log is the state; cdc-cache never commits offsets",
    ),
    (
        "enable.auto.offset.store",
        "the log is the state; cdc-cache never commits offsets",
    ),
    ("auto.offset.reset", "every partition is read from its beginning"),
    (
        "isolation.level",
        "aborted transactions must never reach the cache",
    ),
];

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
    /// Print the bootstrap and tailing progress of a running cdc-cache.
    Status(ClientArgs),
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

/// Options shared by `serve` and `demo`.
#[derive(Debug, Args)]
pub struct ServeOptions {
    /// How record keys and values are decoded, for topics that name no format.
    #[arg(long, env = "CDC_CACHE_FORMAT", default_value = "raw")]
    pub format: Format,

    /// gRPC address: HOST:PORT, or `unix:/path` for a unix socket (created with mode 0600).
    #[arg(long, env = "CDC_CACHE_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: String,

    /// Allow --grpc-listen on a non-loopback address (the cache holds the app's data).
    #[arg(long, env = "CDC_CACHE_ALLOW_REMOTE")]
    pub allow_remote: bool,

    /// Admin HTTP address: /metrics, /healthz, /readyz and the gRPC health service.
    #[arg(long, env = "CDC_CACHE_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,

    /// A librdkafka property (TLS, SASL, timeouts). Repeatable. Also settable one per env var as
    /// CDC_CACHE_KAFKA_<KEY> with dots as underscores, e.g. CDC_CACHE_KAFKA_SASL_PASSWORD.
    #[arg(
        long = "kafka-option",
        env = KAFKA_OPTIONS_ENV,
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub kafka_options: Vec<String>,

    /// Most keys accepted in one MultiGet.
    #[arg(long, env = "CDC_CACHE_MAX_MULTIGET_KEYS", default_value_t = 10_000)]
    pub max_multiget_keys: usize,

    /// Largest gRPC message sent or received, in bytes (values of several MB must fit).
    #[arg(long, env = "CDC_CACHE_GRPC_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub grpc_max_message_bytes: usize,

    /// How long in-flight gRPC calls may take to finish after SIGTERM.
    #[arg(long, env = "CDC_CACHE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How often topics are checked for partitions added since start-up.
    #[arg(long, env = "CDC_CACHE_PARTITION_DISCOVERY_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub partition_discovery_interval: Duration,

    /// What an undecodable record does: `skip` counts and logs it, `fail` stops the sidecar.
    #[arg(long, env = "CDC_CACHE_ON_DECODE_ERROR", default_value = "skip")]
    pub on_decode_error: OnDecodeError,
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
    #[arg(long, env = "CDC_CACHE_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub addr: String,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Table to read; may be omitted when the server has a single table.
    #[arg(long, default_value = "")]
    pub table: String,

    /// Keys to look up (UTF-8). One key prints the bare value; several print KEY<TAB>VALUE lines.
    #[arg(required = true, value_name = "KEY")]
    pub keys: Vec<String>,

    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a topic's records are decoded into keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Key and value bytes stored as they are; a null value deletes.
    Raw,
    /// Debezium change events (JSON); keys are the primary key as compact JSON.
    Debezium,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Debezium => "debezium",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub brokers: String,
    pub tables: Vec<TableConfig>,
    pub grpc_listen: ListenAddr,
    pub metrics_listen: SocketAddr,
    /// librdkafka properties from the user, applied over cdc-cache's defaults.
    pub kafka_options: BTreeMap<String, String>,
    pub max_multiget_keys: usize,
    pub grpc_max_message_bytes: usize,
    pub shutdown_grace: Duration,
    pub partition_discovery_interval: Duration,
    pub on_decode_error: OnDecodeError,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("no topic configured: pass --topic TOPIC[=TABLE][:FORMAT] or set CDC_CACHE_TOPICS")]
    NoTopic,
    #[error("--brokers: empty; expected HOST:PORT[,...]")]
    NoBrokers,
    #[error("--topic {value:?}: {reason}")]
    Topic { value: String, reason: String },
    #[error("--grpc-listen {value:?}: {reason}")]
    GrpcListen { value: String, reason: String },
    #[error(
        "--grpc-listen {0}: not a loopback address; the cache holds the app's data, so pass --allow-remote (CDC_CACHE_ALLOW_REMOTE=true) to expose it"
    )]
    RemoteWithoutOptIn(SocketAddr),
    #[error("--metrics-listen {value:?}: expected HOST:PORT with a numeric IP (e.g. 0.0.0.0:9464)")]
    MetricsListen { value: String },
    #[error("--kafka-option {value:?}: expected KEY=VALUE")]
    KafkaOptionSyntax { value: String },
    #[error("--kafka-option {key}: set by cdc-cache itself ({reason})")]
    KafkaOptionReserved { key: String, reason: &'static str },
    #[error("--max-multiget-keys: must be at least 1")]
    MaxMultigetKeys,
    #[error("--grpc-max-message-bytes: must be at least 1024")]
    GrpcMaxMessageBytes,
    #[error("--partition-discovery-interval: must be at least 1s")]
    DiscoveryInterval,
}

impl ServeArgs {
    /// Validates the arguments. `env` is the process environment, passed in so that tests never
    /// have to mutate the real one; only `CDC_CACHE_KAFKA_*` entries are read from it.
    pub fn into_config(self, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::NoBrokers);
        }
        let tables = parse_topics(&self.topics, self.options.format)?;
        self.options
            .into_config(self.brokers.trim().to_string(), tables, env)
    }
}

impl ServeOptions {
    /// Validates the options for the given brokers and tables (the demo supplies its own).
    pub fn into_config(
        self,
        brokers: String,
        tables: Vec<TableConfig>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
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
        let metrics_listen = self
            .metrics_listen
            .parse()
            .map_err(|_| ConfigError::MetricsListen {
                value: self.metrics_listen.clone(),
            })?;
        if self.max_multiget_keys == 0 {
            return Err(ConfigError::MaxMultigetKeys);
        }
        if self.grpc_max_message_bytes < 1024 {
            return Err(ConfigError::GrpcMaxMessageBytes);
        }
        if self.partition_discovery_interval < Duration::from_secs(1) {
            return Err(ConfigError::DiscoveryInterval);
        }
        Ok(Config {
            brokers,
            tables,
            grpc_listen,
            metrics_listen,
            kafka_options: kafka_options(&self.kafka_options, env)?,
            max_multiget_keys: self.max_multiget_keys,
            grpc_max_message_bytes: self.grpc_max_message_bytes,
            shutdown_grace: self.shutdown_grace,
            partition_discovery_interval: self.partition_discovery_interval,
            on_decode_error: self.on_decode_error,
        })
    }
}

/// Parses `TOPIC[=TABLE][:FORMAT]` specs. Kafka topic names never contain `=` or `:`, so the
/// separators are unambiguous.
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

/// Merges `CDC_CACHE_KAFKA_<KEY>` env vars with `--kafka-option` flags (flags win).
fn kafka_options(
    flags: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut options = BTreeMap::new();
    for (name, value) in env {
        if name == KAFKA_OPTIONS_ENV {
            continue;
        }
        if let Some(key) = name.strip_prefix(KAFKA_ENV_PREFIX) {
            if !key.is_empty() {
                options.insert(key.to_ascii_lowercase().replace('_', "."), value);
            }
        }
    }
    for flag in flags.iter().filter(|f| !f.trim().is_empty()) {
        let (key, value) = flag
            .split_once('=')
            .filter(|(key, _)| !key.trim().is_empty())
            .ok_or_else(|| ConfigError::KafkaOptionSyntax {
                value: redact_option_text(flag),
            })?;
        options.insert(key.trim().to_string(), value.to_string());
    }
    for key in options.keys() {
        if let Some((_, reason)) = RESERVED_KAFKA_KEYS.iter().find(|(k, _)| k == key) {
            return Err(ConfigError::KafkaOptionReserved {
                key: key.clone(),
                reason,
            });
        }
    }
    Ok(options)
}

/// True for librdkafka properties whose values must never be logged.
pub fn is_secret_kafka_key(key: &str) -> bool {
    ["password", "secret", "jaas", "pem", "token", "key"]
        .iter()
        .any(|word| key.contains(word))
}

/// A malformed option may still hold a secret: show only what precedes any '='.
fn redact_option_text(flag: &str) -> String {
    match flag.split_once('=') {
        Some((key, _)) => format!("{key}=<redacted>"),
        None if flag.len() > 40 || is_secret_kafka_key(&flag.to_ascii_lowercase()) => "<redacted>".into(),
        None => flag.to_string(),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
                format: Format::Raw
            }]
        );
        assert_eq!(
            config.grpc_listen,
            ListenAddr::Tcp("127.0.0.1:50051".parse().unwrap())
        );
        assert_eq!(config.metrics_listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(config.max_multiget_keys, 10_000);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.on_decode_error, OnDecodeError::Skip);
        assert!(config.kafka_options.is_empty());
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
        let err = serve(&["--brokers", "k:9092", "--topic", "a", "--metrics-listen", "nope"]).unwrap_err();
        assert!(err.starts_with("--metrics-listen \"nope\""), "{err}");
    }

    #[test]
    fn typed_flags_reject_bad_values_with_the_flag_name() {
        let err = serve(&["--brokers", "k", "--topic", "a", "--max-multiget-keys", "many"]).unwrap_err();
        assert!(err.contains("--max-multiget-keys"), "{err}");
        let err = serve(&["--brokers", "k", "--topic", "a", "--shutdown-grace", "soon"]).unwrap_err();
        assert!(err.contains("--shutdown-grace"), "{err}");
        let err = serve(&["--brokers", "k", "--topic", "a", "--max-multiget-keys", "0"]).unwrap_err();
        assert!(err.contains("--max-multiget-keys"), "{err}");
        let err = serve(&["--brokers", "k", "--topic", "a", "--format", "avro"]).unwrap_err();
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
    fn secret_keys_are_recognised() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
        ] {
            assert!(is_secret_kafka_key(key), "{key}");
        }
        for key in ["security.protocol", "sasl.username", "socket.timeout.ms"] {
            assert!(!is_secret_kafka_key(key), "{key}");
        }
    }
}
