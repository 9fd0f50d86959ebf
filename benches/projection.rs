//! Memory per entry with and without `--project`: the same customer rows (flattened Debezium
//! rows of 14 columns, ~330 B) loaded by sidecars that keep every column and by sidecars that
//! keep the key and three columns (email, tier, balance), each with `--compression off` and
//! `auto`. Each sidecar's RSS growth over an idle one, and the key and value bytes it reports.
//!
//! The broker is librdkafka's mock cluster in this process (zstd batches over 16 partitions, as
//! its 5 MB per partition would not hold the rows uncompressed).
//! `cargo bench --bench projection -- [--keys N]`

mod common;

use common::{arg, free_port, produce_with, Sidecar};
use rdkafka::mocking::MockCluster;

const TOPIC: &str = "bench.customers";
const PARTITIONS: i32 = 16;
const COLUMNS: &str = "email,tier,balance";

fn main() {
    let keys: usize = arg("--keys", 200_000);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    cluster.create_topic("bench.empty", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let data = produce_with(
        &brokers,
        TOPIC,
        keys,
        |i| cdc_cache::sample_rows::key(i as u64),
        |i| {
            cdc_cache::sample_rows::customer(i as u64, &mut cdc_cache::sample_rows::Rng::new(i as u64))
                .into_bytes()
        },
        &[("compression.type", "zstd")],
    );
    let idle = Sidecar::start_with(&brokers, "bench.empty", addr(), &["--format", "debezium"]).settled_rss();
    println!(
        "\n## Projection: memory per entry, {keys} customer rows (mean {} B key + value, 14 columns), --project customers={COLUMNS}",
        data / keys
    );
    println!("| columns kept | --compression | RSS growth B/entry | key+value bytes/entry as received | as stored |\n|---|---|---|---|---|");
    let mut per_entry = Vec::new();
    for compression in ["off", "auto"] {
        for project in [false, true] {
            let table = format!("{TOPIC}=customers:debezium");
            let mut flags = vec!["--topic", &table, "--compression", compression];
            let projection = format!("customers={COLUMNS}");
            if project {
                flags.extend(["--project", &projection]);
            }
            let sidecar = start(&brokers, &flags);
            if compression != "off" {
                sidecar.wait_compression_settled("customers");
            }
            let entries = sidecar.metric(r#"cdc_cache_entries{table="customers"}"#);
            assert_eq!(
                entries,
                Some(keys as f64),
                "every row loaded (the mock broker dropped none)"
            );
            let rss = sidecar.settled_rss().saturating_sub(idle) as f64 / keys as f64;
            let metric = |name: &str| {
                sidecar
                    .metric(&format!(r#"{name}{{table="customers"}}"#))
                    .unwrap_or(0.0)
                    / keys as f64
            };
            let (data, stored) = (metric("cdc_cache_data_bytes"), metric("cdc_cache_stored_bytes"));
            let kept = if project {
                format!("key + {COLUMNS}")
            } else {
                "all 14".to_string()
            };
            println!("| {kept} | {compression} | {rss:.0} | {data:.0} | {stored:.0} |");
            per_entry.push(rss);
        }
    }
    println!(
        "Projected / all columns, RSS per entry: {:.2} with --compression off, {:.2} with auto",
        per_entry[1] / per_entry[0],
        per_entry[3] / per_entry[2]
    );
}

fn addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A sidecar with the flags given (its topic among them), ready.
fn start(brokers: &str, flags: &[&str]) -> Sidecar {
    // `Sidecar::start_with` names one topic itself; the flags name the table and format.
    Sidecar::start_with(brokers, "bench.empty", addr(), flags)
}
