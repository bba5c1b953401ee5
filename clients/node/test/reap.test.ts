// The harness's promise that no server outlives its test process, checked
// where no exit handler can keep it: the process is killed with SIGKILL (a CI
// time limit, an OOM kill). Its redis-server, SecantusDB and writ serve must
// die with it (harness.ts, PDEATHSIG).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { PACKAGE_ROOT, spawnReaped } from "./harness.js";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Whether `pid` is gone: no such process, or a zombie nobody reaped yet. */
function gone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The state follows the command name, which is in parentheses.
    const state = stat.slice(stat.lastIndexOf(")") + 1).trim()[0];
    return state === "Z" || state === "X";
  } catch {
    return true;
  }
}

test("a test process killed with SIGKILL takes its servers with it", async () => {
  const setpriv = spawnSync("sh", ["-c", "command -v setpriv"], { stdio: "ignore" }).status === 0;
  assert.ok(setpriv, "setpriv not found: the harness needs it to tie servers to the test process; sudo apt-get install util-linux");
  const child = spawnReaped(process.execPath, [join(PACKAGE_ROOT, "build", "test", "reap-child.js")], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const pids = await new Promise<number[]>((resolvePids, reject) => {
    let out = "";
    child.stdout!.on("data", (d) => {
      out += d;
      const m = /PIDS ([\d ]+)\n/.exec(out);
      if (m) resolvePids(m[1].trim().split(" ").map(Number));
    });
    child.once("exit", (code, sig) => reject(new Error(`the child exited (${code ?? sig}) before it printed its servers' pids`)));
  });
  assert.ok(pids.length > 0);
  for (const p of pids) assert.ok(!gone(p), `server ${p} is not running before the kill`);
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGKILL");
  await exited;
  const deadline = Date.now() + 30000;
  let left = pids;
  while (left.length && Date.now() < deadline) {
    await sleep(50);
    left = pids.filter((p) => !gone(p));
  }
  for (const p of left) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      /* gone meanwhile */
    }
  }
  assert.deepEqual(left, [], `processes ${left.join(", ")} outlived the test process that started them by 30 s`);
});
