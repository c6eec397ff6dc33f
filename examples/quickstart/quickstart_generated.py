#!/usr/bin/env python3
"""The quickstart through a client generated from keygate's `/openapi.json`.

Generate the client (package `keygate_client`) with openapi-python-client, then run this
with the client importable:

    openapi-python-client generate --url http://127.0.0.1:8080/openapi.json \
        --meta none --output-path keygate_client
    KEYGATE_ADMIN_TOKEN=kgadm_... python3 examples/quickstart/quickstart_generated.py

Steps: create an account, create a key, verify it (`POST /v1/verify` and forward-auth),
list the account's keys, revoke the key, verify it again. Every call goes through the
generated functions and typed models: no hand-written HTTP. Each step checks what it
expects and the script exits 1 at the first mismatch. Full keys are never printed.
"""

import os
import sys

from keygate_client import AuthenticatedClient
from keygate_client.api.accounts import create_account
from keygate_client.api.api_keys import create_api_key, list_api_keys, revoke_api_key
from keygate_client.api.verification import forward_auth_get, verify_key
from keygate_client.models import (
    AccountWithKeys,
    ApiKey,
    ApiKeyList,
    ApiKeyWithSecret,
    CreateAccount,
    CreateKey,
    KeyStatusName,
    VerifyAnswer,
    VerifyBody,
)

BASE = os.environ.get("KEYGATE_URL", "http://127.0.0.1:8080").rstrip("/")
TOKEN = os.environ.get("KEYGATE_ADMIN_TOKEN", "")


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def step(message):
    print(f"  ok  {message}")


def expect(what, response, status, model):
    """The status is the expected one and the body parsed as the documented model."""
    if response.status_code != status:
        fail(f"{what}: expected {status}, got {response.status_code} {response.content[:300]!r}")
    if model is not None and not isinstance(response.parsed, model):
        fail(f"{what}: the answer did not parse as {model.__name__}: {response.parsed!r}")
    return response.parsed


def main():
    if not TOKEN:
        fail("set KEYGATE_ADMIN_TOKEN")
    print(f"keygate quickstart (generated client) against {BASE}")
    admin = AuthenticatedClient(base_url=BASE, token=TOKEN, raise_on_unexpected_status=True)

    # 1. An account.
    account = expect(
        "create account",
        create_account.sync_detailed(client=admin, body=CreateAccount(name="Acme Invoicing", plan="pro")),
        201,
        AccountWithKeys,
    )
    if account.plan != "pro" or account.active_keys != 0:
        fail(f"create account: unexpected {account!r}")
    step(f"create_account -> 201 {account.id} plan={account.plan} max_keys={account.max_keys}")

    # 2. A read-only key; the secret is in this answer only.
    created = expect(
        "create key",
        create_api_key.sync_detailed(
            client=admin,
            body=CreateKey(account_id=account.id, name="Zapier Integration", scope="read"),
        ),
        201,
        ApiKeyWithSecret,
    )
    key = created.key
    if not key.startswith(created.display_prefix) or created.status != KeyStatusName.ACTIVE:
        fail("create key: the display prefix is not the key's start, or the key is not active")
    step(f"create_api_key -> 201 {created.id} {created.display_prefix}… permissions={created.permissions}")

    # 3. Verify it as a service would (the admin token may call /v1/verify).
    verdict = expect(
        "verify",
        verify_key.sync_detailed(client=admin, body=VerifyBody(key=key, method="GET", path="/api/v1/invoices")),
        200,
        VerifyAnswer,
    )
    if not verdict.valid or verdict.code != "valid" or verdict.key_id != created.id:
        fail(f"verify: expected valid for {created.id}, got {verdict!r}")
    if verdict.account_id != account.id:
        fail(f"verify: account_id is {verdict.account_id}, not {account.id}")
    step(f"verify_key -> valid key_id={verdict.key_id} permissions={verdict.permissions}")

    # 4. Forward-auth with the key itself: 204 and the identity headers.
    as_key = AuthenticatedClient(base_url=BASE, token=key)
    r = forward_auth_get.sync_detailed(
        client=as_key, x_original_method="GET", x_original_uri="/api/v1/invoices"
    )
    if r.status_code != 204 or r.headers.get("X-Keygate-Key-Id") != created.id:
        fail(f"forward-auth: expected 204 for {created.id}, got {r.status_code} {dict(r.headers)}")
    step(f"forward_auth_get -> 204 X-Keygate-Account-Id={r.headers.get('X-Keygate-Account-Id')}")
    r = forward_auth_get.sync_detailed(
        client=as_key, x_original_method="POST", x_original_uri="/api/v1/invoices"
    )
    if r.status_code != 403 or r.parsed is None or r.parsed.code != "insufficient_permissions":
        fail(f"forward-auth POST with a read key: expected 403, got {r.status_code} {r.content[:200]!r}")
    step("forward_auth_get POST /api/v1/invoices -> 403 insufficient_permissions")

    # 5. The account's keys: display prefixes and statuses, never secrets.
    listed = expect(
        "list keys", list_api_keys.sync_detailed(client=admin, account_id=account.id), 200, ApiKeyList
    )
    if [k.id for k in listed.data] != [created.id] or listed.has_more:
        fail(f"list keys: expected exactly {created.id}, got {[k.id for k in listed.data]}")
    if any("key" in k.additional_properties for k in listed.data):
        fail("list keys: a listed key carries its secret")
    step(f"list_api_keys -> 200 [{listed.data[0].display_prefix} {listed.data[0].status.value}]")

    # 6. Revoke: the key stops at once.
    revoked = expect("revoke", revoke_api_key.sync_detailed(created.id, client=admin), 200, ApiKey)
    if revoked.status != KeyStatusName.REVOKED or not revoked.revoked_at:
        fail(f"revoke: unexpected {revoked!r}")
    verdict = expect("verify after revoke", verify_key.sync_detailed(client=admin, body=VerifyBody(key=key)), 200, VerifyAnswer)
    if verdict.valid or verdict.code != "invalid_key":
        fail(f"verify after revoke: expected invalid_key, got {verdict!r}")
    r = forward_auth_get.sync_detailed(client=as_key, x_original_uri="/api/v1/invoices")
    if r.status_code != 401:
        fail(f"forward-auth after revoke: expected 401, got {r.status_code}")
    step("revoke_api_key -> 200 revoked; verify -> invalid_key; forward-auth -> 401")

    print("quickstart (generated client): all steps passed")


if __name__ == "__main__":
    main()
