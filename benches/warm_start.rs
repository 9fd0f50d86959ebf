//! Warm start from a local snapshot next to a cold bootstrap of the same topic, in one run on a
//! Tansu broker: start -> SERVING time, bytes fetched from Kafka against the bytes produced since
//! the snapshot, and the snapshot's write time and size per entry next to the data in memory.
//!
//! `cargo bench --bench warm_start -- [--records N] [--since N] [--runs N]`
//! Needs `tansu` on PATH or in ~/.cargo/bin (scripts/test installs it).

mod common;

use std::time::{Duration, Instant};

use common::{arg, create_topics, free_port, median, produce_all, start_tansu, Sidecar};

const TOPIC: &str = "bench.warm";
const PARTITIONS: i32 = 3;
/// A Debezium change event (JsonConverter, schemas disabled) of about 400 bytes.
const EVENT: &str = r#"{"before":null,"after":{"id":1,"first_name":"Grace","last_name":"Hopper","email":"grace.hopper@example.com","status":"active","balance":"AfQ=","updated_at":1795408445414865},"source":{"version":"2.7.3.Final","connector":"postgresql","name":"shop","ts_ms":1795408445414,"snapshot":"false","db":"shop","schema":"public","table":"customers","txId":555,"lsn":24023128},"op":"u","ts_ms":1795408445420}"#;

fn main() {
    let records: usize = arg("--records", 1_000_000);
    let since: usize = arg("--since", records / 100);
    let runs: usize = arg("--runs", 3);
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let _tansu = start_tansu(port, dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(create_topics(&brokers, &[(TOPIC, PARTITIONS, true)]));
    produce_all(
        &brokers,
        TOPIC,
        records,
        |i| format!(r#"{{"id":{i}}}"#),
        EVENT.as_bytes(),
    );
    let spec = format!("{TOPIC}:debezium");

    // Cold: no snapshot yet; the sidecar writes one once ready, which is measured too.
    let snapshots = tempfile::tempdir().unwrap();
    let snapshot_dir = snapshots.path().to_str().unwrap().to_string();
    let flags = [
        "--snapshot-dir",
        snapshot_dir.as_str(),
        "--snapshot-interval",
        "1s",
    ];
    let mut cold = Vec::new();
    let started = Instant::now();
    let writer = Sidecar::start_with(&brokers, &spec, format!("127.0.0.1:{}", free_port()), &flags);
    cold.push(started.elapsed());
    let ok = r#"cdc_cache_snapshot_writes_total{table="bench.warm",outcome="ok"}"#;
    let deadline = Instant::now() + Duration::from_secs(120);
    while writer.metric(ok).unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "no snapshot written");
        std::thread::sleep(Duration::from_millis(100));
    }
    let series = |name: &str| format!(r#"{name}{{table="bench.warm"}}"#);
    let write_seconds = writer
        .metric(&series("cdc_cache_snapshot_write_duration_seconds"))
        .unwrap();
    let snapshot_bytes = writer.metric(&series("cdc_cache_snapshot_bytes")).unwrap();
    let data_bytes = writer.metric(&series("cdc_cache_data_bytes")).unwrap();
    let entries = writer.metric(&series("cdc_cache_entries")).unwrap();
    // Kill it, so only the snapshot taken while serving is left, then write what comes "since".
    drop(writer);
    let since_bytes = produce_all(
        &brokers,
        TOPIC,
        since,
        |i| format!(r#"{{"id":{}}}"#, i * 7 % records),
        EVENT.as_bytes(),
    );

    let mut warm = Vec::new();
    let mut fetched = Vec::new();
    let no_new_snapshots = [
        "--snapshot-dir",
        snapshot_dir.as_str(),
        "--snapshot-interval",
        "0s",
    ];
    for run in 1..=runs {
        let started = Instant::now();
        let sidecar = Sidecar::start_with(
            &brokers,
            &spec,
            format!("127.0.0.1:{}", free_port()),
            &no_new_snapshots,
        );
        warm.push(started.elapsed());
        let source = sidecar
            .metric(r#"cdc_cache_bootstrap_source{table="bench.warm",source="snapshot-local"}"#)
            .unwrap_or(0.0);
        assert_eq!(source, 1.0, "run {run} did not start from the snapshot");
        fetched.push(
            sidecar
                .metric(&series("cdc_cache_bootstrap_fetched_bytes"))
                .unwrap_or(0.0),
        );
        // SIGKILL: no shutdown snapshot, so every run starts from the same one.
        drop(sidecar);
        if run < runs {
            let started = Instant::now();
            let sidecar = Sidecar::start(&brokers, &spec, format!("127.0.0.1:{}", free_port()));
            cold.push(started.elapsed());
            drop(sidecar);
        }
    }
    let (c, w) = (median(&cold), median(&warm));
    let f = median(&fetched);
    println!("\n## Warm start: {records} Debezium events (~{} B each), {PARTITIONS} partitions, {since} written since the snapshot, Tansu", EVENT.len());
    println!("| start | median of runs | runs |\n|---|---|---|");
    println!(
        "| cold bootstrap (from the log start) | {c:.2?} | {} |",
        cold.len()
    );
    println!("| warm start (local snapshot) | {w:.2?} | {} |", warm.len());
    println!(
        "ratio warm / cold (medians): {:.3}",
        w.as_secs_f64() / c.as_secs_f64()
    );
    println!(
        "bytes fetched on a warm start: {:.0} of key+value against {since_bytes} produced since the snapshot: ratio {:.2}",
        f,
        f / since_bytes as f64
    );
    println!(
        "snapshot: {entries:.0} entries written in {write_seconds:.2} s ({:.0} entries/s), {snapshot_bytes:.0} B = {:.1} B/entry on disk vs {:.1} B/entry of key+value in memory",
        entries / write_seconds.max(1e-9),
        snapshot_bytes / entries,
        data_bytes / entries
    );
}
