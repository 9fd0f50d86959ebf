//! Fresh reads (`Consistency` on Get and MultiGet) against librdkafka's mock cluster through a
//! real gRPC client: applied offsets reported, reads that wait for a write, waits that time out
//! naming the offsets reached, stale tables refused, and bad options refused.

mod common;

use std::time::Duration;

use cdc_cache::proto::{Consistency, GetRequest, MultiGetRequest};
use common::*;
use rdkafka::mocking::MockCluster;
use tonic::Code;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Topic `t` of one partition holding `a` = `1`, and a ready sidecar reading it. The cluster is
/// returned to stay in the test's body (it is not `Send`).
async fn one_row_table() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    TestApp,
    Client,
) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[upsert(b"a", b"1")]);
    let app = TestApp::start(&brokers, &["--topic", "t"]).await;
    let mut client = app.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;
    (cluster, app, client)
}

fn get_request(key: &str, consistency: Consistency) -> GetRequest {
    GetRequest {
        table: String::new(),
        key: key.as_bytes().to_vec().into(),
        consistency: Some(consistency),
    }
}

fn wait_for(partition: i32, offset: i64, wait_ms: i64) -> Consistency {
    Consistency {
        min_offsets: [(partition, offset)].into(),
        wait_timeout_ms: wait_ms,
        include_offsets: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_wait_for_the_offsets_a_writer_got_back() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(
        &brokers,
        "t",
        &[
            upsert(b"a", b"1").on_partition(0),
            upsert(b"b", b"1").on_partition(0),
            upsert(b"c", b"1").on_partition(1),
        ],
    );
    let app = TestApp::start(&brokers, &["--topic", "t"]).await;
    let mut client = app.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;

    // The offsets applied, for a caller to pass on.
    let offsets = Consistency {
        include_offsets: true,
        ..Default::default()
    };
    let answer = client
        .get(get_request("a", offsets.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.found);
    assert_eq!(answer.applied_offsets, [(0, 1), (1, 0)].into());
    let many = client
        .multi_get(MultiGetRequest {
            table: String::new(),
            keys: vec![b"a".to_vec().into(), b"c".to_vec().into()],
            consistency: Some(offsets),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(many.applied_offsets, [(0, 1), (1, 0)].into());
    assert!(many
        .results
        .iter()
        .all(|r| r.found && r.applied_offsets.is_empty()));
    // Offsets already applied answer at once; without include_offsets none are returned.
    let answer = client
        .get(get_request(
            "c",
            Consistency {
                min_offsets: [(0, 1), (1, 0)].into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.found && answer.applied_offsets.is_empty());

    // Not written yet: the wait ends with DEADLINE_EXCEEDED naming where the partition is.
    let error = client
        .get(get_request("new", wait_for(0, 2, 300)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
    assert!(
        error
            .message()
            .contains("partition 0 applied up to 1, waiting for 2"),
        "{}",
        error.message()
    );
    // The gRPC deadline bounds the wait when the request sets none.
    let mut request = tonic::Request::new(get_request("new", wait_for(0, 2, 0)));
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let error = client.get(request).await.unwrap_err();
    assert!(
        error.code() == Code::DeadlineExceeded && error.message().contains("partition 0 applied up to 1"),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Read-your-writes: the read waits for offset 2 of partition 0, which a writer then makes.
    let mut reader = client.clone();
    let waiting = tokio::spawn(async move { reader.get(get_request("new", wait_for(0, 2, 10_000))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the read waits for the write");
    produce(&brokers, "t", &[upsert(b"new", b"written").on_partition(0)]);
    let answer = waiting.await.unwrap().unwrap().into_inner();
    assert!(answer.found);
    assert_eq!(&answer.value[..], b"written");
    assert_eq!((answer.partition, answer.offset), (0, 2));
    assert_eq!(answer.applied_offsets[&0], 2);
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_consistency_options_are_refused_by_name() {
    let (_cluster, app, mut client) = one_row_table().await;

    let refused = [
        (wait_for(7, 0, 100), "has no partition 7"),
        (wait_for(0, -2, 100), "offset -2 for partition 0 is below -1"),
        (wait_for(0, 0, 300_001), "wait_timeout_ms 300001 is outside"),
        (
            Consistency {
                max_staleness_ms: -5,
                ..Default::default()
            },
            "max_staleness_ms -5 is negative",
        ),
    ];
    for (consistency, reason) in refused {
        let error = client.get(get_request("a", consistency)).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        assert!(error.message().contains(reason), "{}", error.message());
    }
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_cut_off_from_its_broker_is_refused_past_max_staleness() {
    let (cluster, app, mut client) = one_row_table().await;
    let fresh = Consistency {
        max_staleness_ms: 2000,
        ..Default::default()
    };
    assert!(
        client
            .get(get_request("a", fresh.clone()))
            .await
            .unwrap()
            .into_inner()
            .found
    );

    cluster.broker_down(1).unwrap();
    let error = eventually(Duration::from_secs(20), "the stale table to be refused", || {
        let mut client = client.clone();
        let fresh = fresh.clone();
        async move { client.get(get_request("a", fresh)).await.err() }
    })
    .await;
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(
        error.message().contains("has not heard from its broker")
            && error.message().contains("max_staleness_ms 2000"),
        "{}",
        error.message()
    );
    // Without the option the rows keep answering.
    assert_eq!(value(&mut client, "", b"a").await.as_deref(), Some(&b"1"[..]));
    // A latest read needs the broker: it fails within its wait, saying why.
    let latest = Consistency {
        latest: true,
        wait_timeout_ms: 500,
        ..Default::default()
    };
    let error = client.get(get_request("a", latest)).await.unwrap_err();
    assert!(
        matches!(error.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{error:?}"
    );
    assert!(error.message().contains("end offsets"), "{}", error.message());
    cluster.broker_up(1).unwrap();
    eventually(Duration::from_secs(30), "the table to be fresh again", || {
        let mut client = client.clone();
        let fresh = fresh.clone();
        async move { client.get(get_request("a", fresh)).await.ok() }
    })
    .await;
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_reads_see_acknowledged_writes_and_share_broker_requests() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[upsert(b"a", b"1"), upsert(b"b", b"1")]);
    let app = TestApp::start(&brokers, &["--topic", "t"]).await;
    let mut client = app.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;
    let latest = Consistency {
        latest: true,
        include_offsets: true,
        ..Default::default()
    };

    // Acknowledged just before the read: a latest read must see it.
    for round in 0..5 {
        let value = format!("v{round}");
        produce(
            &brokers,
            "t",
            &[upsert(b"k", value.as_bytes()).on_partition(round % 3)],
        );
        let answer = client
            .get(get_request("k", latest.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.found, "round {round}");
        assert_eq!(answer.value, value.as_bytes(), "round {round}");
    }

    // A burst of latest reads shares the broker round trips.
    let requests =
        |metrics: &str| sample(metrics, r#"cdc_cache_end_offset_requests_total{table="t"}"#).unwrap();
    let before = requests(&http_get(app.admin, "/metrics").await.1);
    let reads: Vec<_> = (0..50)
        .map(|_| {
            let mut client = client.clone();
            let latest = latest.clone();
            tokio::spawn(async move { client.get(get_request("a", latest)).await })
        })
        .collect();
    for read in reads {
        assert!(read.await.unwrap().unwrap().into_inner().found);
    }
    let after = requests(&http_get(app.admin, "/metrics").await.1);
    assert!(
        after - before <= 10.0,
        "50 concurrent latest reads made {} broker requests",
        after - before
    );
    assert!(after - before >= 1.0);
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_command_waits_for_offsets_and_reports_timeouts() {
    let (_cluster, app, _client) = one_row_table().await;
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cdc-cache"))
            .arg("get")
            .args(["--addr", &app.grpc])
            .args(args)
            .output()
            .unwrap()
    };

    let out = run(&["--latest", "--max-staleness", "60s", "--min-offset", "0:0", "a"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"1\n");

    let out = run(&["--min-offset", "0:5", "--wait-timeout", "300ms", "a"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("partition 0 applied up to 0, waiting for 5"),
        "{stderr}"
    );

    let out = run(&["--min-offset", "zero", "a"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--min-offset") && stderr.contains("PARTITION:OFFSET"),
        "{stderr}"
    );
    app.stop().await.expect("clean shutdown");
}
