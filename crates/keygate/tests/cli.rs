//! The CLI's management verbs against a real `keygate serve`, each test with its own server,
//! database and admin token. The CLI runs as a subprocess, exactly as an operator runs it.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// `n` random hex characters (std's randomly seeded hasher, the time and the pid).
fn random_hex(n: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut out = String::new();
    let mut i = 0u64;
    while out.len() < n {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(i);
        out.push_str(&format!("{:016x}", h.finish()));
        i += 1;
    }
    out.truncate(n);
    out
}

/// A port nothing listens on (bound, read, released).
use keygate_test_support::free_port;

fn get_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// What one CLI run produced.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// The value of a `field: value` line.
    fn field(&self, name: &str) -> String {
        let label = format!("{name}:");
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(&label))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name:?} line: {self:#?}"))
    }

    /// The one-time secret of a human `keys create` / `keys rotate` output.
    fn secret(&self) -> String {
        let secret = self.field("API key secret");
        assert!(is_live_key(&secret), "not a live key: {secret:?}");
        assert_eq!(
            self.stdout.matches(&secret).count(),
            1,
            "secret printed once: {self:#?}"
        );
        assert!(self.stdout.contains("will not be shown again"), "{self:#?}");
        secret
    }

    #[track_caller]
    fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "exit code: {self:#?}");
        self
    }
}

fn is_live_key(s: &str) -> bool {
    s.strip_prefix("kg_live_").is_some_and(|body| {
        body.len() == 64 && body.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    })
}

/// Runs the CLI with the given connection; no output may ever contain the admin token.
fn cli(url: &str, token: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYGATE_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(args)
        .env("KEYGATE_URL", url)
        .env("KEYGATE_ADMIN_TOKEN", token)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the keygate CLI");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let output = child.wait_with_output().expect("wait for the keygate CLI");
    let run = Run {
        code: output
            .status
            .code()
            .expect("the CLI exited (not killed by a signal)"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(token) && !run.stderr.contains(token),
        "the admin token was printed: {run:#?}"
    );
    run
}

/// A `keygate serve` child with its own database; killed on drop.
struct Server {
    child: Child,
    url: String,
    token: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let token = random_hex(40);
        let log = File::create(dir.path().join("server.log")).expect("server log");
        let mut command = Command::new(BIN);
        for (name, _) in std::env::vars() {
            if name.starts_with("KEYGATE_") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("serve")
            .current_dir(dir.path())
            .env("KEYGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "KEYGATE_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("k.db").display()),
            )
            .env("KEYGATE_ADMIN_TOKEN", &token)
            .env("KEYGATE_PEPPER", random_hex(64))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start keygate serve");
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            token,
            dir,
        };
        server.wait_healthy(port);
        server
    }

    fn wait_healthy(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("keygate serve exited with {status}:\n{}", self.log());
            }
            if get_status(port, "/healthz") == Some(200) {
                return;
            }
            if Instant::now() > deadline {
                panic!("keygate serve not healthy within 20 s:\n{}", self.log());
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn run(&self, args: &[&str]) -> Run {
        cli(&self.url, &self.token, args, None)
    }

    fn verify(&self, key: &str, args: &[&str]) -> Run {
        let mut all = vec!["keys", "verify"];
        all.extend_from_slice(args);
        cli(&self.url, &self.token, &all, Some(&format!("{key}\n")))
    }

    /// A new account on a plan roomy enough for the test; returns its id.
    fn account(&self, name: &str) -> String {
        let run = self.run(&[
            "accounts", "create", "--name", name, "--plan", "pro", "--json",
        ]);
        run.assert_code(0);
        run.json()["id"].as_str().expect("account id").to_owned()
    }

    /// A new live key (human output); returns (id, secret).
    fn key(&self, account: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec!["keys", "create", "--account", account, "--name", "test key"];
        args.extend_from_slice(extra);
        let run = self.run(&args);
        run.assert_code(0);
        (run.field("id"), run.secret())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn accounts_create_and_list_in_human_and_json_form() {
    let server = Server::start();

    let human = server.run(&[
        "accounts",
        "create",
        "--name",
        "Acme Invoicing",
        "--plan",
        "pro",
    ]);
    human.assert_code(0);
    let acme = human.field("id");
    assert!(acme.starts_with("acct_"), "{human:#?}");
    assert_eq!(human.field("name"), "Acme Invoicing");
    assert_eq!(human.field("plan"), "pro");

    let json = server.run(&["accounts", "create", "--name", "Globex", "--json"]);
    json.assert_code(0);
    let globex = json.json();
    assert_eq!(globex["name"], "Globex");
    let globex_id = globex["id"].as_str().expect("id").to_owned();
    assert!(globex["created_at"].is_string(), "{globex}");

    let list = server.run(&["accounts", "list"]);
    list.assert_code(0);
    let mut lines = list.stdout.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "PLAN", "CREATED"]);
    let acme_row = lines.find(|l| l.starts_with(&acme)).expect("acme row");
    assert!(
        acme_row.contains("Acme Invoicing") && acme_row.contains("pro"),
        "{acme_row}"
    );
    assert!(list.stdout.contains(&globex_id), "{list:#?}");

    let list = server.run(&["accounts", "list", "--json"]);
    list.assert_code(0);
    let ids: Vec<Value> = list.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert!(ids.contains(&Value::from(acme)) && ids.contains(&Value::from(globex_id)));
}

#[test]
fn created_key_is_shown_once_listed_by_prefix_and_verified_from_stdin() {
    let server = Server::start();
    let account = server.account("Acme");
    let (id, secret) = server.key(&account, &["--permission", "invoices.read"]);
    assert!(id.starts_with("key_"), "{id}");

    let get = server.run(&["keys", "get", &id, "--json"]);
    get.assert_code(0);
    let record = get.json();
    assert!(!get.stdout.contains(&secret), "get never shows the secret");
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["status"], "active");
    let prefix = record["display_prefix"]
        .as_str()
        .expect("display_prefix")
        .to_owned();
    assert!(secret.starts_with(&prefix), "{prefix} / {secret}");

    let get = server.run(&["keys", "get", &id]);
    get.assert_code(0);
    assert_eq!(get.field("display_prefix"), prefix);
    assert_eq!(get.field("status"), "active");
    // The server may store the resource in its normalised (singular) form.
    let permissions = get.field("permissions");
    assert!(
        ["invoices.read", "invoice.read"].contains(&permissions.as_str()),
        "{permissions}"
    );
    assert!(!get.stdout.contains(&secret));

    for args in [
        vec!["keys", "list"],
        vec!["keys", "list", "--account", &account, "--status", "active"],
        vec!["keys", "list", "--json"],
    ] {
        let list = server.run(&args);
        list.assert_code(0);
        assert!(list.stdout.contains(&prefix), "{list:#?}");
        assert!(
            !list.stdout.contains(&secret),
            "a list showed the secret: {list:#?}"
        );
    }
    let list = server.run(&["keys", "list", "--account", &account]);
    let header: Vec<&str> = list
        .stdout
        .lines()
        .next()
        .expect("header")
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "ID",
            "NAME",
            "PREFIX",
            "ENV",
            "STATUS",
            "PERMISSIONS",
            "CREATED",
            "LAST USED",
            "EXPIRES"
        ]
    );
    let revoked = server.run(&[
        "keys",
        "list",
        "--account",
        &account,
        "--status",
        "revoked",
        "--json",
    ]);
    assert_eq!(revoked.assert_code(0).json()["data"], Value::Array(vec![]));

    let ok = server.verify(&secret, &["--permission", "invoices.read"]);
    ok.assert_code(0);
    assert_eq!(ok.field("valid"), "true");
    assert_eq!(ok.field("key_id"), id);
    assert!(!ok.stdout.contains(&secret), "verify never echoes the key");

    let ok = server.verify(
        &secret,
        &["--method", "get", "--path", "/api/v1/invoices/42", "--json"],
    );
    ok.assert_code(0);
    assert_eq!(ok.json()["valid"], true);

    let refused = server.verify(&secret, &["--permission", "invoices.delete"]);
    refused.assert_code(1);
    assert!(
        refused.stdout.contains("insufficient_permissions"),
        "{refused:#?}"
    );

    let garbage = server.verify("kg_live_nonsense", &[]);
    garbage.assert_code(1);
    assert!(garbage.stdout.contains("malformed_key"), "{garbage:#?}");
}

#[test]
fn create_sends_every_option() {
    let server = Server::start();
    let account = server.account("Acme");
    let run = server.run(&[
        "keys",
        "create",
        "--account",
        &account,
        "--name",
        "ci",
        "--env",
        "test",
        "--scope",
        "read",
        "--ip",
        "10.0.0.0/8",
        "--ip",
        "192.0.2.1",
        "--expires-in",
        "3600",
        "--rate-limit",
        "100/60",
        "--quota",
        "1000",
        "--meta",
        "team=billing",
        "--json",
    ]);
    run.assert_code(0);
    let key = run.json();
    let secret = key["key"]
        .as_str()
        .expect("the JSON answer carries the secret");
    assert!(secret.starts_with("kg_test_"), "{secret}");
    assert_eq!(key["environment"], "test");
    assert_eq!(
        key["ip_allowlist"].as_array().map(Vec::len),
        Some(2),
        "{key}"
    );
    assert!(key["expires_at"].is_string(), "{key}");
    assert_eq!(key["rate_limit"]["requests"], 100, "{key}");
    assert_eq!(key["rate_limit"]["per_seconds"], 60, "{key}");
    assert_eq!(key["quota"]["requests"], 1000, "{key}");
    assert_eq!(key["meta"]["team"], "billing", "{key}");
    assert!(
        key["permissions"].as_array().is_some_and(|p| !p.is_empty()),
        "{key}"
    );

    let expiring = server.run(&[
        "keys",
        "create",
        "--account",
        &account,
        "--name",
        "dated",
        "--expires-at",
        "2099-01-31T00:00:00+01:00",
        "--json",
    ]);
    let expires = expiring.assert_code(0).json()["expires_at"]
        .as_str()
        .expect("expires_at")
        .to_owned();
    assert!(expires.starts_with("2099-01-30T23:00:00"), "{expires}");

    let outside = server.verify(secret, &["--ip", "203.0.113.9"]);
    outside.assert_code(1);
    assert!(outside.stdout.contains("ip_not_allowed"), "{outside:#?}");
}

#[test]
fn revoked_key_is_refused_as_invalid() {
    let server = Server::start();
    let account = server.account("Acme");
    let (id, secret) = server.key(&account, &["--scope", "all"]);
    server.verify(&secret, &[]).assert_code(0);

    let revoke = server.run(&["keys", "revoke", &id]);
    revoke.assert_code(0);
    assert_eq!(revoke.field("status"), "revoked");
    assert_ne!(revoke.field("revoked_at"), "-");

    let refused = server.verify(&secret, &[]);
    refused.assert_code(1);
    assert!(refused.stdout.contains("invalid_key"), "{refused:#?}");

    let list = server.run(&["keys", "list", "--status", "revoked", "--account", &account]);
    list.assert_code(0);
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{list:#?}"
    );
}

#[test]
fn rotation_prints_a_new_secret_and_retires_the_old_one() {
    let server = Server::start();
    let account = server.account("Acme");
    let (id, old) = server.key(&account, &["--scope", "read"]);

    let rotate = server.run(&["keys", "rotate", &id]);
    rotate.assert_code(0);
    let new = rotate.secret();
    assert_ne!(new, old);
    assert!(!rotate.stdout.contains(&old), "{rotate:#?}");
    assert!(
        rotate.stdout.contains(&format!("previous key: {id}")),
        "{rotate:#?}"
    );
    let new_id = rotate.field("id");
    assert_ne!(new_id, id);

    let refused = server.verify(&old, &[]);
    refused.assert_code(1);
    assert!(refused.stdout.contains("invalid_key"), "{refused:#?}");
    let ok = server.verify(&new, &[]);
    ok.assert_code(0);
    assert_eq!(ok.field("key_id"), new_id);

    // With a grace period the old key keeps working for now.
    // And it may be retired earlier, once idle after the newest key's first use.
    let graceful = server.run(&[
        "keys",
        "rotate",
        &new_id,
        "--grace-period",
        "600",
        "--retire-when-idle",
        "300",
        "--json",
    ]);
    graceful.assert_code(0);
    let answer = graceful.json();
    assert!(answer["key"].as_str().is_some_and(is_live_key), "{answer}");
    assert_eq!(answer["previous"]["id"], new_id.as_str());
    assert_eq!(answer["previous"]["retire_when_idle_seconds"], 300);
    server.verify(&new, &[]).assert_code(0);
}

#[test]
fn server_errors_map_to_exit_codes() {
    let server = Server::start();

    let missing = server.run(&["keys", "get", "key_doesnotexist"]);
    missing.assert_code(3);
    assert!(missing.stderr.starts_with("error: "), "{missing:#?}");
    assert!(missing.stderr.contains("(not_found)"), "{missing:#?}");
    assert!(missing.stdout.is_empty());

    let wrong = cli(&server.url, &random_hex(40), &["accounts", "list"], None);
    wrong.assert_code(3);
    assert!(wrong.stderr.starts_with("error: "), "{wrong:#?}");

    let invalid = server.run(&[
        "keys",
        "create",
        "--account",
        "acct_nope",
        "--name",
        "x",
        "--permission",
        "not a permission!",
    ]);
    invalid.assert_code(3);
    assert!(invalid.stderr.starts_with("error: "), "{invalid:#?}");

    // Usage errors: clap's own, and no key on standard input.
    server
        .run(&[
            "keys",
            "create",
            "--account",
            "a",
            "--name",
            "n",
            "--rate-limit",
            "100",
        ])
        .assert_code(2);
    server.run(&["keys", "get", "../accounts"]).assert_code(2);
    let empty = cli(&server.url, &server.token, &["keys", "verify"], Some(""));
    empty.assert_code(2);
    assert!(empty.stderr.contains("standard input"), "{empty:#?}");
}

#[test]
fn unreachable_server_exits_4() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let token = random_hex(40);
    let run = cli(&url, &token, &["accounts", "list"], None);
    run.assert_code(4);
    assert!(run.stderr.starts_with("error: "), "{run:#?}");
    assert!(run.stderr.contains("(unreachable)"), "{run:#?}");
    let run = cli(
        &url,
        &token,
        &["keys", "verify"],
        Some("kg_live_whatever\n"),
    );
    run.assert_code(4);
}

/// The first column of a table's rows (the header left out).
fn first_column(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn json_ids(run: &Run) -> Vec<String> {
    run.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn keys_list_reads_one_page_or_all_of_them() {
    let server = Server::start();
    let account = server.account("Paged");
    let other = server.account("Other");
    let mut ids: Vec<String> = (0..7)
        .map(|i| {
            let env = if i % 3 == 0 { "test" } else { "live" };
            let run = server.run(&[
                "keys",
                "create",
                "--account",
                &account,
                "--name",
                "k",
                "--env",
                env,
                "--json",
            ]);
            run.assert_code(0);
            run.json()["id"].as_str().expect("id").to_owned()
        })
        .collect();
    server.key(&other, &[]);
    let renamed = server.run(&["keys", "update", &ids[4], "--name", "Billing export"]);
    renamed.assert_code(0);

    // The first page, and a note on stderr saying how to go on.
    let first = server.run(&["keys", "list", "--account", &account, "--limit", "3"]);
    first.assert_code(0);
    assert_eq!(first_column(&first), ids[..3].to_vec());
    assert!(first.stderr.contains("more keys follow"), "{first:#?}");
    assert!(
        first
            .stderr
            .contains(&format!("--starting-after {}", ids[2])),
        "{first:#?}"
    );
    let second = server.run(&[
        "keys",
        "list",
        "--account",
        &account,
        "--limit",
        "3",
        "--starting-after",
        &ids[2],
    ]);
    assert_eq!(first_column(&second), ids[3..6].to_vec());

    // --all follows every page; without it the server's default page holds all seven.
    let all = server.run(&[
        "keys",
        "list",
        "--account",
        &account,
        "--limit",
        "3",
        "--all",
    ]);
    all.assert_code(0);
    assert_eq!(first_column(&all), ids);
    assert!(all.stderr.is_empty(), "{all:#?}");
    let all_json = server.run(&[
        "keys",
        "list",
        "--account",
        &account,
        "--limit",
        "2",
        "--all",
        "--json",
    ]);
    assert_eq!(json_ids(&all_json), ids);
    let default = server.run(&["keys", "list", "--account", &account]);
    assert_eq!(first_column(&default), ids);
    assert!(default.stderr.is_empty(), "{default:#?}");
    let one_page_json = server.run(&[
        "keys",
        "list",
        "--account",
        &account,
        "--limit",
        "5",
        "--json",
    ]);
    assert_eq!(one_page_json.json()["has_more"], true);
    assert_eq!(one_page_json.json()["next_cursor"], ids[4].as_str());

    // Filters.
    let test_keys = server.run(&["keys", "list", "--account", &account, "--env", "test"]);
    let expected: Vec<String> = ids.iter().step_by(3).cloned().collect();
    assert_eq!(first_column(&test_keys), expected);
    let named = server.run(&["keys", "list", "--name", "BILLING"]);
    assert_eq!(first_column(&named), vec![ids[4].clone()]);
    server.run(&["keys", "revoke", &ids[0]]).assert_code(0);
    let revoked = server.run(&["keys", "list", "--status", "revoked", "--all"]);
    assert_eq!(first_column(&revoked), vec![ids.remove(0)]);

    // Bad paging arguments: usage errors before any request, or the server's 400.
    for bad in [
        ["--limit", "0"],
        ["--limit", "1001"],
        ["--starting-after", "a/b"],
    ] {
        let mut args = vec!["keys", "list"];
        args.extend_from_slice(&bad);
        server.run(&args).assert_code(2);
    }
    let unknown = server.run(&["keys", "list", "--starting-after", "key_nope"]);
    unknown.assert_code(3);
    assert!(unknown.stderr.contains("starting_after"), "{unknown:#?}");
}

#[test]
fn keys_update_sends_the_fields_given_and_clears_on_request() {
    let server = Server::start();
    let account = server.account("Update");
    let (id, _) = server.key(&account, &["--permission", "invoices.read"]);

    let updated = server.run(&[
        "keys",
        "update",
        &id,
        "--name",
        "renamed",
        "--permissions",
        "invoice.read,order.*",
        "--allowed-ips",
        "10.0.0.0/8",
        "--allowed-ips",
        "192.0.2.7",
        "--expires-at",
        "2031-01-31T00:00:00Z",
        "--rate-limit",
        "5/60",
        "--quota",
        "100",
    ]);
    updated.assert_code(0);
    assert_eq!(updated.field("name"), "renamed");
    let key = server.run(&["keys", "get", &id, "--json"]).json();
    assert_eq!(
        key["permissions"],
        serde_json::json!(["invoice.read", "order.*"])
    );
    assert_eq!(
        key["ip_allowlist"],
        serde_json::json!(["10.0.0.0/8", "192.0.2.7"])
    );
    assert_eq!(key["expires_at"], "2031-01-31T00:00:00.000Z");
    assert_eq!(
        key["rate_limit"],
        serde_json::json!({"requests": 5, "per_seconds": 60})
    );
    assert_eq!(key["quota"]["requests"], 100);

    let cleared = server.run(&[
        "keys",
        "update",
        &id,
        "--no-expiry",
        "--no-rate-limit",
        "--no-quota",
        "--any-ip",
        "--json",
    ]);
    cleared.assert_code(0);
    let key = cleared.json();
    assert_eq!(key["name"], "renamed", "untouched fields stay");
    assert_eq!(key["expires_at"], Value::Null);
    assert_eq!(key["rate_limit"], Value::Null);
    assert_eq!(key["quota"], Value::Null);
    assert_eq!(key["ip_allowlist"], serde_json::json!([]));

    server.run(&["keys", "update", &id]).assert_code(2);
    server
        .run(&[
            "keys",
            "update",
            &id,
            "--expires-at",
            "2031-01-31T00:00:00Z",
            "--no-expiry",
        ])
        .assert_code(2);
    let bad = server.run(&["keys", "update", &id, "--allowed-ips", "not-an-ip"]);
    bad.assert_code(3);
    assert!(bad.stderr.contains("validation_error"), "{bad:#?}");
    server
        .run(&["keys", "update", "key_doesnotexist", "--name", "x"])
        .assert_code(3);
}

#[test]
fn keys_usage_reports_a_keys_verifications() {
    let server = Server::start();
    let account = server.account("Usage");
    let (id, secret) = server.key(&account, &["--permission", "invoices.read"]);
    server
        .verify(&secret, &["--permission", "invoices.read"])
        .assert_code(0);
    server
        .verify(&secret, &["--permission", "orders.read"])
        .assert_code(1);

    let json = server.run(&["keys", "usage", &id, "--granularity", "day", "--json"]);
    json.assert_code(0);
    let report = json.json();
    assert_eq!(report["key_id"], id.as_str());
    assert_eq!(report["granularity"], "day");
    assert!(report["data"].is_array(), "{report}");

    let human = server.run(&["keys", "usage", &id]);
    human.assert_code(0);
    assert_eq!(human.field("key_id"), id);
    assert_eq!(human.field("granularity"), "hour");
    server
        .run(&["keys", "usage", &id, "--from", "yesterday"])
        .assert_code(2);
    server
        .run(&["keys", "usage", "key_doesnotexist"])
        .assert_code(3);
}

#[test]
fn keys_permission_usage_reports_the_narrowest_suggestion() {
    let server = Server::start();
    let account = server.account("Least");
    let (id, secret) = server.key(
        &account,
        &["--permission", "invoices.*", "--permission", "clients.read"],
    );
    for _ in 0..2 {
        server
            .verify(&secret, &["--permission", "invoices.read"])
            .assert_code(0);
    }
    server
        .verify(&secret, &["--permission", "clients.delete"])
        .assert_code(1);

    let json = server.run(&["keys", "permission-usage", &id, "--days", "7", "--json"]);
    json.assert_code(0);
    let report = json.json();
    assert_eq!(report["key_id"], id.as_str());
    assert_eq!(report["days"], 7);
    assert_eq!(report["used"][0]["permission"], "invoices.read", "{report}");
    assert_eq!(report["used"][0]["requests"], 2, "{report}");
    assert_eq!(report["unused_grants"], serde_json::json!(["clients.read"]));
    assert_eq!(report["suggested"], serde_json::json!(["invoices.read"]));

    let human = server.run(&["keys", "permission-usage", &id]);
    human.assert_code(0);
    assert_eq!(human.field("days"), "30");
    assert_eq!(human.field("granted"), "clients.read, invoices.*");
    assert_eq!(human.field("suggested"), "invoices.read");
    assert!(
        human
            .stdout
            .lines()
            .any(|l| l.starts_with("invoices.read") && l.contains(" 2 ")),
        "{human:#?}"
    );
    let bad = server.run(&["keys", "permission-usage", &id, "--days", "0"]);
    bad.assert_code(3);
    assert!(bad.stderr.contains("days"), "{bad:#?}");
    server
        .run(&["keys", "permission-usage", &id, "--days", "many"])
        .assert_code(2);
    server
        .run(&["keys", "permission-usage", "key_doesnotexist"])
        .assert_code(3);
}

#[test]
fn audit_list_filters_and_pages() {
    let server = Server::start();
    let account = server.account("Audited");
    let other = server.account("Elsewhere");
    let (id, _) = server.key(&account, &[]);
    server.key(&other, &[]);
    server.run(&["keys", "revoke", &id]).assert_code(0);

    let log = server.run(&["audit", "list", "--account", &account]);
    log.assert_code(0);
    let header: Vec<&str> = log
        .stdout
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["AT", "ACTION", "ACTOR", "ACCOUNT", "TARGET", "CLIENT", "IP"]
    );
    let actions: Vec<String> = log
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    assert_eq!(
        actions,
        ["key.revoke", "key.create", "account.create"],
        "{log:#?}"
    );
    assert!(!log.stdout.contains(&other), "{log:#?}");

    let of_key = server.run(&["audit", "list", "--target", &id, "--json"]);
    let events = of_key.json()["data"].as_array().expect("data").clone();
    assert_eq!(events.len(), 2);

    // One event a page: a note with --before, and --all reads them all.
    let first = server.run(&["audit", "list", "--account", &account, "--limit", "1"]);
    assert!(first.stderr.contains("more events follow"), "{first:#?}");
    assert!(first.stderr.contains("--before "), "{first:#?}");
    let all = server.run(&[
        "audit",
        "list",
        "--account",
        &account,
        "--limit",
        "1",
        "--all",
        "--json",
    ]);
    all.assert_code(0);
    let actions: Vec<Value> = all.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["action"].clone())
        .collect();
    assert_eq!(actions, ["key.revoke", "key.create", "account.create"]);
    let everything = server.run(&["audit", "list", "--all", "--limit", "2", "--json"]);
    assert_eq!(everything.json()["data"].as_array().expect("data").len(), 5);

    server
        .run(&["audit", "list", "--from", "last week"])
        .assert_code(2);
    server
        .run(&[
            "audit",
            "list",
            "--account",
            "acct_doesnotexist_but_well_formed",
        ])
        .assert_code(0);
}

#[test]
fn accounts_get_and_update() {
    let server = Server::start();
    let account = server.account("Acme");
    server.key(&account, &[]);

    let get = server.run(&["accounts", "get", &account]);
    get.assert_code(0);
    assert_eq!(get.field("name"), "Acme");
    assert_eq!(get.field("plan"), "pro");
    assert_eq!(get.field("active_keys"), "1");
    assert_eq!(get.field("max_keys"), "20");

    let renamed = server.run(&[
        "accounts", "update", &account, "--name", "Acme Ltd", "--plan", "basic",
    ]);
    renamed.assert_code(0);
    assert_eq!(renamed.field("name"), "Acme Ltd");
    assert_eq!(renamed.field("plan"), "basic");
    assert_eq!(renamed.field("max_keys"), "2");
    let json = server.run(&["accounts", "get", &account, "--json"]).json();
    assert_eq!(json["plan"], "basic");

    server.run(&["accounts", "update", &account]).assert_code(2);
    let bad = server.run(&["accounts", "update", &account, "--plan", "platinum"]);
    bad.assert_code(3);
    assert!(bad.stderr.contains("plan"), "{bad:#?}");
    server
        .run(&["accounts", "get", "acct_doesnotexist"])
        .assert_code(3);

    // The accounts list pages too.
    for name in ["B", "C"] {
        server.account(name);
    }
    let first = server.run(&["accounts", "list", "--limit", "2"]);
    assert_eq!(first_column(&first).len(), 2);
    assert!(first.stderr.contains("more accounts follow"), "{first:#?}");
    let all = server.run(&["accounts", "list", "--limit", "2", "--all", "--json"]);
    assert_eq!(json_ids(&all).len(), 3);
    assert_eq!(json_ids(&all)[0], account);
    let named = server.run(&["accounts", "list", "--name", "acme"]);
    assert_eq!(first_column(&named), vec![account]);
}
