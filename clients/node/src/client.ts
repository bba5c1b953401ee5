/**
 * The writ client core (docs/protocol.md): admission (XADD through the
 * admission script), acks, the cache with read-through to MongoDB, this
 * process's overlay of pending writes, prefix lists, and the start-up sync.
 */
import { createHash, randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { Cluster, Redis, type RedisOptions } from "ioredis";
import calculateSlot from "cluster-key-slot";
import {
  MongoClient,
  ReadConcern,
  ReadPreference,
  type Db,
  type Document as MongoDocument,
  type ReadConcernLike,
  type ServerDescription,
  type ServerType,
} from "mongodb";
import { deserialize, serialize, type Document } from "bson";

import { readRedisTls, redactUrl, redactUrls, redisUrls, resolveConfig, type RedisTlsPem, type WritConfig } from "./config.js";
import {
  BackpressureError,
  PendingFullError,
  RedisFullError,
  RefusedWriteError,
  LostWriteError,
  WritClosedError,
  WritConfigError,
  WritConnectionError,
  WritError,
  WritKeyError,
  WritTimeoutError,
  UNKNOWN_ADVICE,
} from "./errors.js";
import {
  canonicalOf,
  keyDocument,
  keyFilter,
  keyValues,
  Names,
  partitionOf,
  type CollectionSpec,
  type Key,
  type KeyValue,
} from "./key.js";
import { ADMIT_LUA, CACHE_CAS_LUA, PARTITION_COUNT_LUA } from "./lua.js";
import {
  AdmitBatcher,
  AdmitRefused,
  RefusedAfterResend,
  Withdrawal,
  dropsOf,
  expiredError,
  expiredReply,
  noClockError,
  refusalOf,
  watchDrops,
  type AdmitKeys,
} from "./admit.js";
import { NoClock, RedisClock, TIME_LUA } from "./clock.js";
import { ACK_SOCKET_TIMEOUT_MS, AckReader, lastDelivered, type AwaitedWrite } from "./acks.js";
import { RESERVED_FIELDS } from "./collections.js";
import { bsonNesting, MAX_NESTING } from "./nesting.js";
import { NOT_EXECUTED, ReplicatedAdmitter, redirectionsFor, WritesNotConnected } from "./replicated.js";
import { compareStreamIds, isSortable, toSortable, ZERO_VERSION } from "./version.js";
import { errMessage, groupBy, isReplyError, sleep } from "./util.js";

export type Op = "put" | "remove";
/**
 * What became of a write: the daemon's outcomes (docs/protocol.md §5), and
 * `lost`, which only the client gives: Redis lost the write before the daemon
 * applied it ({@link LostWriteError}).
 */
export type AckOutcome = "applied" | "coalesced" | "stale" | "dead_lettered" | "lost";

/** Whether the write of `r` is not stored and never will be: dead-lettered or lost. */
export function notStored(r: AckResult): boolean {
  return r.outcome === "dead_lettered" || r.outcome === "lost";
}

/** What the daemon said about one write. */
export interface AckResult {
  outcome: AckOutcome;
  /** The version now readable (stream id `ms-seq`); for dead letters, the entry's own id. */
  version: string;
  /** The write's own entry id. */
  entryId: string;
  /** Why it was dead-lettered (or, for `lost`, where its entry went missing). */
  reason?: string;
}

/** A write {@link WritClient.flush} waited for that is not stored and never will be. */
export interface NotStoredWrite {
  collection: string;
  /** The key's canonical string (`canonicalKey`). */
  key: string;
  /** The write's entry id (`ms-seq`). */
  entryId: string;
  /**
   * `dead_lettered`: the daemon refused it; it is parked in the dead-letter
   * stream (`writ dlq`). `lost`: Redis lost it before the daemon applied it
   * ({@link LostWriteError}); write it again.
   */
  outcome: "dead_lettered" | "lost";
  /** Why (the dead letter's reason; for `lost`, where its entry went missing). */
  reason: string;
}

/** What {@link WritClient.flush} found of the writes it waited for. */
export interface FlushReport {
  /** How many are stored: applied, coalesced or stale (MongoDB holds their version or a newer one). */
  acked: number;
  /** Those that are not, in the order they were made. */
  notStored: NotStoredWrite[];
}

/** A write accepted by Redis. */
export interface Ticket {
  collection: string;
  /** The write's entry id (`ms-seq`), i.e. its version. */
  entryId: string;
  /** Resolves with the ack; never rejects (a closed client resolves nothing). */
  acked: Promise<AckResult>;
}

/** A stored document as a reader sees it. */
export interface StoredRecord {
  /** Sortable version. */
  version: string;
  /** The whole stored document (key fields, stored fields, `removed`, `_writ`, dates), or null after a hard delete. */
  doc: Document | null;
  /** The key exists (written, possibly soft-removed). */
  exists: boolean;
  /** Reads as present: exists and not soft-removed. */
  live: boolean;
  /** Where it came from. */
  source: "cache" | "mongodb" | "overlay";
}

export interface ResolvedKey {
  spec: CollectionSpec;
  values: KeyValue[];
  canonical: string;
  partition: number;
  /** `${collection}\0${canonical}` */
  id: string;
  /** The key as a BSON document, as entries carry it. */
  keyBson: Buffer;
}

interface PendingWrite {
  req: string;
  key: ResolvedKey;
  op: Op;
  /** BSON of the stored fields (put only). */
  doc?: Uint8Array;
  /** Sortable version, once XADD returned. */
  version?: string;
  /** The entry's stream id and when it was admitted (ms), once XADD returned. */
  entryId?: string;
  admittedAt?: number;
  result?: AckResult;
  /**
   * Its own call (`write`/`submit`) failed and said so to its caller, which
   * settled its ack `dead_lettered` ("not admitted: …", or too few
   * replicas) only so that waiters stop waiting: {@link WritClient.flush}
   * leaves it out of its report.
   */
  failedToCaller?: true;
  settle: (r: AckResult) => void;
  acked: Promise<AckResult>;
}

type Hmget = [Buffer | null, Buffer | null, Buffer | null];

/** A connection: one Redis server, or (`redisCluster`) a Redis Cluster. */
type RedisConn = Redis | Cluster;

/** What a connection is for (see {@link WritClient.connect}). */
export type ConnRole = "commands" | "acks" | "writes";

/** Keys whose partition and BSON are remembered. */
const KEY_MEMO_MAX = 20000;
/** Entry field names and fixed values, encoded once. */
const F = Object.fromEntries(
  ["v", "1", "coll", "op", "enc", "bson", "key", "doc", "client", "req", "put", "remove"].map((x) => [x, Buffer.from(x)]),
) as Record<string, Buffer>;

/**
 * A Buffer view of BSON bytes (no copy). `undefined` is stored as null, as
 * the MongoDB driver stores it by default, and so as the official package
 * stores it in a payload (`{ payload: { note: undefined } }` is stored as
 * `note: null` by both). With `omitTopUndefined` (a `fields`-layout put,
 * whose top level is the official package's `$set`), an `undefined` field
 * at the top is left out instead, as mongoose leaves it out of `$set`: the
 * stored field stays as it is.
 */
export function bsonBuffer(doc: Document, omitTopUndefined = false): Buffer {
  const top =
    omitTopUndefined && Object.values(doc).includes(undefined)
      ? Object.fromEntries(Object.entries(doc).filter(([, v]) => v !== undefined))
      : doc;
  let u8: Uint8Array;
  try {
    u8 = serialize(top, { ignoreUndefined: false });
  } catch (e) {
    // A circular value, a NUL in a nested field name, a value BSON has no type for.
    throw new WritKeyError(`a document BSON cannot encode: ${errMessage(e)}; fix the value`, { cause: e });
  }
  return Buffer.isBuffer(u8) ? u8 : Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

function sha1(text: string): string {
  return createHash("sha1").update(text, "utf8").digest("hex");
}

/**
 * A cache key holding another program's value (not a hash: Redis answers
 * WRONGTYPE, the error code that starts its reply) reads as a miss, so the read
 * goes through to MongoDB; the cache is a copy of it. The daemon's next cache
 * write of the key, or this client's fill, replaces the value.
 */
function foreignAsMiss(e: unknown): Hmget {
  if (isReplyError(e) && errMessage(e).startsWith("WRONGTYPE")) return FOREIGN;
  throw e;
}

/** The miss {@link foreignAsMiss} answers: compared by identity. */
const FOREIGN: Hmget = [null, null, null];

/**
 * Waits for one key's pending writes newest first, until one is committed:
 * the cache (and MongoDB) then hold its version or a newer one, so the older
 * writes are settled for a read or a list, and an older one whose ack was lost
 * is not waited for.
 */
async function newestCommitted(writes: PendingWrite[]): Promise<void> {
  // A write still being admitted has no version yet: it is the newest.
  const v = (w: PendingWrite) => w.version ?? "\uffff";
  const newestFirst = [...writes].sort((a, b) => (v(a) < v(b) ? 1 : v(a) > v(b) ? -1 : 0));
  for (const w of newestFirst) {
    if (!notStored(await w.acked)) return;
  }
}

/**
 * The report of a flush that waited for `writes`, whose acks are `results`
 * (in the same order): a write whose own call failed ({@link PendingWrite.failedToCaller})
 * is neither acked nor reported.
 */
function flushReport(writes: PendingWrite[], results: AckResult[]): FlushReport {
  const report: FlushReport = { acked: 0, notStored: [] };
  writes.forEach((w, i) => {
    const r = results[i];
    if (w.failedToCaller) return;
    if (r.outcome === "dead_lettered" || r.outcome === "lost") {
      report.notStored.push({
        collection: w.key.spec.name,
        key: w.key.canonical,
        entryId: r.entryId || (w.entryId ?? ""),
        outcome: r.outcome,
        reason: r.reason ?? "",
      });
    } else report.acked++;
  });
  return report;
}

/** A recorded partition count: a positive number; anything else records none (as at admission). */
function recordedCount(v: string | null): number | undefined {
  return v !== null && /^[1-9][0-9]*$/.test(v) ? Number(v) : undefined;
}

/** A meta hash that is not a hash (another program's key) records no partition count. */
function wrongTypeAsNone(e: unknown): null {
  if (isReplyError(e) && errMessage(e).startsWith("WRONGTYPE")) return null;
  throw e;
}

/**
 * The end of a refusal for another partition count met by a running process
 * (a write's, a read's): a change the operator did not finish leaves
 * partitions that record different counts (as the Rust client says:
 * src/client/admission_reply.rs).
 */
const UNFINISHED_CHANGE =
  "If `writ partitions` says a change is unfinished instead, run `writ partitions --set` again with the count you want";

/** Longest close() waits for a clean QUIT or for the ack loop to end. */
const CLOSE_WAIT_MS = 1000;

/** The lost-ack sweep's MongoDB read: only what the majority holds (storedVersions). */
const MAJORITY = { readConcern: { level: "majority" } } as const;

/** What a connection's `socketTimeout` allows past the longest wait of its callers. */
export const SOCKET_TIMEOUT_MARGIN_MS = 5000;
/** TCP keepalive: probes start after this long idle (as the Rust client's `tcp_settings`). */
const KEEPALIVE_MS = 30_000;

/**
 * The ioredis `socketTimeout` of a connection of `role`: while a command is
 * out on it and nothing at all arrives for this long, ioredis destroys the
 * socket and reconnects (the timer starts when a command is written, and
 * starts again at each reply while others are out; an idle connection is
 * never cut). Without it a half-open connection (a NAT or load balancer that
 * dropped its state, a host that died without a reset) held every command
 * out on it until TCP gave up, about 15 minutes, and then ioredis sent them
 * again: admissions whose callers were told "unknown" long before landed
 * then, over newer writes. Each bound is past the longest its callers wait,
 * so only a connection that nobody waits on any more is cut:
 * - `commands`: admissions (writeTimeoutMs), reads and the lost-ack sweep
 *   (readTimeoutMs);
 * - `writes` (with minReplicasAcked): an admission, then its WAIT
 *   (replicaAckTimeoutMs), with no reply in between while the WAIT is out;
 * - `acks`: its XREAD blocks at most ACK_BLOCK_MS (acks.ts).
 */
export function socketTimeoutOf(role: ConnRole, c: Pick<WritConfig, "writeTimeoutMs" | "readTimeoutMs" | "replicaAckTimeoutMs">): number {
  switch (role) {
    case "acks":
      return ACK_SOCKET_TIMEOUT_MS;
    case "writes":
      return c.writeTimeoutMs + c.replicaAckTimeoutMs + SOCKET_TIMEOUT_MARGIN_MS;
    case "commands":
      return Math.max(c.writeTimeoutMs, c.readTimeoutMs) + SOCKET_TIMEOUT_MARGIN_MS;
  }
}

/** ready()'s bound ran out: Redis took the connection and did not answer. */
class NoAnswer extends Error {}

/** A wait for acks ran out: the waiter looks at the writes' entries before it says what it knows. */
class Overdue extends Error {}

/** What to do about Redis's refusal `msg` of a start-up check, by its code (`undefined`: no advice by code). */
function refusalHint(msg: string): string | undefined {
  const code = msg.split(" ")[0];
  switch (code) {
    case "NOPERM":
    case "NOAUTH":
    case "WRONGPASS":
      return "Check the user and password in redisUrl / WRIT_REDIS_URL and the ACL user's rights (the writ repository's docs/operations.md, \"Redis ACL users\").";
    case "NOREPLICAS":
      return "Redis refuses writes while fewer replicas than its min-replicas-to-write are in sync: bring the replicas back, or lower that setting.";
    case "READONLY":
    case "MASTERDOWN":
      return "That Redis is a replica (or lost its master): point redisUrl at the master.";
    case "LOADING":
      return "Redis is loading its data set: try again in a moment.";
    case "BUSY":
      return "A script runs long on Redis: wait for it, or SCRIPT KILL it.";
    case "OOM":
      return "Redis is at its maxmemory: free memory or raise maxmemory (the writ repository's docs/operations.md).";
    case "MISCONF":
      return "Redis cannot write its append-only file or snapshot (a full disk, most often): free disk space for Redis, then try again.";
    default:
      return undefined;
  }
}

/**
 * Races `p` against the moment `at` of the monotonic clock
 * (`performance.now()`, ms): `onTimeout` is never called before it (a
 * timer that fires early, as Node's may by a millisecond or two, is set
 * again for the rest). The timer never keeps the process alive.
 */
async function until<T>(p: Promise<T>, at: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        const arm = () => {
          const left = at - performance.now();
          if (left <= 0) return reject(onTimeout());
          timer = setTimeout(arm, Math.ceil(left));
          timer.unref?.();
        };
        arm();
      }),
    ]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}

/** Races `p` against a timer; the timer never keeps the process alive. */
async function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  return until(p, performance.now() + ms, onTimeout);
}

/**
 * The error `e` (from before a write was sent: connecting to Redis, waiting
 * for its turn) as that write's: one that says nothing of a write (a failed
 * `ready()`, shared by every call that waited for it; a close meanwhile)
 * becomes one of its own class saying `accepted: "no"`.
 */
function notSent(e: unknown, collection: string): unknown {
  if (!(e instanceof WritError) || e.accepted !== undefined) return e;
  if (e instanceof WritClosedError) return new WritClosedError({ accepted: "no" });
  const message = `the write to ${collection} was NOT accepted (nothing was sent): ${e.message}`;
  if (e instanceof WritConnectionError) return new WritConnectionError(message, { cause: e, accepted: "no" });
  if (e instanceof WritTimeoutError) return new WritTimeoutError(message, { cause: e, accepted: "no" });
  return new WritError(message, { cause: e, accepted: "no" });
}

export class WritClient {
  readonly config: WritConfig;
  readonly names: Names;
  private readonly specs = new Map<string, CollectionSpec>();
  /** The commands connection (replaced if a Cluster's first connection fails). */
  private redis: RedisConn;
  /** The ack stream loop and the lost-ack sweep (src/acks.ts). */
  private readonly ackReader: AckReader;
  /** Admissions with `minReplicasAcked > 0`, each followed by WAIT on a connection of its own (src/replicated.ts). */
  private readonly replicated: ReplicatedAdmitter;
  /** The PEM contents of the redisTls* files, read once. */
  private readonly tls: RedisTlsPem | undefined;
  /** The last connection error ioredis reported (TLS and socket errors), for messages. */
  private lastRedisError: unknown;
  private mongo: MongoClient | undefined;
  private mongoDb: Promise<Db> | undefined;
  /** The role of the one server of a direct connection, as the driver's monitoring last saw it (set with {@link mongo}). */
  private primaryWatch: PrimaryWatch | undefined;
  private readonly admitSha = sha1(ADMIT_LUA);
  private readonly timeSha = sha1(TIME_LUA);
  /** Redis's clock per partition, for the admission calls' deadlines (src/clock.ts). */
  private readonly clock: RedisClock;
  /** Group commit of admissions without WAIT (`minReplicasAcked: 0`). */
  private readonly admitter: AdmitBatcher;
  private readonly casSha = sha1(CACHE_CAS_LUA);
  /** Whether a failed cache fill of the lost-ack sweep went to `onError` already. */
  private fillErrorReported = false;
  private nextReq = 0;
  /**
   * Request ids are `<reqPrefix>.<counter>`: random per instance, so that a
   * client id used again (a restarted process, a second client, workers that
   * share a configured `clientId`) never matches an old ack, still in the ack
   * stream for up to 24 h, to a new write (protocol.md §5).
   */
  private readonly reqPrefix = randomBytes(5).toString("hex");
  /** This instance's name in its admission records (`<ns>:{p<N>}:adm:<caller>`). */
  private readonly caller = `n${randomBytes(8).toString("hex")}`;
  /** req → pending write. */
  private readonly pending = new Map<string, PendingWrite>();
  /** key id → this process's pending writes of that key, oldest first. */
  private readonly overlay = new Map<string, PendingWrite[]>();
  /** key id → its partition and key BSON (see {@link resolveKey}). */
  private readonly keyMemo = new Map<string, { partition: number; keyBson: Buffer }>();
  /** Per partition: [stream, meta, admission record] key names. */
  private partitionNames: AdmitKeys[] = [];
  private connected = false;
  /** The start-up sync (`sync({ once: true })`): running, or succeeded. */
  private syncPromise: Promise<void> | undefined;
  private readyPromise: Promise<void> | undefined;
  private closed = false;
  /** Waiters (admissions, ack waits, flushes) that {@link close} ends: each fails with its own {@link WritClosedError}. */
  private closeWaiters = new Set<() => void>();
  /** Waiters for room under `maxPending`. */
  private roomWaiters: Array<() => void> = [];
  /** Each write's ack → the write (a ticket's write, for the look an ack wait makes when it times out). */
  private readonly byAck = new WeakMap<Promise<AckResult>, PendingWrite>();
  /** Acks (of writes) whose ack-mode wait timed out: a refusal of theirs goes to onError. */
  private unheard = new WeakSet<Promise<AckResult>>();
  /**
   * Acks with a {@link waitAck} in progress, and how many: a refusal goes
   * to a waiter then, not also to onError (another wait of the same write
   * may have timed out meanwhile).
   */
  private waiting = new Map<Promise<AckResult>, number>();
  /** Writes waiting their turn to be admitted ({@link waitTurn}), and the promise the next one waits for. */
  private turnsWaiting = 0;
  private turnTail: Promise<void> = Promise.resolve();

  constructor(config: Partial<WritConfig> = {}) {
    this.config = resolveConfig(config);
    this.names = new Names(this.config.namespace);
    this.clock = new RedisClock({
      time: (metaKey) => this.evalScript(this.timeSha, TIME_LUA, [metaKey], []),
      warnNoTime: (e) => this.reportNoTime(e),
    });
    this.admitter = new AdmitBatcher(
      (keys, args) => this.admitCall(keys, args),
      this.names.group,
      this.config.maxBacklog,
      this.config.partitions,
      this.clock,
    );
    this.replicated = new ReplicatedAdmitter({
      config: this.config,
      connect: () => this.connect("writes"),
      script: { sha: this.admitSha, text: ADMIT_LUA },
      group: this.names.group,
      closed: () => this.closed,
      clock: this.clock,
    });
    this.ackReader = new AckReader({
      config: this.config,
      names: this.names,
      pending: this.pending,
      connect: () => this.connect("acks"),
      commands: () => this.redis,
      deliver: (req, r) => this.deliver(req, r),
      storedVersions: (writes) => this.storedVersions(writes),
      report: (e) => this.report(e),
      closed: () => this.closed,
    });
    for (const c of this.config.collections) this.specs.set(c.name, c);
    // The redisTls* files, read once; every connection uses them.
    this.tls = readRedisTls(this.config);
    this.redis = this.connect("commands");
  }

  /**
   * A new connection (not connected yet: the first command connects it). One
   * Redis, or with `redisCluster` an ioredis `Cluster` seeded with every URL
   * of `redisUrl`; TLS files, credentials and the options below apply to every
   * node. Roles: `commands` (everything but the two below), `acks` (the
   * blocking XREAD of the ack stream: retries forever, no command timeout),
   * `writes` (admissions followed by WAIT, which blocks the connection).
   */
  private connect(role: ConnRole): RedisConn {
    const c = this.config;
    const node: RedisOptions = {
      connectionName: `writ-node:${c.clientId}`,
      maxRetriesPerRequest: role === "acks" ? null : 5,
      // No commandTimeout on any connection: the ack stream's XREAD blocks
      // ACK_BLOCK_MS, and WAIT up to replicaAckTimeoutMs, by design (and an
      // ioredis command timeout only rejects the caller's promise: the
      // command stays on the connection). Instead each connection is watched
      // for a reply that never comes (socketTimeoutOf): a half-open one is
      // cut and replaced within seconds, not after TCP gives up.
      socketTimeout: socketTimeoutOf(role, c),
      // Probes on an idle connection (after 30 s), as the Rust client's: a
      // peer that vanished is found before the next command waits on it.
      keepAlive: KEEPALIVE_MS,
    };
    let conn: RedisConn;
    if (!c.redisCluster) {
      conn = new Redis(c.redisUrl, {
        ...node,
        lazyConnect: true,
        enableAutoPipelining: role === "commands",
        ...(this.tls ? { tls: this.tls } : {}),
      });
    } else {
      const seeds = redisUrls(c.redisUrl).map((u) => new URL(u));
      const first = seeds[0];
      conn = new Cluster(
        seeds.map((u) => ({ host: u.hostname.replace(/^\[|\]$/g, ""), port: Number(u.port || 6379) })),
        {
          lazyConnect: true,
          // While no node can be reached, a Cluster queues commands and reconnects
          // forever (clusterRetryStrategy), and sends them once the cluster is
          // back. A write fails after writeTimeoutMs meanwhile ("may or may not
          // have been accepted": the queued command may still run later, and
          // then adds nothing, past its deadline: src/clock.ts). (A clusterRetryStrategy that
          // gives up, restarted by the next command, left ioredis 5.11.1 stuck in
          // "close" once the nodes came back.)
          // Off in cluster mode: ioredis's auto-pipelines mix slots of one node,
          // and a MOVED reply to such a pipeline (resharding, failover) fails its
          // commands instead of redirecting them (ioredis issue #2075). Many-key
          // reads pipeline per slot instead (readCache), and admissions with WAIT
          // batch per node with their own redirection handling (src/replicated.ts).
          enableAutoPipelining: false,
          // While a slot moves to another node (resharding), a command whose
          // keys are split between the two, or that would create a key, is
          // refused with TRYAGAIN (or ASK, then TRYAGAIN) until the move is done;
          // ioredis tries again every retryDelayOnTryAgain (100 ms), each try a
          // redirection. Its default of 16 gave up after about 1.6 s; this lets
          // a write wait for the move about as long as it waits for anything
          // (writeTimeoutMs), as the daemon does (tests: test/reshard.test.ts).
          maxRedirections: redirectionsFor(c.writeTimeoutMs),
          // Nodes learnt from CLUSTER SLOTS get these, not the seed URLs' parts:
          // credentials and TLS (ioredis enables TLS only for a rediss:// URL
          // given to a plain Redis) go here.
          redisOptions: {
            ...node,
            ...(first.username ? { username: decodeURIComponent(first.username) } : {}),
            ...(first.password ? { password: decodeURIComponent(first.password) } : {}),
            ...(first.protocol === "rediss:" ? { tls: this.tls ?? {} } : {}),
          },
        },
      );
    }
    // Admissions go over these two: a refusal of one out across a drop may
    // follow a first send that ran (RefusedAfterResend).
    if (role !== "acks") watchDrops(conn, c.redisCluster);
    if (role === "commands") {
      // Connection errors surface on the commands; keep ioredis from printing each
      // retry, but remember the last one: a failed connect only says "Connection is closed.".
      const remember = (e: unknown) => {
        this.lastRedisError = e;
      };
      conn.on("error", remember);
      conn.on("node error", remember);
      conn.on("ready", () => {
        this.lastRedisError = undefined;
      });
    } else {
      conn.on("error", () => {});
      conn.on("node error", () => {});
    }
    return conn;
  }

  get clientId(): string {
    return this.config.clientId;
  }

  /** The declared collection, or a {@link WritConfigError}. */
  spec(collection: string): CollectionSpec {
    const s = this.specs.get(collection);
    if (!s) {
      throw new WritConfigError(
        `collection ${JSON.stringify(collection)} is not declared in this client's config; ` +
          `declare it (and in the daemon's [[collections]])`,
      );
    }
    return s;
  }

  /** Checks and resolves a key of a collection. */
  resolveKey(collection: string, key: Record<string, unknown>): ResolvedKey {
    const spec = this.spec(collection);
    const values = keyValues(spec, key);
    const canonical = canonicalOf(values);
    const id = `${spec.name}\0${canonical}`;
    let memo = this.keyMemo.get(id);
    if (!memo) {
      // A live process writes the same few thousand keys over and over: the
      // partition hash and the key's BSON are computed once per key (bounded).
      if (this.keyMemo.size >= KEY_MEMO_MAX) this.keyMemo.clear();
      memo = {
        partition: partitionOf(spec.name, canonical, this.config.partitions),
        keyBson: bsonBuffer(keyDocument(spec, values)),
      };
      this.keyMemo.set(id, memo);
    }
    return { spec, values, canonical, partition: memo.partition, id, keyBson: memo.keyBson };
  }

  private partitionKeys(p: number): AdmitKeys {
    let n = this.partitionNames[p];
    if (!n) n = this.partitionNames[p] = [this.names.stream(p), this.names.meta(p), this.names.admission(p, this.caller)];
    return n;
  }

  /** Connects to Redis (once); fails with a {@link WritConnectionError} that names the URL. */
  ready(): Promise<void> {
    if (this.closed) return Promise.reject(new WritClosedError());
    if (!this.readyPromise) {
      this.readyPromise = (async () => {
        try {
          // Bounded: a Redis that accepts the connection and never answers
          // (paused, stopped, a stalled failover) must not hang every read,
          // sync and write behind this promise. On the timeout, the
          // connection is replaced below; its commands fail with it.
          const within = Math.max(this.config.writeTimeoutMs, this.config.readTimeoutMs);
          const conn = this.redis;
          await withTimeout(
            (async () => {
              if (conn.status === "wait") await conn.connect();
              await conn.ping();
              if (this.redis !== conn) return;
              if (!this.config.redisCluster) await this.checkNotCluster();
              if (this.redis !== conn) return;
              await this.checkPartitions();
              if (this.redis !== conn) return;
              await this.checkDatabase();
            })(),
            within,
            () =>
              new NoAnswer(
                `Redis accepted the connection but did not answer within ${within} ms (the longer of writeTimeoutMs and ` +
                  `readTimeoutMs); is it paused, stopped or failing over?`,
              ),
          );
          this.connected = true;
        } catch (e) {
          this.readyPromise = undefined;
          this.connected = false;
          // Refused by a check on a working connection (another partition count, a
          // cluster node without redisCluster): keep the connection, say why.
          if (e instanceof WritError) throw e;
          // A failed connection keeps reconnecting in the background (a Cluster forever,
          // clusterRetryStrategy, holding commands meanwhile): replace it, so that the
          // next ready() tries (and fails) as fast as this one, and nothing retries
          // behind the caller's back. Over TLS, each background attempt that fails the
          // handshake can also emit a second socket error after ioredis's one-shot
          // handler is gone, an uncaught exception in the caller's process.
          // (Disconnecting a Cluster can leave it "disconnecting" for good; the
          // replacement does not depend on it.)
          const failed = this.redis;
          // After close(), nothing is replaced, and the caller hears why it failed.
          if (this.closed) {
            failed.disconnect();
            throw new WritClosedError();
          }
          this.redis = this.connect("commands");
          failed.disconnect();
          // Redis answered, with a refusal (an ACL without a command writ
          // needs, a replica, too few replicas in sync): reachable, so say so.
          if (isReplyError(e)) {
            const msg = errMessage(e);
            throw new WritConnectionError(
              `Redis at ${redactUrls(this.config.redisUrl)} refused writ's start-up checks: ${msg}. ${refusalHint(msg) ?? (/cluster support disabled/i.test(msg) ? this.connectHint(e) : "See the Redis server's log, and docs/operations.md in the writ repository.")}`,
              { cause: e },
            );
          }
          // ioredis rejects a failed connect with "Connection is closed." (or,
          // while it reconnects, "Reached the max retries per request limit");
          // the reason (a TLS alert, a refused connection) came as an error event.
          let cause = !isReplyError(e) && !(e instanceof NoAnswer) && this.lastRedisError ? this.lastRedisError : e;
          // ioredis's Cluster says "Failed to refresh slots cache." and keeps the node's reason.
          const nodeError = (cause as { lastNodeError?: unknown })?.lastNodeError;
          if (nodeError) cause = nodeError;
          // Its node connections drop the reason ("Connection is closed."): ask a seed alone.
          if (this.config.redisCluster && /Connection is closed|None of startup nodes|refresh slots cache/i.test(errMessage(cause))) {
            cause = (await this.probeSeed()) ?? cause;
          }
          throw new WritConnectionError(
            `cannot reach Redis${this.config.redisCluster ? " Cluster" : ""} at ${redactUrls(this.config.redisUrl)}: ` +
              `${errMessage(cause)}. ${this.connectHint(cause)}`,
            { cause },
          );
        }
      })();
    }
    return this.readyPromise;
  }

  /**
   * Connects to the first seed alone (one attempt, the same TLS files and
   * credentials) and returns why that fails, if it does: ioredis's Cluster
   * reports a TLS or socket error of a node only as "Connection is closed.".
   */
  private async probeSeed(): Promise<unknown> {
    const r = new Redis(redisUrls(this.config.redisUrl)[0], {
      lazyConnect: true,
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
      connectTimeout: 5000,
      ...(this.tls ? { tls: this.tls } : {}),
    });
    let err: unknown;
    r.on("error", (e: unknown) => {
      err ??= e;
    });
    try {
      await r.connect();
      await r.ping();
    } catch (e) {
      err ??= e;
    } finally {
      r.disconnect();
    }
    return err;
  }

  /**
   * Refuses a cluster node without `redisCluster`: it would answer MOVED for
   * every key outside its own slots. (A server where INFO is not allowed passes.)
   */
  private async checkNotCluster(): Promise<void> {
    let info: string;
    try {
      info = String(await this.redis.info("cluster"));
    } catch {
      return;
    }
    if (/^cluster_enabled:1\s*$/m.test(info)) {
      throw new WritConfigError(
        `Redis at ${redactUrl(this.config.redisUrl)} is a Redis Cluster node (cluster_enabled:1): set redisCluster: true ` +
          `(WRIT_REDIS_CLUSTER=1), with the cluster's nodes as comma-separated redisUrl seeds, as the daemon's redis.cluster`,
      );
    }
  }

  /**
   * Records this client's partition count as the namespace's if none is
   * recorded yet (field `partitions` of `<ns>:{p0}:meta`; a daemon replaces
   * a count only clients recorded), and refuses a different recorded one: with another count than the daemons, keys go to
   * streams no daemon reads, or one key's writes to two streams
   * (src/lua/partition_count.lua of the writ repository, embedded in src/lua.ts).
   */
  private async checkPartitions(): Promise<void> {
    const key = this.names.meta(0);
    let recorded: string | null;
    try {
      const r = (await this.redis.eval(PARTITION_COUNT_LUA, 1, key, String(this.config.partitions), "client")) as unknown[];
      recorded = String(r[0]);
    } catch (e) {
      // At maxmemory Redis refuses the script (it may write): only compare.
      if (!/^OOM/.test(errMessage(e))) throw e;
      recorded = await this.redis.hget(key, "partitions");
    }
    const n = recordedCount(recorded);
    if (n !== undefined && n !== this.config.partitions) {
      throw new WritConfigError(
        `this client is configured with partitions = ${this.config.partitions}, but namespace ` +
          `"${this.config.namespace}" records ${n} partitions (${key} field partitions): its keys would go to other partition streams, where they are applied out of order or never. ` +
          `Set partitions: ${n} (WRIT_PARTITIONS=${n}), as the daemon's redis.partitions. To change the namespace's ` +
          `count, see \`writ partitions --set\` in the writ repository's docs/operations.md`,
      );
    }
  }

  /**
   * Refuses a `mongodbDatabase` other than the one the namespace's daemons
   * record (field `database` of `<ns>:{p0}:meta`, written by each daemon at
   * start; src/database_record.rs of the writ repository): this client's
   * read-throughs and lost-ack looks would read a database the daemons do
   * not write, and miss every write. Nothing is refused before a daemon ran.
   */
  private async checkDatabase(): Promise<void> {
    const key = this.names.meta(0);
    const recorded = await this.redis.hget(key, "database");
    if (recorded && recorded !== this.config.mongodbDatabase) {
      throw new WritConfigError(
        `this client is configured with MongoDB database "${this.config.mongodbDatabase}" (mongodbDatabase, ` +
          `WRIT_MONGODB_DATABASE), but the daemons of namespace "${this.config.namespace}" write to "${recorded}" ` +
          `(${key} field database): its reads would miss every write. Set mongodbDatabase: "${recorded}" ` +
          `(WRIT_MONGODB_DATABASE=${recorded}), as the daemon's mongodb.database (the database in a MongoDB URI's path is not used for it)`,
      );
    }
  }

  /** What to check after a failed connection to Redis. */
  private connectHint(e: unknown): string {
    const c = this.config;
    if (c.redisCluster && /cluster support disabled/i.test(errMessage(e))) {
      return "That Redis is not a cluster node (cluster-enabled no): for a single Redis set redisCluster: false (WRIT_REDIS_CLUSTER=0).";
    }
    if (!c.redisUrl.startsWith("rediss://")) {
      return c.redisCluster
        ? "Check WRIT_REDIS_URL / redisUrl (seed nodes of the cluster) and that the cluster is up (`redis-cli -c -h HOST -p PORT cluster info`: cluster_state:ok)."
        : "Check WRIT_REDIS_URL / redisUrl and that redis-server is running (rediss:// if it only takes TLS).";
    }
    const code = String((e as { code?: unknown })?.code ?? "");
    const msg = `${errMessage(e)} ${code}`;
    if (/certificate|self.signed|issuer|CERT_|altnames/i.test(msg) && !/certificate required|ALERT_CERTIFICATE_REQUIRED/i.test(msg)) {
      return c.redisTlsCaFile
        ? `The server's TLS certificate is not trusted: does redisTlsCaFile (${c.redisTlsCaFile}) hold the CA that signed it, ` +
            `and is the URL's host (name or IP) in the certificate?`
        : `The server's TLS certificate is not trusted: only Node's default CAs are; set redisTlsCaFile ` +
            `(WRIT_REDIS_TLS_CA_FILE) to the PEM of the CA that signed it, and check that the URL's host (name or IP) is in the certificate.`;
    }
    if (!c.redisTlsCertFile) {
      return (
        "Is redis-server listening with TLS there (its tls-port)? If it checks client certificates (tls-auth-clients yes), " +
        "set redisTlsCertFile and redisTlsKeyFile (WRIT_REDIS_TLS_CERT_FILE / WRIT_REDIS_TLS_KEY_FILE)."
      );
    }
    return "Is redis-server listening with TLS there (its tls-port), and are redisUrl / WRIT_REDIS_URL and the redisTls* files right?";
  }

  /** The MongoDB driver client used for read-through (created on first use, closed by {@link close}). */
  get mongoClient(): MongoClient {
    if (!this.mongo) {
      this.mongo = new MongoClient(this.config.mongodbUri, {
        serverSelectionTimeoutMS: 10000,
        ...this.config.mongoClientOptions,
      });
      // Before connect(): the first description of the server comes during it.
      this.primaryWatch = new PrimaryWatch(this.mongo);
    }
    return this.mongo;
  }

  private db(): Promise<Db> {
    if (!this.mongoDb) {
      const client = this.mongoClient;
      this.mongoDb = client.connect().then(
        async (c) => {
          await refuseSecondary(c);
          return c;
        },
      ).then(
        // Whatever the URI or mongoClientOptions name, reads must see every
        // acknowledged write. A secondary can be behind one, and so can a
        // majority read (a write with w: 1, a newly elected primary); a
        // `local` read of the current primary cannot (docs/protocol.md §6).
        // The lost-ack sweep's majority reads ask for it per operation. Set
        // on the database, not the client: a client forced to the primary
        // refuses a URI's maxStalenessSeconds (and keeps its tags).
        (c) => c.db(this.config.mongodbDatabase, { readPreference: ReadPreference.primary, readConcern: new ReadConcern("local") }),
        (e) => {
          this.mongoDb = undefined;
          if (e instanceof WritError) throw e;
          throw new WritConnectionError(
            `cannot reach MongoDB for read-through: ${errMessage(e)}. Check WRIT_MONGODB_URI / mongodbUri.`,
            { cause: e },
          );
        },
      );
    }
    return this.mongoDb;
  }

  /**
   * Every MongoDB read of the client (read-throughs, lists, the lost-ack
   * sweep's looks) goes through here: on a direct connection it is refused
   * while the server is known not to be the primary ({@link PrimaryWatch}).
   */
  private async mongoCall<T>(what: string, f: (db: Db) => Promise<T>): Promise<T> {
    // Bounded as every read is: a MongoDB that stopped answering (a stalled
    // mongod, a half-open connection) held reads for about 40 s, until the
    // driver's monitor gave up. The finds carry the same maxTimeMS, so the
    // server stops them too.
    const ms = this.config.readTimeoutMs;
    return withTimeout(
      (async () => {
        const db = await this.db();
        const watch = this.primaryWatch!;
        const mark = watch.before();
        let answer: T;
        try {
          answer = await f(db);
        } catch (e) {
          if (e instanceof WritError) throw e;
          throw new WritConnectionError(`MongoDB ${what} failed: ${errMessage(e)}`, { cause: e });
        }
        watch.after(mark);
        return answer;
      })(),
      ms,
      () => new WritTimeoutError(`MongoDB ${what} did not answer within readTimeoutMs (${ms} ms); check that MongoDB is up and answering`),
    );
  }

  private async evalScript(sha: string, text: string, keys: string[], args: (string | Buffer | number)[]) {
    try {
      return await this.redis.evalsha(sha, keys.length, ...keys, ...args);
    } catch (e) {
      if (isReplyError(e) && errMessage(e).startsWith("NOSCRIPT")) {
        return await this.redis.eval(text, keys.length, ...keys, ...args);
      }
      throw e;
    }
  }

  /**
   * One admission call (src/admit.ts) on the commands connection. A refusal
   * by Redis after the connection dropped while the call was out is a
   * {@link RefusedAfterResend}: ioredis sent the call again, and the first
   * send may have run.
   */
  private async admitCall(keys: string[], args: (string | Buffer | number)[]): Promise<unknown> {
    const conn = this.redis;
    const drops = dropsOf(conn);
    try {
      return await this.evalScript(this.admitSha, ADMIT_LUA, keys, args);
    } catch (e) {
      throw refusalOf(e, conn, drops);
    }
  }

  // ---------------------------------------------------------------- writing

  /**
   * Appends one write to its partition stream; resolves once Redis accepted it.
   * `fields` is the document of stored fields (`put` only).
   */
  async submit(collection: string, key: Record<string, unknown>, op: Op, fields?: Record<string, unknown>): Promise<Ticket> {
    if (this.closed) throw new WritClosedError({ accepted: "no" });
    const k = this.resolveKey(collection, key);
    let docBytes: Buffer | undefined;
    if (op === "put") {
      if (fields === null || typeof fields !== "object" || Array.isArray(fields)) {
        throw new WritKeyError(`a put to ${collection} needs a document (an object) of fields to store`);
      }
      if ((k.spec.layout ?? "payload") === "fields") {
        for (const f of Object.keys(fields)) {
          if ((RESERVED_FIELDS as readonly string[]).includes(f) || k.spec.key.includes(f)) {
            throw new WritKeyError(
              `a document for ${collection} must not hold ${f} (reserved or a key field); the daemon sets it`,
            );
          }
          if (f === "" || f.startsWith("$") || f.includes(".") || f.includes("\0")) {
            throw new WritKeyError(
              `a document for ${collection} has the field name ${JSON.stringify(f)}: top-level names must not be empty, start with $ or contain . or NUL`,
            );
          }
        }
      }
      docBytes = bsonBuffer(fields, (k.spec.layout ?? "payload") === "fields");
      if (docBytes.length > this.config.maxDocumentBytes) {
        throw new WritKeyError(
          `the document for ${collection} ${k.canonical} is ${docBytes.length} bytes of BSON, over maxDocumentBytes ` +
            `(${this.config.maxDocumentBytes}); store less`,
        );
      }
      if (bsonNesting(docBytes) > MAX_NESTING) {
        throw new WritKeyError(
          `the document for ${collection} ${k.canonical} nests objects and arrays more than ${MAX_NESTING} levels deep, ` +
            `past MongoDB's limit (the daemon would dead-letter it); flatten it`,
        );
      }
    } else if (fields !== undefined) {
      throw new WritKeyError(`a ${op} carries no document`);
    }
    // A write that must wait (for the connection, for room under maxPending,
    // or behind writes already waiting) waits its turn in call order, and lets
    // the next one go only once it is in the admitter's queue: per-key order
    // is call order, and maxPending holds however many wait.
    let turn: (() => void) | undefined;
    if (this.turnsWaiting > 0 || !this.connected || this.pending.size >= this.config.maxPending) {
      try {
        turn = await this.waitTurn();
      } catch (e) {
        // Nothing of this write was sent (a Redis that cannot be reached, a
        // close() meanwhile): it says so.
        throw notSent(e, collection);
      }
    }
    if (this.closed) {
      turn?.();
      throw new WritClosedError({ accepted: "no" });
    }

    const req = `${this.reqPrefix}.${(++this.nextReq).toString(36)}`;
    let settle!: (r: AckResult) => void;
    const acked = new Promise<AckResult>((r) => (settle = r));
    const w: PendingWrite = { req, key: k, op, doc: docBytes, settle, acked };
    this.pending.set(req, w);
    this.byAck.set(acked, w);
    this.ackReader.start();

    const keys = this.partitionKeys(k.partition);
    const entry: (string | Buffer | number)[] = [
      F.v, F["1"],
      F.coll, k.spec.name,
      F.op, op === "put" ? F.put : F.remove,
      F.enc, F.bson,
      F.key, k.keyBson,
    ];
    if (docBytes) entry.push(F.doc, docBytes);
    entry.push(F.client, this.config.clientId, F.req, req);

    const withdrawal = new Withdrawal();
    let entryId: string;
    /** Replicas that confirmed the entry (WAIT), with minReplicasAcked > 0. */
    let replicas: number | Error | undefined;
    try {
      // When this write stops waiting (bounded() waits until then, never
      // less): its admission call's deadline is set from it, so that the call
      // cannot land after this write was reported as unknown.
      const giveUpAt = performance.now() + this.admissionWaitMs();
      const admitted: Promise<{ entryId: string; replicas: number | Error | undefined }> =
        this.config.minReplicasAcked > 0
          ? this.replicated.admit(keys, entry, giveUpAt, withdrawal)
          : this.admitter.admit(keys, entry, giveUpAt, withdrawal).then((id) => ({ entryId: id, replicas: undefined }));
      // In the queue (or, replicated, behind the same connection promise as
      // the next one): the next write may go.
      turn?.();
      ({ entryId, replicas } = await this.bounded(admitted, collection, giveUpAt, withdrawal));
    } catch (e) {
      turn?.();
      this.forget(w);
      // Nothing will ack it: a list or flush that waits for it stops waiting
      // (a flush does not report it: the caller is told below).
      w.failedToCaller = true;
      w.settle({ outcome: "dead_lettered", version: "", entryId: "", reason: `not admitted: ${errMessage(e)}` });
      if (e instanceof WritError) throw e;
      // The writes connection (minReplicasAcked) could not be made: nothing was sent.
      if (e instanceof WritesNotConnected) {
        throw new WritConnectionError(
          `the write to ${collection} was NOT accepted (nothing was sent): cannot connect to Redis at ` +
            `${redactUrls(this.config.redisUrl)}: ${errMessage(e.reason)}. ${this.connectHint(e.reason)}`,
          { cause: e.reason, accepted: "no" },
        );
      }
      // Refused by the bound.
      if (e instanceof AdmitRefused) throw new BackpressureError(k.partition, e.backlog, this.config.maxBacklog);
      // Redis could not be asked for its clock: the call was not sent.
      if (e instanceof NoClock) throw noClockError(collection, e, redactUrls(this.config.redisUrl));
      // Redis ran the call after its deadline, when this client had given up
      // on it: nothing was added, even if it was sent again (a send that ran
      // would have been answered from the record).
      const expired = expiredReply(e);
      if (expired) throw expiredError(collection, expired);
      // Redis's refusal of a call that may have been sent before (below).
      const resent = e instanceof RefusedAfterResend;
      const reply = resent ? e.reply : e;
      const msg = errMessage(reply);
      if (isReplyError(reply) && msg.startsWith("DUPLICATE")) {
        // The admission ran before (its reply lost, then no longer kept) or was
        // overtaken by a later one of this client (protocol.md §2a).
        throw new WritConnectionError(
          `the write to ${collection} may or may not have been accepted: ${msg}. Before retrying it, ${UNKNOWN_ADVICE}.`,
          { cause: reply, accepted: "unknown" },
        );
      }
      // The record answers a call that ran before the count changed, so this
      // refusal means the call never ran, sent again or not.
      if (isReplyError(reply) && msg.startsWith("PARTITIONS ")) {
        const recorded = msg.split(" ")[1];
        throw new WritConfigError(
          `the write to ${collection} was NOT accepted: namespace "${this.config.namespace}" now records ${recorded} partitions ` +
            `(partition ${k.partition}'s meta hash) and this client is configured with partitions = ${this.config.partitions}; ` +
            `its keys would go to other partition streams, where they are applied out of order or never. The count was changed ` +
            `(\`writ partitions --set\`) while this process ran: restart it with partitions: ${recorded} (WRIT_PARTITIONS=${recorded}). ` +
            UNFINISHED_CHANGE,
          { cause: reply },
        );
      }
      if (resent) {
        // The connection dropped while the call was out and ioredis sent it
        // again: the first send may have run (its reply lost) and the second
        // been refused, the entry in the stream all the same.
        throw new WritConnectionError(
          `Redis refused the write to ${collection} (${msg}), but only after its connection dropped while the write ` +
            `was out and it was sent again: the first send may have added it. It may or may not have been accepted: ` +
            `${UNKNOWN_ADVICE}.`,
          { cause: reply, accepted: "unknown" },
        );
      }
      // Refused before the admission wrote anything.
      if (isReplyError(e) && msg.startsWith("OOM")) throw new RedisFullError(collection, msg, { cause: e });
      if (isReplyError(e)) {
        // A refusal of the admission call: nothing was added.
        throw new WritConnectionError(`Redis refused the write to ${collection}: ${msg}${this.clusterHint(msg)}`, {
          cause: e,
          accepted: "no",
        });
      }
      throw new WritConnectionError(
        `cannot write to Redis at ${redactUrls(this.config.redisUrl)}: ${msg}. The write may or may not have been ` +
          `accepted: ${UNKNOWN_ADVICE}.`,
        { cause: e, accepted: "unknown" },
      );
    }
    // An ack that came while the WAIT was out settles the write, whatever the
    // WAIT says (as the Rust client: src/client/mod.rs): the daemon read it
    // from the stream and applied it (or dead-lettered it), so "may or may
    // not have been accepted" would be wrong, and a caller told so would
    // write it again.
    if (replicas !== undefined && (replicas instanceof Error || replicas < this.config.minReplicasAcked) && !w.result) {
      // Not this process's pending write any more: the caller is told to retry it.
      this.forget(w);
      w.failedToCaller = true;
      w.settle({ outcome: "dead_lettered", version: "", entryId, reason: "too few replicas confirmed it" });
      throw this.replicaError(collection, entryId, replicas);
    }
    w.version = toSortable(entryId);
    w.entryId = entryId;
    w.admittedAt = Date.now();
    if (!w.result) {
      const list = this.overlay.get(k.id);
      if (!list) this.overlay.set(k.id, [w]);
      else {
        let i = list.length;
        while (i > 0 && (list[i - 1].version ?? "") > w.version) i--;
        list.splice(i, 0, w);
      }
    }
    return { collection, entryId, acked };
  }

  /**
   * How long a write waits for its admission: `writeTimeoutMs`, and with
   * replicas twice `replicaAckTimeoutMs` more (it may wait out the WAIT of
   * the batch before its own).
   */
  private admissionWaitMs(): number {
    const { writeTimeoutMs, minReplicasAcked, replicaAckTimeoutMs } = this.config;
    return writeTimeoutMs + (minReplicasAcked > 0 ? 2 * replicaAckTimeoutMs : 0);
  }

  /**
   * An admission, bounded: until `giveUpAt` (`performance.now()` ms,
   * {@link admissionWaitMs} after the write was made: a Redis that takes
   * commands and never answers, a connection ioredis keeps queueing on), and
   * by {@link close} (ioredis may never settle commands queued on a
   * connection that is closed while it reconnects). Either way the entry may
   * or may not have reached the stream, unless it was still queued: then it
   * is taken back, never sent. It gives up no earlier than `giveUpAt`: the
   * admission call's deadline (src/clock.ts) is set so that Redis refuses
   * the call (`EXPIRED`, nothing added) once it is past.
   */
  private async bounded<T>(admitted: Promise<T>, collection: string, giveUpAt: number, withdrawal?: Withdrawal): Promise<T> {
    let onClose!: () => void;
    const closed = new Promise<never>(
      (_, reject) =>
        (onClose = () => reject(new WritClosedError({ accepted: withdrawal?.withdraw() ? "no" : "unknown" }))),
    );
    this.closeWaiters.add(onClose);
    const ms = this.admissionWaitMs();
    try {
      return await until(
        Promise.race([admitted, closed]),
        giveUpAt,
        () =>
          // Still queued behind a call that is stuck: taken back, never sent.
          withdrawal?.withdraw()
            ? new WritConnectionError(
                `the write to ${collection} was NOT accepted: it waited ${ms} ms behind an earlier call of this process ` +
                  `(an admission, or the read of Redis's clock before one) that Redis at ${redactUrls(this.config.redisUrl)} ` +
                  `did not answer, and was taken back unsent. ` +
                  `Check Redis, then retry the write.`,
                { accepted: "no" },
              )
            : new WritConnectionError(
                `Redis at ${redactUrls(this.config.redisUrl)} did not answer the write to ${collection} within ${ms} ms; ` +
                  `it may or may not have been accepted. Check Redis; ${UNKNOWN_ADVICE}.`,
                { accepted: "unknown" },
              ),
      );
    } finally {
      this.closeWaiters.delete(onClose);
    }
  }

  /** Why a write failed after its entry reached the master: too few replicas confirmed it. */
  private replicaError(collection: string, entryId: string, replicas: number | Error): WritError {
    const { minReplicasAcked: n, replicaAckTimeoutMs: t } = this.config;
    const risk =
      `it may be lost if that master fails over before a replica has it, and it may still be applied: ` +
      `do not simply send it again (that would be a newer write, over any other process's since): ${UNKNOWN_ADVICE}.`;
    if (replicas instanceof Error) {
      return new WritConnectionError(
        `the write to ${collection} (entry ${entryId}) reached the Redis master, but waiting for ${n} replica(s) ` +
          `(minReplicasAcked) failed: ${errMessage(replicas)}; ${risk}`,
        { cause: replicas, accepted: "unknown" },
      );
    }
    const none =
      replicas === 0
        ? ` No replica confirmed it: minReplicasAcked needs a Redis master with replicas (INFO replication: ` +
          `connected_slaves); for a Redis without replicas set minReplicasAcked: 0 (WRIT_REDIS_MIN_REPLICAS_ACKED=0).`
        : "";
    return new WritTimeoutError(
      `the write to ${collection} (entry ${entryId}) reached the Redis master but not ${n} replica(s) within ${t} ms ` +
        `(minReplicasAcked ${n}, replicaAckTimeoutMs ${t}; ${replicas} confirmed): ${risk}${none}`,
      { accepted: "unknown" },
    );
  }

  /** For a reply that only a cluster sends, when not in cluster mode: what to set. */
  private clusterHint(msg: string): string {
    return !this.config.redisCluster && NOT_EXECUTED.test(msg)
      ? ` (a Redis Cluster reply: set redisCluster: true, WRIT_REDIS_CLUSTER=1)`
      : "";
  }

  /**
   * Writes according to the configured mode: `submit` returns once Redis
   * accepted the write; `ack` waits for the daemon's ack (a refusal throws
   * {@link RefusedWriteError}, a timeout {@link WritTimeoutError}).
   */
  async write(collection: string, key: Record<string, unknown>, op: Op, fields?: Record<string, unknown>): Promise<Ticket> {
    const t = await this.submit(collection, key, op, fields);
    if (this.config.mode === "ack") await this.waitAck(t);
    return t;
  }

  /**
   * Reports `t` to onError if the daemon refuses it (dead-letters it): for
   * an ack-mode write whose ack nobody waits for. (Submit mode reports every
   * refusal already.)
   */
  reportIfRefused(t: Ticket): void {
    if (this.config.mode === "submit") return;
    void t.acked.then(
      (r) => {
        if (notStored(r)) this.report(this.notStoredError(t.collection, r));
      },
      () => {},
    );
  }

  /** Hands `e` to `onError` (a refusal no caller is told of otherwise). */
  reportError(e: WritError): void {
    this.report(e);
  }

  /**
   * Waits for a write's ack; throws on refusal, or after `timeoutMs` a
   * {@link WritTimeoutError} that says whether writ still holds the write
   * (one look at its entry, within `readTimeoutMs`).
   */
  async waitAck(t: Ticket, timeoutMs = this.config.writeTimeoutMs): Promise<AckResult> {
    // Admitted, but a closed client cannot look whether Redis still holds it.
    if (this.closed) throw new WritClosedError({ accepted: "unknown" });
    // While someone waits for it, a refusal is thrown to them, not also
    // given to onError (deliver() checks `waiting`).
    this.waiting.set(t.acked, (this.waiting.get(t.acked) ?? 0) + 1);
    let onClose!: () => void;
    const closed = new Promise<never>((_, reject) => (onClose = () => reject(new WritClosedError({ accepted: "unknown" }))));
    this.closeWaiters.add(onClose);
    let r: AckResult;
    try {
      try {
        r = await withTimeout(Promise.race([t.acked, closed]), timeoutMs, () => new Overdue());
      } catch (e) {
        if (!(e instanceof Overdue)) throw e;
        const w = this.byAck.get(t.acked);
        const gone = await Promise.race([this.notHeldOf(w ? [w] : []), closed]);
        // An ack that came during the look wins (deliver() sets the result
        // before it settles; this turn decides, so no refusal is missed).
        if (w?.result) r = w.result;
        else {
          // If it is refused after all, or lost, onError says so (deliver).
          this.unheard.add(t.acked);
          throw this.ackTimeout(t, timeoutMs, w ? gone : undefined);
        }
      }
    } finally {
      this.closeWaiters.delete(onClose);
      const n = (this.waiting.get(t.acked) ?? 1) - 1;
      if (n > 0) this.waiting.set(t.acked, n);
      else this.waiting.delete(t.acked);
    }
    if (notStored(r)) throw this.notStoredError(t.collection, r);
    return r;
  }

  /**
   * Of admitted writes whose ack did not come in time, those Redis may no
   * longer hold (their entry gone from the stream and not pending in the
   * daemon's group: {@link AckReader.notHeld}), looked up once within
   * `readTimeoutMs`; a write still being admitted counts too. Undefined if
   * Redis could not be read in time. As the Rust client's ticket
   * (src/client/ticket.rs) and docs/protocol.md §5.
   */
  private async notHeldOf(writes: PendingWrite[]): Promise<PendingWrite[] | undefined> {
    const admitted = writes.filter((w) => w.entryId !== undefined);
    const unadmitted = writes.filter((w) => w.entryId === undefined);
    if (!admitted.length) return unadmitted;
    const ms = this.config.readTimeoutMs;
    try {
      const gone = await withTimeout(this.ackReader.notHeld(admitted), ms, () => new Error(`no answer within ${ms} ms`));
      return [...(gone as PendingWrite[]), ...unadmitted];
    } catch {
      return undefined;
    }
  }

  /**
   * The timeout of a wait for the ack of `t`, saying what the look at its
   * entry found: `gone` is empty (held: "yes"), holds it (its entry gone:
   * "unknown"), or is undefined (Redis not read in time: "unknown").
   */
  private ackTimeout(t: Ticket, timeoutMs: number, gone: PendingWrite[] | undefined): WritTimeoutError {
    const what = `no ack for the write ${t.entryId} to ${t.collection} within ${timeoutMs} ms`;
    const decide =
      `To decide: ${UNKNOWN_ADVICE} (if Redis lost it, ` +
      `onError gets a LostWriteError once MongoDB shows it was not applied, after lostWriteAfterMs).`;
    if (gone === undefined) {
      return new WritTimeoutError(
        `${what}, and Redis did not tell within readTimeoutMs (${this.config.readTimeoutMs} ms) whether it still holds ` +
          `the write's entry: it may or may not be applied. ${decide} Check Redis, \`writ status\` and that \`writ serve\` is running.`,
        { accepted: "unknown" },
      );
    }
    if (gone.length) {
      return new WritTimeoutError(
        `${what}, and its entry is no longer in the stream nor pending in the daemon's group (a Redis failover lost it, ` +
          `it was deleted, or retention trimmed it after the daemon applied it and the ack was lost): it may or may not ` +
          `be applied. ${decide}`,
        { accepted: "unknown" },
      );
    }
    return new WritTimeoutError(
      `${what}; it is still queued and will be applied when the daemon catches up (if it is refused instead, onError ` +
        `gets a RefusedWriteError; if Redis loses it, a LostWriteError). Check \`writ status\` and that \`writ serve\` is running.`,
      { accepted: "yes" },
    );
  }

  /** The error for a write that is not stored ({@link notStored}): refused by the daemon, or lost by Redis. */
  private notStoredError(collection: string, r: AckResult): RefusedWriteError | LostWriteError {
    if (r.outcome === "lost") return new LostWriteError(collection, r.entryId, r.reason ?? "");
    return new RefusedWriteError(collection, r.reason ?? "", r.entryId);
  }

  /**
   * Waits until every write this process made so far (those still waiting
   * for their ack at the call) is acked, and resolves to a
   * {@link FlushReport} of those writes: how many are stored, and which are
   * not (`notStored`). A write the daemon refused (`dead_lettered`: parked in
   * the dead-letter stream, see `writ dlq`) or that Redis lost (`lost`:
   * write it again) settles its ack too, so check `report.notStored` before
   * taking the writes as durable in MongoDB. Not in the report: a write whose
   * own `write`/`submit` call failed before or at its admission (refused,
   * or too few replicas confirmed it: its caller got that error; an ack-mode
   * `write` refused later by the daemon is in the report too), and a
   * write settled before the call, which it does not wait for (its refusal
   * or loss went to `onError`, or to the `write` or `waitAck` that waited).
   * Bounded: after `timeoutMs`, a {@link WritTimeoutError} that says, after
   * one look within `readTimeoutMs`, whether writ still holds the writes not
   * acked; a {@link close} meanwhile ends it with a {@link WritClosedError}.
   */
  async flush(timeoutMs = this.config.writeTimeoutMs): Promise<FlushReport> {
    if (this.closed) throw new WritClosedError();
    const writes = [...this.pending.values()];
    // A close() meanwhile ends the wait at once: no ack is read after it.
    let onClose!: () => void;
    const closed = new Promise<never>((_, reject) => (onClose = () => reject(new WritClosedError({ accepted: "unknown" }))));
    this.closeWaiters.add(onClose);
    const all = () => Promise.all(writes.map((w) => w.acked));
    try {
      return flushReport(writes, await withTimeout(Promise.race([all(), closed]), timeoutMs, () => new Overdue()));
    } catch (e) {
      if (!(e instanceof Overdue)) throw e;
      const waiting = () => writes.filter((w) => this.pending.get(w.req) === w);
      const gone = await Promise.race([this.notHeldOf(waiting()), closed]);
      // Acked during the look: done (a write no longer pending has its ack
      // settled: forget() and settle() go together).
      const left = waiting();
      if (!left.length) return flushReport(writes, await all());
      const what = `${left.length} writes not acked within ${timeoutMs} ms`;
      if (gone === undefined) {
        throw new WritTimeoutError(
          `${what}, and Redis did not tell within readTimeoutMs (${this.config.readTimeoutMs} ms) whether it still holds ` +
            `their entries: they may or may not be applied. Once Redis answers, flush() again; check Redis and \`writ status\``,
          { accepted: "unknown" },
        );
      }
      const stillLeft = new Set(left);
      const lost = gone.filter((w) => stillLeft.has(w)).length;
      if (lost) {
        throw new WritTimeoutError(
          `${what}; ${lost} of them are no longer in their streams nor pending in the daemon's group (a Redis failover ` +
            `lost them, they were deleted, or retention trimmed them after the daemon applied them and the acks were ` +
            `lost; or still being admitted): those may or may not be applied, the others are still queued. Once Redis ` +
            `answers, call sync() (a fresh barrier: it waits for every entry in the streams then), read those keys and ` +
            `write again what they do not hold (onError gets a LostWriteError for a write ` +
            `Redis lost, after lostWriteAfterMs); check \`writ status\``,
          { accepted: "unknown" },
        );
      }
      throw new WritTimeoutError(`${what}; they are still queued; check \`writ status\``, { accepted: "yes" });
    } finally {
      this.closeWaiters.delete(onClose);
    }
  }

  /** Number of writes of this process still waiting for their ack. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Waits until it is this write's turn (every write that began waiting
   * before it has gone into the admitter's queue, or failed), this client is
   * connected, and there is room under maxPending; all within
   * writeTimeoutMs. Resolves to the release the caller calls once its write
   * is in the queue (idempotent); on failure, releases by itself, once those
   * ahead have gone, so that no later write overtakes them.
   */
  private async waitTurn(): Promise<() => void> {
    const deadline = Date.now() + this.config.writeTimeoutMs;
    const ahead = this.turnTail;
    let done!: () => void;
    this.turnTail = new Promise<void>((r) => (done = r));
    this.turnsWaiting++;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.turnsWaiting--;
      done();
    };
    try {
      await withTimeout(
        ahead,
        Math.max(0, deadline - Date.now()),
        () =>
          new PendingFullError(
            `writes of this process called before this one have waited writeTimeoutMs (${this.config.writeTimeoutMs} ms) ` +
              `for room under maxPending (${this.config.maxPending}) or for Redis; the daemon is behind or down: check \`writ status\``,
          ),
      );
      if (this.closed) throw new WritClosedError();
      if (!this.connected) await this.ready();
      await this.waitForRoom(deadline);
      return release;
    } catch (e) {
      void ahead.then(release);
      throw e;
    }
  }

  private async waitForRoom(deadline: number): Promise<void> {
    if (this.pending.size < this.config.maxPending) return;
    while (this.pending.size >= this.config.maxPending && !this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new PendingFullError(
          `${this.pending.size} writes of this process are waiting for their ack (maxPending ${this.config.maxPending}) ` +
            `and none was acked within ${this.config.writeTimeoutMs} ms; the daemon is behind or down: check \`writ status\``,
        );
      }
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(t);
          resolve();
        };
        // On its timer the waiter leaves the list, which stays as long as
        // the number of writes waiting, however long the daemon is away.
        const t = setTimeout(() => {
          const i = this.roomWaiters.indexOf(wake);
          if (i >= 0) this.roomWaiters.splice(i, 1);
          resolve();
        }, Math.min(left, 200));
        t.unref?.();
        this.roomWaiters.push(wake);
      });
    }
  }

  /** Hands `e` to `onError`; an `onError` that throws must not stop the ack loop. */
  private report(e: WritError): void {
    try {
      this.config.onError(e);
    } catch {
      // The caller's handler failed; nothing more can be done with `e` here.
    }
  }

  /** Drops a pending write (refused by Redis, or acked). */
  private forget(w: PendingWrite): void {
    this.pending.delete(w.req);
    if (this.roomWaiters.length && this.pending.size < this.config.maxPending) {
      const ws = this.roomWaiters;
      this.roomWaiters = [];
      for (const f of ws) f();
    }
  }

  // ------------------------------------------------------------------- acks

  /** Settles a pending write with its ack, read or swept by the {@link AckReader} (src/acks.ts). */
  private deliver(req: string, r: AckResult): void {
    const w = this.pending.get(req);
    if (!w) return;
    w.result = r;
    this.forget(w);
    const list = this.overlay.get(w.key.id);
    if (list) {
      let keep: PendingWrite[];
      if (notStored(r)) {
        keep = list.filter((x) => x !== w);
      } else {
        // Committed at r.version or newer: every pending write of the key up to it is readable from the cache.
        let upTo: string | undefined;
        try {
          upTo = toSortable(r.version);
        } catch {
          upTo = w.version;
        }
        keep = list.filter((x) => x !== w && !(x.version !== undefined && upTo !== undefined && x.version <= upTo));
      }
      if (keep.length) this.overlay.set(w.key.id, keep);
      else this.overlay.delete(w.key.id);
    }
    w.settle(r);
    // Submit mode, or an ack-mode wait that timed out saying the write would
    // be applied and no other wait for it in progress: nobody else hears of
    // the refusal. (settle() has resolved the ack, but a waiter's code runs
    // only after this turn, so a waiter still counts in `waiting`.)
    const heard = this.waiting.has(w.acked);
    if (notStored(r) && (this.config.mode === "submit" || (this.unheard.has(w.acked) && !heard))) {
      this.report(this.notStoredError(w.key.spec.name, r));
    }
  }

  // ---------------------------------------------------------------- reading

  /** Drops overlay entries the cache already holds (version ≤ `cached`). */
  private pruneOverlay(id: string, cached: string): PendingWrite[] | undefined {
    const list = this.overlay.get(id);
    if (!list) return undefined;
    const keep = list.filter((w) => !(w.version !== undefined && w.version <= cached));
    if (keep.length === list.length) return list;
    if (keep.length) this.overlay.set(id, keep);
    else this.overlay.delete(id);
    return keep.length ? keep : undefined;
  }

  /**
   * What the key holds once this process's pending writes `list` (newer than
   * `stored`, in order) are applied over it, as the daemon applies them
   * (src/apply/document.rs): a `replace` put sets its fields (the `fields`
   * layout keeps the stored fields it does not send, and drops `removed`
   * unless it sends it), an `insert_once` put only creates a missing key (a
   * hard-deleted key's tombstone counts as missing: the daemon writes over it
   * what the insert would have), a remove sets `removed: true`.
   */
  private fromOverlay(k: ResolvedKey, stored: StoredRecord | null, list: PendingWrite[]): StoredRecord {
    const base: Document = keyFilter(k.spec, k.values);
    const fieldsLayout = (k.spec.layout ?? "payload") === "fields";
    // Never changed in place: each write makes a new object.
    let doc: Document | null = stored?.exists ? stored.doc : null;
    let changed = false;
    for (const w of list) {
      if (w.op === "remove") {
        doc = { ...(doc ?? base), removed: true };
        changed = true;
        continue;
      }
      // The first write wins. A hard delete's tombstone (`stored` that does
      // not exist) is no write: the key is gone, and the put creates it
      // again, as the daemon does (docs/protocol.md, `insert_once`).
      if (k.spec.mode === "insert_once" && doc) continue;
      changed = true;
      const fields = deserialize(w.doc!);
      if (fieldsLayout) {
        doc = { ...(doc ?? base), ...fields };
        if (!("removed" in fields)) delete doc.removed;
      } else {
        doc = { ...(doc ?? base), payload: fields, removed: false };
      }
    }
    // Puts of a key that exists, insert-once: what is stored stays.
    if (!changed && stored) return stored;
    const version = list[list.length - 1].version!;
    if (!doc) return { version, doc: null, exists: false, live: false, source: "overlay" };
    return { version, doc, exists: true, live: doc.removed !== true, source: "overlay" };
  }

  /** {@link fromCached}, or null when the entry's document cannot be read. */
  private readableCached(v: Buffer, doc: Buffer | null, gone: Buffer | null): StoredRecord | null {
    try {
      return this.fromCached(v, doc, gone);
    } catch {
      return null;
    }
  }

  private fromCached(v: Buffer, doc: Buffer | null, gone: Buffer | null): StoredRecord {
    const version = v.toString("latin1");
    if (gone || !doc) return { version, doc: null, exists: false, live: false, source: "cache" };
    const d = deserialize(doc);
    return { version, doc: d, exists: true, live: d.removed !== true, source: "cache" };
  }

  /**
   * Combines what the store holds (cache or MongoDB) with this process's
   * pending writes of the key, as they were before the store was read (an ack
   * arriving meanwhile must not make the read go back to the older stored version).
   */
  private merge(k: ResolvedKey, stored: StoredRecord | null, snapshot: PendingWrite[] | undefined): StoredRecord | null {
    if (stored) this.pruneOverlay(k.id, stored.version);
    // A write refused while the read was out (its dead letter or loss settled
    // after the snapshot) is left out: it will never be stored.
    const newer = snapshot?.filter(
      (w) => w.version !== undefined && !(w.result && notStored(w.result)) && (!stored || w.version > stored.version),
    );
    if (!newer || !newer.length) return stored;
    return this.fromOverlay(k, stored, newer);
  }

  private docVersion(doc: Document): string {
    const w = doc._writ;
    const v = w && typeof w === "object" ? (w as Document).v : undefined;
    return isSortable(v) ? v : ZERO_VERSION;
  }

  /** Stores a document read from MongoDB in the cache unless the cache holds a newer version. */
  private async casCache(k: ResolvedKey, version: string, raw: Buffer): Promise<void> {
    try {
      await this.casCacheOrThrow(k, version, raw);
    } catch {
      // The cache is an optimisation; a failed fill leaves a miss.
    }
  }

  /** {@link casCache}, failing when Redis refuses or fails the fill. */
  private async casCacheOrThrow(k: ResolvedKey, version: string, raw: Buffer): Promise<void> {
    await this.evalScript(this.casSha, CACHE_CAS_LUA, [this.names.cache(k.partition, k.spec.name, k.canonical)], [version, raw]);
  }

  /**
   * A Redis read, bounded by readTimeoutMs: a Redis that stops answering (a
   * pause, a stall), or an ioredis Cluster with no node reachable (it holds
   * commands until one is), must not hang a read or a list for good.
   */
  private redisRead<T>(p: Promise<T>, what: string): Promise<T> {
    const ms = this.config.readTimeoutMs;
    return withTimeout(
      p,
      ms,
      () => new WritConnectionError(`Redis at ${redactUrls(this.config.redisUrl)} did not answer ${what} within readTimeoutMs (${ms} ms); check Redis`),
    );
  }

  private hmget(keys: ResolvedKey[]): Promise<Hmget[]> {
    return this.redisRead(this.hmgetUnbounded(keys), "a cache read");
  }

  /**
   * The cache entries of `keys` (HMGET v doc gone each), and the partition count their
   * partitions record, checked ({@link checkReadCount}). One server: one auto-pipelined round
   * trip. Cluster: one pipeline per slot, all sent at once; each pipeline's commands share one
   * slot, so a MOVED or ASK redirects it whole (ioredis retries a read-only pipeline whose
   * commands all got the same redirection).
   */
  private async hmgetUnbounded(keys: ResolvedKey[]): Promise<Hmget[]> {
    const names = keys.map((k) => this.names.cache(k.partition, k.spec.name, k.canonical));
    // The partition count each of the keys' partitions records, read in the same round trip
    // (a meta hash shares its partition's hash tag, so its slot, with the partition's entries).
    const parts = [...new Set(keys.map((k) => k.partition))];
    const metas = parts.map((p) => this.names.meta(p));
    let cached: Hmget[];
    let counts: (string | null)[];
    try {
      if (!(this.redis instanceof Cluster) || names.length === 1) {
        [cached, counts] = await Promise.all([
          Promise.all(names.map((n) => (this.redis.hmgetBuffer(n, "v", "doc", "gone") as Promise<Hmget>).catch(foreignAsMiss))),
          Promise.all(metas.map((m) => this.redis.hget(m, "partitions").catch(wrongTypeAsNone))),
        ]);
      } else {
        [cached, counts] = await this.hmgetBySlot(names, metas);
      }
    } catch (e) {
      throw new WritConnectionError(
        `cannot read the writ cache in Redis at ${redactUrls(this.config.redisUrl)}: ${errMessage(e)}${this.clusterHint(errMessage(e))}`,
        { cause: e },
      );
    }
    this.checkReadCount(keys[0].spec.name, parts, counts);
    return cached;
  }

  /** {@link hmgetUnbounded} on a cluster: one pipeline per slot, all sent at once. */
  private async hmgetBySlot(names: string[], metas: string[]): Promise<[Hmget[], (string | null)[]]> {
    const all = [...names, ...metas];
    const bySlot = new Map<number, number[]>();
    all.forEach((n, i) => {
      const slot = calculateSlot(n);
      const at = bySlot.get(slot);
      if (at) at.push(i);
      else bySlot.set(slot, [i]);
    });
    const out: unknown[] = new Array(all.length);
    await Promise.all(
      [...bySlot.values()].map(async (at) => {
        const p = this.redis.pipeline();
        for (const i of at) {
          if (i < names.length) p.hmgetBuffer(all[i], "v", "doc", "gone");
          else p.hget(all[i], "partitions");
        }
        const res = (await p.exec()) ?? [];
        at.forEach((i, j) => {
          const [err, v] = res[j] ?? [new Error("no reply"), null];
          if (i < names.length) out[i] = err ? foreignAsMiss(err) : (v as Hmget);
          else out[i] = err ? wrongTypeAsNone(err) : (v as string | null);
        });
      }),
    );
    return [out.slice(0, names.length) as Hmget[], out.slice(names.length) as (string | null)[]];
  }

  /**
   * Refuses a read when one of its keys' partitions records another partition count than this
   * client's (`counts[i]` is what partition `parts[i]`'s meta hash records). A reader left running
   * on the old count after `writ partitions --set` would read cache entries named by the old
   * count, which no daemon updates any more, and answer a value older than an acknowledged write.
   * A partition with no count recorded (or one that is not a positive number) is not checked, as
   * at admission.
   */
  private checkReadCount(collection: string, parts: number[], counts: (string | null)[]): void {
    const configured = this.config.partitions;
    parts.forEach((p, i) => {
      const recorded = recordedCount(counts[i]);
      if (recorded === undefined || recorded === configured) return;
      throw new WritConfigError(
        `the read of ${collection} was refused: namespace "${this.config.namespace}" now records ${recorded} partitions ` +
          `(partition ${p}'s meta hash) and this client is configured with partitions = ${configured}; it would read ` +
          `cache entries no daemon updates any more, older than acknowledged writes. The count was changed ` +
          `(\`writ partitions --set\`) while this process ran: restart it with partitions: ${recorded} (WRIT_PARTITIONS=${recorded}). ` +
          UNFINISHED_CHANGE,
      );
    });
  }

  /**
   * Reads one key: the newest of the cache (read through to MongoDB on a miss)
   * and this process's pending writes. Null if the key was never written (or
   * hard-deleted). Check `live` for soft removal.
   */
  async readRecord(collection: string, key: Record<string, unknown>): Promise<StoredRecord | null> {
    const k = this.resolveKey(collection, key);
    return (await this.readRecords([k]))[0];
  }

  /** Like {@link readRecord} for many keys of one collection in one round trip (plus one MongoDB query for misses). */
  async readMany(collection: string, keys: Record<string, unknown>[]): Promise<(StoredRecord | null)[]> {
    return this.readRecords(keys.map((key) => this.resolveKey(collection, key)));
  }

  /** The live document of a key, or null if absent or soft-removed. */
  async read(collection: string, key: Record<string, unknown>): Promise<Document | null> {
    const r = await this.readRecord(collection, key);
    return r && r.live ? r.doc : null;
  }

  private async readRecords(keys: ResolvedKey[]): Promise<(StoredRecord | null)[]> {
    if (this.closed) throw new WritClosedError();
    if (!keys.length) return [];
    if (!this.connected) await this.ready();
    const snapshot = keys.map((k) => this.overlay.get(k.id)?.slice());
    const cached = await this.hmget(keys);
    const out: (StoredRecord | null)[] = new Array(keys.length).fill(null);
    const misses: number[] = [];
    const skipped: number[] = [];
    cached.forEach(([v, doc, gone], i) => {
      // A document that is not BSON (another program's value, a truncated write) is read like
      // another program's value at the entry: from MongoDB, which holds the key's value.
      const hit = v ? this.readableCached(v, doc, gone) : null;
      if (hit) out[i] = hit;
      else if (v) misses.push(i);
      // A replace key with a pending write of this process and no cache entry: every write the
      // daemon applies also fills the cache, so MongoDB holds nothing newer than the pending
      // write and the overlay answers without a MongoDB read (the common case: a new key read
      // right after its first write). Not so when another program's value took the entry's
      // place: the daemon may have applied a newer write of another process before that, so
      // such a miss reads MongoDB. (An entry Redis evicted or someone deleted is the same case,
      // and cannot be seen: run Redis without eviction; docs/operations.md.)
      else if (cached[i] === FOREIGN || keys[i].spec.mode === "insert_once" || !snapshot[i]?.some((w) => w.version !== undefined))
        misses.push(i);
      else skipped.push(i);
    });
    await this.readThrough(keys, misses, out);
    // A skipped key whose pending writes were all refused while the read was out (dead letters,
    // lost writes): the overlay no longer answers for it, and MongoDB may hold it. Asked until
    // none is left (a refusal can land while MongoDB is asked), each key once.
    const unanswered = (i: number) => !snapshot[i]!.some((w) => w.version !== undefined && !(w.result && notStored(w.result)));
    for (let left = skipped; ; ) {
      const ask = left.filter(unanswered);
      if (!ask.length) break;
      left = left.filter((i) => !ask.includes(i));
      await this.readThrough(keys, ask, out);
    }
    return keys.map((k, i) => this.merge(k, out[i], snapshot[i]));
  }

  /**
   * Reads keys `at` (indexes into `keys`, one collection) from MongoDB into
   * `out`, and fills the cache with what it finds (compare-and-set).
   */
  private async readThrough(keys: ResolvedKey[], at: number[], out: (StoredRecord | null)[]): Promise<void> {
    if (!at.length) return;
    // The default read concern (`local`), not the lost-ack sweep's majority
    // (storedVersions): on a newly elected primary, a majority read can
    // briefly answer a version older than a write already acked to its
    // writer, which would break read-after-write; a local read on the
    // primary never does.
    const found = await this.findRaw(keys[0].spec, at.map((i) => keys[i]));
    const fills: Promise<void>[] = [];
    for (const i of at) {
      const raw = found.get(keys[i].canonical);
      if (!raw) continue;
      const doc = deserialize(raw);
      const version = this.docVersion(doc);
      // A hard delete's versioned tombstone: gone, in the cache too (as the daemon writes it).
      if (doc._writ?.deleted === true) {
        fills.push(this.casCache(keys[i], version, Buffer.alloc(0)));
        out[i] = { version, doc: null, exists: false, live: false, source: "mongodb" };
        continue;
      }
      fills.push(this.casCache(keys[i], version, raw));
      out[i] = { version, doc, exists: true, live: doc.removed !== true, source: "mongodb" };
    }
    await this.redisRead(Promise.all(fills), "a cache fill");
  }

  /**
   * The version MongoDB holds of each write's key (`ZERO_VERSION` for none),
   * by `req`, for the lost-ack sweep (src/acks.ts): at or past the write's
   * own only if a majority holds it, and older only if the primary's is too
   * (a write only the primary holds is left out, for a later sweep); two
   * queries (majority, local) per collection and 100 keys. Each document the
   * primary holds also goes to the cache (compare-and-set,
   * never backwards), as a read-through fills it: a write the sweep settles
   * applied from MongoDB may have lost its cache update with its entry (a
   * failover), and no read may then answer the older version the cache holds.
   * So a write whose key's fill failed (or did not answer within
   * readTimeoutMs) and that MongoDB holds is left out, for a later sweep:
   * settled applied, it would let the cache answer older than it. `onError`
   * hears of the first such failure.
   */
  private async storedVersions(writes: AwaitedWrite[]): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const ws = writes.flatMap((a) => this.pending.get(a.req) ?? []);
    for (const [spec, group] of groupBy(ws, (w) => w.key.spec)) {
      const keys = [...new Map(group.map((w) => [w.key.id, w.key])).values()];
      // By key: the version a majority holds, and the one the primary holds.
      const byKey = new Map<string, { confirmed: string; local: string }>();
      const filled = new Set<string>();
      let failure: unknown;
      for (let i = 0; i < keys.length; i += 100) {
        const chunk = keys.slice(i, i + 100);
        // Read twice. At read concern majority first: on a replica set,
        // `local` on the primary can return a version only the primary holds
        // (a daemon write whose `w: majority` has not completed), which a
        // MongoDB failover can roll back; settling a write applied from that
        // would call it durable when it may be lost. This client does not
        // know the daemon's mongodb.write_concern, so it always asks at
        // majority. Then at `local`, as read-through reads: what the cache is
        // filled with (on a newly elected primary a majority read can be
        // older than a write already acked), and a write is settled lost only
        // if the primary lacks it too (a majority that cannot advance, with
        // write_concern = 1, must not make an applied write read as lost). A
        // write only the primary holds is left for a later sweep.
        const confirmed = await this.findRaw(spec, chunk, undefined, MAJORITY);
        const found = await this.findRaw(spec, chunk);
        const fills: Promise<void>[] = [];
        for (const k of chunk) {
          const majority = confirmed.get(k.canonical);
          const raw = found.get(k.canonical);
          const doc = raw && deserialize(raw);
          const local = doc ? this.docVersion(doc) : ZERO_VERSION;
          byKey.set(k.id, { confirmed: majority ? this.docVersion(deserialize(majority)) : ZERO_VERSION, local });
          if (!raw || !doc) {
            filled.add(k.id); // nothing to fill
            continue;
          }
          fills.push(
            this.casCacheOrThrow(k, local, doc._writ?.deleted === true ? Buffer.alloc(0) : raw).then(
              () => void filled.add(k.id),
              (e) => void (failure ??= e),
            ),
          );
        }
        await this.redisRead(Promise.all(fills), "a cache fill").catch((e) => void (failure ??= e));
      }
      for (const w of group) {
        const { confirmed, local } = byKey.get(w.key.id)!;
        if (w.version === undefined || local < w.version) out.set(w.req, local);
        else if (confirmed >= w.version && filled.has(w.key.id)) out.set(w.req, confirmed);
        // Else only the primary holds it, or its fill failed: a later sweep.
      }
      if (failure !== undefined) this.reportFillFailure(failure);
    }
    return out;
  }

  /**
   * Tells `onError` (once per client: src/clock.ts calls it once) that this
   * client's Redis user may not run `TIME` (`NOTIME`, `e`), so its admission
   * calls go without a deadline.
   */
  private reportNoTime(e: unknown): void {
    if (this.closed) return;
    this.report(
      new WritConnectionError(
        `this client's Redis user may not run TIME (${errMessage(e)}): an ACL line set up before admission deadlines. ` +
          `Writes still work, but their admission calls go without a deadline, so a write reported as "may or may not ` +
          `have been accepted" may still land later, over what its caller wrote since. Add +time to the writer's ACL ` +
          `user (the writ repository's docs/operations.md, "Redis ACL users"). Reported once per client.`,
        { cause: e },
      ),
    );
  }

  /**
   * Tells `onError`, once per client, that the cache fill of writes the
   * lost-ack sweep found in MongoDB failed, so they stay pending.
   */
  private reportFillFailure(e: unknown): void {
    if (this.fillErrorReported || this.closed) return;
    this.fillErrorReported = true;
    this.report(
      new WritConnectionError(
        `writes of this client whose acks were lost are in MongoDB, but Redis refused or did not answer their cache ` +
          `fill: ${errMessage(e)}. They stay pending (flush() waits, each holds a maxPending slot) until the cache holds ` +
          `them, so that no read answers an older cached value. With a Redis ACL user, the writer needs write access ` +
          `to ${this.names.namespace}:{p*}:c:* (docs/operations.md, "Redis ACL users"). Reported once per client.`,
        { cause: e },
      ),
    );
  }

  /**
   * Finds the stored documents of `keys` (one collection) with one query; raw
   * BSON by canonical key. With `fields`, only those and the key fields.
   * With `read`, at its read concern (the lost-ack sweep's majority), else
   * at the driver's default (`local`).
   */
  private async findRaw(
    spec: CollectionSpec,
    keys: ResolvedKey[],
    fields?: Record<string, 1>,
    read: { readConcern?: ReadConcernLike } = {},
  ): Promise<Map<string, Buffer>> {
    for (const k of keys) {
      if (k.spec !== spec) throw new WritConfigError("readMany reads keys of one collection");
    }
    let filter: MongoDocument;
    if (keys.length === 1) {
      filter = keyFilter(spec, keys[0].values);
    } else {
      // Fields equal in every key go in as they are; if only one field varies, one $in, else $or.
      const varying = spec.key.filter((_, fi) => keys.some((k) => k.values[fi] !== keys[0].values[fi]));
      if (varying.length === 1) {
        const fi = spec.key.indexOf(varying[0]);
        filter = {};
        spec.key.forEach((f, j) => {
          if (j !== fi) filter[f] = keys[0].values[j];
        });
        filter[varying[0]] = { $in: [...new Set(keys.map((k) => k.values[fi]))] };
      } else {
        filter = { $or: keys.map((k) => keyFilter(spec, k.values)) };
      }
    }
    const projection = fields && { ...fields, ...Object.fromEntries(spec.key.map((f) => [f, 1])) };
    const maxTimeMS = this.config.readTimeoutMs;
    const docs = await this.mongoCall(`find in ${spec.name}`, async (db) => {
      const c = db.collection(spec.name);
      if (keys.length === 1) {
        const one = (await c.findOne(filter, { raw: true, projection, maxTimeMS, ...read })) as unknown as Buffer | null;
        return one ? [one] : [];
      }
      return (await c.find(filter, { raw: true, projection, maxTimeMS, ...read }).toArray()) as unknown as Buffer[];
    });
    const byCanonical = new Map<string, Buffer>();
    for (const raw of docs) {
      const d = deserialize(raw);
      try {
        byCanonical.set(canonicalOf(keyValues(spec, Object.fromEntries(spec.key.map((f) => [f, d[f]])))), raw);
      } catch {
        // A document whose key fields do not form a valid key cannot be one we asked for.
      }
    }
    return byCanonical;
  }

  /**
   * Live documents whose key starts with `prefix` (the first key fields, in
   * order), sorted by the remaining key fields ascending. First waits (bounded
   * by `readTimeoutMs`) for this process's own pending writes under the prefix.
   */
  async list(collection: string, prefix: Record<string, unknown>): Promise<Document[]> {
    if (this.closed) throw new WritClosedError();
    const spec = this.spec(collection);
    const names = Object.keys(prefix);
    const fixed = spec.key.slice(0, names.length);
    if (names.some((n) => !fixed.includes(n))) {
      throw new WritKeyError(
        `a list prefix of ${collection} must hold the first key fields in order (${spec.key.join(", ")}); got ${names.join(", ")}`,
      );
    }
    const prefixSpec: CollectionSpec = { ...spec, key: fixed };
    const values = keyValues(prefixSpec, prefix);
    const own = [...this.pending.values()].filter(
      (w) => w.key.spec.name === spec.name && values.every((v, i) => w.key.values[i] === v),
    );
    const wait = own.length ? await this.unsettled(own) : [];
    if (wait.length) {
      await withTimeout(
        Promise.all([...groupBy(wait, (w) => w.key.id).values()].map((g) => newestCommitted(g))),
        this.config.readTimeoutMs,
        () =>
          new WritTimeoutError(
            `listing ${collection} waits for ${wait.length} pending writes of this process, not acked within ` +
              `${this.config.readTimeoutMs} ms; check \`writ status\` and that \`writ serve\` is running`,
          ),
      );
    }
    const filter: MongoDocument = { ...keyFilter(prefixSpec, values), removed: { $ne: true } };
    const sort: Record<string, 1> = {};
    for (const f of spec.key.slice(names.length)) sort[f] = 1;
    return this.mongoCall(`find in ${collection}`, (db) =>
      db.collection(collection).find(filter, { sort, maxTimeMS: this.config.readTimeoutMs }).toArray(),
    ) as Promise<Document[]>;
  }

  /**
   * Of this process's pending `writes`, those a list must still wait for. A
   * key whose cache entry is at least as new as its newest pending write is
   * settled without its acks (protocol.md §6): an ack can be lost (a Redis
   * failover, a trimmed ack stream), and one lost ack must not make every
   * later list of the prefix time out. Those writes stay pending until their
   * ack comes; only the list stops waiting for them.
   */
  private async unsettled(writes: PendingWrite[]): Promise<PendingWrite[]> {
    const groups = [...groupBy(writes, (w) => w.key.id).values()];
    const cached = await this.hmget(groups.map((g) => g[0].key));
    return groups.flatMap((g, i) => {
      const v = cached[i][0]?.toString("latin1");
      // A write still being admitted has no version yet: it is waited for.
      const settled = v !== undefined && g.every((w) => w.version !== undefined && w.version <= v);
      return settled ? [] : g;
    });
  }

  // -------------------------------------------------------------------- sync

  /**
   * Waits until the daemon has applied every entry that was in the partition
   * streams when it was called (docs/protocol.md §6a), at most
   * `syncTimeoutMs`: MongoDB and the cache hold all of it then, so a read
   * that follows sees it, whichever process wrote it.
   *
   * Every call takes a fresh barrier (the streams' current ends), as the Rust
   * client's `Writ::sync` does: this is the call to make before reading the
   * key of a write whose error said `accepted: "unknown"` (its entry may have
   * landed, unapplied yet, and this process no longer waits for it).
   *
   * With `{ once: true }` it is the start-up sync (what the adapters'
   * `waitForInit` runs): it waits only until one sync of this client has
   * succeeded, so every write accepted before the process started is
   * applied. Concurrent first callers share one barrier; a success is
   * remembered, so later calls return at once; a failure is not, so the next
   * call runs it again. Do not use it to settle an `"unknown"` write.
   */
  sync(options: { once?: boolean } = {}): Promise<void> {
    if (!options.once) {
      const fresh = this.runSync();
      // A later barrier is as good as the start-up one.
      fresh.then(
        () => {
          this.syncPromise ??= fresh;
        },
        () => {},
      );
      return fresh;
    }
    if (!this.syncPromise) {
      this.syncPromise = this.runSync().catch((e) => {
        this.syncPromise = undefined;
        throw e;
      });
    }
    return this.syncPromise;
  }

  private async runSync(): Promise<void> {
    await this.ready();
    const deadline = Date.now() + this.config.syncTimeoutMs;
    const parts = Array.from({ length: this.config.partitions }, (_, p) => p);
    // Each partition checks the deadline between its reads (and says why it
    // gave up); a read Redis does not answer would not get there: 1 s later,
    // this bound does.
    await withTimeout(
      Promise.all(parts.map((p) => this.syncPartition(p, deadline))),
      this.config.syncTimeoutMs + 1000,
      () =>
        new WritTimeoutError(
          `Redis at ${redactUrls(this.config.redisUrl)} did not answer the reads of the sync (the daemon's progress) ` +
            `within syncTimeoutMs (${this.config.syncTimeoutMs} ms) and 1 s more; check Redis`,
        ),
    );
  }

  private async syncPartition(p: number, deadline: number): Promise<void> {
    const stream = this.names.stream(p);
    const group = this.names.group;
    let last: string;
    try {
      const r = (await this.redis.xrevrange(stream, "+", "-", "COUNT", 1)) as [string, string[]][];
      if (!r.length) return;
      last = r[0][0];
    } catch (e) {
      throw new WritConnectionError(`cannot read ${stream}: ${errMessage(e)}`, { cause: e });
    }
    for (;;) {
      if (this.closed) throw new WritClosedError();
      let done = false;
      try {
        const delivered = await lastDelivered(this.redis, stream, group);
        if (delivered !== undefined && compareStreamIds(delivered, last) >= 0) {
          const pend = (await this.redis.xpending(stream, group, "-", last, 1)) as unknown[];
          done = pend.length === 0;
        }
      } catch (e) {
        if (!isReplyError(e)) throw new WritConnectionError(`cannot read ${stream}: ${errMessage(e)}`, { cause: e });
        // No such stream any more (deleted): nothing left to wait for.
        if (/no such key/i.test(errMessage(e))) return;
      }
      if (done) return;
      if (Date.now() >= deadline) {
        throw new WritTimeoutError(
          `the writ daemon has not applied earlier writes of partition ${p} (up to ${last}) within ` +
            `${this.config.syncTimeoutMs} ms, so reads could miss state written before this process started. ` +
            `Check that \`writ serve\` is running and \`writ status\` (namespace ${this.config.namespace}).`,
        );
      }
      await sleep(10);
    }
  }

  // ------------------------------------------------------------------- close

  /** Closes the connections. Pending writes stay queued in Redis; their acks are no longer read. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const wake of this.closeWaiters) wake();
    this.closeWaiters.clear();
    for (const f of this.roomWaiters) f();
    this.roomWaiters = [];
    const quit = async (r: RedisConn | undefined) => {
      if (!r) return;
      // QUIT only on a live connection: on one that is reconnecting it would
      // wait in the offline queue for a server that may never come back.
      if (r.status !== "ready") {
        r.disconnect();
        return;
      }
      try {
        await withTimeout(r.quit(), CLOSE_WAIT_MS, () => new Error("QUIT timed out"));
      } catch {
        r.disconnect();
      }
    };
    // The ack connection may sit in a blocking XREAD: cut it.
    this.ackReader.disconnect();
    await Promise.all([quit(this.redis), quit(this.replicated.connection)]);
    // The loop ends at its next check of `closed`; never wait long for it.
    await withTimeout(this.ackReader.loop ?? Promise.resolve(), CLOSE_WAIT_MS, () => new Error("ack loop")).catch(() => {});
    if (this.mongo) await this.mongo.close().catch(() => {});
  }
}

export type { Document, Key };

/**
 * Refuses a direct connection (`directConnection=true`) to a replica-set member that is not the
 * primary: the driver sends every read to the one server it was given, whatever the read
 * preference, and a secondary behind the primary would answer (and fill the cache with) a version
 * older than an acknowledged write. On a replica-set connection the command goes to the primary.
 * Asked (`hello`) once, at the client's first MongoDB use, before the driver's monitoring may
 * have seen the server: a {@link WritConfigError}, as the URI names a server that is not the
 * primary. After it, {@link PrimaryWatch} follows the server's role: a primary that steps down
 * later has the client's reads refused (a retryable {@link WritConnectionError}) until it is the
 * primary again (the Rust client checks each read's server selection).
 */
export async function refuseSecondary(c: MongoClient): Promise<void> {
  const admin = c.db("admin");
  // `hello` from MongoDB 4.4.2 (and 4.2.10); before it, `isMaster` says the same as `ismaster`.
  const hello: Document = await admin.command({ hello: 1 }).catch(async (e: unknown) => {
    if ((e as { code?: number }).code !== 59) throw e; // CommandNotFound
    const legacy = await admin.command({ isMaster: 1 });
    return { ...legacy, isWritablePrimary: legacy.ismaster };
  });
  if (hello.isWritablePrimary === false && hello.msg !== "isdbgrid") {
    throw new WritConfigError(
      `the MongoDB server reached (${String(hello.me ?? "?")}) is not the primary${hello.setName ? ` of replica set ${String(hello.setName)}` : ""}: ` +
        "writ reads only a primary (a secondary can be behind an acknowledged write); connect to the replica set " +
        "(without directConnection=true) or to its primary in WRIT_MONGODB_URI / mongodbUri",
    );
  }
}

/**
 * Whether `c` connects directly (`directConnection=true`, in the URI or `mongoClientOptions`) to
 * one server: the driver then sends every operation to that server, whatever the read preference
 * (a secondary is read as `primaryPreferred`). Elsewhere (a replica-set connection, a load
 * balancer) the read preference `primary` itself routes writ's reads to the current primary.
 */
export function isDirectConnection(c: MongoClient): boolean {
  return c.options.directConnection === true;
}

/**
 * The server types of a replica-set member that is not the primary (SDAM). `Unknown` (a server
 * that does not answer) is not one: the driver selects no such server, and reads fail on their own.
 */
const NOT_PRIMARY: ReadonlySet<ServerType> = new Set<ServerType>(["RSSecondary", "RSArbiter", "RSOther", "RSGhost"]);

/** What a server type that is not the primary means, for the message. */
const ROLE: Partial<Record<ServerType, string>> = {
  RSSecondary: "a secondary",
  RSArbiter: "an arbiter",
  RSOther: "a member that is neither primary nor secondary (hidden, starting or recovering)",
  RSGhost: "a member without a replica-set config",
};

/**
 * Follows the role of the one server of a direct connection ({@link isDirectConnection}) between
 * reads, without a round trip per read: the driver monitors the server (a `hello` every
 * `heartbeatFrequencyMS`, 10 s by default, or streamed by the server as soon as it changes, from
 * MongoDB 4.4) and emits `serverDescriptionChanged`. While the last description says it is a
 * replica-set member that is not the primary (a primary that stepped down), every MongoDB read is
 * refused with a {@link WritConnectionError}: transient, like any MongoDB that cannot be read, as
 * an election brings a primary back, often this same server; reads go on by themselves once a
 * description says primary (or standalone, or mongos) again. A read that was out while such a
 * description came is refused too (the driver may have sent it to the secondary). Between a
 * step-down and the heartbeat that sees it, reads may still go to the secondary: the Rust client
 * has that window too (server selection uses the driver's last description). On other
 * connections it does nothing: the driver routes to the primary itself. The first use's check
 * ({@link refuseSecondary}) closes the window before the first description.
 */
export class PrimaryWatch {
  /** The server's description while it is not the primary, else undefined. */
  private notPrimary: ServerDescription | undefined;
  /** The last description of the server when it was not the primary, for a read that raced it. */
  private lastNotPrimary: ServerDescription | undefined;
  /** How many descriptions of the server as not the primary have come. */
  private notPrimarySeen = 0;

  constructor(c: MongoClient) {
    if (!isDirectConnection(c)) return;
    c.on("serverDescriptionChanged", (e) => this.described(e.newDescription));
  }

  private described(d: ServerDescription): void {
    if (NOT_PRIMARY.has(d.type)) {
      this.notPrimary = this.lastNotPrimary = d;
      this.notPrimarySeen++;
    } else {
      this.notPrimary = undefined;
    }
  }

  /** Before a read: throws while the server is not the primary; else a mark for {@link after}. */
  before(): number {
    if (this.notPrimary) throw notPrimaryError(this.notPrimary, false);
    return this.notPrimarySeen;
  }

  /** After a read: throws if the server was described as not the primary while it was out. */
  after(mark: number): void {
    if (this.notPrimarySeen !== mark) throw notPrimaryError(this.lastNotPrimary!, true);
  }
}

function notPrimaryError(d: ServerDescription, during: boolean): WritConnectionError {
  const set = d.setName ? ` of replica set ${d.setName}` : "";
  const role = `${ROLE[d.type] ?? "not the primary"} (${d.type})${d.primary ? `; it names ${d.primary} as the primary` : ""}`;
  return new WritConnectionError(
    (during
      ? `the MongoDB server reached (${d.address}) stopped being the primary${set} while this read was out: it said it is ${role}. `
      : `the MongoDB server reached (${d.address}) is no longer the primary${set}: it says it is ${role}. `) +
      "writ reads only a primary (a secondary can be behind an acknowledged write), and on a direct connection " +
      "(directConnection=true) the driver reads only that server. Retry after the election (reads go on by " +
      "themselves once it is the primary again), or connect to the replica set (without directConnection=true) " +
      "in WRIT_MONGODB_URI / mongodbUri, so that reads follow the primary",
  );
}
