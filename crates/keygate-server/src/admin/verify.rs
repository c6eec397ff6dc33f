//! Verification for other services: `POST /v1/verify` (JSON in, JSON out), `/v1/auth`
//! (forward-auth for nginx `auth_request`, Traefik ForwardAuth, Envoy ext_authz), and
//! `GET /v1/api-key-info` (a key reads its own record).

use std::borrow::Cow;
use std::net::IpAddr;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json as JsonOut;
use keygate_core::{Environment, InvalidReason, Outcome, Permission, Required};
use keygate_edge::authorize::{authorize, AuthorizeRequest, Credential, Target};
use keygate_edge::credentials::key_from_headers;
use keygate_edge::error::expose_error_code;
use keygate_edge::request_id::{try_current_request_id, RequestId};
use keygate_edge::{rate_limit_headers, Authorization};
use keygate_engine::manage::Caller;
use keygate_engine::{Error, RateLimitStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::openapi::{AuthErrors, BodyErrors, ForwardAuthAnswers, IpAddress, RequiredPermission};
use super::views::{self, ApiKeyInfoAnswer, EnvironmentName};
use crate::edge::json::Json;
use crate::edge::request_ip;
use crate::{ApiError, AppState};

/// What to verify: a key, and either a permission or the method and path of a request (or
/// neither: any valid key).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// The key to verify.
    key: Option<String>,
    /// A permission the key must have; not with `method` and `path`.
    #[schema(value_type = Option<RequiredPermission>)]
    permission: Option<String>,
    /// The request's method (`GET` by default); needs `path`.
    method: Option<String>,
    /// The request's path, starting with `/`.
    #[schema(pattern = "^/")]
    path: Option<String>,
    /// The client's address, for keys with an allowlist.
    #[schema(value_type = Option<IpAddress>)]
    ip: Option<String>,
}

/// The rate limit state of a verified key.
#[derive(Serialize, ToSchema)]
pub struct VerifyRateLimit {
    limit: u32,
    remaining: u32,
    reset_seconds: u64,
}

/// `/v1/verify`'s answer, valid or not ([`VerifyAnswer::of`] builds it; borrowed from the
/// cached key and serialized straight to the body).
#[derive(Serialize, ToSchema)]
pub struct VerifyAnswer<'a> {
    valid: bool,
    /// `valid`, or why not (`invalid_key`, `insufficient_permissions`, `rate_limited`, …).
    code: &'static str,
    key_id: Option<&'a str>,
    account_id: Option<&'a str>,
    #[schema(value_type = Option<EnvironmentName>)]
    environment: Option<Environment>,
    permissions: Option<&'a [String]>,
    expires_at: Option<String>,
    #[schema(value_type = Option<Object>)]
    meta: Option<&'a serde_json::Value>,
    #[schema(value_type = String)]
    #[serde(serialize_with = "keygate_edge::request_id::serialize_or_unknown")]
    request_id: Option<RequestId>,
    /// The refusal's message (refusals only).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    /// For keys with a rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<VerifyRateLimit>,
    /// The token's id when the credential was a short-lived token (`POST /v1/tokens`):
    /// then `key_id` is the key it was derived from, `permissions` the token's scope and
    /// `expires_at` the earlier of the token's and the key's ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_id: Option<&'a str>,
}

/// The caller of `/v1/verify`: the admin token or the verify token.
pub struct VerifyCaller;

impl FromRequestParts<AppState> for VerifyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = key_from_headers(&parts.headers)?.ok_or(Outcome::MissingCredentials)?;
        let digest = state.engine.pepper().digest(token.as_bytes());
        let ok = state.admin.matches_digest(&digest)
            || state
                .verify_token
                .as_ref()
                .is_some_and(|t| t.matches_digest(&digest));
        if ok {
            Ok(VerifyCaller)
        } else {
            Err(ApiError::BadAdminCredentials)
        }
    }
}

/// What the key must be allowed: a permission, or the method and path of a request.
fn target_of(body: &VerifyBody) -> Result<Target<'_>, ApiError> {
    match (&body.permission, &body.method, &body.path) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(Error::validation(
            "permission",
            "give either permission or method and path, not both",
        )
        .into()),
        (Some(p), None, None) => Permission::parse_concrete(p)
            .map(|p| Target::Required(Cow::Owned(Required::Permission(p))))
            .map_err(|e| Error::validation("permission", e.to_string()).into()),
        (None, method, Some(path)) => {
            if !path.starts_with('/') {
                return Err(Error::validation("path", "path must start with '/'").into());
            }
            Ok(Target::Request {
                method: method.as_deref().unwrap_or("GET"),
                path,
            })
        }
        (None, Some(_), None) => Err(Error::validation("path", "method needs a path").into()),
        (None, None, None) => Ok(Target::AnyPermission),
    }
}

impl<'a> VerifyAnswer<'a> {
    /// The answer for any verdict, valid or not.
    fn of(authorization: &'a Authorization) -> VerifyAnswer<'a> {
        let (outcome, key) = match authorization {
            Authorization::Allowed(identity) => (Outcome::Valid, Some(&identity.key)),
            Authorization::Refused { error, key } => {
                let outcome = match error {
                    ApiError::Outcome(o, _) | ApiError::Edge(o) => *o,
                    _ => Outcome::InvalidKey(InvalidReason::Unknown),
                };
                (outcome, key.as_ref())
            }
        };
        VerifyAnswer {
            valid: outcome.is_valid(),
            code: outcome.code(),
            key_id: key.map(|k| k.id()),
            account_id: key.map(|k| k.account_id()),
            environment: key.map(|k| k.environment()),
            permissions: key.map(|k| k.permission_strings()),
            expires_at: key.and_then(|k| views::opt_time(k.expires_at())),
            meta: key.map(|k| k.meta()),
            request_id: try_current_request_id(),
            error: (!outcome.is_valid()).then(|| outcome.message()),
            rate_limit: rate_of(authorization).map(|r| VerifyRateLimit {
                limit: r.limit,
                remaining: r.remaining,
                reset_seconds: r.reset_seconds,
            }),
            token_id: key.and_then(|k| k.token_id()),
        }
    }
}

fn rate_of(authorization: &Authorization) -> Option<&RateLimitStatus> {
    match authorization {
        Authorization::Allowed(identity) => identity.rate_limit.as_ref(),
        Authorization::Refused {
            error: ApiError::Outcome(_, rate),
            ..
        } => rate.as_ref(),
        Authorization::Refused { .. } => None,
    }
}

/// Verify a key for a service: the answer says whether it is valid and whose it is.
#[utoipa::path(
    post,
    operation_id = "verify_key",
    path = "/v1/verify",
    tag = "verification",
    security(("verify_token" = []), ("admin_token" = [])),
    request_body = VerifyBody,
    responses(
        (
            status = 200,
            description = "The verdict, valid or not",
            body = VerifyAnswer,
            headers(
                (
                    "Cache-Control" = String,
                    description = "`private, max-age=N` when a remote cache may reuse a valid verdict for N seconds (a key with no rate limit and no quota; never past its expiry or a scheduled revocation), `no-store` otherwise"
                )
            )
        ),
        AuthErrors,
        BodyErrors
    )
)]
pub async fn verify(
    State(state): State<AppState>,
    _: VerifyCaller,
    Json(body): Json<VerifyBody>,
) -> Result<Response, ApiError> {
    let target = target_of(&body)?;
    let client_ip = body
        .ip
        .as_deref()
        .map(|s| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| Error::validation("ip", "ip must be an IPv4 or IPv6 address"))
        })
        .transpose()?;
    let authorization = authorize(
        &state.engine,
        &AuthorizeRequest {
            credential: Credential::Key(body.key.as_deref()),
            target,
            client_ip,
        },
    )
    .await;
    // Outcomes are the answer's content; anything else (the store is down) is an error.
    let authorization = match authorization {
        Authorization::Refused { error, .. }
            if !matches!(error, ApiError::Outcome(..) | ApiError::Edge(_)) =>
        {
            return Err(error)
        }
        authorization => authorization,
    };
    let mut response = JsonOut(VerifyAnswer::of(&authorization)).into_response();
    let cache_control = super::key_changes::verify_cache_control(&state.engine, &authorization);
    response
        .headers_mut()
        .insert(axum::http::header::CACHE_CONTROL, cache_control);
    if let Some(rate) = rate_of(&authorization) {
        rate_limit_headers(response.headers_mut(), rate);
    }
    Ok(response)
}

/// The headers through which a proxy names the request it asks about (forward-auth). Read by
/// [`original_request`]; this struct is their OpenAPI description.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct OriginalRequestHeaders {
    /// The original request's path and query (nginx `auth_request`).
    #[param(rename = "X-Original-URI")]
    original_uri: Option<String>,
    /// The original request's method (nginx).
    #[param(rename = "X-Original-Method")]
    original_method: Option<String>,
    /// The original request's path and query (Traefik ForwardAuth).
    #[param(rename = "X-Forwarded-Uri")]
    forwarded_uri: Option<String>,
    /// The original request's method (Traefik).
    #[param(rename = "X-Forwarded-Method")]
    forwarded_method: Option<String>,
}

/// The original request a proxy asks about: nginx's `X-Original-*`, Traefik's
/// `X-Forwarded-*`, or, for Envoy, this request's own method and the path after `/v1/auth`.
fn original_request(parts: &Parts) -> (Option<&str>, Option<Cow<'_, str>>) {
    // Prebuilt names: a `&str` name is parsed and hashed anew on every lookup.
    const ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
    const FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
    const ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
    const FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
    // One pass over the few headers a proxy sends, instead of four lookups that each hash
    // a name. Each slot keeps the first value of its name, as a lookup would.
    let mut found: [Option<&HeaderValue>; 4] = [None; 4];
    for (name, value) in &parts.headers {
        let slot = if *name == ORIGINAL_URI {
            0
        } else if *name == FORWARDED_URI {
            1
        } else if *name == ORIGINAL_METHOD {
            2
        } else if *name == FORWARDED_METHOD {
            3
        } else {
            continue;
        };
        found[slot].get_or_insert(value);
    }
    let text = |slot: usize| found[slot].and_then(|v| v.to_str().ok());
    let uri = text(0).or_else(|| text(1)).map(Cow::Borrowed).or_else(|| {
        parts
            .uri
            .path()
            .strip_prefix("/v1/auth")
            .filter(|p| p.starts_with('/'))
            .map(|p| match parts.uri.query() {
                Some(q) => Cow::Owned(format!("{p}?{q}")),
                None => Cow::Borrowed(p),
            })
    });
    let method = text(2).or_else(|| text(3));
    (method, uri)
}

/// Forward-auth: `204` with the identity headers, or the refusal. Refusals also carry their
/// code and message as `X-Keygate-Code` and `X-Keygate-Error`, for proxies that cannot pass
/// the body on (nginx `auth_request`).
#[utoipa::path(
    method(get, post, put, patch, delete, head, options, trace),
    path = "/v1/auth",
    tag = "verification",
    security(("api_key" = []), ("api_key_header" = [])),
    params(OriginalRequestHeaders),
    responses(ForwardAuthAnswers)
)]
pub async fn forward_auth(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let (method, uri) = original_request(&parts);
    let target = match uri.as_deref() {
        Some(path) => Target::Request {
            method: method.unwrap_or(parts.method.as_str()),
            path,
        },
        None => Target::Unknown,
    };
    let authorization = authorize(
        &state.engine,
        &AuthorizeRequest {
            credential: Credential::Headers(&parts.headers),
            target,
            client_ip: request_ip(&parts, &state),
        },
    )
    .await;
    let mut response = authorization.into_response();
    expose_error_code(&mut response);
    response
}

/// Forward-auth with the original path after `/v1/auth` (Envoy `ext_authz`): the method
/// and path asked about are this request's own. The router sends both paths to
/// [`forward_auth`]; this is the second path's OpenAPI operation.
#[utoipa::path(
    method(get, post, put, patch, delete, head, options, trace),
    path = "/v1/auth/{path}",
    tag = "verification",
    security(("api_key" = []), ("api_key_header" = [])),
    params(
        OriginalRequestHeaders,
        ("path" = String, Path, description = "The original request's path (may contain `/`)"),
    ),
    responses(ForwardAuthAnswers)
)]
pub async fn forward_auth_path(
    state: State<AppState>,
    request: axum::extract::Request,
) -> Response {
    forward_auth(state, request).await
}

/// `GET /v1/api-key-info`: the key that makes the request reads its own record. It is
/// judged like any verification (a malformed key is `malformed_key`, an unknown or revoked
/// one `invalid_key`).
#[utoipa::path(
    get,
    operation_id = "get_api_key_info",
    path = "/v1/api-key-info",
    tag = "verification",
    security(("api_key" = []), ("api_key_header" = [])),
    responses((status = 200, description = "The calling key's own record", body = ApiKeyInfoAnswer), AuthErrors)
)]
pub async fn key_info(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let client_ip = request_ip(&parts, &state);
    let presented = key_from_headers(&parts.headers).ok().flatten();
    let caller = if presented.is_some_and(|t| state.admin.matches(state.engine.pepper(), t)) {
        // The engine explains that the admin token is not a key (403).
        Caller::admin(client_ip)
    } else {
        let authorization = authorize(
            &state.engine,
            &AuthorizeRequest {
                credential: Credential::Headers(&parts.headers),
                target: Target::AnyPermission,
                client_ip,
            },
        )
        .await;
        match authorization {
            Authorization::Allowed(identity) => identity.caller(client_ip),
            Authorization::Refused { error, .. } => return Err(error),
        }
    };
    let record = state.engine.key_info(&caller).await?;
    Ok(JsonOut(json!({"data": views::key_info(&record)})).into_response())
}
