//! The unique key index every collection needs before its first write: the
//! sequence guard tells a stale write from a new key by the duplicate-key
//! error this index raises. `writ serve` makes sure of it at start and again
//! every minute or so while it runs ([`Store::keep_indexes`]: a collection
//! dropped meanwhile comes back without it), the tools before their first
//! apply to a collection.
//!
//! An index on exactly the key fields is used whatever its name: the
//! official `@backtest-kit/mongo` adapter's (mongoose names it by its keys,
//! `symbol_1_strategyName_1_...`), `writ_key` from writ before 2026-12, or one
//! an operator made. If there is none, writ asks for it as mongoose asks for
//! the same index, so that either of the two can start first on a database
//! the other has used and neither meets a conflict.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::Store;
use crate::config::CollectionConfig;
use crate::error::{mongo_code, Error, Result};

/// MongoDB's answers to a `createIndexes` whose index exists in another form:
/// the same keys under another name (85), or the same name with other keys
/// or options (86).
const INDEX_CONFLICTS: [i32; 2] = [85, 86];

/// `listIndexes` of a collection that does not exist yet.
const NAMESPACE_NOT_FOUND: i32 = 26;

impl Store {
    /// Makes sure each collection has its unique key index: uses the one on
    /// exactly the key fields if there is one (whatever its name), creates it
    /// if not. Idempotent.
    pub async fn ensure_indexes<'a>(
        &self,
        collections: impl IntoIterator<Item = &'a CollectionConfig>,
    ) -> Result<()> {
        for c in collections {
            self.ensure_key_index(c).await.map(drop).inspect_err(|e| {
                // A transient failure (an outage) is the caller's to retry
                // and report; a refusal needs an operator.
                if e.retry_class() == crate::error::RetryClass::Permanent {
                    tracing::error!(collection = %c.name, error = %e, "cannot make sure of the unique key index");
                }
            })?;
        }
        Ok(())
    }

    /// [`Store::ensure_indexes`] through an outage, as applies wait
    /// (transient errors, backoff capped at `backoff_cap`); a refusal
    /// (an unfit index on the key fields, no privilege) is returned at once.
    /// `Err(Shutdown)` once `stop` fires.
    pub async fn ensure_indexes_waiting<'a>(
        &self,
        collections: impl IntoIterator<Item = &'a CollectionConfig> + Clone,
        backoff_cap: Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<()> {
        let mut backoff = crate::backoff::Backoff::new(backoff_cap);
        loop {
            let res = tokio::select! {
                r = self.ensure_indexes(collections.clone()) => r,
                _ = stop.cancelled() => return Err(Error::Shutdown),
            };
            match res {
                Err(e) if e.retry_class() == crate::error::RetryClass::Transient => {
                    tracing::warn!(error = %e, "cannot create the unique key indexes yet; retrying");
                    if !backoff.sleep(stop).await {
                        return Err(Error::Shutdown);
                    }
                }
                other => return other,
            }
        }
    }

    /// While the daemon runs, makes sure every `every` that each of
    /// `collections` still has its unique key index (one collection at a
    /// time, spread over `every`), until `stop`. A
    /// collection dropped while the daemon runs (by hand, or with its
    /// database) comes back with its next write, without the index; a write
    /// applied again there (after a lost reply, say) would then insert a
    /// second document for its key instead of failing on the index as
    /// stale. Each index made again is logged as a warning.
    pub async fn keep_indexes(
        &self,
        collections: Vec<CollectionConfig>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        // One collection at a time, spread over `every`: a burst of
        // `listIndexes` would hold up the writes of a server that runs one
        // operation at a time.
        let step = every / collections.len().max(1) as u32;
        // Collections whose last check failed: said once per outage, not
        // once a minute for each collection.
        let mut failing = std::collections::HashSet::new();
        loop {
            for c in &collections {
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = stop.cancelled() => return,
                }
                let made = tokio::select! {
                    r = self.ensure_key_index(c) => r,
                    _ = stop.cancelled() => return,
                };
                if made.is_ok() {
                    failing.remove(&c.name);
                }
                match made {
                    Ok(false) => {}
                    Ok(true) => tracing::warn!(
                        collection = %c.name,
                        "the collection had lost its unique key index (dropped while the daemon ran?); made it again"
                    ),
                    Err(e) if failing.insert(c.name.clone()) => tracing::warn!(
                        collection = %c.name,
                        error = %e,
                        "cannot make sure of the unique key index; trying again at each check (said again once a check succeeds and another fails)"
                    ),
                    Err(e) => {
                        tracing::debug!(collection = %c.name, error = %e, "still cannot make sure of the unique key index")
                    }
                }
            }
        }
    }

    /// Makes sure of `c`'s unique key index; `true` when it made it.
    async fn ensure_key_index(&self, c: &CollectionConfig) -> Result<bool> {
        let keys: Document = c.key.iter().map(|k| (k.clone(), Bson::Int32(1))).collect();
        if let Some(name) = self.existing_key_index(c, &keys).await? {
            tracing::debug!(collection = %c.name, index = %name, "the unique key index is there");
            return Ok(false);
        }
        // The request mongoose sends for the same index, field for field and
        // in its order: a server that compares requests as documents (as
        // SecantusDB does, `background` and order included) then finds the
        // official package's index and ours the same. MongoDB has ignored
        // `background` since 4.2.
        let name: Vec<String> = c.key.iter().map(|k| format!("{k}_1")).collect();
        let command = doc! {
            "createIndexes": &c.name,
            "indexes": [{"key": keys.clone(), "unique": true, "background": true, "name": name.join("_")}],
        };
        match self.database().run_command(command).await {
            Ok(_) => Ok(true),
            // Made by another process since we looked.
            Err(e) if mongo_code(&e).is_some_and(|code| INDEX_CONFLICTS.contains(&code)) => {
                match self.existing_key_index(c, &keys).await? {
                    Some(_) => Ok(false),
                    None => Err(Error::Mongo(e)),
                }
            }
            Err(e) => Err(Error::Mongo(e)),
        }
    }

    /// The name of the index on exactly `keys`, if it serves the sequence
    /// guard; an error naming it if it cannot; `None` if there is none (or
    /// no collection yet).
    async fn existing_key_index(
        &self,
        c: &CollectionConfig,
        keys: &Document,
    ) -> Result<Option<String>> {
        let indexes: Vec<IndexModel> = match self.coll(&c.name).list_indexes().await {
            Ok(cursor) => cursor.try_collect().await?,
            Err(e) if mongo_code(&e) == Some(NAMESPACE_NOT_FOUND) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Several indexes may share a key pattern (under other collations or
        // filters): any one that fits will do.
        let mut refusal = None;
        for ix in indexes.into_iter().filter(|ix| same_keys(&ix.keys, keys)) {
            let options = ix.options.unwrap_or_default();
            let name = options.name.clone().unwrap_or_default();
            match unfit(&options) {
                None => return Ok(Some(name)),
                Some(why) => {
                    refusal.get_or_insert(Error::KeyIndex {
                        collection: c.name.clone(),
                        index: name,
                        keys: c.key.clone(),
                        why,
                    });
                }
            }
        }
        refusal.map_or(Ok(None), Err)
    }
}

/// Whether an index's key pattern is `keys`: the same fields in the same
/// order, each ascending (mongoose and the shell may store `1` as any number
/// type).
fn same_keys(pattern: &Document, keys: &Document) -> bool {
    pattern.len() == keys.len()
        && pattern.iter().zip(keys.keys()).all(|((field, dir), key)| {
            field == key
                && match dir {
                    Bson::Int32(n) => *n == 1,
                    Bson::Int64(n) => *n == 1,
                    Bson::Double(n) => *n == 1.0,
                    _ => false,
                }
        })
}

/// Why an index on the key fields cannot stand in for the unique key index,
/// if it cannot: it must reject every second document with the same key.
fn unfit(options: &IndexOptions) -> Option<&'static str> {
    if options.unique != Some(true) {
        Some("not unique")
    } else if options.partial_filter_expression.is_some() {
        Some("partial (it leaves some documents out)")
    } else if options
        .collation
        .as_ref()
        .is_some_and(|c| c.locale != "simple")
    {
        Some("unique under a collation (it may call two different keys equal)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::options::Collation;

    #[test]
    fn the_same_keys_in_the_same_order_ascending_with_any_number_type() {
        let keys = doc! {"a": 1, "b": 1};
        assert!(same_keys(&doc! {"a": 1, "b": 1}, &keys));
        assert!(same_keys(&doc! {"a": 1_i64, "b": 1.0}, &keys));
        assert!(!same_keys(&doc! {"b": 1, "a": 1}, &keys));
        assert!(!same_keys(&doc! {"a": 1, "b": -1}, &keys));
        assert!(!same_keys(&doc! {"a": 1}, &keys));
        assert!(!same_keys(&doc! {"a": 1, "b": 1, "c": 1}, &keys));
        assert!(!same_keys(&doc! {"a": 1, "b": "hashed"}, &keys));
    }

    #[test]
    fn only_a_plain_unique_index_stands_in() {
        let unique = || IndexOptions::builder().unique(true);
        assert_eq!(unfit(&unique().build()), None);
        assert_eq!(unfit(&unique().hidden(true).build()), None);
        assert_eq!(
            unfit(
                &unique()
                    .collation(Collation::builder().locale("simple".to_string()).build())
                    .build()
            ),
            None
        );
        assert_eq!(unfit(&IndexOptions::default()), Some("not unique"));
        assert_eq!(
            unfit(&IndexOptions::builder().unique(false).build()),
            Some("not unique")
        );
        assert!(unfit(
            &unique()
                .partial_filter_expression(doc! {"a": {"$exists": true}})
                .build()
        )
        .is_some_and(|w| w.starts_with("partial")));
        assert!(unfit(
            &unique()
                .collation(Collation::builder().locale("en".to_string()).build())
                .build()
        )
        .is_some_and(|w| w.contains("collation")));
    }
}
