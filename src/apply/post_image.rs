//! The committed document of an upsert that inserted, derived from the write
//! instead of read back.
//!
//! A bulk's reply names the statements that inserted (`upserted: [{index,
//! _id}]`). Such a document holds exactly what the statement wrote: the `_id`
//! the server chose, the equality fields of the filter (the key) and the
//! fields of `$set` and `$setOnInsert`, less those of `$unset`. So the cache can be filled without the
//! `find` a round needs for keys that already existed (their post-image
//! depends on what was stored before). A drain of fresh keys then costs one
//! round trip per bulk, as the server's own ceiling does.
//!
//! Field order: `_id`, the key fields, then the update's fields, each group in
//! byte order of the names (MongoDB 5.0+ applies update operators to fields in
//! lexicographic order, and SecantusDB builds the filter's equality fields in
//! that order too). Values are exactly the ones sent, so the derived document
//! equals the stored one field for field and type for type; a server that
//! orders an inserted document's top-level fields otherwise differs only in
//! that order (docs/protocol.md §4, step 3).
//!
//! Updates the derivation cannot mirror exactly (dotted or `$` field names,
//! other operators) return `None`, and the caller reads the document back.

use mongodb::bson::{Bson, Document};

/// The document a guarded upsert with `update` inserted under `id` for the
/// key fields `key`, or `None` when it cannot be derived exactly. Takes the
/// update by value: its values move into the document, uncopied.
pub fn inserted(id: Bson, key: &Document, update: Document) -> Option<Document> {
    let mirrorable = update.iter().all(|(op, body)| {
        (op == "$set" || op == "$setOnInsert" || op == "$unset")
            && body.as_document().is_some_and(|b| {
                b.keys()
                    .all(|n| !(n.contains('.') || n.starts_with('$') || n.is_empty() || n == "_id"))
            })
    });
    if !mirrorable {
        return None;
    }
    let mut fields: Vec<(String, Bson)> = Vec::new();
    let mut unset: Vec<String> = Vec::new();
    for (op, body) in update {
        if let Bson::Document(body) = body {
            if op == "$unset" {
                unset.extend(body.into_iter().map(|(n, _)| n));
            } else {
                fields.extend(body);
            }
        }
    }
    // Byte order, as the server applies them; a name in both operators is a
    // conflict the server refuses, so it never gets here as a success.
    fields.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut doc = Document::new();
    doc.insert("_id", id);
    let mut key_fields: Vec<(&String, &Bson)> = key.iter().collect();
    key_fields.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (k, v) in key_fields {
        doc.insert(k.clone(), v.clone());
    }
    for (name, value) in fields {
        // A field already there (a key field, `_id`) keeps its place.
        doc.insert(name, value);
    }
    // An `$unset` of a field the insert has (a key field) removes it, as
    // on the server; of a missing one, it does nothing. (A name in both
    // `$set` and `$unset` is a conflict the server refuses.)
    for name in unset {
        doc.remove(&name);
    }
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, oid::ObjectId, DateTime};

    #[test]
    fn id_then_key_then_fields_in_byte_order() {
        let id = Bson::ObjectId(ObjectId::new());
        let at = DateTime::from_millis(1_700_000_000_000);
        let update = doc! {
            "$set": {"_writ": {"v": "0001", "at": at}, "updatedDate": at, "payload": {"z": 1, "a": 2}, "removed": false},
            "$setOnInsert": {"createDate": at},
        };
        let d = inserted(
            id.clone(),
            &doc! {"symbol": "X", "strategyName": "s"},
            update,
        )
        .unwrap();
        let names: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "_id",
                "strategyName",
                "symbol",
                "_writ",
                "createDate",
                "payload",
                "removed",
                "updatedDate"
            ]
        );
        assert_eq!(d.get("_id"), Some(&id));
        // The payload is stored as sent, its own order kept.
        let p: Vec<&str> = d
            .get_document("payload")
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(p, ["z", "a"]);
        assert_eq!(d.get_datetime("createDate").unwrap(), &at);
    }

    #[test]
    fn a_key_field_set_again_keeps_its_place() {
        let d = inserted(
            Bson::Int32(7),
            &doc! {"k": "a"},
            doc! {"$set": {"b": 1, "k": "a"}},
        )
        .unwrap();
        assert_eq!(d, doc! {"_id": 7, "k": "a", "b": 1});
        assert_eq!(d.keys().collect::<Vec<_>>(), ["_id", "k", "b"]);
    }

    #[test]
    fn an_unset_field_is_left_out() {
        let d = inserted(
            Bson::Int32(3),
            &doc! {"k": "a"},
            doc! {"$set": {"b": 1}, "$unset": {"removed": ""}},
        )
        .unwrap();
        assert_eq!(d, doc! {"_id": 3, "k": "a", "b": 1});
        assert_eq!(
            inserted(
                Bson::Int32(3),
                &doc! {"k": "a"},
                doc! {"$unset": {"_id": ""}}
            ),
            None
        );
    }

    #[test]
    fn what_cannot_be_mirrored_is_read_back() {
        let key = doc! {"k": 1};
        assert_eq!(
            inserted(Bson::Int32(1), &key, doc! {"$set": {"a.b": 1}}),
            None
        );
        assert_eq!(
            inserted(Bson::Int32(1), &key, doc! {"$set": {"$x": 1}}),
            None
        );
        assert_eq!(
            inserted(Bson::Int32(1), &key, doc! {"$inc": {"n": 1}}),
            None
        );
        assert_eq!(inserted(Bson::Int32(1), &key, doc! {"a": 1}), None);
    }
}
