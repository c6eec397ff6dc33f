#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keygate_core::{Environment, KeyFormat, Pepper, Route, RouteTable};
use keygate_engine::{AdminToken, Engine, EngineConfig, Plans};
use keygate_server::{AppState, HttpConfig, PermissionCatalog};
use keygate_store::postgres::PostgresStore;
use keygate_store::sqlite::SqliteStore;
use keygate_store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A running keygate on a random port with its own database.
pub struct TestApp {
    pub base: String,
    pub admin_token: String,
    pub client: reqwest::Client,
    pub engine: Arc<Engine>,
    /// The server's store, for setting up many records at once (imports).
    pub store: Arc<dyn Store>,
    pub addr: SocketAddr,
    /// What the server was started with (to start a gateway on the same engine).
    pub state: AppState,
    _dir: tempfile::TempDir,
}

/// Knobs for [`spawn_with`].
pub struct Options {
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub routes: Vec<Route>,
    pub verify_token: Option<String>,
    pub plans: Plans,
    /// Failed authentications allowed per address (`None`: no throttling).
    pub failed_auth: Option<keygate_store::RateLimit>,
    /// The dashboard's permission catalog (`[permissions]`); none by default.
    pub permission_catalog: PermissionCatalog,
    /// Leak reports: the action and GitHub's key list.
    pub leaks: keygate_server::LeakConfig,
    pub portal: keygate_server::PortalConfig,
    /// How long usage counts and settled webhook events are kept (90 days by default).
    pub usage_retention: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trusted_proxies: Vec::new(),
            routes: vec![
                Route::new("POST", "/api/v1/invoices/{id}/send", "invoices.send").unwrap(),
            ],
            verify_token: Some("verify-token-for-tests-0123456789".into()),
            plans: Plans::reference(),
            failed_auth: None,
            permission_catalog: PermissionCatalog::default(),
            leaks: keygate_server::LeakConfig::default(),
            portal: keygate_server::PortalConfig::default(),
            usage_retention: Duration::from_secs(90 * 86_400),
        }
    }
}

/// The invoicing example's catalog (`examples/invoices-api/keygate.toml`).
pub fn reference_catalog() -> PermissionCatalog {
    PermissionCatalog::new(
        &["invoices", "clients", "quotations", "products", "webhooks"],
        &["invoices.send"],
    )
    .unwrap()
}

pub async fn spawn() -> TestApp {
    spawn_with(Options::default()).await
}

/// The backend under test: SQLite in `dir`, or, with `KEYGATE_TEST_BACKEND=postgres`, a
/// fresh database on the server at `KEYGATE_TEST_POSTGRES`.
pub async fn test_store(dir: &std::path::Path) -> Arc<dyn Store> {
    match std::env::var("KEYGATE_TEST_BACKEND").as_deref() {
        Ok("postgres") => {
            let url = fresh_postgres_database().await;
            Arc::new(PostgresStore::open(&url, true).await.unwrap())
        }
        Ok("sqlite") | Err(_) => {
            let url = format!("sqlite://{}/keygate.db", dir.display());
            Arc::new(SqliteStore::open(&url).await.unwrap())
        }
        Ok(other) => panic!("unknown KEYGATE_TEST_BACKEND {other:?}"),
    }
}

/// Creates an empty database on the `KEYGATE_TEST_POSTGRES` server; returns its URL.
pub async fn fresh_postgres_database() -> String {
    let base = std::env::var("KEYGATE_TEST_POSTGRES")
        .expect("KEYGATE_TEST_POSTGRES must name a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432/postgres");
    keygate_test_support::fresh_postgres_database(&base).await
}

pub async fn spawn_with(options: Options) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path()).await;
    let (pepper, _) = Pepper::generate().unwrap();
    let (admin_token, _) = AdminToken::generate(&pepper).unwrap();
    spawn_node(Node::new(store, pepper, admin_token), options, dir).await
}

/// What one keygate node starts with. Several nodes over one PostgreSQL database, with the
/// same pepper and admin token, make a deployment (`tests/multinode.rs`).
pub struct Node {
    pub store: Arc<dyn Store>,
    pub pepper: Pepper,
    pub admin_token: String,
    pub cache_ttl: Duration,
    pub stale_if_error: Duration,
    /// Hear other nodes' key changes (PostgreSQL `LISTEN`); without it only the cache TTL
    /// brings them.
    pub listen_for_changes: bool,
}

impl Node {
    pub fn new(store: Arc<dyn Store>, pepper: Pepper, admin_token: String) -> Node {
        Node {
            store,
            pepper,
            admin_token,
            cache_ttl: Duration::from_secs(300),
            stale_if_error: Duration::from_secs(300),
            listen_for_changes: true,
        }
    }
}

/// Starts `node` on a random port; `dir` lives as long as the app.
pub async fn spawn_node(node: Node, options: Options, dir: tempfile::TempDir) -> TestApp {
    let Node {
        store,
        pepper,
        admin_token,
        cache_ttl,
        stale_if_error,
        listen_for_changes,
    } = node;
    let admin = AdminToken::from_secret(&pepper, &admin_token);
    let engine = Engine::new(
        store.clone(),
        EngineConfig {
            key_format: KeyFormat::new("kg", true).unwrap(),
            pepper: pepper.clone(),
            routes: RouteTable::new(options.routes),
            plans: options.plans,
            cache_capacity: 10_000,
            cache_ttl,
            negative_cache_ttl: Duration::from_secs(10),
            stale_if_error,
            usage_retention: options.usage_retention,
        },
    );
    if listen_for_changes {
        engine.spawn_change_listener().await.unwrap();
    }
    let state = AppState {
        engine: engine.clone(),
        admin,
        verify_token: options
            .verify_token
            .map(|t| AdminToken::from_secret(&pepper, &t)),
        http: Arc::new(HttpConfig {
            trusted_proxies: options.trusted_proxies,
            failed_auth: options
                .failed_auth
                .map(|l| Arc::new(keygate_engine::FailureThrottle::new(l))),
            permission_catalog: options.permission_catalog,
            leaks: options.leaks,
            portal: options.portal,
            ..HttpConfig::default()
        }),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(keygate_server::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    TestApp {
        base: format!("http://{addr}"),
        admin_token,
        client: reqwest::Client::new(),
        engine,
        store,
        addr,
        state,
        _dir: dir,
    }
}

/// An answer: status, headers and the JSON body (Null when there is none).
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the shape every error answer shares.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.code(), code, "body: {}", self.body);
        assert!(self.body["error"].is_string(), "body: {}", self.body);
        assert!(self.body["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_")));
        if status == 401 {
            assert_eq!(
                self.header("www-authenticate"),
                Some(r#"Bearer error="invalid_token""#)
            );
        }
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)))
    };
    Answer {
        status,
        headers,
        body,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with `credential` as a bearer token (or none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        credential: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.client.request(method, self.url(path));
        if let Some(c) = credential {
            req = req.bearer_auth(c);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.unwrap()).await
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call(method, path, Some(&self.admin_token.clone()), body)
            .await
    }

    pub async fn create_account(&self, name: &str, plan: &str) -> String {
        let a = self
            .admin(
                Method::POST,
                "/v1/accounts",
                Some(json!({"name": name, "plan": plan})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.body["id"].as_str().unwrap().to_owned()
    }

    /// Creates a key with `extra` fields merged into the body; returns (id, secret).
    pub async fn create_key(&self, account_id: &str, extra: Value) -> (String, String) {
        let a = self.create_key_answer(account_id, extra).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        (
            a.body["id"].as_str().unwrap().to_owned(),
            a.body["key"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn create_key_answer(&self, account_id: &str, extra: Value) -> Answer {
        let mut body = json!({"account_id": account_id, "name": "test key"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        self.admin(Method::POST, "/v1/api-keys", Some(body)).await
    }

    /// Forward-auth as nginx would ask it.
    pub async fn forward_auth(&self, key: Option<&str>, method: &str, uri: &str) -> Answer {
        let mut req = self
            .client
            .get(self.url("/v1/auth"))
            .header("X-Original-Method", method)
            .header("X-Original-URI", uri);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        answer(req.send().await.unwrap()).await
    }

    /// `POST /v1/verify` with the admin token.
    /// Sends the same forward-auth request `times` times and asserts each answer's status.
    pub async fn forward_auth_times(
        &self,
        key: &str,
        method: &str,
        uri: &str,
        times: usize,
        status: u16,
    ) {
        for i in 0..times {
            let got = self.forward_auth(Some(key), method, uri).await.status;
            assert_eq!(got.as_u16(), status, "request {} of {times}", i + 1);
        }
    }

    pub async fn verify(&self, body: Value) -> Answer {
        self.admin(Method::POST, "/v1/verify", Some(body)).await
    }
}

/// `count` keys of `account_id` written straight into the store (an import: no plan cap,
/// no audit, one statement per 500 keys), for lists longer than creating them one request
/// at a time allows. `shape` adjusts each before it is stored; ids are random, created_at
/// is shared by runs of three keys so that pages must order by id within a moment.
pub async fn import_keys(
    app: &TestApp,
    account_id: &str,
    count: usize,
    shape: impl Fn(usize, &mut keygate_store::KeyRecord),
) -> Vec<keygate_store::KeyRecord> {
    let base = keygate_engine::now_ms() - 86_400_000;
    let keys: Vec<_> = (0..count)
        .map(|i| {
            let mut digest = [0u8; 32];
            let random = keygate_core::key::random_hex(16).unwrap();
            digest.copy_from_slice(random.as_bytes());
            let mut key = keygate_store::KeyRecord {
                id: format!("key_{}", keygate_core::key::random_hex(12).unwrap()),
                account_id: account_id.to_owned(),
                name: format!("imported {i}"),
                display_prefix: format!("kg_{}", &random[..8]),
                digest: keygate_core::KeyDigest(digest),
                environment: Environment::Live,
                permissions: vec!["invoices.read".into()],
                ip_allowlist: Vec::new(),
                rate_limit: None,
                quota: None,
                quota_used: 0,
                quota_refilled_at: None,
                meta: json!({}),
                created_at: base + (i / 3) as i64,
                last_used_at: None,
                expires_at: None,
                revoked_at: None,
                rotated_from: None,
                recent_ips: Vec::new(),
                leaked_at: None,
                retire_when_idle_ms: None,
            };
            shape(i, &mut key);
            key
        })
        .collect();
    let inserted = app.store.import_keys(&keys).await.unwrap();
    assert_eq!(inserted, count as u64);
    keys
}

/// A well-formed key (right shape and checksum) that no database holds: generated, so no
/// full-looking key is committed.
pub fn unknown_key(env: Environment) -> String {
    KeyFormat::new("kg", true)
        .unwrap()
        .generate(env)
        .unwrap()
        .expose()
        .to_owned()
}
