//! Serving next to Redis, same machine, same keys and values, same run:
//! Get throughput at 1/16/64 callers (TCP and unix socket) vs `redis-benchmark` GET, latency at
//! half of peak load, MultiGet of 100 keys vs MGET, and memory per entry vs Redis, plus
//! freshness (produce -> visible in Get) next to a bare consumer receiving the same records.
//!
//! `cargo bench --bench serve -- [--keys N] [--seconds S] [--runs N] [--dataset D] [--compression C]`
//! `--dataset filler|customers|orders`: 200-byte filler values, or realistic Debezium rows
//! (`cdc_cache::sample_rows`); `--compression auto|off` is passed to the sidecar.
//! The load generator is this program (tonic client, HdrHistogram); its own CPU use is printed.

use std::collections::HashMap;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_cache::proto::cache_client::CacheClient;
use cdc_cache::proto::{GetRequest, MultiGetRequest};
use hdrhistogram::Histogram;
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tonic::transport::Channel;

use common::{
    arg, cpu_seconds, create_topics, free_port, median, produce_each, sorted, start_tansu, Killed, Sidecar,
};

const TOPIC: &str = "bench.kv";
const VALUE_BYTES: usize = 200;

struct Options {
    keys: usize,
    seconds: f64,
    runs: usize,
    /// Sections to run (`--only get,latency`); all when empty.
    only: Vec<String>,
    /// `--rate R`: the latency section offers R ops/s instead of half of a measured peak.
    rate: Option<f64>,
    /// gRPC callers sharing one HTTP/2 connection, as a client pool would (Get sections; the
    /// MultiGet section measures one connection and four).
    callers_per_connection: usize,
    /// The values: `filler` (200 B of one byte), `customers` or `orders` (realistic rows).
    dataset: String,
    /// The sidecar's `--compression`.
    compression: String,
}

impl Options {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn options() -> Options {
    let only: String = arg("--only", String::new());
    Options {
        keys: arg("--keys", 100_000),
        seconds: arg("--seconds", 5.0),
        runs: arg("--runs", 3),
        rate: Some(arg("--rate", 0.0)).filter(|r| *r > 0.0),
        callers_per_connection: arg("--callers-per-connection", 16),
        dataset: arg("--dataset", "filler".to_string()),
        compression: arg("--compression", "auto".to_string()),
        only: only
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    }
}

fn tcp_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn key(i: usize) -> String {
    // redis-benchmark's -r key format, so both serve the same keys.
    format!("key:{i:012}")
}

/// Key `i`'s value in `dataset`; the same for Kafka and Redis.
fn value(dataset: &str, i: usize) -> Vec<u8> {
    let mut rng = cdc_cache::sample_rows::Rng::new(i as u64);
    match dataset {
        "filler" => vec![b'v'; VALUE_BYTES],
        "customers" => cdc_cache::sample_rows::customer(i as u64, &mut rng).into_bytes(),
        "orders" => cdc_cache::sample_rows::order(i as u64, &mut rng).into_bytes(),
        other => panic!("--dataset {other}: filler, customers or orders"),
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let o = options();
    // Tansu's memory engine keeps every record (librdkafka's mock keeps only 5 MB per partition).
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let _tansu = start_tansu(port, dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(create_topics(
        &brokers,
        &[(TOPIC, 3, true), ("bench.empty", 1, false)],
    ));
    let data_bytes = produce_each(&brokers, TOPIC, o.keys, key, |i| value(&o.dataset, i));
    let redis = Redis::start();
    // Each memory reading waits for Redis's RSS refresh, so only the memory section takes them.
    let redis_empty = o.runs("memory").then(|| redis.memory());
    redis.load(o.keys, |i| value(&o.dataset, i));
    let redis_full = o.runs("memory").then(|| redis.memory());
    let values = format!(
        "{} values (mean {} B), --compression {}",
        o.dataset,
        data_bytes / o.keys - key(0).len(),
        o.compression
    );
    let mut out = if o.only == ["memory"] {
        format!("## Memory: {} keys x {values}\n\n", o.keys)
    } else {
        format!(
            "## Serving: {} keys x {values}, {} s per measurement, {} runs (min / median / max)\n\n",
            o.keys, o.seconds, o.runs
        )
    };
    let tcp = Sidecar::start_with(&brokers, TOPIC, tcp_addr(), &["--compression", &o.compression]);
    runtime.block_on(assert_loaded(&tcp.grpc, o.keys));
    if let (Some(redis_empty), Some(redis_full)) = (redis_empty, redis_full) {
        out += &memory(&o, &brokers, &tcp, redis_empty, redis_full);
    }
    let mut peak_64 = None;
    if o.runs("get") {
        let (table, peak) = get_throughput(&o, &brokers, &tcp, &redis);
        out += &table;
        peak_64 = Some(peak);
    }
    if o.runs("latency") {
        let peak_64 = peak_64
            .or(o.rate.map(|r| r * 2.0))
            .unwrap_or_else(|| get_load(&o, &tcp, 64, None).ops_per_sec);
        let rate = Some(peak_64 / 2.0);
        let ours = get_load(&o, &tcp, 64, rate);
        let theirs = redis_get_load(&o, &redis, 64, rate);
        out += &format!(
            "\n### Get latency at half of peak ({:.0} ops/s offered by 64 callers, this program's generator for both)\n| | p50 µs | p99 µs | p99.9 µs | achieved ops/s | server CPU µs per call |\n|---|---|---|---|---|---|\n",
            peak_64 / 2.0
        );
        for (name, r) in [("cdc-cache (TCP)", ours), ("Redis GET", theirs)] {
            out += &format!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |\n",
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.ops_per_sec,
                r.server_cpu / r.ops_per_sec * 1e6
            );
        }
    }
    if o.runs("multiget") {
        let theirs: Vec<Throughput> = (0..o.runs)
            .map(|_| redis.benchmark_mget(16, o.keys, o.seconds))
            .collect();
        let keys_per_sec =
            |runs: &[Throughput]| runs.iter().map(|r| r.ops_per_sec * 100.0).collect::<Vec<_>>();
        // Server CPU per key: what one key of a MultiGet costs the server, next to MGET's.
        let cpu_per_key = |runs: &[Throughput]| {
            median(
                &runs
                    .iter()
                    .map(|r| r.server_cpu / (r.ops_per_sec * 100.0) * 1e6)
                    .collect::<Vec<_>>(),
            )
        };
        let cores = |runs: &[Throughput]| {
            let server = median(&runs.iter().map(|r| r.server_cpu).collect::<Vec<_>>());
            let generator = median(&runs.iter().map(|r| r.generator_cpu).collect::<Vec<_>>());
            format!("{server:.2}, {generator:.2}")
        };
        let mget = keys_per_sec(&theirs);
        out += "\n### MultiGet of 100 keys, 16 callers (keys/s); redis-benchmark opens a connection per caller\n| HTTP/2 connections | cdc-cache MultiGet | Redis MGET (redis-benchmark) | ratio | server CPU µs per key: cdc-cache, Redis | CPU cores: cdc-cache, its generator | CPU cores: redis-server, redis-benchmark |\n|---|---|---|---|---|---|---|\n";
        // One shared channel (the usual client), and a pool of four: with 20 KB answers, one
        // connection's stream of frames, not the server, sets the pace.
        for per_connection in [16, 4] {
            let ours: Vec<Throughput> = (0..o.runs)
                .map(|_| multiget_load(&o, &tcp, 16, per_connection))
                .collect();
            let mg = keys_per_sec(&ours);
            out += &format!(
                "| {} | {} | {} | {:.2} | {:.2}, {:.2} | {} | {} |\n",
                16 / per_connection,
                triple(&mg),
                triple(&mget),
                median(&mg) / median(&mget),
                cpu_per_key(&ours),
                cpu_per_key(&theirs),
                cores(&ours),
                cores(&theirs),
            );
        }
    }
    if o.runs("freshness") {
        let (ours, bare) = runtime.block_on(freshness(&brokers, &tcp.grpc, 100));
        out += &format!(
            "\n### Freshness: produce -> visible (µs), 100 updates\n| | p50 | p99 |\n|---|---|---|\n| cdc-cache Get | {:.0} | {:.0} |\n| bare consumer receive | {:.0} | {:.0} |\nratio p50: {:.2}, p99: {:.2}\n",
            ours.0, ours.1, bare.0, bare.1, ours.0 / bare.0, ours.1 / bare.1
        );
    }
    println!("{out}");
}

/// Memory per entry: the loaded sidecar's RSS growth over an idle one, next to Redis's growth
/// from empty to holding the same keys and values (`(used_memory, used_memory_rss)` pairs), and
/// the same for a sidecar with the other `--compression`.
fn memory(
    o: &Options,
    brokers: &str,
    loaded: &Sidecar,
    redis_empty: (u64, u64),
    redis_full: (u64, u64),
) -> String {
    let idle_rss = Sidecar::start(brokers, "bench.empty", tcp_addr()).settled_rss();
    let series = |name: &str| format!(r#"{name}{{table="{TOPIC}"}}"#);
    // With compression, memory settles once a dictionary is trained and the records held are
    // recompressed: wait for the generation and ratio to stop moving.
    let settled = |sidecar: &Sidecar, compression: &str| {
        if compression != "off" {
            sidecar.wait_compression_settled(TOPIC);
        }
        let ratio = series("cdc_cache_compression_ratio");
        (sidecar.settled_rss(), sidecar.metric(&ratio).unwrap_or(1.0))
    };
    let other = if o.compression == "off" { "auto" } else { "off" };
    let (sidecar_rss, ratio) = settled(loaded, &o.compression);
    let (other_rss, other_ratio) = settled(
        &Sidecar::start_with(brokers, TOPIC, tcp_addr(), &["--compression", other]),
        other,
    );
    let raw = (key(0).len() + (0..1000).map(|i| value(&o.dataset, i).len()).sum::<usize>() / 1000) as f64;
    let per = |bytes: u64| bytes as f64 / o.keys as f64;
    let ours = per(sidecar_rss.saturating_sub(idle_rss));
    let theirs = per(other_rss.saturating_sub(idle_rss));
    let redis_used = per(redis_full.0.saturating_sub(redis_empty.0));
    let redis_rss = per(redis_full.1.saturating_sub(redis_empty.1));
    let mut out = String::from(
        "### Memory per entry\n| | bytes/entry | beyond key+value | compression ratio (data / stored) |\n|---|---|---|---|\n",
    );
    out += &format!("| raw key+value (mean) | {raw:.0} | 0 | |\n");
    for (name, bytes, ratio) in [
        (
            format!("cdc-cache RSS growth, --compression {}", o.compression),
            ours,
            ratio,
        ),
        (
            format!("cdc-cache RSS growth, --compression {other}"),
            theirs,
            other_ratio,
        ),
    ] {
        out += &format!("| {name} | {bytes:.0} | {:.0} | {ratio:.2} |\n", bytes - raw);
    }
    out += &format!(
        "| Redis used_memory growth | {redis_used:.0} | {:.0} | |\n",
        redis_used - raw
    );
    out += &format!(
        "| Redis RSS growth | {redis_rss:.0} | {:.0} | |\n",
        redis_rss - raw
    );
    out += &format!(
        "cdc-cache (--compression {}) / Redis used_memory: {:.2}; / Redis RSS: {:.2}; --compression {other} / Redis used_memory: {:.2}\n\n",
        o.compression,
        ours / redis_used,
        ours / redis_rss,
        theirs / redis_used,
    );
    out
}

/// Get ops/s at 1, 16 and 64 callers over TCP and the unix socket, next to `redis-benchmark`;
/// returns the table and the 64-caller TCP peak.
fn get_throughput(o: &Options, brokers: &str, tcp: &Sidecar, redis: &Redis) -> (String, f64) {
    let mut out = String::from("### Get throughput (ops/s)\n| callers | cdc-cache TCP | cdc-cache unix socket | redis-benchmark GET | ratio TCP / redis-benchmark | Redis GET, this generator | ratio TCP / Redis, same generator | cdc-cache TCP, h2load | ratio h2load / redis-benchmark | CPU cores: cdc-cache, its generator | CPU cores: redis-server, redis-benchmark |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    let unix_path = std::env::temp_dir().join(format!("cdc-cache-bench-{}.sock", std::process::id()));
    let unix = Sidecar::start(brokers, TOPIC, format!("unix:{}", unix_path.display()));
    let h2load = H2load::find();
    let mut peak_64 = 0.0;
    for callers in [1usize, 16, 64] {
        let ours: Vec<LoadResult> = (0..o.runs).map(|_| get_load(o, tcp, callers, None)).collect();
        let unix_ops: Vec<f64> = (0..o.runs)
            .map(|_| get_load(o, &unix, callers, None).ops_per_sec)
            .collect();
        let theirs: Vec<Throughput> = (0..o.runs)
            .map(|_| redis.benchmark_get(callers, o.keys, o.seconds))
            .collect();
        let same_generator: Vec<f64> = (0..o.runs)
            .map(|_| redis_get_load(o, redis, callers, None).ops_per_sec)
            .collect();
        let h2load_ops: Vec<f64> = h2load
            .iter()
            .flat_map(|h2load| (0..o.runs).map(|_| h2load.get(tcp, callers, o.seconds).ops_per_sec))
            .collect();
        let ops: Vec<f64> = ours.iter().map(|r| r.ops_per_sec).collect();
        let redis_ops: Vec<f64> = theirs.iter().map(|r| r.ops_per_sec).collect();
        let med = |f: &dyn Fn(&LoadResult) -> f64| median(&ours.iter().map(f).collect::<Vec<_>>());
        let redis_med = |f: &dyn Fn(&Throughput) -> f64| median(&theirs.iter().map(f).collect::<Vec<_>>());
        if callers == 64 {
            peak_64 = median(&ops);
        }
        out +=
            &format!(
            "| {callers} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {:.2}, {:.2} | {:.2}, {:.2} |\n",
            triple(&ops),
            triple(&unix_ops),
            triple(&redis_ops),
            median(&ops) / median(&redis_ops),
            triple(&same_generator),
            median(&ops) / median(&same_generator),
            if h2load_ops.is_empty() { "(h2load not installed)".to_string() } else { triple(&h2load_ops) },
            if h2load_ops.is_empty() { f64::NAN } else { median(&h2load_ops) / median(&redis_ops) },
            med(&|r| r.server_cpu),
            med(&|r| r.generator_cpu),
            redis_med(&|r| r.server_cpu),
            redis_med(&|r| r.generator_cpu),
        );
    }
    (out, peak_64)
}

/// Waits until the sidecar holds every key: a benchmark of a half-loaded cache would measure
/// nothing. (Tansu may report a produced record in its high watermark a little after the ack, so
/// "ready" can come before the last records are applied.)
async fn assert_loaded(grpc: &str, keys: usize) {
    let mut client = CacheClient::new(cdc_cache::client::channel(grpc).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = client
            .status(cdc_cache::proto::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if status.tables[0].entries as usize == keys {
            return;
        }
        assert!(Instant::now() < deadline, "not every key loaded: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Redis {
    child: Killed,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        wait_port(port);
        Redis {
            child: Killed(child),
            port,
        }
    }

    fn load(&self, keys: usize, value: impl Fn(usize) -> Vec<u8>) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
            let mut batch = Vec::new();
            for &i in chunk {
                let k = key(i);
                let value = value(i);
                batch.extend_from_slice(
                    format!("*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n", k.len(), value.len()).as_bytes(),
                );
                batch.extend_from_slice(&value);
                batch.extend_from_slice(b"\r\n");
            }
            stream.write_all(&batch).unwrap();
            for _ in chunk {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                assert_eq!(line, "+OK\r\n");
            }
        }
    }

    /// (used_memory, used_memory_rss)
    fn memory(&self) -> (u64, u64) {
        // Redis refreshes used_memory_rss from its periodic cron, not on every write: read right
        // after a load it can still show the empty server's figure.
        std::thread::sleep(Duration::from_millis(1500));
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "info", "memory"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        (field("used_memory"), field("used_memory_rss"))
    }

    /// Runs `redis-benchmark` and measures its CPU and the server's while it runs.
    fn benchmark(&self, callers: usize, keys: usize, seconds: f64, command: &[String]) -> Throughput {
        // Size the request count to run about `seconds` at ~100k ops/s.
        let requests = ((seconds * 100_000.0) as usize).max(10_000);
        let mut command_line = Command::new("redis-benchmark");
        command_line
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                &callers.to_string(),
                "-n",
                &requests.to_string(),
            ])
            .args(["-r", &keys.to_string(), "--csv"])
            .args(command);
        run_generator(command_line, self.child.0.id(), |stdout| {
            // "test","rps",...  then one line per test.
            stdout
                .lines()
                .nth(1)?
                .split(',')
                .nth(1)?
                .trim_matches('"')
                .parse()
                .ok()
        })
    }

    fn benchmark_get(&self, callers: usize, keys: usize, seconds: f64) -> Throughput {
        self.benchmark(callers, keys, seconds, &["-t".into(), "get".into()])
    }

    fn benchmark_mget(&self, callers: usize, keys: usize, seconds: f64) -> Throughput {
        let mut command = vec!["MGET".to_string()];
        command.extend((0..100).map(|_| "key:__rand_int__".to_string()));
        self.benchmark(callers, keys, seconds / 20.0, &command)
    }
}

/// A throughput run (redis-benchmark, h2load, or this program's MultiGet loop): the rate, and the
/// CPU cores the generator and the server used.
struct Throughput {
    ops_per_sec: f64,
    server_cpu: f64,
    generator_cpu: f64,
}

/// Runs `command` to completion, sampling its CPU time and the server's (`server_pid`); the rate
/// is read from its output by `parse_rate` (0 when absent).
fn run_generator(mut command: Command, server_pid: u32, parse_rate: fn(&str) -> Option<f64>) -> Throughput {
    let server_before = cpu_seconds(&server_pid.to_string());
    let started = Instant::now();
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    // Sampled until it exits: the last sample misses at most 20 ms of its CPU time.
    let pid = child.id().to_string();
    let mut generator_cpu: f64 = 0.0;
    while child.try_wait().unwrap().is_none() {
        generator_cpu = cpu_seconds(&pid).max(generator_cpu);
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds(&server_pid.to_string()) - server_before;
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    Throughput {
        ops_per_sec: parse_rate(&stdout).unwrap_or(0.0),
        server_cpu: server_cpu / elapsed,
        generator_cpu: generator_cpu / elapsed,
    }
}

/// `h2load` (nghttp2's HTTP/2 load generator, C, the counterpart of `redis-benchmark`) sending
/// Get calls to the sidecar, one HTTP/2 connection per 16 callers. It repeats one request body, so
/// every call looks up the same key; the lookup is about 2% of the server's CPU in profiles.
struct H2load {
    /// The gRPC-framed GetRequest every call sends.
    body: tempfile::NamedTempFile,
}

impl H2load {
    /// None when h2load is not installed.
    fn find() -> Option<H2load> {
        use prost::Message;
        Command::new("h2load").arg("--version").output().ok()?;
        let message = GetRequest {
            table: String::new(),
            key: key(0).into_bytes().into(),
            consistency: None,
        }
        .encode_to_vec();
        // gRPC framing: uncompressed flag, big-endian length, message.
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), body).unwrap();
        Some(H2load { body: file })
    }

    fn get(&self, sidecar: &Sidecar, callers: usize, seconds: f64) -> Throughput {
        let requests = ((seconds * 100_000.0) as usize).max(10_000);
        let mut command = Command::new("h2load");
        command
            .args(["-n", &requests.to_string()])
            .args(["-c", &callers.div_ceil(16).to_string()])
            .args(["-m", &callers.min(16).to_string()])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg("-d")
            .arg(self.body.path())
            .arg(format!("http://{}/cdc_cache.v1.Cache/Get", sidecar.grpc));
        run_generator(command, sidecar.child.0.id(), |stdout| {
            // "finished in 2.06s, 97274.47 req/s, 19.39MB/s"
            let line = stdout.lines().find(|l| l.starts_with("finished in"))?;
            line.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok()
        })
    }
}

struct LoadResult {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    generator_cpu: f64,
    server_cpu: f64,
}

/// One HTTP/2 connection per `per_connection` callers, as a client pool would.
async fn channels(addr: &str, callers: usize, per_connection: usize) -> Vec<CacheClient<Channel>> {
    let mut clients = Vec::new();
    for _ in 0..callers.div_ceil(per_connection) {
        let channel = cdc_cache::client::channel(addr).await.unwrap();
        clients.push(CacheClient::new(channel));
    }
    clients
}

/// One caller's connection: a Get of `key` that returns whether the key was found.
trait Caller: 'static {
    async fn get(&mut self, key: String) -> bool;
}

impl Caller for CacheClient<Channel> {
    async fn get(&mut self, key: String) -> bool {
        let request = GetRequest {
            table: String::new(),
            key: key.into_bytes().into(),
            consistency: None,
        };
        CacheClient::get(self, request).await.unwrap().into_inner().found
    }
}

/// Redis GET over RESP on a connection of its own, as `redis-benchmark` opens one per client.
struct RedisCaller {
    stream: tokio::io::BufStream<tokio::net::TcpStream>,
    reply: Vec<u8>,
}

impl Caller for RedisCaller {
    async fn get(&mut self, key: String) -> bool {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let command = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
        self.stream.write_all(command.as_bytes()).await.unwrap();
        self.stream.flush().await.unwrap();
        // "$<length>\r\n" + value + "\r\n"
        self.reply.clear();
        self.stream.read_until(b'\n', &mut self.reply).await.unwrap();
        let length: usize = std::str::from_utf8(&self.reply[1..self.reply.len() - 2])
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let found = self.reply.starts_with(b"$") && length > 0;
        self.reply.resize(length + 2, 0);
        self.stream.read_exact(&mut self.reply).await.unwrap();
        found
    }
}

/// Runs `callers` Get loops against the sidecar for `o.seconds`.
fn get_load(o: &Options, sidecar: &Sidecar, callers: usize, rate: Option<f64>) -> LoadResult {
    let (addr, per_connection) = (sidecar.grpc.clone(), o.callers_per_connection);
    run_load(o, sidecar.child.0.id(), rate, move || async move {
        let clients = channels(&addr, callers, per_connection).await;
        (0..callers).map(|c| clients[c % clients.len()].clone()).collect()
    })
}

/// The same loops against Redis GET, from the same generator.
fn redis_get_load(o: &Options, redis: &Redis, callers: usize, rate: Option<f64>) -> LoadResult {
    let port = redis.port;
    run_load(o, redis.child.0.id(), rate, move || async move {
        let mut connections = Vec::new();
        for _ in 0..callers {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream.set_nodelay(true).unwrap();
            connections.push(RedisCaller {
                stream: tokio::io::BufStream::new(stream),
                reply: Vec::new(),
            });
        }
        connections
    })
}

/// Runs one Get loop per caller for `o.seconds` (at `rate` ops/s in total when given), with
/// latency recorded per call, and the CPU of the generator and of the server `pid`, on the
/// one-thread [`generator_runtime`].
fn run_load<C, F, Fut>(o: &Options, pid: u32, rate: Option<f64>, connect: F) -> LoadResult
where
    C: Caller,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Vec<C>>,
{
    let runtime = generator_runtime();
    // Callers are local tasks: each keeps its own (non-Send) random number generator.
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let connections = connect().await;
        let keys = o.keys;
        let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
        let cpu_before = (cpu_seconds("self"), cpu_seconds(&pid.to_string()));
        let started = Instant::now();
        // Open loop: one pacer releases a call every 1/rate s, and any idle caller makes it. The
        // pacer spins (yielding) instead of sleeping: tokio's timers fire on 1 ms ticks, which
        // would turn the offered rate into bursts of rate/1000 calls. Only it spins, so a
        // response's wake-ups do not queue behind 64 spinning callers.
        let permits = rate.map(|_| Arc::new(tokio::sync::Semaphore::new(0)));
        if let (Some(rate), Some(permits)) = (rate, permits.clone()) {
            tokio::task::spawn_local(async move {
                let period = Duration::from_secs_f64(1.0 / rate);
                let mut due = Instant::now();
                while due < deadline {
                    while Instant::now() < due {
                        tokio::task::yield_now().await;
                    }
                    permits.add_permits(1);
                    due += period;
                }
                permits.close();
            });
        }
        let mut tasks = Vec::new();
        for mut connection in connections {
            let permits = permits.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut histogram = Histogram::<u64>::new(3).unwrap();
                let mut rng = rand::rng();
                while Instant::now() < deadline {
                    if let Some(permits) = &permits {
                        // Closed or not, the pacer has stopped at the deadline.
                        if let Ok(permit) = permits.acquire().await {
                            permit.forget();
                        }
                    }
                    let k = key(rng.random_range(0..keys));
                    let t = Instant::now();
                    let found = connection.get(k).await;
                    histogram.record(t.elapsed().as_nanos() as u64).unwrap();
                    assert!(found);
                }
                histogram
            }));
        }
        let mut all = Histogram::<u64>::new(3).unwrap();
        for task in tasks {
            all.add(task.await.unwrap()).unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        LoadResult {
            ops_per_sec: all.len() as f64 / elapsed,
            p50_us: all.value_at_quantile(0.5) as f64 / 1000.0,
            p99_us: all.value_at_quantile(0.99) as f64 / 1000.0,
            p999_us: all.value_at_quantile(0.999) as f64 / 1000.0,
            generator_cpu: (cpu_seconds("self") - cpu_before.0) / elapsed,
            server_cpu: (cpu_seconds(&pid.to_string()) - cpu_before.1) / elapsed,
        }
    })
}

/// The load generator's runtime: one thread, so it never uses more than one core and its callers
/// share that thread instead of waking each other across threads.
fn generator_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// MultiGet calls of 100 uniform keys per second, from one generator thread (as redis-benchmark
/// is one), with the CPU used by the generator and the server.
fn multiget_load(o: &Options, sidecar: &Sidecar, callers: usize, per_connection: usize) -> Throughput {
    let runtime = generator_runtime();
    let pid = sidecar.child.0.id().to_string();
    runtime.block_on(async {
        let clients = channels(&sidecar.grpc, callers, per_connection).await;
        let keys = o.keys;
        let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
        let cpu_before = (cpu_seconds("self"), cpu_seconds(&pid));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..callers {
            let mut client = clients[c % clients.len()].clone();
            tasks.push(tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    let batch = (0..100)
                        .map(|_| key(rand::rng().random_range(0..keys)).into_bytes().into())
                        .collect();
                    let response = client
                        .multi_get(MultiGetRequest {
                            table: String::new(),
                            keys: batch,
                            consistency: None,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(response.results.len(), 100);
                    assert!(response.results.iter().all(|r| r.found));
                    calls += 1;
                }
                calls
            }));
        }
        let mut calls = 0;
        for task in tasks {
            calls += task.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        Throughput {
            ops_per_sec: calls as f64 / elapsed,
            generator_cpu: (cpu_seconds("self") - cpu_before.0) / elapsed,
            server_cpu: (cpu_seconds(&pid) - cpu_before.1) / elapsed,
        }
    })
}

/// Produce -> visible latencies (p50, p99 in µs) for the sidecar and for a bare consumer that
/// receives the same records.
async fn freshness(brokers: &str, grpc: &str, updates: usize) -> ((f64, f64), (f64, f64)) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<f64>>();
    let brokers_owned = brokers.to_string();
    let sent_for_consumer = sent.clone();
    let consumer_thread = std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers_owned)
            .set("group.id", "bench-freshness")
            .set("enable.partition.eof", "true")
            .set("statistics.interval.ms", "1000")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(TOPIC, p, Offset::End).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut latencies = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while latencies.len() < updates && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let k = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
                // Removed on first receipt: Tansu redelivers batches, and a redelivered record
                // is not a fresh one.
                if let Some(t) = sent_for_consumer.lock().unwrap().remove(&format!(
                    "{k}={}",
                    String::from_utf8_lossy(m.payload().unwrap_or_default())
                )) {
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
        tx.send(latencies).unwrap();
    });
    tokio::time::sleep(Duration::from_secs(2)).await; // let the consumer assign
    let mut client = CacheClient::new(cdc_cache::client::channel(grpc).await.unwrap());
    let mut ours = Vec::new();
    for u in 0..updates {
        let k = key(u);
        let v = format!("fresh-{u}");
        sent.lock().unwrap().insert(format!("{k}={v}"), Instant::now());
        let t = Instant::now();
        producer.send(BaseRecord::to(TOPIC).key(&k).payload(&v)).unwrap();
        producer.poll(Duration::ZERO);
        loop {
            let r = client
                .get(GetRequest {
                    table: String::new(),
                    key: k.clone().into_bytes().into(),
                    consistency: None,
                })
                .await
                .unwrap()
                .into_inner();
            if r.value.as_ref() == v.as_bytes() {
                ours.push(t.elapsed().as_secs_f64() * 1e6);
                break;
            }
        }
        // A random gap, so updates do not fall into step with either reader's fetch cycle.
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(1..300))).await;
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let bare = tokio::task::spawn_blocking(move || rx.recv().unwrap())
        .await
        .unwrap();
    consumer_thread.join().unwrap();
    (percentiles(ours), percentiles(bare))
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn triple(v: &[f64]) -> String {
    let v = sorted(v);
    format!("{:.0} / {:.0} / {:.0}", v[0], v[v.len() / 2], v[v.len() - 1])
}
