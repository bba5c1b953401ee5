//! `writ bench --mode drain --writes N`: the backlog an outage leaves.
//!
//! 1. Preloads N puts on N distinct keys while no daemon runs (the bench
//!    refuses to start while a daemon is a live member of the namespace).
//! 2. Starts `writ serve` (this binary, on the same config) as a child
//!    process and times it until every partition is drained (nothing
//!    undelivered or pending), with the CPU the child used.
//! 3. Measures the server's own ceiling on the same shapes: unordered
//!    `update` commands of `daemon.batch_size` guarded upserts on fresh keys
//!    of a scratch collection with the same unique index, at 1, 2, 4 and 8
//!    commands in flight (the daemon's 8 partitions each send their own);
//!    the best rate is the ceiling. Half of each level
//!    runs just before the drain and half just after, and each level's rate
//!    is taken over both halves: on a shared machine whose speed drifts, a
//!    ceiling measured only after the drain swung the ratio by ±15 %.
//! 4. Prints the drain rate as a ratio to that ceiling, and checks MongoDB
//!    and the cache on a sample of the keys.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::doc;

use super::{bench_key, verify, BenchArgs};
use crate::apply::{BulkItem, Store};
use crate::config::{CollectionConfig, Config};
use crate::error::{Error, Result};
use crate::protocol::{Key, Op, Version, Write};
use crate::Writ;

/// Concurrent submits while preloading.
const PRELOAD_IN_FLIGHT: usize = 64;

/// CPU seconds (user + system) of this process's waited-for children.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// `writ serve` processes heartbeating on the namespace now (on Redis's
/// clock, as the daemons count each other).
async fn live_daemons(config: &Config, conn: &mut crate::redis_conn::Conn) -> Result<u64> {
    let key = crate::protocol::Names::new(&config.namespace).members();
    Ok(crate::ownership::live_members(conn, &key, config.lease_ttl).await?)
}

async fn refuse_if_a_daemon_runs(config: &Config) -> Result<()> {
    let mut conn = crate::redis_conn::connect(config, Duration::ZERO).await?;
    let live = live_daemons(config, &mut conn).await?;
    if live > 0 {
        return Err(Error::Config(format!(
            "--mode drain runs the daemon itself after preloading: stop every `writ serve` on namespace {:?} first ({live} live)",
            config.namespace
        )));
    }
    Ok(())
}

/// Total unapplied entries over all partitions: one backlog script call per
/// partition (the one definition, [`crate::status::backlog`]), not the whole
/// status, since the in-process drain's CPU figure counts these polls. A
/// partition whose meta hash disagrees with its group counts at most
/// [`crate::status::COUNT_BOUND`] undelivered entries: the total is then a
/// lower bound, which is all the callers ask (is anything left?).
async fn unapplied(config: &Config, conn: &mut crate::redis_conn::Conn) -> Result<u64> {
    let names = crate::protocol::Names::new(&config.namespace);
    let mut total = 0;
    for p in 0..config.partitions {
        total += crate::status::backlog(conn, &names, p, crate::status::COUNT_BOUND)
            .await?
            .unapplied;
    }
    Ok(total)
}

/// Runs the drain bench; exit code 1 if verification fails.
pub(super) async fn run(
    config: Config,
    coll: CollectionConfig,
    args: &BenchArgs,
) -> Result<ExitCode> {
    refuse_if_a_daemon_runs(&config).await?;
    let mut conn = crate::redis_conn::connect(&config, Duration::ZERO).await?;
    let before = unapplied(&config, &mut conn).await?;
    if before > 0 {
        return Err(Error::Config(format!(
            "{before} entries are already unapplied on namespace {:?}; drain them first (run `writ serve`) so the bench times only its own",
            config.namespace
        )));
    }

    // 1. Preload, on keys no earlier run used.
    let base = (crate::protocol::wall_clock_ms() / 1000 % 100_000) as usize * 1_000_000;
    let parked_before = dead_letters(&config, &mut conn).await?;
    let writ = Writ::connect(config.clone()).await?;
    let done = preload_and_drain(&writ, &config, &coll, args, &mut conn, base, parked_before).await;
    writ.close().await;
    done
}

/// [`run`] from the preload on, with its handle (whose MongoDB side also
/// times the ceiling and verifies).
async fn preload_and_drain(
    writ: &Writ,
    config: &Config,
    coll: &CollectionConfig,
    args: &BenchArgs,
    conn: &mut crate::redis_conn::Conn,
    base: usize,
    parked_before: u64,
) -> Result<ExitCode> {
    let n = args.writes as usize;
    let handle = writ.collection(&coll.name)?;
    let pad = "x".repeat(args.payload);
    let t = Instant::now();
    let last = preload(&handle, coll, base, n, &pad).await?;
    let preload_secs = t.elapsed().as_secs_f64();
    println!("  preloaded  {n} puts on {n} distinct keys in {preload_secs:.2} s ({:.0}/s), no daemon running", n as f64 / preload_secs);

    // 3a. The first half of the server's ceiling, right before the drain.
    let half = (n.min(6000) / 2).max(1);
    let before = ceiling(writ.store(), config, coll, half, &pad).await?;

    // 2. The daemon, a child `writ serve` (or the external ones), until
    //    nothing is unapplied.
    let rate = match args.external {
        None => drain_child(config, args.config_path.as_deref(), conn, n).await?,
        Some(daemons) => drain_external(config, conn, n, daemons).await?,
    };

    // 3b. The second half, right after it.
    let after = ceiling(writ.store(), config, coll, half, &pad).await?;
    let ceiling = best_level(&before, &after);
    println!(
        "  ceiling    {:.0} upserts/s (best of 1, 2, 4, 8 commands of {} in flight)",
        ceiling.0, config.batch_size
    );
    println!(
        "  ratio      drain/ceiling {:.2}x  (commands in flight at the best: {})",
        rate / ceiling.0,
        ceiling.1
    );

    // 4. No write dead-lettered (a parked entry counts as drained, not
    //    applied), and every key checked in MongoDB and the cache (after
    //    the timed part, in batches).
    let parked = dead_letters(config, conn)
        .await?
        .saturating_sub(parked_before);
    let sample: HashMap<usize, (Version, u64)> = last.into_iter().collect();
    let bad = verify(writ.store(), config, coll, &sample).await?;
    if parked > 0 {
        println!("  verify     FAILED: {parked} writes were dead-lettered (`writ dlq list`), and the rate above counts them");
        Ok(ExitCode::FAILURE)
    } else if bad == 0 {
        println!(
            "  verify     OK: MongoDB and the cache hold all {} keys",
            sample.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("  verify     FAILED: {bad} of {} keys differ", sample.len());
        Ok(ExitCode::FAILURE)
    }
}

/// The length of the namespace's dead-letter stream.
async fn dead_letters(config: &Config, conn: &mut crate::redis_conn::Conn) -> Result<u64> {
    let dlq = crate::protocol::Names::new(&config.namespace).dead_letters();
    Ok(crate::stream::cmd::xlen(&dlq).query_async(conn).await?)
}

/// Runs `writ serve` (this binary, on the same config) as a child process
/// until nothing is unapplied; the rate. The CPU figure is the child's
/// alone, start and graceful stop included: the bench's own preload client
/// and its backlog polls are not in it.
async fn drain_child(
    config: &Config,
    config_path: Option<&std::path::Path>,
    conn: &mut crate::redis_conn::Conn,
    n: usize,
) -> Result<f64> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Config(format!("cannot find this binary to run `writ serve`: {e}")))?;
    let mut cmd = tokio::process::Command::new(&exe);
    if let Some(path) = config_path {
        cmd.arg("--config").arg(path);
    }
    cmd.arg("serve")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("WRIT_LOG").is_none() {
        // The daemon's start and partition lines would bury the bench's.
        cmd.env("WRIT_LOG", "warn");
    }
    let cpu0 = children_cpu_seconds();
    let t = Instant::now();
    let mut daemon = cmd
        .spawn()
        .map_err(|e| Error::Config(format!("cannot start `{} serve`: {e}", exe.display())))?;
    while unapplied(config, conn).await? > 0 {
        if let Some(status) = daemon
            .try_wait()
            .map_err(|e| Error::Config(e.to_string()))?
        {
            return Err(Error::Config(format!(
                "the daemon (`writ serve`) stopped during the drain ({status}); its error is above"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = t.elapsed().as_secs_f64();
    stop_child(&mut daemon).await;
    let cpu = children_cpu_seconds() - cpu0;
    let rate = n as f64 / drain;
    println!(
        "  drained    {n} in {drain:.2} s: {rate:.0} applied/s, {:.1} µs daemon CPU per applied write (`writ serve` as a child process, its start and stop included)",
        cpu * 1e6 / n as f64
    );
    Ok(rate)
}

/// SIGTERM, then waits for the graceful stop (it drains nothing here: the
/// backlog is empty); a child that outlives 30 s is killed.
async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid, which is not yet reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Waits for `daemons` external `writ serve` processes and times the drain
/// from the first one's arrival; the rate.
async fn drain_external(
    config: &Config,
    conn: &mut crate::redis_conn::Conn,
    n: usize,
    daemons: usize,
) -> Result<f64> {
    use std::io::Write as _;
    println!("  waiting    for {daemons} `writ serve` to join (start them now)");
    std::io::stdout().flush().ok();
    let waited = Instant::now();
    while live_daemons(config, conn).await? == 0 {
        if waited.elapsed() > Duration::from_secs(120) {
            return Err(Error::Config(
                "--external: no `writ serve` joined within 120 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let mut joined = 1;
    while unapplied(config, conn).await? > 0 {
        joined = joined.max(live_daemons(config, conn).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = t.elapsed().as_secs_f64();
    let rate = n as f64 / drain;
    println!(
        "  drained    {n} in {drain:.2} s: {rate:.0} applied/s ({joined} of {daemons} external daemons seen)"
    );
    Ok(rate)
}

/// Submits one put per key `base..base + n`, `PRELOAD_IN_FLIGHT` at a time.
async fn preload(
    handle: &crate::Collection,
    coll: &CollectionConfig,
    base: usize,
    n: usize,
    pad: &str,
) -> Result<Vec<(usize, (Version, u64))>> {
    let mut out = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        if tasks.len() >= PRELOAD_IN_FLIGHT {
            if let Some(r) = tasks.join_next().await {
                out.push(r.map_err(|e| Error::Encode(e.to_string()))??);
            }
        }
        let (handle, key, doc) = (
            handle.clone(),
            bench_key(&coll.key, base + i),
            doc! {"n": i as i64, "pad": pad},
        );
        tasks.spawn(async move {
            let ticket = handle.submit(&key, &doc).await?;
            Ok::<_, Error>((base + i, (ticket.version(), i as u64)))
        });
    }
    while let Some(r) = tasks.join_next().await {
        out.push(r.map_err(|e| Error::Encode(e.to_string()))??);
    }
    out.sort_by_key(|(k, _)| *k);
    Ok(out)
}

/// One level of the ceiling: commands in flight, upserts, seconds.
type Level = (usize, usize, f64);

/// Each level's rate over both halves (printed), and the best: (upserts/s,
/// commands in flight).
fn best_level(before: &[Level], after: &[Level]) -> (f64, usize) {
    let mut best = (0.0, 1);
    for (&(in_flight, w1, t1), &(_, w2, t2)) in before.iter().zip(after) {
        let rate = (w1 + w2) as f64 / (t1 + t2);
        println!(
            "  ceiling    {in_flight} in flight: {rate:.0} upserts/s (before the drain {:.0}, after {:.0})",
            w1 as f64 / t1,
            w2 as f64 / t2
        );
        if rate > best.0 {
            best = (rate, in_flight);
        }
    }
    best
}

/// `update` commands of `batch_size` guarded upserts on fresh keys, at 1, 2,
/// 4 and 8 commands in flight: `per_level` upserts each, timed.
async fn ceiling(
    store: &Store,
    config: &Config,
    coll: &CollectionConfig,
    per_level: usize,
    pad: &str,
) -> Result<Vec<Level>> {
    let store = Arc::new(store.clone());
    let scratch = CollectionConfig {
        name: format!("{}_writ_ceiling", coll.name),
        ..coll.clone()
    };
    store.raw_collection(&scratch.name).drop().await.ok();
    store.ensure_indexes([&scratch]).await?;
    let mut levels = Vec::new();
    let mut next_key = 0usize;
    for in_flight in [1usize, 2, 4, 8] {
        let writes: Vec<Write> = (next_key..next_key + per_level)
            .map(|i| {
                Ok(Write {
                    collection: scratch.name.clone(),
                    key: Key::from_document(&bench_key(&scratch.key, i), &scratch)?,
                    op: Op::Put,
                    doc: Some(doc! {"n": i as i64, "pad": pad}),
                    reply: None,
                })
            })
            .collect::<Result<_>>()?;
        next_key += per_level;
        let writes = Arc::new(writes);
        let chunks: Vec<std::ops::Range<usize>> = (0..per_level)
            .step_by(config.batch_size)
            .map(|s| s..(s + config.batch_size).min(per_level))
            .collect();
        let queue = Arc::new(std::sync::Mutex::new(chunks));
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..in_flight {
            let (store, writes, queue, scratch) = (
                store.clone(),
                writes.clone(),
                queue.clone(),
                scratch.clone(),
            );
            tasks.spawn(async move {
                loop {
                    let Some(range) = queue.lock().expect("lock").pop() else {
                        return Ok::<_, Error>(());
                    };
                    let items: Vec<BulkItem<'_>> = writes[range.clone()]
                        .iter()
                        .zip(range)
                        .map(|(w, i)| BulkItem {
                            coll: &scratch,
                            write: w,
                            version: Version {
                                ms: 1,
                                seq: i as u64,
                            },
                        })
                        .collect();
                    store.upsert_only(&items).await?;
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| Error::Encode(e.to_string()))??;
        }
        levels.push((in_flight, per_level, t.elapsed().as_secs_f64()));
    }
    store.raw_collection(&scratch.name).drop().await.ok();
    Ok(levels)
}
