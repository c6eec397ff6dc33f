//! The customer portal at `/portal`: one account's API Keys page, reached through a
//! single-use link that `POST /v1/portal-sessions` made. It shares the dashboard's store
//! sessions, forms, CSRF, page pieces and chart, but not its routes or cookie: a portal
//! session (cookie `keygate_portal`, kind `portal`) opens no dashboard page, and the
//! engine confines it to its account, its link's actions and permissions
//! ([`PortalGrant`]). Every action is audited as `portal:<session id>`.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use keygate_engine::manage::portal::{PortalAction, PortalGrant, SESSION_KIND, SESSION_LIFETIME};
use keygate_engine::manage::{Caller, Granularity, KeyStatus, NewKey};
use keygate_engine::{now_ms, Error};
use keygate_store::KeyRecord;
use maud::{html, Markup, DOCTYPE};

use super::chart::usage_chart;
use super::forms::{self, Form};
use super::keys::{inline_error, reveal_body, secret_response, GRACE_CHOICES};
use super::layout::{self, csrf_field, form_error, respond};
use super::session::{self, Reveal, SessionView};
use super::{
    csrf, is_https, read_form, see_other, set_security_headers, with_cookie, Dash, Failure,
};
use crate::edge::request_ip;
use crate::{ApiError, AppState};

/// The portal's session cookie.
pub const COOKIE: &str = "keygate_portal";

/// The portal session cookie: SameSite=Lax (the link that opens it comes from the
/// product's site), scoped to `/portal`.
fn cookie(secret: &str, secure: bool) -> String {
    session::cookie_for(COOKIE, secret, "/portal", "Lax", secure)
}

fn clear_cookie(secure: bool) -> String {
    session::clear_cookie_for(COOKIE, "/portal", "Lax", secure)
}
const DAY_MS: i64 = 86_400_000;

/// The operator's portal settings (`portal_*` and `public_url` in `keygate.toml`).
#[derive(Clone, Debug, Default)]
pub struct PortalConfig {
    /// The origin portal links start with; the request's own scheme and host when unset.
    pub public_url: Option<String>,
    /// The product the page belongs to ("Back to <product>"); unset: "Back".
    pub product_name: Option<String>,
    /// The accent colour, `#rgb` or `#rrggbb`.
    pub accent_color: Option<String>,
    /// A link to the operator's support page.
    pub support_url: Option<String>,
    /// CSP `frame-ancestors` sources that may embed the page; none (no framing) when unset.
    pub frame_ancestors: Option<String>,
}

impl PortalConfig {
    fn product(&self) -> Option<&str> {
        self.product_name
            .as_deref()
            .filter(|p| !p.trim().is_empty())
    }
}

/// Is `colour` `#rgb` or `#rrggbb`? (It goes into a stylesheet.)
pub fn valid_accent_color(colour: &str) -> bool {
    let hex = colour.strip_prefix('#').unwrap_or("");
    matches!(hex.len(), 3 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The portal's routes, to be nested at `/portal`.
pub fn router(app: AppState) -> Router<AppState> {
    let dash = Dash { app };
    Router::new()
        .route("/", get(index))
        .route("/open", get(open))
        .route("/sign-out", post(sign_out))
        .route("/signed-out", get(signed_out))
        .route("/keys", post(create))
        .route("/keys/{id}", get(show))
        .route("/keys/{id}/secret", get(secret))
        .route("/keys/{id}/revoke", get(revoke_form).post(revoke))
        .route("/keys/{id}/rotate", post(rotate))
        .route("/assets/dashboard.css", get(super::assets::css))
        .route("/assets/dashboard.js", get(super::assets::js))
        .route("/assets/brand.css", get(brand_css))
        .fallback(not_found)
        .layer(from_fn_with_state(dash.clone(), portal_headers))
        .with_state(dash)
}

async fn portal_headers(State(dash): State<Dash>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    set_security_headers(
        &mut response,
        dash.app.http.portal.frame_ancestors.as_deref(),
    );
    response
}

fn config(dash: &Dash) -> &PortalConfig {
    &dash.app.http.portal
}

// ---------------------------------------------------------------------------------------
// The page shell

/// A portal page: the product's name, "Back to <product>", "Sign out" (for a session: its
/// grant and CSRF token), the notice, the support link.
fn page(
    dash: &Dash,
    session: Option<(&PortalGrant, &str)>,
    flash: Option<&str>,
    title: &str,
    content: Markup,
) -> Markup {
    let config = config(dash);
    let product = config.product();
    html! {
        (DOCTYPE)
        html lang="en" {
            (layout::head(title, product.unwrap_or("API keys"), "/portal", true))
            body.portal {
                a.skip href="#main" { "Skip to content" }
                header.topbar {
                    div.topbar-inner {
                        span.brand {
                            span.logo aria-hidden="true" {}
                            @if let Some(p) = product { (p) " · " }
                            "API keys"
                        }
                        @if let Some((grant, csrf)) = session {
                            div.who {
                                @if let Some(url) = grant.return_url.as_deref() {
                                    a #back href=(url) {
                                        @match product { Some(p) => { "Back to " (p) }, None => { "Back" } }
                                    }
                                }
                                form.inline method="post" action="/portal/sign-out" {
                                    (csrf_field(csrf))
                                    button.link #sign-out type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    @if let Some(flash) = flash {
                        div.notice role="status" { (flash) }
                    }
                    (content)
                }
                footer.foot {
                    "API keys are shown once and stored only as digests."
                    @if let Some(support) = &config.support_url {
                        " " a href=(support) { "Get help" }
                    }
                }
            }
        }
    }
}

/// A page that only says what went wrong (no session needed).
fn message_page(dash: &Dash, status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        section.card.error-card {
            h1 { (title) }
            p { (message) }
            p.muted { "HTTP " (status.as_u16()) }
        }
    };
    respond(status, page(dash, None, None, title, body))
}

fn expired_link(dash: &Dash) -> Response {
    message_page(
        dash,
        StatusCode::GONE,
        "This link has expired",
        &format!(
            "Links to this page work once and for a few minutes. Go back to {} and open \
             the API keys page again.",
            config(dash).product().unwrap_or("where you came from")
        ),
    )
}

fn session_ended(dash: &Dash) -> Response {
    message_page(
        dash,
        StatusCode::UNAUTHORIZED,
        "Your session has ended",
        &format!(
            "Go back to {} and open the API keys page again.",
            config(dash).product().unwrap_or("where you came from")
        ),
    )
}

async fn not_found(State(dash): State<Dash>) -> Response {
    message_page(
        &dash,
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page.",
    )
}

/// `GET /portal/assets/brand.css`: the operator's accent colour.
async fn brand_css(State(dash): State<Dash>) -> Response {
    let css = match config(&dash).accent_color.as_deref() {
        Some(c) if valid_accent_color(c) => format!(":root {{ --accent: {c}; }}\n"),
        _ => String::new(),
    };
    let mut r = css.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    r
}

// ---------------------------------------------------------------------------------------
// The session

/// A request of a live portal session: what it may do and the caller it acts as.
pub struct PortalCtx {
    dash: Dash,
    session: SessionView,
    grant: Arc<PortalGrant>,
    caller: Caller,
    flash: Option<String>,
}

/// What a portal handler answers besides its page.
pub enum PortalFailure {
    Ended(Dash),
    Other(Failure),
}

impl From<Failure> for PortalFailure {
    fn from(e: Failure) -> Self {
        PortalFailure::Other(e)
    }
}

impl From<Error> for PortalFailure {
    fn from(e: Error) -> Self {
        PortalFailure::Other(e.into())
    }
}

impl IntoResponse for PortalFailure {
    fn into_response(self) -> Response {
        match self {
            PortalFailure::Ended(dash) => session_ended(&dash),
            PortalFailure::Other(Failure::SignIn) => StatusCode::UNAUTHORIZED.into_response(),
            PortalFailure::Other(f) => f.into_response(),
        }
    }
}

type PortalPage = Result<Response, PortalFailure>;

impl FromRequestParts<Dash> for PortalCtx {
    type Rejection = PortalFailure;

    async fn from_request_parts(parts: &mut Parts, dash: &Dash) -> Result<Self, PortalFailure> {
        let ended = || PortalFailure::Ended(dash.clone());
        let secret = session::from_cookies(&parts.headers, COOKIE).ok_or_else(ended)?;
        let engine = &dash.app.engine;
        let record = engine
            .session(&secret, SESSION_KIND, SESSION_LIFETIME.idle_ms)
            .await?
            .ok_or_else(ended)?;
        let grant = Arc::new(PortalGrant::of(&record)?);
        let mut session = SessionView { secret, record };
        let flash = match parts.method {
            axum::http::Method::GET => session.take_flash(engine).await?,
            _ => None,
        };
        Ok(PortalCtx {
            caller: grant.caller(request_ip(parts, &dash.app)),
            dash: dash.clone(),
            session,
            grant,
            flash,
        })
    }
}

impl PortalCtx {
    fn engine(&self) -> &keygate_engine::Engine {
        &self.dash.app.engine
    }

    fn page(&self, title: &str, content: Markup) -> Markup {
        page(
            &self.dash,
            Some((&self.grant, self.session.csrf())),
            self.flash.as_deref(),
            title,
            content,
        )
    }

    fn require(&self, action: PortalAction) -> Result<(), PortalFailure> {
        if self.grant.may(action) {
            Ok(())
        } else {
            Err(Failure::Api(ApiError::Engine(Error::Forbidden(format!(
                "this page does not allow {} keys",
                match action {
                    PortalAction::Create => "creating",
                    PortalAction::Rotate => "rotating",
                    PortalAction::Revoke => "revoking",
                }
            ))))
            .into())
        }
    }

    async fn flash(&self, message: String) {
        let mut session = self.session.clone();
        if let Err(e) = session.set_flash(self.engine(), message).await {
            tracing::warn!(error = %e, "could not keep a portal notice");
        }
    }

    /// A key of this account (another account's answers exactly like a missing one).
    async fn key(&self, id: &str) -> Result<KeyRecord, PortalFailure> {
        Ok(self.engine().get_key(&self.caller, id).await?)
    }
}

/// A form POST of a portal session whose CSRF token matches.
pub struct PortalPosted {
    ctx: PortalCtx,
    form: Form,
}

impl FromRequest<Dash> for PortalPosted {
    type Rejection = PortalFailure;

    async fn from_request(req: Request, dash: &Dash) -> Result<Self, PortalFailure> {
        let (mut parts, body) = req.into_parts();
        let ctx = PortalCtx::from_request_parts(&mut parts, dash).await?;
        let form = read_form(parts, body, dash).await?;
        if !csrf::matches(ctx.session.csrf(), form.get(csrf::FIELD)) {
            return Err(Failure::Page(Box::new(super::csrf_refused())).into());
        }
        Ok(PortalPosted { ctx, form })
    }
}

// ---------------------------------------------------------------------------------------
// Opening a link

/// `GET /portal/open?code=…`: the link's one use. The code becomes a session cookie and
/// the browser goes on (303) to the page without the code; a used, expired or forged code
/// finds the "link has expired" page.
async fn open(State(dash): State<Dash>, parts: Parts) -> Response {
    let code = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("code="))
        .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(code) = code else {
        return expired_link(&dash);
    };
    let ip = request_ip(&parts, &dash.app);
    match dash.app.engine.open_portal_link(code, ip).await {
        Ok(Some((secret, _grant))) => with_cookie(
            see_other("/portal"),
            &cookie(&secret, is_https(&parts, &dash)),
        ),
        Ok(None) => expired_link(&dash),
        Err(e) => Failure::from(e).into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// Signing out

/// `POST /portal/sign-out`: ends the session, so that nothing stays open on a shared
/// computer, and clears its cookie. The browser goes back to the product when the link
/// named a return URL, else to a page that says the session ended.
async fn sign_out(State(dash): State<Dash>, request: Request) -> PortalPage {
    let (parts, body) = request.into_parts();
    let https = is_https(&parts, &dash);
    let posted = PortalPosted::from_request(Request::from_parts(parts, body), &dash).await?;
    let ctx = posted.ctx;
    ctx.engine()
        .close_portal_session(&ctx.session.secret, &ctx.grant, ctx.caller.client_ip)
        .await?;
    let to = ctx
        .grant
        .return_url
        .as_deref()
        .unwrap_or("/portal/signed-out");
    Ok(with_cookie(see_other(to), &clear_cookie(https)))
}

/// `GET /portal/signed-out`.
async fn signed_out(State(dash): State<Dash>) -> Response {
    message_page(
        &dash,
        StatusCode::OK,
        "You have signed out",
        &format!(
            "Go back to {} to open the API keys page again.",
            config(&dash).product().unwrap_or("where you came from")
        ),
    )
}

// ---------------------------------------------------------------------------------------
// The keys page

const EXPIRY_CHOICES: &[(&str, &str)] = &[
    ("never", "Never"),
    ("30", "In 30 days"),
    ("90", "In 90 days"),
];

/// `GET /portal`: the account's keys and, if allowed, the form that makes one.
async fn index(ctx: PortalCtx) -> PortalPage {
    render_index(&ctx, None, StatusCode::OK, None).await
}

async fn render_index(
    ctx: &PortalCtx,
    error: Option<&str>,
    status: StatusCode,
    form: Option<&Form>,
) -> PortalPage {
    let keys = ctx.engine().list_keys(&ctx.caller, None, None).await?;
    let now = now_ms();
    let value = |name: &str| form.and_then(|f| f.get(name)).unwrap_or("").to_owned();
    let chosen: Vec<String> = form
        .map(|f| f.all("permission").into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    let body = html! {
        div.page-head { h1 { "API keys" } }
        section.card {
            @if keys.is_empty() {
                p.empty { "No API keys yet." }
            } @else {
                div.table-wrap {
                    table #keys {
                        thead { tr {
                            th { "Key" } th { "Name" } th { "Environment" } th { "Scopes" }
                            th { "Created" } th { "Last used" } th { "Expires" } th { "Status" }
                        } }
                        tbody {
                            @for k in &keys {
                                tr {
                                    td { a href={"/portal/keys/" (k.id)} { code { (k.display_prefix) } } }
                                    td { (k.name) }
                                    td { (k.environment.as_str()) }
                                    td { (layout::permissions(&k.permissions)) }
                                    td { (layout::time(k.created_at)) }
                                    td { (layout::opt_time(k.last_used_at, "never")) }
                                    td { (layout::opt_time(k.expires_at, "never")) }
                                    td { (layout::status_badge(KeyStatus::of(k, now))) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if ctx.grant.may(PortalAction::Create) {
            section.card.narrow {
                h2 { "Create an API key" }
                (form_error(error))
                form method="post" action="/portal/keys" {
                    (csrf_field(ctx.session.csrf()))
                    div.field {
                        label for="name" { "Name" }
                        input #name type="text" name="name" required maxlength="200" value=(value("name"));
                    }
                    fieldset.group {
                        legend { "Environment" }
                        div.choices.inline-choices {
                            @for (env, label) in [("live", "Live"), ("test", "Test")] {
                                label.choice {
                                    input type="radio" name="environment" value=(env)
                                        checked[value("environment") == env || (value("environment").is_empty() && env == "live")];
                                    " " (label)
                                }
                            }
                        }
                    }
                    fieldset.group {
                        legend { "Scopes" }
                        div.choices {
                            @for scope in &ctx.grant.allowed_scopes {
                                label.choice {
                                    input type="checkbox" name="permission" value=(scope)
                                        checked[chosen.contains(scope)];
                                    " " code { (scope) }
                                }
                            }
                        }
                    }
                    div.field {
                        label for="expiry" { "Expires" }
                        select #expiry name="expiry" {
                            @for (v, label) in EXPIRY_CHOICES {
                                option value=(v) selected[value("expiry") == *v] { (label) }
                            }
                        }
                    }
                    div.actions { button.primary #create type="submit" { "Create key" } }
                }
            }
        }
    };
    Ok(respond(status, ctx.page("API keys", body)))
}

/// `POST /portal/keys` → 303 to the page that shows the secret once.
async fn create(PortalPosted { ctx, form }: PortalPosted) -> PortalPage {
    ctx.require(PortalAction::Create)?;
    let attempt = async {
        let permissions: Vec<String> = form
            .all("permission")
            .into_iter()
            .map(str::to_owned)
            .collect();
        if permissions.is_empty() {
            return Err(Error::validation("permission", "choose at least one scope"));
        }
        let new = NewKey {
            name: form.get("name").unwrap_or("").to_owned(),
            environment: form.get("environment").map(str::to_owned),
            permissions: Some(permissions),
            expires_at: forms::expiry(&form, now_ms())?.flatten(),
            ..NewKey::default()
        };
        ctx.engine().create_key(&ctx.caller, new).await
    };
    match attempt.await {
        Ok((record, secret)) => {
            let mut session = ctx.session.clone();
            session
                .put_reveal(ctx.engine(), Reveal::new(record.id.clone(), secret, None))
                .await?;
            Ok(see_other(&format!("/portal/keys/{}/secret", record.id)))
        }
        Err(e) => {
            let (status, message) = inline_error(e)?;
            render_index(&ctx, Some(&message), status, Some(&form)).await
        }
    }
}

/// `GET /portal/keys/{id}/secret`: the new secret, once.
async fn secret(ctx: PortalCtx, Path(key_id): Path<String>) -> PortalPage {
    let key = ctx.key(&key_id).await?;
    let mut session = ctx.session.clone();
    let href = format!("/portal/keys/{}", key.id);
    let Some(reveal) = session.take_reveal(ctx.engine(), &key_id).await? else {
        let body = html! {
            section.card.narrow {
                h1 { "This key's secret is not shown again" }
                p {
                    "The full secret of " code { (key.display_prefix) } " was shown once, when it was made. "
                    "Only a digest of it is kept, so it cannot be shown again. If it is lost, rotate the key."
                }
                div.actions { a.button.primary href=(href) { "Go to the key" } }
            }
        };
        return Ok(respond(
            StatusCode::GONE,
            ctx.page("Secret not available", body),
        ));
    };
    let body = reveal_body(
        None,
        &key,
        reveal.secret.expose(),
        reveal.rotated_from.as_deref(),
        html! { a.button.primary #stored href="/portal" { "I have stored the key" } },
    );
    Ok(secret_response(ctx.page("Your new API key", body)))
}

/// `GET /portal/keys/{id}`: details, usage, rotate and revoke.
async fn show(ctx: PortalCtx, Path(key_id): Path<String>) -> PortalPage {
    let key = ctx.key(&key_id).await?;
    let now = now_ms();
    let today = now - now.rem_euclid(DAY_MS);
    let usage = ctx
        .engine()
        .key_usage(
            &ctx.caller,
            &key.id,
            Some(today - 6 * DAY_MS),
            Some(now),
            Granularity::Day,
        )
        .await?;
    let status = KeyStatus::of(&key, now);
    let href = format!("/portal/keys/{}", key.id);
    let body = html! {
        p { a href="/portal" { "← All API keys" } }
        div.page-head {
            h1 { (key.name) " " (layout::status_badge(status)) }
            p.muted { code { (key.display_prefix) } " · " (key.environment.as_str()) }
        }
        section.card {
            dl.facts {
                dt { "Scopes" } dd { (layout::permissions(&key.permissions)) }
                dt { "Created" } dd { (layout::time(key.created_at)) }
                dt { "Last used" } dd { (layout::opt_time(key.last_used_at, "never")) }
                dt { "Expires" } dd { (layout::opt_time(key.expires_at, "never")) }
            }
        }
        section.card {
            h2 { "Usage, last 7 days" }
            (usage_chart(&usage.buckets))
        }
        @if status == KeyStatus::Active && ctx.grant.may(PortalAction::Rotate) {
            section.card.narrow {
                h2 { "Rotate" }
                p { "Makes a new key with the same scopes and shows it once; the old one stops now or after a grace period." }
                form method="post" action={(href) "/rotate"} {
                    (csrf_field(ctx.session.csrf()))
                    div.field {
                        label for="grace" { "Grace period for the old key" }
                        select #grace name="grace" {
                            @for (value, label) in GRACE_CHOICES { option value=(value) { (label) } }
                        }
                    }
                    div.actions { button.primary #rotate type="submit" { "Rotate key" } }
                }
            }
        }
        @if status == KeyStatus::Active && ctx.grant.may(PortalAction::Revoke) {
            div.actions { a.button.danger #revoke href={(href) "/revoke"} { "Revoke…" } }
        }
    };
    Ok(respond(StatusCode::OK, ctx.page(&key.name, body)))
}

/// `GET /portal/keys/{id}/revoke`: the confirmation.
async fn revoke_form(ctx: PortalCtx, Path(key_id): Path<String>) -> PortalPage {
    ctx.require(PortalAction::Revoke)?;
    let key = ctx.key(&key_id).await?;
    let href = format!("/portal/keys/{}", key.id);
    let body = html! {
        section.card.narrow {
            h1 { "Revoke " (key.name) "?" }
            div.warning role="alert" {
                strong { "This cannot be undone. " }
                "Every request that carries " code { (key.display_prefix) "…" } " is refused from now on."
            }
            form method="post" action={(href) "/revoke"} {
                (csrf_field(ctx.session.csrf()))
                div.actions {
                    button.danger #confirm-revoke type="submit" { "Revoke permanently" }
                    a.button href=(href) { "Cancel" }
                }
            }
        }
    };
    Ok(respond(StatusCode::OK, ctx.page("Revoke key", body)))
}

/// `POST /portal/keys/{id}/revoke`.
async fn revoke(Path(key_id): Path<String>, PortalPosted { ctx, .. }: PortalPosted) -> PortalPage {
    ctx.require(PortalAction::Revoke)?;
    let key = ctx.engine().revoke_key(&ctx.caller, &key_id).await?;
    ctx.flash(format!("Key {} revoked.", key.display_prefix))
        .await;
    Ok(see_other(&format!("/portal/keys/{key_id}")))
}

/// `POST /portal/keys/{id}/rotate` → 303 to the new key's secret page.
async fn rotate(
    Path(key_id): Path<String>,
    PortalPosted { ctx, form }: PortalPosted,
) -> PortalPage {
    ctx.require(PortalAction::Rotate)?;
    let grace = forms::grace(&form)?;
    let rotated = match ctx.engine().rotate_key(&ctx.caller, &key_id, grace).await {
        Ok(r) => r,
        Err(e) => {
            let (_, message) = inline_error(e)?;
            ctx.flash(message).await;
            return Ok(see_other(&format!("/portal/keys/{key_id}")));
        }
    };
    let new_id = rotated.key.id.clone();
    let mut session = ctx.session.clone();
    session
        .put_reveal(
            ctx.engine(),
            Reveal::new(new_id.clone(), rotated.secret, Some(key_id)),
        )
        .await?;
    Ok(see_other(&format!("/portal/keys/{new_id}/secret")))
}
