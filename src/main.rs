//! The `writ` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use writ::config::Config;

#[path = "cli/dlq.rs"]
mod dlq;
use dlq::{dlq, DlqAction};
#[path = "cli/process.rs"]
mod process;
use process::{init_logs, runtime};

/// mimalloc instead of glibc malloc: allocation was about 30 % of the CPU of
/// the daemon (a drain) and of `writ bench` (submits) in `perf` profiles
/// (docs/performance.md, session 7). Built with `no_thp`: mimalloc would
/// otherwise madvise its arena for transparent huge pages, and each purge of
/// a 64 KiB piece then costs the kernel a 2 MiB page to zero again
/// (`clear_page_erms` was 14 % of a drain's daemon CPU; without THP the drain
/// spends 40-41 µs CPU per write instead of 45-50, session 10).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Validate the config and print a one-line summary (secrets redacted).
    CheckConfig,
    /// Per partition: owner, unapplied entries, pending, oldest age; dead letters.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The namespace's partition count as recorded in Redis, against the config's.
    Partitions {
        /// Record the config's `redis.partitions` as the namespace's count: refused
        /// while a daemon runs or the recorded count's partitions hold unapplied
        /// writes. Stop every writer first.
        #[arg(long)]
        set: bool,
    },
    /// Inspect and resolve the dead-letter stream.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Re-apply retained entries (idempotent: the sequence guard skips what is applied).
    Replay {
        /// Start: a stream id (ms-seq), unix ms, a UTC time (2026-11-23T01:30:00Z), or a duration ago (90s, 15m, 2h, 1d).
        #[arg(long)]
        from: String,
        /// End (inclusive), same forms; default: each partition's newest entry when the replay starts.
        #[arg(long)]
        to: Option<String>,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
    },
    /// Refill the cache from MongoDB (never overwrites a newer cached version).
    RebuildCache {
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
        /// Only documents updated at or after this time (their `updatedDate`, or `_writ.at` for writ's own writes and deletes: collections with timestamps; the others are read whole): unix ms, a UTC time (2026-11-23T01:30:00Z), or a duration ago (90s, 15m, 2h, 1d).
        #[arg(long)]
        since: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve | Command::Bench(_)) {
        // A command whose output is piped into `head` ends quietly when the
        // reader goes away, as Unix tools do, instead of panicking on EPIPE.
        // Not for `serve` and `bench`: they must never die of a closed socket.
        // SAFETY: called before any thread starts; SIG_DFL is a valid handler.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("writ: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(&config);
    let serve = matches!(cli.command, Command::Serve);
    let rt = match runtime(serve, &config) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("writ: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut command = cli.command;
    if let Command::Bench(args) = &mut command {
        // `bench --mode drain` starts `writ serve` on the same file.
        args.config_path = cli.config.clone();
    }
    match rt.block_on(run(command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("writ: {}", said(&e));
            if serve {
                // A start-up refusal comes moments after the MongoDB driver
                // started its background tasks, and dropping the runtime
                // then can make one of them panic: the message above says
                // all there is, so leave without dropping it.
                std::process::exit(1);
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => serve(config).await,
        Command::Bench(args) => writ::bench::run(config, args).await.context("writ bench"),
        Command::Status { json } => status(config, json).await,
        Command::Partitions { set: true } => partitions_set(config).await,
        Command::Partitions { set: false } => partitions_show(config).await,
        Command::Dlq { action } => dlq(config, action).await,
        Command::Replay {
            from,
            to,
            collection,
        } => replay(config, &from, to.as_deref(), collection.as_deref()).await,
        Command::RebuildCache { collection, since } => {
            rebuild_cache(config, collection.as_deref(), since.as_deref()).await
        }
        Command::CheckConfig => {
            check_config(&config);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `writ serve`: the daemon, until SIGTERM, SIGINT or SIGHUP.
async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_watch(shutdown.clone()));
    // A task, so that the ownership loop runs on the runtime's threads
    // (`daemon.worker_threads`), not on this one besides them.
    tokio::spawn(writ::serve::serve(config, shutdown))
        .await
        .context("the writ serve task")?
        .context("writ serve")?;
    Ok(ExitCode::SUCCESS)
}

/// `writ status [--json]`.
async fn status(config: Config, json: bool) -> anyhow::Result<ExitCode> {
    let mut conn = writ::redis_conn::connect(&config, std::time::Duration::ZERO).await?;
    let names = writ::protocol::Names::new(&config.namespace);
    // The streams are the recorded count's: a table of the config's count
    // would leave partitions out (or show ones nothing writes), and pass the
    // go/no-go check without looking at them.
    let recorded = writ::partition_count::recorded(&mut conn, &names).await?;
    let mismatch = recorded.filter(|n| *n != config.partitions);
    if let Some(n) = mismatch {
        eprintln!(
            "writ: this namespace records redis.partitions = {n}, and this config says {} (daemons and clients with it are refused); the table below shows the recorded {n} partitions. Fix the config, or change the count with `writ partitions --set` (docs/operations.md)",
            config.partitions
        );
    }
    let count = recorded.unwrap_or(config.partitions);
    if count > writ::config::MAX_PARTITIONS {
        anyhow::bail!(
            "this namespace records redis.partitions = {count}, more than writ allows ({}): the record was written by hand or by something else; fix partition 0's meta hash (docs/operations.md)",
            writ::config::MAX_PARTITIONS
        );
    }
    let s = writ::status::status(&mut conn, &config.namespace, count).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", writ::status::render_table(&s));
    }
    // "0 unapplied everywhere" is a go/no-go check (before a partition-count
    // change, or a switch back to the official adapter): a partition whose
    // backlog cannot be read must not pass it.
    if !s.left_out.is_empty() {
        eprintln!(
            "writ: partitions {:?} could not be read: a key of theirs holds a value writ did not write (WRONGTYPE); find what writes under the namespace (docs/operations.md, failure table)",
            s.left_out
        );
    }
    if s.dead_letters_unreadable {
        eprintln!(
            "writ: the dead-letter stream {:?} could not be read: its key holds a value writ did not write (WRONGTYPE), so parked writes cannot be counted, and the daemon cannot park more; find what writes under the namespace (docs/operations.md, failure table)",
            names.dead_letters()
        );
    }
    if !s.left_out.is_empty() || s.dead_letters_unreadable || mismatch.is_some() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `writ partitions --set`: records the config's count.
async fn partitions_set(config: Config) -> anyhow::Result<ExitCode> {
    use writ::partition_count::Changed;
    let mut conn = writ::redis_conn::connect(&config, std::time::Duration::ZERO).await?;
    let (ns, to) = (&config.namespace, config.partitions);
    match writ::partition_count::change(&mut conn, &config).await? {
        Changed::Already => println!("namespace {ns:?} already records {to} partitions"),
        Changed::From(None) => println!("namespace {ns:?} now records {to} partitions"),
        Changed::From(Some(n)) => println!(
            "namespace {ns:?} now records {to} partitions (before: {n}); run `writ rebuild-cache` now, before daemons, writers and readers start with {to} (cache entries are named by partition, and a key's partition under {to} may hold its entry from an earlier count, older than what was acknowledged since; see docs/operations.md)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `writ partitions`: the recorded count against the config's, and the
/// partitions whose copy of it disagrees or was lost. Exit 1 when the
/// recorded count is not the config's, or a copy disagrees or was lost.
async fn partitions_show(config: Config) -> anyhow::Result<ExitCode> {
    use writ::partition_count::list;
    let mut conn = writ::redis_conn::connect(&config, std::time::Duration::ZERO).await?;
    let names = writ::protocol::Names::new(&config.namespace);
    let (ns, to) = (&config.namespace, config.partitions);
    let recorded = writ::partition_count::recorded(&mut conn, &names).await?;
    match recorded {
        Some(n) if n == to => println!("namespace {ns:?} records {n} partitions, as this config"),
        Some(n) => println!(
            "namespace {ns:?} records {n} partitions; this config says {to} (daemons and clients with it are refused)"
        ),
        None => println!(
            "namespace {ns:?} records no partition count yet (the first daemon or client records its own); this config says {to}"
        ),
    }
    let Some(n) = recorded else {
        return Ok(ExitCode::SUCCESS);
    };
    // Exit 1 for a state that refuses someone, as `writ status` does: a
    // script that checks with this command must not pass it.
    let mut code = if n == to {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    let (other, missing) = writ::partition_count::copies::disagreeing(&mut conn, &names, n).await?;
    if !other.is_empty() {
        println!(
            "partition(s) {} hold a copy of another count (a `writ partitions --set` that did not finish, or a hand edit): writers configured with {n} are refused there. Run `writ partitions --set` again",
            list(&other)
        );
    }
    if !missing.is_empty() {
        println!(
            "partition(s) {} have lost their copy of the count (a failover, say): a writer on another count is not refused there. Run `writ partitions --set` again",
            list(&missing)
        );
    }
    if !other.is_empty() || !missing.is_empty() {
        code = ExitCode::FAILURE;
    }
    Ok(code)
}

/// `writ replay --from F [--to T] [--collection C]`.
async fn replay(
    config: Config,
    from: &str,
    to: Option<&str>,
    collection: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let now = writ::protocol::wall_clock_ms();
    let parse = |s: &str, point: fn(&str, u64) -> Option<writ::protocol::Version>| {
        point(s, now).with_context(|| {
            format!("{s:?} is not a stream id (ms-seq), unix ms, a UTC time like 2026-11-23T01:30:00Z, or a duration like 15m")
        })
    };
    let from = parse(from, writ::tools::parse_point)?;
    let to = to.map(|s| parse(s, writ::tools::parse_end)).transpose()?;
    if let Some(to) = to.filter(|to| *to < from) {
        anyhow::bail!(
            "--to ({to}) is before --from ({from}): the range is empty; durations count back from now, so --from 2h --to 1m is the last two hours"
        );
    }
    let tools = writ::tools::Tools::connect(config).await?;
    let done = async {
        tools.check_collection(collection)?;
        // Replay waits through outages like the daemon; a signal stops it.
        tokio::spawn(signal_watch(tools.abort.clone()));
        let sum = tools
            .replay(from, to, collection)
            .await
            .context("replay stopped before the end of its range; it is idempotent: run it again")?;
        println!("{}", serde_json::to_string(&sum)?);
        if !sum.trimmed.is_empty() {
            eprintln!(
                "writ: warning: partitions {:?} no longer hold the whole range (retention trimmed them, or entries \
                 were deleted): writes removed from there were not replayed",
                sum.trimmed
            );
        }
        for (p, id) in &sum.started_earlier {
            eprintln!(
                "writ: partition {p} was replayed from {id}, its oldest write the daemons have not applied yet, \
                 not from --from: applied first, a write of the range would have put that older write of its key \
                 out of order"
            );
        }
        if !sum.rejected_before_range.is_empty() {
            eprintln!(
                "writ: {} entries before --from, which the daemons had not applied yet, could not apply either \
                 (`rejected_before_range` names them): the daemons park them (`writ dlq list`); they do not \
                 make the replay incomplete",
                sum.rejected_before_range.len()
            );
        }
        if sum.rejected > 0 {
            eprintln!(
                "writ: warning: {} entries were rejected, as the daemon rejects them (a bad entry, an error MongoDB \
                 gives for good, a key in another partition after a change of the count), or were parked writes a \
                 newer write of their key overtook (their letters stay): not applied. `rejections` \
                 in the summary names {} with the reason. One the daemons had not applied is parked by them \
                 (`writ dlq list`); one they applied before and MongoDB refuses now is in no dead-letter stream: \
                 fix the cause and replay its id (--from ID --to ID)",
                sum.rejected,
                if sum.rejected as usize > sum.rejections.len() {
                    format!("the first {}", sum.rejections.len())
                } else {
                    "each".to_string()
                }
            );
        }
        // A script that checks the exit code must not take a partial replay
        // for a whole one.
        if !sum.trimmed.is_empty() || sum.rejected > 0 {
            return Ok(ExitCode::from(REPLAY_INCOMPLETE));
        }
        Ok(ExitCode::SUCCESS)
    }
    .await;
    tools.close().await;
    done
}

/// `writ replay`'s exit code when it ran to the end of its range but did not
/// apply all of it (part trimmed, or entries rejected); 1 is an error, and 2
/// a usage or config error (clap's, and `Config::load`'s), which must not
/// read as "replayed, but not all of it".
const REPLAY_INCOMPLETE: u8 = 3;

/// `writ rebuild-cache [--collection C] [--since S]`.
async fn rebuild_cache(
    config: Config,
    collection: Option<&str>,
    since: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let since = since
        .map(|s| {
            writ::tools::parse_point(s, writ::protocol::wall_clock_ms())
                .map(|v| v.ms)
                .with_context(|| {
                    format!("--since {s:?}: give unix ms, a UTC time (2026-11-23T01:30:00Z) or a duration ago (90s, 15m, 2h, 1d)")
                })
        })
        .transpose()?;
    let tools = writ::tools::Tools::connect(config).await?;
    let done = async {
        tools.check_collection(collection)?;
        tokio::spawn(signal_watch(tools.abort.clone()));
        const AGAIN: &str = "rebuild-cache stopped before the end; it never moves a cache entry backwards: run it again";
        let sum = tokio::select! {
            sum = tools.rebuild_cache(collection, since) => sum.context(AGAIN)?,
            _ = tools.abort.cancelled() => anyhow::bail!("{AGAIN} (stopped by a signal)"),
        };
        println!("{}", serde_json::to_string(&sum)?);
        Ok(ExitCode::SUCCESS)
    }
    .await;
    tools.close().await;
    done
}

/// `writ check-config`: a one-line summary, secrets redacted.
fn check_config(config: &Config) {
    let tls = &config.redis_tls;
    let mut redis_tls = String::new();
    if let Some(ca) = &tls.ca_file {
        redis_tls += &format!(" (CA {})", ca.display());
    }
    if let Some(cert) = &tls.cert_file {
        redis_tls += &format!(" (client certificate {})", cert.display());
    }
    if let Some(key) = &tls.key_file {
        // The path only: the key itself is never printed.
        redis_tls += &format!(" (client key {})", key.display());
    }
    if config.redis_cluster {
        redis_tls = format!(" (cluster){redis_tls}");
    }
    if config.min_replicas_acked > 0 {
        redis_tls += &format!(
            " (min_replicas_acked {}, within {} ms)",
            config.min_replicas_acked,
            config.replica_ack_timeout.as_millis()
        );
    }
    println!(
        "config ok: {} partitions, {} collections, redis {}{redis_tls}, mongodb {} / {}",
        config.partitions,
        config.collections.len(),
        writ::redis_conn::redacted_urls(config),
        writ::config::redact_url(&config.mongodb_uri),
        config.database
    );
}

async fn signal_watch(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    // SIGHUP too: its default action ends the process at once, mid-round.
    // It comes when the terminal `writ serve` runs in goes away, or from the
    // kernel to a stopped daemon whose process group is orphaned; writ has
    // nothing to reload, so it drains and exits as on SIGTERM.
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = hup.recv() => tracing::info!("SIGHUP received"),
    }
    shutdown.cancel();
}

/// An error and its causes, as one line; a cause of writ's own error is
/// left out: writ's errors already say it (a driver's error shortened, its
/// topology dump and server reply bytes left out), and `{:#}` would print it
/// again in full.
fn said(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        parts.push(cause.to_string());
        if cause.downcast_ref::<writ::Error>().is_some() {
            break;
        }
    }
    parts.join(": ")
}
