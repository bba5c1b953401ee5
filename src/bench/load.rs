//! The load `writ bench` drives through the real client: writers over a
//! zipf-skewed key set (sync or submit), and timed cache-hit readers. Each
//! records its latencies in a histogram; the last version written per key is
//! kept for the final verification.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use mongodb::bson::doc;

use super::{bench_key, new_hist, BenchArgs, Figures, Last, Zipf};

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
    let Plan {
        wait,
        total,
        each_key_once,
    } = plan;
    let zipf = Arc::new(Zipf::new(args.keys.max(1), args.zipf));
    let pad = "x".repeat(args.payload);
    let issued = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(new_hist()));
    let errors = Arc::new(AtomicU64::new(0));
    let bar = progress(args, total);
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.writers.max(1) {
        let (handle, zipf, pad, issued, last, hist, errors, bar, key_fields) = (
            handle.clone(),
            zipf.clone(),
            pad.clone(),
            issued.clone(),
            last.clone(),
            hist.clone(),
            errors.clone(),
            bar.clone(),
            coll.key.clone(),
        );
        tasks.spawn(async move {
            let mut local = new_hist();
            while let Some(n) = next_write(&issued, deadline, total) {
                let k = if each_key_once {
                    n as usize
                } else {
                    zipf.sample(&mut rand::rng())
                };
                let key = bench_key(&key_fields, k);
                let t = Instant::now();
                let doc = doc! {"n": n as i64, "writer": w as i64, "pad": &pad};
                let res = match handle.submit(&key, &doc).await {
                    Ok(ticket) if wait => {
                        let own = ticket.version();
                        ticket.wait().await.map(|_| own)
                    }
                    Ok(ticket) => Ok(ticket.version()),
                    Err(e) => Err(e),
                };
                match res {
                    Ok(own) => {
                        let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                        let mut last = last.lock().expect("lock");
                        let slot = last.entry(k).or_insert((own, n));
                        if slot.0 < own {
                            *slot = (own, n);
                        }
                        if deadline.is_none() {
                            bar.inc(1);
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "bench write failed");
                    }
                }
            }
            let _ = hist.lock().expect("lock").add(&local);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let hist = hist.lock().expect("lock").clone();
    (
        Figures {
            ops: hist.len(),
            elapsed,
            hist,
        },
        errors.load(Ordering::Relaxed),
    )
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

fn progress(args: &BenchArgs, total: u64) -> ProgressBar {
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.duration.unwrap_or(total))
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("template"),
    );
    if let Some(secs) = args.duration {
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
