//! Verification for other services: `POST /v1/verify` (JSON in, JSON out), `/v1/auth`
//! (forward-auth for nginx `auth_request`, Traefik ForwardAuth, Envoy ext_authz), and
//! `GET /v1/api-key-info` (a key reads its own record).

use std::net::IpAddr;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json as JsonOut;
use keygate_core::{Outcome, Permission, Required};
use keygate_engine::{Error, Verdict, VerifyRequest};
use serde::Deserialize;
use serde_json::json;

use super::auth::request_ip;
use super::Auth;
use crate::credentials::{key_from_headers, query_carries_key};
use crate::json::Json;
use crate::middleware::current_request_id;
use crate::views;
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    key: Option<String>,
    permission: Option<String>,
    method: Option<String>,
    path: Option<String>,
    ip: Option<String>,
}

/// The caller of `/v1/verify`: the admin token or the verify token.
pub struct VerifyCaller;

impl FromRequestParts<AppState> for VerifyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = key_from_headers(&parts.headers)?.ok_or(Outcome::MissingCredentials)?;
        let pepper = state.engine.pepper();
        let ok = state.admin.matches(pepper, &token)
            || state
                .verify_token
                .as_ref()
                .is_some_and(|t| t.matches(pepper, &token));
        if ok {
            Ok(VerifyCaller)
        } else {
            Err(ApiError::BadAdminCredentials)
        }
    }
}

fn required_of(state: &AppState, body: &VerifyBody) -> Result<Option<Required>, ApiError> {
    match (&body.permission, &body.method, &body.path) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(Error::validation(
            "permission",
            "give either permission or method and path, not both",
        )
        .into()),
        (Some(p), None, None) => Permission::parse_concrete(p)
            .map(|p| Some(Required::Permission(p)))
            .map_err(|e| Error::validation("permission", e.to_string()).into()),
        (None, method, Some(path)) => {
            if !path.starts_with('/') {
                return Err(Error::validation("path", "path must start with '/'").into());
            }
            let method = method.as_deref().unwrap_or("GET");
            Ok(Some(state.engine.routes().required(method, path)))
        }
        (None, Some(_), None) => Err(Error::validation("path", "method needs a path").into()),
        (None, None, None) => Ok(None),
    }
}

fn verdict_json(verdict: &Verdict) -> serde_json::Value {
    let key = verdict.key.as_ref();
    let mut v = json!({
        "valid": verdict.outcome.is_valid(),
        "code": verdict.outcome.code(),
        "key_id": key.map(|k| k.id()),
        "account_id": key.map(|k| k.account_id()),
        "environment": key.map(|k| k.environment()),
        "permissions": key.map(|k| &k.record.permissions),
        "expires_at": key.map(|k| views::opt_time(k.record.expires_at)),
        "meta": key.map(|k| &k.record.meta),
        "request_id": current_request_id(),
    });
    if !verdict.outcome.is_valid() {
        v["error"] = json!(verdict.outcome.message());
    }
    if let Some(r) = verdict.rate_limit {
        v["rate_limit"] =
            json!({"limit": r.limit, "remaining": r.remaining, "reset_seconds": r.reset_seconds});
    }
    v
}

pub async fn verify(
    State(state): State<AppState>,
    _: VerifyCaller,
    Json(body): Json<VerifyBody>,
) -> Result<Response, ApiError> {
    let required = required_of(&state, &body)?;
    let client_ip = body
        .ip
        .as_deref()
        .map(|s| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| Error::validation("ip", "ip must be an IPv4 or IPv6 address"))
        })
        .transpose()?;
    let outcome_only = |o: Outcome| Verdict {
        outcome: o,
        key: None,
        rate_limit: None,
    };
    let in_url = body
        .path
        .as_deref()
        .and_then(|p| p.split_once('?'))
        .is_some_and(|(_, q)| query_carries_key(q, state.engine.key_format()));
    let verdict = match body.key.as_deref().map(str::trim) {
        _ if in_url => outcome_only(Outcome::KeyInUrl),
        None | Some("") => outcome_only(Outcome::MissingCredentials),
        Some(key) => {
            state
                .engine
                .verify(&VerifyRequest {
                    key,
                    required: required.as_ref(),
                    client_ip,
                })
                .await?
        }
    };
    let mut response = JsonOut(verdict_json(&verdict)).into_response();
    if let Some(rate) = &verdict.rate_limit {
        views::rate_limit_headers(response.headers_mut(), rate);
    }
    Ok(response)
}

/// The original request a proxy asks about: nginx's `X-Original-*`, Traefik's
/// `X-Forwarded-*`, or, for Envoy, this request's own method and the path after `/v1/auth`.
fn original_request(parts: &Parts) -> (Option<String>, Option<String>) {
    let header = |names: &[&str]| {
        names.iter().find_map(|n| {
            parts
                .headers
                .get(*n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
    };
    let uri = header(&["x-original-uri", "x-forwarded-uri"]).or_else(|| {
        parts
            .uri
            .path()
            .strip_prefix("/v1/auth")
            .filter(|p| p.starts_with('/'))
            .map(|p| match parts.uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p.to_owned(),
            })
    });
    let method = header(&["x-original-method", "x-forwarded-method"]);
    (method, uri)
}

pub(crate) fn identity_headers(headers: &mut HeaderMap, verdict: &Verdict) {
    let Some(key) = &verdict.key else { return };
    let pairs = [
        ("x-keygate-key-id", key.id().to_owned()),
        ("x-keygate-account-id", key.account_id().to_owned()),
        (
            "x-keygate-environment",
            key.environment().as_str().to_owned(),
        ),
        ("x-keygate-permissions", key.record.permissions.join(",")),
    ];
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// Forward-auth. Refusals also carry their code and message as `X-Keygate-Code` and
/// `X-Keygate-Error`, for proxies that cannot pass the body on (nginx `auth_request`).
pub async fn forward_auth(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let mut response = match judge_forwarded(state, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    crate::error::expose_error_code(&mut response);
    response
}

async fn judge_forwarded(
    state: AppState,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let (method, uri) = original_request(&parts);
    if let Some((_, query)) = uri.as_deref().and_then(|u| u.split_once('?')) {
        if query_carries_key(query, state.engine.key_format()) {
            return Err(Outcome::KeyInUrl.into());
        }
    }
    let key = key_from_headers(&parts.headers)?.ok_or(Outcome::MissingCredentials)?;
    // Without the original request there is nothing to judge a permission against: only
    // a key holding `*` passes (a proxy that forgot X-Original-URI must not open everything).
    let required = match uri.as_deref() {
        Some(u) => {
            let method = method.as_deref().unwrap_or(parts.method.as_str());
            state.engine.routes().required(method, u)
        }
        None => Required::Unmapped,
    };
    let verdict = state
        .engine
        .verify(&VerifyRequest {
            key: &key,
            required: Some(&required),
            client_ip: request_ip(&parts, &state),
        })
        .await?;
    if !verdict.outcome.is_valid() {
        let mut response = crate::error::outcome_response(verdict.outcome, verdict.rate_limit);
        identity_headers(response.headers_mut(), &verdict);
        return Ok(response);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    identity_headers(response.headers_mut(), &verdict);
    if let Some(rate) = &verdict.rate_limit {
        views::rate_limit_headers(response.headers_mut(), rate);
    }
    Ok(response)
}

pub async fn key_info(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> Result<impl IntoResponse, ApiError> {
    let record = state.engine.key_info(&caller).await?;
    Ok(JsonOut(json!({"data": views::key_info(&record)})))
}
