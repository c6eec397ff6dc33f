use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::openapi::{StoreErrors, ThrottleErrors};
use super::views::HealthStatus;
use crate::{ApiError, AppState};

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Up", body = HealthStatus), ThrottleErrors))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// The process can answer: the store is reachable.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "Ready", body = HealthStatus), ThrottleErrors, StoreErrors))]
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.engine.ready().await?;
    Ok(Json(json!({"status": "ready"})))
}

/// Prometheus metrics. No secrets and no unbounded labels (no key ids).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String), ThrottleErrors)
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.engine.render_metrics(),
    )
}
