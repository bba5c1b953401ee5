// Runs the compiled test files (build/test/*.test.js) with node's test runner.
// WRIT_NODE_TEST_CONCURRENCY: test files run at once (default 2; each starts its own servers).
// Arguments filter the files by substring: node scripts/run-tests.mjs adapters
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dir = join(root, "build", "test");
const filters = process.argv.slice(2);
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".test.js"))
  .filter((f) => !filters.length || filters.some((x) => f.includes(x)))
  .sort()
  .map((f) => join(dir, f));
if (!files.length) {
  console.error(`no test files in ${dir} match ${filters.join(" ")}`);
  process.exit(1);
}
const concurrency = process.env.WRIT_NODE_TEST_CONCURRENCY || "2";
// A test that hangs fails on its own, named, instead of using up CI's time
// (WRIT_NODE_TEST_TIMEOUT_MS; the slowest test here takes about 20 s).
const timeout = process.env.WRIT_NODE_TEST_TIMEOUT_MS || "300000";
const r = spawnSync(process.execPath, ["--test", `--test-concurrency=${concurrency}`, `--test-timeout=${timeout}`, ...files], {
  stdio: "inherit",
});
process.exit(r.status ?? 1);
