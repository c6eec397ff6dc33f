//! `/v1/webhook-endpoints`: where lifecycle events are sent (operator only), their
//! deliveries and manual retries; and the body an event is sent with (the key or account
//! as this API shows it).

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json as JsonOut;
use keygate_engine::manage::{NewWebhookEndpoint, WebhookEndpointUpdate};
use keygate_engine::Error;
use keygate_store::{Delivery, DeliveryStatus, EventSubject, WebhookEndpoint, WebhookEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Id, Query};
use super::openapi::{AuthErrors, BodyErrors, Name, RecordErrors};
use super::views::{self, opt_time, time};
use super::Auth;
use crate::edge::json::{nullable, Json};
use crate::{ApiError, AppState};

/// An event type, or `*` for every type.
#[derive(Serialize, ToSchema)]
#[schema(as = WebhookEventType)]
#[allow(dead_code)]
pub enum EventTypeName {
    #[serde(rename = "*")]
    All,
    #[serde(rename = "key.created")]
    KeyCreated,
    #[serde(rename = "key.updated")]
    KeyUpdated,
    #[serde(rename = "key.rotated")]
    KeyRotated,
    #[serde(rename = "key.revoked")]
    KeyRevoked,
    #[serde(rename = "key.expiring")]
    KeyExpiring,
    #[serde(rename = "key.expired")]
    KeyExpired,
    #[serde(rename = "key.leaked")]
    KeyLeaked,
    #[serde(rename = "key.quota_threshold")]
    KeyQuotaThreshold,
    #[serde(rename = "account.updated")]
    AccountUpdated,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookEndpoint {
    /// Where events are POSTed: an absolute http(s) URL of up to 2048 characters. Loopback
    /// and private addresses are refused unless `webhook_allow_private` is on.
    #[schema(max_length = 2048)]
    url: String,
    /// The event types to send; every type when left out (or `["*"]`).
    #[schema(value_type = Option<Vec<EventTypeName>>, min_items = 1)]
    events: Option<Vec<String>>,
    /// Only this account's events; every account's when left out.
    account_id: Option<String>,
    #[schema(value_type = Option<Name>)]
    description: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookEndpoint {
    #[schema(max_length = 2048)]
    url: Option<String>,
    #[schema(value_type = Option<Vec<EventTypeName>>, min_items = 1)]
    events: Option<Vec<String>>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Name>)]
    description: Option<Option<String>>,
    /// `false` stops deliveries; `true` resumes them (also after keygate disabled the
    /// endpoint for failing).
    enabled: Option<bool>,
}

/// The `object` tag of a webhook endpoint.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEndpointObject {
    WebhookEndpoint,
}

/// The `object` tag of a delivery.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum WebhookDeliveryObject {
    WebhookDelivery,
}

/// A webhook endpoint: never its secret, except when created or its secret rotated.
#[derive(Serialize, ToSchema)]
#[schema(as = WebhookEndpoint)]
pub struct EndpointView {
    id: String,
    object: WebhookEndpointObject,
    url: String,
    description: Option<String>,
    /// Subscribed event types; `["*"]` is every type.
    events: Vec<String>,
    /// Only this account's events; `null` is every account.
    account_id: Option<String>,
    enabled: bool,
    /// When and why it was disabled (by the operator, or after days of failures).
    disabled_at: Option<String>,
    disabled_reason: Option<String>,
    created_at: String,
    updated_at: String,
}

/// An endpoint with its signing secret: only the create and rotate-secret answers.
#[derive(Serialize, ToSchema)]
pub struct WebhookEndpointWithSecret {
    #[serde(flatten)]
    endpoint: EndpointView,
    /// `whsec_` and base64: the Standard Webhooks signing secret. Shown once.
    secret: String,
}

/// `GET /v1/webhook-endpoints`.
#[derive(Serialize, ToSchema)]
pub struct WebhookEndpointList {
    data: Vec<EndpointView>,
    has_more: bool,
    /// Pass as `starting_after` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// A delivery's state.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatusName {
    Pending,
    Delivered,
    Failed,
}

/// One event sent (or to be sent) to one endpoint.
#[derive(Serialize, ToSchema)]
#[schema(as = WebhookDelivery)]
pub struct DeliveryView {
    id: String,
    object: WebhookDeliveryObject,
    /// The `webhook-id` header: the same on every attempt.
    event_id: String,
    event_type: String,
    endpoint_id: String,
    status: DeliveryStatusName,
    attempts: i64,
    /// When the next attempt is due (pending deliveries).
    next_attempt_at: Option<String>,
    last_attempt_at: Option<String>,
    /// The HTTP status of the last answer; `null` if none came (timeout, refused).
    last_status_code: Option<i64>,
    last_error: Option<String>,
    created_at: String,
}

/// `GET /v1/webhook-endpoints/{id}/deliveries`.
#[derive(Serialize, ToSchema)]
pub struct WebhookDeliveryList {
    data: Vec<DeliveryView>,
    has_more: bool,
    /// Pass as `starting_after` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// The list query (documentation: the handler reads it by name).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    /// Page size, 1 to 1000 (100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`: the page starts after this record.
    starting_after: Option<String>,
}

fn to_json(view: impl Serialize) -> Value {
    serde_json::to_value(view).unwrap_or(Value::Null)
}

pub(crate) fn endpoint_view(e: &WebhookEndpoint) -> EndpointView {
    EndpointView {
        id: e.id.clone(),
        object: WebhookEndpointObject::WebhookEndpoint,
        url: e.url.clone(),
        description: e.description.clone(),
        events: if e.events.is_empty() {
            vec!["*".to_owned()]
        } else {
            e.events.clone()
        },
        account_id: e.account_id.clone(),
        enabled: e.disabled_at.is_none(),
        disabled_at: opt_time(e.disabled_at),
        disabled_reason: e.disabled_reason.clone(),
        created_at: time(e.created_at),
        updated_at: time(e.updated_at),
    }
}

fn with_secret(e: &WebhookEndpoint) -> Value {
    to_json(WebhookEndpointWithSecret {
        endpoint: endpoint_view(e),
        secret: e.secret.expose().to_owned(),
    })
}

pub(crate) fn delivery_view(d: &Delivery) -> DeliveryView {
    DeliveryView {
        id: d.id.clone(),
        object: WebhookDeliveryObject::WebhookDelivery,
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        endpoint_id: d.endpoint_id.clone(),
        status: match d.status {
            DeliveryStatus::Pending => DeliveryStatusName::Pending,
            DeliveryStatus::Delivered => DeliveryStatusName::Delivered,
            DeliveryStatus::Failed => DeliveryStatusName::Failed,
        },
        attempts: d.attempts,
        next_attempt_at: (d.status == DeliveryStatus::Pending).then(|| time(d.next_attempt_at)),
        last_attempt_at: opt_time(d.last_attempt_at),
        last_status_code: d.last_status_code,
        last_error: d.last_error.clone(),
        created_at: time(d.created_at),
    }
}

/// The JSON body an event is sent with: `{type, timestamp, data}`, `data` being the key or
/// account as this API shows it, judged at the event's time. Never a secret or digest.
pub fn event_body(event: &WebhookEvent) -> Vec<u8> {
    let data = match &event.subject {
        EventSubject::Key(k) => to_json(views::key_view_at(k, event.at)),
        EventSubject::Account(a) => views::account(a),
    };
    let body = serde_json::json!({
        "type": event.event_type,
        "timestamp": time(event.at),
        "data": data,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The `{id}` and `{delivery_id}` of a delivery's path. Undecodable ids are unknown ids.
pub struct DeliveryPath(String, String);

impl FromRequestParts<AppState> for DeliveryPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((id, delivery))| DeliveryPath(id, delivery))
            .map_err(|_| Error::NotFound("delivery").into())
    }
}

/// Create a webhook endpoint (operator only). The signing secret is in this answer only.
#[utoipa::path(
    post,
    operation_id = "create_webhook_endpoint",
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    security(("admin_token" = [])),
    request_body = CreateWebhookEndpoint,
    responses((status = 201, description = "The new endpoint with its signing secret", body = WebhookEndpointWithSecret), AuthErrors, RecordErrors, BodyErrors)
)]
pub async fn create(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Json(body): Json<CreateWebhookEndpoint>,
) -> Result<impl IntoResponse, ApiError> {
    let new = NewWebhookEndpoint {
        url: body.url,
        events: body.events,
        account_id: body.account_id,
        description: body.description,
    };
    let endpoint = state.engine.create_webhook_endpoint(&caller, new).await?;
    Ok((StatusCode::CREATED, JsonOut(with_secret(&endpoint))))
}

/// `GET /v1/webhook-endpoints`: a page of endpoints, oldest first (operator only).
#[utoipa::path(
    get,
    operation_id = "list_webhook_endpoints",
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    security(("admin_token" = [])),
    params(PageQuery),
    responses((status = 200, description = "The endpoints", body = WebhookEndpointList), AuthErrors)
)]
pub async fn list(
    State(state): State<AppState>,
    Auth(caller): Auth,
    query: Query,
) -> Result<impl IntoResponse, ApiError> {
    let query = query.only(&["limit", "starting_after"])?;
    let page = state
        .engine
        .webhook_endpoint_page(&caller, &query.page()?)
        .await?;
    Ok(JsonOut(views::page(
        &page,
        |e| &e.id,
        |e| to_json(endpoint_view(e)),
    )))
}

/// Read a webhook endpoint (never its secret).
#[utoipa::path(
    get,
    operation_id = "get_webhook_endpoint",
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The endpoint", body = EndpointView), AuthErrors, RecordErrors)
)]
pub async fn get(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let endpoint = state.engine.webhook_endpoint(&caller, &id).await?;
    Ok(JsonOut(to_json(endpoint_view(&endpoint))))
}

/// Change an endpoint's URL, events or description, or disable / re-enable it.
#[utoipa::path(
    patch,
    operation_id = "update_webhook_endpoint",
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint's id")),
    request_body = UpdateWebhookEndpoint,
    responses((status = 200, description = "The changed endpoint", body = EndpointView), AuthErrors, RecordErrors, BodyErrors)
)]
pub async fn update(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
    Json(body): Json<UpdateWebhookEndpoint>,
) -> Result<impl IntoResponse, ApiError> {
    let update = WebhookEndpointUpdate {
        url: body.url,
        events: body.events,
        description: body.description,
        enabled: body.enabled,
    };
    let endpoint = state
        .engine
        .update_webhook_endpoint(&caller, &id, update)
        .await?;
    Ok(JsonOut(to_json(endpoint_view(&endpoint))))
}

/// Delete an endpoint and its deliveries.
#[utoipa::path(
    delete,
    operation_id = "delete_webhook_endpoint",
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint's id")),
    responses((status = 204, description = "Deleted"), AuthErrors, RecordErrors)
)]
pub async fn delete(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    state.engine.delete_webhook_endpoint(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the signing secret; the new one is in this answer only and signs every
/// attempt from now on.
#[utoipa::path(
    post,
    operation_id = "rotate_webhook_secret",
    path = "/v1/webhook-endpoints/{id}/rotate-secret",
    tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The endpoint with its new secret", body = WebhookEndpointWithSecret), AuthErrors, RecordErrors)
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let endpoint = state.engine.rotate_webhook_secret(&caller, &id).await?;
    Ok(JsonOut(with_secret(&endpoint)))
}

/// `GET /v1/webhook-endpoints/{id}/deliveries`: a page of the endpoint's deliveries, oldest
/// first, with their status, attempts and last answer.
#[utoipa::path(
    get,
    operation_id = "list_webhook_deliveries",
    path = "/v1/webhook-endpoints/{id}/deliveries",
    tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint's id"), PageQuery),
    responses((status = 200, description = "The deliveries", body = WebhookDeliveryList), AuthErrors, RecordErrors)
)]
pub async fn deliveries(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
    query: Query,
) -> Result<impl IntoResponse, ApiError> {
    let query = query.only(&["limit", "starting_after"])?;
    let page = state
        .engine
        .webhook_delivery_page(&caller, &id, &query.page()?)
        .await?;
    Ok(JsonOut(views::page(
        &page,
        |d| &d.id,
        |d| to_json(delivery_view(d)),
    )))
}

/// Send a delivery again now (a failed one too), with the same `webhook-id`.
#[utoipa::path(
    post,
    operation_id = "retry_webhook_delivery",
    path = "/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry",
    tag = "webhooks",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The endpoint's id"),
        ("delivery_id" = String, Path, description = "The delivery's id"),
    ),
    responses((status = 202, description = "The delivery, due now", body = DeliveryView), AuthErrors, RecordErrors)
)]
pub async fn retry(
    State(state): State<AppState>,
    Auth(caller): Auth,
    DeliveryPath(id, delivery_id): DeliveryPath,
) -> Result<impl IntoResponse, ApiError> {
    let delivery = state
        .engine
        .retry_webhook_delivery(&caller, &id, &delivery_id)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        JsonOut(to_json(delivery_view(&delivery))),
    ))
}
