//! What a fresh read costs: Get latency as it is, with `min_offsets` already applied, and with
//! `latest` (a broker round trip for the end offsets), next to that round trip alone from a bare
//! librdkafka client in the same run.
//!
//! The broker is librdkafka's mock cluster in this process, the sidecar a release build in its
//! own. `cargo bench --bench fresh_reads -- [--calls N] [--runs N]`

mod common;

use std::time::{Duration, Instant};

use cdc_cache::proto::cache_client::CacheClient;
use cdc_cache::proto::{Consistency, GetRequest};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};

use common::{arg, free_port, produce_all, Sidecar};

const TOPIC: &str = "bench.fresh";
const PARTITIONS: i32 = 3;

fn main() {
    let calls: usize = arg("--calls", 2000);
    let runs: usize = arg("--runs", 3);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce_all(&brokers, TOPIC, 10_000, |i| format!("key-{i}"), &[b'v'; 100]);
    let sidecar = Sidecar::start(&brokers, TOPIC, format!("127.0.0.1:{}", free_port()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = runtime.block_on(async {
        let channel = cdc_cache::client::channel(&sidecar.grpc).await.unwrap();
        CacheClient::new(channel)
    });
    let offsets = runtime
        .block_on(client.get(request(
            b"key-1",
            Some(Consistency {
                include_offsets: true,
                ..Default::default()
            }),
        )))
        .unwrap()
        .into_inner()
        .applied_offsets;
    let modes: [(&str, Option<Consistency>); 3] = [
        ("Get, no consistency", None),
        (
            "Get, min_offsets already applied",
            Some(Consistency {
                min_offsets: offsets,
                ..Default::default()
            }),
        ),
        (
            "Get, latest",
            Some(Consistency {
                latest: true,
                ..Default::default()
            }),
        ),
    ];
    println!("\n## Fresh reads: latency of {calls} sequential calls per run, {runs} runs, mock cluster ({PARTITIONS} partitions)");
    println!("| read | p50 µs (min / median / max of runs) | p99 µs (median of runs) |\n|---|---|---|");
    for (name, consistency) in &modes {
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for _ in 0..runs {
            let mut times = Vec::with_capacity(calls);
            for _ in 0..calls {
                let started = Instant::now();
                let answer = runtime
                    .block_on(client.get(request(b"key-1", consistency.clone())))
                    .unwrap()
                    .into_inner();
                assert!(answer.found);
                times.push(started.elapsed());
            }
            times.sort_unstable();
            p50.push(times[calls / 2]);
            p99.push(times[calls * 99 / 100]);
        }
        p50.sort_unstable();
        p99.sort_unstable();
        println!(
            "| {name} | {:.0} / {:.0} / {:.0} | {:.0} |",
            micros(p50[0]),
            micros(p50[runs / 2]),
            micros(p50[runs - 1]),
            micros(p99[runs / 2])
        );
    }
    let floor = list_offsets_round_trips(&brokers, calls);
    println!(
        "| peer: ListOffsets round trip alone (bare librdkafka client, same broker) | {:.0} | {:.0} |",
        micros(floor[calls / 2]),
        micros(floor[calls * 99 / 100])
    );
}

fn request(key: &[u8], consistency: Option<Consistency>) -> GetRequest {
    GetRequest {
        table: String::new(),
        key: key.to_vec().into(),
        consistency,
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The broker round trip a latest read makes, from a client of the bench's own: end offsets of
/// every partition in one ListOffsets request, sorted times.
fn list_offsets_round_trips(brokers: &str, calls: usize) -> Vec<Duration> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-peer")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut times: Vec<Duration> = (0..calls)
        .map(|_| {
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(TOPIC, p, Offset::End).unwrap();
            }
            let started = Instant::now();
            consumer.offsets_for_times(tpl, Duration::from_secs(5)).unwrap();
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    times
}
