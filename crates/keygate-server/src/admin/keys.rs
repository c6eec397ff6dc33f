use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json as JsonOut;
use keygate_core::Environment;
use keygate_engine::manage::{Granularity, KeyFilter, KeyStatus, KeyUpdate, NewKey, RotateOptions};
use keygate_engine::Error;
use keygate_store::{AuditQuery, Quota, RateLimit};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Id, Query};
use super::openapi::{
    AuthErrors, BodyErrors, ConflictErrors, IpOrNetwork, Name, NameFilter, PermissionGrant,
    RecordErrors, Scope,
};
use super::views::{
    self, parse_time, ApiKeyList, ApiKeyWithSecret, AuditLog, EnvironmentName, GranularityName,
    KeyStatusName, KeyView, RotatedKey, UsageView,
};
use super::Auth;
use crate::edge::json::{nullable, Json, OptionalJson};
use crate::{ApiError, AppState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// The account the key belongs to. A self-service key may leave it out: its own account.
    #[schema(value_type = String)]
    account_id: Option<String>,
    #[schema(value_type = Name)]
    name: String,
    /// `live` by default.
    #[schema(value_type = Option<EnvironmentName>)]
    environment: Option<String>,
    /// The key's permissions; not with `scope`.
    #[schema(value_type = Option<Vec<PermissionGrant>>, max_items = 256)]
    permissions: Option<Vec<String>>,
    #[schema(value_type = Option<Scope>)]
    scope: Option<String>,
    #[schema(value_type = Option<Vec<IpOrNetwork>>, max_items = 256)]
    ip_allowlist: Option<Vec<String>>,
    /// When the key stops working (RFC 3339, in the future); not with `expires_in`.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Seconds from now until the key stops working (up to 100 years); not with `expires_at`.
    #[schema(minimum = 1, maximum = 3153600000_i64)]
    expires_in: Option<i64>,
    rate_limit: Option<RateLimit>,
    quota: Option<Quota>,
    /// A JSON object of up to 8 KiB, returned with the key and by `/v1/verify`.
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[schema(value_type = Option<Name>)]
    name: Option<String>,
    /// The key's permissions; not with `scope`.
    #[schema(value_type = Option<Vec<PermissionGrant>>, max_items = 256)]
    permissions: Option<Vec<String>>,
    #[schema(value_type = Option<Scope>)]
    scope: Option<String>,
    #[schema(value_type = Option<Vec<IpOrNetwork>>, max_items = 256)]
    ip_allowlist: Option<Vec<String>>,
    /// When the key stops working (RFC 3339, in the future); `null` for never. Not with
    /// `expires_in`.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<String>>,
    /// Seconds from now until the key stops working (up to 100 years); not with `expires_at`.
    #[schema(minimum = 1, maximum = 3153600000_i64)]
    expires_in: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    rate_limit: Option<Option<RateLimit>>,
    #[serde(default, deserialize_with = "nullable")]
    quota: Option<Option<Quota>>,
    /// A JSON object of up to 8 KiB.
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the replaced key keeps working, up to 30 days; `0` (the default) revokes it now.
    #[schema(maximum = 2592000)]
    grace_period_seconds: Option<u64>,
    /// Revoke the replaced key earlier: once it has gone unused this long after the new
    /// key's first use. Needs `grace_period_seconds`, and at most as long.
    #[schema(minimum = 1, maximum = 2592000)]
    retire_when_idle_seconds: Option<u64>,
}

/// `GET /v1/api-keys`'s query parameters (documentation: the handler reads them by name).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct KeyListQuery {
    /// Only this account's keys.
    account_id: Option<String>,
    /// Only keys in this state.
    status: Option<KeyStatusName>,
    /// Only keys of this environment.
    environment: Option<EnvironmentName>,
    #[param(value_type = Option<NameFilter>, inline)]
    name: Option<String>,
    /// Page size, 1 to 1000 (100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`: the page starts after this key.
    starting_after: Option<String>,
}

/// `GET /v1/api-keys/{id}/usage`'s query parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct UsageQuery {
    /// Start (RFC 3339); defaults to 24 hours (hourly) or 30 days (daily) ago.
    #[param(format = DateTime)]
    from: Option<String>,
    /// End (RFC 3339); defaults to now.
    #[param(format = DateTime)]
    to: Option<String>,
    /// Bucket size; `hour` by default.
    granularity: Option<GranularityName>,
}

/// `GET /v1/audit-log`'s query parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuditLogQuery {
    /// Only this account's events.
    account_id: Option<String>,
    /// Only events about this record.
    target_id: Option<String>,
    /// Events at or after this time (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Events before this time (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Events before this `seq` (the previous page's `next_before`).
    before: Option<i64>,
    /// Page size, 100 by default; values outside 1 to 1000 are brought within.
    #[param(value_type = Option<u64>, maximum = 4294967295_u64)]
    limit: Option<u32>,
}

fn with_secret(record: &keygate_store::KeyRecord, secret: &keygate_core::ApiKeySecret) -> Value {
    let mut v = views::key(record);
    v["key"] = json!(secret.expose());
    v
}

/// Create a key. The secret is in this answer only.
#[utoipa::path(
    post,
    operation_id = "create_api_key",
    path = "/v1/api-keys",
    tag = "api-keys",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    request_body = CreateKey,
    responses((status = 201, description = "The new key with its secret", body = ApiKeyWithSecret), AuthErrors, RecordErrors, BodyErrors)
)]
pub async fn create(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Json(body): Json<CreateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let new = NewKey {
        account_id: body.account_id,
        name: body.name,
        environment: body.environment,
        permissions: body.permissions,
        scope: body.scope,
        ip_allowlist: body.ip_allowlist,
        expires_at: body
            .expires_at
            .as_deref()
            .map(|s| parse_time("expires_at", s))
            .transpose()?,
        expires_in: body.expires_in,
        rate_limit: body.rate_limit,
        quota: body.quota,
        meta: body.meta,
    };
    let (record, secret) = state.engine.create_key(&caller, new).await?;
    Ok((StatusCode::CREATED, JsonOut(with_secret(&record, &secret))))
}

/// `GET /v1/api-keys`: a page of keys, filtered by `account_id`, `status`, `environment`
/// and `name` (a case-insensitive substring).
#[utoipa::path(
    get,
    operation_id = "list_api_keys",
    path = "/v1/api-keys",
    tag = "api-keys",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(KeyListQuery),
    responses((status = 200, description = "The keys", body = ApiKeyList), AuthErrors, RecordErrors)
)]
pub async fn list(
    State(state): State<AppState>,
    Auth(caller): Auth,
    query: Query,
) -> Result<impl IntoResponse, ApiError> {
    let query = query.only(&[
        "account_id",
        "status",
        "environment",
        "name",
        "limit",
        "starting_after",
    ])?;
    let status = query
        .typed("status")
        .map(|s| {
            KeyStatus::parse(s).ok_or_else(|| {
                Error::validation("status", "status must be active, expired or revoked")
            })
        })
        .transpose()?;
    let environment = query
        .typed("environment")
        .map(|s| {
            Environment::parse(s)
                .ok_or_else(|| Error::validation("environment", "environment must be live or test"))
        })
        .transpose()?;
    let filter = KeyFilter {
        account_id: query.get("account_id").map(str::to_owned),
        status,
        environment,
        name: query.get("name").map(str::to_owned),
    };
    let page = state
        .engine
        .key_page(&caller, &filter, &query.page()?)
        .await?;
    Ok(JsonOut(views::page(&page, |k| &k.id, views::key)))
}

/// Read a key.
#[utoipa::path(
    get,
    operation_id = "get_api_key",
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The key", body = KeyView), AuthErrors, RecordErrors)
)]
pub async fn get(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let key = state.engine.get_key(&caller, &id).await?;
    Ok(JsonOut(views::key(&key)))
}

/// Update a key: name, permissions, allowed addresses, expiry, rate limit, quota, meta.
#[utoipa::path(
    patch,
    operation_id = "update_api_key",
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(("id" = String, Path, description = "The key's id")),
    request_body = UpdateKey,
    responses((status = 200, description = "The changed key", body = KeyView), AuthErrors, RecordErrors, ConflictErrors, BodyErrors)
)]
pub async fn update(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
    Json(body): Json<UpdateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let expires_at = match body.expires_at {
        Some(Some(s)) => Some(Some(parse_time("expires_at", &s)?)),
        Some(None) => Some(None),
        None => None,
    };
    let update = KeyUpdate {
        name: body.name,
        permissions: body.permissions,
        scope: body.scope,
        ip_allowlist: body.ip_allowlist,
        expires_at,
        expires_in: body.expires_in,
        rate_limit: body.rate_limit,
        quota: body.quota,
        meta: body.meta,
    };
    let key = state.engine.update_key(&caller, &id, update).await?;
    Ok(JsonOut(views::key(&key)))
}

/// Revoke a key, permanently.
#[utoipa::path(
    post,
    operation_id = "revoke_api_key",
    path = "/v1/api-keys/{id}/revoke",
    tag = "api-keys",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The revoked key", body = KeyView), AuthErrors, RecordErrors, ConflictErrors)
)]
pub async fn revoke(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let key = state.engine.revoke_key(&caller, &id).await?;
    Ok(JsonOut(views::key(&key)))
}

/// Replace a key with a new one; the old one stops now or after a grace period.
#[utoipa::path(
    post,
    operation_id = "rotate_api_key",
    path = "/v1/api-keys/{id}/rotate",
    tag = "api-keys",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(("id" = String, Path, description = "The key's id")),
    request_body(content = Option<Rotate>, description = "Optional: `{\"grace_period_seconds\": n, \"retire_when_idle_seconds\": m}`"),
    responses((status = 201, description = "The new key with its secret, and the replaced key", body = RotatedKey), AuthErrors, RecordErrors, ConflictErrors, BodyErrors)
)]
pub async fn rotate(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
    OptionalJson(body): OptionalJson<Rotate>,
) -> Result<impl IntoResponse, ApiError> {
    let options = RotateOptions {
        grace_seconds: body.grace_period_seconds,
        retire_when_idle_seconds: body.retire_when_idle_seconds,
    };
    let rotated = state.engine.rotate_key_with(&caller, &id, options).await?;
    let mut v = with_secret(&rotated.key, &rotated.secret);
    v["previous"] = views::key(&rotated.previous);
    Ok((StatusCode::CREATED, JsonOut(v)))
}

/// Usage of one key: counts by outcome per hour or day, last use, recent client addresses,
/// quota. `?from=&to=` (RFC 3339) and `?granularity=hour|day`.
#[utoipa::path(
    get,
    operation_id = "get_api_key_usage",
    path = "/v1/api-keys/{id}/usage",
    tag = "api-keys",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(("id" = String, Path, description = "The key's id"), UsageQuery),
    responses((status = 200, description = "The key's usage", body = UsageView), AuthErrors, RecordErrors)
)]
pub async fn usage(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
    query: Query,
) -> Result<impl IntoResponse, ApiError> {
    let query = query.only(&["from", "to", "granularity"])?;
    let granularity = match query.typed("granularity") {
        None => Granularity::Hour,
        Some(g) => Granularity::parse(g)
            .ok_or_else(|| Error::validation("granularity", "granularity must be hour or day"))?,
    };
    let from = query
        .typed("from")
        .map(|s| parse_time("from", s))
        .transpose()?;
    let to = query.typed("to").map(|s| parse_time("to", s)).transpose()?;
    let report = state
        .engine
        .key_usage(&caller, &id, from, to, granularity)
        .await?;
    Ok(JsonOut(views::usage(&report)))
}

/// Lifecycle events, newest first, a page at a time.
#[utoipa::path(
    get,
    operation_id = "list_audit_log",
    path = "/v1/audit-log",
    tag = "audit",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(AuditLogQuery),
    responses((status = 200, description = "A page of events", body = AuditLog), AuthErrors, RecordErrors)
)]
pub async fn audit_log(
    State(state): State<AppState>,
    Auth(caller): Auth,
    query: Query,
) -> Result<impl IntoResponse, ApiError> {
    let query = query.only(&["account_id", "target_id", "from", "to", "before", "limit"])?;
    let limit = query.number::<u32>("limit")?.unwrap_or(100).clamp(1, 1000);
    let filter = AuditQuery {
        account_id: query.get("account_id"),
        target_id: query.get("target_id"),
        before: query.number::<i64>("before")?,
        from: query
            .typed("from")
            .map(|s| parse_time("from", s))
            .transpose()?,
        to: query.typed("to").map(|s| parse_time("to", s)).transpose()?,
        limit,
    };
    let events = state.engine.audit_events(&caller, filter).await?;
    let next = events
        .last()
        .filter(|_| events.len() as u32 >= limit)
        .map(|e| e.seq);
    let mut v = views::list(events.iter().map(views::audit).collect());
    v["next_before"] = json!(next);
    Ok(JsonOut(v))
}
