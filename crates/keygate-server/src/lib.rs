//! keygate's HTTP edges on axum: the admin API (`/v1/accounts`, `/v1/api-keys`, audit log),
//! verification (`/v1/verify`), forward-auth (`/v1/auth`), key info, health and OpenAPI.
//!
//! Invariants: handlers call the engine, never the store; every error leaves through
//! [`error::ApiError`] as `{error, code, request_id}`; no secret is logged (the access log
//! records the path without its query, never a header).

mod client_ip;
mod credentials;
mod error;
mod json;
mod middleware;
mod openapi;
mod routes;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use ipnet::IpNet;
use keygate_engine::{AdminToken, Engine};
use tokio::net::TcpListener;

pub use error::ApiError;

/// How the HTTP edge behaves.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Largest total size of request headers, in bytes.
    pub header_limit: usize,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: 64 * 1024,
            header_limit: 16 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub admin: AdminToken,
    /// A token that may call `/v1/verify` and nothing else.
    pub verify_token: Option<AdminToken>,
    pub http: Arc<HttpConfig>,
}

/// The whole admin listener's router.
pub fn router(state: AppState) -> Router {
    routes::router(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
