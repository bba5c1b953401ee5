//! Raw Redis Stream replies. writ parses stream entries itself, keeping each
//! entry's fields as an ordered list of byte pairs, so duplicate or odd fields
//! are seen (and refused) instead of being folded away by a map.

use redis::Value;

use crate::protocol::Version;

/// Fields of an entry, in order.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One entry of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Entry id.
    pub id: Version,
    /// Fields; `None` if the entry was deleted while pending, or if its field
    /// list was not a list of pairs.
    pub fields: Option<Fields>,
}

impl Entry {
    /// Its size as the in-flight byte bound counts it: the lengths of its
    /// values (as `src/lua/fenced_read.lua` counts them).
    pub fn bytes(&self) -> usize {
        self.fields
            .as_ref()
            .map_or(0, |f| f.iter().map(|(_, v)| v.len()).sum())
    }
}

/// The bytes of a string reply, moved out of it.
fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

fn into_items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// Parses `[[id, [f, v, ...]], ...]`.
pub fn parse_entries(v: &Value) -> Vec<Entry> {
    take_entries(v.clone())
}

/// Parses `[[id, [f, v, ...]], ...]` as [`parse_entries`] does, moving the
/// values out of the reply instead of copying them (the daemon's reads: a
/// read of large documents is not held twice).
pub fn take_entries(v: Value) -> Vec<Entry> {
    let Some(list) = into_items(v) else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|e| {
            let mut parts = into_items(e)?.into_iter();
            let id: Version = std::str::from_utf8(&into_bytes(parts.next()?)?)
                .ok()?
                .parse()
                .ok()?;
            let fields = parts.next().and_then(into_items).and_then(|kv| {
                if kv.len() % 2 != 0 {
                    return None;
                }
                let mut out = Vec::with_capacity(kv.len() / 2);
                let mut kv = kv.into_iter();
                while let (Some(f), Some(v)) = (kv.next(), kv.next()) {
                    out.push((into_bytes(f)?, into_bytes(v)?));
                }
                Some(out)
            });
            Some(Entry { id, fields })
        })
        .collect()
}

/// Parses an `XREAD`/`XREADGROUP` reply for one stream (RESP2 or RESP3).
pub fn parse_read_reply(v: &Value) -> Vec<Entry> {
    match v {
        Value::Nil => Vec::new(),
        Value::Map(m) => m.first().map(|(_, e)| parse_entries(e)).unwrap_or_default(),
        other => items(other)
            .and_then(|streams| streams.first())
            .and_then(items)
            .and_then(|s| s.get(1))
            .map(parse_entries)
            .unwrap_or_default(),
    }
}

/// Parses an `XAUTOCLAIM` reply: (next cursor, claimed entries, ids that
/// were pending but are gone from the stream), moving the entries' values
/// out of it.
pub fn parse_autoclaim(v: Value) -> (String, Vec<Entry>, Vec<String>) {
    let Some(parts) = into_items(v) else {
        return ("0-0".into(), Vec::new(), Vec::new());
    };
    let mut parts = parts.into_iter();
    let cursor = parts
        .next()
        .and_then(into_bytes)
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| "0-0".into());
    let entries = parts.next().map(take_entries).unwrap_or_default();
    let deleted = parts
        .next()
        .and_then(into_items)
        .map(|ids| {
            ids.into_iter()
                .filter_map(into_bytes)
                .filter_map(|b| String::from_utf8(b).ok())
                .collect()
        })
        .unwrap_or_default();
    (cursor, entries, deleted)
}
