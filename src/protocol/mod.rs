//! The stream protocol, version 1: how a write is laid out as the fields of one
//! Redis Stream entry, and how the daemon decodes and checks it.
//!
//! The protocol is language-neutral: any client can write with a plain `XADD`
//! (see docs/protocol.md and the vectors in tests/vectors/). This module is the
//! single place that encodes and decodes entries, so the client and the daemon
//! can never disagree.

mod decode;
mod key;
mod names;
mod nesting;
mod reject;
mod version;

pub use decode::{decode, decode_in, json_to_document};
pub use key::{fnv1a64, partition_of, Key, KeyTooLarge, KeyValue, MAX_KEY_BYTES};
pub use names::Names;
pub use nesting::MAX_NESTING;
pub use reject::{Reject, RejectReason};
pub use version::{wall_clock_ms, Version};

use mongodb::bson::Document;

use crate::config::CollectionConfig;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: &str = "1";

/// Field names of a stream entry.
pub mod field {
    /// Protocol version, `"1"`.
    pub const VERSION: &str = "v";
    /// Collection name.
    pub const COLLECTION: &str = "coll";
    /// `put`, `remove` or `delete`.
    pub const OP: &str = "op";
    /// `json` or `bson`: encoding of `key` and `doc`.
    pub const ENCODING: &str = "enc";
    /// The key document.
    pub const KEY: &str = "key";
    /// The payload document (only for `put`).
    pub const DOC: &str = "doc";
    /// Optional client id: acks go to `<ns>:ack:<client>`.
    pub const CLIENT: &str = "client";
    /// Optional request id, echoed in the ack.
    pub const REQUEST: &str = "req";
    /// Every field a v1 entry may carry.
    pub const ALL: &[&str] = &[VERSION, COLLECTION, OP, ENCODING, KEY, DOC, CLIENT, REQUEST];
}

/// What a write does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Store the payload (per the collection's write mode).
    Put,
    /// Soft delete: set `removed: true`; the key then reads as absent.
    Remove,
    /// Hard delete: remove the document from MongoDB.
    Delete,
}

impl Op {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Remove => "remove",
            Op::Delete => "delete",
        }
    }
}

/// Encoding of the `key` and `doc` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8 JSON text (MongoDB Extended JSON accepted).
    Json,
    /// BSON document bytes.
    Bson,
}

impl Encoding {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Bson => "bson",
        }
    }
}

/// Where the ack of a write goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// Client id.
    pub client: String,
    /// Request id.
    pub request: String,
}

/// A decoded, validated write.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// Collection name.
    pub collection: String,
    /// The key, in the collection's field order.
    pub key: Key,
    /// The operation.
    pub op: Op,
    /// The payload (`Some` exactly for `Put`).
    pub doc: Option<Document>,
    /// Where to send the ack, if anywhere.
    pub reply: Option<ReplyTo>,
}

/// Checks a client or request id: 1-64 characters of `[A-Za-z0-9_.:-]`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.:-".contains(&c))
}

/// Field names a `fields`-layout document may not set: writ's bookkeeping,
/// the timestamps writ keeps, and the key fields (the key says those).
pub const RESERVED_TOP_LEVEL: &[&str] = &["_id", "_writ", "createDate", "updatedDate"];

/// Checks the top-level fields of a `fields`-layout document.
pub fn check_fields(doc: &Document, coll: &CollectionConfig) -> Result<(), Reject> {
    for name in doc.keys() {
        if RESERVED_TOP_LEVEL.contains(&name.as_str()) || coll.key.iter().any(|k| k == name) {
            return Err(Reject::new(
                RejectReason::Payload,
                format!("field {name:?} of a {:?} document is set by writ (reserved: {RESERVED_TOP_LEVEL:?} and the key fields {:?}); leave it out", coll.name, coll.key),
            ));
        }
        if name.is_empty() || name.starts_with('$') || name.contains('.') || name.contains('\0') {
            return Err(Reject::new(
                RejectReason::Payload,
                format!("field name {name:?} cannot be stored as a top-level field (no $ prefix, dots or NUL)"),
            ));
        }
    }
    Ok(())
}

/// Refuses a payload larger than the configured limit, or one BSON cannot
/// encode (`payload`, never `too_large`). The daemon's decode has measured
/// the payload's nesting on its entry bytes already; clients call
/// [`check_payload`].
pub fn check_size(doc: &Document, limit: usize) -> Result<(), Reject> {
    encoded_within(doc, limit).map(drop)
}

/// What a client checks before the stream: [`check_size`], then the nesting
/// limit the daemon enforces ([`MAX_NESTING`]).
pub fn check_payload(doc: &Document, limit: usize) -> Result<(), Reject> {
    let bytes = encoded_within(doc, limit)?;
    if nesting::nesting(&bytes).is_ok_and(|n| n > MAX_NESTING) {
        return Err(decode::too_deep(RejectReason::Payload, "doc"));
    }
    Ok(())
}

/// What the daemon's decode refuses of an op and its document, checked by a
/// client before the stream: a `put` needs a document (within `limit`
/// bytes, and for the `fields` layout storable as top-level fields), the
/// others take none.
pub fn check_write(
    op: Op,
    doc: Option<&Document>,
    coll: &CollectionConfig,
    limit: usize,
) -> Result<(), Reject> {
    match (op, doc) {
        (Op::Put, Some(doc)) => {
            check_payload(doc, limit)?;
            if coll.layout == crate::config::Layout::Fields {
                check_fields(doc, coll)?;
            }
            Ok(())
        }
        (Op::Put, None) => Err(Reject::new(
            RejectReason::Payload,
            "op put needs a document",
        )),
        (_, Some(_)) => Err(Reject::new(
            RejectReason::Malformed,
            format!("op {} takes no document", op.as_str()),
        )),
        (_, None) => Ok(()),
    }
}

/// `doc` as BSON, refused if it cannot be encoded or is over `limit` bytes.
fn encoded_within(doc: &Document, limit: usize) -> Result<Vec<u8>, Reject> {
    let bytes = crate::bson_bytes::to_vec(doc).map_err(|e| {
        Reject::new(
            RejectReason::Payload,
            format!("payload cannot be encoded as BSON ({e}); field names may not contain NUL"),
        )
    })?;
    let len = bytes.len();
    if len > limit {
        return Err(Reject::new(
            RejectReason::TooLarge,
            format!("payload is {len} bytes of BSON, over the limit of {limit} (client.max_document_bytes; MongoDB's hard cap is 16 MiB)"),
        ));
    }
    Ok(bytes)
}

/// Encodes a write as stream entry fields (BSON encoding), ready for `XADD`.
pub fn encode(
    coll: &CollectionConfig,
    key: &Key,
    op: Op,
    doc: Option<&Document>,
    reply: Option<&ReplyTo>,
) -> Result<Vec<(&'static str, Vec<u8>)>, Reject> {
    let mut out = vec![
        (field::VERSION, PROTOCOL_VERSION.as_bytes().to_vec()),
        (field::COLLECTION, coll.name.as_bytes().to_vec()),
        (field::OP, op.as_str().as_bytes().to_vec()),
        (field::ENCODING, Encoding::Bson.as_str().as_bytes().to_vec()),
        (
            field::KEY,
            crate::bson_bytes::to_vec(&key.to_document())
                .map_err(|e| Reject::new(RejectReason::KeyField, e.to_string()))?,
        ),
    ];
    if let Some(doc) = doc {
        out.push((
            field::DOC,
            crate::bson_bytes::to_vec(doc)
                .map_err(|e| Reject::new(RejectReason::Payload, e.to_string()))?,
        ));
    }
    if let Some(r) = reply {
        out.push((field::CLIENT, r.client.as_bytes().to_vec()));
        out.push((field::REQUEST, r.request.as_bytes().to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use mongodb::bson;

    const CONFIG: &str = r#"
[redis]
partitions = 1
[mongodb]
[[collections]]
name = "m"
key = ["k"]
"#;

    fn entry(doc: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            ("v", "1"),
            ("coll", "m"),
            ("op", "put"),
            ("enc", "json"),
            ("key", r#"{"k":"a"}"#),
            ("doc", doc),
        ]
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    /// Regression (found by tests/protocol_props.rs): serde_json without
    /// `float_roundtrip` parsed `8999999999999999.0` as 8999999999999998, so a
    /// JSON key with an integral double landed on another key, and payload
    /// doubles were stored one ULP off.
    #[test]
    fn json_doubles_are_parsed_exactly_in_keys_and_payloads() {
        let config = Config::from_toml(CONFIG).unwrap();
        for (text, want) in [
            ("8999999999999999.0", 8_999_999_999_999_999_i64),
            ("-1876609461555241.0", -1_876_609_461_555_241),
            ("7205763906811972.0", 7_205_763_906_811_972),
        ] {
            let mut e = entry(r#"{"p": -1876609461555241.0}"#);
            e[4].1 = format!(r#"{{"k":{text}}}"#).into_bytes();
            let w = decode(&e, &config, Some(0)).unwrap_or_else(|r| panic!("{text}: {r}"));
            assert_eq!(
                w.key.values().collect::<Vec<_>>(),
                [&KeyValue::Int(want)],
                "{text}"
            );
            let p = w.doc.unwrap().get_f64("p").unwrap();
            assert_eq!(p, -1_876_609_461_555_241.0);
        }
    }

    /// Regression (found by tests/protocol_props.rs): a BSON document is
    /// length-prefixed, so one of 123 bytes (or 379, 635, ...) starts with
    /// `{`; it was refused as "looks like JSON text", key or payload.
    #[test]
    fn a_bson_document_whose_first_byte_is_a_brace_is_bson() {
        let config = Config::from_toml(CONFIG).unwrap();
        let sized = |doc: Document, len: usize| {
            let pad = len - bson::to_vec(&doc).unwrap().len();
            let mut d = doc;
            // A string field adds 8 bytes plus its text.
            d.insert("p", "x".repeat(pad - 8));
            let bytes = bson::to_vec(&d).unwrap();
            assert_eq!((bytes.len(), bytes[0]), (len, b'{'));
            bytes
        };
        for len in [123, 379] {
            let mut e = entry("{}");
            e[3].1 = b"bson".to_vec();
            e[5].1 = sized(Document::new(), len);
            let key = sized(mongodb::bson::doc! {"k": "a"}, len);
            e[4].1 = bson::to_vec(&mongodb::bson::doc! {"k": "a"}).unwrap();
            let w = decode(&e, &config, Some(0)).unwrap_or_else(|r| panic!("doc of {len}: {r}"));
            assert_eq!(w.doc.unwrap().get_str("p").unwrap().len(), len - 5 - 8);
            // The key too (an extra field, so refused, but for that reason).
            e[4].1 = key;
            let r = decode(&e, &config, Some(0)).unwrap_err();
            assert!(r.detail.contains("extra field \"p\""), "key of {len}: {r}");
        }
        // JSON text declared bson still gets the hint.
        let mut e = entry(r#"{"a":1}"#);
        e[3].1 = b"bson".to_vec();
        e[4].1 = bson::to_vec(&mongodb::bson::doc! {"k": "a"}).unwrap();
        let r = decode(&e, &config, Some(0)).unwrap_err();
        assert_eq!(r.reason, RejectReason::Payload);
        assert!(r.detail.contains("looks like JSON text"), "{r}");
    }

    #[test]
    fn a_document_bson_cannot_encode_is_a_payload_fault_not_too_large() {
        let config = Config::from_toml(CONFIG).unwrap();
        // A field name with NUL: valid JSON, not encodable as BSON.
        let err = decode(&entry(r#"{"a\u0000b": 1}"#), &config, Some(0)).unwrap_err();
        assert_eq!(err.reason, RejectReason::Payload, "{err}");
        assert!(err.detail.contains("BSON"), "{err}");
        assert!(!err.detail.contains("18446744073709551615"), "{err}");
    }
}
