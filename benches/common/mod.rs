//! What the benchmark programs share: arguments, ports, child processes, readiness, memory.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The value after `--name` on the command line, or `default`.
pub fn arg<T: FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|pair| pair[0] == name)
        .map(|pair| {
            pair[1]
                .parse()
                .unwrap_or_else(|_| panic!("{name}: not a valid value"))
        })
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A release `cdc-cache serve` on `topic`, gRPC on `grpc` (HOST:PORT or unix:/path).
pub struct Sidecar {
    pub child: Killed,
    pub grpc: String,
    pub admin: SocketAddr,
}

impl Sidecar {
    /// Starts the sidecar and returns once `/readyz` answers 200.
    pub fn start(brokers: &str, topic: &str, grpc: String) -> Sidecar {
        Self::start_with(brokers, topic, grpc, &[])
    }

    /// As [`Sidecar::start`], with more flags.
    pub fn start_with(brokers: &str, topic: &str, grpc: String, extra: &[&str]) -> Sidecar {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // BENCH_SIDECAR_LOGS=1 shows the sidecars' info logs (where the time goes) on stderr.
        let show_logs = std::env::var_os("BENCH_SIDECAR_LOGS").is_some();
        let child = Command::new(env!("CARGO_BIN_EXE_cdc-cache"))
            .args([
                "serve",
                "--brokers",
                brokers,
                "--topic",
                topic,
                "--grpc-listen",
                &grpc,
            ])
            .args(["--admin-listen", &admin.to_string()])
            .args(extra)
            .env("RUST_LOG", if show_logs { "info" } else { "warn" })
            .stdout(Stdio::null())
            .stderr(if show_logs {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        let sidecar = Sidecar {
            child: Killed(child),
            grpc,
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        while !sidecar.ready() {
            assert!(Instant::now() < deadline, "sidecar not ready");
            std::thread::sleep(Duration::from_millis(5));
        }
        sidecar
    }

    pub fn ready(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(self.admin) else {
            return false;
        };
        let _ = stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.contains(" 200 ")
    }

    /// The value of a metric series on `/metrics` (the exact series text before the value).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let mut stream = TcpStream::connect(self.admin).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response
            .lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    /// Waits (up to 2 min) until `table`'s values are compressed for good: a dictionary
    /// trained and the compression ratio no longer moving as held records are recompressed.
    pub fn wait_compression_settled(&self, table: &str) {
        let series = |name: &str| format!(r#"{name}{{table="{table}"}}"#);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = (0.0, 0.0);
        while Instant::now() < deadline {
            let now = (
                self.metric(&series("cdc_cache_compression_dictionary_generation"))
                    .unwrap_or(0.0),
                self.metric(&series("cdc_cache_compression_ratio")).unwrap_or(1.0),
            );
            if now.0 >= 1.0 && now == last {
                return;
            }
            last = now;
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Resident memory after a pause that lets the consumer's fetch queue drain.
    pub fn settled_rss(&self) -> u64 {
        std::thread::sleep(Duration::from_secs(2));
        rss_bytes(self.child.0.id())
    }
}

pub fn tansu_binary() -> PathBuf {
    let cargo_bin = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        "tansu".into()
    }
}

pub fn start_tansu(port: u16, dir: &std::path::Path) -> Killed {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu_binary())
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu (run scripts/test to install it)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Killed(child)
}

/// Creates the topics: (name, partitions, compacted).
pub async fn create_topics(brokers: &str, topics: &[(&str, i32, bool)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|&(name, partitions, compact)| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
            if compact {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    for result in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// Produces `count` records `key(i)` -> `value` in large batches and waits for every ack;
/// returns the key and value bytes written.
pub fn produce_all(
    brokers: &str,
    topic: &str,
    count: usize,
    key: impl Fn(usize) -> String,
    value: &[u8],
) -> usize {
    produce_each(brokers, topic, count, key, |_| value.to_vec())
}

/// As [`produce_all`], with a value of its own per record.
pub fn produce_each(
    brokers: &str,
    topic: &str,
    count: usize,
    key: impl Fn(usize) -> String,
    value: impl FnMut(usize) -> Vec<u8>,
) -> usize {
    produce_with(brokers, topic, count, key, value, &[])
}

/// As [`produce_each`], with more producer settings (`compression.type`, ...).
pub fn produce_with(
    brokers: &str,
    topic: &str,
    count: usize,
    key: impl Fn(usize) -> String,
    mut value: impl FnMut(usize) -> Vec<u8>,
    settings: &[(&str, &str)],
) -> usize {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let mut config = rdkafka::config::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000");
    for (name, setting) in settings {
        config.set(*name, *setting);
    }
    let producer: BaseProducer = config.create().unwrap();
    let mut bytes = 0;
    for i in 0..count {
        let k = key(i);
        let value = value(i);
        bytes += k.len() + value.len();
        let mut record = BaseRecord::<String, [u8]>::to(topic).key(&k).payload(&value[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    // The local queue is full: let deliveries drain, then retry.
                    producer.poll(Duration::from_millis(5));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    bytes
}

pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    sorted(values)[values.len() / 2]
}

pub fn sorted<T: Copy + PartialOrd>(values: &[T]) -> Vec<T> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v
}

/// The peer readers' consumer: bare librdkafka with the settings the sidecar gives its own.
pub fn bare_consumer(brokers: &str) -> rdkafka::consumer::BaseConsumer {
    rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "1000")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap()
}

/// The peer of every bootstrap figure: a bare librdkafka consumer with the sidecar's settings,
/// reading every partition from its log start to its end and touching every byte, as a reader
/// that does nothing with the records would.
pub fn bare_read_to_end(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::consumer::Consumer;
    use rdkafka::error::KafkaError;
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer = bare_consumer(brokers);
    // Like the sidecar: read the log bounds, then assign every partition at its log start.
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (low, _) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        tpl.add_partition_offset(topic, p, Offset::Offset(low)).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut done = std::collections::HashSet::new();
    let mut checksum = 0u64;
    while done.len() < partitions as usize {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                for part in [m.key(), m.payload()].into_iter().flatten() {
                    checksum = part.iter().fold(checksum, |sum, &b| sum.wrapping_add(b as u64));
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            _ => {}
        }
    }
    std::hint::black_box(checksum);
}

/// CPU seconds used so far (user + system) by process `pid` ("self" for this one).
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// A Debezium change event of a customer row (~460 bytes) as Kafka Connect's JsonConverter
/// writes it with schemas disabled: the decode benches' JSON input.
pub fn debezium_json_event(id: u64) -> String {
    format!(
        r#"{{"before":null,"after":{{"id":{id},"first_name":"Grace","last_name":"Hopper","email":"grace.hopper{id}@example.com","status":"active","balance":"AfQ=","updated_at":1795408445414865}},"source":{{"version":"2.7.3.Final","connector":"postgresql","name":"shop","ts_ms":1795408445414,"snapshot":"false","db":"shop","sequence":"[\"24023119\",\"24023128\"]","schema":"public","table":"customers","txId":555,"lsn":24023128,"xmin":null}},"op":"u","ts_ms":1795408445420}}"#
    )
}
