//! Shared test harness: brokers (librdkafka's mock cluster in-process, Tansu as a process), the
//! app in-process or as the real binary, producers, and a real gRPC client over a real socket.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cdc_cache::app::{self, AppError};
use cdc_cache::cli::{Cli, Command as CliCommand};
use cdc_cache::listeners::Listeners;
use cdc_cache::proto::cache_client::CacheClient;
use cdc_cache::proto::{GetRequest, GetResponse, MultiGetRequest, StatusRequest, StatusResponse};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub type Client = CacheClient<Channel>;

/// The app running in this process on ports chosen by the OS.
pub struct TestApp {
    pub grpc: String,
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), AppError>>,
}

impl TestApp {
    /// Starts `cdc-cache serve --brokers BROKERS ARGS...` in-process.
    pub async fn start(brokers: &str, args: &[&str]) -> TestApp {
        let mut argv = vec!["cdc-cache", "serve", "--brokers", brokers];
        // Ports chosen by the OS unless the test picks its own listener.
        for (flag, default) in [
            ("--grpc-listen", "127.0.0.1:0"),
            ("--admin-listen", "127.0.0.1:0"),
        ] {
            if !args.contains(&flag) {
                argv.extend([flag, default]);
            }
        }
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("valid test arguments");
        let CliCommand::Serve(serve) = cli.command else {
            unreachable!()
        };
        let config = serve.into_config(Vec::new()).expect("valid test config");
        let listeners = Listeners::bind(&config).await.expect("bind");
        let grpc = listeners.grpc_addr().unwrap().to_string();
        let admin = listeners.admin_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app::run(config, listeners, shutdown.clone()));
        TestApp {
            grpc,
            admin,
            shutdown,
            handle,
        }
    }

    pub async fn client(&self) -> Client {
        cdc_cache::client::connect(&self.grpc).await.expect("connect")
    }

    /// Cancels the app as SIGTERM would and returns how `run` ended.
    pub async fn stop(self) -> Result<(), AppError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("app stops within 30 s")
            .expect("app task not panicked")
    }

    /// Waits for `run` to end on its own (e.g. a fatal ingest error).
    pub async fn finished(self, within: Duration) -> Result<(), AppError> {
        tokio::time::timeout(within, self.handle)
            .await
            .expect("app stopped by itself")
            .expect("app task not panicked")
    }
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn status(client: &mut Client) -> StatusResponse {
    client
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

pub async fn wait_ready(client: &mut Client, timeout: Duration) -> StatusResponse {
    eventually(timeout, "the cache to become ready", || {
        let mut client = client.clone();
        async move {
            let status = status(&mut client).await;
            status.ready.then_some(status)
        }
    })
    .await
}

pub async fn get(client: &mut Client, table: &str, key: &[u8]) -> Result<GetResponse, tonic::Status> {
    client
        .get(GetRequest {
            table: table.into(),
            key: key.to_vec().into(),
            consistency: None,
        })
        .await
        .map(|r| r.into_inner())
}

/// The value of `key`, or None when absent.
pub async fn value(client: &mut Client, table: &str, key: &[u8]) -> Option<Vec<u8>> {
    let response = get(client, table, key).await.expect("get");
    response.found.then(|| response.value.to_vec())
}

pub async fn multi_get(
    client: &mut Client,
    table: &str,
    keys: &[&[u8]],
) -> Result<Vec<GetResponse>, tonic::Status> {
    client
        .multi_get(MultiGetRequest {
            table: table.into(),
            keys: keys.iter().map(|k| k.to_vec().into()).collect(),
            consistency: None,
        })
        .await
        .map(|r| r.into_inner().results)
}

pub async fn health(addr: &str, service: &str) -> ServingStatus {
    let channel = cdc_cache::client::channel(addr).await.expect("connect");
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner();
    ServingStatus::try_from(response.status).expect("known status")
}

/// A record to produce: key, value (None = tombstone), and optionally a fixed partition and
/// Kafka timestamp.
pub struct Record<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub partition: Option<i32>,
    pub timestamp: Option<i64>,
}

pub fn upsert<'a>(key: &'a [u8], value: &'a [u8]) -> Record<'a> {
    Record {
        key,
        value: Some(value),
        partition: None,
        timestamp: None,
    }
}

pub fn tombstone(key: &[u8]) -> Record<'_> {
    Record {
        key,
        value: None,
        partition: None,
        timestamp: None,
    }
}

impl<'a> Record<'a> {
    pub fn on_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn at(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }
}

/// `(key, value or None for a tombstone)` rows as records on the default partitioner.
pub fn rows_as_records(rows: &[(String, Option<String>)]) -> Vec<Record<'_>> {
    rows.iter()
        .map(|(key, value)| Record {
            key: key.as_bytes(),
            value: value.as_deref().map(str::as_bytes),
            partition: None,
            timestamp: None,
        })
        .collect()
}

/// The value of the series `name{labels}` exactly as rendered on `/metrics`, if present.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "16000000")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces the records in order and waits until every one is acknowledged.
pub fn produce(brokers: &str, topic: &str, records: &[Record<'_>]) {
    let producer = producer(brokers);
    send_all(&producer, topic, records);
    producer.flush(Duration::from_secs(30)).expect("flush");
}

pub fn send_all(producer: &BaseProducer, topic: &str, records: &[Record<'_>]) {
    for record in records {
        let mut r = BaseRecord::<[u8], [u8]>::to(topic).key(record.key);
        if let Some(value) = record.value {
            r = r.payload(value);
        }
        if let Some(p) = record.partition {
            r = r.partition(p);
        }
        if let Some(ts) = record.timestamp {
            r = r.timestamp(ts);
        }
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(10));
                    r = back;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32, compact: bool) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    if compact {
        new_topic = new_topic.set("cleanup.policy", "compact");
    }
    let results = admin
        .create_topics(
            [&new_topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for result in results {
        match result {
            // A rerun against an external cluster finds the topic of the last run.
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))
                if external_brokers().is_some() =>
            {
                delete_topic(brokers, topic).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                Box::pin(create_topic(brokers, topic, partitions, compact)).await;
            }
            result => {
                result.expect("topic created");
            }
        }
    }
}

pub async fn delete_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .delete_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("delete topics");
    for result in results {
        result.expect("topic deleted");
    }
}

/// What a cold start would hold: every partition of `topic` read to its end by a bare consumer,
/// the last write per key in offset order (keys are assumed to stay in one partition).
/// Redelivered offsets (Tansu repeats batches) count once.
pub fn topic_contents(brokers: &str, topic: &str, partitions: i32) -> BTreeMap<Vec<u8>, Vec<u8>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "truth")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    type KeyAndValue = (Vec<u8>, Option<Vec<u8>>);
    let mut records: BTreeMap<(i32, i64), KeyAndValue> = BTreeMap::new();
    let mut ended = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ended.len() < partitions as usize {
        assert!(Instant::now() < deadline, "could not read {topic} to its end");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(key) = m.key() {
                    records.insert(
                        (m.partition(), m.offset()),
                        (key.to_vec(), m.payload().map(<[u8]>::to_vec)),
                    );
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            _ => {}
        }
    }
    let mut contents = BTreeMap::new();
    for (key, value) in records.into_values() {
        match value {
            Some(value) => contents.insert(key, value),
            None => contents.remove(&key),
        };
    }
    contents
}

/// Waits until the cache holds exactly `expected` for `table` (every key equal, `entries` equal).
pub async fn wait_cache_is(
    client: &Client,
    table: &str,
    expected: &BTreeMap<Vec<u8>, Vec<u8>>,
    timeout: Duration,
) {
    eventually(timeout, "the cache to equal the topic", || {
        let mut client = client.clone();
        async move {
            let status = status(&mut client).await;
            let entries = status
                .tables
                .iter()
                .find(|t| table.is_empty() || t.table == table)?
                .entries;
            if entries != expected.len() as u64 {
                return None;
            }
            for (key, want) in expected {
                if value(&mut client, table, key).await.as_ref() != Some(want) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
}

/// The broker for the end-to-end suite: `CDC_CACHE_TEST_BROKERS` (an external Kafka, opt-in) or
/// None for a Tansu started by the test.
pub fn external_brokers() -> Option<String> {
    std::env::var("CDC_CACHE_TEST_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
}

/// True (with a notice) when the test needs a broker it controls (stop, restart, edit its
/// storage) but runs against an external one.
pub fn needs_own_broker(test: &str) -> bool {
    if external_brokers().is_some() {
        eprintln!("{test}: skipped against CDC_CACHE_TEST_BROKERS (it stops or edits the broker)");
        return true;
    }
    false
}

/// Runs a Python sqlite script on a stopped Tansu's store (`sys.argv[1]` is the database).
pub fn edit_tansu_store(db: &Path, script: &str, args: &[&str]) {
    let status = Command::new("python3")
        .args(["-c", script, db.to_str().unwrap()])
        .args(args)
        .status()
        .expect("python3");
    assert!(status.success(), "could not edit the Tansu store");
}

/// Kafka's CreatePartitions is not implemented by Tansu 0.6 (nor by librdkafka's mock), so the
/// partition is added the way Tansu's own CreateTopics lays partitions out in its sqlite store,
/// with the broker stopped, and the broker restarted: to the sidecar this is a broker outage
/// after which the topic has one more partition.
pub fn add_partition_in_tansu_store(db: &std::path::Path, topic: &str, partition: i32) {
    let script = r#"
import sqlite3, sys
db, topic, partition = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db)
c.execute("update topic set partitions = partitions + 1 where name = ?", (topic,))
c.execute("insert into topition (topic, partition) select id, ? from topic where name = ?", (partition, topic))
c.execute("insert into watermark (topition) select tp.id from topition tp join topic t on tp.topic = t.id "
          "where t.name = ? and tp.partition = ?", (topic, partition))
c.commit()
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script, db.to_str().unwrap(), topic, &partition.to_string()])
        .status()
        .expect("python3");
    assert!(status.success(), "could not add a partition to the Tansu store");
}

/// Minimal HTTP/1.0 GET: returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect admin");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("http status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A Tansu broker process with sqlite storage in a temp dir that outlives restarts.
pub struct Tansu {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `CDC_CACHE_TEST_BROKERS`: the tests run against it and nothing is started.
    external: Option<String>,
}

impl Tansu {
    pub fn binary() -> PathBuf {
        if let Ok(path) = std::env::var("TANSU_BIN") {
            return path.into();
        }
        let home = std::env::var("HOME").unwrap_or_default();
        let cargo_bin = Path::new(&home).join(".cargo/bin/tansu");
        if cargo_bin.exists() {
            return cargo_bin;
        }
        "tansu".into()
    }

    /// Starts a broker on a free port.
    pub async fn start() -> Tansu {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Tansu {
        let mut tansu = Tansu {
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            external: external_brokers(),
        };
        if tansu.external.is_none() {
            tansu.restart().await;
        }
        tansu
    }

    pub fn brokers(&self) -> String {
        match &self.external {
            Some(brokers) => brokers.clone(),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// (Re)starts the broker process on the same port and storage.
    pub async fn restart(&mut self) {
        assert!(
            self.external.is_none(),
            "an external broker is not ours to restart"
        );
        assert!(self.child.is_none(), "already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new(Self::binary())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // A relative sqlite path is resolved against the working directory.
            .args(["--storage-engine", "sqlite://tansu.db?maintenance_interval=1s"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu ({:?}): {e}; run scripts/test to install it",
                    Self::binary()
                )
            });
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        eventually(Duration::from_secs(30), "tansu to listen", || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("tansu.db")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The real `cdc-cache` binary as a child process.
pub struct Sidecar {
    pub grpc: String,
    pub admin: SocketAddr,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Sidecar {
    /// Runs `cdc-cache serve --brokers BROKERS ARGS...` with free ports.
    pub fn spawn(brokers: &str, args: &[&str]) -> Sidecar {
        Self::spawn_with_env(brokers, args, &[])
    }

    /// As [`Sidecar::spawn`], with more environment variables.
    pub fn spawn_with_env(brokers: &str, args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        let grpc = format!("127.0.0.1:{}", free_port());
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cdc-cache"))
            .args(["serve", "--brokers", brokers, "--grpc-listen", &grpc])
            .args(["--admin-listen", &admin.to_string()])
            .args(args)
            .env("RUST_LOG", "info,librdkafka=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("spawn cdc-cache");
        Sidecar {
            grpc,
            admin,
            child,
            log,
        }
    }

    pub async fn client(&self) -> Client {
        let grpc = self.grpc.clone();
        eventually(Duration::from_secs(20), "the sidecar's gRPC port", || {
            let grpc = grpc.clone();
            async move { cdc_cache::client::connect(&grpc).await.ok() }
        })
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar still running after {timeout:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
