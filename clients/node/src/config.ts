/**
 * Client configuration: explicit values win over environment variables, which
 * win over the defaults (the same defaults as writ's config/writ.toml).
 */
import { readFileSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { WritConfigError, type WritError } from "./errors.js";
import type { MongoClientOptions } from "mongodb";
import type { CollectionSpec } from "./key.js";
import { PRESET_COLLECTIONS } from "./collections.js";

export type WriteModeName = "submit" | "ack";

export interface WritConfig {
  /**
   * Redis URL (env `WRIT_REDIS_URL`). Default `redis://127.0.0.1:6379`; `rediss://` for TLS.
   * With `redisCluster`, one or more seed nodes of the cluster, comma-separated.
   */
  redisUrl: string;
  /**
   * Redis Cluster mode (env `WRIT_REDIS_CLUSTER`, `1`/`true`): `redisUrl` names
   * seed nodes and the slots are discovered; the daemon's `redis.cluster`.
   */
  redisCluster: boolean;
  /**
   * Replicas that must confirm each accepted write (`WAIT`) before a write
   * returns (env `WRIT_REDIS_MIN_REPLICAS_ACKED`); 0 (default): none. The
   * daemon's `redis.min_replicas_acked`.
   */
  minReplicasAcked: number;
  /**
   * How long a write waits for `minReplicasAcked` replicas (env
   * `WRIT_REDIS_REPLICA_ACK_TIMEOUT_MS`); default 1000. The daemon's `redis.replica_ack_timeout_ms`.
   */
  replicaAckTimeoutMs: number;
  /**
   * PEM file of the CA certificate(s) a `rediss://` server's certificate must
   * chain to, instead of Node's default CAs (env `WRIT_REDIS_TLS_CA_FILE`);
   * the daemon's `redis.tls_ca_file`.
   */
  redisTlsCaFile?: string;
  /**
   * PEM client certificate (chain) for mutual TLS, with `redisTlsKeyFile`
   * (env `WRIT_REDIS_TLS_CERT_FILE`); the daemon's `redis.tls_cert_file`.
   */
  redisTlsCertFile?: string;
  /** PEM private key of `redisTlsCertFile` (env `WRIT_REDIS_TLS_KEY_FILE`); the daemon's `redis.tls_key_file`. */
  redisTlsKeyFile?: string;
  /** MongoDB URI for read-through (env `WRIT_MONGODB_URI`). */
  mongodbUri: string;
  /** MongoDB database (env `WRIT_MONGODB_DATABASE`). Default `writ`. */
  mongodbDatabase: string;
  /** Redis key prefix and consumer group name (env `WRIT_NAMESPACE`). Default `writ`. */
  namespace: string;
  /** Partition count; must equal the daemon's `redis.partitions` (env `WRIT_PARTITIONS`). Default 8. */
  partitions: number;
  /**
   * `submit` (default): a write returns once Redis accepted it; this process
   * reads its own pending writes from memory. `ack`: a write returns once the
   * daemon committed it to MongoDB (env `WRIT_MODE`).
   */
  mode: WriteModeName;
  /** Refuse a write when its partition has this many unapplied entries (`client.max_backlog`). */
  maxBacklog: number;
  /** Largest `doc` as BSON bytes (`client.max_document_bytes`). */
  maxDocumentBytes: number;
  /**
   * How long an `ack`-mode write waits for its ack (`client.write_timeout_ms`);
   * also how long any write waits for Redis to accept it (plus
   * `replicaAckTimeoutMs` with `minReplicasAcked`). A connection on which
   * nothing arrives for the longer of this and `readTimeoutMs`, plus 5 s,
   * while a command is out is cut and made again (ioredis `socketTimeout`;
   * the `minReplicasAcked` connection: this plus `replicaAckTimeoutMs` plus 5 s).
   */
  writeTimeoutMs: number;
  /**
   * How long a list read waits for this process's own pending writes
   * (`client.read_timeout_ms`); also bounds each read's Redis commands, the
   * look at a write's entry when its ack wait (or a `flush`) timed out, and
   * the Redis reads of each lost-ack look of the ack loop.
   */
  readTimeoutMs: number;
  /** How long the first read waits for the daemon to apply writes made before this process started. */
  syncTimeoutMs: number;
  /** Most writes of this process awaiting their ack; a write past it waits for the oldest ack. */
  maxPending: number;
  /**
   * How long a write whose stream entry is gone, with no ack or dead letter
   * and an older version in MongoDB, is still waited for before it is
   * settled `lost` (a `LostWriteError`): a daemon may have read the entry
   * before it went and be applying it. Default 60000 (docs/protocol.md §5).
   */
  lostWriteAfterMs: number;
  /** This process's client id (`[A-Za-z0-9_.:-]{1,64}`); random by default. */
  clientId: string;
  /** Collections as the daemon declares them; the 17 backtest-kit collections by default. */
  collections: CollectionSpec[];
  /** Extra options for the MongoDB driver (TLS, pool size, monitoring, ...). */
  mongoClientOptions: MongoClientOptions;
  /** Called with errors nobody awaits (a `submit`-mode write the daemon refused). Default: console.error. */
  onError: (err: WritError) => void;
}

const CLIENT_ID = /^[A-Za-z0-9_.:-]{1,64}$/;
/** As the daemon's `redis.namespace`: no colon, which separates the parts of its key names. */
const NAMESPACE = /^[A-Za-z0-9_.-]{1,64}$/;
/** The daemon's ranges (src/config/validate.rs): a value it refuses could never match a daemon. */
const MAX_PARTITIONS = 4096;
const MAX_DOCUMENT_BYTES = 16 * 1024 * 1024;

function randomClientId(): string {
  const rand = Math.floor(Math.random() * 2 ** 48)
    .toString(36)
    .padStart(10, "0");
  return `node-${process.pid}-${Date.now().toString(36)}-${rand}`;
}

/**
 * A URL fit for messages: the user information (user and password) replaced
 * by `***`, and the values of query parameters that look secret too, as the
 * daemon's `redact_url` does. The user information is everything before the
 * last `@` ahead of the query, so a password with an unescaped `/` or digits
 * (which a URL parser takes for a host and port) is hidden too. Text without
 * a scheme is replaced whole.
 */
export function redactUrl(url: string): string {
  const schemeEnd = url.indexOf("://");
  if (schemeEnd < 0) return "<unparseable URL>";
  const head = url.slice(0, schemeEnd + 3);
  let rest = url.slice(schemeEnd + 3);
  const queryAt = (text: string): number => {
    const i = text.search(/[?#]/);
    return i < 0 ? text.length : i;
  };
  const firstQuery = queryAt(rest);
  let at = rest.slice(0, firstQuery).lastIndexOf("@");
  if (at < 0) {
    // A password with an unescaped `?` or `#`: the `@` after it, unless a
    // query parameter (`=`) comes first.
    const eq = rest.indexOf("=");
    at = rest.slice(0, eq < 0 ? rest.length : eq).lastIndexOf("@");
  }
  if (at < 0 && firstQuery < rest.length && !rest.slice(0, firstQuery).includes("/")) {
    // Still no path when the `?` or `#` came: still the authority, so the
    // last `@` of all (`redis://:ab?c=d@host`). Hiding too much of a URL
    // that does not parse anyway beats showing part of a password.
    at = rest.lastIndexOf("@");
  }
  if (at >= 0) rest = "***" + rest.slice(at);
  const q = queryAt(rest);
  if (q === rest.length) return head + rest;
  const hash = rest.indexOf("#", q);
  const query = rest.slice(q + 1, hash < 0 ? rest.length : hash);
  const fragment = hash < 0 ? "" : rest.slice(hash);
  let inSecret = false;
  const params = query
    .split(/[&;]/)
    .map((param) => {
      const eq = param.indexOf("=");
      if (eq < 0) return inSecret ? null : param; // a piece of a secret's value
      let name = param.slice(0, eq);
      try {
        name = decodeURIComponent(name);
      } catch {
        // an undecodable name is judged as written
      }
      inSecret = /pass|pwd|secret|token/i.test(name);
      if (inSecret) return `${param.slice(0, eq)}=***`;
      if (name.toLowerCase() === "authmechanismproperties") {
        // `NAME:value,...`: only the secret properties (AWS_SESSION_TOKEN).
        const props = param
          .slice(eq + 1)
          .split(",")
          .map((prop) => {
            const colon = prop.indexOf(":");
            return colon > 0 && /pass|pwd|secret|token/i.test(prop.slice(0, colon)) ? `${prop.slice(0, colon)}:***` : prop;
          });
        return `${param.slice(0, eq)}=${props.join(",")}`;
      }
      return param;
    })
    .filter((p): p is string => p !== null);
  return `${head}${rest.slice(0, q)}${rest[q] === "?" ? "?" + params.join("&") : ""}${fragment}`;
}

/** Every key of {@link WritConfig}: a misspelt one is refused, not ignored. */
const KNOWN_KEYS = [
  "redisUrl", "redisCluster", "minReplicasAcked", "replicaAckTimeoutMs",
  "redisTlsCaFile", "redisTlsCertFile", "redisTlsKeyFile", "mongodbUri", "mongodbDatabase", "namespace", "partitions", "mode", "maxBacklog",
  "maxDocumentBytes", "writeTimeoutMs", "readTimeoutMs", "syncTimeoutMs", "maxPending", "lostWriteAfterMs", "clientId",
  "collections", "mongoClientOptions", "onError",
] as const satisfies readonly (keyof WritConfig)[];

function intFrom(name: string, text: string | undefined): number | undefined {
  if (text === undefined || text === "") return undefined;
  const n = Number(text);
  if (!Number.isInteger(n)) throw new WritConfigError(`${name}=${JSON.stringify(text)} is not an integer`);
  return n;
}

function boolFrom(name: string, text: string | undefined): boolean | undefined {
  if (text === undefined || text === "") return undefined;
  const t = text.trim().toLowerCase();
  if (t === "1" || t === "true") return true;
  if (t === "0" || t === "false") return false;
  throw new WritConfigError(`${name}=${JSON.stringify(text)} must be 1, true, 0 or false`);
}

/**
 * The seed URLs of `redisUrl`: its comma-separated items, trimmed. A comma
 * starts the next item only where a scheme (`,redis://`) or the end follows
 * it, perhaps after more commas (empty items): a password may hold a comma.
 */
export function redisUrls(redisUrl: string): string[] {
  return redisUrl.split(/,(?=(?:\s*,)*\s*(?:[A-Za-z0-9+.-]+:\/\/|$))/).map((u) => u.trim());
}

/** `redisUrl` fit for messages: every URL of the list redacted ({@link redactUrl}). */
export function redactUrls(redisUrl: string): string {
  return redisUrls(redisUrl).map(redactUrl).join(",");
}

function positiveInt(name: string, v: number, min = 1): number {
  if (!Number.isSafeInteger(v) || v < min) {
    throw new WritConfigError(`${name} must be an integer >= ${min}, got ${v}`);
  }
  return v;
}

function atMost(name: string, v: number, max: number, why: string): void {
  if (v > max) throw new WritConfigError(`${name} must be at most ${max} (${why}), got ${v}`);
}

/** Resolves a full config from explicit values, then `env`, then defaults; validates it. */
export function resolveConfig(
  explicit: Partial<WritConfig> = {},
  env: NodeJS.ProcessEnv = process.env,
): WritConfig {
  for (const k of Object.keys(explicit)) {
    if (!(KNOWN_KEYS as readonly string[]).includes(k)) {
      throw new WritConfigError(
        `unknown config key ${JSON.stringify(k)}; the keys are ${KNOWN_KEYS.join(", ")}`,
      );
    }
  }
  const pick = <T>(v: T | undefined, e: T | undefined, d: T): T => (v !== undefined ? v : e !== undefined ? e : d);
  // backtest-kit's packages take their settings from CC_* variables: every
  // WRIT_<NAME> may also be given as CC_WRIT_<NAME> (WRIT_<NAME> wins).
  const envOf = (name: string): string | undefined => env[`WRIT_${name}`] || env[`CC_WRIT_${name}`] || undefined;
  // An empty URL variable (a compose file's unset `${VAR}`) is refused, as
  // the daemon refuses it, instead of quietly meaning localhost.
  for (const [name, given] of [["REDIS_URL", explicit.redisUrl], ["MONGODB_URI", explicit.mongodbUri]] as const) {
    for (const v of [`WRIT_${name}`, `CC_WRIT_${name}`]) {
      if (given === undefined && env[v] !== undefined && env[v]!.trim() === "") {
        throw new WritConfigError(`${v} is set but empty; set a URL there, or unset it for the default`);
      }
    }
  }
  const modeText = pick<string>(explicit.mode, envOf("MODE"), "submit");
  if (modeText !== "submit" && modeText !== "ack") {
    throw new WritConfigError(`mode (WRIT_MODE) must be "submit" or "ack", got ${JSON.stringify(modeText)}`);
  }
  const cfg: WritConfig = {
    redisUrl: pick(explicit.redisUrl, envOf("REDIS_URL"), "redis://127.0.0.1:6379"),
    redisCluster: pick(explicit.redisCluster, boolFrom("WRIT_REDIS_CLUSTER", envOf("REDIS_CLUSTER")), false),
    minReplicasAcked: pick(
      explicit.minReplicasAcked,
      intFrom("WRIT_REDIS_MIN_REPLICAS_ACKED", envOf("REDIS_MIN_REPLICAS_ACKED")),
      0,
    ),
    replicaAckTimeoutMs: pick(
      explicit.replicaAckTimeoutMs,
      intFrom("WRIT_REDIS_REPLICA_ACK_TIMEOUT_MS", envOf("REDIS_REPLICA_ACK_TIMEOUT_MS")),
      1000,
    ),
    redisTlsCaFile: explicit.redisTlsCaFile ?? envOf("REDIS_TLS_CA_FILE"),
    redisTlsCertFile: explicit.redisTlsCertFile ?? envOf("REDIS_TLS_CERT_FILE"),
    redisTlsKeyFile: explicit.redisTlsKeyFile ?? envOf("REDIS_TLS_KEY_FILE"),
    mongodbUri: pick(
      explicit.mongodbUri,
      envOf("MONGODB_URI"),
      "mongodb://127.0.0.1:27017/?directConnection=true",
    ),
    mongodbDatabase: pick(explicit.mongodbDatabase, envOf("MONGODB_DATABASE"), "writ"),
    namespace: pick(explicit.namespace, envOf("NAMESPACE"), "writ"),
    partitions: pick(explicit.partitions, intFrom("WRIT_PARTITIONS", envOf("PARTITIONS")), 8),
    mode: modeText,
    maxBacklog: explicit.maxBacklog ?? 100000,
    maxDocumentBytes: explicit.maxDocumentBytes ?? 16711680,
    writeTimeoutMs: explicit.writeTimeoutMs ?? 10000,
    readTimeoutMs: explicit.readTimeoutMs ?? 5000,
    syncTimeoutMs: explicit.syncTimeoutMs ?? 30000,
    maxPending: explicit.maxPending ?? 10000,
    lostWriteAfterMs: explicit.lostWriteAfterMs ?? 60000,
    clientId: explicit.clientId ?? randomClientId(),
    collections: explicit.collections ?? PRESET_COLLECTIONS,
    mongoClientOptions: explicit.mongoClientOptions ?? {},
    onError:
      explicit.onError ??
      ((err) => {
        console.error(`[writ] ${err.message}`);
      }),
  };
  checkRedisUrls(cfg);
  checkRedisTls(cfg);
  if (!/^mongodb(\+srv)?:\/\//.test(cfg.mongodbUri)) {
    throw new WritConfigError(`mongodbUri (WRIT_MONGODB_URI) must start with mongodb:// or mongodb+srv://`);
  }
  if (!NAMESPACE.test(cfg.namespace)) {
    throw new WritConfigError(
      `namespace (WRIT_NAMESPACE) must be 1-64 of [A-Za-z0-9_.-], as the daemon's redis.namespace, got ${JSON.stringify(cfg.namespace)}`,
    );
  }
  if (!CLIENT_ID.test(cfg.clientId)) {
    throw new WritConfigError(`clientId must be 1-64 of [A-Za-z0-9_.:-], got ${JSON.stringify(cfg.clientId)}`);
  }
  atMost("partitions (WRIT_PARTITIONS)", positiveInt("partitions (WRIT_PARTITIONS)", cfg.partitions), MAX_PARTITIONS, "the daemon's redis.partitions");
  positiveInt("maxBacklog", cfg.maxBacklog);
  atMost("maxDocumentBytes", positiveInt("maxDocumentBytes", cfg.maxDocumentBytes), MAX_DOCUMENT_BYTES, "MongoDB's 16 MiB document limit");
  positiveInt("writeTimeoutMs", cfg.writeTimeoutMs);
  positiveInt("readTimeoutMs", cfg.readTimeoutMs);
  positiveInt("syncTimeoutMs", cfg.syncTimeoutMs);
  positiveInt("maxPending", cfg.maxPending);
  positiveInt("lostWriteAfterMs", cfg.lostWriteAfterMs);
  checkCollections(cfg.collections);
  return cfg;
}

/** The fields a collection spec may have: a misspelt one is refused, not ignored. */
const COLLECTION_KEYS = ["name", "key", "mode", "layout"] as const satisfies readonly (keyof CollectionSpec)[];

/**
 * `collections`: each a name, at least one key field, and a `mode` and
 * `layout` the daemon knows, with no other fields and no name twice. A typo
 * here would make this process's read-your-writes view disagree with what
 * the daemon stores (an `insert_once` collection read as `replace`, say).
 */
function checkCollections(collections: readonly CollectionSpec[]): void {
  if (!Array.isArray(collections)) throw new WritConfigError(`collections must be an array of { name, key, mode?, layout? }`);
  const seen = new Set<string>();
  for (const c of collections) {
    const name = JSON.stringify((c as { name?: unknown })?.name);
    if (c === null || typeof c !== "object" || typeof c.name !== "string" || !c.name) {
      throw new WritConfigError(`each collection needs a name (a non-empty string), got ${JSON.stringify(c)}`);
    }
    for (const k of Object.keys(c)) {
      if (!(COLLECTION_KEYS as readonly string[]).includes(k)) {
        throw new WritConfigError(`collection ${name} has an unknown field ${JSON.stringify(k)}; its fields are ${COLLECTION_KEYS.join(", ")}`);
      }
    }
    if (seen.has(c.name)) throw new WritConfigError(`collection ${name} is declared twice`);
    seen.add(c.name);
    if (!Array.isArray(c.key) || !c.key.length || (c.key as readonly unknown[]).some((k: unknown) => typeof k !== "string" || !k)) {
      throw new WritConfigError(`collection ${name} declares no key fields (key: a non-empty array of field names, as the daemon's [[collections]] key)`);
    }
    if (c.mode !== undefined && c.mode !== "replace" && c.mode !== "insert_once") {
      throw new WritConfigError(`collection ${name}: mode must be "replace" or "insert_once", as the daemon's, got ${JSON.stringify(c.mode)}`);
    }
    if (c.layout !== undefined && c.layout !== "payload" && c.layout !== "fields") {
      throw new WritConfigError(`collection ${name}: layout must be "payload" or "fields", as the daemon's, got ${JSON.stringify(c.layout)}`);
    }
  }
}

/**
 * `redisUrl`: one redis:// or rediss:// URL, or in cluster mode one or more
 * (comma-separated), all TLS or none, with the same credentials and no database
 * other than 0. `minReplicasAcked` 0-16, `replicaAckTimeoutMs` 1-60000 (as the daemon's).
 */
function checkRedisUrls(cfg: WritConfig): void {
  if (typeof cfg.redisCluster !== "boolean") {
    throw new WritConfigError(`redisCluster (WRIT_REDIS_CLUSTER) must be true or false, got ${JSON.stringify(cfg.redisCluster)}`);
  }
  if (typeof cfg.redisUrl !== "string") {
    throw new WritConfigError(
      `redisUrl (WRIT_REDIS_URL) must be a string (in cluster mode, comma-separated seed URLs), got ${typeof cfg.redisUrl}`,
    );
  }
  const urls = redisUrls(cfg.redisUrl);
  if (urls.length > 1 && !cfg.redisCluster) {
    throw new WritConfigError(
      `redisUrl (WRIT_REDIS_URL) lists ${urls.length} URLs (${redactUrls(cfg.redisUrl)}), but a list of seed nodes needs ` +
        `Redis Cluster mode: set redisCluster: true (WRIT_REDIS_CLUSTER=1) for a cluster, or give one URL for a single Redis`,
    );
  }
  for (const u of urls) {
    if (!/^rediss?:\/\//.test(u)) {
      throw new WritConfigError(
        `redisUrl (WRIT_REDIS_URL) must ${urls.length > 1 ? "hold only URLs that " : ""}start with redis:// or rediss://, got ${u === "" ? "an empty URL" : redactUrl(u)}`,
      );
    }
    // A seed list whose later URLs lack the scheme is one URL to the split
    // (a comma starts the next URL only before a scheme).
    const shown = redactUrl(u);
    const hostPart = shown.slice(shown.indexOf("://") + 3).replace(/^\*\*\*@/, "").split(/[/?#]/)[0];
    if (hostPart.includes(",")) {
      throw new WritConfigError(
        `redisUrl (WRIT_REDIS_URL) ${shown} holds a comma in its host part: to list cluster seed nodes, give each its scheme (redis://a:6379,redis://b:6379)`,
      );
    }
  }
  if (cfg.redisCluster && urls.length > 1) {
    const tls = urls[0].startsWith("rediss://");
    if (urls.some((u) => u.startsWith("rediss://") !== tls)) {
      throw new WritConfigError(
        `redisUrl (WRIT_REDIS_URL) mixes redis:// and rediss:// URLs (${redactUrls(cfg.redisUrl)}); the nodes of one cluster all use TLS or none does`,
      );
    }
    const auth = (u: string) => {
      try {
        const p = new URL(u);
        return `${p.username}:${p.password}`;
      } catch {
        return "";
      }
    };
    if (urls.some((u) => auth(u) !== auth(urls[0]))) {
      throw new WritConfigError(
        `redisUrl (WRIT_REDIS_URL): the seed URLs carry different users or passwords; every node of a cluster is reached with the same credentials`,
      );
    }
  }
  if (cfg.redisCluster) {
    for (const u of urls) {
      let db = "";
      try {
        db = new URL(u).pathname.replace(/^\//, "");
      } catch {
        throw new WritConfigError(`redisUrl (WRIT_REDIS_URL): cannot parse ${redactUrl(u)}`);
      }
      if (db !== "" && db !== "0") {
        throw new WritConfigError(
          `redisUrl (WRIT_REDIS_URL) ${redactUrl(u)} selects database ${db}; Redis Cluster has only database 0: drop the /${db}`,
        );
      }
    }
  }
  if (!Number.isSafeInteger(cfg.minReplicasAcked) || cfg.minReplicasAcked < 0 || cfg.minReplicasAcked > 16) {
    throw new WritConfigError(
      `minReplicasAcked (WRIT_REDIS_MIN_REPLICAS_ACKED) must be an integer from 0 to 16 (replicas that confirm each write; 0: none), got ${cfg.minReplicasAcked}`,
    );
  }
  if (!Number.isSafeInteger(cfg.replicaAckTimeoutMs) || cfg.replicaAckTimeoutMs < 1 || cfg.replicaAckTimeoutMs > 60000) {
    throw new WritConfigError(
      `replicaAckTimeoutMs (WRIT_REDIS_REPLICA_ACK_TIMEOUT_MS) must be an integer from 1 to 60000 (ms a write waits for minReplicasAcked replicas), got ${cfg.replicaAckTimeoutMs}`,
    );
  }
}

/** The `redisTls*` options: their config key, env variable and what the file holds. */
const TLS_OPTIONS = [
  { key: "redisTlsCaFile", env: "WRIT_REDIS_TLS_CA_FILE", kind: "certificate", marker: "-----BEGIN CERTIFICATE-----",
    what: "the CA certificate(s) that signed the Redis server's certificate" },
  { key: "redisTlsCertFile", env: "WRIT_REDIS_TLS_CERT_FILE", kind: "certificate", marker: "-----BEGIN CERTIFICATE-----",
    what: "this client's certificate (chain) for mutual TLS" },
  { key: "redisTlsKeyFile", env: "WRIT_REDIS_TLS_KEY_FILE", kind: "private key", marker: "PRIVATE KEY-----",
    what: "the private key of redisTlsCertFile" },
] as const;

type TlsKey = (typeof TLS_OPTIONS)[number]["key"];
const tlsName = (o: (typeof TLS_OPTIONS)[number]) => `${o.key} (${o.env})`;

/** `redisTls*` only with `rediss://`, the certificate and the key together, no empty path. */
function checkRedisTls(cfg: WritConfig): void {
  const set = TLS_OPTIONS.filter((o) => cfg[o.key] !== undefined);
  if (!set.length) return;
  for (const o of set) {
    if (typeof cfg[o.key] !== "string" || cfg[o.key] === "") {
      throw new WritConfigError(`${tlsName(o)} must be the path of a PEM file (${o.what}), got ${JSON.stringify(cfg[o.key])}`);
    }
  }
  if (!redisUrls(cfg.redisUrl).every((u) => u.startsWith("rediss://"))) {
    throw new WritConfigError(
      `${tlsName(set[0])} is set but redisUrl (WRIT_REDIS_URL) ${redactUrls(cfg.redisUrl)} is not rediss:// (TLS); ` +
        `use a rediss:// URL, or remove the redisTls* options`,
    );
  }
  if ((cfg.redisTlsCertFile === undefined) !== (cfg.redisTlsKeyFile === undefined)) {
    const missing = cfg.redisTlsCertFile === undefined ? TLS_OPTIONS[1] : TLS_OPTIONS[2];
    throw new WritConfigError(
      `${tlsName(missing)} is not set: mutual TLS needs both redisTlsCertFile and redisTlsKeyFile (or neither)`,
    );
  }
}

/** The PEM contents of the `redisTls*` files, as Node's `tls.connect` takes them. */
export interface RedisTlsPem {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/**
 * Reads the `redisTls*` files of a resolved config (relative paths from the
 * working directory); undefined when none is set. A file that cannot be read
 * or holds no PEM of its kind is a {@link WritConfigError} naming the option
 * and the path.
 */
export function readRedisTls(cfg: WritConfig): RedisTlsPem | undefined {
  const out: RedisTlsPem = {};
  const field: Record<TlsKey, keyof RedisTlsPem> = { redisTlsCaFile: "ca", redisTlsCertFile: "cert", redisTlsKeyFile: "key" };
  let any = false;
  for (const o of TLS_OPTIONS) {
    const path = cfg[o.key];
    if (path === undefined) continue;
    any = true;
    let pem: Buffer;
    try {
      pem = readFileSync(path);
    } catch (e) {
      const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      const where = isAbsolute(path) ? "" : `, i.e. ${resolve(path)} from the working directory`;
      throw new WritConfigError(
        `${tlsName(o)}: cannot read ${path} (${why}${where}); ` +
          `point it at a readable PEM file holding ${o.what}`,
        { cause: e },
      );
    }
    if (!pem.toString("latin1").includes(o.marker)) {
      throw new WritConfigError(
        `${tlsName(o)}: ${path} holds no PEM ${o.kind} (no "${o.marker}" line); point it at a PEM file holding ${o.what}`,
      );
    }
    const text = pem.toString("latin1");
    if (o.key === "redisTlsKeyFile" && (text.includes("ENCRYPTED PRIVATE KEY-----") || text.includes("Proc-Type: 4,ENCRYPTED"))) {
      // Node would ask for a passphrase at connect time and fail there; the
      // daemon refuses it the same way (src/config/redis_endpoint.rs).
      throw new WritConfigError(
        `${tlsName(o)}: ${path} holds an encrypted private key, which writ does not read: decrypt it ` +
          `(openssl pkey -in ${path} -out plain.pem) and point this at the plain file`,
      );
    }
    out[field[o.key]] = pem;
  }
  return any ? out : undefined;
}
