//! Loopback ports for the servers tests start: free ones (racy by nature:
//! a server that loses its port is started again on another), ones a test
//! must name before its server starts (kept out of the kernel's ephemeral
//! range), and ones that refuse connections.

use std::net::TcpListener;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};

/// A free loopback port (bind :0, read, release). Racy by nature: a server
/// that loses the race exits, and [`on_a_free_port`] tries another port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A free loopback port for a server whose port a test must name before it
/// starts (`daemon.metrics_listen`, Prometheus, a Redis started later), and
/// which cannot try another port as [`on_a_free_port`] does. It lies below
/// the kernel's ephemeral range (`ip_local_port_range`), where [`free_port`]
/// ports and every outgoing connection's local port come from, so no other
/// test's client or server takes it between this call and the bind. Spread
/// by process id and a counter, and checked free.
pub fn listen_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const LOW: u32 = 10_000;
    if ephemeral_low <= LOW + 1_000 {
        return free_port(); // an unusual range: no room below it
    }
    let span = ephemeral_low - LOW;
    let base = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + base.wrapping_add(n.wrapping_mul(131)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {ephemeral_low}")
}

/// A loopback port that refuses connections for as long as the value
/// lives: a socket is bound to it without listening, so nothing else can
/// take the port meanwhile (a port from [`free_port`] can be taken by any
/// process, and a test of "nothing listens there" would then reach it).
pub struct RefusedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub fn refused_port() -> RefusedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind 127.0.0.1:0");
    let port = socket.local_addr().unwrap().port();
    RefusedPort {
        _socket: socket,
        port,
    }
}

/// How many free ports a fresh server tries: another process may take the
/// port between [`free_port`] and the server's bind.
pub(super) const PORT_TRIES: usize = 3;

/// Starts a fresh server with `start` on a free port, and on another one if
/// it exits before it is ready (up to [`PORT_TRIES`] ports); panics with the
/// last error.
pub(super) fn on_a_free_port(start: impl FnMut(u16) -> Result<Child, String>) -> (u16, Child) {
    on_ports(std::iter::repeat_with(free_port).take(PORT_TRIES), start)
}

/// [`on_a_free_port`] over the given ports, in order (the harness's own
/// tests hand it a taken port first).
pub(super) fn on_ports(
    ports: impl IntoIterator<Item = u16>,
    mut start: impl FnMut(u16) -> Result<Child, String>,
) -> (u16, Child) {
    let mut last = String::from("no port to try");
    for port in ports {
        match start(port) {
            Ok(child) => return (port, child),
            Err(e) => {
                eprintln!(
                    "test harness: a server failed to start on port {port}; trying another port"
                );
                last = e;
            }
        }
    }
    panic!("{last}")
}
