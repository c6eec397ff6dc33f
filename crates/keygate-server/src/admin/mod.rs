//! The admin listener's API: accounts, keys, audit log, verification (`/v1/verify`,
//! forward-auth, key info), health, metrics and the OpenAPI document. Handlers call the
//! engine; the authorize path and error mapping are `keygate-edge`'s.

mod accounts;
mod auth;
mod extract;
mod fast_path;
mod health;
mod keys;
mod openapi;
pub(crate) mod verify;
mod views;

use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;

use crate::{ApiError, AppState};

pub use auth::Auth;
pub use fast_path::FastPath;

/// The admin API's routes, before the shared request context (`edge::middleware::wrap`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/accounts", get(accounts::list).post(accounts::create))
        .route(
            "/v1/accounts/{id}",
            get(accounts::get).patch(accounts::update),
        )
        .route("/v1/api-keys", get(keys::list).post(keys::create))
        .route("/v1/api-keys/{id}", get(keys::get).patch(keys::update))
        .route("/v1/api-keys/{id}/revoke", post(keys::revoke))
        .route("/v1/api-keys/{id}/rotate", post(keys::rotate))
        .route("/v1/api-keys/{id}/usage", get(keys::usage))
        .route("/v1/audit-log", get(keys::audit_log))
        .route("/v1/api-key-info", get(verify::key_info))
        .route("/v1/verify", post(verify::verify))
        .route("/v1/auth", any(verify::forward_auth))
        .route("/v1/auth/{*path}", any(verify::forward_auth))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> Response {
    ApiError::RouteNotFound.into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}
