//! The unique key index every collection needs before its first write: the
//! sequence guard tells a stale write from a new key by the duplicate-key
//! error this index raises. `writ serve` makes sure of it at start, the tools
//! before their first apply to a collection.
//!
//! The index has MongoDB's default name (`symbol_1_strategyName_1_...`),
//! which is the name `@backtest-kit/mongo` (mongoose) gives the same unique
//! index: either of the two can start first on a database the other has
//! used, and neither sees a conflict. A unique index on the same keys under
//! another name (`writ_key`, from writ before 2026-12, or one an operator made)
//! is used as it is.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::Store;
use crate::config::CollectionConfig;
use crate::error::{mongo_code, Error, Result};

/// MongoDB's answers to a `createIndexes` whose index exists in another form:
/// the same keys under another name (85), or the same name with other keys
/// or options (86).
const INDEX_CONFLICTS: [i32; 2] = [85, 86];

impl Store {
    /// Creates each collection's unique key index, or finds it made. Idempotent.
    pub async fn ensure_indexes<'a>(
        &self,
        collections: impl IntoIterator<Item = &'a CollectionConfig>,
    ) -> Result<()> {
        for c in collections {
            self.ensure_key_index(c).await.inspect_err(|e| {
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

    async fn ensure_key_index(&self, c: &CollectionConfig) -> Result<()> {
        let keys: Document = c.key.iter().map(|k| (k.clone(), Bson::Int32(1))).collect();
        let model = IndexModel::builder()
            .keys(keys.clone())
            .options(IndexOptions::builder().unique(true).build())
            .build();
        match self.coll(&c.name).create_index(model).await {
            Ok(_) => Ok(()),
            Err(e) if mongo_code(&e).is_some_and(|code| INDEX_CONFLICTS.contains(&code)) => {
                self.existing_key_index(c, &keys).await?.map_or_else(
                    || Err(Error::Mongo(e)),
                    |name| {
                        tracing::info!(collection = %c.name, index = %name, "using the collection's unique index on the key fields");
                        Ok(())
                    },
                )
            }
            Err(e) => Err(Error::Mongo(e)),
        }
    }

    /// The name of the index on exactly `keys`, if it serves the sequence
    /// guard; an error naming it if it cannot; `None` if there is none.
    async fn existing_key_index(
        &self,
        c: &CollectionConfig,
        keys: &Document,
    ) -> Result<Option<String>> {
        let indexes: Vec<IndexModel> = self
            .coll(&c.name)
            .list_indexes()
            .await?
            .try_collect()
            .await?;
        let Some(found) = indexes.into_iter().find(|ix| same_keys(&ix.keys, keys)) else {
            return Ok(None);
        };
        let options = found.options.unwrap_or_default();
        let name = options.name.clone().unwrap_or_default();
        match unfit(&options) {
            None => Ok(Some(name)),
            Some(why) => Err(Error::KeyIndex {
                collection: c.name.clone(),
                index: name,
                keys: c.key.clone(),
                why,
            }),
        }
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
    use mongodb::bson::doc;
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
