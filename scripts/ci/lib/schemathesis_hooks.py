"""Rules of keygate's requests that JSON Schema cannot state, for scripts/ci/openapi.sh.

The document says each of them in words (the fields' descriptions); schemathesis cannot
read words, so a request it generates as valid may break one of them, and keygate rightly
answers 400. Such generated cases are dropped here, and only those: every other valid
request must still be accepted. Negative cases are kept as generated.

And one failure is dropped: forward-auth answers any method, because a proxy may ask about
any (Envoy passes the original one: QUERY, PROPFIND...). The document lists all eight
methods OpenAPI 3.1 can name; it has no place for the others, so "405 for a method the
document does not list" cannot hold on `/v1/auth`.
"""

import ipaddress
import json
import re
from datetime import datetime, timezone
from urllib.parse import urlsplit

import schemathesis

MAX_GRANTS = 256  # keygate_core::permission::MAX_GRANTS
MAX_META_BYTES = 8 * 1024  # keygate_engine::manage::validate::MAX_META_BYTES
MAX_BUCKETS = 2000  # keygate_engine::manage::usage::MAX_BUCKETS
PRESET_GRANTS = {"all": 1, "read": 1, "write": 4, "webhooks": 1}


def given(body, field):
    return isinstance(body, dict) and body.get(field) is not None


def parse_time(text):
    at = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError(text)
    return at


def in_the_past(text):
    try:
        return parse_time(text) <= datetime.now(timezone.utc)
    except (ValueError, TypeError):
        return False


def grant_count(permissions):
    total = 0
    for grant in permissions:
        grant = str(grant).strip().lower()
        if grant in PRESET_GRANTS:
            total += PRESET_GRANTS[grant]
        else:
            total += 3 if grant.replace(":", ".").rsplit(".", 1)[-1] == "write" else 1
    return total


def breaks_a_key_rule(method, body):
    if given(body, "permissions") and given(body, "scope"):
        return True  # either permissions or scope
    # On PATCH, `"expires_at": null` is a value too (never expire).
    expiry_given = given(body, "expires_at") or (method == "PATCH" and "expires_at" in body)
    if expiry_given and given(body, "expires_in"):
        return True  # either expires_at or expires_in
    if given(body, "expires_at") and in_the_past(body["expires_at"]):
        return True  # expires_at is in the future
    if given(body, "permissions") and grant_count(body["permissions"]) > MAX_GRANTS:
        return True  # at most 256 grants, `write` counting 3
    if given(body, "meta") and len(json.dumps(body["meta"], separators=(",", ":"))) > MAX_META_BYTES:
        return True  # meta of up to 8 KiB
    return False


def breaks_a_verify_rule(body):
    if given(body, "permission") and (given(body, "method") or given(body, "path")):
        return True  # either a permission, or method and path
    return given(body, "method") and not given(body, "path")  # method needs a path


def breaks_a_usage_rule(query):
    try:
        start = parse_time(query["from"]) if query.get("from") else None
        end = parse_time(query["to"]) if query.get("to") else datetime.now(timezone.utc)
    except (ValueError, TypeError):
        return False
    if start is None:
        return False  # the server picks a range that fits
    step = 3600 if (query.get("granularity") or "hour") == "hour" else 86400
    span = (end - start).total_seconds()
    # from before to, at most 2000 buckets (aligned to whole buckets: near the edge, unsure)
    return span <= step or span / step > MAX_BUCKETS - 2


def breaks_a_rotate_rule(body):
    """retire_when_idle_seconds needs a grace period at least as long."""
    if not isinstance(body, dict) or body.get("retire_when_idle_seconds") is None:
        return False
    return body["retire_when_idle_seconds"] > (body.get("grace_period_seconds") or 0)


SIMPLE_URL = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")
HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def acceptable_webhook_url(url):
    """A URL keygate takes for a webhook endpoint with the SSRF guard on (the CI server's
    default): http(s), a host name (a numeric last label is an IPv4 address to a URL
    parser, and the literal addresses the guard refuses are not worth telling apart), a
    port that exists. Conservative: some acceptable URLs are dropped too."""
    if not isinstance(url, str) or len(url) > 2048 or not SIMPLE_URL.match(url):
        return False
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        return False
    if not port_ok or not HOST_NAME.match(host):
        return False
    last = host.rsplit(".", 1)[-1]
    return not (last[0].isdigit() or last.startswith("0x"))


def breaks_a_webhook_rule(body):
    return given(body, "url") and not acceptable_webhook_url(body["url"])


USAGE_RETENTION_DAYS = 90  # keygate's default usage_retention_days, as the CI server runs


def breaks_a_permission_usage_rule(query):
    try:
        days = int(query["days"]) if query.get("days") is not None else None
    except (ValueError, TypeError):
        return False
    return days is not None and days > USAGE_RETENTION_DAYS  # days up to the retention


def breaks_a_rule_in_words(method, path, body, query):
    """Whether a schema-valid request breaks a rule that only a description states."""
    query = query or {}
    if query.get("starting_after"):
        return True  # a cursor is the id of a record of the list, as a page handed it out
    if path in ("/v1/api-keys", "/v1/api-keys/{id}") and method in ("POST", "PATCH"):
        return isinstance(body, dict) and breaks_a_key_rule(method, body)
    if path == "/v1/verify":
        return breaks_a_verify_rule(body)
    if path in ("/v1/webhook-endpoints", "/v1/webhook-endpoints/{id}") and method in ("POST", "PATCH"):
        return breaks_a_webhook_rule(body)
    if path == "/v1/api-keys/{id}/usage":
        return breaks_a_usage_rule(query)
    if path == "/v1/api-keys/{id}/rotate":
        return breaks_a_rotate_rule(body)
    if path == "/v1/api-keys/{id}/permission-usage":
        return breaks_a_permission_usage_rule(query)
    return False


@schemathesis.hook
def filter_case(context, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return True
    return not breaks_a_rule_in_words(case.method.upper(), case.operation.path, case.body, case.query)


@schemathesis.hook
def filter_failure(context, failure, case, response):
    undeclared_method = type(failure).__name__ == "UnsupportedMethodResponse"
    return not (undeclared_method and case.operation.path.startswith("/v1/auth"))
