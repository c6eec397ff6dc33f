//! Sign-in and sign-out.

use axum::extract::{FromRequest, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::{Outcome, Permission};
use keygate_engine::manage::{Actor, Caller};
use keygate_engine::Error;
use maud::html;

use super::layout::{csrf_field, form_error, page, respond, Chrome, Nav};
use super::session::{self, Principal, SessionView};
use super::{csrf, is_https, read_form, see_other, Dash, Posted};
use crate::edge::request_ip;
use crate::ApiError;
use keygate_edge::authenticate;

fn form(session: &SessionView, error: Option<&str>) -> maud::Markup {
    let body = html! {
        section.card.narrow {
            h1 { "Sign in" }
            p.muted {
                "Use the operator's admin token to manage every account, or an API key that "
                "holds " code { "api_keys.*" } " (or " code { "api_keys.read" } ") to manage "
                "its own account's keys."
            }
            (form_error(error))
            form method="post" action="/dashboard/sign-in" {
                (csrf_field(&session.csrf))
                div.field {
                    label for="credential" { "Admin token or API key" }
                    input #credential type="password" name="credential" required
                        autocomplete="off" autocapitalize="off" spellcheck="false"
                        aria-describedby="credential-help"
                        aria-invalid=[error.map(|_| "true")];
                    p.help #credential-help { "Sent once to sign in; never stored in the browser." }
                }
                button.primary type="submit" { "Sign in" }
            }
        }
    };
    page("Sign in", &Chrome::default(), Nav::None, body)
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// The anonymous session of this browser, or a new one (with its cookie to set).
fn anonymous_session(parts: &Parts, dash: &Dash) -> Option<(SessionView, Option<String>)> {
    let existing = session::id_from_cookies(&parts.headers)
        .and_then(|id| dash.sessions().get(&id))
        .filter(|s| s.principal.is_none());
    match existing {
        Some(s) => Some((s, None)),
        None => {
            let s = dash.sessions().start_anonymous()?;
            let cookie = session::cookie(&s.id, is_https(parts, dash));
            Some((s, Some(cookie)))
        }
    }
}

fn internal() -> Response {
    ApiError::Internal.into_response()
}

/// `GET /dashboard/sign-in`.
pub async fn show(State(dash): State<Dash>, parts: Parts) -> Response {
    let signed_in = session::id_from_cookies(&parts.headers)
        .and_then(|id| dash.sessions().get(&id))
        .is_some_and(|s| s.principal.is_some());
    if signed_in {
        return see_other("/dashboard");
    }
    let Some((session, cookie)) = anonymous_session(&parts, &dash) else {
        return internal();
    };
    let response = respond(StatusCode::OK, form(&session, None));
    match cookie {
        Some(c) => with_cookie(response, &c),
        None => response,
    }
}

/// Why a sign-in failed: what the audit log records, and what the person is told.
fn refusal(error: &ApiError) -> (&'static str, &'static str) {
    const GENERIC: &str = "Sign-in failed: that is neither the admin token nor a valid API key.";
    match error {
        ApiError::Outcome(Outcome::IpNotAllowed, _) => (
            "ip_not_allowed",
            "Sign-in failed: this key may not be used from your address.",
        ),
        ApiError::Outcome(Outcome::RateLimited, _) => (
            "rate_limited",
            "Sign-in failed: this key is over its rate limit; try again shortly.",
        ),
        ApiError::Outcome(Outcome::UsageExceeded, _) => (
            "usage_exceeded",
            "Sign-in failed: this key's usage quota is spent.",
        ),
        ApiError::Outcome(o, _) => (o.code(), GENERIC),
        ApiError::BadAdminCredentials => ("unauthorized", GENERIC),
        _ => ("error", GENERIC),
    }
}

/// `POST /dashboard/sign-in`: throttled per address, audited either way.
pub async fn submit(State(dash): State<Dash>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let ip = request_ip(&parts, &dash.app);
    let https = is_https(&parts, &dash);
    let anonymous = session::id_from_cookies(&parts.headers)
        .and_then(|id| dash.sessions().get(&id))
        .filter(|s| s.principal.is_none());
    let form_data = match read_form(parts.clone(), body, &dash).await {
        Ok(f) => f,
        Err(failure) => return failure.into_response(),
    };
    // Without the anonymous session whose token the form carries, start over.
    let Some(anonymous) = anonymous else {
        let Some((fresh, cookie)) = anonymous_session(&parts, &dash) else {
            return internal();
        };
        let response = respond(
            StatusCode::FORBIDDEN,
            form(
                &fresh,
                Some("The sign-in form expired (or cookies are off). Please try again."),
            ),
        );
        return match cookie {
            Some(c) => with_cookie(response, &c),
            None => response,
        };
    };
    if !csrf::matches(&anonymous.csrf, form_data.get(csrf::FIELD)) {
        return super::csrf_refused();
    }
    if let Some(wait) = dash.inner.throttle.blocked_for(ip) {
        let mut response = respond(
            StatusCode::TOO_MANY_REQUESTS,
            form(
                &anonymous,
                Some(&format!(
                    "Too many failed sign-ins from your address. Try again in {wait} seconds."
                )),
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return response;
    }
    let Some(credential) = form_data.get("credential") else {
        return respond(
            StatusCode::BAD_REQUEST,
            form(&anonymous, Some("Enter the admin token or an API key.")),
        );
    };
    let refused = match authenticate(&dash.app.engine, &dash.app.admin, credential, ip).await {
        Ok(caller) => match may_manage(&caller) {
            true => return signed_in(&dash, &anonymous, caller, https).await,
            false => (
                "not_a_key_manager",
                "Sign-in failed: this key cannot manage API keys (it needs api_keys.read or api_keys.*).",
            ),
        },
        Err(ApiError::Engine(e @ (Error::Unavailable(_) | Error::Internal(_)))) => {
            // Not the person's fault: not counted, not audited as a failure.
            return ApiError::Engine(e).into_response();
        }
        Err(e) => refusal(&e),
    };
    let (reason, message) = refused;
    dash.inner.throttle.note_failure(ip);
    if let Err(e) = dash.app.engine.record_failed_sign_in(ip, reason).await {
        tracing::warn!(error = %e, "could not audit a failed dashboard sign-in");
    }
    tracing::info!(reason, client_ip = ?ip, "dashboard sign-in refused");
    respond(StatusCode::FORBIDDEN, form(&anonymous, Some(message)))
}

/// The operator, or a key that may at least read its account's keys.
fn may_manage(caller: &Caller) -> bool {
    match &caller.actor {
        Actor::Admin => true,
        Actor::Key(key) => Permission::concrete("api_keys", "read")
            .is_ok_and(|needed| key.permissions.allows(&needed)),
    }
}

async fn signed_in(dash: &Dash, anonymous: &SessionView, caller: Caller, https: bool) -> Response {
    let principal = match &caller.actor {
        Actor::Admin => Principal::Admin,
        Actor::Key(key) => Principal::Key(key.clone()),
    };
    let Some(session) = dash.sessions().sign_in(Some(&anonymous.id), principal) else {
        return internal();
    };
    if let Err(e) = dash.app.engine.record_sign_in(&caller).await {
        tracing::warn!(error = %e, "could not audit a dashboard sign-in");
    }
    with_cookie(
        see_other("/dashboard"),
        &session::cookie(&session.id, https),
    )
}

/// `POST /dashboard/sign-out`.
pub async fn sign_out(State(dash): State<Dash>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let https = is_https(&parts, &dash);
    let posted = match Posted::from_request(Request::from_parts(parts, body), &dash).await {
        Ok(p) => p,
        Err(failure) => return failure.into_response(),
    };
    dash.sessions().remove(&posted.ctx.session.id);
    with_cookie(
        see_other("/dashboard/sign-in"),
        &session::clear_cookie(https),
    )
}
