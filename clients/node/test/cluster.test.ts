// Redis Cluster mode and minReplicasAcked: the config, then against a local
// Redis Cluster (3 masters, 1 replica each; test/harness.ts RedisCluster)
// with `writ serve` in cluster mode: writes through the backtest-kit adapters
// to keys in all 8 partitions (spread over every master) in ack and submit
// mode, read back by new processes; many-key cache reads spanning slots; WAIT
// for replicas. Then a single redis-server without replicas, where
// minReplicasAcked must fail with a clear error after about the timeout.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Cluster, Redis } from "ioredis";
import calculateSlot from "cluster-key-slot";
import { MongoClient } from "mongodb";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { bsonBuffer, WritClient } from "../src/client.js";
import { resolveConfig, type WriteModeName } from "../src/config.js";
import { RedisFullError, WritConfigError, WritConnectionError, WritTimeoutError } from "../src/errors.js";
import { setup } from "../src/setup.js";
import { toSortable } from "../src/version.js";
import { FakeKit } from "./fakekit.js";
import { pause, RedisCluster, RedisServer, resume, TestCa, TestEnv } from "./harness.js";

const MIN = 60000;
const SIGNAL = "signal-items";
const CANDLE = "candle-items";

const configError = (re: RegExp) => (e: unknown) => e instanceof WritConfigError && re.test(e.message);

describe("cluster config", () => {
  test("redisCluster, minReplicasAcked and replicaAckTimeoutMs: defaults, env, explicit", () => {
    const d = resolveConfig({}, {});
    assert.equal(d.redisCluster, false);
    assert.equal(d.minReplicasAcked, 0);
    assert.equal(d.replicaAckTimeoutMs, 1000);
    const seeds = "redis://10.0.0.1:7000, redis://10.0.0.2:7000,redis://10.0.0.3:7000";
    const e = resolveConfig({}, {
      WRIT_REDIS_URL: seeds,
      WRIT_REDIS_CLUSTER: "true",
      WRIT_REDIS_MIN_REPLICAS_ACKED: "1",
      CC_WRIT_REDIS_REPLICA_ACK_TIMEOUT_MS: "250",
    });
    assert.equal(e.redisCluster, true);
    assert.equal(e.redisUrl, seeds);
    assert.equal(e.minReplicasAcked, 1);
    assert.equal(e.replicaAckTimeoutMs, 250);
    assert.equal(resolveConfig({}, { WRIT_REDIS_CLUSTER: "1" }).redisCluster, true);
    assert.equal(resolveConfig({}, { WRIT_REDIS_CLUSTER: "0" }).redisCluster, false);
    assert.equal(resolveConfig({ redisCluster: false }, { WRIT_REDIS_CLUSTER: "1" }).redisCluster, false, "explicit wins");
    // One URL in cluster mode is a seed too; TLS files go with an all-rediss:// list.
    assert.doesNotThrow(() => resolveConfig({ redisCluster: true, redisUrl: "redis://h:7000" }, {}));
    // (The files are read by the client, not by resolveConfig.)
    assert.doesNotThrow(() => resolveConfig({ redisCluster: true, redisUrl: "rediss://a:1,rediss://b:1", redisTlsCaFile: "/x.pem" }, {}));
  });

  test("a list of URLs without cluster mode, and bad values, are WritConfigErrors", () => {
    const list = "redis://a:7000,redis://b:7000";
    assert.throws(() => resolveConfig({ redisUrl: list }, {}), configError(/lists 2 URLs.*redisCluster: true \(WRIT_REDIS_CLUSTER=1\)/));
    assert.throws(() => resolveConfig({}, { WRIT_REDIS_URL: list }), configError(/lists 2 URLs/));
    assert.throws(() => resolveConfig({}, { WRIT_REDIS_URL: list, WRIT_REDIS_CLUSTER: "yes" }), configError(/WRIT_REDIS_CLUSTER="yes"/));
    assert.throws(() => resolveConfig({ redisCluster: true, redisUrl: "redis://a:1,rediss://b:1" }, {}), configError(/mixes redis:\/\/ and rediss:\/\//));
    assert.throws(() => resolveConfig({ redisCluster: true, redisUrl: "redis://a:1,,redis://b:1" }, {}), configError(/an empty URL/));
    assert.throws(() => resolveConfig({ redisCluster: true, redisUrl: "redis://a:1,http://b:1" }, {}), configError(/http:\/\/b:1/));
    // Seeds without their scheme are one URL to the split: say how to list them.
    for (const redisUrl of ["redis://a:1,b:2", "redis://:pw@a:1,b:2/0"]) {
      assert.throws(
        () => resolveConfig({ redisCluster: true, redisUrl }, {}),
        (e: unknown) => e instanceof WritConfigError && /give each its scheme/.test(e.message) && !/pw/.test(e.message),
      );
    }
    assert.throws(
      () => resolveConfig({ redisCluster: true, redisUrl: "redis://:pw1@a:1,redis://:pw2@b:1" }, {}),
      (e: unknown) => e instanceof WritConfigError && /different users or passwords/.test(e.message) && !/pw1|pw2/.test(e.message),
    );
    assert.throws(() => resolveConfig({ redisCluster: true, redisUrl: "redis://a:1/3" }, {}), configError(/database 3.*only database 0/));
    assert.throws(() => resolveConfig({ redisCluster: "true" as never }, {}), configError(/redisCluster.*true or false/));
    assert.throws(
      () => resolveConfig({ redisUrl: "rediss://a:1,rediss://b:1", redisTlsCaFile: "/x.pem" }, {}),
      configError(/lists 2 URLs/),
    );
    for (const bad of [-1, 1.5, 17, Number.NaN, "1" as never]) {
      assert.throws(() => resolveConfig({ minReplicasAcked: bad }, {}), configError(/minReplicasAcked.*0 to 16/), String(bad));
    }
    assert.throws(() => resolveConfig({}, { WRIT_REDIS_MIN_REPLICAS_ACKED: "one" }), configError(/WRIT_REDIS_MIN_REPLICAS_ACKED="one"/));
    for (const bad of [0, -5, 60001, 2.5]) {
      assert.throws(() => resolveConfig({ replicaAckTimeoutMs: bad }, {}), configError(/replicaAckTimeoutMs.*1 to 60000/), String(bad));
    }
  });
});

/** The master port serving each partition's slot (the hash tag `{p<N>}`). */
async function partitionMasters(env: TestEnv): Promise<number[]> {
  return Promise.all(
    Array.from({ length: env.partitions }, (_, p) => env.cluster!.masterOf(calculateSlot(`${env.name}:{p${p}}:in`))),
  );
}

describe("Redis Cluster", () => {
  let env: TestEnv;
  let mongo: MongoClient;
  let cluster: Cluster;
  const clients: WritClient[] = [];

  /** A new "process": its own client (setup) and adapter registry. */
  function processWith(mode: WriteModeName, extra: Record<string, unknown> = {}): { kit: FakeKit; client: WritClient } {
    const kit = new FakeKit();
    const client = setup(env.clientConfig({ mode, ...extra }), kit.adapters);
    clients.push(client);
    return { kit, client };
  }

  before(async () => {
    env = await TestEnv.start("cluster", { redisCluster: true });
    console.log(`# Redis Cluster (6 nodes) started in ${env.cluster!.startMs} ms`);
    mongo = new MongoClient(env.mongoUri);
    cluster = new Cluster(env.cluster!.nodes.map((n) => ({ host: "127.0.0.1", port: n.port })));
  });

  after(async () => {
    for (const c of clients) await c.close();
    await mongo?.close();
    cluster?.disconnect();
    await env?.stop();
  });

  const g = (fn: () => Promise<void>) => () => env.guard(fn);

  test("the 8 partitions' slots are spread over all 3 masters", g(async () => {
    assert.equal(env.partitions, 8);
    const masters = await partitionMasters(env);
    assert.equal(new Set(masters).size, 3, `partition → master port: ${masters.join(" ")}`);
  }));

  /** Signal contexts whose keys cover all 8 partitions (at least `per` each). */
  function contexts(client: WritClient, tag: string, per = 2): string[][] {
    const out: string[][] = [];
    const count = new Array(env.partitions).fill(0);
    for (let i = 0; count.some((c) => c < per); i++) {
      const ctx = [`${tag}-S${i}`, "strat", "binance"];
      const p = client.resolveKey(SIGNAL, { symbol: ctx[0], strategyName: ctx[1], exchangeName: ctx[2] }).partition;
      if (count[p] >= per) continue;
      count[p]++;
      out.push(ctx);
    }
    return out;
  }

  async function streamLengths(): Promise<number[]> {
    return Promise.all(Array.from({ length: env.partitions }, (_, p) => cluster.xlen(`${env.name}:{p${p}}:in`)));
  }

  for (const mode of ["ack", "submit"] as const) {
    test(`${mode} mode: adapter writes to all 8 partitions, read back by new processes from the cache`, g(async () => {
      const before = await streamLengths();
      const w = processWith(mode);
      const ctxs = contexts(w.client, mode);
      const row = (ctx: string[]) => ({ id: `${ctx[0]}-sig`, position: "long", priceOpen: ctx[0].length, tp: Infinity });
      await Promise.all(ctxs.map((ctx) => w.kit.call("Signal", ctx, "writeSignalData", row(ctx))));
      const after = await streamLengths();
      after.forEach((n, p) => assert.ok(n >= before[p] + 2, `partition ${p} stream got the writes: ${before[p]} → ${n}`));
      for (const ctx of ctxs) assert.deepEqual(await w.kit.call("Signal", ctx, "readSignalData"), row(ctx), `${ctx[0]} in the writer`);
      if (mode === "submit") await w.client.flush();
      // A new process syncs with the daemon over all partitions (every master), then reads from the cache.
      const r = processWith(mode);
      for (const ctx of ctxs) assert.deepEqual(await r.kit.call("Signal", ctx, "readSignalData"), row(ctx), `${ctx[0]} in a new process`);
      const recs = await r.client.readMany(SIGNAL, ctxs.map(([symbol, strategyName, exchangeName]) => ({ symbol, strategyName, exchangeName })));
      assert.deepEqual(recs.map((x) => x?.source), ctxs.map(() => "cache"));
      const docs = await mongo.db(env.name).collection(SIGNAL).countDocuments({ symbol: { $in: ctxs.map((c) => c[0]) } });
      assert.equal(docs, ctxs.length, "MongoDB holds every write");
    }));
  }

  test("candles: one readCandlesData of 60 keys spanning slots on every master, from the cache", g(async () => {
    const w = processWith("ack");
    const ctx = ["CL-BTC", "1m", "binance"];
    const base = Math.floor(Date.now() / MIN) * MIN - 90 * MIN;
    const candles = Array.from({ length: 60 }, (_, i) => ({ timestamp: base + i * MIN, open: i, high: i + 2, low: i - 1, close: i + 1, volume: 10 + i }));
    await w.kit.call("Candle", ctx, "writeCandlesData", candles);
    const keys = candles.map((c) => ({ exchangeName: "binance", symbol: "CL-BTC", interval: "1m", timestamp: c.timestamp }));
    const masters = await partitionMasters(env);
    const parts = new Set(keys.map((k) => w.client.resolveKey(CANDLE, k).partition));
    assert.equal(parts.size, 8, "the candles are in every partition");
    assert.equal(new Set([...parts].map((p) => masters[p])).size, 3, "on every master");
    const r = processWith("submit");
    assert.deepEqual(await r.kit.call("Candle", ctx, "readCandlesData", 60, base, base + 60 * MIN), candles);
    const recs = await r.client.readMany(CANDLE, keys);
    assert.deepEqual(recs.map((x) => x?.source), keys.map(() => "cache"), "every one a cache hit");
    assert.deepEqual(recs.map((x) => x?.doc?.close), candles.map((c) => c.close));
    // Misses spanning slots read through MongoDB, and the cache fills on every master.
    const gone = candles.map((c) => c.timestamp + 1000 * MIN);
    const none = await r.client.readMany(CANDLE, gone.map((timestamp) => ({ ...keys[0], timestamp })));
    assert.deepEqual(none, gone.map(() => null));
  }));

  test("minReplicasAcked 1: writes to every master return once a replica has the entry", g(async () => {
    const w = processWith("ack", { minReplicasAcked: 1, replicaAckTimeoutMs: 2000 });
    const ctxs = contexts(w.client, "wait1", 1);
    // (A WAIT that timed out would fail the write.)
    const tickets = await Promise.all(
      ctxs.map(([symbol, strategyName, exchangeName]) =>
        w.client.submit(SIGNAL, { symbol, strategyName, exchangeName }, "put", { payload: { n: symbol } }),
      ),
    );
    // Every entry is on its master's replica already (read there with READONLY).
    const replicaOf = new Map<number, number>();
    for (const n of env.cluster!.nodes) {
      const repl = await env.cluster!.info(n.port, "replication");
      if (repl.get("role") === "slave") replicaOf.set(Number(repl.get("master_port")), n.port);
    }
    const masters = await partitionMasters(env);
    for (let i = 0; i < ctxs.length; i++) {
      const p = w.client.resolveKey(SIGNAL, { symbol: ctxs[i][0], strategyName: ctxs[i][1], exchangeName: ctxs[i][2] }).partition;
      const replica = new Redis(replicaOf.get(masters[p])!, "127.0.0.1", { lazyConnect: true });
      try {
        await replica.connect();
        await replica.call("READONLY");
        const got = await replica.xrange(`${env.name}:{p${p}}:in`, tickets[i].entryId, tickets[i].entryId);
        assert.equal(got.length, 1, `entry ${tickets[i].entryId} of partition ${p} is on the replica`);
      } finally {
        replica.disconnect();
      }
    }
    // And the daemon applies them as usual (ack mode through the adapters, too).
    for (const t of tickets) assert.equal((await w.client.waitAck(t)).outcome, "applied");
    await w.kit.call("Signal", ctxs[0], "writeSignalData", { id: "via-adapter" });
    assert.deepEqual(await processWith("submit").kit.call("Signal", ctxs[0], "readSignalData"), { id: "via-adapter" });
  }));

  test("a Redis Cluster at its maxmemory refuses writes at once with RedisFullError, on both admission paths, and nothing is added", g(async () => {
    const admins = env.cluster!.nodes.map((n) => new Redis(n.port, "127.0.0.1"));
    try {
      for (const extra of [{}, { minReplicasAcked: 1, replicaAckTimeoutMs: 2000 }]) {
        const w = processWith("submit", extra);
        const ctxs = contexts(w.client, `full${Object.keys(extra).length}`, 1);
        // Connected to every master first.
        for (const [symbol, strategyName, exchangeName] of ctxs) {
          await w.client.submit(SIGNAL, { symbol, strategyName, exchangeName }, "put", { payload: 0 });
        }
        const before = await streamLengths();
        for (const a of admins) await a.config("SET", "maxmemory", "1");
        try {
          for (const [symbol, strategyName, exchangeName] of ctxs) {
            await assert.rejects(
              w.client.submit(SIGNAL, { symbol, strategyName, exchangeName }, "put", { payload: 1 }),
              (e: unknown) => e instanceof RedisFullError && /NOT accepted/.test(e.message) && /OOM/.test(e.reply),
              JSON.stringify(extra),
            );
          }
        } finally {
          for (const a of admins) await a.config("SET", "maxmemory", "0");
        }
        assert.deepEqual(await streamLengths(), before, "nothing added");
      }
    } finally {
      for (const a of admins) a.disconnect();
    }
  }));

  test("minReplicasAcked 1: a client left on another partition count is refused at its next write, and nothing is added", g(async () => {
    const w = processWith("submit", { minReplicasAcked: 1, replicaAckTimeoutMs: 2000 });
    await w.client.ready();
    const part = ([symbol, strategyName, exchangeName]: string[]) =>
      w.client.resolveKey(SIGNAL, { symbol, strategyName, exchangeName }).partition;
    const ctxs = contexts(w.client, "recount", 1).filter((ctx) => part(ctx) !== 0);
    const metas = Array.from({ length: env.partitions }, (_, p) => `${env.name}:{p${p}}:meta`);
    // The copies as `writ partitions --set` to 4 leaves them (partition 0 holds
    // the record the running daemon checks, and is left alone here).
    const saved = await Promise.all(metas.map((m) => cluster.hget(m, "partitions")));
    try {
      for (let p = 1; p < env.partitions; p++) await cluster.hset(metas[p], "partitions", "4");
      const before = await streamLengths();
      for (const [symbol, strategyName, exchangeName] of ctxs) {
        await assert.rejects(
          w.client.submit(SIGNAL, { symbol, strategyName, exchangeName }, "put", { payload: { n: 1 } }),
          (e: unknown) =>
            e instanceof WritConfigError && /NOT accepted/.test(e.message) && /records 4 partitions/.test(e.message),
        );
      }
      assert.deepEqual(await streamLengths(), before, "nothing added");
    } finally {
      for (let p = 1; p < env.partitions; p++) {
        if (saved[p] === null) await cluster.hdel(metas[p], "partitions");
        else await cluster.hset(metas[p], "partitions", saved[p]!);
      }
    }
  }));

  test("minReplicasAcked 2 with one replica per master: a WritTimeoutError, accepted unknown, after about the timeout", g(async () => {
    const w = processWith("submit", { minReplicasAcked: 2, replicaAckTimeoutMs: 400 });
    await w.client.ready();
    // The daemon is stopped while the WAIT is out: an ack that came meanwhile would settle the write
    // (it succeeds then, whatever the WAIT says).
    const daemon = env.writ!.proc.child;
    await pause(daemon);
    let err: unknown;
    let took: number;
    try {
      const t0 = Date.now();
      err = await w.client.submit(SIGNAL, { symbol: "wait2", strategyName: "s", exchangeName: "e" }, "put", { payload: 1 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      took = Date.now() - t0;
    } finally {
      resume(daemon);
    }
    assert.ok(err instanceof WritTimeoutError, `got ${err}`);
    assert.match(err.message, /reached the Redis master but not 2 replica\(s\) within 400 ms .*1 confirmed.*may be lost.*may still be applied.*do not simply send it again.*call sync\(\)/);
    assert.equal(err.accepted, "unknown");
    assert.ok(took >= 380 && took < 3000, `failed after ${took} ms`);
    assert.equal(w.client.pendingCount, 0, "not kept as a pending write");
  }));

  test("minReplicasAcked 1 with one master's replica stopped: writes there fail, writes to the others succeed", g(async () => {
    const w = processWith("submit", { minReplicasAcked: 1, replicaAckTimeoutMs: 600 });
    const masters = await partitionMasters(env);
    const ctxs = contexts(w.client, "stop1", 1);
    const partOf = (ctx: string[]) => w.client.resolveKey(SIGNAL, { symbol: ctx[0], strategyName: ctx[1], exchangeName: ctx[2] }).partition;
    const victim = masters[0];
    let replica: RedisCluster["nodes"][number] | undefined;
    for (const n of env.cluster!.nodes) {
      const repl = await env.cluster!.info(n.port, "replication");
      if (repl.get("role") === "slave" && Number(repl.get("master_port")) === victim) replica = n;
    }
    assert.ok(replica, `the replica of :${victim}`);
    // Connected to every master first: the timing below is of the WAITs alone.
    await Promise.all(
      ctxs.map(([symbol, strategyName, exchangeName]) => w.client.submit(SIGNAL, { symbol, strategyName, exchangeName }, "put", { payload: 0 })),
    );
    await pause(replica.proc.child);
    // The daemon too, while the WAITs are out: an ack that came meanwhile would settle a write on
    // the victim (it succeeds then, whatever the WAIT says).
    const daemon = env.writ!.proc.child;
    await pause(daemon);
    try {
      const t0 = Date.now();
      // The order in which the writes settle: a write to another master must
      // not wait for the victim's WAIT.
      let settled = 0;
      const results = await Promise.all(
        ctxs.map(([symbol, strategyName, exchangeName]) =>
          w.client.submit(SIGNAL, { symbol, strategyName, exchangeName }, "put", { payload: symbol }).then(
            () => ({ ok: true as const, at: Date.now() - t0, nth: ++settled }),
            (e: unknown) => ({ ok: false as const, e, at: Date.now() - t0, nth: ++settled }),
          ),
        ),
      );
      results.forEach((r, i) => {
        const onVictim = masters[partOf(ctxs[i])] === victim;
        if (onVictim) {
          assert.ok(!r.ok && r.e instanceof WritTimeoutError, `partition ${partOf(ctxs[i])} (master :${victim}, replica stopped) fails`);
          assert.match((r.e as Error).message, /not 1 replica\(s\) within 600 ms .*0 confirmed/);
          assert.ok(r.at >= 580 && r.at < 2000, `failed after ${r.at} ms`);
        } else {
          assert.ok(r.ok, `partition ${partOf(ctxs[i])} (master :${masters[partOf(ctxs[i])]}) succeeds: ${!r.ok && r.e}`);
        }
      });
      assert.ok(masters.some((m) => m === victim) && masters.some((m) => m !== victim));
      const lastSuccess = Math.max(...results.filter((r) => r.ok).map((r) => r.nth));
      const firstFailure = Math.min(...results.filter((r) => !r.ok).map((r) => r.nth));
      assert.ok(
        lastSuccess < firstFailure,
        `every write to another master settled before the first write to the stopped replica's master failed, not held up ` +
          `by it (settled in the order ${JSON.stringify(results.map((r, i) => ({ partition: partOf(ctxs[i]), ok: r.ok, nth: r.nth })))})`,
      );
    } finally {
      resume(daemon);
      resume(replica.proc.child);
    }
    // Once the replica runs again, writes there succeed.
    const ctx = ctxs.find((c) => masters[partOf(c)] === victim)!;
    await w.client.submit(SIGNAL, { symbol: ctx[0], strategyName: ctx[1], exchangeName: ctx[2] }, "put", { payload: "again" });
  }));

  test("a cluster node without redisCluster, and redisCluster on a single Redis, are refused clearly", g(async () => {
    const node = `redis://127.0.0.1:${env.cluster!.nodes[0].port}`;
    const plain = new WritClient(env.clientConfig({ redisCluster: false, redisUrl: node }));
    clients.push(plain);
    await assert.rejects(plain.ready(), configError(/is a Redis Cluster node.*set redisCluster: true/));
    const dir = mkdtempSync(join(tmpdir(), "writ-node-single-"));
    const single = await RedisServer.start(dir);
    try {
      const c = new WritClient(env.clientConfig({ redisUrl: single.url }));
      clients.push(c);
      const t0 = Date.now();
      await assert.rejects(
        c.ready(),
        (e: unknown) => e instanceof WritConnectionError && /not a cluster node.*redisCluster: false/.test(e.message),
      );
      assert.ok(Date.now() - t0 < 10000);
    } finally {
      await single.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }));
});

describe("minReplicasAcked on a single redis-server without replicas", () => {
  let redis: RedisServer;
  let dir: string;
  const clients: WritClient[] = [];
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "writ-node-noreplica-"));
    redis = await RedisServer.start(dir);
  });
  after(async () => {
    for (const c of clients) await c.close();
    await redis?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a write fails after about replicaAckTimeoutMs with an error saying replicas are needed; reads are not held up", async () => {
    const c = new WritClient({ redisUrl: redis.url, namespace: `nr${process.pid}`, minReplicasAcked: 1, replicaAckTimeoutMs: 500 });
    clients.push(c);
    await c.ready();
    const cached = c.resolveKey(SIGNAL, { symbol: "nr-cached", strategyName: "s", exchangeName: "e" });
    const plain = new Redis(redis.port, "127.0.0.1");
    await plain.hset(c.names.cache(cached.partition, SIGNAL, cached.canonical), {
      v: toSortable("1-0"),
      doc: bsonBuffer({ symbol: "nr-cached", payload: "cached" }),
    });
    const t0 = Date.now();
    // The order in which the writes and the read settle.
    let settled = 0;
    const writes = [1, 2, 3].map((i) =>
      c.submit(SIGNAL, { symbol: `nr${i}`, strategyName: "s", exchangeName: "e" }, "put", { payload: i }).then(
        () => undefined,
        (e: unknown) => ({ e, at: Date.now() - t0, nth: ++settled }),
      ),
    );
    // A read meanwhile (a cache hit, sent once the WAIT is on its way) does not wait behind
    // the WAIT: admissions have their own connection.
    await new Promise((r) => setTimeout(r, 50));
    const hit = await c.readRecord(SIGNAL, { symbol: "nr-cached", strategyName: "s", exchangeName: "e" });
    const readNth = ++settled;
    assert.deepEqual(hit?.doc, { symbol: "nr-cached", payload: "cached" });
    const errs = await Promise.all(writes);
    for (const x of errs) {
      assert.ok(x && x.e instanceof WritTimeoutError, `got ${x?.e}`);
      assert.match(
        (x.e as Error).message,
        /reached the Redis master but not 1 replica\(s\) within 500 ms .*0 confirmed.*minReplicasAcked needs a Redis master with replicas.*minReplicasAcked: 0/,
      );
      // The three writes share one WAIT (one batch): each fails after about the timeout.
      assert.ok(x.at >= 480 && x.at < 1500, `failed after ${x.at} ms`);
    }
    assert.ok(
      errs.every((x) => x!.nth > readNth),
      `the read (settled ${readNth}th) finished before the first write that waited for WAIT failed (${errs.map((x) => x?.nth).join(", ")})`,
    );
    // The entries did reach the server (the message says they may still be applied).
    try {
      const total = (await Promise.all([...Array(8).keys()].map((p) => plain.xlen(`nr${process.pid}:{p${p}}:in`)))).reduce((a, b) => a + b, 0);
      assert.equal(total, 3);
    } finally {
      plain.disconnect();
    }
  });
});

describe("Redis Cluster over TLS", () => {
  let dir: string;
  let ca: TestCa;
  let cluster: RedisCluster;
  const clients: WritClient[] = [];
  const PASSWORD = "cl/us:ter@s3cret";

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "writ-node-tlscluster-"));
    ca = new TestCa(join(dir, "ca"));
    // 3 TLS-only masters without replicas, a password on every node.
    cluster = await RedisCluster.start(dir, { replicas: 0, tls: { ca, authClients: "no", password: PASSWORD } });
    console.log(`# Redis Cluster over TLS (3 nodes) started in ${cluster.startMs} ms`);
  });

  after(async () => {
    for (const c of clients) await c.close();
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const client = (extra: Record<string, unknown>) => {
    const c = new WritClient({ redisCluster: true, redisUrl: cluster.url, namespace: `tc${process.pid}`, ...extra });
    clients.push(c);
    return c;
  };

  test("rediss:// seeds with redisTlsCaFile and a password: writes reach every master", async () => {
    const seeds = cluster.url.split(",");
    // One seed is enough: the other nodes are discovered, and get the CA and the password too.
    const c = client({ redisUrl: seeds[0], redisTlsCaFile: ca.ca });
    const masters = await Promise.all(
      Array.from({ length: 8 }, (_, p) => cluster.masterOf(calculateSlot(`tc${process.pid}:{p${p}}:in`))),
    );
    assert.equal(new Set(masters).size, 3, "the partitions are on all 3 masters");
    const seen = new Set<number>();
    for (let i = 0; seen.size < 8; i++) {
      const key = { symbol: `tls${i}`, strategyName: "s", exchangeName: "e" };
      const p = c.resolveKey(SIGNAL, key).partition;
      if (seen.has(p)) continue;
      seen.add(p);
      const t = await c.submit(SIGNAL, key, "put", { payload: i });
      assert.match(t.entryId, /^\d+-\d+$/);
    }
  });

  test("without redisTlsCaFile the first connection fails saying what to set, without the password", async () => {
    const c = client({});
    // Twice: the second try fails as fast (the Cluster does not sit reconnecting with the command queued).
    for (const attempt of [1, 2]) {
      const t0 = Date.now();
      await assert.rejects(c.ready(), (e: unknown) => {
        assert.ok(e instanceof WritConnectionError, String(e));
        assert.match(e.message, /Redis Cluster at rediss:\/\/\*\*\*@127\.0\.0\.1/);
        assert.match(e.message, /certificate/i, "the TLS reason, not just \"Connection is closed.\"");
        assert.match(e.message, /redisTlsCaFile/);
        assert.ok(!e.message.includes("s3cret"), e.message);
        return true;
      });
      assert.ok(Date.now() - t0 < 10000, `attempt ${attempt} failed after ${Date.now() - t0} ms`);
    }
  });
});

describe("minReplicasAcked across a failover", () => {
  let dir: string;
  let cluster: RedisCluster;
  const clients: WritClient[] = [];
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "writ-node-failover-"));
    cluster = await RedisCluster.start(dir);
  });
  after(async () => {
    for (const c of clients) await c.close();
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a master is killed: its writes fail retryably until its replica took over with a replica of its own; every accepted write survives", async () => {
    const ns = `fo${process.pid}`;
    // 2 s for a replica's ack: on two shared cores a healthy replica once took
    // over 500 ms to answer the first WAIT (round 0 failed on two masters).
    const c = new WritClient({ redisCluster: true, redisUrl: cluster.url, namespace: ns, minReplicasAcked: 1, replicaAckTimeoutMs: 2000 });
    clients.push(c);
    const keyOf: Record<string, unknown>[] = [];
    for (let i = 0; keyOf.length < 8; i++) {
      const key = { symbol: `fo${i}`, strategyName: "s", exchangeName: "e" };
      if (c.resolveKey(SIGNAL, key).partition === keyOf.length) keyOf.push(key);
      if (i > 10000) throw new Error("no key for every partition");
    }
    const masters = await Promise.all(keyOf.map((_, p) => cluster.masterOf(calculateSlot(`${ns}:{p${p}}:in`))));
    const victim = masters[0];
    const accepted: { p: number; entryId: string }[] = [];
    const round = async (n: number) =>
      Promise.all(
        keyOf.map((key, p) =>
          c.submit(SIGNAL, key, "put", { payload: n }).then(
            (t) => {
              accepted.push({ p, entryId: t.entryId });
              return true;
            },
            (e: unknown) => {
              assert.ok(e instanceof WritTimeoutError || e instanceof WritConnectionError, `partition ${p}: ${e}`);
              return false;
            },
          ),
        ),
      );
    assert.deepEqual(await round(0), keyOf.map(() => true));
    const node = cluster.nodes.find((x) => x.port === victim)!;
    await node.proc.kill();
    const t0 = Date.now();
    let restarted = false;
    let allOk = false;
    let failedOnVictim = 0;
    for (let n = 1; Date.now() - t0 < 60000; n++) {
      const r0 = Date.now();
      const ok = await round(n);
      assert.ok(Date.now() - r0 < 12000, `a round of writes took ${Date.now() - r0} ms`);
      ok.forEach((x, p) => {
        if (!x) {
          assert.equal(masters[p], victim, `partition ${p} on a live master failed`);
          failedOnVictim++;
        }
      });
      if (ok.every(Boolean) && restarted) {
        allOk = true;
        break;
      }
      // Once a replica took the victim's slots, the old master comes back, as its replica.
      if (!restarted && (await cluster.masterOf(calculateSlot(`${ns}:{p0}:in`)).catch(() => victim)) !== victim) {
        node.proc.restart();
        restarted = true;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    console.log(`# failover: writes on every partition again after ${Date.now() - t0} ms; ${failedOnVictim} failed on the killed master's slots meanwhile`);
    assert.ok(allOk, "writes to every partition succeed again");
    assert.ok(failedOnVictim > 0, "writes to the killed master's slots failed for a while");
    // Every accepted write is on the master that now serves its partition.
    for (const { p, entryId } of accepted) {
      const port = await cluster.masterOf(calculateSlot(`${ns}:{p${p}}:in`));
      const r = new Redis(port, "127.0.0.1");
      try {
        assert.equal((await r.xrange(`${ns}:{p${p}}:in`, entryId, entryId)).length, 1, `entry ${entryId} of partition ${p}`);
      } finally {
        r.disconnect();
      }
    }
  });
});
