//! Remote mode: the layer asks a keygate server (`POST /v1/verify` with a verify token) and
//! keeps the valid verdicts the server allows it to reuse, dropped as the server's change
//! stream (`GET /v1/key-changes`) says.
//!
//! What may be reused: the server marks a valid verdict `Cache-Control: private,
//! max-age=N` only for a key without rate limit and quota (every use of such a key must
//! reach the server, which counts it), and never past the key's expiry or scheduled
//! revocation. Everything else (refusals, counted keys) is asked every time. Verdicts are
//! kept by an HMAC of the presented key under a secret drawn at start (never the key
//! itself) and the client address, and hold the key's permissions: the permission a
//! request needs is decided here, with the same rules as the server.
//!
//! Freshness: a `key` event drops that key's verdicts, a `resync` event drops all of
//! them. While the stream is down, every verdict is dropped and new ones are kept for the
//! fallback TTL only (1 s by default); the reconnection's `resync` drops those too. A
//! verdict whose question was sent before a drop is not kept (it may predate the change),
//! nor, for [`SETTLE`] after a key's event, is one about that key (another node behind a
//! load balancer may not have heard of the change yet).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use keygate_core::{Environment, KeyDigest, KeyFormat, Outcome, Pepper, Required, RouteTable};
use keygate_edge::credentials::{key_from_headers, query_carries_key};
use keygate_edge::{ApiError, Authorization, Identity};
use keygate_engine::{CachedKey, RateLimitStatus};
use keygate_store::KeyRecord;
use serde::Deserialize;
use serde_json::json;

use crate::embedded::OpenError;
use crate::layer::{KeygateLayer, Needs};

/// After a key's `key` event, verdicts about it are not kept for this long.
pub const SETTLE: Duration = Duration::from_secs(1);
/// The server sends a heartbeat every 15 s; two missed and the connection is dead.
const STREAM_SILENCE: Duration = Duration::from_secs(35);
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The settings of a remote layer. Set the key format and routes your server's
/// `keygate.toml` sets.
#[must_use = "call .open() to start the layer"]
pub struct Remote {
    server_url: String,
    verify_token: String,
    key_prefix: String,
    env_in_key: bool,
    routes: RouteTable,
    trusted_proxies: Vec<IpNet>,
    cache_capacity: u64,
    cache_ttl: Duration,
    fallback_ttl: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("server_url", &self.server_url)
            .field("verify_token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Remote {
    pub(crate) fn new(server_url: &str, verify_token: &str) -> Remote {
        Remote {
            // With a trailing slash, so that a path prefix (`https://host/keygate/`) is kept
            // when the endpoints are joined to it.
            server_url: format!("{}/", server_url.trim().trim_end_matches('/')),
            verify_token: verify_token.trim().to_owned(),
            key_prefix: "kg".to_owned(),
            env_in_key: true,
            routes: RouteTable::new(Vec::new()),
            trusted_proxies: Vec::new(),
            cache_capacity: 100_000,
            cache_ttl: Duration::from_secs(60),
            fallback_ttl: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }

    /// The key prefix and whether keys carry their environment (`key_prefix`,
    /// `env_in_key`): malformed keys and keys in URLs are refused without asking.
    pub fn key_format(mut self, prefix: &str, env_in_key: bool) -> Remote {
        prefix.clone_into(&mut self.key_prefix);
        self.env_in_key = env_in_key;
        self
    }

    /// The route table that names the permission each request needs (`[[routes]]`), as
    /// on the server; unlisted routes need `<resource>.<action>` from the method and path.
    pub fn routes(mut self, routes: RouteTable) -> Remote {
        self.routes = routes;
        self
    }

    /// Peers whose `X-Forwarded-For` is believed, for keys with an IP allowlist (the
    /// address is sent to the server). Read from axum's `ConnectInfo<SocketAddr>`.
    pub fn trusted_proxies(mut self, proxies: Vec<IpNet>) -> Remote {
        self.trusted_proxies = proxies;
        self
    }

    /// The most verdicts kept (0: none, ask the server on every request) and the longest a
    /// verdict is kept while the change stream is up (the server's `max-age` may be
    /// shorter).
    pub fn cache(mut self, capacity: u64, ttl: Duration) -> Remote {
        self.cache_capacity = capacity;
        self.cache_ttl = ttl;
        self
    }

    /// How long a verdict is kept while the change stream is down (1 s by default): the
    /// longest a revocation can go unnoticed then.
    pub fn fallback_ttl(mut self, ttl: Duration) -> Remote {
        self.fallback_ttl = ttl;
        self
    }

    /// How long a question to the server may take before the request is answered
    /// `503 store_unavailable` (5 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Remote {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Connects to the server's change stream (which checks the verify token) and starts
    /// following it. Fails when the server cannot be reached or refuses the token.
    pub async fn open(self) -> Result<KeygateLayer, OpenError> {
        let key_format = KeyFormat::new(&self.key_prefix, self.env_in_key)
            .map_err(|e| OpenError::BadKeyPrefix(e.to_string()))?;
        let base = reqwest::Url::parse(&self.server_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or(OpenError::BadServerUrl)?;
        let url = |path: &str| base.join(path).map_err(|_| OpenError::BadServerUrl);
        let mut token = HeaderValue::from_str(&format!("Bearer {}", self.verify_token))
            .map_err(|_| OpenError::BadVerifyToken)?;
        token.set_sensitive(true);
        let (hasher, _) = Pepper::generate().map_err(|_| OpenError::NoRandomness)?;
        // Entries carry their own expiry; this bounds how long memory holds them.
        let longest = self
            .cache_ttl
            .max(self.fallback_ttl)
            .max(Duration::from_secs(1));
        let client = Arc::new(RemoteClient {
            http: reqwest::Client::builder()
                .connect_timeout(self.timeout)
                .build()
                .map_err(|e| OpenError::Unreachable(e.to_string()))?,
            verify_url: url("v1/verify")?,
            changes_url: url("v1/key-changes")?,
            token,
            key_format,
            routes: self.routes,
            timeout: self.timeout,
            verdicts: (self.cache_capacity > 0).then(|| Verdicts {
                entries: moka::sync::Cache::builder()
                    .max_capacity(self.cache_capacity)
                    .time_to_live(longest)
                    .build(),
                hasher,
                dropped: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(longest + SETTLE)
                    .build(),
                resync_at: Mutex::new(Instant::now()),
                connected: AtomicBool::new(false),
                ttl: self.cache_ttl,
                fallback_ttl: self.fallback_ttl,
            }),
        });
        let stream = client.connect().await?;
        let follower = tokio::spawn(follow_changes(Arc::downgrade(&client), Some(stream)));
        Ok(KeygateLayer::remote_layer(
            client,
            self.trusted_proxies,
            follower,
        ))
    }
}

/// The remote layer's connection to the server and its verdicts.
pub(crate) struct RemoteClient {
    http: reqwest::Client,
    verify_url: reqwest::Url,
    changes_url: reqwest::Url,
    /// `Bearer <verify token>`, marked sensitive.
    token: HeaderValue,
    key_format: KeyFormat,
    routes: RouteTable,
    timeout: Duration,
    verdicts: Option<Verdicts>,
}

/// Valid verdicts the server allowed to be reused.
struct Verdicts {
    entries: moka::sync::Cache<Slot, Arc<Verdict>>,
    /// Keys the slot digests with: drawn at start, never leaves the process.
    hasher: Pepper,
    /// Key id → when its last `key` event came.
    dropped: moka::sync::Cache<String, Instant>,
    /// When everything was last dropped.
    resync_at: Mutex<Instant>,
    /// Whether the change stream is up (since its first `resync`).
    connected: AtomicBool,
    ttl: Duration,
    fallback_ttl: Duration,
}

/// A presented key (as an HMAC under [`Verdicts::hasher`]) from a client address.
type Slot = (KeyDigest, Option<IpAddr>);

struct Verdict {
    key: Arc<CachedKey>,
    /// When the question was sent.
    asked_at: Instant,
    expires_at: Instant,
}

impl Verdicts {
    fn slot(&self, key: &str, client_ip: Option<IpAddr>) -> Slot {
        (self.hasher.digest(key.as_bytes()), client_ip)
    }

    fn get(&self, slot: &Slot) -> Option<Arc<CachedKey>> {
        let verdict = self.entries.get(slot)?;
        let resync_at = *self.resync_at.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = self
            .dropped
            .get(verdict.key.id())
            .is_some_and(|at| verdict.asked_at <= at + SETTLE);
        if verdict.expires_at <= Instant::now() || verdict.asked_at <= resync_at || dropped {
            self.entries.invalidate(slot);
            return None;
        }
        Some(verdict.key.clone())
    }

    /// Keeps a valid verdict for at most `max_age` (the server's `Cache-Control`).
    fn keep(&self, slot: Slot, key: Arc<CachedKey>, asked_at: Instant, max_age: Duration) {
        let ttl = if self.connected.load(Ordering::Acquire) {
            self.ttl
        } else {
            self.fallback_ttl
        };
        let ttl = ttl.min(max_age);
        if ttl.is_zero() {
            return;
        }
        let verdict = Verdict {
            key,
            asked_at,
            expires_at: Instant::now() + ttl,
        };
        self.entries.insert(slot, Arc::new(verdict));
    }

    fn drop_key(&self, key_id: &str) {
        self.dropped.insert(key_id.to_owned(), Instant::now());
    }

    fn drop_all(&self) {
        *self.resync_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.entries.invalidate_all();
    }
}

/// `/v1/verify`'s answer (the fields the layer uses).
#[derive(Deserialize)]
struct VerifyAnswer {
    valid: bool,
    code: String,
    key_id: Option<String>,
    account_id: Option<String>,
    environment: Option<String>,
    permissions: Option<Vec<String>>,
    meta: Option<serde_json::Value>,
    rate_limit: Option<AnswerRateLimit>,
    /// Set when the credential was a short-lived token.
    #[serde(default)]
    token_id: Option<String>,
}

#[derive(Deserialize)]
struct AnswerRateLimit {
    limit: u32,
    remaining: u32,
    reset_seconds: u64,
}

/// The server could not judge: the request is answered 503, as when a store is down.
fn unavailable(detail: impl Into<String>) -> Authorization {
    refused(keygate_engine::Error::Unavailable(detail.into()))
}

fn refused(error: impl Into<ApiError>) -> Authorization {
    Authorization::Refused {
        error: error.into(),
        key: None,
    }
}

impl RemoteClient {
    /// Judges one request: locally what needs no server (no key, a malformed key, a key in
    /// the URL, a kept verdict), otherwise by asking the server.
    pub(crate) async fn authorize(
        &self,
        needs: &Needs,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
    ) -> Authorization {
        if let Some((_, query)) = path.split_once('?') {
            if query_carries_key(query, &self.key_format) {
                return refused(Outcome::KeyInUrl);
            }
        }
        let key = match key_from_headers(headers) {
            Ok(Some(key)) => key,
            Ok(None) => return refused(Outcome::MissingCredentials),
            Err(e) => return refused(e),
        };
        // A short-lived token is judged by the server like a key (whether it takes tokens
        // is the server's setting).
        if self.key_format.parse(key).is_err() && !keygate_engine::tokens::looks_like_token(key) {
            return refused(Outcome::MalformedKey);
        }
        let required = match needs {
            Needs::FromRequest => Some(self.routes.required(method, path)),
            Needs::Permission(required) => Some(required.clone()),
            Needs::AnyKey => None,
        };
        let slot = self
            .verdicts
            .as_ref()
            .map(|verdicts| verdicts.slot(key, client_ip));
        if let (Some(verdicts), Some(slot)) = (&self.verdicts, &slot) {
            if let Some(key) = verdicts.get(slot) {
                return decide(key, required.as_ref(), None);
            }
        }
        let asked_at = Instant::now();
        let (answer, headers) = match self.ask(key, required.as_ref(), client_ip).await {
            Ok(answered) => answered,
            Err(refusal) => return refusal,
        };
        let rate_limit = answer.rate_limit.as_ref().map(|rate| RateLimitStatus {
            limit: rate.limit,
            remaining: rate.remaining,
            reset_seconds: rate.reset_seconds,
            window_seconds: policy_window(&headers).unwrap_or(0),
            retry_after_seconds: header_number(&headers, "retry-after"),
        });
        if !answer.valid {
            let outcome = Outcome::ALL
                .into_iter()
                .find(|outcome| outcome.code() == answer.code)
                .unwrap_or(Outcome::InvalidKey(keygate_core::InvalidReason::Unknown));
            return refused(ApiError::Outcome(outcome, rate_limit));
        }
        let Some(key) = described(answer) else {
            return unavailable("the keygate server's verify answer lacks the key's identity");
        };
        if let (Some(verdicts), Some(slot), Some(max_age)) =
            (&self.verdicts, slot, max_age(&headers))
        {
            verdicts.keep(slot, key.clone(), asked_at, max_age);
        }
        decide(key, required.as_ref(), rate_limit)
    }

    /// `POST /v1/verify`: the answer and its headers, or the refusal to give when the
    /// server cannot be asked.
    async fn ask(
        &self,
        key: &str,
        required: Option<&Required>,
        client_ip: Option<IpAddr>,
    ) -> Result<(VerifyAnswer, HeaderMap), Authorization> {
        let mut body = json!({ "key": key });
        if let Some(Required::Permission(permission)) = required {
            body["permission"] = json!(permission.to_string());
        }
        if let Some(ip) = client_ip {
            body["ip"] = json!(ip.to_string());
        }
        let sent = self
            .http
            .post(self.verify_url.clone())
            .header(axum::http::header::AUTHORIZATION, self.token.clone())
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Err(unavailable(format!("keygate server: {}", e.without_url()))),
        };
        let status = response.status();
        if !status.is_success() {
            let detail = if matches!(status.as_u16(), 401 | 403) {
                "the keygate server refused the verify token".to_owned()
            } else {
                format!("the keygate server answered {status} to /v1/verify")
            };
            tracing::error!(%status, "keygate: {detail}");
            return Err(unavailable(detail));
        }
        let headers = response.headers().clone();
        match response.json::<VerifyAnswer>().await {
            Ok(answer) => Ok((answer, headers)),
            Err(e) => Err(unavailable(format!(
                "keygate server: unreadable verify answer: {}",
                e.without_url()
            ))),
        }
    }

    /// Opens the change stream; its status tells whether the token is accepted.
    async fn connect(&self) -> Result<reqwest::Response, OpenError> {
        let response = self
            .http
            .get(self.changes_url.clone())
            .header(axum::http::header::AUTHORIZATION, self.token.clone())
            .header(axum::http::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| OpenError::Unreachable(e.without_url().to_string()))?;
        match response.status().as_u16() {
            200 => Ok(response),
            401 | 403 => Err(OpenError::BadVerifyToken),
            other => Err(OpenError::Unreachable(format!(
                "GET /v1/key-changes answered {other}"
            ))),
        }
    }
}

/// The key's identity from a valid answer.
fn described(answer: VerifyAnswer) -> Option<Arc<CachedKey>> {
    let record = KeyRecord {
        id: answer.key_id?,
        account_id: answer.account_id?,
        name: String::new(),
        display_prefix: String::new(),
        digest: KeyDigest([0; 32]),
        environment: Environment::parse(answer.environment.as_deref()?)?,
        permissions: answer.permissions.unwrap_or_default(),
        ip_allowlist: Vec::new(),
        rate_limit: None,
        quota: None,
        quota_used: 0,
        quota_refilled_at: None,
        meta: answer.meta.unwrap_or(serde_json::Value::Null),
        created_at: 0,
        last_used_at: None,
        expires_at: None,
        revoked_at: None,
        rotated_from: None,
        recent_ips: Vec::new(),
        leaked_at: None,
        retire_when_idle_ms: None,
    };
    let key = CachedKey::described(record);
    Some(Arc::new(match answer.token_id {
        Some(token_id) => key.presented_by_token(&token_id),
        None => key,
    }))
}

/// A valid key may do what this request needs: the server judged a named permission;
/// a kept verdict, or an unmapped request (which needs `*`), is judged here with the
/// key's permissions, by the same rules.
fn decide(
    key: Arc<CachedKey>,
    required: Option<&Required>,
    rate_limit: Option<RateLimitStatus>,
) -> Authorization {
    let allowed = match required {
        None => true,
        Some(Required::Permission(permission)) => key.permissions().allows(permission),
        Some(Required::Unmapped) => key.permissions().allows_everything(),
    };
    if allowed {
        Authorization::Allowed(Identity { key, rate_limit })
    } else {
        refused(ApiError::Outcome(Outcome::InsufficientPermissions, None))
    }
}

/// `Cache-Control: private, max-age=N` → N seconds; anything else: not to be kept.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(axum::http::header::CACHE_CONTROL)?
        .to_str()
        .ok()?;
    let directives: Vec<&str> = value.split(',').map(str::trim).collect();
    if directives.contains(&"no-store") || !directives.contains(&"private") {
        return None;
    }
    directives
        .iter()
        .find_map(|d| d.strip_prefix("max-age="))
        .and_then(|seconds| seconds.parse().ok())
        .map(Duration::from_secs)
}

/// `RateLimit-Policy: "default";q=100;w=60` → 60.
fn policy_window(headers: &HeaderMap) -> Option<u32> {
    let policy = headers.get("ratelimit-policy")?.to_str().ok()?;
    policy
        .split(';')
        .find_map(|part| part.trim().strip_prefix("w="))
        .and_then(|w| w.parse().ok())
}

fn header_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    name: String,
    data: String,
    id: Option<String>,
}

/// Splits a byte stream into server-sent events (the parts of the format keygate uses:
/// `event`, `data`, `id`, comments).
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    event: SseEvent,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8], events: &mut Vec<SseEvent>) {
        self.buffer.extend_from_slice(bytes);
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let event = std::mem::take(&mut self.event);
                if !event.name.is_empty() || !event.data.is_empty() {
                    events.push(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => value.clone_into(&mut self.event.name),
                "data" => {
                    if !self.event.data.is_empty() {
                        self.event.data.push('\n');
                    }
                    self.event.data.push_str(value);
                }
                "id" => self.event.id = Some(value.to_owned()),
                _ => {}
            }
        }
    }
}

/// Follows the change stream for as long as the layer lives: applies its events, and
/// while it is down falls back to short verdicts and reconnects.
async fn follow_changes(client: Weak<RemoteClient>, mut first: Option<reqwest::Response>) {
    let mut wait = RECONNECT_FIRST;
    let mut warned = false;
    loop {
        let response = match first.take() {
            Some(response) => response,
            None => {
                let Some(strong) = client.upgrade() else {
                    return;
                };
                let connected = strong.connect().await;
                drop(strong);
                match connected {
                    Ok(response) => response,
                    Err(e) => {
                        if !warned {
                            tracing::warn!(error = %e, "keygate: cannot reach the change stream; verdicts are kept for the fallback TTL until it is back");
                            warned = true;
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            }
        };
        if warned {
            tracing::info!("keygate: the change stream is back");
            warned = false;
        }
        wait = RECONNECT_FIRST;
        let ended = read_stream(&client, response).await;
        let Some(strong) = client.upgrade() else {
            return;
        };
        if let Some(verdicts) = &strong.verdicts {
            verdicts.connected.store(false, Ordering::Release);
            verdicts.drop_all();
        }
        tracing::warn!(
            reason = ended,
            "keygate: the change stream ended; reconnecting"
        );
    }
}

/// Reads one connection's events until it ends; says why it ended.
async fn read_stream(client: &Weak<RemoteClient>, mut response: reqwest::Response) -> &'static str {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    // The id of the last event on this connection.
    let mut last: Option<u64> = None;
    loop {
        let chunk = match tokio::time::timeout(STREAM_SILENCE, response.chunk()).await {
            Err(_) => return "no heartbeat",
            Ok(Err(_)) => return "connection error",
            Ok(Ok(None)) => return "closed by the server",
            Ok(Ok(Some(chunk))) => chunk,
        };
        parser.push(&chunk, &mut events);
        let Some(strong) = client.upgrade() else {
            return "layer dropped";
        };
        let Some(verdicts) = &strong.verdicts else {
            // Nothing kept, nothing to drop: the stream only proves the token.
            events.clear();
            continue;
        };
        for event in events.drain(..) {
            let id = event.id.as_deref().and_then(|id| id.parse::<u64>().ok());
            let in_sequence = match (last, id) {
                (Some(last), Some(id)) => id == last + 1,
                // The first event of a connection is a resync.
                (None, _) => event.name == "resync",
                (Some(_), None) => false,
            };
            last = id.or(last);
            if !in_sequence {
                tracing::warn!("keygate: a gap in the change stream; dropping every verdict");
                verdicts.drop_all();
            }
            match event.name.as_str() {
                "resync" => {
                    verdicts.drop_all();
                    verdicts.connected.store(true, Ordering::Release);
                }
                "key" => match serde_json::from_str::<KeyEvent>(&event.data) {
                    Ok(KeyEvent { key_id }) => verdicts.drop_key(&key_id),
                    Err(_) => verdicts.drop_all(),
                },
                // Newer servers may say more; an unknown event changes nothing.
                _ => {}
            }
        }
    }
}

#[derive(Deserialize)]
struct KeyEvent {
    key_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_on_blank_lines_whatever_the_chunks() {
        let stream = b": heartbeat\n\nevent: resync\nid: 7\ndata: {\"reason\":\"connected\"}\n\nevent: key\r\nid: 8\r\ndata: {\"key_id\":\"key_1\"}\r\n\r\n";
        for split in [1, 5, 17, stream.len()] {
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            for chunk in stream.chunks(split) {
                parser.push(chunk, &mut events);
            }
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        name: "resync".into(),
                        data: r#"{"reason":"connected"}"#.into(),
                        id: Some("7".into())
                    },
                    SseEvent {
                        name: "key".into(),
                        data: r#"{"key_id":"key_1"}"#.into(),
                        id: Some("8".into())
                    },
                ]
            );
        }
    }

    #[test]
    fn only_private_max_age_answers_are_kept() {
        let mut headers = HeaderMap::new();
        assert_eq!(max_age(&headers), None);
        headers.insert("cache-control", HeaderValue::from_static("no-store"));
        assert_eq!(max_age(&headers), None);
        headers.insert(
            "cache-control",
            HeaderValue::from_static("private, max-age=42"),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(42)));
        headers.insert(
            "ratelimit-policy",
            HeaderValue::from_static("\"default\";q=100;w=60"),
        );
        assert_eq!(policy_window(&headers), Some(60));
    }
}
