/**
 * Test harness: real servers on free loopback ports, each with its own temp
 * dir, polled until they answer, killed at the end (and on any exit).
 *
 * - redis-server (Debian package), append-only with fsync always;
 * - SecantusDB (MongoDB-compatible; `WRIT_SECANTUSD`, default the repo's .venv);
 * - the writ daemon (`WRIT_BIN`, default the repo's target/debug/writ) with a
 *   temp copy of config/writ.toml;
 * - for TLS tests, a TLS-only redis-server with the server certificate of a
 *   {@link TestCa} (made with the `openssl` CLI); these always start their own;
 * - for cluster tests, a local Redis Cluster ({@link RedisCluster}: 3 masters
 *   with a replica each, made with `redis-cli --cluster create`); always its own.
 *
 * `WRIT_TEST_REDIS_URL` / `WRIT_TEST_MONGODB_URI` point the tests at external
 * servers instead; every env still gets its own namespace and database.
 * A missing server binary fails loudly with the install command; nothing is skipped.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { MongoClient } from "mongodb";

const here = dirname(fileURLToPath(import.meta.url));
/** clients/node (build/test/harness.js → ../..). */
export const PACKAGE_ROOT = resolve(here, "..", "..");
/** The writ repository root. */
export const REPO_ROOT = resolve(PACKAGE_ROOT, "..", "..");

export const WRIT_BIN = process.env.WRIT_BIN || join(REPO_ROOT, "target", "debug", "writ");
const SECANTUSD = process.env.WRIT_SECANTUSD || join(REPO_ROOT, ".venv", "bin", "secantusd-py");
const REDIS_SERVER = process.env.WRIT_REDIS_SERVER || "redis-server";
const REDIS_CLI = process.env.WRIT_REDIS_CLI || "redis-cli";
const SETUP_HINT = `run ./scripts/setup in the writ repository root (${REPO_ROOT}) to install redis-server and SecantusDB`;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Every child this process started; killed on exit, whatever happens. */
const children = new Set<ChildProcess>();
function killAll(): void {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }
  children.clear();
}
process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(sig, () => {
    killAll();
    process.exit(128 + (sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : 1));
  });
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

function tail(path: string, lines = 80): string {
  try {
    const all = readFileSync(path, "utf8").split("\n");
    return all.slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

function which(bin: string): boolean {
  if (bin.includes("/")) return existsSync(bin);
  return spawnSync("sh", ["-c", `command -v ${bin}`], { stdio: "ignore" }).status === 0;
}

/**
 * `setpriv --pdeathsig KILL` (util-linux): the kernel kills each server when
 * this process dies, also by SIGKILL or an OOM kill, when no exit handler
 * runs. Children are spawned by the main thread, which lives as long as the
 * process (the signal follows the forking thread).
 */
const PDEATHSIG = which("setpriv") ? ["setpriv", "--pdeathsig", "KILL", "--"] : [];

/**
 * `spawn`, with the child killed by the kernel when this process dies
 * ({@link PDEATHSIG}), in a session of its own (`detached`): a stopped child
 * ({@link pause}) in this process's group would be sent SIGHUP and SIGCONT
 * whenever the kernel finds that group orphaned (POSIX job control, as under
 * `nohup` or a detached runner), which ends a paused `writ serve`.
 */
export function spawnReaped(bin: string, args: string[], opts: SpawnOptions): ChildProcess {
  const [cmd, ...rest] = [...PDEATHSIG, bin, ...args];
  return spawn(cmd, rest, { detached: true, ...opts });
}

/**
 * SIGSTOPs `child` and resolves once every thread of it has stopped.
 * `kill()` returns before the process has stopped: the kernel wakes one of
 * its threads to take the signal, and the others run on until that thread
 * runs, milliseconds on a busy machine (a "paused" daemon was seen refusing
 * a write 2 ms after it was made). Read from `/proc/<pid>/task/<tid>/stat`.
 */
export async function pause(child: ChildProcess, limitMs = 10000): Promise<void> {
  const pid = child.pid;
  if (pid === undefined || !child.kill("SIGSTOP")) throw new Error(`SIGSTOP to process ${pid} failed: it is gone`);
  const deadline = Date.now() + limitMs;
  for (;;) {
    const stopped = threadsStopped(pid);
    if (stopped === undefined) throw new Error(`process ${pid} is gone: it cannot be paused`);
    if (stopped) return;
    if (Date.now() > deadline) {
      child.kill("SIGCONT");
      throw new Error(`process ${pid} did not stop within ${limitMs} ms of SIGSTOP`);
    }
    await sleep(1);
  }
}

/** SIGCONTs a child {@link pause} stopped (the kernel resumes every thread before `kill` returns). */
export function resume(child: ChildProcess): void {
  child.kill("SIGCONT");
}

/** Whether every live thread of `pid` is stopped; undefined if the process is gone. */
function threadsStopped(pid: number): boolean | undefined {
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return undefined;
  }
  let any = false;
  for (const tid of tasks) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    } catch {
      continue; // the thread exited meanwhile
    }
    // The state follows the command name, which is in parentheses and may hold them.
    const state = stat.slice(stat.lastIndexOf(")") + 1).trimStart().charAt(0);
    if (!state || !"TtZX".includes(state)) return false;
    any = true;
  }
  return any;
}

/** A started child with a log file. */
class Proc {
  child: ChildProcess;
  exited = false;
  constructor(
    readonly name: string,
    readonly bin: string,
    readonly args: string[],
    readonly log: string,
    /** The environment of the next spawn ({@link restart} may give another). */
    public env?: NodeJS.ProcessEnv,
  ) {
    this.child = this.spawn();
  }

  private spawn(): ChildProcess {
    const fd = openSync(this.log, "a");
    const child = spawnReaped(this.bin, this.args, {
      stdio: ["ignore", fd, fd],
      env: this.env ?? process.env,
    });
    closeSync(fd);
    this.exited = false;
    children.add(child);
    child.on("exit", () => {
      this.exited = true;
      children.delete(child);
    });
    child.on("error", () => {
      this.exited = true;
    });
    return child;
  }

  /** Spawns the process again; with `env`, in that environment from now on. */
  restart(env?: NodeJS.ProcessEnv): void {
    if (env) this.env = env;
    this.child = this.spawn();
  }

  /** The process id (the server's own: `setpriv` execs it). */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** SIGKILL and wait for the exit. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (this.exited || this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise<void>((r) => this.child.once("exit", () => r()));
    this.child.kill(signal);
    await gone;
  }

  logTail(): string {
    return `---- ${this.name} log (${this.log}) ----\n${tail(this.log)}`;
  }
}

/** How many free ports a fresh server tries: another process may take its port between `freePort` and the bind. */
const PORT_TRIES = 3;

/**
 * Runs `start` (spawn and wait until ready) on a free port, and on another
 * one if the server exited before it was ready, as it does when it lost its
 * port (up to {@link PORT_TRIES}). Other failures are thrown at once.
 * `ports` replaces the free ports (the harness's own tests pass a taken one).
 */
async function onAFreePort<T>(start: (port: number) => Promise<T>, ports?: number[]): Promise<T> {
  const tries = ports?.length ?? PORT_TRIES;
  for (let i = 1; ; i++) {
    const port = ports ? ports[i - 1] : await freePort();
    try {
      return await start(port);
    } catch (e) {
      if (!(e instanceof ServerExited) || i >= tries) throw e;
      console.error(`test harness: a server failed to start on port ${port}; trying another port`);
    }
  }
}

/** A server that exited before it was ready (the only start failure retried on another port). */
class ServerExited extends Error {}
/** A free port was taken by another process before our server bound it. */
class PortTaken extends Error {}

async function poll(what: string, proc: Proc | undefined, limitMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    if (proc?.exited) throw new ServerExited(`${what} exited before it was ready\n${proc.logTail()}`);
    try {
      if (await check()) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) {
      throw new Error(`${what} was not ready within ${limitMs} ms${proc ? "\n" + proc.logTail() : ""}`);
    }
    await sleep(25);
  }
}

/** The `process_id` of the redis-server answering on `port` (INFO over a raw socket). */
export function redisPid(port: number): Promise<number | undefined> {
  return new Promise((resolvePid) => {
    const s = new Socket();
    let buf = "";
    const done = (pid: number | undefined) => {
      s.destroy();
      resolvePid(pid);
    };
    s.setTimeout(2000, () => done(undefined));
    s.once("error", () => done(undefined));
    s.connect(port, "127.0.0.1", () => s.write("INFO server\r\n"));
    s.on("data", (d) => {
      buf += d.toString();
      const m = /process_id:(\d+)/.exec(buf);
      if (m) done(Number(m[1]));
    });
  });
}

/**
 * Throws {@link ServerExited} (so another port is tried) when the redis-server
 * on `port` is not `proc`: another process (a parallel test's server) held
 * the port, and ours failed to bind.
 */
async function ownsPort(proc: Proc, port: number): Promise<void> {
  const pid = await redisPid(port);
  if (pid !== undefined && pid === proc.pid) return;
  await proc.kill();
  throw new ServerExited(`port ${port} answers for another redis-server (pid ${pid}), not ours (${proc.pid})`);
}

/** Sends PING over a raw socket; true on +PONG. */
function redisPing(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolvePing) => {
    const s = new Socket();
    const done = (ok: boolean) => {
      s.destroy();
      resolvePing(ok);
    };
    s.setTimeout(500, () => done(false));
    s.once("error", () => done(false));
    s.connect(port, host, () => s.write("PING\r\n"));
    s.once("data", (d) => done(d.toString().startsWith("+PONG")));
  });
}

/** Runs the `openssl` CLI in `dir`; throws with its stderr on failure. */
function openssl(dir: string, args: string[]): void {
  const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
  if (r.error) throw new Error(`cannot run openssl (${r.error.message}); install it: sudo apt-get install openssl`);
  if (r.status !== 0) throw new Error(`openssl ${args.join(" ")} failed:\n${r.stderr}`);
}

/**
 * A test CA made with `openssl` in `dir` (as the Rust harness's `TestCa`):
 * P-256 keys, valid for two days; a server certificate for 127.0.0.1 /
 * localhost and a client certificate, both signed by it. PEM file paths.
 */
export class TestCa {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;

  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(dir, ["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=writ test CA"]);
    for (const [name, cn, usage, san] of [
      ["server", "127.0.0.1", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"],
      ["client", "writ-test-client", "clientAuth", ""],
    ]) {
      openssl(dir, ["req", "-new", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`]);
      writeFileSync(
        join(dir, `${name}.ext`),
        `${san}basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=${usage}\n`,
      );
      openssl(dir, [
        "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", `${name}.pem`, "-days", "2", "-extfile", `${name}.ext`,
      ]);
    }
    this.ca = join(dir, "ca.pem");
    this.serverCert = join(dir, "server.pem");
    this.serverKey = join(dir, "server.key");
    this.clientCert = join(dir, "client.pem");
    this.clientKey = join(dir, "client.key");
  }
}

/** How a TLS-only redis-server is started. */
export interface RedisTlsOptions {
  ca: TestCa;
  /** `--tls-auth-clients`: `yes` checks client certificates against the CA. */
  authClients: "no" | "yes";
  /** `--requirepass`, if any. */
  password?: string;
}

/** PING over TLS (with the client certificate, and AUTH if a password is set); true on PONG. */
function redisTlsPing(port: number, t: RedisTlsOptions): Promise<boolean> {
  return new Promise((resolvePing) => {
    const s = tlsConnect({
      host: "127.0.0.1",
      port,
      ca: readFileSync(t.ca.ca),
      cert: readFileSync(t.ca.clientCert),
      key: readFileSync(t.ca.clientKey),
    });
    let got = "";
    const done = (ok: boolean) => {
      s.destroy();
      resolvePing(ok);
    };
    s.setTimeout(500, () => done(false));
    s.once("error", () => done(false));
    s.once("secureConnect", () => s.write(`${t.password ? `AUTH ${t.password}\r\n` : ""}PING\r\n`));
    s.on("data", (d) => {
      got += d.toString();
      if (got.includes("+PONG")) done(true);
      else if (got.includes("-")) done(false);
    });
  });
}

export class RedisServer {
  private constructor(
    readonly proc: Proc,
    readonly port: number,
    readonly tls?: RedisTlsOptions,
  ) {}

  /** Starts a TLS-only redis-server (`--port 0 --tls-port P`) with `t.ca`'s server certificate, no persistence. */
  static async startTls(dir: string, t: RedisTlsOptions): Promise<RedisServer> {
    if (!which(REDIS_SERVER)) throw new Error(`redis-server not found (${REDIS_SERVER}); ${SETUP_HINT}`);
    // On another port if it lost this one; a TLS ping with the test CA's
    // certificates answers only from this server.
    return onAFreePort(async (port) => {
      const proc = new Proc("redis-server (TLS)", REDIS_SERVER, [
        "--port", "0",
        "--tls-port", String(port),
        "--tls-cert-file", t.ca.serverCert,
        "--tls-key-file", t.ca.serverKey,
        "--tls-ca-cert-file", t.ca.ca,
        "--tls-auth-clients", t.authClients,
        ...(t.password ? ["--requirepass", t.password] : []),
        "--bind", "127.0.0.1",
        "--dir", dir,
        "--appendonly", "no",
        "--save", "",
        "--daemonize", "no",
      ], join(dir, "redis.log"));
      await poll("redis-server (TLS)", proc, 20000, () => redisTlsPing(port, t));
      return new RedisServer(proc, port, t);
    });
  }

  /** Starts redis-server (AOF on) on a free port; `ports`, if given, are tried instead, in order. */
  static async start(dir: string, ports?: number[]): Promise<RedisServer> {
    if (!which(REDIS_SERVER)) throw new Error(`redis-server not found (${REDIS_SERVER}); ${SETUP_HINT}`);
    const log = join(dir, "redis.log");
    return onAFreePort(async (port) => {
      const proc = new Proc("redis-server", REDIS_SERVER, [
        "--port", String(port),
        "--bind", "127.0.0.1",
        "--dir", dir,
        "--appendonly", "yes",
        "--appendfsync", process.env.WRIT_TEST_REDIS_FSYNC ?? "always",
        "--save", "",
        "--daemonize", "no",
      ], log);
      await poll("redis-server", proc, 20000, () => redisPing(port));
      await ownsPort(proc, port);
      return new RedisServer(proc, port);
    }, ports);
  }

  /** `redis://127.0.0.1:P`, or `rediss://` (with the password, if any) for a TLS server. */
  get url(): string {
    if (this.tls) {
      const auth = this.tls.password ? `:${encodeURIComponent(this.tls.password)}@` : "";
      return `rediss://${auth}127.0.0.1:${this.port}`;
    }
    return `redis://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    await this.proc.kill();
  }
}

/**
 * Sends one command over a raw socket (RESP) and returns the reply's text
 * (a bulk string's contents, a simple string, or an error's `-ERR ...` line).
 */
function redisCommand(port: number, args: string[], t?: RedisTlsOptions): Promise<string> {
  return new Promise((resolveReply, reject) => {
    const resp = (a: string[]) => `*${a.length}\r\n${a.map((x) => `$${Buffer.byteLength(x)}\r\n${x}\r\n`).join("")}`;
    // With a password, AUTH goes first and its +OK is skipped.
    const request = (t?.password ? resp(["AUTH", t.password]) : "") + resp(args);
    let skip = t?.password ? "+OK\r\n".length : 0;
    const s = t
      ? tlsConnect({ host: "127.0.0.1", port, ca: readFileSync(t.ca.ca), cert: readFileSync(t.ca.clientCert), key: readFileSync(t.ca.clientKey) })
      : new Socket();
    let got = Buffer.alloc(0);
    const fail = (e: Error) => {
      s.destroy();
      reject(e);
    };
    s.setTimeout(2000, () => fail(new Error(`no reply from 127.0.0.1:${port}`)));
    s.once("error", fail);
    if (t) s.once("secureConnect", () => s.write(request));
    else s.connect(port, "127.0.0.1", () => s.write(request));
    s.on("data", (d) => {
      got = Buffer.concat([got, d]);
      if (skip) {
        if (got.length < skip) return;
        if (!got.subarray(0, skip).toString().startsWith("+OK")) return done(got.toString("utf8").split("\r\n")[0]);
        got = got.subarray(skip);
        skip = 0;
      }
      const text = got.toString("utf8");
      const nl = text.indexOf("\r\n");
      if (nl < 0) return;
      if (text[0] === "$") {
        const len = Number(text.slice(1, nl));
        if (len < 0) return done("");
        if (got.length < nl + 2 + len + 2) return;
        return done(got.subarray(nl + 2, nl + 2 + len).toString("utf8"));
      }
      done(text.slice(text[0] === "-" ? 0 : 1, nl));
    });
    const done = (reply: string) => {
      s.destroy();
      resolveReply(reply);
    };
  });
}

/** `field:value` lines of an INFO-style reply. */
function infoFields(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(":");
    if (i > 0) m.set(line.slice(0, i), line.slice(i + 1).trim());
  }
  return m;
}

/** How a {@link RedisCluster} is made. */
export interface RedisClusterOptions {
  /** Masters (default 3). */
  masters?: number;
  /** Replicas per master (default 1). */
  replicas?: number;
  /**
   * TLS only (`--port 0 --tls-port P`, `tls-cluster` and `tls-replication`
   * yes) with `tls.ca`'s server certificate, and `tls.password` as
   * `requirepass` / `masterauth`; no persistence.
   */
  tls?: RedisTlsOptions;
}

/**
 * A local Redis Cluster: 3 masters with one replica each (6 nodes) by
 * default, every node a `redis-server --cluster-enabled yes
 * --cluster-node-timeout 2000` on free loopback ports (client and cluster bus)
 * with its own dir, joined with `redis-cli --cluster create ... --cluster-replicas 1
 * --cluster-yes`. Ready when every node says `cluster_state:ok` and knows every
 * node, every replica's `master_link_status:up`, and every master lists its
 * replicas `state=online`.
 */
export class RedisCluster {
  /** How long start() took, in ms (spawn to ready). */
  startMs = 0;

  private constructor(
    readonly nodes: { proc: Proc; port: number }[],
    readonly tls?: RedisTlsOptions,
  ) {}

  /** Starts the cluster; one whose free ports another process took first starts again on fresh ones (3 tries). */
  static async start(dir: string, opts: RedisClusterOptions = {}): Promise<RedisCluster> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await RedisCluster.startOnce(attempt === 1 ? dir : join(dir, `attempt-${attempt}`), opts);
      } catch (e) {
        if (!(e instanceof PortTaken) || attempt === 3) throw e;
        console.error(`# Redis Cluster: ${e.message}; starting again on fresh ports`);
      }
    }
  }

  private static async startOnce(dir: string, opts: RedisClusterOptions): Promise<RedisCluster> {
    const { masters = 3, replicas = 1, tls: t } = opts;
    if (!which(REDIS_SERVER)) throw new Error(`redis-server not found (${REDIS_SERVER}); ${SETUP_HINT}`);
    if (!which(REDIS_CLI)) throw new Error(`redis-cli not found (${REDIS_CLI}); ${SETUP_HINT}`);
    const t0 = Date.now();
    const nodes: { proc: Proc; port: number }[] = [];
    const cluster = new RedisCluster(nodes, t);
    try {
      const used = new Set<number>();
      const port = async () => {
        for (;;) {
          const p = await freePort();
          if (!used.has(p)) {
            used.add(p);
            return p;
          }
        }
      };
      for (let i = 0; i < masters * (1 + replicas); i++) {
        const [p, bus] = [await port(), await port()];
        const nodeDir = join(dir, `cluster-${i}`);
        mkdirSync(nodeDir, { recursive: true });
        const tlsArgs = t
          ? [
              "--port", "0",
              "--tls-port", String(p),
              "--tls-cluster", "yes",
              "--tls-replication", "yes",
              "--tls-cert-file", t.ca.serverCert,
              "--tls-key-file", t.ca.serverKey,
              "--tls-ca-cert-file", t.ca.ca,
              // Node to node (cluster bus, replication) the client certificate: the server's is for serverAuth only.
              "--tls-client-cert-file", t.ca.clientCert,
              "--tls-client-key-file", t.ca.clientKey,
              "--tls-auth-clients", t.authClients,
              ...(t.password ? ["--requirepass", t.password, "--masterauth", t.password] : []),
            ]
          : ["--port", String(p)];
        const proc = new Proc(`redis-server (cluster node ${i}, :${p}${t ? ", TLS" : ""})`, REDIS_SERVER, [
          ...tlsArgs,
          "--cluster-port", String(bus),
          "--cluster-enabled", "yes",
          "--cluster-config-file", "nodes.conf",
          "--cluster-node-timeout", "2000",
          "--bind", "127.0.0.1",
          "--dir", nodeDir,
          ...(t ? ["--appendonly", "no"] : ["--appendonly", "yes", "--appendfsync", process.env.WRIT_TEST_REDIS_FSYNC ?? "always"]),
          "--save", "",
          "--daemonize", "no",
        ], join(nodeDir, "redis.log"));
        nodes.push({ proc, port: p });
      }
      await Promise.all(
        nodes.map((n) => poll(n.proc.name, n.proc, 20000, () => (t ? redisTlsPing(n.port, t) : redisPing(n.port)))),
      );
      // The server that answers must be ours: a parallel test's node may hold
      // the port, and ours then fails to bind and exits (two clusters sharing
      // a node fail `--cluster create` with "Node ... is not empty"). Not
      // checked over TLS (redisPid speaks plain RESP).
      if (!t) {
        for (const n of nodes) {
          const pid = await redisPid(n.port);
          if (pid !== n.proc.pid) throw new PortTaken(`port ${n.port} answers for another redis-server (pid ${pid}), not ours (${n.proc.pid})`);
        }
      }
      const cliTls = t
        ? [
            "--tls", "--cacert", t.ca.ca, "--cert", t.ca.clientCert, "--key", t.ca.clientKey,
            ...(t.password ? ["-a", t.password, "--no-auth-warning"] : []),
          ]
        : [];
      const create = spawnSync(
        REDIS_CLI,
        [
          ...cliTls,
          "--cluster", "create", ...nodes.map((n) => `127.0.0.1:${n.port}`),
          "--cluster-replicas", String(replicas), "--cluster-yes",
        ],
        { encoding: "utf8", timeout: 60000 },
      );
      if (create.status !== 0) {
        throw new Error(`redis-cli --cluster create failed (${create.status}):\n${create.stdout}\n${create.stderr}`);
      }
      await poll("Redis Cluster", undefined, 60000, async () => {
        for (const n of nodes) {
          if (n.proc.exited) throw new Error(`${n.proc.name} exited\n${n.proc.logTail()}`);
          const info = infoFields(await redisCommand(n.port, ["CLUSTER", "INFO"], t));
          if (info.get("cluster_state") !== "ok" || Number(info.get("cluster_known_nodes")) !== nodes.length) return false;
          const repl = infoFields(await redisCommand(n.port, ["INFO", "replication"], t));
          if (repl.get("role") === "slave" && repl.get("master_link_status") !== "up") return false;
        }
        // Every master has its replicas online (connected_slaves counts one still syncing;
        // WAIT counts only online replicas that acknowledged).
        const roles = await Promise.all(nodes.map(async (n) => infoFields(await redisCommand(n.port, ["INFO", "replication"], t))));
        return roles
          .filter((r) => r.get("role") === "master")
          .every((r) => [...r.entries()].filter(([k, v]) => /^slave\d+$/.test(k) && /state=online/.test(v)).length >= replicas);
      }).catch((e) => {
        throw new Error(`${(e as Error).message}\n${nodes.map((n) => n.proc.logTail()).join("\n")}`);
      });
      cluster.startMs = Date.now() - t0;
      return cluster;
    } catch (e) {
      await cluster.stop();
      throw e;
    }
  }

  /** The seed URLs, comma-separated (as redisUrl / WRIT_REDIS_URL take them); `rediss://` with the password for TLS. */
  get url(): string {
    const t = this.tls;
    const auth = t?.password ? `:${encodeURIComponent(t.password)}@` : "";
    return this.nodes.map((n) => `${t ? "rediss" : "redis"}://${auth}127.0.0.1:${n.port}`).join(",");
  }

  /** The node serving `slot` as master (its port), from CLUSTER SLOTS of any node. */
  async masterOf(slot: number): Promise<number> {
    const text = await redisCommand(this.nodes[0].port, ["CLUSTER", "NODES"], this.tls);
    for (const line of text.split("\n")) {
      const f = line.trim().split(" ");
      if (!f[2]?.includes("master")) continue;
      for (const r of f.slice(8)) {
        const [a, b] = r.split("-").map(Number);
        if (slot >= a && slot <= (b ?? a)) return Number(f[1].split(":")[1].split("@")[0]);
      }
    }
    throw new Error(`no master serves slot ${slot}`);
  }

  /** INFO of a node, as fields. */
  async info(port: number, section: string): Promise<Map<string, string>> {
    return infoFields(await redisCommand(port, ["INFO", section], this.tls));
  }

  logTail(): string {
    return this.nodes.map((n) => n.proc.logTail()).join("\n");
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.proc.kill()));
  }
}

export class MongoServer {
  private constructor(
    readonly proc: Proc,
    readonly port: number,
  ) {}

  /** Starts SecantusDB on a free port; `ports`, if given, are tried instead, in order. */
  static async start(dir: string, ports?: number[]): Promise<MongoServer> {
    if (!existsSync(SECANTUSD)) {
      throw new Error(
        `SecantusDB not found at ${SECANTUSD}; ${SETUP_HINT} (or set WRIT_SECANTUSD, or WRIT_TEST_MONGODB_URI to a real MongoDB)`,
      );
    }
    const data = join(dir, "mongo-data");
    mkdirSync(data, { recursive: true });
    return onAFreePort(async (port) => {
      const proc = new Proc(
        "SecantusDB",
        SECANTUSD,
        ["--host", "127.0.0.1", "--port", String(port), "--storage-path", data],
        join(dir, "secantus.log"),
      );
      const m = new MongoServer(proc, port);
      await poll("SecantusDB", proc, 90000, () => mongoPing(m.uri));
      // Ours must be the server that answered (see ownsPort).
      const pid = await mongoPid(m.uri);
      if (pid !== proc.pid) {
        await proc.kill();
        throw new ServerExited(`port ${port} answers for another MongoDB-protocol server (pid ${pid}), not our SecantusDB (${proc.pid})`);
      }
      return m;
    }, ports);
  }

  get uri(): string {
    return `mongodb://127.0.0.1:${this.port}/?directConnection=true&retryWrites=false`;
  }

  async stop(): Promise<void> {
    await this.proc.kill();
  }
}

async function mongoPing(uri: string): Promise<boolean> {
  const c = new MongoClient(uri, { serverSelectionTimeoutMS: 500, connectTimeoutMS: 500 });
  try {
    await c.connect();
    const r = await c.db("admin").command({ ping: 1 });
    return r.ok === 1;
  } finally {
    await c.close().catch(() => {});
  }
}

/** The `pid` that the MongoDB-protocol server at `uri` reports in `serverStatus`. */
export async function mongoPid(uri: string): Promise<number | undefined> {
  const c = new MongoClient(uri, { serverSelectionTimeoutMS: 2000, connectTimeoutMS: 2000 });
  try {
    const r = await c.db("admin").command({ serverStatus: 1 });
    return typeof r.pid === "number" ? r.pid : Number(r.pid);
  } catch {
    return undefined;
  } finally {
    await c.close().catch(() => {});
  }
}

/** Sets `key = value` in `[section]` of a TOML text (replacing an existing line, commented or not). */
export function setToml(text: string, section: string, key: string, value: string): string {
  const lines = text.split("\n");
  const start = lines.findIndex((l) => l.trim() === `[${section}]`);
  if (start < 0) return `${text}\n[${section}]\n${key} = ${value}\n`;
  let end = lines.findIndex((l, i) => i > start && /^\s*\[/.test(l));
  if (end < 0) end = lines.length;
  const re = new RegExp(`^\\s*#?\\s*${key}\\s*=`);
  for (let i = start + 1; i < end; i++) {
    if (re.test(lines[i]) && !lines[i].trim().startsWith("# ") ) {
      lines[i] = `${key} = ${value}`;
      return lines.join("\n");
    }
  }
  for (let i = start + 1; i < end; i++) {
    if (re.test(lines[i])) {
      lines[i] = `${key} = ${value}`;
      return lines.join("\n");
    }
  }
  lines.splice(start + 1, 0, `${key} = ${value}`);
  return lines.join("\n");
}

/** Reads `key` of `[section]` from TOML text (simple scalars only). */
export function getToml(text: string, section: string, key: string): string | undefined {
  const lines = text.split("\n");
  const start = lines.findIndex((l) => l.trim() === `[${section}]`);
  if (start < 0) return undefined;
  for (let i = start + 1; i < lines.length && !/^\s*\[/.test(lines[i]); i++) {
    const m = new RegExp(`^\\s*${key}\\s*=\\s*(.*?)\\s*$`).exec(lines[i]);
    if (m) return m[1].replace(/^"(.*)"$/, "$1");
  }
  return undefined;
}

/** A consumer name of its own for each start of a daemon ({@link WritDaemon.consumerName}). */
function newConsumerName(): string {
  return `node-test-${process.pid}-${++daemonStarts}-${Date.now().toString(36)}`;
}
let daemonStarts = 0;

export class WritDaemon {
  private constructor(
    readonly proc: Proc,
    readonly configPath: string,
    readonly env: NodeJS.ProcessEnv,
    /**
     * The consumer name of the running start (`WRIT_CONSUMER_NAME`), new at
     * each start: a daemon killed -9 keeps its partitions' leases until they
     * expire, so "every partition has an owner" does not say the new one runs.
     */
    public consumerName: string,
  ) {}

  static async start(configPath: string, env: NodeJS.ProcessEnv, log: string): Promise<WritDaemon> {
    if (!existsSync(WRIT_BIN)) {
      throw new Error(`writ binary not found at ${WRIT_BIN}: build it with \`cargo build\` in ${REPO_ROOT} (or set WRIT_BIN)`);
    }
    const name = newConsumerName();
    const proc = new Proc("writ serve", WRIT_BIN, ["--config", configPath, "serve"], log, { ...env, WRIT_CONSUMER_NAME: name });
    const d = new WritDaemon(proc, configPath, env, name);
    await d.waitReady();
    return d;
  }

  /**
   * Polls `writ status --json` until this start of the daemon owns every
   * partition (its {@link consumerName}): not the leases a daemon killed
   * before it left behind.
   */
  async waitReady(limitMs = 60000): Promise<void> {
    await poll("writ serve", this.proc, limitMs, async () => {
      const s = await this.status();
      return (
        Array.isArray(s?.partitions) && s.partitions.length > 0 && s.partitions.every((p: any) => p.owner === this.consumerName)
      );
    });
  }

  /** `writ status --json`, parsed (undefined if it fails). */
  async status(): Promise<any> {
    return new Promise((resolveStatus) => {
      const c = spawn(WRIT_BIN, ["--config", this.configPath, "status", "--json"], {
        env: { ...this.env, WRIT_LOG: "error" },
        stdio: ["ignore", "pipe", "ignore"],
      });
      children.add(c);
      let out = "";
      c.stdout!.on("data", (d) => (out += d));
      c.on("error", () => resolveStatus(undefined));
      c.on("exit", (code) => {
        children.delete(c);
        if (code !== 0) return resolveStatus(undefined);
        try {
          resolveStatus(JSON.parse(out));
        } catch {
          resolveStatus(undefined);
        }
      });
    });
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await this.proc.kill(signal);
  }

  /** Kills the daemon (-9) if it runs, starts it again under a new consumer name, and waits until that one owns every partition. */
  async restart(): Promise<void> {
    await this.kill();
    this.consumerName = newConsumerName();
    this.proc.restart({ ...this.env, WRIT_CONSUMER_NAME: this.consumerName });
    await this.waitReady();
  }

  logTail(): string {
    return this.proc.logTail();
  }
}

let seq = 0;

export interface EnvOptions {
  /** Start the writ daemon (default true). */
  daemon?: boolean;
  /** Extra TOML edits: [section, key, value]. */
  toml?: [string, string, string][];
  /** Text appended to the config (extra [[collections]]). */
  append?: string;
  /**
   * A TLS-only redis-server (never an external one); the daemon gets
   * `redis.tls_ca_file` (and the client certificate when it checks them).
   */
  redisTls?: RedisTlsOptions;
  /**
   * A local Redis Cluster ({@link RedisCluster}, never an external Redis);
   * the daemon gets `redis.cluster = true` and the seeds in WRIT_REDIS_URL,
   * clients `redisCluster: true`.
   */
  redisCluster?: boolean;
  /**
   * A redis-server of this env's own even when `WRIT_TEST_REDIS_URL` is set:
   * for tests that change server-wide state (ACL users).
   */
  ownRedis?: boolean;
}

/** One test file's servers and names. */
export class TestEnv {
  redis?: RedisServer;
  cluster?: RedisCluster;
  mongo?: MongoServer;
  writ?: WritDaemon;
  redisUrl = "";
  mongoUri = "";
  readonly name: string;
  readonly dir: string;
  configPath = "";
  configText = "";
  partitions = 8;
  private stopped = false;

  private constructor(label: string) {
    const clean = label.replace(/[^A-Za-z0-9]/g, "").slice(0, 16);
    // The pid and a sequence keep names apart within a run; the random part
    // keeps them apart across runs on one persistent server
    // (WRIT_TEST_MONGODB_URI / WRIT_TEST_REDIS_URL), where fresh CI
    // containers repeat pids. At most ~40 bytes of [A-Za-z0-9_], within
    // MongoDB's 63-byte database-name limit.
    this.name = `n${process.pid}${randomBytes(3).toString("hex")}_${seq++}_${clean}`;
    this.dir = mkdtempSync(join(tmpdir(), `writ-node-${clean}-`));
  }

  static async start(label: string, opts: EnvOptions = {}): Promise<TestEnv> {
    const env = new TestEnv(label);
    try {
      await env.boot(opts);
    } catch (e) {
      await env.stop();
      throw e;
    }
    return env;
  }

  private async boot(opts: EnvOptions): Promise<void> {
    const t = opts.redisTls;
    const own = t || opts.redisCluster || opts.ownRedis;
    const [r, m, c] = await Promise.all([
      t
        ? RedisServer.startTls(this.dir, t)
        : opts.redisCluster || (!own && process.env.WRIT_TEST_REDIS_URL)
          ? undefined
          : RedisServer.start(this.dir),
      process.env.WRIT_TEST_MONGODB_URI ? undefined : MongoServer.start(this.dir),
      opts.redisCluster ? RedisCluster.start(this.dir) : undefined,
    ]);
    this.redis = r;
    this.mongo = m;
    this.cluster = c;
    this.redisUrl = c ? c.url : (!own && process.env.WRIT_TEST_REDIS_URL) || r!.url;
    this.mongoUri = process.env.WRIT_TEST_MONGODB_URI || m!.uri;

    let text = readFileSync(join(REPO_ROOT, "config", "writ.toml"), "utf8");
    text = setToml(text, "redis", "namespace", JSON.stringify(this.name));
    text = setToml(text, "mongodb", "database", JSON.stringify(this.name));
    text = setToml(text, "daemon", "metrics_listen", '""');
    text = setToml(text, "daemon", "lease_ttl_ms", "2000");
    if (c) {
      text = setToml(text, "redis", "cluster", "true");
      text = setToml(text, "redis", "url", JSON.stringify(c.url.split(",")));
    }
    if (t) {
      text = setToml(text, "redis", "tls_ca_file", JSON.stringify(t.ca.ca));
      if (t.authClients === "yes") {
        text = setToml(text, "redis", "tls_cert_file", JSON.stringify(t.ca.clientCert));
        text = setToml(text, "redis", "tls_key_file", JSON.stringify(t.ca.clientKey));
      }
    }
    for (const [s, k, v] of opts.toml ?? []) text = setToml(text, s, k, v);
    if (opts.append) text = `${text.trimEnd()}\n\n${opts.append}\n`;
    this.configText = text;
    this.partitions = Number(getToml(text, "redis", "partitions") ?? 8);
    this.configPath = join(this.dir, "writ.toml");
    writeFileSync(this.configPath, text);
    if (opts.daemon !== false) await this.startDaemon();
  }

  /** Environment for the daemon and for `writ` tools. */
  get daemonEnv(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      WRIT_REDIS_URL: this.redisUrl,
      WRIT_MONGODB_URI: this.mongoUri,
      WRIT_LOG: process.env.WRIT_LOG || "info",
      NO_COLOR: "1",
    };
  }

  async startDaemon(): Promise<WritDaemon> {
    this.writ = await WritDaemon.start(this.configPath, this.daemonEnv, join(this.dir, "writ.log"));
    return this.writ;
  }

  /** Client config for this env (namespace, database, partitions, URLs). */
  clientConfig(extra: Record<string, unknown> = {}): Record<string, any> {
    return {
      redisUrl: this.redisUrl,
      mongodbUri: this.mongoUri,
      mongodbDatabase: this.name,
      namespace: this.name,
      partitions: this.partitions,
      ...(this.cluster ? { redisCluster: true } : {}),
      ...extra,
    };
  }

  /** Environment variables that make setup() use this env. */
  clientEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    return {
      ...process.env,
      WRIT_REDIS_URL: this.redisUrl,
      WRIT_MONGODB_URI: this.mongoUri,
      WRIT_MONGODB_DATABASE: this.name,
      WRIT_NAMESPACE: this.name,
      WRIT_PARTITIONS: String(this.partitions),
      ...(this.cluster ? { WRIT_REDIS_CLUSTER: "1" } : {}),
      ...extra,
    };
  }

  /** Server logs, for a failing test. */
  logs(): string {
    return [this.writ?.logTail(), this.redis?.proc.logTail(), this.cluster?.logTail(), this.mongo?.proc.logTail()]
      .filter(Boolean)
      .join("\n");
  }

  /** Runs `fn`; on failure prints the server logs, then rethrows. */
  async guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      console.error(this.logs());
      throw e;
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.writ?.kill("SIGKILL").catch(() => {});
    await Promise.all([this.redis?.stop(), this.cluster?.stop(), this.mongo?.stop()]).catch(() => {});
    try {
      rmSync(this.dir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
}

/** Polls `check` every 10 ms until it returns a truthy value or `limitMs` passes (then throws `what`). */
export async function eventually<T>(what: string, limitMs: number, check: () => Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${limitMs} ms waiting for: ${what}`);
    await sleep(10);
  }
}
