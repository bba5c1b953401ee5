//! Acks: how the daemon tells a writer its write is durable.
//!
//! An ack is an entry in the writer's own ack stream `<ns>:ack:<client>`, added
//! only after MongoDB committed the write and the cache holds the committed
//! document. A stream (not pub/sub) keeps acks durable: a client that
//! reconnects resumes reading after the last ack it saw and misses nothing.
//! Ack streams are capped (`MAXLEN ~`) and expire a day after their last ack.

mod send;

pub use send::{Acker, Batch, Outgoing};

use crate::protocol::Version;

/// Approximate cap of entries kept per ack stream.
pub const ACK_STREAM_MAXLEN: usize = 10_000;
/// Seconds an idle ack stream lives.
pub const ACK_STREAM_TTL_SECS: i64 = 86_400;

/// Fields of an ack entry.
pub mod field {
    /// The request id the writer gave.
    pub const REQUEST: &str = "req";
    /// One of [`super::Outcome`]'s names.
    pub const OUTCOME: &str = "outcome";
    /// The committed version now readable (stream-id form).
    pub const VERSION: &str = "v";
    /// The partition-stream entry id of the write.
    pub const ENTRY: &str = "id";
    /// Why a write was dead-lettered.
    pub const REASON: &str = "reason";
}

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Committed to MongoDB, cached.
    Applied,
    /// Superseded inside one batch by a later write of the same key, which committed.
    Coalesced,
    /// MongoDB already held this version or newer (a newer write, or this
    /// write's own earlier attempt whose reply was lost): skipped this time.
    Stale,
    /// Parked in the dead-letter stream.
    DeadLettered,
}

impl Outcome {
    /// Wire and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Coalesced => "coalesced",
            Outcome::Stale => "stale",
            Outcome::DeadLettered => "dead_lettered",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Outcome> {
        [
            Outcome::Applied,
            Outcome::Coalesced,
            Outcome::Stale,
            Outcome::DeadLettered,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// The call that adds one writer's acks of a batch to its ack stream.
pub struct AckCall {
    /// The ack stream (the key the call touches).
    pub stream: String,
    /// The script's arguments after the key.
    args: Vec<Vec<u8>>,
    /// How many acks it carries.
    pub acks: usize,
}

impl AckCall {
    /// `src/lua/ack_stream.lua`, hashed once per process (for a pipeline's
    /// `SCRIPT LOAD`).
    pub fn script() -> &'static redis::Script {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        SCRIPT.get_or_init(|| crate::redis_conn::script(include_str!("../lua/ack_stream.lua")))
    }

    /// The call, as an `EVALSHA` that loads the script if Redis lacks it.
    pub fn invocation(&self) -> redis::ScriptInvocation<'static> {
        let mut call = Self::script().key(&self.stream);
        for a in &self.args {
            call.arg(a.as_slice());
        }
        call
    }
}

/// An ack as the daemon sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Request id.
    pub request: String,
    /// Outcome.
    pub outcome: Outcome,
    /// Version readable now (for dead letters: the write's own version).
    pub version: Version,
    /// The write's entry id.
    pub entry: Version,
    /// Dead-letter reason.
    pub reason: Option<String>,
}

impl Ack {
    /// The ack entry's fields and values, in order.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            (field::REQUEST, self.request.clone()),
            (field::OUTCOME, self.outcome.as_str().to_string()),
            (field::VERSION, self.version.to_stream_id()),
            (field::ENTRY, self.entry.to_stream_id()),
        ];
        if let Some(r) = &self.reason {
            f.push((field::REASON, r.clone()));
        }
        f
    }

    /// The calls that add the acks of a batch: one per ack stream
    /// (`src/lua/ack_stream.lua`), which adds its acks and keeps the stream a
    /// day after its last ack, and leaves a key of another type as it is.
    pub fn commands<'a>(
        acks: impl IntoIterator<Item = (&'a str, &'a Ack)>,
        stream_of: impl Fn(&str) -> String,
    ) -> Vec<AckCall> {
        let mut out: Vec<AckCall> = Vec::new();
        for (client, ack) in acks {
            let stream = stream_of(client);
            let at = match out.iter().position(|c| c.stream == stream) {
                Some(at) => at,
                None => {
                    out.push(AckCall {
                        stream,
                        args: vec![
                            ACK_STREAM_MAXLEN.to_string().into_bytes(),
                            ACK_STREAM_TTL_SECS.to_string().into_bytes(),
                        ],
                        acks: 0,
                    });
                    out.len() - 1
                }
            };
            let call = &mut out[at];
            let fields = ack.fields();
            call.args.push((fields.len() * 2).to_string().into_bytes());
            for (name, value) in fields {
                call.args.push(name.as_bytes().to_vec());
                call.args.push(value.into_bytes());
            }
            call.acks += 1;
        }
        out
    }

    /// Parses an ack entry's fields.
    pub fn parse(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<Ack> {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.as_slice() == name.as_bytes())
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        Some(Ack {
            request: get(field::REQUEST)?.to_string(),
            outcome: Outcome::parse(get(field::OUTCOME)?)?,
            version: get(field::VERSION)?.parse().ok()?,
            entry: get(field::ENTRY)?.parse().ok()?,
            reason: get(field::REASON).map(str::to_string),
        })
    }
}
