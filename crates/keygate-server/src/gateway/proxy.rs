//! Forwarding: verify the key, pick the upstream by the key's environment, rewrite the
//! headers, and stream the request to a pooled upstream connection and the answer back.
//! Neither body is ever held whole; a stall of either side longer than the timeout ends
//! the exchange instead of holding the gateway.
//!
//! A WebSocket upgrade is verified like any request, then forwarded with its upgrade
//! headers; when the upstream agrees (`101`), both connections are handed over by hyper
//! and the gateway copies bytes both ways until either side closes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use keygate_core::{Environment, Outcome};
use keygate_edge::authorize::{authorize, AuthorizeRequest, Credential, Target};
use keygate_edge::client_ip::client_ip;
use keygate_edge::credentials::key_from_headers;
use keygate_edge::Authorization;
use tokio::time::{Instant, Sleep};

use super::headers::{
    forwardable_path, is_websocket_upgrade, keep_websocket_upgrade, prepare_request,
    strip_hop_by_hop, Hop,
};
use super::pool::{Lease, Pool};
use super::{GatewayConfig, Upstream};
use crate::{ApiError, AppState};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The forwarding half of the gateway: configuration and the upstreams' connections.
pub struct Proxy {
    config: GatewayConfig,
    upstream: Pool,
    sandbox: Option<Pool>,
    /// The moment `Progress` timestamps count from.
    epoch: Instant,
}

impl Proxy {
    pub fn new(config: GatewayConfig) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        // The TLS layer below decides the scheme; the TCP connector must let https through.
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*config.upstream_tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let pool = |upstream: &Upstream| {
            Pool::new(
                upstream.clone(),
                connector.clone(),
                Duration::from_secs(60),
                config.upstream_max_idle,
            )
        };
        Proxy {
            upstream: pool(&config.upstream),
            sandbox: config.sandbox_upstream.as_ref().map(pool),
            config,
            epoch: Instant::now(),
        }
    }

    /// Answers one request: the upstream's answer, or the gateway's own JSON error.
    pub async fn handle(&self, state: &AppState, request: Request) -> Response {
        match self.forward(state, request).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    async fn forward(&self, state: &AppState, request: Request) -> Result<Response, ApiError> {
        let (mut parts, body) = request.into_parts();
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| keygate_core::ip::canonical_ip(c.0.ip()));
        let trusted = &state.http.trusted_proxies;
        let client = client_ip(
            peer.map(|ip| SocketAddr::new(ip, 0)),
            &parts.headers,
            trusted,
        );
        let Some(path) = forwardable_path(parts.uri.path()) else {
            // A request without a usable key hears about its key first, as anywhere else.
            key_from_headers(&parts.headers)?.ok_or(Outcome::MissingCredentials)?;
            return Err(keygate_engine::Error::validation(
                "path",
                "the request path has encoded separators or dot-segments that cannot be forwarded unambiguously",
            )
            .into());
        };
        let authorization = authorize(
            &state.engine,
            &AuthorizeRequest {
                credential: Credential::Headers(&parts.headers),
                target: Target::Request {
                    method: parts.method.as_str(),
                    path: &path,
                },
                client_ip: client,
            },
        )
        .await;
        let identity = match authorization {
            Authorization::Allowed(identity) => identity,
            Authorization::Refused { error, .. } => return Err(error),
        };
        let pool = match (identity.environment(), &self.sandbox) {
            (Environment::Test, Some(sandbox)) => sandbox,
            _ => &self.upstream,
        };
        let upstream = pool.upstream();

        let uri = upstream_uri(upstream, &path, parts.uri.query())?;
        let host = parts
            .headers
            .get(axum::http::header::HOST)
            .cloned()
            .or_else(|| {
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
        let websocket = parts.version == Version::HTTP_11 && is_websocket_upgrade(&parts.headers);
        // Room for what is added (forwarding and identity headers) at once, instead of the
        // map growing and rehashing two or three times on the way.
        parts.headers.reserve(12);
        prepare_request(
            &mut parts.headers,
            &Hop {
                peer,
                client,
                peer_trusted: peer.is_some_and(|ip| trusted.iter().any(|n| n.contains(&ip))),
                version: parts.version,
                host,
                upstream_host: &upstream.host,
            },
        );
        keygate_edge::identity_headers(&mut parts.headers, &identity.key);
        // The client's side of a WebSocket upgrade (HTTP/1.1 only: hyper hands it over
        // once the `101` is sent).
        let client_upgrade = match parts.extensions.remove::<OnUpgrade>() {
            Some(upgrade) if websocket => {
                keep_websocket_upgrade(&mut parts.headers);
                Some(upgrade)
            }
            _ => None,
        };
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        parts.extensions = Default::default();

        let progress = Arc::new(Progress::new(self.epoch, body.is_end_stream()));
        let body = ClientBody {
            inner: body,
            progress: progress.clone(),
            epoch: self.epoch,
        };
        let (mut response, lease) = self
            .send(pool, hyper::Request::from_parts(parts, body), &progress)
            .await?;
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_agreed = switched && is_websocket_upgrade(response.headers());
        strip_hop_by_hop(response.headers_mut());
        if let Some(rate) = &identity.rate_limit {
            keygate_edge::rate_limit_headers(response.headers_mut(), rate);
        }
        if switched {
            let (Some(client_upgrade), true) = (client_upgrade, upstream_agreed) else {
                tracing::warn!(
                    "upstream switched protocols without a WebSocket upgrade asked and agreed"
                );
                return Err(ApiError::UpstreamUnavailable);
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            keep_websocket_upgrade(response.headers_mut());
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
            return Ok(response.map(|_| Body::empty()));
        }
        let timeout = self.config.timeout;
        Ok(response
            .map(|incoming| Body::new(UpstreamBody::new(incoming, timeout, lease, progress))))
    }

    /// Sends the request; waits for the answer's head as long as something moves: the
    /// timeout counts from the last chunk of request body the upstream took.
    async fn send(
        &self,
        pool: &Pool,
        request: hyper::Request<ClientBody>,
        progress: &Progress,
    ) -> Result<(hyper::Response<hyper::body::Incoming>, Lease), ApiError> {
        let timeout = self.config.timeout;
        let answer = pool.send(request);
        tokio::pin!(answer);
        loop {
            let deadline = progress.last(self.epoch) + timeout;
            tokio::select! {
                result = &mut answer => {
                    return result.map_err(|e| {
                        if progress.client_broke.load(Ordering::Relaxed) {
                            tracing::debug!("client request body broke off");
                            ApiError::RequestTimeout
                        } else {
                            tracing::warn!(error = %error_chain(&*e), "upstream unavailable");
                            ApiError::UpstreamUnavailable
                        }
                    });
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if progress.last(self.epoch) + timeout > Instant::now() {
                        continue;
                    }
                    return Err(if progress.waiting_for_client.load(Ordering::Relaxed) {
                        tracing::info!("client stopped sending its request body");
                        ApiError::RequestTimeout
                    } else {
                        tracing::warn!(timeout_ms = timeout.as_millis() as u64, "upstream timed out");
                        ApiError::UpstreamTimeout
                    });
                }
            }
        }
    }
}

/// Copies bytes both ways between an upgraded client connection and the upstream's, once
/// hyper has handed both over, until either side closes.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %error_chain(&e), "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((to_upstream, to_client)) => {
            tracing::debug!(to_upstream, to_client, "WebSocket tunnel closed");
        }
        Err(e) => tracing::debug!(error = %e, "WebSocket tunnel broke off"),
    }
}

/// The error and its sources, for the log (never a header, a key or a query: hyper's
/// errors name the failure, not the request).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The request target sent upstream, in origin form (`/base/path?query`): the connection
/// already goes to the upstream's host.
fn upstream_uri(upstream: &Upstream, path: &str, query: Option<&str>) -> Result<Uri, ApiError> {
    let query_len = query.map_or(0, |q| q.len() + 1);
    let mut target = String::with_capacity(upstream.base_path.len() + path.len() + query_len);
    target.push_str(&upstream.base_path);
    target.push_str(path);
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    target.parse::<Uri>().map_err(|_| {
        keygate_engine::Error::validation("path", "the request target cannot be forwarded").into()
    })
}

/// When the request body last moved, and whether the gateway is waiting on the client.
struct Progress {
    /// Milliseconds after the proxy's epoch.
    last_ms: AtomicU64,
    waiting_for_client: AtomicBool,
    client_broke: AtomicBool,
    /// The whole request body went upstream (a connection is reused only then: one still
    /// carrying a slow upload would hold the next request back).
    request_sent: AtomicBool,
}

impl Progress {
    fn new(epoch: Instant, request_sent: bool) -> Progress {
        let p = Progress {
            last_ms: AtomicU64::new(0),
            waiting_for_client: AtomicBool::new(false),
            client_broke: AtomicBool::new(false),
            request_sent: AtomicBool::new(request_sent),
        };
        p.touch(epoch);
        p
    }

    fn touch(&self, epoch: Instant) {
        let ms = Instant::now().saturating_duration_since(epoch).as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self, epoch: Instant) -> Instant {
        epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The client's request body on its way upstream: records progress, passes frames through.
pub struct ClientBody {
    inner: Body,
    progress: Arc<Progress>,
    epoch: Instant,
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let progress = &this.progress;
        match &polled {
            Poll::Pending => progress.waiting_for_client.store(true, Ordering::Relaxed),
            Poll::Ready(result) => {
                progress.waiting_for_client.store(false, Ordering::Relaxed);
                match result {
                    Some(Err(_)) => progress.client_broke.store(true, Ordering::Relaxed),
                    Some(Ok(_)) if !this.inner.is_end_stream() => {}
                    _ => progress.request_sent.store(true, Ordering::Relaxed),
                }
                progress.touch(this.epoch);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's answer body on its way to the client: ends with an error (the client's
/// connection is closed) when the upstream sends nothing for the timeout. Read to its end,
/// its connection goes back to the pool.
pub struct UpstreamBody {
    inner: hyper::body::Incoming,
    /// The connection the answer comes on, until the answer has ended.
    lease: Option<Lease>,
    /// Whether the request body has gone up in full (else the connection is not reused).
    progress: Arc<Progress>,
    timeout: Duration,
    /// Allocated at the first wait, then re-armed at each wait after a frame.
    idle: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl UpstreamBody {
    fn new(
        inner: hyper::body::Incoming,
        timeout: Duration,
        lease: Lease,
        progress: Arc<Progress>,
    ) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner,
            lease: Some(lease),
            progress,
            timeout,
            idle: None,
            armed: false,
        };
        body.give_back_at_end();
        body
    }

    /// Puts the connection back once the answer is complete (an empty one at once).
    fn give_back_at_end(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }

    /// The answer has ended: the connection goes back to the pool if the request went up in
    /// full too, else it is closed (dropped).
    fn give_back(&mut self) {
        if let Some(lease) = self.lease.take() {
            if self.progress.request_sent.load(Ordering::Relaxed) {
                lease.give_back();
            }
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                match &frame {
                    None => this.give_back(),
                    Some(Ok(_)) => this.give_back_at_end(),
                    // The connection is broken: dropped with the body, never reused.
                    Some(Err(_)) => this.lease = None,
                }
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    idle.as_mut().reset(deadline);
                    this.armed = true;
                }
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::warn!(
                            timeout_ms = this.timeout.as_millis() as u64,
                            "upstream stalled while sending its answer; closing"
                        );
                        this.armed = false;
                        Poll::Ready(Some(Err("upstream answer stalled".into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
