//! The `writ` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use writ::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "writ",
    version,
    about = "Redis-fronted write-behind daemon for MongoDB"
)]
struct Cli {
    /// Config file (default: $WRIT_CONFIG, then config/writ.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: apply the streams to MongoDB.
    Serve,
    /// Generate load, report throughput and ack latency, verify the result.
    Bench(writ::bench::BenchArgs),
    /// Validate the config and print it (secrets redacted).
    CheckConfig,
}

fn init_logs(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WRIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("writ: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(&config);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("writ: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("writ: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => {
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_watch(shutdown.clone()));
            writ::serve::serve(config, shutdown)
                .await
                .context("writ serve")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => writ::bench::run(config, args).await.context("writ bench"),
        Command::CheckConfig => {
            println!(
                "config ok: {} partitions, {} collections, redis {}, mongodb {} / {}",
                config.partitions,
                config.collections.len(),
                writ::config::redact_url(&config.redis_url),
                writ::config::redact_url(&config.mongodb_uri),
                config.database
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn signal_watch(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
