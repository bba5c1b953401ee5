// Group commit of admissions (src/admit.ts) against a real redis-server with
// the real admission script: concurrent submits to one partition share calls,
// every entry lands once and in submit order (also when a call runs twice),
// the bound refuses exactly the entries past it, and odd replies fail every
// entry of their call. The deadline (docs/protocol.md §2a, "A deadline";
// src/clock.ts): its place in the arguments, its formula, the script's
// EXPIRED refusal (nothing added, a call that ran still answered), what a
// write is told of it, and a writer whose user may not run TIME.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Redis } from "ioredis";

import {
  AdmitBatcher,
  AdmitRefused,
  MAX_BATCH,
  RefusedAfterResend,
  admitArgs,
  expiredError,
  expiredReply,
  settle,
  type AdmitKeys,
  type Arg,
} from "../src/admit.js";
import { NoClock, RedisClock, SAMPLE_FRESH_MS, TIME_LUA, deadlineOf, redisMs } from "../src/clock.js";
import { WritConnectionError } from "../src/errors.js";
import { ADMIT_LUA } from "../src/lua.js";
import { RedisServer } from "./harness.js";

/** A clock that asks `redis` (warnings go to `warned`). */
function clockOf(redis: Redis, warned: unknown[] = []): RedisClock {
  return new RedisClock({
    time: (key) => redis.eval(TIME_LUA, 1, key),
    warnNoTime: (e) => warned.push(e),
  });
}

/** A write that gives up in a minute: its calls' deadlines are far off. */
const later = () => performance.now() + 60_000;

/** A reply error, as ioredis makes them. */
const replyError = (message: string) => Object.assign(new Error(message), { name: "ReplyError" });

describe("admission group commit", () => {
  let dir: string;
  let server: RedisServer;
  let redis: Redis;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "writ-admit-"));
    server = await RedisServer.start(dir);
    redis = new Redis(server.url);
  });
  after(async () => {
    redis?.disconnect();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A batcher on `stream` with the real script, counting its calls. */
  function batcher(bound: number) {
    const calls: number[] = [];
    const clock = clockOf(redis);
    const b = new AdmitBatcher(
      async (keys, args) => {
        calls.push(args[3] === "" ? Number(args[4]) : 1);
        return redis.eval(ADMIT_LUA, keys.length, ...keys, ...args);
      },
      "writ",
      bound,
      1,
      clock,
    );
    return { b, calls, clock };
  }

  const entry = (n: number): Arg[] => ["n", String(n), "pad", "x".repeat(n % 7)];

  test("concurrent submits share calls and land once, in submit order", async () => {
    const keys: AdmitKeys = ["t1:{p0}:in", "t1:{p0}:meta", "t1:{p0}:adm:c"];
    const { b, calls } = batcher(100_000);
    const n = MAX_BATCH + 44;
    const ids = await Promise.all(Array.from({ length: n }, (_, i) => b.admit(keys, entry(i), later())));
    // All made in one turn: one full call, then the rest.
    assert.deepEqual(calls, [MAX_BATCH, 44]);
    const stored = await redis.xrange(keys[0], "-", "+");
    assert.equal(stored.length, n);
    stored.forEach(([id, fields], i) => {
      assert.equal(id, ids[i], `entry ${i} has its own id`);
      assert.deepEqual(fields, entry(i).map(String));
    });
    // A lone submit goes alone, in a call of its own.
    const one = await b.admit(keys, entry(7), later());
    assert.deepEqual(calls.slice(2), [1]);
    assert.equal((await redis.xrevrange(keys[0], "+", "-", "COUNT", 1))[0][0], one);
  });

  test("submits made while a call is in flight go together in the next", async () => {
    const keys: AdmitKeys = ["t2:{p0}:in", "t2:{p0}:meta", "t2:{p0}:adm:c"];
    const { b, calls, clock } = batcher(100_000);
    // The partition's sample of Redis's clock is taken: the first call goes at once.
    await clock.ensure(keys[1]);
    const first = b.admit(keys, entry(0), later());
    await new Promise((r) => setImmediate(r)); // the first call is out
    const rest = Array.from({ length: 20 }, (_, i) => b.admit(keys, entry(i + 1), later()));
    await Promise.all([first, ...rest]);
    assert.deepEqual(calls, [1, 20]);
    assert.equal(await redis.xlen(keys[0]), 21);
  });

  test("the bound admits exactly up to it and refuses the rest with the backlog", async () => {
    const keys: AdmitKeys = ["t3:{p0}:in", "t3:{p0}:meta", "t3:{p0}:adm:c"];
    const { b } = batcher(10);
    const results = await Promise.allSettled(Array.from({ length: 25 }, (_, i) => b.admit(keys, entry(i), later())));
    const ok = results.filter((r) => r.status === "fulfilled");
    assert.equal(ok.length, 10);
    // The admitted ones are the first ten, in order.
    results.slice(0, 10).forEach((r) => assert.equal(r.status, "fulfilled"));
    for (const r of results.slice(10)) {
      assert.equal(r.status, "rejected");
      const e = (r as PromiseRejectedResult).reason;
      assert.ok(e instanceof AdmitRefused, String(e));
      assert.equal(e.backlog, 10);
    }
    assert.equal(await redis.xlen(keys[0]), 10);
    // A lone submit at the bound: the same refusal.
    await assert.rejects(b.admit(keys, entry(99), later()), (e: unknown) => e instanceof AdmitRefused && e.backlog === 10);
  });

  test("a failed call fails every entry of it, and the queue goes on", async () => {
    let fail = true;
    const b = new AdmitBatcher(
      async (keys, args) => {
        if (fail) {
          fail = false;
          throw new Error("connection reset");
        }
        return redis.eval(ADMIT_LUA, keys.length, ...keys, ...args);
      },
      "writ",
      1000,
      1,
      clockOf(redis),
    );
    const keys: AdmitKeys = ["t4:{p0}:in", "t4:{p0}:meta", "t4:{p0}:adm:c"];
    const batch = await Promise.allSettled([0, 1, 2].map((i) => b.admit(keys, entry(i), later())));
    assert.ok(batch.every((r) => r.status === "rejected" && /connection reset/.test(String(r.reason))));
    assert.match(await b.admit(keys, entry(3), later()), /^\d+-\d+$/);
  });

  test("a call that runs twice (a re-send after a lost reply) adds its entries once", async () => {
    const keys: AdmitKeys = ["t5:{p0}:in", "t5:{p0}:meta", "t5:{p0}:adm:c"];
    // Each call runs twice, as ioredis does when the connection dropped before
    // the reply: the first run's reply is lost.
    const b = new AdmitBatcher(
      async (k, args) => {
        await redis.eval(ADMIT_LUA, k.length, ...k, ...args);
        return redis.eval(ADMIT_LUA, k.length, ...k, ...args);
      },
      "writ",
      1000,
      1,
      clockOf(redis),
    );
    const ids = await Promise.all([0, 1, 2].map((i) => b.admit(keys, entry(i), later())));
    ids.push(await b.admit(keys, entry(3), later()));
    const stored = await redis.xrange(keys[0], "-", "+");
    assert.deepEqual(
      stored.map(([id]) => id),
      ids,
      "each entry once, with the id its submit was given",
    );
  });

  test("odd replies fail every entry of their call", () => {
    const run = (n: number, reply: unknown) => {
      const out: string[] = [];
      settle(
        Array.from({ length: n }, () => ({ resolve: (id: string) => out.push(`ok ${id}`), reject: (e: unknown) => out.push(`err ${String(e)}`) })),
        reply,
      );
      return out;
    };
    assert.deepEqual(run(1, ["1-0"]), ["ok 1-0"]);
    assert.ok(run(1, "1-0").every((s) => s.startsWith("err Error: the admission script returned")));
    assert.deepEqual(run(3, ["1-0", "1-1", 4]), ["ok 1-0", "ok 1-1", "err AdmitRefused: BACKPRESSURE 4"]);
    assert.ok(run(2, 7).every((s) => s.startsWith("err Error: the admission script returned")));
    assert.ok(run(1, ["1-0", "1-1"]).every((s) => /more ids than entries/.test(s)));
    assert.ok(run(2, [["x"]]).every((s) => s.startsWith("err Error")));
  });

  test("admitArgs: the call number, window and deadline are ARGV[6..8], the entries start at ARGV[9]", () => {
    const args = admitArgs("g", 10, 8, 3, 1, 1_700_000_000_123, [["a", "1"], ["b", Buffer.from("2"), "c", 3]]);
    assert.deepEqual(args, ["g", 10, 8, "", 2, 3, 1, 1_700_000_000_123, 2, "a", "1", 4, "b", Buffer.from("2"), "c", 3]);
    // ARGV[n] is args[n - 1].
    assert.equal(args[8 - 1], 1_700_000_000_123);
    assert.equal(args[9 - 1], 2, "the first entry's argument count");
    assert.equal(admitArgs("g", 10, 8, 4, 1, 0, [["a", "1"]])[8 - 1], 0, "no deadline");
  });

  test("deadlineOf: the giving-up time in Redis's clock, less 1 ms per started second of the sample's age and 2 ms", () => {
    const s = { lower: 1_700_000_000_000, at: 1000 };
    assert.equal(deadlineOf(s, 1000), 1_700_000_001_000 - 2);
    assert.equal(deadlineOf(s, 1500), 1_700_000_001_500 - 1 - 2);
    assert.equal(deadlineOf(s, 2000), 1_700_000_002_000 - 1 - 2);
    assert.equal(deadlineOf(s, 2001), 1_700_000_002_001 - 2 - 2);
    assert.equal(deadlineOf(s, 3500), 1_700_000_003_500 - 3 - 2);
    // Fractions of the monotonic clock: rounded down.
    assert.equal(deadlineOf({ lower: 1_700_000_000_000.25, at: 1000.5 }, 1500.5), 1_700_000_001_500 - 1 - 2);
    // A caller that gave up before the sample arrived: age 0, never a later deadline.
    assert.equal(deadlineOf(s, 500), 1_700_000_000_500 - 2);
    assert.equal(redisMs(["1700000000", "123999"]), 1_700_000_000_123);
    assert.equal(redisMs([Buffer.from("1700000000"), Buffer.from("5")]), 1_700_000_000_000);
    assert.equal(redisMs(["x", "1"]), undefined);
    assert.equal(redisMs("1700000000"), undefined);
  });

  test("the script refuses a call past its deadline with EXPIRED, adds nothing, and still answers a call that ran", async () => {
    const keys: AdmitKeys = ["t6:{p0}:in", "t6:{p0}:meta", "t6:{p0}:adm:c"];
    const now = redisMs(await redis.call("TIME"))!;
    const run = (seq: number, deadline: number, n: number) =>
      redis.eval(ADMIT_LUA, keys.length, ...keys, ...admitArgs("writ", 1000, 1, seq, 1, deadline, [entry(n)]));
    const past = now - 1000;
    const future = now + 60_000;
    // Call 1 runs before its deadline.
    const first = (await run(1, future, 1)) as string[];
    assert.equal(first.length, 1);
    // Sent again after its deadline: it ran, so the record answers it, whatever the time.
    assert.deepEqual(await run(1, past, 1), first, "a call that ran gets its reply after its deadline");
    // Call 2, past its deadline: EXPIRED, nothing added, nothing recorded.
    const err = await run(2, past, 2).then(
      () => assert.fail("a call past its deadline ran"),
      (e: unknown) => e,
    );
    assert.ok(expiredReply(err), String(err));
    assert.match(String(err), /^ReplyError: EXPIRED admission call 2 ran \d+ ms after its deadline/);
    assert.equal(await redis.xlen(keys[0]), 1, "EXPIRED added an entry");
    assert.equal(await redis.hget(keys[2], "last"), "1", "EXPIRED recorded the call as run");
    // Call 2 again before its deadline runs (it never ran), and 0 is no deadline.
    const second = (await run(2, future, 2)) as string[];
    const third = (await run(3, 0, 3)) as string[];
    const stored = await redis.xrange(keys[0], "-", "+");
    assert.deepEqual(stored.map(([id]) => id), [first[0], second[0], third[0]]);
    assert.deepEqual(stored[1][1], entry(2).map(String));
  });

  test("a call whose writes gave up is refused EXPIRED: its writes are NOT accepted, also after a re-send, and the queue goes on", async () => {
    const keys: AdmitKeys = ["t7:{p0}:in", "t7:{p0}:meta", "t7:{p0}:adm:c"];
    const { b } = batcher(1000);
    // Writes whose caller gave up a second ago: the call's deadline has passed at Redis.
    const gone = await Promise.allSettled([0, 1].map((i) => b.admit(keys, entry(i), performance.now() - 1000)));
    assert.equal(await redis.xlen(keys[0]), 0, "a call past its deadline added entries");
    for (const r of gone) {
      assert.equal(r.status, "rejected");
      const reply = expiredReply((r as PromiseRejectedResult).reason);
      assert.ok(reply, String((r as PromiseRejectedResult).reason));
      const e = expiredError("c", reply);
      assert.ok(e instanceof WritConnectionError);
      assert.equal(e.accepted, "no");
      assert.match(e.message, /^the write to c was NOT accepted: Redis ran its admission call after its deadline \(\d+ ms after it, by Redis's clock\), when this client had given up on it; nothing was added; retry it/);
      // A re-sent call refused EXPIRED: still NOT added (a send that ran is answered from the record).
      const resent = expiredReply(new RefusedAfterResend(reply));
      assert.equal(resent, reply);
    }
    assert.equal(expiredReply(replyError("NOREPLICAS Not enough good replicas to write.")), undefined);
    assert.equal(expiredReply(new RefusedAfterResend(replyError("READONLY You can't write against a read only replica."))), undefined);
    // The next call (number 2) runs.
    assert.match(await b.admit(keys, entry(2), later()), /^\d+-\d+$/);
    assert.equal(await redis.hget(keys[2], "last"), "2");
  });

  test("a call whose sample of Redis's clock cannot be taken is not sent; the next call takes one", async () => {
    const keys: AdmitKeys = ["t8:{p0}:in", "t8:{p0}:meta", "t8:{p0}:adm:c"];
    let fail = true;
    let sent = 0;
    const clock = new RedisClock({
      time: async (key) => {
        if (fail) {
          fail = false;
          throw new Error("connection reset");
        }
        return redis.eval(TIME_LUA, 1, key);
      },
      warnNoTime: () => assert.fail("no NOPERM here"),
    });
    const b = new AdmitBatcher(
      async (k, args) => {
        sent++;
        return redis.eval(ADMIT_LUA, k.length, ...k, ...args);
      },
      "writ",
      1000,
      1,
      clock,
    );
    const batch = await Promise.allSettled([0, 1].map((i) => b.admit(keys, entry(i), later())));
    for (const r of batch) {
      assert.equal(r.status, "rejected");
      const e = (r as PromiseRejectedResult).reason;
      assert.ok(e instanceof NoClock, String(e));
      assert.match(e.message, /could not be asked for its clock.*connection reset/);
    }
    assert.equal(sent, 0, "a call without a deadline was sent");
    assert.match(await b.admit(keys, entry(2), later()), /^\d+-\d+$/);
    assert.equal(sent, 1);
    assert.equal(await redis.xlen(keys[0]), 1);
  });

  test("a sample is taken before a partition's first call and again once it is 10 s old", async () => {
    let samples = 0;
    const clock = new RedisClock({
      time: (key) => (samples++, redis.eval(TIME_LUA, 1, key)),
      warnNoTime: () => {},
    });
    assert.equal(clock.fresh("t9:{p0}:meta"), false);
    await Promise.all([clock.ensure("t9:{p0}:meta"), clock.ensure("t9:{p0}:meta")]);
    assert.equal(samples, 1, "two calls at once take one sample");
    await clock.ensure("t9:{p0}:meta");
    assert.equal(samples, 1, "a fresh sample is used again");
    await clock.ensure("t9:{p1}:meta");
    assert.equal(samples, 2, "each partition has its own");
    // The sample is close to Redis's clock: its deadline for now is now in Redis's clock, less 2 ms.
    const before = redisMs(await redis.call("TIME"))!;
    const d = clock.deadline("t9:{p0}:meta", performance.now());
    const after = redisMs(await redis.call("TIME"))!;
    assert.ok(d <= after - 2, `deadline ${d} after Redis's clock ${after}`);
    assert.ok(d > before - 60_000, `deadline ${d} is not near Redis's clock ${before}`);
    // Aged past SAMPLE_FRESH_MS: taken again.
    const known = (clock as unknown as { known: Map<string, { at: number; sample?: { at: number } }> }).known.get("t9:{p0}:meta")!;
    known.at -= SAMPLE_FRESH_MS;
    assert.equal(clock.fresh("t9:{p0}:meta"), false);
    await clock.ensure("t9:{p0}:meta");
    assert.equal(samples, 3);
  });

  test("an old sample still serves when a new one cannot be taken, with a wider drift allowance", async () => {
    let fail = false;
    const clock = new RedisClock({
      time: async (key) => {
        if (fail) throw new Error("connection reset");
        return redis.eval(TIME_LUA, 1, key);
      },
      warnNoTime: () => assert.fail("no NOTIME here"),
    });
    await clock.ensure("t11:{p0}:meta");
    const known = (clock as unknown as { known: Map<string, { at: number; sample?: { at: number } }> }).known.get("t11:{p0}:meta")!;
    const g = performance.now() + 1000;
    const young = clock.deadline("t11:{p0}:meta", g);
    // Aged 20 s: 20 ms more of drift allowance.
    known.at -= 2 * SAMPLE_FRESH_MS;
    known.sample!.at -= 2 * SAMPLE_FRESH_MS;
    fail = true;
    await clock.ensure("t11:{p0}:meta");
    const old = clock.deadline("t11:{p0}:meta", g);
    assert.ok(old < young, `the old sample's deadline ${old} is not earlier than ${young}`);
    // It counts as fresh again: the calls meanwhile do not ask each time
    // (the minReplicasAcked path waits for a fresh sample before it sends).
    assert.equal(clock.fresh("t11:{p0}:meta"), true);
    // With no sample at all, a failure stops the call.
    await assert.rejects(clock.ensure("t11:{p1}:meta"), NoClock);
  });

  test("a writer whose Redis user may not run TIME sends no deadline and is warned once", async () => {
    // The script says NOTIME (an ACL refusal inside a script is a plain ERR
    // before Redis 7.2, NOPERM after).
    await redis.call("ACL", "SETUSER", "no-time", "reset", "on", ">nt-pw", "~*", "+@all", "-time");
    const user = new Redis(server.url.replace("redis://", "redis://no-time:nt-pw@"));
    try {
      await assert.rejects(user.eval(TIME_LUA, 1, "t10:{p0}:meta"), /^ReplyError: NOTIME /);
      const warned: unknown[] = [];
      const clock = clockOf(user, warned);
      await clock.ensure("t10:{p0}:meta");
      await clock.ensure("t10:{p1}:meta");
      assert.equal(clock.deadline("t10:{p0}:meta", later()), 0);
      assert.equal(clock.deadline("t10:{p1}:meta", later()), 0);
      assert.equal(warned.length, 1, "warned once per client");
      assert.match(String(warned[0]), /NOTIME/);
      // A call with no deadline is admitted.
      const keys: AdmitKeys = ["t10:{p0}:in", "t10:{p0}:meta", "t10:{p0}:adm:c"];
      const b = new AdmitBatcher((k, args) => user.eval(ADMIT_LUA, k.length, ...k, ...args), "writ", 1000, 1, clock);
      assert.match(await b.admit(keys, entry(1), later()), /^\d+-\d+$/);
      // Asked again once 10 s old: with +time granted meanwhile, the deadline is back.
      await redis.call("ACL", "SETUSER", "no-time", "+time");
      const known = (clock as unknown as { known: Map<string, { at: number }> }).known.get("t10:{p0}:meta")!;
      known.at -= SAMPLE_FRESH_MS;
      await clock.ensure("t10:{p0}:meta");
      assert.ok(clock.deadline("t10:{p0}:meta", later()) > 0);
      // Any other refusal of the script is no NOTIME: the call does not go without a deadline.
      const other = new RedisClock({
        time: async () => {
          throw replyError("NOPERM User w has no permissions to run the 'evalsha' command");
        },
        warnNoTime: () => assert.fail("no NOTIME here"),
      });
      await assert.rejects(other.ensure("m"), (e: unknown) => e instanceof NoClock && /NOPERM/.test(e.message));
      assert.throws(() => other.deadline("m", later()), NoClock);
    } finally {
      user.disconnect();
      await redis.call("ACL", "DELUSER", "no-time");
    }
  });
});
