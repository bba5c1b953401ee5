//! `writ bench`: a load generator through the real client
//! ([`load`](mod@load)). It drives writers over a zipf-skewed key set, shows
//! progress, prints throughput and latency percentiles, and finally checks
//! that MongoDB and the cache hold the last value written to every key. A
//! mismatch fails the run.
//!
//! Modes: `sync` (write and wait for the ack), `submit` (fire-and-forget,
//! then the time the daemon needs to drain), `read` (cache-hit reads),
//! `drain` (a preloaded backlog against the server's ceiling, [`drain`]). With
//! `--baseline direct` the same load also runs through the pattern writ
//! replaces ([`direct`]), in the same run, and the ratio is printed. With
//! `--metrics` the daemon's CPU per applied write and its RSS are read from
//! its `/metrics` ([`daemon`]).

mod daemon;
mod direct;
mod drain;
mod load;
mod verify;

use load::{load, reads, timed_reads, Plan};
use verify::verify;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use mongodb::bson::{Bson, Document};
use rand::Rng;

use crate::config::{Config, WriteMode};
use crate::error::{Error, Result};
use crate::protocol::Version;
use crate::Writ;

/// Flags of `writ bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 200)]
    pub keys: usize,
    /// Total writes (ignored with --duration); with --mode read, the reads.
    #[arg(long, default_value_t = 2000)]
    pub writes: u64,
    /// Run for this many seconds instead of a count (sync and submit; a
    /// read bench reads --writes times).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Open loop (sync and submit): issue this many writes a second in all,
    /// write n due at n / rate seconds whoever takes it, each latency counted
    /// from its due time; the direct baseline runs the same schedule. With
    /// --duration, rate × duration writes. Without it, a closed loop: each
    /// writer writes again as soon as its last write returns.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Zipf exponent of the key choice (0 = uniform).
    #[arg(long, default_value_t = 0.99)]
    pub zipf: f64,
    /// Payload padding in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Collection to write (`replace` mode, `payload` layout); default: `bench`,
    /// else the first `replace` collection by name.
    #[arg(long)]
    pub collection: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// `sync`, `submit`, `read` or `drain`.
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    pub mode: Mode,
    /// `direct`: also run the pattern writ replaces (an awaited
    /// `findOneAndUpdate` upsert, then a Redis `SET`) on the same servers.
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
    /// The daemon's metrics URL (e.g. http://127.0.0.1:9108/metrics), to
    /// report its CPU per applied write and its RSS.
    #[arg(long)]
    pub metrics: Option<String>,
    /// With `--mode drain`: run no daemon in this process. After the preload
    /// and the first half of the ceiling, print a line starting `  waiting`,
    /// then wait for this many `writ serve` processes, started by you on that
    /// line (not earlier: the ceiling must run alone), and time the drain
    /// from the first one's arrival (scripts/scaleout does this).
    #[arg(long)]
    pub external: Option<usize>,
    /// The `--config` given to `writ` (not a flag of `bench`): `--mode drain`
    /// starts its `writ serve` child on the same file.
    #[arg(skip)]
    pub config_path: Option<std::path::PathBuf>,
}

/// What the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `write`: submit and wait for the ack.
    Sync,
    /// `submit` only; then wait for the daemon to drain.
    Submit,
    /// Cache-hit reads of keys written first.
    Read,
    /// Preload `--writes` puts on distinct keys with no daemon running, then
    /// start `writ serve` as a child process and time the drain against the
    /// server's own bulk-upsert ceiling.
    Drain,
}

/// A baseline run in the same process, on the same servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// Awaited `findOneAndUpdate` upsert on the unique key, then Redis `SET`;
    /// with `--mode read`, a plain Redis `HMGET` of the same cache entries.
    Direct,
}

/// Throughput and latency of one measured run.
#[derive(Debug, Clone)]
pub(crate) struct Figures {
    pub ops: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    /// A paced run: the latest a write started after it was due.
    pub lag: Option<Duration>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    /// With `--rate`: a line when the run fell behind its schedule (a write
    /// started [`BEHIND`] or more after it was due: every writer was busy).
    fn behind(&self, what: &str, rate: Option<f64>) {
        if let (Some(rate), Some(lag)) = (rate, self.lag) {
            if lag >= BEHIND {
                println!(
                    "  {what:<10} fell behind the offered {rate:.0}/s (a write started up to {:.0} ms after it was due; {:.0}/s done); its latencies include the wait",
                    lag.as_secs_f64() * 1000.0,
                    self.rate()
                );
            }
        }
    }
    fn print(&self, what: &str) {
        // Under 10,000 samples p99.9 is one of the few worst: not printed.
        let tail = if self.ops >= 10_000 {
            format!("  p99.9 {:.2} ms", self.ms(0.999))
        } else {
            String::new()
        };
        println!(
            "  {what:<10} {:.0}/s  p50 {:.2} ms  p99 {:.2} ms{tail}  ({} in {:.2} s)",
            self.rate(),
            self.ms(0.5),
            self.ms(0.99),
            self.ops,
            self.elapsed.as_secs_f64()
        );
    }
}

/// A paced run that started a write this late fell behind its schedule
/// (well past a timer's lateness on a loaded machine).
const BEHIND: Duration = Duration::from_millis(100);

pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds")
}

/// Inverse-CDF zipf sampler over `0..n`.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

fn bench_key(coll_key: &[String], i: usize) -> Document {
    coll_key
        .iter()
        .enumerate()
        .map(|(n, f)| {
            (
                f.clone(),
                Bson::String(if n == 0 {
                    format!("bench-{i:06}")
                } else {
                    "bench".into()
                }),
            )
        })
        .collect()
}

/// The last version written per key index, with its value `n`.
type Last = Arc<Mutex<HashMap<usize, (Version, u64)>>>;

fn pick_collection(config: &Config, args: &BenchArgs) -> Result<crate::config::CollectionConfig> {
    let coll = match &args.collection {
        Some(n) => config.collection(n).cloned().ok_or_else(|| {
            Error::Config(format!("--collection {n:?} is not declared in the config"))
        })?,
        None => config
            .collection("bench")
            .or_else(|| {
                config
                    .collections
                    .values()
                    .find(|c| c.mode == WriteMode::Replace)
            })
            .cloned()
            .ok_or_else(|| Error::Config("no replace collection to bench".into()))?,
    };
    if coll.mode != WriteMode::Replace || coll.layout != crate::config::Layout::Payload {
        return Err(Error::Config(format!(
            "--collection {:?} must be a replace collection with the payload layout",
            coll.name
        )));
    }
    Ok(coll)
}

/// Runs the benchmark; exit code 1 if verification fails.
pub async fn run(config: Config, args: BenchArgs) -> Result<ExitCode> {
    check_rate(&args)?;
    let coll = pick_collection(&config, &args)?;
    if args.mode == Mode::Drain {
        println!(
            "writ bench --mode drain: {} puts on distinct keys, {} B payload, collection {:?}",
            args.writes, args.payload, coll.name
        );
        return drain::run(config, coll, &args).await;
    }
    let writ = Writ::connect(config.clone()).await?;
    let done = measure_and_verify(&writ, &config, &coll, &args).await;
    writ.close().await;
    done
}

/// `--rate` is a positive number of writes a second, for the modes that
/// write at a pace (sync, submit).
fn check_rate(args: &BenchArgs) -> Result<()> {
    match args.rate {
        Some(r) if !(r.is_finite() && r > 0.0) => Err(Error::Config(format!(
            "--rate {r} must be a positive number of writes a second"
        ))),
        Some(_) if matches!(args.mode, Mode::Read | Mode::Drain) => Err(Error::Config(
            "--rate paces writes: give it with --mode sync or --mode submit".into(),
        )),
        _ => Ok(()),
    }
}

/// [`run`] with its handle: the load, the baseline, the daemon's figures
/// and the verification.
async fn measure_and_verify(
    writ: &Writ,
    config: &Config,
    coll: &crate::config::CollectionConfig,
    args: &BenchArgs,
) -> Result<ExitCode> {
    let last: Last = Arc::default();
    println!(
        "writ bench --mode {}: {} writers, {} keys (zipf {}), {} B payload, collection {:?}",
        clap::ValueEnum::to_possible_value(&args.mode)
            .map_or_else(String::new, |v| v.get_name().to_string()),
        args.writers,
        args.keys,
        args.zipf,
        args.payload,
        coll.name
    );
    if let Some(rate) = args.rate {
        println!(
            "  paced      {rate:.0} writes/s offered by {} writers (open loop): each latency counts from its write's due time",
            args.writers
        );
    }
    // The direct pattern's writes go in two halves, one before writ's run
    // and one after, so that neither side alone meets the servers' drift
    // over the run (collections and the AOF grow), as the drain splits its
    // ceiling. (Reads compare with writ's own cached keys: after only.)
    let direct_first = match (args.baseline, args.mode) {
        (Some(Baseline::Direct), m) if m != Mode::Read => {
            Some(direct::run(config, coll, &half(args)).await?)
        }
        _ => None,
    };
    // Sampled around writ's run only: the daemon idles through the
    // baseline, and its idle CPU is not the writes' cost.
    let before = daemon::sample(args.metrics.as_deref()).await;
    let (figures, errors, drain) = measure(writ, coll, args, &last).await?;
    let after = daemon::sample(args.metrics.as_deref()).await;
    if let Some(Baseline::Direct) = args.baseline {
        baseline(config, coll, args, &figures, drain, direct_first).await?;
    }
    // A read bench writes only its prefill: CPU per write means nothing there.
    if let (Some(b), Some(a), false) = (before, after, args.mode == Mode::Read) {
        let (applied, cpu) = (a.applied - b.applied, a.cpu_seconds - b.cpu_seconds);
        if applied >= 1.0 && cpu >= 0.0 {
            // `process_cpu_seconds_total` moves in clock ticks (10 ms here).
            println!(
                "  daemon     {:.1} µs CPU per applied write ({applied:.0} applied), RSS {:.1} MiB",
                cpu * 1e6 / applied,
                a.rss_bytes / (1024.0 * 1024.0)
            );
        } else {
            // A daemon that restarted (its counters start over) or applied
            // nothing of this run (another namespace's `/metrics`).
            println!(
                "  daemon     no CPU per write: its counters went back or it applied nothing in this run \
                 (did it restart, or is --metrics another daemon's?); RSS {:.1} MiB",
                a.rss_bytes / (1024.0 * 1024.0)
            );
        }
    }
    let last = last.lock().expect("lock").clone();
    let mismatches = verify(writ.store(), config, coll, &last).await?;
    if mismatches == 0 && errors == 0 {
        println!(
            "  verify     OK: MongoDB and the cache hold the last value written to all {} keys",
            last.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "  verify     FAILED: {mismatches} of {} keys differ, {errors} writes failed",
            last.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Runs the measured part of a sync, submit or read bench and prints it;
/// returns its figures, the writes that failed, and (submit) the time the
/// daemon took to drain after the last submit.
async fn measure(
    writ: &Writ,
    coll: &crate::config::CollectionConfig,
    args: &BenchArgs,
    last: &Last,
) -> Result<(Figures, u64, Option<Duration>)> {
    let handle = writ.collection(&coll.name)?;
    let plan = Plan {
        wait: args.mode != Mode::Submit,
        total: args.writes,
        each_key_once: false,
    };
    Ok(match args.mode {
        Mode::Sync => {
            let (f, e) = load(&handle, coll, args, last, plan).await;
            f.print("acked");
            f.behind("acked", args.rate);
            (f, e, None)
        }
        Mode::Submit => {
            let (f, e) = load(&handle, coll, args, last, plan).await;
            f.print("accepted");
            f.behind("accepted", args.rate);
            let t = Instant::now();
            writ.sync(Duration::from_secs(600)).await?;
            let drain = t.elapsed();
            println!(
                "  drained    {:.2} s after the last submit; applied {:.0} writes/s over the whole run",
                drain.as_secs_f64(),
                f.ops as f64 / (f.elapsed + drain).as_secs_f64()
            );
            (f, e, Some(drain))
        }
        Mode::Read => {
            // Every key once, so that every read is a cache hit (a key never
            // written would read through to MongoDB).
            let prefill = Plan {
                total: args.keys as u64,
                each_key_once: true,
                ..plan
            };
            let (_, e) = load(&handle, coll, args, last, prefill).await;
            let f = reads(&handle, coll, args).await;
            f.print("reads");
            (f, e, None)
        }
        Mode::Drain => unreachable!("run() hands drain to drain::run"),
    })
}

/// `args` for one half of the direct pattern's run: half the writes, or
/// half the duration.
fn half(args: &BenchArgs) -> BenchArgs {
    let mut half = args.clone();
    half.writes = (args.writes / 2).max(1);
    half.duration = args.duration.map(|d| (d / 2).max(1));
    // Paced: half of the writes writ's schedule issues (rate × duration), so
    // that the halves together run writ's schedule, not whole seconds each.
    if args.rate.is_some() && args.duration.is_some() {
        half.writes = (load::stop(args, args.writes).1 / 2).max(1);
        half.duration = None;
    }
    half
}

/// The baseline of the same run (`--baseline direct`) and the ratio. For
/// submit (`drain`: how long the daemon took after the last submit) the
/// throughput ratio is of accepted writes, and a second one of the writes
/// applied over the whole run (to the end of the drain), against direct's
/// durable writes. `first`: the half of the direct pattern's writes run
/// before writ's run; this runs the other half and compares writ with both.
async fn baseline(
    config: &Config,
    coll: &crate::config::CollectionConfig,
    args: &BenchArgs,
    figures: &Figures,
    drain: Option<Duration>,
    first: Option<(Figures, direct::Failed)>,
) -> Result<()> {
    let d = if args.mode == Mode::Read {
        let d = direct::reads(config, coll, args).await?;
        d.print("raw HMGET");
        d
    } else {
        let (d, failed) = match first {
            Some((before, mut failed)) => {
                let (after, more) = direct::run(config, coll, &half(args)).await?;
                let halves = format!(
                    "  direct     halves: {:.0}/s before writ's run, {:.0}/s after",
                    before.rate(),
                    after.rate()
                );
                failed.count += more.count;
                failed.first = failed.first.or(more.first);
                let mut hist = before.hist;
                let _ = hist.add(&after.hist);
                let d = Figures {
                    ops: before.ops + after.ops,
                    elapsed: before.elapsed + after.elapsed,
                    hist,
                    lag: before.lag.max(after.lag),
                };
                d.print("direct");
                println!("{halves}");
                d.behind("direct", args.rate);
                (d, failed)
            }
            None => {
                let (d, failed) = direct::run(config, coll, args).await?;
                d.print("direct");
                d.behind("direct", args.rate);
                (d, failed)
            }
        };
        if let Some(first) = failed.first {
            println!(
                "  direct     {} writes failed and are left out of its figures (first: {first})",
                failed.count
            );
        }
        d
    };
    println!(
        "  ratio      writ/direct: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x (latency: lower is better)",
        figures.rate() / d.rate().max(1e-9),
        figures.ms(0.5) / d.ms(0.5).max(1e-9),
        figures.ms(0.99) / d.ms(0.99).max(1e-9),
    );
    if let Some(drain) = drain {
        let applied = figures.ops as f64 / (figures.elapsed + drain).as_secs_f64();
        println!(
            "  ratio      the throughput and latencies above are of accepted writes (in the stream) against direct's durable ones; applied over the whole run: {:.2}x",
            applied / d.rate().max(1e-9)
        );
    }
    Ok(())
}
