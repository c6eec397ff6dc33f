//! How records look on the wire: RFC 3339 UTC times, never a secret. Each answer is a typed
//! view, so the OpenAPI document's schemas (`ToSchema`) are the shapes actually sent.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use keygate_core::Environment;
use keygate_engine::manage::{Granularity, KeyStatus, Page, UsageReport};
use keygate_engine::now_ms;
use keygate_store::{Account, AuditEvent, KeyRecord, RateLimit};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// An RFC 3339 UTC time with milliseconds. A time outside chrono's range (never stored in
/// practice) is clamped to it rather than dropped.
pub fn time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(if ms < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn opt_time(ms: Option<i64>) -> Option<String> {
    ms.map(time)
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

/// A view as JSON. The views are plain structs of strings, numbers and JSON values, which
/// always serialize.
fn to_json(view: impl Serialize) -> Value {
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// A key's state now.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatusName {
    Active,
    Expired,
    Revoked,
}

impl From<KeyStatus> for KeyStatusName {
    fn from(status: KeyStatus) -> Self {
        match status {
            KeyStatus::Active => KeyStatusName::Active,
            KeyStatus::Expired => KeyStatusName::Expired,
            KeyStatus::Revoked => KeyStatusName::Revoked,
        }
    }
}

/// Which data a key reaches: production (`live`) or sandbox (`test`).
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum EnvironmentName {
    Live,
    Test,
}

impl From<Environment> for EnvironmentName {
    fn from(environment: Environment) -> Self {
        match environment {
            Environment::Live => EnvironmentName::Live,
            Environment::Test => EnvironmentName::Test,
        }
    }
}

/// Usage bucket size.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum GranularityName {
    Hour,
    Day,
}

impl From<Granularity> for GranularityName {
    fn from(granularity: Granularity) -> Self {
        match granularity {
            Granularity::Hour => GranularityName::Hour,
            Granularity::Day => GranularityName::Day,
        }
    }
}

/// `/healthz` and `/readyz`: `ok` and `ready`.
#[derive(Serialize, ToSchema)]
pub struct HealthStatus {
    pub status: String,
}

/// The `object` tag of an account.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum AccountObject {
    Account,
}

/// The `object` tag of a key.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyObject {
    ApiKey,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Account)]
pub struct AccountView {
    id: String,
    object: AccountObject,
    name: String,
    plan: String,
    created_at: String,
}

/// An account with how many keys it has and may have (one account's answers).
#[derive(Serialize, ToSchema)]
pub struct AccountWithKeys {
    #[serde(flatten)]
    pub account: AccountView,
    /// Keys that are neither revoked nor expired.
    pub active_keys: u64,
    /// The plan's cap on active keys; `null` is no cap.
    pub max_keys: Option<u64>,
}

/// A refill as shown on a key.
#[derive(Serialize, ToSchema)]
pub struct RefillView {
    amount: u64,
    /// Seconds between refills.
    every: u64,
}

/// A key's quota with what is left of it.
#[derive(Serialize, ToSchema)]
pub struct QuotaView {
    requests: u64,
    used: i64,
    remaining: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refill: Option<RefillView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_refill_at: Option<String>,
}

/// A key's record: never its secret.
#[derive(Serialize, ToSchema)]
#[schema(as = ApiKey)]
pub struct KeyView {
    id: String,
    object: ApiKeyObject,
    account_id: String,
    name: String,
    display_prefix: String,
    environment: EnvironmentName,
    permissions: Vec<String>,
    ip_allowlist: Vec<String>,
    status: KeyStatusName,
    created_at: String,
    last_used_at: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    rate_limit: Option<RateLimit>,
    quota: Option<QuotaView>,
    /// The JSON object the operator attached.
    meta: Value,
    rotated_from: Option<String>,
    /// When a secret scanner or an operator reported the key as leaked.
    leaked_at: Option<String>,
    /// A replaced key: it is revoked once unused this long after its successor's first
    /// use (at the latest at `revoked_at`).
    retire_when_idle_seconds: Option<i64>,
}

/// A new key with its secret: the only answers that ever show it (create, rotate).
#[derive(Serialize, ToSchema)]
pub struct ApiKeyWithSecret {
    #[serde(flatten)]
    pub record: KeyView,
    /// The secret. Shown once; keygate keeps only a digest.
    pub key: String,
}

/// A rotation's answer: the new key with its secret, and the key it replaces.
#[derive(Serialize, ToSchema)]
pub struct RotatedKey {
    #[serde(flatten)]
    pub new: ApiKeyWithSecret,
    /// The replaced key: revoked now, or at the end of the grace period.
    pub previous: KeyView,
}

/// `GET /v1/accounts`.
#[derive(Serialize, ToSchema)]
pub struct AccountList {
    pub data: Vec<AccountView>,
    /// Whether more accounts follow this page.
    pub has_more: bool,
    /// Pass as `starting_after` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/api-keys`.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<KeyView>,
    /// Whether more keys follow this page.
    pub has_more: bool,
    /// Pass as `starting_after` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/audit-log`: newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditLog {
    pub data: Vec<AuditView>,
    /// Pass as `before` for the next page; `null` on the last page.
    pub next_before: Option<i64>,
}

/// `GET /v1/api-key-info`.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyInfoAnswer {
    pub data: KeyInfoView,
}

fn quota_view(k: &KeyRecord) -> Option<QuotaView> {
    k.quota.map(|q| QuotaView {
        requests: q.requests,
        used: k.quota_used,
        remaining: (q.requests as i64 - k.quota_used).max(0),
        refill: q.refill.map(|r| RefillView {
            amount: r.amount,
            every: r.every,
        }),
        next_refill_at: q.refill.map(|refill| {
            time(
                k.quota_refilled_at
                    .unwrap_or(k.created_at)
                    .saturating_add((refill.every as i64).saturating_mul(1000)),
            )
        }),
    })
}

pub fn account_view(a: &Account) -> AccountView {
    AccountView {
        id: a.id.clone(),
        object: AccountObject::Account,
        name: a.name.clone(),
        plan: a.plan.clone(),
        created_at: time(a.created_at),
    }
}

pub fn account(a: &Account) -> Value {
    to_json(account_view(a))
}

pub fn key_view(k: &KeyRecord) -> KeyView {
    key_view_at(k, now_ms())
}

/// A key as it stood at `at` (a webhook event's time).
pub fn key_view_at(k: &KeyRecord, at: i64) -> KeyView {
    KeyView {
        id: k.id.clone(),
        object: ApiKeyObject::ApiKey,
        account_id: k.account_id.clone(),
        name: k.name.clone(),
        display_prefix: k.display_prefix.clone(),
        environment: k.environment.into(),
        permissions: k.permissions.clone(),
        ip_allowlist: k.ip_allowlist.clone(),
        status: KeyStatus::of(k, at).into(),
        created_at: time(k.created_at),
        last_used_at: opt_time(k.last_used_at),
        expires_at: opt_time(k.expires_at),
        revoked_at: opt_time(k.revoked_at),
        rate_limit: k.rate_limit,
        quota: quota_view(k),
        meta: k.meta.clone(),
        rotated_from: k.rotated_from.clone(),
        leaked_at: opt_time(k.leaked_at),
        retire_when_idle_seconds: k.retire_when_idle_ms.map(|ms| ms / 1000),
    }
}

pub fn key(k: &KeyRecord) -> Value {
    to_json(key_view(k))
}

/// What a key may read of itself (`GET /v1/api-key-info`).
#[derive(Serialize, ToSchema)]
#[schema(as = ApiKeyInfo)]
pub struct KeyInfoView {
    id: String,
    name: String,
    display_prefix: String,
    environment: EnvironmentName,
    permissions: Vec<String>,
    status: KeyStatusName,
    created_at: String,
    last_used_at: Option<String>,
    expires_at: Option<String>,
}

pub fn key_info(k: &KeyRecord) -> Value {
    to_json(KeyInfoView {
        id: k.id.clone(),
        name: k.name.clone(),
        display_prefix: k.display_prefix.clone(),
        environment: k.environment.into(),
        permissions: k.permissions.clone(),
        status: KeyStatus::of(k, now_ms()).into(),
        created_at: time(k.created_at),
        last_used_at: opt_time(k.last_used_at),
        expires_at: opt_time(k.expires_at),
    })
}

/// Verifications in one hour or day.
#[derive(Serialize, ToSchema)]
pub struct UsageBucketView {
    start: String,
    valid: i64,
    refused: i64,
    /// Count per outcome (`valid`, `rate_limited`, `invalid_key_revoked`, …).
    outcomes: BTreeMap<String, i64>,
}

/// A client address a key was used from.
#[derive(Serialize, ToSchema)]
pub struct SeenIpView {
    ip: String,
    last_seen: String,
}

/// One key's usage over a time range.
#[derive(Serialize, ToSchema)]
#[schema(as = KeyUsage)]
pub struct UsageView {
    key_id: String,
    granularity: GranularityName,
    from: String,
    to: String,
    last_used_at: Option<String>,
    recent_ips: Vec<SeenIpView>,
    quota: Option<QuotaView>,
    /// Count per outcome over the whole range.
    totals: BTreeMap<String, i64>,
    data: Vec<UsageBucketView>,
}

pub fn usage(r: &UsageReport) -> Value {
    to_json(UsageView {
        key_id: r.key.id.clone(),
        granularity: r.granularity.into(),
        from: time(r.from),
        to: time(r.to),
        last_used_at: opt_time(r.key.last_used_at),
        recent_ips: r
            .key
            .recent_ips
            .iter()
            .map(|s| SeenIpView {
                ip: s.ip.clone(),
                last_seen: time(s.last_seen),
            })
            .collect(),
        quota: quota_view(&r.key),
        totals: r.totals.clone(),
        data: r
            .buckets
            .iter()
            .map(|b| UsageBucketView {
                start: time(b.start),
                valid: b.valid(),
                refused: b.refused(),
                outcomes: b.counts.clone(),
            })
            .collect(),
    })
}

/// One management action.
#[derive(Serialize, ToSchema)]
#[schema(as = AuditEvent)]
pub struct AuditView {
    id: String,
    /// Order of insertion; pass the last one as `before` for the next page.
    seq: i64,
    at: String,
    account_id: Option<String>,
    /// `admin` or `key:<key id>`.
    actor: String,
    /// `account.create`, `key.create`, `key.update`, `key.revoke`, `key.rotate`, …
    action: String,
    target_id: Option<String>,
    client_ip: Option<String>,
    details: Value,
}

pub fn audit(e: &AuditEvent) -> Value {
    to_json(AuditView {
        id: e.id.clone(),
        seq: e.seq,
        at: time(e.at),
        account_id: e.account_id.clone(),
        actor: e.actor.clone(),
        action: e.action.clone(),
        target_id: e.target_id.clone(),
        client_ip: e.client_ip.clone(),
        details: e.details.clone(),
    })
}

pub fn list(items: Vec<Value>) -> Value {
    serde_json::json!({ "data": items })
}

/// A page of a list: `{data, has_more, next_cursor}`, the cursor being the last record's id
/// when more follow (pass it back as `starting_after`).
pub fn page<T>(page: &Page<T>, id: impl Fn(&T) -> &str, view: impl Fn(&T) -> Value) -> Value {
    serde_json::json!({
        "data": page.items.iter().map(view).collect::<Vec<_>>(),
        "has_more": page.has_more,
        "next_cursor": page.next_cursor(id),
    })
}
