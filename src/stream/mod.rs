//! Redis Streams, in one place: the commands writ sends to streams
//! ([`cmd`]), the parsing of their replies ([`parse`]) and the size of
//! paged reads ([`PageSize`]). Key names live in
//! [`crate::protocol::Names`]; the only stream commands outside this module
//! are inside the Lua scripts of `src/lua/` (`admit.lua` adds entries,
//! `fenced_read.lua` reads and claims them), which must run server-side.

pub mod cmd;
mod pages;
mod parse;

pub use pages::PageSize;
pub use parse::{parse_autoclaim, parse_entries, parse_read_reply, take_entries, Entry, Fields};
