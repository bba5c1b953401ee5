//! Keys: the ordered key fields of a collection, their canonical text form and
//! the partition they hash to.
//!
//! Key values are strings, integers or booleans, the types trading keys use
//! (symbol, strategy, exchange, candle timestamp, the `backtest` flag). The
//! canonical form is the compact JSON array of the values in the collection's
//! key order, e.g. `["BTCUSDT","trend",1700000000000]` or `[true,"sig-1"]`;
//! the partition is
//! `fnv1a64(collection ++ 0x00 ++ canonical) mod partitions`.
//!
//! A canonical key is at most [`MAX_KEY_BYTES`] bytes: it becomes part of a
//! Redis key name and of every document and dead letter of the key.

use mongodb::bson::{Bson, Document};

use super::{Reject, RejectReason};
use crate::config::CollectionConfig;

/// The most bytes (UTF-8, escapes included) a canonical key may have.
///
/// docs/protocol.md §1 says why: real keys are far shorter, and the canonical
/// key is part of a Redis key name, of the MongoDB document and its unique
/// index entry, and of every dead letter.
pub const MAX_KEY_BYTES: usize = 1024;

/// A key whose canonical form is over [`MAX_KEY_BYTES`]. Never retryable:
/// the same key is refused every time. The daemon dead-letters such an entry
/// with reason `key_field`; the Rust client refuses it before the stream
/// ([`crate::Error::KeyTooLarge`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the canonical key of {collection:?} is {bytes} bytes, over the limit of {limit} bytes (docs/protocol.md §1); use shorter key values")]
pub struct KeyTooLarge {
    /// The collection.
    pub collection: String,
    /// The canonical key's length in bytes.
    pub bytes: usize,
    /// The limit, [`MAX_KEY_BYTES`].
    pub limit: usize,
}

impl From<KeyTooLarge> for Reject {
    fn from(e: KeyTooLarge) -> Reject {
        Reject::new(RejectReason::KeyField, e.to_string())
    }
}

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

/// A key value serialises as its JSON scalar: a string, an integer or a boolean.
impl serde::Serialize for KeyValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeyValue::Str(v) => s.serialize_str(v),
            KeyValue::Int(v) => s.serialize_i64(*v),
            KeyValue::Bool(v) => s.serialize_bool(*v),
        }
    }
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
    /// fields (in any order), each a string, an integer or a boolean, with a
    /// canonical form of at most [`MAX_KEY_BYTES`].
    pub fn from_document(doc: &Document, coll: &CollectionConfig) -> Result<Key, Reject> {
        let key = Key::from_document_any_size(doc, coll)?;
        key.check_size(&coll.name)?;
        Ok(key)
    }

    /// [`Key::from_document`] without the size limit, for a caller that runs
    /// [`Key::check_size`] itself to report it as its own error.
    pub(crate) fn from_document_any_size(
        doc: &Document,
        coll: &CollectionConfig,
    ) -> Result<Key, Reject> {
        let mut fields = Vec::with_capacity(coll.key.len());
        for name in &coll.key {
            let value = match doc.get(name) {
                None => {
                    return Err(Reject::new(
                        RejectReason::KeyField,
                        format!(
                            "key of {:?} lacks field {name:?}; its key fields are {:?}, and it has {:?}",
                            coll.name,
                            coll.key,
                            doc.keys().collect::<Vec<_>>()
                        ),
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
        let values: Vec<&KeyValue> = self.values().collect();
        serde_json::to_string(&values)
            .expect("a JSON array of strings, integers and booleans always serialises")
    }

    /// The length in bytes of [`Key::canonical`], without building it.
    pub fn canonical_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut n = Count(0);
        let values: Vec<&KeyValue> = self.values().collect();
        serde_json::to_writer(&mut n, &values)
            .expect("a JSON array of strings, integers and booleans always serialises");
        n.0
    }

    /// Refuses a key of `collection` whose canonical form is over
    /// [`MAX_KEY_BYTES`].
    pub fn check_size(&self, collection: &str) -> Result<(), KeyTooLarge> {
        let bytes = self.canonical_len();
        if bytes > MAX_KEY_BYTES {
            return Err(KeyTooLarge {
                collection: collection.to_string(),
                bytes,
                limit: MAX_KEY_BYTES,
            });
        }
        Ok(())
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
    fn the_canonical_key_may_be_at_most_the_limit_in_bytes_escapes_included() {
        let c = coll();
        // `["<s>",5]` is the string plus 6 bytes.
        let at_limit = "x".repeat(MAX_KEY_BYTES - 6);
        let k = Key::from_document(&doc! {"symbol": &at_limit, "ts": 5}, &c).unwrap();
        assert_eq!(k.canonical().len(), MAX_KEY_BYTES);
        assert_eq!(k.canonical_len(), MAX_KEY_BYTES);
        // UTF-8 bytes count, not characters: 509 two-byte characters fit.
        let wide = "é".repeat((MAX_KEY_BYTES - 6) / 2);
        assert!(Key::from_document(&doc! {"symbol": &wide, "ts": 5}, &c).is_ok());
        let over = format!("{at_limit}x");
        let e = Key::from_document(&doc! {"symbol": &over, "ts": 5}, &c).unwrap_err();
        assert_eq!(e.reason, RejectReason::KeyField);
        assert!(e.detail.contains("\"signal\""), "{e}");
        assert!(e.detail.contains("1025 bytes"), "{e}");
        assert!(e.detail.contains("limit of 1024 bytes"), "{e}");
        // 170 control characters are 170 bytes of text but 1020 escaped.
        let controls = "\u{1}".repeat(170);
        let e = Key::from_document(&doc! {"symbol": &controls, "ts": 5}, &c).unwrap_err();
        assert!(e.detail.contains("1026 bytes"), "{e}");
        let any = Key::from_document_any_size(&doc! {"symbol": &over, "ts": 5}, &c).unwrap();
        assert_eq!(
            any.check_size("signal"),
            Err(KeyTooLarge {
                collection: "signal".into(),
                bytes: MAX_KEY_BYTES + 1,
                limit: MAX_KEY_BYTES
            })
        );
    }

    #[test]
    fn fnv_matches_reference() {
        assert_eq!(fnv1a64(*b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(*b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(*b"foobar"), 0x85944171f73967e8);
    }
}
