//! The app in-process against librdkafka's mock cluster (real Kafka protocol over TCP), read
//! through a real gRPC client: bootstrap, tailing, readiness edge cases, request errors, outages.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const TAIL_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_every_partition_then_tails() {
    let cluster = MockCluster::new(1).unwrap();
    // Partition 2 stays empty: an empty partition must not hold readiness back.
    cluster.create_topic("orders", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(
        &brokers,
        "orders",
        &[
            upsert(b"k1", b"v1").on_partition(0),
            upsert(b"k2", b"v2").on_partition(1),
            upsert(b"k1", b"v1-updated").on_partition(0),
            upsert(b"empty", b"").on_partition(0),
            tombstone(b"k2").on_partition(1),
            upsert(b"k5", b"v5").on_partition(1),
        ],
    );
    // A record without a key cannot be addressed: skipped and counted.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::<[u8], [u8]>::to("orders")
                .payload(b"no key")
                .partition(1),
        )
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let app = TestApp::start(&brokers, &["--topic", "orders"]).await;
    let mut client = app.client().await;
    let status = wait_ready(&mut client, READY_TIMEOUT).await;

    let table = &status.tables[0];
    assert_eq!((table.table.as_str(), table.topic.as_str()), ("orders", "orders"));
    assert_eq!(table.entries, 3, "k1, empty, k5");
    assert_eq!(table.skipped_records, 1);
    let ends: Vec<(i32, i64, i64, bool)> = table
        .partitions
        .iter()
        .map(|p| (p.partition, p.position, p.end_offset, p.caught_up))
        .collect();
    assert_eq!(ends, vec![(0, 3, 3, true), (1, 4, 4, true), (2, 0, 0, true)]);
    assert!(table.partitions.iter().all(|p| p.lag == 0));

    let k1 = get(&mut client, "orders", b"k1").await.unwrap();
    assert!(k1.found);
    assert_eq!(&k1.value[..], b"v1-updated");
    assert_eq!((k1.partition, k1.offset), (0, 1));
    assert!(k1.timestamp_ms > 0, "the producer's timestamp is returned");
    assert_eq!(
        value(&mut client, "", b"k2").await,
        None,
        "deleted by a tombstone"
    );
    assert_eq!(
        value(&mut client, "", b"empty").await,
        Some(Vec::new()),
        "empty is a value, not a delete"
    );

    let results = multi_get(&mut client, "orders", &[b"k5", b"missing", b"k1"])
        .await
        .unwrap();
    let found: Vec<Option<&[u8]>> = results.iter().map(|r| r.found.then_some(&r.value[..])).collect();
    assert_eq!(found, vec![Some(&b"v5"[..]), None, Some(&b"v1-updated"[..])]);

    // Tailing: new writes and deletes show up without a restart.
    produce(
        &brokers,
        "orders",
        &[
            upsert(b"k9", b"v9").on_partition(2),
            tombstone(b"k1").on_partition(0),
        ],
    );
    eventually(TAIL_TIMEOUT, "tailed writes", || {
        let mut client = client.clone();
        async move {
            let k9 = value(&mut client, "", b"k9").await;
            let k1 = value(&mut client, "", b"k1").await;
            (k9.as_deref() == Some(b"v9") && k1.is_none()).then_some(())
        }
    })
    .await;

    let (code, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("cdc_cache_entries{table=\"orders\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cdc_cache_records_total{table=\"orders\",op=\"skipped\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cdc_cache_ready 1"), "{metrics}");
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_topic_exists_and_is_read() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let app = TestApp::start(&brokers, &["--topic", "late"]).await;
    let mut client = app.client().await;

    let error = get(&mut client, "", b"k").await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(error.message().contains("not ready"), "{}", error.message());
    let error = multi_get(&mut client, "", &[b"k"]).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    let admin = app.admin.to_string();
    assert_eq!(health(&app.grpc, "").await, ServingStatus::NotServing);
    assert_eq!(
        health(&app.grpc, "cdc_cache.v1.Cache").await,
        ServingStatus::NotServing
    );
    assert_eq!(health(&admin, "").await, ServingStatus::NotServing);
    assert_eq!(http_get(app.admin, "/readyz").await.0, 503);
    assert_eq!(
        http_get(app.admin, "/healthz").await.0,
        200,
        "alive while not ready"
    );

    cluster.create_topic("late", 2, 1).unwrap();
    produce(&brokers, "late", &[upsert(b"k", b"v")]);
    wait_ready(&mut client, READY_TIMEOUT).await;
    assert_eq!(value(&mut client, "", b"k").await.as_deref(), Some(&b"v"[..]));
    assert_eq!(
        health(&app.grpc, "cdc_cache.v1.Cache").await,
        ServingStatus::Serving
    );
    assert_eq!(health(&admin, "").await, ServingStatus::Serving);
    assert_eq!(http_get(app.admin, "/readyz").await.0, 200);

    // Shutdown turns health NOT_SERVING before anything stops: watch it on the admin port.
    let channel = cdc_cache::client::channel(&admin).await.unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(app.stop());
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);
    stopping.await.unwrap().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("a", 1, 1).unwrap();
    cluster.create_topic("b", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    // Several MB per value must round-trip through Kafka and gRPC.
    let big = vec![b'x'; 5 * 1024 * 1024];
    produce(&brokers, "b", &[upsert(b"big", &big)]);
    let app = TestApp::start(
        &brokers,
        &["--topic", "a", "--topic", "b=beta", "--max-multiget-keys", "3"],
    )
    .await;
    let mut client = app.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;

    let error = get(&mut client, "", b"k").await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("a, beta"), "{}", error.message());
    let error = get(&mut client, "b", b"k").await.unwrap_err();
    assert_eq!(
        error.code(),
        Code::NotFound,
        "tables are addressed by table name, not topic"
    );
    assert!(
        error.message().contains("unknown table \"b\""),
        "{}",
        error.message()
    );
    let error = multi_get(&mut client, "a", &[b"1", b"2", b"3", b"4"])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("--max-multiget-keys"),
        "{}",
        error.message()
    );
    assert_eq!(
        multi_get(&mut client, "a", &[b"1", b"2", b"3"])
            .await
            .unwrap()
            .len(),
        3
    );

    let found = value(&mut client, "beta", b"big")
        .await
        .expect("big value present");
    assert_eq!(found.len(), big.len());

    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("cdc_cache_grpc_requests_total{method=\"Get\",code=\"NOT_FOUND\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cdc_cache_grpc_requests_total{method=\"MultiGet\",code=\"INVALID_ARGUMENT\"} 1")
    );
    app.stop().await.expect("clean shutdown");
}

/// The KCache / Kafka Streams bug: a log whose last offset is a transaction marker never
/// delivers a record at `end - 1`, so a reader that waits for one never becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_ending_in_transaction_markers_becomes_ready() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("txn", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("transactional.id", "cdc-cache-test")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    producer.init_transactions(timeout).unwrap();
    producer.begin_transaction().unwrap();
    send_all(
        &producer,
        "txn",
        &[
            upsert(b"committed", b"yes").on_partition(0),
            upsert(b"p1", b"yes").on_partition(1),
        ],
    );
    producer.commit_transaction(timeout).unwrap();
    // Partition 0 then ends in an abort marker, partition 1 in a commit marker.
    producer.begin_transaction().unwrap();
    send_all(&producer, "txn", &[upsert(b"aborted", b"no").on_partition(0)]);
    producer.flush(timeout).unwrap();
    producer.abort_transaction(timeout).unwrap();

    let app = TestApp::start(&brokers, &["--topic", "txn"]).await;
    let mut client = app.client().await;
    let status = wait_ready(&mut client, READY_TIMEOUT).await;
    assert_eq!(
        value(&mut client, "", b"committed").await.as_deref(),
        Some(&b"yes"[..])
    );
    // Whether the aborted record is hidden is up to the broker: librdkafka's mock does not report
    // aborted transactions in fetch responses, so read_committed filtering is not checked here.
    for p in &status.tables[0].partitions {
        assert_eq!(
            p.position, p.end_offset,
            "partition {} position is past its markers",
            p.partition
        );
        assert_eq!(p.lag, 0);
    }
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_keeps_reads_going_and_catches_up() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[upsert(b"before", b"1")]);
    let app = TestApp::start(&brokers, &["--topic", "t"]).await;
    let mut client = app.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;

    let producer = producer(&brokers);
    cluster.broker_down(1).unwrap();
    let silent = eventually(
        Duration::from_secs(20),
        "broker silence to show in Status",
        || {
            let mut client = client.clone();
            async move {
                let s = status(&mut client).await;
                (s.tables[0].broker_silence_ms > 3000).then_some(s)
            }
        },
    )
    .await;
    assert!(
        silent.ready,
        "an outage after start-up does not make the cache unready"
    );
    assert_eq!(
        value(&mut client, "", b"before").await.as_deref(),
        Some(&b"1"[..])
    );
    // Written during the outage: queued by the producer, delivered once the broker is back.
    send_all(&producer, "t", &[upsert(b"during", b"2")]);
    cluster.broker_up(1).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    eventually(
        Duration::from_secs(30),
        "the record written during the outage",
        || {
            let mut client = client.clone();
            async move { value(&mut client, "", b"during").await }
        },
    )
    .await;
    assert!(status(&mut client).await.tables[0].broker_silence_ms < 3000);
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_is_shared_with_the_group_only_and_removed_at_exit() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[upsert(b"k", b"v")]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cache.sock");
    // A stale file from a crashed run must not block start-up.
    std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let listen = format!("unix:{}", socket.display());
    let app = TestApp::start(&brokers, &["--topic", "t", "--grpc-listen", &listen]).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "owner and group (the pod's fsGroup), nobody else");
    let mut client = app.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;
    assert_eq!(value(&mut client, "", b"k").await.as_deref(), Some(&b"v"[..]));
    drop(client);
    app.stop().await.expect("clean shutdown");
    assert!(!socket.exists(), "socket file removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_decode_error_fail_stops_with_the_offending_position() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("dbz", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(
        &brokers,
        "dbz",
        &[
            upsert(br#"{"id":1}"#, br#"{"id":1}"#),
            upsert(br#"{"id":2}"#, b"corrupt"),
            upsert(br#"{"id":3}"#, br#"{"id":3}"#),
        ],
    );
    let app = TestApp::start(
        &brokers,
        &["--topic", "dbz:debezium", "--on-decode-error", "fail"],
    )
    .await;
    let error = app
        .finished(Duration::from_secs(30))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("topic dbz partition 0 at offset 1"), "{error}");
    assert!(error.contains("--on-decode-error=fail"), "{error}");
}
