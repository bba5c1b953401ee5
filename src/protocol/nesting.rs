//! How deep a document nests, measured on its BSON bytes before anything
//! builds it.
//!
//! bson's decoder (2.15) recurses once per level of nesting and has no limit
//! of its own. A crafted stream entry of some thousands of levels (well under
//! a megabyte) would overflow the daemon's stack and abort the whole process;
//! the next owner of the partition would claim the entry and abort in turn.
//! MongoDB stores at most 100 levels of nesting, so writ refuses deeper
//! documents up front, as a bad payload: the daemon dead-letters the entry
//! with this reason, and the Rust client refuses the write before the stream.
//! The walk below recurses at most [`MAX_NESTING`] + 1 levels, whatever the
//! input.

use mongodb::bson::raw::{RawArray, RawBsonRef, RawDocument, Result as RawResult};

/// The deepest nesting of objects and arrays accepted below a key or
/// payload document: MongoDB's own limit for stored documents.
pub const MAX_NESTING: usize = 100;

/// How many levels of objects and arrays `raw` nests below its top level,
/// counted no further than `MAX_NESTING + 1`; an error if the bytes are not
/// BSON (the caller's decoder says how).
pub fn nesting(raw: &[u8]) -> RawResult<usize> {
    document(RawDocument::from_bytes(raw)?, 0)
}

/// The deepest level under `doc`, which sits at `level`.
fn document(doc: &RawDocument, level: usize) -> RawResult<usize> {
    let mut deepest = level;
    for item in doc {
        let (_, value) = item?;
        deepest = deepest.max(under(value, level)?);
        if deepest > MAX_NESTING {
            break;
        }
    }
    Ok(deepest)
}

/// The deepest level under `array`, which sits at `level`.
fn array(array: &RawArray, level: usize) -> RawResult<usize> {
    let mut deepest = level;
    for value in array {
        deepest = deepest.max(under(value?, level)?);
        if deepest > MAX_NESTING {
            break;
        }
    }
    Ok(deepest)
}

/// The deepest level reached by `value`, a field of a container at `level`.
fn under(value: RawBsonRef<'_>, level: usize) -> RawResult<usize> {
    let next = level + 1;
    if next > MAX_NESTING {
        return Ok(match value {
            RawBsonRef::Document(_)
            | RawBsonRef::Array(_)
            | RawBsonRef::JavaScriptCodeWithScope(_) => next,
            _ => level,
        });
    }
    match value {
        RawBsonRef::Document(d) => document(d, next),
        RawBsonRef::Array(a) => array(a, next),
        RawBsonRef::JavaScriptCodeWithScope(c) => document(c.scope, next),
        _ => Ok(level),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, Bson, Document, JavaScriptCodeWithScope};

    fn bytes(d: &Document) -> Vec<u8> {
        crate::bson_bytes::to_vec(d).unwrap()
    }

    /// `{"a": {"a": ... {"x": 1}}}` with `levels` objects below the top.
    fn objects(levels: usize) -> Document {
        let mut d = doc! {"x": 1};
        for _ in 0..levels {
            d = doc! {"a": d};
        }
        d
    }

    #[test]
    fn counts_objects_arrays_and_code_scopes() {
        assert_eq!(nesting(&bytes(&doc! {})).unwrap(), 0);
        assert_eq!(nesting(&bytes(&doc! {"x": 1, "s": "t"})).unwrap(), 0);
        assert_eq!(nesting(&bytes(&doc! {"a": {"b": 1}})).unwrap(), 1);
        assert_eq!(
            nesting(&bytes(&doc! {"a": [1, [2, {"c": []}]]})).unwrap(),
            4
        );
        // The deepest branch counts, not the first.
        assert_eq!(
            nesting(&bytes(&doc! {"a": 1, "b": {}, "c": {"d": {"e": {}}}})).unwrap(),
            3
        );
        let code = Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
            code: "x".into(),
            scope: doc! {"y": {"z": 1}},
        });
        assert_eq!(nesting(&bytes(&doc! {"f": code})).unwrap(), 2);
    }

    #[test]
    fn stops_counting_past_the_limit() {
        assert_eq!(nesting(&bytes(&objects(MAX_NESTING))).unwrap(), MAX_NESTING);
        assert_eq!(
            nesting(&bytes(&objects(MAX_NESTING + 1))).unwrap(),
            MAX_NESTING + 1
        );
        assert_eq!(
            nesting(&bytes(&objects(MAX_NESTING + 50))).unwrap(),
            MAX_NESTING + 1
        );
    }

    #[test]
    fn bytes_that_are_not_bson_are_an_error() {
        assert!(nesting(b"").is_err());
        assert!(nesting(&[9, 0, 0, 0, 0x03, b'a', 0, 0, 0]).is_err());
    }
}
