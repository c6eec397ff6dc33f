#!/usr/bin/env python3
"""keygate quickstart in Python (the README's curl quickstart, step by step).

Needs a running keygate and the `requests` package:

    KEYGATE_ADMIN_TOKEN=kgadm_... python3 examples/quickstart/quickstart.py

KEYGATE_URL defaults to http://127.0.0.1:8080. Each step checks the status and error code
it expects and the script exits 1 at the first mismatch. Full keys are never printed:
only their display prefix (`kg_live_3f9c1a2b`).
"""

import os
import re
import secrets
import sys
import zlib

try:
    import requests
except ImportError:
    sys.exit("quickstart.py needs the requests package: pip install requests")

BASE = os.environ.get("KEYGATE_URL", "http://127.0.0.1:8080").rstrip("/")
TOKEN = os.environ.get("KEYGATE_ADMIN_TOKEN", "")
TIMEOUT = 10

# Anything key- or token-shaped is cut down before it is printed.
SECRET_RE = re.compile(r"\b([a-z][a-z0-9]*_(?:(?:live|test)_)?[0-9a-f]{8})[0-9a-f]{56}\b")
ADMIN_RE = re.compile(r"kgadm_[0-9A-Za-z]+")


def redact(text):
    return ADMIN_RE.sub("kgadm_…", SECRET_RE.sub(r"\1…", str(text)))


def fail(message):
    print(f"FAIL: {redact(message)}", file=sys.stderr)
    sys.exit(1)


def step(message):
    print(f"  ok  {redact(message)}")


def call(method, path, headers=None, **kwargs):
    try:
        return requests.request(
            method, BASE + path, headers=headers or {}, timeout=TIMEOUT, **kwargs
        )
    except requests.RequestException as e:
        fail(f"{method} {path}: cannot reach keygate at {BASE}: {e}")


def admin(method, path, body=None):
    """A management call with the operator's admin token."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return call(method, path, headers, json=body)


def forward_auth(method, uri, headers):
    """What nginx auth_request / Traefik ForwardAuth ask: may this request go through?"""
    h = {"X-Original-Method": method, "X-Original-URI": uri, **headers}
    return call("GET", "/v1/auth", h)


def expect(what, response, status, code=None):
    """Checks the status (and the error code of a JSON error); returns the JSON body."""
    body = None
    if response.content:
        try:
            body = response.json()
        except ValueError:
            fail(f"{what}: expected JSON, got {response.status_code}: {response.text[:200]}")
    got_code = body.get("code") if isinstance(body, dict) else None
    if response.status_code != status or (code is not None and got_code != code):
        wanted = f"{status} {code}" if code else str(status)
        fail(f"{what}: expected {wanted}, got {response.status_code} {body}")
    return body


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def unknown_key_like(key):
    """A well-formed key (right prefix, valid checksum) that was never issued."""
    type_prefix = re.match(r"^(.*_)[0-9a-f]{64}$", key).group(1)
    head = type_prefix + secrets.token_hex(28)
    return head + format(zlib.crc32(head.encode()), "08x")


def main():
    if not TOKEN:
        fail("set KEYGATE_ADMIN_TOKEN to the admin token keygate printed on its first start")
    print(f"keygate quickstart (Python) against {BASE}")

    expect("GET /healthz", call("GET", "/healthz"), 200)
    step("GET /healthz -> 200")

    # 1. An account on the pro plan (20 keys).
    account = expect(
        "create account",
        admin("POST", "/v1/accounts", {"name": "Acme Invoicing", "plan": "pro"}),
        201,
    )
    step(f"POST /v1/accounts -> 201 {account['id']} plan={account['plan']}")

    # 2. A read-only key. The secret is in this answer only.
    created = expect(
        "create key",
        admin(
            "POST",
            "/v1/api-keys",
            {"account_id": account["id"], "name": "Zapier Integration", "scope": "read"},
        ),
        201,
    )
    key, key_id = created["key"], created["id"]
    if not key.startswith(created["display_prefix"]):
        fail("the display prefix is not the start of the key")
    step(
        f"POST /v1/api-keys -> 201 {key_id} {created['display_prefix']}… "
        f"permissions={created['permissions']} (secret shown once: store it now)"
    )

    # 3. The API's requests, checked by forward-auth, with each accepted header.
    for name, headers in [
        ("Authorization: Bearer", bearer(key)),
        ("X-API-Key", {"X-API-Key": key}),
        ("APIKEY", {"APIKEY": key}),
    ]:
        r = forward_auth("GET", "/api/v1/invoices", headers)
        expect(f"GET /api/v1/invoices with {name}", r, 204)
        if r.headers.get("X-Keygate-Key-Id") != key_id:
            fail(f"{name}: X-Keygate-Key-Id is {r.headers.get('X-Keygate-Key-Id')}, not {key_id}")
        if r.headers.get("X-Keygate-Account-Id") != account["id"]:
            fail(f"{name}: X-Keygate-Account-Id is not {account['id']}")
        step(
            f"GET /api/v1/invoices ({name}) -> 204 "
            f"X-Keygate-Environment={r.headers.get('X-Keygate-Environment')}"
        )

    # 4. Key info: the key reads its own record (never the secret).
    info = expect("key info", call("GET", "/v1/api-key-info", {"APIKEY": key}), 200)["data"]
    if info["id"] != key_id or "key" in info:
        fail(f"key info: unexpected record {info}")
    step(f"GET /v1/api-key-info -> 200 {info['name']} {info['display_prefix']}")

    # 5. 401: no key, a key that was never issued, a mistyped key.
    expect(
        "no key",
        forward_auth("GET", "/api/v1/invoices", {}),
        401,
        "missing_credentials",
    )
    step("no key -> 401 missing_credentials")
    r = forward_auth("GET", "/api/v1/invoices", bearer(unknown_key_like(key)))
    body = expect("unknown key", r, 401, "invalid_key")
    if body["error"] != "Invalid API key":
        fail(f"unknown key: error is {body['error']!r}")
    step('unknown key -> 401 invalid_key "Invalid API key"')
    typo = key[:-1] + ("0" if key[-1] != "0" else "1")
    expect("mistyped key", forward_auth("GET", "/api/v1/invoices", bearer(typo)), 401, "malformed_key")
    step("mistyped key (checksum fails) -> 401 malformed_key")

    # 6. 403: a read key may not create invoices; an allowlisted key from elsewhere.
    expect(
        "read key POST",
        forward_auth("POST", "/api/v1/invoices", bearer(key)),
        403,
        "insufficient_permissions",
    )
    step("POST /api/v1/invoices with a read key -> 403 insufficient_permissions")
    office = expect(
        "create allowlisted key",
        admin(
            "POST",
            "/v1/api-keys",
            {
                "account_id": account["id"],
                "name": "Office only",
                "scope": "read",
                "ip_allowlist": ["203.0.113.0/24"],
            },
        ),
        201,
    )
    expect(
        "allowlisted key",
        forward_auth("GET", "/api/v1/invoices", bearer(office["key"])),
        403,
        "ip_not_allowed",
    )
    step(f"{office['display_prefix']}… allowlist 203.0.113.0/24, call from here -> 403 ip_not_allowed")

    # 7. 429: two requests a minute, then the third.
    throttled = expect(
        "create rate-limited key",
        admin(
            "POST",
            "/v1/api-keys",
            {
                "account_id": account["id"],
                "name": "Throttled",
                "scope": "read",
                "rate_limit": {"requests": 2, "per_seconds": 60},
            },
        ),
        201,
    )
    for n in (1, 2):
        expect(f"rate-limited call {n}", forward_auth("GET", "/api/v1/invoices", bearer(throttled["key"])), 204)
    r = forward_auth("GET", "/api/v1/invoices", bearer(throttled["key"]))
    expect("rate-limited call 3", r, 429, "rate_limited")
    if not r.headers.get("Retry-After"):
        fail("rate-limited call 3: no Retry-After header")
    step(f"rate_limit 2/60s: 204, 204, then 429 rate_limited (Retry-After: {r.headers['Retry-After']})")

    # 8. 429: the plan's key cap (basic = 2 active keys).
    shop = expect(
        "create basic account",
        admin("POST", "/v1/accounts", {"name": "Small Shop", "plan": "basic"}),
        201,
    )
    for n in (1, 2):
        expect(
            f"basic key {n}",
            admin("POST", "/v1/api-keys", {"account_id": shop["id"], "name": f"key {n}", "scope": "read"}),
            201,
        )
    body = expect(
        "basic key 3",
        admin("POST", "/v1/api-keys", {"account_id": shop["id"], "name": "key 3", "scope": "read"}),
        429,
        "plan_limit_reached",
    )
    if body["error"] != "API key limit reached for your plan":
        fail(f"plan cap: error is {body['error']!r}")
    step('basic plan, third key -> 429 plan_limit_reached "API key limit reached for your plan"')

    # 9. 400: a key in the URL is refused, whatever the endpoint.
    expect(
        "key in URL",
        call("GET", "/v1/api-key-info", params={"api_key": key}),
        400,
        "key_in_url",
    )
    expect(
        "key in the original URI",
        forward_auth("GET", "/api/v1/invoices?api_key=" + key, {}),
        400,
        "key_in_url",
    )
    step("?api_key=… -> 400 key_in_url")

    # 10. Rotate with a grace period: both keys work until it ends (or the old one is revoked).
    rotated = expect(
        "rotate",
        admin("POST", f"/v1/api-keys/{key_id}/rotate", {"grace_period_seconds": 3600}),
        201,
    )
    new_key, previous = rotated["key"], rotated["previous"]
    if rotated["rotated_from"] != key_id or previous["status"] != "active" or not previous["revoked_at"]:
        fail(f"rotate: unexpected answer {rotated}")
    for label, k in (("old", key), ("new", new_key)):
        expect(f"{label} key during grace", forward_auth("GET", "/api/v1/invoices", bearer(k)), 204)
    step(
        f"rotate -> 201 {rotated['display_prefix']}… (old key active until {previous['revoked_at']}); "
        "both keys -> 204"
    )

    # 11. Revoke the old key now: it stops at once, the new one keeps working.
    revoked = expect("revoke", admin("POST", f"/v1/api-keys/{key_id}/revoke"), 200)
    if revoked["status"] != "revoked":
        fail(f"revoke: status is {revoked['status']}")
    expect(
        "revoked key",
        forward_auth("GET", "/api/v1/invoices", bearer(key)),
        401,
        "invalid_key",
    )
    expect("new key after revoke", forward_auth("GET", "/api/v1/invoices", bearer(new_key)), 204)
    step("revoke old key -> 200 revoked; old key -> 401 invalid_key; new key -> 204")

    # 12. The list shows display prefixes and statuses, never secrets.
    keys = expect("list keys", admin("GET", f"/v1/api-keys?account_id={account['id']}"), 200)["data"]
    if any("key" in k for k in keys):
        fail("a key list contains a secret")
    summary = ", ".join(f"{k['display_prefix']} {k['status']}" for k in keys)
    step(f"GET /v1/api-keys -> 200 [{summary}]")

    print("quickstart (Python): all steps passed")


if __name__ == "__main__":
    main()
