//! Limits, usage analytics, audit log and metrics (issue 5).

use std::collections::HashMap;

use keygate_engine::Plans;
use keygate_store::RateLimit;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn, spawn_with, Options, TestApp};

const READ_INVOICE: &str = "/api/v1/invoices/42";

/// `keygate_verifications_total` by outcome label, from a scrape.
async fn verifications(app: &TestApp) -> HashMap<String, u64> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("keygate_verifications_total{"))
    {
        let outcome = line
            .split("outcome=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        out.insert(outcome.to_owned(), value);
    }
    out
}

#[tokio::test]
async fn usage_counts_equal_the_requests_sent() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (id, key) = app
        .create_key(&account, json!({"permissions": ["invoices.read"]}))
        .await;
    app.forward_auth_times(&key, "GET", READ_INVOICE, 5, 204)
        .await;
    app.forward_auth_times(&key, "POST", "/api/v1/invoices", 3, 403)
        .await;
    // Before the flush the answer already includes what is counted in memory; after it,
    // the same numbers come from the store.
    let before = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}/usage"), None)
        .await;
    app.engine.flush_usage().await.unwrap();
    let after = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}/usage"), None)
        .await;
    for usage in [&before, &after] {
        assert_eq!(usage.status.as_u16(), 200, "{}", usage.body);
        assert_eq!(
            usage.body["totals"],
            json!({"valid": 5, "insufficient_permissions": 3})
        );
        assert_eq!(usage.body["granularity"], "hour");
        let data = usage.body["data"].as_array().unwrap();
        assert_eq!(data.len(), 24);
        let last = data.last().unwrap();
        assert_eq!(
            (last["valid"].clone(), last["refused"].clone()),
            (json!(5), json!(3))
        );
        assert_eq!(usage.body["recent_ips"][0]["ip"], "127.0.0.1");
        assert!(usage.body["last_used_at"].is_string());
    }
    let daily = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys/{id}/usage?granularity=day"),
            None,
        )
        .await;
    assert_eq!(daily.body["data"].as_array().unwrap().len(), 30);
    assert_eq!(daily.body["totals"]["valid"], 5);
    // A range that ends before today holds nothing.
    let old = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys/{id}/usage?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z"),
            None,
        )
        .await;
    assert_eq!(old.body["totals"], json!({}));
    app.admin(
        Method::GET,
        &format!("/v1/api-keys/{id}/usage?granularity=week"),
        None,
    )
    .await
    .assert_error(400, "validation_error");
    app.admin(
        Method::GET,
        &format!("/v1/api-keys/{id}/usage?from=2000-01-01T00:00:00Z"),
        None,
    )
    .await
    .assert_error(400, "validation_error");
}

#[tokio::test]
async fn revoked_and_expired_refusals_are_counted_precisely_but_answered_alike() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (id, key) = app.create_key(&account, json!({"scope": "all"})).await;
    app.forward_auth(Some(&key), "GET", READ_INVOICE).await;
    app.admin(Method::POST, &format!("/v1/api-keys/{id}/revoke"), None)
        .await;
    app.forward_auth(Some(&key), "GET", READ_INVOICE)
        .await
        .assert_error(401, "invalid_key");
    let usage = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}/usage"), None)
        .await;
    assert_eq!(
        usage.body["totals"],
        json!({"valid": 1, "invalid_key_revoked": 1})
    );
}

#[tokio::test]
async fn metrics_parse_and_move() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&account, json!({"scope": "read"})).await;
    let before = verifications(&app).await;
    for _ in 0..4 {
        app.forward_auth(Some(&key), "GET", READ_INVOICE).await;
    }
    app.forward_auth(Some(&key), "POST", "/api/v1/invoices")
        .await;
    app.forward_auth(None, "GET", READ_INVOICE).await;
    app.forward_auth(Some("kg_live_nope"), "GET", READ_INVOICE)
        .await;
    let after = verifications(&app).await;
    let moved = |o: &str| after[o] - before.get(o).copied().unwrap_or(0);
    assert_eq!(moved("valid"), 4);
    assert_eq!(moved("insufficient_permissions"), 1);
    assert_eq!(moved("missing_credentials"), 1);
    assert_eq!(moved("malformed_key"), 1);
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every sample line is `name{labels} value` or `name value` with a number.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    for name in [
        "keygate_verification_duration_seconds_count",
        "keygate_cache_hits_total",
        "keygate_cache_keys",
        "keygate_usage_flush_lag_seconds",
        "keygate_store_errors_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    // The keys verified above have usage cells until a flush lets them go.
    let usage_cells: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("keygate_usage_cells "))
        .expect("keygate_usage_cells missing")
        .parse()
        .unwrap();
    assert!(usage_cells >= 1.0, "keygate_usage_cells is {usage_cells}");
    assert!(!text.contains(&key[8..]), "a secret in the metrics");
    let key_id = app.admin(Method::GET, "/v1/api-keys", None).await.body["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!text.contains(&key_id), "a key id as a label");
}

#[tokio::test]
async fn audit_events_cover_every_action_and_failed_admin_auth() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (id, _) = app.create_key(&account, json!({})).await;
    app.admin(
        Method::PATCH,
        &format!("/v1/api-keys/{id}"),
        Some(json!({"name": "n"})),
    )
    .await;
    app.admin(
        Method::POST,
        &format!("/v1/api-keys/{id}/rotate"),
        Some(json!({"grace_period_seconds": 60})),
    )
    .await;
    app.admin(Method::POST, &format!("/v1/api-keys/{id}/revoke"), None)
        .await;
    app.admin(
        Method::PATCH,
        &format!("/v1/accounts/{account}"),
        Some(json!({"plan": "basic"})),
    )
    .await;
    app.call(
        Method::GET,
        "/v1/accounts",
        Some("not-the-admin-token"),
        None,
    )
    .await
    .assert_error(401, "unauthorized");
    let all = app.admin(Method::GET, "/v1/audit-log", None).await;
    let actions: Vec<&str> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "auth.failed",
            "account.update",
            "key.revoke",
            "key.rotate",
            "key.update",
            "key.create",
            "account.create"
        ]
    );
    let failed = &all.body["data"][0];
    assert_eq!(
        (failed["actor"].clone(), failed["client_ip"].clone()),
        (json!("anonymous"), json!("127.0.0.1"))
    );
    // Filters: by target, and by time.
    let of_key = app
        .admin(Method::GET, &format!("/v1/audit-log?target_id={id}"), None)
        .await;
    assert_eq!(of_key.body["data"].as_array().unwrap().len(), 4);
    let future = app
        .admin(Method::GET, "/v1/audit-log?from=2999-01-01T00:00:00Z", None)
        .await;
    assert_eq!(future.body["data"], json!([]));
    let past = app
        .admin(Method::GET, "/v1/audit-log?to=2000-01-01T00:00:00Z", None)
        .await;
    assert_eq!(past.body["data"], json!([]));
    app.admin(Method::GET, "/v1/audit-log?from=yesterday", None)
        .await
        .assert_error(400, "validation_error");
}

#[tokio::test]
async fn failed_authentications_are_throttled_per_address() {
    let app = spawn_with(Options {
        failed_auth: Some(RateLimit {
            requests: 5,
            per_seconds: 60,
        }),
        ..Options::default()
    })
    .await;
    let account = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&account, json!({"scope": "all"})).await;
    for _ in 0..5 {
        app.forward_auth(Some("kg_live_guess"), "GET", READ_INVOICE)
            .await
            .assert_error(401, "malformed_key");
    }
    let blocked = app
        .forward_auth(Some("kg_live_guess"), "GET", READ_INVOICE)
        .await;
    blocked.assert_error(429, "too_many_failed_attempts");
    let retry: u64 = blocked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    // The address is blocked whatever it sends now, even a valid key or the admin token.
    app.forward_auth(Some(&key), "GET", READ_INVOICE)
        .await
        .assert_error(429, "too_many_failed_attempts");
    // Missing credentials are not guesses and are not counted.
    let fresh = spawn_with(Options {
        failed_auth: Some(RateLimit {
            requests: 2,
            per_seconds: 60,
        }),
        ..Options::default()
    })
    .await;
    for _ in 0..5 {
        fresh
            .forward_auth(None, "GET", READ_INVOICE)
            .await
            .assert_error(401, "missing_credentials");
    }
    let (_, fresh_key) = {
        let account = fresh.create_account("Acme", "unlimited").await;
        fresh.create_key(&account, json!({"scope": "all"})).await
    };
    assert_eq!(
        fresh
            .forward_auth(Some(&fresh_key), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
}

#[tokio::test]
async fn trusted_proxies_are_not_throttled_as_one_client() {
    let app = spawn_with(Options {
        failed_auth: Some(RateLimit {
            requests: 2,
            per_seconds: 60,
        }),
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..Options::default()
    })
    .await;
    let guess = |client: &'static str| {
        app.client
            .get(app.url("/v1/auth"))
            .bearer_auth("kg_live_guess")
            .header("X-Forwarded-For", client)
            .header("X-Original-URI", READ_INVOICE)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(guess("198.51.100.1").await.unwrap().status().as_u16(), 401);
    }
    assert_eq!(guess("198.51.100.1").await.unwrap().status().as_u16(), 429);
    // Another client behind the same proxy is not affected.
    assert_eq!(guess("198.51.100.2").await.unwrap().status().as_u16(), 401);
}

#[tokio::test]
async fn plan_rate_limits_apply_to_keys_without_their_own() {
    let plans = Plans::reference().with_rate_limit(
        "pro",
        RateLimit {
            requests: 2,
            per_seconds: 60,
        },
    );
    let app = spawn_with(Options {
        plans,
        ..Options::default()
    })
    .await;
    let account = app.create_account("Acme", "pro").await;
    let (_, plain) = app.create_key(&account, json!({"scope": "all"})).await;
    let (_, own) = app
        .create_key(
            &account,
            json!({"scope": "all", "rate_limit": {"requests": 5, "per_seconds": 60}}),
        )
        .await;
    app.forward_auth_times(&plain, "GET", READ_INVOICE, 2, 204)
        .await;
    let limited = app.forward_auth(Some(&plain), "GET", READ_INVOICE).await;
    limited.assert_error(429, "rate_limited");
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some("\"default\";q=2;w=60")
    );
    app.forward_auth_times(&own, "GET", READ_INVOICE, 5, 204)
        .await;
    // A plan without a limit lifts it at once.
    app.admin(
        Method::PATCH,
        &format!("/v1/accounts/{account}"),
        Some(json!({"plan": "unlimited"})),
    )
    .await;
    assert_eq!(
        app.forward_auth(Some(&plain), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
}

#[tokio::test]
async fn quotas_are_spent_then_refilled() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (id, key) = app
        .create_key(
            &account,
            json!({"scope": "all", "quota": {"requests": 2, "refill": {"amount": 2, "every": 1}}}),
        )
        .await;
    app.forward_auth_times(&key, "GET", READ_INVOICE, 2, 204)
        .await;
    app.forward_auth(Some(&key), "GET", READ_INVOICE)
        .await
        .assert_error(429, "usage_exceeded");
    let k = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(k.body["quota"]["remaining"], 0);
    assert_eq!(k.body["quota"]["refill"], json!({"amount": 2, "every": 1}));
    assert!(k.body["quota"]["next_refill_at"].is_string());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.forward_auth_times(&key, "GET", READ_INVOICE, 2, 204)
        .await;
    app.forward_auth(Some(&key), "GET", READ_INVOICE)
        .await
        .assert_error(429, "usage_exceeded");
    // What was spent and refilled reaches the store with the next flush.
    app.engine.flush_usage().await.unwrap();
    let k = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(k.body["quota"]["used"], 2);
    // A quota without a refill is spent once and for all.
    let (_, once) = app
        .create_key(&account, json!({"scope": "all", "quota": {"requests": 1}}))
        .await;
    assert_eq!(
        app.forward_auth(Some(&once), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.forward_auth(Some(&once), "GET", READ_INVOICE)
        .await
        .assert_error(429, "usage_exceeded");
    for bad in [
        json!({"requests": 1, "refill": {"amount": 0, "every": 1}}),
        json!({"requests": 1, "refill": {"amount": 1, "every": 0}}),
        json!({"requests": 1, "refill": {"amount": 1}}),
    ] {
        app.create_key_answer(&account, json!({"quota": bad}))
            .await
            .assert_error(400, "validation_error");
    }
}
