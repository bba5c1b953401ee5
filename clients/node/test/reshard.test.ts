// A live resharding of Redis Cluster (docs/operations.md "Redis Cluster"):
// one partition's slot (or a writer's ack stream's) moves to another
// master, key by key, while two processes write to the partition (one with
// minReplicasAcked 1, one without) and the writ daemon applies them. Every write is accepted, lands once, keeps its
// key's order, and is applied; the daemon's lease, fence and cache move
// with the slot.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import calculateSlot from "cluster-key-slot";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { WritClient } from "../src/client.js";
import { sleep } from "../src/util.js";
import { TestEnv } from "./harness.js";

const SIGNAL = "signal-items";

/**
 * Moves `slot` from its master to the master on `toPort` as
 * `redis-cli --cluster reshard` does: IMPORTING / MIGRATING, then MIGRATE
 * its keys `batch` at a time (`pauseMs` between batches, so that writes run
 * mid-move; `midway` is called once half of them moved), the keys in `first`
 * first, in that order (redis-cli's order is the server's), then SETSLOT NODE
 * on the target, the source and the other masters (`masters`: all of them).
 * Returns the keys moved.
 */
async function moveSlot(
  masters: number[],
  slot: number,
  move: { fromPort: number; toPort: number; batch: number; pauseMs: number; first: string[]; midway: () => void },
): Promise<number> {
  const conns = new Map(masters.map((p) => [p, new Redis(p, "127.0.0.1")]));
  try {
    const id = async (p: number) => String(await conns.get(p)!.call("CLUSTER", "MYID"));
    const [fromId, toId] = [await id(move.fromPort), await id(move.toPort)];
    const [from, to] = [conns.get(move.fromPort)!, conns.get(move.toPort)!];
    await to.call("CLUSTER", "SETSLOT", slot, "IMPORTING", fromId);
    await from.call("CLUSTER", "SETSLOT", slot, "MIGRATING", toId);
    const all = (await from.call("CLUSTER", "GETKEYSINSLOT", slot, 1000000)) as string[];
    const total = all.length;
    let moved = 0;
    let called = false;
    for (;;) {
      // Keys written meanwhile are found by the next GETKEYSINSLOT.
      const left = (await from.call("CLUSTER", "GETKEYSINSLOT", slot, 1000000)) as string[];
      const here = new Set(left);
      const first = move.first.filter((k) => here.has(k));
      const firstSet = new Set(first);
      const keys = [...first, ...left.filter((k) => !firstSet.has(k))].slice(0, move.batch);
      if (!keys.length) break;
      await from.call("MIGRATE", "127.0.0.1", move.toPort, "", 0, 5000, "KEYS", ...keys);
      moved += keys.length;
      if (!called && moved * 2 >= total) {
        called = true;
        move.midway();
      }
      await sleep(move.pauseMs);
    }
    await to.call("CLUSTER", "SETSLOT", slot, "NODE", toId);
    await from.call("CLUSTER", "SETSLOT", slot, "NODE", toId);
    for (const [p, c] of conns) if (p !== move.toPort && p !== move.fromPort) await c.call("CLUSTER", "SETSLOT", slot, "NODE", toId);
    return moved;
  } finally {
    for (const c of conns.values()) c.disconnect();
  }
}

describe("Redis Cluster: a partition's slot moves while writes flow", () => {
  let env: TestEnv;
  const clients: WritClient[] = [];

  before(async () => {
    env = await TestEnv.start("reshard", { redisCluster: true });
  });

  after(async () => {
    for (const c of clients) await c.close();
    await env?.stop();
  });

  /**
   * Moves a slot while ten keys of partition `p` are written; `order`: which
   * slot, and which keys move first. "cold": `p`'s slot, the cache entries of
   * 200 keys written before first, so the keys the writes touch (their cache
   * entries, the stream, the partition's meta, lease and fence) stay on the
   * old master, MIGRATING, while the writes go on. "stream": `p`'s slot, the
   * stream first, so that every admission and every read of the daemon is
   * refused (TRYAGAIN) until the move is done. "acks": the slot of a
   * writer's ack stream.
   */
  const reshard = (p: number, order: "cold" | "stream" | "acks") =>
    env.guard(async () => {
      // What the clients report besides their calls' results: a lost-ack
      // sweep that settled writes whose acks never arrived says so here, and
      // flush() would pass all the same.
      const reports: string[] = [];
      const cfg = (extra: Record<string, unknown>) =>
        env.clientConfig({ replicaAckTimeoutMs: 2000, onError: (e: Error) => reports.push(e.message), ...extra });
      const replicated = new WritClient(cfg({ minReplicasAcked: 1 }));
      const plain = new WritClient(cfg({}));
      clients.push(replicated, plain);
      const inP: Record<string, unknown>[] = [];
      for (let i = 0; inP.length < 210; i++) {
        const key = { symbol: `rs${order}${i}`, strategyName: "s", exchangeName: "e" };
        if (plain.resolveKey(SIGNAL, key).partition === p) inP.push(key);
      }
      // 200 cache entries in the slot, written before the move.
      const settled = inP.slice(10);
      await Promise.all(settled.map((key) => plain.submit(SIGNAL, key, "put", { payload: 0 })));
      await plain.flush();
      const stream = `${env.name}:{p${p}}:in`;
      const cold = settled.map((key) => plain.names.cache(p, SIGNAL, plain.resolveKey(SIGNAL, key).canonical));
      // "acks": the slot of the plain client's ack stream (no hash tag: any
      // slot; it holds the acks of the writes above), the stream first, then
      // 200 other keys of its slot. The acks of the writes below go through
      // the move, and flush() waits for them all.
      const acks = plain.names.acks(plain.clientId);
      const moving = order === "acks" ? acks : stream;
      const slot = calculateSlot(moving);
      const fromPort = await env.cluster!.masterOf(slot);
      let first = order === "cold" ? cold : [stream, ...cold];
      if (order === "acks") {
        const fill: string[] = [];
        for (let i = 0; fill.length < 200; i++) if (calculateSlot(`${env.name}:fill${i}`) === slot) fill.push(`${env.name}:fill${i}`);
        const node = new Redis(fromPort, "127.0.0.1");
        try {
          for (const k of fill) await node.set(k, "1");
        } finally {
          node.disconnect();
        }
        first = [acks, ...fill];
      }
      const masters = new Set(await Promise.all(Array.from({ length: 16 }, (_, i) => env.cluster!.masterOf(i * 1024))));
      const toPort = [...masters].find((port) => port !== fromPort)!;

      // Ten keys written in chains of 40, one write after another: three by a
      // client with minReplicasAcked 1, three by one without, and, from
      // half-way through the move, two each by two new clients (whose
      // admission records do not exist yet).
      const WRITES = 40;
      const errors: string[] = [];
      let started = 0;
      const chain = async (c: WritClient, k: number) => {
        for (let n = 1; n <= WRITES; n++) {
          started++;
          await c.submit(SIGNAL, inP[k], "put", { payload: n }).catch((e: unknown) => {
            errors.push(`key ${k} write ${n}: ${(e as Error).message}`);
          });
          await sleep(5);
        }
      };
      const chains = [0, 1, 2].map((k) => chain(replicated, k)).concat([3, 4, 5].map((k) => chain(plain, k)));
      while (started < 30) await sleep(5);
      const late = [new WritClient(cfg({ minReplicasAcked: 1 })), new WritClient(cfg({}))];
      clients.push(...late);
      const moved = await moveSlot(
        [...masters],
        slot,
        { fromPort, toPort, batch: 10, pauseMs: 150, first, midway: () => chains.push(chain(late[0], 6), chain(late[0], 7), chain(late[1], 8), chain(late[1], 9)) },
      );
      await Promise.all(chains);
      console.log(`# reshard (${order} first): ${moved} keys moved from ${fromPort} to ${toPort} while ${started} writes were made`);
      assert.deepEqual(errors, [], "no write failed");
      assert.equal(await env.cluster!.masterOf(slot), toPort, "the slot moved");
      for (const c of [replicated, plain, ...late]) await c.flush();
      assert.deepEqual(reports.filter((r) => /never arrived/.test(r)), [], "every ack arrived (none settled by the lost-ack sweep)");
      // Once each: the stream holds one entry per write (none trimmed yet).
      const target = new Redis(await env.cluster!.masterOf(calculateSlot(stream)), "127.0.0.1");
      try {
        assert.equal(await target.xlen(stream), settled.length + WRITES * 10, "one entry per write");
      } finally {
        target.disconnect();
      }
      // Applied, each key's last write last: a new process reads them.
      const reader = new WritClient(env.clientConfig({}));
      clients.push(reader);
      await reader.sync();
      for (let k = 0; k < 10; k++) assert.equal((await reader.read(SIGNAL, inP[k]))?.payload, WRITES, `key ${k}`);
      for (const key of settled.slice(0, 20)) assert.equal((await reader.read(SIGNAL, key))?.payload, 0);
      // The daemon retried what the move refused, and nothing else went wrong.
      const errorLines = readFileSync(join(env.dir, "writ.log"), "utf8").split("\n").filter((l) => / ERROR /.test(l));
      assert.deepEqual(errorLines, [], "the daemon logged no error");
    });

  test("cold keys first: every write is accepted, lands once, in order, and is applied", () => reshard(0, "cold"));
  test("the stream first: every write waits for the move, then lands once, in order, and is applied", () => reshard(1, "stream"));
  test("a writer's ack stream moves: its acks still arrive", () => reshard(2, "acks"));
});
