//! Ten thousand concurrent idle connections against the real `keygate serve`, on the admin
//! port and then on the gateway port (`--upstream`, the same connection layer): the server
//! accepts them all, keeps answering new clients promptly while they sit there, and closes
//! them itself once they have sent no request for `first_request_timeout` (10 s by
//! default), returning to its idle file-descriptor count.
//!
//! The test raises its own soft file-descriptor limit to the hard one (with `prlimit`); the
//! server inherits it. Where the hard limit cannot hold 10 000 connections plus headroom,
//! the test uses the largest number that fits and says so.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");
const WANTED: usize = 10_000;
/// File descriptors the test process needs besides the connections.
const HEADROOM: usize = 300;

fn nofile_limits(pid: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use keygate_test_support::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_do_not_exhaust_the_server() {
    // Room for the connections: raise the soft limit to the hard one if needed.
    let me = std::process::id().to_string();
    let (soft, hard) = nofile_limits(&me);
    if soft < WANTED + HEADROOM && hard > soft {
        let _ = Command::new("prlimit")
            .args(["--pid", &me, &format!("--nofile={hard}:{hard}")])
            .status();
    }
    let (soft, hard) = nofile_limits(&me);
    let n = WANTED.min(soft.saturating_sub(HEADROOM));
    if n < WANTED {
        println!(
            "file descriptor limit {soft} (hard {hard}) holds only {n} connections besides headroom; testing {n}"
        );
    }
    assert!(
        n >= 1_000,
        "the fd limit ({soft}) leaves too few connections to test"
    );

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let gateway_port = free_port();
    // The gateway listener in front of the example upstream.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    tokio::spawn(invoices_api::serve(upstream, "live"));
    // Above the rest of a busy machine (as root; elsewhere `nice` warns and runs it as is),
    // so that a loaded CI box does not starve its accept loop.
    let mut command = Command::new("nice");
    command.args(["-n", "-10", BIN]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYGATE_") {
            command.env_remove(&name);
        }
    }
    let child = command
        .arg("serve")
        .current_dir(dir.path())
        .env("KEYGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "KEYGATE_GATEWAY_LISTEN",
            format!("127.0.0.1:{gateway_port}"),
        )
        .env(
            "KEYGATE_UPSTREAM",
            format!("http://127.0.0.1:{upstream_port}"),
        )
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("KEYGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _server = Server(child);
    let base = format!("http://127.0.0.1:{port}");
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let admin_up =
            matches!(http.get(format!("{base}/healthz")).send().await, Ok(r) if r.status() == 200);
        let gateway_up = http
            .get(format!("{gateway}/api/v1/invoices"))
            .send()
            .await
            .is_ok();
        if admin_up && gateway_up {
            break;
        }
        assert!(Instant::now() < deadline, "keygate did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The admin port: health and an admin call answer while the connections wait.
    let admin_probes = [
        (format!("{base}/healthz"), None, 200),
        (format!("{base}/v1/accounts"), Some(ADMIN_TOKEN), 200),
    ];
    idle_connections(&http, pid, port, n, &admin_probes).await;
    // The gateway port, on the same connection layer: its own refusal (no key) answers.
    let gateway_probes = [(format!("{gateway}/api/v1/invoices"), None, 401)];
    idle_connections(&http, pid, gateway_port, n, &gateway_probes).await;

    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

const ADMIN_TOKEN: &str = "connections-admin-token-0123456789";

/// Opens `n` idle connections to `port` of the server `pid`, checks that the server holds
/// them and still answers each probe (URL, bearer token, status) promptly, then
/// that it closes them itself (no request within `first_request_timeout`, 10 s) and
/// returns to its idle file-descriptor count.
async fn idle_connections(
    http: &reqwest::Client,
    pid: u32,
    port: u16,
    n: usize,
    probes: &[(String, Option<&str>, u16)],
) {
    let server_limit = nofile_limits(&pid.to_string()).0;
    let idle_fds = open_fds(pid);
    let idle_rss = rss_kib(pid);

    // Open them, 100 at a time, and send nothing.
    let started = Instant::now();
    let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
    while conns.len() < n {
        let batch = (n - conns.len()).min(100);
        let t = Instant::now();
        let opened = futures_join(batch, port).await;
        conns.extend(opened);
        // Let the server accept them before the next batch: a full listen queue drops
        // SYNs, and each drop costs a second of retransmission.
        let accepted_by = Instant::now() + Duration::from_secs(2);
        while open_fds(pid) < idle_fds + conns.len() * 98 / 100 && Instant::now() < accepted_by {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if std::env::var("CONNECTIONS_TEST_VERBOSE").is_ok() {
            println!(
                "batch of {batch} in {:?}; server fds {}",
                t.elapsed(),
                open_fds(pid)
            );
        }
    }
    let opened_in = started.elapsed();
    // The server has accepted them (each is a file descriptor there).
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) < idle_fds + n * 95 / 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held_fds = open_fds(pid);
    let held_rss = rss_kib(pid);

    // New clients are still served, promptly.
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        for probe in probes {
            let t = Instant::now();
            send_probe(http, probe).await;
            worst = worst.max(t.elapsed());
        }
    }
    println!(
        "port {port}: {n} idle connections opened in {opened_in:?}; server fds {idle_fds} -> {held_fds} (limit {server_limit}), RSS {idle_rss} KiB -> {held_rss} KiB; probes while they wait: worst of {} {worst:?}",
        20 * probes.len()
    );
    assert!(
        held_fds >= idle_fds + n * 95 / 100,
        "the server holds {held_fds} fds for {n} connections"
    );
    assert!(worst < Duration::from_secs(1), "served slowly: {worst:?}");

    // The server closes them itself (no request within first_request_timeout, 10 s).
    let wait_from = Instant::now();
    let mut closed = 0;
    for mut c in conns {
        let left = Duration::from_secs(25).saturating_sub(wait_from.elapsed());
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(left, c.read(&mut buf)).await {
            closed += 1;
        }
    }
    let closed_in = wait_from.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) > idle_fds + 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_fds = open_fds(pid);
    println!(
        "port {port}: the server closed {closed} of {n} idle connections within {closed_in:?}; server fds back to {after_fds}"
    );
    assert_eq!(closed, n, "idle connections left open on port {port}");
    assert!(after_fds <= idle_fds + 50, "fds not released: {after_fds}");
    for probe in probes {
        send_probe(http, probe).await;
    }
}

async fn send_probe(http: &reqwest::Client, (url, token, status): &(String, Option<&str>, u16)) {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status().as_u16(), *status, "{url}");
}

/// Opens `k` connections concurrently.
async fn futures_join(k: usize, port: u16) -> Vec<TcpStream> {
    let tasks: Vec<_> = (0..k)
        .map(|_| {
            tokio::spawn(async move {
                for attempt in 0..50 {
                    match TcpStream::connect(("127.0.0.1", port)).await {
                        Ok(s) => return s,
                        Err(e) if attempt < 49 => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("connect: {e}"),
                    }
                }
                unreachable!()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(k);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
