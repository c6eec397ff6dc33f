//! The remote layer in a real axum service, asking a real keygate server (the server's app
//! on a random port, over a temp SQLite file or PostgreSQL): keys issued and revoked
//! through the server's admin API are honoured through the change stream, outages of the
//! stream fall back to the short TTL, and a wrong verify token is refused at open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use keygate_core::{KeyFormat, Pepper, RouteTable};
use keygate_engine::{AdminToken, Engine, EngineConfig, Plans};
use keygate_server::{AppState, HttpConfig};
use keygate_store::postgres::PostgresStore;
use keygate_store::sqlite::SqliteStore;
use keygate_store::Store;
use keygate_tower::{Caller, KeygateLayer, OpenError};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

const VERIFY_TOKEN: &str = "remote-layer-test-verify-token-0123456789";
/// What the remote cache promises: a revocation is refused within 1 s.
const HEARD_WITHIN: Duration = Duration::from_secs(1);
/// The layer's fallback TTL in these tests (the default).
const FALLBACK_TTL: Duration = Duration::from_secs(1);

/// Failure injection in front of the real router: counts `/v1/verify` calls (to tell a
/// cached verdict from an asked one), and can cut the change stream and refuse new ones.
#[derive(Clone)]
struct Faults {
    verify_calls: Arc<AtomicU64>,
    stream_blocked: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Faults {
    fn new() -> Faults {
        Faults {
            verify_calls: Arc::default(),
            stream_blocked: Arc::default(),
            cut: watch::channel(0).0,
        }
    }

    fn verify_calls(&self) -> u64 {
        self.verify_calls.load(Ordering::SeqCst)
    }

    /// Ends every open change stream and refuses new ones (503) until `restore`.
    fn cut_stream(&self) {
        self.stream_blocked.store(true, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore_stream(&self) {
        self.stream_blocked.store(false, Ordering::SeqCst);
    }
}

async fn inject(faults: Faults, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/v1/verify" {
        faults.verify_calls.fetch_add(1, Ordering::SeqCst);
    }
    if path != "/v1/key-changes" {
        return next.run(request).await;
    }
    if faults.stream_blocked.load(Ordering::SeqCst) {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let mut cut = faults.cut.subscribe();
    let (parts, body) = next.run(request).await.into_parts();
    let stream = body.into_data_stream().take_until(async move {
        let _ = cut.changed().await;
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

struct Server {
    engine: Arc<Engine>,
    base: String,
    admin_token: String,
    http: reqwest::Client,
    faults: Faults,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// A keygate server on `listener` with its own engine on `store`, as `keygate serve`
    /// runs it (change listener included), with the verify token set.
    async fn start(listener: TcpListener, store: Arc<dyn Store>, pepper: &Pepper) -> Server {
        let admin_token = format!("kgadmin_{}", keygate_core::key::random_hex(32).unwrap());
        let admin = AdminToken::from_secret(pepper, &admin_token);
        let engine = Engine::new(store, engine_config(pepper));
        engine.spawn_change_listener().await.unwrap();
        let state = AppState {
            engine,
            admin,
            verify_token: Some(AdminToken::from_secret(pepper, VERIFY_TOKEN)),
            // The default drain (20 s): the change streams must end by themselves.
            http: Arc::new(HttpConfig::default()),
        };
        let faults = Faults::new();
        let app = keygate_server::router(state.clone()).layer(axum::middleware::from_fn({
            let faults = faults.clone();
            move |request: Request, next: Next| inject(faults.clone(), request, next)
        }));
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let engine = state.engine.clone();
        let task = tokio::spawn(async move {
            let _ =
                keygate_server::serve_router_with(listener, app, state.http.edge.clone(), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Server {
            engine,
            base,
            admin_token,
            http: reqwest::Client::new(),
            faults,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server as `keygate serve` does on SIGTERM: the engine's background
    /// stops (which ends the change streams), then the listener drains.
    async fn stop(mut self) {
        self.engine.stop_background();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stopping = Instant::now();
        let _ = (&mut self.task).await;
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "open change streams held the shutdown for {:?}",
            stopping.elapsed()
        );
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let answer = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        answer.json().await.unwrap()
    }

    async fn account(&self, plan: &str) -> String {
        self.post("/v1/accounts", json!({"name": "Remote", "plan": plan}))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A new `read` key: (id, secret).
    async fn read_key(&self, account: &str) -> (String, String) {
        let key = self
            .post(
                "/v1/api-keys",
                json!({"account_id": account, "name": "remote", "scope": "read"}),
            )
            .await;
        (
            key["id"].as_str().unwrap().to_owned(),
            key["key"].as_str().unwrap().to_owned(),
        )
    }

    async fn revoke(&self, id: &str) {
        self.post(&format!("/v1/api-keys/{id}/revoke"), json!({}))
            .await;
    }
}

fn engine_config(pepper: &Pepper) -> EngineConfig {
    EngineConfig {
        key_format: KeyFormat::new("kg", true).unwrap(),
        pepper: pepper.clone(),
        routes: RouteTable::new(Vec::new()),
        plans: Plans::reference(),
        cache_capacity: 10_000,
        cache_ttl: Duration::from_secs(60),
        negative_cache_ttl: Duration::from_secs(10),
        stale_if_error: Duration::from_secs(300),
        usage_retention: Duration::from_secs(90 * 86_400),
    }
}

fn new_pepper() -> Pepper {
    Pepper::new(keygate_core::key::from_hex(&keygate_core::key::random_hex(32).unwrap()).unwrap())
}

/// The service a user writes, behind the remote layer.
async fn start_app(layer: KeygateLayer) -> String {
    let app =
        Router::new()
            .route(
                "/api/v1/invoices",
                get(|Caller(caller): Caller| async move {
                    format!("invoices of {}", caller.account_id())
                })
                .post(|| async { "created" }),
            )
            .route(
                "/whoami",
                get(|Caller(caller): Caller| async move {
                    axum::Json(json!({
                        "key_id": caller.key_id(),
                        "account_id": caller.account_id(),
                        "environment": caller.environment().as_str(),
                        "permissions": caller.permissions(),
                    }))
                })
                .layer(layer.any_key()),
            )
            .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    base
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn code(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

async fn call(app: &str, method: reqwest::Method, key: Option<&str>, path: &str) -> Answer {
    let mut request = reqwest::Client::new().request(method, format!("{app}{path}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let answer = request.send().await.unwrap();
    Answer {
        status: answer.status().as_u16(),
        headers: answer.headers().clone(),
        body: answer.text().await.unwrap(),
    }
}

async fn get_invoices(app: &str, key: &str) -> Answer {
    call(app, reqwest::Method::GET, Some(key), "/api/v1/invoices").await
}

/// Calls until the key is refused as invalid; the time from `since`. Fails if it is still
/// allowed after `within`.
async fn refused_after(app: &str, key: &str, since: Instant, within: Duration) -> Duration {
    loop {
        let answer = get_invoices(app, key).await;
        if answer.status == 401 {
            assert_eq!(answer.code(), "invalid_key", "{}", answer.body);
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "a revoked key still answered {} {} after {:?}",
            answer.status,
            answer.body,
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Calls the key until a call is answered from the layer's cache (the server not asked).
async fn until_cached(app: &str, key: &str, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(get_invoices(app, key).await.status, 200);
        let before = server.faults.verify_calls();
        assert_eq!(get_invoices(app, key).await.status, 200);
        if server.faults.verify_calls() == before {
            return;
        }
        assert!(Instant::now() < deadline, "the key's verdict is never kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/keygate.db", dir.path().display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
    (dir, store)
}

async fn open_layer(server: &Server) -> KeygateLayer {
    KeygateLayer::remote(&server.base, VERIFY_TOKEN)
        .open()
        .await
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn the_layer_honours_the_servers_keys(store: Arc<dyn Store>, backend: &str) {
    let pepper = new_pepper();
    let server = Server::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        store,
        &pepper,
    )
    .await;
    let layer = open_layer(&server).await;
    let app = start_app(layer.clone()).await;
    let account = server.account("unlimited").await;
    let (key_id, key) = server.read_key(&account).await;

    // Allowed: the handler sees the caller's identity, as the server describes it.
    let answer = get_invoices(&app, &key).await;
    assert_eq!(
        (answer.status, answer.body),
        (200, format!("invoices of {account}"))
    );
    let whoami = call(&app, reqwest::Method::GET, Some(&key), "/whoami").await;
    let whoami: Value = serde_json::from_str(&whoami.body).unwrap();
    assert_eq!(
        whoami,
        json!({"key_id": key_id, "account_id": account, "environment": "live", "permissions": ["*.read"]})
    );
    // Refused with keygate's own answers and headers, before the handler.
    let missing = call(&app, reqwest::Method::GET, None, "/api/v1/invoices").await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (401, "missing_credentials")
    );
    assert!(missing.headers.contains_key("www-authenticate"));
    let calls = server.faults.verify_calls();
    let create = call(&app, reqwest::Method::POST, Some(&key), "/api/v1/invoices").await;
    assert_eq!(
        (create.status, create.code().as_str()),
        (403, "insufficient_permissions")
    );
    let bad = format!("{}x", &key[..key.len() - 1]);
    let malformed = get_invoices(&app, &bad).await;
    assert_eq!(
        (malformed.status, malformed.code().as_str()),
        (401, "malformed_key")
    );
    let unknown = format!("kg_live_{}", "0".repeat(64));
    let unknown = get_invoices(&app, &unknown).await;
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    assert!(unknown.headers.contains_key("www-authenticate"));
    let in_url = call(
        &app,
        reqwest::Method::GET,
        None,
        &format!("/api/v1/invoices?key={key}"),
    )
    .await;
    assert_eq!((in_url.status, in_url.code().as_str()), (400, "key_in_url"));
    assert!(
        server.faults.verify_calls() <= calls + 2,
        "a kept verdict and local checks answer without the server"
    );

    // A key with a rate limit is asked every time: the server counts and limits it, and
    // the layer's answers carry its RateLimit fields and Retry-After.
    let limited = server
        .post(
            "/v1/api-keys",
            json!({"account_id": account, "name": "limited", "scope": "read",
                   "rate_limit": {"requests": 3, "per_seconds": 60}}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = server.faults.verify_calls();
    for _ in 0..3 {
        let answer = get_invoices(&app, &limited).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            answer.headers.contains_key("ratelimit"),
            "{:?}",
            answer.headers
        );
    }
    assert_eq!(server.faults.verify_calls(), before + 3);
    let limited = get_invoices(&app, &limited).await;
    assert_eq!(
        (limited.status, limited.code().as_str()),
        (429, "rate_limited")
    );
    assert!(
        limited.headers.contains_key("retry-after"),
        "{:?}",
        limited.headers
    );
    assert!(
        limited.headers.contains_key("ratelimit-policy"),
        "{:?}",
        limited.headers
    );

    // Revocations through the server reach the layer's cache.
    let rounds: usize = std::env::var("KEYGATE_REMOTE_REVOCATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let mut delays = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (id, secret) = if round == 0 {
            (key_id.clone(), key.clone())
        } else {
            server.read_key(&account).await
        };
        until_cached(&app, &secret, &server).await;
        // At a random moment: on SQLite the server reads its change table every 250 ms,
        // and the loop above would otherwise revoke at about the same point of that cycle.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() % 250);
        tokio::time::sleep(Duration::from_millis(u64::from(jitter))).await;
        server.revoke(&id).await;
        let revoked = Instant::now();
        delays.push(refused_after(&app, &secret, revoked, HEARD_WITHIN).await);
    }
    delays.sort();
    println!(
        "{backend}: remote revocation delay over {rounds} revocations: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        delays[delays.len() - 1]
    );
    layer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_remote_layer_honours_issued_and_revoked_keys() {
    let (_dir, store) = sqlite().await;
    the_layer_honours_the_servers_keys(store, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_remote_layer_honours_issued_and_revoked_keys() {
    let Some(server) = keygate_test_support::postgres_url() else {
        return;
    };
    let url = keygate_test_support::fresh_postgres_database(&server).await;
    let store = Arc::new(PostgresStore::open(&url, true).await.unwrap());
    the_layer_honours_the_servers_keys(store, "postgres").await;
}

/// The stream is cut while the server still answers `/v1/verify`: verdicts are kept for
/// the fallback TTL only, so a revocation the layer cannot hear of is refused within it;
/// once the stream is back, verdicts are kept long again and revocations heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_stream_verdicts_fall_back_to_the_short_ttl() {
    let (_dir, store) = sqlite().await;
    let pepper = new_pepper();
    let server = Server::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        store,
        &pepper,
    )
    .await;
    let layer = open_layer(&server).await;
    let app = start_app(layer.clone()).await;
    let account = server.account("unlimited").await;
    let (id, key) = server.read_key(&account).await;
    until_cached(&app, &key, &server).await;

    server.faults.cut_stream();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The stream is down: what was kept is dropped, the server is asked again.
    let before = server.faults.verify_calls();
    assert_eq!(get_invoices(&app, &key).await.status, 200);
    assert_eq!(
        server.faults.verify_calls(),
        before + 1,
        "dropped when the stream went down"
    );
    until_cached(&app, &key, &server).await;
    server.revoke(&id).await;
    let revoked = Instant::now();
    let delay = refused_after(
        &app,
        &key,
        revoked,
        FALLBACK_TTL + Duration::from_millis(500),
    )
    .await;
    println!("without the stream, a revocation was refused after {delay:?}");

    // Back: the layer reconnects (backoff up to 5 s), and revocations are heard again.
    server.faults.restore_stream();
    let (id, key) = server.read_key(&account).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        until_cached(&app, &key, &server).await;
        tokio::time::sleep(FALLBACK_TTL + Duration::from_millis(200)).await;
        let before = server.faults.verify_calls();
        assert_eq!(get_invoices(&app, &key).await.status, 200);
        if server.faults.verify_calls() == before {
            break; // kept past the fallback TTL: the stream is up
        }
        assert!(Instant::now() < deadline, "the layer never reconnected");
    }
    server.revoke(&id).await;
    let revoked = Instant::now();
    refused_after(&app, &key, revoked, HEARD_WITHIN).await;
    layer.shutdown().await;
}

/// The server restarts: its streams end, and a key revoked while it was down (by another
/// handle on the database, as the CLI or another node would) is refused once it is back,
/// never allowed past the fallback TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_the_server_restarts_is_refused() {
    let (dir, store) = sqlite().await;
    let pepper = new_pepper();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::start(listener, store.clone(), &pepper).await;
    let layer = open_layer(&server).await;
    let app = start_app(layer.clone()).await;
    let account = server.account("unlimited").await;
    let (id, key) = server.read_key(&account).await;
    until_cached(&app, &key, &server).await;

    server.stop().await;
    // Another handle on the same database revokes the key while the server is down.
    let url = format!("sqlite://{}/keygate.db", dir.path().display());
    let other = Engine::new(
        Arc::new(SqliteStore::open(&url).await.unwrap()),
        engine_config(&pepper),
    );
    other
        .revoke_key(&keygate_engine::manage::Caller::admin(None), &id)
        .await
        .unwrap();
    let revoked = Instant::now();
    // While down, the key is refused (the server cannot be asked: 503), never allowed.
    let answer = get_invoices(&app, &key).await;
    assert_ne!(answer.status, 200, "{}", answer.body);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let server = Server::start(TcpListener::bind(addr).await.unwrap(), store, &pepper).await;
    refused_after(&app, &key, revoked, FALLBACK_TTL + Duration::from_secs(1)).await;
    // And the layer follows the restarted server's stream.
    let (id, key) = server.read_key(&account).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        until_cached(&app, &key, &server).await;
        tokio::time::sleep(FALLBACK_TTL + Duration::from_millis(200)).await;
        let before = server.faults.verify_calls();
        assert_eq!(get_invoices(&app, &key).await.status, 200);
        if server.faults.verify_calls() == before {
            break;
        }
        assert!(Instant::now() < deadline, "the layer never reconnected");
    }
    server.revoke(&id).await;
    refused_after(&app, &key, Instant::now(), HEARD_WITHIN).await;
    layer.shutdown().await;
}

#[tokio::test]
async fn a_wrong_verify_token_or_an_unreachable_server_is_refused_at_open() {
    let (_dir, store) = sqlite().await;
    let pepper = new_pepper();
    let server = Server::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        store,
        &pepper,
    )
    .await;
    let wrong = KeygateLayer::remote(&server.base, "not-the-verify-token")
        .open()
        .await
        .err();
    assert!(
        matches!(wrong, Some(OpenError::BadVerifyToken)),
        "{wrong:?}"
    );
    let message = wrong.unwrap().to_string();
    assert!(message.contains("refused the verify token"), "{message}");
    assert!(
        !message.contains("not-the-verify-token"),
        "the token is not repeated"
    );

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = KeygateLayer::remote(&nowhere, VERIFY_TOKEN)
        .open()
        .await
        .err();
    assert!(
        matches!(unreachable, Some(OpenError::Unreachable(_))),
        "{unreachable:?}"
    );
    let bad_url = KeygateLayer::remote("keygate.internal", VERIFY_TOKEN)
        .open()
        .await
        .err();
    assert!(
        matches!(bad_url, Some(OpenError::BadServerUrl)),
        "{bad_url:?}"
    );
    server.stop().await;
}

/// The stream as any client sees it: authenticated, a `resync` first, then `key` events
/// with consecutive ids naming the key (never its secret or digest), and `Cache-Control`
/// on `/v1/verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_stream_speaks_server_sent_events() {
    let (_dir, store) = sqlite().await;
    let pepper = new_pepper();
    let server = Server::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        store,
        &pepper,
    )
    .await;
    let url = format!("{}/v1/key-changes", server.base);
    let anonymous = server.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = server
        .http
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let mut stream = server
        .http
        .get(&url)
        .bearer_auth(VERIFY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let account = server.account("unlimited").await;
    let (id, key) = server.read_key(&account).await;
    let verify = server
        .http
        .post(format!("{}/v1/verify", server.base))
        .bearer_auth(VERIFY_TOKEN)
        .json(&json!({"key": key}))
        .send()
        .await
        .unwrap();
    assert_eq!(verify.headers()["cache-control"], "private, max-age=60");
    server.revoke(&id).await;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let named = format!(r#"data: {{"key_id":"{id}"}}"#);
    while !text.contains(&named) {
        let chunk = tokio::time::timeout_at(deadline.into(), stream.chunk())
            .await
            .expect("the key's event within 5 s")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    assert!(events[0].contains("event: resync"), "{text}");
    assert!(
        events[0].contains(r#"data: {"reason":"connected"}"#),
        "{text}"
    );
    let ids: Vec<u64> = events
        .iter()
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("id: ")))
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{text}");
    assert!(!text.contains(&key[8..]), "no secret in the stream");
    server.stop().await;
}

/// A short-lived token (`POST /v1/tokens`) through the remote layer: the server judges it,
/// the layer keeps the verdict, and revoking the token's key drops it (the change stream
/// names the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_token_passes_the_remote_layer_until_its_key_is_revoked() {
    let (_dir, store) = sqlite().await;
    let pepper = new_pepper();
    let server = Server::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        store,
        &pepper,
    )
    .await;
    let app = start_app(open_layer(&server).await).await;
    let account = server.account("unlimited").await;
    let (key_id, key) = server.read_key(&account).await;
    let issued: Value = server
        .http
        .post(format!("{}/v1/tokens", server.base))
        .bearer_auth(&key)
        .json(&json!({"ttl_seconds": 600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = issued["token"].as_str().expect("a token").to_owned();

    let who = call(&app, reqwest::Method::GET, Some(&token), "/whoami").await;
    assert_eq!(who.status, 200, "{}", who.body);
    let who: Value = serde_json::from_str(&who.body).unwrap();
    assert_eq!(who["key_id"], key_id.as_str());
    assert_eq!(who["permissions"], json!(["*.read"]));
    let create = call(
        &app,
        reqwest::Method::POST,
        Some(&token),
        "/api/v1/invoices",
    )
    .await;
    assert_eq!(create.status, 403, "{}", create.body);
    until_cached(&app, &token, &server).await;

    server.revoke(&key_id).await;
    let took = refused_after(&app, &token, Instant::now(), HEARD_WITHIN).await;
    eprintln!("the token's key revocation reached the layer in {took:?}");
    server.stop().await;
}
