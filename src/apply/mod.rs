//! Apply: one atomic, sequence-guarded upsert per write in MongoDB.
//!
//! The filter is the collection's key fields plus `_writ.v < version` (written
//! `$not: {$gte: version}` so documents with no version yet are adopted). If the
//! stored document is older (or absent) the upsert applies and returns the exact
//! committed post-image (findAndModify, returnDocument After). If the stored
//! document is already at this version or newer, the filter misses, the upsert
//! tries to insert, and the unique key index answers E11000: "already newer".
//! That is not an error: the write is stale and is skipped.

mod attempt;
mod bulk;
mod document;
mod indexes;
mod keys;
mod limit;
mod post_image;
mod primary;
mod reads;
mod store;

pub use attempt::Attempts;
pub use bulk::{BulkItem, BulkOutcome};
pub use limit::{Limiter, Permit, Signal};

pub use document::{
    doc_version, is_live, is_tombstone, update_of, DOC_PAYLOAD, DOC_REMOVED, DOC_UPDATED, DOC_WRIT,
};
pub use keys::{exact_filter, key_fields, keys_query, KeysQuery};
pub(crate) use store::close_client;
pub use store::{write_concern, Answers, Applied, Store};
