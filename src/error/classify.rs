//! How writ classes the errors of its two servers: whether trying again may
//! help, by the redis crate's kinds and Redis reply codes, and by MongoDB's
//! server codes and labels. Kept apart from the error type ([`super::Error`]).

use super::RetryClass;

pub(super) fn redis_retry_class(e: &redis::RedisError) -> RetryClass {
    use redis::ErrorKind as K;
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return RetryClass::Transient;
    }
    // Not run where it was sent (a slot moved or is moving: resharding,
    // failover); the cluster connection refreshes its slot map.
    if crate::redis_conn::not_run(e) {
        return RetryClass::Transient;
    }
    // States of the server that pass by themselves or by an operator's
    // hand, not by changing the command: memory above `maxmemory` (until
    // trimming or the operator frees some), a script running long, too few
    // replicas for `min-replicas-to-write`, an append-only file that cannot
    // be written (`MISCONF`: a full disk, which `appendfsync always` meets
    // first). The redis crate knows them only by their reply code. And
    // writ's own admission refusal `EXPIRED` (a call that reached Redis
    // after its deadline, when its caller had given up: nothing was added,
    // so the write may be sent again at once).
    if matches!(
        crate::redis_conn::code_of(e).as_deref(),
        Some("OOM" | "BUSY" | "NOREPLICAS" | "MISCONF" | "EXPIRED")
    ) {
        return RetryClass::Transient;
    }
    match e.kind() {
        K::Server(redis::ServerErrorKind::BusyLoading)
        | K::Server(redis::ServerErrorKind::MasterDown)
        | K::Server(redis::ServerErrorKind::ReadOnly) => RetryClass::Transient,
        _ => RetryClass::Permanent,
    }
}

/// MongoDB server error codes that mean "try again": elections, shutdown,
/// network trouble, time limits, write conflicts, and a new primary without
/// a majority snapshot yet (134, on the driver's retryable-read list: the
/// stale check reads at `majority`) or a shard without a primary for now
/// (133, from mongos); and states of the server rather than of the write:
/// locks not granted in time (24, 46), an operation killed by an operator
/// (11601), a mongos's network time limit (202), a full disk or an
/// exhausted storage quota (14031; 8000, Atlas), and request-rate limiting
/// (16500, Cosmos DB's MongoDB API); a storage engine short of cache for
/// now (365, `TemporarilyUnavailable`), a mongos whose routing table is
/// behind after its own retries (13388, `StaleConfig`), and a new or
/// restored replica set without its signing keys yet (211, `KeyNotFound`).
/// Counted as permanent, each would dead-letter every write in flight
/// within a second.
const TRANSIENT_MONGO_CODES: &[i32] = &[
    6, 7, 24, 46, 50, 64, 89, 91, 112, 133, 134, 189, 202, 211, 262, 365, 8000, 9001, 10107, 11600,
    11601, 11602, 13388, 13435, 13436, 14031, 16500,
];

/// Labels the server or driver puts on an error that may pass: besides the
/// retryable-write and transient-transaction labels, an overloaded server's
/// (`SystemOverloadedError`, with `RetryableError`).
const TRANSIENT_MONGO_LABELS: &[&str] = &["RetryableError", "SystemOverloadedError"];

/// MongoDB server error codes that mean "writ's user may not do this now":
/// `Unauthorized` (13) and `AuthenticationFailed` (18).
const ACCESS_MONGO_CODES: &[i32] = &[13, 18];

pub(crate) fn mongo_retry_class(e: &mongodb::error::Error) -> RetryClass {
    use mongodb::error::ErrorKind as K;
    if e.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
        || e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
        || TRANSIENT_MONGO_LABELS.iter().any(|l| e.contains_label(l))
    {
        return RetryClass::Transient;
    }
    match e.kind.as_ref() {
        K::Io(_) | K::ServerSelection { .. } | K::ConnectionPoolCleared { .. } => {
            RetryClass::Transient
        }
        // Credentials or privileges taken away while writ runs (a rotated
        // password, a revoked role): the operator's to fix, and no write's
        // fault. Retried like an outage, so the backlog waits in the streams
        // instead of draining into the dead-letter stream. At start, wrong
        // credentials are still fatal (`Store::ping`).
        K::Authentication { .. } => RetryClass::Transient,
        K::Command(c) if ACCESS_MONGO_CODES.contains(&c.code) => RetryClass::Transient,
        K::Write(mongodb::error::WriteFailure::WriteError(w))
            if ACCESS_MONGO_CODES.contains(&w.code) =>
        {
            RetryClass::Transient
        }
        K::Command(c) if TRANSIENT_MONGO_CODES.contains(&c.code) => RetryClass::Transient,
        K::Write(mongodb::error::WriteFailure::WriteConcernError(wc))
            if TRANSIENT_MONGO_CODES.contains(&wc.code) =>
        {
            RetryClass::Transient
        }
        _ => RetryClass::Permanent,
    }
}

/// The server error code of a MongoDB error, if it carries one.
pub(crate) fn mongo_code(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind as K, WriteFailure};
    match e.kind.as_ref() {
        K::Command(c) => Some(c.code),
        K::Write(WriteFailure::WriteError(w)) => Some(w.code),
        K::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}
