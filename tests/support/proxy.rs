//! A TCP proxy that can cut every connection on command (a network outage of
//! the server behind it), hold every request until told to go on (a server
//! that pauses), delay every request (a slow server), stall the
//! connections that send one marker (a statement the server never finishes,
//! or one whose reply is lost) or rewrite replies (a server of another
//! version),
//! for servers the test does not own (real MongoDB).

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards a loopback port to `target` until dropped.
pub struct Proxy {
    pub port: u16,
    down: watch::Sender<bool>,
    /// While `true`, requests wait in the proxy ([`Proxy::pause`]).
    paused: watch::Sender<bool>,
    /// Set once a reply was cut ([`Proxy::start_cutting_reply`]).
    cut: Arc<std::sync::atomic::AtomicBool>,
    /// While set, new connections are refused; open ones go on
    /// ([`Proxy::refuse_new`]).
    refusing: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        Self::start_with_latency(target, Duration::ZERO).await
    }

    /// Like [`Proxy::start`], holding every chunk a client sends for `latency`
    /// before passing it on: each request reaches the server that much later.
    pub async fn start_with_latency(target: SocketAddr, latency: Duration) -> Proxy {
        Self::start_with(target, latency, None, false, None, false, None).await
    }

    /// Like [`Proxy::start`], but a connection that sends `marker` (say, a
    /// string in one write's document) stalls: that request and everything
    /// after it on the connection are swallowed, never answered, as by a
    /// server stuck on that one statement. Other connections pass.
    pub async fn start_swallowing(target: SocketAddr, marker: &'static [u8]) -> Proxy {
        Self::start_with(
            target,
            Duration::ZERO,
            Some(marker),
            false,
            None,
            false,
            None,
        )
        .await
    }

    /// Like [`Proxy::start_swallowing`], but the request with `marker` and
    /// everything after it reach the server; its replies are swallowed. So
    /// the write commits, and the one who sent it never hears so.
    pub async fn start_deafening(target: SocketAddr, marker: &'static [u8]) -> Proxy {
        Self::start_with(
            target,
            Duration::ZERO,
            Some(marker),
            true,
            None,
            false,
            None,
        )
        .await
    }

    /// Like [`Proxy::start`], but the first reply (of any connection) that
    /// carries `marker`, and not `unless`, is never delivered: the proxy
    /// closes that connection instead, once. So a command ran on the server,
    /// and its caller saw the connection drop.
    pub async fn start_cutting_reply(
        target: SocketAddr,
        marker: &'static [u8],
        unless: &'static [u8],
    ) -> Proxy {
        Self::start_with(
            target,
            Duration::ZERO,
            None,
            false,
            Some((marker, unless)),
            false,
            None,
        )
        .await
    }

    /// Like [`Proxy::start`], but every chunk of replies passes through
    /// `rewrite` first, which may change bytes in place (keeping lengths, so
    /// the protocol's framing holds): a server that says something else.
    pub async fn start_rewriting_replies(target: SocketAddr, rewrite: fn(&mut [u8])) -> Proxy {
        Self::start_with(
            target,
            Duration::ZERO,
            None,
            false,
            None,
            false,
            Some(rewrite),
        )
        .await
    }

    /// Like [`Proxy::start`], but it can hold requests ([`Proxy::pause`]).
    pub async fn start_pausable(target: SocketAddr) -> Proxy {
        Self::start_with(target, Duration::ZERO, None, false, None, true, None).await
    }

    /// Like [`Proxy::start`], but the first connection that sends `marker`
    /// (once per proxy) is closed at the next reply the server sends it: the
    /// request ran, and its caller saw the connection drop. Later requests
    /// with `marker`, on new connections, pass.
    pub async fn start_dropping_reply_to(target: SocketAddr, marker: &'static [u8]) -> Proxy {
        Self::start_shaped(
            target,
            Duration::ZERO,
            Some(marker),
            true,
            None,
            false,
            None,
            true,
        )
        .await
    }

    async fn start_with(
        target: SocketAddr,
        latency: Duration,
        swallow: Option<&'static [u8]>,
        deafen: bool,
        cut_reply: Option<(&'static [u8], &'static [u8])>,
        pausable: bool,
        rewrite: Option<fn(&mut [u8])>,
    ) -> Proxy {
        Self::start_shaped(
            target, latency, swallow, deafen, cut_reply, pausable, rewrite, false,
        )
        .await
    }

    /// `once`: with `swallow` and `deafen`, only the first connection that
    /// sends the marker goes deaf, and is closed at its next reply.
    #[allow(clippy::too_many_arguments)]
    async fn start_shaped(
        target: SocketAddr,
        latency: Duration,
        swallow: Option<&'static [u8]>,
        deafen: bool,
        cut_reply: Option<(&'static [u8], &'static [u8])>,
        pausable: bool,
        rewrite: Option<fn(&mut [u8])>,
        once: bool,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (down, rx) = watch::channel(false);
        let (paused, paused_rx) = watch::channel(false);
        let rx = Arc::new(rx);
        let cut_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = cut_done.clone();
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refuse = refusing.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *rx.borrow() || refuse.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client); // refused while down, or refusing new ones
                    continue;
                }
                let mut rx = (*rx).clone();
                let mut paused = paused_rx.clone();
                let cut_done = cut_done.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    // No Nagle: a delayed request must not also wait for an ACK.
                    let _ = server.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    let mut client = client;
                    if latency.is_zero()
                        && swallow.is_none()
                        && cut_reply.is_none()
                        && rewrite.is_none()
                        && !pausable
                    {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = rx.wait_for(|d| *d) => {}
                        }
                        return;
                    }
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let deaf = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let cut_once = cut_done.clone();
                    let down = {
                        let deaf = deaf.clone();
                        async move {
                            let mut buf = vec![0u8; 64 * 1024];
                            let mut seen: Vec<u8> = Vec::new();
                            loop {
                                let n = match sr.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                if deaf.load(std::sync::atomic::Ordering::SeqCst) {
                                    // A reply withheld: what the test staged happened.
                                    cut_done.store(true, std::sync::atomic::Ordering::SeqCst);
                                    if once {
                                        return; // the connection closes; the reply is lost
                                    }
                                    continue;
                                }
                                if let Some((marker, unless)) = cut_reply {
                                    seen.extend_from_slice(&buf[..n]);
                                    let has = |m: &[u8]| buf[..n].windows(m.len()).any(|w| w == m);
                                    if seen.windows(marker.len()).any(|w| w == marker)
                                        && !has(unless)
                                        && !cut_done.swap(true, std::sync::atomic::Ordering::SeqCst)
                                    {
                                        return; // the connection closes; the reply is lost
                                    }
                                    // The tail stays, so a marker split
                                    // between two reads is still seen.
                                    let keep = seen.len().saturating_sub(marker.len());
                                    seen.drain(..keep);
                                }
                                if let Some(rewrite) = rewrite {
                                    rewrite(&mut buf[..n]);
                                }
                                if cw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        // The last bytes sent, so a marker split between two
                        // reads is still seen.
                        let mut seen: Vec<u8> = Vec::new();
                        let mut stalled = false;
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if let Some(marker) = swallow {
                                seen.extend_from_slice(&buf[..n]);
                                stalled |= seen.windows(marker.len()).any(|w| w == marker);
                                let keep = seen.len().saturating_sub(marker.len());
                                seen.drain(..keep);
                            }
                            if stalled && once {
                                // Only the first such connection of the proxy.
                                if !deaf.load(std::sync::atomic::Ordering::SeqCst)
                                    && cut_once.swap(true, std::sync::atomic::Ordering::SeqCst)
                                {
                                    stalled = false;
                                } else {
                                    deaf.store(true, std::sync::atomic::Ordering::SeqCst);
                                }
                            } else if stalled && deafen {
                                deaf.store(true, std::sync::atomic::Ordering::SeqCst);
                            } else if stalled {
                                continue;
                            }
                            if !latency.is_zero() {
                                tokio::time::sleep(latency).await;
                            }
                            if paused.wait_for(|p| !*p).await.is_err() {
                                return;
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = rx.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        Proxy {
            port,
            down,
            paused,
            cut,
            refusing,
            task,
        }
    }

    /// From now on (`true`) new connections are closed as they come, as
    /// by a server at its `maxclients` or a host out of file descriptors;
    /// the open ones go on. `false` accepts them again.
    pub fn refuse_new(&self, refuse: bool) {
        self.refusing
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds every request from now on until [`Proxy::go_on`]: they reach
    /// the server then, in order, as if it had paused. Only a proxy started
    /// with [`Proxy::start_pausable`] does. Replies to requests already
    /// passed still flow. Keep pauses short of the driver's heartbeat and
    /// connect timeouts (about 10 s), or it marks the server unknown.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Passes the held requests on, and every later one.
    pub fn go_on(&self) {
        self.paused.send_replace(false);
    }

    /// Whether a reply was cut ([`Proxy::start_cutting_reply`]) or withheld
    /// from a deaf connection ([`Proxy::start_deafening`],
    /// [`Proxy::start_dropping_reply_to`]).
    pub fn cut_done(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.down.send_replace(true);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.down.send_replace(false);
    }
}

/// A proxy in front of the MongoDB of `uri`, and the URI that goes through it.
pub async fn in_front_of_mongo(uri: &str) -> (Proxy, String) {
    in_front_of_mongo_with_latency(uri, Duration::ZERO).await
}

/// Like [`in_front_of_mongo`], delaying every request by `latency`.
pub async fn in_front_of_mongo_with_latency(uri: &str, latency: Duration) -> (Proxy, String) {
    let target = mongo_target(uri).await;
    let proxy = Proxy::start_with_latency(target, latency).await;
    let proxied = mongo_uri_via(uri, proxy.port);
    (proxy, proxied)
}

/// A proxy in front of the MongoDB of `uri` that can hold its requests
/// ([`Proxy::pause`]), and the URI that goes through it.
pub async fn in_front_of_mongo_pausable(uri: &str) -> (Proxy, String) {
    let target = mongo_target(uri).await;
    let proxy = Proxy::start_pausable(target).await;
    let proxied = mongo_uri_via(uri, proxy.port);
    (proxy, proxied)
}

/// A proxy in front of the MongoDB of `uri` that stalls every connection
/// sending `marker` ([`Proxy::start_swallowing`]), and the URI through it.
pub async fn in_front_of_mongo_swallowing(uri: &str, marker: &'static [u8]) -> (Proxy, String) {
    let target = mongo_target(uri).await;
    let proxy = Proxy::start_swallowing(target, marker).await;
    let proxied = mongo_uri_via(uri, proxy.port);
    (proxy, proxied)
}

/// A proxy in front of the MongoDB of `uri` whose connections go deaf after
/// sending `marker` ([`Proxy::start_deafening`]), and the URI through it.
pub async fn in_front_of_mongo_deafening(uri: &str, marker: &'static [u8]) -> (Proxy, String) {
    let target = mongo_target(uri).await;
    let proxy = Proxy::start_deafening(target, marker).await;
    let proxied = mongo_uri_via(uri, proxy.port);
    (proxy, proxied)
}

/// The one `host:port` of `uri`. The proxy tests put a plain TCP proxy in
/// front of one server: a URI they cannot do that for fails here, saying
/// what to give instead, rather than as a confusing failure later.
fn mongo_hostport(uri: &str) -> String {
    let lower = uri.to_ascii_lowercase();
    let unsupported = if lower.starts_with("mongodb+srv://") {
        Some("a mongodb+srv:// URI (give the primary's mongodb://host:port)")
    } else if ["tls=true", "ssl=true"].iter().any(|o| lower.contains(o)) {
        Some("TLS (the proxy's address would fail the certificate check)")
    } else if lower.contains("compressors=") {
        Some("compression (the write-concern proxy reads plain messages)")
    } else {
        None
    };
    if let Some(what) = unsupported {
        panic!(
            "the proxy tests need WRIT_TEST_MONGODB_URI to name one server over plain TCP, \
             without compression; this one has {what}"
        );
    }
    let hosts = uri
        .trim_start_matches("mongodb://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .to_string();
    assert!(
        !hosts.contains(','),
        "the proxy tests need WRIT_TEST_MONGODB_URI to name one server (the replica set's \
         primary, with directConnection=true), not the list {hosts}"
    );
    hosts
}

/// The address of the (single) MongoDB server of `uri`.
pub async fn mongo_target(uri: &str) -> SocketAddr {
    tokio::net::lookup_host(mongo_hostport(uri).as_str())
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// `uri` pointed at a loopback proxy `port` (a direct connection).
pub fn mongo_uri_via(uri: &str, port: u16) -> String {
    let proxied = uri.replacen(&mongo_hostport(uri), &format!("127.0.0.1:{port}"), 1);
    let sep = if proxied.contains('?') { "&" } else { "?" };
    if proxied.contains("directConnection") {
        proxied
    } else {
        format!("{proxied}{sep}directConnection=true")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A proxy in front of the Redis of `url`, and the same URL through it
/// (scheme, credentials and database kept).
pub async fn in_front_of_redis(url: &str) -> (Proxy, String) {
    in_front_of_redis_with(url, Shape::Latency(Duration::ZERO)).await
}

/// Like [`in_front_of_redis`], holding requests while paused
/// ([`Proxy::pause`]): a Redis that stops answering.
pub async fn in_front_of_redis_pausable(url: &str) -> (Proxy, String) {
    in_front_of_redis_with(url, Shape::Pausable).await
}

/// Like [`in_front_of_redis`], holding every chunk a client sends for
/// `latency` (a slow Redis).
pub async fn in_front_of_redis_with_latency(url: &str, latency: Duration) -> (Proxy, String) {
    in_front_of_redis_with(url, Shape::Latency(latency)).await
}

/// Like [`in_front_of_redis`], losing the first reply that carries `marker`
/// and not `unless` ([`Proxy::start_cutting_reply`]).
pub async fn in_front_of_redis_cutting_reply(
    url: &str,
    marker: &'static [u8],
    unless: &'static [u8],
) -> (Proxy, String) {
    in_front_of_redis_with(url, Shape::CutReply(marker, unless)).await
}

/// Like [`in_front_of_redis`], passing every reply through `rewrite`
/// ([`Proxy::start_rewriting_replies`]).
pub async fn in_front_of_redis_rewriting(url: &str, rewrite: fn(&mut [u8])) -> (Proxy, String) {
    in_front_of_redis_with(url, Shape::Rewrite(rewrite)).await
}

/// Like [`in_front_of_redis`], closing the first connection that sends
/// `marker` at its next reply ([`Proxy::start_dropping_reply_to`]).
pub async fn in_front_of_redis_dropping_reply_to(
    url: &str,
    marker: &'static [u8],
) -> (Proxy, String) {
    in_front_of_redis_with(url, Shape::DropReplyTo(marker)).await
}

/// Like [`in_front_of_redis`], stalling a connection that sends `marker`
/// ([`Proxy::start_swallowing`]).
pub async fn in_front_of_redis_swallowing(url: &str, marker: &'static [u8]) -> (Proxy, String) {
    in_front_of_redis_with(url, Shape::Swallow(marker)).await
}

/// What a Redis proxy does besides passing bytes.
enum Shape {
    Pausable,
    Swallow(&'static [u8]),
    DropReplyTo(&'static [u8]),
    Latency(Duration),
    CutReply(&'static [u8], &'static [u8]),
    Rewrite(fn(&mut [u8])),
}

/// A Redis URL split around its host and port, to point it at a proxy
/// (scheme, credentials and database kept).
pub struct RedisUrl {
    pub target: SocketAddr,
    scheme: String,
    auth: String,
    path: String,
}

impl RedisUrl {
    /// `url` parsed, its host looked up.
    pub async fn parse(url: &str) -> RedisUrl {
        let (scheme, rest) = url.split_once("://").expect("a redis:// URL");
        let (auth, hostpath) = match rest.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), rest),
        };
        let (hostport, path) = match hostpath.split_once('/') {
            Some((h, p)) => (h, format!("/{p}")),
            None => (hostpath, String::new()),
        };
        let target = tokio::net::lookup_host(hostport)
            .await
            .unwrap()
            .next()
            .unwrap();
        RedisUrl {
            target,
            scheme: scheme.to_string(),
            auth,
            path,
        }
    }

    /// The same URL through a loopback proxy on `port`.
    pub fn via(&self, port: u16) -> String {
        format!(
            "{}://{}127.0.0.1:{port}{}",
            self.scheme, self.auth, self.path
        )
    }
}

async fn in_front_of_redis_with(url: &str, shape: Shape) -> (Proxy, String) {
    let url = RedisUrl::parse(url).await;
    let target = url.target;
    let proxy = match shape {
        Shape::CutReply(marker, unless) => Proxy::start_cutting_reply(target, marker, unless).await,
        Shape::Swallow(marker) => Proxy::start_swallowing(target, marker).await,
        Shape::Pausable => Proxy::start_pausable(target).await,
        Shape::DropReplyTo(marker) => Proxy::start_dropping_reply_to(target, marker).await,
        Shape::Latency(latency) => Proxy::start_with_latency(target, latency).await,
        Shape::Rewrite(rewrite) => Proxy::start_rewriting_replies(target, rewrite).await,
    };
    let proxied = url.via(proxy.port);
    (proxy, proxied)
}
