//! The one authorize path: read the credential → work out the required permission →
//! verify → the identity to pass on, or the refusal. Forward-auth, `/v1/verify`, key info,
//! the gateway, the dashboard's sign-in and the tower layer all go through [`authorize`].

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use keygate_core::{Environment, Outcome, Required};
use keygate_engine::manage::{Actor, Caller};
use keygate_engine::CachedKey;
use keygate_engine::{AdminToken, Engine, RateLimitStatus, Verdict, VerifyRequest};

use crate::credentials::{key_from_headers, query_carries_key};
use crate::ApiError;

/// Where the key comes from.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// The request's own headers (`Authorization: Bearer`, `X-API-Key`, `APIKEY`).
    Headers(&'a HeaderMap),
    /// A key handed over by the caller (`/v1/verify`'s body); `None`: none was given.
    Key(Option<&'a str>),
}

/// What the key must be allowed to do.
#[derive(Clone, Debug)]
pub enum Target<'a> {
    /// The request as its client sent it: the permission comes from the route table and
    /// the method + path rules. A `path` with a query that carries a key is refused.
    Request { method: &'a str, path: &'a str },
    /// A permission named explicitly (borrowed where the caller keeps it, as a route's
    /// layer does, so a request does not copy it).
    Required(Cow<'a, Required>),
    /// The original request is not known (a proxy that forgot `X-Original-URI`): only a
    /// key holding `*` passes, so a misconfiguration never opens everything.
    Unknown,
    /// Any valid key: authentication only (key info, self-service sign-in).
    AnyPermission,
}

/// One request to judge.
#[derive(Clone, Debug)]
pub struct AuthorizeRequest<'a> {
    pub credential: Credential<'a>,
    pub target: Target<'a>,
    /// The client address (after trusted proxies), for allowlists.
    pub client_ip: Option<IpAddr>,
}

/// The verified identity of an allowed request.
#[derive(Clone, Debug)]
pub struct Identity {
    pub key: Arc<CachedKey>,
    /// The key's rate-limit state, for keys with a limit.
    pub rate_limit: Option<RateLimitStatus>,
}

impl Identity {
    pub fn key_id(&self) -> &str {
        self.key.id()
    }

    pub fn account_id(&self) -> &str {
        self.key.account_id()
    }

    pub fn environment(&self) -> Environment {
        self.key.environment()
    }

    /// The key's permissions as stored.
    pub fn permissions(&self) -> &[String] {
        self.key.permission_strings()
    }

    /// A management caller acting as this key.
    pub fn caller(&self, client_ip: Option<IpAddr>) -> Caller {
        Caller {
            actor: Actor::Key(self.key.clone()),
            client_ip,
        }
    }

    /// Adds the identity headers (`X-Keygate-Key-Id`, `-Account-Id`, `-Environment`,
    /// `-Permissions`) and the rate-limit fields to `headers`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        identity_headers(headers, &self.key);
        if let Some(rate) = &self.rate_limit {
            rate_limit_headers(headers, rate);
        }
    }
}

/// The verdict on one request.
#[derive(Debug)]
pub enum Authorization {
    Allowed(Identity),
    Refused {
        error: ApiError,
        /// The key, when one was found but may not do this (insufficient permissions,
        /// address not allowed, rate limited): forward-auth passes its id on.
        key: Option<Arc<CachedKey>>,
    },
}

impl Authorization {
    fn refused(error: impl Into<ApiError>) -> Authorization {
        Authorization::Refused {
            error: error.into(),
            key: None,
        }
    }
}

impl IntoResponse for Authorization {
    /// A refusal's answer (with the key's identity headers when a key was found); an
    /// allowed request answers `204 No Content` with the identity headers.
    fn into_response(self) -> Response {
        match self {
            Authorization::Allowed(identity) => {
                let mut response = axum::http::StatusCode::NO_CONTENT.into_response();
                identity.write_headers(response.headers_mut());
                response
            }
            Authorization::Refused { error, key } => {
                let mut response = error.into_response();
                if let Some(key) = key {
                    identity_headers(response.headers_mut(), &key);
                }
                response
            }
        }
    }
}

/// Judges one request. Store failures are refusals too (`503 store_unavailable`).
pub async fn authorize(engine: &Engine, request: &AuthorizeRequest<'_>) -> Authorization {
    let question = match Question::of(engine, request) {
        Ok(question) => question,
        Err(refused) => return refused,
    };
    let verify = question.verify_request();
    // A short-lived token (a JWT, never shaped like a key) where tokens are accepted. Its
    // check is boxed: its state (signing keys that may have to be read) made this future,
    // which every entry point holds and moves several times per request, 4 KB larger.
    // (`Engine::verify` boxes its own waiting paths.)
    let verdict = if engine.accepts_token(verify.key) {
        Box::pin(engine.verify_token(&verify)).await
    } else {
        engine.verify(&verify).await
    };
    conclude(verdict)
}

/// [`authorize`] when the answer needs no waiting: a request refused before verification,
/// or a key the engine judges from memory ([`Engine::verify_from_memory`]); the same
/// verdict, counted the same way. `None` when the store, a shared rate limiter or a token's
/// signing keys must be asked: then call [`authorize`]. A service judging on a cache hit
/// this way builds no future for it.
pub fn authorize_now(engine: &Engine, request: &AuthorizeRequest<'_>) -> Option<Authorization> {
    let question = match Question::of(engine, request) {
        Ok(question) => question,
        Err(refused) => return Some(refused),
    };
    let verify = question.verify_request();
    if engine.accepts_token(verify.key) {
        return None;
    }
    engine
        .verify_from_memory(&verify)
        .map(|verdict| conclude(Ok(verdict)))
}

/// What the engine is asked about one request: its key and the permission it needs.
struct Question<'a> {
    key: &'a str,
    /// `None`: any valid key.
    required: Option<Cow<'a, Required>>,
    client_ip: Option<IpAddr>,
}

impl<'a> Question<'a> {
    /// The credential and the permission of `request`, or the refusal when the request
    /// carries no usable key (none, two, one in the URL).
    fn of(
        engine: &Engine,
        request: &'a AuthorizeRequest<'_>,
    ) -> Result<Question<'a>, Authorization> {
        if let Target::Request { path, .. } = &request.target {
            if let Some((_, query)) = path.split_once('?') {
                if query_carries_key(query, engine.key_format()) {
                    return Err(Authorization::refused(Outcome::KeyInUrl));
                }
            }
        }
        let key = match request.credential {
            Credential::Headers(headers) => {
                key_from_headers(headers).map_err(Authorization::refused)?
            }
            Credential::Key(key) => key.map(str::trim).filter(|k| !k.is_empty()),
        };
        let Some(key) = key else {
            return Err(Authorization::refused(Outcome::MissingCredentials));
        };
        let required = match &request.target {
            Target::Request { method, path } => {
                Some(Cow::Owned(engine.routes().required(method, path)))
            }
            Target::Required(required) => Some(Cow::Borrowed(required.as_ref())),
            Target::Unknown => Some(Cow::Owned(Required::Unmapped)),
            Target::AnyPermission => None,
        };
        Ok(Question {
            key,
            required,
            client_ip: request.client_ip,
        })
    }

    fn verify_request(&self) -> VerifyRequest<'_> {
        VerifyRequest {
            key: self.key,
            required: self.required.as_deref(),
            client_ip: self.client_ip,
        }
    }
}

/// The authorization for the engine's verdict.
fn conclude(verdict: keygate_engine::Result<Verdict>) -> Authorization {
    let verdict = match verdict {
        Ok(verdict) => verdict,
        Err(e) => return Authorization::refused(e),
    };
    match (verdict.outcome, verdict.key) {
        (Outcome::Valid, Some(key)) => Authorization::Allowed(Identity {
            key,
            rate_limit: verdict.rate_limit,
        }),
        (outcome, key) => Authorization::Refused {
            error: ApiError::Outcome(outcome, verdict.rate_limit),
            key,
        },
    }
}

/// Turns a management credential into a caller: the admin token (compared in constant
/// time), or a key of this deployment that verifies (valid, not revoked or expired,
/// allowed from `ip`). The admin API and the dashboard's sign-in share this.
pub async fn authenticate(
    engine: &Engine,
    admin: &AdminToken,
    credential: &str,
    ip: Option<IpAddr>,
) -> Result<Caller, ApiError> {
    if admin.matches(engine.pepper(), credential) {
        return Ok(Caller::admin(ip));
    }
    if engine.key_format().parse(credential).is_err() {
        return Err(ApiError::BadAdminCredentials);
    }
    let request = AuthorizeRequest {
        credential: Credential::Key(Some(credential)),
        target: Target::AnyPermission,
        client_ip: ip,
    };
    match authorize(engine, &request).await {
        Authorization::Allowed(identity) => Ok(identity.caller(ip)),
        Authorization::Refused { error, .. } => Err(error),
    }
}

/// `X-Keygate-Key-Id`, `-Account-Id`, `-Environment` and `-Permissions` of `key`, and
/// `X-Keygate-Token-Id` when a short-lived token stood for the key.
pub fn identity_headers(headers: &mut HeaderMap, key: &CachedKey) {
    // Names made at compile time: `from_static` at run time checks every byte, per request.
    const KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
    const ACCOUNT_ID: HeaderName = HeaderName::from_static("x-keygate-account-id");
    const ENVIRONMENT: HeaderName = HeaderName::from_static("x-keygate-environment");
    const PERMISSIONS: HeaderName = HeaderName::from_static("x-keygate-permissions");
    const TOKEN_ID: HeaderName = HeaderName::from_static("x-keygate-token-id");
    let pairs = [
        (KEY_ID, HeaderValue::from_str(key.id())),
        (ACCOUNT_ID, HeaderValue::from_str(key.account_id())),
        (
            ENVIRONMENT,
            Ok(HeaderValue::from_static(key.environment().as_str())),
        ),
        // Shared with the key's cached grants: no copy, no join per request.
        (
            PERMISSIONS,
            HeaderValue::from_maybe_shared(key.permissions_joined().clone()),
        ),
    ];
    for (name, value) in pairs {
        if let Ok(v) = value {
            headers.insert(name, v);
        }
    }
    // A token's view of its key: say so (its permissions above are the token's scope).
    if let Some(Ok(token_id)) = key.token_id().map(HeaderValue::from_str) {
        headers.insert(TOKEN_ID, token_id);
    }
}

/// The IETF RateLimit fields (`RateLimit-Policy`, `RateLimit`) and `Retry-After`.
pub fn rate_limit_headers(headers: &mut HeaderMap, rate: &RateLimitStatus) {
    let policy = format!("\"default\";q={};w={}", rate.limit, rate.window_seconds);
    let current = format!("\"default\";r={};t={}", rate.remaining, rate.reset_seconds);
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&current) {
        headers.insert("ratelimit", v);
    }
    if let Some(secs) = rate.retry_after_seconds {
        headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
}
