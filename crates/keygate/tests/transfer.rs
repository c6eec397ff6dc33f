//! Moving an installation from SQLite to PostgreSQL with `keygate export` and `keygate
//! import`, as an operator would: the real binary, a server on SQLite with keys (one
//! revoked), an export, an import into a fresh PostgreSQL database, and a server on it with
//! the same pepper. Needs `KEYGATE_TEST_POSTGRES` (otherwise it says it skipped).

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_keygate");
const ADMIN: &str = "admin-token-of-the-transfer-test";

/// `keygate <args>` in `dir` with only the given `KEYGATE_*` variables.
fn keygate(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(dir);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYGATE_") {
            command.env_remove(&name);
        }
    }
    command.envs(env.iter().copied());
    command
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    keygate(dir, args, env).output().expect("run keygate")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A running `keygate serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use keygate_test_support::free_port;

impl Server {
    async fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut env = env.to_vec();
        env.push(("KEYGATE_LISTEN", &listen));
        env.push(("KEYGATE_USAGE_FLUSH_SECONDS", "1"));
        let log = File::create(dir.join(format!("serve-{port}.stderr"))).unwrap();
        let child = keygate(dir, &["serve"], &env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keygate serve");
        let mut server = Server {
            child,
            base: format!("http://{listen}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("keygate serve exited with {status}");
            }
            let health = server.http.get(format!("{}/healthz", server.base)).send();
            if matches!(health.await, Ok(r) if r.status() == StatusCode::OK) {
                return server;
            }
            assert!(Instant::now() < deadline, "keygate serve did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM (the server flushes usage), then waits for a clean exit.
    async fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "keygate serve exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "keygate serve did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// Forward-auth of `GET /api/v1/invoices`: the status.
    async fn auth(&self, key: &str) -> u16 {
        self.http
            .get(format!("{}/v1/auth", self.base))
            .bearer_auth(key)
            .header("X-Original-Method", "GET")
            .header("X-Original-URI", "/api/v1/invoices")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqlite_installation_moves_to_postgresql_without_reissuing_keys() {
    let Some(postgres) = keygate_test_support::postgres_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // An SQLite installation with its generated pepper file.
    let sqlite = Server::start(dir, &[("KEYGATE_ADMIN_TOKEN", ADMIN)]).await;
    let account = sqlite
        .admin(
            reqwest::Method::POST,
            "/v1/accounts",
            Some(json!({"name": "Acme Invoicing", "plan": "pro"})),
        )
        .await;
    let account_id = account["id"].as_str().unwrap().to_owned();
    let mut keys = Vec::new();
    for name in ["kept", "revoked", "renamed"] {
        let key = sqlite
            .admin(
                reqwest::Method::POST,
                "/v1/api-keys",
                Some(json!({"account_id": account_id, "name": name, "scope": "read"})),
            )
            .await;
        let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
        keys.push((id.to_owned(), secret.to_owned()));
    }
    let [(kept_id, kept), (revoked_id, revoked), (renamed_id, renamed)] = &keys[..] else {
        unreachable!()
    };
    let path = format!("/v1/api-keys/{revoked_id}/revoke");
    sqlite.admin(reqwest::Method::POST, &path, None).await;
    let path = format!("/v1/api-keys/{renamed_id}");
    let patch = json!({"name": "billing worker"});
    sqlite
        .admin(reqwest::Method::PATCH, &path, Some(patch))
        .await;
    assert_eq!(sqlite.auth(kept).await, 204);
    assert_eq!(sqlite.auth(revoked).await, 401);
    let audit_path = format!("/v1/audit-log?account_id={account_id}&limit=100");
    let audit = sqlite.admin(reqwest::Method::GET, &audit_path, None).await;
    let audit = audit["data"].as_array().unwrap().clone();
    assert_eq!(audit.len(), 6, "{audit:?}");
    sqlite.stop().await;

    // Export: JSON lines, a private file, no secrets.
    let export = run(dir, &["export", "--output", "keygate.jsonl"], &[]);
    assert!(export.status.success(), "{}", stderr(&export));
    assert!(
        stderr(&export).contains("keygate.pepper"),
        "{}",
        stderr(&export)
    );
    let file = dir.join("keygate.jsonl");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["format"], "keygate-export");
    assert_eq!(lines[0]["version"], 1);
    let of_type = |t: &str| lines.iter().filter(|l| l["type"] == t).count();
    assert_eq!(
        (of_type("account"), of_type("key"), of_type("audit")),
        (1, 3, 6)
    );
    assert_eq!(lines.last().unwrap()["type"], "end");
    let pepper = std::fs::read_to_string(dir.join("keygate.pepper")).unwrap();
    let pepper = pepper.trim();
    for secret in [kept.as_str(), revoked, renamed, ADMIN, pepper] {
        assert!(!text.contains(secret), "the export holds a secret");
    }
    // An existing file is not overwritten.
    let again = run(dir, &["export", "--output", "keygate.jsonl"], &[]);
    assert!(!again.status.success());

    // Import into a fresh PostgreSQL database: refused with another pepper (nothing
    // written), done with the right one, and a second run adds nothing.
    let url = keygate_test_support::fresh_postgres_database(&postgres).await;
    let other_pepper = "ab".repeat(32);
    let target = |pepper| {
        vec![
            ("KEYGATE_DATABASE_URL", url.as_str()),
            ("KEYGATE_PEPPER", pepper),
        ]
    };
    let wrong = run(dir, &["import", "keygate.jsonl"], &target(&other_pepper));
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("not the pepper"),
        "{}",
        stderr(&wrong)
    );
    let import = run(dir, &["import", "keygate.jsonl"], &target(pepper));
    assert!(import.status.success(), "{}", stderr(&import));
    assert!(
        stderr(&import).contains("3 of 3 keys"),
        "{}",
        stderr(&import)
    );
    let again = run(dir, &["import", "keygate.jsonl"], &target(pepper));
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("0 of 3 keys"), "{}", stderr(&again));

    // keygate on PostgreSQL with the same pepper: the same keys, the same answers.
    let mut env = target(pepper);
    env.push(("KEYGATE_ADMIN_TOKEN", ADMIN));
    let pg = Server::start(dir, &env).await;
    assert_eq!(pg.auth(kept).await, 204);
    assert_eq!(pg.auth(renamed).await, 204);
    assert_eq!(pg.auth(revoked).await, 401);
    let listed = pg
        .admin(
            reqwest::Method::GET,
            &format!("/v1/api-keys?account_id={account_id}"),
            None,
        )
        .await;
    let listed = listed["data"].as_array().unwrap();
    let by_id = |id: &str| listed.iter().find(|k| k["id"] == id).unwrap().clone();
    assert_eq!(by_id(revoked_id)["status"], "revoked");
    assert_eq!(by_id(renamed_id)["name"], "billing worker");
    assert!(
        by_id(kept_id)["last_used_at"].is_string(),
        "usage came along"
    );
    let moved = pg.admin(reqwest::Method::GET, &audit_path, None).await;
    let moved = moved["data"].as_array().unwrap();
    let strip = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .map(|e| json!([e["id"], e["action"], e["target_id"], e["at"]]))
            .collect()
    };
    assert_eq!(strip(moved), strip(&audit), "the audit log came along");
    // The pepper check came along too: another pepper is refused at start.
    drop(pg);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut env = target(&other_pepper);
    env.push(("KEYGATE_LISTEN", &listen));
    let mut refused = keygate(dir, &["serve"], &env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = refused.kill();
            panic!("keygate serve started with another pepper");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.wait_with_output().unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("pepper is not the one"),
        "{}",
        stderr(&refused)
    );
}

/// `php -r 'echo password_hash(KEY, PASSWORD_BCRYPT);'`, as the invoicing reference stores
/// keys; `None` (the test says it skipped) without php-cli.
fn php_password_hash(key: &str) -> Option<String> {
    let code = r#"echo password_hash($argv[1], PASSWORD_BCRYPT, ["cost" => 8]);"#;
    match Command::new("php").args(["-r", code, key]).output() {
        Ok(out) if out.status.success() => Some(String::from_utf8(out.stdout).unwrap()),
        Ok(out) => panic!("php failed: {out:?}"),
        Err(_) => {
            keygate_test_support::skip("php-cli not installed");
            None
        }
    }
}

/// `keygate import-keys` into a running server's SQLite database: the keys verify, the used
/// one is upgraded (the export shows no bcrypt hash for it, the other's still), a second run
/// imports nothing, a bad file writes nothing; then `keygate export` / `import` move both to
/// a fresh database where both verify, the one not yet upgraded by its bcrypt hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_legacy_keys_are_upgraded_on_first_use_and_move_with_an_export() {
    let used = format!("inv_{}", "3c".repeat(32));
    let unused = format!("inv_{}", "3d".repeat(32));
    let (Some(used_hash), Some(unused_hash)) =
        (php_password_hash(&used), php_password_hash(&unused))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let pepper = "5e".repeat(32);
    let env = [
        ("KEYGATE_ADMIN_TOKEN", ADMIN),
        ("KEYGATE_PEPPER", pepper.as_str()),
    ];
    let server = Server::start(dir, &env).await;
    let account = server
        .admin(
            reqwest::Method::POST,
            "/v1/accounts",
            Some(json!({"name": "Invoicing", "plan": "pro"})),
        )
        .await;
    let account_id = account["id"].as_str().unwrap();
    let file: String = [(&used, &used_hash), (&unused, &unused_hash)]
        .iter()
        .map(|(key, hash)| {
            json!({"account_id": account_id, "name": "imported", "hash": format!("bcrypt:{hash}"),
                   "lookup_prefix": &key[..8], "scope": "read"})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(dir.join("keys.jsonl"), &file).unwrap();
    std::fs::write(
        dir.join("bad.jsonl"),
        format!("{}\n{{\"name\":\"x\"}}\n", file.lines().next().unwrap()),
    )
    .unwrap();

    let bad = run(dir, &["import-keys", "bad.jsonl"], &env);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("line 2: account_id: account_id is required"),
        "{}",
        stderr(&bad)
    );
    let import = run(dir, &["import-keys", "keys.jsonl"], &env);
    assert!(import.status.success(), "{}", stderr(&import));
    assert!(
        stderr(&import).contains("imported 2 of 2 keys"),
        "{}",
        stderr(&import)
    );

    assert_eq!(server.auth(&used).await, 204);
    assert_eq!(server.auth(&format!("inv_{}", "3e".repeat(32))).await, 401);
    let again = run(dir, &["import-keys", "keys.jsonl"], &env);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("imported 0 of 2 keys"),
        "{}",
        stderr(&again)
    );

    let export = run(dir, &["export", "--output", "moved.jsonl"], &env);
    assert!(export.status.success(), "{}", stderr(&export));
    let text = std::fs::read_to_string(dir.join("moved.jsonl")).unwrap();
    assert!(
        !text.contains(&used_hash),
        "the used key's bcrypt hash is still exported"
    );
    assert!(
        text.contains(&unused_hash),
        "the unused key's bcrypt hash must move"
    );
    let states: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["type"] == "legacy_key")
        .collect();
    assert_eq!(states.len(), 2);
    assert_eq!(states.iter().filter(|s| s["hash"].is_null()).count(), 1);
    for secret in [&used, &unused] {
        assert!(!text.contains(secret.as_str()), "the export holds a key");
    }
    server.stop().await;

    let target = tempfile::tempdir().unwrap();
    let target_url = format!("sqlite://{}/moved.db", target.path().display());
    let target_env = [
        ("KEYGATE_ADMIN_TOKEN", ADMIN),
        ("KEYGATE_PEPPER", pepper.as_str()),
        ("KEYGATE_DATABASE_URL", target_url.as_str()),
    ];
    let moved = run(dir, &["import", "moved.jsonl"], &target_env);
    assert!(moved.status.success(), "{}", stderr(&moved));
    assert!(
        stderr(&moved).contains("2 of 2 legacy key states"),
        "{}",
        stderr(&moved)
    );
    let server = Server::start(dir, &target_env).await;
    assert_eq!(server.auth(&used).await, 204);
    assert_eq!(server.auth(&unused).await, 204);
    server.stop().await;
}
