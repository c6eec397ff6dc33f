//! The OpenAPI 3.1 document served at `/openapi.json`. It is generated from the handlers'
//! `#[utoipa::path]` annotations by the same `OpenApiRouter` that builds the admin router
//! (`super::api`), so the routes and the document are one list. Built once per process.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// Security scheme names, as the handlers' `security(...)` name them.
pub const ADMIN_TOKEN: &str = "admin_token";
pub const API_KEY: &str = "api_key";
pub const API_KEY_HEADER: &str = "api_key_header";
pub const VERIFY_TOKEN: &str = "verify_token";

/// Every error answer's body, as `keygate_edge::ApiError` renders it.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// A message for people.
    pub error: String,
    /// A stable machine-readable code (`invalid_key`, `validation_error`, `not_found`, …).
    pub code: String,
    /// The request's id, also in the `X-Request-Id` header.
    pub request_id: String,
    /// The request field at fault (validation errors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The error answers one endpoint can give, by status.
fn error_responses(statuses: &[u16]) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .iter()
        .map(|&status| {
            let (description, header_name, header_description) = match status {
                400 => ("Bad request: a field or query parameter is invalid (`field` names it), or two different keys were sent", None, None),
                401 => ("Missing, malformed or invalid credentials", Some("WWW-Authenticate"), Some("`Bearer error=\"invalid_token\"`")),
                403 => ("Not allowed: the key lacks the permission, the address is not allowed, or the caller may not see the record", None, None),
                404 => ("No such record", None, None),
                409 => ("The record cannot change in its current state (a revoked or expired key)", None, None),
                413 => ("The request body is too large", None, None),
                415 => ("The body is not JSON (`Content-Type: application/json`)", None, None),
                429 => ("Rate limited, quota used up, plan limit reached, or too many failed attempts from this address", Some("Retry-After"), Some("Seconds to wait")),
                503 => ("The key store is unavailable; try again shortly", None, None),
                _ => ("Error", None, None),
            };
            let mut response = ResponseBuilder::new().description(description).content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            );
            if let (Some(name), Some(about)) = (header_name, header_description) {
                response = response.header(name, HeaderBuilder::new().description(Some(about)).build());
            }
            (status.to_string(), RefOr::T(response.build()))
        })
        .collect()
}

/// Declares a set of error answers usable in `responses(...)`.
macro_rules! error_set {
    ($(#[$doc:meta])* $name:ident = [$($status:literal),+]) => {
        $(#[$doc])*
        pub struct $name;
        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                error_responses(&[$($status),+])
            }
        }
    };
}

error_set!(
    /// What any authenticated request can answer.
    AuthErrors = [400, 401, 403, 429, 503]
);
error_set!(
    /// A request about one record by its `{id}`, or naming one (an `account_id`).
    RecordErrors = [404]
);
error_set!(
    /// A request with a JSON body.
    BodyErrors = [413, 415]
);
error_set!(
    /// A change to a record that may no longer change.
    ConflictErrors = [409]
);
error_set!(
    /// Any request, authenticated or not: an address with too many failed attempts waits.
    ThrottleErrors = [429]
);
error_set!(
    /// Readiness: the store.
    StoreErrors = [503]
);

/// The document's fixed parts; the paths come from the router (`super::api`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate",
        description = "Self-hosted API keys: issue, verify, scope, rotate, revoke. Errors are JSON `ErrorBody` answers with a stable `code`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Liveness, readiness, metrics, this document"),
        (name = "accounts", description = "Accounts (operator; a self-service key sees its own)"),
        (name = "api-keys", description = "API keys: never the secret, except when created or rotated"),
        (name = "audit", description = "Lifecycle events"),
        (name = "verification", description = "Verifying keys for other services"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let bearer = |about: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(about.to_owned());
            SecurityScheme::Http(http)
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_TOKEN,
            bearer(
                "The operator's admin token (`KEYGATE_ADMIN_TOKEN`); `X-API-Key` is accepted too",
            ),
        );
        components.add_security_scheme(
            API_KEY,
            bearer("An API key as a Bearer token (`Authorization: Bearer <key>`)"),
        );
        components.add_security_scheme(
            API_KEY_HEADER,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key in `X-API-Key` (`APIKEY` is accepted too)",
            ))),
        );
        components.add_security_scheme(
            VERIFY_TOKEN,
            bearer("The verify token (`KEYGATE_VERIFY_TOKEN`) of a service that verifies keys, or the admin token"),
        );
    }
}

/// The document as served, serialized once.
pub fn document_bytes() -> Bytes {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let (_, document) = super::api().split_for_parts();
            // A document of strings and maps always serializes.
            Bytes::from(document.to_json().unwrap_or_default())
        })
        .clone()
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    operation_id = "openapi_document",
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object), ThrottleErrors)
)]
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_bytes(),
    )
}
