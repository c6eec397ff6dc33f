//! The one mapping from an error to an HTTP answer.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::Outcome;
use keygate_engine::Error;
use serde_json::json;

use crate::middleware::current_request_id;

/// Everything a handler can answer besides success.
#[derive(Debug)]
pub enum ApiError {
    Engine(Error),
    /// A verification outcome other than valid, from the engine (forward-auth,
    /// key-authenticated calls); the engine counted it already.
    Outcome(Outcome, Option<keygate_engine::RateLimitStatus>),
    /// An outcome decided at the HTTP edge (no key, key in the URL, unreadable header).
    Edge(Outcome),
    /// Too many failed authentications from this address.
    Throttled(u64),
    /// Authorization present but neither the admin token nor a key.
    BadAdminCredentials,
    /// Two different keys in one request.
    AmbiguousCredentials,
    PayloadTooLarge,
    HeadersTooLarge,
    UnsupportedMediaType,
    RouteNotFound,
    MethodNotAllowed,
    /// Gateway: the upstream API cannot be reached or broke off before answering.
    UpstreamUnavailable,
    /// Gateway: the upstream API did not answer within the configured timeout.
    UpstreamTimeout,
    /// Gateway: the client stopped sending its request body for longer than the timeout.
    RequestTimeout,
    Internal,
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Engine(e)
    }
}

impl From<Outcome> for ApiError {
    fn from(o: Outcome) -> Self {
        ApiError::Edge(o)
    }
}

/// Marks an answer whose outcome the edge decided, for the metrics middleware to count.
#[derive(Clone, Copy, Debug)]
pub struct EdgeOutcome(pub Outcome);

/// Marks an answer to a failed authentication, for the failed-auth throttle.
#[derive(Clone, Copy, Debug)]
pub struct AuthFailed;

/// The code and message of an error answer, kept beside its body for edges that must
/// also say them in headers (forward-auth: a proxy cannot read the body of its auth
/// request, see `docs/nginx.md`). Never sent by itself.
#[derive(Clone, Debug)]
pub struct ErrorCode {
    pub code: String,
    pub message: String,
}

/// Copies an error answer's code and message into `X-Keygate-Code` and `X-Keygate-Error`.
pub fn expose_error_code(response: &mut Response) {
    let Some(info) = response.extensions().get::<ErrorCode>().cloned() else {
        return;
    };
    for (name, value) in [
        ("x-keygate-code", info.code),
        ("x-keygate-error", info.message),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
}

/// The JSON error body every failure shares.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
) -> Response {
    let mut body = json!({
        "error": message,
        "code": code,
        "request_id": current_request_id(),
    });
    if let Some(field) = field {
        body["field"] = json!(field);
    }
    let mut response = (status, axum::Json(body)).into_response();
    response.extensions_mut().insert(ErrorCode {
        code: code.to_owned(),
        message: message.to_owned(),
    });
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        if code != Outcome::MissingCredentials.code() {
            response.extensions_mut().insert(AuthFailed);
        }
    }
    response
}

pub fn outcome_response(
    outcome: Outcome,
    rate: Option<keygate_engine::RateLimitStatus>,
) -> Response {
    let status = StatusCode::from_u16(outcome.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut response = error_response(status, outcome.code(), outcome.message(), None);
    if let Some(rate) = rate {
        crate::views::rate_limit_headers(response.headers_mut(), &rate);
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use StatusCode as S;
        match self {
            ApiError::Outcome(o, rate) => outcome_response(o, rate),
            ApiError::Edge(o) => {
                let mut response = outcome_response(o, None);
                response.extensions_mut().insert(EdgeOutcome(o));
                response
            }
            ApiError::Throttled(secs) => {
                let mut response = error_response(
                    S::TOO_MANY_REQUESTS,
                    "too_many_failed_attempts",
                    "Too many failed authentication attempts from your address; try again later",
                    None,
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                response
            }
            ApiError::Engine(e) => match e {
                Error::Validation { field, message } => {
                    error_response(S::BAD_REQUEST, "validation_error", &message, Some(&field))
                }
                Error::NotFound(what) => error_response(
                    S::NOT_FOUND,
                    "not_found",
                    &format!("{what} not found"),
                    None,
                ),
                Error::Unauthenticated(o) | Error::Refused(o) => outcome_response(o, None),
                Error::Forbidden(m) => error_response(S::FORBIDDEN, "forbidden", &m, None),
                Error::PlanLimit => error_response(
                    S::TOO_MANY_REQUESTS,
                    "plan_limit_reached",
                    "API key limit reached for your plan",
                    None,
                ),
                Error::Conflict(m) => error_response(S::CONFLICT, "conflict", &m, None),
                Error::Unavailable(detail) => {
                    tracing::warn!(%detail, "store unavailable");
                    error_response(
                        S::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "The key store is unavailable; try again shortly",
                        None,
                    )
                }
                Error::Internal(detail) => {
                    tracing::error!(%detail, "internal error");
                    ApiError::Internal.into_response()
                }
            },
            ApiError::BadAdminCredentials => error_response(
                S::UNAUTHORIZED,
                "unauthorized",
                "Invalid admin token or API key",
                None,
            ),
            ApiError::AmbiguousCredentials => error_response(
                S::BAD_REQUEST,
                "ambiguous_credentials",
                "The request carries two different API keys; send exactly one",
                None,
            ),
            ApiError::PayloadTooLarge => error_response(
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body is too large",
                None,
            ),
            ApiError::HeadersTooLarge => error_response(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "The request headers are too large",
                None,
            ),
            ApiError::UnsupportedMediaType => error_response(
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body as JSON with Content-Type: application/json",
                None,
            ),
            ApiError::RouteNotFound => {
                error_response(S::NOT_FOUND, "not_found", "No such endpoint", None)
            }
            ApiError::MethodNotAllowed => error_response(
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This endpoint does not accept that method",
                None,
            ),
            ApiError::UpstreamUnavailable => error_response(
                S::BAD_GATEWAY,
                "upstream_unavailable",
                "The upstream API cannot be reached; try again shortly",
                None,
            ),
            ApiError::UpstreamTimeout => error_response(
                S::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "The upstream API did not answer in time",
                None,
            ),
            ApiError::RequestTimeout => error_response(
                S::REQUEST_TIMEOUT,
                "request_timeout",
                "The request body was not received in time",
                None,
            ),
            ApiError::Internal => error_response(
                S::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal error",
                None,
            ),
        }
    }
}
