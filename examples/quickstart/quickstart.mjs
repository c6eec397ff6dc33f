#!/usr/bin/env node
// keygate quickstart in Node (the README's curl quickstart, step by step).
//
// Needs a running keygate and Node 20 or later (built-in fetch; no npm packages):
//
//     KEYGATE_ADMIN_TOKEN=kgadm_... node examples/quickstart/quickstart.mjs
//
// KEYGATE_URL defaults to http://127.0.0.1:8080. Each step checks the status and error code
// it expects and the script exits 1 at the first mismatch. Full keys are never printed:
// only their display prefix (`kg_live_3f9c1a2b`).

import { randomBytes } from "node:crypto";
import zlib from "node:zlib";

const BASE = (process.env.KEYGATE_URL || "http://127.0.0.1:8080").replace(/\/+$/, "");
const TOKEN = process.env.KEYGATE_ADMIN_TOKEN || "";
const TIMEOUT_MS = 10_000;

// Anything key- or token-shaped is cut down before it is printed.
const SECRET_RE = /\b([a-z][a-z0-9]*_(?:(?:live|test)_)?[0-9a-f]{8})[0-9a-f]{56}\b/g;
const ADMIN_RE = /kgadm_[0-9A-Za-z]+/g;

const redact = (text) => String(text).replace(SECRET_RE, "$1…").replace(ADMIN_RE, "kgadm_…");

class Mismatch extends Error {}

function fail(message) {
  throw new Mismatch(message);
}

function step(message) {
  console.log(`  ok  ${redact(message)}`);
}

async function call(method, path, headers = {}, body = undefined) {
  const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(TIMEOUT_MS) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(BASE + path, init);
  } catch (e) {
    fail(`${method} ${path}: cannot reach keygate at ${BASE}: ${e.cause?.message ?? e.message}`);
  }
  const text = await response.text();
  return { status: response.status, headers: response.headers, text };
}

// A management call with the operator's admin token.
const admin = (method, path, body) =>
  call(method, path, { Authorization: `Bearer ${TOKEN}` }, body);

// What nginx auth_request / Traefik ForwardAuth ask: may this request go through?
const forwardAuth = (method, uri, headers = {}) =>
  call("GET", "/v1/auth", { "X-Original-Method": method, "X-Original-URI": uri, ...headers });

const bearer = (key) => ({ Authorization: `Bearer ${key}` });

// Checks the status (and the error code of a JSON error); returns the JSON body.
function expect(what, response, status, code = undefined) {
  let body = null;
  if (response.text) {
    try {
      body = JSON.parse(response.text);
    } catch {
      fail(`${what}: expected JSON, got ${response.status}: ${response.text.slice(0, 200)}`);
    }
  }
  const gotCode = body && typeof body === "object" ? body.code : undefined;
  if (response.status !== status || (code !== undefined && gotCode !== code)) {
    const wanted = code ? `${status} ${code}` : `${status}`;
    fail(`${what}: expected ${wanted}, got ${response.status} ${response.text}`);
  }
  return body;
}

// CRC32 (IEEE), as keygate's key checksum. zlib.crc32 exists from Node 20.15 on.
function crc32(text) {
  if (typeof zlib.crc32 === "function") return zlib.crc32(text) >>> 0;
  let crc = 0xffffffff;
  for (const byte of Buffer.from(text)) {
    crc ^= byte;
    for (let i = 0; i < 8; i++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return (crc ^ 0xffffffff) >>> 0;
}

// A well-formed key (right prefix, valid checksum) that was never issued.
function unknownKeyLike(key) {
  const typePrefix = key.match(/^(.*_)[0-9a-f]{64}$/)[1];
  const head = typePrefix + randomBytes(28).toString("hex");
  return head + crc32(head).toString(16).padStart(8, "0");
}

async function main() {
  if (!TOKEN) {
    fail("set KEYGATE_ADMIN_TOKEN to the admin token keygate printed on its first start");
  }
  console.log(`keygate quickstart (Node) against ${BASE}`);

  expect("GET /healthz", await call("GET", "/healthz"), 200);
  step("GET /healthz -> 200");

  // 1. An account on the pro plan (20 keys).
  const account = expect(
    "create account",
    await admin("POST", "/v1/accounts", { name: "Acme Invoicing", plan: "pro" }),
    201,
  );
  step(`POST /v1/accounts -> 201 ${account.id} plan=${account.plan}`);

  // 2. A read-only key. The secret is in this answer only.
  const created = expect(
    "create key",
    await admin("POST", "/v1/api-keys", {
      account_id: account.id,
      name: "Zapier Integration",
      scope: "read",
    }),
    201,
  );
  const key = created.key;
  const keyId = created.id;
  if (!key.startsWith(created.display_prefix)) fail("the display prefix is not the start of the key");
  step(
    `POST /v1/api-keys -> 201 ${keyId} ${created.display_prefix}… ` +
      `permissions=${JSON.stringify(created.permissions)} (secret shown once: store it now)`,
  );

  // 3. The API's requests, checked by forward-auth, with each accepted header.
  for (const [name, headers] of [
    ["Authorization: Bearer", bearer(key)],
    ["X-API-Key", { "X-API-Key": key }],
    ["APIKEY", { APIKEY: key }],
  ]) {
    const r = await forwardAuth("GET", "/api/v1/invoices", headers);
    expect(`GET /api/v1/invoices with ${name}`, r, 204);
    if (r.headers.get("x-keygate-key-id") !== keyId) {
      fail(`${name}: X-Keygate-Key-Id is ${r.headers.get("x-keygate-key-id")}, not ${keyId}`);
    }
    if (r.headers.get("x-keygate-account-id") !== account.id) {
      fail(`${name}: X-Keygate-Account-Id is not ${account.id}`);
    }
    step(
      `GET /api/v1/invoices (${name}) -> 204 ` +
        `X-Keygate-Environment=${r.headers.get("x-keygate-environment")}`,
    );
  }

  // 4. Key info: the key reads its own record (never the secret).
  const info = expect("key info", await call("GET", "/v1/api-key-info", { APIKEY: key }), 200).data;
  if (info.id !== keyId || "key" in info) fail(`key info: unexpected record ${JSON.stringify(info)}`);
  step(`GET /v1/api-key-info -> 200 ${info.name} ${info.display_prefix}`);

  // 5. 401: no key, a key that was never issued, a mistyped key.
  expect("no key", await forwardAuth("GET", "/api/v1/invoices"), 401, "missing_credentials");
  step("no key -> 401 missing_credentials");
  let body = expect(
    "unknown key",
    await forwardAuth("GET", "/api/v1/invoices", bearer(unknownKeyLike(key))),
    401,
    "invalid_key",
  );
  if (body.error !== "Invalid API key") fail(`unknown key: error is ${JSON.stringify(body.error)}`);
  step('unknown key -> 401 invalid_key "Invalid API key"');
  const typo = key.slice(0, -1) + (key.endsWith("0") ? "1" : "0");
  expect("mistyped key", await forwardAuth("GET", "/api/v1/invoices", bearer(typo)), 401, "malformed_key");
  step("mistyped key (checksum fails) -> 401 malformed_key");

  // 6. 403: a read key may not create invoices; an allowlisted key from elsewhere.
  expect(
    "read key POST",
    await forwardAuth("POST", "/api/v1/invoices", bearer(key)),
    403,
    "insufficient_permissions",
  );
  step("POST /api/v1/invoices with a read key -> 403 insufficient_permissions");
  const office = expect(
    "create allowlisted key",
    await admin("POST", "/v1/api-keys", {
      account_id: account.id,
      name: "Office only",
      scope: "read",
      ip_allowlist: ["203.0.113.0/24"],
    }),
    201,
  );
  expect(
    "allowlisted key",
    await forwardAuth("GET", "/api/v1/invoices", bearer(office.key)),
    403,
    "ip_not_allowed",
  );
  step(`${office.display_prefix}… allowlist 203.0.113.0/24, call from here -> 403 ip_not_allowed`);

  // 7. 429: two requests a minute, then the third.
  const throttled = expect(
    "create rate-limited key",
    await admin("POST", "/v1/api-keys", {
      account_id: account.id,
      name: "Throttled",
      scope: "read",
      rate_limit: { requests: 2, per_seconds: 60 },
    }),
    201,
  );
  for (const n of [1, 2]) {
    expect(`rate-limited call ${n}`, await forwardAuth("GET", "/api/v1/invoices", bearer(throttled.key)), 204);
  }
  const limited = await forwardAuth("GET", "/api/v1/invoices", bearer(throttled.key));
  expect("rate-limited call 3", limited, 429, "rate_limited");
  if (!limited.headers.get("retry-after")) fail("rate-limited call 3: no Retry-After header");
  step(
    `rate_limit 2/60s: 204, 204, then 429 rate_limited (Retry-After: ${limited.headers.get("retry-after")})`,
  );

  // 8. 429: the plan's key cap (basic = 2 active keys).
  const shop = expect(
    "create basic account",
    await admin("POST", "/v1/accounts", { name: "Small Shop", plan: "basic" }),
    201,
  );
  for (const n of [1, 2]) {
    expect(
      `basic key ${n}`,
      await admin("POST", "/v1/api-keys", { account_id: shop.id, name: `key ${n}`, scope: "read" }),
      201,
    );
  }
  body = expect(
    "basic key 3",
    await admin("POST", "/v1/api-keys", { account_id: shop.id, name: "key 3", scope: "read" }),
    429,
    "plan_limit_reached",
  );
  if (body.error !== "API key limit reached for your plan") {
    fail(`plan cap: error is ${JSON.stringify(body.error)}`);
  }
  step('basic plan, third key -> 429 plan_limit_reached "API key limit reached for your plan"');

  // 9. 400: a key in the URL is refused, whatever the endpoint.
  expect(
    "key in URL",
    await call("GET", `/v1/api-key-info?api_key=${encodeURIComponent(key)}`),
    400,
    "key_in_url",
  );
  expect(
    "key in the original URI",
    await forwardAuth("GET", `/api/v1/invoices?api_key=${key}`),
    400,
    "key_in_url",
  );
  step("?api_key=… -> 400 key_in_url");

  // 10. Rotate with a grace period: both keys work until it ends (or the old one is revoked).
  const rotated = expect(
    "rotate",
    await admin("POST", `/v1/api-keys/${keyId}/rotate`, { grace_period_seconds: 3600 }),
    201,
  );
  const newKey = rotated.key;
  const previous = rotated.previous;
  if (rotated.rotated_from !== keyId || previous.status !== "active" || !previous.revoked_at) {
    fail(`rotate: unexpected answer ${JSON.stringify(rotated)}`);
  }
  for (const [label, k] of [["old", key], ["new", newKey]]) {
    expect(`${label} key during grace`, await forwardAuth("GET", "/api/v1/invoices", bearer(k)), 204);
  }
  step(
    `rotate -> 201 ${rotated.display_prefix}… (old key active until ${previous.revoked_at}); ` +
      "both keys -> 204",
  );

  // 11. Revoke the old key now: it stops at once, the new one keeps working.
  const revoked = expect("revoke", await admin("POST", `/v1/api-keys/${keyId}/revoke`), 200);
  if (revoked.status !== "revoked") fail(`revoke: status is ${revoked.status}`);
  expect("revoked key", await forwardAuth("GET", "/api/v1/invoices", bearer(key)), 401, "invalid_key");
  expect("new key after revoke", await forwardAuth("GET", "/api/v1/invoices", bearer(newKey)), 204);
  step("revoke old key -> 200 revoked; old key -> 401 invalid_key; new key -> 204");

  // 12. The list shows display prefixes and statuses, never secrets.
  const keys = expect(
    "list keys",
    await admin("GET", `/v1/api-keys?account_id=${encodeURIComponent(account.id)}`),
    200,
  ).data;
  if (keys.some((k) => "key" in k)) fail("a key list contains a secret");
  step(`GET /v1/api-keys -> 200 [${keys.map((k) => `${k.display_prefix} ${k.status}`).join(", ")}]`);

  console.log("quickstart (Node): all steps passed");
}

main().catch((e) => {
  console.error(`FAIL: ${redact(e instanceof Mismatch ? e.message : e.stack ?? e)}`);
  process.exit(1);
});
