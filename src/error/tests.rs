//! Tests of the error classes: retry classes, acceptance, messages.

use super::*;

/// Each write-side error says whether writ holds the write; a Redis
/// error or a shutdown says nothing; a timeout says what it waited for,
/// and only a write's wait says the write stays queued.
#[test]
fn write_errors_say_whether_the_write_is_held() {
    let io = || redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    let cases = [
        (
            Error::Backpressure {
                partition: 0,
                unapplied: 9,
                limit: 9,
            },
            Some(Accepted::No),
        ),
        (
            Error::AdmissionRefused {
                partition: 0,
                source: redis::RedisError::from((redis::ErrorKind::Client, "NOPERM")),
            },
            Some(Accepted::No),
        ),
        (
            Error::NotSent {
                partition: 0,
                why: "dropped",
            },
            Some(Accepted::No),
        ),
        (
            Error::Lost {
                reason: "gone".into(),
            },
            Some(Accepted::No),
        ),
        (Error::Config("partitions".into()), Some(Accepted::No)),
        (Error::Refused("a daemon runs".into()), None),
        (
            Error::DeadLettered {
                reason: "payload".into(),
            },
            Some(Accepted::Yes),
        ),
        (
            Error::AdmissionUnknown {
                partition: 0,
                source: io(),
            },
            Some(Accepted::Unknown),
        ),
        (
            Error::ConfirmFailed {
                partition: 0,
                source: io(),
            },
            Some(Accepted::Unknown),
        ),
        (
            Error::NotReplicated {
                what: "the write",
                confirmed: 0,
                wanted: 1,
                timeout_ms: 10,
            },
            Some(Accepted::Unknown),
        ),
        (Error::Redis(io()), None),
        (Error::Shutdown, None),
    ];
    for (e, want) in cases {
        assert_eq!(e.accepted(), want, "{e}");
    }
    let ack = Error::Timeout {
        after: Duration::from_secs(1),
        what: "the daemon's ack",
        accepted: Some(Accepted::Yes),
    };
    assert_eq!(ack.accepted(), Some(Accepted::Yes));
    assert!(ack.to_string().contains("stays queued"), "{ack}");
    let read = Error::Timeout {
        after: Duration::from_secs(1),
        what: "this client's pending writes before reading",
        accepted: None,
    };
    assert_eq!(read.accepted(), None);
    assert!(!read.to_string().contains("queued"), "{read}");
}

/// A server's passing states are retried, never counted towards
/// `daemon.max_attempts` (which ends in a dead letter); a refusal of the
/// write itself is not.
#[test]
fn mongo_codes_of_passing_server_states_are_transient() {
    let command = |code: i32| -> mongodb::error::Error {
        let c: mongodb::error::CommandError = mongodb::bson::from_document(
            mongodb::bson::doc! {"code": code, "codeName": "X", "errmsg": "x"},
        )
        .unwrap();
        mongodb::error::ErrorKind::Command(c).into()
    };
    for code in [
        134, 133, 189, 11600, 91, 262, 13, 18, 24, 46, 202, 8000, 11601, 14031, 16500, 365, 13388,
        211,
    ] {
        assert_eq!(
            mongo_retry_class(&command(code)),
            RetryClass::Transient,
            "{code}"
        );
    }
    for code in [2, 121, 11000, 17280] {
        assert_eq!(
            mongo_retry_class(&command(code)),
            RetryClass::Permanent,
            "{code}"
        );
    }
}

/// Replies that mean "not run here, or not yet": a slot that moved or is
/// moving, a loading or failing-over node. Retried, not logged as errors
/// that retrying will not clear.
#[test]
fn redis_redirections_and_busy_nodes_are_transient() {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    for kind in [
        S::Moved,
        S::Ask,
        S::TryAgain,
        S::ClusterDown,
        S::MasterDown,
        S::ReadOnly,
        S::BusyLoading,
    ] {
        let e = Error::Redis(redis::RedisError::from((K::Server(kind), "reply")));
        assert_eq!(e.retry_class(), RetryClass::Transient, "{kind:?}");
    }
    for kind in [S::NoPerm, S::CrossSlot, S::ResponseError] {
        let e = Error::Redis(redis::RedisError::from((K::Server(kind), "reply")));
        assert_eq!(e.retry_class(), RetryClass::Permanent, "{kind:?}");
    }
}

/// Replies the redis crate knows only by their code: memory above
/// `maxmemory`, a long script, too few replicas to write. They pass
/// without a change to the command, so they are retried, not skipped
/// (the acker skipped a round's acks on `OOM`). `WRONGTYPE` is not.
#[test]
fn redis_replies_of_a_full_or_busy_server_are_transient() {
    let reply = |line: &str| -> Error {
        let v = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap();
        Error::Redis(v.extract_error().unwrap_err())
    };
    for line in [
        "OOM command not allowed when used memory > 'maxmemory'.",
        "BUSY Redis is busy running a script.",
        "NOREPLICAS Not enough good replicas to write.",
        "MISCONF Errors writing to the AOF file: No space left on device",
        "EXPIRED admission call 7 ran 12 ms after its deadline, when its caller had given up on it; nothing was added",
    ] {
        assert_eq!(reply(line).retry_class(), RetryClass::Transient, "{line}");
    }
    let wrong = "WRONGTYPE Operation against a key holding the wrong kind of value";
    assert_eq!(reply(wrong).retry_class(), RetryClass::Permanent);
}

#[test]
fn a_server_selection_failure_keeps_each_servers_error_without_the_dump() {
    let driver = "Server selection timeout: No available servers. Topology: { Type: Single, Servers: [ { Address: 127.0.0.1:21398, Type: Unknown, Error: Kind: I/O error: Connection refused (os error 111), labels: {\"RetryableError\"}, source: None, server response: None } ] }";
    assert_eq!(
        super::server_selection(driver),
        "Server selection timeout: No available servers; 127.0.0.1:21398: I/O error: Connection refused (os error 111)"
    );
    // Text of another shape is kept whole.
    assert_eq!(super::server_selection("no servers"), "no servers");
}
