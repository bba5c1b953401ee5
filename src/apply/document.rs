//! The stored document: writ's field names, the update a write makes to it,
//! and what a stored document says (its version, whether it is live or a
//! hard delete's tombstone). The same shape the official backtest-kit adapter
//! writes (docs/protocol.md, "Layouts").

use mongodb::bson::{doc, Bson, DateTime, Document};

use crate::config::{CollectionConfig, Layout, WriteMode};
use crate::protocol::{Op, Version, Write};

/// Field holding the payload.
pub const DOC_PAYLOAD: &str = "payload";
/// Soft-delete flag.
pub const DOC_REMOVED: &str = "removed";
/// writ's bookkeeping: `{v: <sortable version>, at: <apply time>}`.
pub const DOC_WRIT: &str = "_writ";
/// The version inside it, as a filter's field path: the sequence guard.
pub const GUARD_FIELD: &str = "_writ.v";
/// Set on insert, for collections with `timestamps` (as mongoose does).
pub const DOC_CREATED: &str = "createDate";
/// Set on every write, for collections with `timestamps`.
pub const DOC_UPDATED: &str = "updatedDate";

/// The update document of a put or remove at sortable version `v`.
///
/// - `put`, `replace`: `$set` the stored fields (the payload under `payload`,
///   or, for the `fields` layout, the document's own top-level fields);
/// - `put`, `insert_once`: the same under `$setOnInsert` (the first write
///   wins); only the bookkeeping is `$set`;
/// - `remove`: `$set {removed: true}`.
///
/// A `replace` put brings a soft-removed key back in every layout: the
/// `payload` layout `$set`s `removed: false`; the `fields` layout `$unset`s
/// `removed` unless the writer sends it (backtest-kit's measure, interval and
/// memory rows send `removed: false`; its other rows have no such field, and
/// an `$unset` of a missing field adds none, so their documents keep the
/// official shape).
///
/// Every write `$set`s `_writ`; with `timestamps`, also `updatedDate`, and
/// `createDate` goes under `$setOnInsert`, as mongoose's timestamps do.
pub fn update_of(coll: &CollectionConfig, write: &Write, v: &str) -> Document {
    let now = DateTime::now();
    let mut set = doc! {DOC_WRIT: {"v": v, "at": now}};
    let mut on_insert = Document::new();
    if coll.timestamps {
        set.insert(DOC_UPDATED, now);
        on_insert.insert(DOC_CREATED, now);
    }
    let stored = || -> Document {
        let doc = write.doc.clone().unwrap_or_default();
        match coll.layout {
            Layout::Payload => doc! {DOC_PAYLOAD: doc, DOC_REMOVED: false},
            Layout::Fields => doc,
        }
    };
    let mut unset = Document::new();
    match (write.op, coll.mode) {
        (Op::Put, WriteMode::Replace) => {
            let fields = stored();
            if !fields.contains_key(DOC_REMOVED) {
                unset.insert(DOC_REMOVED, "");
            }
            set.extend(fields)
        }
        (Op::Put, WriteMode::InsertOnce) => on_insert.extend(stored()),
        _ => {
            set.insert(DOC_REMOVED, true);
        }
    }
    let mut update = doc! {"$set": set};
    if !on_insert.is_empty() {
        update.insert("$setOnInsert", on_insert);
    }
    if !unset.is_empty() {
        update.insert("$unset", unset);
    }
    update
}

/// Where a hard delete's tombstone says so: `_writ.deleted`.
pub const DELETED_FIELD: &str = "_writ.deleted";

/// The filter of a guarded write at sortable version `v`: the key fields and
/// the sequence guard (`_writ.v` older than `v`, or absent: a document
/// written before writ managed the collection is adopted by its first
/// write). An `insert_once` put does not match a hard delete's tombstone:
/// the key is gone, so the put must insert ([`revive_of`]), and an update
/// of the tombstone would set only the bookkeeping and leave it removed.
pub fn guard_filter(coll: &CollectionConfig, write: &Write, v: &str) -> Document {
    let mut filter = write.key.to_document();
    filter.insert(GUARD_FIELD, doc! {"$not": {"$gte": v}});
    if write.op == Op::Put && coll.mode == WriteMode::InsertOnce {
        filter.insert(DELETED_FIELD, doc! {"$ne": true});
    }
    filter
}

/// The filter of [`revive_of`]: the key's tombstone, older than `v`.
pub fn revive_filter(write: &Write, v: &str) -> Document {
    let mut filter = write.key.to_document();
    filter.insert(GUARD_FIELD, doc! {"$not": {"$gte": v}});
    filter.insert(DELETED_FIELD, true);
    filter
}

/// The update of an `insert_once` put that meets an older tombstone: what
/// the insert would have written (`$setOnInsert`'s fields `$set`), and the
/// tombstone's `removed` taken away (in the `fields` layout unless the
/// writer sends it), so the key reads as the put wrote it, as after an
/// insert.
pub fn revive_of(coll: &CollectionConfig, write: &Write, v: &str) -> Document {
    let mut update = update_of(coll, write, v);
    let on_insert = match update.remove("$setOnInsert") {
        Some(Bson::Document(d)) => d,
        _ => Document::new(),
    };
    let mut set = match update.remove("$set") {
        Some(Bson::Document(d)) => d,
        _ => Document::new(),
    };
    set.extend(on_insert);
    let sends_removed = set.contains_key(DOC_REMOVED);
    update.insert("$set", set);
    if !sends_removed {
        update.insert("$unset", doc! {DOC_REMOVED: ""});
    }
    update
}

/// The version a stored document carries, if any.
pub fn doc_version(doc: &Document) -> Option<Version> {
    Version::from_sortable(doc.get_document(DOC_WRIT).ok()?.get_str("v").ok()?)
}

/// Whether a stored document is the versioned tombstone of a hard delete
/// (`_writ.deleted`): a cache fills it as `gone`, as the daemon does.
pub fn is_tombstone(doc: &Document) -> bool {
    doc.get_document(DOC_WRIT)
        .ok()
        .and_then(|w| w.get_bool("deleted").ok())
        == Some(true)
}

/// Whether a stored document reads as present (exists and not soft-deleted).
pub fn is_live(doc: &Document) -> bool {
    !matches!(doc.get(DOC_REMOVED), Some(Bson::Boolean(true)))
}
