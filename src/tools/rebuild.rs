//! `writ rebuild-cache`: refills the cache from MongoDB after Redis lost data,
//! and refreshes it after another program (the official `@backtest-kit/mongo`
//! adapter, during a switch back to writ) wrote MongoDB directly. Every entry
//! goes through the compare-and-set, so a newer cached version is never
//! overwritten; the same version is replaced with MongoDB's document, which is
//! the truth for it ([`crate::cache::Cache::refresh`]).

use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document, RawDocumentBuf};

use super::Tools;
use crate::apply::{doc_version, is_tombstone, key_fields, DOC_UPDATED, DOC_WRIT};
use crate::config::CollectionConfig;
use crate::error::{Error, Result};
use crate::protocol::Key;

/// What a rebuild did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RebuildSummary {
    /// Documents read.
    pub read: u64,
    /// Cache entries written.
    pub stored: u64,
    /// Cache entries newer than MongoDB's document (a write applied since).
    pub kept: u64,
    /// Documents without a usable key (the key fields missing or of a type
    /// a key cannot hold).
    pub skipped: u64,
    /// With `since`: the collections read whole, having no `updatedDate`
    /// to select by (`timestamps = false`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub whole: Vec<String>,
}

impl Tools {
    /// Rebuilds the cache of one collection, or of all. With `since` (unix
    /// ms), only the documents whose `updatedDate` or `_writ.at` (writ's
    /// time of its last write, tombstones included) is that time or later,
    /// in the collections with `timestamps`; the others are read whole.
    pub async fn rebuild_cache(
        &self,
        collection: Option<&str>,
        since: Option<u64>,
    ) -> Result<RebuildSummary> {
        let mut sum = RebuildSummary::default();
        let budget = self.config.max_in_flight_bytes.clamp(1, u32::MAX as usize);
        let bytes = std::sync::Arc::new(tokio::sync::Semaphore::new(budget));
        let colls: Vec<_> = self
            .config
            .collections
            .values()
            .filter(|c| collection.is_none_or(|n| n == c.name))
            .cloned()
            .collect();
        for coll in &colls {
            let filter = match since {
                // `_writ.at` too: a hard delete's tombstone has no
                // `updatedDate`, and a deleted key left in the cache would
                // read as present.
                Some(ms) if coll.timestamps => {
                    let t = DateTime::from_millis(ms as i64);
                    doc! {"$or": [{DOC_UPDATED: {"$gte": t}}, {format!("{DOC_WRIT}.at"): {"$gte": t}}]}
                }
                Some(_) => {
                    sum.whole.push(coll.name.clone());
                    doc! {}
                }
                None => doc! {},
            };
            let cursor = self
                .store
                .raw_collection(&coll.name)
                .clone_with_type::<RawDocumentBuf>()
                .find(filter)
                .await?;
            // Many entries in flight on the multiplexed connection, which
            // pipelines them: one round trip per document made a rebuild of
            // 20k documents spend 70 % of its time waiting (docs/performance.md).
            // A collection holds one document per key, so their order does
            // not matter. Bounded by count and by bytes: documents may be
            // 16 MiB each, and 64 of them were 1 GiB in this process and a
            // pipeline of scripts that long at Redis, beside the daemons.
            // A document is taken from the cursor only once its bytes fit.
            cursor
                .map_err(Error::from)
                .and_then(|raw| {
                    let (bytes, size) = (bytes.clone(), raw.as_bytes().len().clamp(1, budget));
                    async move {
                        let permit = bytes.acquire_many_owned(size as u32).await;
                        Ok((raw, permit.expect("the semaphore is never closed")))
                    }
                })
                .map_ok(|(raw, permit)| {
                    let refresh = self.refresh_one(coll, raw);
                    async move {
                        let refreshed = refresh.await;
                        drop(permit);
                        refreshed
                    }
                })
                .try_buffer_unordered(REBUILD_IN_FLIGHT)
                .try_for_each(|outcome| {
                    sum.read += 1;
                    match outcome {
                        Refreshed::Stored => sum.stored += 1,
                        Refreshed::Kept => sum.kept += 1,
                        Refreshed::Skipped => sum.skipped += 1,
                    }
                    std::future::ready(Ok(()))
                })
                .await?;
        }
        Ok(sum)
    }

    /// Puts one MongoDB document into the cache (see [`crate::cache::Cache::refresh`]).
    async fn refresh_one(&self, coll: &CollectionConfig, raw: RawDocumentBuf) -> Result<Refreshed> {
        let doc = Document::try_from(raw.as_ref())
            .map_err(|e| Error::Encode(format!("a stored document: {e}")))?;
        let Ok(key) = Key::from_document(&key_fields(&coll.key, &doc), coll) else {
            return Ok(Refreshed::Skipped);
        };
        // A document no writ write reached (the official adapter's) reads as
        // version 0-0, as a read-through caches it.
        let version = doc_version(&doc).unwrap_or_default();
        let p = key.partition(&coll.name, self.config.partitions);
        let entry = self.names.cache(p, &coll.name, &key.canonical());
        let doc = (!is_tombstone(&doc)).then_some(&doc);
        Ok(match self.cache.refresh(&entry, version, doc).await? {
            true => Refreshed::Stored,
            false => Refreshed::Kept,
        })
    }
}

/// Cache entries a rebuild has in flight at once (and at most
/// `daemon.max_in_flight_bytes` of documents).
const REBUILD_IN_FLIGHT: usize = 64;

/// What a rebuild did with one document.
enum Refreshed {
    Stored,
    Kept,
    Skipped,
}
