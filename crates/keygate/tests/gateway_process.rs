//! `keygate serve --upstream …` as an operator runs it: the real binary with its gateway
//! listener in front of the example upstream. Holds the process-level promises of the
//! gateway: configuration from flags and environment, checked before anything is created;
//! a 200 MB upload and a 200 MB download streamed with flat memory (the process's own peak
//! RSS, VmHWM); one SIGTERM stopping both listeners cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_keygate");
const ADMIN_TOKEN: &str = "kgadm_gateway_process_test_token_0123456789";
const STREAM_BYTES: u64 = 200 * 1024 * 1024;

use keygate_test_support::free_port;

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A kilobyte count from `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

struct Server {
    child: Child,
    dir: tempfile::TempDir,
}

impl Server {
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: tempfile::TempDir, args: &[String], env: &[(&str, String)]) -> Server {
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .current_dir(dir.path())
        .env_remove("KEYGATE_UPSTREAM")
        .env_remove("KEYGATE_SANDBOX_UPSTREAM")
        .env_remove("KEYGATE_GATEWAY_LISTEN")
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("KEYGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server {
        child: cmd.spawn().expect("spawn keygate"),
        dir,
    }
}

/// One request with a body of `len` bytes written in 64 KiB pieces (never held whole);
/// returns the status line and the body of the answer.
fn stream_upload(port: u16, path: &str, key: &str, len: u64) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'u'; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let body = rest.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status.trim().to_owned(), body)
}

/// Downloads `len` bytes, counting them without keeping them.
fn stream_download(port: u16, key: &str, len: u64) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "GET /api/v1/downloads/{len} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut content_length = None;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse::<u64>().ok();
        }
    }
    assert_eq!(content_length, Some(len), "the length is passed on");
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

fn wait_for(ports: &[u16], server: &mut Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ports.iter().all(|p| listening(*p)) {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("keygate exited ({status}):\n{}", server.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "keygate did not listen:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_streams_with_flat_memory_and_stops_on_sigterm() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = upstream.local_addr().unwrap().port();
    tokio::spawn(invoices_api::serve(upstream, "live"));

    let dir = tempfile::tempdir().unwrap();
    let (admin_port, gw_port) = (free_port(), free_port());
    let mut server = spawn(
        dir,
        &[
            "--listen".into(),
            format!("127.0.0.1:{admin_port}"),
            "--database-url".into(),
            "sqlite://keygate.db".into(),
            "--upstream".into(),
            format!("http://127.0.0.1:{up_port}"),
        ],
        &[("KEYGATE_GATEWAY_LISTEN", format!("127.0.0.1:{gw_port}"))],
    );
    wait_for(&[admin_port, gw_port], &mut server);
    let pid = server.child.id();

    let http = reqwest::Client::new();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let account: Value = http
        .post(format!("{admin}/v1/accounts"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "Acme", "plan": "unlimited"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let created: Value = http
        .post(format!("{admin}/v1/api-keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"account_id": account["id"], "name": "streams", "scope": "all"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();

    let gw = format!("http://127.0.0.1:{gw_port}");
    let r = http
        .get(format!("{gw}/api/v1/invoices"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "live");
    let r = http
        .get(format!("{gw}/api/v1/invoices"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let before = status_kib(pid, "VmRSS");
    let (status, body) = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            stream_upload(gw_port, "/api/v1/uploads", &key, STREAM_BYTES)
        })
        .await
        .unwrap()
    };
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {body}");
    let counted: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(counted["bytes"], STREAM_BYTES);
    let after_upload = status_kib(pid, "VmHWM");
    let downloaded = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || stream_download(gw_port, &key, STREAM_BYTES))
            .await
            .unwrap()
    };
    assert_eq!(downloaded, STREAM_BYTES);
    let peak = status_kib(pid, "VmHWM");
    println!(
        "keygate gateway process: VmRSS before {} KiB; VmHWM after 200 MB up {} KiB; after 200 MB down {} KiB",
        before, after_upload, peak
    );
    assert!(
        peak < before + 64 * 1024,
        "peak RSS grew from {before} KiB to {peak} KiB while streaming 2 x 200 MB"
    );

    // One SIGTERM stops both listeners and the process exits cleanly.
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", server.stderr());
    assert!(!listening(gw_port) && !listening(admin_port));
    let log = server.stderr();
    assert!(log.contains("gateway listening"), "{log}");
    assert!(!log.contains(&key), "the key was logged");
    assert!(!log.contains(&key[8..]), "the key body was logged");
}

#[test]
fn a_bad_gateway_configuration_is_refused_before_anything_is_created() {
    let files = tempfile::tempdir().unwrap();
    let empty_ca = files.path().join("empty-ca.pem");
    std::fs::write(&empty_ca, "").unwrap();
    for (args, env) in [
        (
            vec!["--upstream".to_owned(), "ftp://api.example.com".to_owned()],
            vec![],
        ),
        // A CA file with no certificate in it: refused with a reason, not a panic.
        (
            vec![
                "--upstream".to_owned(),
                "https://api.example.com".to_owned(),
            ],
            vec![("KEYGATE_UPSTREAM_CA_FILE", empty_ca.display().to_string())],
        ),
        (
            vec![],
            vec![("KEYGATE_SANDBOX_UPSTREAM", "http://127.0.0.1:9".to_owned())],
        ),
        (
            vec!["--upstream".to_owned(), "not a url".to_owned()],
            vec![],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let mut all = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{}", free_port()),
            "--gateway-listen".to_owned(),
            format!("127.0.0.1:{}", free_port()),
        ];
        all.extend(args.clone());
        let env_refs: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut server = spawn(dir, &all, &env_refs);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = server.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{args:?} was not refused");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success(), "{args:?} {env:?} started");
        let log = server.stderr();
        assert!(
            log.contains("upstream") || log.contains("gateway"),
            "{args:?}: {log}"
        );
        assert!(!log.contains("panicked"), "{args:?}: {log}");
        if env.iter().any(|(k, _)| *k == "KEYGATE_UPSTREAM_CA_FILE") {
            assert!(log.contains("holds no certificate"), "{log}");
        }
        assert!(
            !Path::new(&path).join("keygate.db").exists(),
            "{args:?}: a database was created"
        );
    }
}
