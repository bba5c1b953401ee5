//! Redis Streams, in one place: the commands writ sends to streams
//! ([`cmd`]) and the parsing of their replies ([`parse`]). Key names live in
//! [`crate::protocol::Names`]; the only stream commands outside this module
//! are inside the Lua scripts of `src/lua/` (`admit.lua` adds entries,
//! `fenced_read.lua` reads and claims them), which must run server-side.

pub mod cmd;
mod parse;

pub use parse::{parse_autoclaim, parse_entries, parse_read_reply, take_entries, Entry, Fields};
