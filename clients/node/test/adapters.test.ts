// Conformance of the 17 adapters with backtest-kit's persistence contract
// (shared/reference/backtest-kit-persistence-v19.md, "Semantics"), in both
// write modes, against a real writ daemon running the repository's preset
// (config/writ.toml), redis-server and SecantusDB. Adapters are constructed
// and called exactly as backtest-kit does (test/fakekit.ts).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { MongoClient } from "mongodb";
import mongoose from "mongoose";

import { setup } from "../src/setup.js";
import type { AckResult, Ticket, WritClient } from "../src/client.js";
import type { WriteModeName } from "../src/config.js";
import {
  BackpressureError,
  LostWriteError,
  RefusedWriteError,
  WritConfigError,
  WritConnectionError,
  WritTimeoutError,
  type Accepted,
  type WritError,
} from "../src/errors.js";
import { createAdapters } from "../src/adapters.js";
import { canonicalKey, partitionOf } from "../src/key.js";
import { COLLECTION, PRESET_COLLECTIONS } from "../src/collections.js";
import { FakeKit, type Domain } from "./fakekit.js";
import { eventually, pause, resume, TestEnv } from "./harness.js";

let env: TestEnv;
let mongo: MongoClient;
const clients: WritClient[] = [];

/** A new "process": its own client (setup) and its own adapter registry. */
function processWith(mode: WriteModeName): { kit: FakeKit; client: WritClient } {
  const kit = new FakeKit();
  const client = setup(env.clientConfig({ mode }), kit.adapters);
  clients.push(client);
  return { kit, client };
}

before(async () => {
  env = await TestEnv.start("adapters");
  mongo = new MongoClient(env.mongoUri);
});

after(async () => {
  for (const c of clients) await c.close();
  await mongo?.close();
  await env?.stop();
});

const g = (fn: () => Promise<void>) => () => env.guard(fn);
const MIN = 60000;
const WHEN = new Date(Date.UTC(2026, 0, 2, 3, 4, 5));

function signalRow(id: string, extra: Record<string, unknown> = {}) {
  return {
    id,
    position: "long",
    priceOpen: 100.25,
    priceTakeProfit: 110,
    priceStopLoss: 95.5,
    minuteEstimatedTime: Infinity,
    scheduledAt: 1767322800000,
    note: "ünïcode ✓",
    levels: [1, 2.5, -3],
    nested: { a: null, b: [{ c: "d" }] },
    ...extra,
  };
}

interface Case {
  domain: Domain;
  args: unknown[];
  write: [string, ...unknown[]];
  read: [string, ...unknown[]];
  expect: unknown;
}

function cases(m: string): Case[] {
  const now = Date.now();
  const base = Math.floor(now / MIN) * MIN - 30 * MIN;
  const candles = [0, 1, 2].map((i) => ({
    timestamp: base + i * MIN,
    open: 10 + i,
    high: 12 + i,
    low: 9 + i,
    close: 11 + i,
    volume: 1000.5 + i,
  }));
  const pos: [string, unknown][] = [[`${m}:BTC:strat`, { signalId: `${m}-sig`, riskName: "r", openTimestamp: 1, holdMs: Infinity }]];
  return [
    { domain: "Signal", args: [`${m}-BTC`, "strat", "binance"], write: ["writeSignalData", signalRow(`${m}-s1`)], read: ["readSignalData"], expect: signalRow(`${m}-s1`) },
    { domain: "Schedule", args: [`${m}-BTC`, "strat", "binance"], write: ["writeScheduleData", signalRow(`${m}-sc1`)], read: ["readScheduleData"], expect: signalRow(`${m}-sc1`) },
    { domain: "Strategy", args: [`${m}-BTC`, "strat", "binance"], write: ["writeStrategyData", { state: "x", n: 1 }], read: ["readStrategyData"], expect: { state: "x", n: 1 } },
    { domain: "Risk", args: [`${m}-risk`, "binance"], write: ["writePositionData", pos, WHEN], read: ["readPositionData", WHEN], expect: pos },
    { domain: "Partial", args: [`${m}-BTC`, "strat", "binance"], write: ["writePartialData", { [`${m}-sig`]: { profitLevels: [10, 20], lossLevels: [] } }, `${m}-sig`, WHEN], read: ["readPartialData", `${m}-sig`, WHEN], expect: { [`${m}-sig`]: { profitLevels: [10, 20], lossLevels: [] } } },
    { domain: "Breakeven", args: [`${m}-BTC`, "strat", "binance"], write: ["writeBreakevenData", { [`${m}-sig`]: { reached: true } }, `${m}-sig`, WHEN], read: ["readBreakevenData", `${m}-sig`, WHEN], expect: { [`${m}-sig`]: { reached: true } } },
    { domain: "Candle", args: [`${m}-BTC`, "1m", "binance"], write: ["writeCandlesData", candles], read: ["readCandlesData", 3, base, base + 3 * MIN], expect: candles },
    { domain: "Storage", args: [true], write: ["writeStorageData", [signalRow(`${m}-raw-st-1`)]], read: ["readStorageData"], expect: [signalRow(`${m}-raw-st-1`)] },
    { domain: "Notification", args: [false], write: ["writeNotificationData", [{ id: `${m}-raw-n-1`, type: "signal.opened", createdAt: 5 }]], read: ["readNotificationData"], expect: [{ id: `${m}-raw-n-1`, type: "signal.opened", createdAt: 5 }] },
    { domain: "Log", args: [], write: ["writeLogData", [{ id: `${m}-raw-log-1`, type: "info", topic: "t", args: [1, "a"], timestamp: 7 }]], read: ["readLogData"], expect: [{ id: `${m}-raw-log-1`, type: "info", topic: "t", args: [1, "a"], timestamp: 7 }] },
    { domain: "Measure", args: [`${m}-bucket`], write: ["writeMeasureData", { id: "k1", data: { v: 1 }, removed: false }, "k1", WHEN], read: ["readMeasureData", "k1"], expect: { id: "k1", data: { v: 1 }, removed: false } },
    { domain: "Interval", args: [`${m}-bucket`], write: ["writeIntervalData", { id: "k1", data: { fired: true }, removed: false }, "k1", WHEN], read: ["readIntervalData", "k1"], expect: { id: "k1", data: { fired: true }, removed: false } },
    { domain: "Memory", args: [`${m}-sig`, "bucket"], write: ["writeMemoryData", { priority: 1, data: { text: "hi" }, removed: false, index: "i" }, "mem1", WHEN], read: ["readMemoryData", "mem1"], expect: { priority: 1, data: { text: "hi" }, removed: false, index: "i" } },
    { domain: "Recent", args: [`${m}-BTC`, "strat", "binance", "frame", false], write: ["writeRecentData", signalRow(`${m}-r1`), WHEN], read: ["readRecentData"], expect: signalRow(`${m}-r1`) },
    { domain: "State", args: [`${m}-sig`, "bucket"], write: ["writeStateData", { id: "st", data: { step: 3 } }, WHEN], read: ["readStateData"], expect: { id: "st", data: { step: 3 } } },
    { domain: "Session", args: ["strat", "binance", "frame", `${m}-BTC`, true], write: ["writeSessionData", { id: "se", data: { k: [1, 2] } }, WHEN], read: ["readSessionData"], expect: { id: "se", data: { k: [1, 2] } } },
    { domain: "Dictionary", args: [`${m}-sig`, "dict"], write: ["writeDictionaryData", { id: "d", data: { a: "b" } }, WHEN], read: ["readDictionaryData"], expect: { id: "d", data: { a: "b" } } },
  ];
}

/** Global collections (storage, notification, log) hold every test's rows: keep those whose id starts with `prefix`. */
function mine(prefix: string, v: unknown): unknown {
  if (!Array.isArray(v) || (v.length && Array.isArray(v[0]))) return v;
  return v.filter((r) => !(r && typeof r === "object" && "id" in r) || String((r as { id: unknown }).id).startsWith(prefix));
}

for (const mode of ["submit", "ack"] as const) {
  describe(`adapters, ${mode} mode`, () => {
    const m = mode;

    test("read-after-write for all 17 adapters, in the writing process and in a new one", g(async () => {
      const all = cases(m);
      assert.equal(new Set(all.map((c) => c.domain)).size, 17);
      const w = processWith(mode);
      for (const c of all) {
        assert.equal(await w.kit.call(c.domain, c.args, ...c.write), undefined, `${c.domain} write resolves to nothing`);
        assert.deepEqual(mine(`${m}-raw-`, await w.kit.call(c.domain, c.args, ...c.read)), c.expect, `${c.domain} read in the writer`);
      }
      // backtest-kit's recovery: drop the instances, construct anew, read back.
      w.kit.clear();
      for (const c of all) {
        assert.deepEqual(mine(`${m}-raw-`, await w.kit.call(c.domain, c.args, ...c.read)), c.expect, `${c.domain} read after re-construction`);
      }
      // A new process (its first call syncs with the daemon).
      const r = processWith(mode);
      for (const c of all) {
        assert.deepEqual(mine(`${m}-raw-`, await r.kit.call(c.domain, c.args, ...c.read)), c.expect, `${c.domain} read in a new process`);
        assert.deepEqual(mine(`${m}-raw-`, await r.kit.call(c.domain, c.args, ...c.read)), c.expect, `${c.domain} read again`);
      }
      assert.deepEqual(r.kit.inits.map(([, , initial]) => initial), all.flatMap(() => [true, false]));
    }));

    test("data written with removed: true reads as removed and is not listed, as the official package stores it", g(async () => {
      // backtest-kit's MeasureData / IntervalData / memory rows carry their
      // own `removed`; the official package stores it top-level
      // (`$set: { payload, removed: payload.removed }`). Before session 41
      // writ stored `removed: false` whatever the data said.
      const { kit, client } = processWith(mode);
      const cases: [Domain, unknown[], string, string, string, string, Record<string, unknown>][] = [
        ["Measure", [`${m}-rmb`], "writeMeasureData", "readMeasureData", "listMeasureData", "measure-items", { bucket: `${m}-rmb` }],
        ["Interval", [`${m}-rmb`], "writeIntervalData", "readIntervalData", "listIntervalData", "interval-items", { bucket: `${m}-rmb` }],
        ["Memory", [`${m}-rms`, "b"], "writeMemoryData", "readMemoryData", "listMemoryData", "memory-items", { signalId: `${m}-rms`, bucketName: "b" }],
      ];
      for (const [domain, args, write, read, list, coll, prefix] of cases) {
        await kit.call(domain, args, write, { id: "gone", removed: true }, "gone", WHEN);
        await kit.call(domain, args, write, { id: "kept", removed: false }, "kept", WHEN);
        assert.equal(await kit.call(domain, args, read, "gone"), null, `${domain}: read`);
        assert.deepEqual(await kit.call(domain, args, read, "kept"), { id: "kept", removed: false }, `${domain}: the live one`);
        const listed = (await kit.list(domain, args, list)).map((x: any) => (typeof x === "string" ? x : x.memoryId));
        assert.deepEqual(listed, ["kept"], `${domain}: list`);
        await client.flush();
        const docs = await mongo.db(env.name).collection(coll).find(prefix).sort({ removed: -1 }).toArray();
        assert.deepEqual(docs.map((d) => d.removed), [true, false], `${domain}: the documents' removed`);
      }
    }));

    test("absent keys read as the defaults backtest-kit expects", g(async () => {
      const { kit } = processWith(mode);
      const ctx = [`${m}-NONE`, "strat", "binance"];
      assert.equal(await kit.call("Signal", ctx, "readSignalData"), null);
      assert.equal(await kit.call("Schedule", ctx, "readScheduleData"), null);
      assert.equal(await kit.call("Strategy", ctx, "readStrategyData"), null);
      assert.deepEqual(await kit.call("Risk", [`${m}-none`, "x"], "readPositionData", WHEN), []);
      assert.deepEqual(await kit.call("Partial", ctx, "readPartialData", "nosig", WHEN), {});
      assert.deepEqual(await kit.call("Breakeven", ctx, "readBreakevenData", "nosig", WHEN), {});
      assert.equal(await kit.call("Candle", [`${m}-NONE`, "1m", "binance"], "readCandlesData", 2, 60000, 180000), null);
      assert.equal(await kit.call("Measure", [`${m}-nob`], "readMeasureData", "k"), null);
      assert.equal(await kit.call("Interval", [`${m}-nob`], "readIntervalData", "k"), null);
      assert.equal(await kit.call("Memory", [`${m}-nos`, "b"], "readMemoryData", "k"), null);
      assert.equal(await kit.call("Memory", [`${m}-nos`, "b"], "hasMemoryData", "k"), false);
      assert.deepEqual(await kit.list("Memory", [`${m}-nos`, "b"], "listMemoryData"), []);
      assert.deepEqual(await kit.list("Measure", [`${m}-nob`], "listMeasureData"), []);
      assert.deepEqual(await kit.list("Interval", [`${m}-nob`], "listIntervalData"), []);
      assert.equal(await kit.call("Recent", [`${m}-NONE`, "s", "e", "f", true], "readRecentData"), null);
      assert.equal(await kit.call("State", [`${m}-nos`, "b"], "readStateData"), null);
      assert.equal(await kit.call("Session", ["s", "e", "f", `${m}-NONE`, false], "readSessionData"), null);
      assert.equal(await kit.call("Dictionary", [`${m}-nos`, "d"], "readDictionaryData"), null);
      for (const d of ["Memory", "State", "Session", "Dictionary"] as const) {
        const args = d === "Session" ? ["s", "e", "f", "x", false] : [`${m}-nos`, "b"];
        assert.equal(await kit.callSync(d, args, "dispose"), undefined, `${d}.dispose() is synchronous`);
      }
    }));

    test("null clears signal, schedule and strategy", g(async () => {
      const w = processWith(mode);
      const ctx = [`${m}-NULL`, "strat", "binance"];
      for (const [d, wr, rd] of [
        ["Signal", "writeSignalData", "readSignalData"],
        ["Schedule", "writeScheduleData", "readScheduleData"],
        ["Strategy", "writeStrategyData", "readStrategyData"],
      ] as const) {
        await w.kit.call(d, ctx, wr, signalRow("x"));
        assert.deepEqual(await w.kit.call(d, ctx, rd), signalRow("x"));
        await w.kit.call(d, ctx, wr, null);
        assert.equal(await w.kit.call(d, ctx, rd), null, `${d} cleared in the writer`);
      }
      const r = processWith(mode);
      for (const [d, rd] of [["Signal", "readSignalData"], ["Schedule", "readScheduleData"], ["Strategy", "readStrategyData"]] as const) {
        assert.equal(await r.kit.call(d, ctx, rd), null, `${d} cleared in a new process`);
      }
      const doc = await mongo.db(env.name).collection("signal-items").findOne({ symbol: `${m}-NULL`, strategyName: "strat", exchangeName: "binance" });
      assert.ok(doc && "payload" in doc && doc.payload === null, "MongoDB holds payload: null");
    }));

    // The official package's mongoose drops `undefined` from its `$set` and
    // keeps the old payload; this package clears (README, "Where the
    // documents differ"). backtest-kit itself clears with null.
    test("an undefined value is stored as null: it reads as cleared", g(async () => {
      const w = processWith(mode);
      const ctx = [`${m}-UNDEF`, "strat", "binance"];
      await w.kit.call("Partial", ctx, "writePartialData", { a: 1 }, "sig", WHEN);
      await w.kit.call("Partial", ctx, "writePartialData", undefined, "sig", WHEN);
      await w.kit.call("Breakeven", ctx, "writeBreakevenData", { a: 1 }, "sig", WHEN);
      await w.kit.call("Breakeven", ctx, "writeBreakevenData", undefined, "sig", WHEN);
      const r = processWith(mode);
      for (const [d, rd] of [["Partial", "readPartialData"], ["Breakeven", "readBreakevenData"]] as const) {
        assert.deepEqual(await w.kit.call(d, ctx, rd, "sig", WHEN), {}, `${d} in the writer`);
        assert.deepEqual(await r.kit.call(d, ctx, rd, "sig", WHEN), {}, `${d} in a new process`);
      }
      const doc = await mongo.db(env.name).collection("partial-items").findOne({ symbol: `${m}-UNDEF`, signalId: "sig" });
      assert.ok(doc && "payload" in doc && doc.payload === null, `MongoDB holds payload: null: ${JSON.stringify(doc)}`);
    }));

    test("Infinity, -Infinity, NaN, dates and nested values survive", g(async () => {
      const w = processWith(mode);
      const ctx = [`${m}-INF`, "strat", "binance"];
      const row = { id: "inf", minuteEstimatedTime: Infinity, floor: -Infinity, nan: NaN, at: new Date(1700000000123), deep: [[Infinity]] };
      await w.kit.call("Signal", ctx, "writeSignalData", row);
      assert.deepEqual(await w.kit.call("Signal", ctx, "readSignalData"), row);
      const r = processWith(mode);
      assert.deepEqual(await r.kit.call("Signal", ctx, "readSignalData"), row);
      const doc = await mongo.db(env.name).collection("signal-items").findOne({ symbol: `${m}-INF` });
      assert.equal(doc!.payload.minuteEstimatedTime, Infinity);
    }));

    test("candles: insert-once, unclosed skipped, a range reads all-or-null", g(async () => {
      const w = processWith(mode);
      const ctx = [`${m}-CND`, "1m", "binance"];
      const nowMin = Math.floor(Date.now() / MIN) * MIN;
      const base = nowMin - 20 * MIN;
      const mk = (t: number, close: number) => ({ timestamp: t, open: 1, high: 2, low: 0.5, close, volume: 10 });
      const first = [0, 1, 2, 3, 4].map((i) => mk(base + i * MIN, 100 + i));
      const unclosed = mk(nowMin, 999);
      await w.kit.call("Candle", ctx, "writeCandlesData", [...first, unclosed]);
      assert.deepEqual(await w.kit.call("Candle", ctx, "readCandlesData", 5, base, base + 5 * MIN), first);
      assert.equal(await w.kit.call("Candle", ctx, "readCandlesData", 1, nowMin, nowMin + MIN), null, "the unclosed candle was not stored");
      assert.equal(await w.kit.call("Candle", ctx, "readCandlesData", 7, base - 2 * MIN, base + 5 * MIN), null, "missing leading candles → null");
      assert.equal(await w.kit.call("Candle", ctx, "readCandlesData", 6, base, base + 6 * MIN), null, "missing trailing candle → null");
      // Odd arguments, as the official package's loop reads them.
      for (const none of [0, -1, NaN]) {
        assert.deepEqual(await w.kit.call("Candle", ctx, "readCandlesData", none, base, base), [], `limit ${none}`);
      }
      assert.deepEqual(await w.kit.call("Candle", ctx, "readCandlesData", 2.5, base, base), first.slice(0, 3), "limit 2.5: three");
      assert.equal(await w.kit.call("Candle", ctx, "readCandlesData", 1, base + 0.5, base), null, "a timestamp no candle has");
      // A gap in the middle.
      await w.kit.call("Candle", ctx, "writeCandlesData", [mk(base + 6 * MIN, 106), mk(base + 8 * MIN, 108)]);
      assert.equal(await w.kit.call("Candle", ctx, "readCandlesData", 3, base + 6 * MIN, base + 9 * MIN), null);
      // Insert-once: another process rewrites with other values; the first stay.
      const other = processWith(mode);
      await other.kit.call("Candle", ctx, "writeCandlesData", first.map((c) => ({ ...c, close: -1 })));
      assert.deepEqual(await other.kit.call("Candle", ctx, "readCandlesData", 5, base, base + 5 * MIN), first);
      await other.client.flush();
      const r = processWith(mode);
      assert.deepEqual(await r.kit.call("Candle", ctx, "readCandlesData", 5, base, base + 5 * MIN), first);
      const stored = await mongo.db(env.name).collection("candle-items").find({ symbol: `${m}-CND` }).sort({ timestamp: 1 }).toArray();
      assert.deepEqual(stored.map((d) => d.close), [100, 101, 102, 103, 104, 106, 108]);
    }));

    test("log is append-only and reads sorted by id", g(async () => {
      const w = processWith(mode);
      const e = (n: number, text: string) => ({ id: `${m}-lg-${n}`, type: "log", topic: text, args: [], timestamp: n });
      await w.kit.call("Log", [], "writeLogData", [e(2, "two"), e(1, "one")]);
      await w.kit.call("Log", [], "writeLogData", [e(1, "one"), e(2, "TWO-REWRITTEN"), e(3, "three")]);
      const only = (rows: any[]) => rows.filter((r) => String(r.id).startsWith(`${m}-lg-`));
      assert.deepEqual(only(await w.kit.call("Log", [], "readLogData")), [e(1, "one"), e(2, "two"), e(3, "three")]);
      // A new process (empty memo) rewriting an entry changes nothing either.
      const o = processWith(mode);
      await o.kit.call("Log", [], "writeLogData", [e(3, "THREE-REWRITTEN"), e(4, "four")]);
      assert.deepEqual(only(await o.kit.call("Log", [], "readLogData")), [e(1, "one"), e(2, "two"), e(3, "three"), e(4, "four")]);
    }));

    test("storage and notification: one entity per id, rewritten in place, all of a flag sorted by id", g(async () => {
      const w = processWith(mode);
      const row = (id: string, status: string) => ({ id: `${m}-ent-${id}`, status, pnl: Infinity });
      for (const [d, wr, rd] of [
        ["Storage", "writeStorageData", "readStorageData"],
        ["Notification", "writeNotificationData", "readNotificationData"],
      ] as const) {
        await w.kit.call(d, [true], wr, [row("b", "opened"), row("a", "opened")]);
        await w.kit.call(d, [true], wr, [row("a", "opened"), row("b", "closed"), row("c", "opened")]);
        await w.kit.call(d, [false], wr, [row("z", "live-only")]);
        const expectTrue = [row("a", "opened"), row("b", "closed"), row("c", "opened")];
        assert.deepEqual(mine(`${m}-ent-`, await w.kit.call(d, [true], rd)), expectTrue, `${d} backtest=true`);
        assert.deepEqual(mine(`${m}-ent-`, await w.kit.call(d, [false], rd)), [row("z", "live-only")], `${d} backtest=false`);
        const r = processWith(mode);
        assert.deepEqual(mine(`${m}-ent-`, await r.kit.call(d, [true], rd)), expectTrue, `${d} in a new process`);
      }
      const coll = mongo.db(env.name).collection("storage-items");
      assert.equal(await coll.countDocuments({ backtest: true, signalId: `${m}-ent-b` }), 1);
    }));

    test("soft delete: removed entries read as null and are left out of lists; hasMemoryData stays true", g(async () => {
      const w = processWith(mode);
      const md = (k: string) => ({ id: k, data: { k }, removed: false });
      for (const [d, wr, rd, rm, ls] of [
        ["Measure", "writeMeasureData", "readMeasureData", "removeMeasureData", "listMeasureData"],
        ["Interval", "writeIntervalData", "readIntervalData", "removeIntervalData", "listIntervalData"],
      ] as const) {
        const b = [`${m}-sd-${d}`];
        for (const k of ["k3", "k1", "k2"]) await w.kit.call(d, b, wr, md(k), k, WHEN);
        await w.kit.call(d, b, rm, "k2");
        assert.equal(await w.kit.call(d, b, rd, "k2"), null);
        assert.deepEqual(await w.kit.call(d, b, rd, "k1"), md("k1"));
        assert.deepEqual(await w.kit.list(d, b, ls), ["k1", "k3"]);
        const r = processWith(mode);
        assert.equal(await r.kit.call(d, b, rd, "k2"), null);
        assert.deepEqual(await r.kit.list(d, b, ls), ["k1", "k3"]);
        // Written again, it is back.
        await w.kit.call(d, b, wr, md("k2"), "k2", WHEN);
        assert.deepEqual(await w.kit.call(d, b, rd, "k2"), md("k2"));
        assert.deepEqual(await w.kit.list(d, b, ls), ["k1", "k2", "k3"]);
      }
      const ctx = [`${m}-sd-sig`, "bucket"];
      const mem = (i: number) => ({ priority: i, data: { i }, removed: false, index: `x${i}` });
      await w.kit.call("Memory", ctx, "writeMemoryData", mem(1), "m1", WHEN);
      await w.kit.call("Memory", ctx, "writeMemoryData", mem(2), "m2", WHEN);
      await w.kit.call("Memory", ctx, "removeMemoryData", "m2");
      assert.equal(await w.kit.call("Memory", ctx, "readMemoryData", "m2"), null);
      assert.equal(await w.kit.call("Memory", ctx, "hasMemoryData", "m2"), true, "a removed entry still exists");
      assert.equal(await w.kit.call("Memory", ctx, "hasMemoryData", "m1"), true);
      assert.equal(await w.kit.call("Memory", ctx, "hasMemoryData", "never"), false);
      await w.kit.call("Memory", ctx, "removeMemoryData", "never");
      assert.equal(await w.kit.call("Memory", ctx, "hasMemoryData", "never"), false, "removing a never-written id leaves nothing");
      assert.deepEqual(await w.kit.list("Memory", ctx, "listMemoryData"), [{ memoryId: "m1", data: mem(1) }]);
      const r = processWith(mode);
      assert.equal(await r.kit.call("Memory", ctx, "hasMemoryData", "m2"), true);
      assert.equal(await r.kit.call("Memory", ctx, "readMemoryData", "m2"), null);
      assert.deepEqual(await r.kit.list("Memory", ctx, "listMemoryData"), [{ memoryId: "m1", data: mem(1) }]);
      const doc = await mongo.db(env.name).collection("memory-items").findOne({ signalId: `${m}-sd-sig`, bucketName: "bucket", memoryId: "m2" });
      assert.equal(doc!.removed, true);
    }));

    test("contexts are isolated from each other", g(async () => {
      const w = processWith(mode);
      const sig = (s: string) => [`${m}-ISO-${s}`, "strat", "binance"];
      await w.kit.call("Signal", sig("A"), "writeSignalData", { id: "A" });
      await w.kit.call("Signal", [`${m}-ISO-A`, "strat2", "binance"], "writeSignalData", { id: "A2" });
      await w.kit.call("Signal", [`${m}-ISO-A`, "strat", "bybit"], "writeSignalData", { id: "A3" });
      await w.kit.call("Recent", [`${m}-ISO`, "s", "e", "f1", false], "writeRecentData", { id: "f1-live" }, WHEN);
      await w.kit.call("Recent", [`${m}-ISO`, "s", "e", "f1", true], "writeRecentData", { id: "f1-bt" }, WHEN);
      await w.kit.call("Recent", [`${m}-ISO`, "s", "e", "f2", false], "writeRecentData", { id: "f2-live" }, WHEN);
      await w.kit.call("Session", ["s", "e", "f", `${m}-ISO`, false], "writeSessionData", { id: "live" }, WHEN);
      await w.kit.call("Session", ["s", "e", "f", `${m}-ISO`, true], "writeSessionData", { id: "bt" }, WHEN);
      await w.kit.call("Memory", [`${m}-ISO`, "b1"], "writeMemoryData", { v: 1 }, "same", WHEN);
      await w.kit.call("Memory", [`${m}-ISO`, "b2"], "writeMemoryData", { v: 2 }, "same", WHEN);
      await w.kit.call("Risk", [`${m}-ISO-r1`, "binance"], "writePositionData", [["a", { v: 1 }]], WHEN);
      await w.kit.call("Partial", sig("A"), "writePartialData", { p: 1 }, "sig-1", WHEN);
      await w.kit.call("Partial", sig("A"), "writePartialData", { p: 2 }, "sig-2", WHEN);
      const r = processWith(mode);
      for (const k of [w.kit, r.kit]) {
        assert.deepEqual(await k.call("Signal", sig("A"), "readSignalData"), { id: "A" });
        assert.deepEqual(await k.call("Signal", [`${m}-ISO-A`, "strat2", "binance"], "readSignalData"), { id: "A2" });
        assert.deepEqual(await k.call("Signal", [`${m}-ISO-A`, "strat", "bybit"], "readSignalData"), { id: "A3" });
        assert.equal(await k.call("Signal", sig("B"), "readSignalData"), null);
        assert.equal(await k.call("Schedule", sig("A"), "readScheduleData"), null, "signal and schedule are separate");
        assert.deepEqual(await k.call("Recent", [`${m}-ISO`, "s", "e", "f1", false], "readRecentData"), { id: "f1-live" });
        assert.deepEqual(await k.call("Recent", [`${m}-ISO`, "s", "e", "f1", true], "readRecentData"), { id: "f1-bt" });
        assert.deepEqual(await k.call("Recent", [`${m}-ISO`, "s", "e", "f2", false], "readRecentData"), { id: "f2-live" });
        assert.deepEqual(await k.call("Session", ["s", "e", "f", `${m}-ISO`, false], "readSessionData"), { id: "live" });
        assert.deepEqual(await k.call("Session", ["s", "e", "f", `${m}-ISO`, true], "readSessionData"), { id: "bt" });
        assert.deepEqual(await k.call("Memory", [`${m}-ISO`, "b1"], "readMemoryData", "same"), { v: 1 });
        assert.deepEqual(await k.call("Memory", [`${m}-ISO`, "b2"], "readMemoryData", "same"), { v: 2 });
        assert.deepEqual(await k.call("Risk", [`${m}-ISO-r2`, "binance"], "readPositionData", WHEN), []);
        assert.deepEqual(await k.call("Partial", sig("A"), "readPartialData", "sig-1", WHEN), { p: 1 });
        assert.deepEqual(await k.call("Partial", sig("A"), "readPartialData", "sig-2", WHEN), { p: 2 });
        assert.deepEqual(await k.call("Breakeven", sig("A"), "readBreakevenData", "sig-1", WHEN), {});
      }
    }));
  });
}

describe("documents interchange with the official @backtest-kit/mongo shape", () => {
  test("documents written by the package have the official field names and types", g(async () => {
    const { kit, client } = processWith("ack");
    const row = signalRow("ix-1");
    await kit.call("Signal", ["IX", "strat", "binance"], "writeSignalData", row);
    await kit.call("Risk", ["IX-risk", "binance"], "writePositionData", [["k", { a: 1 }]], WHEN);
    await kit.call("Partial", ["IX", "strat", "binance"], "writePartialData", { a: 1 }, "sig", WHEN);
    const t0 = Math.floor(Date.now() / MIN) * MIN - 10 * MIN;
    await kit.call("Candle", ["IX", "15m", "binance"], "writeCandlesData", [{ timestamp: t0 - 15 * MIN, open: 1, high: 2, low: 0, close: 1.5, volume: 9 }]);
    await kit.call("Storage", [true], "writeStorageData", [{ id: "ix-st", a: 1 }]);
    await kit.call("Notification", [false], "writeNotificationData", [{ id: "ix-no", a: 1 }]);
    await kit.call("Log", [], "writeLogData", [{ id: "ix-log", a: 1 }]);
    await kit.call("Measure", ["ix-b"], "writeMeasureData", { v: 1 }, "ix-k", WHEN);
    await kit.call("Interval", ["ix-b"], "writeIntervalData", { v: 1 }, "ix-k", WHEN);
    await kit.call("Memory", ["ix-sig", "ix-b"], "writeMemoryData", { v: 1 }, "ix-m", WHEN);
    await kit.call("Recent", ["IX", "strat", "binance", "fr", true], "writeRecentData", { v: 1 }, WHEN);
    await kit.call("State", ["ix-sig", "ix-b"], "writeStateData", { v: 1 }, WHEN);
    await kit.call("Session", ["strat", "binance", "fr", "IX", false], "writeSessionData", { v: 1 }, WHEN);
    await kit.call("Dictionary", ["ix-sig", "ix-d"], "writeDictionaryData", { v: 1 }, WHEN);
    await client.flush();

    const db = mongo.db(env.name);
    const one = async (coll: string, key: Record<string, unknown>) => {
      const docs = await db.collection(coll).find(key).toArray();
      assert.equal(docs.length, 1, `${coll} ${JSON.stringify(key)}: one document`);
      const d = docs[0];
      assert.ok(d.createDate instanceof Date, `${coll}: createDate is a date`);
      assert.ok(d.updatedDate instanceof Date, `${coll}: updatedDate is a date`);
      return d;
    };
    const sigDoc = await one("signal-items", { symbol: "IX", strategyName: "strat", exchangeName: "binance" });
    assert.deepEqual(sigDoc.payload, row);
    const risk = await one("risk-items", { riskName: "IX-risk", exchangeName: "binance" });
    assert.deepEqual(risk.positions, [["k", { a: 1 }]]);
    assert.equal(risk.when, WHEN.getTime());
    const partial = await one("partial-items", { symbol: "IX", strategyName: "strat", exchangeName: "binance", signalId: "sig" });
    assert.deepEqual([partial.payload, partial.when], [{ a: 1 }, WHEN.getTime()]);
    const candle = await one("candle-items", { exchangeName: "binance", symbol: "IX", interval: "15m", timestamp: t0 - 15 * MIN });
    assert.deepEqual([candle.open, candle.high, candle.low, candle.close, candle.volume], [1, 2, 0, 1.5, 9]);
    assert.equal(typeof candle.timestamp, "number");
    const st = await one("storage-items", { backtest: true, signalId: "ix-st" });
    assert.deepEqual(st.payload, { id: "ix-st", a: 1 });
    const no = await one("notification-items", { backtest: false, notificationId: "ix-no" });
    assert.deepEqual(no.payload, { id: "ix-no", a: 1 });
    assert.deepEqual((await one("log-items", { entryId: "ix-log" })).payload, { id: "ix-log", a: 1 });
    const me = await one("measure-items", { bucket: "ix-b", entryKey: "ix-k" });
    assert.deepEqual([me.payload, me.removed], [{ v: 1 }, false]);
    const iv = await one("interval-items", { bucket: "ix-b", entryKey: "ix-k" });
    assert.deepEqual([iv.payload, iv.removed, iv.when], [{ v: 1 }, false, WHEN.getTime()]);
    const mm = await one("memory-items", { signalId: "ix-sig", bucketName: "ix-b", memoryId: "ix-m" });
    assert.deepEqual([mm.payload, mm.removed, mm.when], [{ v: 1 }, false, WHEN.getTime()]);
    const rc = await one("recent-items", { symbol: "IX", strategyName: "strat", exchangeName: "binance", frameName: "fr", backtest: true });
    assert.deepEqual([rc.payload, rc.when], [{ v: 1 }, WHEN.getTime()]);
    assert.deepEqual((await one("state-items", { signalId: "ix-sig", bucketName: "ix-b" })).payload, { v: 1 });
    assert.deepEqual((await one("session-items", { strategyName: "strat", exchangeName: "binance", frameName: "fr", symbol: "IX", backtest: false })).payload, { v: 1 });
    assert.deepEqual((await one("dictionary-items", { signalId: "ix-sig", dictionaryName: "ix-d" })).payload, { v: 1 });
  }));

  test("documents the official package wrote (no _writ) are read, then adopted by the first write", g(async () => {
    const db = mongo.db(env.name);
    const created = new Date(Date.UTC(2025, 5, 1));
    const key = { symbol: "LEGACY", strategyName: "strat", exchangeName: "binance" };
    await db.collection("signal-items").insertOne({ ...key, payload: { id: "old", priceOpen: 1 }, createDate: created, updatedDate: created });
    const t = Math.floor(Date.now() / MIN) * MIN - 60 * MIN;
    // mongoose stores numbers as doubles
    await db.collection("candle-items").insertOne({ exchangeName: "binance", symbol: "LEGACY", interval: "1m", timestamp: t, open: 5, high: 6, low: 4, close: 5.5, volume: 1, createDate: created, updatedDate: created });
    await db.collection("storage-items").insertOne({ backtest: false, signalId: "legacy-1", payload: { id: "legacy-1", v: "old" }, createDate: created, updatedDate: created });

    for (const mode of ["submit", "ack"] as const) {
      const { kit } = processWith(mode);
      assert.deepEqual(await kit.call("Signal", ["LEGACY", "strat", "binance"], "readSignalData"), { id: "old", priceOpen: 1 });
      assert.deepEqual(await kit.call("Candle", ["LEGACY", "1m", "binance"], "readCandlesData", 1, t, t + MIN), [
        { timestamp: t, open: 5, high: 6, low: 4, close: 5.5, volume: 1 },
      ]);
      assert.ok((await kit.call("Storage", [false], "readStorageData")).some((r: any) => r.id === "legacy-1" && r.v === "old"));
    }
    const { kit, client } = processWith("ack");
    await kit.call("Signal", ["LEGACY", "strat", "binance"], "writeSignalData", { id: "new", priceOpen: 2 });
    await kit.call("Storage", [false], "writeStorageData", [{ id: "legacy-1", v: "new" }]);
    await client.flush();
    const r = processWith("submit");
    assert.deepEqual(await r.kit.call("Signal", ["LEGACY", "strat", "binance"], "readSignalData"), { id: "new", priceOpen: 2 });
    assert.ok((await r.kit.call("Storage", [false], "readStorageData")).some((x: any) => x.id === "legacy-1" && x.v === "new"));
    const docs = await db.collection("signal-items").find(key).toArray();
    assert.equal(docs.length, 1, "adopted in place, not duplicated");
    assert.deepEqual(docs[0].payload, { id: "new", priceOpen: 2 });
    assert.ok(docs[0]._writ, "now carries writ's version");
    assert.equal(docs[0].createDate.getTime(), created.getTime(), "createDate kept");
    assert.ok(docs[0].updatedDate.getTime() > created.getTime(), "updatedDate moved");
  }));
});

/**
 * The unique indexes of the official package's mongoose schemas
 * (`@backtest-kit/mongo` 20.1.0, build/index.mjs: each `Schema.index(...,
 * { unique: true })`, and `entryId`'s `unique: true` for the log).
 */
const OFFICIAL_UNIQUE: [string, Record<string, 1>][] = [
  ["candle-items", { exchangeName: 1, symbol: 1, interval: 1, timestamp: 1 }],
  ["signal-items", { symbol: 1, strategyName: 1, exchangeName: 1 }],
  ["schedule-items", { symbol: 1, strategyName: 1, exchangeName: 1 }],
  ["strategy-items", { symbol: 1, strategyName: 1, exchangeName: 1 }],
  ["risk-items", { riskName: 1, exchangeName: 1 }],
  ["partial-items", { symbol: 1, strategyName: 1, exchangeName: 1, signalId: 1 }],
  ["breakeven-items", { symbol: 1, strategyName: 1, exchangeName: 1, signalId: 1 }],
  ["storage-items", { backtest: 1, signalId: 1 }],
  ["notification-items", { backtest: 1, notificationId: 1 }],
  ["log-items", { entryId: 1 }],
  ["measure-items", { bucket: 1, entryKey: 1 }],
  ["interval-items", { bucket: 1, entryKey: 1 }],
  ["memory-items", { signalId: 1, bucketName: 1, memoryId: 1 }],
  ["recent-items", { symbol: 1, strategyName: 1, exchangeName: 1, frameName: 1, backtest: 1 }],
  ["state-items", { signalId: 1, bucketName: 1 }],
  ["dictionary-items", { signalId: 1, dictionaryName: 1 }],
  ["session-items", { strategyName: 1, exchangeName: 1, frameName: 1, symbol: 1, backtest: 1 }],
];

describe("indexes shared with the official @backtest-kit/mongo", () => {
  test("mongoose builds the official unique indexes on the daemon's database without a conflict", g(async () => {
    // The daemon (started by before()) made its unique key indexes. The
    // official package starting on this database asks mongoose for its own:
    // the same createIndex calls its autoIndex makes.
    const conn = await mongoose.createConnection(env.mongoUri, { dbName: env.name, autoIndex: false }).asPromise();
    try {
      for (const [name, keys] of OFFICIAL_UNIQUE) {
        const schema = new mongoose.Schema({}, { strict: false });
        schema.index(keys, { unique: true });
        await conn.model(name, schema, name).createIndexes();
      }
    } finally {
      await conn.close();
    }
    const db = mongo.db(env.name);
    for (const [name, keys] of OFFICIAL_UNIQUE) {
      const unique = (await db.collection(name).indexes()).filter((ix) => ix.unique);
      assert.deepEqual(
        unique.map((ix) => [ix.name, ix.key]),
        [[Object.keys(keys).map((k) => `${k}_1`).join("_"), keys]],
        `${name}: one unique index, the official one`,
      );
    }
  }));
});

describe("setup()", () => {
  test("without adapters and without backtest-kit installed it fails, saying how to fix it", () => {
    assert.throws(
      () => setup(env.clientConfig()),
      (e: unknown) => e instanceof WritConfigError && /backtest-kit/.test(e.message) && /setup\(config, \{ PersistSignalAdapter/.test(e.message),
    );
  });

  test("a batch write some of whose rows are refused says how many were accepted", g(async () => {
    // A namespace no daemon serves, one unapplied entry per partition at most.
    const kit = new FakeKit();
    const client = setup(env.clientConfig({ namespace: `${env.name}_partial`, partitions: 2, maxBacklog: 1 }), kit.adapters);
    clients.push(client);
    const spec = PRESET_COLLECTIONS.find((c) => c.name === COLLECTION.storage)!;
    const partition = (id: string) => partitionOf(spec.name, canonicalKey(spec, { backtest: true, signalId: id }), 2);
    const ids = Array.from({ length: 20 }, (_, i) => `pw-${i}`);
    const first = ids.find((id) => partition(id) === 0)!;
    const full = ids.find((id) => id !== first && partition(id) === 0)!;
    const free = ids.find((id) => partition(id) === 1)!;
    await kit.call("Storage", [true], "writeStorageData", [{ id: first, v: 1 }]);
    // Partition 0 is at its bound now; partition 1 takes one more.
    await assert.rejects(
      kit.call("Storage", [true], "writeStorageData", [{ id: full, v: 1 }, { id: free, v: 1 }]),
      (e: unknown) =>
        e instanceof BackpressureError &&
        /^1 of 2 rows of this storage-items write were accepted/.test(e.message) &&
        /NOT accepted/.test(e.message) &&
        e.accepted === "unknown",
    );
  }));

  test("an ack-mode batch write several of whose rows the daemon refuses says how many", g(async () => {
    // A second unique index (sparse: rows without `u` are not in it) and a
    // removed holder of u = "taken-u": a row with that u collides for good,
    // and the daemon dead-letters it.
    const db = mongo.db(env.name);
    await db.collection(COLLECTION.storage).insertOne({ backtest: true, signalId: "u-holder", payload: { u: "taken-u" }, removed: true });
    await db.command({ createIndexes: COLLECTION.storage, indexes: [{ key: { "payload.u": 1 }, name: "u_unique_batch", unique: true, sparse: true }] });
    try {
      const kit = new FakeKit();
      const errors: WritError[] = [];
      const client = setup(env.clientConfig({ mode: "ack", writeTimeoutMs: 60000, onError: (e: WritError) => errors.push(e) }), kit.adapters);
      clients.push(client);
      let thrown: unknown;
      await assert.rejects(
        kit.call("Storage", [true], "writeStorageData", [{ id: "u-a", u: "taken-u" }, { id: "u-b", u: "taken-u" }, { id: "u-c", v: 1 }]),
        (e: unknown) => {
          thrown = e;
          return e instanceof RefusedWriteError && /^2 of 3 rows of this storage-items write failed \(2 dead-lettered by the daemon, 0 not acked in time: still queued\); the first refusal: /.test(e.message);
        },
      );
      // The other refusal's reason is not lost: onError has it.
      assert.equal(errors.length, 1, String(errors));
      assert.ok(errors[0] instanceof RefusedWriteError && errors[0] !== thrown, String(errors[0]));
      assert.ok((await kit.call("Storage", [true], "readStorageData")).some((r: any) => r.id === "u-c"), "the row that was not refused is stored");
    } finally {
      await db.collection(COLLECTION.storage).dropIndex("u_unique_batch");
    }
  }));

  test("an ack-mode batch write partly refused at admission: an accepted row the daemon dead-letters later reaches onError", g(async () => {
    // As above: a row with u = "taken-r" collides for good on a second unique index.
    const db = mongo.db(env.name);
    await db.collection(COLLECTION.storage).insertOne({ backtest: true, signalId: "r-holder", payload: { u: "taken-r" }, removed: true });
    await db.command({ createIndexes: COLLECTION.storage, indexes: [{ key: { "payload.u": 1 }, name: "r_unique_batch", unique: true, sparse: true }] });
    const daemon = env.writ!.proc.child;
    try {
      const errors: WritError[] = [];
      const kit = new FakeKit();
      const client = setup(env.clientConfig({ mode: "ack", maxBacklog: 1, onError: (e: WritError) => errors.push(e) }), kit.adapters);
      clients.push(client);
      const filler = new FakeKit();
      clients.push(setup(env.clientConfig({ mode: "submit", maxBacklog: 1 }), filler.adapters));
      const spec = PRESET_COLLECTIONS.find((c) => c.name === COLLECTION.storage)!;
      const partition = (id: string) => partitionOf(spec.name, canonicalKey(spec, { backtest: true, signalId: id }), env.partitions);
      const ids = Array.from({ length: 100 }, (_, i) => `rr-${i}`);
      const first = ids.find((id) => partition(id) === 0)!;
      const full = ids.find((id) => id !== first && partition(id) === 0)!;
      const doomed = ids.find((id) => partition(id) !== 0)!;
      // Each client's first call waits until the daemon has applied what came before it: done now.
      for (const k of [kit, filler]) await k.call("Storage", [true], "readStorageData");
      await pause(daemon);
      try {
        // Partition 0 at its bound (one unapplied entry, nothing applies it now).
        await filler.call("Storage", [true], "writeStorageData", [{ id: first, v: 1 }]);
        await assert.rejects(
          kit.call("Storage", [true], "writeStorageData", [{ id: full, v: 1 }, { id: doomed, u: "taken-r" }]),
          (e: unknown) => e instanceof BackpressureError && /^1 of 2 rows of this storage-items write were accepted/.test(e.message),
        );
      } finally {
        resume(daemon);
      }
      // Nobody waits for the accepted row's ack: its refusal goes to onError, once.
      await eventually("the accepted row's refusal to reach onError", 30000, async () => errors.length > 0);
      await new Promise((r) => setTimeout(r, 500)); // a second report would come by now
      assert.equal(errors.length, 1, String(errors));
      assert.ok(errors[0] instanceof RefusedWriteError, String(errors[0]));
    } finally {
      await db.collection(COLLECTION.storage).dropIndex("r_unique_batch");
    }
  }));

  test("after a partly refused batch write, a row reverted to the bytes it had before is written again", g(async () => {
    // Row x: written (v 1), then changed (v 2) in a call one of whose other
    // rows is refused at admission (the call throws, x is accepted and
    // applied), then reverted to v 1. The adapter must not take v 1 for what
    // is stored: it is not, v 2 is.
    const daemon = env.writ!.proc.child;
    const kit = new FakeKit();
    const client = setup(env.clientConfig({ mode: "ack", maxBacklog: 1 }), kit.adapters);
    clients.push(client);
    const filler = new FakeKit();
    clients.push(setup(env.clientConfig({ mode: "submit", maxBacklog: 1 }), filler.adapters));
    const spec = PRESET_COLLECTIONS.find((c) => c.name === COLLECTION.storage)!;
    const partition = (id: string) => partitionOf(spec.name, canonicalKey(spec, { backtest: true, signalId: id }), env.partitions);
    const ids = Array.from({ length: 100 }, (_, i) => `mv-${i}`);
    const first = ids.find((id) => partition(id) === 0)!;
    const refused = ids.find((id) => id !== first && partition(id) === 0)!;
    const x = ids.find((id) => partition(id) !== 0)!;
    const stored = async () => (await kit.call("Storage", [true], "readStorageData")).find((r: any) => r.id === x);
    await kit.call("Storage", [true], "writeStorageData", [{ id: x, v: 1 }]);
    await filler.call("Storage", [true], "readStorageData");
    await pause(daemon);
    try {
      await filler.call("Storage", [true], "writeStorageData", [{ id: first, v: 1 }]);
      await assert.rejects(
        kit.call("Storage", [true], "writeStorageData", [{ id: x, v: 2 }, { id: refused, v: 1 }]),
        (e: unknown) => e instanceof BackpressureError && /^1 of 2 rows/.test(e.message),
      );
    } finally {
      resume(daemon);
    }
    await eventually("the accepted row's write to be applied", 30000, async () => (await stored())?.v === 2);
    await kit.call("Storage", [true], "writeStorageData", [{ id: x, v: 1 }]);
    assert.equal((await stored())?.v, 1, "the reverted row is stored");
  }));

  test("a row rewritten to its old bytes while another write of it is in flight is written after that write", g(async () => {
    // x = 1 is stored; a call writing x = 2 is in flight when a second call
    // reverts it to 1. The second call must not be skipped as identical to
    // what was written before: its write has to land after the first's.
    const kit = new FakeKit();
    clients.push(setup(env.clientConfig({ mode: "ack" }), kit.adapters));
    const x = "overlap-x";
    const stored = async () => (await kit.call("Storage", [false], "readStorageData")).find((r: any) => r.id === x);
    await kit.call("Storage", [false], "writeStorageData", [{ id: x, v: 1 }]);
    const changing = kit.call("Storage", [false], "writeStorageData", [{ id: x, v: 2 }]);
    const reverting = kit.call("Storage", [false], "writeStorageData", [{ id: x, v: 1 }]);
    await Promise.all([changing, reverting]);
    assert.equal((await stored())?.v, 1, "the later call's value is stored");
  }));

  test("a row listed twice in one call is stored with its last value, and a later write of the first is not skipped", g(async () => {
    const kit = new FakeKit();
    clients.push(setup(env.clientConfig({ mode: "ack" }), kit.adapters));
    const x = "twice-x";
    const stored = async () => (await kit.call("Notification", [false], "readNotificationData")).find((r: any) => r.id === x);
    await kit.call("Notification", [false], "writeNotificationData", [{ id: x, v: 1 }, { id: x, v: 2 }]);
    assert.equal((await stored())?.v, 2, "the last row of the id is stored");
    await kit.call("Notification", [false], "writeNotificationData", [{ id: x, v: 1 }]);
    assert.equal((await stored())?.v, 1, "the next call's value is stored");
  }));

  /**
   * Runs `fn` with a second unique index on the candles' `open` (only for
   * that value) and a stored holder of it: a candle with that open collides for
   * good, and the daemon dead-letters it. `release()` drops the index (a
   * write of that candle then applies).
   */
  async function withCandleCollision(open: number, fn: (release: () => Promise<void>) => Promise<void>) {
    const coll = mongo.db(env.name).collection(COLLECTION.candle);
    const holder = { exchangeName: "holder", symbol: `H-${open}`, interval: "1m", timestamp: 0 };
    await coll.insertOne({ ...holder, open, high: 0, low: 0, close: 0, volume: 0 });
    await mongo.db(env.name).command({ createIndexes: COLLECTION.candle, indexes: [{ key: { open: 1 }, name: `open_${open}`, unique: true, partialFilterExpression: { open: { $eq: open } } }] });
    let dropped = false;
    const release = async () => {
      if (!dropped) await coll.dropIndex(`open_${open}`);
      dropped = true;
    };
    try {
      await fn(release);
    } finally {
      await release();
      await coll.deleteOne(holder);
    }
  }

  const candleAt = (timestamp: number, open: number) => ({ timestamp, open, high: open, low: open, close: open, volume: 1 });

  test("a candle the daemon dead-letters is written again by the next call (submit mode)", g(async () => {
    await withCandleCollision(777.125, async (release) => {
      const errors: WritError[] = [];
      const kit = new FakeKit();
      clients.push(setup(env.clientConfig({ mode: "submit", onError: (e: WritError) => errors.push(e) }), kit.adapters));
      const ctx = ["DL-SUBMIT", "1m", "binance"];
      const c = candleAt(Date.UTC(2026, 0, 3, 0, 0), 777.125);
      await kit.call("Candle", ctx, "writeCandlesData", [c]);
      await eventually("the candle's refusal to reach onError", 30000, async () => errors.some((e) => e instanceof RefusedWriteError));
      await release();
      await kit.call("Candle", ctx, "writeCandlesData", [c]);
      await eventually("the candle to be stored", 15000, async () => (await kit.call("Candle", ctx, "readCandlesData", 1, c.timestamp)) !== null);
    });
  }));

  test("a candle read back from this process's pending write, then dead-lettered, is written again by the next call (ack mode)", g(async () => {
    await withCandleCollision(778.25, async (release) => {
      const errors: WritError[] = [];
      const kit = new FakeKit();
      clients.push(setup(env.clientConfig({ mode: "ack", writeTimeoutMs: 300, onError: (e: WritError) => errors.push(e) }), kit.adapters));
      const ctx = ["DL-ACK", "1m", "binance"];
      const c = candleAt(Date.UTC(2026, 0, 3, 0, 0), 778.25);
      await kit.call("Candle", ctx, "readCandlesData", 1, c.timestamp); // the first call waits for the daemon: done now
      const daemon = env.writ!.proc.child;
      await pause(daemon);
      try {
        await assert.rejects(kit.call("Candle", ctx, "writeCandlesData", [c]), (e: unknown) => e instanceof WritTimeoutError);
        // Read from the pending write (the overlay): not stored yet.
        assert.equal((await kit.call("Candle", ctx, "readCandlesData", 1, c.timestamp))?.[0]?.open, 778.25);
      } finally {
        resume(daemon);
      }
      await eventually("the candle's refusal to reach onError", 30000, async () => errors.some((e) => e instanceof RefusedWriteError));
      await release();
      await kit.call("Candle", ctx, "writeCandlesData", [c]);
      assert.notEqual(await kit.call("Candle", ctx, "readCandlesData", 1, c.timestamp), null, "the candle is stored");
    });
  }));

  test("a log entry the daemon dead-letters is written again by the next call (submit mode)", g(async () => {
    // A second unique index on the entries' `payload.tag`, for one value
    // only, and a stored holder of it: an entry with that tag collides
    // for good until the index is dropped.
    const db = mongo.db(env.name);
    const coll = db.collection(COLLECTION.log);
    await coll.insertOne({ entryId: "log-holder", payload: { id: "log-holder", tag: "taken-log" } });
    await db.command({ createIndexes: COLLECTION.log, indexes: [{ key: { "payload.tag": 1 }, name: "tag_log", unique: true, partialFilterExpression: { "payload.tag": { $eq: "taken-log" } } }] });
    let dropped = false;
    try {
      const errors: WritError[] = [];
      const kit = new FakeKit();
      clients.push(setup(env.clientConfig({ mode: "submit", onError: (e: WritError) => errors.push(e) }), kit.adapters));
      const entry = { id: "log-dl-1", tag: "taken-log" };
      await kit.call("Log", [], "writeLogData", [entry]);
      await eventually("the entry's refusal to reach onError", 30000, async () => errors.some((e) => e instanceof RefusedWriteError));
      await coll.dropIndex("tag_log");
      dropped = true;
      await kit.call("Log", [], "writeLogData", [entry]);
      await eventually("the entry to be stored", 15000, async () => (await coll.findOne({ entryId: "log-dl-1" })) !== null);
    } finally {
      if (!dropped) await coll.dropIndex("tag_log");
      await coll.deleteOne({ entryId: "log-holder" });
    }
  }));

  test("registers all 17 adapters; constructors take the context positionally", () => {
    const kit = new FakeKit();
    clients.push(setup(env.clientConfig(), kit.adapters));
    assert.equal(Object.keys(kit.ctors).length, 17);
    const risk = new kit.ctors.Risk!("r", "e");
    assert.deepEqual([risk.riskName, risk.exchangeName], ["r", "e"]);
    const storage = new kit.ctors.Storage!(true);
    assert.equal(storage.backtest, true);
    const session = new kit.ctors.Session!("s", "e", "f", "sym", false);
    assert.deepEqual([session.strategyName, session.exchangeName, session.frameName, session.symbol, session.backtest], ["s", "e", "f", "sym", false]);
    assert.equal(new kit.ctors.Log!().readLogData.length, 0);
  });
});

describe("a write of several rows says what became of them all (a stub client)", () => {
  /**
   * Storage adapter rows against a client that fails each row as `fails`
   * says: at admission (`submit`) or in its ack wait (`ack`); other rows
   * are accepted and applied. Returns what `writeStorageData` of every row
   * of `ids` throws.
   */
  async function thrown(mode: WriteModeName, ids: string[], fails: Record<string, { at: "submit" | "ack"; error: () => WritError }>) {
    const applied = (entryId: string): AckResult => ({ outcome: "applied", version: entryId, entryId });
    let n = 0;
    const client = {
      config: { mode },
      async submit(collection: string, key: Record<string, unknown>): Promise<Ticket & { id: string }> {
        const id = String(key.signalId);
        if (fails[id]?.at === "submit") throw fails[id].error();
        const entryId = `1-${n++}`;
        return { collection, entryId, acked: Promise.resolve(applied(entryId)), id };
      },
      async waitAck(t: Ticket & { id: string }): Promise<AckResult> {
        if (fails[t.id]?.at === "ack") throw fails[t.id].error();
        return t.acked;
      },
      reportIfRefused() {},
      reportError() {},
    };
    const { Storage } = createAdapters(client as unknown as WritClient);
    const e = await new Storage(true).writeStorageData(ids.map((id) => ({ id }))).then(
      () => assert.fail("expected the write to throw"),
      (err: unknown) => err,
    );
    assert.ok(e instanceof Error && "accepted" in e, String(e));
    return e as WritError;
  }
  const refused = (id: string) => () => new RefusedWriteError(COLLECTION.storage, "write rejected (duplicate_key): taken", `1-${id}`);
  const lost = (id: string) => () => new LostWriteError(COLLECTION.storage, `1-${id}`, "gone from the stream");
  const timeout = (accepted: Accepted) => () => new WritTimeoutError("no ack in time", { accepted });
  const expect = async (
    accepted: Accepted,
    mode: WriteModeName,
    ids: string[],
    fails: Record<string, { at: "submit" | "ack"; error: () => WritError }>,
  ) => {
    const e = await thrown(mode, ids, fails);
    assert.equal(e.accepted, accepted, `${JSON.stringify(Object.fromEntries(Object.entries(fails).map(([k, v]) => [k, v.error().accepted])))}: ${e.message}`);
  };

  test("ack mode: a dead-lettered row next to one whose ack timed out with its entry gone is \"unknown\"", async () => {
    await expect("unknown", "ack", ["a", "b", "c"], { a: { at: "ack", error: refused("a") }, b: { at: "ack", error: timeout("unknown") } });
    // Whichever comes first.
    await expect("unknown", "ack", ["a", "b"], { a: { at: "ack", error: timeout("unknown") }, b: { at: "ack", error: refused("b") } });
  });

  test("ack mode: a lost row next to applied ones is \"unknown\"; lost rows alone are \"no\"", async () => {
    await expect("unknown", "ack", ["a", "b"], { a: { at: "ack", error: lost("a") } });
    await expect("unknown", "ack", ["a", "b"], { a: { at: "ack", error: lost("a") }, b: { at: "ack", error: refused("b") } });
    await expect("no", "ack", ["a", "b"], { a: { at: "ack", error: lost("a") }, b: { at: "ack", error: lost("b") } });
  });

  test("ack mode: rows that writ holds all (applied, dead-lettered, still queued) are \"yes\"", async () => {
    await expect("yes", "ack", ["a", "b", "c"], { a: { at: "ack", error: refused("a") }, b: { at: "ack", error: timeout("yes") } });
  });

  test("submit mode: every row refused is \"no\"; one refused next to one unanswered is \"unknown\"", async () => {
    const full = () => new BackpressureError(0, 1, 1);
    const unanswered = () => new WritConnectionError("did not answer", { accepted: "unknown" });
    await expect("no", "submit", ["a", "b"], { a: { at: "submit", error: full }, b: { at: "submit", error: full } });
    await expect("unknown", "submit", ["a", "b"], { a: { at: "submit", error: full }, b: { at: "submit", error: unanswered } });
    await expect("unknown", "submit", ["a", "b"], { a: { at: "submit", error: full } });
  });
});
