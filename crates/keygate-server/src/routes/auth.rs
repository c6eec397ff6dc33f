//! Who is calling a management endpoint: the operator (admin token) or a self-service key.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use keygate_core::Outcome;
use keygate_engine::manage::{Actor, Caller};
use keygate_engine::VerifyRequest;

use crate::client_ip::client_ip;
use crate::credentials::key_from_headers;
use crate::{ApiError, AppState};

/// An authenticated management caller.
pub struct Auth(pub Caller);

/// The client address of a request (see `client_ip`).
pub fn request_ip(parts: &Parts, state: &AppState) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    client_ip(peer, &parts.headers, &state.http.trusted_proxies)
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = request_ip(parts, state);
        let credential = key_from_headers(&parts.headers)?.ok_or(Outcome::MissingCredentials)?;
        let result = authenticate(state, &credential, ip).await;
        if matches!(result, Err(ApiError::BadAdminCredentials)) {
            // Neither the admin token nor a key: somebody is trying tokens.
            state.engine.record_auth_failure("auth.failed", ip).await;
        }
        result.map(Auth)
    }
}

/// Turns a presented credential into a management caller: the admin token (compared in
/// constant time), or a key of this deployment that verifies (valid, not revoked or
/// expired, allowed from `ip`). The admin API and the dashboard's sign-in share this.
pub async fn authenticate(
    state: &AppState,
    credential: &str,
    ip: Option<IpAddr>,
) -> Result<Caller, ApiError> {
    if state.admin.matches(state.engine.pepper(), credential) {
        return Ok(Caller::admin(ip));
    }
    if state.engine.key_format().parse(credential).is_err() {
        return Err(ApiError::BadAdminCredentials);
    }
    let verdict = state
        .engine
        .verify(&VerifyRequest {
            key: credential,
            required: None,
            client_ip: ip,
        })
        .await?;
    match (verdict.outcome, verdict.key) {
        (Outcome::Valid, Some(key)) => Ok(Caller {
            actor: Actor::Key(key),
            client_ip: ip,
        }),
        (outcome, _) => Err(ApiError::Outcome(outcome, verdict.rate_limit)),
    }
}
