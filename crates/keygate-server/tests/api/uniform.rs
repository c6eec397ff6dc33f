//! Uniform failure: a key that was never issued, one that was revoked, one that expired,
//! one rotated away and one whose rotation grace ended get byte-identical answers (apart
//! from the request id), whichever door they knock on: forward-auth (each header form),
//! `POST /v1/verify`, and the management API. Whether the key was in the cache or not,
//! and whatever else about it would have failed (its IP allowlist, its permissions, its
//! rate limit), the answer is the same: the liveness check comes first and tells nothing.
//!
//! `outcomes.rs` compares the JSON of forward-auth answers; this compares the bytes and
//! the headers, on every path.

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn, TestApp};

/// An answer reduced to what must be equal: status, headers other than `date` and
/// `x-request-id`, and the body bytes with the request id blanked.
#[derive(Debug, PartialEq, Eq)]
struct Bytes {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

async fn bytes_of(response: reqwest::Response) -> Bytes {
    let status = response.status().as_u16();
    let headers = normalised_headers(response.headers());
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.unwrap();
    let body = match request_id {
        Some(id) if !id.is_empty() => body.replace(&id, "req_X"),
        _ => body,
    };
    Bytes {
        status,
        headers,
        body,
    }
}

fn normalised_headers(h: &HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-request-id"))
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The doors a key can knock on, each as a closure-free description.
#[derive(Clone, Copy, Debug)]
enum Door {
    AuthBearer,
    AuthXApiKey,
    AuthApiKeyHeader,
    /// Forward-auth for a request the key would not be allowed anyway.
    AuthForbiddenPath,
    /// Envoy style: the original path after `/v1/auth`.
    AuthEnvoy,
    Verify,
    VerifyWithPermission,
    ManageList,
    ManageGet,
    ManageCreate,
    KeyInfo,
}

const DOORS: [Door; 11] = [
    Door::AuthBearer,
    Door::AuthXApiKey,
    Door::AuthApiKeyHeader,
    Door::AuthForbiddenPath,
    Door::AuthEnvoy,
    Door::Verify,
    Door::VerifyWithPermission,
    Door::ManageList,
    Door::ManageGet,
    Door::ManageCreate,
    Door::KeyInfo,
];

async fn knock(app: &TestApp, door: Door, key: &str, some_key_id: &str) -> Bytes {
    let c = &app.client;
    let auth = |method: &str, uri: &str| {
        c.get(app.url("/v1/auth"))
            .header("x-original-method", method)
            .header("x-original-uri", uri)
    };
    let req = match door {
        Door::AuthBearer => auth("GET", "/api/v1/invoices/1").bearer_auth(key),
        Door::AuthXApiKey => auth("GET", "/api/v1/invoices/1").header("x-api-key", key),
        Door::AuthApiKeyHeader => auth("GET", "/api/v1/invoices/1").header("apikey", key),
        Door::AuthForbiddenPath => auth("DELETE", "/api/v1/webhooks/7").bearer_auth(key),
        Door::AuthEnvoy => c.post(app.url("/v1/auth/api/v1/invoices")).bearer_auth(key),
        Door::Verify => c
            .post(app.url("/v1/verify"))
            .bearer_auth(&app.admin_token)
            .json(&json!({"key": key})),
        Door::VerifyWithPermission => c
            .post(app.url("/v1/verify"))
            .bearer_auth(&app.admin_token)
            .json(&json!({"key": key, "permission": "webhooks.delete", "ip": "192.0.2.1"})),
        Door::ManageList => c.get(app.url("/v1/api-keys")).bearer_auth(key),
        Door::ManageGet => c
            .get(app.url(&format!("/v1/api-keys/{some_key_id}")))
            .bearer_auth(key),
        Door::ManageCreate => c
            .post(app.url("/v1/api-keys"))
            .bearer_auth(key)
            .json(&json!({"name": "should not exist"})),
        Door::KeyInfo => c.get(app.url("/v1/api-key-info")).bearer_auth(key),
    };
    bytes_of(req.send().await.unwrap()).await
}

/// Keys that are all dead, in every way a key can be, plus an unknown one.
struct Dead {
    app: TestApp,
    /// (how it died, the secret)
    keys: Vec<(&'static str, String)>,
    some_key_id: String,
}

async fn dead_keys() -> Dead {
    let app = spawn().await;
    let account = app.create_account("Uniform", "unlimited").await;
    // Every dead key had powers that would make its refusal differ if liveness were not
    // checked first: an IP allowlist the test client is not on, a tight rate limit, a quota,
    // management permissions.
    let powerful = json!({
        "permissions": ["api_keys.*", "invoices.read"],
        "ip_allowlist": ["203.0.113.0/24", "127.0.0.1"],
        "rate_limit": {"requests": 1, "per_seconds": 3600},
        "quota": {"requests": 1000}
    });
    let fenced = json!({
        "permissions": ["invoices.read"],
        "ip_allowlist": ["203.0.113.7"]
    });
    let (some_key_id, _) = app.create_key(&account, json!({"scope": "read"})).await;
    let (revoked_id, revoked) = app.create_key(&account, powerful.clone()).await;
    let (revoked_cold_id, revoked_cold) = app.create_key(&account, powerful.clone()).await;
    let (fenced_id, fenced_revoked) = app.create_key(&account, fenced).await;
    let (_, expired) = app
        .create_key(&account, {
            let mut v = powerful.clone();
            v["expires_in"] = json!(1);
            v
        })
        .await;
    let (rotated_id, rotated) = app.create_key(&account, powerful.clone()).await;
    let (graced_id, graced) = app.create_key(&account, powerful.clone()).await;
    // Warm the cache for some (a cached key must die as a cold one does).
    for key in [&revoked, &expired, &rotated, &graced] {
        let r = app
            .client
            .get(app.url("/v1/api-keys"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    }
    for id in [&revoked_id, &revoked_cold_id, &fenced_id] {
        let r = app
            .admin(Method::POST, &format!("/v1/api-keys/{id}/revoke"), None)
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    }
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{rotated_id}/rotate"),
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{graced_id}/rotate"),
            Some(json!({"grace_period_seconds": 1})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let unknown = crate::helpers::unknown_key(keygate_core::Environment::Live);
    Dead {
        app,
        keys: vec![
            ("never issued", unknown),
            ("revoked (was cached)", revoked),
            ("revoked (never used)", revoked_cold),
            ("revoked (IP-fenced)", fenced_revoked),
            ("expired", expired),
            ("rotated away", rotated),
            ("rotation grace ended", graced),
        ],
        some_key_id,
    }
}

#[tokio::test]
async fn dead_keys_are_indistinguishable_at_every_door() {
    let d = dead_keys().await;
    let mut compared = 0;
    let mut failures = Vec::new();
    for door in DOORS {
        // Twice each: the second answer may come from the negative cache.
        let mut reference: Option<(&str, Bytes)> = None;
        for round in 0..2 {
            for (how, key) in &d.keys {
                let got = knock(&d.app, door, key, &d.some_key_id).await;
                compared += 1;
                match &reference {
                    None => {
                        assert!(got.body.contains("invalid_key"), "{door:?}: {how}: {got:?}");
                        reference = Some((how, got));
                    }
                    Some((first, want)) => {
                        if &got != want {
                            failures.push(format!(
                                "{door:?} round {round}: {how} differs from {first}:\n  {got:?}\n  {want:?}"
                            ));
                        }
                    }
                }
            }
        }
        let (_, want) = reference.unwrap();
        // The shape each door promises.
        match door {
            Door::Verify | Door::VerifyWithPermission => {
                assert_eq!(want.status, 200);
                let v: Value = serde_json::from_str(&want.body).unwrap();
                assert_eq!(v["valid"], false);
                assert_eq!(v["code"], "invalid_key");
                assert_eq!(v["error"], "Invalid API key");
                for field in ["key_id", "account_id", "environment", "permissions"] {
                    assert_eq!(v[field], Value::Null, "{field} told: {v}");
                }
                assert!(v.get("rate_limit").is_none(), "{v}");
            }
            _ => {
                assert_eq!(want.status, 401, "{door:?}: {want:?}");
                let v: Value = serde_json::from_str(&want.body).unwrap();
                assert_eq!(
                    v,
                    json!({"error": "Invalid API key", "code": "invalid_key", "request_id": "req_X"}),
                    "{door:?}"
                );
                assert!(
                    want.headers
                        .iter()
                        .any(|(k, v)| k == "www-authenticate"
                            && v == r#"Bearer error="invalid_token""#),
                    "{door:?}: {want:?}"
                );
                assert!(
                    !want.headers.iter().any(|(k, _)| matches!(
                        k.as_str(),
                        "x-keygate-key-id"
                            | "x-keygate-account-id"
                            | "x-keygate-environment"
                            | "x-keygate-permissions"
                            | "ratelimit"
                            | "ratelimit-policy"
                            | "retry-after"
                    )),
                    "{door:?}: a dead key's answer tells something: {want:?}"
                );
            }
        }
    }
    println!(
        "uniform failure: {} dead keys x {} doors x 2 rounds = {compared} answers compared",
        d.keys.len(),
        DOORS.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
