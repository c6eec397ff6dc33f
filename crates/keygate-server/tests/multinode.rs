//! Several keygate nodes over one PostgreSQL database, as behind a load balancer: three
//! in-process servers on loopback, each with its own engine, connection pool and change
//! listener, sharing the pepper, the admin token and the database. They check that a change
//! made through one node reaches the caches of the others (LISTEN/NOTIFY, and the cache TTL
//! when a notification is missed), and that plan caps stay exact across nodes.
//!
//! Each test makes a fresh database on the server at `KEYGATE_TEST_POSTGRES`; without it they
//! print that they skipped and pass. `bench/scale-out/propagation.sh` runs the propagation
//! measurement in a release build.

#[path = "api/helpers.rs"]
mod helpers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use helpers::{spawn_node, Node, Options, TestApp};
use keygate_core::Pepper;
use keygate_engine::AdminToken;
use keygate_store::postgres::PostgresStore;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// The bound the issue sets for a change to reach every node.
const WITHIN: Duration = Duration::from_secs(1);

/// The tests here measure how fast changes travel between nodes, so they run one at a time:
/// on a small machine, one test's busy polling delayed the notifications another test was
/// waiting for by up to two seconds.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a deployment's nodes share.
struct Deployment {
    url: String,
    pepper: Pepper,
    admin_token: String,
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

impl Deployment {
    /// A fresh database on the `KEYGATE_TEST_POSTGRES` server, migrated once (as
    /// `keygate migrate` would), or `None` (and a note) when it is unset.
    async fn new() -> Option<Deployment> {
        keygate_test_support::postgres_url()?;
        let one_at_a_time = ONE_AT_A_TIME.lock().await;
        let url = helpers::fresh_postgres_database().await;
        PostgresStore::open(&url, true).await.unwrap();
        let (pepper, _) = Pepper::generate().unwrap();
        let (admin_token, _) = AdminToken::generate(&pepper).unwrap();
        Some(Deployment {
            url,
            pepper,
            admin_token,
            _one_at_a_time: one_at_a_time,
        })
    }

    /// A node's settings: its own pool on the shared database.
    async fn node(&self) -> Node {
        let store = PostgresStore::open(&self.url, false).await.unwrap();
        Node::new(
            Arc::new(store),
            self.pepper.clone(),
            self.admin_token.clone(),
        )
    }

    async fn start(&self, node: Node) -> TestApp {
        self.start_with(node, Options::default()).await
    }

    async fn start_with(&self, node: Node, options: Options) -> TestApp {
        spawn_node(node, options, tempfile::tempdir().unwrap()).await
    }

    /// `n` nodes with the default settings (listening for changes).
    async fn nodes(&self, n: usize) -> Vec<TestApp> {
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(self.start(self.node().await).await);
        }
        nodes
    }
}

/// Three nodes, A B C, over a fresh database; `None` when PostgreSQL tests are skipped.
async fn three_nodes() -> Option<(Deployment, Vec<TestApp>)> {
    let deployment = Deployment::new().await?;
    let nodes = deployment.nodes(3).await;
    Some((deployment, nodes))
}

async fn account(node: &TestApp, plan: &str) -> String {
    node.create_account("Acme Invoicing", plan).await
}

/// Forward-auth of `GET /api/v1/invoices` (or `method`) on `node`: the status.
async fn auth_status(node: &TestApp, key: &str, method: &str) -> u16 {
    node.forward_auth(Some(key), method, "/api/v1/invoices")
        .await
        .status
        .as_u16()
}

/// Asks `node` about `key` without pause until it answers `want`; the time that took
/// (measured from `since`). Panics after `within`.
async fn wait_for(
    node: &TestApp,
    key: &str,
    method: &str,
    want: u16,
    since: Instant,
    within: Duration,
) -> Duration {
    loop {
        let got = auth_status(node, key, method).await;
        let elapsed = since.elapsed();
        if got == want {
            return elapsed;
        }
        assert!(
            elapsed < within,
            "{} still answers {got} (not {want}) for {method} {:?} after {elapsed:?}",
            node.base,
            &key[..16]
        );
    }
}

async fn revoke(node: &TestApp, key_id: &str) {
    let a = node
        .admin(Method::POST, &format!("/v1/api-keys/{key_id}/revoke"), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["status"], "revoked");
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

// --- (a) revocation reaches every node ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_through_one_node_is_refused_by_the_others_within_a_second() {
    let Some((_deployment, nodes)) = three_nodes().await else {
        return;
    };
    let [a, b, c] = &nodes[..] else {
        unreachable!()
    };
    let acct = account(a, "pro").await;
    let (key_id, key) = a.create_key(&acct, json!({"scope": "read"})).await;
    let (_, other) = a.create_key(&acct, json!({"scope": "read"})).await;
    // Every node has both keys in its cache.
    for node in [a, b, c] {
        assert_eq!(auth_status(node, &key, "GET").await, 204);
        assert_eq!(auth_status(node, &other, "GET").await, 204);
    }

    revoke(a, &key_id).await;
    let returned = Instant::now();
    // The node that made the change refuses at once.
    assert_eq!(auth_status(a, &key, "GET").await, 401);
    let (tb, tc) = tokio::join!(
        wait_for(b, &key, "GET", 401, returned, WITHIN),
        wait_for(c, &key, "GET", 401, returned, WITHIN),
    );
    eprintln!("revocation reached B in {}, C in {}", ms(tb), ms(tc));
    // Refused the way an unknown key is, and only that key.
    for node in [a, b, c] {
        node.forward_auth(Some(&key), "GET", "/api/v1/invoices")
            .await
            .assert_error(401, "invalid_key");
        assert_eq!(auth_status(node, &other, "GET").await, 204);
    }
}

// --- (b) how long it takes, over 100 revocations -----------------------------------------

/// Revokes `KEYGATE_BENCH_REVOCATIONS` keys (default 100) one after another through node A,
/// each cached on B and C beforehand, and polls B and C without pause from the moment the
/// revoke call returns until both refuse the key. Prints p50/p99/max.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_propagation_p50_p99_max() {
    let Some((_deployment, nodes)) = three_nodes().await else {
        return;
    };
    let [a, b, c] = &nodes[..] else {
        unreachable!()
    };
    let n: usize = std::env::var("KEYGATE_BENCH_REVOCATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let acct = account(a, "unlimited").await;
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        keys.push(a.create_key(&acct, json!({"scope": "read"})).await);
    }
    for (_, key) in &keys {
        assert_eq!(auth_status(b, key, "GET").await, 204);
        assert_eq!(auth_status(c, key, "GET").await, 204);
    }

    let mut after_return = Vec::with_capacity(n);
    let mut after_request = Vec::with_capacity(n);
    for (key_id, key) in &keys {
        let requested = Instant::now();
        revoke(a, key_id).await;
        let returned = Instant::now();
        let (tb, tc) = tokio::join!(
            wait_for(b, key, "GET", 401, returned, WITHIN),
            wait_for(c, key, "GET", 401, returned, WITHIN),
        );
        let both = tb.max(tc);
        after_return.push(both);
        after_request.push(both + (returned - requested));
    }
    after_return.sort();
    after_request.sort();

    eprintln!(
        "\nrevoke-to-refusal on the other two nodes, {n} revocations ({} build):",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    eprintln!("| measured from | p50 | p99 | max |");
    eprintln!("|---|---|---|---|");
    for (label, samples) in [
        ("the revoke call's answer", &after_return),
        ("the revoke request", &after_request),
    ] {
        eprintln!(
            "| {label} | {} | {} | {} |",
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 99.0)),
            ms(percentile(samples, 100.0)),
        );
    }
    let p99 = percentile(&after_return, 99.0);
    if p99 >= Duration::from_millis(100) {
        eprintln!("p99 {} is over the 100 ms target", ms(p99));
    }
}

// --- (c) plan caps -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_cap_is_exact_with_60_parallel_creates_over_three_nodes() {
    let Some((_deployment, nodes)) = three_nodes().await else {
        return;
    };
    let acct = account(&nodes[0], "pro").await; // 20 active keys
    let creates = (0..60).map(|i| {
        let node = &nodes[i % nodes.len()];
        let acct = &acct;
        async move {
            node.create_key_answer(acct, json!({"name": format!("k{i}"), "scope": "read"}))
                .await
        }
    });
    let answers = futures::future::join_all(creates).await;
    let mut created = 0;
    let mut refused = 0;
    for a in &answers {
        match a.status.as_u16() {
            201 => created += 1,
            429 => {
                a.assert_error(429, "plan_limit_reached");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    assert_eq!((created, refused), (20, 40));
    for node in &nodes {
        let listed = node
            .admin(
                Method::GET,
                &format!("/v1/api-keys?account_id={acct}&status=active"),
                None,
            )
            .await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
        assert_eq!(listed.body["data"].as_array().unwrap().len(), 20);
        let account = node
            .admin(Method::GET, &format!("/v1/accounts/{acct}"), None)
            .await;
        assert_eq!(account.body["active_keys"], 20, "{}", account.body);
    }
}

// --- (d) updates reach every node ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permission_updates_through_one_node_reach_the_others() {
    let Some((_deployment, nodes)) = three_nodes().await else {
        return;
    };
    let [a, b, c] = &nodes[..] else {
        unreachable!()
    };
    let acct = account(a, "pro").await;
    let (key_id, key) = a
        .create_key(&acct, json!({"permissions": ["invoices.read"]}))
        .await;
    for node in [a, b, c] {
        assert_eq!(auth_status(node, &key, "GET").await, 204);
        assert_eq!(auth_status(node, &key, "POST").await, 403);
    }

    // Grant: every node lets the key create invoices.
    let path = &format!("/v1/api-keys/{key_id}");
    let patch = |permissions: serde_json::Value| async move {
        let answer = a
            .admin(
                Method::PATCH,
                path,
                Some(json!({ "permissions": permissions })),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        Instant::now()
    };
    let returned = patch(json!(["invoices.read", "invoices.create"])).await;
    assert_eq!(auth_status(a, &key, "POST").await, 204);
    let (tb, tc) = tokio::join!(
        wait_for(b, &key, "POST", 204, returned, WITHIN),
        wait_for(c, &key, "POST", 204, returned, WITHIN),
    );
    eprintln!("grant reached B in {}, C in {}", ms(tb), ms(tc));

    // Withdraw: every node refuses reading.
    let returned = patch(json!(["invoices.create"])).await;
    assert_eq!(auth_status(a, &key, "GET").await, 403);
    let (tb, tc) = tokio::join!(
        wait_for(b, &key, "GET", 403, returned, WITHIN),
        wait_for(c, &key, "GET", 403, returned, WITHIN),
    );
    eprintln!("withdrawal reached B in {}, C in {}", ms(tb), ms(tc));
    for node in [a, b, c] {
        node.forward_auth(Some(&key), "GET", "/api/v1/invoices")
            .await
            .assert_error(403, "insufficient_permissions");
        assert_eq!(auth_status(node, &key, "POST").await, 204);
    }
}

/// A plan change (here: to a plan without the old plan's default rate limit) makes every node
/// read the account's keys again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_changes_through_one_node_reach_the_others() {
    let Some(deployment) = Deployment::new().await else {
        return;
    };
    let limited = keygate_store::RateLimit {
        requests: 1,
        per_seconds: 3600,
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let options = Options {
            plans: keygate_engine::Plans::reference().with_rate_limit("basic", limited),
            ..Options::default()
        };
        nodes.push(
            deployment
                .start_with(deployment.node().await, options)
                .await,
        );
    }
    let [a, b, c] = &nodes[..] else {
        unreachable!()
    };
    let acct = account(a, "basic").await;
    let (_, key) = a.create_key(&acct, json!({"scope": "read"})).await;
    for node in [b, c] {
        assert_eq!(auth_status(node, &key, "GET").await, 204);
        assert_eq!(auth_status(node, &key, "GET").await, 429);
    }
    let answer = a
        .admin(
            Method::PATCH,
            &format!("/v1/accounts/{acct}"),
            Some(json!({"plan": "pro"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let returned = Instant::now();
    let (tb, tc) = tokio::join!(
        wait_for(b, &key, "GET", 204, returned, WITHIN),
        wait_for(c, &key, "GET", 204, returned, WITHIN),
    );
    eprintln!("plan change reached B in {}, C in {}", ms(tb), ms(tc));
}

// --- (e) a missed notification -------------------------------------------------------------

/// A node that hears no notifications (as if it missed them) still refuses a revoked key once
/// its cached copy is older than the cache TTL: the backstop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missed_notification_is_repaired_by_the_cache_ttl() {
    let Some(deployment) = Deployment::new().await else {
        return;
    };
    let a = deployment.start(deployment.node().await).await;
    let ttl = Duration::from_secs(2);
    let deaf = deployment
        .start(Node {
            cache_ttl: ttl,
            listen_for_changes: false,
            ..deployment.node().await
        })
        .await;
    let acct = account(&a, "pro").await;
    let (key_id, key) = a.create_key(&acct, json!({"scope": "read"})).await;
    // Taken before the fill: the copy expires no earlier than a TTL after this, less the
    // engine's coarse clock step (a few ms; `clock.rs`).
    let cached = Instant::now();
    assert_eq!(auth_status(&deaf, &key, "GET").await, 204);

    revoke(&a, &key_id).await;
    let returned = Instant::now();
    // Until its copy is a TTL old, the deaf node knows nothing of the revocation.
    let still_served = auth_status(&deaf, &key, "GET").await == 204;
    if cached.elapsed() < ttl {
        assert!(still_served, "the deaf node heard of the revocation");
    }
    // Once it is, the node reads the key again and refuses it.
    let almost = ttl.saturating_sub(Duration::from_millis(200));
    tokio::time::sleep(almost.saturating_sub(cached.elapsed())).await;
    let took = wait_for(&deaf, &key, "GET", 401, cached, ttl + WITHIN).await;
    let coarse_clock_step = Duration::from_millis(20);
    assert!(
        took + coarse_clock_step >= ttl || !still_served,
        "refused after {took:?}"
    );
    eprintln!(
        "without notifications the revocation took {} after the call (cache TTL {ttl:?})",
        ms(returned.elapsed())
    );
}

// ---------------------------------------------------------------------------------------
// Browser sessions in the store

/// A client that follows no redirect and keeps no cookies (the tests carry them).
fn browser_like() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `name=value` of the cookie `name` an answer sets.
fn cookie_set(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_owned()
}

fn csrf_in(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("a CSRF field") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn location_of(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn get_with(node: &TestApp, path: &str, cookie: &str) -> reqwest::Response {
    browser_like()
        .get(node.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

async fn post_with(
    node: &TestApp,
    path: &str,
    cookie: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    browser_like()
        .post(node.url(path))
        .header("cookie", cookie)
        .form(fields)
        .send()
        .await
        .unwrap()
}

/// Signs in to `node`'s dashboard with the admin token: the session cookie.
async fn dashboard_sign_in(node: &TestApp) -> String {
    let form = browser_like()
        .get(node.url("/dashboard/sign-in"))
        .send()
        .await
        .unwrap();
    let form_cookie = cookie_set(&form, "keygate_sign_in");
    let csrf = csrf_in(&form.text().await.unwrap());
    let signed = post_with(
        node,
        "/dashboard/sign-in",
        &form_cookie,
        &[("csrf", &csrf), ("credential", &node.admin_token)],
    )
    .await;
    assert_eq!(signed.status(), 303);
    cookie_set(&signed, "keygate_session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dashboard_session_spans_nodes_and_restarts() {
    let Some(deployment) = Deployment::new().await else {
        return;
    };
    let nodes = deployment.nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let account = account(a, "pro").await;

    // Signed in through A, the session works on B.
    let cookie = dashboard_sign_in(a).await;
    let page = get_with(b, &format!("/dashboard/accounts/{account}"), &cookie).await;
    assert_eq!(page.status(), 200);
    let csrf = csrf_in(&page.text().await.unwrap());

    // A key made through B shows its secret once on A (sealed in the stored session).
    let created = post_with(
        b,
        &format!("/dashboard/accounts/{account}/keys"),
        &cookie,
        &[
            ("csrf", &csrf),
            ("name", "CI"),
            ("environment", "live"),
            ("access", "all"),
        ],
    )
    .await;
    assert_eq!(created.status(), 303);
    let secret_page = location_of(&created);
    let shown = get_with(a, &secret_page, &cookie).await;
    assert_eq!(shown.status(), 200);
    assert!(shown.text().await.unwrap().contains("kg_live_"));
    assert_eq!(get_with(b, &secret_page, &cookie).await.status(), 410);
    // The store holds the session's digest, never the cookie's secret or the key's.
    let stored: Vec<(Vec<u8>, String)> = sqlx::query_as("SELECT digest, data FROM sessions")
        .fetch_all(&sqlx::PgPool::connect(&deployment.url).await.unwrap())
        .await
        .unwrap();
    let secret = cookie.trim_start_matches("keygate_session=");
    assert!(stored.iter().all(|(digest, data)| digest.len() == 32
        && !data.contains(secret)
        && !data.contains("kg_live_")));

    // A node started afresh on the same database (a restart) continues the session.
    drop(nodes);
    let restarted = deployment.start(deployment.node().await).await;
    let page = get_with(&restarted, "/dashboard/accounts", &cookie).await;
    assert_eq!(page.status(), 200);

    // Signing out on one node ends the session everywhere.
    let out = post_with(
        &restarted,
        "/dashboard/sign-out",
        &cookie,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(out.status(), 303);
    let after = get_with(&restarted, "/dashboard/accounts", &cookie).await;
    assert_eq!(location_of(&after), "/dashboard/sign-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_portal_link_is_used_once_across_nodes() {
    let Some((_deployment, nodes)) = three_nodes().await else {
        return;
    };
    let account = account(&nodes[0], "pro").await;
    let made = nodes[0]
        .admin(
            Method::POST,
            "/v1/portal-sessions",
            Some(json!({ "account_id": account })),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let url = made.body["url"].as_str().unwrap();
    let path = &url[url.find("/portal/").unwrap()..];
    // Every node tries the link at once: exactly one opens it.
    let tries = nodes.iter().map(|node| get_with(node, path, ""));
    let answers = futures::future::join_all(tries).await;
    let opened: Vec<&reqwest::Response> = answers.iter().filter(|r| r.status() == 303).collect();
    assert_eq!(opened.len(), 1);
    assert_eq!(answers.iter().filter(|r| r.status() == 410).count(), 2);
    // Its session works on every node.
    let cookie = cookie_set(opened[0], "keygate_portal");
    for node in &nodes {
        assert_eq!(get_with(node, "/portal", &cookie).await.status(), 200);
    }
}

// --- short-lived tokens across nodes -----------------------------------------------------

async fn jwks(node: &TestApp) -> serde_json::Value {
    let answer = node
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["keys"].clone()
}

/// A token issued through node A passes on B and C (they read A's signing key from the
/// database), and revoking its key through A refuses it on B and C within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_from_one_node_works_on_the_others_and_dies_with_its_key() {
    let Some((_deployment, nodes)) = three_nodes().await else {
        return;
    };
    let [a, b, c] = &nodes[..] else {
        unreachable!()
    };
    let acct = account(a, "pro").await;
    let (key_id, key) = a.create_key(&acct, json!({"scope": "read"})).await;
    let issued = a
        .call(Method::POST, "/v1/tokens", Some(&key), Some(json!({})))
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
    let token = issued.body["token"].as_str().unwrap().to_owned();
    let published = jwks(a).await;
    for node in [b, c] {
        assert_eq!(
            jwks(node).await,
            published,
            "every node publishes the same keys"
        );
        assert_eq!(auth_status(node, &token, "GET").await, 204);
    }
    revoke(a, &key_id).await;
    let returned = Instant::now();
    assert_eq!(auth_status(a, &token, "GET").await, 401);
    let (tb, tc) = tokio::join!(
        wait_for(b, &token, "GET", 401, returned, WITHIN),
        wait_for(c, &token, "GET", 401, returned, WITHIN),
    );
    eprintln!(
        "a token's key revocation reached B in {}, C in {}",
        ms(tb),
        ms(tc)
    );
}
