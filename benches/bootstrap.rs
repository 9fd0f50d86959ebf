//! Cold bootstrap: the sidecar's start -> SERVING time next to a bare librdkafka consumer (same
//! settings) reading the same topic to the end, on a Tansu broker, in the same run; plus the
//! sidecar's resident memory per entry.
//!
//! `cargo bench --bench bootstrap -- [--records N] [--runs N] [--value-bytes N]`
//! Needs `tansu` on PATH or in ~/.cargo/bin (scripts/test installs it).

mod common;

use std::time::{Duration, Instant};

use common::{
    arg, bare_read_to_end, create_topics, free_port, median, produce_all, sorted, start_tansu, Sidecar,
};

const TOPIC: &str = "bench.bootstrap";
const PARTITIONS: i32 = 3;
/// A Debezium change event (JsonConverter, schemas disabled) of about 400 bytes.
const EVENT: &str = r#"{"before":null,"after":{"id":1,"first_name":"Grace","last_name":"Hopper","email":"grace.hopper@example.com","status":"active","balance":"AfQ=","updated_at":1795408445414865},"source":{"version":"2.7.3.Final","connector":"postgresql","name":"shop","ts_ms":1795408445414,"snapshot":"false","db":"shop","schema":"public","table":"customers","txId":555,"lsn":24023128},"op":"u","ts_ms":1795408445420}"#;

struct Options {
    records: usize,
    runs: usize,
    value_bytes: usize,
    /// `debezium`: ~400-byte change events read with `--topic T:debezium` (the issue's workload);
    /// `raw`: `--value-bytes` of filler stored as they are.
    debezium: bool,
}

fn options() -> Options {
    Options {
        records: arg("--records", 1_000_000),
        runs: arg("--runs", 3),
        value_bytes: arg("--value-bytes", 40),
        debezium: arg("--format", "debezium".to_string()) == "debezium",
    }
}

fn main() {
    let o = options();
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let _tansu = start_tansu(port, dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(create_topics(
        &brokers,
        &[(TOPIC, PARTITIONS, true), ("bench.empty", 1, false)],
    ));
    let started = Instant::now();
    // Distinct keys, so every record is a live entry.
    let (raw_bytes, topic_spec) = if o.debezium {
        let bytes = produce_all(
            &brokers,
            TOPIC,
            o.records,
            |i| format!(r#"{{"id":{i}}}"#),
            EVENT.as_bytes(),
        );
        (bytes, format!("{TOPIC}:debezium"))
    } else {
        let value = vec![b'v'; o.value_bytes];
        let bytes = produce_all(&brokers, TOPIC, o.records, |i| format!("key-{i:08}"), &value);
        (bytes, TOPIC.to_string())
    };
    eprintln!("produced {} records in {:.1?}", o.records, started.elapsed());

    let mut bare = Vec::new();
    let mut sidecar = Vec::new();
    let mut rss = Vec::new();
    let baseline = sidecar_rss_empty(&brokers);
    for run in 1..=o.runs {
        // Alternate who goes first, so neither always meets a warmer broker.
        let mut measure_sidecar = || {
            let (t, r) = sidecar_bootstrap(&brokers, &topic_spec);
            sidecar.push(t);
            rss.push(r);
        };
        if run % 2 == 1 {
            bare.push(bare_consumer(&brokers));
            measure_sidecar();
        } else {
            measure_sidecar();
            bare.push(bare_consumer(&brokers));
        }
        eprintln!(
            "run {run}: bare consumer {:.2?}, sidecar {:.2?}",
            bare[run - 1],
            sidecar[run - 1]
        );
    }
    let (b, s) = (median(&bare), median(&sidecar));
    let kind = if o.debezium {
        "Debezium change events (--format debezium)"
    } else {
        "raw records"
    };
    println!(
        "\n## Cold bootstrap: {} {kind}, ~{} B each, {PARTITIONS} partitions, Tansu (memory)",
        o.records,
        raw_bytes / o.records
    );
    println!("| reader | min | median | max |\n|---|---|---|---|");
    println!(
        "| bare librdkafka consumer | {:.2?} | {:.2?} | {:.2?} |",
        sorted(&bare)[0],
        b,
        sorted(&bare)[bare.len() - 1]
    );
    println!(
        "| cdc-cache start -> SERVING | {:.2?} | {:.2?} | {:.2?} |",
        sorted(&sidecar)[0],
        s,
        sorted(&sidecar)[sidecar.len() - 1]
    );
    println!(
        "ratio sidecar / bare (medians): {:.3}",
        s.as_secs_f64() / b.as_secs_f64()
    );
    let entries = o.records as f64;
    let rss_median = median(&rss);
    let growth = rss_median.saturating_sub(baseline) as f64;
    let rss = format!(
        "memory: RSS {:.1} MiB ready vs {:.1} MiB idle; {:.1} B/entry",
        rss_median as f64 / 1048576.0,
        baseline as f64 / 1048576.0,
        growth / entries
    );
    if o.debezium {
        println!(
            "{rss} (rows stored decoded; {:.0} B of key+value received per record)",
            raw_bytes as f64 / entries
        );
    } else {
        let raw = raw_bytes as f64 / entries;
        println!(
            "{rss} of which {raw:.1} B raw key+value, {:.1} B overhead",
            growth / entries - raw
        );
    }
}

/// The peer: a consumer with the sidecar's settings, reading every partition to its end.
fn bare_consumer(brokers: &str) -> Duration {
    let started = Instant::now();
    bare_read_to_end(brokers, TOPIC, PARTITIONS);
    started.elapsed()
}

/// Start -> ready, and the resident memory once ready.
fn sidecar_bootstrap(brokers: &str, topic_spec: &str) -> (Duration, u64) {
    let started = Instant::now();
    let sidecar = Sidecar::start(brokers, topic_spec, format!("127.0.0.1:{}", free_port()));
    let took = started.elapsed();
    (took, sidecar.settled_rss())
}

fn sidecar_rss_empty(brokers: &str) -> u64 {
    Sidecar::start(brokers, "bench.empty", format!("127.0.0.1:{}", free_port())).settled_rss()
}
