//! Finding the stored documents of many keys in few queries: per-field
//! `$in`s (what servers plan best), bounded when their cross product is large,
//! with the exact keys (`$or`) as the fallback. Used for a round's
//! post-images and for read-many.

use mongodb::bson::{doc, Bson, Document};

use crate::protocol::Key;

/// The key fields of a stored document, in key order (those it has).
pub fn key_fields(key: &[String], doc: &Document) -> Document {
    key.iter()
        .filter_map(|k| Some((k.clone(), doc.get(k)?.clone())))
        .collect()
}

/// How a set of keys is looked up (see [`super::Store::find_many`]).
#[derive(Debug, Clone, PartialEq)]
pub enum KeysQuery {
    /// One `$in` per key field; their cross product is small (at most four
    /// times as many keys as asked for, or 64), so it fetches little else.
    Small(Document),
    /// One `$in` per key field whose cross product is large: the query takes
    /// at most `limit` documents; when it returns that many, the keys it did
    /// not return are looked up exactly (`$or`).
    Bounded { filter: Document, limit: i64 },
}

/// The cross-product `$in` filter of `keys` (one collection) and its size.
fn in_filter(keys: &[Key]) -> (Document, Option<usize>) {
    let docs: Vec<Document> = keys.iter().map(Key::to_document).collect();
    let Some(first) = docs.first() else {
        return (doc! {"_id": {"$in": []}}, Some(0));
    };
    let mut per_field: Vec<(String, Vec<Bson>)> = Vec::new();
    for name in first.keys() {
        let mut values: Vec<Bson> = Vec::new();
        for d in &docs {
            if let Some(v) = d.get(name) {
                if !values.contains(v) {
                    values.push(v.clone());
                }
            }
        }
        per_field.push((name.clone(), values));
    }
    let product = per_field
        .iter()
        .try_fold(1usize, |acc, (_, v)| acc.checked_mul(v.len()));
    let filter = per_field
        .into_iter()
        .map(|(name, mut values)| {
            let cond = if values.len() == 1 {
                values.pop().expect("one value")
            } else {
                Bson::Document(doc! {"$in": values})
            };
            (name, cond)
        })
        .collect();
    (filter, product)
}

/// How to find the stored documents of `keys` in few queries, each answered
/// from the key index. The cross product of per-field `$in`s is what servers
/// plan best (SecantusDB spends as long on each `$or` branch as on a whole
/// query: 2.3 ms per key for an `$or` of 25 keys, 0.4 ms with `$in`s). Keys
/// that vary in a field that is unique anyway (a signal id) make the product
/// large while the documents that match it are few, so a large product is
/// still tried first, with a limit that bounds what it can over-fetch.
pub fn keys_query(keys: &[Key]) -> KeysQuery {
    let (filter, product) = in_filter(keys);
    match product {
        Some(p) if p <= (4 * keys.len()).max(64) => KeysQuery::Small(filter),
        _ => KeysQuery::Bounded {
            filter,
            limit: (4 * keys.len() + 64) as i64,
        },
    }
}

/// An `$or` of the exact keys.
pub fn exact_filter(keys: &[Key]) -> Document {
    if keys.is_empty() {
        return doc! {"_id": {"$in": []}};
    }
    doc! {"$or": keys.iter().map(|k| Bson::Document(k.to_document())).collect::<Vec<_>>()}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CollectionConfig, Layout, WriteMode};

    fn coll() -> CollectionConfig {
        CollectionConfig {
            name: "c".into(),
            key: vec!["a".into(), "b".into()],
            mode: WriteMode::Replace,
            layout: Layout::Payload,
            timestamps: false,
        }
    }

    fn key(a: &str, b: i64) -> Key {
        Key::from_document(&doc! {"a": a, "b": b}, &coll()).unwrap()
    }

    #[test]
    fn keys_query_uses_in_and_bounds_a_large_cross_product() {
        let keys = [key("x", 1), key("x", 2), key("x", 3)];
        assert_eq!(
            keys_query(&keys),
            KeysQuery::Small(doc! {"a": "x", "b": {"$in": [1_i64, 2_i64, 3_i64]}})
        );
        // 100 keys varying in both fields: a cross product of 10,000, so the
        // same `$in`s with a limit, and the exact keys as the fallback.
        let diagonal: Vec<Key> = (0..100).map(|i| key(&format!("k{i}"), i)).collect();
        match keys_query(&diagonal) {
            KeysQuery::Bounded { filter, limit } => {
                assert_eq!(
                    filter
                        .get_document("a")
                        .unwrap()
                        .get_array("$in")
                        .unwrap()
                        .len(),
                    100
                );
                assert_eq!(limit, 464);
            }
            other => panic!("expected a bounded query, got {other:?}"),
        }
        assert_eq!(exact_filter(&diagonal).get_array("$or").unwrap().len(), 100);
    }
}
