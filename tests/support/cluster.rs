//! A local Redis Cluster for the integration tests.
//!
//! writ has to keep its promises when Redis is a cluster: slots move, a
//! master dies and its replica takes over, the old master comes back as a
//! replica. Those tests need a real cluster they can break on purpose, so
//! [`RedisCluster`] starts one out of plain `redis-server` processes the way
//! [`super::RedisServer`] starts one server: every node on free loopback
//! ports (client and cluster-bus port both picked, since `port + 10000` can
//! overflow), its own dir and `nodes.conf`, readiness found by polling (never
//! by sleeping), every node killed on drop. `redis-cli --cluster create`
//! assigns the slots and replicas; `start` then waits until the cluster has
//! settled (every node `cluster_state:ok`, all 16384 slots assigned, every
//! node agreeing on which master serves which slots, every replica's link
//! up). Every wait is bounded and panics with the tails of the node logs.
//! Nodes run with `repl-diskless-sync-delay 0`: with Redis' default of 5 s
//! every replica (at create and after a restart) waits 5 s for its first sync.
//!
//! Binaries: `redis-server` (`WRIT_REDIS_SERVER` overrides) and `redis-cli`
//! (`WRIT_REDIS_CLI` overrides); a missing one fails loudly with the install
//! command. The harness is synchronous (std::process and the sync `redis`
//! API), like `RedisServer`. Tests that need it but are slow can ask
//! [`cluster_wanted`] (`WRIT_TEST_REDIS_CLUSTER=1`) first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, kill, tail};

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;
/// How long `start` and `restart` wait for the cluster to settle.
const SETTLE: Duration = Duration::from_secs(30);
/// How long a node may take to answer PING after it is spawned.
const BOOT: Duration = Duration::from_secs(20);
/// How long `redis-cli --cluster create` may take.
const CREATE: Duration = Duration::from_secs(60);
/// Polling interval of every wait.
const POLL: Duration = Duration::from_millis(50);

/// True when the environment asks for the Redis Cluster tests
/// (`WRIT_TEST_REDIS_CLUSTER=1`).
pub fn cluster_wanted() -> bool {
    std::env::var("WRIT_TEST_REDIS_CLUSTER").is_ok_and(|v| v == "1")
}

/// One `redis-server --cluster-enabled yes` process.
struct Node {
    port: u16,
    /// `--cluster-port` (the cluster bus).
    bus: u16,
    dir: PathBuf,
    log: PathBuf,
    /// `None` once killed; a Mutex so `is_alive(&self)` can reap.
    child: Mutex<Option<Child>>,
}

impl Node {
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A node started before a later one failed to start (the cluster value
/// never formed) is killed and reaped here, not left to the test binary's
/// exit.
impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            kill(&mut child);
        }
    }
}

/// What a master was when [`RedisCluster::kill9`] killed it.
struct Killed {
    at: Instant,
    /// Its slot ranges (inclusive), or empty if it was not a master.
    slots: Vec<(u16, u16)>,
    /// Its replicas then.
    replicas: Vec<usize>,
}

/// A local Redis Cluster of `redis-server` children; see the module docs.
pub struct RedisCluster {
    nodes: Vec<Node>,
    aof: bool,
    /// Set by `kill9`, read by `wait_promoted`.
    killed: Vec<Option<Killed>>,
    /// The logs have been printed (by a panicking wait); Drop need not.
    logs_shown: AtomicBool,
    /// The nodes' dirs live in here; removed on drop.
    root: TempDir,
}

/// One range of CLUSTER SLOTS: first slot, last slot, master's port.
type SlotRange = (u16, u16, u16);

impl RedisCluster {
    /// `masters` masters each with `replicas` replicas, `--cluster-enabled yes`,
    /// `--cluster-node-timeout 2000`, own dir and cluster-config-file per
    /// node, `--save ""`, `appendonly` per `aof` (appendfsync always); then
    /// `redis-cli --cluster create ... --cluster-replicas R --cluster-yes`;
    /// then waits (at most 30 s) until the cluster has settled.
    pub fn start(masters: usize, replicas: usize, aof: bool) -> RedisCluster {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs 3 masters at least"
        );
        let begun = Instant::now();
        let root = tempfile::tempdir().expect("tempdir");
        let total = masters * (1 + replicas);
        let mut taken = Vec::new();
        let mut nodes = Vec::with_capacity(total);
        for i in 0..total {
            let dir = root.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).expect("node dir");
            let log = dir.join("redis.log");
            // Free ports are racy: a node that loses the race gets fresh ones (up to 3 times).
            let mut attempt = 0;
            let (port, bus, child) = loop {
                let port = fresh_port(&mut taken);
                let bus = fresh_port(&mut taken);
                match spawn_node(&dir, port, bus, aof, &log) {
                    Ok(child) => break (port, bus, child),
                    Err(e) if attempt < 3 => {
                        eprintln!("cluster node {i} did not start on {port}/{bus}, retrying: {e}");
                        attempt += 1;
                    }
                    Err(e) => panic!("cluster node {i}: {e}"),
                }
            };
            nodes.push(Node {
                port,
                bus,
                dir,
                log,
                child: Mutex::new(Some(child)),
            });
        }
        let cluster = RedisCluster {
            killed: (0..total).map(|_| None).collect(),
            nodes,
            aof,
            logs_shown: AtomicBool::new(false),
            root,
        };
        let spawned = begun.elapsed();
        cluster.create(replicas);
        let created = begun.elapsed();
        cluster.wait_settled("start");
        eprintln!(
            "redis cluster {masters}x{replicas} (aof {aof}) up in {:?}: nodes {spawned:?}, \
             --cluster create {:?}, settling {:?}",
            begun.elapsed(),
            created - spawned,
            begun.elapsed() - created
        );
        cluster
    }

    /// `redis-cli --cluster create` over every node, bounded by [`CREATE`].
    fn create(&self, replicas: usize) {
        let bin = std::env::var("WRIT_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let out_path = self.root.path().join("cluster-create.out");
        let out = std::fs::File::create(&out_path).expect("redis-cli output file");
        let mut cmd = Command::new(&bin);
        cmd.arg("--cluster").arg("create");
        for n in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        cmd.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let mut child = super::reap::spawn(cmd).unwrap_or_else(|e| {
            panic!(
                "cannot start {bin:?} ({e}). Install it: `sudo apt-get install redis-server` \
                 (redis-cli comes with it) or run ./scripts/setup"
            )
        });
        let begun = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for redis-cli") {
                break status;
            }
            if begun.elapsed() > CREATE {
                kill(&mut child);
                self.fail(&format!(
                    "redis-cli --cluster create did not finish within {CREATE:?}; its output:\n{}",
                    tail(&out_path)
                ));
            }
            std::thread::sleep(POLL);
        };
        if !status.success() {
            self.fail(&format!(
                "redis-cli --cluster create failed ({status}); its output:\n{}",
                tail(&out_path)
            ));
        }
    }

    /// The number of nodes (live or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `node`'s client port.
    pub fn port(&self, node: usize) -> u16 {
        self.nodes[node].port
    }

    /// `redis://127.0.0.1:P` of node `node`.
    pub fn node_url(&self, node: usize) -> String {
        format!("redis://127.0.0.1:{}", self.port(node))
    }

    /// Every node's URL (a seed list).
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.node_url(i)).collect()
    }

    /// Every node's URL, comma-separated.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// The node serving `key`'s slot as master now, as the first live node
    /// that answers sees it (after [`RedisCluster::wait_promoted`] or
    /// [`RedisCluster::restart`] every live node sees the same).
    pub fn master_of_key(&self, key: &str) -> usize {
        for i in self.live() {
            let Ok(slot) = self.query::<u16>(i, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            else {
                continue;
            };
            let Ok(map) = self.slot_map(i) else { continue };
            let &(_, _, port) = map
                .iter()
                .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
                .unwrap_or_else(|| {
                    self.fail(&format!(
                        "node {i} has no master for slot {slot} of {key:?}"
                    ))
                });
            return self.index_of(port).unwrap_or_else(|| {
                self.fail(&format!("slot {slot} is served by unknown port {port}"))
            });
        }
        self.fail("no live node answered CLUSTER KEYSLOT / CLUSTER SLOTS")
    }

    /// The live nodes that are masters now (INFO replication `role:master`).
    pub fn masters(&self) -> Vec<usize> {
        self.live()
            .filter(|&i| {
                self.try_info(i, "replication")
                    .is_some_and(|s| field(&s, "role") == Some("master"))
            })
            .collect()
    }

    /// The live nodes replicating from `master` now (INFO replication
    /// `role:slave` with `master_port` = its port), whatever their link.
    pub fn replica_of(&self, master: usize) -> Vec<usize> {
        let port = self.port(master).to_string();
        self.live()
            .filter(|&i| {
                self.try_info(i, "replication").is_some_and(|s| {
                    field(&s, "role") == Some("slave") && field(&s, "master_port") == Some(&port)
                })
            })
            .collect()
    }

    /// SIGKILLs node `node` and reaps it. A master's slots and replicas are
    /// remembered for [`RedisCluster::wait_promoted`].
    pub fn kill9(&mut self, node: usize) {
        assert!(self.is_alive(node), "kill9({node}): node is not running");
        let slots = match self.slot_map(node) {
            Ok(map) => map
                .iter()
                .filter(|r| r.2 == self.port(node))
                .map(|&(lo, hi, _)| (lo, hi))
                .collect(),
            Err(e) => self.fail(&format!("kill9({node}): CLUSTER SLOTS failed: {e}")),
        };
        let replicas = self.replica_of(node);
        if let Some(mut child) = self.nodes[node].child().take() {
            kill(&mut child);
        }
        self.killed[node] = Some(Killed {
            at: Instant::now(),
            slots,
            replicas,
        });
    }

    /// SIGSTOPs node `node` (a replica that stops confirming, say); returns
    /// once it has stopped.
    pub fn pause(&self, node: usize) {
        super::pause::pause(self.pid(node, "SIGSTOP"));
    }

    /// SIGCONTs a paused node.
    pub fn resume(&self, node: usize) {
        super::pause::resume(self.pid(node, "SIGCONT"));
    }

    fn pid(&self, node: usize, sig: &str) -> u32 {
        match self.nodes[node].child().as_ref() {
            Some(child) => child.id(),
            None => self.fail(&format!("{sig} to node {node}: it is not running")),
        }
    }

    /// True while node `node`'s process runs (not killed, not exited).
    pub fn is_alive(&self, node: usize) -> bool {
        match self.nodes[node].child().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// After [`RedisCluster::kill9`] of a master: waits (at most `limit`)
    /// until one of the replicas it had is master of all its slots in the
    /// view of every live node, and every live node says `cluster_state:ok`.
    /// Returns the new master and the time since the kill (the failover
    /// time; about the time waited when called right after `kill9`).
    pub fn wait_promoted(&self, old_master: usize, limit: Duration) -> (usize, Duration) {
        let killed = self.killed[old_master]
            .as_ref()
            .unwrap_or_else(|| panic!("wait_promoted({old_master}): node was not killed by kill9"));
        assert!(
            !killed.slots.is_empty(),
            "wait_promoted({old_master}): node served no slots when killed"
        );
        assert!(
            !killed.replicas.is_empty(),
            "wait_promoted({old_master}): node had no replica when killed"
        );
        let begun = Instant::now();
        loop {
            match self.promoted(killed) {
                Ok(new) => return (new, killed.at.elapsed()),
                Err(why) if begun.elapsed() > limit => self.fail(&format!(
                    "no replica of node {old_master} took over within {limit:?}: {why}"
                )),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// The replica of `killed` that every live node sees as master of all its
    /// slots, with `cluster_state:ok` everywhere; or why not yet.
    fn promoted(&self, killed: &Killed) -> Result<usize, String> {
        let mut new = None;
        for i in self.live() {
            let state = self.cluster_info(i)?;
            if field(&state, "cluster_state") != Some("ok") {
                return Err(format!("node {i}: {:?}", field(&state, "cluster_state")));
            }
            let map = self.slot_map(i).map_err(|e| format!("node {i}: {e}"))?;
            for &(lo, hi) in &killed.slots {
                let owner = owner_of(&map, lo, hi)
                    .and_then(|port| self.index_of(port))
                    .ok_or_else(|| format!("node {i}: slots {lo}-{hi} have no single master"))?;
                if !killed.replicas.contains(&owner) {
                    return Err(format!("node {i}: slots {lo}-{hi} served by node {owner}"));
                }
                if new.is_some_and(|n| n != owner) {
                    return Err(format!("nodes disagree on slots {lo}-{hi}"));
                }
                new = Some(owner);
            }
        }
        new.ok_or_else(|| "no live node".to_string())
    }

    /// Starts a killed node again on its port, dir and `nodes.conf`; waits
    /// until it answers and the cluster has settled again (a promoted-away
    /// master comes back as a replica of its successor).
    pub fn restart(&mut self, node: usize) {
        assert!(
            !self.is_alive(node),
            "restart({node}): node is still running"
        );
        let n = &self.nodes[node];
        let child = spawn_node(&n.dir, n.port, n.bus, self.aof, &n.log)
            .unwrap_or_else(|e| self.fail(&format!("restart({node}): {e}")));
        *self.nodes[node].child() = Some(child);
        self.killed[node] = None;
        self.wait_settled(&format!("restart({node})"));
    }

    /// INFO `section` of node `node` (panics if it does not answer).
    pub fn info(&self, node: usize, section: &str) -> String {
        self.query(node, redis::cmd("INFO").arg(section))
            .unwrap_or_else(|e| panic!("INFO {section} on node {node}: {e}"))
    }

    fn try_info(&self, node: usize, section: &str) -> Option<String> {
        self.query(node, redis::cmd("INFO").arg(section)).ok()
    }

    fn cluster_info(&self, node: usize) -> Result<String, String> {
        self.query(node, redis::cmd("CLUSTER").arg("INFO"))
            .map_err(|e| format!("node {node}: CLUSTER INFO: {e}"))
    }

    /// The nodes we have not killed (and that have not exited).
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| self.is_alive(i))
    }

    fn index_of(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port == port)
    }

    /// One command on a fresh connection to node `node` (timeouts 2 s).
    fn query<T: redis::FromRedisValue>(
        &self,
        node: usize,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        query_port(self.port(node), cmd)
    }

    /// Node `node`'s CLUSTER SLOTS: (first, last, master port), sorted.
    fn slot_map(&self, node: usize) -> Result<Vec<SlotRange>, String> {
        let v: redis::Value = self
            .query(node, redis::cmd("CLUSTER").arg("SLOTS"))
            .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        parse_slots(&v)
    }

    /// Waits (at most [`SETTLE`]) for [`RedisCluster::settled`].
    fn wait_settled(&self, what: &str) {
        let begun = Instant::now();
        loop {
            match self.settled() {
                Ok(()) => return,
                Err(why) if begun.elapsed() > SETTLE => self.fail(&format!(
                    "{what}: cluster not settled within {SETTLE:?}: {why}"
                )),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// Every live node: `cluster_state:ok`, 16384 slots assigned, knows every
    /// node, has the same slot → master map as the others; every live
    /// replica: `master_link_status:up`. Or why not.
    fn settled(&self) -> Result<(), String> {
        let mut first: Option<(usize, Vec<SlotRange>)> = None;
        for i in self.live() {
            let state = self.cluster_info(i)?;
            for (key, want) in [
                ("cluster_state", "ok".to_string()),
                ("cluster_slots_assigned", SLOTS.to_string()),
                ("cluster_known_nodes", self.len().to_string()),
            ] {
                if field(&state, key) != Some(want.as_str()) {
                    return Err(format!(
                        "node {i}: {key} is {:?}, want {want}",
                        field(&state, key)
                    ));
                }
            }
            let map = self.slot_map(i).map_err(|e| format!("node {i}: {e}"))?;
            match &first {
                None => first = Some((i, map)),
                Some((j, other)) if *other != map => {
                    return Err(format!("nodes {j} and {i} disagree on the slot map"));
                }
                Some(_) => {}
            }
            let repl = self
                .try_info(i, "replication")
                .ok_or_else(|| format!("node {i}: INFO replication failed"))?;
            if field(&repl, "role") == Some("slave")
                && field(&repl, "master_link_status") != Some("up")
            {
                return Err(format!(
                    "node {i}: replica link to {:?} is {:?}",
                    field(&repl, "master_port"),
                    field(&repl, "master_link_status")
                ));
            }
        }
        Ok(())
    }

    /// Panics with `msg` and every node's log tail.
    fn fail(&self, msg: &str) -> ! {
        self.logs_shown.store(true, Ordering::Relaxed);
        panic!("{msg}\n{}", self.logs())
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            s.push_str(&format!(
                "---- redis cluster node {i} (port {}, bus {}) log ----\n{}\n",
                n.port,
                n.bus,
                last_lines(&n.log, 25)
            ));
        }
        s
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            if let Some(mut child) = n.child().take() {
                kill(&mut child);
            }
        }
        if std::thread::panicking() && !self.logs_shown.load(Ordering::Relaxed) {
            eprintln!("{}", self.logs());
        }
    }
}

/// A free port not handed out already in this cluster.
fn fresh_port(taken: &mut Vec<u16>) -> u16 {
    loop {
        let p = free_port();
        if !taken.contains(&p) {
            taken.push(p);
            return p;
        }
    }
}

/// Spawns a cluster node and waits until it answers PING; an error (with
/// its log tail) if it exits first or does not answer within [`BOOT`].
fn spawn_node(dir: &Path, port: u16, bus: u16, aof: bool, log: &Path) -> Result<Child, String> {
    let bin = std::env::var("WRIT_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let mut cmd = Command::new(&bin);
    cmd.args([
        "--port",
        &port.to_string(),
        "--cluster-port",
        &bus.to_string(),
    ])
    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
    // A master otherwise waits 5 s for more replicas before every full sync.
    .args(["--repl-diskless-sync-delay", "0"])
    .arg("--cluster-config-file")
    .arg(dir.join("nodes.conf"));
    super::local_server_args(&mut cmd, dir, log, aof);
    let mut child = super::reap::spawn(cmd).unwrap_or_else(|e| {
        panic!(
            "cannot start {bin:?} ({e}). Install it: `sudo apt-get install redis-server` \
                 (or run ./scripts/setup)"
        )
    });
    let begun = Instant::now();
    loop {
        if query_port::<String>(port, &redis::cmd("PING")).is_ok() {
            // The server that answers must be ours: a parallel test's node may
            // hold the port, and ours then fails to bind and exits. (Without
            // this, two clusters once shared a node: "--cluster create
            // failed: Node ... is not empty".)
            let info =
                query_port::<String>(port, redis::cmd("INFO").arg("server")).unwrap_or_default();
            let pid = super::info_field(&info, "process_id").and_then(|p| p.parse::<u32>().ok());
            if pid == Some(child.id()) {
                return Ok(child);
            }
            kill(&mut child);
            return Err(format!(
                "port {port} answers for another redis-server (pid {pid:?}), not ours ({})",
                child.id()
            ));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server exited with {status} before answering on port {port}; log:\n{}",
                tail(log)
            ));
        }
        if begun.elapsed() > BOOT {
            kill(&mut child);
            return Err(format!(
                "redis-server did not answer PING on port {port} within {BOOT:?}; log:\n{}",
                tail(log)
            ));
        }
        std::thread::sleep(POLL);
    }
}

fn query_port<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    cmd.query(&mut conn)
}

/// `key:value` of an INFO / CLUSTER INFO text.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// CLUSTER SLOTS' reply as sorted (first, last, master port).
fn parse_slots(v: &redis::Value) -> Result<Vec<SlotRange>, String> {
    use redis::Value;
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let Value::Array(ranges) = v else {
        return Err(format!("CLUSTER SLOTS: not an array: {v:?}"));
    };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let parsed = match r {
            Value::Array(items) if items.len() >= 3 => match &items[2] {
                Value::Array(master) if master.len() >= 2 => {
                    match (int(&items[0]), int(&items[1]), int(&master[1])) {
                        (Some(lo), Some(hi), Some(port)) => Some((lo, hi, port)),
                        _ => None,
                    }
                }
                _ => None,
            },
            _ => None,
        };
        out.push(parsed.ok_or_else(|| format!("CLUSTER SLOTS: odd range {r:?}"))?);
    }
    out.sort_unstable();
    Ok(out)
}

/// The one master port serving every slot of `lo..=hi` in `map`, if one does.
fn owner_of(map: &[SlotRange], lo: u16, hi: u16) -> Option<u16> {
    let mut owner = None;
    let mut next = lo as u32;
    for &(a, b, port) in map {
        if (b as u32) < next || a > hi {
            continue;
        }
        if a as u32 > next || owner.is_some_and(|o| o != port) {
            return None;
        }
        owner = Some(port);
        next = b as u32 + 1;
        if next > hi as u32 {
            return owner;
        }
    }
    None
}

fn last_lines(path: &Path, n: usize) -> String {
    let all = tail(path);
    let lines: Vec<&str> = all.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
