//! The web dashboard at `/dashboard`: the "Settings → API Keys" page the reference docs send
//! their users to. Server-rendered HTML (maud), one small embedded script for the copy
//! button; every page works without it.
//!
//! - Sign-in with the admin token (every account) or a self-service key holding
//!   `api_keys.read` or more (its own account only; the engine enforces what it may do).
//! - Server-side sessions in memory ([`session`]): they do not survive a restart and are not
//!   shared between nodes. CSRF synchronizer token on every form ([`csrf`]). Failed sign-ins
//!   are throttled per client address ([`throttle`]) and audited.
//! - Handlers call the engine exactly as the JSON API does; engine errors are rendered as
//!   HTML pages from the JSON API's own mapping (`error.rs`) by [`html_errors`].
//! - A new secret is shown once: POST → 303 → a page that takes it out of the session.

mod accounts;
mod assets;
mod catalog;
mod chart;
mod csrf;
mod forms;
mod keys;
mod layout;
mod least_privilege;
mod session;
mod sign_in;
mod throttle;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use keygate_engine::manage::{Actor, Caller, KeyStatus};
use keygate_engine::{now_ms, Error};

pub use self::catalog::{CatalogError, PermissionCatalog};
use self::layout::{error_page, Chrome};
use self::session::{Principal, SessionStore, SessionView};
use self::throttle::SignInThrottle;
use crate::edge::request_ip;
use crate::{ApiError, AppState};

/// The dashboard's state: the API's state plus sessions and the sign-in throttle.
#[derive(Clone)]
pub struct Dash {
    app: AppState,
    inner: Arc<Inner>,
}

struct Inner {
    sessions: SessionStore,
    throttle: SignInThrottle,
}

impl Dash {
    fn sessions(&self) -> &SessionStore {
        &self.inner.sessions
    }
}

/// The dashboard's routes, to be nested at `/dashboard`.
pub fn router(app: AppState) -> Router<AppState> {
    let dash = Dash {
        app,
        inner: Arc::new(Inner {
            sessions: SessionStore::default(),
            throttle: SignInThrottle::default(),
        }),
    };
    Router::new()
        .route("/", get(index))
        .route("/sign-in", get(sign_in::show).post(sign_in::submit))
        .route("/sign-out", post(sign_in::sign_out))
        .route("/accounts", get(accounts::list).post(accounts::create))
        .route("/accounts/{id}", get(accounts::show))
        .route("/accounts/{id}/plan", post(accounts::change_plan))
        .route("/accounts/{id}/keys/new", get(keys::new_form))
        .route("/accounts/{id}/keys", post(keys::create))
        .route("/keys/{id}", get(keys::show))
        .route("/keys/{id}/edit", get(keys::edit_form).post(keys::edit))
        .route(
            "/keys/{id}/revoke",
            get(keys::revoke_form).post(keys::revoke),
        )
        .route(
            "/keys/{id}/rotate",
            get(keys::rotate_form).post(keys::rotate),
        )
        .route("/keys/{id}/secret", get(keys::secret))
        .route("/keys/{id}/narrow", post(least_privilege::narrow))
        .route("/assets/dashboard.css", get(assets::css))
        .route("/assets/dashboard.js", get(assets::js))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn(html_errors))
        .layer(from_fn(security_headers))
        .with_state(dash)
}

/// What a dashboard handler answers besides its page.
pub enum Failure {
    /// No signed-in session: go and sign in.
    SignIn,
    /// A page already rendered (e.g. a form with its error).
    Page(Box<Response>),
    /// An API error, rendered as a page from its [`keygate_edge::ErrorAnswer`].
    Api(ApiError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Api(ApiError::Engine(e))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::SignIn => see_other("/dashboard/sign-in"),
            Failure::Page(r) => *r,
            Failure::Api(e) => layout::answer_page(&e.answer()),
        }
    }
}

pub type Page = Result<Response, Failure>;

/// 303 See Other: after a POST, the browser GETs `to`, so reloading repeats nothing.
pub fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A signed-in request: its session and the engine caller it acts as.
pub struct Ctx {
    pub dash: Dash,
    pub session: SessionView,
    pub principal: Principal,
    pub caller: Caller,
}

impl Ctx {
    /// The shell of a page, taking the session's one-time notice.
    pub fn chrome(&self) -> Chrome {
        Chrome {
            principal: Some(self.principal.clone()),
            csrf: Some(self.session.csrf.clone()),
            flash: self.dash.sessions().take_flash(&self.session.id),
        }
    }

    pub fn engine(&self) -> &keygate_engine::Engine {
        &self.dash.app.engine
    }

    /// The account a self-service session is confined to; `None` for the operator.
    pub fn own_account(&self) -> Option<&str> {
        match &self.principal {
            Principal::Admin => None,
            Principal::Key(k) => Some(k.account_id()),
        }
    }

    /// The key a self-service session signed in with.
    pub fn session_key_id(&self) -> Option<&str> {
        match &self.principal {
            Principal::Admin => None,
            Principal::Key(k) => Some(k.id()),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.principal, Principal::Admin)
    }

    pub fn flash(&self, message: impl Into<String>) {
        self.dash.sessions().set_flash(&self.session.id, message);
    }
}

impl FromRequestParts<Dash> for Ctx {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, dash: &Dash) -> Result<Self, Failure> {
        let id = session::id_from_cookies(&parts.headers).ok_or(Failure::SignIn)?;
        let session = dash.sessions().get(&id).ok_or(Failure::SignIn)?;
        let principal = session.principal.clone().ok_or(Failure::SignIn)?;
        let ip = request_ip(parts, &dash.app);
        let caller = match &principal {
            Principal::Admin => Caller::admin(ip),
            Principal::Key(key) => {
                let caller = Caller {
                    actor: Actor::Key(key.clone()),
                    client_ip: ip,
                };
                if !still_valid(dash, &caller, key).await? {
                    dash.sessions().remove(&id);
                    return Err(Failure::SignIn);
                }
                caller
            }
        };
        Ok(Ctx {
            dash: dash.clone(),
            session,
            principal,
            caller,
        })
    }
}

/// A key session lasts only while its key is what it was at sign-in: still active, same
/// permissions, allowlist and expiry, and the request comes from an allowed address. The
/// session holds the key as it verified then, so any change ends it.
async fn still_valid(
    dash: &Dash,
    caller: &Caller,
    key: &keygate_engine::CachedKey,
) -> Result<bool, Failure> {
    let address_ok = match caller.client_ip {
        Some(ip) => key.ip_allowlist.allows(ip),
        None => key.ip_allowlist.is_empty(),
    };
    if !address_ok {
        return Ok(false);
    }
    match dash.app.engine.get_key(caller, key.id()).await {
        Ok(now) => Ok(KeyStatus::of(&now, now_ms()) == KeyStatus::Active
            && now.permissions == key.record.permissions
            && now.ip_allowlist == key.record.ip_allowlist
            && now.expires_at == key.record.expires_at),
        Err(Error::NotFound(_) | Error::Refused(_) | Error::Unauthenticated(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A form POST from a signed-in session whose CSRF token matches.
pub struct Posted {
    pub ctx: Ctx,
    pub form: forms::Form,
}

impl FromRequest<Dash> for Posted {
    type Rejection = Failure;

    async fn from_request(req: Request, dash: &Dash) -> Result<Self, Failure> {
        let (mut parts, body) = req.into_parts();
        let ctx = Ctx::from_request_parts(&mut parts, dash).await?;
        let form = read_form(parts, body, dash).await?;
        if !csrf::matches(&ctx.session.csrf, form.get(csrf::FIELD)) {
            return Err(Failure::Page(Box::new(csrf_refused())));
        }
        Ok(Posted { ctx, form })
    }
}

pub fn csrf_refused() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "This form is out of date or did not come from this dashboard (CSRF check failed). \
         Go back, reload the page and try again.",
    )
}

/// The body of a form POST (`application/x-www-form-urlencoded`, within the body limit).
async fn read_form(
    parts: Parts,
    body: axum::body::Body,
    dash: &Dash,
) -> Result<forms::Form, Failure> {
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !is_form {
        return Err(Failure::Page(Box::new(error_page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Send this form from the dashboard page.",
        ))));
    }
    let req = Request::from_parts(parts, body);
    let bytes = Bytes::from_request(req, dash)
        .await
        .map_err(|_| Failure::Api(ApiError::PayloadTooLarge))?;
    Ok(forms::Form::parse(&bytes))
}

/// Was this request made over TLS (directly, or through a trusted proxy that says so)?
pub fn is_https(parts: &Parts, dash: &Dash) -> bool {
    if parts.uri.scheme_str() == Some("https") {
        return true;
    }
    let peer = parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    keygate_edge::client_ip::forwarded_https(peer, &parts.headers, &dash.app.http.trusted_proxies)
}

async fn index(ctx: Ctx) -> Response {
    match ctx.own_account() {
        None => see_other("/dashboard/accounts"),
        Some(account) => see_other(&format!("/dashboard/accounts/{account}")),
    }
}

async fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "There is no such page in the dashboard.",
    )
}

async fn method_not_allowed() -> Response {
    error_page(
        StatusCode::METHOD_NOT_ALLOWED,
        "This page does not accept that kind of request.",
    )
}

/// Every dashboard answer: no framing, no referrer, no inline script, no caching (pages
/// carry CSRF tokens, account data and, once, a secret).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Turns error answers that are not HTML (extractor rejections, fallbacks) into HTML pages
/// from the answer's own [`keygate_edge::ErrorAnswer`], never by reading the body.
async fn html_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if status.as_u16() < 400 || is_html {
        return response;
    }
    match response.extensions().get::<keygate_edge::ErrorAnswer>() {
        Some(answer) => layout::answer_page(answer),
        None => error_page(status, status.canonical_reason().unwrap_or("Error")),
    }
}
