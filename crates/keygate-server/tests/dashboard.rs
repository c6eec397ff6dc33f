//! The web dashboard: in a real browser (headless Chromium driven over WebDriver with
//! fantoccini), and over plain HTTP for what a browser hides (cookie attributes, CSRF,
//! headers, throttling, the secret shown once).
//!
//! The browser tests need `chromedriver` (Debian: `chromium chromium-driver`, installed by
//! `scripts/install-deps`); without it they print "skipped: chromium-driver not installed"
//! and pass. Screenshots of every page go to `target/dashboard-screenshots/`.

#[path = "api/helpers.rs"]
mod helpers;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use helpers::{spawn, spawn_with, Options, TestApp};
use hyper_util::client::legacy::connect::HttpConnector;
use keygate_core::Route;
use keygate_server::PermissionCatalog;
use reqwest::Method;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// HTTP helpers: a browser-like client without redirects or a cookie jar.

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The session cookie's value from a `Set-Cookie` answer.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("keygate_session="))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
}

/// The sign-in form's CSRF cookie (`keygate_sign_in=…`), as a `Cookie` header value.
fn sign_in_cookie(response: &reqwest::Response) -> String {
    let value = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("keygate_sign_in="))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .expect("the sign-in page sets its CSRF cookie");
    format!("keygate_sign_in={value}")
}

fn set_cookie(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The CSRF token of the first form on a page.
fn csrf_of(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("no CSRF field on the page") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A dashboard session over HTTP: its cookie and the CSRF token of its pages.
struct HttpSession {
    client: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl HttpSession {
    async fn sign_in(app: &TestApp, credential: &str) -> HttpSession {
        let client = http();
        let page = client
            .get(app.url("/dashboard/sign-in"))
            .send()
            .await
            .unwrap();
        let cookie = sign_in_cookie(&page);
        let csrf = csrf_of(&page.text().await.unwrap());
        let answer = client
            .post(app.url("/dashboard/sign-in"))
            .header("cookie", cookie)
            .form(&[("csrf", csrf.as_str()), ("credential", credential)])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 303, "sign-in refused");
        let cookie = session_cookie(&answer).expect("sign-in sets a new session cookie");
        let mut session = HttpSession {
            client,
            base: app.base.clone(),
            cookie,
            csrf: String::new(),
        };
        let home = session.get("/dashboard").await;
        assert_eq!(home.status(), 303);
        let landing = session.get(&location(&home)).await;
        session.csrf = csrf_of(&landing.text().await.unwrap());
        session
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("keygate_session={}", self.cookie))
            .send()
            .await
            .unwrap()
    }

    /// A form POST; `csrf` is added unless the fields already name it.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        if !fields.iter().any(|(k, _)| *k == "csrf") {
            all.push(("csrf", &self.csrf));
        }
        self.client
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("keygate_session={}", self.cookie))
            .form(&all)
            .send()
            .await
            .unwrap()
    }
}

/// The "Next page" link of a dashboard page, if any (HTML-unescaped).
fn next_page_link(html: &str) -> Option<String> {
    let marker = r#"rel="next" href=""#;
    let start = html.find(marker)? + marker.len();
    Some(html[start..].split('"').next()?.replace("&amp;", "&"))
}

/// Follows "Next page" from `path`; returns, per page, what follows each `marker` up to the
/// next quote (in order).
async fn walk_dashboard(session: &HttpSession, path: &str, marker: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(path.to_owned());
    while let Some(path) = next {
        let page = session.get(&path).await;
        assert_eq!(page.status(), 200, "{path}");
        let html = page.text().await.unwrap();
        pages.push(
            html.split(marker)
                .skip(1)
                .map(|rest| rest.split('"').next().unwrap().to_owned())
                .collect(),
        );
        next = next_page_link(&html);
        assert!(pages.len() < 100, "the pages do not end");
    }
    pages
}

#[tokio::test]
async fn key_and_account_tables_page_with_a_next_link() {
    let app = spawn().await;
    let account = app.create_account("Many keys", "unlimited").await;
    let now = keygate_engine::now_ms();
    let keys = helpers::import_keys(&app, &account, 230, |i, k| {
        if i % 2 == 1 {
            k.revoked_at = Some(now - 1_000);
        }
    })
    .await;
    let session = HttpSession::sign_in(&app, &app.admin_token).await;

    let pages = walk_dashboard(
        &session,
        &format!("/dashboard/accounts/{account}"),
        "data-key-id=\"",
    )
    .await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![100, 100, 30]
    );
    let mut shown: Vec<String> = pages.concat();
    shown.sort();
    shown.dedup();
    let mut all: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    all.sort();
    assert_eq!(shown, all, "every key once over the pages");

    // The status filter is kept from page to page.
    let revoked = walk_dashboard(
        &session,
        &format!("/dashboard/accounts/{account}?status=revoked"),
        "data-key-id=\"",
    )
    .await;
    assert_eq!(
        revoked.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![100, 15]
    );
    let revoked_ids: Vec<&String> = revoked.iter().flatten().collect();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(revoked_ids.contains(&&k.id), i % 2 == 1, "{}", k.id);
    }

    // Accounts: the one above and 120 more, a hundred a page.
    let more: Vec<keygate_store::Account> = (0..120)
        .map(|i| keygate_store::Account {
            id: format!("acct_{}", keygate_core::key::random_hex(10).unwrap()),
            name: format!("Imported {i}"),
            plan: "pro".into(),
            created_at: now + i,
        })
        .collect();
    app.store.import_accounts(&more).await.unwrap();
    let pages = walk_dashboard(
        &session,
        "/dashboard/accounts",
        "href=\"/dashboard/accounts/acct_",
    )
    .await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![100, 21]
    );
    let mut shown = pages.concat();
    shown.sort();
    shown.dedup();
    assert_eq!(shown.len(), 121);

    // An unknown cursor is a clear 400 page, not an empty table.
    let bad = session
        .get(&format!(
            "/dashboard/accounts/{account}?starting_after=key_nope"
        ))
        .await;
    assert_eq!(bad.status(), 400);
}

async fn audit_actions(app: &TestApp) -> Vec<Value> {
    let log = app.admin(Method::GET, "/v1/audit-log", None).await;
    log.body["data"].as_array().cloned().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Without a browser

#[tokio::test]
async fn cookie_attributes_and_security_headers() {
    let app = spawn().await;
    let page = http()
        .get(app.url("/dashboard/sign-in"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let cookie = set_cookie(&page);
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    // Plain HTTP, and X-Forwarded-Proto from a peer that is not a trusted proxy.
    assert!(!cookie.contains("Secure"), "{cookie}");
    let h = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let csp = h("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h("x-frame-options"), "DENY");
    assert_eq!(h("referrer-policy"), "no-referrer");
    assert_eq!(h("cache-control"), "no-store");
    assert!(h("content-type").starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    assert!(html.contains(r#"<label for="credential""#));

    // Behind a trusted proxy that says the client used TLS, the cookie is Secure.
    let proxied = spawn_with(Options {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..Options::default()
    })
    .await;
    let page = http()
        .get(proxied.url("/dashboard/sign-in"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(
        set_cookie(&page).contains("; Secure"),
        "{}",
        set_cookie(&page)
    );
    let page = http()
        .get(proxied.url("/dashboard/sign-in"))
        .send()
        .await
        .unwrap();
    assert!(!set_cookie(&page).contains("Secure"));

    let js = http()
        .get(app.url("/dashboard/assets/dashboard.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let missing = http()
        .get(app.url("/dashboard/no-such-page"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("<h1>Not found</h1>"));
}

#[tokio::test]
async fn every_form_needs_the_session_csrf_token() {
    let app = spawn().await;
    let client = http();
    // The sign-in form too.
    let page = client
        .get(app.url("/dashboard/sign-in"))
        .send()
        .await
        .unwrap();
    let anonymous = sign_in_cookie(&page);
    let refused = client
        .post(app.url("/dashboard/sign-in"))
        .header("cookie", anonymous)
        .form(&[("credential", app.admin_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    let session = HttpSession::sign_in(&app, &app.admin_token).await;
    let missing = session
        .client
        .post(app.url("/dashboard/accounts"))
        .header("cookie", format!("keygate_session={}", session.cookie))
        .form(&[("name", "Acme"), ("plan", "pro")])
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 403);
    assert!(missing.text().await.unwrap().contains("CSRF"));
    let wrong_token = "0".repeat(session.csrf.len());
    let wrong = session
        .post(
            "/dashboard/accounts",
            &[("csrf", &wrong_token), ("name", "Acme"), ("plan", "pro")],
        )
        .await;
    assert_eq!(wrong.status(), 403);
    let accounts = app.admin(Method::GET, "/v1/accounts", None).await;
    assert_eq!(accounts.body["data"], json!([]), "nothing was created");

    let ok = session
        .post("/dashboard/accounts", &[("name", "Acme"), ("plan", "pro")])
        .await;
    assert_eq!(ok.status(), 303);
    assert!(location(&ok).starts_with("/dashboard/accounts/acct_"));

    // Without a session a POST changes nothing and goes to the sign-in page.
    let anonymous_post = http()
        .post(app.url("/dashboard/accounts"))
        .form(&[("name", "Mallory"), ("csrf", session.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_post.status(), 303);
    assert_eq!(location(&anonymous_post), "/dashboard/sign-in");

    // Signing out ends the session on the server.
    let out = session.post("/dashboard/sign-out", &[]).await;
    assert_eq!(out.status(), 303);
    assert!(set_cookie(&out).contains("Max-Age=0"));
    let after = session.get("/dashboard/accounts").await;
    assert_eq!(after.status(), 303);
    assert_eq!(location(&after), "/dashboard/sign-in");
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_and_audited() {
    // The failed-authentication throttle every listener shares counts sign-ins too.
    let app = spawn_with(Options {
        failed_auth: Some(keygate_store::RateLimit {
            requests: 10,
            per_seconds: 60,
        }),
        ..Options::default()
    })
    .await;
    let _ok = HttpSession::sign_in(&app, &app.admin_token).await;
    let client = http();
    let page = client
        .get(app.url("/dashboard/sign-in"))
        .send()
        .await
        .unwrap();
    let cookie = sign_in_cookie(&page);
    let csrf = csrf_of(&page.text().await.unwrap());
    let attempt = |credential: String| {
        let client = client.clone();
        let cookie = cookie.clone();
        let csrf = csrf.clone();
        let url = app.url("/dashboard/sign-in");
        async move {
            client
                .post(url)
                .header("cookie", cookie)
                .form(&[("csrf", csrf.as_str()), ("credential", credential.as_str())])
                .send()
                .await
                .unwrap()
        }
    };
    for i in 0..10 {
        let r = attempt(format!("wrong-token-{i}")).await;
        assert_eq!(r.status(), 403, "attempt {i}");
        assert!(r.text().await.unwrap().contains("Sign-in failed"));
    }
    let blocked = attempt(app.admin_token.clone()).await;
    assert_eq!(blocked.status(), 429, "even the right token waits");
    assert!(blocked.headers().contains_key("retry-after"));

    // The address waits for the admin API too: read the audit log from the store.
    let events: Vec<Value> = app
        .store
        .list_audit(None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| json!({"action": e.action, "client_ip": e.client_ip, "details": e.details}))
        .collect();
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "dashboard.sign_in_failed")
        .collect();
    assert_eq!(failed.len(), 10);
    assert_eq!(failed[0]["client_ip"], "127.0.0.1");
    assert_eq!(failed[0]["details"]["reason"], "unauthorized");
    assert!(!failed[0].to_string().contains("wrong-token"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["action"] == "dashboard.sign_in")
            .count(),
        1
    );
}

#[tokio::test]
async fn leaked_keys_are_marked_on_their_page_and_in_the_account_list() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (leaked_id, leaked) = app.create_key(&account, json!({"scope": "all"})).await;
    let (clean_id, _) = app.create_key(&account, json!({"scope": "all"})).await;
    let reported = app
        .admin(
            Method::POST,
            "/v1/leaks",
            Some(json!({"keys": [leaked], "url": "https://paste.example/1"})),
        )
        .await;
    assert_eq!(
        reported.body[0]["label"], "true_positive",
        "{}",
        reported.body
    );
    let s = HttpSession::sign_in(&app, &app.admin_token).await;

    let page = s
        .get(&format!("/dashboard/keys/{leaked_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("badge-leaked"),
        "no leaked mark on the key page"
    );
    assert!(page.contains("Reported leaked"));
    assert!(
        page.contains("https://paste.example/1"),
        "the audit entry names the URL"
    );
    let clean = s
        .get(&format!("/dashboard/keys/{clean_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!clean.contains("badge-leaked"));

    let list = s
        .get(&format!("/dashboard/accounts/{account}"))
        .await
        .text()
        .await
        .unwrap();
    let row = |id: &str| {
        let start = list
            .find(&format!("data-key-id=\"{id}\""))
            .expect("the key's row");
        let end = list[start..].find("</tr>").unwrap() + start;
        list[start..end].to_owned()
    };
    assert!(row(&leaked_id).contains("badge-leaked"));
    assert!(!row(&clean_id).contains("badge-leaked"));
}

#[tokio::test]
async fn the_secret_is_shown_once_and_never_in_a_url() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let s = HttpSession::sign_in(&app, &app.admin_token).await;
    let created = s
        .post(
            &format!("/dashboard/accounts/{account}/keys"),
            &[
                ("name", "Zapier Integration"),
                ("environment", "live"),
                ("access", "custom"),
                ("permission", "invoices.read"),
                ("permission", "clients.*"),
                ("extra_permissions", "orders:read"),
                ("ip_allowlist", ""),
                ("expiry", "90"),
                ("rate_requests", "100"),
                ("rate_per", "60"),
            ],
        )
        .await;
    assert_eq!(created.status(), 303);
    let to = location(&created);
    assert!(
        to.starts_with("/dashboard/keys/key_") && to.ends_with("/secret"),
        "{to}"
    );
    let shown = s.get(&to).await;
    assert_eq!(shown.status(), 200);
    assert_eq!(shown.headers()["cache-control"], "no-store");
    let html = shown.text().await.unwrap();
    let marker = r#"id="new-secret">"#;
    let start = html.find(marker).expect("the secret is on the page") + marker.len();
    let secret: String = html[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    assert_eq!(secret.len(), 72, "{secret}");
    assert!(!to.contains(&secret[8..]));
    assert_eq!(
        app.forward_auth(Some(&secret), "GET", "/api/v1/orders")
            .await
            .status,
        204
    );

    let again = s.get(&to).await;
    assert_eq!(again.status(), 410);
    let html = again.text().await.unwrap();
    assert!(!html.contains(&secret[8..]), "shown twice");
    assert!(html.contains("not shown again"));

    let key_id = to
        .trim_start_matches("/dashboard/keys/")
        .trim_end_matches("/secret");
    let key = app
        .admin(Method::GET, &format!("/v1/api-keys/{key_id}"), None)
        .await;
    assert_eq!(
        key.body["permissions"],
        json!(["clients.*", "invoices.read", "orders.read"])
    );
    assert_eq!(
        key.body["rate_limit"],
        json!({"requests": 100, "per_seconds": 60})
    );
    assert!(key.body["expires_at"].is_string());

    // A form error keeps what was typed and says what is wrong.
    let bad = s
        .post(
            &format!("/dashboard/accounts/{account}/keys"),
            &[
                ("name", "Bad allowlist"),
                ("access", "read"),
                ("ip_allowlist", "not-an-address"),
            ],
        )
        .await;
    assert_eq!(bad.status(), 400);
    let html = bad.text().await.unwrap();
    assert!(html.contains("form-error"), "{html}");
    assert!(html.contains("not-an-address"));
}

#[tokio::test]
async fn a_key_session_sees_one_account_and_ends_with_its_key() {
    let app = spawn().await;
    let mine = app.create_account("Acme", "pro").await;
    let theirs = app.create_account("Globex", "pro").await;
    let (manager_id, manager) = app
        .create_key(&mine, json!({"permissions": ["api_keys.*", "invoices.*"]}))
        .await;
    let (their_key, _) = app
        .create_key(&theirs, json!({"name": "Globex prod"}))
        .await;
    let (_, plain) = app.create_key(&mine, json!({"scope": "read"})).await;

    // A key without api_keys permissions cannot sign in.
    let client = http();
    let page = client
        .get(app.url("/dashboard/sign-in"))
        .send()
        .await
        .unwrap();
    let cookie = sign_in_cookie(&page);
    let csrf = csrf_of(&page.text().await.unwrap());
    let refused = client
        .post(app.url("/dashboard/sign-in"))
        .header("cookie", cookie)
        .form(&[("csrf", csrf.as_str()), ("credential", plain.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("cannot manage API keys"));

    let s = HttpSession::sign_in(&app, &manager).await;
    let own = s.get(&format!("/dashboard/accounts/{mine}")).await;
    assert_eq!(own.status(), 200);
    let html = own.text().await.unwrap();
    assert!(html.contains("API Keys"));
    assert!(!html.contains("Globex"));
    for path in [
        format!("/dashboard/accounts/{theirs}"),
        format!("/dashboard/accounts/{theirs}/keys/new"),
        format!("/dashboard/keys/{their_key}"),
        format!("/dashboard/keys/{their_key}/edit"),
        "/dashboard/accounts/acct_000000000000000000000000".to_owned(),
    ] {
        let r = s.get(&path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert!(!r.text().await.unwrap().contains("Globex"));
    }
    let list = s.get("/dashboard/accounts").await;
    assert_eq!(location(&list), format!("/dashboard/accounts/{mine}"));
    let revoke = s
        .post(&format!("/dashboard/keys/{their_key}/revoke"), &[])
        .await;
    assert_eq!(revoke.status(), 404);
    let theirs_now = app
        .admin(Method::GET, &format!("/v1/api-keys/{their_key}"), None)
        .await;
    assert_eq!(theirs_now.body["status"], "active");

    // Rotating the key the session signed in with shows the new secret in the answer
    // itself and ends the session; the new key signs in.
    let rotated = s
        .post(
            &format!("/dashboard/keys/{manager_id}/rotate"),
            &[("grace", "0")],
        )
        .await;
    assert_eq!(rotated.status(), 200);
    assert_eq!(rotated.headers()["cache-control"], "no-store");
    let html = rotated.text().await.unwrap();
    let marker = r#"id="new-secret">"#;
    let start = html.find(marker).expect("the new secret is shown") + marker.len();
    let new_manager: String = html[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    assert!(new_manager.starts_with("kg_live_") && new_manager != manager);
    let after = s.get(&format!("/dashboard/accounts/{mine}")).await;
    assert_eq!(location(&after), "/dashboard/sign-in");
    let s = HttpSession::sign_in(&app, &new_manager).await;
    let manager_id = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={mine}&status=active"),
            None,
        )
        .await
        .body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["rotated_from"] == json!(manager_id))
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .unwrap();

    // Revoking the key the session signed in with ends the session.
    app.admin(
        Method::POST,
        &format!("/v1/api-keys/{manager_id}/revoke"),
        None,
    )
    .await;
    let after = s.get(&format!("/dashboard/accounts/{mine}")).await;
    assert_eq!(after.status(), 303);
    assert_eq!(location(&after), "/dashboard/sign-in");
}

// ---------------------------------------------------------------------------------------
// In a browser

/// A headless Chromium session through a chromedriver started for this test.
struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

async fn browser() -> Option<Browser> {
    let Some(chromedriver) = find_program("chromedriver") else {
        keygate_test_support::skip("chromium-driver not installed");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Browser {
        client: None,
        driver,
        _profile: profile,
    };
    let mut args = vec![
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--window-size=1280,1000".to_owned(),
        format!("--user-data-dir={}", browser._profile.path().display()),
    ];
    args.push("--hide-scrollbars".to_owned());
    let mut chrome = json!({ "args": args });
    for binary in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(binary).exists() {
            chrome["binary"] = json!(binary);
            break;
        }
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), chrome);
    let url = format!("http://127.0.0.1:{port}");
    let mut last_error = String::new();
    for _ in 0..100 {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => {
                browser.client = Some(client);
                return Some(browser);
            }
            Err(e) => {
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("could not start a Chromium session: {last_error}");
}

impl Browser {
    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves the whole page (the window is stretched to the document's height first).
async fn shot(c: &Client, name: &str) {
    let (w, _) = window_size(c).await;
    c.set_window_size(w, 700).await.unwrap();
    let height = c
        .execute(
            "return Math.ceil(document.documentElement.scrollHeight);",
            vec![],
        )
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(1000)
        .clamp(560, 4000) as u32;
    c.set_window_size(w, height + 140).await.unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

async fn window_size(c: &Client) -> (u32, u32) {
    let (_, _, w, h) = c.get_window_rect().await.unwrap();
    (w as u32, h as u32)
}

async fn path_of(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_owned()
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Clicks something that loads a new page (a link, a submit button) and waits until the
/// new document has loaded: WebDriver's click may return before a form's navigation starts.
async fn follow(c: &Client, css: &str) {
    c.execute("window.__kgOldPage = true;", vec![])
        .await
        .unwrap();
    click(c, css).await;
    for _ in 0..200 {
        let loaded = c
            .execute(
                "return window.__kgOldPage !== true && document.readyState === 'complete';",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if loaded {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("clicking {css} loaded no new page");
}

async fn sign_in(c: &Client, app: &TestApp, credential: &str) {
    c.goto(&app.url("/dashboard")).await.unwrap();
    assert_eq!(path_of(c).await, "/dashboard/sign-in");
    fill(c, "#credential", credential).await;
    follow(c, "form[action='/dashboard/sign-in'] button[type=submit]").await;
}

/// Runs `scenario`, then closes the browser whatever happened.
async fn with_browser<F, Fut>(scenario: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let Some(browser) = browser().await else {
        return;
    };
    let client = browser.c().clone();
    let outcome = std::panic::AssertUnwindSafe(scenario(client))
        .catch_unwind()
        .await;
    browser.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_creates_uses_and_revokes_a_key_in_the_browser() {
    // Configured as the invoicing example is (`examples/invoices-api/keygate.toml`).
    let app = spawn_with(Options {
        permission_catalog: helpers::reference_catalog(),
        ..Options::default()
    })
    .await;
    with_browser(|c| async move {
        // A wrong token is refused with a message; the right one signs in.
        sign_in(&c, &app, "not-the-token").await;
        assert!(text(&c, "#form-error").await.contains("Sign-in failed"));
        shot(&c, "01-sign-in-failed").await;
        fill(&c, "#credential", &app.admin_token).await;
        follow(&c, "form[action='/dashboard/sign-in'] button[type=submit]").await;
        assert_eq!(path_of(&c).await, "/dashboard/accounts");
        let cookies = c.get_all_cookies().await.unwrap();
        let session = cookies
            .iter()
            .find(|k| k.name() == "keygate_session")
            .expect("session cookie");
        assert_eq!(session.http_only(), Some(true));
        assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
        assert_eq!(session.path(), Some("/dashboard"));
        assert_ne!(session.secure(), Some(true), "plain HTTP here");
        shot(&c, "02-accounts-empty").await;

        // Create an account.
        fill(&c, "#account-name", "Acme Invoicing").await;
        c.find(Locator::Css("#account-plan"))
            .await
            .unwrap()
            .select_by_value("pro")
            .await
            .unwrap();
        follow(&c, "form[action='/dashboard/accounts'] button[type=submit]").await;
        let account_path = path_of(&c).await;
        assert!(account_path.starts_with("/dashboard/accounts/acct_"));
        let account_id = account_path
            .trim_start_matches("/dashboard/accounts/")
            .to_owned();
        assert!(text(&c, ".usage-text").await.contains("0 of 20 keys used"));
        shot(&c, "03-account-empty").await;

        // Create a key with the permission checklist.
        follow(&c, "a.button.primary[href$='/keys/new']").await;
        assert_eq!(
            path_of(&c).await,
            format!("/dashboard/accounts/{account_id}/keys/new")
        );
        for resource in [
            "invoices",
            "clients",
            "quotations",
            "products",
            "webhooks",
            "api_keys",
        ] {
            c.find(Locator::Css(&format!("#perm-{resource}-read")))
                .await
                .unwrap_or_else(|_| panic!("checklist row for {resource}"));
        }
        // The catalog's (and the route table's) own action is offered too.
        c.find(Locator::Css("#perm-invoices-send")).await.unwrap();
        fill(&c, "#name", "Zapier Integration").await;
        click(&c, "#perm-invoices-read").await;
        click(&c, "#perm-clients-all").await;
        fill(&c, "#rate_requests", "100").await;
        click(&c, "#expiry-90").await;
        shot(&c, "04-create-key-form").await;
        follow(&c, "form.key-form button[type=submit]").await;

        // The secret, once, with a working copy button.
        let secret_path = path_of(&c).await;
        assert!(secret_path.ends_with("/secret"), "{secret_path}");
        let key_id = secret_path
            .trim_start_matches("/dashboard/keys/")
            .trim_end_matches("/secret")
            .to_owned();
        let secret = text(&c, "#new-secret").await;
        assert!(
            secret.starts_with("kg_live_") && secret.len() == 72,
            "{secret}"
        );
        assert!(text(&c, ".warning")
            .await
            .contains("will not be shown again"));
        let copy = c.find(Locator::Css("button[data-copy]")).await.unwrap();
        assert!(
            copy.is_displayed().await.unwrap(),
            "the script shows the copy button"
        );
        copy.click().await.unwrap();
        assert!(!c
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(&secret[8..]));
        shot(&c, "05-secret-shown-once").await;

        // The key works.
        let allowed = app
            .forward_auth(Some(&secret), "GET", "/api/v1/invoices")
            .await;
        assert_eq!(allowed.status, 204, "{}", allowed.body);

        // Reloading does not show it again.
        c.refresh().await.unwrap();
        let source = c.source().await.unwrap();
        assert!(!source.contains(&secret[8..]), "secret shown after reload");
        assert!(source.contains("not shown again"));
        shot(&c, "06-secret-after-reload").await;

        // The key's page: details, usage chart with the one valid request, audit events.
        c.goto(&app.url(&format!("/dashboard/keys/{key_id}")))
            .await
            .unwrap();
        assert!(text(&c, ".legend").await.contains("Valid (1)"));
        assert!(text(&c, "#recent-ips").await.contains("127.0.0.1"));
        assert!(text(&c, "#key-events").await.contains("Created"));
        assert!(text(&c, "#key-details")
            .await
            .contains("100 requests per minute"));
        c.find(Locator::Css("figure.chart svg rect")).await.unwrap();
        shot(&c, "07-key-page").await;

        // Revoke, with confirmation.
        follow(&c, "a.button.danger[href$='/revoke']").await;
        assert!(text(&c, ".warning").await.contains("cannot be undone"));
        shot(&c, "08-revoke-confirm").await;
        follow(&c, "#confirm-revoke").await;
        assert_eq!(path_of(&c).await, format!("/dashboard/keys/{key_id}"));
        assert!(text(&c, ".notice").await.contains("revoked"));
        assert!(text(&c, "#key-events").await.contains("Revoked"));
        shot(&c, "09-key-revoked").await;

        let refused = app
            .forward_auth(Some(&secret), "GET", "/api/v1/invoices")
            .await;
        assert_eq!(refused.status, 401);

        // The table says so, in the list and under the "revoked" filter.
        c.goto(&app.url(&account_path)).await.unwrap();
        let row = text(&c, &format!("tr[data-key-id='{key_id}']")).await;
        assert!(row.contains("revoked"), "{row}");
        assert!(row.contains("Zapier Integration"));
        follow(&c, "a.filter[href$='status=revoked']").await;
        assert!(text(&c, "#keys-table").await.contains("revoked"));
        follow(&c, "a.filter[href$='status=active']").await;
        assert!(text(&c, ".empty").await.contains("No active keys"));

        // A second key: preset scope, then edit, then rotate with a grace period.
        c.goto(&app.url(&format!("/dashboard/accounts/{account_id}/keys/new")))
            .await
            .unwrap();
        fill(&c, "#name", "Orders sync").await;
        click(&c, "#env-test").await;
        click(&c, "#access-write").await;
        follow(&c, "form.key-form button[type=submit]").await;
        let first_secret = text(&c, "#new-secret").await;
        assert!(first_secret.starts_with("kg_test_"));
        follow(&c, "a.button.primary").await;
        let second_path = path_of(&c).await;
        follow(&c, "a.button[href$='/edit']").await;
        assert!(c
            .find(Locator::Css("#access-write"))
            .await
            .unwrap()
            .is_selected()
            .await
            .unwrap());
        fill(&c, "#name", "Orders sync (EU)").await;
        fill(&c, "#ip_allowlist", "127.0.0.1, 203.0.113.0/24").await;
        shot(&c, "10-edit-key").await;
        follow(&c, "form.key-form button[type=submit]").await;
        assert_eq!(path_of(&c).await, second_path);
        let details = text(&c, "#key-details").await;
        assert!(details.contains("203.0.113.0/24"), "{details}");
        assert!(text(&c, "h1").await.contains("Orders sync (EU)"));

        follow(&c, "a.button[href$='/rotate']").await;
        c.find(Locator::Css("#grace"))
            .await
            .unwrap()
            .select_by_value("3600")
            .await
            .unwrap();
        shot(&c, "11-rotate").await;
        follow(&c, "form[action$='/rotate'] button[type=submit]").await;
        let rotated = text(&c, "#new-secret").await;
        assert!(rotated.starts_with("kg_test_") && rotated != first_secret);
        shot(&c, "12-rotated-secret").await;
        for key in [&first_secret, &rotated] {
            let a = app.forward_auth(Some(key), "GET", "/api/v1/orders").await;
            assert_eq!(a.status, 204, "both work during the grace period");
        }
        follow(&c, "a.button.primary").await;
        let events = text(&c, "#key-events").await;
        assert!(events.contains("Created by rotating"), "{events}");
        c.goto(&app.url(&second_path)).await.unwrap();
        let events = text(&c, "#key-events").await;
        assert!(events.contains("Rotated into"), "{events}");
        assert!(events.contains("Changed name, ip_allowlist"), "{events}");

        // Readable at 360 px: nothing wider than the screen but the scrolling tables.
        c.set_window_size(360, 800).await.unwrap();
        c.goto(&app.url(&account_path)).await.unwrap();
        let width = c
            .execute("return document.documentElement.scrollWidth;", vec![])
            .await
            .unwrap();
        assert!(width.as_u64().unwrap() <= 360, "page is {width} px wide");
        shot(&c, "13-account-360px").await;
        c.goto(&app.url(&second_path)).await.unwrap();
        shot(&c, "14-key-360px").await;
        c.set_window_size(1280, 1000).await.unwrap();
        c.goto(&app.url(&second_path)).await.unwrap();

        // Sign out: the session is gone.
        follow(&c, "form[action='/dashboard/sign-out'] button").await;
        assert_eq!(path_of(&c).await, "/dashboard/sign-in");
        c.goto(&app.url(&account_path)).await.unwrap();
        assert_eq!(path_of(&c).await, "/dashboard/sign-in");

        let events = audit_actions(&app).await;
        let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
        for expected in [
            "dashboard.sign_in_failed",
            "dashboard.sign_in",
            "account.create",
            "key.create",
            "key.revoke",
            "key.update",
            "key.rotate",
        ] {
            assert!(actions.contains(&expected), "{expected} not in {actions:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_service_session_cannot_see_another_account_in_the_browser() {
    let app = spawn_with(Options {
        permission_catalog: helpers::reference_catalog(),
        ..Options::default()
    })
    .await;
    let mine = app.create_account("Acme Invoicing", "basic").await;
    let theirs = app.create_account("Globex Corporation", "pro").await;
    let (_, manager) = app
        .create_key(
            &mine,
            json!({"name": "Key manager", "permissions": ["api_keys.*", "accounts.read", "invoices.*"]}),
        )
        .await;
    let (their_key, their_secret) = app
        .create_key(
            &theirs,
            json!({"name": "Globex production", "scope": "read"}),
        )
        .await;
    with_browser(|c| async move {
        sign_in(&c, &app, &manager).await;
        assert_eq!(path_of(&c).await, format!("/dashboard/accounts/{mine}"));
        let source = c.source().await.unwrap();
        assert!(source.contains("Acme Invoicing"));
        assert!(source.contains("Key manager"));
        assert!(text(&c, ".usage-text").await.contains("1 of 2 keys used"));
        for other in ["Globex", theirs.as_str(), their_key.as_str()] {
            assert!(!source.contains(other), "{other} visible");
        }
        let nav = text(&c, "header nav").await;
        assert_eq!(nav.trim(), "API Keys");
        shot(&c, "20-self-service-account").await;

        // The account list holds only its own account.
        c.goto(&app.url("/dashboard/accounts")).await.unwrap();
        assert_eq!(path_of(&c).await, format!("/dashboard/accounts/{mine}"));

        // Another account's ids answer as not found.
        for path in [
            format!("/dashboard/accounts/{theirs}"),
            format!("/dashboard/keys/{their_key}"),
            format!("/dashboard/keys/{their_key}/revoke"),
        ] {
            c.goto(&app.url(&path)).await.unwrap();
            let page = c.source().await.unwrap();
            assert!(text(&c, "h1").await.contains("Not found"), "{path}");
            assert!(!page.contains("Globex"), "{path}");
        }
        shot(&c, "21-self-service-other-account").await;

        // It can create a key within what it holds, and not beyond.
        c.goto(&app.url(&format!("/dashboard/accounts/{mine}/keys/new")))
            .await
            .unwrap();
        fill(&c, "#name", "Webhook relay").await;
        click(&c, "#perm-webhooks-all").await;
        follow(&c, "form.key-form button[type=submit]").await;
        assert!(text(&c, "#form-error").await.contains("does not hold"));
        assert_eq!(
            c.find(Locator::Css("#name"))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap()
                .as_deref(),
            Some("Webhook relay"),
            "the form keeps what was typed"
        );
        shot(&c, "22-self-service-refused-grant").await;
        click(&c, "#perm-webhooks-all").await;
        click(&c, "#perm-invoices-read").await;
        follow(&c, "form.key-form button[type=submit]").await;
        assert!(text(&c, "#new-secret").await.starts_with("kg_live_"));

        // The plan cap (basic: 2) is shown and enforced.
        c.goto(&app.url(&format!("/dashboard/accounts/{mine}/keys/new")))
            .await
            .unwrap();
        fill(&c, "#name", "One too many").await;
        click(&c, "#perm-invoices-read").await;
        follow(&c, "form.key-form button[type=submit]").await;
        shot(&c, "23-self-service-plan-limit").await;
        assert!(text(&c, "#form-error").await.contains("limit reached"));

        let still = app
            .forward_auth(Some(&their_secret), "GET", "/api/v1/invoices")
            .await;
        assert_eq!(still.status, 204);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The checklist fits the deployment's API; the quota fields

/// The resources of the key form's permission checklist, in order.
async fn checklist_rows(c: &Client) -> Vec<String> {
    let rows = c
        .execute(
            "return Array.from(document.querySelectorAll('#checklist fieldset.perm-row > legend'))\
               .map(e => e.textContent.trim());",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(rows).unwrap()
}

async fn exists(c: &Client, css: &str) -> bool {
    c.find(Locator::Css(css)).await.is_ok()
}

/// The resources only the invoicing example's configuration offers.
const REFERENCE_RESOURCES: &[&str] = &["invoices", "clients", "quotations", "products", "webhooks"];

/// The key id in `/dashboard/keys/{id}/secret`.
async fn new_key_id(c: &Client) -> String {
    let path = path_of(c).await;
    assert!(path.ends_with("/secret"), "{path}");
    path.trim_start_matches("/dashboard/keys/")
        .trim_end_matches("/secret")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checklist_offers_the_configured_resources_in_the_browser() {
    // `[permissions] resources = ["orders", "shipments"]`, `actions = ["shipments.track"]`,
    // and a route whose permission spells the resource in the singular.
    let app = spawn_with(Options {
        routes: vec![Route::new("POST", "/api/v1/orders/{id}/refund", "order.refund").unwrap()],
        permission_catalog: PermissionCatalog::new(&["orders", "shipments"], &["shipments.track"])
            .unwrap(),
        ..Options::default()
    })
    .await;
    let account = app.create_account("Acme Shipping", "pro").await;
    with_browser(|c| async move {
        sign_in(&c, &app, &app.admin_token).await;
        c.goto(&app.url(&format!("/dashboard/accounts/{account}/keys/new")))
            .await
            .unwrap();
        assert_eq!(
            checklist_rows(&c).await,
            ["orders", "shipments", "api_keys", "accounts"]
        );
        for present in [
            "#perm-orders-read",
            "#perm-orders-delete",
            "#perm-orders-refund",
            "#perm-shipments-all",
            "#perm-shipments-track",
            "#perm-api_keys-create",
            "#perm-accounts-read",
        ] {
            assert!(exists(&c, present).await, "{present} offered");
        }
        for resource in REFERENCE_RESOURCES {
            assert!(
                !exists(&c, &format!("#perm-{resource}-read")).await,
                "{resource} is not this API's"
            );
        }
        shot(&c, "30-configured-checklist").await;

        fill(&c, "#name", "Warehouse").await;
        click(&c, "#perm-orders-read").await;
        click(&c, "#perm-shipments-track").await;
        follow(&c, "form.key-form button[type=submit]").await;
        let secret = text(&c, "#new-secret").await;
        let key_id = new_key_id(&c).await;
        let record = app
            .admin(Method::GET, &format!("/v1/api-keys/{key_id}"), None)
            .await;
        assert_eq!(
            record.body["permissions"],
            json!(["orders.read", "shipments.track"])
        );
        let orders = app
            .forward_auth(Some(&secret), "GET", "/api/v1/orders")
            .await;
        assert_eq!(orders.status, 204);
        let invoices = app
            .forward_auth(Some(&secret), "GET", "/api/v1/invoices")
            .await;
        assert_eq!(invoices.status, 403);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_catalog_the_checklist_holds_what_the_deployment_names_in_the_browser() {
    // No `[permissions]`: the route table's permission, those existing keys hold (in
    // their spelling), and the management resources. Nothing of the invoicing example.
    let app = spawn_with(Options {
        routes: vec![
            Route::new("POST", "/api/v1/shipments/{id}/track", "shipments.track").unwrap(),
        ],
        ..Options::default()
    })
    .await;
    let account = app.create_account("Acme Shipping", "pro").await;
    let (key_id, _) = app
        .create_key(
            &account,
            json!({"name": "Label printer", "permissions": ["parcels.read", "Labels:print"]}),
        )
        .await;
    with_browser(|c| async move {
        sign_in(&c, &app, &app.admin_token).await;
        c.goto(&app.url(&format!("/dashboard/accounts/{account}/keys/new")))
            .await
            .unwrap();
        assert_eq!(
            checklist_rows(&c).await,
            ["labels", "parcels", "shipments", "api_keys", "accounts"]
        );
        for present in [
            "#perm-labels-print",
            "#perm-parcels-read",
            "#perm-shipments-track",
        ] {
            assert!(exists(&c, present).await, "{present} offered");
        }
        for resource in REFERENCE_RESOURCES.iter().chain(&["orders"]) {
            assert!(
                !exists(&c, &format!("#perm-{resource}-read")).await,
                "{resource} is not this API's"
            );
        }
        shot(&c, "31-checklist-without-catalog").await;

        // The key's edit form ticks exactly what it holds.
        c.goto(&app.url(&format!("/dashboard/keys/{key_id}/edit")))
            .await
            .unwrap();
        for (css, ticked) in [
            ("#perm-labels-print", true),
            ("#perm-parcels-read", true),
            ("#perm-parcels-create", false),
        ] {
            let checkbox = c.find(Locator::Css(css)).await.unwrap();
            assert_eq!(checkbox.is_selected().await.unwrap(), ticked, "{css}");
        }
        let other = c.find(Locator::Css("#extra_permissions")).await.unwrap();
        assert_eq!(other.prop("value").await.unwrap().as_deref(), Some(""));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_set_in_the_browser_is_the_keys_quota() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (app_ref, account_ref) = (&app, account.as_str());
    with_browser(|c| async move {
        let (app, account) = (app_ref, account_ref);
        sign_in(&c, app, &app.admin_token).await;
        let new_form = app.url(&format!("/dashboard/accounts/{account}/keys/new"));
        c.goto(&new_form).await.unwrap();

        // A refill without a quota is refused above the form, keeping what was typed.
        fill(&c, "#name", "Metered").await;
        click(&c, "#access-read").await;
        fill(&c, "#quota_refill_amount", "100").await;
        follow(&c, "form.key-form button[type=submit]").await;
        assert!(
            text(&c, "#form-error").await.contains("needs a quota"),
            "{}",
            text(&c, "#form-error").await
        );
        let refill = c.find(Locator::Css("#quota_refill_amount")).await.unwrap();
        assert_eq!(refill.prop("value").await.unwrap().as_deref(), Some("100"));
        shot(&c, "32-quota-refused").await;

        fill(&c, "#quota_requests", "5000").await;
        c.find(Locator::Css("#quota_refill_every"))
            .await
            .unwrap()
            .select_by_value("3600")
            .await
            .unwrap();
        follow(&c, "form.key-form button[type=submit]").await;
        let key_id = new_key_id(&c).await;
        let record = app
            .admin(Method::GET, &format!("/v1/api-keys/{key_id}"), None)
            .await;
        let quota = &record.body["quota"];
        assert_eq!(quota["requests"], 5000, "{}", record.body);
        assert_eq!(quota["refill"], json!({"amount": 100, "every": 3600}));
        c.goto(&app.url(&format!("/dashboard/keys/{key_id}")))
            .await
            .unwrap();
        let details = text(&c, "#key-details").await;
        assert!(
            details.contains("0 of 5000 requests used, refills 100 every hour"),
            "{details}"
        );

        // The edit form shows the quota; clearing the refill keeps the quota.
        follow(&c, "a.button[href$='/edit']").await;
        let requests = c.find(Locator::Css("#quota_requests")).await.unwrap();
        assert_eq!(
            requests.prop("value").await.unwrap().as_deref(),
            Some("5000")
        );
        shot(&c, "33-quota-edit").await;
        fill(&c, "#quota_refill_amount", "").await;
        follow(&c, "form.key-form button[type=submit]").await;
        let record = app
            .admin(Method::GET, &format!("/v1/api-keys/{key_id}"), None)
            .await;
        let quota = &record.body["quota"];
        assert_eq!(quota["requests"], 5000, "{}", record.body);
        assert!(quota["refill"].is_null(), "{}", record.body);
    })
    .await;

    // Values a browser's number field would stop, sent as a form: 400 with the error
    // above the form, and no key made.
    let s = HttpSession::sign_in(&app, &app.admin_token).await;
    for (requests, amount, message) in [
        ("0", "", "at least 1"),
        ("ten", "", "whole number"),
        ("18446744073709551616", "", "whole number"),
        ("100", "-1", "refill must be"),
    ] {
        let answer = s
            .post(
                &format!("/dashboard/accounts/{account}/keys"),
                &[
                    ("name", "Bad quota"),
                    ("access", "read"),
                    ("quota_requests", requests),
                    ("quota_refill_amount", amount),
                    ("quota_refill_every", "86400"),
                ],
            )
            .await;
        assert_eq!(answer.status(), 400, "{requests} {amount}");
        let html = answer.text().await.unwrap();
        let error_at = html
            .find("id=\"form-error\"")
            .expect("an error above the form");
        assert!(
            html[error_at..].contains(message),
            "{requests} {amount}: {}",
            &html[error_at..]
        );
        assert!(error_at < html.find("<form class=\"key-form\"").unwrap());
    }
    let keys = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={account}"),
            None,
        )
        .await;
    assert_eq!(keys.body["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_key_keeps_periods_the_form_does_not_list() {
    // Set through the API: a rate limit per 30 s and a refill every 10 minutes, neither
    // among the form's choices. Saving another change must leave them as they are.
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (key_id, _) = app
        .create_key(
            &account,
            json!({
                "scope": "read",
                "rate_limit": {"requests": 10, "per_seconds": 30},
                "quota": {"requests": 500, "refill": {"amount": 50, "every": 600}},
            }),
        )
        .await;
    let app = &app;
    with_browser(|c| async move {
        sign_in(&c, app, &app.admin_token).await;
        c.goto(&app.url(&format!("/dashboard/keys/{key_id}/edit")))
            .await
            .unwrap();
        for (css, value) in [("#rate_per", "30"), ("#quota_refill_every", "600")] {
            let select = c.find(Locator::Css(css)).await.unwrap();
            assert_eq!(
                select.prop("value").await.unwrap().as_deref(),
                Some(value),
                "{css}"
            );
        }
        fill(&c, "#name", "Renamed").await;
        follow(&c, "form.key-form button[type=submit]").await;
        let record = app
            .admin(Method::GET, &format!("/v1/api-keys/{key_id}"), None)
            .await;
        assert_eq!(record.body["name"], "Renamed");
        assert_eq!(
            record.body["rate_limit"],
            json!({"requests": 10, "per_seconds": 30})
        );
        assert_eq!(
            record.body["quota"]["refill"],
            json!({"amount": 50, "every": 600})
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The customer portal (`/portal`)

/// A portal link for `account` made through the API, with `extra` fields: its answer.
async fn portal_link(app: &TestApp, account: &str, extra: Value) -> helpers::Answer {
    let mut body =
        json!({ "account_id": account, "return_url": "https://app.example.com/settings" });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    app.admin(Method::POST, "/v1/portal-sessions", Some(body))
        .await
}

/// A portal session over HTTP: opens `url` once and keeps the cookie and CSRF token.
struct PortalHttp {
    client: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl PortalHttp {
    async fn open(app: &TestApp, url: &str) -> PortalHttp {
        let client = http();
        let opened = client.get(url).send().await.unwrap();
        assert_eq!(opened.status(), 303);
        assert_eq!(location(&opened), "/portal");
        let cookie = set_cookie(&opened);
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/portal"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        let cookie = cookie
            .strip_prefix("keygate_portal=")
            .and_then(|c| c.split(';').next())
            .expect("a portal cookie")
            .to_owned();
        let mut portal = PortalHttp {
            client,
            base: app.base.clone(),
            cookie,
            csrf: String::new(),
        };
        let page = portal.get("/portal").await;
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        if html.contains(r#"name="csrf""#) {
            portal.csrf = csrf_of(&html);
        }
        portal
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("keygate_portal={}", self.cookie))
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.post_with_csrf(path, fields, &self.csrf).await
    }

    /// A form POST carrying `csrf` as its token (a forged form carries another).
    async fn post_with_csrf(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        csrf: &str,
    ) -> reqwest::Response {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("csrf", csrf));
        self.client
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("keygate_portal={}", self.cookie))
            .form(&all)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn portal_sessions_check_their_fields() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let made = portal_link(&app, &account, json!({})).await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert!(made.body["id"].as_str().unwrap().starts_with("ps_"));
    let url = made.body["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/portal/open?code=", app.base)),
        "{url}"
    );
    assert!(made.body["expires_at"].is_string());

    portal_link(&app, "acct_000000000000000000000000", json!({}))
        .await
        .assert_error(404, "not_found");
    for (field, bad) in [
        ("expires_in", json!(0)),
        ("expires_in", json!(3601)),
        ("actions", json!(["delete"])),
        ("return_url", json!("javascript:alert(1)")),
        ("allowed_scopes", json!(["not a permission"])),
        ("allowed_scopes", json!([])),
    ] {
        let answer = portal_link(&app, &account, json!({ field: bad })).await;
        assert_eq!(answer.status, 400, "{field}: {}", answer.body);
        assert_eq!(answer.body["field"], field, "{}", answer.body);
    }
    // A self-service key, even one that manages keys, cannot hand out portal links.
    let (_, manager) = app
        .create_key(&account, json!({"permissions": ["api_keys.*"]}))
        .await;
    let by_key = app
        .call(
            Method::POST,
            "/v1/portal-sessions",
            Some(&manager),
            Some(json!({ "account_id": account })),
        )
        .await;
    assert_eq!(by_key.status, 403, "{}", by_key.body);
}

#[tokio::test]
async fn a_portal_link_works_once_and_its_session_sees_one_account() {
    let app = spawn().await;
    let mine = app.create_account("Acme", "pro").await;
    let theirs = app.create_account("Globex", "pro").await;
    let (their_key, _) = app
        .create_key(&theirs, json!({"name": "Globex prod"}))
        .await;
    let made = portal_link(&app, &mine, json!({})).await;
    let url = made.body["url"].as_str().unwrap().to_owned();
    let session_id = made.body["id"].as_str().unwrap().to_owned();

    let portal = PortalHttp::open(&app, &url).await;
    // Used once: a second visit, a forged or a missing code find the expired-link page.
    let forged = format!("{}/portal/open?code={}", app.base, "ab".repeat(32));
    for again in [url.clone(), forged, format!("{}/portal/open", app.base)] {
        let r = http().get(&again).send().await.unwrap();
        assert_eq!(r.status(), 410, "{again}");
        assert!(set_cookie(&r).is_empty());
        assert!(r.text().await.unwrap().contains("This link has expired"));
    }

    // Create a key: 303 to its secret, shown once.
    let created = portal
        .post(
            "/portal/keys",
            &[
                ("name", "CI"),
                ("environment", "test"),
                ("permission", "all"),
                ("expiry", "30"),
            ],
        )
        .await;
    assert_eq!(created.status(), 303);
    let secret_path = location(&created);
    assert!(secret_path.starts_with("/portal/keys/key_") && secret_path.ends_with("/secret"));
    let key_id = secret_path
        .trim_start_matches("/portal/keys/")
        .trim_end_matches("/secret")
        .to_owned();
    let shown = portal.get(&secret_path).await;
    assert_eq!(shown.status(), 200);
    let html = shown.text().await.unwrap();
    let start = html.find("kg_test_").expect("the secret is on the page");
    let secret: String = html[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    assert_eq!(
        app.forward_auth(Some(&secret), "GET", "/api/v1/invoices")
            .await
            .status,
        204
    );
    assert_eq!(portal.get(&secret_path).await.status(), 410, "shown once");
    let key = app
        .admin(Method::GET, &format!("/v1/api-keys/{key_id}"), None)
        .await;
    assert_eq!(key.body["account_id"], mine.as_str());
    assert!(key.body["expires_at"].is_string());

    // The keys table lists it; the other account's key is nowhere.
    let page = portal.get("/portal").await.text().await.unwrap();
    assert!(page.contains(&key_id) && page.contains("CI"));
    assert!(!page.contains("Globex"));
    assert!(
        page.contains(r#"href="https://app.example.com/settings""#),
        "back link"
    );
    for path in [
        format!("/portal/keys/{their_key}"),
        format!("/portal/keys/{their_key}/revoke"),
    ] {
        let r = portal.get(&path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert!(!r.text().await.unwrap().contains("Globex"));
    }
    let revoke_theirs = portal
        .post(&format!("/portal/keys/{their_key}/revoke"), &[])
        .await;
    assert_eq!(revoke_theirs.status(), 404);
    let theirs_now = app
        .admin(Method::GET, &format!("/v1/api-keys/{their_key}"), None)
        .await;
    assert_eq!(theirs_now.body["status"], "active");

    // Revoke its own key.
    let revoked = portal
        .post(&format!("/portal/keys/{key_id}/revoke"), &[])
        .await;
    assert_eq!(revoked.status(), 303);
    assert_eq!(
        app.forward_auth(Some(&secret), "GET", "/api/v1/invoices")
            .await
            .status,
        401
    );

    // Audited as the portal session, in the account.
    let events = audit_actions(&app).await;
    let actor = format!("portal:{session_id}");
    for action in ["portal_session.open", "key.create", "key.revoke"] {
        assert!(
            events.iter().any(|e| e["action"] == action
                && e["actor"] == actor.as_str()
                && e["account_id"] == mine.as_str()),
            "{action} by {actor}: {events:?}"
        );
    }

    // Without the CSRF token nothing happens.
    let forged_post = portal
        .client
        .post(app.url("/portal/keys"))
        .header("cookie", format!("keygate_portal={}", portal.cookie))
        .form(&[("name", "x"), ("permission", "all")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged_post.status(), 403);
}

#[tokio::test]
async fn a_portal_session_opens_no_dashboard_page() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (key_id, _) = app.create_key(&account, json!({})).await;
    let made = portal_link(&app, &account, json!({})).await;
    let portal = PortalHttp::open(&app, made.body["url"].as_str().unwrap()).await;
    // The portal secret under either cookie name, with the portal's CSRF token.
    let cookies = format!("keygate_portal={0}; keygate_session={0}", portal.cookie);
    let pages = [
        "/dashboard".to_owned(),
        "/dashboard/accounts".to_owned(),
        format!("/dashboard/accounts/{account}"),
        format!("/dashboard/accounts/{account}/keys/new"),
        format!("/dashboard/keys/{key_id}"),
        format!("/dashboard/keys/{key_id}/edit"),
        format!("/dashboard/keys/{key_id}/revoke"),
        format!("/dashboard/keys/{key_id}/rotate"),
        format!("/dashboard/keys/{key_id}/secret"),
    ];
    for path in &pages {
        let r = http()
            .get(app.url(path))
            .header("cookie", &cookies)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(location(&r), "/dashboard/sign-in", "{path}");
    }
    let posts = [
        (
            "/dashboard/accounts".to_owned(),
            vec![("name", "Mallory"), ("plan", "pro")],
        ),
        (
            format!("/dashboard/accounts/{account}/plan"),
            vec![("plan", "unlimited")],
        ),
        (
            format!("/dashboard/accounts/{account}/keys"),
            vec![("name", "x"), ("access", "all")],
        ),
        (
            format!("/dashboard/keys/{key_id}/edit"),
            vec![("name", "renamed")],
        ),
        (format!("/dashboard/keys/{key_id}/revoke"), vec![]),
        (format!("/dashboard/keys/{key_id}/rotate"), vec![]),
        ("/dashboard/sign-out".to_owned(), vec![]),
    ];
    for (path, fields) in &posts {
        let mut fields = fields.clone();
        fields.push(("csrf", &portal.csrf));
        let r = http()
            .post(app.url(path))
            .header("cookie", &cookies)
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(location(&r), "/dashboard/sign-in", "{path}");
    }
    let key = app
        .admin(Method::GET, &format!("/v1/api-keys/{key_id}"), None)
        .await;
    assert_eq!(key.body["status"], "active");
    assert_ne!(key.body["name"], "renamed");
    let accounts = app.admin(Method::GET, "/v1/accounts", None).await;
    assert_eq!(accounts.body["data"].as_array().unwrap().len(), 1);
    // Nor the admin API: the cookie is no credential there.
    let api = http()
        .get(app.url("/v1/accounts"))
        .header("cookie", &cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
}

#[tokio::test]
async fn a_portal_session_does_only_what_its_link_allows() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let (key_id, _) = app
        .create_key(&account, json!({"permissions": ["invoices.read"]}))
        .await;
    let made = portal_link(
        &app,
        &account,
        json!({"allowed_scopes": ["invoices.read", "clients.read"], "actions": ["create"]}),
    )
    .await;
    let portal = PortalHttp::open(&app, made.body["url"].as_str().unwrap()).await;
    let page = portal.get("/portal").await.text().await.unwrap();
    assert!(page.contains(r#"value="invoices.read""#) && page.contains(r#"value="clients.read""#));
    assert!(!page.contains(r#"value="all""#));
    // A permission the link did not allow is refused with a message; an allowed one works.
    let refused = portal
        .post("/portal/keys", &[("name", "x"), ("permission", "all")])
        .await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("may not hand out"));
    let ok = portal
        .post(
            "/portal/keys",
            &[("name", "reader"), ("permission", "clients.read")],
        )
        .await;
    assert_eq!(ok.status(), 303);
    // Neither revoke nor rotate was allowed.
    let key_page = portal
        .get(&format!("/portal/keys/{key_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!key_page.contains("Revoke") && !key_page.contains("Rotate key"));
    assert_eq!(
        portal
            .post(&format!("/portal/keys/{key_id}/revoke"), &[])
            .await
            .status(),
        403
    );
    assert_eq!(
        portal
            .post(&format!("/portal/keys/{key_id}/rotate"), &[("grace", "0")])
            .await
            .status(),
        403
    );
    let key = app
        .admin(Method::GET, &format!("/v1/api-keys/{key_id}"), None)
        .await;
    assert_eq!(key.body["status"], "active");
}

#[tokio::test]
async fn the_portal_link_uses_the_public_url_and_the_portal_its_branding() {
    let app = spawn_with(Options {
        portal: keygate_server::PortalConfig {
            public_url: Some("https://keys.example.com".into()),
            product_name: Some("Invoicely".into()),
            accent_color: Some("#0a7d55".into()),
            support_url: Some("https://help.example.com/".into()),
            frame_ancestors: Some("https://app.example.com".into()),
        },
        ..Options::default()
    })
    .await;
    let account = app.create_account("Acme", "pro").await;
    let made = portal_link(&app, &account, json!({})).await;
    let url = made.body["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://keys.example.com/portal/open?code="),
        "{url}"
    );
    let local = url.replace("https://keys.example.com", &app.base);
    let portal = PortalHttp::open(&app, &local).await;
    let page = portal.get("/portal").await;
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.ends_with("; frame-ancestors https://app.example.com"),
        "{csp}"
    );
    assert!(page.headers().get("x-frame-options").is_none());
    let html = page.text().await.unwrap();
    assert!(html.contains("Back to Invoicely"));
    assert!(html.contains(r#"href="https://help.example.com/""#));
    let brand = http()
        .get(app.url("/portal/assets/brand.css"))
        .send()
        .await
        .unwrap();
    assert!(brand.text().await.unwrap().contains("--accent: #0a7d55"));
    // Without the setting the portal cannot be framed, like the dashboard.
    let plain = spawn().await;
    let expired = http()
        .get(plain.url("/portal/open?code=00"))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 410);
    assert_eq!(expired.headers()["x-frame-options"], "DENY");
    assert!(expired.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_makes_uses_and_revokes_a_key_in_the_portal_in_the_browser() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    // No return URL: signing out stays on this server (the default one is not reachable).
    let made = portal_link(&app, &account, json!({ "return_url": null })).await;
    let url = made.body["url"].as_str().unwrap().to_owned();
    with_browser(|c| async move {
        c.goto(&url).await.unwrap();
        assert_eq!(
            path_of(&c).await,
            "/portal",
            "the code leaves the address bar"
        );
        shot(&c, "portal-01-empty").await;
        fill(&c, "#name", "Zapier").await;
        click(&c, "input[name=permission][value=all]").await;
        follow(&c, "#create").await;
        assert!(path_of(&c).await.ends_with("/secret"));
        let secret = text(&c, "#new-secret").await;
        assert!(secret.starts_with("kg_live_"), "{secret}");
        shot(&c, "portal-02-secret").await;
        assert_eq!(
            app.forward_auth(Some(&secret), "GET", "/api/v1/invoices")
                .await
                .status,
            204
        );
        follow(&c, "#stored").await;
        assert!(text(&c, "#keys").await.contains("Zapier"));
        follow(&c, "#keys a").await;
        assert!(c.find(Locator::Css("svg")).await.is_ok(), "the usage chart");
        follow(&c, "#revoke").await;
        follow(&c, "#confirm-revoke").await;
        assert!(text(&c, ".notice").await.contains("revoked"));
        shot(&c, "portal-03-revoked").await;
        assert_eq!(
            app.forward_auth(Some(&secret), "GET", "/api/v1/invoices")
                .await
                .status,
            401
        );
        // The link cannot be used twice.
        c.goto(&url).await.unwrap();
        assert_eq!(text(&c, "h1").await, "This link has expired");
        // Its session can be ended, and then nothing opens with it.
        c.goto(&app.url("/portal")).await.unwrap();
        assert_eq!(text(&c, "h1").await, "API keys");
        follow(&c, "#sign-out").await;
        assert_eq!(path_of(&c).await, "/portal/signed-out");
        assert_eq!(text(&c, "h1").await, "You have signed out");
        c.goto(&app.url("/portal")).await.unwrap();
        assert_eq!(text(&c, "h1").await, "Your session has ended");
    })
    .await;
}

#[tokio::test]
async fn signing_out_of_the_portal_ends_its_session() {
    let app = spawn().await;
    let account = app.create_account("Acme", "pro").await;
    let made = portal_link(&app, &account, json!({})).await;
    let portal = PortalHttp::open(&app, made.body["url"].as_str().unwrap()).await;
    let page = portal.get("/portal").await.text().await.unwrap();
    assert!(
        page.contains(r#"action="/portal/sign-out""#),
        "a sign-out form: {page}"
    );

    // Without the CSRF token (a forged form) nothing ends.
    let forged = portal.post_with_csrf("/portal/sign-out", &[], "0").await;
    assert_eq!(forged.status(), 403);
    assert_eq!(portal.get("/portal").await.status(), 200);

    // Signed out: back to the product, the cookie cleared, the session gone on the server
    // (the old cookie, kept by a careless browser, opens nothing).
    let out = portal.post("/portal/sign-out", &[]).await;
    assert_eq!(out.status(), 303);
    assert_eq!(location(&out), "https://app.example.com/settings");
    let cleared = set_cookie(&out);
    for part in ["keygate_portal=", "Max-Age=0", "Path=/portal"] {
        assert!(cleared.contains(part), "{cleared}");
    }
    let after = portal.get("/portal").await;
    assert_eq!(after.status(), 401);
    assert!(after
        .text()
        .await
        .unwrap()
        .contains("Your session has ended"));
    assert_eq!(portal.post("/portal/sign-out", &[]).await.status(), 401);
    let actor = format!("portal:{}", made.body["id"].as_str().unwrap());
    assert!(
        audit_actions(&app)
            .await
            .iter()
            .any(|e| e["action"] == "portal_session.close"
                && e["actor"] == actor.as_str()
                && e["account_id"] == account.as_str()),
        "the sign-out is audited as the session"
    );

    // A link without a return URL signs out to a page of its own.
    let made = portal_link(&app, &account, json!({ "return_url": null })).await;
    let portal = PortalHttp::open(&app, made.body["url"].as_str().unwrap()).await;
    let out = portal.post("/portal/sign-out", &[]).await;
    assert_eq!(location(&out), "/portal/signed-out");
    let page = http()
        .get(app.url("/portal/signed-out"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("You have signed out"));
}

// ---------------------------------------------------------------------------------------
// The least-privilege report

/// A key granted `invoices.*` and `clients.read` that made only invoice reads.
async fn over_granted_key(app: &TestApp) -> (String, String) {
    let account = app.create_account("Acme", "unlimited").await;
    let (id, key) = app
        .create_key(
            &account,
            json!({"permissions": ["invoices.*", "clients.read"]}),
        )
        .await;
    app.forward_auth_times(&key, "GET", "/api/v1/invoices/7", 3, 204)
        .await;
    app.engine.flush_usage().await.unwrap();
    (id, key)
}

async fn permissions_of(app: &TestApp, id: &str) -> Value {
    app.admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
        .await
        .body["permissions"]
        .clone()
}

#[tokio::test]
async fn narrowing_to_the_suggestion_needs_the_csrf_token_and_the_suggestion_shown() {
    let app = spawn().await;
    let (id, key) = over_granted_key(&app).await;
    let session = HttpSession::sign_in(&app, &app.admin_token).await;
    let page = session.get(&format!("/dashboard/keys/{id}")).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Least privilege, last 30 days"), "{html}");
    assert!(html.contains("Narrow to the suggestion"));
    let narrow = format!("/dashboard/keys/{id}/narrow");

    // Without the session's CSRF token: refused, nothing changes.
    let wrong = "0".repeat(session.csrf.len());
    let refused = session
        .post(&narrow, &[("csrf", &wrong), ("suggested", "invoices.read")])
        .await;
    assert_eq!(refused.status(), 403);
    // A suggestion other than the current one (the page is stale): nothing changes.
    let stale = session
        .post(&narrow, &[("suggested", "invoices.read invoices.send")])
        .await;
    assert_eq!(stale.status(), 303);
    assert_eq!(
        permissions_of(&app, &id).await,
        json!(["clients.read", "invoices.*"])
    );

    let done = session
        .post(&narrow, &[("suggested", "invoices.read")])
        .await;
    assert_eq!(done.status(), 303);
    assert_eq!(location(&done), format!("/dashboard/keys/{id}"));
    assert_eq!(permissions_of(&app, &id).await, json!(["invoices.read"]));
    let update = audit_actions(&app)
        .await
        .into_iter()
        .find(|e| e["action"] == "key.update")
        .expect("the narrowing is audited");
    assert_eq!(update["target_id"], json!(id));
    // The key works for what it used, and no longer for the rest.
    app.forward_auth_times(&key, "GET", "/api/v1/invoices/7", 1, 204)
        .await;
    app.forward_auth_times(&key, "DELETE", "/api/v1/invoices/7", 1, 403)
        .await;
    // Nothing left to narrow: no button.
    let html = session
        .get(&format!("/dashboard/keys/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains("Narrow to the suggestion"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_page_narrows_to_the_suggestion_in_the_browser() {
    let app = spawn().await;
    let (id, _) = over_granted_key(&app).await;
    with_browser(|c| async move {
        sign_in(&c, &app, &app.admin_token).await;
        c.goto(&app.url(&format!("/dashboard/keys/{id}")))
            .await
            .unwrap();
        assert_eq!(text(&c, "#unused-grants").await, "clients.read");
        assert_eq!(text(&c, "#suggested").await, "invoices.read");
        assert!(text(&c, "#permission-usage")
            .await
            .contains("invoices.read"));
        shot(&c, "key-least-privilege").await;
        follow(&c, "#narrow").await;
        assert_eq!(path_of(&c).await, format!("/dashboard/keys/{id}"));
        assert_eq!(text(&c, "#granted").await, "invoices.read");
        assert!(!exists(&c, "#narrow").await);
        assert_eq!(permissions_of(&app, &id).await, json!(["invoices.read"]));
    })
    .await;
}
