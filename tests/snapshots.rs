//! Warm starts from local snapshots, on Tansu with the real binary: a sidecar killed mid-tail
//! starts again from its snapshot and ends with exactly what a cold start builds; a damaged,
//! foreign or too old snapshot is refused with the reason and the start is cold.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn rows(from: u32, to: u32, generation: &str) -> Vec<(String, Option<String>)> {
    (from..to)
        .map(|i| {
            let key = format!("key-{}", i % 700);
            // Every ninth write deletes its key.
            let value = (i % 9 != 0).then(|| format!("{generation}-{i}"));
            (key, value)
        })
        .collect()
}

fn send(brokers: &str, topic: &str, rows: &[(String, Option<String>)]) {
    produce(brokers, topic, &rows_as_records(rows));
}

async fn scrape(sidecar: &Sidecar) -> String {
    http_get(sidecar.admin, "/metrics").await.1
}

fn snapshot_files(dir: &Path, table: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join(table))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "cdcsnap"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_mid_tail_starts_warm_and_equals_a_cold_start() {
    let tansu = Tansu::start().await;
    let brokers = tansu.brokers();
    create_topic(&brokers, "warm", 3, true).await;
    send(&brokers, "warm", &rows(0, 3000, "first"));
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let mut first = Sidecar::spawn(
        &brokers,
        &[
            "--topic",
            "warm",
            "--snapshot-dir",
            dir_arg,
            "--snapshot-interval",
            "1s",
        ],
    );
    let mut client = first.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;
    let snapshots = dir.path().to_path_buf();
    eventually(Duration::from_secs(30), "a snapshot on disk", || {
        let snapshots = snapshots.clone();
        async move { (!snapshot_files(&snapshots, "warm").is_empty()).then_some(()) }
    })
    .await;
    // Writes after the snapshot, then a crash with no chance to write another.
    send(&brokers, "warm", &rows(3000, 3400, "second"));
    first.signal("KILL");
    first.wait(Duration::from_secs(10)).await;
    send(&brokers, "warm", &rows(3400, 3800, "third"));

    let warm = Sidecar::spawn(&brokers, &["--topic", "warm", "--snapshot-dir", dir_arg]);
    let cold = Sidecar::spawn(&brokers, &["--topic", "warm"]);
    let (warm_client, cold_client) = (warm.client().await, cold.client().await);
    let truth = topic_contents(&brokers, "warm", 3);
    wait_cache_is(&warm_client, "", &truth, READY_TIMEOUT).await;
    wait_cache_is(&cold_client, "", &truth, READY_TIMEOUT).await;
    assert!(warm.log().contains("started from a snapshot"), "{}", warm.log());
    let metrics = scrape(&warm).await;
    assert!(
        metrics.contains(r#"cdc_cache_bootstrap_source{table="warm",source="snapshot-local"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"cdc_cache_snapshot_loads_total{table="warm",outcome="loaded"} 1"#),
        "{metrics}"
    );
    let cold_metrics = scrape(&cold).await;
    assert!(cold_metrics.contains(r#"cdc_cache_bootstrap_source{table="warm",source="kafka"} 1"#));
    // The warm start fetched only what came after the snapshot (a fifth of the records here;
    // Tansu answers with whole batches and repeats some, so the bytes are not a fifth).
    let fetched = |m: &str| sample(m, r#"cdc_cache_bootstrap_fetched_bytes{table="warm"}"#).unwrap_or(0.0);
    let (warm_bytes, cold_bytes) = (fetched(&metrics), fetched(&cold_metrics));
    assert!(
        cold_bytes > 0.0 && warm_bytes < cold_bytes * 0.75,
        "warm {warm_bytes} B, cold {cold_bytes} B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_foreign_and_old_snapshots_mean_a_cold_start_with_the_reason() {
    let tansu = Tansu::start().await;
    let brokers = tansu.brokers();
    create_topic(&brokers, "orders", 1, true).await;
    create_topic(&brokers, "payments", 1, true).await;
    send(&brokers, "orders", &rows(0, 500, "o"));
    send(&brokers, "payments", &rows(0, 300, "p"));
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap().to_string();
    // A clean shutdown writes a final snapshot.
    let mut writer = Sidecar::spawn(&brokers, &["--topic", "orders", "--snapshot-dir", &dir_arg]);
    let mut client = writer.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;
    writer.signal("TERM");
    assert_eq!(writer.wait(Duration::from_secs(20)).await.code(), Some(0));
    let files = snapshot_files(dir.path(), "orders");
    assert_eq!(files.len(), 1, "{}", writer.log());
    let good = std::fs::read(&files[0]).unwrap();

    // (case, flags, how many bytes of the good snapshot the file keeps, the reason logged)
    let cases = [
        (
            "truncated",
            vec!["--topic", "orders"],
            good.len() - 20,
            "truncated or damaged",
        ),
        (
            "foreign topic",
            // The same table name, fed by another topic.
            vec!["--topic", "payments=orders"],
            good.len(),
            "not of table orders (topic payments)",
        ),
        (
            "too old",
            vec!["--topic", "orders", "--snapshot-max-age", "1ms"],
            good.len(),
            "more than --snapshot-max-age",
        ),
    ];
    for (case, args, keep, reason) in cases {
        std::fs::write(&files[0], &good[..keep]).unwrap();
        let topic = if case == "foreign topic" {
            "payments"
        } else {
            "orders"
        };
        let mut args: Vec<&str> = args;
        args.extend(["--snapshot-dir", &dir_arg, "--snapshot-interval", "0s"]);
        let sidecar = Sidecar::spawn(&brokers, &args);
        let mut client = sidecar.client().await;
        let truth = topic_contents(&brokers, topic, 1);
        // Ready means complete: a damaged snapshot's positions (fetching from them began while
        // it loaded) must not make the partition look caught up.
        let ready = wait_ready(&mut client, READY_TIMEOUT).await;
        assert_eq!(
            ready.tables[0].entries,
            truth.len() as u64,
            "{case}: {}",
            sidecar.log()
        );
        wait_cache_is(&client, "orders", &truth, READY_TIMEOUT).await;
        let log = sidecar.log();
        assert!(
            log.contains("snapshot not used") && log.contains(reason),
            "{case}: {log}"
        );
        let metrics = scrape(&sidecar).await;
        assert!(
            metrics.contains(r#"cdc_cache_bootstrap_source{table="orders",source="kafka"} 1"#),
            "{case}: {metrics}"
        );
        assert!(
            metrics.contains(r#"cdc_cache_snapshot_loads_total{table="orders",outcome="refused"} 1"#),
            "{case}: {metrics}"
        );
        drop(sidecar); // SIGKILL: no final snapshot replaces the damaged one
    }
}

/// An S3 server for the test: moto (PyPI) in server mode on a free port, with one bucket.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    async fn start(bucket: &str) -> S3Server {
        let port = free_port();
        let child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto server (pip install 'moto[server]'; scripts/test installs it)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        eventually(Duration::from_secs(30), "the S3 server", || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        let script = "import boto3, sys\nboto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket=sys.argv[2])";
        let status = std::process::Command::new("python3")
            .args(["-c", script, &endpoint, bucket])
            .status()
            .unwrap();
        assert!(status.success(), "could not create the bucket");
        S3Server { child, endpoint }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rollout: one sidecar publishes snapshots to S3; new sidecars on empty disks start from the
/// published snapshot while updates keep coming, and each ends equal to the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sidecars_start_from_a_published_snapshot_while_updates_continue() {
    let tansu = Tansu::start().await;
    let brokers = tansu.brokers();
    create_topic(&brokers, "fleet", 3, true).await;
    send(&brokers, "fleet", &rows(0, 2000, "first"));
    let s3 = S3Server::start("snaps").await;
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let publisher_dir = tempfile::tempdir().unwrap();
    let publisher = Sidecar::spawn_with_env(
        &brokers,
        &[
            "--topic",
            "fleet",
            "--snapshot-dir",
            publisher_dir.path().to_str().unwrap(),
            "--snapshot-url",
            "s3://snaps/prod/orders-app",
            "--snapshot-publish",
            "--snapshot-interval",
            "1s",
        ],
        &env,
    );
    let mut client = publisher.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;
    eventually(Duration::from_secs(30), "a published snapshot", || {
        let log = publisher.log();
        async move { log.contains("snapshot published").then_some(()) }
    })
    .await;

    // Updates keep coming while the new pods start.
    let writer = {
        let brokers = brokers.clone();
        std::thread::spawn(move || {
            for batch in 0..10 {
                send(
                    &brokers,
                    "fleet",
                    &rows(2000 + batch * 50, 2050 + batch * 50, "rollout"),
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let readers: Vec<Sidecar> = dirs
        .iter()
        .map(|dir| {
            Sidecar::spawn_with_env(
                &brokers,
                &[
                    "--topic",
                    "fleet",
                    "--snapshot-dir",
                    dir.path().to_str().unwrap(),
                    "--snapshot-url",
                    "s3://snaps/prod/orders-app",
                ],
                &env,
            )
        })
        .collect();
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let truth = topic_contents(&brokers, "fleet", 3);
    for reader in &readers {
        let client = reader.client().await;
        wait_cache_is(&client, "", &truth, READY_TIMEOUT).await;
        let metrics = scrape(reader).await;
        assert!(
            metrics.contains(r#"cdc_cache_bootstrap_source{table="fleet",source="snapshot-remote"} 1"#),
            "{metrics}\n{}",
            reader.log()
        );
    }
}

/// A partition added to the topic after the snapshot was taken is read from its beginning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_added_after_the_snapshot_is_read_from_its_beginning() {
    let mut tansu = Tansu::start().await;
    let brokers = tansu.brokers();
    create_topic(&brokers, "grown", 2, true).await;
    send(&brokers, "grown", &rows(0, 300, "first"));
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap().to_string();
    let mut writer = Sidecar::spawn(&brokers, &["--topic", "grown", "--snapshot-dir", &dir_arg]);
    let mut client = writer.client().await;
    wait_ready(&mut client, READY_TIMEOUT).await;
    writer.signal("TERM");
    assert_eq!(writer.wait(Duration::from_secs(20)).await.code(), Some(0));

    tansu.stop();
    add_partition_in_tansu_store(&tansu.db_path(), "grown", 2);
    tansu.restart().await;
    let added: Vec<(String, Option<String>)> = (0..50)
        .map(|i| (format!("new-{i}"), Some(format!("p2-{i}"))))
        .collect();
    let records: Vec<Record> = added
        .iter()
        .map(|(k, v)| upsert(k.as_bytes(), v.as_deref().unwrap().as_bytes()).on_partition(2))
        .collect();
    produce(&brokers, "grown", &records);

    let warm = Sidecar::spawn(&brokers, &["--topic", "grown", "--snapshot-dir", &dir_arg]);
    let client = warm.client().await;
    let truth = topic_contents(&brokers, "grown", 3);
    assert_eq!(truth.get(&b"new-7"[..]).map(Vec::as_slice), Some(&b"p2-7"[..]));
    wait_cache_is(&client, "", &truth, READY_TIMEOUT).await;
    assert!(warm.log().contains("started from a snapshot"), "{}", warm.log());
}
