/**
 * The 17 backtest-kit persistence adapters over one {@link WritClient}.
 *
 * Each class is constructed by backtest-kit once per context, with the
 * context as positional arguments, and stores exactly the documents the
 * official @backtest-kit/mongo package stores (same collections, key fields
 * and top-level field names); see README.md for each shape.
 */
import type { Document } from "bson";
import { bsonBuffer, notStored, type Ticket, type WritClient } from "./client.js";
import { COLLECTION } from "./collections.js";
import { RefusedWriteError, LostWriteError, WritConfigError, WritError, WritKeyError, type Accepted } from "./errors.js";
import type {
  AdapterClasses,
  CandleData,
  IPersistBreakevenInstance,
  IPersistCandleInstance,
  IPersistDictionaryInstance,
  IPersistIntervalInstance,
  IPersistLogInstance,
  IPersistMeasureInstance,
  IPersistMemoryInstance,
  IPersistNotificationInstance,
  IPersistPartialInstance,
  IPersistRecentInstance,
  IPersistRiskInstance,
  IPersistScheduleInstance,
  IPersistSessionInstance,
  IPersistSignalInstance,
  IPersistStateInstance,
  IPersistStorageInstance,
  IPersistStrategyInstance,
  RiskData,
  Row,
} from "./types.js";

/** Milliseconds of a candle interval: `1m`, `3m`, `5m`, `15m`, `30m`, `1h`, `2h`, `4h`, `6h`, `8h`, `12h`, `1d`, `1w`, ... */
export function intervalMs(interval: string): number {
  const m = /^(\d+)([smhdw])$/.exec(interval);
  if (!m || Number(m[1]) <= 0) {
    throw new WritConfigError(`unknown candle interval ${JSON.stringify(interval)}; expected e.g. 1m, 15m, 1h, 4h, 1d`);
  }
  const unit = { s: 1000, m: 60000, h: 3600000, d: 86400000, w: 604800000 }[m[2] as "s" | "m" | "h" | "d" | "w"];
  return Number(m[1]) * unit;
}

/** `when` as stored: ms since the epoch (now, if backtest-kit passed none). */
function whenMs(when: Date | number | undefined): number {
  if (when instanceof Date) return when.getTime();
  if (typeof when === "number") return when;
  return Date.now();
}

/**
 * A candle value as the official package stores it: its mongoose schema
 * types open/high/low/close/volume as `Number`, and mongoose 8's number
 * cast (`lib/cast/number.js`) stores a numeric string or a boolean as a
 * number, `""` as null, and refuses NaN or what `Number()` cannot read.
 * Exchange APIs often send prices as strings, so both packages store the
 * same document for them. A value the official package refuses (its write
 * throws a CastError) throws {@link WritKeyError} here, before any candle of
 * the call is sent.
 */
function candleNumber(c: CandleData, field: "open" | "high" | "low" | "close" | "volume"): unknown {
  const given: unknown = (c as unknown as Record<string, unknown>)[field];
  if (given == null) return given;
  if (given === "") return null;
  const v = typeof given === "string" || typeof given === "boolean" ? Number(given) : given;
  const refuse = () =>
    new WritKeyError(
      `candle ${field} must be a number or a numeric string (as the official package's schema casts it), ` +
        `got ${typeof given === "string" ? JSON.stringify(given) : String(given)} at timestamp ${c.timestamp}; fix the candle`,
    );
  if (typeof v === "number") {
    if (Number.isNaN(v)) throw refuse();
    return v;
  }
  if (typeof v === "object" && !Array.isArray(v) && typeof (v as { valueOf?: unknown }).valueOf === "function") {
    const n = Number((v as { valueOf(): unknown }).valueOf());
    if (Number.isNaN(n)) throw refuse();
    return n;
  }
  throw refuse();
}

/** A bounded insertion-ordered map (oldest entries dropped first). */
class Bounded<V> {
  private readonly m = new Map<string, V>();
  constructor(private readonly limit: number) {}
  get(k: string): V | undefined {
    return this.m.get(k);
  }
  has(k: string): boolean {
    return this.m.has(k);
  }
  set(k: string, v: V): void {
    this.m.delete(k);
    this.m.set(k, v);
    if (this.m.size > this.limit) this.m.delete(this.m.keys().next().value as string);
  }
  delete(k: string): void {
    this.m.delete(k);
  }
  clear(): void {
    this.m.clear();
  }
}

/**
 * Remembers `id` in `known` once its write `t` was accepted (acked, in ack
 * mode). A write the daemon then dead-letters (or Redis loses) is forgotten,
 * so the next call sends it again.
 */
function rememberWritten(known: Bounded<true>, id: string, t: Ticket): void {
  known.set(id, true);
  void t.acked.then((r) => {
    if (notStored(r)) known.delete(id);
  });
}

interface Put {
  key: Record<string, unknown>;
  fields?: Record<string, unknown>;
  remove?: boolean;
}

/** Whether `e` says for certain that its write was NOT accepted (nothing was added). */
function notAccepted(e: unknown): boolean {
  return e instanceof WritError && e.accepted === "no";
}

/** What `e` says of its write (an error that says nothing: unknown). */
function acceptedOf(e: unknown): Accepted {
  return (e instanceof WritError && e.accepted) || "unknown";
}

/**
 * What a write of several rows says, from what each row says (a row that
 * succeeded: "yes", writ holds it): "no" only if no row is held at all,
 * "yes" only if every row is, else "unknown" (some are held and others not,
 * or a row may or may not be).
 */
function acceptedOfRows(rows: Accepted[]): Accepted {
  if (rows.every((a) => a === "no")) return "no";
  if (rows.every((a) => a === "yes")) return "yes";
  return "unknown";
}

/** Builds the adapter classes bound to `client`. */
export function createAdapters(client: WritClient): AdapterClasses {
  // Every waitForInit syncs, not only the first (`initial`) one: backtest-kit
  // passes `true` once per context, so if that call failed (Redis not up yet,
  // or the daemon still draining past syncTimeoutMs), a retry must not read
  // before the predecessor's accepted writes are applied. The start-up sync
  // (`once`) remembers its success, so later calls cost nothing.
  const init = async (_initial: boolean): Promise<void> => {
    await client.ready();
    await client.sync({ once: true });
  };

  const put = async (collection: string, key: Record<string, unknown>, fields: Record<string, unknown>) => {
    await client.write(collection, key, "put", fields);
  };

  /**
   * Many writes of one collection: all submitted, then (ack mode) all acks
   * awaited. Rows go to several partitions: when some are refused (one
   * partition at its backlog bound, say) and others accepted, the error says
   * how many were accepted; retrying the whole call is safe. The error
   * thrown is one row's, but its `accepted` speaks for every row
   * ({@link acceptedOfRows}).
   */
  const writeAll = async (collection: string, items: Put[]): Promise<Ticket[]> => {
    const submitted = await Promise.allSettled(
      items.map((it) => client.submit(collection, it.key, it.remove ? "remove" : "put", it.remove ? undefined : it.fields)),
    );
    const tickets: Ticket[] = [];
    const errors: unknown[] = [];
    for (const r of submitted) {
      if (r.status === "fulfilled") tickets.push(r.value);
      else errors.push(r.reason);
    }
    // The error thrown keeps its class: one that may have been accepted
    // wins over a definite refusal, so a caller that acts on the class does
    // not take a row that may be in the stream for one that is not.
    const refused = errors.find((e) => !notAccepted(e)) ?? errors[0];
    if (errors.length) {
      if (tickets.length && refused instanceof Error) {
        refused.message =
          `${tickets.length} of ${items.length} rows of this ${collection} write were accepted; the others were not, or ` +
          `may not have been (the reason below says which; retrying the whole write is safe: a row written again keeps ` +
          `its value). ${refused.message}`;
        // Nobody waits for the accepted rows' acks: if one is refused after
        // all, onError hears it.
        if (client.config.mode === "ack") for (const t of tickets) client.reportIfRefused(t);
      }
      // Of every row: the accepted ones are held (some held and others not:
      // neither "yes" nor "no"); the error thrown is one row's.
      if (refused instanceof WritError) {
        (refused as { accepted?: Accepted }).accepted = acceptedOfRows([...tickets.map(() => "yes" as const), ...errors.map(acceptedOf)]);
      }
      throw refused;
    }
    if (client.config.mode === "ack") {
      const acked = await Promise.allSettled(tickets.map((t) => client.waitAck(t)));
      const failed = acked.flatMap((r) => (r.status === "rejected" ? [r.reason as unknown] : []));
      if (failed.length) {
        // A refusal wins over a timeout (whose row is still queued): the
        // caller must hear that a row was dead-lettered, and why.
        const refused = (e: unknown): e is RefusedWriteError | LostWriteError =>
          e instanceof RefusedWriteError || e instanceof LostWriteError;
        const refusals = failed.filter(refused).length;
        const lost = failed.filter((e) => e instanceof LostWriteError).length;
        const first = failed.find(refused) ?? failed[0];
        // The caller hears the first; every other refusal's reason goes to
        // onError, so none is heard of only as a count.
        for (const e of failed) if (e !== first && refused(e)) client.reportError(e);
        if (failed.length > 1 && first instanceof Error) {
          // A timed-out row is still queued if its entry is in the stream
          // ("yes"); else it may or may not be applied.
          const late = failed.filter((e) => !refused(e));
          const queued = late.filter((e) => acceptedOf(e) === "yes").length;
          first.message =
            `${failed.length} of ${items.length} rows of this ${collection} write failed (${refusals - lost} dead-lettered by ` +
            `the daemon, ${lost ? `${lost} lost by Redis, ` : ""}${queued} not acked in time: still ` +
            `queued${queued < late.length ? `, ${late.length - queued} not acked in time: may or may not be applied` : ""}); the first ` +
            `${refusals ? "refusal" : "timeout"}: ${first.message}`;
        }
        // Of every row, not only the one thrown: a dead-lettered row ("yes")
        // next to one that may be gone, or a lost row ("no") next to applied
        // ones, is neither "yes" nor "no".
        if (first instanceof WritError && items.length > 1) {
          const held = tickets.length - failed.length;
          (first as { accepted?: Accepted }).accepted = acceptedOfRows([
            ...Array.from({ length: held }, () => "yes" as const),
            ...failed.map(acceptedOf),
          ]);
          if (first.accepted === "unknown" && failed.length === 1 && acceptedOf(failed[0]) !== "unknown") {
            first.message = `1 of ${items.length} rows of this ${collection} write failed; the others were applied. ${first.message}`;
          }
        }
        throw first;
      }
    }
    return tickets;
  };

  const live = async (collection: string, key: Record<string, unknown>): Promise<Document | null> =>
    client.read(collection, key);

  /** Single-row "payload" adapters (signal, schedule, strategy). */
  const sse = (self: { symbol: string; strategyName: string; exchangeName: string }) => ({
    symbol: self.symbol,
    strategyName: self.strategyName,
    exchangeName: self.exchangeName,
  });

  class Signal implements IPersistSignalInstance {
    constructor(
      readonly symbol: string,
      readonly strategyName: string,
      readonly exchangeName: string,
    ) {}
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readSignalData(): Promise<Row | null> {
      return ((await live(COLLECTION.signal, sse(this)))?.payload ?? null) as Row | null;
    }
    async writeSignalData(row: Row | null): Promise<void> {
      await put(COLLECTION.signal, sse(this), { payload: row ?? null });
    }
  }

  class Schedule implements IPersistScheduleInstance {
    constructor(
      readonly symbol: string,
      readonly strategyName: string,
      readonly exchangeName: string,
    ) {}
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readScheduleData(): Promise<Row | null> {
      return ((await live(COLLECTION.schedule, sse(this)))?.payload ?? null) as Row | null;
    }
    async writeScheduleData(row: Row | null): Promise<void> {
      await put(COLLECTION.schedule, sse(this), { payload: row ?? null });
    }
  }

  class Strategy implements IPersistStrategyInstance {
    constructor(
      readonly symbol: string,
      readonly strategyName: string,
      readonly exchangeName: string,
    ) {}
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readStrategyData(): Promise<Row | null> {
      return ((await live(COLLECTION.strategy, sse(this)))?.payload ?? null) as Row | null;
    }
    async writeStrategyData(row: Row | null): Promise<void> {
      await put(COLLECTION.strategy, sse(this), { payload: row ?? null });
    }
  }

  class Risk implements IPersistRiskInstance {
    constructor(
      readonly riskName: string,
      readonly exchangeName: string,
    ) {}
    private get key() {
      return { riskName: this.riskName, exchangeName: this.exchangeName };
    }
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readPositionData(_when?: Date): Promise<RiskData> {
      const d = await live(COLLECTION.risk, this.key);
      return Array.isArray(d?.positions) ? (d!.positions as RiskData) : [];
    }
    async writePositionData(rows: RiskData, when?: Date): Promise<void> {
      await put(COLLECTION.risk, this.key, { positions: rows ?? [], when: whenMs(when) });
    }
  }

  class Partial implements IPersistPartialInstance {
    constructor(
      readonly symbol: string,
      readonly strategyName: string,
      readonly exchangeName: string,
    ) {}
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readPartialData(signalId: string, _when?: Date): Promise<Row> {
      const d = await live(COLLECTION.partial, { ...sse(this), signalId });
      return (d?.payload ?? {}) as Row;
    }
    async writePartialData(data: Row, signalId: string, when?: Date): Promise<void> {
      await put(COLLECTION.partial, { ...sse(this), signalId }, { payload: data ?? null, when: whenMs(when) });
    }
  }

  class Breakeven implements IPersistBreakevenInstance {
    constructor(
      readonly symbol: string,
      readonly strategyName: string,
      readonly exchangeName: string,
    ) {}
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readBreakevenData(signalId: string, _when?: Date): Promise<Row> {
      const d = await live(COLLECTION.breakeven, { ...sse(this), signalId });
      return (d?.payload ?? {}) as Row;
    }
    async writeBreakevenData(data: Row, signalId: string, when?: Date): Promise<void> {
      await put(COLLECTION.breakeven, { ...sse(this), signalId }, { payload: data ?? null, when: whenMs(when) });
    }
  }

  class Candle implements IPersistCandleInstance {
    private readonly step: number;
    /** Timestamps known to be stored (read or written): insert-once makes rewriting them a no-op. */
    private readonly known = new Bounded<true>(20000);
    constructor(
      readonly symbol: string,
      readonly interval: string,
      readonly exchangeName: string,
    ) {
      this.step = intervalMs(interval);
    }
    private key(timestamp: number) {
      return { exchangeName: this.exchangeName, symbol: this.symbol, interval: this.interval, timestamp };
    }
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readCandlesData(limit: number, sinceTimestamp: number, _untilTimestamp?: number): Promise<CandleData[] | null> {
      // As the official package's loop `for (i = 0; i < limit; i++)`: no
      // positive limit reads nothing, a fractional one reads up to its
      // ceiling, and a timestamp no candle can have finds none.
      const count = limit > 0 ? Math.ceil(limit) : 0;
      if (count === 0) return [];
      if (!Number.isSafeInteger(count) || !Number.isSafeInteger(sinceTimestamp)) return null;
      const stamps = Array.from({ length: count }, (_, i) => sinceTimestamp + i * this.step);
      const recs = await client.readMany(COLLECTION.candle, stamps.map((t) => this.key(t)));
      const out: CandleData[] = [];
      for (let i = 0; i < recs.length; i++) {
        const r = recs[i];
        if (!r || !r.live || !r.doc) return null;
        // Only what is stored: a pending write of this process (the overlay)
        // may still be dead-lettered.
        if (r.source !== "overlay") this.known.set(String(stamps[i]), true);
        const d = r.doc;
        out.push({ timestamp: stamps[i], open: d.open, high: d.high, low: d.low, close: d.close, volume: d.volume });
      }
      return out;
    }
    async writeCandlesData(candles: CandleData[]): Promise<void> {
      const now = Date.now();
      const items: Put[] = [];
      const seen = new Set<number>();
      for (const c of candles ?? []) {
        if (!Number.isSafeInteger(c.timestamp)) {
          throw new WritKeyError(`candle timestamp must be an integer (ms), got ${c.timestamp}`);
        }
        // Every candle is cast, also one left out below: the official
        // package casts each (its update is cast whether or not it stores).
        const fields = {
          open: candleNumber(c, "open"),
          high: candleNumber(c, "high"),
          low: candleNumber(c, "low"),
          close: candleNumber(c, "close"),
          volume: candleNumber(c, "volume"),
        };
        if (c.timestamp + this.step > now) continue; // not closed yet
        if (seen.has(c.timestamp) || this.known.has(String(c.timestamp))) continue;
        seen.add(c.timestamp);
        items.push({ key: this.key(c.timestamp), fields });
      }
      if (!items.length) return;
      const tickets = await writeAll(COLLECTION.candle, items);
      items.forEach((it, i) => rememberWritten(this.known, String(it.key.timestamp), tickets[i]));
    }
  }

  /**
   * One entity per id, keyed by (backtest, id) (storage, notification). Rows
   * identical to what this instance last wrote for that id are not rewritten
   * (callers rewrite their whole list on every change).
   */
  const entityList = (collection: string, idField: "signalId" | "notificationId") =>
    class {
      /**
       * Per id: the bytes this instance last wrote and had accepted (acked,
       * in ack mode), or the marker of the call writing it now (what is
       * stored is then not known, so an overlapping call does not skip the
       * row: its write must land after the one in flight).
       */
      readonly last = new Bounded<Buffer | object>(5000);
      constructor(readonly backtest: boolean) {}
      waitForInit(initial: boolean) {
        return init(initial);
      }
      async read(): Promise<Row[]> {
        const docs = await client.list(collection, { backtest: this.backtest });
        return docs.map((d) => d.payload as Row);
      }
      async write(rows: Row[]): Promise<void> {
        // An id listed twice is written once, with its last row (what
        // writing the rows in order would leave).
        const byId = new Map<string, Row>();
        for (const row of rows ?? []) {
          if (row == null || row.id === undefined || row.id === null) {
            throw new WritKeyError(`every ${collection} row needs an id`);
          }
          const id = String(row.id);
          byId.delete(id);
          byId.set(id, row);
        }
        const items: (Put & { id: string; bytes: Buffer })[] = [];
        for (const [id, row] of byId) {
          const fields = { payload: row };
          const bytes = bsonBuffer(fields, true);
          const prev = this.last.get(id);
          if (prev instanceof Buffer && prev.equals(bytes)) continue;
          items.push({ key: { backtest: this.backtest, [idField]: id }, fields, id, bytes });
        }
        if (!items.length) return;
        // Until this call returns, its rows' stored bytes are not known: a
        // call that throws may have had some rows accepted (and applied),
        // and an overlapping call must write even bytes this instance wrote
        // before.
        const writing = {};
        for (const it of items) this.last.set(it.id, writing);
        const tickets = await writeAll(collection, items);
        items.forEach((it, i) => {
          // Unless a later call is writing the row meanwhile.
          if (this.last.get(it.id) === writing) this.last.set(it.id, it.bytes);
          // A refused write must be retried by the next call.
          void tickets[i].acked.then((r) => {
            if (notStored(r)) this.last.delete(it.id);
          });
        });
      }
      dispose(): void {
        this.last.clear();
      }
    };

  const StorageBase = entityList(COLLECTION.storage, "signalId");
  class Storage extends StorageBase implements IPersistStorageInstance {
    readStorageData() {
      return this.read();
    }
    writeStorageData(rows: Row[]) {
      return this.write(rows);
    }
  }

  const NotificationBase = entityList(COLLECTION.notification, "notificationId");
  class Notification extends NotificationBase implements IPersistNotificationInstance {
    readNotificationData() {
      return this.read();
    }
    writeNotificationData(rows: Row[]) {
      return this.write(rows);
    }
  }

  class Log implements IPersistLogInstance {
    /** Entry ids known to be stored: append-only, so they are never rewritten. */
    private readonly known = new Bounded<true>(20000);
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readLogData(): Promise<Row[]> {
      const docs = await client.list(COLLECTION.log, {});
      const rows = docs.map((d) => d.payload as Row);
      for (const d of docs) this.known.set(String(d.entryId), true);
      return rows;
    }
    async writeLogData(entries: Row[]): Promise<void> {
      const items: Put[] = [];
      const seen = new Set<string>();
      for (const e of entries ?? []) {
        if (e == null || e.id === undefined || e.id === null) throw new WritKeyError("every log entry needs an id");
        const id = String(e.id);
        if (seen.has(id) || this.known.has(id)) continue;
        seen.add(id);
        items.push({ key: { entryId: id }, fields: { payload: e } });
      }
      if (!items.length) return;
      const tickets = await writeAll(COLLECTION.log, items);
      items.forEach((it, i) => rememberWritten(this.known, String(it.key.entryId), tickets[i]));
    }
  }

  /**
   * The top-level `removed` of a soft-deletable entry written with `data`:
   * backtest-kit's MeasureData, IntervalData and memory rows carry their own
   * `removed`, and the official package stores it (`$set: { payload, removed:
   * payload.removed }`), so data written removed reads as removed and is not
   * listed, there and in the file store. Data without it is live (before
   * session 41, always live).
   */
  const removedFlag = (data: Row): boolean =>
    typeof data === "object" && data !== null && (data as Record<string, unknown>).removed === true;

  /** Soft-deletable entries keyed by (bucket, entryKey) (measure, interval). */
  const bucketed = (collection: string, withWhen: boolean) =>
    class {
      constructor(readonly bucket: string) {}
      waitForInit(initial: boolean) {
        return init(initial);
      }
      async read(key: string): Promise<Row | null> {
        return ((await live(collection, { bucket: this.bucket, entryKey: key }))?.payload ?? null) as Row | null;
      }
      async write(data: Row, key: string, when?: Date): Promise<void> {
        const fields: Record<string, unknown> = { payload: data ?? null, removed: removedFlag(data) };
        if (withWhen) fields.when = whenMs(when);
        await put(collection, { bucket: this.bucket, entryKey: key }, fields);
      }
      async remove(key: string): Promise<void> {
        // Like the official package (an update without upsert): removing a key
        // that was never written leaves no document behind.
        const k = { bucket: this.bucket, entryKey: key };
        const r = await client.readRecord(collection, k);
        if (!r || !r.exists) return;
        await client.write(collection, k, "remove");
      }
      async *list(): AsyncGenerator<string> {
        const docs = await client.list(collection, { bucket: this.bucket });
        for (const d of docs) yield String(d.entryKey);
      }
    };

  const MeasureBase = bucketed(COLLECTION.measure, false);
  class Measure extends MeasureBase implements IPersistMeasureInstance {
    readMeasureData(key: string) {
      return this.read(key);
    }
    writeMeasureData(data: Row, key: string, when?: Date) {
      return this.write(data, key, when);
    }
    removeMeasureData(key: string) {
      return this.remove(key);
    }
    listMeasureData() {
      return this.list();
    }
  }

  const IntervalBase = bucketed(COLLECTION.interval, true);
  class Interval extends IntervalBase implements IPersistIntervalInstance {
    readIntervalData(key: string) {
      return this.read(key);
    }
    writeIntervalData(data: Row, key: string, when?: Date) {
      return this.write(data, key, when);
    }
    removeIntervalData(key: string) {
      return this.remove(key);
    }
    listIntervalData() {
      return this.list();
    }
  }

  class Memory implements IPersistMemoryInstance {
    constructor(
      readonly signalId: string,
      readonly bucketName: string,
    ) {}
    private key(memoryId: string) {
      return { signalId: this.signalId, bucketName: this.bucketName, memoryId };
    }
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readMemoryData(memoryId: string): Promise<Row | null> {
      return ((await live(COLLECTION.memory, this.key(memoryId)))?.payload ?? null) as Row | null;
    }
    async hasMemoryData(memoryId: string): Promise<boolean> {
      const r = await client.readRecord(COLLECTION.memory, this.key(memoryId));
      return !!r && r.exists;
    }
    async writeMemoryData(data: Row, memoryId: string, when?: Date): Promise<void> {
      await put(COLLECTION.memory, this.key(memoryId), { payload: data ?? null, removed: removedFlag(data), when: whenMs(when) });
    }
    async removeMemoryData(memoryId: string): Promise<void> {
      // Like the official package: removing an id that was never written leaves nothing behind.
      if (!(await this.hasMemoryData(memoryId))) return;
      await client.write(COLLECTION.memory, this.key(memoryId), "remove");
    }
    async *listMemoryData(): AsyncGenerator<{ memoryId: string; data: Row }> {
      const docs = await client.list(COLLECTION.memory, { signalId: this.signalId, bucketName: this.bucketName });
      for (const d of docs) yield { memoryId: String(d.memoryId), data: d.payload as Row };
    }
    dispose(): void {}
  }

  class Recent implements IPersistRecentInstance {
    constructor(
      readonly symbol: string,
      readonly strategyName: string,
      readonly exchangeName: string,
      readonly frameName: string,
      readonly backtest: boolean,
    ) {}
    private get key() {
      return {
        symbol: this.symbol,
        strategyName: this.strategyName,
        exchangeName: this.exchangeName,
        frameName: this.frameName ?? "",
        backtest: this.backtest,
      };
    }
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readRecentData(): Promise<Row | null> {
      return ((await live(COLLECTION.recent, this.key))?.payload ?? null) as Row | null;
    }
    async writeRecentData(row: Row, when?: Date): Promise<void> {
      await put(COLLECTION.recent, this.key, { payload: row ?? null, when: whenMs(when) });
    }
  }

  class State implements IPersistStateInstance {
    constructor(
      readonly signalId: string,
      readonly bucketName: string,
    ) {}
    private get key() {
      return { signalId: this.signalId, bucketName: this.bucketName };
    }
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readStateData(): Promise<Row | null> {
      return ((await live(COLLECTION.state, this.key))?.payload ?? null) as Row | null;
    }
    async writeStateData(data: Row, when?: Date): Promise<void> {
      await put(COLLECTION.state, this.key, { payload: data ?? null, when: whenMs(when) });
    }
    dispose(): void {}
  }

  class Session implements IPersistSessionInstance {
    constructor(
      readonly strategyName: string,
      readonly exchangeName: string,
      readonly frameName: string,
      readonly symbol: string,
      readonly backtest: boolean,
    ) {}
    private get key() {
      return {
        strategyName: this.strategyName,
        exchangeName: this.exchangeName,
        frameName: this.frameName ?? "",
        symbol: this.symbol,
        backtest: this.backtest,
      };
    }
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readSessionData(): Promise<Row | null> {
      return ((await live(COLLECTION.session, this.key))?.payload ?? null) as Row | null;
    }
    async writeSessionData(data: Row, when?: Date): Promise<void> {
      await put(COLLECTION.session, this.key, { payload: data ?? null, when: whenMs(when) });
    }
    dispose(): void {}
  }

  class Dictionary implements IPersistDictionaryInstance {
    constructor(
      readonly signalId: string,
      readonly dictionaryName: string,
    ) {}
    private get key() {
      return { signalId: this.signalId, dictionaryName: this.dictionaryName };
    }
    waitForInit(initial: boolean) {
      return init(initial);
    }
    async readDictionaryData(): Promise<Row | null> {
      return ((await live(COLLECTION.dictionary, this.key))?.payload ?? null) as Row | null;
    }
    async writeDictionaryData(data: Row, when?: Date): Promise<void> {
      await put(COLLECTION.dictionary, this.key, { payload: data ?? null, when: whenMs(when) });
    }
    dispose(): void {}
  }

  return {
    Signal,
    Schedule,
    Strategy,
    Risk,
    Partial,
    Breakeven,
    Candle,
    Storage,
    Notification,
    Log,
    Measure,
    Interval,
    Memory,
    Recent,
    State,
    Session,
    Dictionary,
  };
}
