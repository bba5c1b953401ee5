// Protocol pieces that need no server: canonical keys, partitions and Redis
// names against the repository's vectors; FNV-1a against a plain BigInt
// implementation; key validation; versions; config.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { EventEmitter } from "node:events";

import { canonicalKey, fnv1a64, keyValues, Names, partitionOf, type CollectionSpec } from "../src/key.js";
import { compareStreamIds, toSortable, toStreamId, ZERO_VERSION } from "../src/version.js";
import { redactUrl, redisUrls, resolveConfig } from "../src/config.js";
import { WritConfigError, WritConnectionError, WritKeyError } from "../src/errors.js";
import { PRESET_COLLECTIONS } from "../src/collections.js";
import { REPO_ROOT } from "./harness.js";
import { serialize, Binary, BSONRegExp, Code, Decimal128, Double, Int32, Long, MaxKey, MinKey, ObjectId, Timestamp, type Document } from "bson";
import { bsonNesting, MAX_NESTING } from "../src/nesting.js";

interface Vector {
  collection: string;
  key_fields: string[];
  key_json: string;
  canonical: string;
  fnv1a64: string;
  partitions: number;
  partition: number;
  stream: string;
  cache_key: string;
}

const vectors: Vector[] = JSON.parse(readFileSync(join(REPO_ROOT, "tests", "vectors", "protocol_v1.json"), "utf8"));

test("protocol vectors: canonical key, fnv1a64, partition, stream and cache key names", () => {
  assert.ok(vectors.length >= 6, "the vector file holds vectors");
  for (const v of vectors) {
    const spec: CollectionSpec = { name: v.collection, key: v.key_fields };
    const key = JSON.parse(v.key_json);
    const canonical = canonicalKey(spec, key);
    assert.equal(canonical, v.canonical, `canonical of ${v.key_json}`);
    assert.equal(fnv1a64(v.collection, canonical).toString(16).padStart(16, "0"), v.fnv1a64, `fnv of ${v.canonical}`);
    const p = partitionOf(v.collection, canonical, v.partitions);
    assert.equal(p, v.partition, `partition of ${v.canonical}`);
    const names = new Names(v.stream.slice(0, v.stream.indexOf(":{")));
    assert.equal(names.stream(p), v.stream);
    assert.equal(names.cache(p, v.collection, canonical), v.cache_key);
  }
});

test("protocol vectors: boolean key values, when the vector file has them", () => {
  const withBool = vectors.filter((v) => Object.values(JSON.parse(v.key_json)).some((x) => typeof x === "boolean"));
  for (const v of withBool) {
    const spec: CollectionSpec = { name: v.collection, key: v.key_fields };
    assert.equal(canonicalKey(spec, JSON.parse(v.key_json)), v.canonical);
    assert.equal(partitionOf(v.collection, v.canonical, v.partitions), v.partition);
  }
  // Whatever the file holds, booleans are JSON literals in declared order.
  const spec: CollectionSpec = { name: "storage-items", key: ["backtest", "signalId"] };
  assert.equal(canonicalKey(spec, { signalId: "s1", backtest: true }), '[true,"s1"]');
  assert.equal(canonicalKey(spec, { backtest: false, signalId: "s1" }), '[false,"s1"]');
});

/** FNV-1a 64 the plain way, one BigInt multiply per byte. */
function fnvReference(bytes: Uint8Array): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h;
}

test("fnv1a64 equals a plain BigInt FNV-1a over collection ++ 0x00 ++ canonical", () => {
  const enc = new TextEncoder();
  let seed = 12345;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const alphabet = ['a', 'Z', '0', '"', "\\", "\n", "é", "ü", "€", "😀", "\u0001", " ", "-", "_"];
  for (let i = 0; i < 300; i++) {
    const coll = `c${Math.floor(rnd() * 1000)}`;
    let s = "";
    const n = Math.floor(rnd() * 40);
    for (let j = 0; j < n; j++) s += alphabet[Math.floor(rnd() * alphabet.length)];
    const canonical = JSON.stringify([s, Math.floor(rnd() * 1e12), rnd() < 0.5]);
    const bytes = new Uint8Array([...enc.encode(coll), 0, ...enc.encode(canonical)]);
    assert.equal(fnv1a64(coll, canonical), fnvReference(bytes), `${coll} ${canonical}`);
    const parts = 1 + Math.floor(rnd() * 64);
    assert.equal(partitionOf(coll, canonical, parts), Number(fnvReference(bytes) % BigInt(parts)));
  }
});

test("canonical keys escape strings exactly as JSON.stringify / serde_json do", () => {
  const spec: CollectionSpec = { name: "x", key: ["a"] };
  const cases: [string, string][] = [
    ["\u0000\u001f\b\f\n\r\t", '["\\u0000\\u001f\\b\\f\\n\\r\\t"]'],
    ['q"b\\', '["q\\"b\\\\"]'],
    ["\u007f/</ü😀", '["\u007f/</ü😀"]'],
    ["\u000b", '["\\u000b"]'],
  ];
  for (const [value, expected] of cases) assert.equal(canonicalKey(spec, { a: value }), expected);
  assert.equal(canonicalKey({ name: "x", key: ["n"] }, { n: -0 }), "[0]");
  assert.equal(canonicalKey({ name: "x", key: ["n"] }, { n: -9007199254740991 }), "[-9007199254740991]");
});

test("keys with missing, extra or ill-typed fields are refused with WritKeyError", () => {
  const spec: CollectionSpec = { name: "signal-items", key: ["symbol", "strategyName", "exchangeName"] };
  const ok = { symbol: "BTC", strategyName: "s", exchangeName: "e" };
  assert.deepEqual(keyValues(spec, ok), ["BTC", "s", "e"]);
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ symbol: "BTC", strategyName: "s" }, /missing field exchangeName/],
    [{ ...ok, extra: 1 }, /not a key field/],
    [{ ...ok, symbol: 1.5 }, /safe integers/],
    [{ ...ok, symbol: 2 ** 53 }, /safe integers/],
    [{ ...ok, symbol: Infinity }, /safe integers/],
    [{ ...ok, symbol: NaN }, /safe integers/],
    [{ ...ok, symbol: null }, /null/],
    [{ ...ok, symbol: { a: 1 } }, /object/],
    [{ ...ok, symbol: "\ud800x" }, /surrogate/],
  ];
  for (const [key, re] of bad) {
    assert.throws(() => keyValues(spec, key), (e: unknown) => e instanceof WritKeyError && re.test(e.message), JSON.stringify(key));
  }
});

test("versions: stream ids convert to the sortable form and back; byte order is version order", () => {
  assert.equal(toSortable("1700000000000-3"), "00000001700000000000-00000000000000000003");
  assert.equal(toStreamId("00000001700000000000-00000000000000000003"), "1700000000000-3");
  assert.equal(toSortable("0-0"), ZERO_VERSION);
  assert.ok(toSortable("999-10") > toSortable("999-9"));
  assert.ok(toSortable("1000-0") > toSortable("999-99"));
  assert.equal(compareStreamIds("5-1", "5-1"), 0);
  assert.ok(compareStreamIds("10-0", "9-5") > 0);
  assert.throws(() => toSortable("abc"));
  assert.throws(() => toStreamId("1-2"));
});

const configErr = (re: RegExp) => (e: unknown) => e instanceof WritConfigError && re.test(e.message);

test("config: explicit values win over env, env over defaults; bad values are refused", () => {
  const env = {
    WRIT_REDIS_URL: "redis://10.0.0.1:1",
    WRIT_MONGODB_URI: "mongodb://h:2/",
    WRIT_MONGODB_DATABASE: "db1",
    WRIT_NAMESPACE: "ns1",
    WRIT_PARTITIONS: "16",
    WRIT_MODE: "ack",
  };
  const c = resolveConfig({}, env);
  assert.equal(c.redisUrl, "redis://10.0.0.1:1");
  assert.equal(c.mongodbUri, "mongodb://h:2/");
  assert.equal(c.mongodbDatabase, "db1");
  assert.equal(c.namespace, "ns1");
  assert.equal(c.partitions, 16);
  assert.equal(c.mode, "ack");
  const d = resolveConfig({ namespace: "x", partitions: 4, mode: "submit" }, env);
  assert.equal(d.namespace, "x");
  assert.equal(d.partitions, 4);
  assert.equal(d.mode, "submit");
  const defaults = resolveConfig({}, {});
  assert.equal(defaults.redisUrl, "redis://127.0.0.1:6379");
  assert.equal(defaults.namespace, "writ");
  assert.equal(defaults.partitions, 8);
  assert.equal(defaults.mode, "submit");
  assert.equal(defaults.maxBacklog, 100000);
  assert.equal(defaults.collections.length, 17);
  assert.match(defaults.clientId, /^[A-Za-z0-9_.:-]{1,64}$/);
  assert.notEqual(resolveConfig({}, {}).clientId, defaults.clientId, "client ids are random per client");
  for (const [bad, re] of [
    [{ WRIT_MODE: "fast" }, /mode/],
    [{ WRIT_PARTITIONS: "x" }, /integer/],
    [{ WRIT_PARTITIONS: "0" }, /partitions/],
    [{ WRIT_REDIS_URL: "http://x" }, /redis/],
    [{ WRIT_NAMESPACE: "a b" }, /namespace/],
    // The daemon's rules: no colon in a namespace, at most 4096 partitions.
    [{ WRIT_NAMESPACE: "app:writ" }, /namespace.*redis\.namespace/],
    [{ WRIT_PARTITIONS: "4097" }, /at most 4096/],
  ] as [Record<string, string>, RegExp][]) {
    assert.throws(() => resolveConfig({}, bad), (e: unknown) => e instanceof WritConfigError && re.test(e.message));
  }
  assert.throws(() => resolveConfig({ clientId: "has space" }, {}), WritConfigError);
  assert.equal(resolveConfig({ partitions: 4096 }, {}).partitions, 4096);
  assert.throws(
    () => resolveConfig({ maxDocumentBytes: 16 * 1024 * 1024 + 1 }, {}),
    (e: unknown) => e instanceof WritConfigError && /maxDocumentBytes must be at most 16777216/.test(e.message),
  );
  // backtest-kit's CC_ prefix works too; WRIT_ wins when both are set.
  const cc = resolveConfig({}, { CC_WRIT_REDIS_URL: "redis://cc:1", CC_WRIT_NAMESPACE: "ccns", WRIT_NAMESPACE: "wns", CC_WRIT_PARTITIONS: "4" });
  assert.equal(cc.redisUrl, "redis://cc:1");
  assert.equal(cc.namespace, "wns");
  assert.equal(cc.partitions, 4);
  // An empty URL variable is refused by name, not taken for localhost.
  assert.throws(() => resolveConfig({}, { WRIT_REDIS_URL: "" }), configErr(/WRIT_REDIS_URL is set but empty/));
  assert.throws(() => resolveConfig({}, { CC_WRIT_MONGODB_URI: " " }), configErr(/CC_WRIT_MONGODB_URI is set but empty/));
  assert.doesNotThrow(() => resolveConfig({ redisUrl: "redis://h:1" }, { WRIT_REDIS_URL: "" }), "an explicit URL wins");
  // Collection specs: a mode, layout or field the daemon does not know is
  // refused, naming it (a typo would make this process read a key otherwise
  // than the daemon stores it).
  const spec = (extra: object) => ({ collections: [{ name: "c", key: ["k"], ...extra }] }) as never;
  assert.throws(() => resolveConfig(spec({ mode: "insertOnce" }), {}), configErr(/collection "c": mode must be "replace" or "insert_once".*"insertOnce"/));
  assert.throws(() => resolveConfig(spec({ layout: "Fields" }), {}), configErr(/collection "c": layout must be "payload" or "fields".*"Fields"/));
  assert.throws(() => resolveConfig(spec({ layot: "fields" }), {}), configErr(/collection "c" has an unknown field "layot"/));
  assert.throws(() => resolveConfig(spec({ key: [] }), {}), configErr(/collection "c" declares no key fields/));
  assert.throws(() => resolveConfig({ collections: [{ key: ["k"] }] } as never, {}), configErr(/needs a name/));
  assert.equal(resolveConfig(spec({ mode: "insert_once", layout: "fields" }), {}).collections[0].mode, "insert_once");
  // A misspelt key is refused, naming it, instead of silently using a default.
  assert.throws(
    () => resolveConfig({ mongoUri: "mongodb://elsewhere/" } as never, {}),
    (e: unknown) => e instanceof WritConfigError && /"mongoUri"/.test(e.message) && /mongodbUri/.test(e.message),
  );
});

test("preset: the 17 official collections with their key fields in order", () => {
  const byName = Object.fromEntries(PRESET_COLLECTIONS.map((c) => [c.name, c]));
  assert.equal(PRESET_COLLECTIONS.length, 17);
  assert.deepEqual(byName["candle-items"].key, ["exchangeName", "symbol", "interval", "timestamp"]);
  assert.equal(byName["candle-items"].mode, "insert_once");
  assert.equal(byName["log-items"].mode, "insert_once");
  assert.deepEqual(byName["session-items"].key, ["strategyName", "exchangeName", "frameName", "symbol", "backtest"]);
  assert.deepEqual(byName["recent-items"].key, ["symbol", "strategyName", "exchangeName", "frameName", "backtest"]);
  assert.deepEqual(byName["memory-items"].key, ["signalId", "bucketName", "memoryId"]);
  assert.ok(PRESET_COLLECTIONS.every((c) => c.layout === "fields"));
});

test("the READMEs' setup() examples use only config keys that exist", () => {
  for (const file of [join(REPO_ROOT, "README.md"), join(REPO_ROOT, "clients", "node", "README.md")]) {
    const text = readFileSync(file, "utf8");
    const calls = [...text.matchAll(/setup\(\{([^)]*)\}/g)];
    for (const [, raw] of calls) {
      // Keys only: string literals (a comma-separated list of redis:// URLs) hold none.
      const body = raw.replace(/"[^"\n]*"|'[^'\n]*'|`[^`\n]*`/g, '""');
      const keys = [...body.matchAll(/^\s*(\w+)\s*:/gm), ...body.matchAll(/[{,]\s*(\w+)\s*:/g)].map((m) => m[1]);
      assert.ok(keys.length > 0, `${file}: a setup({...}) example with no keys`);
      const cfg = Object.fromEntries(keys.map((k) => [k, undefined]));
      assert.doesNotThrow(() => resolveConfig(cfg as never, {}), `${file}: setup() example keys ${keys.join(", ")}`);
    }
    if (file === join(REPO_ROOT, "README.md")) assert.ok(calls.length > 0, `${file} shows setup({...})`);
  }
});

test("URLs in messages carry no secrets", () => {
  assert.equal(redactUrl("redis://user:s3cret@h:6379/0"), "redis://***@h:6379/0");
  assert.equal(redactUrl("rediss://:s3cret@h:6380"), "rediss://***@h:6380");
  assert.equal(redactUrl("redis://h:6379"), "redis://h:6379");
  const q = redactUrl("mongodb://h/?tlsCertificateKeyFilePassword=s3cret&authSource=admin");
  assert.ok(!q.includes("s3cret") && q.includes("authSource=admin"), q);
  assert.equal(redactUrl("not a url s3cret"), "<unparseable URL>");
  // Passwords a URL parser reads as a host and port, or cuts at a `/`, `?` or `#`.
  for (const [url, secret] of [
    ["redis://admin:2024/Xy9@redis.example:6379", "2024/Xy9"],
    ["redis://admin:2024@redis.example:6379/0", "2024"],
    ["mongodb://writ:ab/c?d#e@h:27017/?authSource=admin", "ab/c?d#e"],
    ["rediss://:p@ss@h:6380", "p@ss"],
    ["redis://:ab?c=d@h:6379/0", "ab?c=d"],
    ["mongodb://writ:pa?ss=x@h:27017/?authSource=admin", "pa?ss=x"],
  ]) {
    const shown = redactUrl(url);
    assert.ok(!shown.includes(secret), `${url} -> ${shown}`);
    assert.ok(/@(redis\.example|h):\d+/.test(shown), `${url} -> ${shown}: the host is still named`);
  }
  // An `@` in a query value after a path is not user information.
  assert.equal(redactUrl("mongodb://h/?appName=a@b"), "mongodb://h/?appName=a@b");
  // A comma in a password is not a list of seed nodes.
  assert.deepEqual(redisUrls("redis://u:pa,ss@h:6379"), ["redis://u:pa,ss@h:6379"]);
  assert.deepEqual(redisUrls("redis://a:7000, rediss://b:7001"), ["redis://a:7000", "rediss://b:7001"]);
  const tokens = redactUrl("mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:t0k&x=1");
  assert.ok(!tokens.includes("t0k") && tokens.includes("x=1"), tokens);
});

test("bsonNesting counts objects, arrays and code scopes below the top, over every BSON type", () => {
  const scalars: Document = {
    d: new Double(1.5), s: "text", bin: new Binary(Buffer.from([1, 2, 3]), 4), oid: new ObjectId(), t: true,
    date: new Date(0), nul: null, re: new BSONRegExp("a+", "i"), code: new Code("x()"), i32: new Int32(7),
    ts: new Timestamp({ t: 1, i: 2 }), i64: Long.fromNumber(8), dec: Decimal128.fromString("1.25"),
    min: new MinKey(), max: new MaxKey(),
  };
  const n = (d: Document) => bsonNesting(serialize(d));
  assert.equal(n({}), 0);
  assert.equal(n(scalars), 0);
  assert.equal(n({ ...scalars, o: { ...scalars } }), 1);
  assert.equal(n({ a: [1, [2, { c: [] }]], ...scalars }), 4);
  // The deepest branch counts, wherever it is.
  assert.equal(n({ a: 1, b: {}, c: { d: { e: { ...scalars } } }, z: scalars }), 3);
  assert.equal(n({ f: new Code("x", { y: { z: 1 } }) }), 2);
  const nested = (levels: number) => {
    let d: Document = { ...scalars };
    for (let i = 0; i < levels; i++) d = { a: d, s: "after" };
    return d;
  };
  assert.equal(n(nested(MAX_NESTING)), MAX_NESTING);
  assert.equal(n(nested(MAX_NESTING + 1)), MAX_NESTING + 1);
  assert.equal(n(nested(MAX_NESTING + 50)), MAX_NESTING + 1, "counts no further than the limit + 1");
});

test("a direct connection to a replica-set member that is not the primary is refused, naming it", async () => {
  const { refuseSecondary } = await import("../src/client.js");
  const stub = (hello: Document) => ({ db: () => ({ command: async () => hello }) }) as unknown as import("mongodb").MongoClient;
  await assert.rejects(
    refuseSecondary(stub({ isWritablePrimary: false, secondary: true, setName: "rs0", me: "b:27017" })),
    (e: unknown) => e instanceof WritConfigError && /b:27017\) is not the primary of replica set rs0/.test((e as Error).message),
  );
  // A primary, a standalone server and a mongos are taken.
  await refuseSecondary(stub({ isWritablePrimary: true, setName: "rs0" }));
  await refuseSecondary(stub({ isWritablePrimary: true }));
  await refuseSecondary(stub({ isWritablePrimary: false, msg: "isdbgrid" }));
  // A server without `hello` (before 4.4.2) is asked `isMaster`.
  const legacy = (ismaster: boolean) =>
    ({
      db: () => ({
        command: async (cmd: Document) => {
          if ("hello" in cmd) throw Object.assign(new Error("no such command: 'hello'"), { code: 59 });
          return { ismaster, secondary: !ismaster, setName: "rs0", me: "c:27017" };
        },
      }),
    }) as unknown as import("mongodb").MongoClient;
  await refuseSecondary(legacy(true));
  await assert.rejects(refuseSecondary(legacy(false)), WritConfigError);
});

test("a direct connection follows its server's role: reads are refused while it is a member that is not the primary", async () => {
  const { PrimaryWatch } = await import("../src/client.js");
  const client = (directConnection: boolean) =>
    Object.assign(new EventEmitter(), { options: { directConnection } }) as unknown as import("mongodb").MongoClient & EventEmitter;
  const describe = (c: EventEmitter, type: string, more: Document = {}) =>
    c.emit("serverDescriptionChanged", { newDescription: { address: "a:27017", type, setName: "rs0", primary: null, ...more } });
  const refused = (f: () => unknown, during = false) =>
    assert.throws(f, (e: unknown) => {
      const m = (e as Error).message;
      return (
        e instanceof WritConnectionError &&
        m.includes(during ? "(a:27017) stopped being the primary of replica set rs0 while this read was out" : "(a:27017) is no longer the primary of replica set rs0") &&
        /directConnection=true/.test(m)
      );
    });

  const c = client(true);
  const w = new PrimaryWatch(c);
  describe(c, "RSPrimary");
  w.after(w.before());
  describe(c, "RSSecondary", { primary: "b:27017" });
  refused(() => w.before());
  assert.throws(() => w.before(), /it says it is a secondary \(RSSecondary\); it names b:27017 as the primary/);
  for (const t of ["RSArbiter", "RSOther", "RSGhost"]) {
    describe(c, t);
    refused(() => w.before());
  }
  // Unreachable is not a secondary (its reads fail on their own); a primary, standalone or mongos is read.
  for (const t of ["Unknown", "RSPrimary", "Standalone", "Mongos"]) {
    describe(c, t);
    w.after(w.before());
  }
  // A read out while the server was described as a secondary may have been sent to it: refused,
  // even if it is the primary again by the time the answer comes.
  const mark = w.before();
  describe(c, "RSSecondary");
  describe(c, "RSPrimary");
  refused(() => w.after(mark), true);
  w.after(w.before());

  // Elsewhere the driver routes to the primary itself: nothing is refused.
  const rs = client(false);
  const free = new PrimaryWatch(rs);
  assert.equal(rs.listenerCount("serverDescriptionChanged"), 0);
  describe(rs, "RSSecondary");
  free.after(free.before());
});
