//! One account's keys: create (secret shown once), a key's page (details, usage chart,
//! recent addresses, audit events), edit, rotate, revoke.

use std::collections::BTreeSet;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use keygate_core::ip::IpAllowlist;
use keygate_core::{Outcome, PermissionSet};
use keygate_engine::manage::{Granularity, KeyStatus, KeyUpdate, NewKey, IDLE_RETIREMENT_REASON};
use keygate_engine::{now_ms, Error};
use keygate_store::{AuditEvent, AuditQuery, KeyRecord};
use maud::{html, Markup};

use super::accounts::{account_view, AccountView};
use super::catalog::{Checklist, ACTIONS};
use super::chart::usage_chart;
use super::forms::{self, Access, Form, PRESETS};
use super::layout::{self, csrf_field, form_error, page, respond, Nav};
use super::session::Reveal;
use super::{see_other, Ctx, Failure, Page, Posted};

const DAY_MS: i64 = 86_400_000;
/// The refill period a new key's form proposes (a day).
const DEFAULT_REFILL_EVERY: &str = "86400";

/// An engine error that belongs above the form (the person can fix it), with its status;
/// anything else becomes an error page.
pub(super) fn inline_error(e: Error) -> Result<(StatusCode, String), Failure> {
    match e {
        Error::Validation { message, .. } => Ok((StatusCode::BAD_REQUEST, message)),
        Error::Forbidden(m) => Ok((StatusCode::FORBIDDEN, m)),
        Error::PlanLimit => Ok((
            StatusCode::TOO_MANY_REQUESTS,
            "API key limit reached for your plan: revoke a key or move the account to a larger plan."
                .to_owned(),
        )),
        Error::Refused(Outcome::InsufficientPermissions) => Ok((
            StatusCode::FORBIDDEN,
            "The key you signed in with lacks the api_keys permission for this.".to_owned(),
        )),
        other => Err(other.into()),
    }
}

// ---------------------------------------------------------------------------------------
// The permission checklist

/// The checklist of this deployment: its catalog, the route table's permissions and every
/// permission the caller's visible keys hold.
async fn catalog(ctx: &Ctx) -> Result<Checklist, Failure> {
    let keys = ctx.engine().list_keys(&ctx.caller, None, None).await?;
    let held: Vec<PermissionSet> = keys
        .iter()
        .filter_map(|k| PermissionSet::parse(&k.permissions).ok())
        .collect();
    let known = ctx
        .engine()
        .routes()
        .permissions()
        .chain(held.iter().flat_map(|set| set.grants()));
    Ok(Checklist::build(
        &ctx.dash.app.http.permission_catalog,
        known,
    ))
}

// ---------------------------------------------------------------------------------------
// The key form (create and edit)

/// What the form shows: from a record, from a submitted form, or the defaults.
#[derive(Default)]
struct Values {
    name: String,
    environment: String,
    access: String,
    checked: BTreeSet<String>,
    extra: String,
    ip_allowlist: String,
    expiry: String,
    expires_on: String,
    rate_requests: String,
    rate_per: String,
    quota_requests: String,
    quota_refill_amount: String,
    quota_refill_every: String,
}

impl Values {
    fn new_key() -> Values {
        Values {
            environment: "live".into(),
            access: "custom".into(),
            expiry: "never".into(),
            rate_per: "60".into(),
            quota_refill_every: DEFAULT_REFILL_EVERY.into(),
            ..Values::default()
        }
    }

    fn from_form(form: &Form) -> Values {
        Values {
            name: form.raw("name").to_owned(),
            environment: form.get("environment").unwrap_or("live").to_owned(),
            access: form.get("access").unwrap_or("custom").to_owned(),
            checked: form
                .all("permission")
                .into_iter()
                .map(str::to_owned)
                .collect(),
            extra: form.raw("extra_permissions").to_owned(),
            ip_allowlist: form.raw("ip_allowlist").to_owned(),
            expiry: form.get("expiry").unwrap_or("never").to_owned(),
            expires_on: form.raw("expires_on").to_owned(),
            rate_requests: form.raw("rate_requests").to_owned(),
            rate_per: form.get("rate_per").unwrap_or("60").to_owned(),
            quota_requests: form.raw("quota_requests").to_owned(),
            quota_refill_amount: form.raw("quota_refill_amount").to_owned(),
            quota_refill_every: form
                .get("quota_refill_every")
                .unwrap_or(DEFAULT_REFILL_EVERY)
                .to_owned(),
        }
    }

    fn from_record(k: &KeyRecord, catalog: &Checklist) -> Values {
        let preset = PRESETS
            .iter()
            .map(|(p, _)| *p)
            .find(|p| PermissionSet::preset(p).is_some_and(|s| s.to_strings() == k.permissions));
        let (boxes, rest): (Vec<&String>, Vec<&String>) =
            k.permissions.iter().partition(|p| catalog.has_box(p));
        let refill = k.quota.and_then(|q| q.refill);
        Values {
            name: k.name.clone(),
            environment: k.environment.as_str().to_owned(),
            access: preset.unwrap_or("custom").to_owned(),
            checked: if preset.is_some() {
                BTreeSet::new()
            } else {
                boxes.into_iter().cloned().collect()
            },
            extra: if preset.is_some() {
                String::new()
            } else {
                rest.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            ip_allowlist: k.ip_allowlist.join("\n"),
            expiry: "keep".into(),
            expires_on: k.expires_at.map(layout::date_value).unwrap_or_default(),
            rate_requests: k
                .rate_limit
                .map(|l| l.requests.to_string())
                .unwrap_or_default(),
            rate_per: k
                .rate_limit
                .map(|l| l.per_seconds.to_string())
                .unwrap_or_else(|| "60".into()),
            quota_requests: k.quota.map(|q| q.requests.to_string()).unwrap_or_default(),
            quota_refill_amount: refill.map(|r| r.amount.to_string()).unwrap_or_default(),
            quota_refill_every: refill
                .map(|r| r.every.to_string())
                .unwrap_or_else(|| DEFAULT_REFILL_EVERY.into()),
        }
    }
}

fn radio(name: &str, value: &str, current: &str, id: &str, label: Markup) -> Markup {
    html! {
        div.choice {
            input type="radio" name=(name) value=(value) id=(id) checked[current == value];
            label for=(id) { (label) }
        }
    }
}

fn access_fieldset(values: &Values, catalog: &Checklist) -> Markup {
    html! {
        fieldset.group {
            legend { "Access" }
            p.help { "A preset scope, or exactly the permissions you tick. A key with no permissions can do nothing." }
            div.choices {
                @for (preset, description) in PRESETS {
                    (radio("access", preset, &values.access, &format!("access-{preset}"),
                        html! { strong { (preset) } " — " (description) }))
                }
                (radio("access", "custom", &values.access, "access-custom", html! { strong { "custom" } " — the permissions below" }))
            }
            div.checklist #checklist {
                @for (resource, extra) in catalog.rows() {
                    fieldset.perm-row {
                        legend { code { (resource) } }
                        @let all_id = format!("perm-{resource}-all");
                        div.check {
                            input type="checkbox" name="permission" value={(resource) ".*"} id=(all_id)
                                checked[values.checked.contains(&format!("{resource}.*"))];
                            label for=(all_id) { span.vh { (resource) " " } "all actions" }
                        }
                        @for action in ACTIONS.iter().copied().chain(extra.iter().copied()) {
                            @let id = format!("perm-{resource}-{action}");
                            @let value = format!("{resource}.{action}");
                            div.check {
                                input type="checkbox" name="permission" value=(value) id=(id)
                                    checked[values.checked.contains(&value)];
                                label for=(id) { span.vh { (resource) " " } (action) }
                            }
                        }
                    }
                }
            }
            div.field {
                label for="extra_permissions" { "Other permissions" }
                input #extra_permissions type="text" name="extra_permissions" value=(values.extra)
                    aria-describedby="extra-help" spellcheck="false" autocapitalize="off";
                p.help #extra-help { "Comma-separated, in any accepted spelling: " code { "orders:read" } ", " code { "*.read" } ", " code { "orders.refund" } "." }
            }
        }
    }
}

fn expiry_fieldset(values: &Values, current: Option<Option<i64>>) -> Markup {
    html! {
        fieldset.group {
            legend { "Expiry" }
            div.choices {
                @if let Some(current) = current {
                    (radio("expiry", "keep", &values.expiry, "expiry-keep", html! {
                        "Keep as is (" @match current { Some(t) => { "expires " (layout::time(t)) }, None => "never expires" } ")"
                    }))
                }
                (radio("expiry", "never", &values.expiry, "expiry-never", html! { "Never" }))
                (radio("expiry", "30", &values.expiry, "expiry-30", html! { "In 30 days" }))
                (radio("expiry", "90", &values.expiry, "expiry-90", html! { "In 90 days" }))
                (radio("expiry", "date", &values.expiry, "expiry-date", html! { "On a date:" }))
            }
            div.field {
                label for="expires_on" { "Expiry date (the key stops working at 00:00 UTC that day)" }
                input #expires_on type="date" name="expires_on" value=(values.expires_on);
            }
        }
    }
}

/// A `<select>` of periods in seconds. A current value that is none of the choices (set
/// through the API) is offered too, so saving the form does not change it.
fn period_select(id: &str, current: &str, choices: &[(&str, &str)]) -> Markup {
    let custom = current
        .parse::<u64>()
        .ok()
        .filter(|_| !choices.iter().any(|(value, _)| *value == current));
    html! {
        select id=(id) name=(id) {
            @for (value, label) in choices {
                option value=(value) selected[current == *value] { (label) }
            }
            @if let Some(seconds) = custom {
                option value=(seconds) selected { (human_duration(seconds)) }
            }
        }
    }
}

fn limits_fieldset(values: &Values) -> Markup {
    let rate_periods = [
        ("1", "second"),
        ("60", "minute"),
        ("3600", "hour"),
        ("86400", "day"),
    ];
    let refill_periods = [
        ("3600", "hour"),
        ("86400", "day"),
        ("604800", "7 days"),
        ("2592000", "30 days"),
    ];
    html! {
        fieldset.group {
            legend { "Rate limit" }
            div.row-form {
                div.field {
                    label for="rate_requests" { "Requests (blank: no limit)" }
                    input #rate_requests type="number" name="rate_requests" min="1" max="4294967295" inputmode="numeric" value=(values.rate_requests);
                }
                div.field {
                    label for="rate_per" { "per" }
                    (period_select("rate_per", &values.rate_per, &rate_periods))
                }
            }
        }
        fieldset.group {
            legend { "Quota" }
            p.help #quota-help { "A number of valid requests the key may make in all; when they are spent it gets 429 until the quota refills. Without a refill the quota is spent once." }
            div.row-form {
                div.field {
                    label for="quota_requests" { "Requests (blank: no quota)" }
                    input #quota_requests type="number" name="quota_requests" min="1" max="9223372036854775807" inputmode="numeric" aria-describedby="quota-help" value=(values.quota_requests);
                }
                div.field {
                    label for="quota_refill_amount" { "Refill (blank: none)" }
                    input #quota_refill_amount type="number" name="quota_refill_amount" min="1" inputmode="numeric" value=(values.quota_refill_amount);
                }
                div.field {
                    label for="quota_refill_every" { "every" }
                    (period_select("quota_refill_every", &values.quota_refill_every, &refill_periods))
                }
            }
        }
    }
}

fn allowlist_field(values: &Values) -> Markup {
    html! {
        div.field {
            label for="ip_allowlist" { "IP allowlist" }
            textarea #ip_allowlist name="ip_allowlist" rows="3" spellcheck="false" aria-describedby="ip-help" { (values.ip_allowlist) }
            p.help #ip-help { "Addresses or CIDR blocks, one per line or comma-separated (203.0.113.7, 10.0.0.0/8). Empty: any address." }
        }
    }
}

fn crumbs(ctx: &Ctx, account: &AccountView, tail: &[(&str, Option<String>)]) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" {
            @if ctx.is_admin() {
                a href="/dashboard/accounts" { "Accounts" } " / "
                a href={"/dashboard/accounts/" (account.id)} { (account.title()) }
            } @else {
                a href={"/dashboard/accounts/" (account.id)} { "API Keys" }
            }
            @for (label, href) in tail {
                " / "
                @match href {
                    Some(h) => a href=(h) { (label) },
                    None => span aria-current="page" { (label) },
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Create

/// `GET /dashboard/accounts/{id}/keys/new`.
pub async fn new_form(ctx: Ctx, Path(account_id): Path<String>) -> Page {
    render_create(&ctx, &account_id, &Values::new_key(), None, StatusCode::OK).await
}

async fn render_create(
    ctx: &Ctx,
    account_id: &str,
    values: &Values,
    error: Option<&str>,
    status: StatusCode,
) -> Page {
    let account = account_view(ctx, account_id).await?;
    let catalog = catalog(ctx).await?;
    let body = html! {
        (crumbs(ctx, &account, &[("New key", None)]))
        div.page-head {
            h1 { "Create an API key" }
            p.muted {
                (account.title()) " · "
                @match account.cap {
                    Some(cap) => { (account.active) " of " (cap) " keys used" },
                    None => { (account.active) " active keys" },
                }
            }
        }
        section.card {
            (form_error(error))
            form.key-form method="post" action={"/dashboard/accounts/" (account.id) "/keys"} {
                (csrf_field(ctx.session.csrf()))
                div.field {
                    label for="name" { "Name" }
                    input #name type="text" name="name" required maxlength="200" value=(values.name)
                        placeholder="Zapier Integration" aria-describedby="name-help";
                    p.help #name-help { "What the key is for, so you recognise it later." }
                }
                fieldset.group {
                    legend { "Environment" }
                    div.choices.inline-choices {
                        (radio("environment", "live", &values.environment, "env-live", html! { "Live" }))
                        (radio("environment", "test", &values.environment, "env-test", html! { "Test (sandbox data only)" }))
                    }
                }
                (access_fieldset(values, &catalog))
                (allowlist_field(values))
                (expiry_fieldset(values, None))
                (limits_fieldset(values))
                div.actions {
                    button.primary type="submit" { "Create key" }
                    a.button href={"/dashboard/accounts/" (account.id)} { "Cancel" }
                }
            }
        }
    };
    Ok(respond(
        status,
        page("Create an API key", &ctx.chrome(), Nav::Keys, body),
    ))
}

fn permissions_input(access: Access) -> (Option<Vec<String>>, Option<String>) {
    match access {
        Access::Scope(s) => (None, Some(s)),
        Access::Permissions(list) => (Some(list), None),
    }
}

/// `POST /dashboard/accounts/{id}/keys` → 303 to the page that shows the secret once.
pub async fn create(Path(account_id): Path<String>, Posted { ctx, form }: Posted) -> Page {
    let attempt = async {
        let now = now_ms();
        let (permissions, scope) = permissions_input(forms::access(&form)?);
        let new = NewKey {
            account_id: Some(account_id.clone()),
            name: form.get("name").unwrap_or("").to_owned(),
            environment: form.get("environment").map(str::to_owned),
            permissions,
            scope,
            ip_allowlist: Some(forms::allowlist(&form)),
            expires_at: forms::expiry(&form, now)?.flatten(),
            expires_in: None,
            rate_limit: forms::rate_limit(&form)?,
            quota: forms::quota(&form)?,
            meta: None,
        };
        ctx.engine().create_key(&ctx.caller, new).await
    };
    match attempt.await {
        Ok((record, secret)) => {
            ctx.put_reveal(Reveal::new(record.id.clone(), secret, None))
                .await?;
            Ok(see_other(&format!("/dashboard/keys/{}/secret", record.id)))
        }
        Err(e) => {
            let (status, message) = inline_error(e)?;
            let values = Values::from_form(&form);
            render_create(&ctx, &account_id, &values, Some(&message), status).await
        }
    }
}

// ---------------------------------------------------------------------------------------
// The secret, once

/// `GET /dashboard/keys/{id}/secret`: the new secret, taken out of the session as it is
/// shown. Reloading (or coming back) finds it gone.
pub async fn secret(ctx: Ctx, Path(key_id): Path<String>) -> Page {
    let key = ctx.engine().get_key(&ctx.caller, &key_id).await?;
    let account = account_view(&ctx, &key.account_id).await?;
    let reveal = ctx.take_reveal(&key_id).await?;
    let key_href = format!("/dashboard/keys/{}", key.id);
    let Some(reveal) = reveal else {
        let body = html! {
            (crumbs(&ctx, &account, &[(&key.display_prefix, Some(key_href.clone())), ("Secret", None)]))
            section.card.narrow {
                h1 { "This key's secret is not shown again" }
                p {
                    "The full secret of " code { (key.display_prefix) } " was shown once, when it was made. "
                    "keygate keeps only a digest of it, so it cannot show it again."
                }
                p { "If the secret is lost, rotate the key to get a new one." }
                div.actions {
                    a.button.primary href=(key_href) { "Go to the key" }
                    a.button href={(key_href) "/rotate"} { "Rotate…" }
                }
            }
        };
        return Ok(respond(
            StatusCode::GONE,
            page("Secret not available", &ctx.chrome(), Nav::Keys, body),
        ));
    };
    let body = reveal_body(
        Some(crumbs(
            &ctx,
            &account,
            &[
                (&key.display_prefix, Some(key_href.clone())),
                ("Secret", None),
            ],
        )),
        &key,
        reveal.secret.expose(),
        reveal.rotated_from.as_deref(),
        html! { a.button.primary href=(key_href) { "I have stored the key" } },
    );
    Ok(secret_response(page(
        "Your new API key",
        &ctx.chrome(),
        Nav::Keys,
        body,
    )))
}

/// The one showing of a secret.
pub(super) fn reveal_body(
    crumbs: Option<Markup>,
    key: &KeyRecord,
    secret: &str,
    rotated_from: Option<&str>,
    next: Markup,
) -> Markup {
    html! {
        @if let Some(c) = crumbs { (c) }
        section.card.reveal {
            h1 {
                @if rotated_from.is_some() { "Your rotated API key" } @else { "Your new API key" }
            }
            div.warning role="alert" {
                strong { "Copy this key now. " }
                "It will not be shown again: keygate stores only a digest of it. "
                "If you lose it, rotate the key to get a new one."
            }
            div.secret-box {
                code.secret #new-secret { (secret) }
                button.copy type="button" data-copy="new-secret" hidden { "Copy" }
                span.copy-status #copy-status role="status" aria-live="polite" {}
            }
            dl.facts {
                dt { "Name" } dd { (key.name) }
                dt { "Shown in lists as" } dd { code { (key.display_prefix) } }
                dt { "Environment" } dd { (key.environment.as_str()) }
                dt { "Permissions" } dd { (layout::permissions(&key.permissions)) }
                @if let Some(old) = rotated_from {
                    dt { "Replaces" } dd { code { (old) } }
                }
            }
            p.muted { "Send it as " code { "Authorization: Bearer <key>" } " (or " code { "X-API-Key" } "). Never in a URL." }
            div.actions { (next) }
        }
    }
}

pub(super) fn secret_response(markup: Markup) -> axum::response::Response {
    let mut response = respond(StatusCode::OK, markup);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

// ---------------------------------------------------------------------------------------
// A key's page

/// The key's audit events, newest first: those that target it, and the rotation that
/// made it (which targets the key it replaced).
async fn key_events(ctx: &Ctx, key: &KeyRecord) -> Result<Vec<AuditEvent>, Failure> {
    const SHOWN: u32 = 50;
    let query = |target| AuditQuery {
        account_id: Some(key.account_id.as_str()),
        target_id: Some(target),
        limit: SHOWN,
        ..AuditQuery::default()
    };
    let mut events = ctx
        .engine()
        .audit_events(&ctx.caller, query(key.id.as_str()))
        .await?;
    if let Some(previous) = &key.rotated_from {
        let made = ctx
            .engine()
            .audit_events(&ctx.caller, query(previous.as_str()))
            .await?;
        events.extend(made.into_iter().filter(|e| {
            e.action == "key.rotate" && e.details["new_key_id"].as_str() == Some(key.id.as_str())
        }));
        events.sort_by_key(|e| std::cmp::Reverse(e.seq));
    }
    events.truncate(SHOWN as usize);
    Ok(events)
}

fn describe_event(e: &AuditEvent, key_id: &str) -> Markup {
    let d = &e.details;
    html! {
        @match e.action.as_str() {
            "key.create" => { "Created" }
            "key.revoke" if d["reason"].as_str() == Some(IDLE_RETIREMENT_REASON) => { "Revoked: unused after its rotation" }
            "key.revoke" => { "Revoked" }
            "key.leaked" => {
                "Reported leaked"
                @if let Some(url) = d["url"].as_str() { " at " code { (url) } }
                @match d["action"].as_str() {
                    Some("revoked") => { "; revoked" },
                    Some("notified") => { "; left working (leak_action = notify)" },
                    _ => {},
                }
            }
            "key.rotate" if d["new_key_id"].as_str() == Some(key_id) => {
                "Created by rotating " a href={"/dashboard/keys/" (e.target_id.as_deref().unwrap_or(""))} { code { (e.target_id.as_deref().unwrap_or("")) } }
            }
            "key.rotate" => {
                "Rotated into " a href={"/dashboard/keys/" (d["new_key_id"].as_str().unwrap_or(""))} { code { (d["new_key_id"].as_str().unwrap_or("")) } }
                @match d["grace_period_seconds"].as_u64() {
                    Some(g) if g > 0 => { "; the old key worked " (human_duration(g)) " longer" },
                    _ => { "; the old key stopped at once" },
                }
            }
            "key.update" => {
                "Changed "
                @let changed: Vec<&str> = d["changed"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
                (changed.join(", "))
            }
            "dashboard.sign_in" => { "Signed in to the dashboard" }
            other => { (other) }
        }
    }
}

/// `3600` → "1 hour", `90` → "90 seconds".
fn human_duration(seconds: u64) -> String {
    let unit = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    match seconds {
        s if s % 86_400 == 0 => unit(s / 86_400, "day"),
        s if s % 3600 == 0 => unit(s / 3600, "hour"),
        s if s % 60 == 0 => unit(s / 60, "minute"),
        s => unit(s, "second"),
    }
}

/// A period after "every": "day", "7 days".
fn period_text(seconds: u64) -> String {
    let period = human_duration(seconds);
    match period.strip_prefix("1 ") {
        Some(unit) => unit.to_owned(),
        None => period,
    }
}

fn actor(label: &str) -> Markup {
    html! {
        @match label.strip_prefix("key:") {
            Some(id) => { "key " a href={"/dashboard/keys/" (id)} { code { (id) } } },
            None if label == "admin" => { "operator" },
            None => { (label) },
        }
    }
}

/// `GET /dashboard/keys/{id}`.
pub async fn show(ctx: Ctx, Path(key_id): Path<String>) -> Page {
    let key = ctx.engine().get_key(&ctx.caller, &key_id).await?;
    let account = account_view(&ctx, &key.account_id).await?;
    let today = now_ms() - now_ms().rem_euclid(DAY_MS);
    let usage = ctx
        .engine()
        .key_usage(
            &ctx.caller,
            &key.id,
            Some(today - 6 * DAY_MS),
            Some(now_ms()),
            Granularity::Day,
        )
        .await?;
    let events = key_events(&ctx, &key).await?;
    let least_privilege = super::least_privilege::report(&ctx, &key.id).await?;
    let status = KeyStatus::of(&key, now_ms());
    let href = format!("/dashboard/keys/{}", key.id);
    let body = html! {
        (crumbs(&ctx, &account, &[(&key.display_prefix, None)]))
        div.page-head {
            h1 { (key.name) " " (layout::status_badge(status)) (layout::leaked_badge(key.leaked_at)) }
            p.muted { code { (key.display_prefix) } " · " (key.environment.as_str()) " · " code.id { (key.id) } }
            @if status == KeyStatus::Active {
                div.actions {
                    a.button href={(href) "/edit"} { "Edit" }
                    a.button href={(href) "/rotate"} { "Rotate…" }
                    a.button.danger href={(href) "/revoke"} { "Revoke…" }
                }
            }
        }
        div.grid {
            section.card {
                h2 { "Details" }
                dl.facts #key-details {
                    dt { "Key" } dd { code { (key.display_prefix) "…" } }
                    dt { "Status" } dd { (layout::status_badge(status)) (layout::leaked_badge(key.leaked_at)) }
                    @if let Some(at) = key.leaked_at {
                        dt { "Reported leaked" } dd { (layout::time(at)) }
                    }
                    dt { "Environment" } dd { (key.environment.as_str()) }
                    dt { "Permissions" } dd { (layout::permissions(&key.permissions)) }
                    dt { "IP allowlist" } dd {
                        @if key.ip_allowlist.is_empty() { span.muted { "any address" } }
                        @else { (layout::permissions(&key.ip_allowlist)) }
                    }
                    dt { "Rate limit" } dd { (layout::rate_limit_text(key.rate_limit)) }
                    @if let Some(q) = key.quota {
                        dt { "Quota" } dd {
                            (key.quota_used) " of " (q.requests) " requests used"
                            @if let Some(r) = q.refill { ", refills " (r.amount) " every " (period_text(r.every)) }
                        }
                    }
                    dt { "Created" } dd { (layout::time(key.created_at)) }
                    dt { "Last used" } dd { (layout::opt_time(key.last_used_at, "never")) }
                    dt { "Expires" } dd { (layout::opt_time(key.expires_at, "never")) }
                    @if let Some(at) = key.revoked_at {
                        dt { @if at > now_ms() { "Stops working" } @else { "Revoked" } } dd { (layout::time(at)) }
                    }
                    @if let Some(from) = &key.rotated_from {
                        dt { "Rotated from" } dd { a href={"/dashboard/keys/" (from)} { code { (from) } } }
                    }
                }
            }
            section.card {
                h2 { "Usage, last 7 days" }
                (usage_chart(&usage.buckets))
                h3 { "Recent client addresses" }
                @if key.recent_ips.is_empty() {
                    p.empty { "No requests yet." }
                } @else {
                    div.table-wrap {
                        table #recent-ips {
                            thead { tr { th scope="col" { "Address" } th scope="col" { "Last seen" } } }
                            tbody {
                                @for ip in &key.recent_ips {
                                    tr { td { code { (ip.ip) } } td { (layout::time(ip.last_seen)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        (super::least_privilege::section(&ctx, &least_privilege))
        section.card {
            h2 { "Activity" }
            @if events.is_empty() {
                p.empty { "No recorded changes." }
            } @else {
                div.table-wrap {
                    table #key-events {
                        thead { tr { th scope="col" { "When" } th scope="col" { "What" } th scope="col" { "Who" } th scope="col" { "From" } } }
                        tbody {
                            @for e in &events {
                                tr data-action=(e.action) {
                                    td { (layout::time(e.at)) }
                                    td { (describe_event(e, &key.id)) }
                                    td { (actor(&e.actor)) }
                                    td { code { (e.client_ip.as_deref().unwrap_or("—")) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page(&key.name, &ctx.chrome(), Nav::Keys, body),
    ))
}

// ---------------------------------------------------------------------------------------
// Edit

/// `GET /dashboard/keys/{id}/edit`.
pub async fn edit_form(ctx: Ctx, Path(key_id): Path<String>) -> Page {
    let key = ctx.engine().get_key(&ctx.caller, &key_id).await?;
    let catalog = catalog(&ctx).await?;
    let values = Values::from_record(&key, &catalog);
    render_edit(&ctx, &key, &catalog, &values, None, StatusCode::OK).await
}

async fn render_edit(
    ctx: &Ctx,
    key: &KeyRecord,
    catalog: &Checklist,
    values: &Values,
    error: Option<&str>,
    status: StatusCode,
) -> Page {
    let account = account_view(ctx, &key.account_id).await?;
    let href = format!("/dashboard/keys/{}", key.id);
    let body = html! {
        (crumbs(ctx, &account, &[(&key.display_prefix, Some(href.clone())), ("Edit", None)]))
        div.page-head {
            h1 { "Edit " (key.name) }
            p.muted { code { (key.display_prefix) } " · " (key.environment.as_str()) " · the secret does not change" }
        }
        section.card {
            (form_error(error))
            form.key-form method="post" action={(href) "/edit"} {
                (csrf_field(ctx.session.csrf()))
                div.field {
                    label for="name" { "Name" }
                    input #name type="text" name="name" required maxlength="200" value=(values.name);
                }
                (access_fieldset(values, catalog))
                (allowlist_field(values))
                (expiry_fieldset(values, Some(key.expires_at)))
                (limits_fieldset(values))
                div.actions {
                    button.primary type="submit" { "Save changes" }
                    a.button href=(href) { "Cancel" }
                }
            }
        }
    };
    Ok(respond(
        status,
        page("Edit key", &ctx.chrome(), Nav::Keys, body),
    ))
}

/// The changes the form asks for, compared with the key as it is.
fn update_from(form: &Form, key: &KeyRecord) -> Result<KeyUpdate, Error> {
    let mut update = KeyUpdate::default();
    let name = form.get("name").unwrap_or("");
    if name != key.name {
        update.name = Some(name.to_owned());
    }
    match forms::access(form)? {
        Access::Scope(s) => {
            let same = PermissionSet::preset(&s).is_some_and(|p| p.to_strings() == key.permissions);
            if !same {
                update.scope = Some(s);
            }
        }
        Access::Permissions(list) => {
            let same = PermissionSet::parse(&list).is_ok_and(|p| p.to_strings() == key.permissions);
            if !same {
                update.permissions = Some(list);
            }
        }
    }
    let list = forms::allowlist(form);
    let same = IpAllowlist::parse(&list).is_ok_and(|l| l.to_strings() == key.ip_allowlist);
    if !same {
        update.ip_allowlist = Some(list);
    }
    if let Some(expiry) = forms::expiry(form, now_ms())? {
        if expiry != key.expires_at {
            update.expires_at = Some(expiry);
        }
    }
    let limit = forms::rate_limit(form)?;
    if limit != key.rate_limit {
        update.rate_limit = Some(limit);
    }
    // Only a changed quota is sent: a new quota restarts its refill clock.
    let quota = forms::quota(form)?;
    if quota != key.quota {
        update.quota = Some(quota);
    }
    Ok(update)
}

fn is_empty(u: &KeyUpdate) -> bool {
    u.name.is_none()
        && u.permissions.is_none()
        && u.scope.is_none()
        && u.ip_allowlist.is_none()
        && u.expires_at.is_none()
        && u.rate_limit.is_none()
        && u.quota.is_none()
}

/// `POST /dashboard/keys/{id}/edit`.
pub async fn edit(Path(key_id): Path<String>, Posted { ctx, form }: Posted) -> Page {
    let key = ctx.engine().get_key(&ctx.caller, &key_id).await?;
    let result = match update_from(&form, &key) {
        Ok(update) if is_empty(&update) => {
            ctx.flash("Nothing changed.").await;
            return Ok(see_other(&format!("/dashboard/keys/{key_id}")));
        }
        Ok(update) => ctx.engine().update_key(&ctx.caller, &key_id, update).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(updated) => {
            ctx.flash(format!("Key {} updated.", updated.display_prefix))
                .await;
            Ok(see_other(&format!("/dashboard/keys/{key_id}")))
        }
        Err(e) => {
            let (status, message) = inline_error(e)?;
            let catalog = catalog(&ctx).await?;
            let values = Values::from_form(&form);
            render_edit(&ctx, &key, &catalog, &values, Some(&message), status).await
        }
    }
}

// ---------------------------------------------------------------------------------------
// Revoke and rotate

/// `GET /dashboard/keys/{id}/revoke`: the confirmation (works without script).
pub async fn revoke_form(ctx: Ctx, Path(key_id): Path<String>) -> Page {
    let key = ctx.engine().get_key(&ctx.caller, &key_id).await?;
    let account = account_view(&ctx, &key.account_id).await?;
    let href = format!("/dashboard/keys/{}", key.id);
    let active = KeyStatus::of(&key, now_ms()) == KeyStatus::Active;
    let body = html! {
        (crumbs(&ctx, &account, &[(&key.display_prefix, Some(href.clone())), ("Revoke", None)]))
        section.card.narrow {
            h1 { "Revoke " (key.name) "?" }
            @if active {
                div.warning role="alert" {
                    strong { "This cannot be undone. " }
                    "Every request that carries " code { (key.display_prefix) "…" } " is refused from now on (401 Invalid API key). "
                    "Software that uses it stops working until it is given another key."
                }
                form method="post" action={(href) "/revoke"} {
                    (csrf_field(ctx.session.csrf()))
                    div.actions {
                        button.danger #confirm-revoke type="submit" { "Revoke permanently" }
                        a.button href=(href) { "Cancel" }
                    }
                }
            } @else {
                p { "This key is already " (KeyStatus::of(&key, now_ms()).as_str()) "." }
                a.button href=(href) { "Back to the key" }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page("Revoke key", &ctx.chrome(), Nav::Keys, body),
    ))
}

/// `POST /dashboard/keys/{id}/revoke`.
pub async fn revoke(Path(key_id): Path<String>, Posted { ctx, .. }: Posted) -> Page {
    let key = ctx.engine().revoke_key(&ctx.caller, &key_id).await?;
    ctx.flash(format!("Key {} revoked.", key.display_prefix))
        .await;
    Ok(see_other(&format!("/dashboard/keys/{key_id}")))
}

pub(super) const GRACE_CHOICES: &[(&str, &str)] = &[
    ("0", "None: the old key stops working now"),
    ("3600", "1 hour"),
    ("86400", "24 hours"),
    ("604800", "7 days"),
    ("2592000", "30 days"),
];

/// `GET /dashboard/keys/{id}/rotate`.
pub async fn rotate_form(ctx: Ctx, Path(key_id): Path<String>) -> Page {
    render_rotate(&ctx, &key_id, None, StatusCode::OK).await
}

async fn render_rotate(ctx: &Ctx, key_id: &str, error: Option<&str>, status: StatusCode) -> Page {
    let key = ctx.engine().get_key(&ctx.caller, key_id).await?;
    let account = account_view(ctx, &key.account_id).await?;
    let href = format!("/dashboard/keys/{}", key.id);
    let body = html! {
        (crumbs(ctx, &account, &[(&key.display_prefix, Some(href.clone())), ("Rotate", None)]))
        section.card.narrow {
            h1 { "Rotate " (key.name) }
            p {
                "Rotation makes a new key with the same settings and shows its secret once. "
                "The old key " code { (key.display_prefix) "…" } " is revoked, now or after a grace period "
                "while your software switches over."
            }
            (form_error(error))
            form method="post" action={(href) "/rotate"} {
                (csrf_field(ctx.session.csrf()))
                div.field {
                    label for="grace" { "Grace period for the old key" }
                    select #grace name="grace" {
                        @for (value, label) in GRACE_CHOICES { option value=(value) { (label) } }
                    }
                }
                div.actions {
                    button.primary type="submit" { "Rotate key" }
                    a.button href=(href) { "Cancel" }
                }
            }
        }
    };
    Ok(respond(
        status,
        page("Rotate key", &ctx.chrome(), Nav::Keys, body),
    ))
}

/// `POST /dashboard/keys/{id}/rotate` → 303 to the new key's secret page.
pub async fn rotate(Path(key_id): Path<String>, Posted { ctx, form }: Posted) -> Page {
    let result = match forms::grace(&form) {
        Ok(grace) => ctx.engine().rotate_key(&ctx.caller, &key_id, grace).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(rotated)
            if ctx.session_key_id() == Some(key_id.as_str())
                && rotated.previous.revoked_at.is_some_and(|at| at <= now_ms()) =>
        {
            // The session's own key just stopped working, and the session with it: show
            // the new secret in this answer (there is no next page to carry it to) and
            // sign out. Reloading re-sends a form whose session is gone: nothing happens.
            ctx.end_session().await?;
            let body = reveal_body(
                None,
                &rotated.key,
                rotated.secret.expose(),
                Some(&key_id),
                html! {
                    p { "The key you signed in with is replaced, so you are signed out. Sign in again with the new key." }
                    a.button.primary href="/dashboard/sign-in" { "Sign in" }
                },
            );
            Ok(secret_response(page(
                "Your rotated API key",
                &layout::Chrome::default(),
                Nav::None,
                body,
            )))
        }
        Ok(rotated) => {
            let new_id = rotated.key.id.clone();
            ctx.put_reveal(Reveal::new(new_id.clone(), rotated.secret, Some(key_id)))
                .await?;
            Ok(see_other(&format!("/dashboard/keys/{new_id}/secret")))
        }
        Err(e) => {
            let (status, message) = inline_error(e)?;
            render_rotate(&ctx, &key_id, Some(&message), status).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(3600), "1 hour");
        assert_eq!(human_duration(7 * 86_400), "7 days");
        assert_eq!(human_duration(90), "90 seconds");
        assert_eq!(human_duration(120), "2 minutes");
    }
}
