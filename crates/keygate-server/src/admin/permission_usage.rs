//! `GET /v1/api-keys/{id}/permission-usage`: the least-privilege report of one key.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json as JsonOut;
use keygate_engine::manage::PermissionUsageReport;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Id, Query};
use super::openapi::{AuthErrors, RecordErrors};
use super::views::time;
use super::Auth;
use crate::{ApiError, AppState};

/// The query parameters (documentation: the handler reads them by name).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PermissionUsageQuery {
    /// The window in days, today included: 1 to the usage retention (90 by default); 30 when
    /// left out.
    #[param(minimum = 1)]
    days: Option<u32>,
}

/// How one permission was used in the window.
#[derive(Serialize, ToSchema)]
pub struct PermissionUseView {
    /// The permission the requests needed (`invoices.read`), or `*` for requests that no
    /// route maps.
    permission: String,
    requests: i64,
    last_used_at: String,
}

/// Which permissions a key's allowed requests needed, and the narrowest grants that would
/// have allowed them all.
#[derive(Serialize, ToSchema)]
#[schema(as = PermissionUsage)]
pub struct PermissionUsageView {
    key_id: String,
    days: u32,
    /// Start of the window (midnight UTC, `days - 1` days before today).
    from: String,
    /// The key's permissions now.
    granted: Vec<String>,
    /// Most used first.
    used: Vec<PermissionUseView>,
    /// Grants that allowed none of the requests in the window.
    unused_grants: Vec<String>,
    /// The narrowest permission list that would have allowed every request in the window
    /// (concrete permissions, never wider than `granted`); empty when the key made no
    /// allowed request that needed a permission.
    suggested: Vec<String>,
}

impl From<PermissionUsageReport> for PermissionUsageView {
    fn from(r: PermissionUsageReport) -> Self {
        PermissionUsageView {
            key_id: r.key.id,
            days: r.days,
            from: time(r.from),
            granted: r.granted,
            used: r
                .used
                .into_iter()
                .map(|u| PermissionUseView {
                    permission: u.permission,
                    requests: u.requests,
                    last_used_at: time(u.last_used_at),
                })
                .collect(),
            unused_grants: r.unused_grants,
            suggested: r.suggested,
        }
    }
}

/// The least-privilege report of one key over the last `days` days: the permissions its
/// allowed requests needed, its unused grants and the narrowest list that would have
/// allowed every request.
#[utoipa::path(
    get,
    operation_id = "get_api_key_permission_usage",
    path = "/v1/api-keys/{id}/permission-usage",
    tag = "api-keys",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(("id" = String, Path, description = "The key's id"), PermissionUsageQuery),
    responses((status = 200, description = "The key's permission usage", body = PermissionUsageView), AuthErrors, RecordErrors)
)]
pub async fn permission_usage(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
    query: Query,
) -> Result<impl IntoResponse, ApiError> {
    let query = query.only(&["days"])?;
    let days = query.number::<u32>("days")?;
    let report = state.engine.permission_usage(&caller, &id, days).await?;
    Ok(JsonOut(PermissionUsageView::from(report)))
}
