//! Sign-in and sign-out.

use axum::extract::{FromRequest, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keygate_core::{Outcome, Permission};
use keygate_engine::manage::{Actor, Caller};
use keygate_engine::Error;
use maud::html;

use super::layout::{csrf_field, form_error, page, respond, Chrome, Nav};
use super::session;
use super::{csrf, is_https, read_form, see_other, with_cookie, Dash, Posted, Principal, Stored};
use crate::edge::request_ip;
use crate::ApiError;
use keygate_edge::{authenticate, AuthFailed};
use keygate_engine::sessions::NewSession;
use serde_json::json;

fn form(token: &str, error: Option<&str>) -> maud::Markup {
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
                (csrf_field(token))
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

fn sign_in_cookie(token: &str, https: bool) -> String {
    session::cookie_for(
        session::SIGN_IN_COOKIE,
        token,
        "/dashboard",
        "Strict",
        https,
    )
}

/// The sign-in form with a fresh double-submit token (cookie and hidden field).
fn fresh_form(status: StatusCode, error: Option<&str>, https: bool) -> Response {
    let Ok(token) = keygate_engine::sessions::new_secret() else {
        return internal();
    };
    with_cookie(
        respond(status, form(&token, error)),
        &sign_in_cookie(&token, https),
    )
}

fn internal() -> Response {
    ApiError::Internal.into_response()
}

/// `GET /dashboard/sign-in`.
pub async fn show(State(dash): State<Dash>, parts: Parts) -> Response {
    match super::signed_in_session(&parts, &dash).await {
        Ok(Some(_)) => see_other("/dashboard"),
        Ok(None) => fresh_form(StatusCode::OK, None, is_https(&parts, &dash)),
        Err(failure) => failure.into_response(),
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

/// `POST /dashboard/sign-in`: audited either way; a failure counts against the
/// failed-authentication throttle of the client's address (see `edge/middleware.rs`).
pub async fn submit(State(dash): State<Dash>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let ip = request_ip(&parts, &dash.app);
    let https = is_https(&parts, &dash);
    let token = session::from_cookies(&parts.headers, session::SIGN_IN_COOKIE);
    let form_data = match read_form(parts.clone(), body, &dash).await {
        Ok(f) => f,
        Err(failure) => return failure.into_response(),
    };
    // Without the cookie whose token the form carries, start over.
    let Some(token) = token else {
        return fresh_form(
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired (or cookies are off). Please try again."),
            https,
        );
    };
    if !csrf::matches(&token, form_data.get(csrf::FIELD)) {
        return super::csrf_refused();
    }
    let Some(credential) = form_data.get("credential") else {
        return respond(
            StatusCode::BAD_REQUEST,
            form(&token, Some("Enter the admin token or an API key.")),
        );
    };
    let refused = match authenticate(&dash.app.engine, &dash.app.admin, credential, ip).await {
        Ok(caller) => match may_manage(&caller) {
            true => return signed_in(&dash, caller, https).await,
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
    if let Err(e) = dash.app.engine.record_failed_sign_in(ip, reason).await {
        tracing::warn!(error = %e, "could not audit a failed dashboard sign-in");
    }
    tracing::info!(reason, client_ip = ?ip, "dashboard sign-in refused");
    let mut response = respond(StatusCode::FORBIDDEN, form(&token, Some(message)));
    response.extensions_mut().insert(AuthFailed);
    response
}

/// The operator, or a key that may at least read its account's keys.
fn may_manage(caller: &Caller) -> bool {
    match &caller.actor {
        Actor::Admin => true,
        Actor::Portal(_) => false,
        Actor::Key(key) => Permission::concrete("api_keys", "read")
            .is_ok_and(|needed| key.permissions().allows(&needed)),
    }
}

async fn signed_in(dash: &Dash, caller: Caller, https: bool) -> Response {
    let principal = match &caller.actor {
        Actor::Key(key) => Principal::Key(key.clone()),
        _ => Principal::Admin,
    };
    let started = dash
        .app
        .engine
        .start_session(NewSession {
            kind: session::KIND,
            id_prefix: "sess",
            id: None,
            account_id: match &principal {
                Principal::Admin => None,
                Principal::Key(k) => Some(k.account_id().to_owned()),
            },
            data: json!({ "principal": Stored::of(&principal) }),
            lifetime: session::LIFETIME,
        })
        .await;
    let (secret, _) = match started {
        Ok(s) => s,
        Err(e) => return ApiError::Engine(e).into_response(),
    };
    if let Err(e) = dash.app.engine.record_sign_in(&caller).await {
        tracing::warn!(error = %e, "could not audit a dashboard sign-in");
    }
    let response = with_cookie(see_other("/dashboard"), &session::cookie(&secret, https));
    with_cookie(
        response,
        &session::clear_cookie_for(session::SIGN_IN_COOKIE, "/dashboard", "Strict", https),
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
    if let Err(failure) = posted.ctx.end_session().await {
        return failure.into_response();
    }
    with_cookie(
        see_other("/dashboard/sign-in"),
        &session::clear_cookie(https),
    )
}
