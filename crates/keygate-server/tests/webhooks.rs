//! Lifecycle webhooks end to end: a real HTTP receiver on loopback checks every request's
//! Standard Webhooks v1 signature with its own implementation of the spec (HMAC-SHA256
//! over `id.timestamp.body` keyed by the base64-decoded `whsec_` secret), independent of
//! keygate's signing code. The outbox is written with the change; the worker delivers,
//! retries while the receiver is down, and never sends to loopback without the setting.

#[path = "api/helpers.rs"]
mod helpers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use base64::Engine as _;
use helpers::{spawn, spawn_node, spawn_with, Node, Options, TestApp};
use hmac::{Hmac, Mac};
use keygate_engine::manage::WebhookSettings;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Value,
    raw: Bytes,
}

/// A webhook receiver on loopback: records every request and answers `status`.
struct Receiver {
    url: String,
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    /// Requests being handled right now, per webhook-id (two at once = a double send).
    overlap: Arc<Mutex<(HashMap<String, usize>, usize)>>,
}

#[derive(Clone)]
struct ReceiverState {
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    overlap: Arc<Mutex<(HashMap<String, usize>, usize)>>,
}

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, raw: Bytes) -> AxumStatus {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let id = header("webhook-id");
    {
        let mut o = s.overlap.lock().unwrap();
        let n = o.0.entry(id.clone()).or_default();
        *n += 1;
        if *n > 1 {
            o.1 += 1;
        }
    }
    // Slow enough that a second node sending the same delivery would overlap.
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.got.lock().unwrap().push(Received {
        id: id.clone(),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw,
    });
    *s.overlap.lock().unwrap().0.entry(id).or_default() -= 1;
    AxumStatus::from_u16(s.status.load(Ordering::SeqCst)).unwrap()
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener).await
    }

    async fn on(listener: tokio::net::TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let state = ReceiverState {
            got: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            overlap: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            addr,
            got: state.got,
            status: state.status,
            overlap: state.overlap,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (at most `within`).
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < within,
                "only {} of {n} webhook requests arrived in {within:?}: {:?}",
                got.len(),
                got.iter()
                    .map(|r| r.body["type"].clone())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The Standard Webhooks v1 check, written from the spec: the signature header holds
/// space-separated `v1,<base64>` entries; one must equal HMAC-SHA256(base64-decoded secret
/// after `whsec_`, "{id}.{timestamp}.{body}"). The timestamp must be within 5 minutes.
fn verify_signature(secret: &str, r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut signed = format!("{}.{}.", r.id, r.timestamp).into_bytes();
    signed.extend_from_slice(&r.raw);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(&signed);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let fresh = r
        .timestamp
        .parse::<i64>()
        .is_ok_and(|t| (now - t).abs() < 300);
    fresh
        && r.signature
            .split(' ')
            .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

/// Fast retries for tests; loopback allowed unless `strict`.
fn settings(strict: bool) -> WebhookSettings {
    WebhookSettings {
        allow_private: !strict,
        retry_base: Duration::from_millis(200),
        retry_max_delay: Duration::from_millis(400),
        ..WebhookSettings::default()
    }
}

fn worker_config() -> keygate_server::WebhookWorkerConfig {
    keygate_server::WebhookWorkerConfig {
        poll_interval: Duration::from_millis(50),
        scan_interval: Duration::from_secs(3600),
        node_id: format!("test-{}", rand_suffix()),
    }
}

fn rand_suffix() -> String {
    keygate_core::key::random_hex(4).unwrap()
}

/// A server with webhooks configured and its worker running.
async fn app_with_worker(strict: bool) -> TestApp {
    worker_on(spawn().await, strict)
}

/// `app` with webhooks configured and its worker running.
fn worker_on(app: TestApp, strict: bool) -> TestApp {
    app.engine.configure_webhooks(settings(strict));
    keygate_server::spawn_webhook_worker(app.engine.clone(), worker_config()).unwrap();
    app
}

/// The deliveries of `endpoint` as the API lists them (its `data` array).
async fn deliveries(app: &TestApp, endpoint: &str) -> Value {
    let a = app
        .admin(
            Method::GET,
            &format!("/v1/webhook-endpoints/{endpoint}/deliveries"),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.body["data"].clone()
}

/// Each listed delivery as `(event type, status)`.
fn types_and_statuses(deliveries: &Value) -> Vec<(&str, &str)> {
    deliveries
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["event_type"].as_str().unwrap(),
                d["status"].as_str().unwrap(),
            )
        })
        .collect()
}

async fn create_endpoint(app: &TestApp, body: Value) -> (String, String) {
    let a = app
        .admin(Method::POST, "/v1/webhook-endpoints", Some(body))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    (
        a.body["id"].as_str().unwrap().to_owned(),
        a.body["secret"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn endpoints_are_managed_and_their_secret_shown_once() {
    let app = spawn().await;
    app.engine.configure_webhooks(settings(false));
    let a = app
        .admin(
            Method::POST,
            "/v1/webhook-endpoints",
            Some(json!({"url": "https://hooks.example.com/keygate", "events": ["key.created", "key.revoked"], "description": "CRM"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    let secret = a.body["secret"].as_str().unwrap().to_owned();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    assert!((24..=64).contains(&raw.len()), "{} secret bytes", raw.len());
    assert_eq!(a.body["events"], json!(["key.created", "key.revoked"]));
    assert_eq!(a.body["enabled"], true);

    let got = app
        .admin(Method::GET, &format!("/v1/webhook-endpoints/{id}"), None)
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.get("secret").is_none(), "{}", got.body);
    assert!(!got.body.to_string().contains(&secret));

    // Pages like the other lists.
    create_endpoint(&app, json!({"url": "https://b.example.com/"})).await;
    create_endpoint(&app, json!({"url": "https://c.example.com/"})).await;
    let first = app
        .admin(Method::GET, "/v1/webhook-endpoints?limit=2", None)
        .await;
    assert_eq!(first.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(first.body["has_more"], true);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = app
        .admin(
            Method::GET,
            &format!("/v1/webhook-endpoints?limit=2&starting_after={cursor}"),
            None,
        )
        .await;
    assert_eq!(second.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(second.body["has_more"], false);
    assert_eq!(second.body["data"][0]["events"], json!(["*"]));

    let patched = app
        .admin(
            Method::PATCH,
            &format!("/v1/webhook-endpoints/{id}"),
            Some(json!({"events": ["*"], "enabled": false, "description": null})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["events"], json!(["*"]));
    assert_eq!(patched.body["enabled"], false);
    assert_eq!(patched.body["description"], Value::Null);

    let rotated = app
        .admin(
            Method::POST,
            &format!("/v1/webhook-endpoints/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);

    let deleted = app
        .admin(Method::DELETE, &format!("/v1/webhook-endpoints/{id}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    app.admin(Method::GET, &format!("/v1/webhook-endpoints/{id}"), None)
        .await
        .assert_error(404, "not_found");

    // The audit log records the management actions, never the secret.
    let audit = app.admin(Method::GET, "/v1/audit-log", None).await;
    let text = audit.body.to_string();
    assert!(
        text.contains("webhook_endpoint.create") && text.contains("webhook_endpoint.rotate_secret")
    );
    assert!(!text.contains(&secret) && !text.contains(new_secret));
}

#[tokio::test]
async fn bad_endpoint_input_is_a_400_naming_the_field() {
    let app = spawn().await;
    // The default settings: the SSRF guard on.
    let cases = [
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "http://user:pw@example.com/"}), "url"),
        (json!({"url": "http://127.0.0.1:9/hook"}), "url"),
        (json!({"url": "http://[::1]/hook"}), "url"),
        (json!({"url": "http://10.0.0.8/hook"}), "url"),
        (json!({"url": "http://169.254.169.254/latest"}), "url"),
        (
            json!({"url": "https://example.com/", "events": ["key.nope"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com/", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://example.com/", "description": ""}),
            "description",
        ),
    ];
    for (body, field) in cases {
        let a = app
            .admin(Method::POST, "/v1/webhook-endpoints", Some(body.clone()))
            .await;
        a.assert_error(400, "validation_error");
        assert_eq!(a.body["field"], field, "{body}: {}", a.body);
    }
    let a = app
        .admin(
            Method::POST,
            "/v1/webhook-endpoints",
            Some(json!({"url": "https://example.com/", "account_id": "acct_000000000000000000000000"})),
        )
        .await;
    a.assert_error(404, "not_found");
    let a = app
        .admin(
            Method::POST,
            "/v1/webhook-endpoints",
            Some(json!({"url": "https://example.com/", "secret": "mine"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    app.admin(Method::GET, "/v1/webhook-endpoints?limit=0", None)
        .await
        .assert_error(400, "validation_error");
    app.admin(
        Method::POST,
        "/v1/webhook-endpoints/whe_nope/deliveries/dlv_nope/retry",
        None,
    )
    .await
    .assert_error(404, "not_found");

    // A self-service key, even with every permission, may not manage endpoints.
    let account = app.create_account("Acme", "pro").await;
    let (_, key) = app
        .create_key(&account, json!({"permissions": ["*"]}))
        .await;
    let a = app
        .call(Method::GET, "/v1/webhook-endpoints", Some(&key), None)
        .await;
    a.assert_error(403, "forbidden");
}

#[tokio::test]
async fn lifecycle_events_are_delivered_signed_with_the_key_as_the_api_shows_it() {
    let app = app_with_worker(false).await;
    let receiver = Receiver::start().await;
    let (_, secret) = create_endpoint(&app, json!({"url": receiver.url})).await;
    let account = app.create_account("Acme", "pro").await;
    let (key_id, key) = app.create_key(&account, json!({"name": "ci"})).await;
    let a = app
        .admin(
            Method::PATCH,
            &format!("/v1/api-keys/{key_id}"),
            Some(json!({"name": "ci-renamed"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let rotated = app
        .admin(Method::POST, &format!("/v1/api-keys/{key_id}/rotate"), None)
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    let new_id = rotated.body["id"].as_str().unwrap().to_owned();
    let new_key = rotated.body["key"].as_str().unwrap().to_owned();
    let revoked = app
        .admin(Method::POST, &format!("/v1/api-keys/{new_id}/revoke"), None)
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let a = app
        .admin(
            Method::PATCH,
            &format!("/v1/accounts/{account}"),
            Some(json!({"name": "Acme Ltd"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);

    let got = receiver.wait_for(5, Duration::from_secs(10)).await;
    let mut types: Vec<&str> = got
        .iter()
        .map(|r| r.body["type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "account.updated",
            "key.created",
            "key.revoked",
            "key.rotated",
            "key.updated"
        ]
    );
    for r in &got {
        assert!(verify_signature(&secret, r), "bad signature on {}", r.body);
        assert!(r.id.starts_with("msg_"));
        assert!(r.body["timestamp"].as_str().unwrap().ends_with('Z'));
        let text = String::from_utf8_lossy(&r.raw);
        assert!(
            !text.contains(&key) && !text.contains(&new_key),
            "a secret in {text}"
        );
        assert!(!text.contains("digest"));
    }
    let by_type = |t: &str| got.iter().find(|r| r.body["type"] == t).unwrap().body["data"].clone();
    let created = by_type("key.created");
    assert_eq!(created["id"], key_id.as_str());
    assert_eq!(created["object"], "api_key");
    assert_eq!(created["name"], "ci");
    assert_eq!(created["status"], "active");
    assert_eq!(by_type("key.updated")["name"], "ci-renamed");
    assert_eq!(by_type("key.rotated")["id"], new_id.as_str());
    assert_eq!(by_type("key.rotated")["rotated_from"], key_id.as_str());
    assert_eq!(by_type("key.revoked")["status"], "revoked");
    assert_eq!(by_type("account.updated")["name"], "Acme Ltd");
    // Delivered once each; the deliveries list says so.
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 5);
}

#[tokio::test]
async fn endpoints_get_only_their_events_and_accounts_and_a_refused_change_sends_nothing() {
    let app = app_with_worker(false).await;
    let all = Receiver::start().await;
    let filtered = Receiver::start().await;
    let acme = app.create_account("Acme", "basic").await;
    let other = app.create_account("Other", "pro").await;
    create_endpoint(&app, json!({"url": all.url})).await;
    create_endpoint(
        &app,
        json!({"url": filtered.url, "events": ["key.revoked"], "account_id": acme}),
    )
    .await;
    let (a1, _) = app.create_key(&acme, json!({})).await;
    app.create_key(&acme, json!({})).await;
    // The basic plan allows 2 keys: the third is refused, its transaction rolled back.
    let third = app.create_key_answer(&acme, json!({})).await;
    assert_eq!(
        third.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        third.body
    );
    let (o1, _) = app.create_key(&other, json!({})).await;
    for id in [&a1, &o1] {
        let a = app
            .admin(Method::POST, &format!("/v1/api-keys/{id}/revoke"), None)
            .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let got = all.wait_for(5, Duration::from_secs(10)).await;
    let filtered_got = filtered.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(all.received().len(), 5, "{got:?}");
    assert_eq!(
        got.iter()
            .filter(|r| r.body["type"] == "key.created")
            .count(),
        3
    );
    assert_eq!(filtered.received().len(), 1, "{filtered_got:?}");
    assert_eq!(filtered_got[0].body["data"]["id"], a1.as_str());
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_event_once_it_is_up() {
    let app = app_with_worker(false).await;
    // Reserve a port, then close it: nothing listens there for now.
    let port = keygate_test_support::free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let (endpoint, secret) = create_endpoint(&app, json!({"url": url})).await;
    let account = app.create_account("Acme", "pro").await;
    let (key_id, _) = app.create_key(&account, json!({})).await;

    // At least two failed attempts, recorded with their error and the next attempt.
    let start = Instant::now();
    let failed = loop {
        let d = deliveries(&app, &endpoint).await[0].clone();
        if d["attempts"].as_i64().unwrap_or(0) >= 2 {
            break d;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no retries: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed["status"], "pending");
    assert_eq!(failed["event_type"], "key.created");
    assert!(
        failed["last_error"].as_str().unwrap().contains("connect"),
        "{failed}"
    );
    assert!(failed["next_attempt_at"].is_string());

    // The receiver comes up on that port: the next retry delivers.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let receiver = Receiver::on(listener).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(verify_signature(&secret, &got[0]));
    assert_eq!(got[0].body["data"]["id"], key_id.as_str());
    assert_eq!(got[0].id, failed["event_id"].as_str().unwrap());
    let start = Instant::now();
    loop {
        let listed = deliveries(&app, &endpoint).await;
        let d = &listed[0];
        if d["status"] == "delivered" {
            assert_eq!(d["last_status_code"], 200);
            assert!(d["attempts"].as_i64().unwrap() >= 3);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A manual retry sends it again, with the same webhook-id.
    let delivery = deliveries(&app, &endpoint).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = app
        .admin(
            Method::POST,
            &format!("/v1/webhook-endpoints/{endpoint}/deliveries/{delivery}/retry"),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let again = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(again[1].id, got[0].id);
    assert!(verify_signature(&secret, &again[1]));
}

#[tokio::test]
async fn events_past_the_retention_go_once_delivered_and_pending_ones_stay() {
    // A retention of a moment: the usage flush prunes every event written before it.
    let app = worker_on(
        spawn_with(Options {
            usage_retention: Duration::from_millis(1),
            ..Options::default()
        })
        .await,
        false,
    );
    let receiver = Receiver::start().await;
    let (up, _) = create_endpoint(
        &app,
        json!({"url": receiver.url, "events": ["key.created"]}),
    )
    .await;
    // Nothing listens on this port: its delivery stays pending, retried.
    let down_url = format!(
        "http://127.0.0.1:{}/hook",
        keygate_test_support::free_port()
    );
    let (down, _) =
        create_endpoint(&app, json!({"url": down_url, "events": ["key.revoked"]})).await;
    let account = app.create_account("Acme", "pro").await;
    let (key_id, _) = app.create_key(&account, json!({})).await;
    let revoked = app
        .admin(Method::POST, &format!("/v1/api-keys/{key_id}/revoke"), None)
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let start = Instant::now();
    while types_and_statuses(&deliveries(&app, &up).await) != [("key.created", "delivered")] {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never marked delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending = [("key.revoked", "pending")];
    assert_eq!(types_and_statuses(&deliveries(&app, &down).await), pending);

    // Within the retention: nothing goes.
    let now = keygate_engine::now_ms();
    assert_eq!(
        app.store.prune_webhook_events(now - 60_000).await.unwrap(),
        0
    );
    assert_eq!(types_and_statuses(&deliveries(&app, &up).await).len(), 1);
    // Both events past it: the usage flush (the first prunes at once) deletes the delivered
    // one with its delivery; the pending one stays.
    tokio::time::sleep(Duration::from_millis(5)).await;
    app.engine.flush_usage().await.unwrap();
    assert_eq!(types_and_statuses(&deliveries(&app, &up).await), []);
    assert_eq!(types_and_statuses(&deliveries(&app, &down).await), pending);
}

#[tokio::test]
async fn a_delivery_is_given_up_after_the_retry_window_and_the_endpoint_disabled() {
    let app = spawn().await;
    app.engine.configure_webhooks(WebhookSettings {
        retry_for: Duration::from_millis(600),
        disable_after: Duration::from_millis(300),
        ..settings(false)
    });
    keygate_server::spawn_webhook_worker(app.engine.clone(), worker_config()).unwrap();
    let receiver = Receiver::start().await;
    receiver.status.store(500, Ordering::SeqCst);
    let (endpoint, _) = create_endpoint(&app, json!({"url": receiver.url})).await;
    let account = app.create_account("Acme", "pro").await;
    app.create_key(&account, json!({})).await;
    let start = Instant::now();
    loop {
        let a = app
            .admin(
                Method::GET,
                &format!("/v1/webhook-endpoints/{endpoint}"),
                None,
            )
            .await;
        if a.body["enabled"] == false {
            assert!(a.body["disabled_reason"].is_string());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{}", a.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audit = app
        .admin(
            Method::GET,
            &format!("/v1/audit-log?target_id={endpoint}"),
            None,
        )
        .await;
    assert!(
        audit.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "endpoint.disabled"),
        "{}",
        audit.body
    );
    let start = Instant::now();
    loop {
        let listed = deliveries(&app, &endpoint).await;
        let d = &listed[0];
        if d["status"] == "failed" {
            assert_eq!(d["last_status_code"], 500);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A disabled endpoint gets no new deliveries.
    let before = receiver.received().len();
    app.create_key(&account, json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), before);
}

#[tokio::test]
async fn the_ssrf_guard_refuses_a_name_that_resolves_to_loopback() {
    let app = app_with_worker(true).await;
    let receiver = Receiver::start().await;
    // A host name passes creation (names are checked when sending, at every attempt).
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let (endpoint, _) = create_endpoint(&app, json!({"url": url})).await;
    let account = app.create_account("Acme", "pro").await;
    app.create_key(&account, json!({})).await;
    let start = Instant::now();
    let d = loop {
        let d = deliveries(&app, &endpoint).await[0].clone();
        if d["attempts"].as_i64().unwrap_or(0) >= 1 {
            break d;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(d["status"], "pending");
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains("webhook_allow_private"),
        "{d}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn key_expiring_fires_once_per_lead_time_and_key_expired_once() {
    // The worker starts after the scans below: its own first scan would take the lease.
    let app = spawn().await;
    app.engine.configure_webhooks(settings(false));
    let receiver = Receiver::start().await;
    create_endpoint(
        &app,
        json!({"url": receiver.url, "events": ["key.expiring", "key.expired"]}),
    )
    .await;
    let account = app.create_account("Acme", "unlimited").await;
    let (in_3_days, _) = app
        .create_key(&account, json!({"expires_in": 3 * 86_400}))
        .await;
    let (in_12_hours, _) = app
        .create_key(&account, json!({"expires_in": 12 * 3600}))
        .await;
    app.create_key(&account, json!({"expires_in": 60 * 86_400}))
        .await;
    let (soon, _) = app.create_key(&account, json!({"expires_in": 1})).await;

    // Two nodes scanning: only the lease holder runs it.
    assert_eq!(
        app.engine
            .scan_webhook_expiry("node-b", Duration::from_secs(60))
            .await
            .unwrap(),
        Some(3),
        "3-day key (7-day notice), 12-hour key (1-day notice), 1-second key (1-day notice)"
    );
    assert_eq!(
        app.engine
            .scan_webhook_expiry("node-c", Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
    // Scanning again sends nothing new.
    assert_eq!(
        app.engine
            .scan_webhook_expiry("node-b", Duration::from_secs(60))
            .await
            .unwrap(),
        Some(0)
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        app.engine
            .scan_webhook_expiry("node-b", Duration::from_secs(60))
            .await
            .unwrap(),
        Some(1),
        "the 1-second key expired"
    );
    assert_eq!(
        app.engine
            .scan_webhook_expiry("node-b", Duration::from_secs(60))
            .await
            .unwrap(),
        Some(0)
    );
    keygate_server::spawn_webhook_worker(app.engine.clone(), worker_config()).unwrap();
    let got = receiver.wait_for(4, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 4);
    let expiring: Vec<&str> = got
        .iter()
        .filter(|r| r.body["type"] == "key.expiring")
        .map(|r| r.body["data"]["id"].as_str().unwrap())
        .collect();
    assert!(expiring.contains(&in_3_days.as_str()) && expiring.contains(&in_12_hours.as_str()));
    let expired: Vec<&Received> = got
        .iter()
        .filter(|r| r.body["type"] == "key.expired")
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].body["data"]["id"], soon.as_str());
    assert_eq!(expired[0].body["data"]["status"], "expired");
}

#[tokio::test]
async fn two_nodes_on_postgres_deliver_every_event_and_none_twice_at_once() {
    if keygate_test_support::postgres_url().is_none() {
        return;
    }
    let url = helpers::fresh_postgres_database().await;
    keygate_store::postgres::PostgresStore::open(&url, true)
        .await
        .unwrap();
    let (pepper, _) = keygate_core::Pepper::generate().unwrap();
    let (admin_token, _) = keygate_engine::AdminToken::generate(&pepper).unwrap();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let store = keygate_store::postgres::PostgresStore::open(&url, false)
            .await
            .unwrap();
        let node = spawn_node(
            Node::new(Arc::new(store), pepper.clone(), admin_token.clone()),
            Options::default(),
            tempfile::tempdir().unwrap(),
        )
        .await;
        node.engine.configure_webhooks(settings(false));
        keygate_server::spawn_webhook_worker(node.engine.clone(), worker_config()).unwrap();
        nodes.push(node);
    }
    let receiver = Receiver::start().await;
    create_endpoint(&nodes[0], json!({"url": receiver.url})).await;
    let account = nodes[1].create_account("Acme", "unlimited").await;
    const KEYS: usize = 30;
    for i in 0..KEYS {
        nodes[i % 2].create_key(&account, json!({})).await;
    }
    let got = receiver.wait_for(KEYS, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all = receiver.received();
    let ids: std::collections::HashSet<&str> = got_all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), KEYS, "every event delivered");
    assert_eq!(got_all.len(), KEYS, "none twice: {:?}", got.len());
    assert_eq!(
        receiver.overlap.lock().unwrap().1,
        0,
        "a delivery was sent by two nodes at once"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_the_webhook_operations() {
    let app = spawn().await;
    let a = app.call(Method::GET, "/openapi.json", None, None).await;
    let paths = &a.body["paths"];
    for path in [
        "/v1/webhook-endpoints",
        "/v1/webhook-endpoints/{id}",
        "/v1/webhook-endpoints/{id}/rotate-secret",
        "/v1/webhook-endpoints/{id}/deliveries",
        "/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry",
    ] {
        assert!(paths.get(path).is_some(), "{path} missing");
    }
}

/// The value of cookie `name` from a `Set-Cookie` answer.
fn cookie_value(response: &reqwest::Response, name: &str) -> String {
    let prefix = format!("{name}=");
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(prefix.as_str()))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("no {name} cookie"))
}

/// The dashboard's session cookie from a `Set-Cookie` answer.
fn session_cookie(response: &reqwest::Response) -> String {
    cookie_value(response, "keygate_session")
}

#[tokio::test]
async fn the_dashboard_lists_endpoints_and_their_deliveries_for_the_operator_only() {
    let app = app_with_worker(false).await;
    let receiver = Receiver::start().await;
    let (endpoint, secret) = create_endpoint(
        &app,
        json!({"url": receiver.url, "description": "CRM sync"}),
    )
    .await;
    let account = app.create_account("Acme", "pro").await;
    let (_, key) = app.create_key(&account, json!({"scope": "all"})).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = |credential: String| {
        let client = client.clone();
        let url = app.url("/dashboard/sign-in");
        async move {
            let page = client.get(&url).send().await.unwrap();
            // The sign-in form's CSRF token is double-submitted in its own cookie.
            let cookie = cookie_value(&page, "keygate_sign_in");
            let html = page.text().await.unwrap();
            let marker = r#"name="csrf" value=""#;
            let start = html.find(marker).unwrap() + marker.len();
            let csrf = html[start..].split('"').next().unwrap().to_owned();
            let answer = client
                .post(&url)
                .header("cookie", format!("keygate_sign_in={cookie}"))
                .form(&[("csrf", csrf.as_str()), ("credential", credential.as_str())])
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 303);
            session_cookie(&answer)
        }
    };
    let get = |cookie: String, path: String| {
        let client = client.clone();
        let url = app.url(&path);
        async move {
            let r = client
                .get(url)
                .header("cookie", format!("keygate_session={cookie}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let operator = sign_in(app.admin_token.clone()).await;
    let (status, html) = get(operator.clone(), "/dashboard/accounts".into()).await;
    assert_eq!(status, 200);
    assert!(
        html.contains(r#"href="/dashboard/webhooks""#),
        "no nav link"
    );
    let (status, html) = get(operator.clone(), "/dashboard/webhooks".into()).await;
    assert_eq!(status, 200);
    assert!(html.contains(&receiver.url) && html.contains(&endpoint));
    let (status, html) = get(operator.clone(), format!("/dashboard/webhooks/{endpoint}")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("key.created") && html.contains("delivered") && html.contains("HTTP 200")
    );
    assert!(!html.contains(&secret), "the secret on a page");

    // A self-service key's session is refused.
    let tenant = sign_in(key).await;
    let (status, _) = get(tenant, "/dashboard/webhooks".into()).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn key_quota_threshold_fires_once_at_80_and_once_at_100_percent() {
    let app = app_with_worker(false).await;
    let receiver = Receiver::start().await;
    create_endpoint(
        &app,
        json!({"url": receiver.url, "events": ["key.quota_threshold"]}),
    )
    .await;
    let account = app.create_account("Acme", "pro").await;
    let (key_id, key) = app
        .create_key(&account, json!({"scope": "all", "quota": {"requests": 5}}))
        .await;
    let spend = |n: usize, status: u16| {
        let (app, key) = (&app, key.clone());
        async move {
            app.forward_auth_times(&key, "GET", "/api/v1/invoices/7", n, status)
                .await;
            app.engine.flush_usage().await.unwrap();
        }
    };
    spend(3, 204).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(receiver.received().is_empty(), "nothing below 80 %");

    spend(1, 204).await; // 4 of 5: 80 %
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body["type"], "key.quota_threshold");
    assert_eq!(got[0].body["data"]["id"], key_id.as_str());
    assert_eq!(got[0].body["data"]["quota"]["used"], 4);
    app.engine.flush_usage().await.unwrap();

    spend(1, 204).await; // 5 of 5: 100 %
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].body["type"], "key.quota_threshold");
    assert_eq!(got[1].body["data"]["quota"]["used"], 5);
    assert_ne!(got[0].id, got[1].id);

    spend(2, 429).await; // over the quota: refused, nothing more reached
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 2, "each threshold once");
}
