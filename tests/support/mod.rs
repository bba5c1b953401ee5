//! Test harness: real servers on free loopback ports.
//!
//! [`RedisServer`] and [`MongoServer`] each start a real process (Debian's
//! `redis-server`; SecantusDB, a MongoDB-compatible server, from `./.venv`)
//! with its own temp dir, poll until it answers, print its log if the test
//! fails, and kill it on drop. `WRIT_TEST_REDIS_URL` / `WRIT_TEST_MONGODB_URI`
//! point the same tests at external servers (real MongoDB, say); every test
//! then uses its own namespace and database, so tests never collide.
//!
//! [`RedisServer::start_tls`] starts a TLS-only redis-server with the server
//! certificate of a [`TestCa`] (a CA, a server and a client certificate made
//! with `openssl` in the test's temp dir); TLS tests always start their own.
//!
//! With `WRIT_TEST_REDIS_CLUSTER=1`, [`TestEnv`] starts a local Redis
//! Cluster ([`cluster::RedisCluster`]: 3 masters with a replica each) instead
//! of one redis-server, and its config sets `redis.cluster = true`.
//!
//! A missing server binary fails the test loudly with the install command.
#![allow(dead_code)]

pub mod acks;
pub mod cluster;
pub mod delay_proxy;
pub mod history;
pub mod hook_proxy;
pub mod load;
pub mod majority_proxy;
pub mod mongo_proxy;
pub mod monitor;
pub mod pause;
pub mod ports;
pub mod proc;
pub mod proxy;
pub mod race_proxy;
pub mod reap;
pub mod streams;
pub mod wire;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use ports::{free_port, listen_port, refused_port};
use ports::{on_a_free_port, on_ports, PORT_TRIES};
use writ::config::Config;

/// Waits until `port` accepts connections. An error (with the log's tail) if
/// the child exits first, as it does when it lost its port to another
/// process; a panic if it neither exits nor answers within `limit`.
fn wait_tcp(
    port: u16,
    child: &mut Child,
    name: &str,
    log: &Path,
    limit: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{name} exited with {status} before accepting connections on port {port}; log:\n{}",
                tail(log)
            ));
        }
        if start.elapsed() > limit {
            // Not left running until the test binary exits.
            kill(child);
            panic!(
                "{name} did not accept connections on port {port} within {limit:?}; log:\n{}",
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A `redis-server` child process.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: TempDir,
    log: PathBuf,
    aof: bool,
    tls: Option<ServerTls>,
}

/// How a TLS-only redis-server is started: its certificate and the CA it
/// checks client certificates against.
#[derive(Clone)]
struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    /// `--tls-auth-clients`: `no`, `optional` or `yes`.
    auth_clients: &'static str,
    /// The client certificate the readiness check presents (for `yes`).
    client: (PathBuf, PathBuf),
}

/// A test CA made with `openssl` in its own temp dir: a server certificate for
/// 127.0.0.1 / localhost and a client certificate, both signed by it.
pub struct TestCa {
    dir: TempDir,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it: `sudo apt-get install openssl`")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// Makes the CA and its certificates (P-256 keys, valid for two days).
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=writ test CA",
        ]);
        openssl(d, &args);
        for (name, cn, usage, san) in [
            (
                "server",
                "127.0.0.1",
                "serverAuth",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
            ),
            ("client", "writ-test-client", "clientAuth", ""),
        ] {
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-new"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &args);
            std::fs::write(
                d.join(&ext),
                format!("{san}basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"),
            )
            .unwrap();
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
        TestCa {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            dir,
        }
    }
}

impl RedisServer {
    /// Starts redis-server without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts redis-server; `aof` turns on `appendonly yes`, `appendfsync always`.
    pub fn start_with(aof: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn(dir, aof, None)
    }

    /// Starts a TLS-only redis-server (`--port 0 --tls-port P`) with `ca`'s
    /// server certificate; `auth_clients` is its `--tls-auth-clients`
    /// (`no`, `optional`, `yes`: client certificates checked against `ca`).
    pub fn start_tls(ca: &TestCa, auth_clients: &'static str) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = ServerTls {
            cert: ca.server_cert.clone(),
            key: ca.server_key.clone(),
            ca: ca.ca.clone(),
            auth_clients,
            client: (ca.client_cert.clone(), ca.client_key.clone()),
        };
        Self::spawn(dir, false, Some(tls))
    }

    /// Starts redis-server on the first of `ports` where it comes up as the
    /// one answering (for the harness's own tests).
    pub fn start_on_ports(ports: Vec<u16>) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("redis.log");
        let (port, child) = on_ports(ports, |port| {
            Self::try_spawn_child(dir.path(), port, false, &log, None)
        });
        RedisServer {
            child,
            port,
            dir,
            log,
            aof: false,
            tls: None,
        }
    }

    /// A fresh server on a free port, trying up to [`PORT_TRIES`] ports.
    fn spawn(dir: TempDir, aof: bool, tls: Option<ServerTls>) -> RedisServer {
        let log = dir.path().join("redis.log");
        let (port, child) =
            on_a_free_port(|port| Self::try_spawn_child(dir.path(), port, aof, &log, tls.as_ref()));
        RedisServer {
            child,
            port,
            dir,
            log,
            aof,
            tls,
        }
    }

    fn spawn_child(dir: &Path, port: u16, aof: bool, log: &Path, tls: Option<&ServerTls>) -> Child {
        Self::try_spawn_child(dir, port, aof, log, tls).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_spawn_child(
        dir: &Path,
        port: u16,
        aof: bool,
        log: &Path,
        tls: Option<&ServerTls>,
    ) -> Result<Child, String> {
        let bin = std::env::var("WRIT_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&bin);
        match tls {
            None => cmd.args(["--port", &port.to_string()]),
            Some(t) => cmd
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&t.cert)
                .arg("--tls-key-file")
                .arg(&t.key)
                .arg("--tls-ca-cert-file")
                .arg(&t.ca)
                .args(["--tls-auth-clients", t.auth_clients]),
        };
        local_server_args(&mut cmd, dir, log, aof);
        let mut child = reap::spawn(cmd).unwrap_or_else(|e| {
            panic!("cannot start {bin:?} ({e}). Install it: `sudo apt-get install redis-server` (or run ./scripts/setup), or set WRIT_TEST_REDIS_URL")
        });
        wait_tcp(
            port,
            &mut child,
            "redis-server",
            log,
            Duration::from_secs(20),
        )?;
        // Wait until it answers PING (not just accepts).
        let client = match tls {
            None => redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap(),
            Some(t) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{port}"),
                redis::TlsCertificates {
                    client_tls: Some(redis::ClientTlsConfig {
                        client_cert: std::fs::read(&t.client.0).unwrap(),
                        client_key: std::fs::read(&t.client.1).unwrap(),
                    }),
                    root_cert: Some(std::fs::read(&t.ca).unwrap()),
                },
            )
            .unwrap(),
        };
        let start = Instant::now();
        loop {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    // The server that answers must be ours: another process
                    // (a parallel test's server) may hold the port, and ours
                    // then fails to bind and exits.
                    let info: String = redis::cmd("INFO")
                        .arg("server")
                        .query(&mut c)
                        .unwrap_or_default();
                    let pid = info_field(&info, "process_id").and_then(|p| p.parse::<u32>().ok());
                    if pid == Some(child.id()) {
                        break;
                    }
                    kill(&mut child);
                    return Err(format!(
                        "port {port} answers for another redis-server (pid {pid:?}), not ours ({})",
                        child.id()
                    ));
                }
            }
            if start.elapsed() >= Duration::from_secs(20) {
                kill(&mut child);
                panic!("redis-server never answered PING; log:\n{}", tail(log));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `redis://127.0.0.1:P`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A connection to this server (plain TCP).
    pub async fn connect(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Kills (SIGKILL) and starts again on the same port and data dir.
    pub fn restart(&mut self) {
        kill(&mut self.child);
        let fresh = Self::spawn_child(
            self.dir.path(),
            self.port,
            self.aof,
            &self.log,
            self.tls.as_ref(),
        );
        self.child = fresh;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server log (port {}) ----\n{}",
                self.port,
                tail(&self.log)
            );
        }
    }
}

/// The SecantusDB binary, or a loud failure naming the install command.
pub fn secantusd() -> PathBuf {
    let path = std::env::var_os("WRIT_SECANTUSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/secantusd-py"));
    if !path.exists() {
        panic!(
            "SecantusDB not found at {}. Install it with ./scripts/setup (pip install secantusdb==0.7.0b3 into .venv), \
             or set WRIT_TEST_MONGODB_URI to a real MongoDB",
            path.display()
        );
    }
    path
}

/// A SecantusDB child process.
pub struct MongoServer {
    child: Child,
    pub port: u16,
    dir: TempDir,
    log: PathBuf,
}

impl MongoServer {
    pub fn start() -> MongoServer {
        Self::start_on(std::iter::repeat_with(free_port).take(PORT_TRIES))
    }

    /// Starts SecantusDB on the first of `ports` where it comes up as the
    /// one answering (for the harness's own tests).
    pub fn start_on_ports(ports: Vec<u16>) -> MongoServer {
        Self::start_on(ports)
    }

    fn start_on(ports: impl IntoIterator<Item = u16>) -> MongoServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("secantus.log");
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let (port, child) = on_ports(ports, |port| {
            Self::try_spawn_child(dir.path(), port, &log, &[])
        });
        MongoServer {
            child,
            port,
            dir,
            log,
        }
    }

    fn spawn_child(dir: &Path, port: u16, log: &Path, extra: &[&str]) -> Child {
        Self::try_spawn_child(dir, port, log, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_spawn_child(dir: &Path, port: u16, log: &Path, extra: &[&str]) -> Result<Child, String> {
        let bin = secantusd();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
        ])
        .arg(dir.join("data"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        let mut child = reap::spawn(cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; run ./scripts/setup", bin.display()));
        wait_tcp(port, &mut child, "SecantusDB", log, Duration::from_secs(90))?;
        // The server that answers must be ours, as for redis-server: another
        // process (a parallel test's server) may hold the port, and ours
        // then fails to bind and exits. `--auth` servers refuse
        // `serverStatus` before a login; they restart on a port this
        // harness already owned, so they are not checked.
        if !extra.contains(&"--auth") {
            let started = Instant::now();
            let pid = loop {
                match wire::server_pid(port) {
                    Some(pid) => break Some(pid),
                    None if started.elapsed() > Duration::from_secs(30) => break None,
                    None => {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Err(format!(
                                "SecantusDB exited with {status} before it answered on port {port}; log:\n{}",
                                tail(log)
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            };
            if pid != Some(child.id()) {
                kill(&mut child);
                return Err(format!(
                    "port {port} answers for another MongoDB-protocol server (pid {pid:?}), not our SecantusDB ({})",
                    child.id()
                ));
            }
        }
        Ok(child)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true&retryWrites=false",
            self.port
        )
    }

    /// Stops the server (SIGKILL).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again after [`MongoServer::stop`], same port and data.
    pub fn resume(&mut self) {
        self.child = Self::spawn_child(self.dir.path(), self.port, &self.log, &[]);
    }

    /// Stops the server with SIGTERM (a clean shutdown that keeps everything
    /// written), waiting up to 30 s.
    pub fn shut_down(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("SecantusDB did not stop within 30 s of SIGTERM");
    }

    /// Starts it again after [`MongoServer::stop`] with SCRAM-SHA-256
    /// authentication required (`--auth`), same port and data.
    pub fn resume_with_auth(&mut self) {
        self.child = Self::spawn_child(self.dir.path(), self.port, &self.log, &["--auth"]);
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        kill(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "---- SecantusDB log (port {}) ----\n{}",
                self.port,
                tail(&self.log)
            );
        }
    }
}

/// The arguments every local redis-server of the harness gets (loopback,
/// no RDB, its own dir and log, AOF per `aof` with `appendfsync always`,
/// quiet stdio), for [`RedisServer`] and the cluster nodes.
pub fn local_server_args(cmd: &mut Command, dir: &Path, log: &Path, aof: bool) {
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(log)
        .args([
            "--appendonly",
            if aof { "yes" } else { "no" },
            "--appendfsync",
            "always",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A test's servers and names.
pub struct TestEnv {
    pub redis: Option<RedisServer>,
    /// The local cluster, with `WRIT_TEST_REDIS_CLUSTER=1`.
    pub cluster: Option<cluster::RedisCluster>,
    pub mongo: Option<MongoServer>,
    pub redis_url: String,
    pub mongo_uri: String,
    /// Unique per test: Redis namespace and MongoDB database.
    pub name: String,
}

impl TestEnv {
    /// Starts (or connects to external) servers.
    pub fn start(test: &str) -> TestEnv {
        Self::start_with(test, false)
    }

    /// A test env on a Redis of its own, and MongoDB as for
    /// [`TestEnv::start`]: for tests that change or count server-wide state
    /// (`CONFIG SET maxmemory`, `CONFIG RESETSTAT` and `INFO commandstats`),
    /// which a shared server's other clients would suffer or disturb.
    /// Without `WRIT_TEST_REDIS_URL` that is what [`TestEnv::start`] gives
    /// (a redis-server, or with `WRIT_TEST_REDIS_CLUSTER` a cluster, of the
    /// test's own); with it, a redis-server of its own instead of the shared
    /// one.
    pub fn start_own_redis(test: &str) -> TestEnv {
        if std::env::var("WRIT_TEST_REDIS_URL").is_err() {
            return Self::start(test);
        }
        let r = RedisServer::start();
        let redis_url = r.url();
        let (mongo, mongo_uri) = Self::mongo();
        TestEnv {
            redis: Some(r),
            cluster: None,
            mongo,
            redis_url,
            mongo_uri,
            name: Self::unique_name(test),
        }
    }

    /// A Redis namespace and MongoDB database name for `test`.
    fn unique_name(test: &str) -> String {
        // The pid and a sequence keep names apart within a run; the random
        // part keeps them apart across runs on one persistent server
        // (`WRIT_TEST_MONGODB_URI`), where fresh CI containers repeat pids.
        format!(
            "t{}{:06x}_{}_{}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff,
            SEQ.fetch_add(1, Ordering::Relaxed),
            test.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(20)
                .collect::<String>()
        )
    }

    /// `WRIT_TEST_MONGODB_URI`, or a SecantusDB of this env's own.
    fn mongo() -> (Option<MongoServer>, String) {
        match std::env::var("WRIT_TEST_MONGODB_URI") {
            Ok(uri) => (None, uri),
            Err(_) => {
                let m = MongoServer::start();
                let uri = m.uri();
                (Some(m), uri)
            }
        }
    }

    pub fn start_with(test: &str, aof: bool) -> TestEnv {
        let name = Self::unique_name(test);
        let (redis, cluster, redis_url) = match std::env::var("WRIT_TEST_REDIS_URL") {
            Ok(url) => (None, None, url),
            Err(_) if cluster::cluster_wanted() => {
                let c = cluster::RedisCluster::start(3, 1, aof);
                let url = c.url_list();
                (None, Some(c), url)
            }
            Err(_) => {
                let r = RedisServer::start_with(aof);
                let url = r.url();
                (Some(r), None, url)
            }
        };
        let (mongo, mongo_uri) = Self::mongo();
        TestEnv {
            redis,
            cluster,
            mongo,
            redis_url,
            mongo_uri,
            name,
        }
    }

    /// The config text for this env, with `extra` appended.
    pub fn config_text(&self, extra: &str) -> String {
        self.config_text_with(&Overrides {
            collections: extra,
            ..Default::default()
        })
    }

    /// The config text with overrides.
    pub fn config_text_with(&self, o: &Overrides) -> String {
        let mongo = o
            .mongo_uri
            .clone()
            .unwrap_or_else(|| self.mongo_uri.clone());
        let redis = o
            .redis_url
            .clone()
            .unwrap_or_else(|| self.redis_url.clone());
        let (daemon_extra, client_extra, extra) = (o.daemon, o.client, o.collections);
        let partitions = o.partitions.unwrap_or(4);
        let redis_extra = if self.is_cluster() && o.redis_url.is_none() {
            format!("cluster = true\n{}", o.redis)
        } else {
            o.redis.to_string()
        };
        let mongo_extra = o.mongo;
        let config = format!(
            r#"
[redis]
url = "{redis}"
namespace = "{name}"
partitions = {partitions}
{redis_extra}

[mongodb]
uri = "{mongo}"
database = "{name}"
{mongo_extra}

[daemon]
{daemon_extra}

[client]
{client_extra}

[[collections]]
name = "signal"
key = ["symbol", "strategyName", "exchangeName"]

[[collections]]
name = "candle"
key = ["symbol", "interval", "timestamp"]
mode = "insert_once"

[[collections]]
name = "measure"
key = ["bucket", "entryKey"]
{extra}
"#,
            redis = redis,
            mongo = mongo,
            name = self.name
        );
        // Defaults for keys the overrides did not set.
        let mut text = config;
        for (table, key, value) in [
            ("[mongodb]", "op_timeout_ms", "5000"),
            ("[daemon]", "metrics_listen", "\"\""),
            ("[daemon]", "block_ms", "200"),
            ("[daemon]", "backoff_cap_ms", "500"),
            ("[daemon]", "shutdown_deadline_ms", "5000"),
            ("[daemon]", "max_attempts", "3"),
            ("[daemon]", "lease_ttl_ms", "2000"),
            ("[daemon]", "stats_interval_ms", "300"),
            ("[client]", "write_timeout_ms", "30000"),
            ("[client]", "read_timeout_ms", "30000"),
            ("[client]", "max_document_bytes", "65536"),
        ] {
            let section_has = |t: &str| {
                let start = t.find(table).unwrap();
                let rest = &t[start + table.len()..];
                let end = rest.find("\n[").unwrap_or(rest.len());
                rest[..end].lines().any(|l| {
                    l.trim_start().starts_with(&format!("{key} "))
                        || l.trim_start().starts_with(&format!("{key}="))
                })
            };
            if !section_has(&text) {
                text = text.replacen(table, &format!("{table}\n{key} = {value}"), 1);
            }
        }
        text
    }

    /// A validated config with overrides.
    pub fn config_with(&self, o: &Overrides) -> Config {
        Config::from_toml(&self.config_text_with(o)).expect("test config is valid")
    }

    pub fn config(&self) -> Config {
        Config::from_toml(&self.config_text("")).expect("test config is valid")
    }

    /// Writes the config to a file (for the binary) and returns its path.
    pub fn config_file(&self, dir: &Path, extra: &str) -> PathBuf {
        let p = dir.join(format!("{}.toml", self.name));
        std::fs::write(&p, self.config_text(extra)).unwrap();
        p
    }

    /// Writes the config with overrides to a file; returns its path.
    pub fn config_file_with(&self, dir: &Path, o: &Overrides) -> PathBuf {
        let p = dir.join(format!("{}.toml", self.name));
        std::fs::write(&p, self.config_text_with(o)).unwrap();
        p
    }

    /// Whether this env runs on a Redis Cluster (`WRIT_TEST_REDIS_CLUSTER=1`;
    /// never with a redis-server of its own).
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
            || (self.redis.is_none()
                && std::env::var("WRIT_TEST_REDIS_URL").is_ok()
                && cluster::cluster_wanted())
    }

    /// A Redis connection (a cluster connection on a cluster), as writ makes them.
    pub async fn redis(&self) -> writ::redis_conn::Conn {
        writ::redis_conn::connect(&self.config(), Duration::ZERO)
            .await
            .unwrap()
    }

    /// Every document of a collection, sorted by `symbol`.
    pub async fn all_docs(&self, coll: &str) -> Vec<mongodb::bson::Document> {
        use futures::TryStreamExt;
        let c = self
            .mongo_db()
            .await
            .collection::<mongodb::bson::Document>(coll);
        let cursor = c
            .find(mongodb::bson::doc! {})
            .sort(mongodb::bson::doc! {"symbol": 1})
            .await
            .unwrap();
        cursor.try_collect().await.unwrap()
    }

    /// The test's MongoDB database.
    pub async fn mongo_db(&self) -> mongodb::Database {
        mongodb::Client::with_uri_str(&self.mongo_uri)
            .await
            .unwrap()
            .database(&self.name)
    }

    /// Makes every write to `collection` whose payload has `u: <u>` fail for
    /// good: `holder` (a key document) is stored with that payload, and a
    /// second unique index on `payload.u` makes any other key's copy clash.
    pub async fn poison_payload_u(
        &self,
        collection: &str,
        holder: mongodb::bson::Document,
        u: &str,
    ) {
        let db = self.mongo_db().await;
        let mut doc = holder;
        doc.insert("payload", mongodb::bson::doc! {"u": u});
        db.collection::<mongodb::bson::Document>(collection)
            .insert_one(doc)
            .await
            .unwrap();
        db.run_command(
            mongodb::bson::doc! {"createIndexes": collection, "indexes": [
                {"key": {"payload.u": 1}, "name": "u_unique", "unique": true, "sparse": true}
            ]},
        )
        .await
        .unwrap();
    }
}

/// Changes to the test config.
#[derive(Default, Clone)]
pub struct Overrides<'a> {
    /// Lines added to `[redis]` (TLS files, say).
    pub redis: &'a str,
    /// Lines added to `[daemon]` (they win over the harness defaults).
    pub daemon: &'a str,
    /// Lines added to `[client]`.
    pub client: &'a str,
    /// Lines added to `[mongodb]`.
    pub mongo: &'a str,
    /// Extra `[[collections]]`.
    pub collections: &'a str,
    /// Another MongoDB URI (a proxy, say).
    pub mongo_uri: Option<String>,
    /// Another Redis URL.
    pub redis_url: Option<String>,
    /// Another partition count (default 4).
    pub partitions: Option<u32>,
}

/// An in-process daemon, on a runtime of its own with
/// `daemon.worker_threads` threads, as `writ serve` runs it (not on the
/// test's runtime, whose threads the test's own work shares). Stopped
/// gracefully by [`Daemon::stop`]; dropped, it is told to stop and its
/// runtime goes at once, its tasks dropped mid-way, as a test's runtime
/// drops its tasks when the test ends.
pub struct Daemon {
    token: CancellationToken,
    done: Option<tokio::sync::oneshot::Receiver<writ::Result<()>>>,
    /// Dropped with the daemon: its runtime goes, whatever it was doing.
    _kill: tokio::sync::oneshot::Sender<()>,
}

impl Daemon {
    pub fn start(config: Config) -> Daemon {
        let token = CancellationToken::new();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let stop = token.clone();
        std::thread::Builder::new()
            .name("writ-serve".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(config.worker_threads)
                    .enable_all()
                    .build()
                    .expect("the daemon's runtime");
                // A task, as `writ serve` runs it (src/main.rs).
                rt.block_on(async move {
                    tokio::select! {
                        r = tokio::spawn(writ::serve::serve(config, stop)) => {
                            if let Ok(r) = r {
                                let _ = done_tx.send(r);
                            }
                        }
                        _ = killed => {}
                    }
                });
                // Not a drop: the MongoDB driver's tasks may still run.
                rt.shutdown_background();
            })
            .expect("the daemon's thread");
        Daemon {
            token,
            done: Some(done),
            _kill: kill,
        }
    }

    /// What the daemon returned, once it stopped by itself within `limit`.
    pub async fn stopped_within(mut self, limit: Duration) -> writ::Result<()> {
        let done = self.done.take().unwrap();
        tokio::time::timeout(limit, done)
            .await
            .expect("the daemon stopped by itself")
            .expect("the daemon's thread ended without a result (serve panicked? see stderr)")
    }

    /// SIGTERM-equivalent: stop reading, drain, return.
    pub async fn stop(mut self) {
        self.token.cancel();
        let done = self.done.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .expect("daemon stops within 30 s")
            .expect("the daemon's thread ended without a result (serve panicked? see stderr)")
            .expect("daemon returns Ok");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// What the cache holds for `key` of `collection`, read directly.
pub async fn cached(
    config: &Config,
    collection: &str,
    key: &mongodb::bson::Document,
) -> Option<writ::cache::Cached> {
    try_cached(config, collection, key).await.unwrap()
}

/// [`cached`], with Redis's refusal (a restart under way) as an error.
pub async fn try_cached(
    config: &Config,
    collection: &str,
    key: &mongodb::bson::Document,
) -> writ::Result<Option<writ::cache::Cached>> {
    let coll = config.collection(collection).expect("declared collection");
    let k = writ::protocol::Key::from_document(key, coll).unwrap();
    let names = writ::protocol::Names::new(&config.namespace);
    let conn = writ::redis_conn::connect(config, Duration::ZERO).await?;
    let entry = names.cache(
        k.partition(collection, config.partitions),
        collection,
        &k.canonical(),
    );
    writ::cache::Cache::new(conn).get(&entry).await
}

/// A tiny HTTP GET on loopback: (status, body), or `None` if unreachable.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// How many partitions each daemon holds the lease of now (`""`: no one).
pub async fn lease_holders(
    env: &TestEnv,
    partitions: u32,
) -> std::collections::HashMap<String, u32> {
    lease_holders_on(&mut env.redis().await, &env.name, partitions).await
}

/// [`lease_holders`] through any connection (a Redis the test started
/// itself) for namespace `ns`.
pub async fn lease_holders_on<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    ns: &str,
    partitions: u32,
) -> std::collections::HashMap<String, u32> {
    let mut out = std::collections::HashMap::new();
    for p in 0..partitions {
        let o: Option<String> = redis::cmd("GET")
            .arg(writ::protocol::Names::new(ns).lease(p))
            .query_async(conn)
            .await
            .unwrap();
        *out.entry(o.unwrap_or_default()).or_default() += 1;
    }
    out
}

/// A cache entry as the daemon wrote it (its version and document bytes),
/// kept to put back later: a failover that loses the cache updates after it.
pub struct SavedCacheEntry {
    key: String,
    /// Its version, as stored (`Version::to_sortable`).
    pub version: String,
    doc: Vec<u8>,
}

impl SavedCacheEntry {
    /// Reads cache entry `key`.
    pub async fn save(conn: &mut writ::redis_conn::Conn, key: &str) -> SavedCacheEntry {
        let (version, doc): (String, Vec<u8>) = redis::cmd("HMGET")
            .arg(key)
            .arg("v")
            .arg("doc")
            .query_async(conn)
            .await
            .unwrap();
        SavedCacheEntry {
            key: key.to_string(),
            version,
            doc,
        }
    }

    /// Writes it back over whatever the entry holds now.
    pub async fn restore(&self, conn: &mut writ::redis_conn::Conn) {
        let _: () = redis::cmd("HSET")
            .arg(&self.key)
            .arg("v")
            .arg(&self.version)
            .arg("doc")
            .arg(&self.doc)
            .query_async(conn)
            .await
            .unwrap();
    }
}

/// Entries of `stream` delivered to `group`'s consumers and not yet acked
/// (the `XPENDING` summary's count).
pub async fn pending_count<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> u64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap();
    match v {
        redis::Value::Array(parts) => redis::from_redis_value(parts[0].clone()).unwrap(),
        other => panic!("XPENDING reply {other:?}"),
    }
}

/// The sum of this process's samples of the counter `name` whose labels
/// contain `label` ("" for every sample). For tests that run the daemon in
/// their own process (`Daemon::start`), whose metrics go to this recorder.
pub fn own_counter(name: &str, label: &str) -> f64 {
    writ::telemetry::recorder()
        .render()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `f` until it returns `Some`, at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `n` names (`<prefix>0`, `<prefix>1`, ...) whose keys of `collection`, built
/// by `key`, fall in the same partition as `key(anchor)`: writes to them share
/// one partition stream, so one round of the daemon can hold them all.
pub fn same_partition(
    config: &Config,
    collection: &str,
    key: impl Fn(&str) -> mongodb::bson::Document,
    anchor: &str,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let coll = config.collection(collection).expect("declared collection");
    let part = |s: &str| {
        writ::protocol::Key::from_document(&key(s), coll)
            .unwrap()
            .partition(collection, config.partitions)
    };
    let p = part(anchor);
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .filter(|name| part(name) == p)
        .take(n)
        .collect();
    assert_eq!(names.len(), n, "not enough keys in partition {p}");
    names
}

/// `aof_current_size` of `INFO persistence`: grows when Redis propagates a
/// write (to the AOF and to replicas alike).
pub async fn aof_size(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(conn)
        .await
        .unwrap();
    info_field(&info, "aof_current_size")
        .and_then(|v| v.parse().ok())
        .expect("aof_current_size")
}

/// The value of `name` in an `INFO` reply (`name:value` lines).
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// `INFO commandstats` of the server behind `conn`.
pub async fn commandstats<C: redis::aio::ConnectionLike>(conn: &mut C) -> String {
    redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap()
}

/// `cmdstat_<command>`'s `calls` in an `INFO commandstats` text (0 when
/// never called).
pub fn command_calls(info: &str, command: &str) -> u64 {
    info_field(info, &format!("cmdstat_{command}"))
        .and_then(|v| v.strip_prefix("calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Another program's string at `key` (a cache key, an ack stream's, the
/// dead-letter stream's): writ's commands on it fail with `WRONGTYPE`.
pub async fn foreign_string<C: redis::aio::ConnectionLike>(conn: &mut C, key: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("someone else's")
        .query_async(conn)
        .await
        .unwrap();
}

/// `key` of `collection` read by a new handle on `config` (nothing of this
/// process's pending writes in between), as another process reads it.
pub async fn read_by_a_new_handle(
    config: &Config,
    collection: &str,
    key: &mongodb::bson::Document,
) -> Option<mongodb::bson::Document> {
    writ::Writ::connect(config.clone())
        .await
        .unwrap()
        .collection(collection)
        .unwrap()
        .read(key)
        .await
        .unwrap()
}

/// `CONFIG RESETSTAT`: the command counts start from 0.
pub async fn reset_stats<C: redis::aio::ConnectionLike>(conn: &mut C) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}

/// Removes the namespace's recorded partition count (as a Redis data loss
/// would), and who recorded it.
pub async fn forget_partition_count<C: redis::aio::ConnectionLike>(conn: &mut C, config: &Config) {
    let _: () = redis::cmd("HDEL")
        .arg(writ::protocol::Names::new(&config.namespace).meta(0))
        .arg(writ::partition_count::FIELD)
        .arg(writ::partition_count::BY_FIELD)
        .query_async(conn)
        .await
        .unwrap();
}

/// `CONFIG SET name value` (`maxmemory`, say) on the server behind `conn`.
pub async fn config_set<C: redis::aio::ConnectionLike>(conn: &mut C, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("CONFIG SET {name} {value}: {e}"));
}

/// Adds a raw protocol-v1 `put` (JSON key and document, no reply address)
/// to `stream`, as a writer outside the clients would, with `extra` fields
/// after the protocol's; returns its id.
pub async fn raw_json_put<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    stream: &str,
    coll: &str,
    key: &str,
    doc: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (f, v) in [
        ("v", "1"),
        ("coll", coll),
        ("op", "put"),
        ("enc", "json"),
        ("key", key),
        ("doc", doc),
    ]
    .iter()
    .chain(extra)
    {
        cmd.arg(*f).arg(*v);
    }
    cmd.query_async(conn).await.expect("XADD")
}
