//! Every lifecycle operation: create, list, get, update, revoke, rotate (with and without
//! grace), expiry, plan caps (exact under concurrency), usage, audit log.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn, TestApp};

const READ_INVOICE: &str = "/api/v1/invoices/42";

async fn auth_status(app: &TestApp, key: &str) -> u16 {
    app.forward_auth(Some(key), "GET", READ_INVOICE)
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn create_shows_the_secret_once_and_lists_never() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let created = app
        .create_key_answer(
            &account,
            json!({"name": "Zapier Integration", "environment": "test", "permissions": ["invoices:read", "client.*"],
                   "ip_allowlist": ["10.1.2.3/8"], "expires_at": "2099-01-01T00:00:00Z", "meta": {"team": "ops"}}),
        )
        .await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.body);
    let secret = created.body["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("kg_test_") && secret.len() == 8 + 64);
    let b = &created.body;
    assert_eq!(b["display_prefix"], &secret[..16]);
    assert_eq!(b["permissions"], json!(["client.*", "invoices.read"]));
    assert_eq!(b["ip_allowlist"], json!(["10.0.0.0/8"]));
    assert_eq!(b["status"], "active");
    assert_eq!(b["expires_at"], "2099-01-01T00:00:00.000Z");
    assert_eq!(b["meta"], json!({"team": "ops"}));
    assert_eq!(b["last_used_at"], json!(null));
    let id = b["id"].as_str().unwrap();
    assert!(id.starts_with("key_") && account.starts_with("acct_"));

    let got = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
        .await;
    let listed = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={account}"),
            None,
        )
        .await;
    for body in [&got.body, &listed.body] {
        assert!(
            !body.to_string().contains(&secret[16..]),
            "secret leaked: {body}"
        );
    }
    assert_eq!(got.body["display_prefix"], b["display_prefix"]);
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert!(got.body.get("key").is_none());
}

#[tokio::test]
async fn updates_apply_at_once() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (id, key) = app.create_key(&account, json!({"scope": "read"})).await;
    assert_eq!(auth_status(&app, &key).await, 204);
    let p = app
        .admin(
            Method::PATCH,
            &format!("/v1/api-keys/{id}"),
            Some(json!({"name": "renamed", "permissions": ["invoices.create"]})),
        )
        .await;
    assert_eq!(p.status.as_u16(), 200, "{}", p.body);
    assert_eq!(p.body["name"], "renamed");
    // The cached key was invalidated by the update: the read permission is gone now.
    assert_eq!(auth_status(&app, &key).await, 403);
    assert_eq!(
        app.forward_auth(Some(&key), "POST", "/api/v1/invoices")
            .await
            .status
            .as_u16(),
        204
    );
    // Allowlist and expiry too; null clears the expiry.
    let p = app
        .admin(
            Method::PATCH,
            &format!("/v1/api-keys/{id}"),
            Some(json!({"ip_allowlist": ["192.0.2.1"], "expires_in": 3600})),
        )
        .await;
    assert_eq!(p.body["ip_allowlist"], json!(["192.0.2.1"]));
    assert!(p.body["expires_at"].is_string());
    assert_eq!(
        app.forward_auth(Some(&key), "POST", "/api/v1/invoices")
            .await
            .status
            .as_u16(),
        403
    );
    let p = app
        .admin(
            Method::PATCH,
            &format!("/v1/api-keys/{id}"),
            Some(json!({"ip_allowlist": [], "expires_at": null})),
        )
        .await;
    assert_eq!(p.body["expires_at"], json!(null));
    assert_eq!(
        app.forward_auth(Some(&key), "POST", "/api/v1/invoices")
            .await
            .status
            .as_u16(),
        204
    );
}

#[tokio::test]
async fn revoke_is_immediate_and_permanent() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (id, key) = app.create_key(&account, json!({"scope": "all"})).await;
    assert_eq!(auth_status(&app, &key).await, 204);
    let r = app
        .admin(Method::POST, &format!("/v1/api-keys/{id}/revoke"), None)
        .await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.body["status"], "revoked");
    assert!(r.body["revoked_at"].is_string());
    assert_eq!(auth_status(&app, &key).await, 401);
    // No update can bring it back, and revoking again changes nothing.
    for body in [
        json!({"name": "again"}),
        json!({"expires_at": null}),
        json!({"scope": "all"}),
    ] {
        app.admin(Method::PATCH, &format!("/v1/api-keys/{id}"), Some(body))
            .await
            .assert_error(409, "conflict");
    }
    app.admin(Method::POST, &format!("/v1/api-keys/{id}/rotate"), None)
        .await
        .assert_error(409, "conflict");
    let again = app
        .admin(Method::POST, &format!("/v1/api-keys/{id}/revoke"), None)
        .await;
    assert_eq!(
        (
            again.body["status"].clone(),
            again.body["revoked_at"].clone()
        ),
        ("revoked".into(), r.body["revoked_at"].clone())
    );
    assert_eq!(auth_status(&app, &key).await, 401);
    let listed = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={account}&status=revoked"),
            None,
        )
        .await;
    assert_eq!(listed.body["data"][0]["id"], id.as_str());
    let active = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={account}&status=active"),
            None,
        )
        .await;
    assert_eq!(active.body["data"], json!([]));
}

#[tokio::test]
async fn rotate_without_grace_revokes_the_old_key_now() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (id, old) = app
        .create_key(
            &account,
            json!({"permissions": ["invoices.read"], "name": "prod", "meta": {"a": 1}}),
        )
        .await;
    assert_eq!(auth_status(&app, &old).await, 204);
    let r = app
        .admin(Method::POST, &format!("/v1/api-keys/{id}/rotate"), None)
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let new = r.body["key"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(r.body["name"], "prod");
    assert_eq!(r.body["permissions"], json!(["invoices.read"]));
    assert_eq!(r.body["meta"], json!({"a": 1}));
    assert_eq!(r.body["rotated_from"], id.as_str());
    assert_eq!(r.body["previous"]["status"], "revoked");
    assert_eq!(auth_status(&app, &old).await, 401);
    assert_eq!(auth_status(&app, new).await, 204);
}

#[tokio::test]
async fn rotate_with_grace_keeps_the_old_key_until_it_ends() {
    let app = spawn().await;
    let account = app.create_account("Acme", "basic").await;
    let (id, old) = app.create_key(&account, json!({"scope": "all"})).await;
    // A second key fills the basic plan (2): rotation still works, it replaces a key.
    app.create_key(&account, json!({"scope": "all"})).await;
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            Some(json!({"grace_period_seconds": 2})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let new = r.body["key"].as_str().unwrap();
    assert_eq!(r.body["previous"]["status"], "active");
    assert!(r.body["previous"]["revoked_at"].is_string());
    assert_eq!(auth_status(&app, &old).await, 204);
    assert_eq!(auth_status(&app, new).await, 204);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(auth_status(&app, &old).await, 401);
    assert_eq!(auth_status(&app, new).await, 204);
    let got = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(got.body["status"], "revoked");
}

#[tokio::test]
async fn keys_expire() {
    let app = spawn().await;
    let account = app.create_account("Acme", "basic").await;
    let (id, key) = app
        .create_key(&account, json!({"scope": "all", "expires_in": 1}))
        .await;
    assert_eq!(auth_status(&app, &key).await, 204);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.forward_auth(Some(&key), "GET", READ_INVOICE)
        .await
        .assert_error(401, "invalid_key");
    let got = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(got.body["status"], "expired");
    // An expired key is over: it cannot be extended back to life.
    app.admin(
        Method::PATCH,
        &format!("/v1/api-keys/{id}"),
        Some(json!({"expires_in": 3600})),
    )
    .await
    .assert_error(409, "conflict");
    // And it no longer counts against the plan: two more keys fit in basic (2).
    app.create_key(&account, json!({})).await;
    app.create_key(&account, json!({})).await;
}

#[tokio::test]
async fn plan_caps_count_active_keys_only() {
    let app = spawn().await;
    let account = app.create_account("Acme", "basic").await;
    let (first, _) = app.create_key(&account, json!({})).await;
    app.create_key(&account, json!({})).await;
    let over = app.create_key_answer(&account, json!({})).await;
    over.assert_error(429, "plan_limit_reached");
    assert_eq!(over.body["error"], "API key limit reached for your plan");
    let acct = app
        .admin(Method::GET, &format!("/v1/accounts/{account}"), None)
        .await;
    assert_eq!(
        (
            acct.body["active_keys"].clone(),
            acct.body["max_keys"].clone()
        ),
        (json!(2), json!(2))
    );
    app.admin(Method::POST, &format!("/v1/api-keys/{first}/revoke"), None)
        .await;
    app.create_key(&account, json!({})).await;
    // Upgrading the plan lifts the cap.
    let up = app
        .admin(
            Method::PATCH,
            &format!("/v1/accounts/{account}"),
            Some(json!({"plan": "pro"})),
        )
        .await;
    assert_eq!(up.body["max_keys"], 20);
    app.create_key(&account, json!({})).await;
    app.admin(
        Method::PATCH,
        &format!("/v1/accounts/{account}"),
        Some(json!({"plan": "gold"})),
    )
    .await
    .assert_error(400, "validation_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_stop_exactly_at_the_cap() {
    let app = std::sync::Arc::new(spawn().await);
    let account = app.create_account("Acme", "pro").await;
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let app = app.clone();
            let account = account.clone();
            tokio::spawn(async move {
                app.create_key_answer(&account, json!({"name": format!("k{i}")}))
                    .await
                    .status
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        40,
        "{statuses:?}"
    );
    let listed = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={account}"),
            None,
        )
        .await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn usage_and_key_info_show_last_use() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (id, key) = app.create_key(&account, json!({"scope": "read"})).await;
    let before = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}/usage"), None)
        .await;
    assert_eq!(before.body["last_used_at"], json!(null));
    assert_eq!(auth_status(&app, &key).await, 204);
    let after = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}/usage"), None)
        .await;
    assert!(after.body["last_used_at"].is_string(), "{}", after.body);
    // Flushed to the store in a batch, not per request.
    assert_eq!(app.engine.flush_usage().await.unwrap(), 1);
    assert_eq!(app.engine.flush_usage().await.unwrap(), 0);
    let info = app
        .call(Method::GET, "/v1/api-key-info", Some(&key), None)
        .await;
    assert_eq!(info.body["data"]["id"], id.as_str());
    assert!(info.body["data"]["last_used_at"].is_string());
}

#[tokio::test]
async fn the_audit_log_records_every_change() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (id, _) = app.create_key(&account, json!({})).await;
    app.admin(
        Method::PATCH,
        &format!("/v1/api-keys/{id}"),
        Some(json!({"name": "x"})),
    )
    .await;
    let rotated = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            Some(json!({"grace_period_seconds": 60})),
        )
        .await;
    let new_id = rotated.body["id"].as_str().unwrap();
    app.admin(Method::POST, &format!("/v1/api-keys/{new_id}/revoke"), None)
        .await;
    app.admin(
        Method::PATCH,
        &format!("/v1/accounts/{account}"),
        Some(json!({"plan": "unlimited"})),
    )
    .await;
    let log = app
        .admin(
            Method::GET,
            &format!("/v1/audit-log?account_id={account}"),
            None,
        )
        .await;
    let actions: Vec<&str> = log.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "account.update",
            "key.revoke",
            "key.rotate",
            "key.update",
            "key.create",
            "account.create"
        ]
    );
    let first = &log.body["data"][0];
    assert_eq!(first["actor"], "admin");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert!(first["at"].is_string());
    // Pagination: two at a time, following next_before.
    let page = app
        .admin(
            Method::GET,
            &format!("/v1/audit-log?account_id={account}&limit=2"),
            None,
        )
        .await;
    let before = page.body["next_before"].as_i64().unwrap();
    let next = app
        .admin(
            Method::GET,
            &format!("/v1/audit-log?account_id={account}&limit=2&before={before}"),
            None,
        )
        .await;
    assert_eq!(next.body["data"][0]["action"], "key.rotate");
}

#[tokio::test]
async fn accounts_can_be_listed_read_and_renamed() {
    let app = spawn().await;
    let a = app.create_account("Acme", "pro").await;
    let b = app.create_account("Globex", "basic").await;
    let list = app.admin(Method::GET, "/v1/accounts", None).await;
    let ids: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.as_str(), b.as_str()]);
    let renamed = app
        .admin(
            Method::PATCH,
            &format!("/v1/accounts/{b}"),
            Some(json!({"name": "Globex Corp"})),
        )
        .await;
    assert_eq!(
        (renamed.body["name"].clone(), renamed.body["plan"].clone()),
        ("Globex Corp".into(), "basic".into())
    );
    app.admin(
        Method::GET,
        "/v1/accounts/acct_000000000000000000000000",
        None,
    )
    .await
    .assert_error(404, "not_found");
    let default_plan = app
        .admin(
            Method::POST,
            "/v1/accounts",
            Some(json!({"name": "NoPlan"})),
        )
        .await;
    assert_eq!(default_plan.body["plan"], "basic");
}
