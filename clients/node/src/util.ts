/**
 * Small helpers shared by the client core (client.ts) and the parts of it
 * that live in modules of their own (replicated.ts, acks.ts). They sit here
 * so that those modules need not import client.ts, which imports them.
 */

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** {@link sleep} that does not keep the process alive (a background loop's backoff). */
export const sleepUnref = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

export function errMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A server reply error (as opposed to a connection failure). */
export function isReplyError(e: unknown): boolean {
  return e instanceof Error && e.name === "ReplyError";
}

/** `items` grouped by `key`, each group in the items' order. */
export function groupBy<K, T>(items: T[], key: (t: T) => K): Map<K, T[]> {
  const groups = new Map<K, T[]>();
  for (const t of items) {
    const same = groups.get(key(t));
    if (same) same.push(t);
    else groups.set(key(t), [t]);
  }
  return groups;
}
