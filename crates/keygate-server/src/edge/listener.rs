//! The connection layer under every router: accepts TCP connections and speaks HTTP/1.1
//! and HTTP/2 (prior knowledge) with hyper, within limits that a hostile or broken client
//! cannot stretch.
//!
//! What a client cannot do:
//! - hold a connection without sending a request: `first_request_timeout` after accept (this
//!   also covers the protocol sniffing, which hyper would wait on forever);
//! - send its request headers slowly (slowloris): `header_read_timeout` for the whole head,
//!   counted from when the connection is ready for a request (so it is also the keep-alive
//!   idle time of HTTP/1);
//! - trickle a body or keep a request open: `request_timeout` until the answer's head,
//!   then 408; or announce a body bigger than `max_declared_body` (413 before reading it);
//! - send a request head bigger than `max_head_bytes` (431 from hyper) or a target longer
//!   than `max_uri_bytes` (414);
//! - keep an HTTP/2 connection with nothing moving: `idle_timeout` without a byte either
//!   way and no request in flight, then GOAWAY;
//! - stop reading an answer (a download, or answers piling up behind pipelined requests):
//!   when the socket has not taken a byte for `send_timeout` while the server had bytes to
//!   write, the connection is dropped. A client that reads slowly but keeps reading frees
//!   buffer space now and then and is never cut;
//! - run out the server's file descriptors quietly: accept errors are logged and retried
//!   after a pause, never a busy loop or an exit.
//!
//! Both listeners run on it: the admin router (`serve`) and the gateway
//! (`gateway::serve_gateway`, without the request timeout and the declared-body cap, which
//! would cut streams). `keygate serve` sets the client timeouts of both from
//! `client_header_timeout_seconds` (first request and header read),
//! `client_idle_timeout_seconds` and `client_send_timeout_seconds`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::ApiError;

/// hyper's default limit on the headers of an HTTP/1 request.
const HYPER_MAX_HEADERS: usize = 100;

/// Limits and timeouts of the connection layer. See the module documentation.
#[derive(Clone, Debug)]
pub struct EdgeLimits {
    /// From accept to the first request's head being read.
    pub first_request_timeout: Duration,
    /// To read one request head (request line and headers).
    pub header_read_timeout: Duration,
    /// From a request's head to its answer's head (covers reading the body). `None`: none.
    pub request_timeout: Option<Duration>,
    /// Without a byte either way and no request in flight, a connection is closed.
    pub idle_timeout: Duration,
    /// How long a write may wait on a socket that takes no bytes (the client stopped
    /// reading) before the connection is dropped.
    pub send_timeout: Duration,
    /// Largest request head hyper buffers (HTTP/1), and header list (HTTP/2), in bytes.
    pub max_head_bytes: usize,
    /// Longest request target (path and query), in bytes.
    pub max_uri_bytes: usize,
    /// A request that declares a longer body (`Content-Length`) is refused with 413 before
    /// any of it is read (`None`: the router decides, e.g. for streamed uploads).
    pub max_declared_body: Option<u64>,
    /// Most headers in one HTTP/1 request.
    pub max_headers: usize,
    /// Most concurrent streams on one HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// After the shutdown signal, how long in-flight requests get before their
    /// connections are dropped.
    pub drain_timeout: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            first_request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(30)),
            idle_timeout: Duration::from_secs(120),
            send_timeout: Duration::from_secs(30),
            max_head_bytes: 32 * 1024,
            max_uri_bytes: 8 * 1024,
            max_declared_body: None,
            max_headers: HYPER_MAX_HEADERS,
            h2_max_concurrent_streams: 128,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Serves `service` (an `axum::Router`, or a router behind a fast path) on `listener` within
/// `limits` until `shutdown` resolves, then lets in-flight requests finish (up to the
/// drain timeout).
pub async fn serve_router_with<S>(
    listener: TcpListener,
    router: S,
    limits: EdgeLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    S: EdgeService,
    S::Future: Send + 'static,
{
    let limits = Arc::new(limits);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8 * 1024))
        .keep_alive(true);
    // hyper's own limit is 100 headers. Setting it, even to 100, makes hyper fill two
    // 100-entry arrays per request instead of leaving them uninitialised on the stack
    // (5 % of a forward-auth request's instructions): set only when it differs.
    if limits.max_headers != HYPER_MAX_HEADERS {
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_head_bytes.try_into().unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    // Connection tasks hold a sender each; when all are gone, draining is over.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            router.clone(),
            builder.clone(),
            limits.clone(),
            stop_rx.clone(),
            done_tx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

/// What the connection layer can serve: any infallible tower service of axum requests,
/// such as an `axum::Router`.
pub trait EdgeService:
    tower::Service<axum::extract::Request, Response = Response, Error = Infallible>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> EdgeService for S where
    S: tower::Service<axum::extract::Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// `Activity::write_blocked_ms` when no write is waiting.
const NOT_BLOCKED: u64 = u64::MAX;

/// What a connection's watchdog knows: when bytes last moved, since when a write has been
/// waiting on a full socket, how many requests started, how many are in flight.
struct Activity {
    born: Instant,
    /// Milliseconds after `born` of the last byte read or written.
    last_io_ms: AtomicU64,
    /// Milliseconds after `born` of the first write the socket refused (`Pending`) since
    /// it last took bytes; `NOT_BLOCKED` when no write is waiting.
    write_blocked_ms: AtomicU64,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.now_ms();
        Duration::from_millis(now.saturating_sub(self.last_io_ms.load(Ordering::Relaxed)))
    }

    /// Notes how a write went: `Pending` starts the blocked clock unless it runs already;
    /// anything else (bytes taken, or an error that ends the connection) stops it.
    fn write_polled(&self, result: &Poll<io::Result<usize>>) {
        if result.is_pending() {
            if self.write_blocked_ms.load(Ordering::Relaxed) == NOT_BLOCKED {
                self.write_blocked_ms
                    .store(self.now_ms(), Ordering::Relaxed);
            }
        } else {
            self.write_blocked_ms.store(NOT_BLOCKED, Ordering::Relaxed);
        }
    }

    /// How long a write has been waiting on a socket that takes nothing (`None`: none is).
    fn write_blocked_for(&self) -> Option<Duration> {
        let since = self.write_blocked_ms.load(Ordering::Relaxed);
        (since != NOT_BLOCKED).then(|| Duration::from_millis(self.now_ms().saturating_sub(since)))
    }
}

/// Counts a request in flight until dropped (when its answer is ready or it is abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

async fn connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    router: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<EdgeLimits>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    _done: tokio::sync::mpsc::Sender<()>,
) where
    S: EdgeService,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity {
        born: Instant::now(),
        last_io_ms: AtomicU64::new(0),
        write_blocked_ms: AtomicU64::new(NOT_BLOCKED),
        requests: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let io = Watched {
        inner: TokioIo::new(stream),
        activity: activity.clone(),
    };
    let service = {
        let activity = activity.clone();
        let limits = limits.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            activity.requests.fetch_add(1, Ordering::Relaxed);
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight(activity.clone());
            let router = router.clone();
            let limits = limits.clone();
            async move {
                let response = answer(router, request, peer, &limits).await;
                drop(guard);
                Ok::<_, Infallible>(response)
            }
        })
    };
    // With upgrades: the gateway passes WebSocket connections through (after a `101`,
    // hyper hands the socket over and this connection is done; the admin router never
    // answers `101`).
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // When set, the connection was asked to finish and is dropped at this instant.
    let mut force_close: Option<tokio::time::Instant> = None;
    // The server's stop signal was seen (sent, or its sender gone with the server).
    let mut stop_seen = false;
    loop {
        let wake = match force_close {
            Some(at) => at,
            None => {
                let wait = next_check(&activity, &limits).min(send_stall_left(&activity, &limits));
                tokio::time::Instant::now() + wait
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !stop_seen => {
                stop_seen = true;
                if force_close.is_none() {
                    conn.as_mut().graceful_shutdown();
                    force_close = Some(tokio::time::Instant::now() + limits.drain_timeout);
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if force_close.is_some() {
                    tracing::debug!(%peer, "dropping a connection that did not finish");
                    return;
                }
                // A graceful close would wait on the very writes that are stuck: drop it.
                if send_stall_left(&activity, &limits).is_zero() {
                    tracing::debug!(%peer, "dropping a connection whose client stopped reading");
                    return;
                }
                if next_check(&activity, &limits).is_zero() {
                    conn.as_mut().graceful_shutdown();
                    force_close = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }
}

/// How long until the connection may have to be closed: the first request's deadline, or
/// the idle deadline. Zero: close it now.
fn next_check(activity: &Activity, limits: &EdgeLimits) -> Duration {
    if activity.requests.load(Ordering::Relaxed) == 0 {
        return limits
            .first_request_timeout
            .saturating_sub(activity.born.elapsed());
    }
    if activity.in_flight.load(Ordering::Relaxed) > 0 {
        return limits.idle_timeout;
    }
    limits.idle_timeout.saturating_sub(activity.idle_for())
}

/// How long until a blocked write has waited `send_timeout`. Without one, `send_timeout`
/// itself: a write that blocks after this check is then caught at its deadline exactly.
fn send_stall_left(activity: &Activity, limits: &EdgeLimits) -> Duration {
    match activity.write_blocked_for() {
        Some(blocked) => limits.send_timeout.saturating_sub(blocked),
        None => limits.send_timeout,
    }
}

/// One request through the router, with the target-length check and the request timeout.
async fn answer<S>(
    router: S,
    mut request: hyper::Request<Incoming>,
    peer: SocketAddr,
    limits: &EdgeLimits,
) -> Response
where
    S: EdgeService,
    S::Future: Send + 'static,
{
    let target_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        return refusal(ApiError::UriTooLong);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let (Some(max), Some(len)) = (limits.max_declared_body, declared) {
        if len > max {
            return refusal(ApiError::PayloadTooLarge);
        }
    }
    if !host_is_sound(&request) {
        return refusal(ApiError::BadRequest(
            "An HTTP/1.1 request needs exactly one valid Host header",
        ));
    }
    request.extensions_mut().insert(ConnectInfo(peer));
    let call = router.oneshot(request.map(axum::body::Body::new));
    let result = match limits.request_timeout {
        Some(limit) => tokio::time::timeout(limit, call).await.ok(),
        None => Some(call.await),
    };
    match result {
        Some(Ok(response)) => response,
        Some(Err(never)) => match never {},
        None => refusal(ApiError::RequestTimeout),
    }
}

/// RFC 9112 §3.2: a server must refuse an HTTP/1.1 request without a Host header, with
/// more than one, or with one that is not a valid authority (HTTP/1.0 may leave it out;
/// HTTP/2 has `:authority` instead).
fn host_is_sound(request: &hyper::Request<Incoming>) -> bool {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return false;
    }
    match first {
        None => request.version() != axum::http::Version::HTTP_11,
        Some(v) => plain_host(v.as_bytes()) || authority_parses(v),
    }
}

/// `name` or `name:port` with a name of letters, digits, `.` and `-`: nearly every Host
/// header, and always a valid authority; checked without the copy a parse makes.
fn plain_host(value: &[u8]) -> bool {
    let (name, port) = match value.iter().position(|&b| b == b':') {
        Some(at) => (&value[..at], Some(&value[at + 1..])),
        None => (value, None),
    };
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit))
}

fn authority_parses(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .filter(|h| !h.is_empty())
        .is_some_and(|h| h.parse::<axum::http::uri::Authority>().is_ok())
}

/// An answer given below the router: the shared JSON error shape, and the connection is
/// not kept (part of the request may be unread).
fn refusal(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The connection's socket, noting when bytes move.
struct Watched {
    inner: TokioIo<TcpStream>,
    activity: Arc<Activity>,
}

impl hyper::rt::Read for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            self.activity.touch();
        }
        result
    }
}

impl hyper::rt::Write for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Not a sign of the socket taking bytes (a TCP flush is a no-op): only writes count.
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }
}

impl Watched {
    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        self.activity.write_polled(result);
        if let Poll::Ready(Ok(n)) = result {
            if *n > 0 {
                self.activity.touch();
            }
        }
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    /// The shortcut never accepts what the parse refuses, and accepts the usual forms.
    #[test]
    fn a_plain_host_is_always_a_valid_authority() {
        let alphabet = [
            "a", "Z", "0", "9", ".", "-", ":", "@", "[", "]", "%", "_", "~", " ", "/", "?", "#",
            "é", "::1",
        ];
        let mut checked = 0;
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    for text in [
                        format!("{a}{b}{c}"),
                        format!("host{a}{b}{c}"),
                        format!("{a}{b}:{c}80"),
                    ] {
                        if plain_host(text.as_bytes()) {
                            let value = HeaderValue::from_str(&text).unwrap();
                            assert!(authority_parses(&value), "{text:?}");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 500, "{checked}");
        for usual in [
            "localhost",
            "127.0.0.1:8080",
            "api.example.com",
            "a-b.example:443",
        ] {
            assert!(plain_host(usual.as_bytes()), "{usual}");
        }
        for odd in [
            "",
            ":80",
            "host:",
            "host:123456",
            "[::1]:80",
            "user@host",
            "a:b:c",
        ] {
            assert!(!plain_host(odd.as_bytes()), "{odd}");
        }
    }
}
