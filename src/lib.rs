//! # writ
//!
//! A Redis-fronted write-behind daemon that keeps the state of live trading
//! systems durable in MongoDB.
//!
//! ## Layout: the path of a write
//!
//! - [`client`]: a writer appends the write to a partition stream (`XADD`),
//!   gets a ticket, and waits for the ack; reads go to the cache.
//! - [`protocol`]: the language-neutral entry format, keys, partitions,
//!   versions and Redis key names.
//! - [`source`]: the daemon reads each partition's stream through a consumer
//!   group, fenced by the partition's lease.
//! - [`partition`]: one partition's tenure: per-key queues, rounds of many
//!   keys, and each key's writes strictly in order.
//! - [`apply`]: one atomic, sequence-guarded upsert per write in MongoDB.
//! - [`cache`]: the committed post-image goes to Redis by compare-and-set.
//! - [`ack`]: only then is the writer acked, and the entry `XACK`ed.
//! - [`deadletter`]: what can never apply is parked with its reason.
//!
//! Around them: [`config`], [`error`], [`ownership`] (partition leases and
//! fencing), [`partition_count`] (the count daemons and clients must agree
//! on), [`status`], [`heal`] (mending the backlog count's bookkeeping) and
//! [`retention`], [`serve`] (the daemon's wiring and
//! shutdown), [`telemetry`] (metrics and health), [`bench`](mod@bench) (load
//! generator).

// The module docs link to the private parts they describe; they are read
// with `cargo doc --document-private-items`, where those links resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub mod ack;
pub mod apply;
pub mod backoff;
pub mod bench;
pub mod bson_bytes;
pub mod cache;
pub mod client;
pub mod config;
pub mod database_record;
pub mod deadletter;
pub mod error;
pub mod heal;
pub mod ownership;
pub mod partition;
pub mod partition_count;
pub mod protocol;
pub mod redis_conn;
pub mod retention;
pub mod serve;
pub mod source;
pub mod status;
pub mod stream;
pub mod telemetry;
pub mod tools;

pub use client::{Collection, Record, Ticket, Writ};
pub use config::Config;
pub use error::{Accepted, Error, Result, RetryClass};
