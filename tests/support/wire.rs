//! MongoDB wire messages (OP_MSG) for the harness: one synchronous command
//! over a raw socket, for the readiness check (it runs outside any tokio
//! runtime, before a test has a driver, and it must tell *which* server
//! answers on a port; the driver would happily talk to any of them), and
//! the message codec the test proxies share.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use mongodb::bson::{doc, Document};

pub const OP_MSG: i32 = 2013;

/// An OP_MSG with `body` as its one (kind 0) section.
pub fn op_msg(request_id: i32, response_to: i32, body: &Document) -> Vec<u8> {
    let mut bson = Vec::new();
    body.to_writer(&mut bson).expect("a document encodes");
    let len = 16 + 4 + 1 + bson.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as i32).to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&OP_MSG.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    out.push(0); // section kind 0: the body
    out.extend_from_slice(&bson);
    out
}

/// The command document of an OP_MSG body (after the header: flagBits, then
/// sections; the kind-0 section is the command).
pub fn command_of(body: &[u8]) -> Option<Document> {
    let mut at = 4;
    while at < body.len() {
        let kind = body[at];
        at += 1;
        let len = i32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        if kind == 0 {
            return Document::from_reader(body.get(at..at + len)?).ok();
        }
        at += len; // kind 1: size covers the identifier and the documents
    }
    None
}

/// One wire message from `r`: its 16-byte header and the rest. `None` at
/// the end of the stream or on an error.
pub async fn read_msg(
    r: &mut (impl tokio::io::AsyncReadExt + Unpin),
) -> Option<([u8; 16], Vec<u8>)> {
    let mut header = [0u8; 16];
    r.read_exact(&mut header).await.ok()?;
    let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len.saturating_sub(16)];
    r.read_exact(&mut body).await.ok()?;
    Some((header, body))
}

/// Runs `cmd` against `admin` on `127.0.0.1:port`; `None` on any failure
/// (refused, timed out, not a MongoDB-protocol reply).
pub fn admin_command(port: u16, cmd: Document) -> Option<Document> {
    let mut body = cmd;
    body.insert("$db", "admin");
    let msg = op_msg(1, 0, &body);

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
    command_of(&rest)
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
