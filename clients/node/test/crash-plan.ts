// What the crash-restart child process writes, and what a later process must
// read back: the same plan in both (deterministic from a tag and a base time).
import type { Domain } from "./fakekit.js";

export type Call = [Domain, unknown[], string, ...unknown[]];
export interface Plan {
  writes: Call[];
  reads: { call: Call; expect: unknown }[];
}

const MIN = 60000;

export function crashPlan(tag: string, baseMs: number): Plan {
  const writes: Call[] = [];
  const reads: { call: Call; expect: unknown }[] = [];
  const when = new Date(baseMs);
  for (let s = 0; s < 8; s++) {
    const ctx = [`${tag}-SYM${s}`, "strat", "binance"];
    let last: unknown = null;
    for (let v = 0; v < 3; v++) {
      last = { id: `${tag}-sig-${s}`, version: v, priceOpen: 100 + s + v / 10, minuteEstimatedTime: Infinity };
      writes.push(["Signal", ctx, "writeSignalData", last]);
    }
    if (s % 4 === 3) {
      writes.push(["Signal", ctx, "writeSignalData", null]);
      last = null;
    }
    reads.push({ call: ["Signal", ctx, "readSignalData"], expect: last });
    const partial = { [`${tag}-sig-${s}`]: { profitLevels: [10, 20 + s], lossLevels: [] } };
    writes.push(["Partial", ctx, "writePartialData", partial, `${tag}-sig-${s}`, when]);
    reads.push({ call: ["Partial", ctx, "readPartialData", `${tag}-sig-${s}`, when], expect: partial });
    const recent = { id: `${tag}-sig-${s}`, at: s };
    writes.push(["Recent", [...ctx, "", false], "writeRecentData", recent, when]);
    reads.push({ call: ["Recent", [...ctx, "", false], "readRecentData"], expect: recent });
  }
  const positions = [[`${tag}-pos`, { signalId: "x", holdMs: Infinity }]];
  writes.push(["Risk", [`${tag}-risk`, "binance"], "writePositionData", positions, when]);
  reads.push({ call: ["Risk", [`${tag}-risk`, "binance"], "readPositionData", when], expect: positions });
  const mem = (i: number) => ({ priority: i, data: { i }, removed: false, index: `i${i}` });
  writes.push(["Memory", [`${tag}-sig`, "b"], "writeMemoryData", mem(1), "m1", when]);
  writes.push(["Memory", [`${tag}-sig`, "b"], "writeMemoryData", mem(2), "m2", when]);
  writes.push(["Memory", [`${tag}-sig`, "b"], "removeMemoryData", "m2"]);
  reads.push({ call: ["Memory", [`${tag}-sig`, "b"], "readMemoryData", "m1"], expect: mem(1) });
  reads.push({ call: ["Memory", [`${tag}-sig`, "b"], "readMemoryData", "m2"], expect: null });
  reads.push({ call: ["Memory", [`${tag}-sig`, "b"], "hasMemoryData", "m2"], expect: true });
  const rows = [0, 1, 2].map((i) => ({ id: `${tag}-st-${i}`, status: i === 2 ? "closed" : "opened" }));
  writes.push(["Storage", [false], "writeStorageData", rows]);
  reads.push({ call: ["Storage", [false], "readStorageData"], expect: rows });
  const t0 = Math.floor(baseMs / MIN) * MIN - 10 * MIN;
  const candles = [0, 1, 2, 3].map((i) => ({ timestamp: t0 + i * MIN, open: i, high: i + 1, low: i - 1, close: i + 0.5, volume: 10 }));
  writes.push(["Candle", [`${tag}-SYM0`, "1m", "binance"], "writeCandlesData", candles]);
  reads.push({ call: ["Candle", [`${tag}-SYM0`, "1m", "binance"], "readCandlesData", 4, t0, t0 + 4 * MIN], expect: candles });
  writes.push(["Measure", [`${tag}-b`], "writeMeasureData", { v: 1 }, "k", when]);
  reads.push({ call: ["Measure", [`${tag}-b`], "readMeasureData", "k"], expect: { v: 1 } });
  writes.push(["State", [`${tag}-sig`, "b"], "writeStateData", { id: "s", data: { n: 1 } }, when]);
  reads.push({ call: ["State", [`${tag}-sig`, "b"], "readStateData"], expect: { id: "s", data: { n: 1 } } });
  return { writes, reads };
}

/** Keeps rows of list reads (storage) that belong to `tag`. */
export function onlyTag(tag: string, v: unknown): unknown {
  if (!Array.isArray(v) || (v.length && Array.isArray(v[0]))) return v;
  return v.filter((r) => !(r && typeof r === "object" && "id" in r) || String((r as { id: unknown }).id).startsWith(`${tag}-`));
}
