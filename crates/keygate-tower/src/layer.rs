//! The tower [`Layer`] and its [`Service`]: judge each request on the one authorize path,
//! pass an allowed one on with its [`Identity`], answer a refused one.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, Method, Request, Uri};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use keygate_core::{Permission, PermissionError, Required};
use keygate_edge::authorize::AuthorizeRequest;
use keygate_edge::client_ip::client_ip;
use keygate_edge::{
    authorize, authorize_now, rate_limit_headers, ApiError, Authorization, Credential, Identity,
    Target,
};
use keygate_engine::{Engine, RateLimitStatus};
use pin_project_lite::pin_project;
use tokio::task::JoinHandle;
use tower::{Layer, Service};

use crate::embedded::Embedded;
use crate::remote::{Remote, RemoteClient};

/// keygate's API-key check for a tower service. Cheap to clone: clones share one engine,
/// cache and set of background tasks.
#[derive(Clone)]
pub struct KeygateLayer {
    shared: Arc<Shared>,
    /// Shared, so a request clones a pointer, not a permission.
    needs: Arc<Needs>,
}

/// What a request must be allowed to do.
#[derive(Clone, Debug)]
pub(crate) enum Needs {
    /// What its method and path need, by the route table (as forward-auth decides).
    FromRequest,
    /// One permission, whatever the method and path.
    Permission(Required),
    /// Any valid key.
    AnyKey,
}

impl Needs {
    fn target<'a>(&'a self, method: &'a str, path: &'a str) -> Target<'a> {
        match self {
            Needs::FromRequest => Target::Request { method, path },
            Needs::Permission(required) => Target::Required(Cow::Borrowed(required)),
            Needs::AnyKey => Target::AnyPermission,
        }
    }
}

struct Shared {
    judge: Judge,
    trusted_proxies: Vec<IpNet>,
    background: Mutex<Background>,
}

/// Who judges: the engine in this process, or a keygate server.
enum Judge {
    Embedded(Arc<Engine>),
    Remote(Arc<RemoteClient>),
}

#[derive(Default)]
struct Background {
    flusher: Option<JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
}

impl KeygateLayer {
    /// A layer that opens the keygate database at `database_url` (`sqlite://PATH` or
    /// `postgres://…`) with the server's pepper (hex) and verifies in process. Adjust the
    /// settings on the returned [`Embedded`], then [`Embedded::open`] it.
    pub fn embedded(database_url: &str, pepper_hex: &str) -> Embedded {
        Embedded::new(database_url, pepper_hex)
    }

    /// A layer that asks the keygate server at `server_url` (`/v1/verify`, with its
    /// `verify_token`) and keeps the verdicts the server lets it reuse, fresh by the
    /// server's change stream. Adjust the settings on the returned [`Remote`], then
    /// [`Remote::open`] it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use axum::{routing::get, Router};
    /// use keygate_tower::{Caller, KeygateLayer};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let token = std::env::var("KEYGATE_VERIFY_TOKEN")?;
    /// let keygate = KeygateLayer::remote("http://keygate.internal:8080", &token)
    ///     .open()
    ///     .await?;
    /// let app: Router = Router::new()
    ///     .route(
    ///         "/api/v1/invoices",
    ///         get(|Caller(caller): Caller| async move { format!("invoices of {}", caller.account_id()) }),
    ///     )
    ///     .route(
    ///         "/whoami",
    ///         get(|Caller(caller): Caller| async move { caller.key_id().to_owned() })
    ///             .layer(keygate.any_key()),
    ///     )
    ///     .layer(keygate.clone());
    /// # Ok(())
    /// # }
    /// ```
    pub fn remote(server_url: &str, verify_token: &str) -> Remote {
        Remote::new(server_url, verify_token)
    }

    pub(crate) fn remote_layer(
        client: Arc<RemoteClient>,
        trusted_proxies: Vec<IpNet>,
        follower: JoinHandle<()>,
    ) -> KeygateLayer {
        KeygateLayer::with(
            Judge::Remote(client),
            trusted_proxies,
            Background {
                flusher: None,
                listener: Some(follower),
            },
        )
    }

    pub(crate) fn new(
        engine: Arc<Engine>,
        trusted_proxies: Vec<IpNet>,
        flusher: JoinHandle<()>,
        listener: Option<JoinHandle<()>>,
    ) -> KeygateLayer {
        KeygateLayer::with(
            Judge::Embedded(engine),
            trusted_proxies,
            Background {
                flusher: Some(flusher),
                listener,
            },
        )
    }

    fn with(judge: Judge, trusted_proxies: Vec<IpNet>, background: Background) -> KeygateLayer {
        KeygateLayer {
            shared: Arc::new(Shared {
                judge,
                trusted_proxies,
                background: Mutex::new(background),
            }),
            needs: Arc::new(Needs::FromRequest),
        }
    }

    /// The same layer for routes that need `permission` (such as `invoices.read`) whatever
    /// their method and path: `.route("/reports", get(report).layer(keygate.require("reports.read")?))`.
    pub fn require(&self, permission: &str) -> Result<KeygateLayer, PermissionError> {
        Ok(KeygateLayer {
            shared: self.shared.clone(),
            needs: Arc::new(Needs::Permission(Required::Permission(
                Permission::parse_concrete(permission)?,
            ))),
        })
    }

    /// The same layer for routes that any valid key may call (a `whoami`).
    pub fn any_key(&self) -> KeygateLayer {
        KeygateLayer {
            shared: self.shared.clone(),
            needs: Arc::new(Needs::AnyKey),
        }
    }

    /// The engine of an embedded layer, for what the layer does not cover (metrics, a
    /// manual usage flush); `None` in remote mode.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        match &self.shared.judge {
            Judge::Embedded(engine) => Some(engine),
            Judge::Remote(_) => None,
        }
    }

    /// Judges one request as the layer would: for services that are not tower services.
    pub async fn authorize(&self, request: &Parts) -> Authorization {
        let peer = peer(&request.extensions);
        self.shared
            .authorize(
                &self.needs,
                &request.method,
                &request.uri,
                &request.headers,
                peer,
            )
            .await
    }

    /// Stops the background tasks and (embedded) writes the usage still counted in memory.
    /// Call it once the service has stopped taking requests.
    pub async fn shutdown(&self) {
        let Background { flusher, listener } = std::mem::take(
            &mut *self
                .shared
                .background
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if let Some(listener) = &listener {
            listener.abort();
        }
        let Judge::Embedded(engine) = &self.shared.judge else {
            return;
        };
        engine.stop_background();
        if let Some(flusher) = flusher {
            // Let a flush in progress finish: aborting it could drop its batch.
            let _ = flusher.await;
        }
        if let Err(e) = engine.flush_usage().await {
            tracing::error!(error = %e, "keygate: could not write usage at shutdown");
        }
    }
}

impl Shared {
    async fn authorize(
        &self,
        needs: &Needs,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Authorization {
        let request = self.request(needs, method, uri, headers, peer);
        match &self.judge {
            Judge::Embedded(engine) => authorize(engine, &request).await,
            Judge::Remote(client) => {
                client
                    .authorize(
                        needs,
                        method.as_str(),
                        path_of(uri),
                        headers,
                        request.client_ip,
                    )
                    .await
            }
        }
    }

    /// [`Shared::authorize`] when it needs no waiting (a refusal before verification, a
    /// cache hit of the embedded engine); `None` otherwise.
    fn authorize_now(
        &self,
        needs: &Needs,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Option<Authorization> {
        match &self.judge {
            Judge::Embedded(engine) => {
                authorize_now(engine, &self.request(needs, method, uri, headers, peer))
            }
            Judge::Remote(_) => None,
        }
    }

    /// The request as the authorize path takes it.
    fn request<'a>(
        &self,
        needs: &'a Needs,
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        peer: Option<SocketAddr>,
    ) -> AuthorizeRequest<'a> {
        AuthorizeRequest {
            credential: Credential::Headers(headers),
            target: needs.target(method.as_str(), path_of(uri)),
            client_ip: client_ip(peer, headers, &self.trusted_proxies),
        }
    }
}

/// The path with its query: a key in the URL is refused, as everywhere in keygate.
fn path_of(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |path| path.as_str())
}

/// The socket peer, when the service is served with `into_make_service_with_connect_info`.
fn peer(extensions: &Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}

impl<S> Layer<S> for KeygateLayer {
    type Service = KeygateService<S>;

    fn layer(&self, inner: S) -> KeygateService<S> {
        KeygateService {
            inner,
            shared: self.shared.clone(),
            needs: self.needs.clone(),
        }
    }
}

/// The service [`KeygateLayer`] wraps around yours.
#[derive(Clone)]
pub struct KeygateService<S> {
    inner: S,
    shared: Arc<Shared>,
    /// Shared, so a request clones a pointer, not a permission.
    needs: Arc<Needs>,
}

impl<S, B> Service<Request<B>> for KeygateService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let peer = peer(request.extensions());
        let (method, uri, headers) = (request.method(), request.uri(), request.headers());
        // Judged here when no waiting is needed (a cache hit): no future is built for it
        // and the service that was polled ready takes the request at once.
        if let Some(authorization) =
            self.shared
                .authorize_now(&self.needs, method, uri, headers, peer)
        {
            return ResponseFuture::answer(authorization, &mut self.inner, request);
        }
        // The service that was polled ready is the one that gets the request.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let shared = self.shared.clone();
        let needs = self.needs.clone();
        let waiting = Box::pin(async move {
            let (method, uri, headers) = (request.method(), request.uri(), request.headers());
            let authorization = shared.authorize(&needs, method, uri, headers, peer).await;
            ResponseFuture::answer(authorization, &mut inner, request).await
        });
        ResponseFuture {
            state: State::Waiting { future: waiting },
        }
    }
}

pin_project! {
    /// The answer of [`KeygateService`]: the inner service's (with the rate-limit fields
    /// of the caller's key) or the layer's refusal.
    pub struct ResponseFuture<F, E> {
        #[pin]
        state: State<F, E>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F, E> {
        /// Allowed: the inner service answers.
        Inner {
            #[pin]
            future: F,
            rate_limit: Option<RateLimitStatus>,
        },
        /// Refused; `None` once the answer was taken.
        Refused { answer: Option<Response> },
        /// The verdict needs the store, a shared rate limiter or the keygate server (boxed:
        /// it is the rare path, and its state is large).
        Waiting {
            future: Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>,
        },
    }
}

impl<F, E> ResponseFuture<F, E> {
    /// Passes an allowed request on to `inner` with its [`Identity`], or answers the refusal.
    fn answer<S, B>(
        authorization: Authorization,
        inner: &mut S,
        mut request: Request<B>,
    ) -> ResponseFuture<F, E>
    where
        S: Service<Request<B>, Future = F, Error = E>,
    {
        let state = match authorization {
            Authorization::Allowed(identity) => {
                let rate_limit = identity.rate_limit;
                request.extensions_mut().insert(identity);
                State::Inner {
                    future: inner.call(request),
                    rate_limit,
                }
            }
            // The refusal alone: the caller is not told which key was found.
            Authorization::Refused { error, .. } => State::Refused {
                answer: Some(error.into_response()),
            },
        };
        ResponseFuture { state }
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProjection::Inner { future, rate_limit } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(rate) = rate_limit {
                    rate_limit_headers(response.headers_mut(), rate);
                }
                Poll::Ready(Ok(response))
            }
            // Polled again after it answered (a caller's bug): an error answer, not a panic.
            StateProjection::Refused { answer } => Poll::Ready(Ok(answer
                .take()
                .unwrap_or_else(|| ApiError::Internal.into_response()))),
            StateProjection::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

/// The caller of an allowed request, as an axum extractor:
/// `async fn handler(Caller(identity): Caller)`. A handler outside the layer answers 500
/// (a wiring mistake, not the client's).
#[derive(Clone, Debug)]
pub struct Caller(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Caller, Response> {
        match parts.extensions.get::<Identity>() {
            Some(identity) => Ok(Caller(identity.clone())),
            None => {
                tracing::error!("keygate_tower::Caller used on a route without the keygate layer");
                Err(ApiError::Internal.into_response())
            }
        }
    }
}
