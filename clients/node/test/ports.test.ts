// The harness's promise that a test talks to its own servers: a port another
// process took between freePort() and the server's bind (a parallel test's
// server, say) is detected, and the server is started on another port. The
// race cannot be provoked on demand, so these tests hand the harness a port
// that is already taken.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { freePort, MongoServer, mongoPid, RedisServer, redisPid } from "./harness.js";

function scratch(t: { after(fn: () => void): void }, name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `writ-node-ports-${name}-`));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test("redis-server moves off a port another server holds", async (t) => {
  const first = await RedisServer.start(scratch(t, "r1"));
  t.after(() => first.stop());
  const second = await RedisServer.start(scratch(t, "r2"), [first.port, await freePort()]);
  t.after(() => second.stop());
  assert.notEqual(second.port, first.port, "the harness took the first server's port for its own");
  assert.equal(await redisPid(second.port), second.proc.pid);
  assert.equal(await redisPid(first.port), first.proc.pid);
});

test("SecantusDB moves off a port another server holds", async (t) => {
  const first = await MongoServer.start(scratch(t, "m1"));
  t.after(() => first.stop());
  const second = await MongoServer.start(scratch(t, "m2"), [first.port, await freePort()]);
  t.after(() => second.stop());
  assert.notEqual(second.port, first.port, "the harness took the first server's port for its own");
  assert.equal(await mongoPid(second.uri), second.proc.pid);
  assert.equal(await mongoPid(first.uri), first.proc.pid);
});
