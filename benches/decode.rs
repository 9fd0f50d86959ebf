//! Decode throughput on one core: ~500-byte Debezium change events with and without the schema
//! envelope, next to the naive peer (a full `serde_json::Value` tree, then re-serialize `after`)
//! measured in the same run. Prints records/s and the ratio.
//!
//! `cargo bench --bench decode -- [--records N] [--runs N]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use cdc_cache::format::decode;
use cdc_cache::format::Format;

mod common;
use common::debezium_json_event as event;

const SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"struct","fields":[{"type":"int64","optional":false,"field":"id"},{"type":"string","optional":false,"field":"first_name"},{"type":"string","optional":false,"field":"last_name"},{"type":"string","optional":false,"field":"email"},{"type":"string","optional":true,"field":"status"},{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","field":"balance"},{"type":"int64","optional":true,"name":"io.debezium.time.MicroTimestamp","field":"updated_at"}],"optional":true,"name":"shop.public.customers.Value","field":"before"},{"type":"string","optional":false,"field":"op"}],"optional":false,"name":"shop.public.customers.Envelope"}"#;

fn main() {
    let mut records = 200_000usize;
    let mut runs = 5usize;
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        match pair[0].as_str() {
            "--records" => records = pair[1].parse().unwrap(),
            "--runs" => runs = pair[1].parse().unwrap(),
            _ => {}
        }
    }
    let keys: Vec<String> = (0..records as u64)
        .map(|id| format!(r#"{{"id":{id}}}"#))
        .collect();
    let plain: Vec<String> = (0..records as u64).map(event).collect();
    let with_schema: Vec<String> = plain
        .iter()
        .map(|e| format!(r#"{{"schema":{SCHEMA},"payload":{e}}}"#))
        .collect();
    let avg = |v: &[String]| v.iter().map(String::len).sum::<usize>() / v.len();
    println!("## Debezium decode, one core ({records} records per run, {runs} runs)");
    println!("| events | bytes | cdc-cache records/s (min / median / max) | serde_json::Value peer records/s (median) | ratio |");
    println!("|---|---|---|---|---|");
    let mut stored_lines = Vec::new();
    for (name, values) in [("without schema", &plain), ("with schema", &with_schema)] {
        let ours = measure(runs, || {
            for (k, v) in keys.iter().zip(values.iter()) {
                black_box(decode(Format::Debezium, Some(k.as_bytes()), Some(v.as_bytes())).unwrap());
            }
        });
        let peer = measure(runs, || {
            for (k, v) in keys.iter().zip(values.iter()) {
                black_box(naive(k.as_bytes(), v.as_bytes()));
            }
        });
        let rate = |d: Duration| records as f64 / d.as_secs_f64();
        let (min, med, max) = (rate(ours[runs - 1]), rate(ours[runs / 2]), rate(ours[0]));
        let peer_med = rate(peer[runs / 2]);
        let stored: usize = keys
            .iter()
            .zip(values.iter())
            .map(
                |(k, v)| match decode(Format::Debezium, Some(k.as_bytes()), Some(v.as_bytes())) {
                    Ok(cdc_cache::store::Change::Upsert { key, value }) => key.len() + value.len(),
                    _ => 0,
                },
            )
            .sum();
        let raw: usize = keys
            .iter()
            .zip(values.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum();
        stored_lines.push(format!(
            "| {name} | {:.0} | {:.0} | {:.2} |",
            raw as f64 / records as f64,
            stored as f64 / records as f64,
            raw as f64 / stored as f64
        ));
        println!(
            "| {name} | {} | {:.0} / {:.0} / {:.0} | {:.0} | {:.2} |",
            avg(values),
            min,
            med,
            max,
            peer_med,
            med / peer_med
        );
    }
    println!("\n## Key + value bytes held per entry: raw envelope (--format raw) vs decoded row (debezium)");
    println!("| events | raw B/entry | debezium B/entry | raw / debezium |\n|---|---|---|---|");
    for line in stored_lines {
        println!("{line}");
    }
}

/// Sorted run times.
fn measure(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    times
}

/// What a straightforward decoder does: build the whole tree, pick `after`, serialize it.
fn naive(key: &[u8], value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key: serde_json::Value = serde_json::from_slice(key).unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(value).unwrap();
    if value.get("schema").is_some() {
        value = value["payload"].take();
    }
    let after = value["after"].take();
    (
        serde_json::to_vec(&key).unwrap(),
        serde_json::to_vec(&after).unwrap(),
    )
}
