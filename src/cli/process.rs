//! The process around a command: its logs and its async runtime, set up
//! from the config before the command runs.

use writ::config::{Config, LogFormat};

/// Logs to stderr, as text or JSON, filtered by `daemon.log_level`.
pub fn init_logs(config: &Config) {
    // `WRIT_LOG`, when set, is in `log_level` already, checked (config::ENV_LOG).
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    // Colours only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The async runtime: `writ serve` runs on `daemon.worker_threads` threads
/// (docs/operations.md, "Threads"); the other commands on one per core.
pub fn runtime(serve: bool, config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if serve {
        b.worker_threads(config.worker_threads);
        if let Some(v) = std::env::var_os("TOKIO_WORKER_THREADS") {
            // Read before session 48; an operator who set it must learn that
            // it no longer counts.
            tracing::warn!(
                TOKIO_WORKER_THREADS = %v.to_string_lossy(),
                worker_threads = config.worker_threads,
                "writ serve no longer reads TOKIO_WORKER_THREADS: set daemon.worker_threads in the config instead"
            );
        }
    }
    b.enable_all().build()
}
