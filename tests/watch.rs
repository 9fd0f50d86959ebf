//! Watch streams against librdkafka's mock cluster through a real gRPC client: every change in
//! order, resumed without gaps or repeats under concurrent writes, key and prefix filters,
//! include_initial rows that add up to the table, a slow watcher dropped with its position and
//! resumed, bad requests refused by name, the watcher cap, the CLI, and clean ends at shutdown.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use cdc_cache::grpc::RESUME_TRAILER;
use cdc_cache::proto::change_event::Type;
use cdc_cache::proto::{ChangeEvent, WatchRequest};
use common::*;
use rdkafka::mocking::MockCluster;
use tonic::{Code, Status, Streaming};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
const PARTITIONS: i32 = 3;

struct Watcher {
    stream: Streaming<ChangeEvent>,
}

impl Watcher {
    async fn open(client: &mut Client, request: WatchRequest) -> Result<Watcher, Status> {
        Ok(Watcher {
            stream: client.watch(request).await?.into_inner(),
        })
    }

    /// The next event, or the status the stream ended with.
    async fn next(&mut self) -> Result<ChangeEvent, Status> {
        match tokio::time::timeout(EVENT_TIMEOUT, self.stream.message()).await {
            Ok(Ok(Some(event))) => Ok(event),
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
        }
    }

    async fn expect_synced(&mut self) -> String {
        let event = self.next().await.expect("SYNCED");
        assert_eq!(event.r#type(), Type::Synced, "{event:?}");
        event.position
    }
}

fn watch_all() -> WatchRequest {
    WatchRequest::default()
}

/// Every key, the rows held first.
fn watch_all_from_rows() -> WatchRequest {
    WatchRequest {
        include_initial: true,
        ..watch_all()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A change as two watchers must agree on it.
type Seen = (Type, String, String, i32, i64, String);

fn seen(event: &ChangeEvent) -> Seen {
    (
        event.r#type(),
        text(&event.key),
        text(&event.value),
        event.partition,
        event.offset,
        event.position.clone(),
    )
}

fn is_end_marker(event: &ChangeEvent) -> bool {
    event.key.starts_with(b"end-")
}

/// Reads changes until the end marker of every partition has come; returns them, markers
/// included, progress events left out.
async fn read_to_end_markers(watcher: &mut Watcher) -> Vec<ChangeEvent> {
    let mut events = Vec::new();
    let mut ends = 0;
    while ends < PARTITIONS {
        let event = watcher.next().await.expect("a change");
        if event.r#type() == Type::Progress {
            continue;
        }
        ends += i32::from(is_end_marker(&event));
        events.push(event);
    }
    events
}

/// Writes `count` changes over 50 keys (every 7th a tombstone) on the default partitioner,
/// then one end marker per partition.
fn write_changes(brokers: String, count: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let producer = producer(&brokers);
        for i in 0..count {
            let key = format!("k{}", i % 50);
            let value = format!("v{i}");
            let record = if i % 7 == 3 {
                tombstone(key.as_bytes())
            } else {
                upsert(key.as_bytes(), value.as_bytes())
            };
            send_all(&producer, "t", &[record]);
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let ends: Vec<String> = (0..PARTITIONS).map(|p| format!("end-{p}")).collect();
        let markers: Vec<_> = ends
            .iter()
            .enumerate()
            .map(|(p, key)| upsert(key.as_bytes(), b"end").on_partition(p as i32))
            .collect();
        send_all(&producer, "t", &markers);
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();
    })
}

async fn table_with_rows(
    extra_args: &[&str],
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    TestApp,
    Client,
) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let rows: Vec<(String, Option<String>)> = (0..50)
        .map(|i| (format!("k{i}"), Some("v0".to_string())))
        .collect();
    produce(&brokers, "t", &rows_as_records(&rows));
    let mut args = vec!["--topic", "t"];
    args.extend_from_slice(extra_args);
    let app = TestApp::start(&brokers, &args).await;
    let mut client = app.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;
    (cluster, app, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_change_in_order_and_resume_without_gaps_or_repeats() {
    let (cluster, app, mut client) = table_with_rows(&[]).await;
    let brokers = cluster.bootstrap_servers();

    let mut all = Watcher::open(&mut client, watch_all()).await.unwrap();
    let start = all.expect_synced().await;
    let mut resumed = Watcher::open(&mut client, watch_all()).await.unwrap();
    assert_eq!(resumed.expect_synced().await, start, "nothing changed in between");
    let keys = ["k1", "k2", "k3"];
    let mut keyed = Watcher::open(
        &mut client,
        WatchRequest {
            keys: keys.iter().map(|k| k.as_bytes().to_vec().into()).collect(),
            ..watch_all()
        },
    )
    .await
    .unwrap();
    keyed.expect_synced().await;
    let mut prefixed = Watcher::open(
        &mut client,
        WatchRequest {
            prefix: b"k1".to_vec().into(),
            ..watch_all()
        },
    )
    .await
    .unwrap();
    prefixed.expect_synced().await;

    let writer = write_changes(brokers.clone(), 1500);
    // Started while changes stream in: its rows plus its changes must be the table.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut initial = Watcher::open(&mut client, watch_all_from_rows()).await.unwrap();

    let everything = read_to_end_markers(&mut all).await;
    writer.join().unwrap();

    // Order: each partition's offsets rise; positions are the changes' numbers in order.
    let mut last_offset = HashMap::new();
    for event in &everything {
        assert!(matches!(event.r#type(), Type::Upsert | Type::Delete), "{event:?}");
        let last = last_offset.insert(event.partition, event.offset);
        assert!(
            last < Some(event.offset),
            "offsets out of order: {event:?} after {last:?}"
        );
    }
    assert!(everything.len() > 1000, "{} changes", everything.len());

    // Disconnect every 150 events and resume from the last position: the same changes, once.
    let mut pieced = Vec::new();
    let mut position = start.clone();
    let mut reconnects = 0;
    while pieced.len() < everything.len() {
        for _ in 0..150 {
            if pieced.len() == everything.len() {
                break;
            }
            let event = resumed.next().await.unwrap();
            position = event.position.clone();
            pieced.push(seen(&event));
        }
        drop(resumed);
        resumed = Watcher::open(
            &mut client,
            WatchRequest {
                resume_from: position.clone(),
                ..watch_all()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            resumed.expect_synced().await,
            position,
            "resumed where it left off"
        );
        reconnects += 1;
    }
    assert!(reconnects >= 5, "{reconnects}");
    let expected: Vec<Seen> = everything.iter().map(seen).collect();
    assert!(
        pieced == expected,
        "resumed stream differs from the uninterrupted one"
    );

    // Filters: exactly the matching changes, same positions.
    let matching = |wanted: &dyn Fn(&str) -> bool| -> Vec<Seen> {
        expected.iter().filter(|e| wanted(&e.1)).cloned().collect()
    };
    let want_keyed = matching(&|key| keys.contains(&key));
    let mut got_keyed = Vec::new();
    while got_keyed.len() < want_keyed.len() {
        let event = keyed.next().await.unwrap();
        if event.r#type() != Type::Progress {
            got_keyed.push(seen(&event));
        }
    }
    assert!(got_keyed == want_keyed, "key filter");
    // The changes after the last match are skipped: a PROGRESS event moves the position past
    // them, to the last change of all.
    let event = keyed.next().await.unwrap();
    assert_eq!(event.r#type(), Type::Progress, "{event:?}");
    assert_eq!(event.position, everything.last().unwrap().position);
    let want_prefixed = matching(&|key| key.starts_with("k1"));
    let mut got_prefixed = Vec::new();
    while got_prefixed.len() < want_prefixed.len() {
        let event = prefixed.next().await.unwrap();
        if event.r#type() != Type::Progress {
            got_prefixed.push(seen(&event));
        }
    }
    assert!(got_prefixed == want_prefixed, "prefix filter");

    // include_initial: rows, then changes (before SYNCED without a position), add up to the
    // table, and no change repeats a row or another change.
    let mut state = BTreeMap::new();
    let mut delivered = std::collections::HashSet::new();
    let mut synced = false;
    let mut ends = 0;
    while !synced || ends < PARTITIONS {
        let event = initial.next().await.unwrap();
        match event.r#type() {
            Type::Initial => {
                assert!(!synced && event.position.is_empty(), "{event:?}");
                state.insert(text(&event.key), text(&event.value));
            }
            Type::Synced => synced = true,
            Type::Progress => {}
            Type::Upsert => {
                state.insert(text(&event.key), text(&event.value));
            }
            Type::Delete => {
                state.remove(&text(&event.key));
            }
            Type::Unspecified => panic!("{event:?}"),
        }
        if !matches!(event.r#type(), Type::Synced | Type::Progress) {
            assert_eq!(synced, !event.position.is_empty(), "{event:?}");
            let coordinates = (event.partition, event.offset, text(&event.key));
            assert!(delivered.insert(coordinates), "repeated: {event:?}");
        }
        ends += i32::from(is_end_marker(&event));
    }
    let keys: Vec<String> = (0..50)
        .map(|i| format!("k{i}"))
        .chain((0..PARTITIONS).map(|p| format!("end-{p}")))
        .collect();
    let key_bytes: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let table: BTreeMap<String, String> = multi_get(&mut client, "", &key_bytes)
        .await
        .unwrap()
        .into_iter()
        .zip(&keys)
        .filter(|(r, _)| r.found)
        .map(|(r, k)| (k.clone(), text(&r.value)))
        .collect();
    assert_eq!(state, table, "initial rows plus changes are the table");

    let metrics = http_get(app.admin, "/metrics").await.1;
    assert_eq!(
        sample(&metrics, r#"cdc_cache_watchers{table="t"}"#),
        Some(5.0),
        "{metrics}"
    );
    assert!(sample(&metrics, r#"cdc_cache_watch_events_total{table="t"}"#).unwrap() > 3000.0);
    assert!(sample(&metrics, r#"cdc_cache_watch_history_bytes{table="t"}"#).unwrap() > 0.0);
    drop((all, resumed, keyed, prefixed, initial));
    eventually(
        Duration::from_secs(10),
        "watchers gone from the gauge",
        || async {
            let metrics = http_get(app.admin, "/metrics").await.1;
            (sample(&metrics, r#"cdc_cache_watchers{table="t"}"#) == Some(0.0)).then_some(())
        },
    )
    .await;
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_dropped_with_its_position_and_resumes_without_a_gap() {
    // Drop at 512 KiB behind; 1 KiB values: some 500 changes.
    let (cluster, app, mut client) = table_with_rows(&["--watch-history-bytes", "1Mi"]).await;
    let brokers = cluster.bootstrap_servers();
    let mut slow = Watcher::open(&mut client, watch_all()).await.unwrap();
    slow.expect_synced().await;

    // The watcher reads nothing while changes of 1 KiB keep arriving on one partition: 900 at
    // once, then 20 more at a time until it is dropped (how far behind a watcher is, is judged
    // when the next changes come).
    let value = vec![b'x'; 1024];
    let write = |count: usize| {
        let keys: Vec<String> = (0..count).map(|i| format!("k{}", i % 50)).collect();
        let records: Vec<_> = keys
            .iter()
            .map(|k| upsert(k.as_bytes(), &value).on_partition(0))
            .collect();
        produce(&brokers, "t", &records);
        count
    };
    let mut written = write(900);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = http_get(app.admin, "/metrics").await.1;
        let dropped = sample(
            &metrics,
            r#"cdc_cache_watchers_dropped_total{table="t",reason="slow"}"#,
        );
        if dropped == Some(1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow watcher was not dropped"
        );
        written += write(20);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What was handed over comes first, then the end with the position to resume from.
    let mut offsets = Vec::new();
    let status = loop {
        match slow.next().await {
            Ok(event) => {
                assert_eq!(event.r#type(), Type::Upsert);
                offsets.push(event.offset);
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--watch-history"),
        "{}",
        status.message()
    );
    let position = status
        .metadata()
        .get(RESUME_TRAILER)
        .expect("resume trailer")
        .to_str()
        .unwrap()
        .to_string();
    assert!(status.message().contains(&position), "{}", status.message());
    assert!(
        offsets.len() < written,
        "dropped before the end: {} of {written} sent",
        offsets.len()
    );

    let mut resumed = Watcher::open(
        &mut client,
        WatchRequest {
            resume_from: position,
            ..watch_all()
        },
    )
    .await
    .unwrap();
    resumed.expect_synced().await;
    while offsets.len() < written {
        let event = resumed.next().await.unwrap();
        if event.r#type() == Type::Upsert {
            offsets.push(event.offset);
        }
    }
    let first = offsets[0];
    let expected: Vec<i64> = (first..first + written as i64).collect();
    assert_eq!(offsets, expected, "every change once, in order, across the drop");
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watch_requests_are_refused_by_name() {
    let (_cluster, app, mut client) = table_with_rows(&["--max-watchers", "2"]).await;
    let shared = client.clone();
    let refused = |request: WatchRequest| {
        let mut client = shared.clone();
        async move {
            match Watcher::open(&mut client, request).await {
                Err(status) => status,
                Ok(mut watcher) => watcher.next().await.expect_err("refused"),
            }
        }
    };
    let status = refused(WatchRequest {
        keys: vec![b"k1".to_vec().into()],
        prefix: b"k".to_vec().into(),
        ..watch_all()
    })
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("keys and prefix"),
        "{}",
        status.message()
    );
    let status = refused(WatchRequest {
        include_initial: true,
        resume_from: "x".into(),
        ..watch_all()
    })
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("include_initial and resume_from"),
        "{}",
        status.message()
    );
    let status = refused(WatchRequest {
        table: "nope".into(),
        ..watch_all()
    })
    .await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = refused(WatchRequest {
        resume_from: "garbage".into(),
        ..watch_all()
    })
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("resume_from \"garbage\""),
        "{}",
        status.message()
    );
    // A position of another run (another epoch): re-read, said explicitly.
    let status = refused(WatchRequest {
        resume_from: "0123456789abcdef-5".into(),
        ..watch_all()
    })
    .await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("earlier run"), "{}", status.message());
    assert!(
        status.message().contains("include_initial"),
        "{}",
        status.message()
    );

    // The cap: two open streams, the third refused naming the flag; a place frees on close.
    let mut first = Watcher::open(&mut client, watch_all()).await.unwrap();
    let position = first.expect_synced().await;
    let mut second = Watcher::open(&mut client, watch_all()).await.unwrap();
    second.expect_synced().await;
    let status = refused(watch_all()).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-watchers"),
        "{}",
        status.message()
    );
    // Ahead of every change: not a position this table gave out.
    let (epoch, _) = position.split_once('-').unwrap();
    drop(second);
    let status = eventually(Duration::from_secs(10), "a place frees", || {
        let request = WatchRequest {
            resume_from: format!("{epoch}-999999"),
            ..watch_all()
        };
        let refused = refused(request);
        async move { Some(refused.await).filter(|s| s.code() != Code::ResourceExhausted) }
    })
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ahead"), "{}", status.message());
    drop(first);
    let metrics = http_get(app.admin, "/metrics").await.1;
    assert!(
        sample(
            &metrics,
            r#"cdc_cache_watchers_dropped_total{table="t",reason="limit"}"#
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &metrics,
            r#"cdc_cache_grpc_requests_total{method="Watch",code="INVALID_ARGUMENT"}"#
        )
        .unwrap()
            >= 3.0
    );
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_end_cleanly_with_their_position_when_the_sidecar_stops() {
    let (cluster, app, mut client) = table_with_rows(&[]).await;
    let mut watcher = Watcher::open(&mut client, watch_all()).await.unwrap();
    watcher.expect_synced().await;
    produce(&cluster.bootstrap_servers(), "t", &[upsert(b"k1", b"new")]);
    let event = watcher.next().await.unwrap();
    assert_eq!(
        (event.r#type(), text(&event.key)),
        (Type::Upsert, "k1".to_string())
    );

    let stopped = tokio::spawn(app.stop());
    let status = watcher.next().await.expect_err("the stream ends");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{}", status.message());
    let position = status.metadata().get(RESUME_TRAILER).expect("trailer");
    assert_eq!(position.to_str().unwrap(), event.position);
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("shutdown does not wait for the stream")
        .unwrap()
        .expect("clean shutdown");
}

/// `cdc-cache watch ARGS` with its stdout lines coming through a channel.
fn spawn_watch_command(
    addr: &str,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cdc-cache"))
        .args(["watch", "--addr", addr])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_command_prints_changes_as_lines() {
    let (cluster, app, _client) = table_with_rows(&[]).await;
    let (mut child, lines) = spawn_watch_command(&app.grpc, &["--output", "json", "k1", "k2"]);
    let next_line = || {
        let line = lines.recv_timeout(EVENT_TIMEOUT).expect("a line");
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    let line = tokio::task::block_in_place(next_line);
    assert_eq!(line["type"], "synced");
    produce(
        &cluster.bootstrap_servers(),
        "t",
        &[upsert(b"k3", b"skipped"), upsert(b"k1", b"one"), tombstone(b"k2")],
    );
    // The keys are on different partitions: in either order.
    let mut changes: Vec<serde_json::Value> = tokio::task::block_in_place(|| vec![next_line(), next_line()]);
    changes.sort_by_key(|line| line["key"].as_str().map(String::from));
    let [upserted, deleted] = &changes[..] else {
        unreachable!()
    };
    assert_eq!(
        (
            upserted["type"].as_str(),
            upserted["key"].as_str(),
            upserted["value"].as_str()
        ),
        (Some("upsert"), Some("k1"), Some("one"))
    );
    assert!(upserted["position"].as_str().unwrap().contains('-'));
    assert_eq!(
        (deleted["type"].as_str(), deleted["key"].as_str()),
        (Some("delete"), Some("k2"))
    );
    assert!(deleted.get("value").is_none(), "{deleted}");
    child.kill().unwrap();
    child.wait().unwrap();

    // Text lines, the rows first with --initial.
    let (mut child, lines) = spawn_watch_command(&app.grpc, &["--initial", "k1", "k5"]);
    let mut rows: Vec<String> = tokio::task::block_in_place(|| {
        (0..2)
            .map(|_| lines.recv_timeout(EVENT_TIMEOUT).expect("a row"))
            .collect()
    });
    rows.sort();
    assert_eq!(rows, ["initial\tk1\tone", "initial\tk5\tv0"]);
    // Interrupted, it exits 0.
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert_eq!(status.code(), Some(0));

    // A bad request exits 1 naming the problem.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc-cache"))
        .args(["watch", "--addr", &app.grpc, "--resume-from", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("resume_from \"nonsense\""),
        "{}",
        text(&out.stderr)
    );
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_initial_reads_take_turns_and_all_finish() {
    let (_cluster, app, client) = table_with_rows(&[]).await;
    // More streams than there are turns at copying shards: each still gets every row, then SYNCED.
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut watcher = Watcher::open(&mut client, watch_all_from_rows()).await.unwrap();
                let mut rows = std::collections::BTreeSet::new();
                loop {
                    let event = watcher.next().await.unwrap();
                    match event.r#type() {
                        Type::Initial => assert!(rows.insert(text(&event.key)), "{event:?}"),
                        Type::Synced => return rows,
                        other => panic!("{other:?} before SYNCED on a quiet table"),
                    }
                }
            })
        })
        .collect();
    let all: std::collections::BTreeSet<String> = (0..50).map(|i| format!("k{i}")).collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), all);
    }
    app.stop().await.expect("clean shutdown");
}
