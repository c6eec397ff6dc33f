//! Webhooks (operator only, read-only): the endpoints and each one's recent deliveries.
//! Endpoints are created and changed through the API (`/v1/webhook-endpoints`).

use axum::extract::Path;
use axum::http::StatusCode;
use keygate_engine::manage::PageRequest;
use keygate_store::{Delivery, DeliveryStatus, WebhookEndpoint};
use maud::{html, Markup};

use super::layout::{opt_time, page, respond, time, Nav};
use super::{Ctx, Page};

/// Deliveries shown per endpoint page.
const RECENT: i64 = 100;

fn events_text(e: &WebhookEndpoint) -> String {
    if e.events.is_empty() {
        "every event".to_owned()
    } else {
        e.events.join(", ")
    }
}

fn state_badge(e: &WebhookEndpoint) -> Markup {
    let (class, text) = if e.disabled_at.is_some() {
        ("badge badge-revoked", "disabled")
    } else {
        ("badge badge-active", "enabled")
    };
    html! { span class=(class) { (text) } }
}

fn delivery_badge(d: &Delivery) -> Markup {
    let class = match d.status {
        DeliveryStatus::Delivered => "badge badge-active",
        DeliveryStatus::Pending => "badge badge-expired",
        DeliveryStatus::Failed => "badge badge-revoked",
    };
    html! { span class=(class) { (d.status.as_str()) } }
}

/// `GET /dashboard/webhooks`.
pub async fn list(ctx: Ctx) -> Page {
    let endpoints = ctx
        .engine()
        .webhook_endpoint_page(&ctx.caller, &PageRequest::default())
        .await?;
    let body = html! {
        section.card {
            h1 { "Webhooks" }
            p.muted { "Lifecycle events are sent to these endpoints, signed per Standard Webhooks. Manage them with the API: " code { "/v1/webhook-endpoints" } "." }
            @if endpoints.items.is_empty() {
                p { "No endpoints yet." }
            } @else {
                table {
                    thead { tr { th { "URL" } th { "Events" } th { "Account" } th { "State" } th { "Created" } } }
                    tbody {
                        @for e in &endpoints.items {
                            tr {
                                td { a href={"/dashboard/webhooks/" (e.id)} { (e.url) } }
                                td { (events_text(e)) }
                                td { @match &e.account_id { Some(a) => code { (a) }, None => span.muted { "all" } } }
                                td { (state_badge(e)) }
                                td { (time(e.created_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page("Webhooks", &ctx.chrome(), Nav::Webhooks, body),
    ))
}

/// `GET /dashboard/webhooks/{id}`: one endpoint and its deliveries.
pub async fn show(ctx: Ctx, Path(id): Path<String>) -> Page {
    let endpoint = ctx.engine().webhook_endpoint(&ctx.caller, &id).await?;
    let deliveries = ctx
        .engine()
        .webhook_delivery_page(
            &ctx.caller,
            &id,
            &PageRequest {
                limit: Some(RECENT),
                starting_after: None,
            },
        )
        .await?;
    let body = html! {
        section.card {
            h1 { "Webhook endpoint" }
            dl {
                dt { "URL" } dd { code { (endpoint.url) } }
                @if let Some(d) = &endpoint.description { dt { "Description" } dd { (d) } }
                dt { "Events" } dd { (events_text(&endpoint)) }
                dt { "State" } dd {
                    (state_badge(&endpoint))
                    @if let Some(reason) = &endpoint.disabled_reason { " " span.muted { (reason) } }
                }
                dt { "Failing since" } dd { (opt_time(endpoint.failing_since, "not failing")) }
            }
        }
        section.card {
            h2 { "Deliveries" }
            @if deliveries.items.is_empty() {
                p { "No deliveries yet." }
            } @else {
                table {
                    thead { tr { th { "Event" } th { "Status" } th { "Attempts" } th { "Last answer" } th { "Last attempt" } th { "Created" } } }
                    tbody {
                        @for d in &deliveries.items {
                            tr {
                                td { code { (d.event_type) } " " span.muted { (d.event_id) } }
                                td { (delivery_badge(d)) }
                                td { (d.attempts) }
                                td {
                                    @match (d.last_status_code, &d.last_error) {
                                        (Some(code), _) => { "HTTP " (code) }
                                        (None, Some(error)) => { span.muted { (error) } }
                                        (None, None) => { span.muted { "—" } }
                                    }
                                }
                                td { (opt_time(d.last_attempt_at, "not yet")) }
                                td { (time(d.created_at)) }
                            }
                        }
                    }
                }
            }
            p { a href="/dashboard/webhooks" { "All endpoints" } }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page("Webhook endpoint", &ctx.chrome(), Nav::Webhooks, body),
    ))
}
