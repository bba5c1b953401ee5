/**
 * Test harness: real servers on free loopback ports, each with its own temp
 * dir, polled until they answer, killed at the end (and on any exit).
 *
 * - redis-server (Debian package), append-only with fsync always;
 * - SecantusDB (MongoDB-compatible; `WRIT_SECANTUSD`, default the repo's .venv);
 * - the writ daemon (`WRIT_BIN`, default the repo's target/debug/writ) with a
 *   temp copy of config/writ.toml;
 * - for TLS tests, a TLS-only redis-server with the server certificate of a
 *   {@link TestCa} (made with the `openssl` CLI); these always start their own.
 *
 * `WRIT_TEST_REDIS_URL` / `WRIT_TEST_MONGODB_URI` point the tests at external
 * servers instead; every env still gets its own namespace and database.
 * A missing server binary fails loudly with the install command; nothing is skipped.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
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

/** A started child with a log file. */
class Proc {
  child: ChildProcess;
  exited = false;
  constructor(
    readonly name: string,
    readonly bin: string,
    readonly args: string[],
    readonly log: string,
    readonly env?: NodeJS.ProcessEnv,
  ) {
    this.child = this.spawn();
  }

  private spawn(): ChildProcess {
    const fd = openSync(this.log, "a");
    const child = spawn(this.bin, this.args, {
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

  restart(): void {
    this.child = this.spawn();
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

async function poll(what: string, proc: Proc | undefined, limitMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    if (proc?.exited) throw new Error(`${what} exited before it was ready\n${proc.logTail()}`);
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
    const port = await freePort();
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
    const r = new RedisServer(proc, port, t);
    await poll("redis-server (TLS)", proc, 20000, () => redisTlsPing(port, t));
    return r;
  }

  static async start(dir: string): Promise<RedisServer> {
    if (!which(REDIS_SERVER)) throw new Error(`redis-server not found (${REDIS_SERVER}); ${SETUP_HINT}`);
    const port = await freePort();
    const log = join(dir, "redis.log");
    const proc = new Proc("redis-server", REDIS_SERVER, [
      "--port", String(port),
      "--bind", "127.0.0.1",
      "--dir", dir,
      "--appendonly", "yes",
      "--appendfsync", process.env.WRIT_TEST_REDIS_FSYNC ?? "always",
      "--save", "",
      "--daemonize", "no",
    ], log);
    const r = new RedisServer(proc, port);
    await poll("redis-server", proc, 20000, () => redisPing(port));
    return r;
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

export class MongoServer {
  private constructor(
    readonly proc: Proc,
    readonly port: number,
  ) {}

  static async start(dir: string): Promise<MongoServer> {
    if (!existsSync(SECANTUSD)) {
      throw new Error(
        `SecantusDB not found at ${SECANTUSD}; ${SETUP_HINT} (or set WRIT_SECANTUSD, or WRIT_TEST_MONGODB_URI to a real MongoDB)`,
      );
    }
    const port = await freePort();
    const data = join(dir, "mongo-data");
    mkdirSync(data, { recursive: true });
    const proc = new Proc(
      "SecantusDB",
      SECANTUSD,
      ["--host", "127.0.0.1", "--port", String(port), "--storage-path", data],
      join(dir, "secantus.log"),
    );
    const m = new MongoServer(proc, port);
    await poll("SecantusDB", proc, 90000, () => mongoPing(m.uri));
    return m;
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

export class WritDaemon {
  private constructor(
    readonly proc: Proc,
    readonly configPath: string,
    readonly env: NodeJS.ProcessEnv,
  ) {}

  static async start(configPath: string, env: NodeJS.ProcessEnv, log: string): Promise<WritDaemon> {
    if (!existsSync(WRIT_BIN)) {
      throw new Error(`writ binary not found at ${WRIT_BIN}: build it with \`cargo build\` in ${REPO_ROOT} (or set WRIT_BIN)`);
    }
    const proc = new Proc("writ serve", WRIT_BIN, ["--config", configPath, "serve"], log, env);
    const d = new WritDaemon(proc, configPath, env);
    await d.waitReady();
    return d;
  }

  /** Polls `writ status --json` until every partition has an owner. */
  async waitReady(limitMs = 60000): Promise<void> {
    await poll("writ serve", this.proc, limitMs, async () => {
      const s = await this.status();
      return Array.isArray(s?.partitions) && s.partitions.length > 0 && s.partitions.every((p: any) => p.owner);
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

  async restart(): Promise<void> {
    await this.kill();
    this.proc.restart();
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
}

/** One test file's servers and names. */
export class TestEnv {
  redis?: RedisServer;
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
    this.name = `n${process.pid}_${seq++}_${clean}`;
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
    const [r, m] = await Promise.all([
      t ? RedisServer.startTls(this.dir, t) : process.env.WRIT_TEST_REDIS_URL ? undefined : RedisServer.start(this.dir),
      process.env.WRIT_TEST_MONGODB_URI ? undefined : MongoServer.start(this.dir),
    ]);
    this.redis = r;
    this.mongo = m;
    this.redisUrl = (!t && process.env.WRIT_TEST_REDIS_URL) || r!.url;
    this.mongoUri = process.env.WRIT_TEST_MONGODB_URI || m!.uri;

    let text = readFileSync(join(REPO_ROOT, "config", "writ.toml"), "utf8");
    text = setToml(text, "redis", "namespace", JSON.stringify(this.name));
    text = setToml(text, "mongodb", "database", JSON.stringify(this.name));
    text = setToml(text, "daemon", "metrics_listen", '""');
    text = setToml(text, "daemon", "lease_ttl_ms", "2000");
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
      ...extra,
    };
  }

  /** Server logs, for a failing test. */
  logs(): string {
    return [this.writ?.logTail(), this.redis?.proc.logTail(), this.mongo?.proc.logTail()].filter(Boolean).join("\n");
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
    await Promise.all([this.redis?.stop(), this.mongo?.stop()]).catch(() => {});
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
