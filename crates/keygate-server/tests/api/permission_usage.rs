//! The least-privilege report (`GET /v1/api-keys/{id}/permission-usage`): verification
//! counts the permission each allowed request needed, flushed with usage; the report names
//! what was used, the unused grants and the narrowest suggestion, which narrowing applies.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn, Answer, TestApp};

const DAY_MS: i64 = 86_400_000;

async fn report(app: &TestApp, credential: &str, id: &str, query: &str) -> Answer {
    app.call(
        Method::GET,
        &format!("/v1/api-keys/{id}/permission-usage{query}"),
        Some(credential),
        None,
    )
    .await
}

/// `used` as (permission, requests), in the answer's order.
fn used(a: &Answer) -> Vec<(String, i64)> {
    a.body["used"]
        .as_array()
        .unwrap_or_else(|| panic!("no used list: {}", a.body))
        .iter()
        .map(|u| {
            (
                u["permission"].as_str().unwrap().to_owned(),
                u["requests"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect()
}

#[tokio::test]
async fn a_wide_key_used_only_for_reads_is_suggested_reads_and_narrowing_applies_it() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (id, key) = app
        .create_key(
            &account,
            json!({"permissions": ["invoices.*", "clients.read"]}),
        )
        .await;
    let admin = app.admin_token.clone();
    app.forward_auth_times(&key, "GET", "/api/v1/invoices/42", 3, 204)
        .await;
    app.forward_auth_times(&key, "GET", "/api/v1/invoices?page=2", 2, 204)
        .await;
    // Refused requests used nothing.
    app.forward_auth_times(&key, "POST", "/api/v1/clients", 2, 403)
        .await;
    // Only validity asked: no permission needed.
    assert!(app.verify(json!({"key": key})).await.body["valid"]
        .as_bool()
        .unwrap());

    // Counted in memory first; the same numbers come from the store after the flush.
    let before = report(&app, &admin, &id, "").await;
    app.engine.flush_usage().await.unwrap();
    let stored = app.store.permission_usage(&id, 0).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|u| (u.permission.as_str(), u.requests))
            .collect::<Vec<_>>(),
        [("invoices.read", 5)],
        "written to the database by the usage flush"
    );
    let after = report(&app, &admin, &id, "?days=30").await;
    for r in [&before, &after] {
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        assert_eq!(r.body["key_id"], json!(id));
        assert_eq!(r.body["days"], 30);
        assert_eq!(r.body["granted"], json!(["clients.read", "invoices.*"]));
        assert_eq!(used(r), pairs(&[("invoices.read", 5)]));
        assert_eq!(r.body["unused_grants"], json!(["clients.read"]));
        assert_eq!(r.body["suggested"], json!(["invoices.read"]));
        let last = r.body["used"][0]["last_used_at"].as_str().unwrap();
        assert!(last.ends_with('Z'), "{last}");
    }

    // A route-table permission (`invoices.send`) joins the suggestion; nothing is widened to
    // `invoices.*` although the key holds it.
    app.forward_auth_times(&key, "POST", "/api/v1/invoices/42/send", 1, 204)
        .await;
    let r = report(&app, &admin, &id, "").await;
    assert_eq!(
        used(&r),
        pairs(&[("invoices.read", 5), ("invoices.send", 1)])
    );
    assert_eq!(
        r.body["suggested"],
        json!(["invoices.read", "invoices.send"])
    );

    // Narrowing is a normal update, audited.
    let narrowed = app
        .admin(
            Method::PATCH,
            &format!("/v1/api-keys/{id}"),
            Some(json!({"permissions": r.body["suggested"]})),
        )
        .await;
    assert_eq!(narrowed.status.as_u16(), 200, "{}", narrowed.body);
    app.forward_auth_times(&key, "GET", "/api/v1/invoices/42", 1, 204)
        .await;
    app.forward_auth_times(&key, "DELETE", "/api/v1/invoices/42", 1, 403)
        .await;
    app.forward_auth_times(&key, "GET", "/api/v1/clients/1", 1, 403)
        .await;
    let r = report(&app, &admin, &id, "").await;
    assert_eq!(r.body["granted"], json!(["invoices.read", "invoices.send"]));
    assert_eq!(r.body["unused_grants"], json!([]));
    assert_eq!(r.body["suggested"], r.body["granted"]);
    let log = app
        .admin(
            Method::GET,
            &format!("/v1/audit-log?target_id={id}&limit=1"),
            None,
        )
        .await;
    assert_eq!(log.body["data"][0]["action"], "key.update", "{}", log.body);
}

#[tokio::test]
async fn a_request_no_route_maps_needs_everything() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (id, key) = app.create_key(&account, json!({"scope": "all"})).await;
    app.forward_auth_times(&key, "GET", "/", 1, 204).await;
    app.forward_auth_times(&key, "GET", "/api/v1/invoices/1", 1, 204)
        .await;
    let r = report(&app, &app.admin_token, &id, "").await;
    assert_eq!(used(&r), pairs(&[("*", 1), ("invoices.read", 1)]));
    assert_eq!(r.body["suggested"], json!(["*"]));
    assert_eq!(r.body["unused_grants"], json!([]));
}

#[tokio::test]
async fn a_key_with_no_allowed_requests_gets_an_empty_suggestion() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (id, key) = app
        .create_key(&account, json!({"permissions": ["invoices.read"]}))
        .await;
    app.forward_auth_times(&key, "DELETE", "/api/v1/invoices/1", 2, 403)
        .await;
    let r = report(&app, &app.admin_token, &id, "?days=1").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["used"], json!([]));
    assert_eq!(r.body["unused_grants"], json!(["invoices.read"]));
    assert_eq!(r.body["suggested"], json!([]));
}

#[tokio::test]
async fn days_outside_one_to_the_retention_are_refused_naming_the_field() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (id, _) = app.create_key(&account, json!({"scope": "read"})).await;
    for bad in ["0", "91", "-1", "abc", "1.5", "99999999999", ""] {
        // `?days=` is a value, and not a valid one.
        let r = report(&app, &app.admin_token, &id, &format!("?days={bad}")).await;
        r.assert_error(400, "validation_error");
        assert_eq!(r.body["field"], "days", "days={bad}: {}", r.body);
    }
    let r = report(&app, &app.admin_token, &id, "?day=3").await;
    r.assert_error(400, "validation_error");
    for good in ["1", "90"] {
        let r = report(&app, &app.admin_token, &id, &format!("?days={good}")).await;
        assert_eq!(r.status.as_u16(), 200, "days={good}: {}", r.body);
    }
    // Unknown key: as for usage.
    report(
        &app,
        &app.admin_token,
        "key_000000000000000000000000",
        "?days=3",
    )
    .await
    .assert_error(404, "not_found");
}

#[tokio::test]
async fn a_self_service_key_sees_its_own_accounts_reports_only() {
    let app = spawn().await;
    let a = app.create_account("A", "unlimited").await;
    let b = app.create_account("B", "unlimited").await;
    let (manager_id, manager) = app
        .create_key(
            &a,
            json!({"permissions": ["api_keys.read", "invoices.read"]}),
        )
        .await;
    let (sibling, _) = app.create_key(&a, json!({"scope": "read"})).await;
    let (other, _) = app.create_key(&b, json!({"scope": "read"})).await;
    let (_, plain) = app
        .create_key(&a, json!({"permissions": ["invoices.read"]}))
        .await;
    app.forward_auth_times(&manager, "GET", "/api/v1/invoices", 2, 204)
        .await;

    let own = report(&app, &manager, &manager_id, "").await;
    assert_eq!(own.status.as_u16(), 200, "{}", own.body);
    // Management calls count too: narrowing must not take away what they need.
    assert_eq!(
        used(&own),
        pairs(&[("invoices.read", 2), ("api_keys.read", 1)])
    );
    assert_eq!(own.body["unused_grants"], json!([]));
    assert_eq!(
        own.body["suggested"],
        json!(["api_keys.read", "invoices.read"])
    );
    assert_eq!(
        report(&app, &manager, &sibling, "").await.status.as_u16(),
        200
    );
    // Another account's key answers exactly like an unknown one.
    let theirs = report(&app, &manager, &other, "").await;
    theirs.assert_error(404, "not_found");
    let unknown = report(&app, &manager, "key_000000000000000000000000", "").await;
    assert_eq!(
        without_request_id(&theirs.body),
        without_request_id(&unknown.body)
    );
    // A key without api_keys.read may not read reports, not even its own.
    report(&app, &plain, &manager_id, "")
        .await
        .assert_error(403, "insufficient_permissions");
}

fn without_request_id(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("request_id");
    }
    v
}

/// Permission counts go with the usage retention: the flush's prune deletes days that
/// ended before it, and keeps the rest.
#[tokio::test]
async fn permission_counts_are_pruned_with_the_usage_retention() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (id, _) = app.create_key(&account, json!({"scope": "read"})).await;
    let now = keygate_engine::now_ms();
    let today = now - now.rem_euclid(DAY_MS);
    let count = |bucket: i64, permission: &str| keygate_store::PermissionCount {
        bucket,
        permission: permission.to_owned(),
        count: 4,
        last_used_at: bucket + 1,
    };
    app.store
        .record_usage(&[keygate_store::UsageUpdate {
            key_id: id.clone(),
            permissions: vec![
                count(today - 100 * DAY_MS, "invoices.read"),
                count(today - 10 * DAY_MS, "clients.read"),
                count(today, "clients.read"),
            ],
            ..Default::default()
        }])
        .await
        .unwrap();
    let all = app.store.permission_usage(&id, 0).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    // The test server keeps 90 days of usage.
    app.store.prune_usage(now - 90 * DAY_MS).await.unwrap();
    let kept = app.store.permission_usage(&id, 0).await.unwrap();
    assert_eq!(
        kept.iter()
            .map(|u| (u.permission.as_str(), u.requests, u.last_used_at))
            .collect::<Vec<_>>(),
        [("clients.read", 8, today + 1)]
    );
    // The window: 1 day is today only.
    let r = report(&app, &app.admin_token, &id, "?days=1").await;
    assert_eq!(used(&r), pairs(&[("clients.read", 4)]));
    let r = report(&app, &app.admin_token, &id, "?days=11").await;
    assert_eq!(used(&r), pairs(&[("clients.read", 8)]));
}
