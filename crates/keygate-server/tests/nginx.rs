//! The nginx configuration of `docs/nginx.md`, as written there, run by the real nginx
//! (the Debian package) in front of the example upstream, asking a real keygate server.
//! Only addresses, ports and file locations are substituted. Without nginx installed the
//! test says so and passes (CI installs it: `scripts/install-deps`).

#[path = "api/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use helpers::{answer, spawn_with, Answer, Options};
use reqwest::StatusCode;
use serde_json::json;

fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// The first ```nginx block of docs/nginx.md.
fn documented_config() -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/nginx.md");
    let text = std::fs::read_to_string(&doc).expect("docs/nginx.md");
    let start = text
        .find("```nginx\n")
        .expect("an nginx block in docs/nginx.md")
        + 9;
    let end = start + text[start..].find("```").expect("the block's end");
    text[start..end].to_owned()
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "docs/nginx.md should contain {from:?} exactly once"
    );
    text.replacen(from, to, 1)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A running nginx, stopped on drop.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    fn start(binary: &Path, keygate: &str, upstream: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tmp = dir.path().display().to_string();
        let mut conf = documented_config();
        conf = replace_once(
            &conf,
            "server 127.0.0.1:8080;",
            &format!("server {keygate};"),
        );
        conf = replace_once(
            &conf,
            "server 127.0.0.1:3000;",
            &format!("server {upstream};"),
        );
        conf = replace_once(&conf, "listen 8000;", &format!("listen 127.0.0.1:{port};"));
        conf = replace_once(&conf, "worker_processes auto;", "worker_processes 1;");
        conf = replace_once(
            &conf,
            "http {\n",
            &format!(
                "http {{\n    access_log {tmp}/access.log;\n    \
                 client_body_temp_path {tmp}/body;\n    proxy_temp_path {tmp}/proxy;\n    \
                 fastcgi_temp_path {tmp}/fastcgi;\n    uwsgi_temp_path {tmp}/uwsgi;\n    \
                 scgi_temp_path {tmp}/scgi;\n"
            ),
        );
        if is_root() {
            // Workers would otherwise run as nobody, who cannot enter the temp directory.
            conf = format!("user root;\n{conf}");
        }
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, &conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-g")
            .arg(format!("daemon off; pid {tmp}/nginx.pid;"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, dir, port };
        nginx.wait_ready();
        nginx
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A fast shutdown of the master stops its workers too.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn echoed_one(a: &Answer, name: &str) -> Option<String> {
    let all: Vec<String> = a.body["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("not an echo: {}", a.body))
        .iter()
        .filter(|p| p[0] == name)
        .map(|p| p[1].as_str().unwrap().to_owned())
        .collect();
    assert!(all.len() <= 1, "{name} forwarded {} times", all.len());
    all.into_iter().next()
}

#[tokio::test]
async fn the_documented_nginx_config_works() {
    let Some(binary) = find_nginx() else {
        keygate_test_support::skip("nginx not installed");
        return;
    };
    let app = spawn_with(Options {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..Options::default()
    })
    .await;
    let upstream = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, invoices_api::app_named("api")).await });
        addr
    };
    let nginx = Nginx::start(&binary, &app.addr.to_string(), &upstream.to_string());
    let client = reqwest::Client::new();
    let get = |path: &str, header: Option<(&str, &str)>| {
        let mut req = client.get(nginx.url(path));
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        async move { answer(req.send().await.unwrap()).await }
    };

    let acct = app.create_account("Acme Invoicing", "unlimited").await;
    let (key_id, key) = app.create_key(&acct, json!({"scope": "read"})).await;
    let bearer = format!("Bearer {key}");

    // Allowed, with each header form; the identity reaches the API, the key does not.
    for header in [
        ("Authorization", bearer.as_str()),
        ("X-API-Key", key.as_str()),
        ("APIKEY", key.as_str()),
    ] {
        let a = answer(
            client
                .get(nginx.url("/api/v1/echo"))
                .header(header.0, header.1)
                .header("X-Keygate-Key-Id", "key_spoofed")
                .header("X-Keygate-Permissions", "*")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}\n{}", a.body, nginx.log());
        assert_eq!(a.header("x-upstream"), Some("api"));
        assert_eq!(
            echoed_one(&a, "x-keygate-key-id").as_deref(),
            Some(key_id.as_str())
        );
        assert_eq!(
            echoed_one(&a, "x-keygate-account-id").as_deref(),
            Some(acct.as_str())
        );
        assert_eq!(
            echoed_one(&a, "x-keygate-environment").as_deref(),
            Some("live")
        );
        assert_eq!(
            echoed_one(&a, "x-keygate-permissions").as_deref(),
            Some("*.read")
        );
        for gone in ["authorization", "x-api-key", "apikey"] {
            assert!(echoed_one(&a, gone).is_none(), "{gone} reached the API");
        }
        assert!(!a.body.to_string().contains(&key));
    }
    let a = get("/api/v1/invoices", Some(("Authorization", &bearer))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["data"][0]["number"], "INV-0001");

    // Each refusal: keygate's status and JSON, never the API's.
    let refused = |a: &Answer, status: u16, code: &str| {
        a.assert_error(status, code);
        assert!(a.header("x-upstream").is_none(), "{code} reached the API");
        assert!(a.headers.get_all("www-authenticate").iter().count() <= 1);
        assert_eq!(
            a.header("x-request-id"),
            a.body["request_id"].as_str(),
            "{code}"
        );
    };
    let a = get("/api/v1/invoices", None).await;
    refused(&a, 401, "missing_credentials");
    let unknown = format!(
        "Bearer {}",
        helpers::unknown_key(keygate_core::Environment::Live)
    );
    let a = get("/api/v1/invoices", Some(("Authorization", &unknown))).await;
    refused(&a, 401, "invalid_key");
    assert_eq!(a.body["error"], "Invalid API key");
    let a = get(
        "/api/v1/invoices",
        Some(("Authorization", "Bearer kg_live_typo")),
    )
    .await;
    refused(&a, 401, "malformed_key");

    let a = answer(
        client
            .post(nginx.url("/api/v1/invoices"))
            .header("Authorization", &bearer)
            .json(&json!({"number": "INV-9"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    refused(&a, 403, "insufficient_permissions");
    let a = get("/api/v1/webhooks", Some(("Authorization", &bearer))).await;
    refused(&a, 403, "insufficient_permissions");

    let office = app
        .create_key(
            &acct,
            json!({"scope": "read", "ip_allowlist": ["203.0.113.0/24"]}),
        )
        .await
        .1;
    let a = get("/api/v1/invoices", Some(("X-API-Key", &office))).await;
    refused(&a, 403, "ip_not_allowed");

    let throttled = app
        .create_key(
            &acct,
            json!({"scope": "read", "rate_limit": {"requests": 1, "per_seconds": 60}}),
        )
        .await
        .1;
    let a = get("/api/v1/invoices", Some(("X-API-Key", &throttled))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(
        a.header("ratelimit").is_some(),
        "RateLimit on allowed answers"
    );
    let a = get("/api/v1/invoices", Some(("X-API-Key", &throttled))).await;
    refused(&a, 429, "rate_limited");
    assert!(a
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().is_ok()));
    assert!(a.header("ratelimit").is_some());

    let a = get(
        &format!("/api/v1/invoices?api_key={key}"),
        Some(("Authorization", &bearer)),
    )
    .await;
    refused(&a, 400, "key_in_url");

    // Key info is keygate's own answer.
    let a = get("/v1/api-key-info", Some(("APIKEY", &key))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["data"]["id"], key_id.as_str());

    // keygate unreachable: a JSON 502, not nginx's HTML 500.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cut_off = Nginx::start(&binary, &closed.to_string(), &upstream.to_string());
    let a = answer(
        client
            .get(cut_off.url("/api/v1/invoices"))
            .header("Authorization", &bearer)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
    assert_eq!(a.code(), "upstream_unavailable");
}
