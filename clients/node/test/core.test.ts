// The client core against a real writ daemon, redis-server and SecantusDB:
// admission, acks, cache read-through, the overlay of pending writes,
// soft removal, insert-once, many-key reads, prefix lists, sync, and the
// typed errors. Uses collections of its own (writ's payload layout), appended
// to a copy of config/writ.toml, so it does not depend on the preset.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Cluster, Redis } from "ioredis";
import calculateSlot from "cluster-key-slot";
import { MongoClient } from "mongodb";
import { serialize } from "bson";

import { WritClient, type FlushReport, type Ticket } from "../src/client.js";
import {
  BackpressureError,
  RedisFullError,
  RefusedWriteError,
  LostWriteError,
  WritClosedError,
  WritConfigError,
  WritConnectionError,
  WritKeyError,
  WritTimeoutError,
  PendingFullError,
  type WritError,
} from "../src/errors.js";
import type { CollectionSpec } from "../src/key.js";
import { compareStreamIds, toSortable, ZERO_VERSION } from "../src/version.js";
import { canonicalKey, Names, partitionOf } from "../src/key.js";
import { ADMIT_LUA, CACHE_CAS_LUA } from "../src/lua.js";
import { sleep } from "../src/util.js";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { eventually, pause, RedisServer, resume, TestEnv } from "./harness.js";

const KV: CollectionSpec = { name: "node_kv", key: ["k", "n"] };
const ONCE: CollectionSpec = { name: "node_once", key: ["k", "n"], mode: "insert_once" };
const FIELDS: CollectionSpec = { name: "node_fields", key: ["k", "n"], layout: "fields" };
/** Declared by the client only: the daemon refuses it. */
const UNKNOWN: CollectionSpec = { name: "node_unknown", key: ["k"] };
const COLLECTIONS = [KV, ONCE, FIELDS, UNKNOWN];

const APPEND = `
[[collections]]
name = "node_kv"
key = ["k", "n"]

[[collections]]
name = "node_once"
key = ["k", "n"]
mode = "insert_once"

[[collections]]
name = "node_fields"
key = ["k", "n"]
layout = "fields"
`;

let env: TestEnv;
let mongo: MongoClient;
/**
 * A connection through a {@link holdingProxy}: while `held`, nothing passes
 * in either direction and nothing is closed, as on a connection a NAT or
 * load balancer forgot (half-open); `closedByClient` once the client gave it up.
 */
interface HeldConn {
  held: boolean;
  closedByClient: boolean;
}

/**
 * A TCP proxy in front of `redisUrl` whose connections can be held
 * ({@link HeldConn}). `watch` sees what the client sends on a connection not
 * held (lower-cased), before it passes on, and may hold the connection there.
 */
async function holdingProxy(
  redisUrl: string,
  watch: (conn: HeldConn, sent: string) => void,
): Promise<{ url: string; close: () => void }> {
  const target = new URL(redisUrl);
  const proxy = createServer((down) => {
    const up = connect(Number(target.port), target.hostname);
    const conn: HeldConn = { held: false, closedByClient: false };
    down.on("data", (d: Buffer) => {
      if (conn.held) return;
      watch(conn, d.toString("latin1").toLowerCase());
      if (!conn.held) up.write(d);
    });
    up.on("data", (d: Buffer) => {
      if (!conn.held) down.write(d);
    });
    down.on("close", () => (conn.closedByClient = true));
    const close = () => (down.destroy(), up.destroy());
    down.on("error", close).on("close", close);
    up.on("error", close).on("close", close);
  });
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
  return { url: `redis://127.0.0.1:${(proxy.address() as AddressInfo).port}`, close: () => proxy.close() };
}

const clients: WritClient[] = [];

function client(extra: Record<string, unknown> = {}): WritClient {
  const c = new WritClient(env.clientConfig({ collections: COLLECTIONS, ...extra }));
  clients.push(c);
  return c;
}

before(async () => {
  env = await TestEnv.start("core", { append: APPEND });
  mongo = new MongoClient(env.mongoUri);
});

after(async () => {
  try {
    for (const c of clients) await c.close();
    await mongo?.close();
  } finally {
    // The servers stop even if a close failed: a failing hook must not leave them running.
    await env?.stop();
  }
});

const g = (fn: () => Promise<void>) => () => env.guard(fn);

describe("core", () => {
  test("ack mode: a write returns after the daemon applied it; any client reads it", g(async () => {
    const a = client({ mode: "ack" });
    const t = await a.write(KV.name, { k: "ack", n: 1 }, "put", { price: 100.5, side: "long", big: Infinity });
    const ack = await t.acked;
    assert.equal(ack.outcome, "applied");
    assert.equal(ack.entryId, t.entryId);
    // Another client (no overlay) sees it: from the cache.
    const b = client();
    const r = await b.readRecord(KV.name, { k: "ack", n: 1 });
    assert.ok(r);
    assert.equal(r.source, "cache");
    assert.equal(r.version, toSortable(t.entryId));
    assert.deepEqual(r.doc!.payload, { price: 100.5, side: "long", big: Infinity });
    // MongoDB holds it with the version.
    const doc = await mongo.db(env.name).collection(KV.name).findOne({ k: "ack", n: 1 });
    assert.equal(doc!._writ.v, toSortable(t.entryId));
    assert.equal(doc!.payload.big, Infinity);
  }));

  test("submit mode: reads see this process's newest write at once (read-your-writes)", g(async () => {
    const a = client({ mode: "submit" });
    const key = { k: "ryw", n: 2 };
    for (let i = 0; i < 30; i++) {
      await a.write(KV.name, key, "put", { i });
      const got = await a.read(KV.name, key);
      assert.equal(got!.payload.i, i, `read after write ${i}`);
    }
    await a.flush();
    assert.equal(a.pendingCount, 0);
    const b = client();
    assert.equal((await b.read(KV.name, key))!.payload.i, 29);
  }));

  test("remove: the key reads as absent but exists; a later put brings it back", g(async () => {
    const a = client({ mode: "ack" });
    const key = { k: "rm", n: 1 };
    await a.write(KV.name, key, "put", { x: 1 });
    await a.write(KV.name, key, "remove");
    assert.equal(await a.read(KV.name, key), null);
    const r = await client().readRecord(KV.name, key);
    assert.ok(r && r.exists && !r.live);
    await a.write(KV.name, key, "put", { x: 2 });
    assert.equal((await client().read(KV.name, key))!.payload.x, 2);
    // Submit mode: the pending remove wins over the cached put.
    const s = client({ mode: "submit" });
    await s.write(KV.name, key, "remove");
    const pending = await s.readRecord(KV.name, key);
    assert.ok(pending && pending.exists && !pending.live);
    await s.flush();
    assert.equal(await client().read(KV.name, key), null);
  }));

  test("insert_once: the first put wins, in the overlay and in MongoDB", g(async () => {
    const a = client({ mode: "submit" });
    const key = { k: "once", n: 1 };
    await a.write(ONCE.name, key, "put", { v: "first" });
    await a.write(ONCE.name, key, "put", { v: "second" });
    assert.equal((await a.read(ONCE.name, key))!.payload.v, "first");
    await a.flush();
    await a.write(ONCE.name, key, "put", { v: "third" });
    assert.equal((await a.read(ONCE.name, key))!.payload.v, "first");
    await a.flush();
    assert.equal((await client().read(ONCE.name, key))!.payload.v, "first");
    const doc = await mongo.db(env.name).collection(ONCE.name).findOne({ k: "once", n: 1 });
    assert.equal(doc!.payload.v, "first");
  }));

  test("insert_once: a pending put over a hard-deleted key's tombstone reads as its value, as the daemon stores it", g(async () => {
    // The tombstone another process's hard delete leaves (the Node package has no hard delete).
    const coll = mongo.db(env.name).collection(ONCE.name);
    await coll.insertOne({ k: "once-gone", n: 1, removed: true, _writ: { v: toSortable("5-0"), at: new Date(), deleted: true } });
    const a = client({ mode: "submit" });
    await a.ready();
    const key = { k: "once-gone", n: 1 };
    const daemon = env.writ!.proc.child;
    let pending: unknown;
    await pause(daemon);
    try {
      await a.write(ONCE.name, key, "put", { v: "x" });
      pending = await a.read(ONCE.name, key);
    } finally {
      resume(daemon);
    }
    await a.flush();
    const valueOf = (d: unknown) => {
      const doc = d as { payload?: unknown; removed?: unknown } | null;
      return doc && { payload: doc.payload, removed: doc.removed };
    };
    const created = { payload: { v: "x" }, removed: false };
    assert.deepEqual(valueOf(pending), created, "the pending put creates the deleted key again");
    assert.deepEqual(valueOf(await a.read(ONCE.name, key)), created);
    assert.deepEqual(valueOf(await client().read(ONCE.name, key)), created, "the daemon created it again");
    const stored = await coll.findOne({ k: "once-gone", n: 1 });
    assert.equal(stored?.removed, false, JSON.stringify(stored));
    assert.equal(stored?._writ?.deleted, undefined, JSON.stringify(stored));
  }));

  test("a read does not answer a write of this process that was refused while the read was out", g(async () => {
    const errors: WritError[] = [];
    const c = client({ mode: "submit", onError: (e: WritError) => errors.push(e) });
    await c.ready();
    const key = { k: "refused-mid-read" };
    const daemon = env.writ!.proc.child;
    await pause(daemon);
    let t: Ticket;
    try {
      t = await c.write(UNKNOWN.name, key, "put", { a: 1 });
    } catch (e) {
      resume(daemon);
      throw e;
    }
    // The cache read lets the daemon go and returns only once the write is dead-lettered.
    const inner = c as unknown as { hmget: (keys: unknown[]) => Promise<unknown> };
    const hmget = inner.hmget.bind(c);
    inner.hmget = async (keys: unknown[]) => {
      resume(daemon);
      assert.equal((await t.acked).outcome, "dead_lettered");
      return hmget(keys);
    };
    const r = await c.readRecord(UNKNOWN.name, key);
    assert.equal(r, null, `the refused write is not read: ${JSON.stringify(r)}`);
    assert.equal(errors.length, 1, "reported to onError");
  }));

  test("the overlay applies pending writes over what is stored, as the daemon will", g(async () => {
    const a = client({ mode: "submit" });
    const fields = { k: "ovl-fields", n: 1 };
    const once = { k: "ovl-once", n: 1 };
    const fresh = { k: "ovl-once", n: 2 };
    await a.write(FIELDS.name, fields, "put", { a: 1, b: 2 });
    await a.write(ONCE.name, once, "put", { v: "first" });
    await a.flush();
    const daemon = env.writ!.proc.child;
    await pause(daemon);
    try {
      // fields layout: a put sets the fields it sends; the others stay.
      await a.write(FIELDS.name, fields, "put", { a: 3 });
      const f = await a.readRecord(FIELDS.name, fields);
      assert.equal(f!.source, "overlay");
      assert.deepEqual([f!.doc!.a, f!.doc!.b], [3, 2]);
      // insert_once: a pending remove of a stored key, and a put then a
      // remove of a new one, read as removed.
      await a.write(ONCE.name, once, "remove");
      assert.equal(await a.read(ONCE.name, once), null);
      await a.write(ONCE.name, fresh, "put", { v: "new" });
      await a.write(ONCE.name, fresh, "remove");
      assert.equal(await a.read(ONCE.name, fresh), null);
    } finally {
      resume(daemon);
    }
    await a.flush();
    const other = client();
    const f = await other.readRecord(FIELDS.name, fields);
    assert.deepEqual([f!.doc!.a, f!.doc!.b], [3, 2], "what the daemon stored");
    assert.equal(await other.read(ONCE.name, once), null);
    assert.equal(await other.read(ONCE.name, fresh), null);
  }));

  test("undefined: a top-level field of a fields-layout put is left out (the stored value stays); elsewhere it is stored as null", g(async () => {
    const a = client({ mode: "ack" });
    const key = { k: "undef-fields", n: 1 };
    await a.write(FIELDS.name, key, "put", { a: 1, b: 2 });
    await a.write(FIELDS.name, key, "put", { a: undefined, b: 3, c: { d: undefined, e: [undefined] } });
    const mongo = new MongoClient(env.mongoUri);
    try {
      const stored = await mongo.db(env.name).collection(FIELDS.name).findOne({ k: "undef-fields" });
      assert.deepEqual([stored?.a, stored?.b, stored?.c], [1, 3, { d: null, e: [null] }], JSON.stringify(stored));
    } finally {
      await mongo.close();
    }
    const read = await client().read(FIELDS.name, key);
    assert.deepEqual([read?.a, read?.b, read?.c], [1, 3, { d: null, e: [null] }], JSON.stringify(read));
    // In the payload layout the document is the payload, one level below the
    // official package's $set: undefined is stored as null at its top too.
    const kv = { k: "undef-payload", n: 1 };
    await a.write(KV.name, kv, "put", { note: undefined, x: { y: undefined } });
    assert.deepEqual((await client().read(KV.name, kv))?.payload, { note: null, x: { y: null } });
  }));

  test("readMany: cached, MongoDB-only and missing keys in one round trip and ONE MongoDB query", g(async () => {
    const w = client({ mode: "ack" });
    const keys = Array.from({ length: 12 }, (_, i) => ({ k: "many", n: 1700000000000 + i * 60000 }));
    for (const key of keys.slice(0, 10)) await w.write(KV.name, key, "put", { n: key.n });
    // Evict 6 of them from the cache: they must be read through.
    const redis = new Redis(env.redisUrl);
    try {
      const evict = keys.slice(0, 6).map((key) => {
        const k = w.resolveKey(KV.name, key);
        return w.names.cache(k.partition, KV.name, k.canonical);
      });
      assert.equal(await redis.del(...evict), 6);
      const r = client({ mongoClientOptions: { monitorCommands: true } });
      const finds: unknown[] = [];
      r.mongoClient.on("commandStarted", (ev) => {
        if (ev.commandName === "find") finds.push(ev.command);
      });
      const got = await r.readMany(KV.name, keys);
      assert.equal(finds.length, 1, "one MongoDB query for all misses");
      got.forEach((rec, i) => {
        if (i < 10) assert.equal(rec!.doc!.payload.n, keys[i].n);
        else assert.equal(rec, null);
      });
      assert.deepEqual(got.slice(0, 6).map((x) => x!.source), Array(6).fill("mongodb"));
      assert.deepEqual(got.slice(6, 10).map((x) => x!.source), Array(4).fill("cache"));
      // The read-through filled the cache (with the compare-and-set script).
      const again = await r.readMany(KV.name, keys.slice(0, 10));
      assert.deepEqual(again.map((x) => x!.source), Array(10).fill("cache"));
      assert.equal(finds.length, 1, "no further MongoDB query");
    } finally {
      redis.disconnect();
    }
  }));

  test("a cache entry whose document is not BSON reads through to MongoDB", g(async () => {
    const w = client({ mode: "ack" });
    const key = { k: "unreadable", n: 1 };
    await (await w.write(KV.name, key, "put", { n: 1 })).acked;
    const redis = new Redis(env.redisUrl);
    try {
      const k = w.resolveKey(KV.name, key);
      await redis.hset(w.names.cache(k.partition, KV.name, k.canonical), "doc", "not bson");
      const r = client();
      const got = await r.readRecord(KV.name, key);
      assert.equal(got!.doc!.payload.n, 1);
      assert.equal(got!.source, "mongodb");
      assert.deepEqual((await r.readMany(KV.name, [key])).map((x) => x!.doc!.payload.n), [1]);
    } finally {
      redis.disconnect();
    }
  }));

  test("a cache key holding another program's value reads through to MongoDB, is repaired, and fails no other key", g(async () => {
    const w = client({ mode: "ack" });
    const keys = [{ k: "foreign", n: 1 }, { k: "foreign", n: 2 }, { k: "foreign", n: 3 }];
    for (const key of keys) await w.write(KV.name, key, "put", { n: key.n });
    const redis = new Redis(env.redisUrl);
    try {
      const entry = (key: { k: string; n: number }) => {
        const k = w.resolveKey(KV.name, key);
        return w.names.cache(k.partition, KV.name, k.canonical);
      };
      await redis.del(entry(keys[0]), entry(keys[1]));
      await redis.set(entry(keys[0]), "someone else's");
      await redis.rpush(entry(keys[1]), "a");
      const r = client();
      const got = await r.readMany(KV.name, keys);
      assert.deepEqual(got.map((x) => x!.doc!.payload.n), [1, 2, 3]);
      assert.deepEqual(got.map((x) => x!.source), ["mongodb", "mongodb", "cache"]);
      assert.equal((await r.read(KV.name, keys[0]))!.payload.n, 1);
      // The read's fill replaced the foreign values with writ's entries.
      assert.deepEqual([await redis.type(entry(keys[0])), await redis.type(entry(keys[1]))], ["hash", "hash"]);
      // And the daemon writes over one too.
      await redis.del(entry(keys[2]));
      await redis.set(entry(keys[2]), "again");
      const t = await w.write(KV.name, keys[2], "put", { n: 33 });
      assert.equal((await t.acked).outcome, "applied");
      assert.equal(await redis.type(entry(keys[2])), "hash");
      assert.equal((await client().readRecord(KV.name, keys[2]))!.source, "cache");
    } finally {
      redis.disconnect();
    }
  }));

  test("a hard delete's tombstone read from MongoDB does not exist, and is cached as gone", g(async () => {
    const coll = mongo.db(env.name).collection(KV.name);
    const version = toSortable("5-0");
    await coll.insertOne({ k: "tomb", n: 1, removed: true, _writ: { v: version, at: new Date(), deleted: true } });
    const r = await client().readRecord(KV.name, { k: "tomb", n: 1 });
    assert.equal(r?.exists ?? false, false, "a hard-deleted key does not exist (hasMemoryData reads exists)");
    assert.equal(r?.live ?? false, false);
    const redis = new Redis(env.redisUrl);
    try {
      const k = canonicalKey(KV, { k: "tomb", n: 1 });
      const entry = new Names(env.name).cache(partitionOf(KV.name, k, env.partitions), KV.name, k);
      assert.equal(await redis.hget(entry, "gone"), "1", "cached as gone, as the daemon writes a hard delete");
      assert.equal(await redis.hexists(entry, "doc"), 0);
    } finally {
      redis.disconnect();
    }
  }));

  test("a document written without writ (no _writ) reads at version zero, and the first write adopts it", g(async () => {
    const coll = mongo.db(env.name).collection(KV.name);
    await coll.insertOne({ k: "legacy", n: 1, payload: { from: "official" }, createDate: new Date(), updatedDate: new Date() });
    const a = client({ mode: "ack" });
    const r = await a.readRecord(KV.name, { k: "legacy", n: 1 });
    assert.equal(r!.version, ZERO_VERSION);
    assert.equal(r!.source, "mongodb");
    assert.deepEqual(r!.doc!.payload, { from: "official" });
    const t = await a.write(KV.name, { k: "legacy", n: 1 }, "put", { from: "writ" });
    assert.equal((await t.acked).outcome, "applied");
    assert.deepEqual((await client().read(KV.name, { k: "legacy", n: 1 }))!.payload, { from: "writ" });
    assert.equal(await coll.countDocuments({ k: "legacy", n: 1 }), 1, "adopted, not duplicated");
  }));

  test("list by prefix waits for own pending writes, skips removed keys, sorts by the rest of the key", g(async () => {
    const a = client({ mode: "submit" });
    for (const n of [5, 3, 9, 1, 7]) await a.write(KV.name, { k: "list", n }, "put", { n });
    await a.write(KV.name, { k: "list", n: 3 }, "remove");
    await a.write(KV.name, { k: "other", n: 1 }, "put", { n: 1 });
    const docs = await a.list(KV.name, { k: "list" });
    assert.deepEqual(docs.map((d) => d.n), [1, 5, 7, 9]);
    assert.deepEqual(docs.map((d) => d.payload.n), [1, 5, 7, 9]);
    await assert.rejects(a.list(KV.name, { n: 1 }), WritKeyError);
  }));

  test("a write the daemon refuses: ack mode throws RefusedWriteError; submit mode reports it to onError", g(async () => {
    const a = client({ mode: "ack" });
    await assert.rejects(
      a.write(UNKNOWN.name, { k: "x" }, "put", { a: 1 }),
      (e: unknown) => e instanceof RefusedWriteError && e.reason.length > 0 && /dlq/.test(e.message) && e.accepted === "yes",
    );
    const errors: WritError[] = [];
    const s = client({ mode: "submit", onError: (e: WritError) => errors.push(e) });
    const t = await s.write(UNKNOWN.name, { k: "y" }, "put", { a: 1 });
    assert.equal((await t.acked).outcome, "dead_lettered");
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof RefusedWriteError);
  }));

  test("an ack-mode write whose wait timed out and that is then refused is reported to onError", g(async () => {
    const errors: WritError[] = [];
    const a = client({ mode: "ack", writeTimeoutMs: 300, onError: (e: WritError) => errors.push(e) });
    await a.ready();
    const daemon = env.writ!.proc.child;
    await pause(daemon);
    try {
      await assert.rejects(
        a.write(UNKNOWN.name, { k: "late" }, "put", { a: 1 }),
        (e: unknown) => e instanceof WritTimeoutError && /onError gets a RefusedWriteError/.test(e.message) && e.accepted === "yes",
      );
    } finally {
      resume(daemon);
    }
    await eventually("the refusal to reach onError", 20000, async () => errors.length > 0);
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof RefusedWriteError, String(errors[0]));
  }));

  test("a refusal that a second waitAck receives is not also given to onError", g(async () => {
    const errors: WritError[] = [];
    const a = client({ mode: "ack", writeTimeoutMs: 300, onError: (e: WritError) => errors.push(e) });
    await a.ready();
    const daemon = env.writ!.proc.child;
    await pause(daemon);
    let again: Promise<unknown>;
    try {
      const t = await a.submit(UNKNOWN.name, { k: "twice" }, "put", { a: 1 });
      await assert.rejects(a.waitAck(t, 300), WritTimeoutError);
      again = a.waitAck(t, 20000);
    } finally {
      resume(daemon);
    }
    await assert.rejects(again, RefusedWriteError);
    // deliver() reports in the same turn as it settles the ack, before the wait above wakes.
    assert.deepEqual(errors, [], "the refusal went to the waiter only");
  }));

  test("two waits for one write, one timing out: the refusal goes to the other wait only, not also to onError", g(async () => {
    const errors: WritError[] = [];
    const a = client({ mode: "ack", writeTimeoutMs: 300, onError: (e: WritError) => errors.push(e) });
    await a.ready();
    const daemon = env.writ!.proc.child;
    await pause(daemon);
    let long: Promise<unknown>;
    try {
      const t = await a.submit(UNKNOWN.name, { k: "side-by-side" }, "put", { a: 1 });
      long = a.waitAck(t, 20000);
      // The short wait starts after the long one and times out while it still waits.
      await assert.rejects(a.waitAck(t, 300), WritTimeoutError);
    } finally {
      resume(daemon);
    }
    await assert.rejects(long, RefusedWriteError);
    assert.deepEqual(errors, [], "the refusal went to the waiting call only");
  }));

  test("an ack wait that times out says accepted \"yes\" while the write's entry is in the stream, \"unknown\" once it is gone", g(async () => {
    const names = new Names(env.name);
    const streamOf = (key: { k: string; n: number }) => names.stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
    const a = client({ mode: "ack", writeTimeoutMs: 2000, onError: () => {} });
    const s = client({ mode: "submit", onError: () => {} });
    await Promise.all([a.ready(), s.ready()]);
    const redis = new Redis(env.redisUrl);
    const daemon = env.writ!.proc.child;
    await pause(daemon);
    try {
      // Held: its entry is in the stream (nobody read it: the daemon is stopped).
      await assert.rejects(
        a.write(KV.name, { k: "timeout-held", n: 1 }, "put", { a: 1 }),
        (e: unknown) => e instanceof WritTimeoutError && e.accepted === "yes" && /still queued/.test(e.message),
      );
      // Gone while the write waits for its ack (as a failover loses it): deleted once it is in the stream.
      const key = { k: "timeout-gone", n: 1 };
      const stream = streamOf(key);
      const last = ((await redis.xrevrange(stream, "+", "-", "COUNT", 1)) as [string, string[]][])[0]?.[0] ?? "0-0";
      const waited = a.write(KV.name, key, "put", { a: 1 }).then(
        () => assert.fail("no ack can come: the daemon is stopped"),
        (e: unknown) => e,
      );
      const id = await eventually("the write's entry in the stream", 10000, async () => {
        const added = (await redis.xrange(stream, `(${last}`, "+")) as [string, string[]][];
        return added.find(([, f]) => f.includes(a.clientId))?.[0];
      });
      assert.equal(await redis.xdel(stream, id), 1);
      const e = await waited;
      assert.ok(e instanceof WritTimeoutError, String(e));
      assert.equal(e.accepted, "unknown", e.message);
      assert.match(e.message, new RegExp(`write ${id} .*no longer in the stream.*may or may not be applied`));

      // flush() says the same of the writes it waited for.
      const t = await s.write(KV.name, { k: "timeout-flush", n: 1 }, "put", { a: 1 });
      await assert.rejects(s.flush(500), (e: unknown) => e instanceof WritTimeoutError && e.accepted === "yes" && /still queued/.test(e.message));
      assert.equal(await redis.xdel(streamOf({ k: "timeout-flush", n: 1 }), t.entryId), 1);
      await assert.rejects(
        s.flush(500),
        (e: unknown) => e instanceof WritTimeoutError && e.accepted === "unknown" && /1 of them are no longer in their streams/.test(e.message),
      );
    } finally {
      resume(daemon);
      redis.disconnect();
    }
  }));

  test("a write that never reached Redis says accepted \"no\": an unreachable Redis, a closed client", g(async () => {
    // Nothing listens on port 1.
    const c = client({ redisUrl: "redis://127.0.0.1:1", mode: "ack" });
    await assert.rejects(
      c.write(KV.name, { k: "unreachable", n: 1 }, "put", { a: 1 }),
      (e: unknown) =>
        e instanceof WritConnectionError && e.accepted === "no" && /NOT accepted/.test(e.message) && /127\.0\.0\.1:1/.test(e.message),
    );
    // Each write gets its own error, and ready() itself says nothing of a write.
    await assert.rejects(c.ready(), (e: unknown) => e instanceof WritConnectionError && e.accepted === undefined);
    await c.close();
    await assert.rejects(c.write(KV.name, { k: "unreachable", n: 2 }, "put", { a: 1 }), (e: unknown) => e instanceof WritClosedError && e.accepted === "no");
  }));

  test("minReplicasAcked on a Redis without replicas: a write whose ack came while WAIT was out succeeds", g(async () => {
    // This env's redis-server has no replica, and the daemon min_replicas_acked = 0: every WAIT
    // comes back short after replicaAckTimeoutMs, by which time the daemon has applied and acked
    // the write. The ack settles it, whatever the WAIT says (as the Rust client).
    const a = client({ mode: "ack", minReplicasAcked: 1, replicaAckTimeoutMs: 3000 });
    const t = await a.write(KV.name, { k: "short-wait", n: 1 }, "put", { a: 1 });
    assert.equal((await t.acked).outcome, "applied");
    assert.equal(a.pendingCount, 0);
    assert.equal((await client().read(KV.name, { k: "short-wait", n: 1 }))!.payload.a, 1);
  }));

  test("lost acks are settled from the consumer group and the dead-letter stream: flush and maxPending recover", g(async () => {
    const id = `lost-${process.pid}-${Date.now()}`;
    const redis = new Redis(env.redisUrl);
    try {
      // Another program's value at this client's ack stream: the daemon cannot ack it (it logs and skips
      // the acks) but applies, caches and dead-letters its writes, and XACKs them.
      await redis.set(new Names(env.name).acks(id), "not a stream");
      const errors: WritError[] = [];
      const s = client({ mode: "submit", clientId: id, writeTimeoutMs: 1000, maxPending: 4, onError: (e: WritError) => errors.push(e) });
      const good = [];
      for (const n of [1, 2, 3]) good.push(await s.write(KV.name, { k: "sweep", n }, "put", { n }));
      const bad = await s.write(UNKNOWN.name, { k: "sweep" }, "put", { a: 1 });
      // Without the sweep, no ack ever comes: flush times out and the 4 writes fill maxPending for good.
      await s.flush(30000);
      assert.equal(s.pendingCount, 0);
      for (const t of good) assert.equal((await t.acked).outcome, "applied");
      const b = await bad.acked;
      assert.equal(b.outcome, "dead_lettered");
      assert.equal(b.entryId, bad.entryId);
      assert.match(b.reason ?? "", /^unknown_collection: \S/, "the dead letter's reason, with its detail");
      assert.ok(errors.some((e) => e instanceof RefusedWriteError), "the refusal is reported in submit mode");
      assert.ok(errors.some((e) => e instanceof WritConnectionError && /never arrived/.test(e.message)), errors.join("\n"));
      await s.write(KV.name, { k: "sweep", n: 4 }, "put", { n: 4 });
      assert.equal(s.pendingCount, 1, "room again under maxPending");
      for (const n of [1, 2, 3]) assert.equal((await client().read(KV.name, { k: "sweep", n }))!.payload.n, n);
    } finally {
      redis.disconnect();
    }
  }));

  test("a write whose ack is lost and whose entry is then gone is settled applied from MongoDB, which holds its version", g(async () => {
    const id = `gone-${process.pid}-${Date.now()}`;
    const redis = new Redis(env.redisUrl);
    try {
      await redis.set(new Names(env.name).acks(id), "not a stream");
      // Long enough that no sweep looks at the write before its entry is deleted below.
      const s = client({ mode: "submit", clientId: id, writeTimeoutMs: 5000 });
      const t = await s.write(KV.name, { k: "gone", n: 1 }, "put", { n: 1 });
      const stream = new Names(env.name).stream(partitionOf(KV.name, canonicalKey(KV, { k: "gone", n: 1 }), env.partitions));
      // The daemon is done with it (delivered, XACKed); then the entry goes (retention, or by hand).
      // Delivered is read first: an entry not yet delivered is not pending either.
      await eventually("the daemon to finish the write", 20000, async () => {
        const groups = (await redis.xinfo("GROUPS", stream)) as unknown[][];
        const g = groups.find((x) => x[1] === env.name);
        const delivered = g ? String(g[g.indexOf("last-delivered-id") + 1]) : "0-0";
        if (compareStreamIds(delivered, t.entryId) < 0) return false;
        const pend = (await redis.xpending(stream, env.name, t.entryId, t.entryId, 1)) as unknown[];
        return pend.length === 0;
      });
      assert.equal(s.pendingCount, 1, "not settled while its entry is there");
      assert.equal(await redis.xdel(stream, t.entryId), 1);
      await s.flush(30000);
      assert.equal((await t.acked).outcome, "applied");
      assert.equal(s.pendingCount, 0);
    } finally {
      redis.disconnect();
    }
  }));

  test("a write settled applied from MongoDB is not read older from a cache entry that lost its update", g(async () => {
    // A namespace no daemon serves: the daemon's steps by hand.
    const ns = `${env.name}_older`;
    const names = new Names(ns);
    const key = { k: "gone-older", n: 1 };
    const canonical = canonicalKey(KV, key);
    const entry = names.cache(partitionOf(KV.name, canonical, 1), KV.name, canonical);
    const stored = (n: number, v: string) => ({ k: "gone-older", n: 1, payload: { n }, removed: false, _writ: { v, at: new Date() } });
    const redis = new Redis(env.redisUrl);
    try {
      // The key's first value, applied and cached.
      const v0 = toSortable("1-0");
      await mongo.db(env.name).collection(KV.name).insertOne(stored(0, v0));
      await redis.hset(entry, "v", v0, "doc", Buffer.from(serialize(stored(0, v0))));
      const s = client({ namespace: ns, partitions: 1, mode: "submit", writeTimeoutMs: 1000, maxBacklog: 1000 });
      const t = await s.write(KV.name, key, "put", { n: 1 });
      // The write applied to MongoDB; then a failover lost everything from its entry on: the
      // entry, its cache update and its ack.
      await mongo.db(env.name).collection(KV.name).updateOne({ k: "gone-older", n: 1 }, { $set: stored(1, toSortable(t.entryId)) });
      assert.equal(await redis.xdel(names.stream(0), t.entryId), 1);
      await s.flush(30000);
      assert.equal((await t.acked).outcome, "applied");
      assert.equal((await s.read(KV.name, key))!.payload.n, 1, "this process");
      assert.equal((await client({ namespace: ns, partitions: 1 }).read(KV.name, key))!.payload.n, 1, "another process");
    } finally {
      redis.disconnect();
    }
  }));

  test("a read that skipped MongoDB for a pending write refused while it was out asks MongoDB after all", g(async () => {
    // The key is in MongoDB (written before writ, or by the official
    // package) and has no cache entry. This process's pending put lets a read
    // skip MongoDB ("MongoDB holds nothing newer"); the put is then refused
    // (dead-lettered: the daemon does not declare node_unknown) while the
    // read is out. The read must not answer "absent".
    const key = { k: `skip-${process.pid}` };
    await mongo.db(env.name).collection(UNKNOWN.name).insertOne({ k: key.k, payload: { n: 0 }, removed: false });
    const s = client({ mode: "submit", onError: () => {} });
    const t = await s.write(UNKNOWN.name, key, "put", { n: 1 });
    const inner = s as unknown as { hmgetUnbounded: (keys: unknown[]) => Promise<unknown> };
    const original = inner.hmgetUnbounded.bind(s);
    inner.hmgetUnbounded = async (keys: unknown[]) => {
      const r = await original(keys);
      await t.acked.catch(() => {}); // the refusal lands while the read is out
      return r;
    };
    try {
      const r = await s.read(UNKNOWN.name, key);
      assert.equal((await t.acked).outcome, "dead_lettered");
      assert.deepEqual(r?.payload, { n: 0 }, "the key MongoDB holds read as absent");
    } finally {
      inner.hmgetUnbounded = original;
    }
  }));

  test("a write Redis lost before the daemon read it is settled lost: onError and waitAck hear it, reads and lists stop waiting for it", g(async () => {
    const errors: WritError[] = [];
    const s = client({ mode: "submit", writeTimeoutMs: 500, lostWriteAfterMs: 1000, onError: (e: WritError) => errors.push(e) });
    const key = { k: "redis-lost", n: 1 };
    await s.write(KV.name, key, "put", { n: 1 });
    await s.flush(20000);
    const stream = new Names(env.name).stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
    const daemon = env.writ!.proc.child;
    const redis = new Redis(env.redisUrl);
    let t: Ticket;
    await pause(daemon);
    try {
      // Accepted, then gone before any daemon read it (as a failover loses an entry).
      t = await s.write(KV.name, key, "put", { n: 2 });
      assert.equal(await redis.xdel(stream, t.entryId), 1);
    } finally {
      resume(daemon);
      redis.disconnect();
    }
    // Until it is settled, this process reads its own write.
    assert.equal((await s.readRecord(KV.name, key))!.source, "overlay");
    const heard = s.waitAck(t, 30000);
    await assert.rejects(heard, (e: unknown) => e instanceof LostWriteError && e.entryId === t.entryId && /was lost/.test(e.message) && e.accepted === "no");
    assert.equal((await t.acked).outcome, "lost");
    assert.ok(errors.some((e) => e instanceof LostWriteError), errors.join("\n"));
    assert.equal(s.pendingCount, 0);
    const r = await s.readRecord(KV.name, key);
    assert.equal(r!.source === "overlay", false, "no longer read from the lost write");
    assert.equal(r!.doc!.payload.n, 1, "the stored value");
    assert.deepEqual((await s.list(KV.name, { k: "redis-lost" })).map((d) => d.n), [1], "a list does not wait for it");
    // Written again, it is applied.
    await s.write(KV.name, key, "put", { n: 2 });
    await s.flush(20000);
    assert.equal((await client().read(KV.name, key))!.payload.n, 2);
  }));

  test("flush() reports the write the daemon dead-lettered among those it waited for, and counts the others", g(async () => {
    const errors: WritError[] = [];
    const s = client({ mode: "submit", onError: (e: WritError) => errors.push(e) });
    await s.ready();
    const bad = { k: `flush-dl-${process.pid}` };
    const daemon = env.writ!.proc.child;
    let refused!: Ticket;
    let flushed!: Promise<FlushReport>;
    // Stopped while the writes are made and flush() is called: no ack comes
    // before, so flush() waits for all four.
    await pause(daemon);
    try {
      await s.write(KV.name, { k: "flush-dl", n: 1 }, "put", { n: 1 });
      refused = await s.write(UNKNOWN.name, bad, "put", { a: 1 });
      await s.write(KV.name, { k: "flush-dl", n: 2 }, "put", { n: 2 });
      await s.write(KV.name, { k: "flush-dl", n: 1 }, "remove");
      assert.equal(s.pendingCount, 4);
      flushed = s.flush(30000);
    } finally {
      resume(daemon);
    }
    const report = await flushed;
    assert.equal(report.acked, 3);
    assert.equal(report.notStored.length, 1, JSON.stringify(report));
    const [letter] = report.notStored;
    assert.deepEqual(
      { ...letter, reason: undefined },
      { collection: UNKNOWN.name, key: canonicalKey(UNKNOWN, bad), entryId: refused.entryId, outcome: "dead_lettered", reason: undefined },
    );
    assert.match(letter.reason, /unknown_collection/, "the dead letter's reason");
    assert.ok(errors.some((e) => e instanceof RefusedWriteError), "onError still hears of it in submit mode");
  }));

  test("flush() does not report a write whose own call failed: refused by backpressure, or too few replicas", g(async () => {
    // A namespace no daemon serves; the test sends the one ack by hand.
    const ns = `${env.name}_flushrefused`;
    const id = `flushrefused-${process.pid}-${Date.now()}`;
    const names = new Names(ns);
    const c = client({ namespace: ns, clientId: id, partitions: 1, maxBacklog: 1, mode: "submit" });
    const t = await c.submit(KV.name, { k: "fr", n: 1 }, "put", { i: 1 });
    // Pending when flush() is called; refused after (the partition's backlog is at maxBacklog).
    const refused = c.submit(KV.name, { k: "fr", n: 2 }, "put", { i: 2 });
    assert.equal(c.pendingCount, 2, "flush() waits for both");
    const flushed = c.flush(30000);
    await assert.rejects(refused, (e: unknown) => e instanceof BackpressureError && e.accepted === "no");
    const admin = new Redis(env.redisUrl);
    try {
      const [[, fields]] = (await admin.xrange(names.stream(0), t.entryId, t.entryId)) as [string, string[]][];
      const req = fields[fields.indexOf("req") + 1];
      await admin.xadd(names.acks(id), "*", "req", req, "outcome", "applied", "v", t.entryId, "id", t.entryId);
    } finally {
      admin.disconnect();
    }
    assert.deepEqual(await flushed, { acked: 1, notStored: [] });

    // This env's Redis has no replica: the WAIT comes back short, and no daemon acks the write first.
    const r = client({ namespace: `${ns}_replicas`, partitions: 1, maxBacklog: 1000, minReplicasAcked: 1, replicaAckTimeoutMs: 200, mode: "submit" });
    await r.ready();
    const short = r.submit(KV.name, { k: "fr", n: 3 }, "put", { i: 3 });
    assert.equal(r.pendingCount, 1, "flush() waits for it");
    const flushedShort = r.flush(30000);
    await assert.rejects(short, (e: unknown) => e instanceof WritTimeoutError && e.accepted === "unknown");
    assert.deepEqual(await flushedShort, { acked: 0, notStored: [] });
  }));

  test("flush() reports a write Redis lost, in the order the writes were made", g(async () => {
    const s = client({ mode: "submit", writeTimeoutMs: 500, lostWriteAfterMs: 1000, onError: () => {} });
    const key = { k: "flush-lost", n: 1 };
    const bad = { k: `flush-lost-${process.pid}` };
    await s.write(KV.name, key, "put", { n: 0 });
    assert.deepEqual((await s.flush(20000)).notStored, []);
    const stream = new Names(env.name).stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
    const daemon = env.writ!.proc.child;
    const redis = new Redis(env.redisUrl);
    let refused!: Ticket;
    let lost!: Ticket;
    let flushed!: Promise<FlushReport>;
    await pause(daemon);
    try {
      refused = await s.write(UNKNOWN.name, bad, "put", { a: 1 });
      // Accepted, then gone before any daemon read it (as a failover loses an entry).
      lost = await s.write(KV.name, key, "put", { n: 1 });
      assert.equal(await redis.xdel(stream, lost.entryId), 1);
      await s.write(KV.name, { k: "flush-lost", n: 2 }, "put", { n: 2 });
      assert.equal(s.pendingCount, 3);
      flushed = s.flush(30000);
    } finally {
      resume(daemon);
      redis.disconnect();
    }
    const report = await flushed;
    assert.equal(report.acked, 1);
    assert.deepEqual(
      report.notStored.map((w) => [w.collection, w.key, w.entryId, w.outcome]),
      [
        [UNKNOWN.name, canonicalKey(UNKNOWN, bad), refused.entryId, "dead_lettered"],
        [KV.name, canonicalKey(KV, key), lost.entryId, "lost"],
      ],
    );
    assert.match(report.notStored[1].reason, /^gone from /);
  }));

  test("a write whose entry is gone while the group holds it pending is not settled lost until the group lets it go", g(async () => {
    const s = client({ mode: "submit", writeTimeoutMs: 300, lostWriteAfterMs: 1 });
    const key = { k: "held-gone", n: 1 };
    const names = new Names(env.name);
    const stream = names.stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
    const redis = new Redis(env.redisUrl);
    // Stopped throughout: a running daemon would claim the entry from the
    // other consumer below, find it deleted and drop it from the group.
    const daemon = env.writ!.proc.child;
    await pause(daemon);
    try {
      const t = await s.write(KV.name, key, "put", { n: 1 });
      // Read for the group by another consumer (as a daemon that is applying it), then deleted.
      const read = (await redis.xreadgroup("GROUP", names.group, "held-by-test", "COUNT", 100, "STREAMS", stream, ">")) as [
        string,
        [string, string[]][],
      ][];
      assert.ok(read[0][1].some(([id]) => id === t.entryId));
      assert.equal(await redis.xdel(stream, t.entryId), 1);
      // Five sweeps or so pass (one per ack read, which blocks up to 1 s): without the group's
      // word, the third (a MongoDB answer, then a second one) would call it lost.
      await sleep(5000);
      assert.equal(s.pendingCount, 1, "a daemon may still apply it");
      await redis.xack(stream, names.group, t.entryId);
      const r = await Promise.race([t.acked, sleep(20000).then(() => undefined)]);
      assert.equal(r?.outcome, "lost", "settled once the group let it go");
    } finally {
      resume(daemon);
      redis.disconnect();
    }
  }));

  test("a sweep that cannot read MongoDB still settles the lost acks of writes whose entries are there", g(async () => {
    const id = `nomongo-${process.pid}-${Date.now()}`;
    const redis = new Redis(env.redisUrl);
    const names = new Names(env.name);
    try {
      await redis.set(names.acks(id), "not a stream");
      const s = client({
        mode: "submit",
        clientId: id,
        writeTimeoutMs: 500,
        lostWriteAfterMs: 1,
        mongodbUri: "mongodb://127.0.0.1:9/?directConnection=true&serverSelectionTimeoutMS=300",
      });
      const gone = { k: "nomongo", n: 1 };
      const daemon = env.writ!.proc.child;
      await pause(daemon);
      try {
        const t = await s.write(KV.name, gone, "put", { n: 1 });
        assert.equal(await redis.xdel(names.stream(partitionOf(KV.name, canonicalKey(KV, gone), env.partitions)), t.entryId), 1);
      } finally {
        resume(daemon);
      }
      const kept = await s.write(KV.name, { k: "nomongo", n: 2 }, "put", { n: 2 });
      const r = await Promise.race([kept.acked, new Promise<undefined>((res) => setTimeout(() => res(undefined), 20000))]);
      assert.equal(r?.outcome, "applied", "settled from the streams although MongoDB cannot be read");
      assert.equal(s.pendingCount, 1, "the write whose entry is gone stays pending: MongoDB could not be asked about it");
    } finally {
      redis.disconnect();
    }
  }));

  /**
   * 300 writes whose entries are deleted before the daemon reads them (so the sweep must leave them
   * pending until lostWriteAfterMs: see the test above), keyed by `keyOf`, all older than one more write
   * of another key whose ack is lost: the sweep, 256 writes at a time, must still find that one.
   */
  async function lostAckBehind(label: string, keyOf: (i: number) => { k: string; n: number }): Promise<void> {
    const id = `hidden-${label}-${process.pid}-${Date.now()}`;
    const redis = new Redis(env.redisUrl);
    const names = new Names(env.name);
    try {
      await redis.set(names.acks(id), "not a stream");
      const s = client({ mode: "submit", clientId: id, writeTimeoutMs: 1000, maxPending: 1000 });
      const streamOf = (key: { k: string; n: number }) => names.stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
      // Written and deleted while the daemon is stopped, so that it reads
      // none of them: MongoDB never holds them, and they stay pending for
      // lostWriteAfterMs (60 s by default, longer than this test).
      const daemon = env.writ!.proc.child;
      await pause(daemon);
      try {
        const keys = Array.from({ length: 300 }, (_, i) => keyOf(i));
        const ts = await Promise.all(keys.map((key, i) => s.write(KV.name, key, "put", { i })));
        const del = redis.pipeline();
        ts.forEach((t, i) => del.xdel(streamOf(keys[i]), t.entryId));
        const deleted = (await del.exec())!.map(([e, n]) => (e ? e : n));
        assert.deepEqual(deleted, ts.map(() => 1));
      } finally {
        resume(daemon);
      }
      const t = await s.write(KV.name, { k: "seen", n: 1 }, "put", { n: 1 });
      const r = await Promise.race([
        t.acked,
        new Promise<undefined>((res) => setTimeout(() => res(undefined), 20000)),
      ]);
      assert.ok(r, "the lost ack of the newer key was never settled: the stuck writes used up the sweep");
      assert.equal(r.outcome, "applied");
      assert.equal(s.pendingCount, 300, "the writes whose entries are gone stay pending");
    } finally {
      redis.disconnect();
    }
  }

  test("a key whose writes can never settle does not hide another key's lost ack from the sweep", g(async () => {
    await lostAckBehind("one-key", () => ({ k: "stuck", n: 1 }));
  }));

  test("more keys than a sweep looks at, whose writes can never settle, do not hide another key's lost ack", g(async () => {
    await lostAckBehind("many-keys", (i) => ({ k: "stuck-many", n: i }));
  }));

  test("bad keys and documents are refused before anything is written", g(async () => {
    const a = client();
    await assert.rejects(a.write(KV.name, { k: "x" }, "put", { a: 1 }), WritKeyError);
    await assert.rejects(a.write(KV.name, { k: "x", n: 0.5 }, "put", { a: 1 }), WritKeyError);
    await assert.rejects(a.write("nope", { k: "x" }, "put", { a: 1 }), /not declared/);
    const fieldsSpec: CollectionSpec = { name: "node_fields_local", key: ["k"], layout: "fields" };
    const f = client({ collections: [fieldsSpec] });
    for (const bad of [{ $set: 1 }, { "a.b": 1 }, { "": 1 }, { _id: 1 }, { _writ: 1 }, { createDate: 1 }, { updatedDate: 1 }, { k: "x" }]) {
      await assert.rejects(f.write(fieldsSpec.name, { k: "x" }, "put", bad), WritKeyError, JSON.stringify(bad));
    }
    const small = client({ maxDocumentBytes: 64 });
    await assert.rejects(small.write(KV.name, { k: "x", n: 1 }, "put", { a: "y".repeat(100) }), /maxDocumentBytes/);
    let deep: Record<string, unknown> = { x: 1 };
    for (let i = 0; i < 101; i++) deep = { a: deep };
    await assert.rejects(a.write(KV.name, { k: "x", n: 1 }, "put", deep), /more than 100 levels deep/);
    const circular: Record<string, unknown> = { a: 1 };
    circular.self = circular;
    await assert.rejects(a.write(KV.name, { k: "x", n: 1 }, "put", circular), (e: unknown) => e instanceof WritKeyError && /BSON cannot encode/.test(e.message));
  }));

  test("a new client's sync() waits until earlier writes are applied, then reads them", g(async () => {
    const a = client({ mode: "submit" });
    for (let n = 0; n < 40; n++) await a.write(KV.name, { k: "sync", n }, "put", { n });
    const b = client();
    await b.sync();
    // Everything is applied: MongoDB holds all of it.
    const count = await mongo.db(env.name).collection(KV.name).countDocuments({ k: "sync" });
    assert.equal(count, 40);
    assert.equal((await b.read(KV.name, { k: "sync", n: 39 }))!.payload.n, 39);
  }));

  test("every sync() takes a fresh barrier: after an earlier sync it waits for a write this client does not know of", g(async () => {
    // The documented way to settle a write whose error said accepted "unknown"
    // (its entry landed late; this client no longer waits for it): sync(),
    // then read the key. A sync() that only remembered the start-up one would
    // return at once, and the read would miss the write.
    const a = client({ mode: "submit" });
    const key = { k: "fresh-sync", n: 1 };
    await a.write(KV.name, key, "put", { v: "old" });
    await a.flush();
    await a.sync();
    const b = client({ mode: "submit" });
    await b.ready();
    const daemon = env.writ!.proc.child;
    let paused = false;
    const wake = () => {
      if (paused) resume(daemon);
      paused = false;
    };
    await pause(daemon);
    paused = true;
    try {
      // In the stream, not applied: a's overlay does not know it, as it does
      // not know its own write whose admission reply was lost.
      await b.write(KV.name, key, "put", { v: "new" });
      // The daemon goes on only once a's sync has read a stream's end: a sync
      // that takes no barrier returns, and the read runs, while it is paused.
      const conn = (a as unknown as { redis: Redis }).redis;
      const xrevrange = conn.xrevrange.bind(conn) as (...args: unknown[]) => Promise<unknown>;
      (conn as unknown as { xrevrange: unknown }).xrevrange = async (...args: unknown[]) => {
        const r = await xrevrange(...args);
        wake();
        return r;
      };
      await a.sync();
      assert.equal(paused, false, "sync() returned without reading the streams' ends");
      assert.deepEqual((await a.read(KV.name, key))!.payload, { v: "new" }, "the read after sync() sees the other write");
      // The start-up sync stays remembered: it takes no barrier again.
      await pause(daemon);
      paused = true;
      await b.write(KV.name, key, "put", { v: "newer" });
      await a.sync({ once: true });
      assert.equal(paused, true, "sync({ once: true }) read the streams again");
      assert.deepEqual((await a.read(KV.name, key))!.payload, { v: "new" });
    } finally {
      wake();
    }
  }));

  test("without a daemon: backpressure, ack timeout, bounded pending writes, sync timeout", g(async () => {
    // A namespace no daemon serves (same Redis).
    const ns = `${env.name}_nod`;
    const bp = client({ namespace: ns, maxBacklog: 3, partitions: 1 });
    for (let i = 0; i < 3; i++) await bp.write(KV.name, { k: "bp", n: i }, "put", { i });
    await assert.rejects(
      bp.write(KV.name, { k: "bp", n: 9 }, "put", { i: 9 }),
      (e: unknown) => e instanceof BackpressureError && e.partition === 0 && e.unapplied === 3 && e.limit === 3 && e.accepted === "no",
    );
    const ack = client({ namespace: ns, mode: "ack", writeTimeoutMs: 200, partitions: 1, maxBacklog: 1000 });
    await assert.rejects(ack.write(KV.name, { k: "to", n: 1 }, "put", { a: 1 }), WritTimeoutError);
    const bounded = client({ namespace: ns, maxPending: 2, writeTimeoutMs: 200, partitions: 1, maxBacklog: 1000 });
    await bounded.write(KV.name, { k: "mp", n: 1 }, "put", { a: 1 });
    await bounded.write(KV.name, { k: "mp", n: 2 }, "put", { a: 1 });
    const admin = new Redis(env.redisUrl);
    const entries = () => admin.xlen(new Names(ns).stream(0));
    const before = await entries();
    // Never admitted: a PendingFullError (a WritTimeoutError) that says it was NOT accepted, and nothing was added.
    await assert.rejects(
      bounded.write(KV.name, { k: "mp", n: 3 }, "put", { a: 1 }),
      (e: unknown) => e instanceof PendingFullError && e instanceof WritTimeoutError && /NOT accepted/.test(e.message) && e.accepted === "no",
    );
    assert.equal(await entries(), before, "the write that waited for room added nothing");
    admin.disconnect();
    // Read-your-writes comes from the overlay while nothing applies the writes.
    const o = client({ namespace: ns, partitions: 1, maxBacklog: 1000 });
    await o.write(KV.name, { k: "ovl", n: 1 }, "put", { v: 1 });
    await o.write(KV.name, { k: "ovl", n: 1 }, "put", { v: 2, d: new Date(5), inf: -Infinity });
    const mine = await o.readRecord(KV.name, { k: "ovl", n: 1 });
    assert.equal(mine!.source, "overlay");
    assert.deepEqual(mine!.doc!.payload, { v: 2, d: new Date(5), inf: -Infinity });
    assert.equal(await client({ namespace: ns, partitions: 1 }).read(KV.name, { k: "ovl", n: 1 }), null, "other processes do not see it");
    await o.write(KV.name, { k: "ovl", n: 1 }, "remove");
    assert.equal(await o.read(KV.name, { k: "ovl", n: 1 }), null);
    const s = client({ namespace: ns, syncTimeoutMs: 200, partitions: 1 });
    await assert.rejects(s.sync(), (e: unknown) => e instanceof WritTimeoutError && /writ serve/.test(e.message));
  }));

  test("a client id used again never takes an old ack for a new write", g(async () => {
    // A namespace no daemon serves: no write here is ever acked for real.
    const ns = `${env.name}_reuse`;
    const id = "fixed-id-1";
    // The acks an earlier client with this id left (kept for 24 h), for the
    // request ids a per-process counter would give its first writes.
    const admin = new Redis(env.redisUrl);
    try {
      await admin.xadd(`${ns}:ack:${id}`, "*", "req", "1", "outcome", "applied", "v", "1-0", "id", "1-0");
      await admin.xadd(`${ns}:ack:${id}`, "*", "req", "2", "outcome", "dead_lettered", "v", "1-1", "id", "1-1", "reason", "old");
    } finally {
      admin.disconnect();
    }
    const c = client({ namespace: ns, clientId: id, partitions: 1, maxBacklog: 1000 });
    for (const n of [1, 2]) {
      const t = await c.submit(KV.name, { k: "reuse", n }, "put", { i: n });
      await assert.rejects(c.waitAck(t, 300), WritTimeoutError);
    }
  }));

  test("a list waits for a key's pending writes newest first: an older write's lost ack is not waited for once a newer one is acked", g(async () => {
    // A namespace no daemon serves; the test plays the daemon.
    const ns = `${env.name}_newest`;
    const id = `newest-${process.pid}-${Date.now()}`;
    const key = { k: "newest", n: 1 };
    const c = client({ namespace: ns, clientId: id, partitions: 1, maxBacklog: 1000, readTimeoutMs: 60000 });
    const older = await c.submit(KV.name, key, "put", { i: 1 });
    const newer = await c.submit(KV.name, key, "put", { i: 2 });
    const names = new Names(ns);
    const entry = names.cache(0, KV.name, canonicalKey(KV, key));
    const doc = (i: number, t: Ticket) => ({ k: "newest", n: 1, payload: { i }, removed: false, _writ: { v: toSortable(t.entryId) } });
    const admin = new Redis(env.redisUrl);
    try {
      // The older write applied and cached; its ack is lost (never sent).
      assert.equal(await admin.eval(CACHE_CAS_LUA, 1, entry, toSortable(older.entryId), Buffer.from(serialize(doc(1, older)))), 1);
      const started = Date.now();
      const listed = c.list(KV.name, { k: "newest" });
      await sleep(200);
      // The newer one applied (MongoDB, cache) and acked.
      await mongo.db(env.name).collection(KV.name).insertOne(doc(2, newer));
      assert.equal(await admin.eval(CACHE_CAS_LUA, 1, entry, toSortable(newer.entryId), Buffer.from(serialize(doc(2, newer)))), 1);
      const [[, fields]] = (await admin.xrange(names.stream(0), newer.entryId, newer.entryId)) as [string, string[]][];
      const req = fields[fields.indexOf("req") + 1];
      await admin.xadd(names.acks(id), "*", "req", req, "outcome", "applied", "v", newer.entryId, "id", newer.entryId);
      const docs = await listed;
      assert.deepEqual(docs.map((d) => d.payload.i), [2]);
      assert.ok(Date.now() - started < 20000, `the list waited ${Date.now() - started} ms`);
    } finally {
      admin.disconnect();
    }
  }));

  test("a list does not wait for a lost ack: a key whose cache holds its version is settled", g(async () => {
    // A namespace no daemon serves; the test plays the daemon for one key
    // (MongoDB, then the cache) and never sends its ack.
    const ns = `${env.name}_lost`;
    const c = client({ namespace: ns, partitions: 1, maxBacklog: 1000, readTimeoutMs: 300 });
    const t = await c.submit(KV.name, { k: "lost", n: 1 }, "put", { i: 1 });
    const v = toSortable(t.entryId);
    await mongo.db(env.name).collection(KV.name).insertOne({ k: "lost", n: 1, payload: { i: 1 }, _writ: { v } });
    const stored = await mongo.db(env.name).collection(KV.name).findOne({ k: "lost", n: 1 });
    const admin = new Redis(env.redisUrl);
    try {
      const key = new Names(ns).cache(0, KV.name, JSON.stringify(["lost", 1]));
      assert.equal(await admin.eval(CACHE_CAS_LUA, 1, key, v, Buffer.from(serialize(stored!))), 1);
    } finally {
      admin.disconnect();
    }
    const listed = await c.list(KV.name, { k: "lost" });
    assert.deepEqual(listed.map((d) => d.payload), [{ i: 1 }]);
    assert.equal(c.pendingCount, 1, "the write stays pending until its ack");
    // A pending write of another key of the prefix, not in the cache: waited for.
    await c.submit(KV.name, { k: "lost", n: 2 }, "put", { i: 2 });
    await assert.rejects(c.list(KV.name, { k: "lost" }), (e: unknown) => e instanceof WritTimeoutError && /1 pending writes/.test(e.message));
  }));

  test("another program's value at a cache key: a read with a pending write asks MongoDB, and a newer write of another process wins", g(async () => {
    // A namespace no daemon serves; the test applies one write by hand to
    // MongoDB, then another program's value takes its cache entry's place.
    const ns = `${env.name}_miss`;
    const key = { k: "miss", n: 1 };
    const mine = client({ namespace: ns, partitions: 1, maxBacklog: 1000 });
    await mine.write(KV.name, key, "put", { who: "mine" });
    const theirs = client({ namespace: ns, partitions: 1, maxBacklog: 1000 });
    const t = await theirs.submit(KV.name, key, "put", { who: "theirs" });
    await mongo.db(env.name).collection(KV.name).insertOne({ ...key, payload: { who: "theirs" }, _writ: { v: toSortable(t.entryId) } });
    const admin = new Redis(env.redisUrl);
    try {
      await admin.set(new Names(ns).cache(0, KV.name, JSON.stringify(["miss", 1])), "another program's value");
    } finally {
      admin.disconnect();
    }
    assert.deepEqual((await mine.read(KV.name, key))!.payload, { who: "theirs" });
  }));

  test("waiting for room under maxPending leaves no waiter behind", g(async () => {
    const ns = `${env.name}_room`;
    const c = client({ namespace: ns, maxPending: 1, writeTimeoutMs: 1000, partitions: 1, maxBacklog: 1000 });
    await c.write(KV.name, { k: "room", n: 1 }, "put", { a: 1 });
    await assert.rejects(c.write(KV.name, { k: "room", n: 2 }, "put", { a: 2 }), PendingFullError);
    assert.equal((c as unknown as { roomWaiters: unknown[] }).roomWaiters.length, 0);
  }));

  test("writes that wait for room under maxPending are admitted in call order", g(async () => {
    // One write fills maxPending while the daemon is stopped (SIGSTOP: no
    // ack comes), and eight more of the same key wait for room, called 70 ms
    // apart. Once the daemon goes on, each is admitted as the one before it is
    // acked: in call order, so the stream holds them in that order and the
    // last call wins (a waiter that re-queued on its 200 ms timer used to
    // overtake the ones called after it).
    const c = client({ maxPending: 1, writeTimeoutMs: 20000 });
    const key = { k: "order", n: 1 };
    const daemon = env.writ!.proc.child;
    const tickets: Promise<{ entryId: string }>[] = [];
    await pause(daemon);
    try {
      await c.write(KV.name, key, "put", { i: 0 });
      for (let i = 1; i <= 8; i++) {
        tickets.push(c.write(KV.name, key, "put", { i }));
        await new Promise((r) => setTimeout(r, 70));
      }
      assert.equal(c.pendingCount, 1, "the eight wait for room");
    } finally {
      resume(daemon);
    }
    const ids = (await Promise.all(tickets)).map((t) => t.entryId);
    const order = (id: string) => id.split("-").map(Number);
    for (let i = 1; i < ids.length; i++) {
      const [a, b] = [order(ids[i - 1]), order(ids[i])];
      assert.ok(a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]), `write ${i + 1} (${ids[i]}) was admitted before write ${i} (${ids[i - 1]}): ${ids.join(" ")}`);
    }
    await c.flush();
    assert.equal((await client().read(KV.name, key))!.payload.i, 8);
  }));

  test("a Redis that refuses the ack stream's read is reported to onError once", g(async () => {
    const ns = `${env.name}_ackref`;
    const errors: WritError[] = [];
    const c = client({ namespace: ns, mode: "ack", writeTimeoutMs: 1500, partitions: 1, maxBacklog: 1000, onError: (e: WritError) => errors.push(e) });
    const admin = new Redis(env.redisUrl);
    try {
      await admin.set(`${ns}:ack:${c.clientId}`, "another program's value");
    } finally {
      admin.disconnect();
    }
    await assert.rejects(c.write(KV.name, { k: "ackref", n: 1 }, "put", { a: 1 }), WritTimeoutError);
    assert.equal(errors.length, 1, errors.map(String).join("; "));
    assert.ok(errors[0] instanceof WritConnectionError && /ack stream/.test(errors[0].message) && /WRONGTYPE/.test(errors[0].message), errors[0].message);
  }));

  test("an admission Redis does not answer fails within writeTimeoutMs, saying it may have been accepted", g(async () => {
    const dir = mkdtempSync(join(tmpdir(), "writ-paused-"));
    const r = await RedisServer.start(dir);
    const admin = new Redis(r.url);
    try {
      const c = new WritClient(env.clientConfig({ collections: COLLECTIONS, redisUrl: r.url, writeTimeoutMs: 500, partitions: 1 }));
      clients.push(c);
      await c.ready();
      // A first write takes the partition's sample of Redis's clock (a
      // script, which CLIENT PAUSE WRITE would hold too).
      const before = await c.write(KV.name, { k: "paused", n: 0 }, "put", { a: "before" });
      await admin.client("PAUSE", 20000, "WRITE");
      const t = Date.now();
      const sent = c.write(KV.name, { k: "paused", n: 1 }, "put", { a: 1 });
      // A write queued behind that call was never sent: it says so, and is
      // taken back, so it does not land once Redis answers.
      await new Promise((r) => setTimeout(r, 50));
      const behind = c.write(KV.name, { k: "paused", n: 2 }, "put", { a: "behind" });
      await assert.rejects(sent, (e: unknown) => e instanceof WritConnectionError && /may or may not have been accepted/.test(e.message) && e.accepted === "unknown");
      assert.ok(Date.now() - t < 5000, `failed after ${Date.now() - t} ms`);
      await assert.rejects(
        behind,
        (e: unknown) => e instanceof WritConnectionError && /NOT accepted/.test(e.message) && /taken back unsent/.test(e.message),
      );
      await admin.client("UNPAUSE");
      // The call Redis held runs now, past its deadline (protocol.md §2a):
      // refused, EXPIRED. A write after it, on the same connection, lands
      // once Redis has run the held call.
      const after = await c.write(KV.name, { k: "paused", n: 3 }, "put", { a: "after" });
      const entries = await admin.xrangeBuffer(new Names(env.name).stream(0), "-", "+");
      assert.deepEqual(
        entries.map(([id]) => String(id)),
        [before.entryId, after.entryId],
        "the call Redis held past its writes' giving up landed, or the write taken back was sent after all",
      );
    } finally {
      await admin.client("UNPAUSE").catch(() => {});
      admin.disconnect();
      await r.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }));

  for (const minReplicasAcked of [0, 1]) test(`a write held by a paused Redis past its giving-up never lands (minReplicasAcked ${minReplicasAcked})`, g(async () => {
    // Redis is stopped (SIGSTOP) while a write's admission call is out: the
    // write fails after writeTimeoutMs (plus the WAITs), "may or may not have
    // been accepted". Its caller may then read the key and write something
    // newer; the call Redis holds must not land over that once Redis runs
    // again. Its deadline (protocol.md §2a, "A deadline") has Redis refuse it
    // (EXPIRED). Without it, the held call landed between the two others.
    const dir = mkdtempSync(join(tmpdir(), "writ-stopped-"));
    const r = await RedisServer.start(dir);
    const admin = new Redis(r.url);
    let stopped = false;
    try {
      const c = new WritClient(
        env.clientConfig({ collections: COLLECTIONS, redisUrl: r.url, partitions: 1, writeTimeoutMs: 1000, minReplicasAcked, replicaAckTimeoutMs: 100 }),
      );
      clients.push(c);
      await c.ready();
      const marker = (what: string) => `stopped-redis-${what}-${minReplicasAcked}-9d2e`;
      // (With minReplicasAcked on a Redis without replicas, every write that
      // lands fails all the same: too few replicas confirmed it.)
      const write = (n: number, what: string) =>
        c.write(KV.name, { k: "stopped", n }, "put", { a: marker(what) }).then(
          () => undefined,
          (e: unknown) => e,
        );
      // The first write takes the partition's sample of Redis's clock.
      await write(1, "before");
      await pause(r.proc.child);
      stopped = true;
      const held = await write(2, "held");
      assert.ok(held instanceof WritConnectionError, String(held));
      assert.equal(held.accepted, "unknown", held.message);
      assert.match(held.message, /did not answer the write/);
      resume(r.proc.child);
      stopped = false;
      // Goes after the held call, on the same connection: Redis has run that
      // call once this one is answered.
      await write(2, "after");
      const entries = await admin.xrangeBuffer(new Names(env.name).stream(0), "-", "+");
      const landed = entries.map(([, f]) => ["before", "held", "after"].find((w) => f.some((v) => v.includes(marker(w)))));
      assert.deepEqual(landed, ["before", "after"], "the call Redis held past its write's giving up landed");
    } finally {
      if (stopped) resume(r.proc.child);
      admin.disconnect();
      await r.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }));

  test("a read from a Redis that does not answer fails within readTimeoutMs", g(async () => {
    const dir = mkdtempSync(join(tmpdir(), "writ-paused-read-"));
    const r = await RedisServer.start(dir);
    const admin = new Redis(r.url);
    try {
      const c = new WritClient(env.clientConfig({ collections: COLLECTIONS, redisUrl: r.url, readTimeoutMs: 500, partitions: 1 }));
      clients.push(c);
      await c.ready();
      // Pending (no daemon serves this Redis): a list of its prefix reads its cache entry.
      await c.write(KV.name, { k: "pr", n: 2 }, "put", { a: 1 });
      await admin.client("PAUSE", 20000, "ALL");
      const t = Date.now();
      // Bounded here too, so that a read that hangs fails the test instead of hanging it.
      const hung = new Promise<never>((_, reject) => setTimeout(() => reject(new Error("the read hung")), 5000).unref());
      for (const read of [() => c.read(KV.name, { k: "pr", n: 1 }), () => c.list(KV.name, { k: "pr" })]) {
        await assert.rejects(
          Promise.race([read(), hung]),
          (e: unknown) => e instanceof WritConnectionError && /did not answer a cache read within readTimeoutMs/.test(e.message),
        );
      }
      assert.ok(Date.now() - t < 5000, `failed after ${Date.now() - t} ms`);
    } finally {
      await admin.client("UNPAUSE").catch(() => {});
      admin.disconnect();
      await r.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }));

  test("a client whose first call meets a Redis that does not answer fails within its timeouts, and recovers", g(async () => {
    const dir = mkdtempSync(join(tmpdir(), "writ-paused-ready-"));
    const r = await RedisServer.start(dir);
    const admin = new Redis(r.url);
    try {
      await admin.client("PAUSE", 6000, "ALL");
      // Never ready: the connect (its ready check), the PING and writ's checks wait on the paused Redis.
      const c = new WritClient(env.clientConfig({ collections: COLLECTIONS, redisUrl: r.url, readTimeoutMs: 400, writeTimeoutMs: 700, partitions: 1 }));
      clients.push(c);
      const hung = () => new Promise<never>((_, reject) => setTimeout(() => reject(new Error("hung")), 6000).unref());
      const noAnswer = (e: unknown) => e instanceof WritConnectionError && /did not answer within 700 ms/.test(e.message);
      for (const call of [
        () => c.read(KV.name, { k: "pr", n: 1 }),
        () => c.sync(),
        () => c.write(KV.name, { k: "pr", n: 1 }, "put", { a: 1 }),
      ]) {
        const t = Date.now();
        await assert.rejects(Promise.race([call(), hung()]), noAnswer);
        assert.ok(Date.now() - t < 3000, `failed after ${Date.now() - t} ms`);
      }
      // (An UNPAUSE would wait for the pause's end too: Redis pauses it with the rest.)
      await admin.ping();
      // The next call connects again and goes through.
      assert.equal(await c.read(KV.name, { k: "pr", n: 1 }), null);
    } finally {
      await admin.client("UNPAUSE").catch(() => {});
      admin.disconnect();
      await r.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }));

  test("close() while the first call waits for a Redis that does not answer: that call fails with WritClosedError", g(async () => {
    const dir = mkdtempSync(join(tmpdir(), "writ-paused-close-"));
    const r = await RedisServer.start(dir);
    const admin = new Redis(r.url);
    try {
      await admin.client("PAUSE", 3000, "ALL");
      const c = new WritClient(env.clientConfig({ collections: COLLECTIONS, redisUrl: r.url, readTimeoutMs: 5000, writeTimeoutMs: 5000, partitions: 1 }));
      clients.push(c);
      const read = c.read(KV.name, { k: "pr", n: 1 });
      // Answered only once the pause is over (Redis pauses the admin connection with the rest).
      let pauseOver = false;
      const pinged = admin.ping().then(() => void (pauseOver = true));
      await c.close();
      // Not "cannot reach Redis": the caller closed the client.
      await assert.rejects(read, WritClosedError);
      assert.ok(!pauseOver, "the read failed with the close, not once Redis answered again");
      await pinged;
      // And no new (lazy, never connected: "wait") connection replaces the closed one.
      const conn = (c as unknown as { redis: Redis }).redis;
      await eventually(`the connection to end (it is "${conn.status}")`, 2000, async () => conn.status === "end");
    } finally {
      await admin.client("UNPAUSE").catch(() => {});
      admin.disconnect();
      await r.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }));

  test("a Redis that refuses writ's start-up checks: the error says Redis answered, with what, and what to do", g(async () => {
    const dir = mkdtempSync(join(tmpdir(), "writ-noreplicas-"));
    const r = await RedisServer.start(dir);
    const admin = new Redis(r.url);
    try {
      // The partition-count check writes: with no replica in sync, Redis refuses it.
      await admin.config("SET", "min-replicas-to-write", "1");
      const c = new WritClient(env.clientConfig({ collections: COLLECTIONS, redisUrl: r.url, partitions: 1 }));
      clients.push(c);
      await assert.rejects(
        c.ready(),
        (e: unknown) =>
          e instanceof WritConnectionError &&
          /refused writ's start-up checks: NOREPLICAS/.test(e.message) &&
          /min-replicas-to-write/.test(e.message) &&
          !/redis-server is running/.test(e.message),
      );
      await admin.config("SET", "min-replicas-to-write", "0");
      await c.ready();
    } finally {
      admin.disconnect();
      await r.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }));

  test("a Redis at its maxmemory refuses the write at once, saying it was not accepted and what to do", g(async () => {
    const dir = mkdtempSync(join(tmpdir(), "writ-full-"));
    const r = await RedisServer.start(dir);
    const admin = new Redis(r.url);
    try {
      const c = new WritClient(env.clientConfig({ collections: COLLECTIONS, redisUrl: r.url, partitions: 1 }));
      clients.push(c);
      await c.ready();
      await admin.config("SET", "maxmemory", "1");
      await assert.rejects(
        c.write(KV.name, { k: "full", n: 1 }, "put", { a: 1 }),
        (e: unknown) =>
          e instanceof RedisFullError &&
          e instanceof WritConnectionError &&
          e.collection === KV.name &&
          /NOT accepted/.test(e.message) &&
          /maxmemory/.test(e.message) &&
          /OOM/.test(e.reply) &&
          e.accepted === "no",
      );
      await admin.config("SET", "maxmemory", "0");
      assert.equal(await admin.xlen(`${env.name}:{p0}:in`), 0, "the refused write is in the stream");
      await c.write(KV.name, { k: "full", n: 2 }, "put", { a: 2 });
      assert.equal(await admin.xlen(`${env.name}:{p0}:in`), 1);
    } finally {
      await admin.config("SET", "maxmemory", "0").catch(() => {});
      admin.disconnect();
      await r.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }));

  /**
   * A stand-in for the writes connection of a client with minReplicasAcked
   * (a Cluster when `slots` is given, routed by it). Each admission call's
   * entries (their `req` field) land in `landed` unless `refuse` names the
   * error the node answers that call with instead; `hold` keeps the first
   * pipeline out until released.
   */
  function fakeWrites(opts: {
    slots?: string[][];
    refuse?: (pipeline: number, call: number) => string | undefined;
    hold?: boolean;
    /** Called as each pipeline arrives, with its calls' first keys (the partition streams). */
    onExec?: (pipeline: number, streams: string[]) => void;
  }) {
    const landed: string[] = [];
    const sent: { node: string; calls: number; entries: number }[] = [];
    let refreshes = 0;
    let release: (() => void) | undefined;
    let held = false;
    const reqsOf = (args: unknown[]) => args.flatMap((a, i) => (String(a) === "req" ? [String(args[i + 1])] : []));
    const base = opts.slots ? Object.create(Cluster.prototype) : {};
    const fake = Object.assign(base, {
      status: "ready",
      slots: opts.slots,
      refreshSlotsCache: (cb: () => void) => (refreshes++, cb()),
      pipeline() {
        const calls: { key: string; reqs: string[] }[] = [];
        const add = (...a: unknown[]) => (calls.push({ key: String(a[2]), reqs: reqsOf(a) }), p);
        const p = {
          evalsha: add,
          eval: add,
          wait: () => p,
          exec: async () => {
            const pipeline = sent.length;
            opts.onExec?.(pipeline, calls.map((c) => c.key));
            sent.push({
              node: opts.slots ? opts.slots[calculateSlot(calls[0].key)].join(",") : "",
              calls: calls.length,
              entries: calls.reduce((n, c) => n + c.reqs.length, 0),
            });
            if (opts.hold && !held) {
              held = true;
              await new Promise<void>((r) => (release = r));
            }
            const replies = calls.map((c, i): [Error | null, unknown] => {
              const refused = opts.refuse?.(pipeline, i);
              if (refused) return [Object.assign(new Error(refused), { name: "ReplyError" }), null];
              landed.push(...c.reqs);
              return [null, c.reqs.map((_, j) => `1-${landed.length - c.reqs.length + j}`)];
            });
            return [...replies, [null, 1]];
          },
        };
        return p;
      },
    });
    return { fake, landed, sent, release: () => release?.(), out: () => release !== undefined, refreshes: () => refreshes };
  }

  /** Puts `fake` in place of the client's writes connection (in its ReplicatedAdmitter); undoes it. */
  function replaceWrites(c: WritClient, fake: unknown): () => void {
    const inner = (c as unknown as Record<string, unknown>).replicated as Record<string, unknown>;
    assert.ok(inner, "the client has a ReplicatedAdmitter to replace the writes connection of");
    const real = { writeRedis: inner.writeRedis, writeReady: inner.writeReady };
    Object.assign(inner, { writeRedis: fake, writeReady: Promise.resolve() });
    return () => Object.assign(inner, real);
  }

  test("minReplicasAcked: a write queued while its partition's slot moves to another node is sent there", g(async () => {
    // Partitions A and B share node X. A's pipeline is out when a write to B
    // is queued (X is busy, so it waits for X). Meanwhile the slot map moves
    // both to node Y (a failover). When A's pipeline is back, X has nothing
    // left, and B's write must go to Y: before, nothing scheduled Y, and the
    // write waited out writeTimeoutMs and failed though the cluster was fine.
    const c = client({ namespace: `${env.name}_requeued`, minReplicasAcked: 1, maxBacklog: 1000, writeTimeoutMs: 20_000 });
    await c.ready();
    const slots: string[][] = Array.from({ length: 16384 }, () => ["X"]);
    const w = fakeWrites({ slots, hold: true });
    const undo = replaceWrites(c, w.fake);
    try {
      const keyA = { k: "moved-a", n: 1 };
      const pA = partitionOf(KV.name, canonicalKey(KV, keyA), env.partitions);
      let n = 1;
      while (partitionOf(KV.name, canonicalKey(KV, { k: "moved-b", n }), env.partitions) === pA) n++;
      const keyB = { k: "moved-b", n };
      const first = c.submit(KV.name, keyA, "put", { i: 1 });
      await eventually("A's admission out", 5000, async () => w.out());
      const second = c.submit(KV.name, keyB, "put", { i: 2 });
      await sleep(50); // B's write is queued behind X's pipeline
      for (let i = 0; i < slots.length; i++) slots[i] = ["Y"];
      w.release();
      await first;
      const started = Date.now();
      await second;
      assert.ok(Date.now() - started < 5000, "B's write waited for its timeout");
      assert.deepEqual(w.sent.map((x) => x.node), ["X", "Y"]);
    } finally {
      undo();
    }
  }));

  test("minReplicasAcked: an admission sent again after NOSCRIPT stays ahead of later writes of its partition", g(async () => {
    // The writes connection is replaced by a stand-in whose first pipeline
    // answers NOSCRIPT while a second write of the key is submitted.
    const c = client({ namespace: `${env.name}_order`, minReplicasAcked: 1, partitions: 1, maxBacklog: 1000 });
    await c.ready();
    const w = fakeWrites({ hold: true, refuse: (pipeline) => (pipeline === 0 ? "NOSCRIPT No matching script" : undefined) });
    const undo = replaceWrites(c, w.fake);
    try {
      const first = c.submit(KV.name, { k: "ord", n: 1 }, "put", { i: 1 });
      await eventually("the first admission in flight", 5000, async () => w.out());
      const second = c.submit(KV.name, { k: "ord", n: 1 }, "put", { i: 2 });
      await new Promise((r) => setTimeout(r, 50)); // queued behind the first
      w.release();
      await Promise.all([first, second]);
      assert.deepEqual(w.landed.map((r) => r.split(".")[1]), ["1", "2"], "the entries land in submit order");
    } finally {
      undo();
    }
  }));

  test("minReplicasAcked: submits of one partition made together go in one call, so a NOSCRIPT cannot split them", g(async () => {
    // The node answers the pipeline's first call NOSCRIPT and runs the rest
    // (another connection loaded the script in between). Were each submit a
    // call of its own, the later ones would land before the first.
    const c = client({ namespace: `${env.name}_onecall`, minReplicasAcked: 1, partitions: 1, maxBacklog: 1000 });
    await c.ready();
    const w = fakeWrites({ refuse: (pipeline, call) => (pipeline === 0 && call === 0 ? "NOSCRIPT No matching script" : undefined) });
    const undo = replaceWrites(c, w.fake);
    try {
      const subs = [1, 2, 3].map((i) => c.submit(KV.name, { k: "one", n: 1 }, "put", { i }));
      await Promise.all(subs);
      assert.deepEqual(w.landed.map((r) => r.split(".")[1]), ["1", "2", "3"], "the entries land in submit order");
      assert.deepEqual(w.sent.map((s) => [s.calls, s.entries]), [[1, 3], [1, 3]], "one call of 3 entries, sent again once");
    } finally {
      undo();
    }
  }));

  test("minReplicasAcked: a partition is not left out of every pipeline by busier ones", g(async () => {
    // Partitions 0-3 get 300 more writes as each pipeline arrives, so each
    // always has a full call (256) waiting and four fill a pipeline (cap
    // 1000 entries); partition 4's one write must still go within a few.
    const c = client({ namespace: `${env.name}_fair`, minReplicasAcked: 1, partitions: 5, maxBacklog: 1000000, maxPending: 1000000 });
    await c.ready();
    const keyOf: Record<string, unknown>[] = [];
    for (let i = 0; keyOf.length < 5; i++) {
      const key = { k: `f${i}`, n: 1 };
      if (c.resolveKey(KV.name, key).partition === keyOf.length) keyOf.push(key);
    }
    const busy: Promise<unknown>[] = [];
    const load = () => {
      for (let p = 0; p < 4; p++) for (let i = 0; i < 300; i++) busy.push(c.submit(KV.name, keyOf[p], "put", { i }));
    };
    const inPipeline: string[][] = [];
    const w = fakeWrites({ onExec: (pipeline, streams) => (inPipeline.push(streams), pipeline < 6 ? load() : undefined) });
    const undo = replaceWrites(c, w.fake);
    try {
      load();
      const lone = c.submit(KV.name, keyOf[4], "put", { i: 0 });
      await lone;
      // Every write, including those added as later pipelines arrived.
      for (let seen = 0; seen < busy.length; ) {
        const n = busy.length;
        await Promise.all(busy.slice(seen));
        seen = n;
      }
      const first = inPipeline.findIndex((streams) => streams.some((s) => s.includes("{p4}")));
      assert.ok(first >= 0 && first <= 2, `partition 4 went in pipeline ${first} of ${JSON.stringify(inPipeline)}`);
    } finally {
      undo();
    }
  }));

  test("minReplicasAcked in a cluster: a write made while its partition's call is out waits for it, even when the slot moved", g(async () => {
    // The first call goes to node A, which holds it and then answers MOVED:
    // the slot moved to node B meanwhile. A second write of the partition,
    // made while the first is out, must not reach B before the first does.
    const c = client({ namespace: `${env.name}_moved`, minReplicasAcked: 1, partitions: 1, maxBacklog: 1000 });
    await c.ready();
    const slots: string[][] = Array.from({ length: 16384 }, () => ["A"]);
    const w = fakeWrites({ slots, hold: true, refuse: (pipeline) => (pipeline === 0 ? "MOVED 1 127.0.0.1:2" : undefined) });
    const undo = replaceWrites(c, w.fake);
    try {
      const first = c.submit(KV.name, { k: "mv", n: 1 }, "put", { i: 1 });
      await eventually("the first admission out at A", 5000, async () => w.out());
      slots.fill(["B"]);
      const second = c.submit(KV.name, { k: "mv", n: 1 }, "put", { i: 2 });
      await new Promise((r) => setTimeout(r, 50)); // B would have taken it by now
      w.release();
      await Promise.all([first, second]);
      assert.deepEqual(w.landed.map((r) => r.split(".")[1]), ["1", "2"], "the entries land in submit order");
      assert.deepEqual(w.sent.map((s) => s.node), ["A", "B", "B"], "A, then the first again at B, then the second");
      assert.equal(w.refreshes(), 1, "the MOVED refreshed the slot map");
    } finally {
      undo();
    }
  }));

  test("minReplicasAcked in a cluster: a call refused while its slot moves (TRYAGAIN, ASK) is sent again, the slot map left as it is", g(async () => {
    // Until a move ends, the slot's node refuses the call; the slot map is
    // the same all along, so refreshing it for each refusal would only cost
    // a CLUSTER SLOTS per try.
    const c = client({ namespace: `${env.name}_midmove`, minReplicasAcked: 1, partitions: 1, maxBacklog: 1000 });
    await c.ready();
    const slots: string[][] = Array.from({ length: 16384 }, () => ["A"]);
    const refusals = ["TRYAGAIN Multiple keys request during rehashing of slot", "ASK 1 127.0.0.1:2"];
    const w = fakeWrites({ slots, refuse: (pipeline) => refusals[pipeline] });
    const undo = replaceWrites(c, w.fake);
    try {
      await c.submit(KV.name, { k: "mid", n: 1 }, "put", { i: 1 });
      assert.deepEqual(w.landed.map((r) => r.split(".")[1]), ["1"], "landed once");
      assert.equal(w.sent.length, 3, "refused twice, then run");
      assert.equal(w.refreshes(), 0, "no slot refresh");
    } finally {
      undo();
    }
  }));

  test("an admission whose reply is lost and that ioredis sends again lands once", g(async () => {
    // A proxy between the client and Redis drops the connection that carries
    // the admission (marked by its payload) as soon as Redis answers it: Redis
    // ran it, and ioredis sends it again on its new connection.
    const marker = Buffer.from("resend-marker-7f3a");
    const target = new URL(env.redisUrl);
    let cut = 0;
    const proxy = createServer((down) => {
      const up = connect(Number(target.port), target.hostname);
      let armed = false;
      down.on("data", (d: Buffer) => {
        if (cut === 0 && d.includes(marker)) armed = true;
        up.write(d);
      });
      up.on("data", (d: Buffer) => {
        if (armed) {
          cut++;
          armed = false;
          down.destroy();
          up.destroy();
          return;
        }
        down.write(d);
      });
      const close = () => (down.destroy(), up.destroy());
      down.on("error", close).on("close", close);
      up.on("error", close).on("close", close);
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    const admin = new Redis(env.redisUrl);
    try {
      // The script is loaded, so the reply lost is the admission's own.
      await admin.script("LOAD", ADMIT_LUA);
      const port = (proxy.address() as AddressInfo).port;
      const c = client({ mode: "ack", redisUrl: `redis://127.0.0.1:${port}` });
      const key = { k: "resend", n: 1 };
      const t = await c.write(KV.name, key, "put", { a: marker.toString() });
      assert.equal((await t.acked).outcome, "applied");
      assert.equal(cut, 1, "the admission's reply was cut");
      const stream = new Names(env.name).stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
      const copies = (await admin.xrangeBuffer(stream, "-", "+")).filter(([, f]) => f.some((v) => v.includes(marker)));
      assert.equal(copies.length, 1, "the admission sent twice landed once");
      assert.equal(String(copies[0][0]), t.entryId);
      assert.equal((await client().read(KV.name, key))!.payload.a, marker.toString());
    } finally {
      admin.disconnect();
      proxy.close();
    }
  }));

  for (const minReplicasAcked of [0, 1]) test(`a refusal of an admission that ioredis sent again after its reply was lost does not say NOT accepted (minReplicasAcked ${minReplicasAcked})`, g(async () => {
    // As above, a proxy drops the connection as Redis answers the admission:
    // Redis ran it. It then holds the new connection until Redis refuses
    // every write (min-replicas-to-write 1 on a Redis without replicas), so
    // ioredis's second send is refused (NOREPLICAS) while the entry is in the
    // stream. Told "no", a caller would send the write again: twice in the stream.
    const dir = mkdtempSync(join(tmpdir(), "writ-resent-"));
    const r = await RedisServer.start(dir);
    const marker = Buffer.from("refused-resend-marker-51c9");
    const target = new URL(r.url);
    let cut = 0;
    let openGate!: () => void;
    const gate = new Promise<void>((res) => (openGate = res));
    const proxy = createServer((down) => {
      // Connections made after the cut reach Redis only once the gate opens.
      const pending: Buffer[] = [];
      let up: ReturnType<typeof connect> | undefined;
      let armed = false;
      const close = () => (down.destroy(), up?.destroy());
      const open = () => {
        up = connect(Number(target.port), target.hostname);
        for (const d of pending.splice(0)) up.write(d);
        up.on("data", (d: Buffer) => {
          if (armed) {
            cut++;
            armed = false;
            close();
            return;
          }
          down.write(d);
        });
        up.on("error", close).on("close", close);
      };
      down.on("data", (d: Buffer) => {
        if (cut === 0 && d.includes(marker)) armed = true;
        if (up) up.write(d);
        else pending.push(d);
      });
      down.on("error", close).on("close", close);
      if (cut === 0) open();
      else void gate.then(() => down.destroyed || open());
    });
    await new Promise<void>((res) => proxy.listen(0, "127.0.0.1", res));
    const admin = new Redis(r.url);
    try {
      // The script is loaded, so the reply lost is the admission's own.
      await admin.script("LOAD", ADMIT_LUA);
      const port = (proxy.address() as AddressInfo).port;
      const c = new WritClient(
        env.clientConfig({ collections: COLLECTIONS, redisUrl: `redis://127.0.0.1:${port}`, partitions: 1, minReplicasAcked, replicaAckTimeoutMs: 200 }),
      );
      clients.push(c);
      await c.ready();
      // (With minReplicasAcked the admission goes in a pipeline with its WAIT, on a connection of its own.)
      const written = c.write(KV.name, { k: "refused-resend", n: 1 }, "put", { a: marker.toString() }).then(
        () => undefined,
        (e: unknown) => e,
      );
      await eventually("the admission's reply cut", 10_000, async () => cut === 1);
      await admin.config("SET", "min-replicas-to-write", "1");
      openGate();
      const err = await written;
      assert.ok(err instanceof WritConnectionError, `the second send is refused: ${String(err)}`);
      assert.match(err.message, /NOREPLICAS/);
      assert.notEqual(err.accepted, "no", err.message);
      assert.equal(err.accepted, "unknown");
      const copies = (await admin.xrangeBuffer(new Names(env.name).stream(0), "-", "+")).filter(([, f]) => f.some((v) => v.includes(marker)));
      assert.equal(copies.length, 1, "the first send added the entry");
    } finally {
      openGate();
      admin.disconnect();
      proxy.close();
      await r.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }));

  test("acks keep arriving after the ack connection goes half-open", g(async () => {
    // A proxy between the client and Redis: once told, it stops passing
    // anything on the connections that have carried an XREAD (the ack
    // reader's), in either direction, without closing them, as a NAT that
    // forgot the connection does. Acks must come again on a new connection
    // well before TCP would give up (about 15 minutes).
    const ackConns = new Set<HeldConn>();
    const proxy = await holdingProxy(env.redisUrl, (conn, sent) => {
      if (sent.includes("xread")) ackConns.add(conn);
    });
    try {
      const c = client({ mode: "ack", writeTimeoutMs: 40_000, redisUrl: proxy.url });
      const key = { k: "halfopen", n: 1 };
      await (await c.write(KV.name, key, "put", { i: 1 })).acked;
      assert.ok(ackConns.size >= 1, "the ack reader's XREAD went through the proxy");
      for (const a of ackConns) a.held = true;
      const started = Date.now();
      const t = await c.write(KV.name, key, "put", { i: 2 });
      assert.equal((await t.acked).outcome, "applied");
      const waited = Date.now() - started;
      assert.ok(waited < 30_000, `the ack took ${waited} ms`);
      assert.equal((await client().read(KV.name, key))!.payload.i, 2);
    } finally {
      proxy.close();
    }
  }));

  test("writes go through again after the connection that carries admissions goes half-open", g(async () => {
    // A proxy between the client and Redis: once told, it stops passing
    // anything on the connections that have carried an admission (EVALSHA),
    // in either direction, without closing them, as a NAT or load balancer
    // that forgot the connection does, or a master host that died without a
    // reset. TCP would give up on such a connection after about 15 minutes;
    // until then every admission waited behind the one out on it.
    const admissionConns = new Set<HeldConn>();
    const proxy = await holdingProxy(env.redisUrl, (conn, sent) => {
      if (sent.includes("evalsha")) admissionConns.add(conn);
    });
    try {
      const c = client({ writeTimeoutMs: 1000, readTimeoutMs: 1000, redisUrl: proxy.url });
      await c.write(KV.name, { k: "halfopen-w", n: 0 }, "put", { i: 0 });
      assert.ok(admissionConns.size >= 1, "the admission went through the proxy");
      const held = [...admissionConns];
      for (const a of held) a.held = true;
      // Distinct keys (several partitions, all on that connection). Each
      // attempt fails within writeTimeoutMs while the connection hangs; the
      // loop is bounded so that a client that never recovers fails the test
      // instead of hanging it (a liveness bound, not a speed figure).
      const deadline = Date.now() + 30_000;
      const failures: unknown[] = [];
      let ok: Ticket | undefined;
      for (let n = 1; !ok && Date.now() < deadline; n++) {
        ok = await c.write(KV.name, { k: "halfopen-w", n }, "put", { i: n }).catch((e: unknown) => (failures.push(e), undefined));
      }
      assert.ok(ok, `no write went through within 30 s of the connection going half-open; ${failures.length} failed, the last: ${String(failures.at(-1))}`);
      assert.ok(held.every((a) => a.closedByClient), "the client gave up the half-open connection");
      for (const e of failures) {
        assert.ok(e instanceof WritConnectionError && (e.accepted === "unknown" || e.accepted === "no"), String(e));
      }
    } finally {
      proxy.close();
    }
  }));

  test("a lost-ack sweep whose reads Redis does not answer does not hold up the acks", g(async () => {
    // A namespace no daemon serves; the test plays the daemon. The ack loop
    // looks for lost acks between its reads of the ack stream; the look's
    // reads go over the commands connection, which a proxy holds (half-open,
    // as above) from the look's first XRANGE on. The ack stream's own
    // connection is fine, so the ack must come while the commands connection
    // is still held, not once the client gives that connection up.
    const ns = `${env.name}_sweephold`;
    const id = `sweephold-${process.pid}-${Date.now()}`;
    const heldConns: HeldConn[] = [];
    const proxy = await holdingProxy(env.redisUrl, (conn, sent) => {
      if (sent.includes("xrange")) {
        conn.held = true;
        heldConns.push(conn);
      }
    });
    const admin = new Redis(env.redisUrl);
    try {
      const c = client({
        namespace: ns, clientId: id, partitions: 1, maxBacklog: 1000, writeTimeoutMs: 1000, readTimeoutMs: 1000,
        redisUrl: proxy.url,
      });
      const t = await c.submit(KV.name, { k: "sweephold", n: 1 }, "put", { i: 1 });
      // Overdue after writeTimeoutMs: the next look reads its entry, and hangs there.
      await eventually("the lost-ack look's read held", 20_000, async () => heldConns.length > 0);
      const names = new Names(ns);
      const [[, fields]] = (await admin.xrange(names.stream(0), t.entryId, t.entryId)) as [string, string[]][];
      const req = fields[fields.indexOf("req") + 1];
      await admin.xadd(names.acks(id), "*", "req", req, "outcome", "applied", "v", t.entryId, "id", t.entryId);
      // A liveness bound, so that an ack that never comes fails the test instead of hanging it.
      const hung = new Promise<never>((_, reject) => setTimeout(() => reject(new Error("no ack within 30 s")), 30_000).unref());
      const ack = await Promise.race([t.acked, hung]);
      const stillHeld = heldConns.every((s) => !s.closedByClient);
      assert.equal(ack.outcome, "applied");
      assert.ok(stillHeld, "the ack waited until the client gave up the held connection: the look held up the ack loop");
    } finally {
      admin.disconnect();
      proxy.close();
    }
  }));

  test("acks keep arriving after Redis drops the client's connections", g(async () => {
    const a = client({ mode: "ack" });
    await a.write(KV.name, { k: "recon", n: 1 }, "put", { i: 1 });
    const admin = new Redis(env.redisUrl);
    try {
      const killed = await admin.client("KILL", "TYPE", "normal", "SKIPME", "yes");
      assert.ok(Number(killed) >= 1);
    } finally {
      admin.disconnect();
    }
    for (let i = 2; i <= 5; i++) {
      const t = await a.write(KV.name, { k: "recon", n: 1 }, "put", { i });
      assert.notEqual((await t.acked).outcome, "dead_lettered");
    }
    assert.equal((await client().read(KV.name, { k: "recon", n: 1 }))!.payload.i, 5);
  }));

  test("minReplicasAcked: a write whose writes connection cannot be made was NOT accepted", g(async () => {
    // The writes connection (admissions and their WAIT) is made at the first
    // write. If Redis refuses it, nothing was sent: accepted "no", not "may
    // or may not have been accepted".
    const dir = mkdtempSync(join(tmpdir(), "writ-writes-conn-"));
    const r = await RedisServer.start(dir);
    try {
      const c = new WritClient(
        env.clientConfig({ collections: COLLECTIONS, redisUrl: r.url, partitions: 1, writeTimeoutMs: 5000, minReplicasAcked: 1, replicaAckTimeoutMs: 100 }),
      );
      clients.push(c);
      await c.ready();
      await r.stop();
      const err = await c.write(KV.name, { k: "no-writes-conn", n: 1 }, "put", { i: 1 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(err instanceof WritConnectionError, String(err));
      assert.equal(err.accepted, "no", err.message);
      assert.match(err.message, /NOT accepted \(nothing was sent\): cannot connect to Redis/);
    } finally {
      await r.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }));

  test("close() returns promptly while Redis is down and an ack is pending", g(async () => {
    const dir = mkdtempSync(join(tmpdir(), "writ-close-"));
    const r = await RedisServer.start(dir);
    try {
      // No daemon serves this Redis: the ack never comes. One partition: the
      // first write takes its sample of Redis's clock, so the second's
      // admission call needs none (it would wait for it, unsent).
      const c = new WritClient(env.clientConfig({ collections: COLLECTIONS, redisUrl: r.url, mode: "ack", writeTimeoutMs: 60000, partitions: 1 }));
      const pending = c.write(KV.name, { k: "close", n: 1 }, "put", { i: 1 }).catch((e: unknown) => e);
      await eventually("the write is in the stream", 10000, async () => (await c.ready().then(() => true)));
      await new Promise((res) => setTimeout(res, 200));
      await r.stop();
      await new Promise((res) => setTimeout(res, 300)); // the client is now reconnecting
      // A write made now waits in ioredis's offline queue; close() settles it. Its admission call
      // is out once this turn's microtasks ran (the group commit sends it from one).
      const queued = c.write(KV.name, { k: "close", n: 2 }, "put", { i: 2 }).catch((e: unknown) => e);
      await new Promise((res) => setImmediate(res));
      // A write of the same key made next waits in its partition's queue, behind that call.
      const behind = c.write(KV.name, { k: "close", n: 2 }, "put", { i: 3 }).catch((e: unknown) => e);
      // A flush waiting for the pending ack ends with the close, not after writeTimeoutMs.
      const flushing = c.flush().catch((e: unknown) => e);
      const t = Date.now();
      await Promise.race([
        c.close(),
        new Promise((_, rej) => setTimeout(() => rej(new Error("close() did not return within 5 s")), 5000).unref()),
      ]);
      assert.ok(Date.now() - t < 5000);
      assert.ok((await pending) instanceof Error, "the pending write is settled with an error");
      // Admitted, waiting for its ack: a closed client cannot tell whether Redis still holds it.
      assert.equal((await pending as WritClosedError).accepted, "unknown");
      const settled = await Promise.race([queued, new Promise((res) => setTimeout(() => res("unsettled"), 5000).unref())]);
      assert.ok(settled instanceof WritClosedError, `the queued write is settled with WritClosedError: ${String(settled)}`);
      // Its admission was out (in ioredis's queue): it may or may not have been accepted.
      assert.equal(settled.accepted, "unknown");
      // Never sent: taken back from the queue.
      const unsent = await behind;
      assert.ok(unsent instanceof WritClosedError, String(unsent));
      assert.equal(unsent.accepted, "no");
      const flushed = await Promise.race([flushing, new Promise((res) => setTimeout(() => res("unsettled"), 5000).unref())]);
      assert.ok(flushed instanceof WritClosedError, `the flush is settled with WritClosedError: ${String(flushed)}`);
      assert.equal(flushed.accepted, "unknown");
      await assert.rejects(c.flush(), WritClosedError);
    } finally {
      await r.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }));

  test("the first client records its partition count; a client with another count is refused, naming both", g(async () => {
    // The daemon's namespace: the daemon recorded its count.
    const right = client({ mode: "ack" });
    await right.write(KV.name, { k: "count", n: 1 }, "put", { n: 1 });
    const daemons = right.config.partitions;
    const wrong = daemons === 4 ? 5 : 4;
    const named = (configured: number, recorded: number) => (e: unknown) =>
      e instanceof WritConfigError &&
      e.message.includes(`configured with partitions = ${configured}`) &&
      e.message.includes(`records ${recorded} partitions`) &&
      e.message.includes(`WRIT_PARTITIONS=${recorded}`);
    const c = client({ partitions: wrong });
    await assert.rejects(c.ready(), named(wrong, daemons));
    // The connection worked: it is kept for the next try, not replaced.
    const conn = (c as unknown as { redis: unknown }).redis;
    await assert.rejects(c.write(KV.name, { k: "count", n: 2 }, "put", { n: 2 }), WritConfigError);
    assert.equal((c as unknown as { redis: unknown }).redis, conn, "a refused ready() keeps its connection");
    // A namespace no daemon has served: the first client records its count.
    const ns = `${env.name}_count`;
    const first = client({ namespace: ns, partitions: 3 });
    await first.ready();
    const redis = new Redis(env.redisUrl);
    try {
      assert.equal(await redis.hget(new Names(ns).meta(0), "partitions"), "3");
    } finally {
      redis.disconnect();
    }
    await assert.rejects(client({ namespace: ns, partitions: 2 }).ready(), named(2, 3));
    await client({ namespace: ns, partitions: 3 }).ready();
  }));

  test("a client configured with another MongoDB database than the daemons' is refused, naming both", g(async () => {
    // The daemon recorded its database when it started (src/database_record.rs).
    const right = client({ mode: "ack" });
    await right.write(KV.name, { k: "db", n: 1 }, "put", { n: 1 });
    const redis = new Redis(env.redisUrl);
    try {
      assert.equal(await redis.hget(new Names(right.config.namespace).meta(0), "database"), right.config.mongodbDatabase);
    } finally {
      redis.disconnect();
    }
    const c = client({ mongodbDatabase: "writ" });
    await assert.rejects(
      c.ready(),
      (e: unknown) =>
        e instanceof WritConfigError &&
        e.message.includes(`configured with MongoDB database "writ"`) &&
        e.message.includes(`write to "${right.config.mongodbDatabase}"`) &&
        e.message.includes(`WRIT_MONGODB_DATABASE=${right.config.mongodbDatabase}`),
    );
    await assert.rejects(c.read(KV.name, { k: "db", n: 1 }), WritConfigError);
    // A namespace no daemon has served: nothing recorded, nothing refused.
    await client({ namespace: `${env.name}_nodb`, mongodbDatabase: "writ" }).ready();
  }));

  test("a client left on another partition count after a change is refused at its next write, and nothing is added", g(async () => {
    const ns = `${env.name}_recount`;
    const names = new Names(ns);
    const c = client({ namespace: ns, partitions: 3 });
    await c.ready();
    const redis = new Redis(env.redisUrl);
    try {
      // The meta hashes as `writ partitions --set` leaves them for 2 (tests/partition_count.rs runs the command).
      for (let p = 0; p < 3; p++) await redis.hset(names.meta(p), "partitions", "2");
      const refused = (e: unknown) =>
        e instanceof WritConfigError &&
        e.message.includes("NOT accepted") &&
        e.message.includes("records 2 partitions") &&
        e.message.includes("configured with partitions = 3") &&
        e.message.includes("WRIT_PARTITIONS=2") &&
        e.message.includes("If `writ partitions` says a change is unfinished instead, run `writ partitions --set` again with the count you want");
      for (let i = 0; i < 6; i++) {
        await assert.rejects(c.submit(KV.name, { k: `recount${i}`, n: i }, "put", { n: i }), refused);
      }
      for (let p = 0; p < 3; p++) assert.equal(await redis.exists(names.stream(p)), 0, `partition ${p}: nothing added`);
    } finally {
      redis.disconnect();
    }
  }));

  test("a reader left on another partition count after a change is refused at its next read, instead of answering an old value", g(async () => {
    const ns = `${env.name}_rerecount`;
    const names = new Names(ns);
    const key = { k: "reread", n: 1 };
    const canonical = canonicalKey(KV, key);
    const old = client({ namespace: ns, partitions: 3 });
    await old.ready();
    const redis = new Redis(env.redisUrl);
    try {
      // The key's cache entry under 3 partitions, as the daemon leaves it: version 1 holds n = 1.
      const entry = names.cache(partitionOf(KV.name, canonical, 3), KV.name, canonical);
      const doc = { k: "reread", n: 1, payload: { n: 1 } };
      await redis.hset(entry, "v", toSortable("1-0"), "doc", Buffer.from(serialize(doc)));
      assert.deepEqual((await old.read(KV.name, key))?.payload, { n: 1 });
      // The count changes to 2 (the meta hashes as `writ partitions --set` leaves them;
      // tests/partition_count.rs runs the command), and a daemon on 2 partitions applies a newer
      // write to the key's entry under 2: the entry under 3 is never updated again.
      for (let p = 0; p < 3; p++) await redis.hset(names.meta(p), "partitions", "2");
      const refused = (e: unknown) =>
        e instanceof WritConfigError &&
        e.message.includes(`read of ${KV.name} was refused`) &&
        e.message.includes("records 2 partitions") &&
        e.message.includes("configured with partitions = 3") &&
        e.message.includes("WRIT_PARTITIONS=2") &&
        e.message.includes("If `writ partitions` says a change is unfinished instead, run `writ partitions --set` again with the count you want");
      await assert.rejects(old.read(KV.name, key), refused);
      await assert.rejects(old.readMany(KV.name, [key, { k: "other", n: 2 }]), refused);
      await assert.rejects(old.readRecord(KV.name, { k: "other", n: 3 }), refused, "a key of any partition");
    } finally {
      redis.disconnect();
    }
  }));

  test("an unreachable Redis fails with WritConnectionError naming the URL", g(async () => {
    const port = 1; // nothing listens on port 1
    const c = client({ redisUrl: `redis://127.0.0.1:${port}` });
    await assert.rejects(c.ready(), (e: unknown) => e instanceof WritConnectionError && /127\.0\.0\.1:1/.test(e.message));
  }));
});
