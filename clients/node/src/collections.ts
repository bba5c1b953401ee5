/**
 * The 17 backtest-kit collections, as writ's preset declares them (the same
 * names, key fields and key order as the official @backtest-kit/mongo package).
 */
import type { CollectionSpec } from "./key.js";

const SSE = ["symbol", "strategyName", "exchangeName"] as const;

export const COLLECTION = {
  signal: "signal-items",
  schedule: "schedule-items",
  strategy: "strategy-items",
  risk: "risk-items",
  partial: "partial-items",
  breakeven: "breakeven-items",
  candle: "candle-items",
  storage: "storage-items",
  notification: "notification-items",
  log: "log-items",
  measure: "measure-items",
  interval: "interval-items",
  memory: "memory-items",
  recent: "recent-items",
  state: "state-items",
  session: "session-items",
  dictionary: "dictionary-items",
} as const;

export const PRESET_COLLECTIONS: CollectionSpec[] = [
  { name: COLLECTION.signal, key: SSE, layout: "fields" },
  { name: COLLECTION.schedule, key: SSE, layout: "fields" },
  { name: COLLECTION.strategy, key: SSE, layout: "fields" },
  { name: COLLECTION.risk, key: ["riskName", "exchangeName"], layout: "fields" },
  { name: COLLECTION.partial, key: [...SSE, "signalId"], layout: "fields" },
  { name: COLLECTION.breakeven, key: [...SSE, "signalId"], layout: "fields" },
  {
    name: COLLECTION.candle,
    key: ["exchangeName", "symbol", "interval", "timestamp"],
    mode: "insert_once",
    layout: "fields",
  },
  { name: COLLECTION.storage, key: ["backtest", "signalId"], layout: "fields" },
  { name: COLLECTION.notification, key: ["backtest", "notificationId"], layout: "fields" },
  { name: COLLECTION.log, key: ["entryId"], mode: "insert_once", layout: "fields" },
  { name: COLLECTION.measure, key: ["bucket", "entryKey"], layout: "fields" },
  { name: COLLECTION.interval, key: ["bucket", "entryKey"], layout: "fields" },
  { name: COLLECTION.memory, key: ["signalId", "bucketName", "memoryId"], layout: "fields" },
  {
    name: COLLECTION.recent,
    key: ["symbol", "strategyName", "exchangeName", "frameName", "backtest"],
    layout: "fields",
  },
  { name: COLLECTION.state, key: ["signalId", "bucketName"], layout: "fields" },
  {
    name: COLLECTION.session,
    key: ["strategyName", "exchangeName", "frameName", "symbol", "backtest"],
    layout: "fields",
  },
  { name: COLLECTION.dictionary, key: ["signalId", "dictionaryName"], layout: "fields" },
];

/** Top-level names a `fields` document must not hold (the daemon owns them). */
export const RESERVED_FIELDS = ["_id", "_writ", "createDate", "updatedDate"] as const;
