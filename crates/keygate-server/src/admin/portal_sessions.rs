//! `POST /v1/portal-sessions`: a single-use link to the hosted API Keys page of one
//! account, for the business's backend to send its signed-in customer to.

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json as JsonOut;
use keygate_engine::manage::portal::NewPortalLink;
use keygate_engine::Error;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::openapi::{AuthErrors, BodyErrors, PermissionGrant, RecordErrors, ReturnUrl};
use super::views;
use super::Auth;
use crate::edge::is_https;
use crate::edge::json::Json;
use crate::{ApiError, AppState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePortalSession {
    /// The account whose keys the page manages.
    account_id: String,
    /// Where the page's "Back to …" link goes: an absolute http(s) URL.
    #[schema(value_type = Option<ReturnUrl>)]
    return_url: Option<String>,
    /// Seconds the link may wait to be opened: 1 to 3600, 300 by default. Once opened, the
    /// page's session lasts 30 minutes idle, 2 hours at most.
    #[schema(minimum = 1, maximum = 3600)]
    expires_in: Option<i64>,
    /// The presets and permissions keys made on the page may hold (at least one); by
    /// default any (`all`).
    #[schema(value_type = Option<Vec<PermissionGrant>>, min_items = 1, max_items = 256)]
    allowed_scopes: Option<Vec<String>>,
    /// What the customer may do besides seeing the keys: `create`, `rotate`, `revoke`
    /// (all by default).
    #[schema(value_type = Option<Vec<PortalActionName>>)]
    actions: Option<Vec<String>>,
}

/// One thing a portal session may do.
#[derive(ToSchema)]
#[schema(as = PortalAction)]
#[allow(dead_code)]
pub enum PortalActionName {
    #[schema(rename = "create")]
    Create,
    #[schema(rename = "rotate")]
    Rotate,
    #[schema(rename = "revoke")]
    Revoke,
}

/// A new portal link.
#[derive(Serialize, ToSchema)]
pub struct PortalSessionView {
    /// The session's id (`ps_…`); the audit log names the customer's actions
    /// `portal:<id>`.
    id: String,
    /// The single-use link: its first visit opens the page, later ones find it expired.
    url: String,
    /// When the link expires unless opened (RFC 3339).
    #[schema(format = DateTime)]
    expires_at: String,
}

/// The scheme and host the request came to, when no `public_url` is configured.
fn request_origin(parts: &Parts, state: &AppState) -> Result<String, ApiError> {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .ok_or_else(|| {
            ApiError::Engine(Error::validation(
                "host",
                "the request has no usable Host header; set public_url (KEYGATE_PUBLIC_URL)",
            ))
        })?;
    let scheme = if is_https(parts, state) {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{host}"))
}

/// Create a portal session: a single-use link to one account's hosted API Keys page
/// (admin token only).
#[utoipa::path(
    post,
    operation_id = "create_portal_session",
    path = "/v1/portal-sessions",
    tag = "portal",
    security(("admin_token" = [])),
    request_body = CreatePortalSession,
    responses(
        (status = 201, description = "The link", body = PortalSessionView),
        AuthErrors, RecordErrors, BodyErrors
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Auth(caller): Auth,
    parts: Parts,
    Json(body): Json<CreatePortalSession>,
) -> Result<impl IntoResponse, ApiError> {
    let origin = match &state.http.portal.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => request_origin(&parts, &state)?,
    };
    let link = state
        .engine
        .create_portal_link(
            &caller,
            NewPortalLink {
                account_id: body.account_id,
                return_url: body.return_url,
                expires_in: body.expires_in,
                allowed_scopes: body.allowed_scopes,
                actions: body.actions,
            },
        )
        .await?;
    let view = PortalSessionView {
        url: format!("{origin}/portal/open?code={}", link.code),
        id: link.id,
        expires_at: views::time(link.expires_at),
    };
    Ok((StatusCode::CREATED, JsonOut(view)))
}
