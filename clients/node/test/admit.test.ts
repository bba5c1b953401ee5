// Group commit of admissions (src/admit.ts) against a real redis-server with
// the real admission script: concurrent submits to one partition share calls,
// every entry lands once and in submit order (also when a call runs twice),
// the bound refuses exactly the entries past it, and odd replies fail every
// entry of their call.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";

import { AdmitBatcher, AdmitRefused, MAX_BATCH, settle, type AdmitKeys, type Arg } from "../src/admit.js";
import { ADMIT_LUA } from "../src/lua.js";
import { RedisServer } from "./harness.js";

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
    const b = new AdmitBatcher(
      async (keys, args) => {
        calls.push(args[3] === "" ? Number(args[4]) : 1);
        return redis.eval(ADMIT_LUA, keys.length, ...keys, ...args);
      },
      "writ",
      bound,
      1,
    );
    return { b, calls };
  }

  const entry = (n: number): Arg[] => ["n", String(n), "pad", "x".repeat(n % 7)];

  test("concurrent submits share calls and land once, in submit order", async () => {
    const keys: AdmitKeys = ["t1:{p0}:in", "t1:{p0}:meta", "t1:{p0}:adm:c"];
    const { b, calls } = batcher(100_000);
    const n = MAX_BATCH + 44;
    const ids = await Promise.all(Array.from({ length: n }, (_, i) => b.admit(keys, entry(i))));
    // All made in one turn: one full call, then the rest.
    assert.deepEqual(calls, [MAX_BATCH, 44]);
    const stored = await redis.xrange(keys[0], "-", "+");
    assert.equal(stored.length, n);
    stored.forEach(([id, fields], i) => {
      assert.equal(id, ids[i], `entry ${i} has its own id`);
      assert.deepEqual(fields, entry(i).map(String));
    });
    // A lone submit goes alone, in a call of its own.
    const one = await b.admit(keys, entry(7));
    assert.deepEqual(calls.slice(2), [1]);
    assert.equal((await redis.xrevrange(keys[0], "+", "-", "COUNT", 1))[0][0], one);
  });

  test("submits made while a call is in flight go together in the next", async () => {
    const keys: AdmitKeys = ["t2:{p0}:in", "t2:{p0}:meta", "t2:{p0}:adm:c"];
    const { b, calls } = batcher(100_000);
    const first = b.admit(keys, entry(0));
    await new Promise((r) => setImmediate(r)); // the first call is out
    const rest = Array.from({ length: 20 }, (_, i) => b.admit(keys, entry(i + 1)));
    await Promise.all([first, ...rest]);
    assert.deepEqual(calls, [1, 20]);
    assert.equal(await redis.xlen(keys[0]), 21);
  });

  test("the bound admits exactly up to it and refuses the rest with the backlog", async () => {
    const keys: AdmitKeys = ["t3:{p0}:in", "t3:{p0}:meta", "t3:{p0}:adm:c"];
    const { b } = batcher(10);
    const results = await Promise.allSettled(Array.from({ length: 25 }, (_, i) => b.admit(keys, entry(i))));
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
    await assert.rejects(b.admit(keys, entry(99)), (e: unknown) => e instanceof AdmitRefused && e.backlog === 10);
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
    );
    const keys: AdmitKeys = ["t4:{p0}:in", "t4:{p0}:meta", "t4:{p0}:adm:c"];
    const batch = await Promise.allSettled([0, 1, 2].map((i) => b.admit(keys, entry(i))));
    assert.ok(batch.every((r) => r.status === "rejected" && /connection reset/.test(String(r.reason))));
    assert.match(await b.admit(keys, entry(3)), /^\d+-\d+$/);
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
    );
    const ids = await Promise.all([0, 1, 2].map((i) => b.admit(keys, entry(i))));
    ids.push(await b.admit(keys, entry(3)));
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
});
