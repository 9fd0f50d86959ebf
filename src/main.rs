//! The `cdc-cache` binary: parse the command line, set up logging, run, map the outcome to an
//! exit code (0 done, 1 runtime failure or missing key, 2 bad configuration).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cdc_cache::cli::{Cli, Command, LogFormat};
use cdc_cache::ingest::IngestError;
use cdc_cache::listeners::Listeners;
use cdc_cache::{app, client, demo, shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match cli.command {
        Command::Serve(args) => {
            let config = match args.into_config(std::env::vars()) {
                Ok(config) => config,
                Err(e) => return fail(2, e.into()),
            };
            runtime.block_on(async move {
                let listeners = match Listeners::bind(&config).await {
                    Ok(listeners) => listeners,
                    Err(e) => return fail(2, e.into()),
                };
                let shutdown = match shutdown::on_signal() {
                    Ok(token) => token,
                    Err(e) => return fail(1, e.into()),
                };
                match app::run(config, listeners, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    // librdkafka refused an option: a configuration error like any bad flag.
                    Err(e @ app::AppError::Ingest(IngestError::KafkaOption { .. })) => fail(2, e.into()),
                    Err(e) => fail(1, e.into()),
                }
            })
        }
        Command::Demo(args) => runtime.block_on(async move {
            let shutdown = match shutdown::on_signal() {
                Ok(token) => token,
                Err(e) => return fail(1, e.into()),
            };
            match demo::run(args, std::env::vars(), shutdown).await {
                Err(demo::DemoError::Config(e)) => fail(2, e.into()),
                other => exit_code(other.map_err(Into::into)),
            }
        }),
        Command::Get(args) => runtime.block_on(async move {
            match client::get(&args).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => fail(1, e.into()),
            }
        }),
        Command::Watch(args) => runtime.block_on(async move {
            tokio::select! {
                result = client::watch(&args) => exit_code(result.map_err(Into::into)),
                // Ctrl-C or SIGTERM ends a watch normally.
                _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
            }
        }),
        Command::Status(args) => {
            runtime.block_on(async move { exit_code(client::status(&args).await.map_err(Into::into)) })
        }
        Command::Wait(args) => runtime.block_on(async move {
            match client::wait(&args).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => fail(1, e.into()),
            }
        }),
    }
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}

fn fail(code: u8, error: anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(code)
}

fn init_tracing(format: LogFormat) {
    // RUST_LOG overrides; by default our own info lines and librdkafka's warnings.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
