// Crash-restart: a child process writes through the adapters and is killed
// (SIGKILL) as soon as its writes returned; a new process must read back
// exactly that state after waitForInit(true). In submit mode, then the same
// with a kill -9 of `writ serve` first: the new process's sync waits for the
// restarted daemon to apply what the dead child left in the streams. In ack
// mode, the same twice, the second time with `writ serve` killed -9 after the
// writes returned and still down while the new process reads. Last, the
// harness's restart() after a kill -9 waits for the new daemon.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { MongoClient } from "mongodb";

import { setup } from "../src/setup.js";
import type { WritClient } from "../src/client.js";
import { FakeKit } from "./fakekit.js";
import { crashPlan, onlyTag } from "./crash-plan.js";
import { eventually, PACKAGE_ROOT, TestEnv } from "./harness.js";
import { WritTimeoutError } from "../src/errors.js";

let env: TestEnv;
const K2_SYMBOLS = Array.from({ length: 8 }, (_, i) => `k2-SYM${i}`);
const clients: WritClient[] = [];

before(async () => {
  env = await TestEnv.start("crash");
});
after(async () => {
  for (const c of clients) await c.close();
  await env?.stop();
});

/** Runs the child until it printed WROTE, then SIGKILLs it at once. */
async function writeAndDie(tag: string, base: number, mode: "submit" | "ack" = "submit"): Promise<void> {
  const child = spawn(process.execPath, [join(PACKAGE_ROOT, "build", "test", "crash-child.js"), tag, String(base), mode], {
    env: env.clientEnv(),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stderr!.on("data", (d) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.on("exit", (code, signal) => r({ code, signal })),
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (d) => {
      out += d;
      if (out.includes("WROTE")) {
        child.kill("SIGKILL");
        resolve();
      }
    });
    child.on("exit", () => reject(new Error(`child exited before writing: ${out}\n${err}`)));
  });
  const { signal } = await exited;
  assert.equal(signal, "SIGKILL", "the writer was killed, not exited");
}

async function readBack(tag: string, base: number): Promise<void> {
  const kit = new FakeKit();
  clients.push(setup(env.clientConfig({ mode: "submit" }), kit.adapters));
  for (const { call, expect } of crashPlan(tag, base).reads) {
    const [domain, args, method, ...margs] = call;
    const got = await kit.call(domain, args, method, ...margs);
    assert.deepEqual(onlyTag(tag, got), expect, `${domain}.${method}(${JSON.stringify(margs)}) of ${JSON.stringify(args)}`);
  }
  assert.ok(kit.inits[0][2], "the first call ran waitForInit(true)");
}

describe("crash-restart", () => {
  test("a writer killed right after its writes returned: a new process reads its state back", () => env.guard(async () => {
    const base = Date.now();
    await writeAndDie("k1", base);
    await readBack("k1", base);
  }));

  test("with writ serve killed (-9) too: the new process's sync waits for the restarted daemon", () => env.guard(async () => {
    const base = Date.now();
    await env.writ!.kill("SIGKILL");
    await writeAndDie("k2", base);
    // Nothing applied the child's writes yet.
    const mongo = new MongoClient(env.mongoUri);
    try {
      const n = await mongo.db(env.name).collection("signal-items").countDocuments({ symbol: { $in: K2_SYMBOLS } });
      assert.equal(n, 0, "no daemon ran, so MongoDB has none of the writes");
      const reading = readBack("k2", base);
      await env.writ!.restart();
      await reading;
      assert.equal(await mongo.db(env.name).collection("signal-items").countDocuments({ symbol: { $in: K2_SYMBOLS } }), 8);
    } finally {
      await mongo.close();
    }
  }));

  test("a first waitForInit(true) that failed does not skip the sync: the retry waits too", () => env.guard(async () => {
    const base = Date.now();
    await env.writ!.kill("SIGKILL");
    let down = true;
    try {
      await writeAndDie("k5", base);
      const kit = new FakeKit();
      clients.push(setup(env.clientConfig({ mode: "submit", syncTimeoutMs: 300 }), kit.adapters));
      const { call } = crashPlan("k5", base).reads[0];
      const [domain, args, method, ...margs] = call;
      // The sync times out while no daemon runs; backtest-kit then retries
      // with waitForInit(false), which must not read the old state either.
      await assert.rejects(kit.call(domain, args, method, ...margs), WritTimeoutError);
      await assert.rejects(kit.call(domain, args, method, ...margs), WritTimeoutError);
      assert.deepEqual(kit.inits.map(([, , initial]) => initial), [true, false]);
      await env.writ!.restart();
      down = false;
      await eventually("a sync within 300 ms once the daemon drained", 30000, async () =>
        kit.call(domain, args, method, ...margs).then(
          () => true,
          (e: unknown) => {
            if (e instanceof WritTimeoutError) return false;
            throw e;
          },
        ),
      );
      for (const { call: c, expect } of crashPlan("k5", base).reads) {
        const [d, a, m, ...ma] = c;
        assert.deepEqual(onlyTag("k5", await kit.call(d, a, m, ...ma)), expect, `${d}.${m} of ${JSON.stringify(a)}`);
      }
    } finally {
      if (down) await env.writ!.restart();
    }
  }));

  test("ack mode: a writer killed right after its writes returned: a new process reads its state back", () => env.guard(async () => {
    const base = Date.now();
    await writeAndDie("k3", base, "ack");
    await readBack("k3", base);
  }));

  test("ack mode, writ serve killed (-9) after the writes returned: a new process reads them while it is down", () => env.guard(async () => {
    const base = Date.now();
    await writeAndDie("k4", base, "ack");
    await env.writ!.kill("SIGKILL");
    try {
      await readBack("k4", base);
    } finally {
      await env.writ!.restart();
    }
  }));

  test("the harness: restart() right after a kill -9 returns once the new daemon owns every partition", () => env.guard(async () => {
    // The killed daemon's leases live on for up to the lease TTL, so "every
    // partition has an owner" was true at once, before the new daemon ran.
    const before = await env.writ!.status();
    const killed = new Set<string>(before.partitions.map((p: { owner: string }) => p.owner));
    await env.writ!.kill("SIGKILL");
    await env.writ!.restart();
    const after = await env.writ!.status();
    for (const p of after.partitions as { partition: number; owner: string | null }[]) {
      assert.ok(p.owner && !killed.has(p.owner), `partition ${p.partition} is owned by ${p.owner}, not by the new daemon`);
    }
  }));
});
