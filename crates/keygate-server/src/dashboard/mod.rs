//! The web dashboard at `/dashboard`: the "Settings → API Keys" page the reference docs send
//! their users to. Server-rendered HTML (maud), one small embedded script for the copy
//! button; every page works without it.
//!
//! - Sign-in with the admin token (every account) or a self-service key holding
//!   `api_keys.read` or more (its own account only; the engine enforces what it may do).
//! - Server-side sessions in the store ([`session`]): any node continues them and a restart
//!   ends none. CSRF synchronizer token on every form ([`csrf`]). Failed sign-ins count
//!   against the failed-authentication throttle every listener shares, and are audited.
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
pub mod portal;
mod session;
mod sign_in;
mod webhooks;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use keygate_engine::manage::{Actor, Caller, KeyStatus};
use keygate_engine::{now_ms, CachedKey, Error};
use serde::{Deserialize, Serialize};

pub use self::catalog::{CatalogError, PermissionCatalog};
use self::layout::{error_page, Chrome};
pub use self::portal::PortalConfig;
use self::session::{Reveal, SessionView};
use crate::edge::request_ip;
use crate::{ApiError, AppState};

/// The dashboard's state: the API's state (sessions are in the store).
#[derive(Clone)]
pub struct Dash {
    app: AppState,
}

/// Who a signed-in session acts as.
#[derive(Clone, Debug)]
pub enum Principal {
    Admin,
    /// A self-service key, as it is now; the session ends when it changes (see [`Stored`]).
    Key(Arc<CachedKey>),
}

/// Who a session acts as, as the store keeps it: a key session remembers what the key was
/// at sign-in, and lasts only while it still is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "as", rename_all = "lowercase")]
enum Stored {
    Admin,
    Key {
        key_id: String,
        permissions: Vec<String>,
        ip_allowlist: Vec<String>,
        expires_at: Option<i64>,
    },
}

impl Stored {
    fn of(principal: &Principal) -> Stored {
        match principal {
            Principal::Admin => Stored::Admin,
            Principal::Key(k) => Stored::Key {
                key_id: k.id().to_owned(),
                permissions: k.permission_strings().to_vec(),
                ip_allowlist: k.allowlist_strings().to_vec(),
                expires_at: k.expires_at(),
            },
        }
    }
}

/// The dashboard's routes, to be nested at `/dashboard`.
pub fn router(app: AppState) -> Router<AppState> {
    let dash = Dash { app };
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
        .route("/webhooks", get(webhooks::list))
        .route("/webhooks/{id}", get(webhooks::show))
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

/// `response` with one more `Set-Cookie` (`cookie` as `session::cookie_for` makes it).
pub fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// A signed-in request: its session and the engine caller it acts as.
pub struct Ctx {
    pub dash: Dash,
    pub session: SessionView,
    pub principal: Principal,
    pub caller: Caller,
    /// The session's one-time notice, taken when a page (GET) was asked for.
    flash: Option<String>,
}

impl Ctx {
    /// The shell of a page, with the session's one-time notice.
    pub fn chrome(&self) -> Chrome {
        Chrome {
            principal: Some(self.principal.clone()),
            csrf: Some(self.session.csrf().to_owned()),
            flash: self.flash.clone(),
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

    /// A notice for the next page. Losing one is not worth failing the action for.
    pub async fn flash(&self, message: impl Into<String>) {
        let mut session = self.session.clone();
        if let Err(e) = session.set_flash(self.engine(), message.into()).await {
            tracing::warn!(error = %e, "could not keep a dashboard notice");
        }
    }

    /// Keeps a new secret for its one showing on the next page.
    pub async fn put_reveal(&self, reveal: Reveal) -> Result<(), Failure> {
        let mut session = self.session.clone();
        Ok(session.put_reveal(self.engine(), reveal).await?)
    }

    pub async fn take_reveal(&self, key_id: &str) -> Result<Option<Reveal>, Failure> {
        let mut session = self.session.clone();
        Ok(session.take_reveal(self.engine(), key_id).await?)
    }

    /// Ends this session (sign-out, or its key is gone).
    pub async fn end_session(&self) -> Result<(), Failure> {
        Ok(self.engine().end_session(&self.session.secret).await?)
    }
}

/// The signed-in dashboard session a request's cookie names, if any, and who it acts as.
/// A key session whose key changed since sign-in is ended here.
pub async fn signed_in_session(
    parts: &Parts,
    dash: &Dash,
) -> Result<Option<(SessionView, Principal, Caller)>, Failure> {
    let Some(secret) = session::id_from_cookies(&parts.headers) else {
        return Ok(None);
    };
    let engine = &dash.app.engine;
    let Some(record) = engine
        .session(&secret, session::KIND, session::LIFETIME.idle_ms)
        .await?
    else {
        return Ok(None);
    };
    let view = SessionView { secret, record };
    let ip = request_ip(parts, &dash.app);
    let stored: Option<Stored> = view
        .record
        .data
        .get("principal")
        .and_then(|p| serde_json::from_value(p.clone()).ok());
    let (principal, caller) = match stored {
        Some(Stored::Admin) => (Principal::Admin, Caller::admin(ip)),
        Some(stored @ Stored::Key { .. }) => match current_key(dash, &stored, ip).await? {
            Some(key) => {
                let caller = Caller {
                    actor: Actor::Key(key.clone()),
                    client_ip: ip,
                };
                (Principal::Key(key), caller)
            }
            None => {
                engine.end_session(&view.secret).await?;
                return Ok(None);
            }
        },
        None => return Ok(None),
    };
    Ok(Some((view, principal, caller)))
}

impl FromRequestParts<Dash> for Ctx {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, dash: &Dash) -> Result<Self, Failure> {
        let (mut session, principal, caller) = signed_in_session(parts, dash)
            .await?
            .ok_or(Failure::SignIn)?;
        // Only a page shows the notice; a form POST leaves it for the page it leads to.
        let flash = match parts.method {
            axum::http::Method::GET => session.take_flash(&dash.app.engine).await?,
            _ => None,
        };
        Ok(Ctx {
            dash: dash.clone(),
            session,
            principal,
            caller,
            flash,
        })
    }
}

/// A key session lasts only while its key is what it was at sign-in: still active, same
/// permissions, allowlist and expiry, and the request comes from an allowed address.
/// The key as it is now, or `None` when the session must end.
async fn current_key(
    dash: &Dash,
    stored: &Stored,
    ip: Option<std::net::IpAddr>,
) -> Result<Option<Arc<CachedKey>>, Failure> {
    let Stored::Key { key_id, .. } = stored else {
        return Ok(None);
    };
    let record = match dash.app.engine.get_key(&Caller::admin(ip), key_id).await {
        Ok(record) => record,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let active = KeyStatus::of(&record, now_ms()) == KeyStatus::Active;
    let key = Arc::new(CachedKey::described(record));
    let address_ok = match ip {
        Some(ip) => key.ip_allowlist().allows(ip),
        None => key.ip_allowlist().is_empty(),
    };
    let unchanged = Stored::of(&Principal::Key(key.clone())) == *stored;
    Ok((address_ok && unchanged && active).then_some(key))
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
        if !csrf::matches(ctx.session.csrf(), form.get(csrf::FIELD)) {
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
    crate::edge::is_https(parts, &dash.app)
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

/// The dashboard's and the portal's headers: no referrer, no inline script or style, no
/// caching (pages carry CSRF tokens, account data and, once, a secret), and no framing
/// unless `frame_ancestors` names who may (the portal's `portal_frame_ancestors`).
fn set_security_headers(response: &mut Response, frame_ancestors: Option<&str>) {
    const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
        img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'";
    let h = response.headers_mut();
    let policy =
        |ancestors: &str| HeaderValue::from_str(&format!("{POLICY}; frame-ancestors {ancestors}"));
    // A value a header cannot carry (the configuration is checked at start) frames nothing.
    let framed = frame_ancestors.and_then(|a| policy(a).ok());
    let may_be_framed = framed.is_some();
    if let Some(csp) = framed.or_else(|| policy("'none'").ok()) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    if !may_be_framed {
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
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
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    set_security_headers(&mut response, None);
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
