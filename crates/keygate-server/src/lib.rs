//! keygate's HTTP servers on axum, composed here from their parts:
//!
//! - `edge/`: what every listener shares below and around the routes: the connection
//!   layer (`listener.rs`), the request context with its access log (`middleware.rs`) and
//!   the JSON body extractor (`json.rs`). The authorize path, errors, credentials and
//!   client addresses are the `keygate-edge` crate's.
//! - `admin/`: the admin API (`/v1/accounts`, `/v1/api-keys`, audit log), verification
//!   (`/v1/verify`, forward-auth `/v1/auth`, key info), health, metrics and OpenAPI.
//! - `dashboard/`: the web dashboard under `/dashboard`, and the customer portal under
//!   `/portal` (its own routes and cookie, the dashboard's pieces).
//! - `gateway/`: the data-plane listener in front of an upstream API.
//! - `webhooks.rs`: the webhook delivery worker (sends the bodies `admin/` renders).
//!
//! Imports go one way: `admin`, `dashboard` and `gateway` use `edge` (and `gateway` uses
//! `admin`'s key-info handler); none uses another's internals; only this file composes.
//!
//! Invariants: handlers call the engine, never the store; every error leaves through
//! [`ApiError`] as `{error, code, request_id}`; no secret is logged (the access log
//! records the path without its query, never a header).

mod admin;
mod dashboard;
mod edge;
mod gateway;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use ipnet::IpNet;
use keygate_engine::{AdminToken, Engine};
use tokio::net::TcpListener;

pub use admin::{GithubScanningKeys, LeakConfig};
pub use dashboard::portal::valid_accent_color;
pub use dashboard::{CatalogError, PermissionCatalog, PortalConfig};
pub use edge::access_log;
pub use edge::listener::{serve_router_with, EdgeLimits};
pub use gateway::{serve_gateway, GatewayConfig};
pub use keygate_edge::ApiError;
pub use webhooks::{sign as sign_webhook, spawn_webhook_worker, WebhookWorkerConfig};

/// Internals the fuzz targets in `fuzz/` drive directly. Not an API: no stability promise.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::edge::middleware::redact;
    pub use keygate_edge::credentials::{decode, key_from_headers, query_carries_key};

    use std::sync::Arc;
    use std::time::Duration;

    use keygate_core::{KeyFormat, Pepper, Route, RouteTable};
    use keygate_engine::{AdminToken, Engine, EngineConfig, Plans};

    use crate::{AppState, HttpConfig};

    /// A complete state over the SQLite file at `url`, with the reference plans, a `kg`
    /// key format, one route (`POST /api/v1/invoices/{id}/send`) and `verify_token`.
    /// Returns the state and the admin token.
    pub async fn sqlite_state(
        url: &str,
        verify_token: &str,
    ) -> Result<(AppState, String), Box<dyn std::error::Error>> {
        let store = keygate_store::sqlite::SqliteStore::open(url).await?;
        let (pepper, _) = Pepper::generate()?;
        let (admin_token, admin) = AdminToken::generate(&pepper)?;
        let engine = Engine::new(
            Arc::new(store),
            EngineConfig {
                key_format: KeyFormat::new("kg", true)?,
                pepper: pepper.clone(),
                routes: RouteTable::new(vec![Route::new(
                    "POST",
                    "/api/v1/invoices/{id}/send",
                    "invoices.send",
                )?]),
                plans: Plans::reference(),
                cache_capacity: 10_000,
                cache_ttl: Duration::from_secs(300),
                negative_cache_ttl: Duration::from_secs(10),
                stale_if_error: Duration::from_secs(300),
                usage_retention: Duration::from_secs(86_400),
            },
        );
        let state = AppState {
            engine,
            admin,
            verify_token: Some(AdminToken::from_secret(&pepper, verify_token)),
            http: Arc::new(HttpConfig::default()),
        };
        Ok((state, admin_token))
    }
}

/// How the HTTP edge behaves.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Largest total size of request headers, in bytes.
    pub header_limit: usize,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Timeouts and size limits of the connection layer (below the router).
    pub edge: EdgeLimits,
    /// Refuses addresses that failed to authenticate too often (`None`: off).
    pub failed_auth: Option<Arc<keygate_engine::FailureThrottle>>,
    /// The resources the dashboard's permission checklist offers besides those the route
    /// table and existing keys name (`[permissions]` in `keygate.toml`).
    pub permission_catalog: PermissionCatalog,
    /// Leaked-key reports: the action and GitHub's signing keys.
    pub leaks: LeakConfig,
    /// The customer portal's address and branding.
    pub portal: PortalConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: 64 * 1024,
            header_limit: 16 * 1024,
            trusted_proxies: Vec::new(),
            edge: EdgeLimits::default(),
            failed_auth: None,
            permission_catalog: PermissionCatalog::default(),
            leaks: LeakConfig::default(),
            portal: PortalConfig::default(),
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

/// The whole admin listener's router: the admin API with the dashboard under
/// `/dashboard`, inside the shared request context.
pub fn router(state: AppState) -> Router {
    let routes = admin::routes()
        .nest("/dashboard", dashboard::router(state.clone()))
        .nest("/portal", dashboard::portal::router(state.clone()));
    edge::middleware::wrap(routes, state)
}

/// Serves the admin router on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish. The connection limits are `state.http.edge` (see [`serve_router_with`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = EdgeLimits {
        max_declared_body: Some(state.http.body_limit as u64),
        ..state.http.edge.clone()
    };
    let service = admin::FastPath::new(state.clone(), router(state));
    serve_router_with(listener, service, limits, shutdown).await
}
