//! Every outcome code of the SPEC table, through forward-auth (`/v1/auth`) and
//! `POST /v1/verify`.

use keygate_core::Environment;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{answer, spawn, unknown_key, Answer, TestApp};

const READ_INVOICE: &str = "/api/v1/invoices/42";

async fn setup() -> (TestApp, String) {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    (app, account)
}

/// An error body without its request id, to compare answers.
fn without_request_id(a: &Answer) -> Value {
    let mut body = a.body.clone();
    body.as_object_mut().unwrap().remove("request_id");
    body
}

#[tokio::test]
async fn valid_keys_pass_with_identity_headers() {
    let (app, account) = setup().await;
    let (id, key) = app
        .create_key(&account, json!({"scope": "read", "environment": "test"}))
        .await;
    let a = app.forward_auth(Some(&key), "GET", READ_INVOICE).await;
    assert_eq!(a.status.as_u16(), 204);
    assert_eq!(a.header("x-keygate-key-id"), Some(id.as_str()));
    assert_eq!(a.header("x-keygate-account-id"), Some(account.as_str()));
    assert_eq!(a.header("x-keygate-environment"), Some("test"));
    let v = app
        .verify(json!({"key": key, "method": "GET", "path": READ_INVOICE}))
        .await;
    assert_eq!(v.status.as_u16(), 200);
    assert_eq!(v.body["valid"], true);
    assert_eq!(v.body["code"], "valid");
    assert_eq!(v.body["key_id"], id.as_str());
    assert_eq!(v.body["account_id"], account.as_str());
    assert_eq!(v.body["environment"], "test");
    assert_eq!(v.body["permissions"], json!(["*.read"]));
}

#[tokio::test]
async fn each_header_form_is_accepted() {
    let (app, account) = setup().await;
    let (_, key) = app.create_key(&account, json!({"scope": "all"})).await;
    for header in ["authorization", "x-api-key", "apikey"] {
        let value = if header == "authorization" {
            format!("Bearer {key}")
        } else {
            key.clone()
        };
        let r = app
            .client
            .get(app.url("/v1/auth"))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204, "{header}");
    }
    // The same key twice is one key; two different keys are refused.
    let (_, other) = app.create_key(&account, json!({"scope": "all"})).await;
    let same = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&key)
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status().as_u16(), 204);
    let two = answer(
        app.client
            .get(app.url("/v1/auth"))
            .bearer_auth(&key)
            .header("x-api-key", &other)
            .send()
            .await
            .unwrap(),
    )
    .await;
    two.assert_error(400, "ambiguous_credentials");
}

#[tokio::test]
async fn missing_credentials() {
    let (app, _) = setup().await;
    app.forward_auth(None, "GET", READ_INVOICE)
        .await
        .assert_error(401, "missing_credentials");
    let v = app.verify(json!({"path": READ_INVOICE})).await;
    assert_eq!(
        (v.body["valid"].clone(), v.body["code"].clone()),
        (json!(false), json!("missing_credentials"))
    );
}

#[tokio::test]
async fn malformed_keys() {
    let (app, account) = setup().await;
    let (_, key) = app.create_key(&account, json!({"scope": "all"})).await;
    // One character changed: the checksum catches it before any lookup.
    let mut typo: Vec<char> = key.chars().collect();
    typo[20] = if typo[20] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    for bad in [
        typo.as_str(),
        "kg_live_123",
        "sk_live_abc",
        "not a key at all",
        &key[..key.len() - 1],
    ] {
        app.forward_auth(Some(bad), "GET", READ_INVOICE)
            .await
            .assert_error(401, "malformed_key");
        let v = app.verify(json!({"key": bad})).await;
        assert_eq!(v.body["code"], "malformed_key", "{bad}");
        assert_eq!(v.body["valid"], false);
    }
}

#[tokio::test]
async fn unknown_revoked_and_expired_keys_answer_alike() {
    let (app, account) = setup().await;
    let (revoked_id, revoked) = app.create_key(&account, json!({"scope": "all"})).await;
    let (_, expiring) = app
        .create_key(&account, json!({"scope": "all", "expires_in": 1}))
        .await;
    // Both work first (and are cached on this node).
    assert_eq!(
        app.forward_auth(Some(&revoked), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
    assert_eq!(
        app.forward_auth(Some(&expiring), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{revoked_id}/revoke"),
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let unknown = app
        .forward_auth(Some(&unknown_key(Environment::Live)), "GET", READ_INVOICE)
        .await;
    unknown.assert_error(401, "invalid_key");
    assert_eq!(unknown.body["error"], "Invalid API key");
    for key in [&revoked, &expiring] {
        let a = app.forward_auth(Some(key), "GET", READ_INVOICE).await;
        a.assert_error(401, "invalid_key");
        assert_eq!(without_request_id(&a), without_request_id(&unknown));
        assert_eq!(
            a.header("x-keygate-key-id"),
            None,
            "an invalid key reveals nothing"
        );
        let v = app.verify(json!({"key": key})).await;
        assert_eq!(v.body["code"], "invalid_key");
        assert_eq!(v.body["key_id"], Value::Null);
    }
}

#[tokio::test]
async fn ip_allowlists() {
    let (app, account) = setup().await;
    let (_, key) = app
        .create_key(
            &account,
            json!({"scope": "all", "ip_allowlist": ["10.0.0.0/8", "2001:db8::1"]}),
        )
        .await;
    // The test client connects from 127.0.0.1, which is not on the list.
    app.forward_auth(Some(&key), "GET", READ_INVOICE)
        .await
        .assert_error(403, "ip_not_allowed");
    for (ip, code) in [
        ("10.20.30.40", "valid"),
        ("2001:db8::1", "valid"),
        ("192.0.2.1", "ip_not_allowed"),
        ("::ffff:10.0.0.9", "valid"),
    ] {
        let v = app.verify(json!({"key": key, "ip": ip})).await;
        assert_eq!(v.body["code"], code, "{ip}");
    }
    let (_, local) = app
        .create_key(
            &account,
            json!({"scope": "all", "ip_allowlist": ["127.0.0.1"]}),
        )
        .await;
    assert_eq!(
        app.forward_auth(Some(&local), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
}

#[tokio::test]
async fn insufficient_permissions() {
    let (app, account) = setup().await;
    let (_, key) = app
        .create_key(&account, json!({"permissions": ["invoices.read"]}))
        .await;
    app.forward_auth(Some(&key), "POST", "/api/v1/invoices")
        .await
        .assert_error(403, "insufficient_permissions");
    let v = app
        .verify(json!({"key": key, "permission": "invoices.create"}))
        .await;
    assert_eq!(
        (v.body["valid"].clone(), v.body["code"].clone()),
        (json!(false), json!("insufficient_permissions"))
    );
    let v = app
        .verify(json!({"key": key, "permission": "invoices.read"}))
        .await;
    assert_eq!(v.body["code"], "valid");
}

#[tokio::test]
async fn rate_limited_with_headers() {
    let (app, account) = setup().await;
    let (_, key) = app
        .create_key(
            &account,
            json!({"scope": "all", "rate_limit": {"requests": 2, "per_seconds": 60}}),
        )
        .await;
    let first = app.forward_auth(Some(&key), "GET", READ_INVOICE).await;
    assert_eq!(first.status.as_u16(), 204);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"default\";q=2;w=60")
    );
    assert!(first
        .header("ratelimit")
        .unwrap()
        .starts_with("\"default\";r=1;t="));
    assert_eq!(
        app.forward_auth(Some(&key), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
    let limited = app.forward_auth(Some(&key), "GET", READ_INVOICE).await;
    limited.assert_error(429, "rate_limited");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    assert!(limited
        .header("ratelimit")
        .unwrap()
        .starts_with("\"default\";r=0;"));
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(v.body["code"], "rate_limited");
    assert!(v.headers.get("retry-after").is_some());
    assert_eq!(v.body["rate_limit"]["remaining"], 0);
}

#[tokio::test]
async fn usage_exceeded_when_the_quota_is_spent() {
    let (app, account) = setup().await;
    let (id, key) = app
        .create_key(&account, json!({"scope": "all", "quota": {"requests": 3}}))
        .await;
    app.forward_auth_times(&key, "GET", READ_INVOICE, 3, 204)
        .await;
    app.forward_auth(Some(&key), "GET", READ_INVOICE)
        .await
        .assert_error(429, "usage_exceeded");
    assert_eq!(
        app.verify(json!({"key": key})).await.body["code"],
        "usage_exceeded"
    );
    let k = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(
        k.body["quota"],
        json!({"requests": 3, "used": 3, "remaining": 0})
    );
    // Raising the quota lets the key work again, with what was spent still counted.
    let p = app
        .admin(
            Method::PATCH,
            &format!("/v1/api-keys/{id}"),
            Some(json!({"quota": {"requests": 4}})),
        )
        .await;
    assert_eq!(p.status.as_u16(), 200, "{}", p.body);
    assert_eq!(
        app.forward_auth(Some(&key), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
    app.forward_auth(Some(&key), "GET", READ_INVOICE)
        .await
        .assert_error(429, "usage_exceeded");
}

#[tokio::test]
async fn keys_in_urls_are_refused() {
    let (app, account) = setup().await;
    let (_, key) = app.create_key(&account, json!({"scope": "all"})).await;
    for query in [
        format!("api_key={key}"),
        format!("apikey={key}"),
        format!("access_token={key}"),
        format!("key={key}"),
    ] {
        let a = answer(
            app.client
                .get(app.url(&format!("/v1/auth?{query}")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        a.assert_error(400, "key_in_url");
        assert!(!a.body.to_string().contains(&key));
    }
    // The original request of a proxy carried the key in its URL.
    app.forward_auth(
        Some(&key),
        "GET",
        &format!("/api/v1/invoices?api_key={key}"),
    )
    .await
    .assert_error(400, "key_in_url");
    let v = app
        .verify(json!({"key": key, "path": format!("/api/v1/invoices?apikey={key}")}))
        .await;
    assert_eq!(v.body["code"], "key_in_url");
}

#[tokio::test]
async fn proxies_other_than_nginx_are_understood() {
    let (app, account) = setup().await;
    let (_, key) = app
        .create_key(&account, json!({"permissions": ["invoices.create"]}))
        .await;
    // Traefik ForwardAuth.
    let traefik = |method: &str| {
        app.client
            .get(app.url("/v1/auth"))
            .bearer_auth(&key)
            .header("X-Forwarded-Method", method)
            .header("X-Forwarded-Uri", "/api/v1/invoices")
            .send()
    };
    assert_eq!(traefik("POST").await.unwrap().status().as_u16(), 204);
    assert_eq!(traefik("GET").await.unwrap().status().as_u16(), 403);
    // Envoy ext_authz over HTTP: original method, path appended to the auth path.
    let envoy = app
        .client
        .post(app.url("/v1/auth/api/v1/invoices"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(envoy.status().as_u16(), 204);
    let envoy = app
        .client
        .delete(app.url("/v1/auth/api/v1/invoices/1"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(envoy.status().as_u16(), 403);
}

#[tokio::test]
async fn verify_needs_the_admin_or_verify_token() {
    let (app, account) = setup().await;
    let (_, key) = app.create_key(&account, json!({"scope": "all"})).await;
    let body = json!({"key": key});
    let verify = Method::POST;
    let call = |token| app.call(verify.clone(), "/v1/verify", token, Some(body.clone()));
    assert_eq!(
        call(Some("verify-token-for-tests-0123456789")).await.body["code"],
        "valid"
    );
    call(None).await.assert_error(401, "missing_credentials");
    call(Some("not-the-token"))
        .await
        .assert_error(401, "unauthorized");
    // An API key is not a verify token, and the verify token manages nothing.
    call(Some(key.as_str()))
        .await
        .assert_error(401, "unauthorized");
    app.call(
        Method::GET,
        "/v1/api-keys",
        Some("verify-token-for-tests-0123456789"),
        None,
    )
    .await
    .assert_error(401, "unauthorized");
}
