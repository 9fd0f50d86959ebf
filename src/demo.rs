//! `cdc-cache demo`: the real serve path against librdkafka's in-process mock cluster, seeded with
//! a Debezium-style `customers` table (snapshot rows, updates, deletes with tombstones) and kept
//! changing while it runs. Nothing to install, nothing else to start.

use std::time::Duration;

use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::DemoArgs;
use crate::config::{ConfigError, ListenAddr, TableConfig};
use crate::format::Format;
use crate::listeners::{BindError, Listeners};

pub const TOPIC: &str = "demo.public.customers";
pub const TABLE: &str = "customers";
const PARTITIONS: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("embedded kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    App(#[from] crate::app::AppError),
}

/// Seeds the mock cluster, then serves it until `shutdown`.
pub async fn run(
    args: DemoArgs,
    env: impl IntoIterator<Item = (String, String)>,
    shutdown: CancellationToken,
) -> Result<(), DemoError> {
    // The mock cluster is not Send: it stays in this future, which is never moved to another thread.
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(TOPIC, PARTITIONS, 1)?;
    let brokers = cluster.bootstrap_servers();
    let table = TableConfig {
        topic: TOPIC.into(),
        table: TABLE.into(),
        format: Format::Debezium,
        compression: Default::default(),
        projection: None,
    };
    let config = args.options.into_config(brokers.clone(), vec![table], env)?;
    let listeners = Listeners::bind(&config).await?;
    let grpc_addr = listeners.grpc_addr().map_err(|source| BindError::Grpc {
        addr: config.grpc_listen.clone(),
        source,
    })?;
    let admin_addr = listeners.admin_addr().map_err(|source| BindError::Admin {
        addr: config.admin_listen,
        source,
    })?;

    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
    let mut table = SampleTable::new(args.rows);
    table.seed(&producer)?;
    info!(
        rows = args.rows,
        topic = TOPIC,
        partitions = PARTITIONS,
        "demo topic seeded"
    );
    print_instructions(&grpc_addr, admin_addr, args.rows);

    let updates = spawn_live_updates(producer, table, args.update_interval, shutdown.clone());
    let result = crate::app::run(config, listeners, shutdown.clone()).await;
    shutdown.cancel();
    let _ = tokio::task::spawn_blocking(move || updates.join()).await;
    drop(cluster);
    Ok(result?)
}

fn print_instructions(grpc: &ListenAddr, admin: std::net::SocketAddr, rows: u32) {
    let key = r#"{"id":42}"#;
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let addr_flag = match grpc {
        ListenAddr::Tcp(a) if a.to_string() == "127.0.0.1:50051" => String::new(),
        other => format!(" --addr {other}"),
    };
    let grpcurl_target = match grpc {
        ListenAddr::Tcp(a) => format!("-plaintext {a}"),
        ListenAddr::Unix(p) => format!("-plaintext -unix {}", p.display()),
    };
    eprintln!(
        "\n\
cdc-cache demo: table {TABLE:?} from topic {TOPIC} ({PARTITIONS} partitions, {rows} rows, Debezium format)
on an embedded Kafka mock; a row changes every update interval. Try, in another terminal:

  cargo run --release -- get{addr_flag} '{key}'
  cargo run --release -- get{addr_flag} '{{\"id\":1}}' '{{\"id\":2}}' '{{\"id\":3}}'
  cargo run --release -- status{addr_flag}
  cargo run --release -- watch{addr_flag} --output json     # every change as it happens
  grpcurl {grpcurl_target} -d '{{\"key\":\"{key_b64}\"}}' cdc_cache.v1.Cache/Get
  curl -s http://{admin}/metrics | grep cdc_cache_partition_lag

Ctrl-C stops it.\n"
    );
}

/// The demo's source table, as a Postgres connector would stream it.
struct SampleTable {
    rng: StdRng,
    next_id: u32,
    live: Vec<u32>,
    lsn: u64,
}

impl SampleTable {
    fn new(rows: u32) -> Self {
        Self {
            // Fixed seed: the same demo data on every run, so README examples hold.
            rng: StdRng::seed_from_u64(7),
            next_id: rows + 1,
            live: (1..=rows).collect(),
            lsn: 24_023_128,
        }
    }

    /// Snapshot reads of every row, then a round of updates and a few deletes.
    fn seed(&mut self, producer: &BaseProducer) -> Result<(), rdkafka::error::KafkaError> {
        for id in self.live.clone() {
            let row = self.row(id, "active");
            self.send(producer, id, "r", Some(row))?;
        }
        for _ in 0..self.live.len() / 5 {
            self.update(producer)?;
        }
        for _ in 0..self.live.len() / 50 {
            self.delete(producer)?;
        }
        producer.flush(Duration::from_secs(30))
    }

    /// One random change: mostly updates, some inserts and deletes.
    fn change(&mut self, producer: &BaseProducer) -> Result<(), rdkafka::error::KafkaError> {
        match self.rng.random_range(0..10) {
            0 => self.insert(producer),
            1 if self.live.len() > 1 => self.delete(producer),
            _ => self.update(producer),
        }
    }

    fn insert(&mut self, producer: &BaseProducer) -> Result<(), rdkafka::error::KafkaError> {
        let id = self.next_id;
        self.next_id += 1;
        self.live.push(id);
        let row = self.row(id, "active");
        self.send(producer, id, "c", Some(row))
    }

    fn update(&mut self, producer: &BaseProducer) -> Result<(), rdkafka::error::KafkaError> {
        if self.live.is_empty() {
            return self.insert(producer);
        }
        let id = self.live[self.rng.random_range(0..self.live.len())];
        let status = ["active", "suspended", "vip"][self.rng.random_range(0..3)];
        let row = self.row(id, status);
        self.send(producer, id, "u", Some(row))
    }

    fn delete(&mut self, producer: &BaseProducer) -> Result<(), rdkafka::error::KafkaError> {
        if self.live.is_empty() {
            return Ok(());
        }
        let index = self.rng.random_range(0..self.live.len());
        let id = self.live.swap_remove(index);
        self.send(producer, id, "d", None)?;
        // Debezium follows a delete with a tombstone so compaction can drop the key.
        self.produce(producer, id, None)
    }

    fn row(&mut self, id: u32, status: &str) -> String {
        const FIRST: [&str; 8] = [
            "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
        ];
        const LAST: [&str; 8] = [
            "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
        ];
        let first = FIRST[id as usize % FIRST.len()];
        let last = LAST[(id as usize / FIRST.len()) % LAST.len()];
        let balance = self.rng.random_range(0..1_000_000);
        format!(
            r#"{{"id":{id},"first_name":"{first}","last_name":"{last}","email":"{}.{}{id}@example.com","status":"{status}","balance_cents":{balance},"updated_at":{}}}"#,
            first.to_lowercase(),
            last.to_lowercase(),
            now_micros()
        )
    }

    /// A change event as Debezium's JsonConverter writes it with `schemas.enable=false`.
    fn send(
        &mut self,
        producer: &BaseProducer,
        id: u32,
        op: &str,
        after: Option<String>,
    ) -> Result<(), rdkafka::error::KafkaError> {
        self.lsn += 56;
        let ts = now_micros() / 1000;
        let after = after.unwrap_or_else(|| "null".into());
        let before = if op == "d" {
            format!(r#"{{"id":{id}}}"#)
        } else {
            "null".into()
        };
        let event = format!(
            r#"{{"before":{before},"after":{after},"source":{{"version":"2.7.3.Final","connector":"postgresql","name":"demo","ts_ms":{ts},"snapshot":"{}","db":"shop","schema":"public","table":"customers","lsn":{}}},"op":"{op}","ts_ms":{ts}}}"#,
            if op == "r" { "true" } else { "false" },
            self.lsn
        );
        self.produce(producer, id, Some(event))
    }

    fn produce(
        &mut self,
        producer: &BaseProducer,
        id: u32,
        value: Option<String>,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let key = format!(r#"{{"id":{id}}}"#);
        let mut record = BaseRecord::<String, String>::to(TOPIC).key(&key);
        if let Some(value) = &value {
            record = record.payload(value);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    // The local queue is full: let deliveries drain, then retry.
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}

fn spawn_live_updates(
    producer: BaseProducer,
    mut table: SampleTable,
    interval: Duration,
    stop: CancellationToken,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if interval.is_zero() {
            return;
        }
        while !stop.is_cancelled() {
            if let Err(error) = table.change(&producer) {
                tracing::warn!(%error, "demo update failed");
            }
            producer.poll(Duration::ZERO);
            let deadline = std::time::Instant::now() + interval;
            while std::time::Instant::now() < deadline && !stop.is_cancelled() {
                std::thread::sleep(Duration::from_millis(50).min(interval));
            }
        }
        let _ = producer.flush(Duration::from_secs(1));
    })
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
