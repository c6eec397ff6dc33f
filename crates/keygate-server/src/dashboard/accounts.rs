//! Accounts: the list (operator), creating one, changing its plan, and an account's keys.

use axum::extract::Path;
use axum::http::{StatusCode, Uri};
use keygate_core::Outcome;
use keygate_engine::manage::{
    AccountFilter, AccountPatch, KeyFilter, KeyStatus, NewAccount, PageRequest,
};
use keygate_engine::{now_ms, Error};
use keygate_store::{Account, KeyRecord};
use maud::{html, Markup};

use super::layout::{self, csrf_field, form_error, page, respond, Nav};
use super::{see_other, Ctx, Failure, Page, Posted};

/// "3 of 20 keys used".
fn usage_text(active: u64, cap: Option<u64>) -> String {
    match cap {
        Some(cap) => format!("{active} of {cap} keys used"),
        None => format!("{active} keys used (no limit)"),
    }
}

fn meter(active: u64, cap: Option<u64>) -> Markup {
    html! {
        div.usage {
            span.usage-text { (usage_text(active, cap)) }
            @if let Some(cap) = cap {
                meter min="0" max=(cap.max(1)) value=(active.min(cap)) high=(cap.saturating_sub(1).max(1)) optimum="0"
                    aria-label="Active keys against the plan's limit" {}
            }
        }
    }
}

fn plan_options(ctx: &Ctx, selected: &str) -> Markup {
    let plans = ctx.engine().plans();
    html! {
        @for name in plans.names() {
            option value=(name) selected[name == selected] {
                (name) " — " (match plans.max_keys(name) { Some(n) => format!("{n} keys"), None => "unlimited keys".to_owned() })
            }
        }
    }
}

/// `GET /dashboard/accounts`: the operator's list. A key session has one account: its own.
/// A page at a time (`?starting_after=`), like the API.
pub async fn list(ctx: Ctx, uri: Uri) -> Page {
    if let Some(own) = ctx.own_account() {
        return Ok(see_other(&format!("/dashboard/accounts/{own}")));
    }
    render_list(&ctx, page_request(&uri), None, StatusCode::OK).await
}

/// The page a dashboard list shows: the default size, after `?starting_after=`.
fn page_request(uri: &Uri) -> PageRequest {
    PageRequest {
        limit: None,
        starting_after: query_value(uri, "starting_after").map(str::to_owned),
    }
}

/// A query parameter's raw value (the dashboard's own links carry only ids and names).
fn query_value<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// "Next page" (and back to the first) under a paged table; `base` is the list's URL with
/// its filters, ending in `?` or `&`.
fn pager(base: &str, paged: bool, next: Option<&str>) -> Markup {
    html! {
        @if paged || next.is_some() {
            nav.pager aria-label="Pages" {
                @if paged { a.button href=(base.trim_end_matches(['?', '&'])) { "First page" } }
                @if let Some(id) = next { a.button rel="next" href={(base) "starting_after=" (id)} { "Next page" } }
            }
        }
    }
}

async fn render_list(
    ctx: &Ctx,
    page_request: PageRequest,
    error: Option<&str>,
    status: StatusCode,
) -> Page {
    let accounts = ctx
        .engine()
        .account_page(&ctx.caller, &AccountFilter::default(), &page_request)
        .await?;
    let next = accounts.next_cursor(|a| &a.id);
    let mut rows = Vec::with_capacity(accounts.items.len());
    for a in &accounts.items {
        let (active, cap) = ctx.engine().account_key_usage(a).await?;
        rows.push((a, active, cap));
    }
    let default_plan = ctx.engine().plans().default_plan().to_owned();
    let body = html! {
        div.page-head {
            h1 { "Accounts" }
            p.muted { "Each account is a customer business; its API keys belong to it, and its plan caps its active keys." }
        }
        section.card {
            h2 { "Create an account" }
            (form_error(error))
            form.row-form method="post" action="/dashboard/accounts" {
                (csrf_field(ctx.session.csrf()))
                div.field {
                    label for="account-name" { "Name" }
                    input #account-name type="text" name="name" required maxlength="200" placeholder="Acme Invoicing";
                }
                div.field {
                    label for="account-plan" { "Plan" }
                    select #account-plan name="plan" { (plan_options(ctx, &default_plan)) }
                }
                div.field.field-submit { button.primary type="submit" { "Create account" } }
            }
        }
        section.card {
            h2 { "All accounts" }
            @if rows.is_empty() {
                p.empty { "No accounts yet. Create the first one above." }
            } @else {
                div.table-wrap {
                    table #accounts-table {
                        thead { tr {
                            th scope="col" { "Name" } th scope="col" { "Plan" } th scope="col" { "API keys" }
                            th scope="col" { "Created" } th scope="col" { "ID" }
                        } }
                        tbody {
                            @for (a, active, cap) in &rows {
                                tr {
                                    th scope="row" { a href={"/dashboard/accounts/" (a.id)} { (a.name) } }
                                    td { (a.plan) }
                                    td { (usage_text(*active, *cap)) }
                                    td { (layout::time(a.created_at)) }
                                    td { code.id { (a.id) } }
                                }
                            }
                        }
                    }
                }
            }
            (pager("/dashboard/accounts?", page_request.starting_after.is_some(), next))
        }
    };
    Ok(respond(
        status,
        page("Accounts", &ctx.chrome(), Nav::Accounts, body),
    ))
}

/// `POST /dashboard/accounts`.
pub async fn create(Posted { ctx, form }: Posted) -> Page {
    let new = NewAccount {
        name: form.get("name").unwrap_or("").to_owned(),
        plan: form.get("plan").map(str::to_owned),
    };
    match ctx.engine().create_account(&ctx.caller, new).await {
        Ok(account) => {
            ctx.flash(format!("Account “{}” created.", account.name))
                .await;
            Ok(see_other(&format!("/dashboard/accounts/{}", account.id)))
        }
        Err(Error::Validation { message, .. }) => {
            render_list(
                &ctx,
                PageRequest::default(),
                Some(&message),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// An account as the page shows it. A key without `accounts.read` still sees its own
/// account's keys, only not the account's name and plan.
pub struct AccountView {
    pub id: String,
    pub account: Option<Account>,
    pub active: u64,
    pub cap: Option<u64>,
}

impl AccountView {
    pub fn title(&self) -> &str {
        self.account
            .as_ref()
            .map(|a| a.name.as_str())
            .unwrap_or("Your account")
    }
}

pub async fn account_view(ctx: &Ctx, id: &str) -> Result<AccountView, Failure> {
    if ctx.own_account().is_some_and(|own| own != id) {
        // Another account's id answers exactly like an unknown one.
        return Err(Error::NotFound("account").into());
    }
    match ctx.engine().get_account(&ctx.caller, id).await {
        Ok(account) => {
            let (active, cap) = ctx.engine().account_key_usage(&account).await?;
            Ok(AccountView {
                id: account.id.clone(),
                account: Some(account),
                active,
                cap,
            })
        }
        Err(Error::Refused(Outcome::InsufficientPermissions)) if ctx.own_account() == Some(id) => {
            let active = ctx
                .engine()
                .list_keys(&ctx.caller, Some(id), Some(KeyStatus::Active))
                .await?
                .len() as u64;
            Ok(AccountView {
                id: id.to_owned(),
                account: None,
                active,
                cap: None,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /dashboard/accounts/{id}?status=&starting_after=`: the account and a page of its
/// keys.
pub async fn show(ctx: Ctx, Path(id): Path<String>, uri: Uri) -> Page {
    let filter = query_value(&uri, "status").and_then(KeyStatus::parse);
    render_show(&ctx, &id, filter, page_request(&uri), None, StatusCode::OK).await
}

async fn render_show(
    ctx: &Ctx,
    id: &str,
    filter: Option<KeyStatus>,
    page_request: PageRequest,
    plan_error: Option<&str>,
    status: StatusCode,
) -> Page {
    let view = account_view(ctx, id).await?;
    let key_filter = KeyFilter {
        account_id: Some(id.to_owned()),
        status: filter,
        ..KeyFilter::default()
    };
    let keys = ctx
        .engine()
        .key_page(&ctx.caller, &key_filter, &page_request)
        .await?;
    let list_url = match filter {
        None => format!("/dashboard/accounts/{}?", view.id),
        Some(s) => format!("/dashboard/accounts/{}?status={}&", view.id, s.as_str()),
    };
    let title = if ctx.is_admin() {
        view.title().to_owned()
    } else {
        "API Keys".to_owned()
    };
    let body = html! {
        @if ctx.is_admin() {
            nav.crumbs aria-label="Breadcrumb" { a href="/dashboard/accounts" { "Accounts" } " / " span { (view.title()) } }
        }
        div.page-head {
            h1 { (title) }
            p.muted {
                @if !ctx.is_admin() { (view.title()) " · " }
                code.id { (view.id) }
                @if let Some(a) = &view.account { " · plan " strong { (a.plan) } }
            }
            (meter(view.active, view.cap))
        }
        @if ctx.is_admin() {
            @if let Some(a) = &view.account {
                section.card {
                    h2 { "Plan" }
                    (form_error(plan_error))
                    form.row-form method="post" action={"/dashboard/accounts/" (view.id) "/plan"} {
                        (csrf_field(ctx.session.csrf()))
                        div.field {
                            label for="plan" { "Plan" }
                            select #plan name="plan" { (plan_options(ctx, &a.plan)) }
                        }
                        div.field.field-submit { button type="submit" { "Change plan" } }
                    }
                }
            }
        }
        section.card {
            div.section-head {
                h2 #keys-heading { "API keys" }
                a.button.primary href={"/dashboard/accounts/" (view.id) "/keys/new"} { "Create API key" }
            }
            nav.filters aria-label="Filter keys by status" {
                @for (label, value) in [("All", None), ("Active", Some(KeyStatus::Active)), ("Revoked", Some(KeyStatus::Revoked)), ("Expired", Some(KeyStatus::Expired))] {
                    @let href = match value {
                        None => format!("/dashboard/accounts/{}", view.id),
                        Some(s) => format!("/dashboard/accounts/{}?status={}", view.id, s.as_str()),
                    };
                    a.filter href=(href) aria-current=[(value == filter).then_some("page")] { (label) }
                }
            }
            (keys_table(&keys.items, filter))
            (pager(&list_url, page_request.starting_after.is_some(), keys.next_cursor(|k| &k.id)))
        }
    };
    Ok(respond(
        status,
        page(&title, &ctx.chrome(), Nav::Keys, body),
    ))
}

fn keys_table(keys: &[KeyRecord], filter: Option<KeyStatus>) -> Markup {
    let now = now_ms();
    html! {
        @if keys.is_empty() {
            p.empty {
                @match filter {
                    None => "No API keys yet.",
                    Some(s) => { "No " (s.as_str()) " keys." }
                }
            }
        } @else {
            div.table-wrap {
                table #keys-table aria-labelledby="keys-heading" {
                    thead { tr {
                        th scope="col" { "Key" } th scope="col" { "Name" } th scope="col" { "Environment" }
                        th scope="col" { "Permissions" } th scope="col" { "Status" } th scope="col" { "Created" }
                        th scope="col" { "Last used" } th scope="col" { "Expires" }
                    } }
                    tbody {
                        @for k in keys {
                            @let status = KeyStatus::of(k, now);
                            tr data-key-id=(k.id) {
                                th scope="row" { a href={"/dashboard/keys/" (k.id)} { code { (k.display_prefix) } } }
                                td { (k.name) }
                                td { span class={"env env-" (k.environment.as_str())} { (k.environment.as_str()) } }
                                td.perms { (short_permissions(&k.permissions)) }
                                td.status { (layout::status_badge(status)) (layout::leaked_badge(k.leaked_at)) }
                                td { (layout::time(k.created_at)) }
                                td { (layout::opt_time(k.last_used_at, "never")) }
                                td { (layout::opt_time(k.expires_at, "never")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn short_permissions(list: &[String]) -> Markup {
    const SHOWN: usize = 4;
    html! {
        (layout::permissions(&list[..list.len().min(SHOWN)]))
        @if list.len() > SHOWN { span.muted { " +" (list.len() - SHOWN) " more" } }
    }
}

/// `POST /dashboard/accounts/{id}/plan`.
pub async fn change_plan(Path(id): Path<String>, Posted { ctx, form }: Posted) -> Page {
    let patch = AccountPatch {
        name: None,
        plan: form.get("plan").map(str::to_owned),
    };
    match ctx.engine().update_account(&ctx.caller, &id, patch).await {
        Ok(account) => {
            ctx.flash(format!("Plan changed to {}.", account.plan))
                .await;
            Ok(see_other(&format!("/dashboard/accounts/{id}")))
        }
        Err(Error::Validation { message, .. }) => {
            render_show(
                &ctx,
                &id,
                None,
                PageRequest::default(),
                Some(&message),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}
