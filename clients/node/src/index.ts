export { WritClient, notStored } from "./client.js";
export type { AckResult, AckOutcome, FlushReport, NotStoredWrite, Op, StoredRecord, Ticket } from "./client.js";
export { resolveConfig } from "./config.js";
export type { WritConfig, WriteModeName } from "./config.js";
export {
  WritError,
  BackpressureError,
  WritTimeoutError,
  PendingFullError,
  WritConnectionError,
  RedisFullError,
  RefusedWriteError,
  LostWriteError,
  WritKeyError,
  WritConfigError,
  WritClosedError,
} from "./errors.js";
export type { Accepted, WritErrorOptions } from "./errors.js";
export { canonicalKey, canonicalOf, fnv1a64, partitionOf, keyValues, Names, MAX_KEY_BYTES } from "./key.js";
export { MAX_NESTING } from "./nesting.js";
export type { CollectionSpec, Key, KeyValue, Layout, WriteMode } from "./key.js";
export { toSortable, toStreamId, ZERO_VERSION } from "./version.js";
export { COLLECTION, PRESET_COLLECTIONS } from "./collections.js";
export { ADMIT_LUA, CACHE_CAS_LUA, PARTITION_COUNT_LUA } from "./lua.js";
export { setup, waitForInit, dispose, registerAdapters } from "./setup.js";
export { createAdapters, intervalMs } from "./adapters.js";
export type {
  Row,
  CandleInterval,
  CandleData,
  RiskData,
  IPersistSignalInstance,
  IPersistScheduleInstance,
  IPersistStrategyInstance,
  IPersistRiskInstance,
  IPersistPartialInstance,
  IPersistBreakevenInstance,
  IPersistCandleInstance,
  IPersistStorageInstance,
  IPersistNotificationInstance,
  IPersistLogInstance,
  IPersistMeasureInstance,
  IPersistIntervalInstance,
  IPersistMemoryInstance,
  IPersistRecentInstance,
  IPersistStateInstance,
  IPersistSessionInstance,
  IPersistDictionaryInstance,
  TPersistSignalInstanceCtor,
  TPersistScheduleInstanceCtor,
  TPersistStrategyInstanceCtor,
  TPersistRiskInstanceCtor,
  TPersistPartialInstanceCtor,
  TPersistBreakevenInstanceCtor,
  TPersistCandleInstanceCtor,
  TPersistStorageInstanceCtor,
  TPersistNotificationInstanceCtor,
  TPersistLogInstanceCtor,
  TPersistMeasureInstanceCtor,
  TPersistIntervalInstanceCtor,
  TPersistMemoryInstanceCtor,
  TPersistRecentInstanceCtor,
  TPersistStateInstanceCtor,
  TPersistSessionInstanceCtor,
  TPersistDictionaryInstanceCtor,
  PersistAdapters,
  AdapterClasses,
} from "./types.js";
