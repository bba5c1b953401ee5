//! The baseline: the pattern writ replaces, run with the same writers, keys,
//! zipf and payload on the same servers. Each write is an awaited
//! `findOneAndUpdate` upsert on the unique key (returnDocument After, the
//! daemon's write concern), then a Redis `SET` of the document, as the
//! official backtest-kit adapter does. It writes to `<collection>_direct` so
//! it never touches writ's data.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, ReturnDocument};

use super::{bench_key, new_hist, BenchArgs, Figures, Zipf};
use crate::config::{CollectionConfig, Config};
use crate::error::Result;

/// The direct pattern's writes that failed (an upsert or a `SET`), which its
/// figures leave out. Concurrent upserts of a key not yet stored race: on
/// MongoDB the loser gets E11000 (as `@backtest-kit/mongo`'s callers would);
/// on SecantusDB its `findAndModify` can also return no document.
#[derive(Default)]
pub(super) struct Failed {
    /// How many.
    pub count: u64,
    /// The first one's error.
    pub first: Option<String>,
}

/// Runs `args.writes` writes (or `--duration`) of the direct pattern.
pub(super) async fn run(
    config: &Config,
    coll: &CollectionConfig,
    args: &BenchArgs,
) -> Result<(Figures, Failed)> {
    let target = direct_collection(config, coll, args.writers).await?;
    let redis = crate::redis_conn::connect(config, Duration::ZERO).await?;
    let zipf = Arc::new(Zipf::new(args.keys.max(1), args.zipf));
    let pad = "x".repeat(args.payload);
    let issued = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(new_hist()));
    let failed = Arc::new(Mutex::new(Failed::default()));
    warm_up(&target, &redis, config, coll, args).await;
    let (deadline, total) = super::load::stop(args, args.writes);
    let pace = super::load::Pace::start(args);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.writers.max(1) {
        let (target, zipf, pad, issued, hist, failed, key_fields, ns, pace) = (
            target.clone(),
            zipf.clone(),
            pad.clone(),
            issued.clone(),
            hist.clone(),
            failed.clone(),
            coll.key.clone(),
            config.namespace.clone(),
            pace.clone(),
        );
        let mut redis = redis.clone();
        tasks.spawn(async move {
            let mut local = new_hist();
            while let Some(n) = super::load::next_write(&issued, deadline, total) {
                let key = bench_key(&key_fields, zipf.sample(&mut rand::rng()));
                let t = super::load::Pace::due(&pace, n).await;
                let payload = doc! {"n": n as i64, "writer": w as i64, "pad": &pad};
                match write(&target, &mut redis, &ns, key, payload).await {
                    Ok(()) => {
                        let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => note_failure(&failed, e),
                }
            }
            let _ = hist.lock().expect("lock").add(&local);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    crate::apply::close_client(target.client().clone()).await;
    let hist = hist.lock().expect("lock").clone();
    let failed = std::mem::take(&mut *failed.lock().expect("lock"));
    Ok((
        Figures {
            ops: hist.len(),
            elapsed,
            hist,
            lag: super::load::Pace::lag(&pace),
        },
        failed,
    ))
}

/// Before the clock starts, every writer makes one untimed write of a key of
/// its own (outside the measured keys), all at once: each holds a pooled
/// connection while it waits at the server, so the pool opens most of one
/// per writer now (the driver opens two at a time, and hands a returned
/// connection to the next waiter) instead of during the timed run, where
/// those handshakes would queue behind the first upserts and land in
/// direct's latency; the pool's `min_pool_size` opens the rest in the
/// background. writ's side is warm already (its Redis connections open,
/// the daemon running). Failures here are left to the timed run to meet
/// and count.
async fn warm_up(
    target: &mongodb::Collection<Document>,
    redis: &crate::redis_conn::Conn,
    config: &Config,
    coll: &CollectionConfig,
    args: &BenchArgs,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.writers.max(1) {
        let (target, mut redis, ns) = (target.clone(), redis.clone(), config.namespace.clone());
        let key = bench_key(&coll.key, args.keys.max(1) + w);
        tasks.spawn(async move {
            let _ = write(&target, &mut redis, &ns, key, doc! {"warm": true}).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The direct pattern's collection (`<name>_direct`), with the daemon's
/// write concern and a unique index on the key fields; a pool for `writers`.
async fn direct_collection(
    config: &Config,
    coll: &CollectionConfig,
    writers: usize,
) -> Result<mongodb::Collection<Document>> {
    let mut opts = ClientOptions::parse(&config.mongodb_uri).await?;
    opts.max_pool_size = Some(writers.max(1) as u32 + 2);
    opts.min_pool_size = Some(writers.max(1) as u32);
    let client = mongodb::Client::with_options(opts)?;
    let target = client
        .database(&config.database)
        .collection_with_options::<Document>(
            &format!("{}_direct", coll.name),
            mongodb::options::CollectionOptions::builder()
                .write_concern(crate::apply::write_concern(config))
                .build(),
        );
    let keys: Document = coll
        .key
        .iter()
        .map(|k| (k.clone(), Bson::Int32(1)))
        .collect();
    target
        .create_index(
            mongodb::IndexModel::builder()
                .keys(keys)
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await?;
    Ok(target)
}

/// One write of the direct pattern: the awaited `findOneAndUpdate` upsert,
/// then a Redis `SET` of the stored document.
async fn write(
    target: &mongodb::Collection<Document>,
    redis: &mut crate::redis_conn::Conn,
    ns: &str,
    key: Document,
    payload: Document,
) -> std::result::Result<(), String> {
    let stored = target
        .find_one_and_update(key, doc! {"$set": {"payload": payload, "removed": false}})
        .upsert(true)
        .return_document(ReturnDocument::After)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the upsert returned no document".to_string())?;
    let bytes = mongodb::bson::to_vec(&stored).unwrap_or_default();
    let cache_key = format!(
        "{ns}:direct:{}",
        stored
            .get_object_id("_id")
            .map(|o| o.to_hex())
            .unwrap_or_default()
    );
    redis::cmd("SET")
        .arg(cache_key)
        .arg(bytes)
        .query_async::<()>(redis)
        .await
        .map_err(|e| e.to_string())
}

fn note_failure(failed: &Mutex<Failed>, error: String) {
    let mut f = failed.lock().expect("lock");
    f.count += 1;
    f.first.get_or_insert(error);
}

/// A cache entry's `v`, `doc` and `gone`, as `HMGET` returns them.
type CacheEntry = (Option<String>, Option<Vec<u8>>, Option<String>);

/// The read baseline: a plain Redis `HMGET` of the same cache entries, with
/// the same readers, keys and zipf, on a connection of the same kind. It is
/// the floor of a cache-hit read on this Redis and this machine (the adapter
/// writ replaces reads its cache with one `GET`, then parses the value).
pub(super) async fn reads(
    config: &Config,
    coll: &CollectionConfig,
    args: &BenchArgs,
) -> Result<Figures> {
    let redis = crate::redis_conn::connect(config, Duration::ZERO).await?;
    let names = crate::protocol::Names::new(&config.namespace);
    let entries: Vec<String> = (0..args.keys.max(1))
        .map(|k| {
            let key = crate::protocol::Key::from_document(&bench_key(&coll.key, k), coll)?;
            let p = key.partition(&coll.name, config.partitions);
            Ok(names.cache(p, &coll.name, &key.canonical()))
        })
        .collect::<Result<_>>()?;
    let entries = Arc::new(entries);
    Ok(super::timed_reads(args, move |k| {
        let (mut redis, entries) = (redis.clone(), entries.clone());
        async move {
            let got: redis::RedisResult<CacheEntry> = redis::cmd("HMGET")
                .arg(&entries[k])
                .arg("v")
                .arg("doc")
                .arg("gone")
                .query_async(&mut redis)
                .await;
            got.is_ok()
        }
    })
    .await)
}
