//! `keygate serve` as an operator runs it: the real binary, a fresh directory as its
//! working directory, a free port, and signals. These tests hold the process-level
//! promises of the spec: zero-configuration start, secrets settled once and kept across
//! restarts, graceful shutdown that flushes usage, refusing a wrong pepper, the three
//! configuration layers, clear configuration errors and logs without secrets.

use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_keygate");
/// How long a server may take to answer `/healthz` after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit (after SIGTERM, or when it must refuse to start).
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_PREFIX: &str = "kgadm_";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A port nothing listens on (bound, read, released).
use keygate_test_support::free_port;

/// `n` bytes of the OS CSPRNG as lowercase hex.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Every `kgadm_…` token in `text`, as written (whatever its length).
fn admin_tokens(text: &str) -> Vec<String> {
    text.match_indices(ADMIN_PREFIX)
        .map(|(i, _)| {
            let tail = &text[i + ADMIN_PREFIX.len()..];
            let end = tail
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(tail.len());
            format!("{ADMIN_PREFIX}{}", &tail[..end])
        })
        .collect()
}

/// The one admin token a first start prints, checked for shape.
fn the_printed_token(stderr: &str) -> String {
    let tokens = admin_tokens(stderr);
    assert_eq!(
        tokens.len(),
        1,
        "expected exactly one admin token on stderr, got {tokens:?}; stderr:\n{stderr}"
    );
    let token = tokens.into_iter().next().unwrap();
    let body = &token[ADMIN_PREFIX.len()..];
    assert!(
        body.len() == 64 && is_lower_hex(body),
        "admin token is not kgadm_ + 64 hex: {token:?}"
    );
    token
}

fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn file_mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn is_listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

fn listen_on(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// One `keygate serve` run: what to pass it.
struct Launch<'a> {
    dir: &'a Path,
    /// Names the files stderr and stdout go to (`<name>.stderr`, `<name>.stdout`).
    name: &'a str,
    env: Vec<(&'a str, String)>,
    args: Vec<String>,
}

impl<'a> Launch<'a> {
    fn new(dir: &'a Path, name: &'a str) -> Self {
        Launch {
            dir,
            name,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Zero configuration apart from the listen address.
    fn listening(dir: &'a Path, name: &'a str, port: u16) -> Self {
        Launch::new(dir, name).env("KEYGATE_LISTEN", listen_on(port))
    }

    fn env(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.env.push((name, value.into()));
        self
    }

    fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.join(format!("{}.stderr", self.name))
    }

    fn spawn(&self) -> Child {
        let mut command = Command::new(BIN);
        command.arg("serve").args(&self.args).current_dir(self.dir);
        // Whatever the parent environment holds must not configure the child.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KEYGATE_") {
                command.env_remove(&name);
            }
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let stderr = File::create(self.stderr_path()).expect("create the stderr file");
        let stdout = File::create(self.dir.join(format!("{}.stdout", self.name)))
            .expect("create the stdout file");
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn keygate serve")
    }

    /// Spawns the server and waits until `/healthz` answers 200 on `port`.
    async fn start(self, port: u16) -> Server {
        let child = self.spawn();
        let mut server = Server {
            child: Some(child),
            port,
            stderr: self.stderr_path(),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = server.child_mut().try_wait().expect("try_wait") {
                panic!(
                    "keygate serve ({}) exited with {status} before it was ready; stderr:\n{}",
                    self.name,
                    server.stderr()
                );
            }
            let health = server.http.get(server.url("/healthz")).send().await;
            if matches!(&health, Ok(r) if r.status() == StatusCode::OK) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "keygate serve ({}) did not answer /healthz within {READY_TIMEOUT:?}; stderr:\n{}",
                self.name,
                server.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a server that must refuse to start: its exit status and stderr.
    async fn run_to_exit(self) -> (ExitStatus, String) {
        let mut child = self.spawn();
        let status = wait_exit(&mut child, EXIT_TIMEOUT).await;
        let stderr = read_text(&self.stderr_path());
        match status {
            Some(status) => (status, stderr),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "keygate serve ({}) was still running after {EXIT_TIMEOUT:?}; stderr:\n{stderr}",
                    self.name
                );
            }
        }
    }
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `keygate serve`; killed when dropped (a failing test leaves no process).
struct Server {
    child: Option<Child>,
    port: u16,
    stderr: PathBuf,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP answer: status, headers and body (JSON, or `Null` when empty).
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }
}

impl Server {
    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the server is running")
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stderr(&self) -> String {
        read_text(&self.stderr)
    }

    /// SIGTERM (through kill(1)), then the exit status, which must come within 10 s.
    async fn sigterm(mut self) -> ExitStatus {
        let pid = self.child_mut().id();
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed");
        let status = wait_exit(self.child_mut(), EXIT_TIMEOUT).await;
        match status {
            Some(status) => {
                self.child = None;
                status
            }
            None => panic!(
                "keygate serve did not exit within {EXIT_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// SIGTERM, asserting a clean exit; returns the run's stderr.
    async fn stop(self) -> String {
        let stderr_path = self.stderr.clone();
        let status = self.sigterm().await;
        let stderr = read_text(&stderr_path);
        assert!(
            status.success(),
            "keygate serve exited with {status} after SIGTERM; stderr:\n{stderr}"
        );
        stderr
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("send the request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("read the body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "answer {status} is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, token: &str, path: &str) -> Answer {
        self.send(self.http.get(self.url(path)).bearer_auth(token))
            .await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> Answer {
        self.send(
            self.http
                .post(self.url(path))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    /// `POST /v1/accounts` → the new account's id.
    async fn create_account(&self, token: &str, name: &str) -> String {
        let answer = self
            .post(token, "/v1/accounts", json!({ "name": name }))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "create account: {}",
            answer.body
        );
        let id = answer.body["id"].as_str().expect("account id").to_owned();
        assert!(id.starts_with("acct_"), "account id {id:?}");
        id
    }

    /// `POST /v1/api-keys` with scope `read` → (id, secret, whole key object).
    async fn create_key(&self, token: &str, account: &str, name: &str) -> (String, String, Value) {
        let answer = self
            .post(
                token,
                "/v1/api-keys",
                json!({ "account_id": account, "name": name, "scope": "read" }),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "create key: {}",
            answer.body
        );
        let id = answer.body["id"].as_str().expect("key id").to_owned();
        let secret = answer.body["key"].as_str().expect("key secret").to_owned();
        assert!(id.starts_with("key_"), "key id {id:?}");
        (id, secret, answer.body)
    }

    /// Forward-auth for `GET /api/v1/invoices/1` with the key as a bearer token.
    async fn forward_auth(&self, key: &str) -> Answer {
        self.send(
            self.http
                .get(self.url("/v1/auth"))
                .bearer_auth(key)
                .header("X-Original-Method", "GET")
                .header("X-Original-URI", "/api/v1/invoices/1"),
        )
        .await
    }
}

fn assert_json_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "body: {}", answer.body);
    let content_type = answer
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "error answers are JSON, got content-type {content_type:?}"
    );
    assert_eq!(answer.code(), code, "body: {}", answer.body);
    assert!(
        answer.body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error message in {}",
        answer.body
    );
    assert!(
        answer.body["request_id"].as_str().is_some(),
        "request_id in {}",
        answer.body
    );
}

fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked"),
        "keygate panicked instead of reporting an error:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn zero_config_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "first", port)
        .start(port)
        .await;

    let db = dir.path().join("keygate.db");
    let pepper = dir.path().join("keygate.pepper");
    assert!(
        db.is_file(),
        "keygate.db is created in the working directory"
    );
    assert!(
        pepper.is_file(),
        "keygate.pepper is created beside the database"
    );
    assert_eq!(file_mode(&pepper), 0o600, "the pepper file is private");
    let pepper_text = read_text(&pepper);
    assert!(
        pepper_text.trim().len() >= 64 && is_lower_hex(pepper_text.trim()),
        "the pepper file holds hex"
    );

    let stderr = server.stderr();
    let token = the_printed_token(&stderr);

    let created = server
        .post(&token, "/v1/accounts", json!({ "name": "Acme" }))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["name"], "Acme");
    assert_eq!(created.body["plan"], "basic", "the default plan is basic");

    let wrong = format!("{ADMIN_PREFIX}{}", random_hex(32));
    let denied = server
        .post(&wrong, "/v1/accounts", json!({ "name": "Mallory" }))
        .await;
    assert_json_error(&denied, StatusCode::UNAUTHORIZED, "unauthorized");
    let anonymous = server
        .send(server.http.get(server.url("/v1/accounts")))
        .await;
    assert_json_error(&anonymous, StatusCode::UNAUTHORIZED, "missing_credentials");

    // Only the digest is stored: the token itself is nowhere in the data directory.
    let db_bytes: Vec<u8> = ["keygate.db", "keygate.db-wal"]
        .iter()
        .flat_map(|f| std::fs::read(dir.path().join(f)).unwrap_or_default())
        .collect();
    assert!(
        !String::from_utf8_lossy(&db_bytes).contains(&token[ADMIN_PREFIX.len()..]),
        "the admin token is stored in the database"
    );
    assert!(
        !String::from_utf8_lossy(&db_bytes).contains(pepper_text.trim()),
        "the pepper is stored in the database"
    );

    server.stop().await;
}

#[tokio::test]
async fn restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "first", port)
        .start(port)
        .await;
    let token = the_printed_token(&server.stderr());
    let account = server.create_account(&token, "Acme").await;
    let (active_id, active_key, _) = server.create_key(&token, &account, "active").await;
    let (revoked_id, revoked_key, _) = server.create_key(&token, &account, "revoked").await;
    let revoked = server
        .post(
            &token,
            &format!("/v1/api-keys/{revoked_id}/revoke"),
            json!({}),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(revoked.body["status"], "revoked");
    assert_eq!(server.forward_auth(&active_key).await.status, 204);
    server.stop().await;

    let port = free_port();
    let server = Launch::listening(dir.path(), "second", port)
        .start(port)
        .await;
    let stderr = server.stderr();
    assert!(
        admin_tokens(&stderr).is_empty(),
        "a restart prints no admin token; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains(&token),
        "the first token is never printed again"
    );

    let ok = server.forward_auth(&active_key).await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.body);
    assert_eq!(
        ok.headers
            .get("x-keygate-key-id")
            .and_then(|v| v.to_str().ok()),
        Some(active_id.as_str())
    );
    let refused = server.forward_auth(&revoked_key).await;
    assert_json_error(&refused, StatusCode::UNAUTHORIZED, "invalid_key");

    let accounts = server.get(&token, "/v1/accounts").await;
    assert_eq!(
        accounts.status,
        StatusCode::OK,
        "the same admin token still works: {}",
        accounts.body
    );
    let ids: Vec<&str> = accounts.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, [account.as_str()]);

    let keys = server
        .get(&token, &format!("/v1/api-keys?account_id={account}"))
        .await;
    assert_eq!(keys.status, StatusCode::OK, "{}", keys.body);
    let mut listed: Vec<(String, String)> = keys.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap_or_default().to_owned(),
                k["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    listed.sort();
    let mut expected = vec![
        (active_id.clone(), "active".to_owned()),
        (revoked_id.clone(), "revoked".to_owned()),
    ];
    expected.sort();
    assert_eq!(listed, expected);
    let text = keys.body.to_string();
    assert!(!text.contains(&active_key) && !text.contains(&revoked_key));

    server.stop().await;
}

/// The token signing key is made at the first start, stored sealed, and kept: after a
/// restart the JWKS names the same key and a token issued before still passes.
#[tokio::test]
async fn restart_keeps_the_token_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "first", port)
        .start(port)
        .await;
    let token = the_printed_token(&server.stderr());
    let jwks_before = server
        .send(server.http.get(server.url("/.well-known/jwks.json")))
        .await;
    assert_eq!(jwks_before.status, StatusCode::OK, "{}", jwks_before.body);
    let kids = |jwks: &Answer| -> Vec<String> {
        jwks.body["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(kids(&jwks_before).len(), 1, "{}", jwks_before.body);
    let account = server.create_account(&token, "Acme").await;
    let (_, key, _) = server.create_key(&token, &account, "tokens").await;
    let issued = server
        .post(&key, "/v1/tokens", json!({"ttl_seconds": 600}))
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
    let short_lived = issued.body["token"].as_str().expect("token").to_owned();
    server.stop().await;

    let port = free_port();
    let server = Launch::listening(dir.path(), "second", port)
        .start(port)
        .await;
    let jwks_after = server
        .send(server.http.get(server.url("/.well-known/jwks.json")))
        .await;
    assert_eq!(kids(&jwks_after), kids(&jwks_before));
    assert_eq!(
        server.forward_auth(&short_lived).await.status,
        StatusCode::NO_CONTENT
    );
    let stderr = server.stderr();
    assert!(!stderr.contains(&short_lived), "a token was logged");
    server.stop().await;
}

#[tokio::test]
async fn sigterm_flushes_usage() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "first", port)
        .env("KEYGATE_USAGE_FLUSH_SECONDS", "3600")
        .start(port)
        .await;
    let token = the_printed_token(&server.stderr());
    let account = server.create_account(&token, "Acme").await;
    let (id, key, created) = server.create_key(&token, &account, "used once").await;
    assert!(
        created["last_used_at"].is_null(),
        "a new key was never used: {created}"
    );
    let before = chrono::Utc::now() - chrono::Duration::seconds(2);
    let used = server.forward_auth(&key).await;
    assert_eq!(used.status, StatusCode::NO_CONTENT, "{}", used.body);
    server.stop().await;

    let port = free_port();
    let server = Launch::listening(dir.path(), "second", port)
        .env("KEYGATE_USAGE_FLUSH_SECONDS", "3600")
        .start(port)
        .await;
    let record = server.get(&token, &format!("/v1/api-keys/{id}")).await;
    assert_eq!(record.status, StatusCode::OK, "{}", record.body);
    let last_used = record.body["last_used_at"]
        .as_str()
        .unwrap_or_else(|| panic!("the shutdown flush wrote last_used_at: {}", record.body));
    let last_used = chrono::DateTime::parse_from_rfc3339(last_used)
        .unwrap_or_else(|e| panic!("last_used_at {last_used:?} is not RFC 3339: {e}"));
    let after = chrono::Utc::now() + chrono::Duration::seconds(2);
    assert!(
        before <= last_used && last_used <= after,
        "last_used_at {last_used} is the time of the use"
    );
    server.stop().await;
}

#[tokio::test]
async fn wrong_pepper_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "first", port)
        .start(port)
        .await;
    let token = the_printed_token(&server.stderr());
    let account = server.create_account(&token, "Acme").await;
    let (_, key, _) = server.create_key(&token, &account, "k").await;
    server.stop().await;

    let pepper = dir.path().join("keygate.pepper");
    let original = std::fs::read(&pepper).unwrap();
    let other = random_hex(32);
    assert_ne!(other.as_bytes(), original.trim_ascii());
    std::fs::write(&pepper, &other).unwrap();
    assert_eq!(file_mode(&pepper), 0o600);

    let port = free_port();
    let (status, stderr) = Launch::listening(dir.path(), "wrong-pepper", port)
        .run_to_exit()
        .await;
    assert!(
        !status.success(),
        "keygate started with the wrong pepper; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("pepper is not the one"),
        "stderr says the pepper is not the one the keys were made with:\n{stderr}"
    );
    assert_no_panic(&stderr);
    assert!(
        !stderr.contains(&other),
        "the pepper is not printed:\n{stderr}"
    );
    assert!(
        admin_tokens(&stderr).is_empty(),
        "no token printed:\n{stderr}"
    );

    // The original pepper back: everything works again.
    std::fs::write(&pepper, &original).unwrap();
    let server = Launch::listening(dir.path(), "restored", port)
        .start(port)
        .await;
    assert_eq!(server.forward_auth(&key).await.status, 204);
    assert_eq!(server.get(&token, "/v1/accounts").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn configuration_layers() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (free_port(), free_port(), free_port());
    assert!(a != b && b != c && a != c);
    std::fs::write(
        dir.path().join("keygate.toml"),
        format!("key_prefix = \"oim\"\nenv_in_key = false\nlisten = \"127.0.0.1:{a}\"\n"),
    )
    .unwrap();
    let admin = format!("operator-token-{}", random_hex(16));

    // The file alone: listens on A, makes oim_ keys.
    let server = Launch::new(dir.path(), "file")
        .env("KEYGATE_ADMIN_TOKEN", admin.clone())
        .start(a)
        .await;
    let stderr = server.stderr();
    assert!(
        admin_tokens(&stderr).is_empty() && !stderr.contains("admin token"),
        "a configured admin token means nothing is printed:\n{stderr}"
    );
    assert!(
        !stderr.contains(&admin),
        "the configured token is not logged"
    );
    let account = server.create_account(&admin, "Acme").await;
    let (_, key, record) = server.create_key(&admin, &account, "oim key").await;
    let body = key.strip_prefix("oim_").unwrap_or_else(|| {
        panic!("with key_prefix = oim and env_in_key = false keys start with oim_: {key}")
    });
    assert!(
        body.len() == 64 && is_lower_hex(body),
        "oim_ + 64 hex, got {key:?}"
    );
    let display = record["display_prefix"].as_str().expect("display_prefix");
    assert_eq!(display.len(), 12, "display prefix {display:?}");
    assert_eq!(display, &key[..12]);
    assert_eq!(server.forward_auth(&key).await.status, 204);
    server.stop().await;

    // Environment over the file: B, not A.
    let server = Launch::new(dir.path(), "env")
        .env("KEYGATE_ADMIN_TOKEN", admin.clone())
        .env("KEYGATE_LISTEN", listen_on(b))
        .start(b)
        .await;
    assert!(!is_listening(a), "the file's listen address is overridden");
    assert_eq!(server.get(&admin, "/v1/accounts").await.status, 200);
    server.stop().await;

    // Flags over both: C, not B (nor A).
    let server = Launch::new(dir.path(), "flag")
        .env("KEYGATE_ADMIN_TOKEN", admin.clone())
        .env("KEYGATE_LISTEN", listen_on(b))
        .arg("--listen")
        .arg(listen_on(c))
        .start(c)
        .await;
    assert!(
        !is_listening(b),
        "the environment's listen address is overridden"
    );
    assert!(!is_listening(a), "the file's listen address is overridden");
    let stderr = server.stderr();
    assert!(
        admin_tokens(&stderr).is_empty(),
        "nothing printed:\n{stderr}"
    );
    assert_eq!(server.get(&admin, "/v1/accounts").await.status, 200);
    assert_eq!(server.forward_auth(&key).await.status, 204);
    let wrong = server.get("operator-token-wrong-one", "/v1/accounts").await;
    assert_json_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    server.stop().await;
}

/// The dashboard's form to create a key in `account`, as the operator signed in with
/// `token` sees it (HTML).
async fn dashboard_new_key_form(server: &Server, token: &str, account: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // `name=value` of the cookie `name` an answer sets: the sign-in form's CSRF cookie,
    // then the session's.
    let cookie_of = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("a {name} cookie"))
    };
    let page = http
        .get(server.url("/dashboard/sign-in"))
        .send()
        .await
        .unwrap();
    let cookie = cookie_of(&page, "keygate_sign_in");
    let html = page.text().await.unwrap();
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("a CSRF field") + marker.len();
    let csrf = html[start..].split('"').next().unwrap_or("").to_owned();
    let signed_in = http
        .post(server.url("/dashboard/sign-in"))
        .header("cookie", cookie)
        .form(&[("csrf", csrf.as_str()), ("credential", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER, "signed in");
    let form = http
        .get(server.url(&format!("/dashboard/accounts/{account}/keys/new")))
        .header("cookie", cookie_of(&signed_in, "keygate_session"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    form.text().await.unwrap()
}

#[tokio::test]
async fn the_permission_catalog_reaches_the_dashboard() {
    // Resources from the file, actions from the environment.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keygate.toml"),
        "[permissions]\nresources = [\"shipments\"]\n",
    )
    .unwrap();
    let admin = format!("operator-token-{}", random_hex(16));
    let port = free_port();
    let server = Launch::listening(dir.path(), "catalog", port)
        .env("KEYGATE_ADMIN_TOKEN", admin.clone())
        .env(
            "KEYGATE_PERMISSION_ACTIONS",
            "shipments.track, parcels.weigh",
        )
        .start(port)
        .await;
    let account = server.create_account(&admin, "Acme Shipping").await;
    let html = dashboard_new_key_form(&server, &admin, &account).await;
    for id in [
        "perm-shipments-read",
        "perm-shipments-track",
        "perm-parcels-weigh",
        "perm-api_keys-read",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} offered");
    }
    for resource in ["invoices", "clients", "quotations", "products", "webhooks"] {
        assert!(
            !html.contains(&format!("id=\"perm-{resource}-")),
            "{resource} offered"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_configuration_fails_clearly() {
    // An unknown field in keygate.toml.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keygate.toml"), "lisen = \"127.0.0.1:1\"\n").unwrap();
    let (status, stderr) = Launch::listening(dir.path(), "unknown-field", free_port())
        .run_to_exit()
        .await;
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(
        stderr.contains("lisen") && stderr.contains("unknown field"),
        "the error names the unknown field:\n{stderr}"
    );
    assert!(stderr.contains("keygate.toml"), "and the file:\n{stderr}");
    assert_no_panic(&stderr);

    // A boolean that is not one.
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = Launch::listening(dir.path(), "env-in-key", free_port())
        .env("KEYGATE_ENV_IN_KEY", "maybe")
        .run_to_exit()
        .await;
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(
        stderr.contains("KEYGATE_ENV_IN_KEY"),
        "the error names the variable:\n{stderr}"
    );
    assert_no_panic(&stderr);

    // A default plan that is not configured.
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = Launch::listening(dir.path(), "default-plan", free_port())
        .arg("--default-plan")
        .arg("gold")
        .run_to_exit()
        .await;
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(
        stderr.contains("\"gold\"") && stderr.contains("plan"),
        "the error names the plan:\n{stderr}"
    );
    assert_no_panic(&stderr);

    // A resource of the dashboard's permission catalog that is not a name.
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = Launch::listening(dir.path(), "permission-resources", free_port())
        .env("KEYGATE_PERMISSION_RESOURCES", "orders, sales orders")
        .run_to_exit()
        .await;
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(
        stderr.contains("permissions.resources") && stderr.contains("\"sales orders\""),
        "the error names the setting and the entry:\n{stderr}"
    );
    assert_no_panic(&stderr);
    assert!(
        !dir.path().join("keygate.db").exists(),
        "nothing is created before the configuration is checked"
    );
}

/// A start that fails on its configuration must not first create the database and the
/// pepper and spend the one-time admin token print: the operator fixes the flag, starts
/// again, and no token is shown (it went by above the error, or into a journal).
#[tokio::test]
async fn bad_configuration_has_no_side_effects() {
    // The listen address is taken (the most common first-start failure).
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (status, stderr) = Launch::listening(dir.path(), "port-taken", port)
        .run_to_exit()
        .await;
    drop(taken);
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(
        admin_tokens(&stderr).is_empty(),
        "a start that cannot listen prints no admin token:\n{stderr}"
    );

    // A default plan that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = Launch::listening(dir.path(), "default-plan", free_port())
        .arg("--default-plan")
        .arg("gold")
        .run_to_exit()
        .await;
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(
        admin_tokens(&stderr).is_empty(),
        "a start that fails prints no admin token:\n{stderr}"
    );
    assert!(
        !dir.path().join("keygate.pepper").exists(),
        "a start that fails creates no pepper"
    );
    assert!(
        !dir.path().join("keygate.db").exists(),
        "a start that fails creates no database"
    );

    // The corrected start is then a real first start: it prints the token.
    let port = free_port();
    let server = Launch::listening(dir.path(), "fixed", port)
        .start(port)
        .await;
    let token = the_printed_token(&server.stderr());
    assert_eq!(server.get(&token, "/v1/accounts").await.status, 200);
    server.stop().await;
}

/// Moving from the generated pepper file to configuration (`KEYGATE_PEPPER=$(cat
/// keygate.pepper)`, the obvious step for a container or a second node) must keep the
/// keys working (the file holds hex; so does `KEYGATE_PEPPER`).
#[tokio::test]
async fn pepper_file_contents_work_as_keygate_pepper() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "first", port)
        .start(port)
        .await;
    let token = the_printed_token(&server.stderr());
    let account = server.create_account(&token, "Acme").await;
    let (_, key, _) = server.create_key(&token, &account, "k").await;
    server.stop().await;

    let pepper = read_text(&dir.path().join("keygate.pepper"));
    std::fs::remove_file(dir.path().join("keygate.pepper")).unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "env-pepper", port)
        .env("KEYGATE_PEPPER", pepper.trim())
        .start(port)
        .await;
    assert_eq!(server.forward_auth(&key).await.status, 204);
    assert_eq!(server.get(&token, "/v1/accounts").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn no_secret_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "debug", port)
        .env("KEYGATE_LOG", "debug")
        .start(port)
        .await;
    let token = the_printed_token(&server.stderr());
    let account = server.create_account(&token, "Acme").await;
    let (id, key, _) = server.create_key(&token, &account, "secret").await;

    assert_eq!(server.forward_auth(&key).await.status, 204);

    // The key in the query of the forward-auth request itself…
    let in_url = server
        .send(
            server
                .http
                .get(server.url(&format!("/v1/auth?api_key={key}")))
                .header("X-Original-URI", "/api/v1/invoices/1"),
        )
        .await;
    assert_json_error(&in_url, StatusCode::BAD_REQUEST, "key_in_url");
    // …and in the query of the original request the proxy asks about.
    let in_original = server
        .send(server.http.get(server.url("/v1/auth")).header(
            "X-Original-URI",
            format!("/api/v1/invoices/1?api_key={key}"),
        ))
        .await;
    assert_json_error(&in_original, StatusCode::BAD_REQUEST, "key_in_url");
    // A key pasted into a path is not echoed either.
    let in_path = server.get(&token, &format!("/v1/api-keys/{key}")).await;
    assert!(!in_path.body.to_string().contains(&key), "{}", in_path.body);

    let revoked = server
        .post(&token, &format!("/v1/api-keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    let refused = server.forward_auth(&key).await;
    assert_json_error(&refused, StatusCode::UNAUTHORIZED, "invalid_key");

    let pepper = read_text(&dir.path().join("keygate.pepper"));
    let stderr = server.stop().await;
    // The log did record these requests (so the checks below look at a real log).
    let auth_lines = stderr
        .lines()
        .filter(|l| l.contains("/v1/auth") && l.contains("request"))
        .count();
    assert!(
        auth_lines >= 4,
        "the access log records the forward-auth calls:\n{stderr}"
    );
    let body = &key[key.len() - 64..];
    assert!(!stderr.contains(&key), "the key is in the log:\n{stderr}");
    assert!(
        !stderr.contains(body),
        "the key's body is in the log:\n{stderr}"
    );
    assert!(
        !stderr.contains(pepper.trim()),
        "the pepper is in the log:\n{stderr}"
    );
    assert_eq!(
        stderr.matches(token.as_str()).count(),
        1,
        "the admin token appears only in its one-time print:\n{stderr}"
    );
}

/// The access log is written apart from `tracing`'s formatter: in JSON mode every stderr line
/// must still be one JSON object, and the access lines carry the request's fields.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_access_lines_among_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "info", port)
        .env("KEYGATE_LOG_FORMAT", "json")
        .start(port)
        .await;
    let token = the_printed_token(&server.stderr());
    let account = server.create_account(&token, "Acme").await;
    let (_, key, _) = server.create_key(&token, &account, "json log").await;
    for _ in 0..3 {
        assert_eq!(server.forward_auth(&key).await.status, 204);
    }
    let stderr = server.stop().await;
    let mut access = Vec::new();
    for line in stderr.lines().filter(|l| l.starts_with('{')) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}\n{stderr}"));
        if value["fields"]["message"] == "request" {
            access.push(value);
        }
    }
    let auth: Vec<_> = access
        .iter()
        .filter(|v| v["fields"]["path"] == "/v1/auth")
        .collect();
    assert_eq!(
        auth.len(),
        3,
        "one access line per forward-auth call:\n{stderr}"
    );
    for line in auth {
        assert_eq!(line["fields"]["status"], 204);
        assert_eq!(line["fields"]["method"], "GET");
        assert!(line["fields"]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()));
        assert!(line["timestamp"].as_str().is_some());
    }
}

/// The access log redacts keys from paths, but only in their literal form: a client
/// that percent-encodes the underscore (`kg%5Flive_…`) gets its secret logged verbatim.
#[tokio::test]
async fn percent_encoded_key_in_path_is_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "encoded", port)
        .start(port)
        .await;
    let token = the_printed_token(&server.stderr());
    let account = server.create_account(&token, "Acme").await;
    let (_, key, _) = server.create_key(&token, &account, "secret").await;
    let encoded = key.replace('_', "%5F");
    let answer = server.get(&token, &format!("/v1/api-keys/{encoded}")).await;
    assert!(!answer.body.to_string().contains(&key[key.len() - 64..]));
    let stderr = server.stop().await;
    assert!(
        !stderr.contains(&key[key.len() - 64..]),
        "the key's body is in the log:\n{stderr}"
    );
}

/// Issue 16: a start that refuses must not leave a freshly generated `.pepper` file
/// behind: neither one that fails on its configuration (a too-short admin token is found
/// only after the pepper was settled before), nor one whose database was made with
/// another pepper (the lost-file case: a new file would hide the loss on the next start).
#[tokio::test]
async fn a_refused_start_leaves_no_new_pepper_file() {
    let dir = tempfile::tempdir().unwrap();
    let pepper = dir.path().join("keygate.pepper");
    let (status, stderr) = Launch::listening(dir.path(), "short-token", free_port())
        .env("KEYGATE_ADMIN_TOKEN", "short")
        .run_to_exit()
        .await;
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(stderr.contains("admin token"), "{stderr}");
    assert_no_panic(&stderr);
    assert!(
        !pepper.exists(),
        "a refused start created {}",
        pepper.display()
    );
    assert!(!dir.path().join("keygate.db").exists());

    let (status, stderr) = Launch::listening(dir.path(), "short-pepper", free_port())
        .env("KEYGATE_PEPPER", random_hex(16))
        .run_to_exit()
        .await;
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(stderr.contains("at least 64 hex"), "{stderr}");
    assert!(
        !pepper.exists(),
        "a refused start created {}",
        pepper.display()
    );

    // A database made with a pepper whose file is then lost.
    let port = free_port();
    let server = Launch::listening(dir.path(), "first", port)
        .start(port)
        .await;
    the_printed_token(&server.stderr());
    server.stop().await;
    std::fs::remove_file(&pepper).unwrap();
    let (status, stderr) = Launch::listening(dir.path(), "lost-pepper", free_port())
        .run_to_exit()
        .await;
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(stderr.contains("pepper is not the one"), "{stderr}");
    assert_no_panic(&stderr);
    assert!(
        !pepper.exists(),
        "a start refused for the wrong pepper left a new pepper file behind"
    );
}

/// `text` with every byte percent-escaped, then the escapes escaped `times - 1` more times
/// (`_` → `%5F` → `%255F` → `%25255F`).
fn percent_encode_times(text: &str, times: usize) -> String {
    let mut out: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
    for _ in 1..times {
        out = out.replace('%', "%25");
    }
    out
}

/// Issue 16: a key escaped once, twice or three times, in the path or in the query, is
/// redacted from the access log (decoded until stable) and refused in the query.
#[tokio::test]
async fn a_key_escaped_several_times_is_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Launch::listening(dir.path(), "escaped", port)
        .start(port)
        .await;
    let token = the_printed_token(&server.stderr());
    let account = server.create_account(&token, "Acme").await;
    let (_, key, _) = server.create_key(&token, &account, "secret").await;
    let body = &key[key.len() - 64..];
    for times in 1..=3 {
        let encoded = percent_encode_times(&key, times);
        let in_path = server.get(&token, &format!("/v1/api-keys/{encoded}")).await;
        assert!(!in_path.body.to_string().contains(body));
        let in_query = server
            .get(&token, &format!("/v1/api-keys/{encoded}?q={encoded}"))
            .await;
        assert_json_error(&in_query, StatusCode::BAD_REQUEST, "key_in_url");
    }
    let stderr = server.stop().await;
    // Not the key's body, nor any escaped form of a part of it.
    for times in 0..=3 {
        let part = if times == 0 {
            body[..24].to_owned()
        } else {
            percent_encode_times(&body[..12], times)
        };
        assert!(
            !stderr.contains(&part),
            "the key (escaped {times} times) is in the log:\n{stderr}"
        );
    }
}
