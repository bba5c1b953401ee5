/**
 * Versions (docs/protocol.md §3). A write's version is its stream entry id
 * `ms-seq`; stored and compared as the fixed-width sortable string
 * `MMMMMMMMMMMMMMMMMMMM-SSSSSSSSSSSSSSSSSSSS`, whose byte order is version order.
 */

/** The version of a document that carries none (written before writ managed it). */
export const ZERO_VERSION = "00000000000000000000-00000000000000000000";

const STREAM_ID = /^(\d{1,20})-(\d{1,20})$/;
const SORTABLE = /^\d{20}-\d{20}$/;

/** `1700000000000-3` → `00000001700000000000-00000000000000000003`. */
export function toSortable(streamId: string): string {
  const m = STREAM_ID.exec(streamId);
  if (!m) throw new Error(`not a stream id: ${JSON.stringify(streamId)}`);
  return `${m[1].padStart(20, "0")}-${m[2].padStart(20, "0")}`;
}

/** The inverse of {@link toSortable}. */
export function toStreamId(sortable: string): string {
  if (!SORTABLE.test(sortable)) throw new Error(`not a sortable version: ${JSON.stringify(sortable)}`);
  const [ms, seq] = sortable.split("-");
  return `${BigInt(ms)}-${BigInt(seq)}`;
}

export function isSortable(s: unknown): s is string {
  return typeof s === "string" && SORTABLE.test(s);
}

/** Compares two stream ids `ms-seq` numerically: <0, 0, >0. */
export function compareStreamIds(a: string, b: string): number {
  const sa = toSortable(a);
  const sb = toSortable(b);
  return sa < sb ? -1 : sa > sb ? 1 : 0;
}

/** The stream id just after `id` (`ms-seq` → `ms-(seq+1)`). */
export function nextStreamId(id: string): string {
  const [ms, seq] = id.split("-");
  return `${BigInt(ms)}-${BigInt(seq) + 1n}`;
}
