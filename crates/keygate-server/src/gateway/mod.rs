//! The gateway: a data-plane listener in front of an existing API. Every request is
//! verified (permission from method + path, the route table first) and, when allowed,
//! forwarded to the upstream without its credential and with identity headers; test keys
//! go to the sandbox upstream when one is configured. Refusals are the same JSON answers
//! as everywhere else (`keygate_edge::authorize`). The key-info path is answered here.
//! An upstream may be `https://` (`tls.rs`: system roots plus `upstream_ca_file`), and
//! WebSocket upgrades pass through once verified (`proxy.rs`).
//!
//! The connection layer is the admin listener's (`listener.rs`, [`gateway_limits`]): a
//! client gets the same first-request, header-read, idle and send-stall timeouts and the
//! same target, head and `Host` checks (400/414/431 before the router). What streaming
//! needs is kept: no whole-request timeout and no body cap; a body that keeps moving is
//! never cut, one that stalls for the upstream timeout is (`proxy.rs`).
//!
//! Never logged: the key, the query string, any header. The access log is the shared one
//! (`edge::middleware::request_context`: redacted path, status, time).

mod headers;
mod pool;
mod proxy;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::FutureExt;
use tokio::net::TcpListener;

use crate::edge::middleware::in_context;
use crate::{edge, serve_router_with, ApiError, AppState, EdgeLimits};

use proxy::Proxy;

/// An upstream API: `http[s]://host[:port][/base-path]`.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// `http[s]://host[:port]` plus the base path without its trailing slash.
    base: String,
    /// Reached over TLS.
    https: bool,
    /// `host[:port]`, sent as `Host`.
    host: HeaderValue,
    /// `http[s]://host[:port]`: where connections go.
    origin: Uri,
    /// The base path without its trailing slash (empty for none): requests' paths follow it.
    base_path: String,
}

impl Upstream {
    /// Parses an upstream URL: `http://` or `https://` (certificate checked against the
    /// host name), no query, fragment or user info.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| format!("{url:?} is not a URL such as http://127.0.0.1:3000"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{url:?} must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{url:?}: user info in upstream URLs is not supported"
            ));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(format!("{url:?}: an upstream URL has no query or fragment"));
        }
        let base_path = uri.path().trim_end_matches('/');
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("{url:?} has an invalid host"))?;
        let scheme = if https { "https" } else { "http" };
        let origin = format!("{scheme}://{}", authority.as_str())
            .parse()
            .map_err(|_| format!("{url:?} has an invalid host"))?;
        Ok(Upstream {
            base: format!("{scheme}://{}{base_path}", authority.as_str()),
            https,
            host,
            origin,
            base_path: base_path.to_owned(),
        })
    }

    /// `http[s]://host[:port][/base]`.
    pub fn as_str(&self) -> &str {
        &self.base
    }
}

/// How the gateway behaves.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Where requests go.
    pub upstream: Upstream,
    /// Where requests with test keys go; without it they go to `upstream`.
    pub sandbox_upstream: Option<Upstream>,
    /// How long the upstream may stay silent (connect, answer head, each body chunk), and
    /// how long a client may stall its request body (the proxy's stall detection). The
    /// client's connection timeouts are the listener's (`HttpConfig::edge`).
    pub timeout: Duration,
    /// Where the gateway answers key info itself (`GET`), e.g. `/v1/api-key-info`.
    pub key_info_path: String,
    /// A PEM file of certificates trusted for https upstreams besides the system's.
    pub upstream_ca_file: Option<PathBuf>,
    /// Most idle keep-alive connections kept per upstream
    /// ([`GatewayConfig::DEFAULT_UPSTREAM_MAX_IDLE`] unless changed; 0: none, each answer's
    /// connection is closed).
    pub upstream_max_idle: usize,
    /// TLS for https upstreams, built (and the CA file read) when the configuration is.
    upstream_tls: Arc<rustls::ClientConfig>,
}

impl GatewayConfig {
    /// Idle connections kept per upstream: more than a busy gateway holds between two
    /// answers, far fewer than a burst of thousands of requests leaves behind.
    pub const DEFAULT_UPSTREAM_MAX_IDLE: usize = 256;

    /// Checks and builds the configuration; reads `upstream_ca_file` and, when an upstream
    /// is https, the system's root certificates.
    pub fn new(
        upstream: &str,
        sandbox_upstream: Option<&str>,
        timeout: Duration,
        key_info_path: &str,
        upstream_ca_file: Option<&Path>,
    ) -> Result<GatewayConfig, String> {
        let upstream = Upstream::parse(upstream).map_err(|e| format!("upstream: {e}"))?;
        let sandbox_upstream = sandbox_upstream
            .map(Upstream::parse)
            .transpose()
            .map_err(|e| format!("sandbox_upstream: {e}"))?;
        if timeout.is_zero() {
            return Err("upstream_timeout_seconds must be at least 1".into());
        }
        if !key_info_path.starts_with('/')
            || key_info_path.contains(['?', '#', '{', '}', '*'])
            || key_info_path.len() > 200
        {
            return Err(format!(
                "gateway_key_info_path {key_info_path:?} must be a plain path starting with '/'"
            ));
        }
        let https_needed = upstream.https || sandbox_upstream.as_ref().is_some_and(|u| u.https);
        let upstream_tls =
            tls::client_config(upstream_ca_file, https_needed).map_err(|e| e.to_string())?;
        Ok(GatewayConfig {
            upstream,
            sandbox_upstream,
            timeout,
            key_info_path: key_info_path.to_owned(),
            upstream_ca_file: upstream_ca_file.map(Path::to_path_buf),
            upstream_max_idle: GatewayConfig::DEFAULT_UPSTREAM_MAX_IDLE,
            upstream_tls,
        })
    }
}

/// The gateway listener's service: key info at the configured path (through a router, for
/// its extractors and the 405 on other methods); every other request goes straight to the
/// proxy inside the shared request context, without the router's matching, its per-request
/// boxed-service clones or the `from_fn` middleware: the proxy is most of what this
/// listener serves.
#[derive(Clone)]
struct Gateway {
    state: AppState,
    proxy: Arc<Proxy>,
    key_info_path: Arc<str>,
    key_info: Router,
}

impl Gateway {
    fn new(state: AppState, config: GatewayConfig) -> Gateway {
        let key_info_path: Arc<str> = config.key_info_path.as_str().into();
        let routes = Router::new()
            .route(&key_info_path, get(crate::admin::verify::key_info))
            .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed.into_response() });
        Gateway {
            key_info: edge::middleware::wrap(routes, state.clone()),
            proxy: Arc::new(Proxy::new(config)),
            key_info_path,
            state,
        }
    }
}

impl tower::Service<Request> for Gateway {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.uri().path() == &*self.key_info_path {
            return Box::pin(tower::ServiceExt::oneshot(self.key_info.clone(), request));
        }
        let (state, proxy) = (self.state.clone(), self.proxy.clone());
        Box::pin(async move {
            let answer = in_context(&state, request, |request| {
                // As the router's CatchPanicLayer: a bug answers 500, the connection lives.
                AssertUnwindSafe(proxy.handle(&state, request))
                    .catch_unwind()
                    .map(|answer| answer.unwrap_or_else(|_| ApiError::Internal.into_response()))
            })
            .await;
            Ok(answer)
        })
    }
}

/// The gateway's connection limits: the admin listener's (`state.http.edge`: first
/// request, header read, idle, send stall, target and head sizes, bounded drain) less what
/// would cut streaming: no whole-request timeout (an upload or a long answer may take as
/// long as it keeps moving; the proxy cuts a side that stalls for the upstream timeout) and
/// no cap on a declared body (uploads stream through).
pub fn gateway_limits(edge: &EdgeLimits) -> EdgeLimits {
    EdgeLimits {
        request_timeout: None,
        max_declared_body: None,
        ..edge.clone()
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (up to the drain timeout). The connection layer is the admin
/// listener's ([`serve_router_with`]) with [`gateway_limits`].
pub async fn serve_gateway(
    listener: TcpListener,
    state: AppState,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = gateway_limits(&state.http.edge);
    serve_router_with(listener, Gateway::new(state, config), limits, shutdown).await
}
