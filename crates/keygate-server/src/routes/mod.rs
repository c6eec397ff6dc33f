mod accounts;
mod auth;
mod extract;
mod health;
mod keys;
pub(crate) mod verify;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::{middleware, ApiError, AppState};

pub use auth::{authenticate, request_ip, Auth};

pub fn router(state: AppState) -> Router {
    let body_limit = state.http.body_limit;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(crate::openapi::document))
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
        .nest("/dashboard", crate::dashboard::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal.into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .with_state(state)
}

async fn not_found() -> Response {
    ApiError::RouteNotFound.into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}
