// Child process of test/crash.test.ts: sets up the adapters (the mode given
// as the third argument, submit by default; config from WRIT_* env), runs the crash plan's writes, prints WROTE once
// every write call has returned, then idles until it is killed (SIGKILL).
import { setup } from "../src/setup.js";
import { FakeKit } from "./fakekit.js";
import { crashPlan } from "./crash-plan.js";

const [tag, base, mode] = process.argv.slice(2);
const kit = new FakeKit();
setup({ mode: mode === "ack" ? "ack" : "submit" }, kit.adapters);
const plan = crashPlan(tag, Number(base));
for (const [domain, args, method, ...margs] of plan.writes) {
  await kit.call(domain, args, method, ...margs);
}
process.stdout.write(`WROTE ${plan.writes.length}\n`);
setInterval(() => {}, 1 << 30);
