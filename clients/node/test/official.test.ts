// The published official adapter, `@backtest-kit/mongo` 20.1.0 (its build,
// vendored in test/vendor: see NOTICE.md there), and writ on one database:
// each reads what the other wrote, for the 17 adapters, through the switch
// steps of docs/operations.md ("Switching between writ and
// @backtest-kit/mongo"). The official package starts first, on an empty
// database, and makes its indexes; then the daemon starts on them.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { MongoClient } from "mongodb";
import { Double, EJSON } from "bson";

import { setup } from "../src/setup.js";
import type { WritClient } from "../src/client.js";
import type { WriteModeName } from "../src/config.js";
import { FakeKit, type Domain } from "./fakekit.js";
import { officialKit } from "./official-stubs.js";
import { startOfficial, stopOfficial } from "./official-package.js";
import { TestEnv, WRIT_BIN } from "./harness.js";

let env: TestEnv;
let mongo: MongoClient;
let official: any;
const clients: WritClient[] = [];

before(async () => {
  env = await TestEnv.start("official", { daemon: false });
  mongo = new MongoClient(env.mongoUri);
  official = await startOfficial(env, env.name);
});

after(async () => {
  for (const c of clients) await c.close();
  if (official) await stopOfficial(official);
  await mongo?.close();
  await env?.stop();
});

const g = (fn: () => Promise<void>) => () => env.guard(fn);

/** A new writ "process": its own client and adapter registry. */
function writProcess(mode: WriteModeName): { kit: FakeKit; client: WritClient } {
  const kit = new FakeKit();
  const client = setup(env.clientConfig({ mode }), kit.adapters);
  clients.push(client);
  return { kit, client };
}

const MIN = 60_000;
const WHEN = new Date(Date.UTC(2026, 0, 2, 3, 4, 5));
const T0 = Math.floor(Date.now() / MIN) * MIN - 60 * MIN;
const SIG = ["OFX", "strat", "binance"];

function row(gen: number) {
  return { id: `sig-${gen}`, priceOpen: 100 + gen, minuteEstimatedTime: Infinity, note: "ünïcode ✓", nested: { a: null, b: [{ c: gen }] } };
}
const candle = (gen: number) => ({ timestamp: T0 + gen * MIN, open: gen, high: gen + 1, low: gen - 0.5, close: gen + 0.5, volume: 10 * gen });
const positions = (gen: number) => [[`OFX:strat`, { signalId: `sig-${gen}`, hold: gen }]];

type Call = [Domain, unknown[], string, ...unknown[]];

/** Generation `gen`'s writes, the same for either package. */
function writes(gen: number): Call[] {
  return [
    ["Signal", SIG, "writeSignalData", row(gen)],
    ["Schedule", SIG, "writeScheduleData", row(gen)],
    ["Strategy", SIG, "writeStrategyData", { state: `s${gen}`, n: gen }],
    ["Risk", ["OF-risk", "binance"], "writePositionData", positions(gen), WHEN],
    ["Partial", SIG, "writePartialData", { sig: { profitLevels: [10 * gen], lossLevels: [] } }, "sig", WHEN],
    ["Breakeven", SIG, "writeBreakevenData", { sig: { reached: gen % 2 === 1 } }, "sig", WHEN],
    ["Candle", ["OFX", "1m", "binance"], "writeCandlesData", [candle(gen)]],
    ["Storage", [true], "writeStorageData", [{ id: "of-st-1", gen }]],
    ["Notification", [false], "writeNotificationData", [{ id: "of-no-1", gen }]],
    ["Log", [], "writeLogData", [{ id: `of-log-${gen}`, gen }]],
    ["Measure", ["of-bucket"], "writeMeasureData", { v: gen }, "k1", WHEN],
    ["Interval", ["of-bucket"], "writeIntervalData", { v: gen }, "k1", WHEN],
    ["Memory", ["of-sig", "bucket"], "writeMemoryData", { v: gen }, "m1", WHEN],
    ["Recent", [...SIG, "frame", false], "writeRecentData", row(gen), WHEN],
    ["State", ["of-sig", "bucket"], "writeStateData", { v: gen }, WHEN],
    ["Session", ["strat", "binance", "frame", "OFX", true], "writeSessionData", { v: gen }, WHEN],
    ["Dictionary", ["of-sig", "dict"], "writeDictionaryData", { v: gen }, WHEN],
  ];
}

/** Soft-deletable entries: "gone" and "gone2" are written by generation 1. */
const SOFT: [Domain, unknown[], string, string, string][] = [
  ["Measure", ["of-bucket"], "writeMeasureData", "removeMeasureData", "listMeasureData"],
  ["Interval", ["of-bucket"], "writeIntervalData", "removeIntervalData", "listIntervalData"],
  ["Memory", ["of-sig", "bucket"], "writeMemoryData", "removeMemoryData", "listMemoryData"],
];

async function run(kit: FakeKit, calls: Call[]): Promise<void> {
  for (const [domain, args, method, ...margs] of calls) {
    assert.equal(await kit.call(domain, args, method, ...margs), undefined, `${domain}.${method}`);
  }
}

const byId = (rows: any[], prefix: string) =>
  rows.filter((r) => String(r?.id).startsWith(prefix)).sort((a, b) => String(a.id).localeCompare(String(b.id)));

/** What every reader must see after generation `gen`, with `live` the soft-deletable keys still there. */
async function expectState(who: string, kit: FakeKit, gen: number, live: string[]): Promise<void> {
  const read = (d: Domain, args: unknown[], m: string, ...a: unknown[]) => kit.call(d, args, m, ...a);
  const at = (what: string) => `${who}, generation ${gen}: ${what}`;
  assert.deepEqual(await read("Signal", SIG, "readSignalData"), row(gen), at("Signal"));
  assert.deepEqual(await read("Schedule", SIG, "readScheduleData"), row(gen), at("Schedule"));
  assert.deepEqual(await read("Strategy", SIG, "readStrategyData"), { state: `s${gen}`, n: gen }, at("Strategy"));
  assert.deepEqual(await read("Risk", ["OF-risk", "binance"], "readPositionData", WHEN), positions(gen), at("Risk"));
  assert.deepEqual(await read("Partial", SIG, "readPartialData", "sig", WHEN), { sig: { profitLevels: [10 * gen], lossLevels: [] } }, at("Partial"));
  assert.deepEqual(await read("Breakeven", SIG, "readBreakevenData", "sig", WHEN), { sig: { reached: gen % 2 === 1 } }, at("Breakeven"));
  const candles = Array.from({ length: gen }, (_, i) => candle(i + 1));
  assert.deepEqual(await read("Candle", ["OFX", "1m", "binance"], "readCandlesData", gen, T0 + MIN, T0 + (gen + 1) * MIN), candles, at("Candle"));
  assert.deepEqual(byId(await read("Storage", [true], "readStorageData"), "of-"), [{ id: "of-st-1", gen }], at("Storage"));
  assert.deepEqual(byId(await read("Notification", [false], "readNotificationData"), "of-"), [{ id: "of-no-1", gen }], at("Notification"));
  const logs = Array.from({ length: gen }, (_, i) => ({ id: `of-log-${i + 1}`, gen: i + 1 }));
  assert.deepEqual(byId(await read("Log", [], "readLogData"), "of-log-"), logs, at("Log"));
  assert.deepEqual(await read("Measure", ["of-bucket"], "readMeasureData", "k1"), { v: gen }, at("Measure"));
  assert.deepEqual(await read("Interval", ["of-bucket"], "readIntervalData", "k1"), { v: gen }, at("Interval"));
  assert.deepEqual(await read("Memory", ["of-sig", "bucket"], "readMemoryData", "m1"), { v: gen }, at("Memory"));
  assert.deepEqual(await read("Recent", [...SIG, "frame", false], "readRecentData"), row(gen), at("Recent"));
  assert.deepEqual(await read("State", ["of-sig", "bucket"], "readStateData"), { v: gen }, at("State"));
  assert.deepEqual(await read("Session", ["strat", "binance", "frame", "OFX", true], "readSessionData"), { v: gen }, at("Session"));
  assert.deepEqual(await read("Dictionary", ["of-sig", "dict"], "readDictionaryData"), { v: gen }, at("Dictionary"));
  for (const [d, args, , , list] of SOFT) {
    const keys = ["k1", "m1", ...live].filter((k) => d === "Memory" ? k !== "k1" : k !== "m1");
    const listed = (await kit.list(d, args, list)).map((x: any) => (typeof x === "string" ? x : x.memoryId)).sort();
    assert.deepEqual(listed, keys.sort(), at(`${d} list`));
    for (const gone of ["gone", "gone2"].filter((k) => !live.includes(k))) {
      const readMethod = list.replace("list", "read");
      assert.equal(await kit.call(d, args, readMethod, gone), null, at(`${d} ${gone} removed`));
    }
  }
}

test("the official package and writ read each other's documents, through both switches", g(async () => {
  // 1. The official package alone: generation 1, and the soft-deletable keys.
  await run(officialKit, writes(1));
  for (const [d, args, write] of SOFT) {
    for (const k of ["gone", "gone2"]) await officialKit.call(d, args, write, { v: 0 }, k, WHEN);
  }
  const m = await official.getMongo();
  await Promise.all(m.modelNames().map((name: string) => m.model(name).init()));
  assert.equal(m.modelNames().length, 17, "the official package's 17 models");
  await expectState("official", officialKit, 1, ["gone", "gone2"]);

  // 2. Switch to writ: the daemon starts on the official indexes and documents.
  await env.startDaemon();
  for (const mode of ["ack", "submit"] as const) {
    await expectState(`writ (${mode}) reading the official documents`, writProcess(mode).kit, 1, ["gone", "gone2"]);
  }

  // 3. writ writes generation 2 and removes gone2; drained before the switch back.
  const w = writProcess("ack");
  await run(w.kit, writes(2));
  for (const [d, args, , remove] of SOFT) await w.kit.call(d, args, remove, "gone2");
  await w.client.flush();
  await expectState("writ", w.kit, 2, ["gone"]);
  const writStopped = Date.now();

  // 4. Back to the official package: it reads writ's documents, then writes 3.
  officialKit.clear();
  await expectState("official reading writ's documents", officialKit, 2, ["gone"]);
  await run(officialKit, writes(3));
  for (const [d, args, , remove] of SOFT) await officialKit.call(d, args, remove, "gone");
  await expectState("official", officialKit, 3, []);

  // 5. To writ again: one rebuild-cache of what changed since writ stopped,
  // and every writ reader sees generation 3.
  const rebuild = spawnSync(WRIT_BIN, ["--config", env.configPath, "rebuild-cache", "--since", String(writStopped)], {
    env: env.daemonEnv,
    encoding: "utf8",
  });
  assert.equal(rebuild.status, 0, `writ rebuild-cache: ${rebuild.stdout}\n${rebuild.stderr}`);
  const summary = JSON.parse(rebuild.stdout);
  // Generation 3 changed 20 of the 27 documents: 17 writes (a new candle, a
  // new log entry) and 3 soft deletes.
  assert.deepEqual([summary.read, summary.stored], [20, 20], `what the official package wrote since writ stopped: ${rebuild.stdout}`);
  for (const mode of ["ack", "submit"] as const) {
    await expectState(`writ (${mode}) after rebuild-cache`, writProcess(mode).kit, 3, []);
  }

  // One unique index per collection: the official package's.
  const db = mongo.db(env.name);
  for (const name of m.modelNames()) {
    const coll = m.model(name).collection.collectionName;
    const unique = (await db.collection(coll).indexes()).filter((ix) => ix.unique);
    assert.equal(unique.length, 1, `${coll}: one unique index: ${JSON.stringify(unique)}`);
  }
}));

test("absent keys read the same through both packages", g(async () => {
  if (!env.writ) await env.startDaemon(); // run alone (--test-name-pattern)
  const writ = writProcess("submit").kit;
  const absent: Call[] = [
    ["Signal", ["NONE", "s", "e"], "readSignalData"],
    ["Schedule", ["NONE", "s", "e"], "readScheduleData"],
    ["Strategy", ["NONE", "s", "e"], "readStrategyData"],
    ["Risk", ["none", "e"], "readPositionData", WHEN],
    ["Partial", ["NONE", "s", "e"], "readPartialData", "nosig", WHEN],
    ["Breakeven", ["NONE", "s", "e"], "readBreakevenData", "nosig", WHEN],
    ["Candle", ["NONE", "1m", "e"], "readCandlesData", 2, T0, T0 + 2 * MIN],
    ["Measure", ["none"], "readMeasureData", "k"],
    ["Interval", ["none"], "readIntervalData", "k"],
    ["Memory", ["none", "b"], "readMemoryData", "k"],
    ["Memory", ["none", "b"], "hasMemoryData", "k"],
    ["Recent", ["NONE", "s", "e", "f", true], "readRecentData"],
    ["State", ["none", "b"], "readStateData"],
    ["Session", ["s", "e", "f", "NONE", false], "readSessionData"],
    ["Dictionary", ["none", "d"], "readDictionaryData"],
  ];
  for (const [domain, args, method, ...margs] of absent) {
    const theirs = await officialKit.call(domain, args, method, ...margs);
    assert.deepEqual(await writ.call(domain, args, method, ...margs), theirs, `${domain}.${method} of an absent key`);
  }
  for (const [domain, args, list] of [
    ["Measure", ["none"], "listMeasureData"],
    ["Interval", ["none"], "listIntervalData"],
    ["Memory", ["none", "b"], "listMemoryData"],
  ] as [Domain, unknown[], string][]) {
    assert.deepEqual(await writ.list(domain, args, list), await officialKit.list(domain, args, list), `${domain}.${list} of an empty bucket`);
  }
}));

test("removing a key that was never written leaves no document, as in the official package", g(async () => {
  if (!env.writ) await env.startDaemon(); // run alone (--test-name-pattern)
  const w = writProcess("ack");
  const db = mongo.db(env.name);
  const cases: [Domain, unknown[], string, string, Record<string, unknown>][] = [
    ["Measure", ["never-bucket"], "removeMeasureData", "measure-items", { bucket: "never-bucket", entryKey: "never" }],
    ["Interval", ["never-bucket"], "removeIntervalData", "interval-items", { bucket: "never-bucket", entryKey: "never" }],
    ["Memory", ["never-sig", "bucket"], "removeMemoryData", "memory-items", { signalId: "never-sig", bucketName: "bucket", memoryId: "never" }],
  ];
  for (const [d, args, remove, coll, filter] of cases) {
    await officialKit.call(d, args, remove, "never");
    assert.equal(await db.collection(coll).countDocuments(filter), 0, `official ${d}.${remove}`);
    await w.kit.call(d, args, remove, "never");
    await w.client.flush();
    assert.equal(await db.collection(coll).countDocuments(filter), 0, `writ ${d}.${remove} of a key never written left a document`);
  }
}));


test("candle values are cast as the official package casts them, and what it refuses is refused", g(async () => {
  if (!env.writ) await env.startDaemon(); // run alone (--test-name-pattern)
  const w = writProcess("ack");
  const db = mongo.db(env.name);
  const ctx = (symbol: string) => [symbol, "1m", "binance"];
  // Exchange APIs send prices as strings; mongoose's Number cast stores them as numbers.
  const t = T0 - 30 * MIN;
  const given = { timestamp: t, open: "101.5", high: "1e2", low: " 99 ", close: true, volume: "" };
  await officialKit.call("Candle", ctx("CAST-OF"), "writeCandlesData", [given]);
  await w.kit.call("Candle", ctx("CAST-WR"), "writeCandlesData", [given]);
  const stored = async (symbol: string) => {
    // promoteValues: false keeps the BSON types (Int32, Double) apart.
    const d = await db.collection("candle-items").findOne({ symbol, timestamp: t }, { promoteValues: false });
    assert.ok(d, `no ${symbol} candle stored`);
    return [d.open, d.high, d.low, d.close, d.volume];
  };
  assert.deepEqual(await stored("CAST-WR"), await stored("CAST-OF"), "the same values, of the same BSON types");
  const read = (await w.kit.call("Candle", ctx("CAST-WR"), "readCandlesData", 1, t, t + MIN)) as any[];
  assert.deepEqual(read, [{ timestamp: t, open: 101.5, high: 100, low: 99, close: 1, volume: null }]);

  // A value the official package's cast refuses fails its write; writ's
  // call fails before any of its candles is sent.
  const bad = { timestamp: t + MIN, open: "n/a", high: 1, low: 1, close: 1, volume: 1 };
  const good = { timestamp: t + 2 * MIN, open: 1, high: 1, low: 1, close: 1, volume: 1 };
  await assert.rejects(officialKit.call("Candle", ctx("CAST-OF"), "writeCandlesData", [bad]), /cast|number/i);
  await assert.rejects(w.kit.call("Candle", ctx("CAST-WR"), "writeCandlesData", [good, bad]), (e: any) => {
    assert.equal(e.name, "WritKeyError");
    assert.equal(e.accepted, "no");
    assert.match(e.message, /candle open must be a number or a numeric string .* got "n\/a" at timestamp \d+; fix the candle/);
    return true;
  });
  await w.client.flush();
  assert.equal(await db.collection("candle-items").countDocuments({ symbol: "CAST-WR", timestamp: { $gt: t } }), 0, "nothing of the refused call stored");
  // Refused also for a candle the call would leave out (stored already).
  await assert.rejects(w.kit.call("Candle", ctx("CAST-WR"), "writeCandlesData", [{ ...given, open: "n/a" }]), /WritKeyError|candle open must be a number/);
}));

/** The same calls for both packages, on keys no other test touches. */
function documentCalls(): Call[] {
  const S = ["DOCX", "strat", "binance"];
  const r = { id: "doc-1", priceOpen: 1.5, big: Number.MAX_SAFE_INTEGER, int: 7, neg: -0, inf: Infinity, when: new Date(Date.UTC(2026, 0, 1)),
    note: undefined, nested: { a: undefined, b: null, c: [1, "two", { d: undefined }], e: {} }, empty: [] };
  return [
    ["Signal", S, "writeSignalData", r],
    ["Schedule", S, "writeScheduleData", r],
    ["Schedule", S, "writeScheduleData", null],
    ["Strategy", S, "writeStrategyData", { state: "s", n: 1 }],
    ["Risk", ["DOC-risk", "binance"], "writePositionData", [["DOCX:strat", { signalId: "doc-1", hold: 1.25 }]], WHEN],
    ["Partial", S, "writePartialData", { sig: { profitLevels: [10, 20], lossLevels: [] } }, "sig", WHEN],
    ["Breakeven", S, "writeBreakevenData", { sig: { reached: true } }, "sig", WHEN],
    ["Candle", ["DOCX", "1m", "binance"], "writeCandlesData", [candle(1), candle(2)]],
    ["Storage", [true], "writeStorageData", [{ id: "doc-st-1", x: 1 }, { id: "doc-st-2", x: undefined }]],
    ["Notification", [false], "writeNotificationData", [{ id: "doc-no-1", note: undefined }]],
    ["Log", [], "writeLogData", [{ id: "doc-log-1", level: "info" }]],
    ["Measure", ["doc-bucket"], "writeMeasureData", { v: 1 }, "k1", WHEN],
    ["Measure", ["doc-bucket"], "writeMeasureData", { v: 2 }, "k2", WHEN],
    ["Measure", ["doc-bucket"], "removeMeasureData", "k2"],
    ["Interval", ["doc-bucket"], "writeIntervalData", { v: 1, removed: false }, "k1", WHEN],
    ["Memory", ["doc-sig", "bucket"], "writeMemoryData", { v: 1 }, "m1", WHEN],
    ["Recent", [...S, "frame", false], "writeRecentData", r, WHEN],
    ["State", ["doc-sig", "bucket"], "writeStateData", { v: 1 }, WHEN],
    ["Session", ["strat", "binance", "frame", "DOCX", true], "writeSessionData", { v: 1 }, WHEN],
    ["Dictionary", ["doc-sig", "dict"], "writeDictionaryData", { v: 1 }, WHEN],
  ];
}

/** The documents of {@link documentCalls}, by collection, each with its top-level fields in name order. */
async function scopedDocuments(colls: string[]): Promise<Record<string, any[]>> {
  const db = mongo.db(env.name);
  const mine = { $or: [
    { symbol: "DOCX" }, { riskName: "DOC-risk" }, { bucket: "doc-bucket" },
    { signalId: /^doc-/ }, { notificationId: /^doc-/ }, { entryId: /^doc-/ },
  ] };
  const out: Record<string, any[]> = {};
  for (const c of colls) {
    // promoteValues: false keeps the BSON types (Int32, Int64, Double) apart.
    const docs = await db.collection(c).find(mine, { promoteValues: false }).toArray();
    out[c] = docs.map((d) => Object.fromEntries(Object.entries(d).sort(([a], [b]) => a.localeCompare(b))));
  }
  return out;
}

test("each adapter stores the document the official package stores, but for the differences the README lists", g(async () => {
  if (!env.writ) await env.startDaemon(); // run alone (--test-name-pattern)
  const db = mongo.db(env.name);
  const m = await official.getMongo();
  const colls: string[] = m.modelNames().map((n: string) => m.model(n).collection.collectionName);
  assert.equal(colls.length, 17);
  const reads = async (kit: FakeKit) => [
    await kit.call("Signal", ["DOCX", "strat", "binance"], "readSignalData"),
    await kit.call("Recent", ["DOCX", "strat", "binance", "frame", false], "readRecentData"),
    byId(await kit.call("Storage", [true], "readStorageData"), "doc-"),
    byId(await kit.call("Notification", [false], "readNotificationData"), "doc-"),
  ];

  // The official package first; its documents are deleted before writ
  // makes the same calls on the same keys.
  await run(officialKit, documentCalls());
  const theirs = await scopedDocuments(colls);
  const theirReads = await reads(officialKit);
  for (const c of colls) await db.collection(c).deleteMany({ _id: { $in: theirs[c].map((d) => d._id) } });
  const w = writProcess("ack");
  await run(w.kit, documentCalls());
  await w.client.flush();
  const ours = await scopedDocuments(colls);
  assert.deepEqual(await reads(w.kit), theirReads, "the reads of what each package wrote");

  // What differs by design (the README's list), and what differs by nature.
  const fixed = (c: string, d: any, who: string) => {
    const { _id, createDate, updatedDate, __v, _writ, ...rest } = d;
    assert.ok(_id && createDate && updatedDate, `${who} ${c}: _id, createDate and updatedDate`);
    assert.ok(who === "official" ? __v !== undefined && _writ === undefined : __v === undefined && _writ !== undefined, `${who} ${c}: __v / _writ`);
    // Integer key fields are int64 in writ's documents, doubles in the official package's.
    if (c === "candle-items") rest.timestamp = new Double(Number(rest.timestamp));
    // A soft delete: the official package also sets payload.removed.
    if (rest.removed === true && who === "official") delete rest.payload.removed;
    return EJSON.stringify(rest, { relaxed: false });
  };
  let documents = 0;
  for (const c of colls) {
    const a = theirs[c].map((d) => fixed(c, d, "official")).sort();
    const b = ours[c].map((d) => fixed(c, d, "writ")).sort();
    assert.ok(a.length > 0, `the calls store ${c} documents`);
    assert.deepEqual(b, a, `${c}: writ's documents against the official package's`);
    documents += a.length;
  }
  assert.equal(documents, 20);
}));
