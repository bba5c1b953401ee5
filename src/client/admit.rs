//! Admission: `XADD` to a partition stream through a script that first checks
//! the partition's unapplied backlog (undelivered + pending entries of the
//! daemon's consumer group). Over the bound, the write is refused with a
//! backpressure error instead of growing the stream without limit; nothing
//! already accepted is ever evicted.

/// `KEYS[1]` stream, `KEYS[2]` partition meta; `ARGV[1]` group; `ARGV[2]`
/// bound; `ARGV[3]` the caller's partition count; `ARGV[4..]` fields (or a
/// batch; the script's header). With only `ARGV[1..2]` it returns the
/// backlog instead (see [`crate::status`]): one definition for admission and
/// status.
pub const XADD_BOUNDED: &str = include_str!("../lua/admit.lua");
