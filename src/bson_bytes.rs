//! BSON bytes of a [`Document`], written directly.
//!
//! `bson::to_vec` (and `Document::to_writer`, which calls it) goes through
//! serde: every `ObjectId` is turned into a hex string and parsed back, every
//! `DateTime` into an extended-JSON map, and each level is buffered. Writ
//! encodes every payload, cache document and bulk statement it handles, so
//! that detour was a visible part of the daemon's CPU (`perf` of a drain,
//! docs/performance.md, session 10).
//!
//! [`to_vec`] writes the same bytes in one pass. The rare types whose
//! encoding has quirks (old binary, regular expressions, code with scope,
//! DB pointers) and keys with a NUL byte (an error) go to `bson::to_vec`
//! instead, so the result is always exactly what `bson::to_vec` gives: a
//! property test checks it.

use mongodb::bson::{self, spec::BinarySubtype, Bson, Document, RawDocumentBuf};

/// The BSON bytes of `doc`, as `bson::to_vec` would give them.
pub fn to_vec(doc: &Document) -> bson::ser::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    if write_document(&mut out, doc) {
        Ok(out)
    } else {
        bson::to_vec(doc)
    }
}

/// [`to_vec`] as a [`RawDocumentBuf`], for `run_raw_command`.
pub fn to_raw(doc: &Document) -> bson::raw::Result<RawDocumentBuf> {
    let mut out = Vec::with_capacity(256);
    if write_document(&mut out, doc) {
        RawDocumentBuf::from_bytes(out)
    } else {
        RawDocumentBuf::from_document(doc)
    }
}

/// Appends `doc`; false if a part needs `bson::to_vec` (the buffer is then
/// in an unspecified state).
fn write_document(out: &mut Vec<u8>, doc: &Document) -> bool {
    let start = begin(out);
    for (key, value) in doc {
        if !element(out, key, value) {
            return false;
        }
    }
    end(out, start)
}

fn write_array(out: &mut Vec<u8>, items: &[Bson]) -> bool {
    let start = begin(out);
    let mut key = itoa::Buffer::new();
    for (i, value) in items.iter().enumerate() {
        if !element(out, key.format(i), value) {
            return false;
        }
    }
    end(out, start)
}

/// Reserves the length prefix; its offset.
fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    start
}

/// Writes the terminator and the length; false if it overflows an `i32`.
fn end(out: &mut Vec<u8>, start: usize) -> bool {
    out.push(0);
    let Ok(len) = i32::try_from(out.len() - start) else {
        return false;
    };
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    true
}

fn string(out: &mut Vec<u8>, s: &str) -> bool {
    let Ok(len) = i32::try_from(s.len() + 1) else {
        return false;
    };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    true
}

/// One element: type byte, key, value.
fn element(out: &mut Vec<u8>, key: &str, value: &Bson) -> bool {
    if key.as_bytes().contains(&0) {
        return false; // bson::to_vec reports it
    }
    let tag = out.len();
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    let (kind, ok) = match value {
        Bson::Double(v) => (0x01, extend(out, &v.to_le_bytes())),
        Bson::String(s) => (0x02, string(out, s)),
        Bson::Document(d) => (0x03, write_document(out, d)),
        Bson::Array(a) => (0x04, write_array(out, a)),
        Bson::Binary(b) if b.subtype != BinarySubtype::BinaryOld => {
            let Ok(len) = i32::try_from(b.bytes.len()) else {
                return false;
            };
            out.extend_from_slice(&len.to_le_bytes());
            out.push(u8::from(b.subtype));
            (0x05, extend(out, &b.bytes))
        }
        Bson::Undefined => (0x06, true),
        Bson::ObjectId(id) => (0x07, extend(out, &id.bytes())),
        Bson::Boolean(b) => (0x08, extend(out, &[u8::from(*b)])),
        Bson::DateTime(d) => (0x09, extend(out, &d.timestamp_millis().to_le_bytes())),
        Bson::Null => (0x0A, true),
        Bson::JavaScriptCode(code) => (0x0D, string(out, code)),
        Bson::Symbol(s) => (0x0E, string(out, s)),
        Bson::Int32(v) => (0x10, extend(out, &v.to_le_bytes())),
        Bson::Timestamp(t) => {
            let v = (u64::from(t.time) << 32) | u64::from(t.increment);
            (0x11, extend(out, &v.to_le_bytes()))
        }
        Bson::Int64(v) => (0x12, extend(out, &v.to_le_bytes())),
        Bson::Decimal128(d) => (0x13, extend(out, &d.bytes())),
        Bson::MaxKey => (0x7F, true),
        Bson::MinKey => (0xFF, true),
        // Old binary, regular expressions, code with scope, DB pointers.
        _ => return false,
    };
    out[tag] = kind;
    ok
}

fn extend(out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    out.extend_from_slice(bytes);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{
        doc, oid::ObjectId, Binary, DateTime, Decimal128, JavaScriptCodeWithScope, Regex, Timestamp,
    };
    use proptest::prelude::*;

    fn leaf() -> impl Strategy<Value = Bson> {
        prop_oneof![
            any::<f64>().prop_map(Bson::Double),
            ".{0,12}".prop_map(Bson::String),
            any::<bool>().prop_map(Bson::Boolean),
            Just(Bson::Null),
            Just(Bson::Undefined),
            Just(Bson::MaxKey),
            Just(Bson::MinKey),
            any::<i32>().prop_map(Bson::Int32),
            any::<i64>().prop_map(Bson::Int64),
            any::<[u8; 12]>().prop_map(|b| Bson::ObjectId(ObjectId::from_bytes(b))),
            any::<i64>().prop_map(|m| Bson::DateTime(DateTime::from_millis(m))),
            (any::<u32>(), any::<u32>())
                .prop_map(|(time, increment)| Bson::Timestamp(Timestamp { time, increment })),
            any::<[u8; 16]>().prop_map(|b| Bson::Decimal128(Decimal128::from_bytes(b))),
            (0u8..=0x09, proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(s, bytes)| {
                Bson::Binary(Binary {
                    subtype: BinarySubtype::from(s),
                    bytes,
                })
            }),
            ".{0,8}".prop_map(Bson::JavaScriptCode),
            ".{0,8}".prop_map(Bson::Symbol),
            // The ones that go to bson::to_vec.
            ("[a-z]{0,4}", "[imsx]{0,3}").prop_map(|(pattern, options)| {
                Bson::RegularExpression(Regex { pattern, options })
            }),
            ".{0,6}".prop_map(
                |code| Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                    code,
                    scope: doc! {"a": 1},
                })
            ),
            proptest::collection::vec(any::<u8>(), 0..6).prop_map(|bytes| Bson::Binary(Binary {
                subtype: BinarySubtype::BinaryOld,
                bytes,
            })),
        ]
    }

    fn value() -> impl Strategy<Value = Bson> {
        leaf().prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Bson::Array),
                proptest::collection::vec(("[a-z_$.]{0,6}", inner), 0..5)
                    .prop_map(|kv| Bson::Document(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_same_bytes_as_bson_to_vec(
            fields in proptest::collection::vec((".{0,8}", value()), 0..8)
        ) {
            let doc: Document = fields.into_iter().collect();
            let want = bson::to_vec(&doc).map_err(|e| e.to_string());
            let got = to_vec(&doc).map_err(|e| e.to_string());
            prop_assert_eq!(&got, &want);
            if let Ok(bytes) = want {
                let raw = to_raw(&doc).unwrap();
                prop_assert_eq!(raw.as_bytes(), &bytes[..]);
            }
        }
    }

    #[test]
    fn a_key_with_a_nul_byte_is_refused_as_bson_refuses_it() {
        let doc = doc! {"a\0b": 1};
        assert!(bson::to_vec(&doc).is_err());
        assert!(to_vec(&doc).is_err());
        assert!(to_vec(&doc! {"x": {"y\0": 1}}).is_err());
    }

    #[test]
    fn a_typical_cache_document_round_trips() {
        let at = DateTime::from_millis(1_700_000_000_123);
        let d = doc! {
            "_id": ObjectId::new(), "symbol": "BTCUSDT", "_writ": {"v": "0001-0002", "at": at},
            "payload": {"price": 1.5, "qty": 3_i64, "tags": ["a", "b"]}, "removed": false,
        };
        let bytes = to_vec(&d).unwrap();
        assert_eq!(bytes, bson::to_vec(&d).unwrap());
        assert_eq!(bson::from_slice::<Document>(&bytes).unwrap(), d);
    }
}
