//! Why a write was refused. The reason is a small fixed set (usable as a metric
//! label); the detail says what exactly is wrong and what to do.

use std::fmt;

/// Fixed set of refusal reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not a valid v1 field map (unknown, duplicate or missing fields).
    Malformed,
    /// Wrong or missing protocol version.
    BadVersion,
    /// Collection not declared in the config.
    UnknownCollection,
    /// Key missing, not a document, or with missing/extra/ill-typed fields.
    KeyField,
    /// Payload missing or not decodable with its declared encoding.
    Payload,
    /// Payload over the size limit.
    TooLarge,
    /// Entry written to a partition its key does not hash to.
    WrongPartition,
    /// MongoDB refused the write for good (validation, size, bad field names).
    MongoRejected,
}

impl RejectReason {
    /// Every reason.
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Malformed,
        RejectReason::BadVersion,
        RejectReason::UnknownCollection,
        RejectReason::KeyField,
        RejectReason::Payload,
        RejectReason::TooLarge,
        RejectReason::WrongPartition,
        RejectReason::MongoRejected,
    ];

    /// Stable label (metrics, dead-letter `reason` field).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::BadVersion => "bad_version",
            RejectReason::UnknownCollection => "unknown_collection",
            RejectReason::KeyField => "key_field",
            RejectReason::Payload => "payload",
            RejectReason::TooLarge => "too_large",
            RejectReason::WrongPartition => "wrong_partition",
            RejectReason::MongoRejected => "mongo_rejected",
        }
    }

    /// What an operator does with a write parked for this reason. A retry
    /// re-adds the writer's fields unchanged, so it can only succeed where
    /// the config or MongoDB was at fault, not the entry.
    pub fn remedy(self) -> &'static str {
        match self {
            RejectReason::UnknownCollection => {
                "declare the collection in [[collections]] and restart writ serve, then `writ dlq retry <dead-letter id>`"
            }
            RejectReason::TooLarge => {
                "raise client.max_document_bytes (at most 16 MiB) and restart writ serve, then `writ dlq retry <dead-letter id>`; or fix the writer and `writ dlq drop` it"
            }
            RejectReason::MongoRejected => {
                "fix what MongoDB refused (a validator, an index, the payload), then `writ dlq retry <dead-letter id>`; or `writ dlq drop` it"
            }
            RejectReason::Malformed
            | RejectReason::BadVersion
            | RejectReason::KeyField
            | RejectReason::Payload
            | RejectReason::WrongPartition => {
                "the writer sent it wrong: a retry would fail the same way; fix the writer, resend the write, then `writ dlq drop <dead-letter id>`"
            }
        }
    }
}

/// A refused write: reason plus a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Reject {
    /// The reason class.
    pub reason: RejectReason,
    /// What is wrong and how to fix it.
    pub detail: String,
}

impl Reject {
    /// Builds a refusal.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Reject {
            reason,
            detail: detail.into(),
        }
    }

    /// Same detail, another reason.
    pub fn with_reason(mut self, reason: RejectReason) -> Self {
        self.reason = reason;
        self
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "write rejected ({}): {}",
            self.reason.as_str(),
            self.detail
        )
    }
}
