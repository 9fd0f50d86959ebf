//! The fault suite: logs that do something other than grow at their end, and a broker killed
//! under write load, on a Tansu broker with the real binary. After each fault the cache must equal what a cold start would build from the
//! topic as it is now (read by a bare consumer), never an old row.
//!
//! Tansu's sqlite store is edited with the broker stopped to truncate a log or move its start,
//! as an unclean leader election or retention would; Tansu answers a fetch outside the log with
//! nothing rather than OFFSET_OUT_OF_RANGE, so these tests cover the detection that does not
//! rely on the broker saying so (Kafka's out-of-range answer takes the same reset path).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// A reset needs the truncation grace (10 s) plus a fetch and a re-read.
const RESET_TIMEOUT: Duration = Duration::from_secs(60);

/// `cdc_cache_partition_resets_total` for `reason`, summed over partitions.
async fn resets(sidecar: &Sidecar, reason: &str) -> f64 {
    let (_, scrape) = http_get(sidecar.admin, "/metrics").await;
    scrape
        .lines()
        .filter(|l| {
            l.starts_with("cdc_cache_partition_resets_total{") && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The rows as records on partition 0.
fn records(rows: &[(String, Option<String>)]) -> Vec<Record<'_>> {
    rows_as_records(rows)
        .into_iter()
        .map(|r| r.on_partition(0))
        .collect()
}

/// Keeps only offsets `[start, end)` of partition 0 in a stopped Tansu's store and sets its log
/// start and high watermark to match: `end` below the old end is a truncation (an unclean leader
/// election), `start` above the old start a moved log start (retention, DeleteRecords).
const CUT_LOG: &str = r#"
import sqlite3, sys
db, topic, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = sqlite3.connect(db)
tp = c.execute("select tp.id from topition tp join topic t on tp.topic = t.id where t.name = ? and tp.partition = 0", (topic,)).fetchone()[0]
tables = [r[0] for r in c.execute("select name from sqlite_master where type = 'table'")]
for table in ("header", "record"):
    if table in tables:
        c.execute(f"delete from {table} where topition = ? and (offset_id < ? or offset_id >= ?)", (tp, start, end))
c.execute("update watermark set low = ?, high = min(high, ?) where topition = ?", (start, end, tp))
c.commit()
"#;

/// Cuts partition 0 of `topic` to `[start, end)` with the broker stopped, then restarts it.
async fn cut_log(tansu: &mut Tansu, topic: &str, start: i64, end: i64) {
    tansu.stop();
    edit_tansu_store(
        &tansu.db_path(),
        CUT_LOG,
        &[topic, &start.to_string(), &end.to_string()],
    );
    tansu.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_log_is_read_again_and_old_rows_go() {
    if needs_own_broker("a_truncated_log_is_read_again_and_old_rows_go") {
        return;
    }
    let mut tansu = Tansu::start().await;
    let brokers = tansu.brokers();
    create_topic(&brokers, "truncated", 1, false).await;
    // Offsets 0..49: k0..k49 = v1; offsets 50..99: k0..k49 = v2.
    let pairs: Vec<(String, Option<String>)> = (0..100)
        .map(|i| {
            (
                format!("k{}", i % 50),
                Some(format!("v{}-{}", i / 50 + 1, i % 50)),
            )
        })
        .collect();
    produce(&brokers, "truncated", &records(&pairs));
    let sidecar = Sidecar::spawn(&brokers, &["--topic", "truncated"]);
    let mut client = sidecar.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;
    assert_eq!(
        value(&mut client, "", b"k20").await.as_deref(),
        Some(&b"v2-20"[..])
    );

    // The log loses offsets 60..99: k10..k49 are at v1 again in the log.
    cut_log(&mut tansu, "truncated", 0, 60).await;
    // A few new records at offsets 60.. (fewer than were cut, so the log stays below the
    // position the sidecar had read to).
    let new: Vec<(String, Option<String>)> = vec![
        ("k1".into(), Some("v3-1".into())),
        ("k99".into(), Some("v3-99".into())),
        ("k2".into(), None),
    ];
    produce(&brokers, "truncated", &records(&new));

    let truth = topic_contents(&brokers, "truncated", 1);
    assert_eq!(truth.get(&b"k20"[..]).map(Vec::as_slice), Some(&b"v1-20"[..]));
    wait_cache_is(&client, "", &truth, RESET_TIMEOUT).await;
    assert_eq!(resets(&sidecar, "log_truncated").await, 1.0, "{}", sidecar.log());
    // The rebuild ends at the partition's next end-of-partition event.
    let p = eventually(Duration::from_secs(10), "the rebuild to end", || {
        let mut client = client.clone();
        async move { Some(status(&mut client).await.tables[0].partitions[0]).filter(|p| !p.rebuilding) }
    })
    .await;
    assert_eq!((p.resets, p.caught_up), (1, true), "{p:?}");
    assert!(
        sidecar.log().contains("the partition's log was reset"),
        "{}",
        sidecar.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_start_moved_past_a_lagging_sidecar_is_read_again() {
    if needs_own_broker("a_log_start_moved_past_a_lagging_sidecar_is_read_again") {
        return;
    }
    let mut tansu = Tansu::start().await;
    let brokers = tansu.brokers();
    create_topic(&brokers, "retained", 1, false).await;
    let first: Vec<(String, Option<String>)> = (0..10)
        .map(|i| (format!("k{i}"), Some(format!("v{i}"))))
        .collect();
    produce(&brokers, "retained", &records(&first));
    let sidecar = Sidecar::spawn(&brokers, &["--topic", "retained"]);
    let mut client = sidecar.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;

    // The sidecar falls behind (stopped), the log moves on and retention takes its start,
    // including a delete the sidecar never saw.
    sidecar.signal("STOP");
    let more: Vec<(String, Option<String>)> = [
        ("k3".to_string(), None),
        ("k4".to_string(), Some("new".to_string())),
    ]
    .into_iter()
    .chain((0..20).map(|i| ("k5".to_string(), Some(format!("v5-{i}")))))
    .collect();
    produce(&brokers, "retained", &records(&more));
    cut_log(&mut tansu, "retained", 25, i64::MAX).await;
    sidecar.signal("CONT");

    let truth = topic_contents(&brokers, "retained", 1);
    assert_eq!(
        truth.keys().cloned().collect::<Vec<_>>(),
        vec![b"k5".to_vec()],
        "a cold start holds k5 only"
    );
    wait_cache_is(&client, "", &truth, RESET_TIMEOUT).await;
    assert_eq!(
        resets(&sidecar, "log_start_moved").await,
        1.0,
        "{}",
        sidecar.log()
    );
    assert_eq!(
        value(&mut client, "", b"k3").await,
        None,
        "the unseen delete is not undone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_keeps_the_sidecar_up_and_a_recreated_one_is_read_anew() {
    let tansu = Tansu::start().await;
    let brokers = tansu.brokers();
    create_topic(&brokers, "recreated", 2, true).await;
    let old: Vec<(String, String)> = (0..40).map(|i| (format!("k{i}"), format!("old-{i}"))).collect();
    produce(
        &brokers,
        "recreated",
        &old.iter()
            .map(|(k, v)| upsert(k.as_bytes(), v.as_bytes()))
            .collect::<Vec<_>>(),
    );
    let mut sidecar = Sidecar::spawn(
        &brokers,
        &["--topic", "recreated", "--partition-discovery-interval", "1s"],
    );
    let mut client = sidecar.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;

    // librdkafka 2.12-2.16 crash (SIGSEGV) on Tansu's fetch reply for a deleted topic; the
    // sidecar links a guard against it. It must stay up, keep answering, and say what happened.
    delete_topic(&brokers, "recreated").await;
    let problem = eventually(
        Duration::from_secs(30),
        "Status to report the missing topic",
        || {
            let mut client = client.clone();
            async move {
                Some(status(&mut client).await.tables[0].problem.clone())
                    .filter(|p| p.contains("no longer exists"))
            }
        },
    )
    .await;
    assert!(problem.contains("recreated"), "{problem}");
    // The connection to the broker is fine; fetching is not: staleness must show.
    eventually(
        Duration::from_secs(30),
        "broker silence to grow while the topic is gone",
        || {
            let mut client = client.clone();
            async move { (status(&mut client).await.tables[0].broker_silence_ms > 5_000).then_some(()) }
        },
    )
    .await;
    assert!(
        sidecar.is_running(),
        "the sidecar survived the deletion: {}",
        sidecar.log()
    );
    assert_eq!(
        value(&mut client, "", b"k7").await.as_deref(),
        Some(&b"old-7"[..])
    );
    let (_, scrape) = http_get(sidecar.admin, "/metrics").await;
    assert!(
        scrape.contains(
            "cdc_cache_kafka_errors_total{table=\"recreated\",code=\"UNKNOWN_TOPIC_OR_PARTITION\"}"
        ),
        "{scrape}"
    );
    assert_eq!(
        sample(&scrape, "cdc_cache_table_problem{table=\"recreated\"}").unwrap_or(0.0),
        1.0
    );

    // Created again with other rows: offsets start at 0, and the old rows must go.
    create_topic(&brokers, "recreated", 2, true).await;
    let new: Vec<(String, String)> = (30..45).map(|i| (format!("k{i}"), format!("new-{i}"))).collect();
    produce(
        &brokers,
        "recreated",
        &new.iter()
            .map(|(k, v)| upsert(k.as_bytes(), v.as_bytes()))
            .collect::<Vec<_>>(),
    );
    let truth = topic_contents(&brokers, "recreated", 2);
    assert_eq!(truth.len(), 15);
    wait_cache_is(&client, "", &truth, RESET_TIMEOUT).await;
    assert!(resets(&sidecar, "topic_recreated").await + resets(&sidecar, "log_truncated").await >= 1.0);
    assert!(status(&mut client).await.tables[0].problem.is_empty());
    assert!(sidecar.is_running(), "{}", sidecar.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_topic_says_so() {
    let tansu = Tansu::start().await;
    let sidecar = Sidecar::spawn(&tansu.brokers(), &["--topic", "no.such.topic"]);
    let client = sidecar.client().await;
    let problem = eventually(Duration::from_secs(30), "Status to name the problem", || {
        let mut client = client.clone();
        async move { Some(status(&mut client).await.tables[0].problem.clone()).filter(|p| !p.is_empty()) }
    })
    .await;
    assert!(
        problem.contains("no.such.topic") && problem.contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{problem}"
    );
    let (_, scrape) = http_get(sidecar.admin, "/metrics").await;
    assert!(
        sample(
            &scrape,
            "cdc_cache_kafka_errors_total{table=\"no.such.topic\",code=\"UNKNOWN_TOPIC_OR_PARTITION\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{scrape}"
    );
}

/// Debezium sends a row to another partition once its key's bytes change (here: the key schema
/// made a field optional), and compaction never removes the old copy. Whatever order a replay
/// takes, the newer row wins and a newer delete stays a delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_two_partitions_keeps_its_newest_row_on_every_replay() {
    let tansu = Tansu::start().await;
    let brokers = tansu.brokers();
    create_topic(&brokers, "moved", 2, true).await;
    let key_v1 = |id: u32| {
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"field":"id","type":"int32","optional":false}}]}},"payload":{{"id":{id}}}}}"#
        )
    };
    let key_v2 = |id: u32| {
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"field":"id","type":"int32","optional":true}}]}},"payload":{{"id":{id}}}}}"#
        )
    };
    let row =
        |id: u32, name: &str| format!(r#"{{"before":null,"after":{{"id":{id},"name":"{name}"}},"op":"u"}}"#);
    let ids: Vec<u32> = (0..300).collect();
    let base = 1_700_000_000_000i64;
    let old_keys: Vec<String> = ids.iter().map(|&id| key_v1(id)).collect();
    let new_keys: Vec<String> = ids.iter().map(|&id| key_v2(id)).collect();
    let old_rows: Vec<String> = ids.iter().map(|&id| row(id, "before")).collect();
    let new_rows: Vec<String> = ids.iter().map(|&id| row(id, "after")).collect();
    let mut batch = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        // Half the rows move from partition 0 to 1, half from 1 to 0, so that no order of
        // delivering the two partitions gets every key right by arrival alone.
        let (from, to) = if id % 2 == 0 { (0, 1) } else { (1, 0) };
        batch.push(
            upsert(old_keys[i].as_bytes(), old_rows[i].as_bytes())
                .on_partition(from)
                .at(base + i as i64),
        );
        // Every fifth row is deleted after the key change (of both directions), the rest updated.
        let later = base + 10_000 + i as i64;
        if id % 5 == 0 {
            batch.push(tombstone(new_keys[i].as_bytes()).on_partition(to).at(later));
        } else {
            batch.push(
                upsert(new_keys[i].as_bytes(), new_rows[i].as_bytes())
                    .on_partition(to)
                    .at(later),
            );
        }
    }
    produce(&brokers, "moved", &batch);

    for run in 0..3 {
        let sidecar = Sidecar::spawn(&brokers, &["--topic", "moved=customers:debezium"]);
        let mut client = sidecar.client().await;
        wait_ready(&mut client, READY_TIMEOUT).await;
        let mut wrong = BTreeMap::new();
        for &id in &ids {
            let got = value(&mut client, "customers", format!(r#"{{"id":{id}}}"#).as_bytes()).await;
            let want = (id % 5 != 0).then(|| format!(r#"{{"id":{id},"name":"after"}}"#).into_bytes());
            if got != want {
                wrong.insert(id, got.map(|v| String::from_utf8_lossy(&v).into_owned()));
            }
        }
        assert!(
            wrong.is_empty(),
            "run {run}: {} keys wrong: {wrong:?}",
            wrong.len()
        );
        let status = status(&mut client).await;
        assert_eq!(status.tables[0].entries, 240, "run {run}");
        assert!(status.tables[0].key_conflicts >= 300, "run {run}: {status:?}");
    }
}

/// The broker killed (SIGKILL) while a producer keeps writing: once it is back and the writes
/// are done, the cache holds exactly what a cold start would read from the topic, whatever was
/// acknowledged, retried or lost around the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_under_write_load_loses_nothing() {
    use rdkafka::producer::Producer;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    if needs_own_broker("broker_killed_under_write_load_loses_nothing") {
        return;
    }
    let mut tansu = Tansu::start().await;
    let brokers = tansu.brokers();
    create_topic(&brokers, "busy", 3, true).await;
    let sidecar = Sidecar::spawn(&brokers, &["--topic", "busy"]);
    let mut client = sidecar.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let (brokers, stop, sent) = (brokers.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let producer = producer(&brokers);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("key-{}", i % 500);
                let value = format!("value-{i}");
                // Every seventh write deletes its key.
                let record = if i.is_multiple_of(7) {
                    tombstone(key.as_bytes())
                } else {
                    upsert(key.as_bytes(), value.as_bytes())
                };
                send_all(&producer, "busy", &[record]);
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = producer.flush(Duration::from_secs(60));
        })
    };
    let progress = sent.clone();
    eventually(Duration::from_secs(30), "writes before the kill", || {
        let progress = progress.clone();
        async move { (progress.load(Ordering::Relaxed) > 500).then_some(()) }
    })
    .await;
    tansu.stop(); // SIGKILL
    let before_restart = sent.load(Ordering::Relaxed);
    tansu.restart().await;
    let progress = sent.clone();
    eventually(Duration::from_secs(60), "writes after the restart", || {
        let progress = progress.clone();
        async move { (progress.load(Ordering::Relaxed) > before_restart + 500).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .unwrap();

    let truth = topic_contents(&brokers, "busy", 3);
    assert!(!truth.is_empty());
    wait_cache_is(&client, "", &truth, Duration::from_secs(60)).await;
}
