//! One synchronous MongoDB command over a raw socket (OP_MSG), for the
//! harness's readiness check: it runs outside any tokio runtime, before a
//! test has a driver, and it must tell *which* server answers on a port (the
//! driver would happily talk to any of them).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use mongodb::bson::{doc, Document};

const OP_MSG: i32 = 2013;

/// Runs `cmd` against `admin` on `127.0.0.1:port`; `None` on any failure
/// (refused, timed out, not a MongoDB-protocol reply).
pub fn admin_command(port: u16, cmd: Document) -> Option<Document> {
    let mut body = cmd;
    body.insert("$db", "admin");
    let mut doc_bytes = Vec::new();
    body.to_writer(&mut doc_bytes).ok()?;
    let len = 16 + 4 + 1 + doc_bytes.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as i32).to_le_bytes());
    msg.extend_from_slice(&1i32.to_le_bytes()); // requestID
    msg.extend_from_slice(&0i32.to_le_bytes()); // responseTo
    msg.extend_from_slice(&OP_MSG.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    msg.push(0); // section kind 0: the body
    msg.extend_from_slice(&doc_bytes);

    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(&msg).ok()?;
    let mut header = [0u8; 16];
    s.read_exact(&mut header).ok()?;
    let total = i32::from_le_bytes(header[0..4].try_into().ok()?);
    let op = i32::from_le_bytes(header[12..16].try_into().ok()?);
    if op != OP_MSG || !(21..=48_000_000).contains(&total) {
        return None;
    }
    let mut rest = vec![0u8; total as usize - 16];
    s.read_exact(&mut rest).ok()?;
    // flagBits (4), then the kind-0 section's document.
    if rest.get(4) != Some(&0) {
        return None;
    }
    Document::from_reader(&rest[5..]).ok()
}

/// The `pid` that the MongoDB-protocol server on `port` reports in
/// `serverStatus` (SecantusDB and mongod both do).
pub fn server_pid(port: u16) -> Option<u32> {
    let reply = admin_command(port, doc! {"serverStatus": 1})?;
    match reply.get("pid")? {
        mongodb::bson::Bson::Int32(p) => u32::try_from(*p).ok(),
        mongodb::bson::Bson::Int64(p) => u32::try_from(*p).ok(),
        mongodb::bson::Bson::Double(p) => Some(*p as u32),
        _ => None,
    }
}
