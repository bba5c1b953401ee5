/**
 * Typed errors. Every message says what is wrong and what to do about it.
 * All extend {@link WritError}, so `err instanceof WritError` catches any of them.
 */

/**
 * What an error of a write says about that write, so that code can decide
 * without reading the message whether to send it again:
 * - `"no"`: Redis does not hold it (it was refused before it was added, or
 *   Redis lost it): sending it again is safe;
 * - `"yes"`: writ holds it (queued, or parked in the dead-letter stream): it
 *   is applied, or waits for `writ dlq retry`, without you; sending it again
 *   would write it twice, over any newer write of the key by another process;
 * - `"unknown"`: Redis may or may not hold it (its reply was lost, or Redis
 *   refused it after its connection dropped while it was out and ioredis
 *   sent it again, so that the first send may have run; too few
 *   replicas confirmed it, its ack did not come and its entry is gone from
 *   the stream or Redis did not answer the look, or the client was closed
 *   while it was out): once Redis answers, `await client.sync()` (with
 *   no options: every call takes a fresh barrier, so it waits until the
 *   daemon has applied every entry in the streams at the call, this write's
 *   if it landed), then read the key, and write it again only if it does
 *   not hold this value. `flush()` does not do it: it waits only for this
 *   process's pending writes, and a write whose admission said `"unknown"`
 *   is no longer one of them; nor does a read alone (an entry that landed may not
 *   be applied yet), nor `sync({ once: true })` (the start-up sync, which
 *   returns at once after it succeeded). An adapter write of
 *   several rows (candles, storage, log) says `"unknown"` too when some of
 *   its rows are held and others not, or may not be (in `ack` mode: a
 *   dead-lettered or applied row next to a lost one, or next to one whose
 *   ack timed out with its entry gone); the message says how many. Such a
 *   write says `"no"` only when no row is held, `"yes"` only when all are.
 */
export type Accepted = "yes" | "no" | "unknown";

/** What to do about an `"unknown"` write, as error messages say it (see {@link Accepted}). */
export const UNKNOWN_ADVICE =
  "once Redis answers, call sync() (each call waits until the daemon has applied every entry in the streams then, " +
  "this write's if it landed), then read the key, and write it again only if it does not hold this value";

/** What a {@link WritError} is built with. */
export interface WritErrorOptions {
  cause?: unknown;
  /** For an error of a write: see {@link Accepted}. */
  accepted?: Accepted;
}

/** Base class of every error this package throws. */
export class WritError extends Error {
  /**
   * For an error a write threw (or `onError` was given for a write): whether
   * writ holds that write ({@link Accepted}). `undefined` for an error that
   * says nothing about a write (a read, a list, a sync, a closed client's
   * `ready()` or read).
   */
  readonly accepted?: Accepted;

  constructor(message: string, options?: WritErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    if (options?.accepted !== undefined) this.accepted = options.accepted;
  }
}

/** The partition's backlog of unapplied writes is at its bound (`maxBacklog`); nothing was written. */
export class BackpressureError extends WritError {
  constructor(
    readonly partition: number,
    readonly unapplied: number,
    readonly limit: number,
  ) {
    super(
      `writ partition ${partition} has ${unapplied} unapplied writes (bound ${limit}); the write was NOT accepted. ` +
        `The writ daemon is behind or down: check \`writ status\` and that \`writ serve\` is running, then retry.`,
      { accepted: "no" },
    );
  }
}

/**
 * A wait timed out. A write whose ack did not come in time (an ack-mode
 * write, `waitAck`, `flush()`) is looked up once in its stream: while the
 * stream holds its entry, or the daemon's group holds it pending, it is
 * still queued and will be applied (`accepted: "yes"`); if its entry is gone
 * (a failover lost it, or it was deleted) or Redis could not be read within
 * `readTimeoutMs`, it may or may not be applied (`"unknown"`). A write that
 * was never admitted is a {@link PendingFullError} (this class too) and was
 * NOT accepted; a write fewer than `minReplicasAcked` replicas confirmed in
 * time may be lost in a failover and may still be applied (`"unknown"`: see
 * {@link UNKNOWN_ADVICE}, not a plain retry). The message says which.
 */
export class WritTimeoutError extends WritError {
  constructor(message: string, options?: WritErrorOptions) {
    super(message, options);
  }
}

/**
 * The write waited `writeTimeoutMs` before it was admitted: for room under
 * `maxPending` (this process's writes waiting for their ack), or behind
 * earlier writes of this process that waited for that or for Redis. It was
 * NOT accepted; retry once the daemon catches up. A {@link WritTimeoutError},
 * so code that catches those catches this too.
 */
export class PendingFullError extends WritTimeoutError {
  constructor(message: string) {
    super(`${message}. The write was NOT accepted: retry it once the daemon catches up`, { accepted: "no" });
  }
}

/** Redis or MongoDB could not be reached or refused a command. */
export class WritConnectionError extends WritError {
  constructor(message: string, options?: WritErrorOptions) {
    super(message, options);
  }
}

/**
 * Redis is at its `maxmemory` and refused the write (`OOM`): it was NOT
 * accepted. Retry once memory is freed. A {@link WritConnectionError}, so
 * code that catches those catches this too. (An `OOM` of an admission that
 * was out when its connection dropped, and that ioredis sent again, is a
 * plain `WritConnectionError` with `accepted: "unknown"`: the first send
 * may have run.)
 */
export class RedisFullError extends WritConnectionError {
  constructor(
    readonly collection: string,
    readonly reply: string,
    options?: { cause?: unknown },
  ) {
    super(
      `Redis is out of memory (its maxmemory) and refused the write to ${collection}: it was NOT accepted. Free ` +
        `memory in Redis or raise its maxmemory (a daemon that is down or behind lets the streams grow: check ` +
        `\`writ status\`), then retry. Redis said: ${reply}`,
      { cause: options?.cause, accepted: "no" },
    );
  }
}

/** The daemon refused a write for good and parked it in the dead-letter stream. */
export class RefusedWriteError extends WritError {
  constructor(
    readonly collection: string,
    readonly reason: string,
    readonly entryId: string,
  ) {
    super(
      `writ refused the write to ${collection} (entry ${entryId}): ${reason || "no reason given"}. ` +
        `It is in the dead-letter stream: inspect it with \`writ dlq list\` / \`writ dlq show\`, fix the cause, then \`writ dlq retry\`.`,
      { accepted: "yes" },
    );
  }
}

/**
 * A write Redis accepted and then lost: its stream entry is gone (a Redis
 * failover that dropped it, with `minReplicasAcked` 0, or someone deleted
 * it), no ack or dead letter came, and MongoDB still holds an older version
 * of the key `lostWriteAfterMs` after the loss was first seen. It was NOT
 * applied and never will be: write it again.
 */
export class LostWriteError extends WritError {
  constructor(
    readonly collection: string,
    readonly entryId: string,
    /** Where the entry went missing (`gone from <stream>`). */
    readonly reason: string,
  ) {
    super(
      `the write to ${collection} (entry ${entryId}) was lost: its entry is ${reason || "gone"}, no ack or dead letter ` +
        `came, and MongoDB holds an older version of the key. Redis lost it (a failover with minReplicasAcked 0, or ` +
        `the entry was deleted by hand); it was NOT applied: write it again. To keep accepted writes through a ` +
        `failover, give Redis a replica and set minReplicasAcked (docs/operations.md, "\`min_replicas_acked\`: accepted means replicated").`,
      { accepted: "no" },
    );
  }
}

/** A key is missing a field, has an extra one, or a value of a type keys cannot hold. */
export class WritKeyError extends WritError {
  constructor(message: string, options?: { cause?: unknown }) {
    // Refused before anything was sent.
    super(message, { cause: options?.cause, accepted: "no" });
  }
}

/** The configuration is invalid (bad URL, unknown mode, unknown collection, ...). */
export class WritConfigError extends WritError {
  constructor(message: string, options?: WritErrorOptions) {
    // A write refused for its config (an undeclared collection, another
    // partition count) was refused before anything was sent.
    super(message, { cause: options?.cause, accepted: options?.accepted ?? "no" });
  }
}

/**
 * The client was closed; create a new one. Of a write (see {@link Accepted}):
 * `"no"` if it was never sent (made after `close()`, or still waiting for
 * the connection, for room under `maxPending` or in its partition's queue
 * when `close()` came); `"unknown"` if its admission was out at Redis, or it
 * was admitted and waited for its ack (`waitAck`, an ack-mode write, a
 * `flush()`), when `close()` came: the client can no longer tell whether
 * Redis holds it. Other calls (reads, lists, `sync`, `ready`, a `flush()`
 * made after `close()`): `undefined`.
 */
export class WritClosedError extends WritError {
  constructor(options?: { accepted?: Accepted }) {
    const accepted = options?.accepted;
    super(
      accepted === "no"
        ? "this writ client is closed; the write was NOT sent (NOT accepted): write it again with a new client (or after calling setup() again)"
        : accepted === "unknown"
          ? "this writ client was closed while the write was out at Redis or waiting for its ack: it may or may not have been " +
            `accepted. With a new client (or after calling setup() again), ${UNKNOWN_ADVICE}`
          : "this writ client is closed; create a new one (or call setup() again)",
      accepted === undefined ? undefined : { accepted },
    );
  }
}
