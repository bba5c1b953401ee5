// Redis over TLS: the redisTls* options against TLS-only redis-servers
// (`--port 0 --tls-port P`) with a CA made with openssl, a writ daemon that
// reaches them with tls_ca_file (and a client certificate for mutual TLS),
// and SecantusDB. The Redis password is in every URL and must never show.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";

import { WritClient } from "../src/client.js";
import { resolveConfig } from "../src/config.js";
import { WritConfigError, WritConnectionError } from "../src/errors.js";
import type { CollectionSpec } from "../src/key.js";
import { TestCa, TestEnv } from "./harness.js";

const KV: CollectionSpec = { name: "tls_kv", key: ["k", "n"] };
const APPEND = `
[[collections]]
name = "tls_kv"
key = ["k", "n"]
`;
const PASSWORD = "tls-s3cret-pw";
/** A failing connection must fail within this, not hang. */
const FAIL_WITHIN_MS = 10000;

let caDir: string;
let ca: TestCa;
/** A CA that signed nothing the servers use. */
let otherCa: TestCa;
/** TLS-only redis-server, client certificates not checked. */
let plain: TestEnv;
/** TLS-only redis-server with `--tls-auth-clients yes`. */
let mutual: TestEnv;
const clients: WritClient[] = [];

function client(env: TestEnv, extra: Record<string, unknown> = {}): WritClient {
  const c = new WritClient(env.clientConfig({ collections: [KV], ...extra }));
  clients.push(c);
  return c;
}

/** Rejects if `p` has not settled within `ms`. */
async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** `p` rejects, within the bound, with a WritConnectionError matching `re` and free of the password. */
async function failsClearly(p: Promise<unknown>, re: RegExp): Promise<WritConnectionError> {
  const started = Date.now();
  let err: unknown;
  await within(FAIL_WITHIN_MS, "the failing connection", p).then(
    () => assert.fail("expected the connection to fail"),
    (e) => (err = e),
  );
  assert.ok(err instanceof WritConnectionError, `a WritConnectionError, got ${inspect(err)}`);
  assert.match(err.message, re);
  assert.ok(!inspect(err).includes(PASSWORD), `the password leaked: ${inspect(err)}`);
  assert.match(err.message, /rediss:\/\/\*\*\*@127\.0\.0\.1:\d+/, "names the redacted URL");
  assert.ok(Date.now() - started < FAIL_WITHIN_MS);
  return err;
}

before(async () => {
  caDir = mkdtempSync(join(tmpdir(), "writ-node-tlsca-"));
  ca = new TestCa(join(caDir, "ca"));
  otherCa = new TestCa(join(caDir, "other"));
  // One after the other: each starts SecantusDB and a daemon.
  plain = await TestEnv.start("tls", { append: APPEND, redisTls: { ca, authClients: "no", password: PASSWORD } });
  mutual = await TestEnv.start("mtls", { append: APPEND, redisTls: { ca, authClients: "yes", password: PASSWORD } });
});

after(async () => {
  for (const c of clients) await c.close();
  await plain?.stop();
  await mutual?.stop();
  if (caDir) rmSync(caDir, { recursive: true, force: true });
});

describe("redis TLS", () => {
  test("redisTlsCaFile: an acked write and a read of another client round-trip through a TLS-only redis-server", () =>
    plain.guard(async () => {
      assert.match(plain.redisUrl, /^rediss:\/\/:.+@127\.0\.0\.1:\d+$/);
      const w = client(plain, { mode: "ack", redisTlsCaFile: ca.ca });
      // The admission connection and the ack connection (a duplicate) both go over TLS.
      const t = await w.write(KV.name, { k: "tls", n: 1 }, "put", { price: 101.25, side: "long" });
      assert.equal((await t.acked).outcome, "applied");
      const r = client(plain, { redisTlsCaFile: ca.ca });
      const rec = await r.readRecord(KV.name, { k: "tls", n: 1 });
      assert.ok(rec, "the other client reads the write");
      assert.equal(rec.source, "cache");
      assert.deepEqual(rec.doc!.payload, { price: 101.25, side: "long" });
    }));

  test("the server takes TLS only: a redis:// URL to it fails, bounded", () =>
    plain.guard(async () => {
      const c = client(plain, { redisUrl: plain.redisUrl.replace(/^rediss:/, "redis:") });
      const started = Date.now();
      await assert.rejects(within(FAIL_WITHIN_MS, "plain connect", c.ready()), WritConnectionError);
      assert.ok(Date.now() - started < FAIL_WITHIN_MS);
    }));

  test("without redisTlsCaFile (Node's default CAs) the connection fails at once, saying to set it; no password", () =>
    plain.guard(async () => {
      const c = client(plain);
      const e = await failsClearly(c.ready(), /certificate/i);
      assert.match(e.message, /set redisTlsCaFile \(WRIT_REDIS_TLS_CA_FILE\)/);
      // A write fails the same way (nothing is accepted).
      await failsClearly(c.write(KV.name, { k: "tls", n: 2 }, "put", { x: 1 }), /redisTlsCaFile/);
    }));

  test("with the wrong CA in redisTlsCaFile the connection fails, naming the file", () =>
    plain.guard(async () => {
      const c = client(plain, { redisTlsCaFile: otherCa.ca });
      const e = await failsClearly(c.ready(), /certificate/i);
      assert.ok(e.message.includes(`does redisTlsCaFile (${otherCa.ca}) hold the CA`), e.message);
    }));

  test("mutual TLS (tls-auth-clients yes): works with redisTlsCertFile + redisTlsKeyFile", () =>
    mutual.guard(async () => {
      const tls = { redisTlsCaFile: ca.ca, redisTlsCertFile: ca.clientCert, redisTlsKeyFile: ca.clientKey };
      const w = client(mutual, { mode: "ack", ...tls });
      const t = await w.write(KV.name, { k: "mtls", n: 1 }, "put", { qty: 3 });
      assert.equal((await t.acked).outcome, "applied");
      const rec = await client(mutual, tls).readRecord(KV.name, { k: "mtls", n: 1 });
      assert.equal(rec?.source, "cache");
      assert.deepEqual(rec?.doc!.payload, { qty: 3 });
    }));

  test("mutual TLS: without a client certificate the connection fails, bounded, saying what to set", () =>
    mutual.guard(async () => {
      const c = client(mutual, { redisTlsCaFile: ca.ca });
      const e = await failsClearly(c.ready(), /certificate required|alert|ECONNRESET|socket/i);
      assert.match(e.message, /set redisTlsCertFile and redisTlsKeyFile/);
    }));
});

describe("redis TLS config", () => {
  const rediss = `rediss://:${PASSWORD}@127.0.0.1:6380`;

  test("the keys, their WRIT_/CC_WRIT_ env variables, explicit over env", () => {
    const c = resolveConfig({ redisUrl: rediss }, {
      WRIT_REDIS_TLS_CA_FILE: "/env/ca.pem",
      CC_WRIT_REDIS_TLS_CERT_FILE: "/cc/client.pem",
      WRIT_REDIS_TLS_KEY_FILE: "/env/client.key",
      CC_WRIT_REDIS_TLS_KEY_FILE: "/cc/client.key",
    });
    assert.equal(c.redisTlsCaFile, "/env/ca.pem");
    assert.equal(c.redisTlsCertFile, "/cc/client.pem");
    assert.equal(c.redisTlsKeyFile, "/env/client.key", "WRIT_ wins over CC_WRIT_");
    const x = resolveConfig({ redisUrl: rediss, redisTlsCaFile: "/x/ca.pem" }, { WRIT_REDIS_TLS_CA_FILE: "/env/ca.pem" });
    assert.equal(x.redisTlsCaFile, "/x/ca.pem");
    const none = resolveConfig({ redisUrl: rediss }, {});
    assert.equal(none.redisTlsCaFile, undefined);
    assert.equal(none.redisTlsCertFile, undefined);
    assert.throws(
      () => resolveConfig({ redisTlsCA: "/ca.pem" } as never, {}),
      (e: unknown) => e instanceof WritConfigError && /redisTlsCaFile, redisTlsCertFile, redisTlsKeyFile/.test(e.message),
      "a misspelt key is refused with the list of keys",
    );
  });

  test("only with rediss://; certificate and key together; no empty path; no password in messages", () => {
    const refused = (cfg: Record<string, unknown>, env: NodeJS.ProcessEnv, re: RegExp) =>
      assert.throws(
        () => resolveConfig(cfg as never, env),
        (e: unknown) => e instanceof WritConfigError && re.test(e.message) && !e.message.includes(PASSWORD),
        `${JSON.stringify(cfg)} ${JSON.stringify(env)}`,
      );
    const plainUrl = `redis://:${PASSWORD}@127.0.0.1:6379`;
    refused({ redisUrl: plainUrl, redisTlsCaFile: "/ca.pem" }, {},
      /^redisTlsCaFile \(WRIT_REDIS_TLS_CA_FILE\) is set but redisUrl \(WRIT_REDIS_URL\) redis:\/\/\*\*\*@127\.0\.0\.1:6379 is not rediss:\/\/.*use a rediss:\/\/ URL/);
    refused({}, { WRIT_REDIS_URL: plainUrl, WRIT_REDIS_TLS_CERT_FILE: "/c.pem", WRIT_REDIS_TLS_KEY_FILE: "/c.key" }, /^redisTlsCertFile .* is not rediss:\/\//);
    refused({ redisUrl: rediss, redisTlsCertFile: "/c.pem" }, {}, /^redisTlsKeyFile \(WRIT_REDIS_TLS_KEY_FILE\) is not set: mutual TLS needs both/);
    refused({ redisUrl: rediss, redisTlsKeyFile: "/c.key" }, {}, /^redisTlsCertFile \(WRIT_REDIS_TLS_CERT_FILE\) is not set: mutual TLS needs both/);
    refused({ redisUrl: rediss, redisTlsCaFile: "" }, {}, /^redisTlsCaFile \(WRIT_REDIS_TLS_CA_FILE\) must be the path of a PEM file/);
    assert.doesNotThrow(() => resolveConfig({ redisUrl: rediss, redisTlsCertFile: "/c.pem", redisTlsKeyFile: "/c.key" }, {}));
  });

  test("a file that cannot be read, or holds no PEM of its kind, is refused when the client is made, naming option and path", () => {
    const dir = mkdtempSync(join(tmpdir(), "writ-node-tlscfg-"));
    try {
      const missing = join(dir, "nope", "ca.pem");
      const notPem = join(dir, "not.pem");
      writeFileSync(notPem, "hello\n");
      const made = (extra: Record<string, unknown>, re: RegExp) =>
        assert.throws(
          () => new WritClient({ redisUrl: rediss, ...extra }),
          (e: unknown) => e instanceof WritConfigError && re.test(e.message) && !e.message.includes(PASSWORD),
          JSON.stringify(extra),
        );
      const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      made({ redisTlsCaFile: missing },
        new RegExp(`^redisTlsCaFile \\(WRIT_REDIS_TLS_CA_FILE\\): cannot read ${esc(missing)} \\(ENOENT\\); point it at a readable PEM file`));
      made({ redisTlsCaFile: "no-such-dir/ca.pem" }, /cannot read no-such-dir\/ca\.pem \(ENOENT, i\.e\. \/.*no-such-dir\/ca\.pem from the working directory\)/);
      made({ redisTlsCaFile: dir }, new RegExp(`^redisTlsCaFile .*: cannot read ${esc(dir)} \\(EISDIR\\)`));
      made({ redisTlsCaFile: notPem }, new RegExp(`^redisTlsCaFile .*: ${esc(notPem)} holds no PEM certificate`));
      made({ redisTlsCaFile: ca.ca, redisTlsCertFile: ca.clientCert, redisTlsKeyFile: missing },
        new RegExp(`^redisTlsKeyFile \\(WRIT_REDIS_TLS_KEY_FILE\\): cannot read ${esc(missing)}`));
      made({ redisTlsCertFile: ca.clientKey, redisTlsKeyFile: ca.clientKey }, /^redisTlsCertFile .* holds no PEM certificate/);
      made({ redisTlsCertFile: ca.clientCert, redisTlsKeyFile: ca.clientCert }, /^redisTlsKeyFile .* holds no PEM private key/);
      const encrypted = join(dir, "enc.pem");
      writeFileSync(encrypted, "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
      made({ redisTlsCertFile: ca.clientCert, redisTlsKeyFile: encrypted }, /^redisTlsKeyFile .* holds an encrypted private key.*openssl pkey/);
      // Readable PEM files: made (no connection yet).
      const ok = new WritClient({ redisUrl: rediss, redisTlsCaFile: ca.ca, redisTlsCertFile: ca.clientCert, redisTlsKeyFile: ca.clientKey });
      clients.push(ok);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
