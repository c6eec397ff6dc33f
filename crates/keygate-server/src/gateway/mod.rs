//! The gateway: a data-plane listener in front of an existing API. Every request is
//! verified (permission from method + path, the route table first) and, when allowed,
//! forwarded to the upstream without its credential and with identity headers; test keys
//! go to the sandbox upstream when one is configured. Refusals are the same JSON answers
//! as everywhere else (`keygate_edge::authorize`). The key-info path is answered here.
//!
//! Never logged: the key, the query string, any header. The access log is the shared one
//! (`middleware::request_context`: redacted path, status, time).

mod headers;
mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::{edge, ApiError, AppState};

pub use proxy::Proxy;

/// An upstream API: `http://host[:port][/base-path]`.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// `http://host:port` plus the base path without its trailing slash.
    base: String,
    /// `host[:port]`, sent as `Host`.
    host: HeaderValue,
}

impl Upstream {
    /// Parses an upstream URL. Only plain `http://` (the upstream is on the same host or
    /// network; terminate TLS in front of the gateway); no query, fragment or user info.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| format!("{url:?} is not a URL such as http://127.0.0.1:3000"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{url:?}: https upstreams are not supported; use http:// to an upstream on a private network"
                ))
            }
            _ => return Err(format!("{url:?} must start with http://")),
        }
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
        Ok(Upstream {
            base: format!("http://{}{base_path}", authority.as_str()),
            host,
        })
    }

    /// `http://host:port[/base]`.
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
    /// how long a client may take to send its headers or stall its body.
    pub timeout: Duration,
    /// Where the gateway answers key info itself (`GET`), e.g. `/v1/api-key-info`.
    pub key_info_path: String,
}

impl GatewayConfig {
    /// Checks and builds the configuration.
    pub fn new(
        upstream: &str,
        sandbox_upstream: Option<&str>,
        timeout: Duration,
        key_info_path: &str,
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
        Ok(GatewayConfig {
            upstream,
            sandbox_upstream,
            timeout,
            key_info_path: key_info_path.to_owned(),
        })
    }
}

/// The gateway listener's router: key info at the configured path, every other request
/// verified and forwarded.
pub fn gateway_router(state: AppState, config: GatewayConfig) -> Router {
    let key_info_path = config.key_info_path.clone();
    let proxy = Arc::new(Proxy::new(config));
    let forward = move |State(state): State<AppState>, request: Request| {
        let proxy = proxy.clone();
        async move { proxy.handle(&state, request).await }
    };
    let routes = Router::new()
        .route(&key_info_path, get(crate::admin::verify::key_info))
        .fallback(forward)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed.into_response() });
    edge::middleware::wrap(routes, state)
}

/// Serves the gateway on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish. HTTP/1.1 and HTTP/2 (prior knowledge); a client gets `timeout` to send
/// its request headers.
pub async fn serve_gateway(
    listener: TcpListener,
    state: AppState,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = config.timeout;
    let router = gateway_router(state, config);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                router.clone().oneshot(request.map(axum::body::Body::new))
            },
        );
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "gateway connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
