//! Keys: the ordered key fields of a collection, their canonical text form and
//! the partition they hash to.
//!
//! Key values are strings, integers or booleans, the types trading keys use
//! (symbol, strategy, exchange, candle timestamp, the `backtest` flag). The
//! canonical form is the compact JSON array of the values in the collection's
//! key order, e.g. `["BTCUSDT","trend",1700000000000]` or `[true,"sig-1"]`;
//! the partition is
//! `fnv1a64(collection ++ 0x00 ++ canonical) mod partitions`.

use mongodb::bson::{Bson, Document};

use super::{Reject, RejectReason};
use crate::config::CollectionConfig;

/// One key field's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    /// A string.
    Str(String),
    /// An integer (stored as BSON int64).
    Int(i64),
    /// A boolean (`backtest`).
    Bool(bool),
}

impl KeyValue {
    fn to_bson(&self) -> Bson {
        match self {
            KeyValue::Str(s) => Bson::String(s.clone()),
            KeyValue::Int(i) => Bson::Int64(*i),
            KeyValue::Bool(b) => Bson::Boolean(*b),
        }
    }
}

/// A key: the collection's key fields with their values, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    fields: Vec<(String, KeyValue)>,
}

impl Key {
    /// Builds a key from a document that must hold exactly the collection's key
    /// fields (in any order), each a string, an integer or a boolean.
    pub fn from_document(doc: &Document, coll: &CollectionConfig) -> Result<Key, Reject> {
        let mut fields = Vec::with_capacity(coll.key.len());
        for name in &coll.key {
            let value = match doc.get(name) {
                None => {
                    return Err(Reject::new(
                        RejectReason::KeyField,
                        format!("key of {:?} lacks field {name:?}; its key fields are {:?}", coll.name, coll.key),
                    ))
                }
                Some(Bson::String(s)) => KeyValue::Str(s.clone()),
                Some(Bson::Int32(i)) => KeyValue::Int(i64::from(*i)),
                Some(Bson::Int64(i)) => KeyValue::Int(*i),
                Some(Bson::Boolean(b)) => KeyValue::Bool(*b),
                Some(Bson::Double(d)) if d.fract() == 0.0 && d.abs() < 9.0e15 => KeyValue::Int(*d as i64),
                Some(other) => {
                    return Err(Reject::new(
                        RejectReason::KeyField,
                        format!("key field {name:?} of {:?} is {:?}; key values must be strings, integers or booleans", coll.name, other.element_type()),
                    ))
                }
            };
            fields.push((name.clone(), value));
        }
        if let Some(extra) = doc.keys().find(|k| !coll.key.contains(k)) {
            return Err(Reject::new(
                RejectReason::KeyField,
                format!(
                    "key of {:?} has extra field {extra:?}; its key fields are {:?}",
                    coll.name, coll.key
                ),
            ));
        }
        Ok(Key { fields })
    }

    /// The key as a BSON document in key order (the MongoDB filter).
    pub fn to_document(&self) -> Document {
        self.fields
            .iter()
            .map(|(k, v)| (k.clone(), v.to_bson()))
            .collect()
    }

    /// The values in key order.
    pub fn values(&self) -> impl Iterator<Item = &KeyValue> {
        self.fields.iter().map(|(_, v)| v)
    }

    /// Canonical text: compact JSON array of the values in key order.
    pub fn canonical(&self) -> String {
        let arr: Vec<serde_json::Value> = self
            .fields
            .iter()
            .map(|(_, v)| match v {
                KeyValue::Str(s) => serde_json::Value::String(s.clone()),
                KeyValue::Int(i) => serde_json::Value::from(*i),
                KeyValue::Bool(b) => serde_json::Value::Bool(*b),
            })
            .collect();
        serde_json::to_string(&arr)
            .expect("a JSON array of strings, integers and booleans always serialises")
    }

    /// The partition this key of `collection` belongs to.
    pub fn partition(&self, collection: &str, partitions: u32) -> u32 {
        partition_of(collection, &self.canonical(), partitions)
    }
}

/// `fnv1a64(collection ++ 0x00 ++ canonical) mod partitions`.
pub fn partition_of(collection: &str, canonical: &str, partitions: u32) -> u32 {
    let h = fnv1a64(
        collection
            .bytes()
            .chain(std::iter::once(0u8))
            .chain(canonical.bytes()),
    );
    (h % u64::from(partitions.max(1))) as u32
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WriteMode;
    use mongodb::bson::doc;

    fn coll() -> CollectionConfig {
        CollectionConfig {
            name: "signal".into(),
            key: vec!["symbol".into(), "ts".into()],
            mode: WriteMode::Replace,
            layout: Default::default(),
            timestamps: false,
        }
    }

    #[test]
    fn canonical_is_ordered_compact_json() {
        let k = Key::from_document(&doc! {"ts": 5_i32, "symbol": "BTC\"USDT"}, &coll()).unwrap();
        assert_eq!(k.canonical(), r#"["BTC\"USDT",5]"#);
        assert_eq!(k.to_document(), doc! {"symbol": "BTC\"USDT", "ts": 5_i64});
    }

    #[test]
    fn missing_extra_and_bad_types_are_refused() {
        let c = coll();
        assert_eq!(
            Key::from_document(&doc! {"symbol": "x"}, &c)
                .unwrap_err()
                .reason,
            RejectReason::KeyField
        );
        let e = Key::from_document(&doc! {"symbol": "x", "ts": 1, "z": 1}, &c).unwrap_err();
        assert!(e.detail.contains("extra field \"z\""), "{e}");
        assert!(Key::from_document(&doc! {"symbol": "x", "ts": 1.5}, &c).is_err());
    }

    #[test]
    fn booleans_are_key_values() {
        let k = Key::from_document(&doc! {"ts": 5_i32, "symbol": true}, &coll()).unwrap();
        assert_eq!(k.canonical(), "[true,5]");
        assert_eq!(k.to_document(), doc! {"symbol": true, "ts": 5_i64});
    }

    #[test]
    fn fnv_matches_reference() {
        assert_eq!(fnv1a64(*b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(*b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(*b"foobar"), 0x85944171f73967e8);
    }
}
