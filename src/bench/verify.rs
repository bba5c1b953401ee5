//! The bench's last step: MongoDB and the cache against the last write each
//! key was acked with (its version and its `n`), for every key, a few
//! hundred keys per query and per cache round trip.

use std::collections::HashMap;
use std::time::Duration;

use mongodb::bson::Document;

use super::bench_key;
use crate::apply::{doc_version, Store, DOC_PAYLOAD};
use crate::cache::Cache;
use crate::config::Config;
use crate::error::Result;
use crate::protocol::{Key, Names, Version};

/// Compares MongoDB and the cache with the last acked (version, n) per key.
pub(super) async fn verify(
    store: &Store,
    config: &Config,
    coll: &crate::config::CollectionConfig,
    last: &HashMap<usize, (Version, u64)>,
) -> Result<usize> {
    let cache = Cache::new(crate::redis_conn::connect(config, Duration::ZERO).await?);
    let names = Names::new(&config.namespace);
    let expect = |doc: Option<&Document>, n: u64| {
        doc.and_then(|d| d.get_document(DOC_PAYLOAD).ok())
            .and_then(|p| p.get_i64("n").ok())
            == Some(n as i64)
    };
    let canonical_of = |d: &Document| -> Option<String> {
        let fields: Document = coll
            .key
            .iter()
            .filter_map(|f| d.get(f).map(|v| (f.clone(), v.clone())))
            .collect();
        Key::from_document(&fields, coll)
            .ok()
            .map(|k| k.canonical())
    };
    let all: Vec<(&usize, &(Version, u64))> = last.iter().collect();
    let mut bad = 0;
    // Every key, a few hundred per MongoDB query and per cache round trip.
    for chunk in all.chunks(256) {
        let keys = chunk
            .iter()
            .map(|(k, _)| Key::from_document(&bench_key(&coll.key, **k), coll))
            .collect::<std::result::Result<Vec<Key>, _>>()?;
        let stored: HashMap<String, Document> = store
            .find_many(&coll.name, &keys)
            .await?
            .into_iter()
            .filter_map(|d| canonical_of(&d).map(|c| (c, d)))
            .collect();
        let cache_keys: Vec<String> = keys
            .iter()
            .map(|key| {
                names.cache(
                    key.partition(&coll.name, config.partitions),
                    &coll.name,
                    &key.canonical(),
                )
            })
            .collect();
        let cached = cache.get_many(&cache_keys).await?;
        for (((_, (version, n)), key), cached) in chunk.iter().zip(&keys).zip(cached) {
            let stored = stored.get(&key.canonical());
            let mongo_ok = stored.and_then(doc_version) == Some(*version) && expect(stored, *n);
            let cache_ok = cached.as_ref().map(|c| c.version) == Some(*version)
                && expect(cached.as_ref().and_then(|c| c.doc.as_ref()), *n);
            if !(mongo_ok && cache_ok) {
                bad += 1;
                if bad <= 5 {
                    println!("  mismatch    key {} expected version {version} n={n}: mongodb ok={mongo_ok} cache ok={cache_ok}", key.canonical());
                }
            }
        }
    }
    Ok(bad)
}
