//! Property tests, and a long-run fuzz harness, for the stream-entry decoder and
//! canonical keys. Everything the properties compare against is written here
//! from docs/protocol.md, not taken from the library:
//!
//! - decoding any field map (arbitrary bytes, or a valid entry with random
//!   mutations) never panics and gives either a write that keeps every rule
//!   or a typed refusal; an unmutated valid entry gives exactly its write;
//! - a canonical key is the documented escaping of its values (an encoder
//!   here), parses back to the same values (a strict parser here), and keys
//!   over `MAX_KEY_BYTES` or with ill-typed values are refused `key_field`;
//! - a key's partition is FNV-1a 64 (written here) of
//!   `collection ++ 0x00 ++ canonical`, modulo the partition count.
//!
//! Case counts are small by default. `WRIT_FUZZ_CASES=<n>` runs each property
//! `n` times: see "Fuzzing" in docs/performance.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use mongodb::bson::{self, Bson, Document};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{
    Config as RunConfig, FileFailurePersistence, RngAlgorithm, TestRunner,
};
use writ::config::{CollectionConfig, Config, Layout};
use writ::protocol::{self, Key, KeyValue, Op, RejectReason, MAX_KEY_BYTES};

/// Cases per property: `WRIT_FUZZ_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    match std::env::var("WRIT_FUZZ_CASES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("WRIT_FUZZ_CASES={v:?} is not a case count")),
        Err(_) => default,
    }
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(RunConfig {
        cases: cases(default_cases),
        source_file: Some(file!()),
        // Failures are kept in tests/protocol_props.proptest-regressions and
        // re-run first.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        rng_algorithm: RngAlgorithm::XorShift,
        ..RunConfig::default()
    })
}

/// Runs a property; a failure (a panic included) fails the test with the
/// shrunk input.
fn check<S: Strategy>(
    what: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = runner(default_cases);
    let started = std::time::Instant::now();
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{what}: {e}");
    }
    eprintln!(
        "{what}: {} cases passed in {:.1?}",
        cases(default_cases),
        started.elapsed()
    );
}

const PARTITIONS: u32 = 8;
const MAX_DOC: usize = 4096;
const CONFIG: &str = r#"
[redis]
partitions = 8
[mongodb]
[client]
max_document_bytes = 4096
[[collections]]
name = "signal"
key = ["symbol", "strategyName", "exchangeName"]
[[collections]]
name = "candle"
key = ["symbol", "interval", "timestamp"]
mode = "insert_once"
[[collections]]
name = "storage"
key = ["backtest", "signalId"]
layout = "fields"
timestamps = true
"#;
/// The collections of `CONFIG`: name, key fields, `fields` layout.
const COLLECTIONS: &[(&str, &[&str], bool)] = &[
    ("signal", &["symbol", "strategyName", "exchangeName"], false),
    ("candle", &["symbol", "interval", "timestamp"], false),
    ("storage", &["backtest", "signalId"], true),
];

fn config() -> Config {
    let config = Config::from_toml(CONFIG).unwrap();
    assert_eq!(config.partitions, PARTITIONS);
    assert_eq!(config.max_document_bytes, MAX_DOC);
    for (name, key, fields) in COLLECTIONS {
        let c = config.collection(name).unwrap();
        assert_eq!(&c.key, key);
        assert_eq!(c.layout == Layout::Fields, *fields);
    }
    config
}

// ---------------------------------------------------------------------------
// docs/protocol.md §1, written out independently.

/// A key value as the protocol sees it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// The canonical key: compact JSON array; strings escape only `"`, `\` and
/// U+0000-U+001F (`\b \f \n \r \t`, else `\u00xx` lowercase).
fn canonical(values: &[Value]) -> String {
    let mut s = String::from("[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match v {
            Value::Str(t) => push_string(&mut s, t),
            Value::Int(n) => write!(s, "{n}").unwrap(),
            Value::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        }
    }
    s.push(']');
    s
}

fn push_string(s: &mut String, t: &str) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\u{8}' => s.push_str("\\b"),
            '\u{c}' => s.push_str("\\f"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => write!(s, "\\u{:04x}", c as u32).unwrap(),
            c => s.push(c),
        }
    }
    s.push('"');
}

/// Parses a canonical key, refusing anything the documented form does not
/// allow (spaces, other escapes, uppercase hex, raw control characters,
/// leading zeros, `-0`).
fn parse_canonical(text: &str) -> Result<Vec<Value>, String> {
    let mut p = text.char_indices().peekable();
    let mut out = Vec::new();
    let err = |at: usize, what: &str| format!("{what} at byte {at} of {text:?}");
    if p.next().map(|(_, c)| c) != Some('[') {
        return Err(err(0, "no ["));
    }
    if p.peek().map(|(_, c)| *c) == Some(']') {
        p.next();
    } else {
        loop {
            let Some((at, c)) = p.next() else {
                return Err(err(text.len(), "unexpected end"));
            };
            match c {
                '"' => {
                    let mut s = String::new();
                    loop {
                        let Some((at, c)) = p.next() else {
                            return Err(err(text.len(), "unterminated string"));
                        };
                        match c {
                            '"' => break,
                            '\\' => match p.next().map(|(_, c)| c) {
                                Some('"') => s.push('"'),
                                Some('\\') => s.push('\\'),
                                Some('b') => s.push('\u{8}'),
                                Some('f') => s.push('\u{c}'),
                                Some('n') => s.push('\n'),
                                Some('r') => s.push('\r'),
                                Some('t') => s.push('\t'),
                                Some('u') => {
                                    let hex: String =
                                        (0..4).filter_map(|_| p.next()).map(|(_, c)| c).collect();
                                    let ok = hex.len() == 4
                                        && hex.starts_with("00")
                                        && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
                                    let n = u32::from_str_radix(&hex, 16).ok().filter(|_| ok);
                                    match n {
                                        Some(n)
                                            if n < 0x20 && !matches!(n, 8 | 9 | 10 | 12 | 13) =>
                                        {
                                            s.push(char::from_u32(n).unwrap())
                                        }
                                        _ => {
                                            return Err(err(
                                                at,
                                                "escape \\u outside the documented form",
                                            ))
                                        }
                                    }
                                }
                                _ => return Err(err(at, "undocumented escape")),
                            },
                            c if (c as u32) < 0x20 => return Err(err(at, "raw control character")),
                            c => s.push(c),
                        }
                    }
                    out.push(Value::Str(s));
                }
                't' | 'f' => {
                    let word = if c == 't' { "true" } else { "false" };
                    let rest: String = (1..word.len())
                        .filter_map(|_| p.next())
                        .map(|(_, c)| c)
                        .collect();
                    if rest != word[1..] {
                        return Err(err(at, "bad literal"));
                    }
                    out.push(Value::Bool(c == 't'));
                }
                '-' | '0'..='9' => {
                    let mut digits = String::from(c);
                    while let Some((_, d)) = p.peek().filter(|(_, d)| d.is_ascii_digit()) {
                        digits.push(*d);
                        p.next();
                    }
                    let body = digits.trim_start_matches('-');
                    if body.is_empty()
                        || (body.len() > 1 && body.starts_with('0'))
                        || digits == "-0"
                    {
                        return Err(err(at, "not a plain decimal integer"));
                    }
                    out.push(Value::Int(
                        digits
                            .parse()
                            .map_err(|_| err(at, "integer out of range"))?,
                    ));
                }
                _ => return Err(err(at, "unexpected character")),
            }
            match p.next() {
                Some((_, ',')) => continue,
                Some((_, ']')) => break,
                Some((at, _)) => return Err(err(at, "expected , or ]")),
                None => return Err(err(text.len(), "unexpected end")),
            }
        }
    }
    match p.next() {
        None => Ok(out),
        Some((at, _)) => Err(err(at, "text after ]")),
    }
}

/// FNV-1a 64: offset basis 0xcbf29ce484222325, prime 0x100000001b3.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// `fnv1a64(collection ++ 0x00 ++ canonical) mod partitions`.
fn partition(collection: &str, canonical: &str, partitions: u32) -> u32 {
    let mut bytes = collection.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(canonical.as_bytes());
    (fnv1a64(&bytes) % u64::from(partitions)) as u32
}

// ---------------------------------------------------------------------------
// Generators.

/// A key value as a writer may send it, with its BSON type.
#[derive(Debug, Clone)]
enum Sent {
    Str(String),
    I32(i32),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl Sent {
    /// What the protocol makes of it; `None` if it is refused (a double with
    /// a fraction, or not below 9·10^15 in magnitude).
    fn value(&self) -> Option<Value> {
        Some(match self {
            Sent::Str(s) => Value::Str(s.clone()),
            Sent::I32(n) => Value::Int(i64::from(*n)),
            Sent::I64(n) => Value::Int(*n),
            Sent::F64(d) if d.is_finite() && d.fract() == 0.0 && d.abs() < 9.0e15 => {
                Value::Int(*d as i64)
            }
            Sent::F64(_) => return None,
            Sent::Bool(b) => Value::Bool(*b),
        })
    }

    fn bson(&self) -> Bson {
        match self {
            Sent::Str(s) => Bson::String(s.clone()),
            Sent::I32(n) => Bson::Int32(*n),
            Sent::I64(n) => Bson::Int64(*n),
            Sent::F64(d) => Bson::Double(*d),
            Sent::Bool(b) => Bson::Boolean(*b),
        }
    }

    /// As JSON text; `style` picks among the forms a writer may use.
    fn json(&self, style: u8) -> String {
        match self {
            Sent::Str(s) => {
                let mut t = String::new();
                push_string(&mut t, s);
                t
            }
            Sent::I32(n) if style % 3 == 1 => format!(r#"{{"$numberInt":"{n}"}}"#),
            Sent::I32(n) => n.to_string(),
            Sent::I64(n) if style % 3 == 1 => format!(r#"{{"$numberLong":"{n}"}}"#),
            Sent::I64(n) => n.to_string(),
            Sent::F64(d) if d.is_nan() => r#"{"$numberDouble":"NaN"}"#.into(),
            Sent::F64(d) if d.is_infinite() => {
                format!(
                    r#"{{"$numberDouble":"{}Infinity"}}"#,
                    if *d < 0.0 { "-" } else { "" }
                )
            }
            Sent::F64(d) => format!("{d:?}"),
            Sent::Bool(b) => b.to_string(),
        }
    }
}

fn key_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        3 => prop::sample::select(vec![
            '"', '\\', '\u{0}', '\u{1}', '\u{8}', '\t', '\n', '\u{b}', '\u{c}', '\r', '\u{1f}',
            '\u{7f}', '/', '<', '>', '&', '\'', '\u{2028}', '\u{2029}', '\u{feff}', 'é', '😀',
            '\u{fffd}', '\u{10ffff}',
        ]),
        3 => prop::char::range('a', 'z'),
    ]
}

fn key_string() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => vec(key_char(), 0..24).prop_map(String::from_iter),
        // Near and over MAX_KEY_BYTES.
        1 => vec(key_char(), 150..420).prop_map(String::from_iter),
        1 => (900usize..1030).prop_map(|n| "x".repeat(n)),
    ]
}

fn sent_value() -> impl Strategy<Value = Sent> {
    const LIMIT: i64 = 9_000_000_000_000_000;
    prop_oneof![
        6 => key_string().prop_map(Sent::Str),
        2 => any::<i32>().prop_map(Sent::I32),
        1 => prop::sample::select(vec![i32::MIN, i32::MAX, 0, -1, 1]).prop_map(Sent::I32),
        2 => any::<i64>().prop_map(Sent::I64),
        1 => prop::sample::select(vec![
            i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX - 1, 0, -1,
            i64::from(i32::MIN) - 1, i64::from(i32::MAX) + 1, 1 << 53, -(1 << 53),
        ])
        .prop_map(Sent::I64),
        1 => (-LIMIT + 1..LIMIT).prop_map(|n| Sent::F64(n as f64)),
        1 => prop::sample::select(vec![
            0.0, -0.0, 8_999_999_999_999_999.0, -8_999_999_999_999_999.0, 9.0e15, -9.0e15,
            0.5, -1.5, 1e300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE,
        ])
        .prop_map(Sent::F64),
        1 => any::<f64>().prop_map(Sent::F64),
        2 => any::<bool>().prop_map(Sent::Bool),
    ]
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["a", "b", "price", "side", "payload", "when", "note", "é", "x y", "n1"])
            .prop_map(String::from),
        1 => vec(prop::char::range('a', 'z'), 1..6).prop_map(String::from_iter),
    ]
}

fn scalar() -> impl Strategy<Value = Bson> {
    prop_oneof![
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        (prop::num::f64::POSITIVE
            | prop::num::f64::NEGATIVE
            | prop::num::f64::NORMAL
            | prop::num::f64::SUBNORMAL
            | prop::num::f64::ZERO)
            .prop_map(Bson::Double),
        vec(key_char(), 0..20).prop_map(|c| Bson::String(String::from_iter(c))),
        any::<bool>().prop_map(Bson::Boolean),
        Just(Bson::Null),
        (-10_000_000_000_000i64..10_000_000_000_000)
            .prop_map(|ms| Bson::DateTime(bson::DateTime::from_millis(ms))),
    ]
}

/// A small document (at most 3 levels, a few KB at the very most), now and
/// then one near `MAX_DOC` bytes of BSON, on either side of it.
fn document() -> impl Strategy<Value = Document> {
    let value = scalar().prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Bson::Array),
            vec((field_name(), inner), 0..3).prop_map(|f| Bson::Document(f.into_iter().collect())),
        ]
    });
    prop_oneof![
        30 => vec((field_name(), value), 0..5).prop_map(|f| f.into_iter().collect()),
        1 => (MAX_DOC - 40..MAX_DOC + 20).prop_map(|n| {
            let mut d = Document::new();
            d.insert("blob", "x".repeat(n - 20));
            d
        }),
    ]
}

fn request_id() -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain("_.:-".chars())
        .collect();
    vec(prop::sample::select(alphabet), 1..=64).prop_map(String::from_iter)
}

/// A write as a writer means it.
#[derive(Debug, Clone)]
struct Intent {
    coll: usize,
    key: Vec<Sent>,
    key_order: Vec<usize>,
    json_style: u8,
    op: Op,
    json: bool,
    doc: Document,
    reply: Option<(String, String)>,
}

fn intent() -> impl Strategy<Value = Intent> {
    (0..COLLECTIONS.len())
        .prop_flat_map(|coll| {
            let n = COLLECTIONS[coll].1.len();
            (
                Just(coll),
                vec(sent_value(), n),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                any::<u8>(),
                prop::sample::select(vec![Op::Put, Op::Put, Op::Remove, Op::Delete]),
                any::<bool>(),
                document(),
                prop::option::of((request_id(), request_id())),
            )
        })
        .prop_map(
            |(coll, key, key_order, json_style, op, json, doc, reply)| Intent {
                coll,
                key,
                key_order,
                json_style,
                op,
                json,
                doc,
                reply,
            },
        )
}

impl Intent {
    fn name(&self) -> &'static str {
        COLLECTIONS[self.coll].0
    }

    fn key_document(&self) -> Document {
        let names = COLLECTIONS[self.coll].1;
        self.key_order
            .iter()
            .map(|&i| (names[i].to_string(), self.key[i].bson()))
            .collect()
    }

    fn key_json(&self) -> String {
        let names = COLLECTIONS[self.coll].1;
        let parts: Vec<String> = self
            .key_order
            .iter()
            .map(|&i| format!(r#""{}":{}"#, names[i], self.key[i].json(self.json_style)))
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    /// The key values in declared order, if every one is accepted.
    fn values(&self) -> Option<Vec<Value>> {
        self.key.iter().map(Sent::value).collect()
    }

    fn fields(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut f: Vec<(&str, Vec<u8>)> = vec![
            ("v", b"1".to_vec()),
            ("coll", self.name().as_bytes().to_vec()),
            ("op", self.op.as_str().as_bytes().to_vec()),
            (
                "enc",
                if self.json {
                    b"json".to_vec()
                } else {
                    b"bson".to_vec()
                },
            ),
            (
                "key",
                if self.json {
                    self.key_json().into_bytes()
                } else {
                    bson::to_vec(&self.key_document()).unwrap()
                },
            ),
        ];
        if self.op == Op::Put {
            f.push((
                "doc",
                if self.json {
                    Bson::Document(self.doc.clone())
                        .into_canonical_extjson()
                        .to_string()
                        .into_bytes()
                } else {
                    bson::to_vec(&self.doc).unwrap()
                },
            ));
        }
        if let Some((client, req)) = &self.reply {
            f.push(("client", client.as_bytes().to_vec()));
            f.push(("req", req.as_bytes().to_vec()));
        }
        f.into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect()
    }

    /// The partition the key hashes to (by this file's FNV), if valid.
    fn partition(&self) -> Option<u32> {
        Some(partition(
            self.name(),
            &canonical(&self.values()?),
            PARTITIONS,
        ))
    }
}

/// One change to an entry's fields.
#[derive(Debug, Clone)]
enum Mutation {
    Drop(Index),
    Duplicate(Index),
    SetValue(Index, Vec<u8>),
    SetToken(Index, &'static [u8]),
    FlipBit(Index, Index, u8),
    Truncate(Index, Index),
    InsertByte(Index, Index, u8),
    Rename(Index, Vec<u8>),
    Add(Vec<u8>, Vec<u8>),
    Swap(Index, Index),
}

const TOKENS: &[&[u8]] = &[
    b"", b"1", b"2", b"0", b"put", b"remove", b"delete", b"json", b"bson", b"signal", b"candle",
    b"storage", b"nope", b"{}", b"[]", b"null", b"{", b"\xff\xfe", b"\x05\x00\x00\x00\x00",
    b"{\"a\":1}", br#"{"$numberLong":"1"}"#, br#"{"_id":1}"#, br#"{"_writ":1}"#, br#"{"$set":1}"#,
    br#"{"a.b":1}"#, br#"{"backtest":true}"#, br#"{"blob":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = || vec(any::<u8>(), 0..40);
    prop_oneof![
        any::<Index>().prop_map(Mutation::Drop),
        any::<Index>().prop_map(Mutation::Duplicate),
        (any::<Index>(), bytes()).prop_map(|(i, b)| Mutation::SetValue(i, b)),
        (any::<Index>(), prop::sample::select(TOKENS)).prop_map(|(i, t)| Mutation::SetToken(i, t)),
        (any::<Index>(), any::<Index>(), 0u8..8).prop_map(|(i, p, b)| Mutation::FlipBit(i, p, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, p)| Mutation::Truncate(i, p)),
        (any::<Index>(), any::<Index>(), any::<u8>())
            .prop_map(|(i, p, b)| Mutation::InsertByte(i, p, b)),
        (
            any::<Index>(),
            prop_oneof![
                prop::sample::select(protocol::field::ALL).prop_map(|s| s.as_bytes().to_vec()),
                vec(any::<u8>(), 0..6),
            ]
        )
            .prop_map(|(i, b)| Mutation::Rename(i, b)),
        (
            prop_oneof![
                prop::sample::select(protocol::field::ALL).prop_map(|s| s.as_bytes().to_vec()),
                vec(any::<u8>(), 0..6),
            ],
            bytes()
        )
            .prop_map(|(k, v)| Mutation::Add(k, v)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::Swap(i, j)),
    ]
}

fn apply(fields: &mut Vec<(Vec<u8>, Vec<u8>)>, m: &Mutation) {
    if let Mutation::Add(k, v) = m {
        fields.push((k.clone(), v.clone()));
        return;
    }
    if fields.is_empty() {
        return;
    }
    let n = fields.len();
    match m {
        Mutation::Drop(i) => {
            fields.remove(i.index(n));
        }
        Mutation::Duplicate(i) => fields.push(fields[i.index(n)].clone()),
        Mutation::SetValue(i, b) => fields[i.index(n)].1 = b.clone(),
        Mutation::SetToken(i, t) => fields[i.index(n)].1 = t.to_vec(),
        Mutation::FlipBit(i, p, bit) => {
            let v = &mut fields[i.index(n)].1;
            if !v.is_empty() {
                let at = p.index(v.len());
                v[at] ^= 1 << bit;
            }
        }
        Mutation::Truncate(i, p) => {
            let v = &mut fields[i.index(n)].1;
            let to = p.index(v.len() + 1);
            v.truncate(to);
        }
        Mutation::InsertByte(i, p, b) => {
            let v = &mut fields[i.index(n)].1;
            let at = p.index(v.len() + 1);
            v.insert(at, *b);
        }
        Mutation::Rename(i, k) => fields[i.index(n)].0 = k.clone(),
        Mutation::Swap(i, j) => fields.swap(i.index(n), j.index(n)),
        Mutation::Add(..) => unreachable!(),
    }
}

/// One decoder input: the fields, the partition it was read from, and the
/// intent it came from when it was not mutated.
#[derive(Debug, Clone)]
struct Input {
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    partition: Option<u32>,
    unmutated: Option<Intent>,
}

fn arbitrary_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..48),
        3 => prop::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
        1 => document().prop_map(|d| bson::to_vec(&d).unwrap()),
        1 => document().prop_map(|d| Bson::Document(d).into_relaxed_extjson().to_string().into_bytes()),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let arbitrary = (
        vec(
            (
                prop_oneof![
                    3 => prop::sample::select(protocol::field::ALL).prop_map(|s| s.as_bytes().to_vec()),
                    1 => vec(any::<u8>(), 0..8),
                ],
                arbitrary_value(),
            ),
            0..10,
        ),
        prop::option::of(0..PARTITIONS + 1),
    )
        .prop_map(|(fields, partition)| Input {
            fields,
            partition,
            unmutated: None,
        });
    let mutated = (
        intent(),
        prop_oneof![2 => Just(Vec::new()), 5 => vec(mutation(), 1..5)],
        0u8..8,
        0..PARTITIONS,
    )
        .prop_map(|(intent, mutations, where_read, other)| {
            let mut fields = intent.fields();
            // Field order means nothing: rotate it.
            let by = usize::from(where_read) % fields.len();
            fields.rotate_left(by);
            for m in &mutations {
                apply(&mut fields, m);
            }
            let partition = match (where_read, intent.partition()) {
                (0, _) => None,
                (1, _) => Some(other),
                (_, p) => Some(p.unwrap_or(other)),
            };
            Input {
                fields,
                partition,
                unmutated: (mutations.is_empty() && where_read > 1).then_some(intent),
            }
        });
    prop_oneof![1 => arbitrary, 3 => mutated]
}

// ---------------------------------------------------------------------------
// The properties.

fn key_values(key: &Key) -> Vec<Value> {
    key.values()
        .map(|v| match v {
            KeyValue::Str(s) => Value::Str(s.clone()),
            KeyValue::Int(n) => Value::Int(*n),
            KeyValue::Bool(b) => Value::Bool(*b),
        })
        .collect()
}

/// What decoding an unmutated intent must give: `Ok` or the refusal reason.
fn expected(intent: &Intent) -> Result<(), RejectReason> {
    let Some(values) = intent.values() else {
        return Err(RejectReason::KeyField);
    };
    if canonical(&values).len() > MAX_KEY_BYTES {
        return Err(RejectReason::KeyField);
    }
    if intent.op == Op::Put && bson::to_vec(&intent.doc).unwrap().len() > MAX_DOC {
        return Err(RejectReason::TooLarge);
    }
    Ok(())
}

fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.:-".contains(&c))
}

#[test]
fn decoding_any_field_map_never_panics_and_keeps_every_rule() {
    let config = config();
    let outcomes: Mutex<BTreeMap<&'static str, u64>> = Mutex::default();
    check("decoder", 3000, input(), |input| {
        let got = protocol::decode(&input.fields, &config, input.partition);
        *outcomes
            .lock()
            .unwrap()
            .entry(match &got {
                Ok(_) => "ok",
                Err(r) => r.reason.as_str(),
            })
            .or_default() += 1;
        match &got {
            Ok(w) => {
                // Whatever was accepted keeps the rules of docs/protocol.md.
                let coll: &CollectionConfig = config
                    .collection(&w.collection)
                    .expect("a declared collection");
                let values = key_values(&w.key);
                let text = canonical(&values);
                prop_assert_eq!(w.key.canonical(), text.clone());
                prop_assert!(text.len() <= MAX_KEY_BYTES);
                let key_doc = w.key.to_document();
                prop_assert_eq!(
                    key_doc.keys().collect::<Vec<_>>(),
                    coll.key.iter().collect::<Vec<_>>()
                );
                if let Some(p) = input.partition {
                    prop_assert_eq!(partition(&coll.name, &text, PARTITIONS), p);
                }
                prop_assert_eq!(w.doc.is_some(), w.op == Op::Put);
                if let Some(d) = &w.doc {
                    prop_assert!(bson::to_vec(d).unwrap().len() <= MAX_DOC);
                    if coll.layout == Layout::Fields {
                        for name in d.keys() {
                            prop_assert!(!coll.key.contains(name));
                            prop_assert!(!protocol::RESERVED_TOP_LEVEL.contains(&name.as_str()));
                            prop_assert!(!name.is_empty() && !name.starts_with('$'));
                            prop_assert!(!name.contains('.') && !name.contains('\0'));
                        }
                    }
                }
                if let Some(r) = &w.reply {
                    prop_assert!(valid_id(&r.client) && valid_id(&r.request));
                }
            }
            Err(r) => {
                prop_assert!(r.reason != RejectReason::MongoRejected);
                prop_assert!(!r.detail.is_empty());
                prop_assert!(r.to_string().contains(r.reason.as_str()));
            }
        }
        // An unmutated valid entry decodes to exactly what was meant.
        if let Some(intent) = &input.unmutated {
            match (expected(intent), got) {
                (Ok(()), Ok(w)) => {
                    prop_assert_eq!(w.collection.as_str(), intent.name());
                    prop_assert_eq!(Some(key_values(&w.key)), intent.values());
                    prop_assert_eq!(w.op, intent.op);
                    prop_assert_eq!(
                        w.doc.map(|d| bson::to_vec(&d).unwrap()),
                        (intent.op == Op::Put).then(|| bson::to_vec(&intent.doc).unwrap())
                    );
                    prop_assert_eq!(w.reply.map(|r| (r.client, r.request)), intent.reply.clone());
                }
                (Err(want), Err(r)) => prop_assert_eq!(r.reason, want, "{}", r),
                (want, got) => prop_assert!(false, "expected {:?}, got {:?}", want, got),
            }
        }
        Ok(())
    });
    eprintln!("decoder outcomes: {:?}", outcomes.into_inner().unwrap());
}

#[test]
fn canonical_keys_follow_the_documented_escaping_and_parse_back() {
    let config = config();
    let strategy = (0..COLLECTIONS.len()).prop_flat_map(|coll| {
        let n = COLLECTIONS[coll].1.len();
        (
            Just(coll),
            vec(sent_value(), n),
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
        )
    });
    check("canonical", 2000, strategy, |(coll, sent, order)| {
        let (name, fields, _) = COLLECTIONS[coll];
        let coll = config.collection(name).unwrap();
        let doc: Document = order
            .iter()
            .map(|&i| (fields[i].to_string(), sent[i].bson()))
            .collect();
        let got = Key::from_document(&doc, coll);
        let Some(values) = sent.iter().map(Sent::value).collect::<Option<Vec<_>>>() else {
            prop_assert_eq!(got.unwrap_err().reason, RejectReason::KeyField);
            return Ok(());
        };
        let text = canonical(&values);
        if text.len() > MAX_KEY_BYTES {
            let e = got.unwrap_err();
            prop_assert_eq!(e.reason, RejectReason::KeyField);
            prop_assert!(
                e.detail.contains(&format!("is {} bytes", text.len())),
                "{}",
                e
            );
            prop_assert!(
                e.detail
                    .contains(&format!("limit of {MAX_KEY_BYTES} bytes")),
                "{}",
                e
            );
            return Ok(());
        }
        let key = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(key.canonical(), text.clone());
        prop_assert_eq!(key.canonical_len(), text.len());
        prop_assert_eq!(parse_canonical(&key.canonical()), Ok(values.clone()));
        prop_assert_eq!(key_values(&key), values);
        // The key document is in declared order, integers as int64, and
        // builds the same key again.
        let back = key.to_document();
        prop_assert_eq!(
            back.keys().collect::<Vec<_>>(),
            fields.iter().collect::<Vec<_>>()
        );
        prop_assert!(back
            .values()
            .all(|v| !matches!(v, Bson::Int32(_) | Bson::Double(_))));
        prop_assert_eq!(Key::from_document(&back, coll).unwrap(), key);
        Ok(())
    });
}

#[test]
fn the_strict_parser_refuses_what_the_docs_do_not_allow() {
    // The parser above is part of the property: it must not accept anything.
    for bad in [
        r#"["a" ]"#,
        r#"["\/"]"#,
        r#"["\u00E9"]"#,
        r#"["\u001F"]"#,
        r#"["\u000a"]"#,
        "[\"\u{1}\"]",
        "[01]",
        "[-0]",
        "[1.0]",
        "[tru]",
        "[]x",
        r#"["a",]"#,
        "",
        "[9223372036854775808]",
    ] {
        assert!(parse_canonical(bad).is_err(), "{bad:?} parsed");
    }
    assert_eq!(
        parse_canonical(r#"["\"\\\b\f\n\r\t\u0000\u001f/é",-9223372036854775808,true,false,0]"#),
        Ok(vec![
            Value::Str("\"\\\u{8}\u{c}\n\r\t\u{0}\u{1f}/é".into()),
            Value::Int(i64::MIN),
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(0),
        ])
    );
    assert_eq!(parse_canonical("[]"), Ok(vec![]));
}

#[test]
fn partitions_match_fnv1a64_written_from_the_docs() {
    let any_name = vec(key_char(), 0..16).prop_map(String::from_iter);
    let strategy = (
        any_name,
        vec(sent_value(), 1..4),
        prop_oneof![
            3 => 1u32..=4096,
            1 => prop::sample::select(vec![1u32, 2, 8, 4096, u32::MAX]),
            1 => any::<u32>().prop_map(|n| n.max(1)),
        ],
    );
    check(
        "partition",
        2000,
        strategy,
        |(collection, sent, partitions)| {
            let Some(values) = sent.iter().map(Sent::value).collect::<Option<Vec<_>>>() else {
                return Ok(());
            };
            let text = canonical(&values);
            let want = partition(&collection, &text, partitions);
            prop_assert!(want < partitions);
            prop_assert_eq!(protocol::partition_of(&collection, &text, partitions), want);
            if text.len() <= MAX_KEY_BYTES {
                let names: Vec<String> = (0..sent.len()).map(|i| format!("k{i}")).collect();
                let coll = CollectionConfig {
                    name: collection.clone(),
                    key: names.clone(),
                    mode: Default::default(),
                    layout: Default::default(),
                    timestamps: false,
                };
                let doc: Document = names
                    .iter()
                    .cloned()
                    .zip(sent.iter().map(Sent::bson))
                    .collect();
                let key = Key::from_document(&doc, &coll)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(key.partition(&collection, partitions), want);
            }
            Ok(())
        },
    );
}

#[test]
fn fnv1a64_here_matches_the_published_reference_values() {
    // The independent FNV above, against the FNV-1a reference vectors.
    assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
    assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
}
