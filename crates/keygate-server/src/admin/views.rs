//! How records look on the wire: RFC 3339 UTC times, never a secret.

use chrono::{DateTime, SecondsFormat, Utc};
use keygate_engine::manage::{KeyStatus, Page, UsageReport};
use keygate_engine::now_ms;
use keygate_store::{Account, AuditEvent, KeyRecord};
use serde_json::{json, Value};

pub fn time(ms: i64) -> Value {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

pub fn opt_time(ms: Option<i64>) -> Value {
    ms.map(time).unwrap_or(Value::Null)
}

/// Parses an RFC 3339 time into unix milliseconds.
pub fn parse_time(field: &str, s: &str) -> Result<i64, keygate_engine::Error> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            keygate_engine::Error::validation(
                field,
                format!("{field} must be an RFC 3339 time such as 2030-01-31T00:00:00Z"),
            )
        })
}

pub fn account(a: &Account) -> Value {
    json!({
        "id": a.id,
        "object": "account",
        "name": a.name,
        "plan": a.plan,
        "created_at": time(a.created_at),
    })
}

pub fn key(k: &KeyRecord) -> Value {
    let quota = k.quota.map(|q| {
        let mut v = json!({
            "requests": q.requests,
            "used": k.quota_used,
            "remaining": (q.requests as i64 - k.quota_used).max(0),
        });
        if let Some(refill) = q.refill {
            let next = k
                .quota_refilled_at
                .unwrap_or(k.created_at)
                .saturating_add((refill.every as i64).saturating_mul(1000));
            v["refill"] = json!({"amount": refill.amount, "every": refill.every});
            v["next_refill_at"] = time(next);
        }
        v
    });
    json!({
        "id": k.id,
        "object": "api_key",
        "account_id": k.account_id,
        "name": k.name,
        "display_prefix": k.display_prefix,
        "environment": k.environment,
        "permissions": k.permissions,
        "ip_allowlist": k.ip_allowlist,
        "status": KeyStatus::of(k, now_ms()).as_str(),
        "created_at": time(k.created_at),
        "last_used_at": opt_time(k.last_used_at),
        "expires_at": opt_time(k.expires_at),
        "revoked_at": opt_time(k.revoked_at),
        "rate_limit": k.rate_limit,
        "quota": quota,
        "meta": k.meta,
        "rotated_from": k.rotated_from,
    })
}

/// What a key may read of itself (`GET /v1/api-key-info`).
pub fn key_info(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "display_prefix": k.display_prefix,
        "environment": k.environment,
        "permissions": k.permissions,
        "status": KeyStatus::of(k, now_ms()).as_str(),
        "created_at": time(k.created_at),
        "last_used_at": opt_time(k.last_used_at),
        "expires_at": opt_time(k.expires_at),
    })
}

pub fn usage(r: &UsageReport) -> Value {
    let k = key(&r.key);
    let data: Vec<Value> = r
        .buckets
        .iter()
        .map(|b| {
            json!({
                "start": time(b.start),
                "valid": b.valid(),
                "refused": b.refused(),
                "outcomes": b.counts,
            })
        })
        .collect();
    json!({
        "key_id": r.key.id,
        "granularity": r.granularity.as_str(),
        "from": time(r.from),
        "to": time(r.to),
        "last_used_at": k["last_used_at"],
        "recent_ips": r.key.recent_ips.iter().map(|s| json!({"ip": s.ip, "last_seen": time(s.last_seen)})).collect::<Vec<_>>(),
        "quota": k["quota"],
        "totals": r.totals,
        "data": data,
    })
}

pub fn audit(e: &AuditEvent) -> Value {
    json!({
        "id": e.id,
        "seq": e.seq,
        "at": time(e.at),
        "account_id": e.account_id,
        "actor": e.actor,
        "action": e.action,
        "target_id": e.target_id,
        "client_ip": e.client_ip,
        "details": e.details,
    })
}

pub fn list(items: Vec<Value>) -> Value {
    json!({ "data": items })
}

/// A page of a list: `{data, has_more, next_cursor}`, the cursor being the last record's id
/// when more follow (pass it back as `starting_after`).
pub fn page<T>(page: &Page<T>, id: impl Fn(&T) -> &str, view: impl Fn(&T) -> Value) -> Value {
    json!({
        "data": page.items.iter().map(view).collect::<Vec<_>>(),
        "has_more": page.has_more,
        "next_cursor": page.next_cursor(id),
    })
}
