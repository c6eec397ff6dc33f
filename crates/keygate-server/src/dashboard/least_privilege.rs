//! The least-privilege report on a key's page, and "Narrow to the suggestion": a normal key
//! update (CSRF-checked by [`Posted`], audited as `key.update` by the engine).

use axum::extract::Path;
use keygate_engine::manage::{KeyStatus, KeyUpdate, PermissionUsageReport};
use keygate_engine::now_ms;
use maud::{html, Markup};

use super::layout::{self, csrf_field};
use super::{see_other, Ctx, Page, Posted};

/// The report of `key_id` over the default window.
pub async fn report(ctx: &Ctx, key_id: &str) -> Result<PermissionUsageReport, super::Failure> {
    Ok(ctx
        .engine()
        .permission_usage(&ctx.caller, key_id, None)
        .await?)
}

/// The suggestion as one form value, to tell on submit whether it changed meanwhile.
fn fingerprint(suggested: &[String]) -> String {
    suggested.join(" ")
}

/// The "Least privilege" card of a key's page.
pub fn section(ctx: &Ctx, r: &PermissionUsageReport) -> Markup {
    let active = KeyStatus::of(&r.key, now_ms()) == KeyStatus::Active;
    let narrower = !r.suggested.is_empty() && r.suggested != r.granted;
    html! {
        section.card #least-privilege {
            h2 { "Least privilege, last " (r.days) " days" }
            @if r.used.is_empty() {
                p.empty { "No allowed request needed a permission in this window." }
            } @else {
                div.table-wrap {
                    table #permission-usage {
                        thead { tr { th scope="col" { "Permission used" } th scope="col" { "Requests" } th scope="col" { "Last used" } } }
                        tbody {
                            @for u in &r.used {
                                tr { td { code { (u.permission) } } td { (u.requests) } td { (layout::time(u.last_used_at)) } }
                            }
                        }
                    }
                }
            }
            dl.facts {
                dt { "Granted" } dd #granted { (layout::permissions(&r.granted)) }
                dt { "Unused grants" } dd #unused-grants { (layout::permissions(&r.unused_grants)) }
                dt { "Suggested" } dd #suggested { (layout::permissions(&r.suggested)) }
            }
            @if active && narrower {
                form method="post" action={"/dashboard/keys/" (r.key.id) "/narrow"} {
                    (csrf_field(ctx.session.csrf()))
                    input type="hidden" name="suggested" value=(fingerprint(&r.suggested));
                    div.actions {
                        button.primary #narrow type="submit" { "Narrow to the suggestion" }
                    }
                }
                p.muted { "Requests that need a permission outside the suggestion will be refused (403) from then on." }
            } @else if active && !r.used.is_empty() {
                p.muted { "The key holds nothing beyond what it used." }
            }
        }
    }
}

/// `POST /dashboard/keys/{id}/narrow`: sets the key's permissions to the suggestion, if it
/// is still the one the page showed.
pub async fn narrow(Path(key_id): Path<String>, Posted { ctx, form }: Posted) -> Page {
    let r = report(&ctx, &key_id).await?;
    let back = format!("/dashboard/keys/{key_id}");
    if r.suggested.is_empty() || form.get("suggested") != Some(fingerprint(&r.suggested).as_str()) {
        ctx.flash("The suggestion changed since the page was shown: review it again.")
            .await;
        return Ok(see_other(&back));
    }
    let update = KeyUpdate {
        permissions: Some(r.suggested),
        ..KeyUpdate::default()
    };
    let updated = ctx
        .engine()
        .update_key(&ctx.caller, &key_id, update)
        .await?;
    ctx.flash(format!(
        "Key {} narrowed to {}.",
        updated.display_prefix,
        updated.permissions.join(", ")
    ))
    .await;
    Ok(see_other(&back))
}
