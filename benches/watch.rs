//! What watching costs and how fast changes reach a watcher, on a busy table.
//!
//! A producer in this process writes `--rate` changes per second to librdkafka's mock cluster
//! (also in this process) while a release sidecar serves them. Each run measures Get throughput
//! (16 concurrent callers, one connection) and the sidecar's CPU with no watchers, with
//! `--watchers` watchers of 10 keys each (cache invalidation), and with as many watchers of every
//! key (fan-out), in rotating order; the watchers run in a process of their own and report how
//! long each change took from its producer to them. A second section puts one watcher next to a
//! bare librdkafka consumer with the sidecar's settings, reading the same changes in the same
//! run: the watcher's produce-to-event latency against the consumer's produce-to-receive.
//!
//! `cargo bench --bench watch -- [--rate N] [--watchers N] [--seconds S] [--runs N]`

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cdc_cache::proto::cache_client::CacheClient;
use cdc_cache::proto::change_event::Type;
use cdc_cache::proto::{GetRequest, WatchRequest};
use rdkafka::mocking::MockCluster;

use common::{arg, bare_consumer, cpu_seconds, free_port, median, produce_all, sorted, Killed, Sidecar};

const TOPIC: &str = "bench.watch";
const PARTITIONS: i32 = 3;
const KEYS: usize = 10_000;
const VALUE_BYTES: usize = 300;
const CALLERS: usize = 16;

fn main() {
    if std::env::args().any(|a| a == "--watchers-process") {
        return watchers_process();
    }
    let rate: u64 = arg("--rate", 500);
    let watchers: usize = arg("--watchers", 100);
    let seconds: f64 = arg("--seconds", 5.0);
    let runs: usize = arg("--runs", 3);

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce_all(&brokers, TOPIC, KEYS, key, &[b'v'; VALUE_BYTES]);
    let sidecar = Sidecar::start(&brokers, TOPIC, format!("127.0.0.1:{}", free_port()));
    let producing = Arc::new(AtomicBool::new(true));
    let producer = spawn_producer(brokers.clone(), rate, producing.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let modes = [Mode::None, Mode::Keys(watchers), Mode::All(watchers)];
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); modes.len()];
    for run in 0..runs {
        for i in 0..modes.len() {
            let index = (i + run) % modes.len();
            results[index].push(measure(&runtime, &sidecar, modes[index], seconds));
        }
    }

    println!(
        "\n## Watch on a busy table: {rate} changes/s, {seconds} s per run, {runs} runs (medians), mock cluster ({PARTITIONS} partitions, {KEYS} keys of {VALUE_BYTES} B)"
    );
    println!("| watchers | Get ops/s ({CALLERS} callers) | ratio to none | sidecar CPU cores | changes received/s (all watchers) | produce → event p50 / p99 ms | max partition lag at the end |");
    println!("|---|---|---|---|---|---|---|");
    let baseline = median(&results[0].iter().map(|r| r.get_ops).collect::<Vec<_>>());
    for (mode, results) in modes.iter().zip(&results) {
        let get_ops = median(&results.iter().map(|r| r.get_ops).collect::<Vec<_>>());
        let cpu = median(&results.iter().map(|r| r.sidecar_cpu).collect::<Vec<_>>());
        let events = median(&results.iter().map(|r| r.events_per_sec).collect::<Vec<_>>());
        let lag = results.iter().map(|r| r.max_lag).fold(0.0, f64::max);
        let latency = match mode {
            Mode::None => "-".to_string(),
            _ => format!(
                "{:.0} / {:.0}",
                median(&results.iter().map(|r| r.latency_p50_ms).collect::<Vec<_>>()),
                median(&results.iter().map(|r| r.latency_p99_ms).collect::<Vec<_>>())
            ),
        };
        println!(
            "| {} | {get_ops:.0} | {:.2} | {cpu:.2} | {events:.0} | {latency} | {lag:.0} |",
            mode.label(),
            get_ops / baseline
        );
    }

    let (watch, bare) = latency_next_to_bare_consumer(&runtime, &sidecar, &brokers, seconds * runs as f64);
    println!("\n### Produce → delivery latency, one watcher next to a bare consumer, same changes, same run");
    println!("| reader | changes | p50 ms | p99 ms |\n|---|---|---|---|");
    for (name, latencies) in [
        ("cdc-cache Watch (all keys)", &watch),
        ("peer: bare librdkafka consumer, the sidecar's settings", &bare),
    ] {
        println!(
            "| {name} | {} | {:.1} | {:.1} |",
            latencies.len(),
            percentile(latencies, 0.5),
            percentile(latencies, 0.99)
        );
    }
    println!(
        "| ratio Watch / bare consumer | | {:.2} | {:.2} |",
        percentile(&watch, 0.5) / percentile(&bare, 0.5),
        percentile(&watch, 0.99) / percentile(&bare, 0.99)
    );
    producing.store(false, Ordering::Relaxed);
    producer.join().unwrap();
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    None,
    /// This many watchers of 10 keys each.
    Keys(usize),
    /// This many watchers of every key.
    All(usize),
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::None => "none".into(),
            Mode::Keys(n) => format!("{n}, 10 keys each"),
            Mode::All(n) => format!("{n}, all keys"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct RunResult {
    get_ops: f64,
    sidecar_cpu: f64,
    events_per_sec: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    max_lag: f64,
}

fn key(i: usize) -> String {
    format!("key-{i}")
}

/// A value that says when it was produced: microseconds since the epoch, then padding.
fn stamped_value() -> Vec<u8> {
    let mut value = now_micros().to_string().into_bytes();
    value.push(b':');
    value.resize(VALUE_BYTES, b'v');
    value
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// Milliseconds since the stamp in `value`, if it has one.
fn age_ms(value: &[u8]) -> Option<f64> {
    let end = value.iter().position(|&b| b == b':')?;
    let stamp: u64 = std::str::from_utf8(&value[..end]).ok()?.parse().ok()?;
    Some(now_micros().saturating_sub(stamp) as f64 / 1000.0)
}

/// Writes `rate` changes per second to random keys, in small bursts every 10 ms.
fn spawn_producer(brokers: String, rate: u64, producing: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "1")
            .create()
            .unwrap();
        let started = Instant::now();
        let mut sent = 0u64;
        let mut i = 0usize;
        while producing.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                i = (i + 7919) % KEYS;
                let value = stamped_value();
                let k = key(i);
                let _ = producer.send(BaseRecord::<String, [u8]>::to(TOPIC).key(&k).payload(&value[..]));
                sent += 1;
            }
            producer.poll(Duration::from_millis(10));
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    })
}

fn measure(runtime: &tokio::runtime::Runtime, sidecar: &Sidecar, mode: Mode, seconds: f64) -> RunResult {
    let watchers = match mode {
        Mode::None => None,
        Mode::Keys(n) => Some(WatcherProcess::start(&sidecar.grpc, n, "keys")),
        Mode::All(n) => Some(WatcherProcess::start(&sidecar.grpc, n, "all")),
    };
    let cpu_before = cpu_seconds(&sidecar.child.0.id().to_string());
    let started = Instant::now();
    let get_ops = runtime.block_on(get_throughput(&sidecar.grpc, seconds));
    let elapsed = started.elapsed().as_secs_f64();
    let sidecar_cpu = (cpu_seconds(&sidecar.child.0.id().to_string()) - cpu_before) / elapsed;
    let max_lag = (0..PARTITIONS)
        .filter_map(|p| {
            sidecar.metric(&format!(
                r#"cdc_cache_partition_lag_records{{table="{TOPIC}",partition="{p}"}}"#
            ))
        })
        .fold(0.0, f64::max);
    let (events, p50, p99) = watchers.map_or((0, f64::NAN, f64::NAN), WatcherProcess::finish);
    RunResult {
        get_ops,
        sidecar_cpu,
        events_per_sec: events as f64 / elapsed,
        latency_p50_ms: p50,
        latency_p99_ms: p99,
        max_lag,
    }
}

/// Gets of random keys from `CALLERS` concurrent callers on one connection for `seconds`.
async fn get_throughput(addr: &str, seconds: f64) -> f64 {
    let channel = cdc_cache::client::channel(addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let mut client = CacheClient::new(channel.clone());
            tokio::spawn(async move {
                let mut calls = 0u64;
                let mut i = caller;
                while tokio::time::Instant::now() < deadline {
                    i = (i + 104_729) % KEYS;
                    let request = GetRequest {
                        table: String::new(),
                        key: key(i).into_bytes().into(),
                        consistency: None,
                    };
                    assert!(client.get(request).await.unwrap().into_inner().found);
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for caller in callers {
        calls += caller.await.unwrap();
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

/// This bench binary run as `--watchers-process`: the watchers, in a process of their own.
struct WatcherProcess {
    child: Killed,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl WatcherProcess {
    /// Starts `count` watchers and returns once every one has its SYNCED event.
    fn start(addr: &str, count: usize, mode: &str) -> WatcherProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--watchers-process", "--addr", addr, "--mode", mode])
            .args(["--count", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next().unwrap().unwrap();
        assert_eq!(ready, "ready", "watchers process: {ready}");
        WatcherProcess {
            child: Killed(child),
            lines,
        }
    }

    /// Stops the watchers: (changes received, latency p50 ms, p99 ms).
    fn finish(mut self) -> (usize, f64, f64) {
        let stdin = self.child.0.stdin.take().unwrap();
        drop(stdin);
        let line = self.lines.next().unwrap().unwrap();
        let mut fields = line.split(' ').map(|f| f.parse::<f64>().unwrap());
        let (events, p50, p99) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next().unwrap(),
        );
        (events as usize, p50, p99)
    }
}

/// The watchers process: opens the streams (10 per connection), prints `ready` once all are
/// synced, and on stdin's end prints `EVENTS P50_MS P99_MS`.
fn watchers_process() {
    let addr: String = arg("--addr", String::new());
    let count: usize = arg("--count", 100);
    let all_keys = arg("--mode", String::from("all")) == "all";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let latencies = runtime.block_on(async move {
        let mut channels = Vec::new();
        for _ in 0..count.div_ceil(10) {
            channels.push(cdc_cache::client::channel(&addr).await.unwrap());
        }
        let (synced_tx, mut synced) = tokio::sync::mpsc::channel(count);
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..count)
            .map(|w| {
                let mut client = CacheClient::new(channels[w / 10].clone());
                let keys = if all_keys {
                    Vec::new()
                } else {
                    (0..10)
                        .map(|k| key((w * 10 + k) * 13 % KEYS).into_bytes().into())
                        .collect()
                };
                let (synced_tx, stop, received) = (synced_tx.clone(), stop.clone(), received.clone());
                tokio::spawn(async move {
                    let mut stream = client
                        .watch(WatchRequest {
                            keys,
                            ..WatchRequest::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    while let Ok(Some(event)) = stream.message().await {
                        match event.r#type() {
                            Type::Synced => synced_tx.send(()).await.unwrap(),
                            Type::Upsert => received.lock().unwrap().extend(age_ms(&event.value)),
                            _ => {}
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                })
            })
            .collect();
        for _ in 0..count {
            synced.recv().await.unwrap();
        }
        println!("ready");
        std::io::stdout().flush().unwrap();
        // Until the parent closes stdin.
        tokio::task::spawn_blocking(|| std::io::stdin().lines().count())
            .await
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.abort();
        }
        let latencies = std::mem::take(&mut *received.lock().unwrap());
        latencies
    });
    println!(
        "{} {:.3} {:.3}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
}

/// One watcher and one bare consumer (from the end of every partition) reading the same changes
/// for `seconds`: their produce-to-delivery latencies in ms.
fn latency_next_to_bare_consumer(
    runtime: &tokio::runtime::Runtime,
    sidecar: &Sidecar,
    brokers: &str,
    seconds: f64,
) -> (Vec<f64>, Vec<f64>) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let bare = {
        let brokers = brokers.to_string();
        std::thread::spawn(move || bare_consumer_latencies(&brokers, until))
    };
    let watch = runtime.block_on(async {
        let channel = cdc_cache::client::channel(&sidecar.grpc).await.unwrap();
        let mut stream = CacheClient::new(channel)
            .watch(WatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut latencies = Vec::new();
        let deadline = tokio::time::Instant::from_std(until);
        while let Ok(Ok(Some(event))) = tokio::time::timeout_at(deadline, stream.message()).await {
            if event.r#type() == Type::Upsert {
                latencies.extend(age_ms(&event.value));
            }
        }
        latencies
    });
    (watch, bare.join().unwrap())
}

fn bare_consumer_latencies(brokers: &str, until: Instant) -> Vec<f64> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer = bare_consumer(brokers);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::End).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut latencies = Vec::new();
    while Instant::now() < until {
        // End-of-partition events (the sidecar's settings report them) carry no record.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
            latencies.extend(message.payload().and_then(age_ms));
        }
    }
    latencies
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    sorted(values)[((values.len() - 1) as f64 * q).round() as usize]
}
