// Reads go only to a primary: a direct connection (directConnection=true)
// to a primary that steps down is followed, not read as a secondary. An env
// of its own, with no daemon: the test steps its SecantusDB down, which
// would upset the shared env of core.test.ts.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { MongoClient } from "mongodb";

import { WritClient } from "../src/client.js";
import { WritConnectionError } from "../src/errors.js";
import type { CollectionSpec } from "../src/key.js";
import { sleep } from "../src/util.js";
import { eventually, TestEnv } from "./harness.js";

const KV: CollectionSpec = { name: "node_kv", key: ["k", "n"] };

/**
 * The `replSetStepDown` window, in seconds. SecantusDB (a one-node replica
 * set) is a secondary that serves reads for exactly this long, then the
 * primary again (it has no `replSetStepUp` / `replSetFreeze`): long enough
 * for the driver's heartbeats (every 500 ms here) to see it, short enough
 * that the test also sees reads go on once it is the primary again.
 */
const WINDOW_S = 10;

let env: TestEnv;
const clients: WritClient[] = [];

before(async () => {
  env = await TestEnv.start("primary", { daemon: false });
});

after(async () => {
  try {
    for (const c of clients) await c.close();
  } finally {
    await env?.stop();
  }
});

test("a direct connection to a primary that steps down: reads are refused while it is a secondary, and go on once it is the primary again", () =>
  env.guard(async () => {
    const key = { k: "stepdown", n: 1 };
    if (!env.mongo) {
      // A step-down would disturb everything else that uses that server.
      console.error("a shared MongoDB (WRIT_TEST_MONGODB_URI): not stepped down; checking only that the primary is read");
      const c = new WritClient(env.clientConfig({ collections: [KV] }));
      clients.push(c);
      assert.equal(await c.read(KV.name, key), null);
      return;
    }
    assert.match(env.mongoUri, /[?&]directConnection=true(&|$)/, "the harness connects directly");
    const c = new WritClient(env.clientConfig({ collections: [KV], mongodbUri: `${env.mongoUri}&heartbeatFrequencyMS=500` }));
    clients.push(c);
    // A key never written: every read of it reads MongoDB (nothing goes to the cache).
    assert.equal(await c.read(KV.name, key), null, "the first use's check passes: the server is the primary");
    assert.deepEqual(await c.list(KV.name, { k: "stepdown" }), []);

    const admin = new MongoClient(env.mongoUri, { serverSelectionTimeoutMS: 5000 });
    try {
      const stepped = await admin.db("admin").command({ replSetStepDown: WINDOW_S, force: true });
      const windowEnds = Date.now() + WINDOW_S * 1000;
      assert.equal(stepped.ok, 1, "the test's SecantusDB steps down");
      const hello = await admin.db("admin").command({ hello: 1 });
      assert.equal(hello.isWritablePrimary, false, "a secondary now");
      assert.equal(hello.secondary, true, "a secondary now");

      // Within a heartbeat or so the client knows, and refuses instead of reading the secondary.
      let refused: unknown;
      while (refused === undefined) {
        try {
          await c.read(KV.name, key);
        } catch (e) {
          refused = e;
          break;
        }
        assert.ok(
          Date.now() < windowEnds - 2000,
          `every read for ${WINDOW_S - 2} s of the step-down window was answered by the secondary: none was refused`,
        );
        await sleep(20);
      }
      assert.ok(refused instanceof WritConnectionError, `a WritConnectionError (retry later), not ${String(refused)}`);
      const message = (refused as Error).message;
      // Refused before the read went out (the driver had seen the change), or
      // after it came back (the change arrived while it was out): both are
      // refusals, and which one depends on where a heartbeat lands.
      assert.match(message, new RegExp(`\\(127\\.0\\.0\\.1:${env.mongo.port}\\) (is no longer|stopped being) the primary`), message);
      assert.match(message, /secondary/, message);
      assert.match(message, /directConnection=true/, message);
      // Lists too (the lost-ack sweep's reads go the same way: every MongoDB read does).
      await assert.rejects(
        c.list(KV.name, { k: "stepdown" }),
        (e: unknown) => e instanceof WritConnectionError && /(no longer|stopped being) the primary/.test((e as Error).message),
      );
      assert.ok(Date.now() < windowEnds, "refused within the window: the server was a secondary all along");

      // The window ends, the server is the primary again, and reads go on by themselves.
      await eventually("reads go on once the server is the primary again", WINDOW_S * 1000 + 20000, async () =>
        c.read(KV.name, key).then(
          (v) => v === null,
          (e: unknown) => {
            if (!(e instanceof WritConnectionError)) throw e;
            return false;
          },
        ),
      );
      assert.ok(Date.now() >= windowEnds - 1000, "read again only once the window is over");
      assert.deepEqual(await c.list(KV.name, { k: "stepdown" }), []);
    } finally {
      await admin.close();
    }
  }));
