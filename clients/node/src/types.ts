/**
 * backtest-kit's persistence contract (19.x/20.x), declared structurally so
 * this package needs no backtest-kit at build time. Row types are left open
 * (`any`-like records): backtest-kit owns their shape; writ stores them as BSON.
 */

export type Row = Record<string, any>;
export type CandleInterval = string;

export interface CandleData {
  timestamp: number;
  open: number;
  high: number;
  low: number;
  close: number;
  volume: number;
}

export type RiskData = Array<[string, Row]>;

export interface IPersistSignalInstance {
  waitForInit(initial: boolean): Promise<void>;
  readSignalData(): Promise<Row | null>;
  writeSignalData(row: Row | null): Promise<void>;
}
export interface IPersistScheduleInstance {
  waitForInit(initial: boolean): Promise<void>;
  readScheduleData(): Promise<Row | null>;
  writeScheduleData(row: Row | null): Promise<void>;
}
export interface IPersistStrategyInstance {
  waitForInit(initial: boolean): Promise<void>;
  readStrategyData(): Promise<Row | null>;
  writeStrategyData(row: Row | null): Promise<void>;
}
export interface IPersistRiskInstance {
  waitForInit(initial: boolean): Promise<void>;
  readPositionData(when?: Date): Promise<RiskData>;
  writePositionData(rows: RiskData, when?: Date): Promise<void>;
}
export interface IPersistPartialInstance {
  waitForInit(initial: boolean): Promise<void>;
  readPartialData(signalId: string, when?: Date): Promise<Row>;
  writePartialData(data: Row, signalId: string, when?: Date): Promise<void>;
}
export interface IPersistBreakevenInstance {
  waitForInit(initial: boolean): Promise<void>;
  readBreakevenData(signalId: string, when?: Date): Promise<Row>;
  writeBreakevenData(data: Row, signalId: string, when?: Date): Promise<void>;
}
export interface IPersistCandleInstance {
  waitForInit(initial: boolean): Promise<void>;
  readCandlesData(limit: number, sinceTimestamp: number, untilTimestamp?: number): Promise<CandleData[] | null>;
  writeCandlesData(candles: CandleData[]): Promise<void>;
}
export interface IPersistStorageInstance {
  waitForInit(initial: boolean): Promise<void>;
  readStorageData(): Promise<Row[]>;
  writeStorageData(rows: Row[]): Promise<void>;
}
export interface IPersistNotificationInstance {
  waitForInit(initial: boolean): Promise<void>;
  readNotificationData(): Promise<Row[]>;
  writeNotificationData(rows: Row[]): Promise<void>;
}
export interface IPersistLogInstance {
  waitForInit(initial: boolean): Promise<void>;
  readLogData(): Promise<Row[]>;
  writeLogData(entries: Row[]): Promise<void>;
}
export interface IPersistMeasureInstance {
  waitForInit(initial: boolean): Promise<void>;
  readMeasureData(key: string): Promise<Row | null>;
  writeMeasureData(data: Row, key: string, when?: Date): Promise<void>;
  removeMeasureData(key: string): Promise<void>;
  listMeasureData(): AsyncGenerator<string>;
}
export interface IPersistIntervalInstance {
  waitForInit(initial: boolean): Promise<void>;
  readIntervalData(key: string): Promise<Row | null>;
  writeIntervalData(data: Row, key: string, when?: Date): Promise<void>;
  removeIntervalData(key: string): Promise<void>;
  listIntervalData(): AsyncGenerator<string>;
}
export interface IPersistMemoryInstance {
  waitForInit(initial: boolean): Promise<void>;
  readMemoryData(memoryId: string): Promise<Row | null>;
  hasMemoryData(memoryId: string): Promise<boolean>;
  writeMemoryData(data: Row, memoryId: string, when?: Date): Promise<void>;
  removeMemoryData(memoryId: string): Promise<void>;
  listMemoryData(): AsyncGenerator<{ memoryId: string; data: Row }>;
  dispose(): void;
}
export interface IPersistRecentInstance {
  waitForInit(initial: boolean): Promise<void>;
  readRecentData(): Promise<Row | null>;
  writeRecentData(row: Row, when?: Date): Promise<void>;
}
export interface IPersistStateInstance {
  waitForInit(initial: boolean): Promise<void>;
  readStateData(): Promise<Row | null>;
  writeStateData(data: Row, when?: Date): Promise<void>;
  dispose(): void;
}
export interface IPersistSessionInstance {
  waitForInit(initial: boolean): Promise<void>;
  readSessionData(): Promise<Row | null>;
  writeSessionData(data: Row, when?: Date): Promise<void>;
  dispose(): void;
}
export interface IPersistDictionaryInstance {
  waitForInit(initial: boolean): Promise<void>;
  readDictionaryData(): Promise<Row | null>;
  writeDictionaryData(data: Row, when?: Date): Promise<void>;
  dispose(): void;
}

type Ctor<Args extends unknown[], I> = new (...args: Args) => I;
type SSE = [symbol: string, strategyName: string, exchangeName: string];

export type TPersistSignalInstanceCtor = Ctor<SSE, IPersistSignalInstance>;
export type TPersistScheduleInstanceCtor = Ctor<SSE, IPersistScheduleInstance>;
export type TPersistStrategyInstanceCtor = Ctor<SSE, IPersistStrategyInstance>;
export type TPersistRiskInstanceCtor = Ctor<[riskName: string, exchangeName: string], IPersistRiskInstance>;
export type TPersistPartialInstanceCtor = Ctor<SSE, IPersistPartialInstance>;
export type TPersistBreakevenInstanceCtor = Ctor<SSE, IPersistBreakevenInstance>;
export type TPersistCandleInstanceCtor = Ctor<
  [symbol: string, interval: CandleInterval, exchangeName: string],
  IPersistCandleInstance
>;
export type TPersistStorageInstanceCtor = Ctor<[backtest: boolean], IPersistStorageInstance>;
export type TPersistNotificationInstanceCtor = Ctor<[backtest: boolean], IPersistNotificationInstance>;
export type TPersistLogInstanceCtor = Ctor<[], IPersistLogInstance>;
export type TPersistMeasureInstanceCtor = Ctor<[bucket: string], IPersistMeasureInstance>;
export type TPersistIntervalInstanceCtor = Ctor<[bucket: string], IPersistIntervalInstance>;
export type TPersistMemoryInstanceCtor = Ctor<[signalId: string, bucketName: string], IPersistMemoryInstance>;
export type TPersistRecentInstanceCtor = Ctor<
  [symbol: string, strategyName: string, exchangeName: string, frameName: string, backtest: boolean],
  IPersistRecentInstance
>;
export type TPersistStateInstanceCtor = Ctor<[signalId: string, bucketName: string], IPersistStateInstance>;
export type TPersistSessionInstanceCtor = Ctor<
  [strategyName: string, exchangeName: string, frameName: string, symbol: string, backtest: boolean],
  IPersistSessionInstance
>;
export type TPersistDictionaryInstanceCtor = Ctor<[signalId: string, dictionaryName: string], IPersistDictionaryInstance>;

/** The adapter singletons of backtest-kit that `setup()` registers with (structural). */
export interface PersistAdapters {
  PersistSignalAdapter: { usePersistSignalAdapter(Ctor: TPersistSignalInstanceCtor): void };
  PersistScheduleAdapter: { usePersistScheduleAdapter(Ctor: TPersistScheduleInstanceCtor): void };
  PersistStrategyAdapter: { usePersistStrategyAdapter(Ctor: TPersistStrategyInstanceCtor): void };
  PersistRiskAdapter: { usePersistRiskAdapter(Ctor: TPersistRiskInstanceCtor): void };
  PersistPartialAdapter: { usePersistPartialAdapter(Ctor: TPersistPartialInstanceCtor): void };
  PersistBreakevenAdapter: { usePersistBreakevenAdapter(Ctor: TPersistBreakevenInstanceCtor): void };
  PersistCandleAdapter: { usePersistCandleAdapter(Ctor: TPersistCandleInstanceCtor): void };
  PersistStorageAdapter: { usePersistStorageAdapter(Ctor: TPersistStorageInstanceCtor): void };
  PersistNotificationAdapter: { usePersistNotificationAdapter(Ctor: TPersistNotificationInstanceCtor): void };
  PersistLogAdapter: { usePersistLogAdapter(Ctor: TPersistLogInstanceCtor): void };
  PersistMeasureAdapter: { usePersistMeasureAdapter(Ctor: TPersistMeasureInstanceCtor): void };
  PersistIntervalAdapter: { usePersistIntervalAdapter(Ctor: TPersistIntervalInstanceCtor): void };
  PersistMemoryAdapter: { usePersistMemoryAdapter(Ctor: TPersistMemoryInstanceCtor): void };
  PersistRecentAdapter: { usePersistRecentAdapter(Ctor: TPersistRecentInstanceCtor): void };
  PersistStateAdapter: { usePersistStateAdapter(Ctor: TPersistStateInstanceCtor): void };
  PersistSessionAdapter: { usePersistSessionAdapter(Ctor: TPersistSessionInstanceCtor): void };
  PersistDictionaryAdapter?: { usePersistDictionaryAdapter(Ctor: TPersistDictionaryInstanceCtor): void };
}

/** The adapter classes `createAdapters()` builds, by domain. */
export interface AdapterClasses {
  Signal: TPersistSignalInstanceCtor;
  Schedule: TPersistScheduleInstanceCtor;
  Strategy: TPersistStrategyInstanceCtor;
  Risk: TPersistRiskInstanceCtor;
  Partial: TPersistPartialInstanceCtor;
  Breakeven: TPersistBreakevenInstanceCtor;
  Candle: TPersistCandleInstanceCtor;
  Storage: TPersistStorageInstanceCtor;
  Notification: TPersistNotificationInstanceCtor;
  Log: TPersistLogInstanceCtor;
  Measure: TPersistMeasureInstanceCtor;
  Interval: TPersistIntervalInstanceCtor;
  Memory: TPersistMemoryInstanceCtor;
  Recent: TPersistRecentInstanceCtor;
  State: TPersistStateInstanceCtor;
  Session: TPersistSessionInstanceCtor;
  Dictionary: TPersistDictionaryInstanceCtor;
}
