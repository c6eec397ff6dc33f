//! The OpenAPI 3.1 document served at `/openapi.json`. It is generated from the handlers'
//! `#[utoipa::path]` annotations by the same `OpenApiRouter` that builds the admin router
//! (`super::api`), so the routes and the document are one list. Built once per process.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;
use keygate_engine::manage::validate;
use keygate_engine::Plans;
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use crate::AppState;

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
    /// A signed scanner report (no admin token): a bad body, a bad signature, too many
    /// failed attempts, the signing keys or the store unreachable.
    ScannerErrors = [400, 401, 429, 503]
);
error_set!(
    /// Readiness: the store.
    StoreErrors = [503]
);

/// Forward-auth's answers (`/v1/auth`, `/v1/auth/{path}`): `204` with the identity
/// headers, or a refusal that also carries its code and message in `X-Keygate-Code` and
/// `X-Keygate-Error` (a proxy's auth request cannot pass the body on).
pub struct ForwardAuthAnswers;

impl IntoResponses for ForwardAuthAnswers {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let header = |about: &str| HeaderBuilder::new().description(Some(about)).build();
        let allowed = ResponseBuilder::new()
            .description(
                "Allowed: the request may go through. The identity is in the `X-Keygate-*` headers",
            )
            .header("X-Keygate-Key-Id", header("The key's id"))
            .header("X-Keygate-Account-Id", header("The key's account"))
            .header("X-Keygate-Environment", header("`live` or `test`"))
            .header(
                "X-Keygate-Permissions",
                header("The key's permissions, comma-separated"),
            )
            .build();
        let mut answers = AuthErrors::responses();
        for answer in answers.values_mut() {
            if let RefOr::T(refusal) = answer {
                refusal.headers.insert(
                    "X-Keygate-Code".into(),
                    header("The error code, as in the body"),
                );
                refusal.headers.insert(
                    "X-Keygate-Error".into(),
                    header("The error message, as in the body"),
                );
            }
        }
        answers.insert("204".into(), RefOr::T(allowed));
        answers
    }
}

/// Whitespace as `str::trim` sees it (Unicode `White_Space`), for [`NAME_PATTERN`].
const WHITE_SPACE: &str = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// A name as `keygate_engine::manage::validate::name` takes it: once trimmed, 1 to 200
/// characters without control characters. The length is in the pattern, not `maxLength`,
/// because it counts after trimming.
fn name_pattern() -> String {
    let controls = r"\x00-\x1f\x7f-\x9f";
    let inner = validate::MAX_NAME_CHARS - 2;
    format!("[{WHITE_SPACE}]*[^{WHITE_SPACE}{controls}]([^{controls}]{{0,{inner}}}[^{WHITE_SPACE}{controls}])?[{WHITE_SPACE}]*")
}

/// Schemas of request fields whose rules the field's Rust type does not carry.
macro_rules! field_schema {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        pub struct $name;
        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
                $schema.into()
            }
        }
        impl ToSchema for $name {}
    };
}

field_schema!(
    /// An account's or a key's name.
    Name => ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("1 to 200 characters without control characters; spaces around it are trimmed"))
        .pattern(Some(format!("^{}$", name_pattern())))
);

field_schema!(
    /// A list's `name` filter: a name, or empty for no filter.
    NameFilter => ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("Only records whose name contains this (case-insensitive; trimmed, without control characters); empty for all"))
        .pattern(Some(format!("^({})?$", name_pattern())))
);

field_schema!(
    /// One entry of an IP allowlist.
    IpOrNetwork => AnyOfBuilder::new()
        .description(Some("An IPv4 or IPv6 address, or a network in CIDR notation (`203.0.113.0/24`, `2001:db8::/32`)"))
        .item(ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4))))
        .item(ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv6))))
        .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(
            r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])/(3[0-2]|[12]?[0-9])$",
        )))
);

field_schema!(
    /// A client address given to `/v1/verify`.
    IpAddress => AnyOfBuilder::new()
        .description(Some("An IPv4 or IPv6 address"))
        .item(ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4))))
        .item(ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv6))))
);

field_schema!(
    /// Where the portal's "Back to …" link goes (`keygate_engine::manage::portal`'s check).
    ReturnUrl => ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("An absolute http or https URL with a host, without spaces or control characters"))
        .max_length(Some(2048))
        .pattern(Some(format!(
            r"^https?://[^/?#{WHITE_SPACE}\x00-\x1f\x7f-\x9f]+[^{WHITE_SPACE}\x00-\x1f\x7f-\x9f]*$"
        )))
);

field_schema!(
    /// A plan name; the served document lists the configured plans (`document_bytes`).
    Plan => ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("One of the plans this server is configured with (`KEYGATE_PLANS`)"))
);

field_schema!(
    /// A permission as a key's `permissions` list takes it.
    PermissionGrant => ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("`resource.action` or `resource:action` (lowercase names of up to 64 characters), `*` for any resource or action, or a preset (`all`, `read`, `write`, `webhooks`). At most 256 grants in all (`write` actions count 3)"))
        .pattern(Some(r"^(all|read|write|webhooks|(\*|[a-z][a-z0-9_-]{0,63})[.:](\*|[a-z][a-z0-9_-]{0,63}))$"))
);

field_schema!(
    /// One definite permission, as `/v1/verify` checks it.
    RequiredPermission => ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("`resource.action` or `resource:action`: lowercase names of up to 64 characters; no wildcard, and not the `write` shorthand"))
        .pattern(Some(r"^[a-z][a-z0-9_-]{0,63}[.:][a-z][a-z0-9_-]{0,63}$"))
);

field_schema!(
    /// A preset set of permissions.
    Scope => ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("A preset instead of `permissions`: `all`, `read`, `write` or `webhooks`"))
        .enum_values(Some(["all", "read", "write", "webhooks"]))
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
        (name = "leaks", description = "Leaked-key reports from secret scanners (GitHub's signed partner endpoint) and operators"),
        (name = "webhooks", description = "Lifecycle webhooks (Standard Webhooks v1): endpoints and deliveries (operator only)"),
        (name = "portal", description = "Links to the hosted API Keys page a customer manages their own keys on"),
        (name = "tokens", description = "Short-lived signed tokens derived from a key, and the keys that verify them"),
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

/// The document as served: the generated one with the configured plans as `Plan`'s values.
/// Built once per plan list (one per process, but tests run servers of several configurations).
pub fn document_bytes(plans: &Plans) -> Bytes {
    static GENERATED: OnceLock<serde_json::Value> = OnceLock::new();
    static SERVED: Mutex<Option<(Vec<String>, Bytes)>> = Mutex::new(None);
    let mut names: Vec<String> = plans.names().map(str::to_owned).collect();
    names.sort();
    let mut served = SERVED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((cached, bytes)) = served.as_ref() {
        if *cached == names {
            return bytes.clone();
        }
    }
    let mut document = GENERATED
        .get_or_init(|| {
            let (_, document) = super::api().split_for_parts();
            // A document of strings and maps always converts.
            serde_json::to_value(&document).unwrap_or_default()
        })
        .clone();
    if let Some(plan) = document.pointer_mut("/components/schemas/Plan") {
        plan["enum"] = serde_json::json!(names);
    }
    let bytes = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
    *served = Some((names, bytes.clone()));
    bytes
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    operation_id = "openapi_document",
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object), ThrottleErrors)
)]
pub async fn document(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_bytes(state.engine.plans()),
    )
}
