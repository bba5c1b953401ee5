// The built package loads through its `exports` map both ways: `import`
// gets dist/esm, `require` gets dist/cjs, and the types are there.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { spawnSync } from "node:child_process";
import { join } from "node:path";

import { PACKAGE_ROOT } from "./harness.js";

const pkg = JSON.parse(readFileSync(join(PACKAGE_ROOT, "package.json"), "utf8"));
const API = ["setup", "waitForInit", "dispose", "WritClient", "createAdapters", "BackpressureError", "WritTimeoutError", "PendingFullError",
  "WritConnectionError", "RedisFullError", "RefusedWriteError", "WritKeyError", "WritConfigError", "canonicalKey",
  "partitionOf"];

test("require() loads the CommonJS build", () => {
  const require = createRequire(join(PACKAGE_ROOT, "package.json"));
  assert.equal(require.resolve(pkg.name), join(PACKAGE_ROOT, "dist", "cjs", "index.js"));
  const m = require(pkg.name);
  for (const name of API) assert.equal(typeof m[name], "function", `CJS export ${name}`);
  assert.equal(typeof m.PRESET_COLLECTIONS, "object");
  const c = new m.WritClient({ redisUrl: "redis://127.0.0.1:1" });
  assert.equal(c.config.collections.length, 17);
  return c.close();
});

test("import() loads the ES module build", () => {
  // Evaluated from the package root, so the package resolves itself by name.
  const code = `const m = await import(${JSON.stringify(pkg.name)});
    console.log(JSON.stringify({ url: import.meta.resolve(${JSON.stringify(pkg.name)}),
      fns: Object.keys(m).filter((k) => typeof m[k] === "function") }));`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", code], { cwd: PACKAGE_ROOT, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.ok(out.url.endsWith("/dist/esm/index.js"), out.url);
  for (const name of API) assert.ok(out.fns.includes(name), `ESM export ${name}`);
});

test("type declarations are built and exports maps import, require and types", () => {
  const e = pkg.exports["."];
  assert.deepEqual(Object.keys(e).sort(), ["import", "require", "types"]);
  for (const k of ["import", "require", "types"]) assert.ok(existsSync(join(PACKAGE_ROOT, e[k])), `${k}: ${e[k]}`);
  const dts = readFileSync(join(PACKAGE_ROOT, e.types), "utf8");
  assert.match(dts, /setup/);
  assert.match(readFileSync(join(PACKAGE_ROOT, "dist", "types", "types.d.ts"), "utf8"), /interface IPersistSignalInstance/);
  assert.equal(JSON.parse(readFileSync(join(PACKAGE_ROOT, "dist", "esm", "package.json"), "utf8")).type, "module");
  assert.equal(JSON.parse(readFileSync(join(PACKAGE_ROOT, "dist", "cjs", "package.json"), "utf8")).type, "commonjs");
  assert.deepEqual(Object.keys(pkg.dependencies).sort(), ["bson", "cluster-key-slot", "ioredis", "mongodb"]);
  assert.equal(pkg.peerDependenciesMeta["backtest-kit"].optional, true);
});
