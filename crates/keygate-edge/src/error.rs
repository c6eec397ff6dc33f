//! The one mapping from a failure to an HTTP answer. [`ApiError::answer`] decides the
//! status, code, message and extra headers; the JSON body (`IntoResponse`), the
//! dashboard's HTML pages and the connection layer's own refusals are rendered from it.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::Outcome;
use keygate_engine::{Error, RateLimitStatus};
use serde_json::json;

use crate::authorize::rate_limit_headers;
use crate::request_id::current_request_id;

/// Everything a handler can answer besides success.
#[derive(Debug)]
pub enum ApiError {
    Engine(Error),
    /// A verification outcome other than valid, from the engine (forward-auth,
    /// key-authenticated calls); the engine counted it already.
    Outcome(Outcome, Option<RateLimitStatus>),
    /// An outcome decided at the HTTP edge (no key, key in the URL, unreadable header).
    Edge(Outcome),
    /// Too many failed authentications from this address.
    Throttled(u64),
    /// Authorization present but neither the admin token nor a key.
    BadAdminCredentials,
    /// Two different keys in one request.
    AmbiguousCredentials,
    /// The request is not well-formed HTTP for this server (e.g. two `Host` headers).
    BadRequest(&'static str),
    PayloadTooLarge,
    HeadersTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    RouteNotFound,
    MethodNotAllowed,
    /// Gateway: the upstream API cannot be reached or broke off before answering.
    UpstreamUnavailable,
    /// Gateway: the upstream API did not answer within the configured timeout.
    UpstreamTimeout,
    /// The client did not send its request (or its body) in time.
    RequestTimeout,
    /// A signed report (GitHub secret scanning) without a valid signature.
    BadSignature,
    /// The public keys that would check a signed report cannot be fetched.
    SignatureKeysUnavailable,
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

/// What an error answer says, whatever it is rendered as. Kept in the extensions of every
/// error response, so that edges rendering another form (the dashboard's HTML) or also
/// saying it in headers (forward-auth: a proxy cannot read the body of its auth request,
/// see `docs/nginx.md`) never re-read the body. Never sent by itself.
#[derive(Clone, Debug)]
pub struct ErrorAnswer {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field at fault (validation errors).
    pub field: Option<String>,
    /// `Retry-After`, `RateLimit`, `WWW-Authenticate`… as the answer needs.
    pub headers: HeaderMap,
}

impl ErrorAnswer {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ErrorAnswer {
        let mut headers = HeaderMap::new();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            );
        }
        ErrorAnswer {
            status,
            code,
            message: message.into(),
            field: None,
            headers,
        }
    }

    fn outcome(outcome: Outcome, rate: Option<&RateLimitStatus>) -> ErrorAnswer {
        let status =
            StatusCode::from_u16(outcome.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut answer = ErrorAnswer::new(status, outcome.code(), outcome.message());
        if let Some(rate) = rate {
            rate_limit_headers(&mut answer.headers, rate);
        }
        answer
    }

    /// The JSON answer `{error, code, request_id[, field]}` with this answer's headers.
    pub fn into_json_response(self) -> Response {
        let mut body = json!({
            "error": self.message,
            "code": self.code,
            "request_id": current_request_id(),
        });
        if let Some(field) = &self.field {
            body["field"] = json!(field);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().extend(self.headers.clone());
        if self.status == StatusCode::UNAUTHORIZED
            && self.code != Outcome::MissingCredentials.code()
        {
            response.extensions_mut().insert(AuthFailed);
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// Copies an error answer's code and message into `X-Keygate-Code` and `X-Keygate-Error`.
pub fn expose_error_code(response: &mut Response) {
    let Some(info) = response.extensions().get::<ErrorAnswer>() else {
        return;
    };
    let pairs = [
        ("x-keygate-code", HeaderValue::from_static(info.code)),
        (
            "x-keygate-error",
            HeaderValue::from_str(&info.message).unwrap_or(HeaderValue::from_static("error")),
        ),
    ];
    for (name, value) in pairs {
        response.headers_mut().insert(name, value);
    }
}

impl ApiError {
    /// The edge outcome this error stands for, if the edge (not the engine) decided it.
    pub fn edge_outcome(&self) -> Option<Outcome> {
        match self {
            ApiError::Edge(o) => Some(*o),
            _ => None,
        }
    }

    /// Status, code, message and headers of this error's answer.
    pub fn answer(&self) -> ErrorAnswer {
        use StatusCode as S;
        match self {
            ApiError::Outcome(o, rate) => ErrorAnswer::outcome(*o, rate.as_ref()),
            ApiError::Edge(o) => ErrorAnswer::outcome(*o, None),
            ApiError::Throttled(secs) => {
                let mut answer = ErrorAnswer::new(
                    S::TOO_MANY_REQUESTS,
                    "too_many_failed_attempts",
                    "Too many failed authentication attempts from your address; try again later",
                );
                answer
                    .headers
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
                answer
            }
            ApiError::Engine(e) => match e {
                Error::Validation { field, message } => ErrorAnswer {
                    field: Some(field.clone()),
                    ..ErrorAnswer::new(S::BAD_REQUEST, "validation_error", message.clone())
                },
                Error::NotFound(what) => {
                    ErrorAnswer::new(S::NOT_FOUND, "not_found", format!("{what} not found"))
                }
                Error::Unauthenticated(o) | Error::Refused(o) => ErrorAnswer::outcome(*o, None),
                Error::Forbidden(m) => ErrorAnswer::new(S::FORBIDDEN, "forbidden", m.clone()),
                Error::PlanLimit => ErrorAnswer::new(
                    S::TOO_MANY_REQUESTS,
                    "plan_limit_reached",
                    "API key limit reached for your plan",
                ),
                Error::Conflict(m) => ErrorAnswer::new(S::CONFLICT, "conflict", m.clone()),
                Error::Unavailable(detail) => {
                    tracing::warn!(%detail, "store unavailable");
                    ErrorAnswer::new(
                        S::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "The key store is unavailable; try again shortly",
                    )
                }
                Error::Internal(detail) => {
                    tracing::error!(%detail, "internal error");
                    ApiError::Internal.answer()
                }
            },
            ApiError::BadAdminCredentials => ErrorAnswer::new(
                S::UNAUTHORIZED,
                "unauthorized",
                "Invalid admin token or API key",
            ),
            ApiError::AmbiguousCredentials => ErrorAnswer::new(
                S::BAD_REQUEST,
                "ambiguous_credentials",
                "The request carries two different API keys; send exactly one",
            ),
            ApiError::BadRequest(message) => {
                ErrorAnswer::new(S::BAD_REQUEST, "bad_request", *message)
            }
            ApiError::PayloadTooLarge => ErrorAnswer::new(
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body is too large",
            ),
            ApiError::HeadersTooLarge => ErrorAnswer::new(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "The request headers are too large",
            ),
            ApiError::UriTooLong => ErrorAnswer::new(
                S::URI_TOO_LONG,
                "uri_too_long",
                "The request target is too long",
            ),
            ApiError::UnsupportedMediaType => ErrorAnswer::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body as JSON with Content-Type: application/json",
            ),
            ApiError::RouteNotFound => {
                ErrorAnswer::new(S::NOT_FOUND, "not_found", "No such endpoint")
            }
            ApiError::MethodNotAllowed => ErrorAnswer::new(
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This endpoint does not accept that method",
            ),
            ApiError::UpstreamUnavailable => ErrorAnswer::new(
                S::BAD_GATEWAY,
                "upstream_unavailable",
                "The upstream API cannot be reached; try again shortly",
            ),
            ApiError::UpstreamTimeout => ErrorAnswer::new(
                S::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "The upstream API did not answer in time",
            ),
            ApiError::RequestTimeout => ErrorAnswer::new(
                S::REQUEST_TIMEOUT,
                "request_timeout",
                "The request was not received in time",
            ),
            ApiError::BadSignature => ErrorAnswer::new(
                S::UNAUTHORIZED,
                "invalid_signature",
                "The request's signature is missing or does not verify",
            ),
            ApiError::SignatureKeysUnavailable => ErrorAnswer::new(
                S::SERVICE_UNAVAILABLE,
                "signature_keys_unavailable",
                "The public keys that check the signature cannot be fetched; try again shortly",
            ),
            ApiError::Internal => {
                ErrorAnswer::new(S::INTERNAL_SERVER_ERROR, "internal_error", "Internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let edge = self.edge_outcome();
        let mut response = self.answer().into_json_response();
        if let Some(outcome) = edge {
            response.extensions_mut().insert(EdgeOutcome(outcome));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_is_json_with_its_code_and_status() {
        let cases = [
            (ApiError::UriTooLong, 414, "uri_too_long"),
            (ApiError::HeadersTooLarge, 431, "headers_too_large"),
            (ApiError::RequestTimeout, 408, "request_timeout"),
            (ApiError::BadRequest("two hosts"), 400, "bad_request"),
            (ApiError::Edge(Outcome::MalformedKey), 401, "malformed_key"),
            (ApiError::Throttled(7), 429, "too_many_failed_attempts"),
        ];
        for (error, status, code) in cases {
            let answer = error.answer();
            assert_eq!(answer.status.as_u16(), status, "{code}");
            assert_eq!(answer.code, code);
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response.extensions().get::<ErrorAnswer>().unwrap().code,
                code
            );
        }
    }

    #[test]
    fn unauthorized_answers_say_how_to_authenticate_and_count_as_failures() {
        let response = ApiError::Edge(Outcome::MalformedKey).into_response();
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert!(response.extensions().get::<AuthFailed>().is_some());
        let missing = ApiError::Edge(Outcome::MissingCredentials).into_response();
        assert!(missing.extensions().get::<AuthFailed>().is_none());
    }

    #[test]
    fn throttling_says_when_to_retry() {
        let response = ApiError::Throttled(12).into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "12");
    }
}
