//! The example as a process next to `keygate serve` on one SQLite file: a key the server
//! creates works at the example; one the server revokes is refused within 1 s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use keygate_test_support::free_port;

const EXAMPLE: &str = env!("CARGO_BIN_EXE_axum-embedded");

/// The `keygate` binary of this workspace, built if this test runs alone.
fn keygate_binary() -> PathBuf {
    let dir = Path::new(EXAMPLE).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "keygate", "--bin", "keygate"])
        .status()
        .expect("run cargo build -p keygate");
    assert!(status.success(), "cargo build -p keygate failed");
    dir.join("keygate")
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(program: &Path, args: &[&str], env: &[(&str, String)], log: &Path) -> Process {
    let mut command = Command::new(program);
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYGATE_") {
            command.env_remove(&name);
        }
    }
    Process(
        command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn"),
    )
}

async fn wait_until_up(http: &reqwest::Client, url: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(url).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{url} never answered: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn keys_issued_and_revoked_by_keygate_serve_hold_at_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/keygate.db", dir.path().display());
    let pepper = keygate_hex(32);
    let admin_token = format!("kgadm_{}", keygate_hex(24));
    let (server_port, example_port) = (free_port(), free_port());
    let server_log = dir.path().join("keygate.stderr");
    let _server = start(
        &keygate_binary(),
        &["serve"],
        &[
            ("KEYGATE_DATABASE_URL", database.clone()),
            ("KEYGATE_PEPPER", pepper.clone()),
            ("KEYGATE_ADMIN_TOKEN", admin_token.clone()),
            ("KEYGATE_LISTEN", format!("127.0.0.1:{server_port}")),
        ],
        &server_log,
    );
    let http = reqwest::Client::new();
    let server = format!("http://127.0.0.1:{server_port}");
    wait_until_up(&http, &format!("{server}/healthz"), &server_log).await;
    let example_log = dir.path().join("example.stderr");
    let _example = start(
        Path::new(EXAMPLE),
        &[],
        &[
            ("KEYGATE_DATABASE_URL", database),
            ("KEYGATE_PEPPER", pepper),
            ("LISTEN", format!("127.0.0.1:{example_port}")),
        ],
        &example_log,
    );
    let example = format!("http://127.0.0.1:{example_port}");
    wait_until_up(&http, &format!("{example}/whoami"), &example_log).await;

    let admin = |path: &str, body: Value| {
        http.post(format!("{server}{path}"))
            .bearer_auth(&admin_token)
            .json(&body)
            .send()
    };
    let account: Value = admin("/v1/accounts", json!({"name": "Example", "plan": "pro"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let account_id = account["id"].as_str().unwrap();
    let created: Value = admin(
        "/v1/api-keys",
        json!({"account_id": account_id, "name": "example", "scope": "read"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let (key_id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{example}{path}"))
            .bearer_auth(key)
            .send()
    };

    let list = call(reqwest::Method::GET, "/api/v1/invoices")
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    assert_eq!(
        list.json::<Value>().await.unwrap()["account_id"],
        account_id
    );
    let whoami: Value = call(reqwest::Method::GET, "/whoami")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["key_id"], key_id);
    let create = call(reqwest::Method::POST, "/api/v1/invoices")
        .await
        .unwrap();
    assert_eq!(create.status(), 403, "a read key may not create");
    let anonymous = http.get(format!("{example}/whoami")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));

    let revoked = admin(&format!("/v1/api-keys/{key_id}/revoke"), json!({}))
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let at = Instant::now();
    loop {
        let status = call(reqwest::Method::GET, "/api/v1/invoices")
            .await
            .unwrap()
            .status();
        if status == 401 {
            break;
        }
        assert!(
            at.elapsed() < Duration::from_secs(1),
            "still {status} after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("revocation heard by the example after {:?}", at.elapsed());
}

fn keygate_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
