/**
 * The ack side of a client (docs/protocol.md §5, §6): the loop that reads
 * this client's ack stream while it has writes waiting for their ack, and
 * the lost-ack sweep, which settles from the consumer group and the
 * dead-letter stream the writes whose ack never came.
 *
 * It lives apart from the client core (client.ts) because it only reads the
 * client's pending writes: it is given them as a read-only map, and hands
 * every ack, received or swept, back through one `deliver` callback, which
 * the client keeps (settling a write touches its overlay and its waiters).
 * Its own state (the ack connection, the stream position, the sweep's turn
 * and what it already told `onError`) is nobody else's.
 */
import type { Cluster, Redis } from "ioredis";

import type { AckOutcome, AckResult } from "./client.js";
import type { WritConfig } from "./config.js";
import { WritConnectionError, WritTimeoutError, type WritError } from "./errors.js";
import type { Names } from "./key.js";
import { compareStreamIds, nextStreamId } from "./version.js";
import { errMessage, groupBy, isReplyError, sleepUnref } from "./util.js";

const ACK_BLOCK_MS = 1000;
/**
 * The ack connection's `socketTimeout`: its XREAD BLOCK answers within
 * ACK_BLOCK_MS, so a reply this late means a half-open connection (a NAT or
 * load balancer dropped it without a reset). ioredis then destroys the
 * socket and reconnects, instead of waiting for TCP to give up (about 15
 * minutes), with no acks and no lost-ack sweep meanwhile. It only runs
 * while a command is out: an idle ack connection is left alone.
 */
export const ACK_SOCKET_TIMEOUT_MS = ACK_BLOCK_MS + 9000;
/** How often, at most, the ack loop looks for lost acks ({@link AckReader.sweepLostAcks}). */
const LOST_ACK_SWEEP_MS = 5000;
/** Writes one sweep looks at. */
const LOST_ACK_SWEEP_MAX = 256;
/** Dead letters one sweep reads at most; the next goes on after them ({@link AckReader.lettersReadTo}). */
const LOST_ACK_DLQ_SCAN = 2000;

/** What a sweep's read of the dead-letter stream found ({@link AckReader.deadLettersOf}). */
interface Letters {
  /** `"<stream> <entry id>"` → reason. */
  letters: Map<string, string>;
  /** Whether it read to the end of the stream. */
  complete: boolean;
  /** The id of the last letter it read. */
  readTo?: string;
}
/**
 * A page of dead letters: at most this many, and about {@link LOST_ACK_DLQ_PAGE_BYTES} of letters as
 * large as the largest seen so far, starting with a few. A letter carries its write's document (up to
 * `maxDocumentBytes`, 16 MiB by default): 500 such letters were 8 GB in one reply.
 */
const LOST_ACK_DLQ_PAGE = 500;
const LOST_ACK_DLQ_PAGE_BYTES = 4 << 20;
/** The bytes of dead letters one sweep reads at most (then it settles nothing and looks again later). */
const LOST_ACK_DLQ_SCAN_BYTES = 64 << 20;
/** How far before a write's entry its dead letter is looked for. */
const LOST_ACK_CLOCK_MARGIN_MS = 60_000;
/**
 * Reply errors that may pass by themselves (a server loading its data set, a
 * busy script, a cluster failover or resharding): the sweep retries them
 * without a word. Any other reply error (NOPERM, WRONGTYPE, ...) stays until
 * someone fixes it.
 */
const TRANSIENT_REPLY = /^(LOADING|BUSY|TRYAGAIN|CLUSTERDOWN|MASTERDOWN|MOVED|ASK)\b/;

/**
 * Up to `max` of `items` (oldest first), taken one per key in turn: the
 * oldest of every key, then the second of every key, and so on. So a key
 * with many writes that cannot settle (its partition stuck, its entries
 * gone) does not use up a sweep that another key's lost ack needs. The
 * keys' turn starts at key `start` (modulo their number): successive sweeps
 * pass `start` on, so with more keys than `max` every key gets its turn.
 */
function fairShare<K, T>(items: T[], key: (t: T) => K, max: number, start = 0): T[] {
  const grouped = [...groupBy(items, key).values()];
  const at = grouped.length ? start % grouped.length : 0;
  const queues = [...grouped.slice(at), ...grouped.slice(0, at)];
  const out: T[] = [];
  for (let round = 0; out.length < max; round++) {
    let took = false;
    for (const q of queues) {
      if (round < q.length) {
        out.push(q[round]);
        took = true;
        if (out.length >= max) break;
      }
    }
    if (!took) break;
  }
  return out;
}

function flatToMap(flat: unknown): Map<string, unknown> {
  const m = new Map<string, unknown>();
  if (Array.isArray(flat)) for (let i = 0; i + 1 < flat.length; i += 2) m.set(String(flat[i]), flat[i + 1]);
  return m;
}

/** The consumer group's `last-delivered-id` on `stream`; undefined if it has no group yet. */
export async function lastDelivered(redis: Redis | Cluster, stream: string, group: string): Promise<string | undefined> {
  const groups = ((await redis.xinfo("GROUPS", stream)) as unknown[]).map(flatToMap);
  const delivered = groups.find((m) => m.get("name") === group)?.get("last-delivered-id");
  return typeof delivered === "string" ? delivered : undefined;
}

/** What the ack loop reads of one of the client's pending writes. */
export interface AwaitedWrite {
  req: string;
  key: { id: string; partition: number };
  /** The entry's stream id, its sortable version and when it was admitted (ms), once XADD returned. */
  entryId?: string;
  version?: string;
  admittedAt?: number;
}

/** What an {@link AckReader} is given by its client. */
export interface AckReaderOptions {
  /** The client's config (read when used): its ack stream's client id, and how long before an ack counts as late. */
  config: Pick<WritConfig, "clientId" | "writeTimeoutMs" | "readTimeoutMs" | "lostWriteAfterMs">;
  names: Names;
  /** req → the client's pending write: read here, changed only by the client (through `deliver`). */
  pending: ReadonlyMap<string, AwaitedWrite>;
  /** Creates the "acks" connection (not connected yet), when the loop first runs. */
  connect: () => Redis | Cluster;
  /** The client's commands connection as it is now (the client replaces it after a failed connect). */
  commands: () => Redis | Cluster;
  /** Settles the pending write `req` with its ack (nothing if it is no longer pending). */
  deliver: (req: string, r: AckResult) => void;
  /**
   * The sortable version MongoDB holds of each write's key (`ZERO_VERSION`
   * for none), by `req`; throws if MongoDB cannot be read.
   */
  storedVersions: (writes: AwaitedWrite[]) => Promise<Map<string, string>>;
  /** Hands an error to `onError`. */
  report: (e: WritError) => void;
  /** Whether the client was closed: the loop then ends. */
  closed: () => boolean;
}

/** Reads one client's acks, and settles those that were lost. */
export class AckReader {
  private readonly config: AckReaderOptions["config"];
  private readonly names: Names;
  private readonly pending: ReadonlyMap<string, AwaitedWrite>;
  private readonly connect: () => Redis | Cluster;
  private readonly commands: () => Redis | Cluster;
  private readonly deliver: (req: string, r: AckResult) => void;
  private readonly storedVersions: AckReaderOptions["storedVersions"];
  private readonly report: (e: WritError) => void;
  private readonly isClosed: () => boolean;
  private ackRedis: Redis | Cluster | undefined;
  private ackLoop: Promise<void> | undefined;
  private lastAckId = "0";
  /** Whether a refusal of the ack stream's read went to `onError` already. */
  private ackErrorReported = false;
  /** When the ack loop last looked for lost acks; whether it told `onError`. */
  private lastSweepAt = 0;
  /** Where the next sweep's turn of keys starts ({@link fairShare}). */
  private sweepStart = 0;
  private lostAckReported = false;
  /** Whether a refusal of the dead-letter stream's read (the sweep) went to `onError` already. */
  private dlqErrorReported = false;
  /** req → when a sweep first found its entry gone and MongoDB older than it ({@link lostOrStored}). */
  private missingSince = new Map<string, number>();
  /**
   * req → the last dead letter a sweep read without finding the write's
   * ({@link deadLettersOf}): the next sweep goes on from there, not from
   * the start again, which never got past a burst of more letters than one
   * sweep reads.
   */
  private lettersReadTo = new Map<string, string>();
  /** The MongoDB look for writes whose entries are gone, running beside the ack loop ({@link lostOrStored}). */
  private mongoLook: Promise<void> | undefined;
  /**
   * req → the version MongoDB held of its key at the last look, and when that
   * look was sent (ms), not yet used by a sweep.
   */
  private storedSeen = new Map<string, { v: string; at: number }>();
  /**
   * reqs of writes whose id the stream gives to another write's entry (a
   * promoted replica whose clock is behind gave a lost entry's id out
   * again): a version exactly theirs, in MongoDB, is the other write's, and
   * so is a letter at that id that names no write ({@link ownEntries}).
   */
  private taken = new Set<string>();
  /** Whether a failed MongoDB look went to `onError` already. */
  private mongoErrorReported = false;

  constructor(opts: AckReaderOptions) {
    this.config = opts.config;
    this.names = opts.names;
    this.pending = opts.pending;
    this.connect = opts.connect;
    this.commands = opts.commands;
    this.deliver = opts.deliver;
    this.storedVersions = opts.storedVersions;
    this.report = opts.report;
    this.isClosed = opts.closed;
  }

  /** The running loop, if any (the client waits a little for it on close). */
  get loop(): Promise<void> | undefined {
    return this.ackLoop;
  }

  /** Cuts the ack connection, which may sit in a blocking XREAD (on close). */
  disconnect(): void {
    this.ackRedis?.disconnect();
  }

  private get closed(): boolean {
    return this.isClosed();
  }

  private get redis(): Redis | Cluster {
    return this.commands();
  }

  /** Starts the loop unless it runs (or the client is closed); it ends when no write is pending. */
  start(): void {
    if (this.ackLoop || this.closed) return;
    this.ackLoop = this.runAckLoop().finally(() => {
      this.ackLoop = undefined;
      // A write registered while the loop was winding down.
      if (this.pending.size && !this.closed) this.start();
    });
  }

  private async runAckLoop(): Promise<void> {
    // Its own connection: XREAD BLOCK holds it for up to ACK_BLOCK_MS.
    if (!this.ackRedis) this.ackRedis = this.connect();
    const stream = this.names.acks(this.config.clientId);
    let backoff = 50;
    while (!this.closed && this.pending.size > 0) {
      await this.sweepLostAcks();
      if (this.closed || this.pending.size === 0) return;
      let reply: unknown;
      try {
        reply = await this.ackRedis.xread("COUNT", 512, "BLOCK", ACK_BLOCK_MS, "STREAMS", stream, this.lastAckId);
        backoff = 50;
      } catch (e) {
        if (this.closed) return;
        // Redis refusing the read (an ACL without this ack stream, another
        // program's value at its key) does not pass by itself: say so once,
        // or ack-mode writes would only time out, blaming the daemon.
        if (isReplyError(e) && !this.ackErrorReported) {
          this.ackErrorReported = true;
          this.report(
            new WritConnectionError(
              `Redis refuses to read this client's ack stream ${stream}: ${errMessage(e)}. Writes are accepted but ` +
                `their acks cannot be read; check the ACL (read access to <namespace>:ack:*) and that nothing else ` +
                `writes that key`,
              { cause: e },
            ),
          );
        }
        await sleepUnref(backoff);
        backoff = Math.min(backoff * 2, 2000);
        continue;
      }
      this.deliverAcks(reply);
    }
  }

  /** Delivers the acks of an `XREAD` reply of this client's ack stream. */
  private deliverAcks(reply: unknown): void {
    if (!Array.isArray(reply)) return;
    for (const [, entries] of reply as [string, [string, string[]][]][]) {
      for (const [id, flat] of entries) {
        this.lastAckId = id;
        const f = flatToMap(flat);
        const req = f.get("req");
        const outcome = f.get("outcome");
        if (typeof req !== "string" || typeof outcome !== "string") continue;
        this.deliver(req, {
          outcome: outcome as AckOutcome,
          version: String(f.get("v") ?? ""),
          entryId: String(f.get("id") ?? ""),
          reason: f.has("reason") ? String(f.get("reason")) : undefined,
        });
      }
    }
  }

  /**
   * Reads what the ack stream holds now, without blocking, and delivers it:
   * an ack that arrived is believed before anything is settled without one.
   * False if the stream could not be read for a reason that may pass (a
   * connection); a refusal (another program's value at its key) means no
   * ack can be read, so settling goes on.
   */
  private async catchUpAcks(): Promise<boolean> {
    const stream = this.names.acks(this.config.clientId);
    for (let pages = 0; pages < 64; pages++) {
      let reply: unknown;
      try {
        reply = await this.ackRedis!.xread("COUNT", 512, "STREAMS", stream, this.lastAckId);
      } catch (e) {
        return isReplyError(e);
      }
      if (!Array.isArray(reply)) return true;
      this.deliverAcks(reply);
    }
    return false;
  }

  /**
   * Settles writes whose ack was lost (a Redis failover, an ack stream
   * trimmed or deleted), from what the daemon left behind (protocol.md §6).
   * A write older than `writeTimeoutMs` whose entry the stream still holds
   * and the consumer group has delivered and no longer holds pending was
   * finished by the daemon: its cache write, its ack and its dead letter, if
   * any, all come before the `XACK`. A write whose entry is gone is settled
   * from MongoDB ({@link lostOrStored}): finished if MongoDB holds its version
   * or a newer one, else `lost` once that has lasted `lostWriteAfterMs`. The
   * acks that did arrive are read first ({@link catchUpAcks}). A finished
   * write is settled `dead_lettered` if the dead-letter stream holds its
   * entry, else `applied` at its own version (the cache holds it or a newer
   * one); a lost one is `dead_lettered` if a letter says so, else `lost`.
   * Without this, each lost ack would hold a `maxPending` slot and make every
   * `flush()` time out for the life of the process, and a lost write would
   * answer this process's reads of its key and hold up its lists. Bounded:
   * at most every {@link LOST_ACK_SWEEP_MS} (or `writeTimeoutMs`, if
   * shorter), {@link LOST_ACK_SWEEP_MAX} writes (one key at a time,
   * {@link fairShare}) and {@link LOST_ACK_DLQ_SCAN} dead letters per sweep,
   * whose Redis reads together get `readTimeoutMs` (the ack loop waits for
   * them); any failure, or running out of that time, leaves the writes for
   * the next sweep (a refusal of the
   * dead-letter read that will not pass by itself, such as a writer ACL
   * without `%R~<ns>:dlq`, also goes to `onError` once:
   * {@link reportDlqRefusal}).
   */
  private async sweepLostAcks(): Promise<void> {
    const now = Date.now();
    if (now - this.lastSweepAt < Math.min(LOST_ACK_SWEEP_MS, this.config.writeTimeoutMs)) return;
    this.lastSweepAt = now;
    for (const m of [this.missingSince, this.storedSeen, this.lettersReadTo, this.taken])
      for (const req of m.keys()) if (!this.pending.has(req)) m.delete(req);
    const overdue: AwaitedWrite[] = [];
    for (const w of this.pending.values()) {
      if (w.entryId && w.admittedAt! <= now - this.config.writeTimeoutMs) overdue.push(w);
    }
    if (!overdue.length) return;
    const old = fairShare(overdue, (w) => w.key.id, LOST_ACK_SWEEP_MAX, this.sweepStart);
    this.sweepStart += LOST_ACK_SWEEP_MAX;
    // The look's reads together get readTimeoutMs, as any read: the ack loop
    // waits for them, and a Redis that does not answer them (a stalled or
    // half-open commands connection) must not hold up the acks that the ack
    // connection still brings. What it read by then is dropped; the next
    // look starts over.
    const deadline = now + this.config.readTimeoutMs;
    try {
      const { done, gone } = await this.within(this.finishedByDaemon(old), deadline);
      const { stored, lost } = this.lostOrStored(gone);
      const finished = [...done, ...stored];
      if (!finished.length && !lost.length) return;
      if (!(await this.within(this.catchUpAcks(), deadline))) return;
      // Those whose acks the catch-up just delivered need no letter.
      const unsettled = [...finished, ...lost].filter((w) => this.pending.has(w.req));
      if (!unsettled.length) return;
      const from = this.letterScanStart(unsettled);
      let found: Letters | undefined;
      try {
        found = await this.within(this.deadLettersOf(from, deadline), deadline);
      } catch (e) {
        this.reportDlqRefusal(e);
        throw e;
      }
      if (!found) return;
      const { letters, complete, readTo } = found;
      let settled = 0;
      for (const w of [...finished, ...lost]) {
        if (!this.pending.has(w.req)) continue; // its ack came meanwhile
        if (compareStreamIds(this.letterStart(w), from) < 0) continue; // not this sweep's: letterScanStart
        const stream = this.names.stream(w.key.partition);
        const bare = this.taken.has(w.req) ? undefined : letters.get(`${stream} ${w.entryId} *`);
        const reason = letters.get(`${stream} ${w.entryId} ${w.req}`) ?? bare;
        const entryId = w.entryId!;
        if (reason === undefined && !complete) {
          // More letters follow than one sweep reads: the next goes on
          // from where this one stopped (never back).
          const was = this.lettersReadTo.get(w.req);
          if (readTo && (was === undefined || compareStreamIds(was, readTo) < 0)) this.lettersReadTo.set(w.req, readTo);
          continue;
        }
        this.missingSince.delete(w.req);
        if (reason !== undefined) {
          this.deliver(w.req, { outcome: "dead_lettered", version: entryId, entryId, reason });
        } else if (lost.includes(w)) {
          this.deliver(w.req, { outcome: "lost", version: entryId, entryId, reason: `gone from ${stream}` });
          continue; // deliver() tells onError of it (LostWriteError)
        } else {
          this.deliver(w.req, { outcome: "applied", version: entryId, entryId });
        }
        settled++;
      }
      if (settled && !this.lostAckReported) {
        this.lostAckReported = true;
        this.report(
          new WritConnectionError(
            `the acks of ${settled} writes never arrived on ${this.names.acks(this.config.clientId)} (a Redis ` +
              `failover, or the ack stream trimmed or deleted); the daemon had finished them, so they were settled ` +
              `from the consumer group, the dead-letter stream and MongoDB. Reported once per client.`,
          ),
        );
      }
    } catch {
      /* Redis busy or away: the next sweep tries again (MongoDB is asked beside it: lostOrStored) */
    }
  }

  /** `p`, or a rejection once `deadline` (ms) passed (the sweep's bound: {@link sweepLostAcks}). */
  private async within<T>(p: Promise<T>, deadline: number): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        p,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error("the lost-ack look's reads ran out of readTimeoutMs")), Math.max(0, deadline - Date.now()));
          timer.unref?.();
        }),
      ]);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /**
   * Of `gone` (writes whose entries their streams no longer hold, and that no
   * daemon holds pending), those MongoDB holds at their version or newer
   * (`stored`: the daemon finished them before the entry went, by retention's
   * trim or by hand, or a newer write superseded them), and those it has held
   * an older version of for `lostWriteAfterMs` since a sweep first saw it so
   * (`lost`: no daemon will apply them; the wait is for one that read the
   * entry before it went and may still be applying it). MongoDB is asked
   * beside the ack loop, never in it (a MongoDB that is slow or away must not
   * hold up the acks): a sweep uses the answers of the look before it, once
   * each, and starts the next look for the writes still undecided. Until an
   * answer comes, and while MongoDB cannot be read, a write is left for a
   * later sweep.
   */
  private lostOrStored(gone: AwaitedWrite[]): { stored: AwaitedWrite[]; lost: AwaitedWrite[] } {
    const stored: AwaitedWrite[] = [];
    const lost: AwaitedWrite[] = [];
    const ask: AwaitedWrite[] = [];
    for (const w of gone) {
      const seen = this.storedSeen.get(w.req);
      this.storedSeen.delete(w.req);
      if (seen === undefined || w.version === undefined) {
        ask.push(w);
      } else if (seen.v > w.version || (seen.v === w.version && !this.taken.has(w.req))) {
        this.missingSince.delete(w.req);
        stored.push(w);
      } else {
        // Timed by when the looks were sent, not when a sweep used them: an
        // answer a sweep comes to late (Redis away, or the write's turn in
        // a long sweep queue) is as old as its look.
        const since = this.missingSince.get(w.req);
        if (since !== undefined && seen.at - since >= this.config.lostWriteAfterMs) lost.push(w);
        else {
          if (since === undefined) this.missingSince.set(w.req, seen.at);
          ask.push(w);
        }
      }
    }
    if (ask.length && !this.mongoLook) this.startMongoLook(ask);
    return { stored, lost };
  }

  /**
   * Asks MongoDB the stored versions of `writes`' keys, beside the ack loop;
   * at most one look at a time, so a MongoDB that never answers holds one
   * (and `onError` hears of it once, after `readTimeoutMs`).
   */
  private startMongoLook(writes: AwaitedWrite[]): void {
    const at = Date.now();
    const slow = setTimeout(() => {
      this.reportMongoFailure(new WritTimeoutError(`MongoDB did not answer within ${this.config.readTimeoutMs} ms`), writes.length);
    }, this.config.readTimeoutMs);
    slow.unref?.();
    this.mongoLook = this.storedVersions(writes)
      .then((versions) => {
        for (const [req, v] of versions) if (this.pending.has(req)) this.storedSeen.set(req, { v, at });
      })
      .catch((e) => this.reportMongoFailure(e, writes.length))
      .finally(() => {
        clearTimeout(slow);
        this.mongoLook = undefined;
      });
  }

  /**
   * Tells `onError`, once per client, that MongoDB could not be asked about
   * writes whose entries are gone: they stay pending until it can be.
   */
  private reportMongoFailure(e: unknown, n: number): void {
    if (this.mongoErrorReported || this.closed) return;
    this.mongoErrorReported = true;
    this.report(
      new WritConnectionError(
        `${n} writes of this client have no ack and their entries are gone from their streams (a Redis failover, or ` +
          `deleted by hand); only MongoDB can tell whether they were applied, and reading it failed: ${errMessage(e)}. ` +
          `They stay pending (flush() times out, each holds a maxPending slot) until MongoDB can be read: check ` +
          `mongodbUri (WRIT_MONGODB_URI). Reported once per client.`,
        { cause: e },
      ),
    );
  }

  /**
   * Tells `onError`, once per client, that Redis refuses the sweep's read of
   * the dead-letter stream for a reason that will not pass by itself (NOPERM:
   * a writer ACL without read access to it; WRONGTYPE: another program's
   * value at its key). Without that read no lost ack can be settled (a write
   * is never called `applied` unless the dead letters were read), so those
   * writes would only time out, silently. Connection failures and transient
   * replies stay silent: the next sweep tries again.
   */
  private reportDlqRefusal(e: unknown): void {
    if (this.dlqErrorReported || this.closed || !isReplyError(e) || TRANSIENT_REPLY.test(errMessage(e))) return;
    this.dlqErrorReported = true;
    const dlq = this.names.dlq;
    this.report(
      new WritConnectionError(
        `Redis refuses to read the dead-letter stream ${dlq}: ${errMessage(e)}. Writes whose acks were lost cannot be ` +
          `settled without it: they stay pending (flush() times out, each holds a maxPending slot). Grant the ` +
          `writer's ACL user read access to it (\`%R~${dlq}\`; docs/operations.md, "Redis ACL users") and check ` +
          `that nothing else writes that key. Reported once per client.`,
        { cause: e },
      ),
    );
  }

  /**
   * Of `writes`, those whose entries the stream still holds and the consumer
   * group delivered and no longer holds pending (`done`), and those whose
   * entries the stream does not hold and no daemon holds pending (`gone`: its
   * XADD may itself have been lost in a failover, so only MongoDB can tell
   * whether it was applied). An entry at a write's id that another write
   * added (a promoted replica whose clock is behind may give out the lost
   * entry's id again) is not that write's: it counts as gone. A gone entry
   * that the group still holds pending was read by a daemon that may be
   * applying it now: it is neither.
   */
  private async finishedByDaemon(writes: AwaitedWrite[]): Promise<{ done: AwaitedWrite[]; gone: AwaitedWrite[] }> {
    const group = this.names.group;
    const parts = await Promise.all(
      [...groupBy(writes, (w) => w.key.partition)].map(async ([p, ws]) => {
        const stream = this.names.stream(p);
        const own = await this.ownEntries(stream, ws);
        const held = ws.filter((_, i) => own[i] === "own");
        const missing = ws.filter((_, i) => own[i] === "absent");
        // The group's last-delivered id is read before any pending check of
        // a held entry: delivered by then and not pending after means acked.
        const [delivered, missingPending] = await Promise.all([
          held.length ? lastDelivered(this.redis, stream, group) : Promise.resolve(undefined),
          Promise.all(missing.map((w) => this.pendingInGroup(stream, w.entryId!))),
        ]);
        // Whatever the group holds at a taken write's id is the other write.
        const gone = [...missing.filter((_, i) => !missingPending[i]), ...ws.filter((_, i) => own[i] === "taken")];
        for (const w of missing.filter((_, i) => missingPending[i])) {
          this.missingSince.delete(w.req);
          this.storedSeen.delete(w.req);
        }
        if (delivered === undefined) return { done: [], gone };
        const candidates = held.filter((w) => compareStreamIds(w.entryId!, delivered) <= 0);
        const pending = await Promise.all(candidates.map((w) => this.pendingInGroup(stream, w.entryId!)));
        return { done: candidates.filter((_, i) => !pending[i]), gone };
      }),
    );
    return { done: parts.flatMap((x) => x.done), gone: parts.flatMap((x) => x.gone) };
  }

  /**
   * Whether `stream` holds each of `writes`' own entries (`XRANGE id id`):
   * `taken` when it holds another write's entry at the write's id (a
   * promoted replica whose clock is behind may give out a lost entry's id
   * again), which is remembered for the sweep ({@link taken}).
   */
  private async ownEntries(stream: string, writes: AwaitedWrite[]): Promise<("own" | "taken" | "absent")[]> {
    const clientId = this.config.clientId;
    const entries = await Promise.all(
      writes.map((w) => this.redis.xrange(stream, w.entryId!, w.entryId!, "COUNT", 1) as Promise<[string, string[]][]>),
    );
    return entries.map((e, i) => {
      if (e.length !== 1) return "absent";
      const f = flatToMap(e[0][1]);
      if (String(f.get("req")) === writes[i].req && String(f.get("client")) === clientId) return "own";
      this.taken.add(writes[i].req);
      return "taken";
    });
  }

  /**
   * Of `writes` (admitted: each has its entry id), those Redis may no longer
   * hold: the stream does not hold the write's own entry and the consumer
   * group does not hold its id pending (a failover lost it, someone deleted
   * it, or retention trimmed it after the daemon was done with it; only
   * MongoDB could tell which). An ack-mode wait or a flush that times out
   * looks once, so that its error says `accepted: "yes"` only of writes writ
   * holds (docs/protocol.md §5). Throws if Redis cannot be read; the caller
   * bounds it.
   */
  async notHeld(writes: AwaitedWrite[]): Promise<AwaitedWrite[]> {
    const parts = await Promise.all(
      [...groupBy(writes, (w) => w.key.partition)].map(async ([p, ws]) => {
        const stream = this.names.stream(p);
        const own = await this.ownEntries(stream, ws);
        const missing = ws.filter((_, i) => own[i] === "absent");
        const pending = await Promise.all(missing.map((w) => this.pendingInGroup(stream, w.entryId!)));
        return [...missing.filter((_, i) => !pending[i]), ...ws.filter((_, i) => own[i] === "taken")];
      }),
    );
    return parts.flat();
  }

  /** Whether the consumer group holds entry `id` of `stream` pending (false if the stream or group is gone). */
  private async pendingInGroup(stream: string, id: string): Promise<boolean> {
    try {
      return ((await this.redis.xpending(stream, this.names.group, id, id, 1)) as unknown[]).length > 0;
    } catch (e) {
      if (isReplyError(e) && /^NOGROUP\b/.test(errMessage(e))) return false;
      throw e;
    }
  }

  /**
   * Where each write's letter may be: after the letter an earlier sweep read
   * up to for it without finding it ({@link lettersReadTo}), else from a
   * minute before its own time (a margin for clocks: the dead-letter stream
   * may live on another node of a cluster, or on a promoted replica whose
   * clock is behind).
   */
  private letterStart(w: AwaitedWrite): string {
    const after = this.lettersReadTo.get(w.req);
    if (after !== undefined) return nextStreamId(after);
    return `${Math.max(0, Number(w.entryId!.split("-")[0]) - LOST_ACK_CLOCK_MARGIN_MS)}-0`;
  }

  /**
   * Where this sweep reads the dead-letter stream from. Writes an earlier
   * sweep left part way go first, from the earliest point one of them
   * reached: a write that joins later (its own window reaching back over
   * the letters read already) must not send them back to the start each
   * sweep, or with acks lost all the time none would ever get past a burst
   * of letters. A write whose start is before this point is not judged in
   * this sweep; its turn comes once those are settled.
   */
  private letterScanStart(writes: AwaitedWrite[]): string {
    const resumed = writes.filter((w) => this.lettersReadTo.has(w.req));
    const from = (resumed.length ? resumed : writes).map((w) => this.letterStart(w));
    return from.reduce((a, id) => (compareStreamIds(id, a) < 0 ? id : a));
  }

  /**
   * The dead letters of this client's writes (`"<stream> <entry id> <req>"`
   * → reason), read from `from`; `complete` is false when more than
   * {@link LOST_ACK_DLQ_SCAN} letters (or {@link LOST_ACK_DLQ_SCAN_BYTES})
   * follow (a write not found may have one further on, after `readTo`);
   * undefined once the sweep's `deadline` passed.
   */
  private async deadLettersOf(from: string, deadline: number): Promise<Letters | undefined> {
    const letters = new Map<string, string>();
    const clientId = this.config.clientId;
    let readTo: string | undefined;
    let count = 4;
    let largest = 0;
    for (let read = 0, bytes = 0; read < LOST_ACK_DLQ_SCAN && bytes < LOST_ACK_DLQ_SCAN_BYTES; ) {
      // The look gave up (its within() rejected): so does its scan.
      if (Date.now() >= deadline) return undefined;
      const page = (await this.redis.xrange(this.names.dlq, from, "+", "COUNT", count)) as [string, string[]][];
      for (const [, flat] of page) {
        const size = flat.reduce((n, v) => n + Buffer.byteLength(v), 0);
        largest = Math.max(largest, size);
        bytes += size;
        const f = flatToMap(flat);
        const stream = f.get("dlq.stream");
        const id = f.get("dlq.id");
        // A letter carries its entry's fields: only this client's request
        // is its write (a promoted replica whose clock is behind may give
        // a lost entry's id to another write, which may be parked).
        // A letter without its entry's fields (an entry deleted while
        // pending was parked without them) goes by stream and id.
        const req = f.get("req");
        const client = f.get("client");
        const bare = req === undefined && client === undefined;
        if (typeof stream === "string" && typeof id === "string" && (bare || (typeof req === "string" && client === clientId))) {
          // As the Rust client settles it: `<label>: <detail>`.
          const reason = String(f.get("dlq.reason") ?? "");
          const detail = f.get("dlq.detail");
          letters.set(`${stream} ${id} ${bare ? "*" : req}`, detail ? `${reason}: ${String(detail)}` : reason);
        }
      }
      if (page.length) readTo = page[page.length - 1][0];
      if (page.length < count) return { letters, complete: true, readTo };
      read += page.length;
      from = `(${page[page.length - 1][0]}`;
      count = Math.max(1, Math.min(LOST_ACK_DLQ_PAGE, count * 4, Math.floor(LOST_ACK_DLQ_PAGE_BYTES / Math.max(1, largest))));
    }
    return { letters, complete: false, readTo };
  }
}
