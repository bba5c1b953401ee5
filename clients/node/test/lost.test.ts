// The lost-ack sweep's edge cases. A write's stream entry replaced by
// another's at the same id (a promoted replica whose clock is behind can give
// out a lost entry's id again): the sweep must not take that entry for the
// write's. A write MongoDB's primary holds but its majority does not yet: the
// sweep must not settle it applied from that, nor from the other write's
// version at exactly its id. A letter with no entry fields:
// it goes by stream and id. An env of its own, with no
// daemon: the tests delete stream entries by hand, which would upset the
// shared env of core.test.ts.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { MongoClient } from "mongodb";

import { WritClient } from "../src/client.js";
import type { CollectionSpec } from "../src/key.js";
import { canonicalKey, Names, partitionOf } from "../src/key.js";
import { sleep } from "../src/util.js";
import { toSortable } from "../src/version.js";
import { eventually, TestEnv } from "./harness.js";
import { MajorityProxy } from "./majority-proxy.js";

const KV: CollectionSpec = { name: "node_kv", key: ["k", "n"] };

let env: TestEnv;
const clients: WritClient[] = [];

before(async () => {
  env = await TestEnv.start("lost", { daemon: false });
});

after(async () => {
  try {
    for (const c of clients) await c.close();
  } finally {
    await env?.stop();
  }
});

test("an entry (and a letter) another write added at a write's id does not settle it: it is settled lost", () =>
  env.guard(async () => {
    const s = new WritClient(env.clientConfig({ collections: [KV], mode: "submit", writeTimeoutMs: 300, lostWriteAfterMs: 1 }));
    clients.push(s);
    const key = { k: "same-id", n: 1 };
    const t = await s.write(KV.name, key, "put", { n: 1 });
    const names = new Names(env.name);
    const stream = names.stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
    const redis = new Redis(env.redisUrl);
    try {
      const [[, own]] = (await redis.xrange(stream, t.entryId, t.entryId)) as [string, string[]][];
      const req = own[own.indexOf("req") + 1];
      await redis.del(stream);
      await redis.xadd(stream, t.entryId, "v", "1", "client", "another-client", "req", "x.1");
      // And another client's write at that id was parked; its request id is
      // even the same as this write's (they are unique per client only).
      await redis.xadd(names.dlq, "*", "dlq.stream", stream, "dlq.id", t.entryId, "dlq.reason", "malformed", "client", "another-client", "req", req);
      // Past that entry and holding nothing pending: as a daemon that finished it leaves the group.
      await redis.xgroup("CREATE", stream, names.group, "$");
    } finally {
      redis.disconnect();
    }
    const r = await Promise.race([t.acked, sleep(20000).then(() => undefined)]);
    assert.equal(r?.outcome, "lost", "taking the other write's entry (or its letter) for its own would settle it applied (or dead-lettered)");
  }));

test("a write whose id another write's entry holds, applied at exactly that version, is settled lost, not applied", () =>
  env.guard(async () => {
    // As above, and the other write was applied: MongoDB holds exactly this
    // write's version, but it is the other write's. A letter at that id that
    // names no write is the other write's too. Before, the sweep settled
    // this write applied (a fields-layout put whose fields were never written).
    const s = new WritClient(env.clientConfig({ collections: [KV], mode: "submit", writeTimeoutMs: 300, lostWriteAfterMs: 1 }));
    clients.push(s);
    const key = { k: "same-id-applied", n: 1 };
    const t = await s.write(KV.name, key, "put", { n: 1 });
    const names = new Names(env.name);
    const stream = names.stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
    const redis = new Redis(env.redisUrl);
    const mongo = new MongoClient(env.mongoUri);
    try {
      await redis.del(stream);
      await redis.xadd(stream, t.entryId, "v", "1", "client", "another-client", "req", "x.1");
      await redis.xgroup("CREATE", stream, names.group, "$");
      await redis.xadd(names.dlq, "*", "dlq.stream", stream, "dlq.id", t.entryId, "dlq.reason", "malformed");
      await mongo
        .db(env.name)
        .collection(KV.name)
        .insertOne({ ...key, payload: { n: 2 }, removed: false, _writ: { v: toSortable(t.entryId), at: new Date() } });
    } finally {
      redis.disconnect();
      await mongo.close();
    }
    const r = await Promise.race([t.acked, sleep(20000).then(() => undefined)]);
    assert.equal(r?.outcome, "lost", "the other write's version (or its letter) taken for this write's");
  }));

test("a letter that carries only its dlq.* fields settles the write by stream and id: dead-lettered with its reason, not lost", () =>
  env.guard(async () => {
    const s = new WritClient(env.clientConfig({ collections: [KV], mode: "submit", writeTimeoutMs: 300, lostWriteAfterMs: 1 }));
    clients.push(s);
    const key = { k: "fieldless", n: 1 };
    const t = await s.write(KV.name, key, "put", { n: 1 });
    const names = new Names(env.name);
    const stream = names.stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
    const redis = new Redis(env.redisUrl);
    try {
      // As a daemon parks an entry whose fields it could not read (deleted
      // while pending, on a Redis that claims it without them): read for the
      // group, deleted, its letter added with no entry fields, then acked.
      // The group (made, or moved if another test made it) just before this
      // entry, so that only it is delivered.
      const [ms, seq] = t.entryId.split("-").map(BigInt);
      const before = seq > 0n ? `${ms}-${seq - 1n}` : `${ms - 1n}-18446744073709551615`;
      await redis.xgroup("CREATE", stream, names.group, before).catch(() => redis.xgroup("SETID", stream, names.group, before));
      await redis.xreadgroup("GROUP", names.group, "held-by-test", "COUNT", 1, "STREAMS", stream, ">");
      assert.equal(await redis.xdel(stream, t.entryId), 1);
      await redis.xadd(names.dlq, "*", "dlq.reason", "malformed", "dlq.detail", "the entry's fields could not be read", "dlq.stream", stream, "dlq.id", t.entryId);
      assert.equal(await redis.xack(stream, names.group, t.entryId), 1);
    } finally {
      redis.disconnect();
    }
    const r = await Promise.race([t.acked, sleep(20000).then(() => undefined)]);
    assert.equal(r?.outcome, "dead_lettered", "a letter without client and req is the write's by stream and id");
    assert.match(String(r?.reason), /could not be read/);
  }));

test("a write whose entry is gone and that only MongoDB's primary holds is not settled applied until the majority holds it", () =>
  env.guard(async () => {
    // MongoDB's primary holds the write (the daemon applied it; its
    // w: majority has not completed), its majority does not yet: the proxy
    // answers the sweep's majority reads of the key empty. A failover could
    // still roll the write back, so the sweep must not call it applied.
    const marker = `majority-lag-${process.pid}`;
    const key = { k: marker, n: 1 };
    const proxy = await MajorityProxy.start(env.mongoUri, marker);
    const mongo = new MongoClient(env.mongoUri);
    const redis = new Redis(env.redisUrl);
    try {
      // lostWriteAfterMs 1: a write the majority lacks is not settled lost
      // either while the primary holds it (the sweep's second, local read).
      const s = new WritClient(
        env.clientConfig({ collections: [KV], mongodbUri: proxy.uri, mode: "submit", writeTimeoutMs: 300, lostWriteAfterMs: 1 }),
      );
      clients.push(s);
      const t = await s.write(KV.name, key, "put", { n: 1 });
      let settled: string | undefined;
      t.acked.then((r) => (settled = r.outcome), (e) => (settled = `error: ${e}`));
      // Stored on the server itself, not through the proxy: what the primary holds.
      await mongo
        .db(env.name)
        .collection(KV.name)
        .insertOne({ ...key, payload: { n: 1 }, removed: false, _writ: { v: toSortable(t.entryId), at: new Date() } });
      // The daemon finished it, then a Redis failover lost its entry and its ack.
      const names = new Names(env.name);
      const stream = names.stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
      assert.equal(await redis.xdel(stream, t.entryId), 1);
      // Past every entry (the key's partition may be the one the test above
      // made its group in: the marker holds the pid).
      await redis.xgroup("CREATE", stream, names.group, "$").catch(() => redis.xgroup("SETID", stream, names.group, "$"));
      // Three looks of the sweep at MongoDB, all answered by the lagging
      // majority. A sweep uses the look before it: the second look's answer
      // (past lostWriteAfterMs since the first's) would settle the write lost
      // in the sweep that starts the third look, instead of starting it.
      await eventually("three sweeps to read the key at majority, or the write to settle", 30000, async () => settled !== undefined || proxy.hidden >= 3);
      assert.equal(settled, undefined, "settled from a version only the primary holds (read at read concern local), or lost while it holds it");
      assert.equal(s.pendingCount, 1);
      proxy.catchUp();
      const r = await Promise.race([t.acked, sleep(20000).then(() => undefined)]);
      assert.equal(r?.outcome, "applied", "once the majority holds it, the sweep settles it applied");
      assert.equal(s.pendingCount, 0);
      assert.equal((await s.read(KV.name, key))!.payload.n, 1);
    } finally {
      redis.disconnect();
      await mongo.close();
      await proxy.close();
    }
  }));

test("read-throughs read the primary at local, whatever read concern and preference the URI names", () =>
  env.guard(async () => {
    // The primary holds an acknowledged write its majority does not yet (a
    // write with w: 1, a newly elected primary): a majority read misses it,
    // a local read on the primary does not (docs/protocol.md §6). Before
    // session 42 the client's reads took the URI's readConcernLevel and
    // readPreference (a secondary can be behind an acknowledged write).
    const marker = `uri-concern-${process.pid}`;
    const key = { k: marker, n: 1 };
    const proxy = await MajorityProxy.start(env.mongoUri, marker);
    const mongo = new MongoClient(env.mongoUri);
    try {
      await mongo
        .db(env.name)
        .collection(KV.name)
        .insertOne({ ...key, payload: { n: 7 }, removed: false, _writ: { v: toSortable("7-0"), at: new Date() } });
      const uri = `${proxy.uri}&readConcernLevel=majority&readPreference=secondaryPreferred`;
      const s = new WritClient(env.clientConfig({ collections: [KV], mongodbUri: uri, mode: "submit" }));
      clients.push(s);
      assert.equal((await s.read(KV.name, key))?.payload.n, 7, "the read-through missed what the primary holds");
      assert.equal(proxy.hidden, 0, "a read-through was made at majority");
      // A URI whose read preference carries maxStalenessSeconds still works
      // (a client forced to the primary refuses it).
      const stale = new WritClient(
        env.clientConfig({ collections: [KV], mongodbUri: `${proxy.uri}&readPreference=secondaryPreferred&maxStalenessSeconds=120`, mode: "submit" }),
      );
      clients.push(stale);
      assert.equal((await stale.read(KV.name, key))?.payload.n, 7);
    } finally {
      await mongo.close();
      await proxy.close();
    }
  }));

test("a lost ack's dead letter behind more letters than one sweep reads is still found", () =>
  env.guard(async () => {
    // No daemon: its steps by hand. The write's entry is in its stream and
    // the group is past it with nothing pending (a daemon finished it), its
    // ack never came, and its dead letter comes after 3,500 others. Each
    // sweep reads about 2,000 letters (to the end of the page that passes
    // 2,000); before, every sweep read the same first ones again and the
    // write was never settled.
    const s = new WritClient(env.clientConfig({ collections: [KV], mode: "submit", writeTimeoutMs: 300 }));
    clients.push(s);
    const key = { k: "behind-a-burst", n: 1 };
    const t = await s.write(KV.name, key, "put", { n: 1 });
    const names = new Names(env.name);
    const stream = names.stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
    const redis = new Redis(env.redisUrl);
    try {
      for (let batch = 0; batch < 5; batch++) {
        const pipe = redis.pipeline();
        for (let i = 0; i < 700; i++) pipe.xadd(names.dlq, "*", "dlq.stream", "another:{p0}:in", "dlq.id", "1-0", "dlq.reason", "malformed");
        await pipe.exec();
      }
      // A letter carries its entry's fields verbatim.
      const [[, entry]] = (await redis.xrange(stream, t.entryId, t.entryId)) as [string, string[]][];
      await redis.xadd(names.dlq, "*", "dlq.stream", stream, "dlq.id", t.entryId, "dlq.reason", "mongo_rejected", "dlq.detail", "staged", ...entry);
      try {
        await redis.xgroup("CREATE", stream, names.group, "$");
      } catch {
        await redis.xgroup("SETID", stream, names.group, "$");
      }
    } finally {
      redis.disconnect();
    }
    // Meanwhile more writes whose acks are lost keep joining the sweep, each
    // with its own window reaching back over the burst: they must not send
    // the scan back to the start every sweep.
    let feeding = true;
    const feeder = (async () => {
      const r2 = new Redis(env.redisUrl);
      try {
        for (let i = 0; feeding; i++) {
          const fk = { k: "feed", n: i };
          const ft = await s.write(KV.name, fk, "put", { n: i });
          const fs = names.stream(partitionOf(KV.name, canonicalKey(KV, fk), env.partitions));
          try {
            await r2.xgroup("CREATE", fs, names.group, "$");
          } catch {
            await r2.xgroup("SETID", fs, names.group, "$");
          }
          void ft.acked.catch(() => undefined);
          await sleep(100);
        }
      } finally {
        r2.disconnect();
      }
    })();
    const r = await Promise.race([t.acked, sleep(30000).then(() => undefined)]);
    feeding = false;
    await feeder;
    assert.equal(r?.outcome, "dead_lettered", "the sweep never got past the first 2,000 or so letters");
    assert.equal(r?.reason, "mongo_rejected: staged");
  }));

test("a read through to a MongoDB that stopped answering fails within readTimeoutMs", () =>
  env.guard(async () => {
    // Before, the driver held such a read for about 40 s (its monitor's
    // give-up), past any bound the caller set.
    const marker = `stalled-${process.pid}`;
    const proxy = await MajorityProxy.start(env.mongoUri, marker);
    try {
      proxy.catchUp();
      const s = new WritClient(env.clientConfig({ collections: [KV], mongodbUri: proxy.uri, readTimeoutMs: 1000 }));
      clients.push(s);
      proxy.stall();
      const started = performance.now();
      await assert.rejects(s.read(KV.name, { k: marker, n: 1 }), (e: Error) => e.name === "WritTimeoutError");
      assert.ok(proxy.held > 0, "the proxy held no read: the test staged nothing");
      const took = performance.now() - started;
      assert.ok(took < 10000, `the read took ${Math.round(took)} ms against a readTimeoutMs of 1000`);
    } finally {
      await proxy.close();
    }
  }));
