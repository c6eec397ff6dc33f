//! The page shell and the small pieces every page shares.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use keygate_engine::manage::KeyStatus;
use maud::{html, Markup, DOCTYPE};

use super::csrf;
use super::Principal;

/// What the shell shows around a page: who is signed in, the sign-out form, a notice.
#[derive(Default)]
pub struct Chrome {
    pub principal: Option<Principal>,
    pub csrf: Option<String>,
    pub flash: Option<String>,
}

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    None,
    Accounts,
    Keys,
    Webhooks,
}

/// The `<head>` of every page: `base` is where the assets are served (`/dashboard`,
/// `/portal`); `brand` a stylesheet of the operator's branding.
pub fn head(title: &str, product: &str, base: &str, brand: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · " (product) }
            link rel="icon" href="data:,";
            link rel="stylesheet" href={(base) "/assets/dashboard.css"};
            @if brand { link rel="stylesheet" href={(base) "/assets/brand.css"}; }
            script src={(base) "/assets/dashboard.js"} defer {}
        }
    }
}

pub fn page(title: &str, chrome: &Chrome, nav: Nav, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, "keygate", "/dashboard", false))
            body {
                a.skip href="#main" { "Skip to content" }
                header.topbar {
                    div.topbar-inner {
                        a.brand href="/dashboard" { span.logo aria-hidden="true" {} "keygate" }
                        @if let Some(principal) = &chrome.principal {
                            nav aria-label="Main" {
                                ul {
                                    @match principal {
                                        Principal::Admin => {
                                            li { a href="/dashboard/accounts" aria-current=[(nav == Nav::Accounts).then_some("page")] { "Accounts" } }
                                            li { a href="/dashboard/webhooks" aria-current=[(nav == Nav::Webhooks).then_some("page")] { "Webhooks" } }
                                        }
                                        Principal::Key(key) => {
                                            li { a href={"/dashboard/accounts/" (key.account_id())} aria-current=[(nav == Nav::Keys).then_some("page")] { "API Keys" } }
                                        }
                                    }
                                }
                            }
                            div.who {
                                span.who-label {
                                    @match principal {
                                        Principal::Admin => { "Signed in as " strong { "operator" } }
                                        Principal::Key(key) => { "Signed in with key " code { (key.display_prefix()) } }
                                    }
                                }
                                @if let Some(token) = &chrome.csrf {
                                    form.inline method="post" action="/dashboard/sign-out" {
                                        (csrf_field(token))
                                        button.link type="submit" { "Sign out" }
                                    }
                                }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    @if let Some(flash) = &chrome.flash {
                        div.notice role="status" { (flash) }
                    }
                    (content)
                }
                footer.foot { "keygate · API keys are shown once and stored only as digests." }
            }
        }
    }
}

/// An HTML answer with `status`.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// A page that only says what went wrong, with a way back.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::TOO_MANY_REQUESTS => "Too many requests",
        StatusCode::SERVICE_UNAVAILABLE => "Temporarily unavailable",
        s if s.is_server_error() => "Something went wrong",
        _ => "Cannot do that",
    };
    let body = html! {
        section.card.error-card {
            h1 { (title) }
            p { (message) }
            p.muted { "HTTP " (status.as_u16()) }
            p { a href="/dashboard" { "Back to the dashboard" } }
        }
    };
    respond(status, page(title, &Chrome::default(), Nav::None, body))
}

/// An error answer as a page, with the answer's headers (`Retry-After`…).
pub fn answer_page(answer: &keygate_edge::ErrorAnswer) -> Response {
    let mut page = error_page(answer.status, &answer.message);
    page.headers_mut().extend(answer.headers.clone());
    page
}

pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(csrf::FIELD) value=(token); }
}

fn datetime(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(ms)
}

/// A time in UTC, machine-readable in `datetime`.
pub fn time(ms: i64) -> Markup {
    match datetime(ms) {
        Some(t) => html! {
            time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) {
                (t.format("%Y-%m-%d %H:%M UTC"))
            }
        },
        None => html! { "—" },
    }
}

pub fn opt_time(ms: Option<i64>, none: &str) -> Markup {
    match ms {
        Some(ms) => time(ms),
        None => html! { span.muted { (none) } },
    }
}

/// `YYYY-MM-DD` of a time, for a date input.
pub fn date_value(ms: i64) -> String {
    datetime(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

pub fn status_badge(status: KeyStatus) -> Markup {
    html! { span class={"badge badge-" (status.as_str())} { (status.as_str()) } }
}

/// A "leaked" mark for a key a scanner or an operator reported, nothing otherwise.
pub fn leaked_badge(leaked_at: Option<i64>) -> Markup {
    html! {
        @if let Some(at) = leaked_at {
            " " span.badge.badge-leaked title="Reported leaked" data-leaked-at=(at) { "leaked" }
        }
    }
}

/// An error above a form, announced to screen readers.
pub fn form_error(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message {
            div.form-error role="alert" #form-error { (m) }
        }
    }
}

/// A list of permissions as code chips; "none" when empty.
pub fn permissions(list: &[String]) -> Markup {
    html! {
        @if list.is_empty() {
            span.muted { "none" }
        } @else {
            span.chips {
                @for p in list { code.chip { (p) } " " }
            }
        }
    }
}

pub fn rate_limit_text(limit: Option<keygate_store::RateLimit>) -> String {
    match limit {
        None => "none".to_owned(),
        Some(l) => {
            let per = match l.per_seconds {
                1 => "second".to_owned(),
                60 => "minute".to_owned(),
                3600 => "hour".to_owned(),
                86_400 => "day".to_owned(),
                s => format!("{s} seconds"),
            };
            format!("{} requests per {per}", l.requests)
        }
    }
}
