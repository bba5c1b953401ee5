//! Errors of the writ library.
//!
//! Every error knows whether retrying can help ([`Error::retry_class`]), so the
//! daemon's retry loop and the client decide by type, never by message text.

use std::time::Duration;

use crate::protocol::{KeyTooLarge, Reject};

mod classify;
use classify::redis_retry_class;
pub(crate) use classify::{mongo_code, mongo_retry_class};

/// Whether an operation that failed with an error may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Connection loss, timeouts, elections: try again with backoff.
    Transient,
    /// Bad data or a rule the server will always enforce: retrying cannot help.
    Permanent,
}

impl RetryClass {
    /// Label value for metrics (`error_class`).
    pub fn as_str(self) -> &'static str {
        match self {
            RetryClass::Transient => "transient",
            RetryClass::Permanent => "permanent",
        }
    }
}

/// Whether writ holds a write that returned an error ([`Error::accepted`]),
/// so that code can decide without reading the message whether to send it
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Redis does not hold the write: sending it again is safe.
    No,
    /// writ holds it (queued, or parked as a dead letter): do not send it
    /// again.
    Yes,
    /// Redis may or may not hold it: once Redis answers, run `sync`, read
    /// the key, and write it again only if it does not hold this value
    /// (docs/protocol.md §5a).
    Unknown,
}

/// The library's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names the field and the fix.
    #[error("invalid config: {0}")]
    Config(String),

    /// An operator's command was refused in the state it found (a daemon
    /// running, writes not yet applied, another run at the same time); the
    /// message says what to do first. Nothing was changed.
    #[error("refused: {0}")]
    Refused(String),

    /// A write was refused before or after it reached the stream.
    #[error("{0}")]
    Rejected(#[from] Reject),

    /// A key's canonical form is over the limit (`protocol::MAX_KEY_BYTES`);
    /// the client refuses it before the stream. Names the collection, the
    /// size and the limit.
    #[error("{0}")]
    KeyTooLarge(#[from] KeyTooLarge),

    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),

    /// An admission call's reply was lost, and sending it again under its
    /// number got no answer (until `client.write_timeout_ms`, or until Redis
    /// could not be reached): its writes may or may not have been added. A
    /// read alone cannot tell: this handle does not wait for a write it does
    /// not know was added; `sync` first.
    #[error("the write to partition {partition} may or may not have been accepted: its admission call got no answer this client could use, sent again under its number until client.write_timeout_ms or until Redis could not be reached (last: {source}); to learn which, once Redis answers run sync (it waits until every write accepted before it is applied), then read the key, and write it again only if it does not hold this value (docs/protocol.md §5a)")]
    AdmissionUnknown {
        /// The partition written.
        partition: u32,
        /// The last failure.
        source: redis::RedisError,
    },

    /// Redis refused the admission call (an ACL without the stream, say), or
    /// could not be reached before it was sent: the write was NOT added.
    #[error("the write to partition {partition} was NOT accepted: Redis refused its admission call or could not be reached ({source}); fix that, then submit it again")]
    AdmissionRefused {
        /// The partition written.
        partition: u32,
        /// What Redis said.
        source: redis::RedisError,
    },

    /// The write reached the Redis master (its admission returned its id),
    /// but asking its replicas to confirm it failed (a connection lost
    /// during `WAIT`): a failover could still lose it, and it may still be
    /// applied.
    #[error("the write to partition {partition} reached the Redis master, but asking its replicas to confirm it failed ({source}) (redis.min_replicas_acked): a failover could still lose it, and it may still be applied; once Redis answers run sync, then read the key, and write it again only if it does not hold this value (docs/protocol.md §5a)")]
    ConfirmFailed {
        /// The partition written.
        partition: u32,
        /// What failed.
        source: redis::RedisError,
    },

    /// The write was NOT added to its stream, and nothing was sent: submit
    /// it again.
    #[error("the write to partition {partition} was NOT accepted: {why}; submit it again")]
    NotSent {
        /// The partition written.
        partition: u32,
        /// Why it was not sent.
        why: &'static str,
    },

    /// MongoDB failed. Shown as the driver's error kind (and labels): its
    /// full form also dumps the server's raw reply as hex bytes, which is
    /// noise in a log line or a dead letter's reason.
    #[error("mongodb: {}", mongo_summary(.0))]
    Mongo(#[from] mongodb::error::Error),

    /// MongoDB answered a findAndModify upsert without a post-image (neither a
    /// document nor E11000). Real MongoDB never does; treated as transient.
    #[error("mongodb returned no post-image for an upsert of {collection}; will retry")]
    MissingPostImage {
        /// The collection written.
        collection: String,
    },

    /// A server could not be reached at start. Said once, with the URL
    /// redacted and what to check.
    #[error("cannot connect to {what} at {url}: {detail}; {hint}")]
    Connect {
        /// `redis` or `mongodb`.
        what: &'static str,
        /// The URL with credentials replaced by `***`.
        url: String,
        /// The cause, each part once.
        detail: String,
        /// What to check.
        hint: &'static str,
        /// Whether waiting can help: a server that is down or still starting
        /// (transient), or wrong credentials (permanent).
        retry: RetryClass,
    },

    /// MongoDB holds this write's version, but not yet at the configured
    /// write concern's read concern (`majority`): acknowledging it now could
    /// hand out a write a failover rolls back.
    #[error(
        "MongoDB holds this write in `{collection}` on the primary, but the majority has not confirmed it yet (mongodb.write_concern); retrying until it does"
    )]
    NotYetConfirmed {
        /// The collection.
        collection: String,
    },

    /// Redis took a write but fewer than `redis.min_replicas_acked` replicas
    /// confirmed it in time, so a failover could still lose it. Retryable by
    /// the daemon and the tools (at the same version); a client's write is
    /// `Accepted::Unknown`.
    #[error(
        "{what} reached the Redis master but only {confirmed} of {wanted} replicas confirmed it within {timeout_ms} ms (redis.min_replicas_acked); a failover now could lose it, and it may still be applied. A client's write must not simply be sent again (that would be a newer write, over any other process's since): once Redis answers, `sync`, read the key, and write it again only if it does not hold this value. If this never succeeds, the master has fewer than {wanted} replicas in sync"
    )]
    NotReplicated {
        /// What was written.
        what: &'static str,
        /// Replicas that confirmed.
        confirmed: u32,
        /// Replicas required.
        wanted: u32,
        /// The WAIT bound.
        timeout_ms: u64,
    },

    /// A wait ran out. For a write's ack (`accepted` is `Yes`) the write
    /// stays queued and may still commit.
    #[error(
        "timed out after {after:?} waiting for {what}{}",
        if *.accepted == Some(Accepted::Yes) { "; the write stays queued and may still commit" } else { "" }
    )]
    Timeout {
        /// How long we waited.
        after: Duration,
        /// What we were waiting for.
        what: &'static str,
        /// Whether writ holds the write waited for; `None` when the wait
        /// was not for a write (a read, a list, `sync`).
        accepted: Option<Accepted>,
    },

    /// The daemon parked the write in the dead-letter stream.
    #[error("write was dead-lettered by the daemon: {reason}")]
    DeadLettered {
        /// The reason the daemon gave.
        reason: String,
    },

    /// Redis lost the write after accepting it: its stream entry is gone, no
    /// ack or dead letter came, and MongoDB still held an older version of
    /// the key `client.lost_write_after_ms` after a look first saw that. It
    /// was not applied; writing it again is safe.
    #[error("write was lost: {reason}; it was NOT applied: write it again (Redis lost its entry: a failover with redis.min_replicas_acked = 0, or the entry was deleted by hand)")]
    Lost {
        /// Where its entry went missing.
        reason: String,
    },

    /// The partition has too many unapplied entries; the write was not accepted.
    #[error("backpressure: partition {partition} has {unapplied} unapplied entries (limit {limit}, client.max_backlog); the daemon is behind or MongoDB is down, retry later")]
    Backpressure {
        /// The partition.
        partition: u32,
        /// Its unapplied entries.
        unapplied: u64,
        /// The configured bound.
        limit: u64,
    },

    /// Redis is at its `maxmemory` and refused the admission; the write was
    /// not accepted.
    #[error("Redis is out of memory (its maxmemory) and refused the write to partition {partition}: it was NOT accepted. Free memory in Redis or raise its maxmemory (a daemon that is down or behind lets the streams grow: check `writ status`), then retry. Redis said: OOM {detail}")]
    RedisFull {
        /// The partition.
        partition: u32,
        /// Redis's reply.
        detail: String,
    },

    /// Redis is set up so that it may evict accepted writes (an `allkeys-*`
    /// eviction policy under a memory limit); the daemon does not start. The
    /// message names the setting and the fix.
    #[error("{0}")]
    UnsafeRedis(String),

    /// The Redis server is older than writ supports (7.0); the daemon does
    /// not start. The message names the version found and the one needed.
    #[error("{0}")]
    UnsupportedRedis(String),

    /// The handle or daemon is shutting down.
    #[error("shutting down")]
    Shutdown,

    /// A partition operation was refused because this daemon's fencing token
    /// is no longer current: another daemon took the partition's lease. The
    /// tenure is over; retrying cannot help.
    #[error("fenced: partition {partition} moved to another daemon; its {op} was refused")]
    Fenced {
        /// The partition.
        partition: u32,
        /// What was refused: `read`, `claim` or `cache`.
        op: &'static str,
    },

    /// Encoding a document failed.
    #[error("encoding: {0}")]
    Encode(String),

    /// A collection has an index on exactly its key fields that cannot serve
    /// as the unique key index the sequence guard needs, and MongoDB will
    /// not create a second one on the same keys.
    #[error("collection `{collection}` has the index `{index}` on its key fields {keys:?}, but it is {why}; writ's sequence guard needs a plain unique index on them: drop `{index}` (writ then creates a unique one when it starts) or make it unique")]
    KeyIndex {
        /// The collection.
        collection: String,
        /// The index's name.
        index: String,
        /// The collection's key fields.
        keys: Vec<String>,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// A MongoDB error's kind, with its labels when it has any.
/// A server selection failure without the driver's topology dump, but with
/// what each server failed with (refused, a TLS certificate, an unsupported
/// version), which only the dump says. Display only: the text is the
/// driver's and may change; nothing is decided by it.
fn server_selection(message: &str) -> String {
    let Some((head, topology)) = message.split_once(" Topology:") else {
        return message.to_string();
    };
    let mut parts = vec![head.trim_end_matches(['.', ' ']).to_string()];
    for server in topology.split("Address: ").skip(1) {
        let address = server.split(',').next().unwrap_or_default().trim();
        if let Some((_, error)) = server.split_once("Error: Kind: ") {
            let error = error.split(", labels:").next().unwrap_or(error).trim();
            parts.push(format!("{address}: {error}"));
        }
    }
    if parts.len() == 1 {
        // No server's error found in it: the dump as it is, once.
        return message.to_string();
    }
    parts.join("; ")
}

fn mongo_summary(e: &mongodb::error::Error) -> String {
    // The driver's text appends a dump of the topology it saw (twice, for a
    // single server); what an operator needs is what failed and what to check.
    if let mongodb::error::ErrorKind::ServerSelection { message, .. } = &*e.kind {
        // Servers answered, none of them a primary (writ reads and writes
        // only a primary: [`crate::apply::Store::connect`]).
        if message.contains("suitable for criteria") {
            return format!(
                "no MongoDB primary among the servers reached ({}): writ reads and writes only a \
                 primary; connect to the replica set (without directConnection=true) or to its \
                 primary in mongodb.uri / WRIT_MONGODB_URI",
                server_selection(message)
            );
        }
        return format!(
            "cannot reach a MongoDB server ({}); is MongoDB running, and are mongodb.uri / \
             WRIT_MONGODB_URI right?",
            server_selection(message)
        );
    }
    let labels = e.labels();
    if labels.is_empty() {
        e.kind.to_string()
    } else {
        let mut labels: Vec<&String> = labels.iter().collect();
        labels.sort();
        format!("{} (labels: {labels:?})", e.kind)
    }
}

/// Library result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying again may help.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Error::Redis(e) | Error::AdmissionRefused { source: e, .. } => redis_retry_class(e),
            Error::Mongo(e) => mongo_retry_class(e),
            Error::MissingPostImage { .. }
            | Error::AdmissionUnknown { .. }
            | Error::ConfirmFailed { .. }
            | Error::NotSent { .. }
            | Error::Timeout { .. }
            | Error::Lost { .. }
            | Error::Backpressure { .. }
            | Error::RedisFull { .. }
            | Error::NotReplicated { .. }
            | Error::NotYetConfirmed { .. } => RetryClass::Transient,
            Error::Connect { retry, .. } => *retry,
            Error::Config(_)
            | Error::Refused(_)
            | Error::UnsafeRedis(_)
            | Error::UnsupportedRedis(_)
            | Error::Rejected(_)
            | Error::KeyTooLarge(_)
            | Error::DeadLettered { .. }
            | Error::Shutdown
            | Error::Fenced { .. }
            | Error::Encode(_)
            | Error::KeyIndex { .. } => RetryClass::Permanent,
        }
    }

    /// Whether writ holds the write this error is about; `None` when the
    /// error is not about a write (a read's, a list's or `sync`'s Redis,
    /// MongoDB or timeout errors; a read refused for its key or for another
    /// partition count says `No`: nothing was sent). Decided where the error
    /// is made, so every write-side error says it, but [`Error::Shutdown`]
    /// (a ticket whose handle's runtime shut down under it):
    /// - `No`: [`Error::Rejected`], [`Error::KeyTooLarge`],
    ///   [`Error::Encode`] and [`Error::Config`] (refused before anything
    ///   was sent), [`Error::Backpressure`], [`Error::RedisFull`],
    ///   [`Error::AdmissionRefused`], [`Error::NotSent`], and
    ///   [`Error::Lost`] (Redis lost it before it was applied);
    /// - `Yes`: [`Error::DeadLettered`], and the [`Error::Timeout`] of a
    ///   ticket's wait for its ack while its entry is in the stream (gone,
    ///   or not readable: `Unknown`);
    /// - `Unknown`: [`Error::AdmissionUnknown`], [`Error::NotReplicated`]
    ///   and [`Error::ConfirmFailed`] (on the master, maybe not on enough
    ///   replicas to survive a failover).
    pub fn accepted(&self) -> Option<Accepted> {
        match self {
            Error::Rejected(_)
            | Error::KeyTooLarge(_)
            | Error::Encode(_)
            | Error::Config(_)
            | Error::Backpressure { .. }
            | Error::RedisFull { .. }
            | Error::AdmissionRefused { .. }
            | Error::NotSent { .. }
            | Error::Lost { .. } => Some(Accepted::No),
            Error::DeadLettered { .. } => Some(Accepted::Yes),
            Error::AdmissionUnknown { .. }
            | Error::NotReplicated { .. }
            | Error::ConfirmFailed { .. } => Some(Accepted::Unknown),
            Error::Timeout { accepted, .. } => *accepted,
            Error::Redis(_)
            | Error::Mongo(_)
            | Error::MissingPostImage { .. }
            | Error::Connect { .. }
            | Error::NotYetConfirmed { .. }
            | Error::UnsafeRedis(_)
            | Error::UnsupportedRedis(_)
            | Error::Refused(_)
            | Error::Shutdown
            | Error::Fenced { .. }
            | Error::KeyIndex { .. } => None,
        }
    }

    /// Whether the operation ran out of time: writ's own bound, or the
    /// server's `maxTimeMS` (code 50).
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Mongo(m) => mongo_code(m) == Some(50),
            _ => false,
        }
    }

    /// Short fixed label for metrics and logs.
    pub fn class_label(&self) -> &'static str {
        match self {
            Error::Connect { what, .. } => what,
            Error::Redis(_)
            | Error::RedisFull { .. }
            | Error::AdmissionUnknown { .. }
            | Error::AdmissionRefused { .. }
            | Error::NotSent { .. } => "redis",
            Error::NotReplicated { .. } | Error::ConfirmFailed { .. } => "not_replicated",
            Error::Mongo(_) | Error::MissingPostImage { .. } | Error::NotYetConfirmed { .. } => {
                "mongodb"
            }
            Error::Timeout { .. } => "timeout",
            Error::Backpressure { .. } => "backpressure",
            Error::Rejected(_) | Error::KeyTooLarge(_) => "rejected",
            Error::DeadLettered { .. } => "dead_lettered",
            Error::Lost { .. } => "lost",
            Error::Config(_)
            | Error::KeyIndex { .. }
            | Error::UnsafeRedis(_)
            | Error::UnsupportedRedis(_) => "config",
            Error::Refused(_) => "refused",
            Error::Shutdown => "shutdown",
            Error::Fenced { .. } => "fenced",
            Error::Encode(_) => "encode",
        }
    }
}

/// An error's text with repeated parts said once: the redis crate prints
/// `Connection refused (os error 111): Connection refused (os error 111): ...`.
pub(crate) fn said_once(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in text.split(": ").map(str::trim) {
        if !p.is_empty() && !parts.contains(&p) {
            parts.push(p);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests;
