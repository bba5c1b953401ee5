//! The reads backtest-kit's adapters need beyond one key: many keys in one
//! round trip (a candle range) and the live documents under a key prefix (a
//! bucket's measures, a `backtest` flag's storage rows, the log).
//! Also the cache fill after a read-through, which the one-key read shares,
//! and the cache read every read starts with, which checks the partition
//! count as admission does.

use std::collections::HashMap;

use mongodb::bson::Document;

use super::{payload_of, Collection};
use crate::apply::{doc_version, is_tombstone, key_fields};
use crate::cache::Cached;
use crate::error::{Error, Result};
use crate::protocol::{Key, Reject, RejectReason, Version};

/// What a read returns with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The version read.
    pub version: Version,
    /// The payload, or `None` if the key is soft- or hard-deleted.
    pub payload: Option<Document>,
}

impl super::Inner {
    /// The cache entries of `entries` (each with its partition) in one
    /// round trip, refused ([`Error::Config`]) when one of their partitions
    /// records another partition count than this handle's. A reader left
    /// running on the old count after `writ partitions --set` would read
    /// entries named by the old count, which no daemon updates any more, and
    /// answer a value older than an acknowledged write: so each read checks
    /// the count the partitions' meta hashes record, as each admission does
    /// (`src/lua/admit.lua`). A partition with no count recorded is not
    /// checked.
    pub(super) async fn cached(&self, entries: &[(u32, String)]) -> Result<Vec<Option<Cached>>> {
        let mut ps: Vec<u32> = entries.iter().map(|(p, _)| *p).collect();
        ps.sort_unstable();
        ps.dedup();
        let metas: Vec<String> = ps.iter().map(|&p| self.names.meta(p)).collect();
        let keys: Vec<String> = entries.iter().map(|(_, k)| k.clone()).collect();
        let (cached, counts) = self.cache.get_many_counted(&keys, &metas).await?;
        let configured = self.config.partitions;
        let other = ps.iter().zip(counts).find_map(|(&p, c)| {
            c.filter(|&recorded| recorded != configured)
                .map(|recorded| (p, recorded))
        });
        if let Some((p, recorded)) = other {
            return Err(Error::Config(format!(
                "the read was refused: the namespace now records {recorded} partitions \
                 (partition {p}'s meta hash), and this process is configured with \
                 redis.partitions = {configured}; it would read cache entries no daemon \
                 updates any more, older than acknowledged writes. The count was changed \
                 (`writ partitions --set`) while this process ran: restart it with \
                 redis.partitions = {recorded} (Node: WRIT_PARTITIONS). {}",
                crate::partition_count::UNFINISHED_CHANGE
            )));
        }
        Ok(cached)
    }

    /// [`Inner::cached`] for one entry, in partition `p`.
    pub(super) async fn cached_one(&self, p: u32, key: &str) -> Result<Option<Cached>> {
        Ok(self.cached(&[(p, key.to_string())]).await?.pop().flatten())
    }

    /// Fills the cache after a read-through (compare-and-set, never
    /// backwards). Only a shortcut for later reads: if Redis refuses it (at
    /// its `maxmemory`, say), the read still answers from MongoDB, which
    /// holds every applied write. A refusal for another reason (an ACL
    /// without the cache keys) would send every later miss to MongoDB too:
    /// that is said once per handle, as a warning. `true` when the cache
    /// holds `version` or a newer one.
    pub(super) async fn fill(&self, cache_key: &str, version: Version, doc: &Document) -> bool {
        let live = (!is_tombstone(doc)).then_some(doc);
        let Err(e) = self.cache.put_if_newer(cache_key, version, live).await else {
            return true;
        };
        let full = matches!(&e, Error::Redis(r) if crate::redis_conn::has_code(r, "OOM"));
        if full
            || self
                .fill_failed
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::debug!(key = cache_key, error = %e, "cannot fill the cache from MongoDB (a read-through answers from MongoDB; a write settled from MongoDB waits for a later look)");
        } else {
            tracing::warn!(key = cache_key, error = %e, "cannot fill the cache from MongoDB: a read-through answers from MongoDB, and a write whose ack was lost and that MongoDB holds stays unsettled (its key's reads time out) until the cache can be filled (said once per handle; check the handle's Redis ACL for the cache keys, or Redis's maxmemory)");
        }
        false
    }
}

impl Collection {
    /// Reads many keys: the cache in one pipelined round trip, every miss
    /// through one MongoDB query (then cached by compare-and-set). A key with
    /// a write of this handle still pending is read as [`Collection::read`]
    /// does (it waits for that write; all such keys together, so the call
    /// waits about `client.read_timeout_ms` at most, not that per key).
    /// `None` marks an absent key.
    pub async fn read_many(&self, keys: &[Document]) -> Result<Vec<Option<Document>>> {
        let inner = self.inner();
        let keys: Vec<Key> = keys.iter().map(|k| self.key(k)).collect::<Result<_>>()?;
        let pending: Vec<bool> = {
            let latest = inner.latest.lock().expect("lock");
            keys.iter()
                .map(|k| latest.contains_key(&(self.coll.name.clone(), k.canonical())))
                .collect()
        };
        let entries: Vec<(u32, String)> = keys
            .iter()
            .map(|k| {
                let p = k.partition(&self.coll.name, inner.config.partitions);
                (p, inner.names.cache(p, &self.coll.name, &k.canonical()))
            })
            .collect();
        let cached = inner.cached(&entries).await?;
        let mut out: Vec<Option<Option<Document>>> = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        // Keys with a write of this handle pending are read as `read` does,
        // all at once: each waits at most `client.read_timeout_ms` (and a
        // look at the streams), so the call does too, not that per key.
        let waited: Vec<usize> = (0..keys.len()).filter(|&i| pending[i]).collect();
        let mut waited = futures::future::try_join_all(waited.iter().map(|&i| {
            let key = keys[i].to_document();
            async move { self.read(&key).await }
        }))
        .await?
        .into_iter();
        for (i, c) in cached.into_iter().enumerate() {
            if pending[i] {
                out.push(Some(waited.next().expect("one read per pending key")));
                continue;
            }
            match c {
                Some(c) => out.push(Some(c.doc.as_ref().and_then(|d| payload_of(&self.coll, d)))),
                None => {
                    misses.push(i);
                    out.push(None);
                }
            }
        }
        if !misses.is_empty() {
            let wanted: Vec<Key> = misses.iter().map(|&i| keys[i].clone()).collect();
            let found = inner.store.find_many(&self.coll.name, &wanted).await?;
            let mut by_key: HashMap<String, Document> = HashMap::new();
            for doc in found {
                if let Ok(k) = Key::from_document(&key_fields(&self.coll.key, &doc), &self.coll) {
                    by_key.insert(k.canonical(), doc);
                }
            }
            for &i in &misses {
                let doc = by_key.get(&keys[i].canonical());
                if let Some(doc) = doc {
                    let version = doc_version(doc).unwrap_or_default();
                    inner.fill(&entries[i].1, version, doc).await;
                }
                out[i] = Some(doc.and_then(|d| payload_of(&self.coll, d)));
            }
        }
        Ok(out.into_iter().map(|o| o.flatten()).collect())
    }

    /// The live documents whose leading key fields equal `prefix` (a document
    /// holding exactly the first N key fields), as `(key, payload)` sorted by
    /// the remaining key fields. This handle's own pending writes to the
    /// collection are settled first.
    pub async fn list(&self, prefix: &Document) -> Result<Vec<(Document, Document)>> {
        let n = prefix.len();
        if n > self.coll.key.len() || self.coll.key[..n].iter().any(|k| !prefix.contains_key(k)) {
            return Err(Error::Rejected(Reject::new(
                RejectReason::KeyField,
                format!(
                    "a prefix of {:?} holds its first key fields {:?}; got {:?}",
                    self.coll.name,
                    self.coll.key,
                    prefix.keys().collect::<Vec<_>>()
                ),
            )));
        }
        self.settle_pending().await?;
        let docs = self
            .inner()
            .store
            .live_by_prefix(&self.coll, prefix)
            .await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| {
                let key = key_fields(&self.coll.key, &d);
                Some((key, payload_of(&self.coll, &d)?))
            })
            .collect())
    }
}
