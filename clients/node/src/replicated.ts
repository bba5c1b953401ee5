/**
 * Admissions with `minReplicasAcked > 0` (docs/protocol.md "Writing"): the
 * admission script, then `WAIT minReplicasAcked replicaAckTimeoutMs` in one
 * pipeline on a connection of its own, so the WAIT runs on the master that
 * took the entries and covers them.
 *
 * Group commit, as the group commit without WAIT (admit.ts): each partition
 * has one queue and at most one admission call in flight, which carries every
 * submit that queued meanwhile. The calls of all partitions a node serves go
 * in one pipeline with one WAIT (in a Redis Cluster: the node serving the
 * partition's slot now). A call that a node did not execute (NOSCRIPT; MOVED,
 * ASK, TRYAGAIN, CLUSTERDOWN) is sent again, with the same call number,
 * before anything else of its partition. So one key's entries keep the order
 * of their submits across script reloads and slot-map changes: no later call
 * of a partition can run before an earlier one, on any node.
 *
 * Each call carries a deadline in Redis's clock (docs/protocol.md §2a, "A
 * deadline"; src/clock.ts), set from the earliest give-up time of its writes
 * when the call is made, and kept when it is sent again. A partition whose
 * sample of Redis's clock is missing or old takes a new one before its next
 * call is made (its entries wait meanwhile, and can be taken back).
 *
 * It lives apart from the client core (client.ts) because none of it touches
 * the pending writes, the overlay or the cache: the client hands it the
 * partition's keys and the entry and gets back the entry id and the replicas
 * that confirmed it.
 */
import { Cluster, type Redis } from "ioredis";
import calculateSlot from "cluster-key-slot";

import type { WritConfig } from "./config.js";
import { WritClosedError } from "./errors.js";
import {
  RefusedAfterResend,
  WINDOW,
  admitArgs,
  argBytes,
  dropsOf,
  earliestGiveUp,
  removeFrom,
  settle,
  takeBatch,
  type AdmitKeys,
  type Arg,
  type Queued,
  type Withdrawal,
} from "./admit.js";
import type { RedisClock } from "./clock.js";
import { errMessage, isReplyError, sleep } from "./util.js";

/**
 * Reply errors that mean the command was not executed where it was sent
 * (Redis Cluster redirections, a slot being migrated, a failover in progress):
 * sending it again is safe.
 */
export const NOT_EXECUTED = /^(MOVED|ASK|TRYAGAIN|CLUSTERDOWN) /;
/** Refusals of a slot that is moving: they leave the slot map as it is. */
const MID_MOVE = /^(ASK|TRYAGAIN) /;
/** An ioredis cluster pipeline refused before sending: its slots moved apart. */
const PIPELINE_SPLIT = /same slots allocation group|same slot/;
/** Wait before a redirected call goes again (as ioredis's retryDelayOnMoved / OnTryAgain). */
export const REDIRECT_DELAY_MS = 100;

/**
 * Redirections (each {@link REDIRECT_DELAY_MS} apart) that take about as
 * long as a write waits (`writeTimeoutMs`), and at least ioredis's default
 * of 16: a resharding refuses a slot's multi-key commands with TRYAGAIN
 * until its move is done.
 */
export function redirectionsFor(writeTimeoutMs: number): number {
  return Math.max(16, Math.ceil(writeTimeoutMs / REDIRECT_DELAY_MS));
}
/** Most entries in one pipeline with a trailing WAIT (over all its calls). */
const PIPELINE_MAX_ENTRIES = 1000;

/** What an admission gives its write: the entry id and the replicas that confirmed it (or why WAIT failed). */
export interface Admitted {
  entryId: string;
  replicas: number | Error;
}

/** A submit waiting for its partition's next call. */
type Entry = Queued<Admitted>;

/** One admission script call: some entries of one partition, under one call number. */
interface Call {
  entries: Entry[];
  /** The batch form with the call's number and deadline (src/lua/admit.lua): the same at every send. */
  args: Arg[];
  /** Send the script's text (EVAL): the node did not have it (NOSCRIPT). */
  useEval: boolean;
  /** Times it was redirected (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) and sent again. */
  redirects: number;
  /** The last reply that was not the script's. */
  lastError?: unknown;
  /**
   * A send of it was out when its connection dropped: ioredis sent it again,
   * and that first send may have run. A refusal of it by Redis is then a
   * {@link RefusedAfterResend} (it may have been added all the same).
   */
  maybeRan?: boolean;
}

/** What a call's writes are told when Redis refuses it for good with `err`. */
function refused(c: Call, err: unknown): unknown {
  return c.maybeRan && isReplyError(err) ? new RefusedAfterResend(err as Error) : err;
}

/** One partition's queue. */
interface Part {
  keys: AdmitKeys;
  waiting: Entry[];
  /** A call the node did not execute: sent again before any waiting entry. */
  retry?: Call;
  /** A call of this partition is at a node (or waiting to be redirected). */
  inFlight: boolean;
  /** The number of its last call. */
  seq: number;
  /** Its sample of Redis's clock is being taken (no new call is made meanwhile). */
  sampling?: boolean;
}

/** What a {@link ReplicatedAdmitter} is given by its client. */
export interface ReplicatedOptions {
  /** The client's config (read when used): the bound, and the WAIT's replicas and timeout. */
  config: Pick<WritConfig, "maxBacklog" | "minReplicasAcked" | "replicaAckTimeoutMs" | "writeTimeoutMs" | "partitions">;
  /** Creates the "writes" connection (not connected yet), on the first admission. */
  connect: () => Redis | Cluster;
  /** The admission script (src/lua/admit.lua) and its SHA-1. */
  script: { sha: string; text: string };
  /** The daemon's consumer group (the admission script's bound counts its backlog). */
  group: string;
  /** Whether the client was closed: queued admissions then fail with {@link WritClosedError} (never sent: NOT accepted). */
  closed: () => boolean;
  /** Redis's clock, for each call's deadline (src/clock.ts). */
  clock: RedisClock;
}

/** The admission path with WAIT of one client (`minReplicasAcked > 0`). */
/** The writes connection could not be made: the entry was never sent (the caller says `accepted: "no"`). */
export class WritesNotConnected extends Error {
  constructor(readonly reason: unknown) {
    super(`cannot connect the writes connection: ${errMessage(reason)}`);
  }
}

export class ReplicatedAdmitter {
  private readonly config: ReplicatedOptions["config"];
  private readonly connect: () => Redis | Cluster;
  private readonly script: { sha: string; text: string };
  private readonly group: string;
  private readonly isClosed: () => boolean;
  private readonly clock: RedisClock;
  /** The connection admissions and their WAIT go through (WAIT blocks it). */
  private writeRedis: Redis | Cluster | undefined;
  private writeReady: Promise<void> | undefined;
  /** Partition stream → its queue (one per partition written to; kept, as its call numbers). */
  private readonly parts = new Map<string, Part>();
  /** Node (its addresses in a cluster, else "") → whether its pipeline is out or about to go. */
  private readonly nodes = new Map<string, { busy: boolean; scheduled: boolean }>();

  constructor(opts: ReplicatedOptions) {
    this.config = opts.config;
    this.connect = opts.connect;
    this.script = opts.script;
    this.group = opts.group;
    this.isClosed = opts.closed;
    this.clock = opts.clock;
  }

  /** The writes connection, once the first admission made it (the client closes it). */
  get connection(): Redis | Cluster | undefined {
    return this.writeRedis;
  }

  /**
   * Admits one entry (its field/value arguments) to the partition of `keys`,
   * in the order of the calls to this method, and waits for the WAIT after
   * it. The writes connection is its own: WAIT blocks it (up to
   * replicaAckTimeoutMs when replicas lag), and reads must not queue behind it.
   * `giveUpAt` (`performance.now()` ms): when its write stops waiting for it
   * (admit.ts {@link Queued}).
   */
  async admit(keys: AdmitKeys, fields: Arg[], giveUpAt: number, withdrawal?: Withdrawal): Promise<Admitted> {
    try {
      await this.writeConnection();
    } catch (e) {
      throw new WritesNotConnected(e);
    }
    return new Promise((resolve, reject) => {
      // Given up while the connection was made: never queued (never settles).
      if (withdrawal?.isWithdrawn) return;
      let part = this.parts.get(keys[0]);
      if (!part) this.parts.set(keys[0], (part = { keys, waiting: [], inFlight: false, seq: 0 }));
      const entry: Entry = { fields, bytes: argBytes(fields), giveUpAt, resolve, reject };
      part.waiting.push(entry);
      const queued = part;
      withdrawal?.attach(removeFrom(() => queued.waiting, entry));
      this.schedule(this.nodeOf(part));
    });
  }

  private writeConnection(): Promise<void> {
    if (!this.writeRedis) this.writeRedis = this.connect();
    if (!this.writeReady) {
      const conn = this.writeRedis;
      // A Cluster must know its slots before admissions are grouped by node.
      this.writeReady = (conn.status === "wait" ? conn.connect() : Promise.resolve()).catch((e) => {
        this.writeReady = undefined;
        throw e;
      });
    }
    return this.writeReady;
  }

  /** The node a partition's calls go to now: the nodes serving its slot (cluster), else the one server. */
  private nodeOf(part: Part): string {
    const conn = this.writeRedis;
    if (!(conn instanceof Cluster)) return "";
    const slot = calculateSlot(part.keys[0]);
    return conn.slots[slot]?.join(",") || `slot ${slot}`;
  }

  /** Sends the node's next pipeline soon, unless one is out (it sends the next one when it is back). */
  private schedule(node: string): void {
    let n = this.nodes.get(node);
    if (!n) this.nodes.set(node, (n = { busy: false, scheduled: false }));
    if (n.busy || n.scheduled) return;
    n.scheduled = true;
    // Like ioredis's auto-pipelining: admissions made in this turn of the event loop go together.
    setImmediate(() => this.drain(node));
  }

  /** Sends one pipeline to `node`: the next call of each partition it serves that has none in flight. */
  private drain(node: string): void {
    const n = this.nodes.get(node);
    if (!n) return;
    n.scheduled = false;
    if (n.busy) return;
    const calls: [Part, Call][] = [];
    const elsewhere = new Set<string>();
    let entries = 0;
    for (const part of this.parts.values()) {
      if (part.inFlight || (!part.retry && !part.waiting.length)) continue;
      // Past the cap, the rest go in the next pipeline (sent when this one is back).
      if (entries >= PIPELINE_MAX_ENTRIES) continue;
      const at = this.nodeOf(part);
      if (at !== node) {
        // Its slot moved since it was queued (a failover, a resharding):
        // the node serving it now sends it, or nobody would.
        elsewhere.add(at);
        continue;
      }
      if (this.isClosed()) {
        // Not sent again: NOT accepted, unless a send of the retried call
        // was out when its connection dropped (it may have run).
        const retried = part.retry;
        if (retried) {
          part.retry = undefined;
          const accepted = retried.maybeRan ? "unknown" : "no";
          for (const entry of retried.entries) entry.reject(new WritClosedError({ accepted }));
        }
        this.fail(part, new WritClosedError({ accepted: "no" }));
        continue;
      }
      // A new call needs a fresh sample of Redis's clock: taken first, then
      // the node is scheduled again (a call sent again keeps its deadline).
      if (!part.retry && !this.clock.fresh(part.keys[1])) {
        this.sample(part);
        continue;
      }
      const call = part.retry ?? this.nextCall(part);
      part.retry = undefined;
      part.inFlight = true;
      calls.push([part, call]);
      entries += call.entries.length;
    }
    for (const other of elsewhere) this.schedule(other);
    if (!calls.length) {
      this.nodes.delete(node);
      return;
    }
    // Served partitions go to the back of the order: past the cap, the ones
    // left out go first next time (no partition waits behind busier ones).
    for (const [part] of calls) {
      this.parts.delete(part.keys[0]);
      this.parts.set(part.keys[0], part);
    }
    n.busy = true;
    void this.send(calls).finally(() => {
      n.busy = false;
      const next = new Set([node]);
      for (const [part] of calls) {
        part.inFlight = false;
        if (part.retry || part.waiting.length) next.add(this.nodeOf(part));
      }
      for (const other of next) this.schedule(other);
    });
  }

  /**
   * Takes a fresh sample of Redis's clock for `part` (unless one is being
   * taken), then schedules its node. If that fails, its next call's entries
   * fail unsent (a {@link NoClock}: NOT accepted). Never rejects.
   */
  private sample(part: Part): void {
    if (part.sampling) return;
    part.sampling = true;
    void this.clock
      .ensure(part.keys[1])
      .catch((e) => {
        for (const entry of takeBatch(part.waiting)) entry.reject(e);
      })
      .finally(() => {
        part.sampling = false;
        if (part.retry || part.waiting.length) this.schedule(this.nodeOf(part));
      });
  }

  /**
   * The partition's next call: its waiting entries, as many as one call takes
   * (admit.ts `takeBatch`), with the deadline of the earliest to give up
   * (its sample is fresh: {@link drain} made sure).
   */
  private nextCall(part: Part): Call {
    const entries = takeBatch(part.waiting);
    part.seq++;
    const deadline = this.clock.deadline(part.keys[1], earliestGiveUp(entries));
    const args = admitArgs(
      this.group,
      this.config.maxBacklog,
      this.config.partitions,
      part.seq,
      WINDOW,
      deadline,
      entries.map((e) => e.fields),
    );
    return { entries, args, useEval: false, redirects: 0 };
  }

  /** Fails every queued entry of `part` (the client was closed). */
  private fail(part: Part, e: unknown): void {
    const entries = [...(part.retry?.entries ?? []), ...part.waiting];
    part.retry = undefined;
    part.waiting = [];
    for (const entry of entries) entry.reject(e);
  }

  /**
   * Sends one pipeline: its calls, then WAIT. Calls the node did not execute
   * (NOSCRIPT; in a cluster MOVED, ASK, TRYAGAIN, CLUSTERDOWN, or a pipeline
   * whose slots moved apart) become their partition's retry (redirections:
   * after a slot refresh, at most {@link redirectionsFor} times); their
   * partitions stay in flight until then. Never rejects.
   */
  private async send(calls: [Part, Call][]): Promise<void> {
    const conn = this.writeRedis!;
    const p = conn.pipeline();
    for (const [part, c] of calls) {
      if (c.useEval) p.eval(this.script.text, part.keys.length, ...part.keys, ...c.args);
      else p.evalsha(this.script.sha, part.keys.length, ...part.keys, ...c.args);
    }
    p.wait(this.config.minReplicasAcked, this.config.replicaAckTimeoutMs);
    let res: [Error | null, unknown][];
    const drops = dropsOf(conn);
    try {
      res = (await p.exec()) ?? [];
    } catch (e) {
      if (dropsOf(conn) !== drops) for (const [, c] of calls) c.maybeRan = true;
      if (conn instanceof Cluster && PIPELINE_SPLIT.test(errMessage(e))) {
        for (const [, c] of calls) c.lastError = e;
        return this.redirect(conn, calls);
      }
      for (const [, c] of calls) for (const entry of c.entries) entry.reject(refused(c, e));
      return;
    }
    if (dropsOf(conn) !== drops) for (const [, c] of calls) c.maybeRan = true;
    const [waitErr, waitReply] = res[calls.length] ?? [new Error("no reply to WAIT"), null];
    const replicas =
      waitErr ?? (Number.isSafeInteger(waitReply) ? (waitReply as number) : new Error(`WAIT replied ${String(waitReply)}`));
    const again: [Part, Call][] = [];
    let redirected = false;
    calls.forEach(([part, c], i) => {
      const [err, reply] = res[i] ?? [new Error("no reply to the admission"), null];
      if (!err) {
        // The ids in order, then the backlog when the bound refused the rest.
        return settle(
          c.entries.map((e) => ({ resolve: (entryId: string) => e.resolve({ entryId, replicas }), reject: e.reject })),
          reply,
        );
      }
      const msg = errMessage(err);
      c.lastError = err;
      if (!c.useEval && msg.startsWith("NOSCRIPT")) {
        c.useEval = true;
        again.push([part, c]);
      } else if (conn instanceof Cluster && NOT_EXECUTED.test(msg)) {
        redirected = true;
        again.push([part, c]);
      } else {
        for (const entry of c.entries) entry.reject(refused(c, err));
      }
    });
    if (redirected) return this.redirect(conn as Cluster, again);
    for (const [part, c] of again) part.retry = c;
  }

  /**
   * Refreshes the slots (unless every call was only refused mid-move, ASK or
   * TRYAGAIN: the slot map stays as it is until the move ends with MOVED),
   * waits a little (as ioredis's retryDelayOnMoved / OnClusterDown: a
   * failover settles), and makes each call its partition's retry (sent to its
   * slot's node now); a call redirected too often fails with its last reply.
   */
  private async redirect(conn: Cluster, calls: [Part, Call][]): Promise<void> {
    if (calls.some(([, c]) => !MID_MOVE.test(errMessage(c.lastError)))) {
      await new Promise<void>((r) => conn.refreshSlotsCache(() => r()));
    }
    await sleep(REDIRECT_DELAY_MS);
    const max = redirectionsFor(this.config.writeTimeoutMs);
    for (const [part, c] of calls) {
      const noscript = c.lastError instanceof Error && c.lastError.message.startsWith("NOSCRIPT");
      // Not run where it was sent (a redirection, NOSCRIPT), and not sent
      // again: NOT accepted, unless an earlier send was out when its
      // connection dropped (it may have run).
      if (this.isClosed())
        for (const entry of c.entries) entry.reject(new WritClosedError({ accepted: c.maybeRan ? "unknown" : "no" }));
      else if (!noscript && ++c.redirects > max) for (const entry of c.entries) entry.reject(refused(c, c.lastError));
      else part.retry = c;
    }
  }
}
