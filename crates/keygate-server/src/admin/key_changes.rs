//! `GET /v1/key-changes`: the change stream remote caches listen to (keygate-tower's remote
//! mode, or a client in any language), as server-sent events.
//!
//! A remote cache keeps `/v1/verify` verdicts by key id (the answer's `key_id`); it cannot
//! compute digests (it does not know the pepper) and is never sent one. Events:
//! - `resync`, data `{"reason": …}`: drop every cached verdict. Always the first event of
//!   a connection, and sent again whenever the server cannot vouch for what it would say
//!   (the database's change feed restarted, the client fell behind, a plan changed).
//! - `key`, data `{"key_id": "key_…"}`: drop the verdicts of this key.
//!
//! Every event has an `id`, one sequence per server process with no gap on a connection:
//! a client that sees an id that is not the previous one plus one resyncs. A comment line
//! (`: heartbeat`) is sent every [`HEARTBEAT`] so a client notices a dead connection.
//! `Last-Event-ID` is ignored: every connection starts with `resync`.
//!
//! Also here, for `/v1/verify`: its `Cache-Control`, which tells a remote cache whether it
//! may reuse a valid verdict without asking again, and for how long.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use keygate_edge::Authorization;
use keygate_engine::{now_ms, Announcement, Engine, Numbered, ResyncReason};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::openapi::AuthErrors;
use super::verify::VerifyCaller;
use crate::AppState;

/// How often an idle stream sends a comment line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// Stream key changes for a remote cache (server-sent events). Every connection starts
/// with a `resync` event; then `key` events (`{"key_id": …}`: drop this key's verdicts)
/// and `resync` events (`{"reason": …}`: drop everything). Event ids are consecutive on a
/// connection (a gap: resync); `: heartbeat` comments come every 15 s. See the README's
/// "Change stream" section.
#[utoipa::path(
    get,
    operation_id = "stream_key_changes",
    path = "/v1/key-changes",
    tag = "verification",
    security(("verify_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "A server-sent event stream that does not end. Events: `resync` (data `{\"reason\": \"connected\" | \"lagged\" | \"feed_restarted\" | \"unresolved\" | \"plan_changed\"}`: drop every cached verdict; always the first event) and `key` (data `{\"key_id\": \"key_…\"}`: drop that key's verdicts). Each event has an `id`, consecutive on a connection; a comment line `: heartbeat` comes every 15 seconds.",
            content_type = "text/event-stream", body = String),
        AuthErrors
    )
)]
pub async fn stream(State(state): State<AppState>, _: VerifyCaller) -> Response {
    let (head, receiver) = state.engine.subscribe_key_changes();
    let first = event(head, &Announcement::Resync(ResyncReason::Connected));
    // The stream ends when the server stops, so that it does not hold the graceful
    // shutdown for its whole drain timeout; clients reconnect and resync.
    let stopped = state.engine.stopped();
    let events = stream::once(async move { Ok::<Event, Infallible>(first) })
        .chain(following(state, head, receiver))
        .take_until(stopped);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    // Proxies must pass events on as they come (nginx buffers otherwise).
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The announcements after `after`; a subscriber that fell behind gets a `resync` numbered
/// with the head at that moment, and what it still holds up to there is skipped.
fn following(
    state: AppState,
    after: u64,
    receiver: Receiver<Numbered>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(
        (state, after, receiver),
        |(state, mut after, mut receiver)| async move {
            loop {
                match receiver.recv().await {
                    Ok(numbered) if numbered.seq <= after => continue,
                    Ok(numbered) => {
                        after = numbered.seq;
                        let event = event(numbered.seq, &numbered.announcement);
                        return Some((Ok(event), (state, after, receiver)));
                    }
                    Err(RecvError::Lagged(_)) => {
                        after = state.engine.key_changes_head();
                        let event = event(after, &Announcement::Resync(ResyncReason::Lagged));
                        return Some((Ok(event), (state, after, receiver)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    )
}

fn event(seq: u64, announcement: &Announcement) -> Event {
    let (name, data) = match announcement {
        Announcement::Key(key_id) => ("key", json!({ "key_id": key_id })),
        Announcement::Resync(reason) => ("resync", json!({ "reason": reason.as_str() })),
    };
    Event::default()
        .event(name)
        .id(seq.to_string())
        .data(data.to_string())
}

/// `/v1/verify`'s `Cache-Control`: a valid verdict that needs no counting on the server
/// (the key has no rate limit and no quota) may be reused by a remote cache for the
/// server's cache TTL, never past the key's expiry or scheduled revocation; anything else
/// (a refusal, a key whose every use counts) must not be stored.
pub fn verify_cache_control(engine: &Engine, authorization: &Authorization) -> HeaderValue {
    const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
    let Authorization::Allowed(identity) = authorization else {
        return NO_STORE;
    };
    let key = &identity.key;
    if key.rate_limit().is_some() || key.quota().is_some() {
        return NO_STORE;
    }
    let now = now_ms();
    let ends = [key.expires_at(), key.revoked_at()];
    let until_end_ms = ends.into_iter().flatten().map(|at| at - now).min();
    let ttl_ms = i64::try_from(engine.cache_ttl().as_millis()).unwrap_or(i64::MAX);
    let seconds = until_end_ms.map_or(ttl_ms, |end| end.min(ttl_ms)) / 1000;
    if seconds < 1 {
        return NO_STORE;
    }
    HeaderValue::from_str(&format!("private, max-age={seconds}")).unwrap_or(NO_STORE)
}
