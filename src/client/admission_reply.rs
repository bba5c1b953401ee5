//! What an admission call's reply, or its failure, tells each write it
//! carried: added (its id), refused by the backlog bound, not added, or
//! unknown; and the error a submit returns for each ([`Refused::into_error`]).
//! Kept apart from the batching ([`super::batch`]), which only sends calls.

use redis::Value;

use crate::error::Error;
use crate::redis_conn::not_run;

/// What the admission of one entry said: its id and the `CLIENT ID` of the
/// connection it went out on (0 unless replicas must confirm), or the
/// partition's backlog when the bound refused it.
pub type Admitted = std::result::Result<(String, u64), Refused>;

/// Why an entry was not admitted.
#[derive(Debug, Clone)]
pub enum Refused {
    /// The backlog was at the bound.
    Backpressure(u64),
    /// The call failed (every entry of the call) before Redis could run it,
    /// or Redis refused it.
    Failed(redis::RedisError),
    /// A send of the call lost its reply, and no later send got one: maybe
    /// added, maybe not.
    Unknown(redis::RedisError),
    /// The reply made no sense (every entry of the call).
    Odd(String),
    /// The admission task ended without an answer (its runtime shut down
    /// while the call was out): maybe added, maybe not.
    Unanswered,
    /// The admission task was dropped (its runtime shut down) before this
    /// write was sent: NOT added.
    NotSent,
    /// The partition records another partition count than this handle's
    /// (`redis.partitions` was changed since it started): nothing was added.
    Partitions {
        /// The count the partition records.
        recorded: u32,
        /// This handle's count.
        configured: u32,
    },
}

impl Refused {
    /// The error a submit to partition `p` returns (`limit`: the bound).
    pub fn into_error(self, partition: u32, limit: u64) -> Error {
        match self {
            Refused::Backpressure(unapplied) => Error::Backpressure {
                partition,
                unapplied,
                limit,
            },
            Refused::Failed(e) => match crate::redis_conn::server_error(&e) {
                Some((code, detail)) if code == "OOM" => Error::RedisFull {
                    partition,
                    detail: detail.unwrap_or_default(),
                },
                _ => Error::AdmissionRefused {
                    partition,
                    source: e,
                },
            },
            Refused::Unknown(e) => Error::AdmissionUnknown {
                partition,
                source: e,
            },
            // The call ran, and said something this client cannot read.
            Refused::Odd(what) => Error::AdmissionUnknown {
                partition,
                source: redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "the admission call's reply makes no sense",
                    what,
                )),
            },
            Refused::Unanswered => Error::AdmissionUnknown {
                partition,
                source: redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "the admission task ended without an answer (the runtime it ran on shut down?)",
                )),
            },
            Refused::NotSent => Error::NotSent {
                partition,
                why: "the admission task was dropped with the runtime it ran on before this write was sent",
            },
            Refused::Partitions {
                recorded,
                configured,
            } => Error::Config(format!(
                "the write was NOT accepted: the namespace now records {recorded} partitions \
                 (partition {partition}'s meta hash), and this process is configured with \
                 redis.partitions = {configured}; its keys would go to other partition streams, \
                 where they are applied out of order or never. The count was changed (`writ \
                 partitions --set`) while this process ran: restart it with redis.partitions = \
                 {recorded} (Node: WRIT_PARTITIONS). {}",
                crate::partition_count::UNFINISHED_CHANGE
            )),
        }
    }
}

/// What a call that failed for good with `e` tells its writes. `resent`:
/// an earlier send of it lost its reply; `cluster`: redis-rs may have sent
/// it again on its own; `configured`: this handle's partition count.
pub(super) fn refusal(
    e: redis::RedisError,
    resent: bool,
    cluster: bool,
    configured: u32,
) -> Refused {
    match partitions_refused(&e) {
        Some(recorded) => Refused::Partitions {
            recorded,
            configured,
        },
        // The record says this call number is not after the last that ran:
        // it ran before (its reply lost, then overwritten), or a later call
        // overtook it.
        None if crate::redis_conn::has_code(&e, "DUPLICATE") => Refused::Unknown(e),
        // Past its deadline: NOT added, even after a send whose reply was
        // lost (a send that ran is answered from the record, never this).
        None if crate::redis_conn::has_code(&e, "EXPIRED") => Refused::Failed(e),
        // Redis cannot be reached (a refused connection, or replies lost
        // LOST_REPLY_SENDS times: an outage, not a blip; fail now rather
        // than at write_timeout), or the time is up; a call an earlier send
        // may have run stays unknown. On a cluster, so does one still
        // redirected at the deadline (redis-rs may have sent it before).
        None if resent || maybe_ran(&e, cluster) || (cluster && not_run(&e)) => Refused::Unknown(e),
        None => Refused::Failed(e),
    }
}

/// Whether a call that failed with `e` may have run: its reply lost, or on
/// a cluster any failure to reach a node (redis-rs sends a command again on
/// its own and returns only its last error).
pub(super) fn maybe_ran(e: &redis::RedisError, cluster: bool) -> bool {
    reply_lost(e)
        || (cluster && (e.is_io_error() || e.kind() == redis::ErrorKind::ClusterConnectionNotFound))
}

/// Whether a call that failed with `e` may have run with its reply lost.
fn reply_lost(e: &redis::RedisError) -> bool {
    !e.is_connection_refusal() && (e.is_io_error() || e.is_connection_dropped() || e.is_timeout())
}

/// The count a `PARTITIONS <recorded> ...` refusal names, if `e` is one
/// (also in a pipeline's error: the calls replicas confirm).
fn partitions_refused(e: &redis::RedisError) -> Option<u32> {
    match crate::redis_conn::server_error(e)? {
        (code, Some(detail)) if code == "PARTITIONS" => {
            detail.split_whitespace().next()?.parse().ok()
        }
        _ => None,
    }
}

/// Reads an admission reply (the batch form): the ids, then the backlog if the
/// bound stopped it.
pub(super) fn results(n: usize, client: u64, value: Value) -> Vec<Admitted> {
    let odd = |what: &str| vec![Err(Refused::Odd(format!("admission returned {what}"))); n];
    let items = match value {
        Value::Array(items) => items,
        other => return odd(&format!("{other:?}")),
    };
    let mut out = Vec::with_capacity(n);
    let mut backlog = None;
    for item in items {
        match item {
            Value::BulkString(b) => {
                out.push(Ok((String::from_utf8_lossy(&b).into_owned(), client)))
            }
            Value::SimpleString(s) => out.push(Ok((s, client))),
            Value::Int(b) => backlog = Some(b.max(0) as u64),
            other => return odd(&format!("{other:?}")),
        }
    }
    if out.len() > n {
        return odd("more ids than entries");
    }
    while out.len() < n {
        out.push(Err(Refused::Backpressure(backlog.unwrap_or(0))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reply_gives_each_entry_its_own_result() {
        let v = Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::BulkString(b"1-1".to_vec()),
            Value::Int(100),
        ]);
        let r = results(3, 7, v);
        assert!(matches!(&r[0], Ok((id, 7)) if id == "1-0"));
        assert!(matches!(&r[1], Ok((id, 7)) if id == "1-1"));
        assert!(matches!(&r[2], Err(Refused::Backpressure(100))));
        let one = results(1, 0, Value::Array(vec![Value::BulkString(b"5-0".to_vec())]));
        assert!(matches!(&one[0], Ok((id, 0)) if id == "5-0"));
        assert!(results(2, 0, Value::Int(3)).iter().all(|r| r.is_err()));
    }

    /// A `DUPLICATE` refusal (the call number is not after the last that
    /// ran: it ran before, or a later call overtook it) leaves the writes
    /// unknown, as Node says; a refusal of a call that never ran (`NOPERM`,
    /// `EXPIRED`) is final, and `PARTITIONS` names the recorded count.
    #[test]
    fn a_duplicate_call_is_unknown_and_a_refusal_is_final() {
        let reply = |line: &str| {
            let v = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap();
            v.extract_error().unwrap_err()
        };
        let dup = reply("DUPLICATE admission call 3 is not after the last call that ran (4)");
        let e = refusal(dup, false, false, 8).into_error(0, 100);
        assert_eq!(e.accepted(), Some(crate::error::Accepted::Unknown), "{e}");
        let noperm = reply("NOPERM this user has no permissions to access the stream");
        let e = refusal(noperm, false, false, 8).into_error(0, 100);
        assert!(matches!(e, Error::AdmissionRefused { .. }), "{e:?}");
        assert_eq!(e.accepted(), Some(crate::error::Accepted::No));
        // Past its deadline: NOT added, even after a send that lost its
        // reply (that send would have been answered from the record).
        let expired = reply("EXPIRED admission call 3 ran 5 ms after its deadline");
        let e = refusal(expired, true, true, 8).into_error(0, 100);
        assert_eq!(e.accepted(), Some(crate::error::Accepted::No), "{e}");
        let moved = reply("PARTITIONS 4 recorded");
        assert!(matches!(
            refusal(moved, false, false, 8),
            Refused::Partitions {
                recorded: 4,
                configured: 8
            }
        ));
    }

    /// A runtime that shut down under the admission task: the writes it had
    /// not sent were NOT added (retryable: submit again); the one whose call
    /// was out may or may not have been (`AdmissionUnknown`). Neither is a
    /// permanent encoding error, as both were before.
    #[test]
    fn writes_of_a_dropped_admission_task_get_retryable_errors() {
        use crate::error::RetryClass;
        let not_sent = Refused::NotSent.into_error(3, 100);
        assert!(
            matches!(not_sent, Error::NotSent { partition: 3, .. }),
            "{not_sent:?}"
        );
        assert!(not_sent.to_string().contains("NOT accepted"), "{not_sent}");
        assert_eq!(not_sent.retry_class(), RetryClass::Transient);
        let unknown = Refused::Unanswered.into_error(3, 100);
        assert!(
            matches!(unknown, Error::AdmissionUnknown { partition: 3, .. }),
            "{unknown:?}"
        );
        assert_eq!(unknown.retry_class(), RetryClass::Transient);
    }
}
