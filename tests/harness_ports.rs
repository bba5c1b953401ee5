//! The harness's promise that a test talks to its own servers: a port taken
//! by another process between [`support::free_port`] and the server's bind
//! (a parallel test's server, say) is detected, and the server is started on
//! another port. The race itself cannot be provoked on demand, so these
//! tests hand the harness a port that is already taken.

mod support;

use support::{free_port, wire, MongoServer, RedisServer};

/// The `process_id` the redis-server on `port` reports.
fn redis_pid(port: u16) -> Option<u32> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut c = client.get_connection().ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut c).ok()?;
    support::info_field(&info, "process_id").and_then(|p| p.parse().ok())
}

#[test]
fn redis_server_moves_off_a_port_another_server_holds() {
    let first = RedisServer::start();
    let second = RedisServer::start_on_ports(vec![first.port, free_port()]);
    assert_ne!(
        second.port, first.port,
        "the harness took the first server's port for its own"
    );
    assert_eq!(redis_pid(second.port), Some(second.pid()));
    assert_eq!(redis_pid(first.port), Some(first.pid()));
}

#[test]
fn secantusdb_moves_off_a_port_another_server_holds() {
    let first = MongoServer::start();
    let second = MongoServer::start_on_ports(vec![first.port, free_port()]);
    assert_ne!(
        second.port, first.port,
        "the harness took the first server's port for its own"
    );
    assert_eq!(wire::server_pid(second.port), Some(second.pid()));
    assert_eq!(wire::server_pid(first.port), Some(first.pid()));
}
