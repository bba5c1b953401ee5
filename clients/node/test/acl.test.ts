// The writer's Redis ACL user of docs/operations.md ("Redis ACL users"),
// read from the doc so the two cannot drift, against the lost-ack sweep
// (protocol.md §5): the sweep reads the dead-letter stream, so the writer
// needs read access to it. With the documented line a lost ack is settled;
// with the line without `%R~<ns>:dlq` nothing is settled and onError is told
// once why. The writer reads Redis's clock (TIME, for its admission calls'
// deadlines, protocol.md §2a): with the line without `+time` writes still
// go through, with no deadline, and onError is told once. Always a
// redis-server of this file's own (the test creates users); a real writ
// daemon (as the default user) and SecantusDB.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Redis } from "ioredis";
import { MongoClient } from "mongodb";
import { serialize } from "bson";

import { WritClient } from "../src/client.js";
import { RefusedWriteError, WritConnectionError, WritTimeoutError, type WritError } from "../src/errors.js";
import { canonicalKey, Names, partitionOf, type CollectionSpec } from "../src/key.js";
import { compareStreamIds, toSortable } from "../src/version.js";
import { eventually, REPO_ROOT, TestEnv } from "./harness.js";

const KV: CollectionSpec = { name: "acl_kv", key: ["k", "n"] };
/** Declared by the client only: the daemon dead-letters its writes. */
const UNKNOWN: CollectionSpec = { name: "acl_unknown", key: ["k"] };
const APPEND = `
[[collections]]
name = "acl_kv"
key = ["k", "n"]
`;
const WRITER_PASSWORD = "n0de-wr1ter-pw-4b8e";

let env: TestEnv;
let admin: Redis;
let mongo: MongoClient;
const clients: WritClient[] = [];

before(async () => {
  env = await TestEnv.start("acl", { append: APPEND, ownRedis: true });
  admin = new Redis(env.redisUrl);
  mongo = new MongoClient(env.mongoUri);
});

after(async () => {
  try {
    for (const c of clients) await c.close();
    admin?.disconnect();
    await mongo?.close();
  } finally {
    await env?.stop();
  }
});

const g = (fn: () => Promise<void>) => () => env.guard(fn);

/** The documented `ACL SETUSER writ-writer ...` line for this env's namespace, as arguments after `ACL SETUSER`. */
function documentedWriter(): string[] {
  const doc = readFileSync(join(REPO_ROOT, "docs", "operations.md"), "utf8");
  const lines = doc.split("\n").filter((l) => l.startsWith("ACL SETUSER writ-writer "));
  assert.equal(lines.length, 1, "docs/operations.md documents one writ-writer line");
  return lines[0]
    .split(/\s+/)
    .filter(Boolean)
    .slice(2)
    .map((w) => w.replaceAll("writ:", `${env.name}:`).replace("WRITER_PASSWORD", WRITER_PASSWORD));
}

async function setWriter(rules: string[]): Promise<void> {
  assert.equal(rules[0], "writ-writer");
  assert.equal(await admin.call("ACL", "SETUSER", ...rules), "OK");
  await admin.call("ACL", "LOG", "RESET");
}

/** A client as writ-writer whose ack stream holds another program's value: every ack it is sent is lost. */
async function writerWithLostAcks(label: string, errors: WritError[]): Promise<WritClient> {
  const clientId = `${label}-${process.pid}-${Date.now()}`;
  await admin.set(new Names(env.name).acks(clientId), "not a stream");
  const c = new WritClient(
    env.clientConfig({
      redisUrl: `redis://writ-writer:${WRITER_PASSWORD}@127.0.0.1:${env.redis!.port}`,
      collections: [KV, UNKNOWN],
      mode: "submit",
      clientId,
      writeTimeoutMs: 1000,
      onError: (e: WritError) => errors.push(e),
    }),
  );
  clients.push(c);
  await c.ready();
  return c;
}

/** `ACL LOG` entries, each flattened to one string. */
async function aclLog(): Promise<string[]> {
  const log = (await admin.call("ACL", "LOG")) as unknown[];
  return log.map((e) => JSON.stringify(e));
}

describe("the documented writer ACL user", () => {
  test("may read the dead-letter stream: the lost-ack sweep settles lost acks, dead letters included", g(async () => {
    const dlq = new Names(env.name).dlq;
    const rules = documentedWriter();
    assert.ok(rules.includes(`%R~${dlq}`), `the writer's line grants %R~${dlq}: ${rules.join(" ")}`);
    await setWriter(rules);
    const errors: WritError[] = [];
    const s = await writerWithLostAcks("acl-ok", errors);
    const good = [];
    for (const n of [1, 2]) good.push(await s.write(KV.name, { k: "acl", n }, "put", { n }));
    const bad = await s.write(UNKNOWN.name, { k: "acl" }, "put", { a: 1 });
    // Only the sweep can settle these: no ack ever arrives.
    await s.flush(30000);
    assert.equal(s.pendingCount, 0);
    for (const t of good) assert.equal((await t.acked).outcome, "applied");
    assert.equal((await bad.acked).outcome, "dead_lettered");
    assert.ok(errors.some((e) => e instanceof RefusedWriteError), errors.join("\n"));
    assert.ok(errors.some((e) => e instanceof WritConnectionError && /never arrived/.test(e.message)), errors.join("\n"));
    assert.ok(!errors.some((e) => e.message.includes(dlq)), errors.join("\n"));
    const refusals = (await aclLog()).filter((e) => e.includes(dlq));
    assert.deepEqual(refusals, [], "ACL LOG: the writer was refused the dead-letter stream");
    assert.deepEqual((await aclLog()).filter((e) => e.includes('"time"')), [], "ACL LOG: the writer was refused TIME");
    assert.ok(!errors.some((e) => /TIME/.test(e.message)), errors.join("\n"));
    await s.close();
  }));

  test("without +time, writes go through with no deadline and onError is told once", g(async () => {
    // The line as documented before admission deadlines.
    const rules = documentedWriter();
    const old = rules.filter((r) => r !== "+time");
    assert.equal(old.length, rules.length - 1, `the writer's line grants +time: ${rules.join(" ")}`);
    await setWriter(old);
    const errors: WritError[] = [];
    const s = new WritClient(
      env.clientConfig({
        redisUrl: `redis://writ-writer:${WRITER_PASSWORD}@127.0.0.1:${env.redis!.port}`,
        collections: [KV],
        mode: "ack",
        writeTimeoutMs: 1000,
        onError: (e: WritError) => errors.push(e),
      }),
    );
    clients.push(s);
    // Keys of several partitions: each partition's sample is refused.
    const partitions = new Set<number>();
    for (let n = 0; partitions.size < 3; n++) {
      const key = { k: "acl-notime", n };
      partitions.add(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
      const t = await s.write(KV.name, key, "put", { n });
      assert.equal((await t.acked).outcome, "applied");
    }
    const told = errors.filter((e) => /TIME/.test(e.message));
    assert.equal(told.length, 1, `onError is told once:\n${errors.join("\n")}`);
    assert.ok(told[0] instanceof WritConnectionError, String(told[0]));
    assert.match(told[0].message, /\+time/);
    assert.match(told[0].message, /NOTIME/);
    assert.match(told[0].message, /may or may not have been accepted/);
    assert.match(told[0].message, /docs\/operations\.md/);
    assert.equal(told[0].accepted, undefined, "the warning is no write's");
    await s.close();
  }));

  test("without read access to the dead-letter stream, onError is told once and nothing is settled", g(async () => {
    const names = new Names(env.name);
    const dlq = names.dlq;
    // The line as documented before the dead-letter stream was granted.
    const rules = documentedWriter();
    const old = rules.filter((r) => r !== `%R~${dlq}`);
    assert.equal(old.length, rules.length - 1, `the writer's line grants %R~${dlq}: ${rules.join(" ")}`);
    await setWriter(old);
    const errors: WritError[] = [];
    const s = await writerWithLostAcks("acl-nodlq", errors);
    const key = { k: "acl-nodlq", n: 1 };
    const t = await s.write(KV.name, key, "put", { n: 1 });
    const stream = names.stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
    // The daemon is done with it (delivered, XACKed): a sweep could settle it, given the dead letters.
    // Delivered is read first: an entry not yet delivered is not pending either.
    await eventually("the daemon to finish the write", 20000, async () => {
      const groups = (await admin.xinfo("GROUPS", stream)) as unknown[][];
      const gr = groups.find((x) => x[1] === env.name);
      const delivered = gr ? String(gr[gr.indexOf("last-delivered-id") + 1]) : "0-0";
      if (compareStreamIds(delivered, t.entryId) < 0) return false;
      const pend = (await admin.xpending(stream, env.name, t.entryId, t.entryId, 1)) as unknown[];
      return pend.length === 0;
    });
    // Several sweeps (one a second, writeTimeoutMs): the write must stay pending, never called applied.
    await assert.rejects(s.flush(5000), WritTimeoutError);
    assert.equal(s.pendingCount, 1, "settled without reading the dead-letter stream");
    const told = errors.filter((e) => e.message.includes(dlq));
    assert.equal(told.length, 1, `onError is told once about ${dlq}:\n${errors.join("\n")}`);
    assert.ok(told[0] instanceof WritConnectionError, String(told[0]));
    assert.match(told[0].message, /NOPERM/);
    assert.ok(told[0].message.includes(`%R~${dlq}`), told[0].message);
    assert.match(told[0].message, /docs\/operations\.md/);
    assert.ok(!errors.some((e) => /never arrived/.test(e.message)), errors.join("\n"));
    await s.close();
  }));
  test("with the cache read-only, a write settled from MongoDB stays pending until its cache fill succeeds", g(async () => {
    // A namespace no daemon serves: the daemon's steps by hand, as in core's
    // "a write settled applied from MongoDB is not read older from a cache entry that lost its update".
    const ns = `${env.name}_fill`;
    const names = new Names(ns);
    const rules = documentedWriter().map((r) => r.replaceAll(`${env.name}:`, `${ns}:`));
    const cacheRule = `~${ns}:{p*}:c:*`;
    assert.ok(rules.includes(cacheRule), `the writer's line grants ${cacheRule}: ${rules.join(" ")}`);
    await setWriter(rules.map((r) => (r === cacheRule ? `%R${cacheRule}` : r)));
    const key = { k: "fill", n: 1 };
    const canonical = canonicalKey(KV, key);
    const entry = names.cache(partitionOf(KV.name, canonical, 1), KV.name, canonical);
    const stored = (n: number, v: string) => ({ k: "fill", n: 1, payload: { n }, removed: false, _writ: { v, at: new Date() } });
    const coll = mongo.db(env.name).collection(KV.name);
    // The key's first value, applied and cached.
    const v0 = toSortable("1-0");
    await coll.insertOne(stored(0, v0));
    await admin.hset(entry, "v", v0, "doc", Buffer.from(serialize(stored(0, v0))));
    const errors: WritError[] = [];
    const s = new WritClient(
      env.clientConfig({
        redisUrl: `redis://writ-writer:${WRITER_PASSWORD}@127.0.0.1:${env.redis!.port}`,
        collections: [KV],
        namespace: ns,
        partitions: 1,
        mode: "submit",
        writeTimeoutMs: 1000,
        maxBacklog: 1000,
        onError: (e: WritError) => errors.push(e),
      }),
    );
    clients.push(s);
    const t = await s.write(KV.name, key, "put", { n: 1 });
    // Applied to MongoDB; then a failover lost the entry, its cache update and its ack.
    await coll.updateOne({ k: "fill", n: 1 }, { $set: stored(1, toSortable(t.entryId)) });
    assert.equal(await admin.xdel(names.stream(0), t.entryId), 1);
    // Sweeps find it in MongoDB but cannot fill the cache: settled, it would leave other readers the older value.
    await assert.rejects(s.flush(4000), WritTimeoutError);
    assert.equal(s.pendingCount, 1, "settled applied while the cache still holds the older value");
    const told = errors.filter((e) => e.message.includes("cache fill"));
    assert.equal(told.length, 1, `onError is told once:\n${errors.join("\n")}`);
    assert.match(told[0].message, /NOPERM/);
    assert.ok(told[0].message.includes(`${ns}:{p*}:c:*`), told[0].message);
    assert.equal((await s.read(KV.name, key))!.payload.n, 1, "this process reads its pending write");
    // Write access back: the next sweep fills the cache and settles the write.
    await setWriter(rules);
    await s.flush(30000);
    assert.equal((await t.acked).outcome, "applied");
    const [v, doc] = (await admin.hmgetBuffer(entry, "v", "doc")) as (Buffer | null)[];
    assert.equal(String(v), toSortable(t.entryId), "the cache holds the applied version");
    assert.ok(doc && doc.length > 0);
    await s.close();
  }));
});
