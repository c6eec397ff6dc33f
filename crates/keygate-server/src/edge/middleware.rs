//! Request-wide concerns: a request id for every answer, limits checked before routing,
//! keys in URLs refused, and an access log that cannot contain a secret.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use keygate_core::Outcome;
use keygate_edge::client_ip::client_ip;
use keygate_edge::credentials::query_carries_key;
use keygate_edge::request_id::{self, new_request_id};
use keygate_edge::{AuthFailed, EdgeOutcome};
use tower_http::catch_panic::CatchPanicLayer;

use super::access_log;
use crate::{ApiError, AppState};

/// Puts `routes` inside the request context every listener shares: the body limit, a
/// panic answered as a JSON 500, and [`request_context`].
pub fn wrap(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .layer(DefaultBodyLimit::max(state.http.body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal.into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

/// Makes a path safe to log: percent-escapes decoded until stable first (so `kg%5Flive%5F…`
/// and `kg%255Flive…` are seen), then anything that starts like a key of this deployment,
/// and any long run of hex (a key body without its prefix), replaced. A text that does not
/// settle within the decoding bound is replaced whole.
pub fn redact<'a>(text: &'a str, prefix: &str) -> Cow<'a, str> {
    if needs_no_redaction(text, prefix) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(redact_escaped(text, prefix))
}

/// The common case, checked without allocating: nothing escaped, no key prefix, no long
/// hex run.
fn needs_no_redaction(text: &str, prefix: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return false;
    }
    let has_marker = text
        .match_indices(prefix)
        .any(|(at, _)| bytes.get(at + prefix.len()) == Some(&b'_'));
    let mut run = 0;
    let long_hex_run = bytes.iter().any(|b| {
        run = if b.is_ascii_hexdigit() { run + 1 } else { 0 };
        run >= 32
    });
    !has_marker && !long_hex_run
}

fn redact_escaped(text: &str, prefix: &str) -> String {
    let Some(decoded) = keygate_edge::credentials::decode_fully(text) else {
        return "[redacted]".to_owned();
    };
    let marker = format!("{prefix}_");
    let mut out = String::with_capacity(decoded.len());
    let mut rest = decoded.as_str();
    while let Some(pos) = rest.find(&marker) {
        out.push_str(&rest[..pos]);
        out.push_str("[redacted]");
        let tail = &rest[pos..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    redact_hex_runs(&out)
}

/// Replaces runs of 32 or more hex digits.
fn redact_hex_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        flush_run(&mut out, &mut run);
        out.push(c);
    }
    flush_run(&mut out, &mut run);
    out
}

fn flush_run(out: &mut String, run: &mut String) {
    if run.len() >= 32 {
        out.push_str("[redacted]");
    } else {
        out.push_str(run);
    }
    run.clear();
}

/// The request context as axum middleware (see [`in_context`]).
pub async fn request_context(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    in_context(&state, request, |request| next.run(request)).await
}

/// Answers `request` with `inner` inside the request context every listener shares: a
/// request id (answer header, error bodies), the prechecks (failed-auth throttle, header
/// size, keys in the query), metrics of edge outcomes, failed authentications noted, and
/// the access log line.
pub async fn in_context<F, Fut>(state: &AppState, request: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let id = new_request_id();
    request_id::scope(id, async move {
        // The access log line's fields, made only when the line is written (at the
        // default `info`; `KEYGATE_LOG=warn` skips the redaction's allocations).
        // (A `Uri` clone shares its bytes; the path is redacted only when written.)
        let logged = tracing::enabled!(tracing::Level::INFO).then(|| {
            (
                Instant::now(),
                request.method().clone(),
                request.uri().clone(),
            )
        });
        let throttled_ip = throttled_address(state, &request);
        let mut response = match precheck(state, &request, throttled_ip) {
            Err(e) => e.into_response(),
            Ok(()) => inner(request).await,
        };
        if let Some(EdgeOutcome(outcome)) = response.extensions().get::<EdgeOutcome>() {
            state.engine.metrics().count_outcome(*outcome);
        }
        if response.extensions().get::<AuthFailed>().is_some() {
            if let (Some(throttle), Some(ip)) = (&state.http.failed_auth, throttled_ip) {
                throttle.note_failure(ip);
            }
        }
        if let Ok(v) = HeaderValue::from_bytes(id.as_bytes()) {
            const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
            response.headers_mut().insert(REQUEST_ID, v);
        }
        if let Some((started, method, uri)) = logged {
            let prefix = state.engine.key_format().prefix();
            access_log::record(&access_log::Entry {
                request_id: id.as_str(),
                method: method.as_str(),
                path: &redact(uri.path(), prefix),
                status: response.status().as_u16(),
                micros: started.elapsed().as_micros() as u64,
            });
        }
        response
    })
    .await
}

/// The address failed authentications are counted against: the client, unless it is a
/// trusted proxy itself (then every client behind it would share one bucket).
fn throttled_address(state: &AppState, request: &Request) -> Option<IpAddr> {
    state.http.failed_auth.as_ref()?;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let trusted = &state.http.trusted_proxies;
    let ip = client_ip(peer, request.headers(), trusted)?;
    (!trusted.iter().any(|n| n.contains(&ip))).then_some(ip)
}

fn precheck(
    state: &AppState,
    request: &Request,
    throttled_ip: Option<IpAddr>,
) -> Result<(), ApiError> {
    if let (Some(throttle), Some(ip)) = (&state.http.failed_auth, throttled_ip) {
        if let Some(secs) = throttle.blocked_for(ip) {
            state.engine.metrics().count_auth_throttled();
            return Err(ApiError::Throttled(secs));
        }
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > state.http.header_limit {
        return Err(ApiError::HeadersTooLarge);
    }
    if let Some(query) = request.uri().query() {
        if query_carries_key(query, state.engine.key_format()) {
            return Err(Outcome::KeyInUrl.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;
    use std::borrow::Cow;

    #[test]
    fn keys_are_redacted_from_paths() {
        assert_eq!(
            redact("/v1/x/kg_live_abc123/y?kg_test_9", "kg"),
            "/v1/x/[redacted]/y?[redacted]"
        );
        assert_eq!(redact("/v1/api-keys", "kg"), "/v1/api-keys");
        assert!(matches!(redact("/v1/auth", "kg"), Cow::Borrowed(_)));
        assert_eq!(redact("/v1/kg_x", "kg"), "/v1/[redacted]");
        assert_eq!(redact("/v1/a+kg", "kg"), "/v1/a kg");
        assert_eq!(redact("/v1/x/kg%5Flive%5Fabc", "kg"), "/v1/x/[redacted]");
        assert_eq!(
            redact("/v1/x/kg%255Flive%255Fabc", "kg"),
            "/v1/x/[redacted]"
        );
        // Escaped more often than the decoding bound: hidden whole.
        let nested = format!("/v1/%{}41", "25".repeat(9));
        assert_eq!(redact(&nested, "kg"), "[redacted]");
        let body = "ab".repeat(32);
        assert_eq!(
            redact(&format!("/v1/x/{body}/y"), "kg"),
            "/v1/x/[redacted]/y"
        );
        assert_eq!(
            redact("/v1/api-keys/key_0123456789abcdef01234567", "kg"),
            "/v1/api-keys/key_0123456789abcdef01234567"
        );
    }
}
