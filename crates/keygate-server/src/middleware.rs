//! Request-wide concerns: a request id for every answer, limits checked before routing,
//! keys in URLs refused, and an access log that cannot contain a secret.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keygate_core::key::random_hex;
use keygate_core::Outcome;

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;

use crate::client_ip::client_ip;
use crate::credentials::query_carries_key;
use crate::error::{AuthFailed, EdgeOutcome};
use crate::{ApiError, AppState};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being answered (for error bodies).
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "req_unknown".to_owned())
}

/// `req_` and 24 hex digits: 32 random bits drawn once per process, then 64 bits that a
/// bijective mix makes of a per-process counter (offset by 64 more random bits), so ids
/// are unique within a process, differ between processes, and cost no system call (the OS
/// random source was one `getrandom` per request). Request ids are not secrets.
fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<(String, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (prefix, offset) = SEED.get_or_init(|| {
        let hex = random_hex(12).unwrap_or_else(|_| "0".repeat(24));
        let offset = u64::from_str_radix(&hex[8..], 16).unwrap_or(0);
        (hex[..8].to_owned(), offset)
    });
    let n = COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(*offset);
    // The splitmix64 finaliser: a bijection on u64.
    let mut z = n;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!("req_{prefix}{z:016x}")
}

/// Makes a path safe to log: percent-escapes decoded first (so `kg%5Flive%5F…` is seen),
/// then anything that starts like a key of this deployment, and any long run of hex (a
/// key body without its prefix), replaced.
pub fn redact(text: &str, prefix: &str) -> String {
    let decoded = crate::credentials::decode(text);
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

pub async fn request_context(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let id = new_request_id();
    REQUEST_ID
        .scope(id.clone(), async move {
            // The access log line's fields, made only when the line is written (at the
            // default `info`; `KEYGATE_LOG=warn` skips the redaction's allocations).
            let logged = tracing::enabled!(tracing::Level::INFO).then(|| {
                let prefix = state.engine.key_format().prefix();
                (
                    Instant::now(),
                    request.method().clone(),
                    redact(request.uri().path(), prefix),
                )
            });
            let throttled_ip = throttled_address(&state, &request);
            let mut response = match precheck(&state, &request, throttled_ip) {
                Err(e) => e.into_response(),
                Ok(()) => next.run(request).await,
            };
            if let Some(EdgeOutcome(outcome)) = response.extensions().get::<EdgeOutcome>() {
                state.engine.metrics().count_outcome(*outcome);
            }
            if response.extensions().get::<AuthFailed>().is_some() {
                if let (Some(throttle), Some(ip)) = (&state.http.failed_auth, throttled_ip) {
                    throttle.note_failure(ip);
                }
            }
            if let Ok(v) = HeaderValue::from_str(&id) {
                response.headers_mut().insert("x-request-id", v);
            }
            if let Some((started, method, path)) = logged {
                tracing::info!(
                    request_id = %id,
                    %method,
                    %path,
                    status = response.status().as_u16(),
                    micros = started.elapsed().as_micros() as u64,
                    "request"
                );
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
    use super::{new_request_id, redact};

    #[test]
    fn request_ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            let hex = id.strip_prefix("req_").unwrap();
            assert_eq!(hex.len(), 24, "{id}");
            assert!(hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }

    #[test]
    fn keys_are_redacted_from_paths() {
        assert_eq!(
            redact("/v1/x/kg_live_abc123/y?kg_test_9", "kg"),
            "/v1/x/[redacted]/y?[redacted]"
        );
        assert_eq!(redact("/v1/api-keys", "kg"), "/v1/api-keys");
        assert_eq!(redact("/v1/x/kg%5Flive%5Fabc", "kg"), "/v1/x/[redacted]");
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
