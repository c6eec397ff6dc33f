//! The transactional outbox across a crash: the real `keygate serve` acknowledges a key
//! created (the event is committed with it), is SIGKILLed before its worker sends anything
//! (its poll interval is a minute), and after a restart the event is delivered, signed, to
//! a receiver on loopback that checks the signature with its own implementation of
//! Standard Webhooks v1.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use keygate_test_support::free_port;
use serde_json::{json, Value};
use sha2::Sha256;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");
const ADMIN: &str = "webhook-process-admin-token-0123456789abcdef";

type Got = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn receive(State(got): State<Got>, headers: HeaderMap, body: Bytes) -> &'static str {
    got.lock().unwrap().push((headers, body));
    "ok"
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(dir: &Path, poll_ms: u64) -> Server {
    let port = free_port();
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYGATE_") {
            command.env_remove(&name);
        }
    }
    let child = command
        .arg("serve")
        .current_dir(dir)
        .env("KEYGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "KEYGATE_DATABASE_URL",
            format!("sqlite://{}/keygate.db", dir.display()),
        )
        .env("KEYGATE_ADMIN_TOKEN", ADMIN)
        .env("KEYGATE_LOG", "warn")
        .env("KEYGATE_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("KEYGATE_WEBHOOK_POLL_MS", poll_ms.to_string())
        .env("KEYGATE_WEBHOOK_RETRY_BASE_MS", "200")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join(format!("stderr-{port}"))).unwrap())
        .spawn()
        .expect("spawn keygate serve");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = reqwest::get(format!("{}/healthz", server.base)).await;
        if matches!(&health, Ok(r) if r.status().as_u16() == 200) {
            return server;
        }
        assert!(Instant::now() < deadline, "keygate did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin(server: &Server, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "{path}");
    response.json().await.unwrap()
}

/// Standard Webhooks v1, from the spec: `v1,` + base64 HMAC-SHA256 keyed by the decoded
/// secret over `{webhook-id}.{webhook-timestamp}.{body}`.
fn signature_ok(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_owned();
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

#[tokio::test]
async fn an_event_committed_before_a_sigkill_is_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let got: Got = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // A worker that would first look for deliveries a minute from now.
    let server = start(dir.path(), 60_000).await;
    let endpoint = admin(&server, "/v1/webhook-endpoints", json!({"url": hook})).await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let account = admin(&server, "/v1/accounts", json!({"name": "Acme"})).await;
    let key = admin(
        &server,
        "/v1/api-keys",
        json!({"account_id": account["id"], "name": "ci"}),
    )
    .await;
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);
    assert!(got.lock().unwrap().is_empty(), "sent before the kill");

    let _restarted = start(dir.path(), 50).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the event was lost in the crash");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    assert!(signature_ok(&secret, headers, body));
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["type"], "key.created");
    assert_eq!(event["data"]["id"], key["id"]);
    assert!(!String::from_utf8_lossy(body).contains(key["key"].as_str().unwrap()));
}
