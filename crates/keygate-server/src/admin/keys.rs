use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json as JsonOut;
use keygate_core::Environment;
use keygate_engine::manage::{Granularity, KeyFilter, KeyStatus, KeyUpdate, NewKey};
use keygate_engine::Error;
use keygate_store::{AuditQuery, Quota, RateLimit};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{Id, Query};
use super::views::{self, parse_time};
use super::Auth;
use crate::edge::json::{nullable, Json, OptionalJson};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    account_id: Option<String>,
    name: String,
    environment: Option<String>,
    permissions: Option<Vec<String>>,
    scope: Option<String>,
    ip_allowlist: Option<Vec<String>>,
    expires_at: Option<String>,
    expires_in: Option<i64>,
    rate_limit: Option<RateLimit>,
    quota: Option<Quota>,
    meta: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    name: Option<String>,
    permissions: Option<Vec<String>>,
    scope: Option<String>,
    ip_allowlist: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    expires_in: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    rate_limit: Option<Option<RateLimit>>,
    #[serde(default, deserialize_with = "nullable")]
    quota: Option<Option<Quota>>,
    meta: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    grace_period_seconds: Option<u64>,
}

fn with_secret(record: &keygate_store::KeyRecord, secret: &keygate_core::ApiKeySecret) -> Value {
    let mut v = views::key(record);
    v["key"] = json!(secret.expose());
    v
}

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
        .get("status")
        .map(|s| {
            KeyStatus::parse(s).ok_or_else(|| {
                Error::validation("status", "status must be active, expired or revoked")
            })
        })
        .transpose()?;
    let environment = query
        .get("environment")
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

pub async fn get(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let key = state.engine.get_key(&caller, &id).await?;
    Ok(JsonOut(views::key(&key)))
}

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

pub async fn revoke(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let key = state.engine.revoke_key(&caller, &id).await?;
    Ok(JsonOut(views::key(&key)))
}

pub async fn rotate(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
    OptionalJson(body): OptionalJson<Rotate>,
) -> Result<impl IntoResponse, ApiError> {
    let rotated = state
        .engine
        .rotate_key(&caller, &id, body.grace_period_seconds)
        .await?;
    let mut v = with_secret(&rotated.key, &rotated.secret);
    v["previous"] = views::key(&rotated.previous);
    Ok((StatusCode::CREATED, JsonOut(v)))
}

/// Usage of one key: counts by outcome per hour or day, last use, recent client addresses,
/// quota. `?from=&to=` (RFC 3339) and `?granularity=hour|day`.
pub async fn usage(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
    query: Query,
) -> Result<impl IntoResponse, ApiError> {
    let query = query.only(&["from", "to", "granularity"])?;
    let granularity = match query.get("granularity") {
        None => Granularity::Hour,
        Some(g) => Granularity::parse(g)
            .ok_or_else(|| Error::validation("granularity", "granularity must be hour or day"))?,
    };
    let from = query
        .get("from")
        .map(|s| parse_time("from", s))
        .transpose()?;
    let to = query.get("to").map(|s| parse_time("to", s)).transpose()?;
    let report = state
        .engine
        .key_usage(&caller, &id, from, to, granularity)
        .await?;
    Ok(JsonOut(views::usage(&report)))
}

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
            .get("from")
            .map(|s| parse_time("from", s))
            .transpose()?,
        to: query.get("to").map(|s| parse_time("to", s)).transpose()?,
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
