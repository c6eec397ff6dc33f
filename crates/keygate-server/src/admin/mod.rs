//! The admin listener's API: accounts, keys, audit log, verification (`/v1/verify`,
//! forward-auth, key info), health, metrics and the OpenAPI document. Handlers call the
//! engine; the authorize path and error mapping are `keygate-edge`'s.

mod accounts;
mod auth;
mod extract;
mod fast_path;
mod github_scanning;
mod health;
mod import;
mod key_changes;
mod keys;
mod leaks;
mod openapi;
mod permission_usage;
mod portal_sessions;
mod tokens;
pub(crate) mod verify;
mod views;
mod webhooks;

use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{ApiError, AppState};

pub use auth::Auth;
pub use fast_path::FastPath;
pub use github_scanning::GithubScanningKeys;
pub use leaks::LeakConfig;
pub use webhooks::event_body as webhook_event_body;

/// The admin API's routes, before the shared request context (`edge::middleware::wrap`).
pub fn routes() -> Router<AppState> {
    let (router, _) = api().split_for_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The routes with their OpenAPI operations: one list for the router and the document.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::document))
        .routes(routes!(accounts::list, accounts::create))
        .routes(routes!(accounts::get, accounts::update))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(import::import_keys))
        .routes(routes!(keys::get, keys::update))
        .routes(routes!(keys::revoke))
        .routes(routes!(keys::rotate))
        .routes(routes!(keys::usage))
        .routes(routes!(permission_usage::permission_usage))
        .routes(routes!(keys::audit_log))
        .routes(routes!(leaks::report))
        .routes(routes!(leaks::github))
        .routes(routes!(verify::key_info))
        .routes(routes!(verify::verify))
        .routes(routes!(key_changes::stream))
        .routes(routes!(webhooks::list, webhooks::create))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::retry))
        .routes(routes!(portal_sessions::create))
        .routes(routes!(tokens::create))
        .routes(routes!(tokens::jwks))
        .merge(forward_auth())
}

/// Forward-auth answers any method (Envoy's ext_authz passes the original one), so its
/// router is `any`, not the methods the document lists; and its sub-path is a wildcard
/// (`{*path}`) for axum but one `{path}` parameter for OpenAPI.
fn forward_auth() -> OpenApiRouter<AppState> {
    let (schemas, root, _) = routes!(verify::forward_auth);
    let (more_schemas, sub_path, _) = routes!(verify::forward_auth_path);
    let mut document = utoipa::openapi::OpenApi::default();
    document.paths.paths.extend(root.paths);
    document.paths.paths.extend(sub_path.paths);
    // One handler for several methods shares one operation id; OpenAPI wants them unique.
    for (path, item) in document.paths.paths.iter_mut() {
        let base = if path.ends_with("{path}") {
            "forward_auth_path"
        } else {
            "forward_auth"
        };
        let operations = [
            ("get", &mut item.get),
            ("post", &mut item.post),
            ("put", &mut item.put),
            ("patch", &mut item.patch),
            ("delete", &mut item.delete),
            ("head", &mut item.head),
            ("options", &mut item.options),
            ("trace", &mut item.trace),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                operation.operation_id = Some(format!("{base}_{method}"));
            }
        }
    }
    let components = document.components.get_or_insert_with(Default::default);
    components
        .schemas
        .extend(schemas.into_iter().chain(more_schemas));
    OpenApiRouter::with_openapi(document)
        .route("/v1/auth", any(verify::forward_auth))
        .route("/v1/auth/{*path}", any(verify::forward_auth))
}

async fn not_found() -> Response {
    ApiError::RouteNotFound.into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}
