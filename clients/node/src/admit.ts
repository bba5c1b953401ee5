/**
 * Group commit of admissions (`minReplicasAcked: 0`), as the Rust client
 * does it (src/client/batch.rs): one admission script call per partition
 * carries every submit that queued while the previous call to that partition
 * was in flight.
 *
 * With `appendfsync always`, Redis spends a submit's time on call overhead:
 * script dispatch, the meta hash update, one AOF transaction per call. The
 * admission script takes many entries at once (its batch form, docs/protocol.md
 * "Writing"); each entry is still admitted only while the backlog is under the
 * bound. A lone submit goes at once, in a call of its own.
 *
 * Order: one queue per partition, first in first out, one call in flight per
 * partition, so the entries of one key are added in the order their submits
 * were made.
 *
 * Sent twice, added once: ioredis sends a command again when its connection
 * dropped before the reply came (`autoResendUnfulfilledCommands`). Each call
 * carries the partition's next call number and this client's admission
 * record (the third key), and the script answers a call that already ran
 * with that run's ids instead of adding the entries again (src/lua/admit.lua).
 * One call in flight per partition, so the record keeps one call's reply. Bounded: at most {@link MAX_BATCH} entries or
 * {@link MAX_BATCH_BYTES} argument bytes per call; callers wait behind it.
 *
 * A deadline (docs/protocol.md §2a, "A deadline"): each call carries the last
 * moment it may run, in Redis's clock, set from the earliest give-up time of
 * its writes (src/clock.ts). A copy of it that Redis runs later (a paused
 * Redis, ioredis's offline queue or re-send) is refused with `EXPIRED` and
 * adds nothing, so a write reported "may or may not have been accepted" never
 * lands after its caller was told so.
 */
import { WritConnectionError } from "./errors.js";
import { NoClock, type RedisClock } from "./clock.js";
import { errMessage, isReplyError } from "./util.js";

/** Most entries in one admission call. */
export const MAX_BATCH = 256;
/** Most argument bytes in one admission call. */
export const MAX_BATCH_BYTES = 1 << 20;

export type Arg = string | Buffer | number;

/** A partition's stream, its meta hash and this client's admission record there. */
export type AdmitKeys = [string, string, string];

/** Runs the admission script on `keys` with `args` (NOSCRIPT handled by the caller). */
export type AdmitCall = (keys: AdmitKeys, args: Arg[]) => Promise<unknown>;

/**
 * Redis refused an admission call (`reply`, a reply error) that may have
 * been sent before: its connection dropped while the call was out, and
 * ioredis sends the commands that were out at a drop again once it
 * reconnects. The first send may have run, its reply lost with the
 * connection; then the entries are in the stream, and the refusal is of the
 * second send (NOREPLICAS, READONLY, MISCONF: the record's answer to a call
 * that ran renews its expiry, a write). So it does not say nothing was added:
 * the write may or may not have been accepted (as the Rust client's
 * `refusal(.., resent, ..)`, src/client/admission_reply.rs).
 */
export class RefusedAfterResend extends Error {
  constructor(readonly reply: Error) {
    super(reply.message);
    this.name = "RefusedAfterResend";
  }
}

/** A connection, as far as {@link watchDrops} needs it (an ioredis Redis or Cluster). */
interface Emitter {
  on(event: string, listener: (...args: any[]) => void): unknown;
}

const drops = new WeakMap<object, { n: number }>();

/**
 * Counts the times `conn` lost a working socket (for a Cluster, any of its
 * node connections): a command out across such a drop may have been sent
 * twice ({@link RefusedAfterResend}). Only a socket that was ready counts:
 * ioredis holds commands back until a new socket is ready, so one that fails
 * before that had none out (it re-sends only what was out on a ready one).
 * Called once per connection, when it is made.
 */
export function watchDrops(conn: Emitter, cluster: boolean): void {
  const d = { n: 0 };
  drops.set(conn, d);
  const watch = (c: Emitter) => {
    let ready = false;
    c.on("ready", () => void (ready = true));
    c.on("close", () => {
      if (ready) d.n++;
      ready = false;
    });
  };
  if (cluster) conn.on("+node", (node: Emitter) => watch(node));
  else watch(conn);
}

/** How many drops {@link watchDrops} counted on `conn` so far (0 for a connection it does not watch). */
export function dropsOf(conn: object): number {
  return drops.get(conn)?.n ?? 0;
}

/**
 * `e`, the error of an admission call, as a {@link RefusedAfterResend} if it
 * is a refusal by Redis and the connection dropped while the call was out
 * (`drops0`: {@link dropsOf} the connection when the call was sent).
 */
export function refusalOf(e: unknown, conn: object, drops0: number): unknown {
  return e instanceof Error && e.name === "ReplyError" && dropsOf(conn) !== drops0 ? new RefusedAfterResend(e) : e;
}

/** How many of its last calls' replies an admission record keeps (one call in flight per partition). */
export const WINDOW = 1;

/** The bound refused the entry: the partition's backlog was at `backlog`. */
export class AdmitRefused extends Error {
  constructor(readonly backlog: number) {
    super(`BACKPRESSURE ${backlog}`);
    this.name = "AdmitRefused";
  }
}

/** An entry waiting for its partition's next call; `R` is what its submit gets back. */
export interface Queued<R = string> {
  fields: Arg[];
  /** Its argument bytes. */
  bytes: number;
  /**
   * When its write stops waiting for it (`performance.now()` ms): no later
   * than the moment its caller is told it may or may not have been accepted
   * (`bounded` in client.ts). A call's deadline is set from the earliest of
   * its entries'.
   */
  giveUpAt: number;
  resolve: (r: R) => void;
  reject: (e: unknown) => void;
}

type Waiting = Queued<string>;

interface Queue {
  keys: AdmitKeys;
  waiting: Waiting[];
  busy: boolean;
}

/** An entry's argument bytes (a number counts 8). */
/**
 * Lets a submit take its entry back while the entry still waits for its
 * partition's next call (the call before it is stuck at a Redis that does not
 * answer): then the submit can say the write was NOT accepted, instead of
 * "may or may not", and the entry does not stay queued, to land late.
 */
export class Withdrawal {
  private remove: (() => boolean) | undefined;
  private withdrawn = false;

  /** An admitter queued the entry: how to take it out (false once it went into a call). */
  attach(remove: () => boolean): void {
    this.remove = remove;
  }

  /** True if the entry was never sent, and now never will be; false if a call took it. */
  withdraw(): boolean {
    if (!this.withdrawn) this.withdrawn = this.remove ? this.remove() : true;
    return this.withdrawn;
  }

  /** Withdrawn before an admitter queued it (it must not queue it). */
  get isWithdrawn(): boolean {
    return this.withdrawn;
  }
}

/** Takes `entry` out of `waiting` if it is still there. */
export function removeFrom<T>(waiting: () => T[], entry: T): () => boolean {
  return () => {
    const list = waiting();
    const i = list.indexOf(entry);
    if (i < 0) return false;
    list.splice(i, 1);
    return true;
  };
}

export const argBytes = (fields: Arg[]): number => fields.reduce<number>((n, a) => n + (typeof a === "number" ? 8 : a.length), 0);

/** Takes the next call's entries off the front of `waiting`: at most {@link MAX_BATCH} or {@link MAX_BATCH_BYTES}, at least one. */
export function takeBatch<T extends { bytes: number }>(waiting: T[]): T[] {
  let n = 0;
  let bytes = 0;
  for (const w of waiting) {
    bytes += w.bytes;
    if (n > 0 && (n === MAX_BATCH || bytes > MAX_BATCH_BYTES)) break;
    n++;
  }
  return waiting.splice(0, n);
}

export class AdmitBatcher {
  private readonly queues = new Map<string, Queue>();
  /** Per partition stream: the number of its last call (kept while the queue comes and goes). */
  private readonly calls = new Map<string, number>();

  /** `group`: the daemon's consumer group; `bound`: the backlog bound (maxBacklog); `partitions`: this client's partition count. */
  constructor(
    private readonly call: AdmitCall,
    private readonly group: string,
    private readonly bound: number,
    private readonly partitions: number,
    /** Redis's clock, for each call's deadline (src/clock.ts). */
    private readonly clock: RedisClock,
  ) {}

  /**
   * Admits one entry (its field/value arguments) to the partition of `keys`;
   * its id. `giveUpAt` (`performance.now()` ms): when its write stops waiting
   * for it ({@link Queued}).
   */
  admit(keys: AdmitKeys, fields: Arg[], giveUpAt: number, withdrawal?: Withdrawal): Promise<string> {
    return new Promise((resolve, reject) => {
      let q = this.queues.get(keys[0]);
      if (!q) this.queues.set(keys[0], (q = { keys, waiting: [], busy: false }));
      const entry: Waiting = { fields, bytes: argBytes(fields), giveUpAt, resolve, reject };
      q.waiting.push(entry);
      const queue = q;
      withdrawal?.attach(removeFrom(() => queue.waiting, entry));
      if (!q.busy) {
        q.busy = true;
        // Submits made in this turn of the microtask queue join the first call.
        queueMicrotask(() => void this.flush(q));
      }
    });
  }

  /**
   * Sends the queue, call after call, until it is empty. Before each call,
   * the partition's sample of Redis's clock is made fresh, while the entries
   * still wait (a write that gives up meanwhile is taken back unsent); if
   * that fails, the call's entries fail unsent ({@link NoClock}). Never rejects.
   */
  private async flush(q: Queue): Promise<void> {
    while (q.waiting.length) {
      try {
        await this.clock.ensure(q.keys[1]);
      } catch (e) {
        for (const w of takeBatch(q.waiting)) w.reject(e);
        continue;
      }
      // Every entry was taken back while the sample was taken.
      if (!q.waiting.length) break;
      const batch = takeBatch(q.waiting);
      let deadline: number;
      try {
        deadline = this.clock.deadline(q.keys[1], earliestGiveUp(batch));
      } catch (e) {
        for (const w of batch) w.reject(e);
        continue;
      }
      const seq = (this.calls.get(q.keys[0]) ?? 0) + 1;
      this.calls.set(q.keys[0], seq);
      let reply: unknown;
      try {
        reply = await this.call(
          q.keys,
          admitArgs(this.group, this.bound, this.partitions, seq, WINDOW, deadline, batch.map((w) => w.fields)),
        );
      } catch (e) {
        for (const w of batch) w.reject(e);
        continue;
      }
      settle(batch, reply);
    }
    q.busy = false;
    this.queues.delete(q.keys[0]);
  }

}

/** The earliest {@link Queued.giveUpAt} of a call's entries: when its caller gives up on it. */
export function earliestGiveUp(batch: { giveUpAt: number }[]): number {
  return batch.reduce((g, w) => Math.min(g, w.giveUpAt), Infinity);
}

/**
 * The admission script's arguments in the batch form with a record (keys:
 * {@link AdmitKeys}): the caller's partition count (the script refuses it,
 * adding nothing, where the partition records another), call number `seq`
 * (`ARGV[6]`), the record's `window` (`ARGV[7]`), the call's `deadline` in
 * Redis's clock (`ARGV[8]`, unix ms, `0` for none: src/clock.ts), then from
 * `ARGV[9]` each entry's argument count and its field/value arguments.
 */
export function admitArgs(
  group: string,
  bound: number,
  partitions: number,
  seq: number,
  window: number,
  deadline: number,
  entries: Arg[][],
): Arg[] {
  const args: Arg[] = [group, bound, partitions, "", entries.length, seq, window, deadline];
  for (const fields of entries) {
    args.push(fields.length);
    for (const f of fields) args.push(f);
  }
  return args;
}

/**
 * Gives each entry of `batch` its result from the script's `reply` (the batch
 * form): the ids in order, then the backlog (an integer) when the bound
 * stopped it early; the entries after the last id are refused with it.
 */
export function settle(batch: { resolve: (id: string) => void; reject: (e: unknown) => void }[], reply: unknown): void {
  const odd = (what: string) => {
    const e = new Error(`the admission script returned ${what}`);
    for (const w of batch) w.reject(e);
  };
  if (!Array.isArray(reply)) return odd(JSON.stringify(reply));
  const ids: string[] = [];
  let backlog = 0;
  for (const item of reply) {
    if (typeof item === "string" || Buffer.isBuffer(item)) ids.push(String(item));
    else if (typeof item === "number") backlog = Math.max(0, item);
    else return odd(JSON.stringify(item));
  }
  if (ids.length > batch.length) return odd("more ids than entries");
  batch.forEach((w, i) => (i < ids.length ? w.resolve(ids[i]) : w.reject(new AdmitRefused(backlog))));
}

/**
 * The `EXPIRED` refusal in `e`, the error of an admission call (also wrapped
 * in a {@link RefusedAfterResend}: a send that ran would have been answered
 * from the record, so `EXPIRED` means NOT added even after a re-send), or
 * undefined.
 */
export function expiredReply(e: unknown): Error | undefined {
  const reply = e instanceof RefusedAfterResend ? e.reply : e;
  return isReplyError(reply) && errMessage(reply).startsWith("EXPIRED") ? (reply as Error) : undefined;
}

/**
 * What a write of `collection` is told when Redis refused its admission call
 * with `EXPIRED` (`reply`): NOT accepted, retry it. Redis ran the call after
 * its deadline, when this client had given up on it (usually its caller was
 * told so already, and hears nothing of this; only a call Redis ran in the
 * last few ms before the giving-up reaches its caller so).
 */
export function expiredError(collection: string, reply: Error): WritConnectionError {
  const late = /ran (\d+) ms after/.exec(reply.message)?.[1];
  return new WritConnectionError(
    `the write to ${collection} was NOT accepted: Redis ran its admission call after its deadline ` +
      `(${late === undefined ? "" : `${late} ms after it, `}by Redis's clock), when this client had given up on it; ` +
      `nothing was added; retry it. (${reply.message})`,
    { cause: reply, accepted: "no" },
  );
}

/**
 * What a write of `collection` is told when Redis could not be asked for its
 * clock before its admission call ({@link NoClock}): the call was not sent,
 * NOT accepted.
 */
export function noClockError(collection: string, e: NoClock, redisUrl: string): WritConnectionError {
  return new WritConnectionError(
    `the write to ${collection} was NOT accepted (nothing was sent): Redis at ${redisUrl} could not be asked for its ` +
      `clock (TIME, which gives each admission call its deadline): ${errMessage(e.reason)}. Check Redis, then retry the write.`,
    { cause: e.reason, accepted: "no" },
  );
}
