//! `POST /v1/api-keys/import`: keys from another system over HTTP, verified through the
//! server's entry points (`/v1/verify`, forward-auth) before and after their upgrade.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{answer, spawn, TestApp};

async fn import(app: &TestApp, credential: &str, body: &str) -> crate::helpers::Answer {
    let response = app
        .client
        .post(app.url("/v1/api-keys/import"))
        .bearer_auth(credential)
        .header("content-type", "application/x-ndjson")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    answer(response).await
}

#[tokio::test]
async fn imported_keys_verify_through_the_http_entry_points() {
    let app = spawn().await;
    let account = app.create_account("invoicing", "unlimited").await;
    // Outside keygate's format, and nothing imported yet: malformed, as before.
    let legacy_key = format!("inv_{}", "5a".repeat(32));
    let v = app.verify(json!({"key": legacy_key})).await;
    assert_eq!(v.body["code"], "malformed_key", "{}", v.body);

    let file = [
        json!({"account_id": account, "name": "from invoicing", "hash": format!("plaintext:{legacy_key}"),
               "permissions": ["invoices.read"], "lookup_prefix": &legacy_key[..8]}),
        json!({"account_id": account, "name": "sha", "hash": format!("sha256:{}", "00".repeat(32))}),
    ]
    .map(|l| l.to_string())
    .join("\n");
    let a = import(&app, &app.admin_token, &file).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"keys": 2, "imported": 2, "already_present": 0})
    );
    let again = import(&app, &app.admin_token, &file).await;
    assert_eq!(
        again.body,
        json!({"keys": 2, "imported": 0, "already_present": 2})
    );

    let v = app.verify(json!({"key": legacy_key})).await;
    assert_eq!(v.body["valid"], true, "{}", v.body);
    let fa = app
        .forward_auth(Some(&legacy_key), "GET", "/v1/invoices/1")
        .await;
    assert_eq!(fa.status, StatusCode::NO_CONTENT);
    let fa = app
        .forward_auth(Some(&legacy_key), "DELETE", "/v1/invoices/1")
        .await;
    fa.assert_error(403, "insufficient_permissions");
    let wrong = format!("inv_{}", "5b".repeat(32));
    let v = app.verify(json!({"key": wrong})).await;
    assert_eq!(v.body["code"], "invalid_key", "{}", v.body);

    // The key appears in the key list like any other, with its lookup prefix shown.
    let list = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={account}"),
            None,
        )
        .await;
    let names: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert!(names.contains(&"from invoicing"), "{}", list.body);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("keygate_legacy_verifications_total{scheme=\"bcrypt\",result=\"match\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_bad_file_is_a_400_naming_line_and_field_and_only_the_admin_imports() {
    let app = spawn().await;
    let account = app.create_account("invoicing", "unlimited").await;
    let file = format!(
        "{}\n{}",
        json!({"account_id": account, "name": "ok", "hash": format!("sha256:{}", "11".repeat(32))}),
        json!({"account_id": account, "name": "bad", "hash": "sha256:xyz"}),
    );
    let a = import(&app, &app.admin_token, &file).await;
    a.assert_error(400, "validation_error");
    assert_eq!(a.body["field"], "hash");
    assert!(
        a.body["error"].as_str().unwrap().contains("line 2: hash:"),
        "{}",
        a.body
    );
    let keys = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={account}"),
            None,
        )
        .await;
    assert_eq!(keys.body["data"], json!([]), "nothing was written");

    let (_, own_key) = app
        .create_key(&account, json!({"permissions": ["*"]}))
        .await;
    let a = import(&app, &own_key, &file).await;
    a.assert_error(403, "forbidden");
    let a = import(&app, "wrong-admin-token", "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = import(&app, &app.admin_token, "\n\n").await;
    a.assert_error(400, "validation_error");
}
