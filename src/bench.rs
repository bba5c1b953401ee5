//! `writ bench`: a load generator through the real client. It drives writers
//! over a zipf-skewed key set, shows progress, prints throughput and ack
//! latency percentiles, and finally checks that MongoDB and the cache hold the
//! last acknowledged value of every key it wrote. A mismatch fails the run.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use mongodb::bson::{doc, Bson, Document};
use rand::Rng;

use crate::apply::{doc_version, Store, DOC_PAYLOAD};
use crate::cache::Cache;
use crate::config::{Config, WriteMode};
use crate::error::{Error, Result};
use crate::protocol::{Key, Names, Version};
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
    /// Total writes (ignored with --duration).
    #[arg(long, default_value_t = 2000)]
    pub writes: u64,
    /// Run for this many seconds instead of a count.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Zipf exponent of the key choice (0 = uniform).
    #[arg(long, default_value_t = 0.99)]
    pub zipf: f64,
    /// Payload padding in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Collection to write (a `replace` one); default: the first declared.
    #[arg(long)]
    pub collection: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
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

/// Runs the benchmark; exit code 1 if verification fails.
pub async fn run(config: Config, args: BenchArgs) -> Result<ExitCode> {
    let coll = match &args.collection {
        Some(n) => config.collection(n).cloned().ok_or_else(|| {
            Error::Config(format!("--collection {n:?} is not declared in the config"))
        })?,
        None => config
            .collections
            .values()
            .find(|c| c.mode == WriteMode::Replace)
            .cloned()
            .ok_or_else(|| Error::Config("no replace collection to bench".into()))?,
    };
    if coll.mode != WriteMode::Replace {
        return Err(Error::Config(format!(
            "--collection {:?} is insert_once; bench needs a replace collection",
            coll.name
        )));
    }
    let keys = args.keys.max(1);
    let writ = Writ::connect(config.clone()).await?;
    let handle = writ.collection(&coll.name)?;
    let zipf = Arc::new(Zipf::new(keys, args.zipf));
    let pad = "x".repeat(args.payload);
    let issued = Arc::new(AtomicU64::new(0));
    let last: Arc<Mutex<HashMap<usize, (Version, u64)>>> = Arc::default();
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds"),
    ));
    let errors = Arc::new(AtomicU64::new(0));
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        match args.duration {
            Some(s) => ProgressBar::new(s),
            None => ProgressBar::new(args.writes),
        }
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("template"),
    );
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
        let total = args.writes;
        tasks.spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                match deadline {
                    Some(d) if Instant::now() >= d => break,
                    None if n >= total => break,
                    _ => {}
                }
                let k = zipf.sample(&mut rand::rng());
                let key = bench_key(&key_fields, k);
                let t = Instant::now();
                let res = match handle
                    .submit(&key, &doc! {"n": n as i64, "writer": w as i64, "pad": &pad})
                    .await
                {
                    Ok(ticket) => {
                        let own = ticket.version();
                        ticket.wait().await.map(|_| own)
                    }
                    Err(e) => Err(e),
                };
                match res {
                    Ok(own) => {
                        let _ = hist
                            .lock()
                            .expect("lock")
                            .record(t.elapsed().as_micros().max(1) as u64);
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
        });
    }
    if let Some(secs) = args.duration {
        let bar = bar.clone();
        tokio::spawn(async move {
            for _ in 0..secs {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bar.inc(1);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let hist = hist.lock().expect("lock").clone();
    let acked = hist.len();
    let errors = errors.load(Ordering::Relaxed);
    println!("writ bench: {acked} writes acked, {errors} failed, {} writers, {keys} keys (zipf {}), {} B payload, collection {:?}",
        args.writers, args.zipf, args.payload, coll.name);
    println!("  elapsed     {:.2} s", elapsed.as_secs_f64());
    println!(
        "  throughput  {:.0} acked writes/s",
        acked as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  ack latency p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0
    );
    let last = last.lock().expect("lock").clone();
    let mismatches = verify(&config, &coll, &last).await?;
    if mismatches == 0 && errors == 0 {
        println!("  verify      OK: MongoDB and the cache hold the last acknowledged value of all {} keys written", last.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "  verify      FAILED: {mismatches} of {} keys differ, {errors} writes failed",
            last.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Compares MongoDB and the cache with the last acked (version, n) per key.
async fn verify(
    config: &Config,
    coll: &crate::config::CollectionConfig,
    last: &HashMap<usize, (Version, u64)>,
) -> Result<usize> {
    let store = Store::connect(config).await?;
    let cache = Cache::new(crate::redis_conn::connect(&config.redis_url, Duration::ZERO).await?);
    let names = Names::new(&config.namespace);
    let mut bad = 0;
    for (k, (version, n)) in last {
        let key = Key::from_document(&bench_key(&coll.key, *k), coll)?;
        let expect = |doc: Option<&Document>| {
            doc.and_then(|d| d.get_document(DOC_PAYLOAD).ok())
                .and_then(|p| p.get_i64("n").ok())
                == Some(*n as i64)
        };
        let stored = store.find(&coll.name, &key).await?;
        let mongo_ok =
            stored.as_ref().and_then(doc_version) == Some(*version) && expect(stored.as_ref());
        let cache_key = names.cache(
            key.partition(&coll.name, config.partitions),
            &coll.name,
            &key.canonical(),
        );
        let cached = cache.get(&cache_key).await?;
        let cache_ok = cached.as_ref().map(|c| c.version) == Some(*version)
            && expect(cached.as_ref().and_then(|c| c.doc.as_ref()));
        if !(mongo_ok && cache_ok) {
            bad += 1;
            if bad <= 5 {
                println!("  mismatch    key {} expected version {version} n={n}: mongodb ok={mongo_ok} cache ok={cache_ok}", key.canonical());
            }
        }
    }
    Ok(bad)
}
