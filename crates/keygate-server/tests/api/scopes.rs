//! The reference docs' scope presets and permission examples against real request paths.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn, TestApp};

/// Asserts, for each (method, path, allowed), what forward-auth answers for `key`.
async fn check(app: &TestApp, key: &str, cases: &[(&str, &str, bool)]) {
    for (method, path, allowed) in cases {
        let a = app.forward_auth(Some(key), method, path).await;
        let want = if *allowed { 204 } else { 403 };
        assert_eq!(a.status.as_u16(), want, "{method} {path}: {}", a.body);
    }
}

async fn key_with(app: &TestApp, account: &str, grant: serde_json::Value) -> String {
    app.create_key(account, grant).await.1
}

#[tokio::test]
async fn online_invoice_maker_presets() {
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    let read = key_with(&app, &acct, json!({"scope": "read"})).await;
    check(
        &app,
        &read,
        &[
            ("GET", "/api/v1/invoices", true),
            ("GET", "/api/v1/invoices/42", true),
            ("GET", "/api/v1/quotations/7", true),
            ("GET", "/api/v1/customers", true),
            ("POST", "/api/v1/invoices", false),
            ("DELETE", "/api/v1/invoices/42", false),
            ("GET", "/api/v1/webhooks", false),
        ],
    )
    .await;
    let write = key_with(&app, &acct, json!({"scope": "write"})).await;
    check(
        &app,
        &write,
        &[
            ("GET", "/api/v1/invoices/42", true),
            ("POST", "/api/v1/invoices", true),
            ("PUT", "/api/v1/invoices/42", true),
            ("PATCH", "/api/v1/customers/3", true),
            ("DELETE", "/api/v1/quotations/7", true),
            ("GET", "/api/v1/webhooks", false),
            ("POST", "/api/v1/webhooks", false),
        ],
    )
    .await;
    let hooks = key_with(&app, &acct, json!({"scope": "webhooks"})).await;
    check(
        &app,
        &hooks,
        &[
            ("GET", "/api/v1/webhooks", true),
            ("POST", "/api/v1/webhooks", true),
            ("DELETE", "/api/v1/webhooks/9", true),
            ("GET", "/api/v1/invoices", false),
        ],
    )
    .await;
    let all = key_with(&app, &acct, json!({"scope": "all"})).await;
    check(
        &app,
        &all,
        &[
            ("GET", "/api/v1/invoices/42", true),
            ("DELETE", "/api/v1/webhooks/9", true),
            ("OPTIONS", "/api/v1/invoices", true),
            ("GET", "/", true),
        ],
    )
    .await;
}

#[tokio::test]
async fn invoicing_admin_permission_examples() {
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    let client_all = key_with(&app, &acct, json!({"permissions": ["client.*"]})).await;
    check(
        &app,
        &client_all,
        &[
            ("GET", "/api/v1/clients", true),
            ("POST", "/api/v1/clients", true),
            ("PUT", "/api/v1/clients/5", true),
            ("DELETE", "/api/v1/clients/5", true),
            ("GET", "/api/v1/invoices/42", false),
        ],
    )
    .await;
    let invoice_read = key_with(&app, &acct, json!({"permissions": ["invoice.read"]})).await;
    check(
        &app,
        &invoice_read,
        &[
            ("GET", "/api/v1/invoices/42", true),
            ("HEAD", "/api/v1/invoices", true),
            ("POST", "/api/v1/invoices", false),
            ("GET", "/api/v1/clients", false),
        ],
    )
    .await;
    let star = key_with(&app, &acct, json!({"permissions": ["*"]})).await;
    check(
        &app,
        &star,
        &[
            ("DELETE", "/api/v1/anything/1", true),
            ("GET", "/api/v1/webhooks", true),
        ],
    )
    .await;
}

#[tokio::test]
async fn ordermonk_scopes() {
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    let key = key_with(
        &app,
        &acct,
        json!({"permissions": ["products:read", "inventory:write"]}),
    )
    .await;
    check(
        &app,
        &key,
        &[
            ("GET", "/v1/products", true),
            ("POST", "/v1/products", false),
            ("PUT", "/v1/inventory/12", true),
            ("GET", "/v1/inventory/12", false),
            ("GET", "/v1/orders", false),
        ],
    )
    .await;
}

#[tokio::test]
async fn route_table_overrides_and_no_permissions() {
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    // The test server maps POST /api/v1/invoices/{id}/send to invoices.send.
    let creator = key_with(&app, &acct, json!({"permissions": ["invoices.create"]})).await;
    let sender = key_with(&app, &acct, json!({"permissions": ["invoices.send"]})).await;
    check(
        &app,
        &creator,
        &[
            ("POST", "/api/v1/invoices/42/send", false),
            ("POST", "/api/v1/invoices", true),
        ],
    )
    .await;
    check(
        &app,
        &sender,
        &[
            ("POST", "/api/v1/invoices/42/send", true),
            ("POST", "/api/v1/invoices", false),
        ],
    )
    .await;
    // No permissions is not all permissions.
    let none = key_with(&app, &acct, json!({})).await;
    let created = app.admin(Method::GET, "/v1/api-keys", None).await;
    assert!(created.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["permissions"] == json!([])));
    check(
        &app,
        &none,
        &[("GET", "/api/v1/invoices", false), ("GET", "/", false)],
    )
    .await;
    // Without the original request, forward-auth lets only a `*` key through.
    let star = key_with(&app, &acct, json!({"scope": "all"})).await;
    for (key, status) in [(&none, 403), (&creator, 403), (&star, 204)] {
        let r = app
            .client
            .get(app.url("/v1/auth"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
    }
}

#[tokio::test]
async fn path_tricks_do_not_escape_a_scope() {
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    let invoices = key_with(&app, &acct, json!({"permissions": ["invoices.read"]})).await;
    check(
        &app,
        &invoices,
        &[
            ("GET", "/api/v1/invoices/../webhooks", false),
            ("GET", "/api/v1/invoices/%2e%2e/webhooks", false),
            ("GET", "/api/v1//invoices//1", true),
            ("GET", "/api/v1/%69nvoices/1", true),
            ("GET", "/api/v1/INVOICES/1", true),
        ],
    )
    .await;
}

/// Issue 16: permissions come back as the operator wrote them (only `:` becomes `.`), on
/// every surface that shows them, and plural and singular resource names still match.
#[tokio::test]
async fn permissions_come_back_as_written() {
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    let written = json!(["clients.*", "invoices.read", "orders.read"]);
    let (id, key) = app
        .create_key(
            &acct,
            json!({"permissions": ["invoices.read", "clients.*", "orders:read"]}),
        )
        .await;
    let one = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(one.body["permissions"], written, "{}", one.body);
    let list = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={acct}"),
            None,
        )
        .await;
    let listed = list.body["data"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("key not listed: {}", list.body));
    assert_eq!(listed["permissions"], written);
    let verified = app.verify(json!({"key": key})).await;
    assert_eq!(verified.body["permissions"], written, "{}", verified.body);
    let forwarded = app
        .forward_auth(Some(&key), "GET", "/api/v1/invoices")
        .await;
    assert_eq!(forwarded.status.as_u16(), 204, "{}", forwarded.body);
    assert_eq!(
        forwarded.header("x-keygate-permissions"),
        Some("clients.*,invoices.read,orders.read")
    );
    // A plural grant allows a singular-resource route; a singular grant (the form keys
    // stored before 0.2 hold) allows a plural one.
    check(
        &app,
        &key,
        &[
            ("GET", "/api/v1/invoice/42", true),
            ("DELETE", "/api/v1/client/5", true),
            ("GET", "/api/v1/order", true),
            ("POST", "/api/v1/invoice", false),
        ],
    )
    .await;
    let singular = key_with(&app, &acct, json!({"permissions": ["invoice.read"]})).await;
    check(
        &app,
        &singular,
        &[
            ("GET", "/api/v1/invoices/42", true),
            ("GET", "/api/v1/invoice/42", true),
            ("POST", "/api/v1/invoices", false),
        ],
    )
    .await;
}
