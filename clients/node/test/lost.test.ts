// A write's stream entry replaced by another's at the same id (a promoted
// replica whose clock is behind can give out a lost entry's id again): the
// lost-ack sweep must not take that entry for the write's. An env of its own,
// with no daemon: the test deletes a partition stream, which would upset the
// shared env of core.test.ts.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Redis } from "ioredis";

import { WritClient } from "../src/client.js";
import type { CollectionSpec } from "../src/key.js";
import { canonicalKey, Names, partitionOf } from "../src/key.js";
import { sleep } from "../src/util.js";
import { TestEnv } from "./harness.js";

const KV: CollectionSpec = { name: "node_kv", key: ["k", "n"] };

let env: TestEnv;
const clients: WritClient[] = [];

before(async () => {
  env = await TestEnv.start("lost", { daemon: false });
});

after(async () => {
  try {
    for (const c of clients) await c.close();
  } finally {
    await env?.stop();
  }
});

test("an entry another write added at a write's id does not settle it: it is settled lost, not applied", () =>
  env.guard(async () => {
    const s = new WritClient(env.clientConfig({ collections: [KV], mode: "submit", writeTimeoutMs: 300, lostWriteAfterMs: 1 }));
    clients.push(s);
    const key = { k: "same-id", n: 1 };
    const t = await s.write(KV.name, key, "put", { n: 1 });
    const names = new Names(env.name);
    const stream = names.stream(partitionOf(KV.name, canonicalKey(KV, key), env.partitions));
    const redis = new Redis(env.redisUrl);
    try {
      await redis.del(stream);
      await redis.xadd(stream, t.entryId, "v", "1", "client", "another-client", "req", "x.1");
      // Past that entry and holding nothing pending: as a daemon that finished it leaves the group.
      await redis.xgroup("CREATE", stream, names.group, "$");
    } finally {
      redis.disconnect();
    }
    const r = await Promise.race([t.acked, sleep(20000).then(() => undefined)]);
    assert.equal(r?.outcome, "lost", "taking the other write's entry for its own would settle it applied");
  }));
