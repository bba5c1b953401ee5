// Live-trading workload: 50 symbols x 4 strategies; each tick of a context
// does writeSignalData, writePartialData, writeRecentData and readSignalData.
// Run through (1) writ in submit mode, (2) writ in ack mode, (3) the official
// adapter: the published @backtest-kit/mongo 20.1.0 (vendored in
// test/vendor, loaded by test/official-package.ts), called as backtest-kit
// calls it. Per write it does a mongoose findOneAndUpdate upsert and caches
// the document's id in Redis; a read looks the id up in Redis, then finds the
// document in MongoDB. BENCH_OFFICIAL=pattern runs instead the hand-written
// pattern of earlier sessions' figures (the upsert plus an ioredis SET of the
// document; reads with GET only, so faster to read than the package).
// One process, the same servers, one run each. Prints write-call p50/p99,
// ticks/s and writ/official ratios; for submit mode, how long the daemon's
// backlog takes to drain to 0 after the last tick.
//
//   npm run bench                 (starts its own servers with the test harness)
//   BENCH_ROUNDS=10 npm run bench (rounds of ticks; every context ticks once per round)
//
// Two load shapes, both in one run:
// - closed loop (saturated): every context ticks as fast as its calls return,
//   so write-call latency is mostly queueing (Little's law: 200 contexts /
//   throughput) and the p50 ratio equals the throughput ratio;
// - paced (open loop): every context ticks on its own timer, at a total rate of
//   BENCH_PACE (default 0.5) x the official pattern's closed-loop ticks/s from
//   the same run, so that both sides keep up and a write call's latency is
//   what a live process sees at that tick rate. BENCH_PACED_ROUNDS (default 3)
//   ticks per context.
//
// Not part of npm test: it measures, it asserts nothing.
import { performance } from "node:perf_hooks";
import { Redis } from "ioredis";
import mongoose from "mongoose";

import { setup } from "../src/setup.js";
import type { WritClient } from "../src/client.js";
import { ADMIT_LUA } from "../src/lua.js";
import { FakeKit } from "../test/fakekit.js";
import { startOfficial, stopOfficial } from "../test/official-package.js";
import { officialKit } from "../test/official-stubs.js";
import { TestEnv } from "../test/harness.js";

const SYMBOLS = Number(process.env.BENCH_SYMBOLS ?? 50);
const STRATEGIES = Number(process.env.BENCH_STRATEGIES ?? 4);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
/** BENCH_ONLY=submit or ack: that closed-loop run alone (for profiling). */
const ONLY_SUBMIT = process.env.BENCH_ONLY === "submit";
const ONLY_ACK = process.env.BENCH_ONLY === "ack";
/**
 * The official pattern's write concern. Default "majority" (journaled): what
 * MongoDB >= 5.0 applies to the official adapter on any replica set, and the
 * same durability as writ's default (`mongodb.write_concern = "majority"`,
 * `journal = true`). BENCH_OFFICIAL_WC=driver: the driver's default on this
 * standalone test server (w:1, not journaled), which is weaker than writ's.
 */
const OFFICIAL_WC = process.env.BENCH_OFFICIAL_WC ?? "majority";
/** BENCH_OFFICIAL=pattern: the hand-written official pattern instead of the package. */
const OFFICIAL_PATTERN = process.env.BENCH_OFFICIAL === "pattern";

/** BENCH_METRICS=<port>: the daemon serves /metrics there; a summary is printed after each writ run. */
const METRICS_PORT = process.env.BENCH_METRICS;

/** Bulk sizes and single-path applies so far, from the daemon's /metrics. */
async function daemonSummary(): Promise<string> {
  if (!METRICS_PORT) return "";
  const text = await (await fetch(`http://127.0.0.1:${METRICS_PORT}/metrics`)).text();
  const sum = (re: RegExp) =>
    text
      .split("\n")
      .filter((l) => re.test(l))
      .reduce((a, l) => a + Number(l.split(" ").pop()), 0);
  const bulks = sum(/^writ_bulk_writes_count/);
  const inBulks = sum(/^writ_bulk_writes_sum/);
  const applies = sum(/^writ_apply_seconds_count/);
  const outcomes = ["applied", "coalesced", "stale"].map((o) => `${o} ${sum(new RegExp(`^writ_writes_total\\{.*outcome="${o}"`))}`).join(", ");
  return `  daemon so far: ${bulks} bulks carrying ${inBulks} writes, ${applies} applies in all; ${outcomes}; limit ${sum(/^writ_mongodb_concurrency_limit /)}`;
}
const PACE = Number(process.env.BENCH_PACE ?? 0.5);
const PACED_ROUNDS = Number(process.env.BENCH_PACED_ROUNDS ?? 3);
/** BENCH_STATS=1: print Redis's per-command statistics after the runs (for profiling). */
const STATS = process.env.BENCH_STATS === "1";

interface Result {
  name: string;
  writeMs: number[];
  ticks: number;
  seconds: number;
  drainSeconds?: number;
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

function contexts(prefix: string): [string, string, string][] {
  const out: [string, string, string][] = [];
  for (let s = 0; s < SYMBOLS; s++) for (let t = 0; t < STRATEGIES; t++) out.push([`${prefix}SYM${s}USDT`, `strategy-${t}`, "binance"]);
  return out;
}

function row(ctx: string[], round: number) {
  return {
    id: `${ctx[0]}-${ctx[1]}-sig`,
    position: round % 2 ? "long" : "short",
    priceOpen: 100 + round,
    priceTakeProfit: 110 + round,
    priceStopLoss: 90 + round,
    minuteEstimatedTime: 240,
    symbol: ctx[0],
    strategyName: ctx[1],
    exchangeName: ctx[2],
    pendingAt: 1767322800000 + round * 60000,
    note: "bench",
  };
}

type Tick = (ctx: [string, string, string], round: number, time: (f: () => Promise<unknown>) => Promise<void>) => Promise<void>;

/**
 * Closed loop (`rate` undefined): every context ticks once per round,
 * concurrently, rounds back to back. Paced (`rate` ticks/s in total): every
 * context ticks every `contexts / rate` seconds from a staggered start, for
 * PACED_ROUNDS ticks. The 4 calls of a tick are sequential either way.
 */
async function runTicks(name: string, ctxs: [string, string, string][], tick: Tick, rate?: number): Promise<Result> {
  const writeMs: number[] = [];
  const time = async (f: () => Promise<unknown>) => {
    const t0 = performance.now();
    await f();
    writeMs.push(performance.now() - t0);
  };
  const t0 = performance.now();
  if (rate === undefined) {
    for (let round = 0; round < ROUNDS; round++) {
      await Promise.all(ctxs.map((ctx) => tick(ctx, round, time)));
    }
    return { name, writeMs, ticks: ctxs.length * ROUNDS, seconds: (performance.now() - t0) / 1000 };
  }
  const interval = (ctxs.length / rate) * 1000;
  await Promise.all(
    ctxs.map(async (ctx, i) => {
      const start = t0 + (i / ctxs.length) * interval;
      for (let round = 0; round < PACED_ROUNDS; round++) {
        const wait = start + round * interval - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        await tick(ctx, round, time);
      }
    }),
  );
  return { name, writeMs, ticks: ctxs.length * PACED_ROUNDS, seconds: (performance.now() - t0) / 1000 };
}

/**
 * The ticks through an adapter registry (writ's or the official package's),
 * called as backtest-kit calls it. Contexts initialise (waitForInit(true):
 * connect, and for writ sync) before timing starts.
 */
async function kitTicks(name: string, kit: FakeKit, prefix: string, rate?: number): Promise<Result> {
  const ctxs = contexts(prefix);
  await Promise.all(ctxs.map((c) => kit.call("Signal", c, "readSignalData")));
  return runTicks(`${name}${rate === undefined ? "" : " (paced)"}`, ctxs, async (ctx, round, time) => {
    const when = new Date(1767322800000 + round * 60000);
    const r = row(ctx, round);
    await time(() => kit.call("Signal", ctx, "writeSignalData", r));
    await time(() => kit.call("Partial", ctx, "writePartialData", { [r.id]: { profitLevels: [10], lossLevels: [] } }, r.id, when));
    await time(() => kit.call("Recent", [...ctx, "", false], "writeRecentData", r, when));
    const back = await kit.call("Signal", ctx, "readSignalData");
    if (back?.priceOpen !== r.priceOpen) throw new Error(`${name}: read ${JSON.stringify(back)} after writing round ${round}`);
  }, rate);
}

async function writ(env: TestEnv, mode: "submit" | "ack", rate?: number): Promise<{ result: Result; client: WritClient }> {
  const kit = new FakeKit();
  const client = setup(env.clientConfig({ mode }), kit.adapters);
  const result = await kitTicks(`writ ${mode}`, kit, `${rate === undefined ? "" : "paced-"}${mode}-`, rate);
  const summary = await daemonSummary();
  if (summary) console.log(`${mode}${rate === undefined ? "" : " (paced)"}:\n${summary}`);
  return { result, client };
}

/** Unapplied entries over all partitions (the admission script without entry fields; bound 0 = exact). */
async function backlog(redis: Redis, env: TestEnv): Promise<number> {
  let n = 0;
  for (let p = 0; p < env.partitions; p++) {
    const r = (await redis.eval(ADMIT_LUA, 2, `${env.name}:{p${p}}:in`, `${env.name}:{p${p}}:meta`, env.name, 0)) as unknown[];
    n += Number(r[0]);
  }
  return n;
}

async function drain(redis: Redis, env: TestEnv): Promise<number> {
  const t0 = performance.now();
  while ((await backlog(redis, env)) > 0) await new Promise((r) => setTimeout(r, 20));
  return (performance.now() - t0) / 1000;
}

/** `uri` with the bench's official write concern in its query. */
function officialUri(uri: string): string {
  if (OFFICIAL_WC === "driver") return uri;
  return `${uri}${uri.includes("?") ? "&" : "?"}w=majority&journal=true`;
}

/** The official package, started once per bench (it keeps module-level state). */
let officialPackage: any;

/** The published official adapter, through backtest-kit's calls, as `writ()` runs writ. */
async function official(env: TestEnv, rate?: number): Promise<Result> {
  if (OFFICIAL_PATTERN) return officialPattern(env, rate);
  officialPackage ??= await startOfficial({ dir: env.dir, redisUrl: env.redisUrl, mongoUri: officialUri(env.mongoUri) }, `${env.name}_official`);
  return kitTicks("official", officialKit, rate === undefined ? "official-" : "paced-official-", rate);
}

/** The hand-written official pattern (BENCH_OFFICIAL=pattern). */
async function officialPattern(env: TestEnv, rate?: number): Promise<Result> {
  const conn = await mongoose.createConnection(env.mongoUri, { dbName: `${env.name}_official` }).asPromise();
  const redis = new Redis(env.redisUrl);
  const ts = { timestamps: { createdAt: "createDate", updatedAt: "updatedDate" } } as const;
  const Mixed = mongoose.Schema.Types.Mixed;
  const sse = { symbol: String, strategyName: String, exchangeName: String };
  const Signal = conn.model("signal-items", new mongoose.Schema({ ...sse, payload: Mixed }, { ...ts, collection: "signal-items" }));
  const Partial = conn.model("partial-items", new mongoose.Schema({ ...sse, signalId: String, payload: Mixed, when: Number }, { ...ts, collection: "partial-items" }));
  const Recent = conn.model("recent-items", new mongoose.Schema({ ...sse, frameName: String, backtest: Boolean, payload: Mixed, when: Number }, { ...ts, collection: "recent-items" }));
  await Signal.collection.createIndex({ symbol: 1, strategyName: 1, exchangeName: 1 }, { unique: true });
  await Partial.collection.createIndex({ symbol: 1, strategyName: 1, exchangeName: 1, signalId: 1 }, { unique: true });
  await Recent.collection.createIndex({ symbol: 1, strategyName: 1, exchangeName: 1, frameName: 1, backtest: 1 }, { unique: true });
  const upsert = {
    upsert: true,
    new: true,
    ...(OFFICIAL_WC === "driver" ? {} : { writeConcern: { w: "majority" as const, j: true } }),
  };
  const ctxs = contexts(rate === undefined ? "official-" : "paced-official-");
  const label = `official${rate === undefined ? "" : " (paced)"}`;
  const result = await runTicks(label, ctxs, async (ctx, round, time) => {
    const [symbol, strategyName, exchangeName] = ctx;
    const when = 1767322800000 + round * 60000;
    const r = row(ctx, round);
    const key = `${env.name}:official:signal:${symbol}:${strategyName}:${exchangeName}`;
    await time(async () => {
      await Signal.findOneAndUpdate({ symbol, strategyName, exchangeName }, { $set: { payload: r } }, upsert);
      await redis.set(key, JSON.stringify(r));
    });
    await time(async () => {
      const data = { [r.id]: { profitLevels: [10], lossLevels: [] } };
      await Partial.findOneAndUpdate({ symbol, strategyName, exchangeName, signalId: r.id }, { $set: { payload: data, when } }, upsert);
      await redis.set(`${env.name}:official:partial:${symbol}:${strategyName}:${exchangeName}:${r.id}`, JSON.stringify(data));
    });
    await time(async () => {
      await Recent.findOneAndUpdate({ symbol, strategyName, exchangeName, frameName: "", backtest: false }, { $set: { payload: r, when } }, upsert);
      await redis.set(`${env.name}:official:recent:${symbol}:${strategyName}:${exchangeName}::live`, JSON.stringify(r));
    });
    const back = JSON.parse((await redis.get(key)) ?? "null");
    if (back?.priceOpen !== r.priceOpen) throw new Error(`official: read ${JSON.stringify(back)} after round ${round}`);
  }, rate);
  redis.disconnect();
  await conn.close();
  return result;
}

function line(r: Result): string {
  const p50 = pct(r.writeMs, 50).toFixed(2);
  const p99 = pct(r.writeMs, 99).toFixed(2);
  const tps = (r.ticks / r.seconds).toFixed(0);
  const drain = r.drainSeconds !== undefined ? `${r.drainSeconds.toFixed(2)} s` : "-";
  return `${r.name.padEnd(28)} ${p50.padStart(9)} ${p99.padStart(9)} ${tps.padStart(9)} ${String(r.writeMs.length).padStart(7)} ${drain.padStart(9)}`;
}

function table(title: string, results: Result[]): void {
  console.log(`\n${title}\n${"run".padEnd(28)} ${"p50 ms".padStart(9)} ${"p99 ms".padStart(9)} ${"ticks/s".padStart(9)} ${"writes".padStart(7)} ${"drain".padStart(9)}`);
  for (const r of results) console.log(line(r));
  const off = results.find((r) => r.name.startsWith("official"));
  if (!off) return;
  for (const r of results.filter((x) => x !== off)) {
    console.log(
      `  ${r.name.padEnd(22)} / official: p50 x${(pct(r.writeMs, 50) / pct(off.writeMs, 50)).toFixed(3)}  ` +
        `p99 x${(pct(r.writeMs, 99) / pct(off.writeMs, 99)).toFixed(3)}  ticks/s x${(r.ticks / r.seconds / (off.ticks / off.seconds)).toFixed(2)}`,
    );
  }
}

async function main(): Promise<void> {
  console.log(`bench: ${SYMBOLS} symbols x ${STRATEGIES} strategies, ${ROUNDS} rounds (${SYMBOLS * STRATEGIES * ROUNDS} ticks per run, 3 writes + 1 read each); official: ${OFFICIAL_PATTERN ? "the hand-written pattern" : "@backtest-kit/mongo 20.1.0"}, write concern ${OFFICIAL_WC === "driver" ? "the driver's default (w:1 on this standalone server)" : "majority, journaled (as writ)"}`);
  const env = await TestEnv.start("bench", METRICS_PORT ? { toml: [["daemon", "metrics_listen", `"127.0.0.1:${METRICS_PORT}"`]] } : {});
  const redis = new Redis(env.redisUrl);
  const closed: Result[] = [];
  const paced: Result[] = [];
  let rate = 0;
  try {
    if (ONLY_ACK) {
      const ack = await writ(env, "ack");
      closed.push(ack.result);
      await ack.client.close();
    } else {
      const submit = await writ(env, "submit");
      submit.result.drainSeconds = await drain(redis, env);
      closed.push(submit.result);
      await submit.client.close();
    }
    if (!ONLY_SUBMIT && !ONLY_ACK) {
      const ack = await writ(env, "ack");
      closed.push(ack.result);
      await ack.client.close();
      const off = await official(env);
      closed.push(off);
      if (PACE > 0 && PACED_ROUNDS > 0) {
        rate = (PACE * off.ticks) / off.seconds;
        paced.push(await official(env, rate));
        const ps = await writ(env, "submit", rate);
        ps.result.drainSeconds = await drain(redis, env);
        paced.push(ps.result);
        await ps.client.close();
        const pa = await writ(env, "ack", rate);
        paced.push(pa.result);
        await pa.client.close();
      }
    }
    if (STATS) {
      const info = String(await redis.info("commandstats")).split("\n").filter((l) => l.startsWith("cmdstat_"));
      console.log("\nredis commandstats (calls, usec per call):");
      for (const l of info) console.log("  " + l.replace(/,rejected_calls=.*$/, "").trim());
    }
  } finally {
    redis.disconnect();
    if (officialPackage) await stopOfficial(officialPackage);
    await env.stop();
  }
  table("closed loop (every context ticks as fast as its calls return):", closed);
  if (paced.length) table(`paced (open loop) at ${rate.toFixed(1)} ticks/s in total, ${PACED_ROUNDS} ticks per context:`, paced);
  console.log("\n(drain: time after the last submit-mode tick until the daemon had applied every write; SecantusDB serialises its writes)");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
