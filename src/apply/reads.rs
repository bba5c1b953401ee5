//! The reads of stored documents: one key (read-through), many keys in one
//! query, the live documents of a collection or a key prefix, and their
//! count. Soft-deleted keys are skipped where a reader asks for live ones.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReadConcern;

use super::keys::{exact_filter, keys_query, KeysQuery};
use super::{Store, DOC_REMOVED};
use crate::config::CollectionConfig;
use crate::error::{Error, Result};
use crate::protocol::Key;

/// How long one MongoDB command may take here, past its `maxTimeMS`: that
/// bounds the server's work, not a server that took the request and never
/// answers (a black-holed link, a stalled primary), which the driver would
/// wait for without end.
const GRACE: Duration = Duration::from_secs(5);

impl Store {
    /// `op`, one MongoDB command (or a few that the server answers at once),
    /// given up after `maxTimeMS` + [`GRACE`] with an [`Error::Timeout`]
    /// naming `what`: the one local bound of every MongoDB operation (reads,
    /// the single write's attempts in `attempt.rs`, each command of a
    /// round's bulk). Each command of a round gets its own bound: a round of
    /// several commands that each finish in time is not given up (and
    /// retried beside its own last command) because together they took
    /// longer than one.
    pub(super) async fn within<T>(
        &self,
        what: &'static str,
        op: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.max_time + GRACE;
        tokio::time::timeout(limit, op)
            .await
            .unwrap_or(Err(Error::Timeout {
                after: limit,
                what,
                accepted: None,
            }))
    }

    /// A driver read bounded as [`Store::within`].
    async fn bounded<T>(
        &self,
        what: &'static str,
        read: impl std::future::Future<Output = mongodb::error::Result<T>>,
    ) -> Result<T> {
        self.within(what, async { Ok(read.await?) }).await
    }

    /// Documents of `coll` matching `filter`, at read concern `concern` (the
    /// collection's own when `None`).
    async fn find_docs_at(
        &self,
        coll: &str,
        filter: Document,
        concern: Option<&ReadConcern>,
    ) -> Result<Vec<Document>> {
        let collection = self.coll(coll);
        let mut find = collection.find(filter).max_time(self.max_time);
        if let Some(c) = concern {
            find = find.read_concern(c.clone());
        }
        self.bounded("MongoDB's documents", async {
            find.await?.try_collect().await
        })
        .await
    }

    /// The stored document of a key, soft-deleted or not, read at the
    /// collection's read concern (`local`, on the primary): what a
    /// read-through answers. It may be a write only the primary holds yet,
    /// never one older than an acknowledged write; a `majority` read can be,
    /// on a newly elected primary until its first write commits.
    pub async fn find(&self, coll: &str, key: &Key) -> Result<Option<Document>> {
        let collection = self.coll(coll);
        let find = collection
            .find_one(key.to_document())
            .max_time(self.max_time);
        self.bounded("MongoDB's document", async { find.await })
            .await
    }

    /// A key's stored document read twice, for a client deciding about a
    /// write whose entry is gone: `(confirmed, local)`.
    /// - `confirmed` is read at read concern `majority` when
    ///   `mongodb.write_concern` asks for more than one node, as the daemon's
    ///   stale check reads: the write is settled applied only if it is there.
    ///   Settling one that only the primary holds would tell its writer it is
    ///   durable while a failover can still roll it back.
    /// - `local` is read after it, on the primary: what the cache is filled
    ///   with (a majority read can be older than an acknowledged write, on a
    ///   newly elected primary), and the write is settled lost only if it is
    ///   missing there too (a majority that cannot advance must not make an
    ///   applied write read as lost).
    ///
    /// With a write concern of one node, both are one `local` read.
    pub async fn find_settling(
        &self,
        coll: &str,
        key: &Key,
    ) -> Result<(Option<Document>, Option<Document>)> {
        if !self.confirm_majority {
            let doc = self.find(coll, key).await?;
            return Ok((doc.clone(), doc));
        }
        let confirmed = self.find_confirmed(coll, key).await?;
        let local = self.find(coll, key).await?;
        Ok((confirmed, local))
    }

    /// [`Store::find`] at read concern `majority` when the write concern
    /// asks for more than one node.
    async fn find_confirmed(&self, coll: &str, key: &Key) -> Result<Option<Document>> {
        let collection = self.coll(coll);
        let mut find = collection
            .find_one(key.to_document())
            .max_time(self.max_time);
        if self.confirm_majority {
            find = find.read_concern(ReadConcern::majority());
        }
        self.bounded("MongoDB's document", async { find.await })
            .await
    }

    /// Every live (not soft-deleted) document of a collection, in key order.
    pub async fn live_documents(&self, coll: &CollectionConfig) -> Result<Vec<Document>> {
        self.live_by_prefix(coll, &Document::new()).await
    }

    /// The live documents whose leading key fields equal `prefix`, sorted by
    /// the key fields (the remaining ones decide the order).
    pub async fn live_by_prefix(
        &self,
        coll: &CollectionConfig,
        prefix: &Document,
    ) -> Result<Vec<Document>> {
        let sort: Document = coll
            .key
            .iter()
            .map(|k| (k.clone(), Bson::Int32(1)))
            .collect();
        let mut filter = prefix.clone();
        filter.insert(DOC_REMOVED, doc! {"$ne": true});
        let collection = self.coll(&coll.name);
        let find = collection.find(filter).sort(sort).max_time(self.max_time);
        self.bounded("MongoDB's live documents", async {
            find.await?.try_collect().await
        })
        .await
    }

    /// The stored documents of many keys of one collection, in one query.
    /// It may return other documents too (see [`super::keys_query`]): callers match
    /// the results by key.
    pub async fn find_many(&self, coll: &str, keys: &[Key]) -> Result<Vec<Document>> {
        self.find_many_at(coll, keys, None).await
    }

    /// [`Store::find_many`] at read concern `concern` (the collection's own
    /// when `None`).
    pub(super) async fn find_many_at(
        &self,
        coll: &str,
        keys: &[Key],
        concern: Option<&ReadConcern>,
    ) -> Result<Vec<Document>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match keys_query(keys) {
            KeysQuery::Small(filter) => self.find_docs_at(coll, filter, concern).await,
            KeysQuery::Bounded { filter, limit } => {
                let collection = self.coll(coll);
                let mut find = collection.find(filter).limit(limit).max_time(self.max_time);
                if let Some(c) = concern {
                    find = find.read_concern(c.clone());
                }
                let mut docs: Vec<Document> = self
                    .bounded("MongoDB's documents", async {
                        find.await?.try_collect().await
                    })
                    .await?;
                if (docs.len() as i64) < limit {
                    return Ok(docs);
                }
                // Possibly cut short: look up the keys it did not return.
                // (Matched on the key document as writ writes it; a key
                // stored with other number types is looked up again, which
                // costs a query, never a wrong answer.)
                let fields: Vec<String> = keys[0].to_document().keys().cloned().collect();
                let seen: Vec<Document> = docs
                    .iter()
                    .map(|d| {
                        fields
                            .iter()
                            .filter_map(|f| Some((f.clone(), d.get(f)?.clone())))
                            .collect::<Document>()
                    })
                    .collect();
                let missing: Vec<Key> = keys
                    .iter()
                    .filter(|k| !seen.contains(&k.to_document()))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    docs.extend(
                        self.find_docs_at(coll, exact_filter(&missing), concern)
                            .await?,
                    );
                }
                Ok(docs)
            }
        }
    }

    /// Number of live (not soft-deleted) documents.
    pub async fn count_live(&self, coll: &str) -> Result<u64> {
        let collection = self.coll(coll);
        let count = collection
            .count_documents(doc! {DOC_REMOVED: {"$ne": true}})
            .max_time(self.max_time);
        self.bounded("MongoDB's count", async { count.await }).await
    }
}
