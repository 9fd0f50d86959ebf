//! What the sidecar itself costs to ingest, on a source that is not the bottleneck: CPU
//! seconds per record during a cold bootstrap, for cdc-cache and for a bare librdkafka consumer
//! reading the same topic in the same run (both separate processes), for raw and Debezium
//! records; and the wall time from start to SERVING.
//!
//! The source is librdkafka's mock cluster, in this process. It keeps at most 5 MB of record
//! batches per partition (a constant in librdkafka with no setter), so batches are produced
//! zstd-compressed, as production topics usually are, and over enough partitions; the bench
//! refuses to run if the mock cluster dropped any batch.
//!
//! A second section replays the same Debezium records from memory through the sidecar's own
//! prepare (decode, build, compress) and apply path, with one decode thread and with one per
//! CPU: what decoding and applying cost without any Kafka client.
//!
//! `cargo bench --bench ingest -- [--records N] [--partitions N] [--runs N] [--format raw|debezium|both]
//!  [--compression auto|off] [--only kafka|replay]`

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;

use cdc_cache::sample_rows::{change_event, customer, key, Rng};
use common::{arg, bare_read_to_end, free_port, median, produce_with, sorted, Sidecar};

struct Options {
    records: usize,
    partitions: i32,
    runs: usize,
    formats: Vec<String>,
    compression: String,
    only: String,
}

fn options() -> Options {
    let format = arg("--format", "both".to_string());
    Options {
        records: arg("--records", 1_000_000),
        partitions: arg("--partitions", 16),
        runs: arg("--runs", 3),
        formats: match format.as_str() {
            "both" => vec!["raw".into(), "debezium".into()],
            "raw" | "debezium" => vec![format],
            other => panic!("--format {other}: raw, debezium or both"),
        },
        compression: arg("--compression", "auto".to_string()),
        only: arg("--only", String::new()),
    }
}

/// One reader's bootstrap: wall time to the end of every partition, and CPU time spent.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
struct Run {
    wall: Duration,
    cpu: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--bare-consumer") {
        let partitions = args[at + 3].parse().expect("partition count");
        bare_consumer_process(&args[at + 1], &args[at + 2], partitions);
        return;
    }
    let o = options();
    if o.only != "kafka" {
        replay(&o);
    }
    if o.only == "replay" {
        return;
    }
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    println!(
        "\n## Ingest cost: {} records, {} partitions, librdkafka mock cluster (zstd batches), --compression {}",
        o.records, o.partitions, o.compression
    );
    println!("| records | B/record | reader | wall min / median / max | CPU s (median) | CPU µs per record | records/s (median) | CPU ratio / bare |");
    println!("|---|---|---|---|---|---|---|---|");
    for format in &o.formats {
        let topic = format!("bench.ingest.{format}");
        cluster.create_topic(&topic, o.partitions, 1).unwrap();
        let started = Instant::now();
        let debezium = format == "debezium";
        let bytes = produce_with(
            &brokers,
            &topic,
            o.records,
            |i| {
                if debezium {
                    key(i as u64)
                } else {
                    format!("customer-{i:08}")
                }
            },
            |i| {
                let mut rng = Rng::new(i as u64);
                let row = customer(i as u64, &mut rng);
                if debezium {
                    change_event(&row, "customers", &mut rng).into_bytes()
                } else {
                    row.into_bytes()
                }
            },
            &[("compression.type", "zstd")],
        );
        eprintln!(
            "produced {} {format} records in {:.1?}",
            o.records,
            started.elapsed()
        );
        assert_nothing_dropped(&brokers, &topic, o.partitions);

        let spec = if debezium {
            format!("{topic}:debezium")
        } else {
            topic.clone()
        };
        // The sidecar as deployed (one decode thread per CPU), and on its ingest thread alone.
        let mut bare = Vec::new();
        let mut sidecar = Vec::new();
        let mut single = Vec::new();
        for run in 1..=o.runs {
            let mut order: [u8; 3] = [0, 1, 2];
            // Rotate who goes first, so no reader always meets a warmer broker.
            order.rotate_left(run % 3);
            for reader in order {
                match reader {
                    0 => bare.push(bare_consumer(&brokers, &topic, o.partitions)),
                    1 => sidecar.push(sidecar_bootstrap(&brokers, &spec, &o.compression, "0")),
                    _ => single.push(sidecar_bootstrap(&brokers, &spec, &o.compression, "1")),
                }
            }
            let (b, s, one) = (bare[run - 1], sidecar[run - 1], single[run - 1]);
            eprintln!(
                "run {run}: bare consumer {:.2?} wall {:.2?} CPU; cdc-cache {:.2?} wall {:.2?} CPU; one decode thread {:.2?} wall {:.2?} CPU",
                b.wall, b.cpu, s.wall, s.cpu, one.wall, one.cpu
            );
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let readers = [
            ("bare librdkafka consumer".to_string(), &bare),
            (
                format!("cdc-cache start -> SERVING, {threads} decode threads"),
                &sidecar,
            ),
            ("cdc-cache start -> SERVING, 1 decode thread".to_string(), &single),
        ];
        for (reader, runs) in readers {
            let cpu_ratio = median_cpu(runs).as_secs_f64() / median_cpu(&bare).as_secs_f64();
            let walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
            let cpu = median_cpu(runs);
            let wall = median(&walls);
            println!(
                "| {format} | {} | {reader} | {:.2?} / {:.2?} / {:.2?} | {:.2} | {:.2} | {:.0} | {} |",
                bytes / o.records,
                sorted(&walls)[0],
                wall,
                sorted(&walls)[walls.len() - 1],
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / o.records as f64,
                o.records as f64 / wall.as_secs_f64(),
                if reader.starts_with("cdc") {
                    format!("{cpu_ratio:.2}")
                } else {
                    String::new()
                },
            );
        }
    }
}

fn median_cpu(runs: &[Run]) -> Duration {
    median(&runs.iter().map(|r| r.cpu).collect::<Vec<_>>())
}

/// The mock cluster drops a partition's oldest batches past 5 MB: a log that no longer starts at
/// 0 would make the comparison meaningless.
fn assert_nothing_dropped(brokers: &str, topic: &str, partitions: i32) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-check")
        .create()
        .unwrap();
    for p in 0..partitions {
        let (low, _) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            low, 0,
            "the mock cluster dropped batches of partition {p} (it keeps 5 MB per partition): raise --partitions"
        );
    }
}

/// The bare consumer in a process of its own, so its CPU time is its own (the mock broker's
/// threads live in this one).
fn bare_consumer(brokers: &str, topic: &str, partitions: i32) -> Run {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--bare-consumer", brokers, topic, &partitions.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "bare consumer failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let numbers: Vec<u64> = text.split_whitespace().map(|n| n.parse().unwrap()).collect();
    Run {
        wall: Duration::from_nanos(numbers[0]),
        cpu: Duration::from_nanos(numbers[1]),
    }
}

/// The peer, in its own process ([`common::bare_read_to_end`]); prints wall and CPU nanoseconds.
fn bare_consumer_process(brokers: &str, topic: &str, partitions: i32) {
    let started = Instant::now();
    bare_read_to_end(brokers, topic, partitions);
    let wall = started.elapsed();
    println!("{} {}", wall.as_nanos(), cpu_of(std::process::id()).as_nanos());
}

/// Start -> ready, and the CPU the sidecar spent to get there.
fn sidecar_bootstrap(brokers: &str, spec: &str, compression: &str, decode_threads: &str) -> Run {
    let started = Instant::now();
    let sidecar = Sidecar::start_with(
        brokers,
        spec,
        format!("127.0.0.1:{}", free_port()),
        &["--compression", compression, "--decode-threads", decode_threads],
    );
    let wall = started.elapsed();
    let cpu = cpu_of(sidecar.child.0.id());
    Run { wall, cpu }
}

/// User plus system CPU time of a process, from /proc (clock ticks).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// Decode and apply from memory: the records of a captured topic, spread over `--partitions`,
/// taken in batches as the consumer takes them and sent through the sidecar's own path.
fn replay(o: &Options) {
    use cdc_cache::config::TableConfig;
    use cdc_cache::format::Format;
    use cdc_cache::ingest::batch::{self, Decoders, Fetched};
    use cdc_cache::store::{PartitionState, Table};

    let per_partition = o.records.div_ceil(o.partitions as usize);
    // (key, value) per partition, in offset order.
    let partitions: Vec<Vec<(Vec<u8>, Vec<u8>)>> = (0..o.partitions as usize)
        .map(|p| {
            (p * per_partition..((p + 1) * per_partition).min(o.records))
                .map(|i| {
                    let mut rng = Rng::new(i as u64);
                    let row = customer(i as u64, &mut rng);
                    let event = change_event(&row, "customers", &mut rng);
                    (key(i as u64).into_bytes(), event.into_bytes())
                })
                .collect()
        })
        .collect();
    let bytes: usize = partitions.iter().flatten().map(|(k, v)| k.len() + v.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\n## Replay: {} Debezium records (~{} B) from memory through the sidecar's decode and apply path, {} partitions, --compression {}",
        o.records,
        bytes / o.records,
        o.partitions,
        o.compression
    );
    println!(
        "| decode threads | records/s min / median / max | ratio to 1 thread (medians) |\n|---|---|---|"
    );
    let mut single = 0.0;
    // Last, one thread with the table watched: every change also goes to the Watch feed (the
    // value copied out, numbered, published per batch into the bounded history).
    for (decode_threads, watched) in [(1, false), (threads, false), (1, true)] {
        let decoders = Decoders::new(decode_threads).unwrap();
        let mut rates: Vec<f64> = (0..o.runs)
            .map(|_| {
                let config = TableConfig {
                    topic: "replay".into(),
                    table: "replay".into(),
                    format: Format::Debezium,
                    compression: clap::ValueEnum::from_str(&o.compression, true).unwrap(),
                    projection: None,
                };
                let table = Table::new(&config);
                table.set_initial_partitions(
                    (0..o.partitions).map(|p| PartitionState::new(p, 0, partitions[p as usize].len() as i64)),
                );
                let states: Vec<_> = (0..o.partitions).map(|p| table.partition(p).unwrap()).collect();
                if watched {
                    table.start_feed(cdc_cache::store::FeedSettings {
                        history_events: 65_536,
                        history_bytes: 64 << 20,
                    });
                    table.publish_changes();
                }
                let started = Instant::now();
                // Batches interleave partitions in runs, as fetch responses do.
                let mut next = vec![0usize; partitions.len()];
                let mut fetched = Vec::with_capacity(batch::MAX_RECORDS);
                loop {
                    fetched.clear();
                    for (p, records) in partitions.iter().enumerate() {
                        let take = (batch::MAX_RECORDS / partitions.len()).max(1);
                        let end = (next[p] + take).min(records.len());
                        for (offset, (k, v)) in records.iter().enumerate().take(end).skip(next[p]) {
                            fetched.push(Fetched {
                                key: Some(k),
                                payload: Some(v),
                                partition: p as i32,
                                offset: offset as i64,
                                timestamp: Some(1_795_400_000_000),
                                avro: None,
                            });
                        }
                        next[p] = end;
                    }
                    if fetched.is_empty() {
                        break;
                    }
                    for record in batch::prepare(&fetched, &table, &decoders) {
                        let state = &states[record.partition as usize];
                        table.apply_prepared(
                            state,
                            record.offset,
                            record.timestamp,
                            record.prepared.unwrap(),
                        );
                    }
                    table.publish_changes();
                }
                let elapsed = started.elapsed();
                assert_eq!(table.len(), o.records, "every record applied");
                o.records as f64 / elapsed.as_secs_f64()
            })
            .collect();
        rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = rates[rates.len() / 2];
        if decode_threads == 1 && !watched {
            single = median;
        }
        let label = if watched {
            format!("{decode_threads}, table watched (changes copied to the Watch feed)")
        } else {
            decode_threads.to_string()
        };
        println!(
            "| {label} | {:.0} / {:.0} / {:.0} | {:.2} |",
            rates[0],
            median,
            rates[rates.len() - 1],
            median / single
        );
    }
}
