/**
 * The published `@backtest-kit/mongo` 20.1.0 (its build, vendored in
 * test/vendor: see NOTICE.md there), loaded with its imports mapped and
 * started against a test environment's servers. Used by
 * `test/official.test.ts` (each package reads what the other wrote) and by
 * `bench/tick.ts` (the official adapter as the bench's reference).
 *
 * Importing this module unrefs every `setInterval` of the process: the
 * official package pings Redis every 30 s from an interval it never clears,
 * which would keep a test or bench process alive after its servers stopped.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

import { PACKAGE_ROOT } from "./harness.js";

export const VENDORED = join(PACKAGE_ROOT, "test", "vendor", "backtest-kit-mongo-20.1.0", "index.mjs");
export const VENDORED_SHA256 = "09d4560bd593e4683c601a9644772e444d0b300e93fb7dded8c5d6010e5c528f";

const realSetInterval = globalThis.setInterval;
globalThis.setInterval = ((...args: Parameters<typeof setInterval>) => realSetInterval(...args).unref()) as typeof setInterval;

/**
 * Runs `fn` with `setTimeout` unref'd: the official package's waitForInit
 * races its connections against 15 s timeouts it does not clear.
 */
export async function withUnrefTimeouts<T>(fn: () => Promise<T>): Promise<T> {
  const real = globalThis.setTimeout;
  globalThis.setTimeout = ((...args: Parameters<typeof setTimeout>) => real(...args).unref()) as typeof setTimeout;
  try {
    return await fn();
  } finally {
    globalThis.setTimeout = real;
  }
}

/** Loads the vendored build with its imports mapped (NOTICE.md). */
export async function loadOfficial(dir: string): Promise<any> {
  const bytes = readFileSync(VENDORED);
  assert.equal(createHash("sha256").update(bytes).digest("hex"), VENDORED_SHA256, `${VENDORED} is the published build`);
  const stubs = new URL("./official-stubs.js", import.meta.url).href;
  const imports: Record<string, string> = {
    "backtest-kit": stubs,
    "di-factory": stubs,
    "functools-kit": import.meta.resolve("functools-kit"),
    "di-kit": import.meta.resolve("di-kit"),
    mongoose: import.meta.resolve("mongoose"),
    ioredis: import.meta.resolve("ioredis"),
  };
  let text = bytes.toString("utf8");
  for (const [name, url] of Object.entries(imports)) {
    const from = ` from '${name}';`;
    assert.ok(text.includes(from), `the build imports ${name}`);
    text = text.replace(from, ` from ${JSON.stringify(url)};`);
  }
  assert.doesNotMatch(text, /^import [^;]* from '[^'.][^']*';$/m, "every package the build imports is mapped");
  const file = join(dir, "backtest-kit-mongo-20.1.0.mjs");
  writeFileSync(file, text);
  return import(pathToFileURL(file).href);
}

/**
 * `uri` with its database path set to `db` (the official package's
 * CC_MONGO_CONNECTION_STRING). The path's database is also the default auth
 * source, so a URI with credentials and no `authSource` keeps the one it had:
 * the database its path named, else `admin`. (A mechanism whose source is
 * `$external`, named by `authMechanism`, is left to its default.)
 */
export function withDatabase(uri: string, db: string): string {
  const [scheme, rest] = uri.split("://");
  const q = rest.indexOf("?");
  const base = q < 0 ? rest : rest.slice(0, q);
  const query = q < 0 ? "" : rest.slice(q + 1);
  const slash = base.indexOf("/");
  const host = slash < 0 ? base : base.slice(0, slash);
  const params = query.split("&").filter((p) => p !== "");
  const option = (name: string) =>
    params.find((p) => p.split("=")[0].toLowerCase() === name.toLowerCase())?.split("=")[1];
  const mechanism = option("authMechanism");
  if (host.includes("@") && option("authSource") === undefined && (mechanism === undefined || /^(SCRAM-|DEFAULT$)/i.test(mechanism))) {
    const original = slash < 0 ? "" : base.slice(slash + 1);
    params.push(`authSource=${original === "" ? "admin" : original}`);
  }
  return `${scheme}://${host}/${db}${params.length === 0 ? "" : `?${params.join("&")}`}`;
}

/** Servers for {@link startOfficial}. */
export interface OfficialServers {
  /** Where the loaded build is written (a temp dir). */
  dir: string;
  redisUrl: string;
  mongoUri: string;
}

/**
 * Loads the build, points it at `servers` (its documents in database `db`)
 * and waits for its connections. Its adapter classes are then in
 * `officialKit` (test/official-stubs.ts). One per process: the build keeps
 * module-level state (mongoose's default connection).
 */
export async function startOfficial(servers: OfficialServers, db: string): Promise<any> {
  const official = await loadOfficial(servers.dir);
  const redis = new URL(servers.redisUrl);
  official.setup({
    CC_MONGO_CONNECTION_STRING: withDatabase(servers.mongoUri, db),
    CC_REDIS_HOST: redis.hostname,
    CC_REDIS_PORT: Number(redis.port || 6379),
    CC_REDIS_USER: decodeURIComponent(redis.username),
    CC_REDIS_PASSWORD: decodeURIComponent(redis.password),
  });
  await withUnrefTimeouts(() => official.waitForInit());
  return official;
}

/** Closes what {@link startOfficial} opened. */
export async function stopOfficial(official: any): Promise<void> {
  await (await official.getMongo()).disconnect();
  official.getRedis().disconnect();
}
