/**
 * Redis's clock, as a writer needs it (docs/protocol.md §2a, "A deadline: a
 * call never lands after its caller gave up"). Every admission call carries
 * the last moment it may run, in Redis's clock (`TIME`, unix ms), so that a
 * copy of it that Redis runs after this client gave up on it (a paused or
 * overloaded Redis, ioredis's offline queue, ioredis's re-send after a
 * reconnect) is refused with `EXPIRED` and adds nothing: its writes were
 * reported "may or may not have been accepted", and their callers may have
 * read the key and written something newer since.
 *
 * A partition's sample is a lower bound of the offset between Redis's clock
 * and this process's monotonic clock (`performance.now()`), taken with `TIME`
 * inside a script keyed to the partition's meta hash (so a Redis Cluster
 * routes it to the partition's node). It is taken before the partition's
 * first call and again before a call once it is {@link SAMPLE_FRESH_MS} old,
 * the same rule as the Rust client's (src/client/clock.rs).
 */
import { performance } from "node:perf_hooks";

import { errMessage, isReplyError } from "./util.js";

/**
 * The script that reads Redis's clock: `TIME` from inside a script, so that
 * its key routes it (docs/protocol.md §2a, the same text as the Rust
 * client's). A user that may not run `TIME` gets the error `NOTIME ...`: an
 * ACL refusal inside a script is a plain `ERR` before Redis 7.2, told apart
 * only by its text.
 */
export const TIME_LUA =
  "local t = redis.pcall('TIME') if t['err'] then return redis.error_reply('NOTIME ' .. t['err']) end return {t[1], t[2]}";

/** How long a partition's sample is used before a call takes a new one. */
export const SAMPLE_FRESH_MS = 10_000;

/**
 * One sample: `lower` = Redis's clock (unix ms) − this process's monotonic
 * clock (`performance.now()`, ms) when the reply arrived (`at`). A lower bound
 * of the offset between the two clocks: Redis read its clock before the reply
 * arrived.
 */
export interface ClockSample {
  lower: number;
  at: number;
}

/**
 * The deadline, in Redis's clock (unix ms), of a call whose caller gives up
 * at `giveUpAt` (monotonic ms): `⌊G + L − ⌈(G − a) ÷ 1000⌉ − 2⌋`, 1 ms per
 * started second of the sample's age for the two clocks' drift and 2 ms for
 * rounding (docs/protocol.md §2a). If Redis runs the call at or before it by
 * its clock, this process's clock read at most `giveUpAt` then. An age below
 * zero (a caller that gave up before the sample arrived) counts as zero, as
 * in the Rust client: that only moves the deadline earlier.
 */
export function deadlineOf(s: ClockSample, giveUpAt: number): number {
  const age = Math.max(0, giveUpAt - s.at);
  return Math.floor(giveUpAt + s.lower - Math.ceil(age / 1000) - 2);
}

/** `TIME`'s reply (seconds, microseconds) as unix ms; undefined if it makes no sense. */
export function redisMs(reply: unknown): number | undefined {
  if (!Array.isArray(reply) || reply.length !== 2) return undefined;
  const [s, us] = reply.map((x) => (typeof x === "string" || Buffer.isBuffer(x) ? Number(String(x)) : NaN));
  if (!Number.isSafeInteger(s) || !Number.isSafeInteger(us) || s < 0 || us < 0) return undefined;
  return s * 1000 + Math.floor(us / 1000);
}

/**
 * Redis could not be asked for its clock before an admission call: the call
 * was not sent, and its writes were NOT accepted. `cause` is why.
 */
export class NoClock extends Error {
  constructor(readonly reason: unknown) {
    super(`Redis could not be asked for its clock (TIME, for the admission call's deadline): ${errMessage(reason)}`);
    this.name = "NoClock";
  }
}

/** Whether `e` is the {@link TIME_LUA} script's `NOTIME` refusal (the user may not run `TIME`). */
const isNoTime = (e: unknown): boolean => isReplyError(e) && errMessage(e).startsWith("NOTIME");

/** What a {@link RedisClock} is given by its client. */
export interface ClockOptions {
  /** Runs {@link TIME_LUA} keyed to `metaKey` (EVALSHA, EVAL on NOSCRIPT); its reply. */
  time: (metaKey: string) => Promise<unknown>;
  /** Called once per client when the user may not run `TIME` (`NOTIME`), with that reply. */
  warnNoTime: (e: unknown) => void;
}

/**
 * What a partition's calls carry now: a sample, or none because the user may
 * not run `TIME` (asked again, as a sample is taken again, after
 * {@link SAMPLE_FRESH_MS}: an ACL given `+time` meanwhile brings the deadline back).
 */
interface Known {
  sample?: ClockSample;
  /** Monotonic ms when it was learnt (a sample's `at`). */
  at: number;
}

/** The samples of one client, by partition meta hash. */
export class RedisClock {
  private readonly known = new Map<string, Known>();
  /** Samples being taken, by meta hash (one at a time per partition). */
  private readonly taking = new Map<string, Promise<void>>();
  private warned = false;

  constructor(private readonly opts: ClockOptions) {}

  /** Whether the partition of `metaKey` has a sample (or a `NOTIME`) younger than {@link SAMPLE_FRESH_MS}. */
  fresh(metaKey: string): boolean {
    const k = this.known.get(metaKey);
    return k !== undefined && performance.now() - k.at < SAMPLE_FRESH_MS;
  }

  /**
   * Makes the sample of the partition of `metaKey` fresh (takes one unless
   * {@link fresh}). If that fails, an older sample still serves; with none,
   * rejects with a {@link NoClock} (the call must not go).
   */
  ensure(metaKey: string): Promise<void> {
    if (this.fresh(metaKey)) return Promise.resolve();
    let p = this.taking.get(metaKey);
    if (!p) {
      p = this.take(metaKey).finally(() => this.taking.delete(metaKey));
      this.taking.set(metaKey, p);
    }
    return p;
  }

  /**
   * The deadline (`ARGV[8]`) of a call to the partition of `metaKey` whose
   * first write to give up does so at `giveUpAt`: `0` (none) where the user
   * may not run `TIME`. Call it right after {@link ensure} resolved (or
   * {@link fresh} said so); without a sample it throws a {@link NoClock}.
   */
  deadline(metaKey: string, giveUpAt: number): number {
    const k = this.known.get(metaKey);
    if (!k) throw new NoClock(new Error("no sample of Redis's clock was taken"));
    return k.sample ? deadlineOf(k.sample, giveUpAt) : 0;
  }

  private async take(metaKey: string): Promise<void> {
    let reply: unknown;
    try {
      reply = await this.opts.time(metaKey);
    } catch (e) {
      if (isNoTime(e)) {
        this.known.set(metaKey, { at: performance.now() });
        if (!this.warned) {
          this.warned = true;
          this.opts.warnNoTime(e);
        }
        return;
      }
      if (this.keepOld(metaKey)) return;
      throw new NoClock(e);
    }
    const at = performance.now();
    const r = redisMs(reply);
    if (r === undefined) {
      if (this.keepOld(metaKey)) return;
      throw new NoClock(new Error(`Redis's TIME made no sense: ${JSON.stringify(reply)}`));
    }
    this.known.set(metaKey, { sample: { lower: r - at, at }, at });
  }

  /**
   * After a failed sample: an older one still serves (the age of its own
   * `at` widens the drift allowance), as in the Rust client, and counts as
   * fresh for another {@link SAMPLE_FRESH_MS}, so that the calls meanwhile go
   * with it instead of asking again each time. False with none: the call
   * must not go.
   */
  private keepOld(metaKey: string): boolean {
    const k = this.known.get(metaKey);
    if (!k) return false;
    k.at = performance.now();
    return true;
  }

}
