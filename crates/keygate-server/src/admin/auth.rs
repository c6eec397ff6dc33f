//! Who is calling a management endpoint: the operator (admin token) or a self-service key.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use keygate_core::Outcome;
use keygate_edge::authenticate;
use keygate_edge::credentials::key_from_headers;
use keygate_engine::manage::Caller;

use crate::edge::request_ip;
use crate::{ApiError, AppState};

/// An authenticated management caller.
pub struct Auth(pub Caller);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = request_ip(parts, state);
        let credential = key_from_headers(&parts.headers)?.ok_or(Outcome::MissingCredentials)?;
        let result = authenticate(&state.engine, &state.admin, credential, ip).await;
        if matches!(result, Err(ApiError::BadAdminCredentials)) {
            // Neither the admin token nor a key: somebody is trying tokens.
            state.engine.record_auth_failure("auth.failed", ip).await;
        }
        result.map(Auth)
    }
}
