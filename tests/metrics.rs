//! Metrics are right, not merely present: a real scrape passes `promtool check metrics`, positions
//! equal the broker's end offsets after catch-up, and lag rises while the consumer falls behind.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, Producer};

fn promtool_check(scrape: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (scripts/test installs it)");
    child.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{report}\n{scrape}"
    );
    assert!(report.trim().is_empty(), "promtool lint findings:\n{report}");
}

fn end_offsets(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "end-offsets")
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_is_valid_and_matches_the_broker() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let mut records = Vec::new();
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{}", i % 100).into_bytes()).collect();
    for key in &keys {
        records.push(upsert(key, b"value"));
    }
    for key in keys.iter().take(10) {
        records.push(tombstone(key));
    }
    produce(&brokers, "orders", &records);
    let app = TestApp::start(&brokers, &["--topic", "orders"]).await;
    let mut client = app.client().await;
    wait_ready(&mut client, Duration::from_secs(30)).await;
    // Some traffic so that the gRPC series exist.
    get(&mut client, "", b"k50").await.unwrap();
    get(&mut client, "nope", b"k50").await.unwrap_err();
    multi_get(&mut client, "", &[b"k1", b"k2"]).await.unwrap();

    let (_, scrape) = http_get(app.admin, "/metrics").await;
    promtool_check(&scrape);
    let ends = end_offsets(&brokers, "orders", 3);
    for (p, end) in ends.iter().enumerate() {
        let labels = format!("{{table=\"orders\",partition=\"{p}\"}}");
        assert_eq!(
            sample(&scrape, &format!("cdc_cache_partition_position{labels}")),
            Some(*end as f64)
        );
        assert_eq!(
            sample(&scrape, &format!("cdc_cache_partition_high_watermark{labels}")),
            Some(*end as f64)
        );
        assert_eq!(
            sample(&scrape, &format!("cdc_cache_partition_lag_records{labels}")),
            Some(0.0)
        );
        let ts = sample(
            &scrape,
            &format!("cdc_cache_last_record_timestamp_seconds{labels}"),
        )
        .unwrap();
        assert!(ts > 1.6e9, "a Kafka timestamp in seconds: {ts}");
    }
    assert_eq!(sample(&scrape, "cdc_cache_entries{table=\"orders\"}"), Some(90.0));
    assert_eq!(
        sample(&scrape, "cdc_cache_records_total{table=\"orders\",op=\"upsert\"}"),
        Some(300.0)
    );
    assert_eq!(
        sample(&scrape, "cdc_cache_records_total{table=\"orders\",op=\"delete\"}"),
        Some(10.0)
    );
    assert_eq!(sample(&scrape, "cdc_cache_ready"), Some(1.0));
    assert_eq!(
        sample(&scrape, "cdc_cache_table_ready{table=\"orders\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "cdc_cache_grpc_requests_total{method=\"Get\",code=\"OK\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "cdc_cache_grpc_requests_total{method=\"Get\",code=\"NOT_FOUND\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&scrape, "cdc_cache_multiget_keys_count"), Some(1.0));
    assert!(sample(&scrape, "cdc_cache_bootstrap_duration_seconds{table=\"orders\"}").unwrap() > 0.0);
    let bytes = sample(&scrape, "cdc_cache_data_bytes{table=\"orders\"}").unwrap();
    assert_eq!(
        bytes,
        90.0 * (3.0 + 5.0),
        "k10..k99 (three bytes) with five-byte values; k0..k9 deleted"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_rises_while_the_consumer_falls_behind() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("burst", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    // Tiny fetches make every record cost a round trip.
    let app = TestApp::start(
        &brokers,
        &[
            "--topic",
            "burst",
            "--kafka-option",
            "message.max.bytes=1000",
            "--kafka-option",
            "fetch.max.bytes=1024",
            "--kafka-option",
            "max.partition.fetch.bytes=1024",
        ],
    )
    .await;
    let mut client = app.client().await;
    wait_ready(&mut client, Duration::from_secs(30)).await;

    // Slow every broker round trip; with one-record batches and fetches too small for two,
    // the consumer applies about ten records per second while the producer writes faster.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(100))
        .unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    let value = vec![b'v'; 900];
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    send_all(
        &producer,
        "burst",
        &keys
            .iter()
            .map(|k| upsert(k.as_bytes(), &value))
            .collect::<Vec<_>>(),
    );
    let lagging = eventually(Duration::from_secs(30), "positive lag in the scrape", || async {
        let (_, scrape) = http_get(app.admin, "/metrics").await;
        let lag = sample(
            &scrape,
            "cdc_cache_partition_lag_records{table=\"burst\",partition=\"0\"}",
        )?;
        (lag > 0.0).then_some(lag)
    })
    .await;
    assert!(lagging <= 200.0);
    let status = status(&mut client).await;
    assert!(
        status.tables[0].partitions[0].lag > 0,
        "Status reports the same lag: {status:?}"
    );

    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    eventually(Duration::from_secs(60), "lag back to zero", || async {
        let (_, scrape) = http_get(app.admin, "/metrics").await;
        let lag = sample(
            &scrape,
            "cdc_cache_partition_lag_records{table=\"burst\",partition=\"0\"}",
        )?;
        let position = sample(
            &scrape,
            "cdc_cache_partition_position{table=\"burst\",partition=\"0\"}",
        )?;
        (lag == 0.0 && position == 200.0).then_some(())
    })
    .await;
    app.stop().await.unwrap();
}
