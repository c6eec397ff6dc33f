//! Leaked-key reports (GitHub secret scanning's signed endpoint and `POST /v1/leaks`), idle
//! retirement after rotation, and plans' key lifetime cap. GitHub is played by a P-256 key
//! pair made here and a key list served from a local HTTP server in GitHub's format.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use keygate_core::{Environment, KeyFormat};
use keygate_engine::manage::LeakAction;
use keygate_engine::Plans;
use keygate_server::{GithubScanningKeys, LeakConfig};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{answer, spawn, spawn_with, Answer, Options, TestApp};

const READ_INVOICE: &str = "/api/v1/invoices/42";

async fn auth_status(app: &TestApp, key: &str) -> u16 {
    app.forward_auth(Some(key), "GET", READ_INVOICE)
        .await
        .status
        .as_u16()
}

/// GitHub's side: signing keys and the key list it publishes.
struct Github {
    list_url: String,
    published: Arc<Mutex<Vec<(String, String)>>>,
    fetches: Arc<AtomicUsize>,
}

fn signing_key() -> SigningKey {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).unwrap();
    SigningKey::from_slice(&bytes).unwrap()
}

fn pem(key: &SigningKey) -> String {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

fn sign(key: &SigningKey, body: &[u8]) -> String {
    let signature: Signature = key.sign(body);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

impl Github {
    /// Serves `{"public_keys": [...]}` on a loopback port and counts the fetches.
    async fn start() -> Github {
        let published: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let (list, count) = (published.clone(), fetches.clone());
        let router = axum::Router::new().route(
            "/meta/public_keys/secret_scanning",
            axum::routing::get(move || {
                let (list, count) = (list.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    let keys: Vec<Value> = list
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(id, pem)| json!({"key_identifier": id, "key": pem, "is_current": true}))
                        .collect();
                    axum::Json(json!({"public_keys": keys}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Github {
            list_url: format!("http://{addr}/meta/public_keys/secret_scanning"),
            published,
            fetches,
        }
    }

    fn publish(&self, id: &str, key: &SigningKey) {
        self.published
            .lock()
            .unwrap()
            .push((id.to_owned(), pem(key)));
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn leak_app(github: &Github, action: LeakAction, refetch_after: Duration) -> TestApp {
    spawn_with(Options {
        leaks: LeakConfig {
            action,
            github_keys: Arc::new(GithubScanningKeys::new(&github.list_url, refetch_after)),
        },
        ..Options::default()
    })
    .await
}

/// `POST /v1/leaks/github` with the given signature headers (`None`: header left out).
async fn report(
    app: &TestApp,
    key_id: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Answer {
    let mut req = app
        .client
        .post(app.url("/v1/leaks/github"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(id) = key_id {
        req = req.header("Github-Public-Key-Identifier", id);
    }
    if let Some(s) = signature {
        req = req.header("Github-Public-Key-Signature", s);
    }
    answer(req.send().await.unwrap()).await
}

fn matches(tokens: &[&str]) -> Vec<u8> {
    let list: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({"token": t, "type": "keygate_api_key", "url": "https://github.com/acme/app/blob/abc/.env", "source": "content"})
        })
        .collect();
    serde_json::to_vec(&list).unwrap()
}

async fn key_view(app: &TestApp, id: &str) -> Value {
    app.admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
        .await
        .body
}

async fn audit_of(app: &TestApp, id: &str) -> Vec<Value> {
    let log = app
        .admin(Method::GET, &format!("/v1/audit-log?target_id={id}"), None)
        .await;
    log.body["data"].as_array().unwrap().clone()
}

/// A well-formed `kg` key (right prefix, checksum) that this deployment never issued.
fn foreign_key() -> String {
    KeyFormat::new("kg", true)
        .unwrap()
        .generate(Environment::Live)
        .unwrap()
        .expose()
        .to_owned()
}

#[tokio::test]
async fn a_signed_github_report_revokes_audits_and_labels_each_token() {
    let github = Github::start().await;
    let signer = signing_key();
    github.publish("gh-key-1", &signer);
    let app = leak_app(&github, LeakAction::Revoke, Duration::from_secs(60)).await;
    let account = app.create_account("Acme", "pro").await;
    let (live_id, live) = app.create_key(&account, json!({"scope": "all"})).await;
    let (gone_id, gone) = app.create_key(&account, json!({"scope": "all"})).await;
    app.admin(
        Method::POST,
        &format!("/v1/api-keys/{gone_id}/revoke"),
        None,
    )
    .await;
    assert_eq!(auth_status(&app, &live).await, 204);
    let unknown = foreign_key();
    let body = matches(&[&live, &gone, "kg_live_not-a-key", &unknown]);

    let got = report(&app, Some("gh-key-1"), Some(&sign(&signer, &body)), &body).await;

    assert_eq!(got.status.as_u16(), 200, "{}", got.body);
    let labels: Vec<(&str, &str, &str)> = got
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["token_raw"].as_str().unwrap(),
                f["token_type"].as_str().unwrap(),
                f["label"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        labels,
        vec![
            (live.as_str(), "keygate_api_key", "true_positive"),
            (gone.as_str(), "keygate_api_key", "true_positive"),
            ("kg_live_not-a-key", "keygate_api_key", "false_positive"),
            (unknown.as_str(), "keygate_api_key", "false_positive"),
        ]
    );
    assert_eq!(auth_status(&app, &live).await, 401);
    let view = key_view(&app, &live_id).await;
    assert_eq!(view["status"], "revoked");
    assert!(view["leaked_at"].is_string(), "{view}");
    let events = audit_of(&app, &live_id).await;
    let leaked = events
        .iter()
        .find(|e| e["action"] == "key.leaked")
        .expect("a key.leaked event");
    assert_eq!(leaked["actor"], "scanner:github");
    assert_eq!(
        leaked["details"]["url"],
        "https://github.com/acme/app/blob/abc/.env"
    );
    assert_eq!(leaked["details"]["source"], "content");
    assert_eq!(leaked["details"]["token_type"], "keygate_api_key");
    assert_eq!(leaked["details"]["action"], "revoked");
    // The key revoked before is marked and audited, with nothing more to do.
    let gone_events = audit_of(&app, &gone_id).await;
    let leaked = gone_events
        .iter()
        .find(|e| e["action"] == "key.leaked")
        .unwrap();
    assert_eq!(leaked["details"]["action"], "none");
    assert!(key_view(&app, &gone_id).await["leaked_at"].is_string());
    assert_eq!(github.fetches(), 1);
}

#[tokio::test]
async fn bad_missing_or_unknown_signatures_answer_401_and_change_nothing() {
    let github = Github::start().await;
    let signer = signing_key();
    github.publish("gh-key-1", &signer);
    let app = leak_app(&github, LeakAction::Revoke, Duration::from_secs(60)).await;
    let account = app.create_account("Acme", "pro").await;
    let (id, key) = app.create_key(&account, json!({"scope": "all"})).await;
    let body = matches(&[&key]);
    let good = sign(&signer, &body);
    let forger = signing_key();

    // What is wrong, the identifier header, the signature header, the body.
    type Attempt<'a> = (&'a str, Option<&'a str>, Option<String>, Vec<u8>);
    let attempts: Vec<Attempt> = vec![
        ("no headers", None, None, body.clone()),
        ("no signature", Some("gh-key-1"), None, body.clone()),
        ("no identifier", None, Some(good.clone()), body.clone()),
        (
            "another key's signature",
            Some("gh-key-1"),
            Some(sign(&forger, &body)),
            body.clone(),
        ),
        (
            "a changed body",
            Some("gh-key-1"),
            Some(good.clone()),
            matches(&[&key, &key]),
        ),
        (
            "an unknown identifier",
            Some("gh-key-2"),
            Some(good.clone()),
            body.clone(),
        ),
        (
            "not base64",
            Some("gh-key-1"),
            Some("%%%".to_owned()),
            body.clone(),
        ),
        (
            "not DER",
            Some("gh-key-1"),
            Some("AAAA".to_owned()),
            body.clone(),
        ),
    ];
    for (what, key_id, signature, body) in attempts {
        let got = report(&app, key_id, signature.as_deref(), &body).await;
        assert_eq!(got.status.as_u16(), 401, "{what}: {}", got.body);
        got.assert_error(401, "invalid_signature");
    }
    assert_eq!(auth_status(&app, &key).await, 204);
    assert_eq!(key_view(&app, &id).await["leaked_at"], Value::Null);
    assert!(audit_of(&app, &id)
        .await
        .iter()
        .all(|e| e["action"] != "key.leaked"));
    // The good signature still works (the failures above did not spoil the key list).
    let got = report(&app, Some("gh-key-1"), Some(&good), &body).await;
    assert_eq!(got.status.as_u16(), 200, "{}", got.body);
    assert_eq!(auth_status(&app, &key).await, 401);
}

#[tokio::test]
async fn a_new_identifier_fetches_the_key_list_again_at_most_once_per_interval() {
    let github = Github::start().await;
    let first = signing_key();
    github.publish("gh-key-1", &first);
    let app = leak_app(&github, LeakAction::Revoke, Duration::from_millis(700)).await;
    let body = matches(&[&foreign_key()]);

    let got = report(&app, Some("gh-key-1"), Some(&sign(&first, &body)), &body).await;
    assert_eq!(got.status.as_u16(), 200, "{}", got.body);
    assert_eq!(got.body[0]["label"], "false_positive");
    assert_eq!(github.fetches(), 1);

    // GitHub rotates its key. Within the interval the list is not asked again.
    let second = signing_key();
    github.publish("gh-key-2", &second);
    let signed = sign(&second, &body);
    report(&app, Some("gh-key-2"), Some(&signed), &body)
        .await
        .assert_error(401, "invalid_signature");
    assert_eq!(github.fetches(), 1);

    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = report(&app, Some("gh-key-2"), Some(&signed), &body).await;
    assert_eq!(got.status.as_u16(), 200, "{}", got.body);
    assert_eq!(github.fetches(), 2);
    // Known identifiers need no fetch; a forged one right after cannot cause one.
    report(&app, Some("gh-key-1"), Some(&sign(&first, &body)), &body).await;
    report(&app, Some("gh-key-9"), Some(&signed), &body)
        .await
        .assert_error(401, "invalid_signature");
    assert_eq!(github.fetches(), 2);
}

#[tokio::test]
async fn an_unreachable_key_list_answers_503() {
    let app = spawn_with(Options {
        leaks: LeakConfig {
            action: LeakAction::Revoke,
            // Nothing listens on port 9 of loopback.
            github_keys: Arc::new(GithubScanningKeys::new(
                "http://127.0.0.1:9/keys",
                Duration::from_secs(60),
            )),
        },
        ..Options::default()
    })
    .await;
    let body = matches(&[&foreign_key()]);
    report(
        &app,
        Some("gh-key-1"),
        Some(&sign(&signing_key(), &body)),
        &body,
    )
    .await
    .assert_error(503, "signature_keys_unavailable");
}

#[tokio::test]
async fn notify_marks_and_audits_but_leaves_the_key_working() {
    let github = Github::start().await;
    let signer = signing_key();
    github.publish("gh-key-1", &signer);
    let app = leak_app(&github, LeakAction::Notify, Duration::from_secs(60)).await;
    let account = app.create_account("Acme", "pro").await;
    let (id, key) = app.create_key(&account, json!({"scope": "all"})).await;
    let body = matches(&[&key]);

    let got = report(&app, Some("gh-key-1"), Some(&sign(&signer, &body)), &body).await;
    assert_eq!(got.body[0]["label"], "true_positive", "{}", got.body);
    let got = app
        .admin(
            Method::POST,
            "/v1/leaks",
            Some(json!({"keys": [key], "source": "pastebin"})),
        )
        .await;
    assert_eq!(got.body[0]["label"], "true_positive", "{}", got.body);

    assert_eq!(auth_status(&app, &key).await, 204);
    let view = key_view(&app, &id).await;
    assert_eq!(view["status"], "active");
    assert!(view["leaked_at"].is_string());
    let leaks: Vec<Value> = audit_of(&app, &id)
        .await
        .into_iter()
        .filter(|e| e["action"] == "key.leaked")
        .collect();
    assert_eq!(leaks.len(), 2);
    assert!(leaks.iter().all(|e| e["details"]["action"] == "notified"));
    assert!(leaks
        .iter()
        .any(|e| e["actor"] == "admin" && e["details"]["source"] == "pastebin"));
}

#[tokio::test]
async fn the_admin_report_revokes_labels_and_is_for_the_admin_only() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (id, key) = app.create_key(&account, json!({"scope": "all"})).await;
    let (_, other) = app.create_key(&account, json!({"scope": "all"})).await;
    // A key, even one that may manage keys, cannot report.
    app.call(
        Method::POST,
        "/v1/leaks",
        Some(&other),
        Some(json!({"keys": [key]})),
    )
    .await
    .assert_error(403, "forbidden");
    app.call(
        Method::POST,
        "/v1/leaks",
        None,
        Some(json!({"keys": [key]})),
    )
    .await
    .assert_error(401, "missing_credentials");
    app.admin(Method::POST, "/v1/leaks", Some(json!({"keys": "x"})))
        .await
        .assert_error(400, "validation_error");
    assert_eq!(auth_status(&app, &key).await, 204);

    let got = app
        .admin(
            Method::POST,
            "/v1/leaks",
            Some(
                json!({"keys": [key, "garbage", foreign_key()], "url": "https://paste.example/1"}),
            ),
        )
        .await;
    assert_eq!(got.status.as_u16(), 200, "{}", got.body);
    let labels: Vec<&str> = got
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["true_positive", "false_positive", "false_positive"]
    );
    assert_eq!(auth_status(&app, &key).await, 401);
    assert_eq!(auth_status(&app, &other).await, 204);
    let events = audit_of(&app, &id).await;
    let leaked = events.iter().find(|e| e["action"] == "key.leaked").unwrap();
    assert_eq!(leaked["details"]["url"], "https://paste.example/1");
    assert_eq!(leaked["details"]["action"], "revoked");
}

async fn rotate(app: &TestApp, id: &str, body: Value) -> Answer {
    app.admin(
        Method::POST,
        &format!("/v1/api-keys/{id}/rotate"),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn retire_when_idle_needs_a_grace_period_at_least_as_long() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (id, _) = app.create_key(&account, json!({"scope": "all"})).await;
    for body in [
        json!({"retire_when_idle_seconds": 10}),
        json!({"retire_when_idle_seconds": 10, "grace_period_seconds": 5}),
        json!({"retire_when_idle_seconds": 0, "grace_period_seconds": 5}),
    ] {
        let got = rotate(&app, &id, body.clone()).await;
        got.assert_error(400, "validation_error");
        assert_eq!(got.body["field"], "retire_when_idle_seconds", "{body}");
    }
    let got = rotate(
        &app,
        &id,
        json!({"retire_when_idle_seconds": 5, "grace_period_seconds": 5}),
    )
    .await;
    assert_eq!(got.status.as_u16(), 201, "{}", got.body);
    assert_eq!(got.body["previous"]["retire_when_idle_seconds"], 5);
    assert_eq!(got.body["retire_when_idle_seconds"], Value::Null);
}

/// Polls the key's record (not the key itself: that would be a use) until it is revoked,
/// then checks the key is refused; the time it took.
async fn until_revoked(app: &TestApp, id: &str, key: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while key_view(app, id).await["status"] != "revoked" {
        assert!(started.elapsed() < within, "still active after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    assert_eq!(auth_status(app, key).await, 401);
    took
}

#[tokio::test]
async fn the_old_key_is_retired_once_idle_after_the_new_keys_first_use() {
    let app = spawn().await;
    app.engine.spawn_idle_retirer(Duration::from_millis(100));
    let account = app.create_account("Acme", "pro").await;
    let (id, old) = app.create_key(&account, json!({"scope": "all"})).await;
    let rotated = rotate(
        &app,
        &id,
        json!({"grace_period_seconds": 60, "retire_when_idle_seconds": 1}),
    )
    .await;
    assert_eq!(rotated.status.as_u16(), 201, "{}", rotated.body);
    let new = rotated.body["key"].as_str().unwrap().to_owned();

    // Idle, but the new key is not in use yet: the old one keeps working.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(auth_status(&app, &old).await, 204);

    assert_eq!(auth_status(&app, &new).await, 204);
    // Still in use after the new key's first use: not retired while it is.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(auth_status(&app, &old).await, 204);
    }
    // Then it goes idle, and is retired about a second later.
    let took = until_revoked(&app, &id, &old, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(800), "retired after {took:?}");
    assert_eq!(auth_status(&app, &new).await, 204);
    let retirements: Vec<Value> = audit_of(&app, &id)
        .await
        .into_iter()
        .filter(|e| e["action"] == "key.revoke")
        .collect();
    assert_eq!(retirements.len(), 1, "{retirements:?}");
    assert_eq!(retirements[0]["details"]["reason"], "idle_after_rotation");
    assert_eq!(retirements[0]["actor"], "system");

    // Another node's check coming after finds nothing to do (idempotent).
    app.engine.retire_idle_keys().await.unwrap();
    let audit = keygate_store::AuditEvent {
        id: "evt_second_node".into(),
        seq: 0,
        at: keygate_engine::now_ms(),
        account_id: None,
        actor: "system".into(),
        action: "key.revoke".into(),
        target_id: Some(id.clone()),
        client_ip: None,
        details: json!({}),
    };
    let again = app
        .store
        .retire_idle_key(&id, keygate_engine::now_ms(), &audit)
        .await
        .unwrap();
    assert!(again.is_none());
    assert_eq!(
        audit_of(&app, &id)
            .await
            .iter()
            .filter(|e| e["action"] == "key.revoke")
            .count(),
        1
    );
}

#[tokio::test]
async fn without_the_new_keys_use_the_old_key_ends_with_the_grace_period() {
    let app = spawn().await;
    app.engine.spawn_idle_retirer(Duration::from_millis(100));
    let account = app.create_account("Acme", "pro").await;
    let (id, old) = app.create_key(&account, json!({"scope": "all"})).await;
    let rotated = rotate(
        &app,
        &id,
        json!({"grace_period_seconds": 2, "retire_when_idle_seconds": 1}),
    )
    .await;
    assert_eq!(rotated.status.as_u16(), 201, "{}", rotated.body);
    let started = Instant::now();
    let took = until_revoked(&app, &id, &old, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(1800),
        "revoked after {took:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // The grace period's end, not the idle check: no idle retirement in the log.
    assert!(audit_of(&app, &id)
        .await
        .iter()
        .all(|e| e["details"]["reason"] != "idle_after_rotation"));
}

fn days_from_now(view: &Value, field: &str) -> f64 {
    let at = chrono::DateTime::parse_from_rfc3339(view[field].as_str().unwrap()).unwrap();
    (at.timestamp_millis() - keygate_engine::now_ms()) as f64 / 86_400_000.0
}

#[tokio::test]
async fn a_plan_caps_key_lifetime_and_refuses_longer() {
    let app = spawn_with(Options {
        plans: Plans::reference().with_max_key_lifetime("pro", 30),
        ..Options::default()
    })
    .await;
    let capped = app.create_account("Capped", "pro").await;
    let free = app.create_account("Free", "unlimited").await;

    // No expiry asked: the longest the plan allows.
    let got = app
        .create_key_answer(&capped, json!({"scope": "all"}))
        .await;
    assert_eq!(got.status.as_u16(), 201, "{}", got.body);
    let left = days_from_now(&got.body, "expires_at");
    assert!((29.99..=30.0).contains(&left), "{left}");
    let id = got.body["id"].as_str().unwrap().to_owned();
    // Shorter is fine, longer is refused, naming expires_at.
    let got = app
        .create_key_answer(&capped, json!({"scope": "all", "expires_in": 10 * 86_400}))
        .await;
    assert!((9.99..=10.0).contains(&days_from_now(&got.body, "expires_at")));
    for body in [
        json!({"scope": "all", "expires_in": 31 * 86_400}),
        json!({"scope": "all", "expires_at": "2099-01-01T00:00:00Z"}),
    ] {
        let got = app.create_key_answer(&capped, body).await;
        got.assert_error(400, "validation_error");
        assert_eq!(got.body["field"], "expires_at");
    }
    // Updates cannot escape the cap either.
    for body in [
        json!({"expires_at": null}),
        json!({"expires_in": 40 * 86_400}),
    ] {
        let got = app
            .admin(Method::PATCH, &format!("/v1/api-keys/{id}"), Some(body))
            .await;
        got.assert_error(400, "validation_error");
        assert_eq!(got.body["field"], "expires_at");
    }
    // Rotation's new key gets its own cap, counted from now.
    let got = rotate(&app, &id, json!({})).await;
    assert_eq!(got.status.as_u16(), 201, "{}", got.body);
    assert!(days_from_now(&got.body, "expires_at") <= 30.0);
    // Other plans are not capped.
    let got = app.create_key_answer(&free, json!({"scope": "all"})).await;
    assert_eq!(got.body["expires_at"], Value::Null);
}
