/**
 * Admissions with `minReplicasAcked > 0` (docs/protocol.md "Writing"): each
 * admission script call is followed by `WAIT minReplicasAcked
 * replicaAckTimeoutMs` in one pipeline on a connection of its own, and the
 * admissions made while a WAIT is out share the next one, one batch per node
 * (group commit). In a Redis Cluster the batches do their own redirection
 * handling (ioredis's auto-pipelining is off there), and an admission that
 * goes round again (NOSCRIPT, a redirection) holds back the later ones of its
 * partition, so one key's entries keep the order of their submits.
 *
 * It lives apart from the client core (client.ts) because none of it touches
 * the pending writes, the overlay or the cache: the client hands it the
 * partition's keys and the entry and gets back the entry id and the replicas
 * that confirmed it. Admissions without WAIT (`minReplicasAcked: 0`) go
 * through `AdmitBatcher` (admit.ts) instead.
 */
import { Cluster, type Redis } from "ioredis";
import calculateSlot from "cluster-key-slot";

import type { WritConfig } from "./config.js";
import { WritClosedError } from "./errors.js";
import { AdmitRefused, admitArgs, type AdmitKeys } from "./admit.js";
import { errMessage, sleep } from "./util.js";

/**
 * Reply errors that mean the command was not executed where it was sent
 * (Redis Cluster redirections, a slot being migrated, a failover in progress):
 * sending it again is safe.
 */
export const NOT_EXECUTED = /^(MOVED|ASK|TRYAGAIN|CLUSTERDOWN) /;
/** An ioredis cluster pipeline refused before sending: its slots moved apart. */
const PIPELINE_SPLIT = /same slots allocation group|same slot/;
/** Tries of an admission batch whose commands were redirected (as ioredis's maxRedirections). */
const MAX_REDIRECTIONS = 16;
/** Most admissions in one pipeline with a trailing WAIT. */
const ADMIT_BATCH_MAX = 1000;

/** An admission waiting for its batch (`minReplicasAcked > 0`). */
interface AdmitJob {
  keys: AdmitKeys;
  /** The batch form with one entry and a call number (src/lua/admit.lua). */
  args: (string | Buffer | number)[];
  /** Send the script's text (EVAL): the node did not have it (NOSCRIPT). */
  useEval: boolean;
  /** Times it was redirected (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) and sent again. */
  redirects: number;
  /** The last reply that was not an entry id. */
  lastError?: unknown;
  resolve: (r: { entryId: string; replicas: number | Error }) => void;
  reject: (e: unknown) => void;
}

/** What a {@link ReplicatedAdmitter} is given by its client. */
export interface ReplicatedOptions {
  /** The client's config (read when used): the bound, and the WAIT's replicas and timeout. */
  config: Pick<WritConfig, "maxBacklog" | "minReplicasAcked" | "replicaAckTimeoutMs">;
  /** Creates the "writes" connection (not connected yet), on the first admission. */
  connect: () => Redis | Cluster;
  /** The admission script (src/lua/admit.lua) and its SHA-1. */
  script: { sha: string; text: string };
  /** The daemon's consumer group (the admission script's bound counts its backlog). */
  group: string;
  /** Whether the client was closed: queued admissions then fail with {@link WritClosedError}. */
  closed: () => boolean;
}

/** The admission path with WAIT of one client (`minReplicasAcked > 0`). */
export class ReplicatedAdmitter {
  private readonly config: ReplicatedOptions["config"];
  private readonly connect: () => Redis | Cluster;
  private readonly script: { sha: string; text: string };
  private readonly group: string;
  private readonly isClosed: () => boolean;
  /** The connection admissions and their WAIT go through (WAIT blocks it). */
  private writeRedis: Redis | Cluster | undefined;
  private writeReady: Promise<void> | undefined;
  /** Admissions waiting for a WAIT batch, by node (cluster) or "" (one server). */
  private admitQueues = new Map<string, { jobs: AdmitJob[]; busy: boolean; scheduled: boolean }>();
  /**
   * Partition stream → admissions held back while an earlier admission of
   * that partition goes round again (NOSCRIPT, a redirection): they are sent
   * after it, so one key's entries keep the order of their submits.
   */
  private heldAdmits = new Map<string, AdmitJob[]>();
  /**
   * Per partition, the number of its last admission call. Each admission is
   * a call of its own, and up to {@link ADMIT_BATCH_MAX} of a partition's can
   * be in one pipeline, so their records keep that many replies.
   */
  private readonly admitCalls = new Map<string, number>();

  constructor(opts: ReplicatedOptions) {
    this.config = opts.config;
    this.connect = opts.connect;
    this.script = opts.script;
    this.group = opts.group;
    this.isClosed = opts.closed;
  }

  /** The writes connection, once the first admission made it (the client closes it). */
  get connection(): Redis | Cluster | undefined {
    return this.writeRedis;
  }

  private get closed(): boolean {
    return this.isClosed();
  }

  /**
   * With `minReplicasAcked > 0`: the admission script, then `WAIT
   * minReplicasAcked replicaAckTimeoutMs` in the same pipeline on the same
   * connection, so the WAIT runs on the master that took the entry and
   * covers it. Admissions made meanwhile share one WAIT per node (group
   * commit): while a batch waits, the next one gathers. The writes
   * connection is its own: WAIT blocks it (up to replicaAckTimeoutMs when
   * replicas lag), and reads must not queue behind it.
   */
  async admit(keys: AdmitKeys, entry: (string | Buffer | number)[]): Promise<{ entryId: string; replicas: number | Error }> {
    await this.writeConnection();
    // Numbered in submit order: jobs of one partition are sent in that order.
    const seq = (this.admitCalls.get(keys[0]) ?? 0) + 1;
    this.admitCalls.set(keys[0], seq);
    const args = admitArgs(this.group, this.config.maxBacklog, seq, ADMIT_BATCH_MAX, [entry]);
    return new Promise((resolve, reject) => this.enqueueAdmit({ keys, args, useEval: false, redirects: 0, resolve, reject }));
  }

  private writeConnection(): Promise<void> {
    if (!this.writeRedis) this.writeRedis = this.connect();
    if (!this.writeReady) {
      const conn = this.writeRedis;
      // A Cluster must know its slots before admissions are grouped by node.
      this.writeReady = (conn.status === "wait" ? conn.connect() : Promise.resolve()).catch((e) => {
        this.writeReady = undefined;
        throw e;
      });
    }
    return this.writeReady;
  }

  /** The batch an admission joins: the nodes serving its slot (cluster), else the one server. */
  private admitGroup(key: string): string {
    const conn = this.writeRedis;
    if (!(conn instanceof Cluster)) return "";
    const slot = calculateSlot(key);
    return conn.slots[slot]?.join(",") || `slot ${slot}`;
  }

  private enqueueAdmit(job: AdmitJob): void {
    const held = this.heldAdmits.get(job.keys[0]);
    if (held) {
      held.push(job);
      return;
    }
    const group = this.admitGroup(job.keys[0]);
    let q = this.admitQueues.get(group);
    if (!q) this.admitQueues.set(group, (q = { jobs: [], busy: false, scheduled: false }));
    q.jobs.push(job);
    if (!q.busy && !q.scheduled) {
      q.scheduled = true;
      // Like ioredis's auto-pipelining: admissions made in this turn of the event loop go together.
      setImmediate(() => this.drainAdmits(group));
    }
  }

  private drainAdmits(group: string): void {
    const q = this.admitQueues.get(group);
    if (!q) return;
    q.scheduled = false;
    if (q.busy) return;
    if (!q.jobs.length) {
      this.admitQueues.delete(group);
      return;
    }
    const batch = q.jobs.splice(0, ADMIT_BATCH_MAX);
    if (this.closed) {
      for (const j of batch) j.reject(new WritClosedError());
      return this.drainAdmits(group);
    }
    q.busy = true;
    void this.admitBatch(batch).finally(() => {
      q.busy = false;
      this.drainAdmits(group);
    });
  }

  /**
   * Sends one batch: its admissions, then WAIT. Admissions a node did not
   * execute (NOSCRIPT; in a cluster MOVED, ASK, TRYAGAIN, CLUSTERDOWN, or a
   * pipeline whose slots moved apart) go round again (redirections: after a
   * slot refresh, at most {@link MAX_REDIRECTIONS} times). Never rejects.
   */
  private async admitBatch(batch: AdmitJob[]): Promise<void> {
    const conn = this.writeRedis!;
    const p = conn.pipeline();
    for (const j of batch) {
      if (j.useEval) p.eval(this.script.text, j.keys.length, ...j.keys, ...j.args);
      else p.evalsha(this.script.sha, j.keys.length, ...j.keys, ...j.args);
    }
    p.wait(this.config.minReplicasAcked, this.config.replicaAckTimeoutMs);
    let res: [Error | null, unknown][];
    try {
      res = (await p.exec()) ?? [];
    } catch (e) {
      if (conn instanceof Cluster && PIPELINE_SPLIT.test(errMessage(e))) {
        for (const j of batch) j.lastError = e;
        this.holdBehind(batch);
        return this.redirect(conn, batch);
      }
      for (const j of batch) j.reject(e);
      return;
    }
    const [waitErr, waitReply] = res[batch.length] ?? [new Error("no reply to WAIT"), null];
    const replicas =
      waitErr ?? (Number.isSafeInteger(waitReply) ? (waitReply as number) : new Error(`WAIT replied ${String(waitReply)}`));
    const again: AdmitJob[] = [];
    let redirected = false;
    batch.forEach((j, i) => {
      const [err, reply] = res[i] ?? [new Error("no reply to the admission"), null];
      if (!err) {
        // The batch form with one entry: [id], or [backlog] when the bound refused it.
        const [item] = Array.isArray(reply) ? reply : [undefined];
        if (typeof item === "string" || Buffer.isBuffer(item)) return j.resolve({ entryId: String(item), replicas });
        if (typeof item === "number") return j.reject(new AdmitRefused(Math.max(0, item)));
        return j.reject(new Error(`the admission script returned ${JSON.stringify(reply)}`));
      }
      const msg = errMessage(err);
      j.lastError = err;
      if (!j.useEval && msg.startsWith("NOSCRIPT")) {
        j.useEval = true;
        again.push(j);
      } else if (conn instanceof Cluster && NOT_EXECUTED.test(msg)) {
        redirected = true;
        again.push(j);
      } else {
        j.reject(err);
      }
    });
    if (!again.length) return;
    this.holdBehind(again);
    if (redirected) await this.redirect(conn as Cluster, again);
    else this.release(again);
  }

  /**
   * Holds back every admission of the partitions of `jobs` (about to go round
   * again) that is queued now or submitted until {@link release}: taken out
   * of their queues, kept in order.
   */
  private holdBehind(jobs: AdmitJob[]): void {
    const streams = new Set(jobs.map((j) => j.keys[0]));
    for (const st of streams) if (!this.heldAdmits.has(st)) this.heldAdmits.set(st, []);
    for (const q of this.admitQueues.values()) {
      const keep: AdmitJob[] = [];
      for (const j of q.jobs) (streams.has(j.keys[0]) ? this.heldAdmits.get(j.keys[0])! : keep).push(j);
      q.jobs = keep;
    }
  }

  /** Queues `jobs` again, each partition's held admissions after them, in order. */
  private release(jobs: AdmitJob[]): void {
    const streams = [...new Set(jobs.map((j) => j.keys[0]))];
    const held = streams.flatMap((st) => {
      const h = this.heldAdmits.get(st) ?? [];
      this.heldAdmits.delete(st);
      return h;
    });
    for (const j of [...jobs, ...held]) this.enqueueAdmit(j);
  }

  /**
   * Refreshes the slots, waits a little (as ioredis's retryDelayOnMoved /
   * OnClusterDown: a failover settles), and queues `jobs` again (each joins
   * the batch of its slot's node now); a job redirected too often fails with its last reply.
   */
  private async redirect(conn: Cluster, jobs: AdmitJob[]): Promise<void> {
    await new Promise<void>((r) => conn.refreshSlotsCache(() => r()));
    await sleep(100);
    const again: AdmitJob[] = [];
    for (const j of jobs) {
      if (this.closed) j.reject(new WritClosedError());
      else if (j.lastError instanceof Error && j.lastError.message.startsWith("NOSCRIPT")) again.push(j);
      else if (++j.redirects > MAX_REDIRECTIONS) j.reject(j.lastError);
      else again.push(j);
    }
    this.release(again);
    // A partition none of whose jobs goes again still lets its held ones go.
    const left = new Set(again.map((j) => j.keys[0]));
    for (const st of new Set(jobs.map((j) => j.keys[0]))) {
      if (left.has(st)) continue;
      const held = this.heldAdmits.get(st) ?? [];
      this.heldAdmits.delete(st);
      for (const j of held) this.enqueueAdmit(j);
    }
  }
}
