// Child process of test/reap.test.ts: starts a test env (redis-server,
// SecantusDB, writ serve), prints their pids, then idles until it is killed.
import { TestEnv } from "./harness.js";

const env = await TestEnv.start("reap");
const pids = [env.redis?.proc.pid, env.mongo?.proc.pid, env.writ?.proc.pid].filter(
  (p): p is number => typeof p === "number",
);
process.stdout.write(`PIDS ${pids.join(" ")}\n`);
setInterval(() => {}, 1 << 30);
