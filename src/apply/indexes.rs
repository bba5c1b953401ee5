//! The unique key index every collection needs before its first write: the
//! sequence guard tells a stale write from a new key by the duplicate-key
//! error this index raises. `writ serve` makes sure of it at start, the tools
//! before their first apply to a collection.

use std::time::Duration;

use mongodb::bson::{Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::{Store, KEY_INDEX};
use crate::config::CollectionConfig;
use crate::error::{Error, Result};

impl Store {
    /// Creates each collection's unique key index. Idempotent.
    pub async fn ensure_indexes<'a>(
        &self,
        collections: impl IntoIterator<Item = &'a CollectionConfig>,
    ) -> Result<()> {
        for c in collections {
            let keys: Document = c.key.iter().map(|k| (k.clone(), Bson::Int32(1))).collect();
            let model = IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name(KEY_INDEX.to_string())
                        .build(),
                )
                .build();
            self.coll(&c.name).create_index(model).await.map_err(|e| {
                let e = Error::Mongo(e);
                // A transient failure (an outage) is the caller's to retry
                // and report; a refusal needs an operator.
                if e.retry_class() == crate::error::RetryClass::Permanent {
                    tracing::error!(collection = %c.name, error = %e, "cannot create the unique key index; if an index named writ_key exists with other keys, drop it or fix the collection's key in the config");
                }
                e
            })?;
        }
        Ok(())
    }

    /// [`Store::ensure_indexes`] through an outage, as applies wait
    /// (transient errors, backoff capped at `backoff_cap`); a refusal
    /// (another index named `writ_key`, no privilege) is returned at once.
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
}
