//! `writ rebuild-cache`: refills the cache from MongoDB after Redis lost data,
//! and refreshes it after another program (the official `@backtest-kit/mongo`
//! adapter, during a switch back to writ) wrote MongoDB directly. Every entry
//! goes through the compare-and-set, so a newer cached version is never
//! overwritten; the same version is replaced with MongoDB's document, which is
//! the truth for it ([`crate::cache::Cache::refresh`]).

use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};

use super::Tools;
use crate::apply::{doc_version, is_tombstone, DOC_UPDATED};
use crate::error::Result;
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
    /// ms), only the documents whose `updatedDate` is that time or later, in
    /// the collections with `timestamps`; the others are read whole.
    pub async fn rebuild_cache(
        &self,
        collection: Option<&str>,
        since: Option<u64>,
    ) -> Result<RebuildSummary> {
        let mut sum = RebuildSummary::default();
        let colls: Vec<_> = self
            .config
            .collections
            .values()
            .filter(|c| collection.is_none_or(|n| n == c.name))
            .cloned()
            .collect();
        for coll in colls {
            let filter = match since {
                Some(ms) if coll.timestamps => {
                    doc! {DOC_UPDATED: {"$gte": DateTime::from_millis(ms as i64)}}
                }
                Some(_) => {
                    sum.whole.push(coll.name.clone());
                    doc! {}
                }
                None => doc! {},
            };
            let mut cursor = self.store.raw_collection(&coll.name).find(filter).await?;
            while let Some(doc) = cursor.try_next().await? {
                sum.read += 1;
                let key_doc: Document = coll
                    .key
                    .iter()
                    .filter_map(|k| Some((k.clone(), doc.get(k)?.clone())))
                    .collect();
                let Ok(key) = Key::from_document(&key_doc, &coll) else {
                    sum.skipped += 1;
                    continue;
                };
                // A document no writ write reached (the official adapter's)
                // reads as version 0-0, as a read-through caches it.
                let version = doc_version(&doc).unwrap_or_default();
                let p = key.partition(&coll.name, self.config.partitions);
                if self
                    .cache
                    .refresh(
                        &self.names.cache(p, &coll.name, &key.canonical()),
                        version,
                        (!is_tombstone(&doc)).then_some(&doc),
                    )
                    .await?
                {
                    sum.stored += 1;
                } else {
                    sum.kept += 1;
                }
            }
        }
        Ok(sum)
    }
}
