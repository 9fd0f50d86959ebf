//! The real binary's start-up contract: bad configuration exits non-zero naming the flag, secrets
//! never reach the output, env vars configure everything, and SIGTERM exits 0 even before ready.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cdc-cache"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("CDC_CACHE_BROKERS")
        .env_remove("CDC_CACHE_TOPICS")
        .output()
        .expect("run cdc-cache")
}

fn assert_fails_naming(output: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in stderr: {stderr}");
}

/// A broker address where nothing listens, so these runs never reach Kafka.
fn nowhere() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn missing_brokers_names_the_flag() {
    let output = run(&["serve", "--topic", "t"], &[]);
    assert_fails_naming(&output, 2, "--brokers");
}

#[test]
fn missing_topic_names_the_flag_and_env_var() {
    let output = run(&["serve", "--brokers", &nowhere()], &[]);
    assert_fails_naming(&output, 2, "CDC_CACHE_TOPICS");
}

#[test]
fn remote_grpc_address_needs_opt_in() {
    let output = run(
        &[
            "serve",
            "--brokers",
            &nowhere(),
            "--topic",
            "t",
            "--grpc-listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_fails_naming(&output, 2, "--allow-remote");
}

#[test]
fn address_in_use_names_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run(
        &[
            "serve",
            "--brokers",
            &nowhere(),
            "--topic",
            "t",
            "--grpc-listen",
            &addr,
        ],
        &[],
    );
    assert_fails_naming(&output, 2, &format!("--grpc-listen {addr}"));
    let output = run(
        &[
            "serve",
            "--brokers",
            &nowhere(),
            "--topic",
            "t",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            &addr,
        ],
        &[],
    );
    assert_fails_naming(&output, 2, &format!("--admin-listen {addr}"));
}

/// `serve` on free ports with one `--kafka-option`; the broker is never reached.
fn serve_with_option(option: &str) -> Vec<&str> {
    vec![
        "serve",
        "--brokers",
        "127.0.0.1:1",
        "--topic",
        "t",
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--kafka-option",
        option,
    ]
}

#[test]
fn reserved_and_unknown_kafka_options_are_refused_by_name() {
    let output = run(&serve_with_option("enable.auto.commit=true"), &[]);
    assert_fails_naming(&output, 2, "--kafka-option enable.auto.commit");
    let output = run(&serve_with_option("no.such.option=1"), &[]);
    assert_fails_naming(&output, 2, "--kafka-option no.such.option");
}

#[test]
fn secrets_never_reach_the_output() {
    let secret = "hunter2-very-secret";
    // A secret from env (as a Kubernetes secretKeyRef would set it) next to a bad option.
    let from_env = run(
        &serve_with_option("security.protocol=bogus"),
        &[("CDC_CACHE_KAFKA_SASL_PASSWORD", secret)],
    );
    assert_fails_naming(&from_env, 2, "--kafka-option security.protocol");
    // A malformed flag that carries a secret.
    let flag = format!("sasl.password{secret}");
    let malformed = run(&serve_with_option(&flag), &[]);
    assert_fails_naming(&malformed, 2, "--kafka-option");
    for output in [from_env, malformed] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains(secret), "secret leaked: {all}");
    }
}

#[tokio::test]
async fn env_configures_serve_and_sigterm_exits_zero_before_ready() {
    let grpc = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let secret = "s3cr3t-from-secret-ref";
    let mut child = Command::new(env!("CARGO_BIN_EXE_cdc-cache"))
        .arg("serve")
        .env("CDC_CACHE_BROKERS", nowhere())
        .env("CDC_CACHE_TOPICS", "orders=o,customers")
        .env("CDC_CACHE_GRPC_LISTEN", &grpc)
        // The deprecated name of CDC_CACHE_ADMIN_LISTEN: still works, with a warning.
        .env("CDC_CACHE_METRICS_LISTEN", &admin)
        .env("CDC_CACHE_KAFKA_SASL_PASSWORD", secret)
        .env("CDC_CACHE_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let admin_addr = admin.parse().unwrap();
    eventually(Duration::from_secs(20), "the admin port", || async move {
        tokio::net::TcpStream::connect(admin_addr).await.ok().map(|_| ())
    })
    .await;
    assert_eq!(http_get(admin_addr, "/healthz").await.0, 200);
    let (code, body) = http_get(admin_addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("table o:") && body.contains("table customers:"),
        "{body}"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains(secret), "secret leaked: {stderr}");
    let first = stderr.lines().next().expect("log lines");
    serde_json::from_str::<serde_json::Value>(first).expect("json log lines");
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(
        stderr
            .contains("CDC_CACHE_METRICS_LISTEN) is deprecated: use --admin-listen (CDC_CACHE_ADMIN_LISTEN)"),
        "{stderr}"
    );
}
