/**
 * Keys, canonical keys, partitions and Redis key names (docs/protocol.md §1).
 *
 * A key is an object holding exactly a collection's declared key fields; each
 * value is a string, a safe integer or a boolean. Its canonical form is
 * `JSON.stringify` of the values in declared order, which is byte-identical to
 * what serde_json writes on the daemon side. A canonical key is at most
 * {@link MAX_KEY_BYTES} bytes of UTF-8.
 */
import { Long } from "bson";
import { WritKeyError } from "./errors.js";

export type KeyValue = string | number | boolean;
export type Key = Record<string, KeyValue>;

/** The 17 official collections are "fields"; "payload" is writ's older layout. */
export type Layout = "fields" | "payload";
export type WriteMode = "replace" | "insert_once";

/** A collection as the daemon's config declares it. */
export interface CollectionSpec {
  name: string;
  /** Key fields, in declared order. */
  key: readonly string[];
  mode?: WriteMode;
  layout?: Layout;
}

/**
 * The most bytes (UTF-8, escapes included) a canonical key may have; the
 * daemon dead-letters a longer one (docs/protocol.md §1).
 */
export const MAX_KEY_BYTES = 1024;

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;

/** Whether a string holds a lone UTF-16 surrogate (not encodable as UTF-8). */
function hasLoneSurrogate(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        i++;
        continue;
      }
      return true;
    }
    if (c >= 0xdc00 && c <= 0xdfff) return true;
  }
  return false;
}

function checkValue(coll: string, field: string, value: unknown): KeyValue {
  switch (typeof value) {
    case "string":
      if (hasLoneSurrogate(value)) {
        throw new WritKeyError(
          `key field ${field} of ${coll} holds a lone UTF-16 surrogate, which is not valid UTF-8; pass well-formed text`,
        );
      }
      return value;
    case "boolean":
      return value;
    case "number":
      if (!Number.isSafeInteger(value)) {
        throw new WritKeyError(
          `key field ${field} of ${coll} is ${value}: key numbers must be safe integers ` +
            `(|n| <= ${Number.MAX_SAFE_INTEGER}, no fraction, not NaN/Infinity); pass a string or an integer`,
        );
      }
      return value === 0 ? 0 : value; // -0 is 0
    default:
      throw new WritKeyError(
        `key field ${field} of ${coll} is a ${value === null ? "null" : typeof value}: ` +
          `key values must be strings, safe integers or booleans`,
      );
  }
}

/** Throws {@link WritKeyError} if the canonical key of `values` is over {@link MAX_KEY_BYTES}. */
function checkSize(coll: string, values: readonly KeyValue[]): void {
  // A cheap bound first, so ordinary keys are never serialised twice: one
  // UTF-16 unit is at most 6 bytes of JSON (`\u001f`), a safe integer or a
  // boolean at most 17 characters; then quotes, commas and brackets.
  let bound = 2 + values.length;
  for (const v of values) bound += typeof v === "string" ? 2 + 6 * v.length : 17;
  if (bound <= MAX_KEY_BYTES) return;
  const bytes = Buffer.byteLength(canonicalOf(values), "utf8");
  if (bytes > MAX_KEY_BYTES) {
    throw new WritKeyError(
      `the canonical key of ${coll} is ${bytes} bytes, over the limit of ${MAX_KEY_BYTES} bytes ` +
        `(docs/protocol.md §1); use shorter key values`,
    );
  }
}

/**
 * Checks a key against the collection's declared fields and returns its values
 * in declared order. Throws {@link WritKeyError} on a missing, extra or
 * ill-typed field, or when the canonical key is over {@link MAX_KEY_BYTES}.
 */
export function keyValues(spec: CollectionSpec, key: Record<string, unknown>): KeyValue[] {
  if (key === null || typeof key !== "object" || Array.isArray(key)) {
    throw new WritKeyError(`the key of ${spec.name} must be an object with fields ${spec.key.join(", ")}`);
  }
  const names = Object.keys(key);
  for (const n of names) {
    if (!spec.key.includes(n)) {
      throw new WritKeyError(
        `key of ${spec.name} has field ${JSON.stringify(n)}, which is not a key field; its key fields are ${spec.key.join(", ")}`,
      );
    }
  }
  const values = spec.key.map((f) => {
    if (!Object.prototype.hasOwnProperty.call(key, f) || key[f] === undefined) {
      throw new WritKeyError(`key of ${spec.name} is missing field ${f}; its key fields are ${spec.key.join(", ")}`);
    }
    return checkValue(spec.name, f, key[f]);
  });
  checkSize(spec.name, values);
  return values;
}

/** The canonical key text: compact JSON array of the values in declared order. */
export function canonicalOf(values: readonly KeyValue[]): string {
  return JSON.stringify(values);
}

/** The canonical key of `key` in collection `spec`. */
export function canonicalKey(spec: CollectionSpec, key: Record<string, unknown>): string {
  return canonicalOf(keyValues(spec, key));
}

/**
 * The key as a document in declared field order, for BSON: integers outside
 * int32 are int64 (never doubles), as the daemon requires.
 */
export function keyDocument(spec: CollectionSpec, values: readonly KeyValue[]): Record<string, unknown> {
  const doc: Record<string, unknown> = {};
  spec.key.forEach((f, i) => {
    const v = values[i];
    doc[f] = typeof v === "number" && (v < INT32_MIN || v > INT32_MAX) ? Long.fromNumber(v) : v;
  });
  return doc;
}

/** The key as a MongoDB filter (plain values; MongoDB compares numbers by value). */
export function keyFilter(spec: CollectionSpec, values: readonly KeyValue[]): Record<string, KeyValue> {
  const doc: Record<string, KeyValue> = {};
  spec.key.forEach((f, i) => {
    doc[f] = values[i];
  });
  return doc;
}

const encoder = new TextEncoder();
const TWO32 = 4294967296;

/** 64-bit FNV-1a as [hi, lo] 32-bit halves (the multiply split so no BigInt runs per byte). */
function fnvHalves(parts: Uint8Array[]): [number, number] {
  // offset basis 0xcbf29ce484222325
  let hi = 0xcbf29ce4;
  let lo = 0x84222325;
  for (const bytes of parts) {
    for (let i = 0; i < bytes.length; i++) {
      lo = (lo ^ bytes[i]) >>> 0;
      // (hi:lo) * 0x100000001b3 mod 2^64 = (hi:lo) * 0x1b3 + (lo << 40)
      const a = lo * 0x1b3;
      const carry = Math.floor(a / TWO32);
      hi = (hi * 0x1b3 + ((lo << 8) >>> 0) + carry) >>> 0;
      lo = a >>> 0;
    }
  }
  return [hi, lo];
}

/** 64-bit FNV-1a of `collection ++ 0x00 ++ canonical` (UTF-8), as a BigInt. */
export function fnv1a64(collection: string, canonical: string): bigint {
  const [hi, lo] = fnvHalves([encoder.encode(collection), new Uint8Array([0]), encoder.encode(canonical)]);
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** The partition of a key: `fnv1a64(collection ++ 0x00 ++ canonical) mod partitions`. */
export function partitionOf(collection: string, canonical: string, partitions: number): number {
  return Number(fnv1a64(collection, canonical) % BigInt(partitions));
}

/** Redis key names of one namespace (docs/protocol.md §1). */
export class Names {
  constructor(readonly namespace: string) {}
  stream(p: number): string {
    return `${this.namespace}:{p${p}}:in`;
  }
  meta(p: number): string {
    return `${this.namespace}:{p${p}}:meta`;
  }
  /** A writer's admission record in a partition (src/lua/admit.lua): a call sent twice adds its entries once. */
  admission(p: number, caller: string): string {
    return `${this.namespace}:{p${p}}:adm:${caller}`;
  }
  cache(p: number, collection: string, canonical: string): string {
    return `${this.namespace}:{p${p}}:c:${collection}:${canonical}`;
  }
  acks(client: string): string {
    return `${this.namespace}:ack:${client}`;
  }
  /** The dead-letter stream. */
  get dlq(): string {
    return `${this.namespace}:dlq`;
  }
  get group(): string {
    return this.namespace;
  }
}
