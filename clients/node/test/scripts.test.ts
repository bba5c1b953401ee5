// The Lua scripts embedded in the package must be byte-identical to the
// daemon's (src/lua/*.lua): drift between client and daemon fails here.
// Fix: node scripts/embed-lua.mjs
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { ADMIT_LUA, CACHE_CAS_LUA, PARTITION_COUNT_LUA } from "../src/lua.js";
import { REPO_ROOT } from "./harness.js";

for (const [name, text] of [
  ["admit.lua", ADMIT_LUA],
  ["cache_cas.lua", CACHE_CAS_LUA],
  ["partition_count.lua", PARTITION_COUNT_LUA],
] as const) {
  test(`embedded ${name} is byte-identical to src/lua/${name}`, () => {
    const file = readFileSync(join(REPO_ROOT, "src", "lua", name));
    assert.ok(file.length > 0);
    assert.ok(Buffer.from(text, "utf8").equals(file), `src/lua/${name} changed: run node scripts/embed-lua.mjs in clients/node`);
  });
}
