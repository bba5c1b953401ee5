//! Decoding one stream entry: its fields, each at most once, checked in a
//! fixed order (version, collection, op, encoding, key, payload, reply
//! address), so that a bad entry gets one reject naming its first fault
//! (tests/reject_precedence.rs pins the order).

use mongodb::bson::Document;

use super::nesting::{nesting, MAX_NESTING};
use super::{
    check_fields, check_size, field, valid_id, Encoding, Key, Op, Reject, RejectReason, ReplyTo,
    Write, PROTOCOL_VERSION,
};
use crate::config::{CollectionConfig, Config};

/// Decodes and validates the fields of one stream entry.
///
/// `partition` is the stream the entry was read from; an entry whose key hashes
/// elsewhere is refused, because per-key order only holds within one stream.
pub fn decode(
    fields: &[(Vec<u8>, Vec<u8>)],
    config: &Config,
    partition: Option<u32>,
) -> Result<Write, Reject> {
    decode_in(fields, config, partition, config.partitions)
}

/// [`decode`] of an entry read under a partition count of `count` (a dead
/// letter parked before the count was changed: its partition is checked
/// against the count it was written under).
pub fn decode_in(
    fields: &[(Vec<u8>, Vec<u8>)],
    config: &Config,
    partition: Option<u32>,
    count: u32,
) -> Result<Write, Reject> {
    let slots = Slots::collect(fields)?;
    check_version(
        slots
            .text(0)
            .map_err(|r| r.with_reason(RejectReason::BadVersion))?,
    )?;
    let coll_name = slots.text(1)?;
    let coll = config.collection(coll_name).ok_or_else(|| {
        Reject::new(
            RejectReason::UnknownCollection,
            format!(
                "collection {coll_name:?} is not declared; add it to [[collections]] in the config"
            ),
        )
    })?;
    let op = parse_op(slots.text(2)?)?;
    let enc = parse_encoding(slots.text(3)?)?;
    let key = decode_key(slots.get(4), enc, coll, partition.map(|p| (p, count)))?;
    let doc = decode_payload(op, slots.get(5), enc, coll, config)?;
    let reply = reply_to(&slots)?;
    Ok(Write {
        collection: coll.name.clone(),
        key,
        op,
        doc,
        reply,
    })
}

/// An entry's fields by position in [`field::ALL`]: each at most once, no
/// other names.
struct Slots<'a>([Option<&'a [u8]>; 8]);

impl<'a> Slots<'a> {
    fn collect(fields: &'a [(Vec<u8>, Vec<u8>)]) -> Result<Slots<'a>, Reject> {
        let mut slots: [Option<&[u8]>; 8] = [None; 8];
        for (name, value) in fields {
            let idx = field::ALL
                .iter()
                .position(|f| f.as_bytes() == name.as_slice())
                .ok_or_else(|| {
                    Reject::new(
                        RejectReason::Malformed,
                        format!(
                            "unknown field {:?}; v1 fields are {:?}",
                            String::from_utf8_lossy(name),
                            field::ALL
                        ),
                    )
                })?;
            if slots[idx].replace(value).is_some() {
                return Err(Reject::new(
                    RejectReason::Malformed,
                    format!("field {:?} appears twice", field::ALL[idx]),
                ));
            }
        }
        Ok(Slots(slots))
    }

    fn get(&self, i: usize) -> Option<&'a [u8]> {
        self.0[i]
    }

    /// A field that must be present and UTF-8.
    fn text(&self, i: usize) -> Result<&'a str, Reject> {
        let raw = self.get(i).ok_or_else(|| {
            Reject::new(
                RejectReason::Malformed,
                format!("missing field {:?}", field::ALL[i]),
            )
        })?;
        std::str::from_utf8(raw).map_err(|_| {
            Reject::new(
                RejectReason::Malformed,
                format!("field {:?} is not UTF-8", field::ALL[i]),
            )
        })
    }
}

fn check_version(version: &str) -> Result<(), Reject> {
    if version == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(Reject::new(
        RejectReason::BadVersion,
        format!("protocol version {version:?} is not supported; this daemon speaks {PROTOCOL_VERSION:?}"),
    ))
}

fn parse_op(op: &str) -> Result<Op, Reject> {
    match op {
        "put" => Ok(Op::Put),
        "remove" => Ok(Op::Remove),
        "delete" => Ok(Op::Delete),
        other => Err(Reject::new(
            RejectReason::Malformed,
            format!("op {other:?} is not put, remove or delete"),
        )),
    }
}

fn parse_encoding(enc: &str) -> Result<Encoding, Reject> {
    match enc {
        "json" => Ok(Encoding::Json),
        "bson" => Ok(Encoding::Bson),
        other => Err(Reject::new(
            RejectReason::Malformed,
            format!("enc {other:?} is not json or bson"),
        )),
    }
}

/// The key, checked against the collection's key fields and (for the daemon)
/// against the partition it was read from.
fn decode_key(
    raw: Option<&[u8]>,
    enc: Encoding,
    coll: &CollectionConfig,
    partition: Option<(u32, u32)>,
) -> Result<Key, Reject> {
    let raw = raw.ok_or_else(|| Reject::new(RejectReason::KeyField, "missing field \"key\""))?;
    let key = Key::from_document(&decode_document(raw, enc, "key")?, coll)?;
    if let Some((p, count)) = partition {
        let expected = key.partition(&coll.name, count);
        if expected != p {
            return Err(Reject::new(
                RejectReason::WrongPartition,
                format!("key hashes to partition {expected} but was written to partition {p}; compute the partition as docs/protocol.md says"),
            ));
        }
    }
    Ok(key)
}

/// The document of a `put` (size- and layout-checked); none for the others.
fn decode_payload(
    op: Op,
    raw: Option<&[u8]>,
    enc: Encoding,
    coll: &CollectionConfig,
    config: &Config,
) -> Result<Option<Document>, Reject> {
    match (op, raw) {
        (Op::Put, Some(raw)) => {
            let doc = decode_document(raw, enc, "doc")?;
            check_size(&doc, config.max_document_bytes)?;
            if coll.layout == crate::config::Layout::Fields {
                check_fields(&doc, coll)?;
            }
            Ok(Some(doc))
        }
        (Op::Put, None) => Err(Reject::new(
            RejectReason::Payload,
            "op put needs a \"doc\" field",
        )),
        (_, Some(_)) => Err(Reject::new(
            RejectReason::Malformed,
            format!("op {} takes no \"doc\" field", op.as_str()),
        )),
        (_, None) => Ok(None),
    }
}

/// Where the ack goes: `client` and `req` together, or neither.
fn reply_to(slots: &Slots<'_>) -> Result<Option<ReplyTo>, Reject> {
    match (slots.get(6), slots.get(7)) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => {
            let client = slots.text(6)?;
            let request = slots.text(7)?;
            if !valid_id(client) || !valid_id(request) {
                return Err(Reject::new(
                    RejectReason::Malformed,
                    "client and req must be 1-64 characters of [A-Za-z0-9_.:-]",
                ));
            }
            Ok(Some(ReplyTo {
                client: client.to_string(),
                request: request.to_string(),
            }))
        }
        _ => Err(Reject::new(
            RejectReason::Malformed,
            "client and req go together: give both or neither",
        )),
    }
}

fn decode_document(raw: &[u8], enc: Encoding, what: &str) -> Result<Document, Reject> {
    let reason = if what == "key" {
        RejectReason::KeyField
    } else {
        RejectReason::Payload
    };
    match enc {
        // A BSON document starts with its length, so its first byte can be
        // `{` too (123 bytes long, 379, ...): only a failed parse is JSON text.
        Encoding::Bson => {
            let bad = |e: String| {
                if raw.first() == Some(&b'{') {
                    Reject::new(
                        reason,
                        format!("{what:?} is declared bson but looks like JSON text; set enc=json"),
                    )
                } else {
                    Reject::new(reason, format!("{what:?} is not a BSON document: {e}"))
                }
            };
            // Measured before decoding: the decoder recurses without a limit.
            match nesting(raw) {
                Err(e) => return Err(bad(e.to_string())),
                Ok(levels) if levels > MAX_NESTING => return Err(too_deep(reason, what)),
                Ok(_) => {}
            }
            Document::from_reader(raw).map_err(|e| bad(e.to_string()))
        }
        Encoding::Json => {
            let text = std::str::from_utf8(raw).map_err(|_| {
                Reject::new(reason, format!("{what:?} is declared json but is not UTF-8 text (BSON bytes? set enc=bson)"))
            })?;
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| Reject::new(reason, format!("{what:?} is not valid JSON: {e}")))?;
            let doc = json_to_document(value)
                .map_err(|m| Reject::new(reason, format!("{what:?}: {m}")))?;
            // serde_json stops at 128 levels; MongoDB at 100.
            let bytes = crate::bson_bytes::to_vec(&doc).map_err(|e| {
                Reject::new(reason, format!("{what:?} cannot be encoded as BSON: {e}"))
            })?;
            match nesting(&bytes) {
                Ok(levels) if levels > MAX_NESTING => Err(too_deep(reason, what)),
                _ => Ok(doc),
            }
        }
    }
}

/// The refusal of a document nested deeper than MongoDB stores.
pub(crate) fn too_deep(reason: RejectReason, what: &str) -> Reject {
    Reject::new(
        reason,
        format!("{what:?} nests objects and arrays more than {MAX_NESTING} levels deep, past MongoDB's limit; flatten it"),
    )
}

/// Converts a JSON object (Extended JSON accepted) to a BSON document.
pub fn json_to_document(value: serde_json::Value) -> Result<Document, String> {
    match value {
        serde_json::Value::Object(map) => {
            Document::try_from(map).map_err(|e| format!("not a valid Extended JSON document: {e}"))
        }
        other => Err(format!("must be a JSON object, not {}", json_kind(&other))),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BSON document nested `depth` levels deep: {"a": {"a": ... {}}}.
    fn nested(depth: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + 8 * depth);
        for k in (1..=depth).rev() {
            out.extend_from_slice(&((5 + 8 * k) as i32).to_le_bytes());
            out.extend_from_slice(&[0x03, b'a', 0]);
        }
        out.extend_from_slice(&[5, 0, 0, 0, 0]);
        out.extend(std::iter::repeat_n(0u8, depth));
        out
    }

    #[test]
    fn a_deeply_nested_document_is_refused_not_a_crash() {
        // On a thread with tokio's default worker stack (2 MiB).
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let doc = nested(20_000);
                decode_document(&doc, Encoding::Bson, "doc").map(drop)
            })
            .unwrap()
            .join()
            .unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.reason, RejectReason::Payload, "{e:?}");
        assert!(e.detail.contains("more than 100 levels deep"), "{e}");
    }

    #[test]
    fn nesting_up_to_mongodbs_limit_decodes_and_one_more_is_refused() {
        for enc in [Encoding::Bson, Encoding::Json] {
            let raw = |levels: usize| match enc {
                Encoding::Bson => nested(levels),
                Encoding::Json => {
                    format!("{}{{}}{}", r#"{"a":"#.repeat(levels), "}".repeat(levels)).into_bytes()
                }
            };
            assert!(
                decode_document(&raw(MAX_NESTING), enc, "doc").is_ok(),
                "{enc:?}"
            );
            let e = decode_document(&raw(MAX_NESTING + 1), enc, "key").unwrap_err();
            assert_eq!(e.reason, RejectReason::KeyField, "{enc:?}");
            assert!(e.detail.starts_with("\"key\" nests"), "{e}");
        }
    }
}
