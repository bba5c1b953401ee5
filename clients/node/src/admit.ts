/**
 * Group commit of admissions (`minReplicasAcked: 0`), as the Rust client
 * does it (src/client/batch.rs): one admission script call per partition
 * carries every submit that queued while the previous call to that partition
 * was in flight.
 *
 * With `appendfsync always`, Redis spends a submit's time on call overhead:
 * script dispatch, the meta hash update, one AOF transaction per call. The
 * admission script takes many entries at once (its batch form, docs/protocol.md
 * "Writing"); each entry is still admitted only while the backlog is under the
 * bound. A lone submit goes at once, alone, in the single form.
 *
 * Order: one queue per partition, first in first out, one call in flight per
 * partition, so the entries of one key are added in the order their submits
 * were made. Bounded: at most {@link MAX_BATCH} entries or
 * {@link MAX_BATCH_BYTES} argument bytes per call; callers wait behind it.
 */

/** Most entries in one admission call. */
export const MAX_BATCH = 256;
/** Most argument bytes in one admission call. */
export const MAX_BATCH_BYTES = 1 << 20;

export type Arg = string | Buffer | number;

/** Runs the admission script on `keys` with `args` (NOSCRIPT handled by the caller). */
export type AdmitCall = (keys: [string, string], args: Arg[]) => Promise<unknown>;

/** The bound refused the entry: the partition's backlog was at `backlog`. */
export class AdmitRefused extends Error {
  constructor(readonly backlog: number) {
    super(`BACKPRESSURE ${backlog}`);
    this.name = "AdmitRefused";
  }
}

interface Waiting {
  fields: Arg[];
  bytes: number;
  resolve: (id: string) => void;
  reject: (e: unknown) => void;
}

interface Queue {
  keys: [string, string];
  waiting: Waiting[];
  busy: boolean;
}

const argBytes = (a: Arg): number => (typeof a === "number" ? 8 : a.length);

export class AdmitBatcher {
  private readonly queues = new Map<string, Queue>();

  /** `group`: the daemon's consumer group; `bound`: the backlog bound (maxBacklog). */
  constructor(
    private readonly call: AdmitCall,
    private readonly group: string,
    private readonly bound: number,
  ) {}

  /** Admits one entry (its field/value arguments) to the partition of `keys`; its id. */
  admit(keys: [string, string], fields: Arg[]): Promise<string> {
    return new Promise((resolve, reject) => {
      let q = this.queues.get(keys[0]);
      if (!q) this.queues.set(keys[0], (q = { keys, waiting: [], busy: false }));
      q.waiting.push({ fields, bytes: fields.reduce<number>((n, a) => n + argBytes(a), 0), resolve, reject });
      if (!q.busy) {
        q.busy = true;
        // Submits made in this turn of the microtask queue join the first call.
        queueMicrotask(() => void this.flush(q));
      }
    });
  }

  /** Sends the queue, call after call, until it is empty. Never rejects. */
  private async flush(q: Queue): Promise<void> {
    while (q.waiting.length) {
      let n = 0;
      let bytes = 0;
      for (const w of q.waiting) {
        bytes += w.bytes;
        if (n > 0 && (n === MAX_BATCH || bytes > MAX_BATCH_BYTES)) break;
        n++;
      }
      const batch = q.waiting.splice(0, n);
      let reply: unknown;
      try {
        reply = await this.call(q.keys, this.args(batch));
      } catch (e) {
        const refused = backpressure(e);
        for (const w of batch) w.reject(refused ?? e);
        continue;
      }
      settle(batch, reply);
    }
    q.busy = false;
    this.queues.delete(q.keys[0]);
  }

  /** The script's arguments: the single form for one entry, else the batch form. */
  private args(batch: Waiting[]): Arg[] {
    const head: Arg[] = [this.group, this.bound];
    if (batch.length === 1) return head.concat(batch[0].fields);
    const args: Arg[] = head.concat("", batch.length);
    for (const w of batch) {
      args.push(w.fields.length);
      for (const f of w.fields) args.push(f);
    }
    return args;
  }
}

/** The script's BACKPRESSURE error reply (the single form), as {@link AdmitRefused}. */
export function backpressure(e: unknown): AdmitRefused | undefined {
  const m = /^BACKPRESSURE (\d+)/.exec(e instanceof Error ? e.message : "");
  return m ? new AdmitRefused(Number(m[1])) : undefined;
}

/**
 * Gives each entry of `batch` its result from the script's `reply`: one id
 * (the single form), or the batch form's ids in order, then the backlog (an
 * integer) when the bound stopped it early; the entries after the last id are
 * refused with it.
 */
export function settle(batch: { resolve: (id: string) => void; reject: (e: unknown) => void }[], reply: unknown): void {
  const odd = (what: string) => {
    const e = new Error(`the admission script returned ${what}`);
    for (const w of batch) w.reject(e);
  };
  if (!Array.isArray(reply)) {
    if (batch.length === 1 && (typeof reply === "string" || Buffer.isBuffer(reply))) return batch[0].resolve(String(reply));
    return odd(JSON.stringify(reply));
  }
  const ids: string[] = [];
  let backlog = 0;
  for (const item of reply) {
    if (typeof item === "string" || Buffer.isBuffer(item)) ids.push(String(item));
    else if (typeof item === "number") backlog = Math.max(0, item);
    else return odd(JSON.stringify(item));
  }
  if (ids.length > batch.length) return odd("more ids than entries");
  batch.forEach((w, i) => (i < ids.length ? w.resolve(ids[i]) : w.reject(new AdmitRefused(backlog))));
}
