// The canonical-key size limit (docs/protocol.md §1), without servers: a key
// whose canonical form is over MAX_KEY_BYTES bytes of UTF-8, escapes included,
// is refused with WritKeyError; one at the limit is accepted.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { canonicalKey, keyValues, MAX_KEY_BYTES, type CollectionSpec } from "../src/key.js";
import { WritKeyError } from "../src/errors.js";
import { REPO_ROOT } from "./harness.js";

// One string field: the canonical key `["<s>"]` is the escaped string plus 4 bytes.
const spec: CollectionSpec = { name: "kv-items", key: ["k"] };
const bytesOf = (s: string) => Buffer.byteLength(s, "utf8");

function refused(key: Record<string, unknown>, bytes: number, what: string): void {
  assert.throws(
    () => keyValues(spec, key),
    (e: unknown) =>
      e instanceof WritKeyError &&
      e.message.includes("kv-items") &&
      e.message.includes(`${bytes} bytes`) &&
      e.message.includes(`limit of ${MAX_KEY_BYTES} bytes`),
    what,
  );
}

test("the limit is the daemon's (src/protocol/key.rs)", () => {
  const rust = readFileSync(join(REPO_ROOT, "src", "protocol", "key.rs"), "utf8");
  const m = /pub const MAX_KEY_BYTES: usize = (\d+);/.exec(rust);
  assert.ok(m, "MAX_KEY_BYTES in src/protocol/key.rs");
  assert.equal(MAX_KEY_BYTES, Number(m[1]));
  assert.equal(MAX_KEY_BYTES, 1024);
});

test("a canonical key of exactly the limit is accepted, one byte more is refused", () => {
  const atLimit = "x".repeat(MAX_KEY_BYTES - 4);
  assert.equal(bytesOf(canonicalKey(spec, { k: atLimit })), MAX_KEY_BYTES);
  refused({ k: atLimit + "x" }, MAX_KEY_BYTES + 1, "one byte over");
  refused({ k: "x".repeat(100_000) }, 100_004, "a 100 KB key");
});

test("the limit counts UTF-8 bytes after escaping, not characters", () => {
  const room = MAX_KEY_BYTES - 4; // 1020 bytes for the escaped string
  // U+0001 is written \u0001: 6 bytes each.
  assert.equal(bytesOf(canonicalKey(spec, { k: "\u0001".repeat(room / 6) })), MAX_KEY_BYTES);
  refused({ k: "\u0001".repeat(room / 6 + 1) }, MAX_KEY_BYTES + 6, "171 control characters");
  // `"` is written \": 2 bytes each; é is 2 bytes of UTF-8; 😀 is 4.
  for (const [ch, width] of [['"', 2], ["é", 2], ["😀", 4]] as const) {
    assert.equal(bytesOf(canonicalKey(spec, { k: ch.repeat(room / width) })), MAX_KEY_BYTES, ch);
    refused({ k: ch.repeat(room / width + 1) }, MAX_KEY_BYTES + width, `${ch} over`);
  }
});

test("integers and booleans count too, across several key fields", () => {
  const multi: CollectionSpec = { name: "kv-items", key: ["a", "n", "b"] };
  // `["<a>",-9007199254740991,true]`: the string plus 27 bytes.
  const n = -Number.MAX_SAFE_INTEGER;
  const a = "y".repeat(MAX_KEY_BYTES - 27);
  assert.equal(bytesOf(canonicalKey(multi, { a, n, b: true })), MAX_KEY_BYTES);
  assert.throws(() => keyValues(multi, { a, n, b: false }), WritKeyError, "false is one byte longer than true");
});
