//! The load `writ bench` drives through the real client: writers over a
//! zipf-skewed key set (sync or submit), and timed cache-hit readers. Each
//! records its latencies in a histogram; the last version written per key is
//! kept for the final verification.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use mongodb::bson::{doc, Document};

use super::{bench_key, new_hist, BenchArgs, Figures, Last, Zipf};
use crate::protocol::Version;

/// What one [`load`] does.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// Each write waits for its ack (sync), else only for the stream.
    pub wait: bool,
    /// Writes in all (unless `--duration`).
    pub total: u64,
    /// Write keys 0, 1, 2, ... in turn instead of by zipf.
    pub each_key_once: bool,
}

/// Drives `args.writers` writers for `plan.total` writes (or `--duration`).
pub(super) async fn load(
    handle: &crate::Collection,
    coll: &crate::config::CollectionConfig,
    args: &BenchArgs,
    last: &Last,
    plan: Plan,
) -> (Figures, u64) {
    // A read bench's prefill writes each key once, whatever `--duration`
    // or `--rate`.
    let (deadline, total, pace) = if plan.each_key_once {
        (None, plan.total, None)
    } else {
        let (deadline, total) = stop(args, plan.total);
        (deadline, total, Pace::start(args))
    };
    let writers = Writers {
        handle: handle.clone(),
        key_fields: Arc::new(coll.key.clone()),
        zipf: Arc::new(Zipf::new(args.keys.max(1), args.zipf)),
        pad: Arc::new("x".repeat(args.payload)),
        issued: Arc::new(AtomicU64::new(0)),
        last: last.clone(),
        hist: Arc::new(Mutex::new(new_hist())),
        errors: Arc::new(AtomicU64::new(0)),
        bar: progress(args.quiet, deadline.and(args.duration), total),
        deadline,
        pace,
        plan: Plan { total, ..plan },
    };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.writers.max(1) {
        tasks.spawn(writers.clone().run(w));
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    writers.bar.finish_and_clear();
    let hist = writers.hist.lock().expect("lock").clone();
    (
        Figures {
            ops: hist.len(),
            elapsed,
            hist,
            lag: Pace::lag(&writers.pace),
        },
        writers.errors.load(Ordering::Relaxed),
    )
}

/// What the writers of one [`load`] share.
#[derive(Clone)]
struct Writers {
    handle: crate::Collection,
    key_fields: Arc<Vec<String>>,
    zipf: Arc<Zipf>,
    pad: Arc<String>,
    /// Writes handed out so far.
    issued: Arc<AtomicU64>,
    last: Last,
    hist: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<AtomicU64>,
    bar: ProgressBar,
    deadline: Option<Instant>,
    pace: Option<Pace>,
    plan: Plan,
}

impl Writers {
    /// Writer `w`: writes until the plan's count or deadline.
    async fn run(self, w: usize) {
        let mut local = new_hist();
        while let Some(n) = next_write(&self.issued, self.deadline, self.plan.total) {
            let k = if self.plan.each_key_once {
                n as usize
            } else {
                self.zipf.sample(&mut rand::rng())
            };
            let key = bench_key(&self.key_fields, k);
            let t = Pace::due(&self.pace, n).await;
            match self.write(w, n, &key).await {
                Ok(own) => {
                    let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                    let mut last = self.last.lock().expect("lock");
                    let slot = last.entry(k).or_insert((own, n));
                    if slot.0 < own {
                        *slot = (own, n);
                    }
                    if self.deadline.is_none() {
                        self.bar.inc(1);
                    }
                }
                Err(e) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "bench write failed");
                }
            }
        }
        let _ = self.hist.lock().expect("lock").add(&local);
    }

    /// Write `n` of writer `w`, to `key`: its version once it is accepted
    /// (or acked, with `plan.wait`).
    async fn write(&self, w: usize, n: u64, key: &Document) -> crate::Result<Version> {
        let doc = doc! {"n": n as i64, "writer": w as i64, "pad": self.pad.as_str()};
        let ticket = self.handle.submit(key, &doc).await?;
        let own = ticket.version();
        if self.plan.wait {
            ticket.wait().await?;
        }
        Ok(own)
    }
}

/// Cache-hit reads of the written keys, `args.writes` of them.
pub(super) async fn reads(
    handle: &crate::Collection,
    coll: &crate::config::CollectionConfig,
    args: &BenchArgs,
) -> Figures {
    let (handle, key_fields) = (handle.clone(), Arc::new(coll.key.clone()));
    timed_reads(args, move |k| {
        let (handle, key) = (handle.clone(), bench_key(&key_fields, k));
        async move { handle.read(&key).await.is_ok() }
    })
    .await
}

/// `args.writes` reads of zipf-chosen key indexes by `args.writers` tasks,
/// each timed; `read(k)` says whether it succeeded (only those count). The
/// read of writ and the read baseline share it.
pub(super) async fn timed_reads<F, Fut>(args: &BenchArgs, read: F) -> Figures
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let zipf = Arc::new(Zipf::new(args.keys.max(1), args.zipf));
    let issued = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(new_hist()));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.writers.max(1) {
        let (read, zipf, issued, hist, total) = (
            read.clone(),
            zipf.clone(),
            issued.clone(),
            hist.clone(),
            args.writes,
        );
        tasks.spawn(async move {
            let mut local = new_hist();
            while issued.fetch_add(1, Ordering::Relaxed) < total {
                let k = zipf.sample(&mut rand::rng());
                let t = Instant::now();
                if read(k).await {
                    let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                }
            }
            let _ = hist.lock().expect("lock").add(&local);
        });
    }
    while tasks.join_next().await.is_some() {}
    let hist = hist.lock().expect("lock").clone();
    Figures {
        ops: hist.len(),
        elapsed: started.elapsed(),
        hist,
        lag: None,
    }
}

/// When each write of a paced run (`--rate`) is due: write `n` at
/// `start + n / rate`, whichever writer takes it. Its latency counts from
/// then, not from when a writer got to it, so a run that falls behind its
/// schedule shows the wait in its latencies (no coordinated omission).
#[derive(Debug, Clone)]
pub(super) struct Pace {
    start: Instant,
    rate: f64,
    /// The latest a write started after it was due, in µs: how far the run
    /// fell behind its schedule (every writer busy).
    late_us: Arc<AtomicU64>,
}

impl Pace {
    /// The schedule of `args`, starting now; `None` for a closed loop.
    pub(super) fn start(args: &BenchArgs) -> Option<Pace> {
        args.rate.map(|rate| Pace {
            start: Instant::now(),
            rate,
            late_us: Arc::default(),
        })
    }

    /// Waits until write `n` is due (a closed loop: at once); returns the
    /// instant its latency counts from.
    pub(super) async fn due(pace: &Option<Pace>, n: u64) -> Instant {
        let Some(p) = pace else {
            return Instant::now();
        };
        let due = p.start + Duration::from_secs_f64(n as f64 / p.rate);
        tokio::time::sleep_until(due.into()).await;
        let late = Instant::now().saturating_duration_since(due);
        p.late_us
            .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
        due
    }

    /// How far behind its schedule the run fell, at most (`None`: a closed
    /// loop).
    pub(super) fn lag(pace: &Option<Pace>) -> Option<Duration> {
        pace.as_ref()
            .map(|p| Duration::from_micros(p.late_us.load(Ordering::Relaxed)))
    }
}

/// How a run of `total` writes stops: `(deadline, total)` for
/// [`next_write`]. With `--duration` a closed loop stops at its deadline; a
/// paced run issues `rate × duration` writes instead, so that one that
/// falls behind still issues its whole schedule (and its latencies show
/// by how much).
pub(super) fn stop(args: &BenchArgs, total: u64) -> (Option<Instant>, u64) {
    match (args.duration, args.rate) {
        (Some(s), Some(rate)) => (None, (rate * s as f64).ceil().max(1.0) as u64),
        (Some(s), None) => (Some(Instant::now() + Duration::from_secs(s)), total),
        (None, _) => (None, total),
    }
}

/// The next write's number, or `None` when the run is over: its deadline
/// passed (`--duration`), or all `total` writes were issued. Shared by
/// writ's writers and the direct pattern's, so both stop alike.
pub(super) fn next_write(issued: &AtomicU64, deadline: Option<Instant>, total: u64) -> Option<u64> {
    let n = issued.fetch_add(1, Ordering::Relaxed);
    match deadline {
        Some(d) if Instant::now() >= d => None,
        None if n >= total => None,
        _ => Some(n),
    }
}

/// The progress bar: seconds of `timed` (a run to a deadline), else writes.
fn progress(quiet: bool, timed: Option<u64>, total: u64) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(timed.unwrap_or(total))
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("template"),
    );
    if let Some(secs) = timed {
        let bar = bar.clone();
        tokio::spawn(async move {
            for _ in 0..secs {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bar.inc(1);
            }
        });
    }
    bar
}
