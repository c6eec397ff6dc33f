//! A PostgreSQL outage under load. The test starts its own PostgreSQL cluster (initdb in a
//! temporary directory, its own port; as the `postgres` user when run as root) so that it can
//! stop and start it without disturbing other tests, runs keygate nodes on it, and stops the
//! database while verifications run:
//!
//! - keys in a node's cache keep verifying, until cache TTL + stale-if-error;
//! - keys not in the cache get 503 `store_unavailable`, never 401; management calls get 503;
//! - a key revoked before the outage stays refused throughout;
//! - once the database is back, the nodes recover by themselves (the pool reconnects, the
//!   change listener resyncs), with no restart.
//!
//! Runs when `KEYGATE_TEST_POSTGRES` is set (PostgreSQL tests enabled; otherwise it prints
//! that it skipped), with the server binaries from `KEYGATE_TEST_PG_BIN` or
//! `/usr/lib/postgresql/<newest>/bin`.

#[path = "api/helpers.rs"]
mod helpers;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helpers::{spawn_node, Node, Options, TestApp};
use keygate_core::Pepper;
use keygate_engine::AdminToken;
use keygate_store::postgres::PostgresStore;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A PostgreSQL cluster of this test's own; stopped (immediately) when dropped.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn bin_dir() -> PathBuf {
        if let Some(bin) = std::env::var_os("KEYGATE_TEST_PG_BIN") {
            return PathBuf::from(bin);
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        found.sort_by_key(|p| {
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
        });
        found.pop().expect(
            "PostgreSQL server binaries not found: set KEYGATE_TEST_PG_BIN (scripts/pg-throwaway)",
        )
    }

    /// Runs a PostgreSQL program through the shell (as `postgres` when we are root: the
    /// server refuses to run as root).
    fn sh(&self, program: &str, args: &str) -> (String, std::process::Output) {
        let command = format!("{} {args}", self.bin.join(program).display());
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false);
        let output = if is_root {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", &command])
                .output()
        } else {
            Command::new("/bin/sh").args(["-c", &command]).output()
        }
        .expect("run a PostgreSQL program");
        (command, output)
    }

    fn run(&self, program: &str, args: &str) {
        let (command, output) = self.sh(program, args);
        assert!(
            output.status.success(),
            "{command}: {}\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn init() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // The server runs as another user: let it into the directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            bin: Cluster::bin_dir(),
            dir,
            port,
        };
        let log = cluster.dir.path().join("initdb.log");
        cluster.run(
            "initdb",
            &format!(
                "-D {} -A trust -U postgres > {} 2>&1",
                cluster.data().display(),
                log.display()
            ),
        );
        cluster
    }

    fn start(&self) {
        self.run(
            "pg_ctl",
            &format!(
                "-D {} -w -o '-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off' -l {} start",
                self.data().display(),
                self.port,
                self.dir.path().display(),
                self.dir.path().join("server.log").display()
            ),
        );
    }

    /// `pg_ctl stop -m fast`: the server disconnects every session and shuts down.
    fn stop(&self) {
        self.run(
            "pg_ctl",
            &format!("-D {} -w -m fast stop", self.data().display()),
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let args = format!("-D {} -m immediate stop", self.data().display());
            let _ = self.sh("pg_ctl", &args);
        }
    }
}

/// Forward-auth of `GET /api/v1/invoices` on `node`: the status and the error code.
async fn auth(node: &TestApp, key: &str) -> (u16, String) {
    let a = node
        .forward_auth(Some(key), "GET", "/api/v1/invoices")
        .await;
    (a.status.as_u16(), a.code().to_owned())
}

/// One verification of the background load.
struct Sample {
    at: Instant,
    status: u16,
    took: Duration,
}

/// Phases of the test, by the instant each began.
struct Phases {
    outage: Instant,
    restart: Instant,
    recovered: Instant,
}

fn summarize(label: &str, samples: &[&Sample]) {
    let mut took: Vec<Duration> = samples.iter().map(|s| s.took).collect();
    took.sort();
    let p50 = took.get(took.len() / 2).copied().unwrap_or_default();
    let max = took.last().copied().unwrap_or_default();
    let mut statuses = std::collections::BTreeMap::new();
    for s in samples {
        *statuses.entry(s.status).or_insert(0) += 1;
    }
    eprintln!(
        "| {label} | {} | {statuses:?} | {:.1} ms | {:.1} ms |",
        samples.len(),
        p50.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_cached_keys_keep_working_others_get_503_and_nodes_recover() {
    if keygate_test_support::postgres_url().is_none() {
        return;
    }
    let cluster = Cluster::init();
    cluster.start();
    let url = cluster.url();
    PostgresStore::open(&url, true).await.unwrap();
    let (pepper, _) = Pepper::generate().unwrap();
    let (admin_token, _) = AdminToken::generate(&pepper).unwrap();
    let node = |cache_ttl: Duration, stale_if_error: Duration| {
        let (url, pepper, admin_token) = (url.clone(), pepper.clone(), admin_token.clone());
        async move {
            let store = PostgresStore::open(&url, false).await.unwrap();
            let node = Node {
                cache_ttl,
                stale_if_error,
                ..Node::new(Arc::new(store), pepper, admin_token)
            };
            spawn_node(node, Options::default(), tempfile::tempdir().unwrap()).await
        }
    };
    // A: the node under load. Its cache TTL is short so that the outage outlasts it and the
    // stale-if-error path is taken; it may serve stale copies for a minute.
    let a = node(Duration::from_secs(1), Duration::from_secs(60)).await;
    // B: a node with the default TTL, where changes are made and heard.
    let b = node(Duration::from_secs(60), Duration::from_secs(300)).await;
    // S: a node whose stale bound (1 s + 2 s) runs out during the outage.
    let s = node(Duration::from_secs(1), Duration::from_secs(2)).await;

    let acct = b.create_account("Acme Invoicing", "unlimited").await;
    let mut cached = Vec::new();
    for _ in 0..4 {
        cached.push(b.create_key(&acct, json!({"scope": "read"})).await.1);
    }
    let (_, uncached) = b.create_key(&acct, json!({"scope": "read"})).await;
    // Revoked before the outage: one A has seen since (cached as revoked), one A had cached
    // while valid and then heard revoked (dropped from its cache).
    let (seen_id, revoked_seen) = b.create_key(&acct, json!({"scope": "read"})).await;
    let (heard_id, revoked_heard) = b.create_key(&acct, json!({"scope": "read"})).await;
    for key in cached.iter().chain([&revoked_heard]) {
        assert_eq!(auth(&a, key).await.0, 204);
    }
    for id in [&seen_id, &heard_id] {
        let r = b
            .admin(Method::POST, &format!("/v1/api-keys/{id}/revoke"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // Once A has heard of both, it reads one again (and caches it as revoked).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(auth(&a, &revoked_seen).await.0, 401);

    // The load: four clients verifying A's cached keys without pause, start to end.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for key in cached.clone() {
        let (samples, stop) = (samples.clone(), stop.clone());
        let (client, base) = (reqwest::Client::new(), a.base.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = Instant::now();
                let status = client
                    .get(format!("{base}/v1/auth"))
                    .bearer_auth(&key)
                    .header("X-Original-Method", "GET")
                    .header("X-Original-URI", "/api/v1/invoices")
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                let took = at.elapsed();
                samples.lock().unwrap().push(Sample { at, status, took });
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for key in &cached {
        assert_eq!(auth(&s, key).await.0, 204);
    }
    let s_cached = Instant::now();

    // --- the outage ---
    let outage = Instant::now();
    cluster.stop();
    eprintln!("PostgreSQL stopped ({:?})", outage.elapsed());

    // Cached keys verify on A (its copies are past the TTL within a second: stale-if-error).
    for key in &cached {
        assert_eq!(auth(&a, key).await, (204, String::new()));
    }
    // A key A never read: 503, never 401.
    let t = Instant::now();
    let answer = a
        .forward_auth(Some(&uncached), "GET", "/api/v1/invoices")
        .await;
    answer.assert_error(503, "store_unavailable");
    eprintln!(
        "uncached key during the outage: 503 after {:?}",
        t.elapsed()
    );
    let answer = a
        .verify(json!({"key": uncached, "method": "GET", "path": "/api/v1/invoices"}))
        .await;
    answer.assert_error(503, "store_unavailable");
    // Revoked before the outage: still refused (as revoked from the cache, or 503), never valid.
    assert_eq!(auth(&a, &revoked_seen).await.0, 401);
    assert_eq!(auth(&a, &revoked_heard).await.0, 503);
    // Management calls: 503 (each after the pool's connect timeout).
    let revoke_path = format!("/v1/api-keys/{heard_id}/revoke");
    let t = Instant::now();
    let (create, list, revoke) = tokio::join!(
        b.create_key_answer(&acct, json!({"scope": "read"})),
        a.admin(Method::GET, "/v1/accounts", None),
        a.admin(Method::POST, &revoke_path, None),
    );
    for answer in [create, list, revoke] {
        answer.assert_error(503, "store_unavailable");
    }
    eprintln!(
        "management calls during the outage: 503 after {:?}",
        t.elapsed()
    );
    // Past TTL + stale-if-error (3 s on S), a cached key is no longer vouched for: 503.
    let bound = Duration::from_secs(3) + Duration::from_millis(200);
    tokio::time::sleep(bound.saturating_sub(s_cached.elapsed())).await;
    let answer = s
        .forward_auth(Some(&cached[0]), "GET", "/api/v1/invoices")
        .await;
    answer.assert_error(503, "store_unavailable");
    // ... while A, with a minute of stale-if-error, still answers.
    assert_eq!(auth(&a, &cached[0]).await.0, 204);
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(outage.elapsed())).await;

    // --- the database comes back ---
    let restart = Instant::now();
    eprintln!("PostgreSQL down for {:?}", restart - outage);
    cluster.start();
    eprintln!("PostgreSQL started again ({:?})", restart.elapsed());
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(15);
    for node in [&a, &b, &s] {
        loop {
            let r = node.admin(Method::GET, "/v1/accounts", None).await;
            if r.status == StatusCode::OK {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not recover: {} {}",
                node.base,
                r.status,
                r.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "every node answers management calls again {:?} after the start",
        restarted.elapsed()
    );
    // Verifications ask the store again at most a second after their last failure.
    for node in [&a, &b, &s] {
        loop {
            let (status, code) = auth(node, &uncached).await;
            if status == 204 {
                break;
            }
            assert_eq!((status, code.as_str()), (503, "store_unavailable"));
            assert!(
                Instant::now() < deadline,
                "{} does not verify again",
                node.base
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let recovered = Instant::now();
    eprintln!(
        "every node verifies keys not in its cache again {:?} after the start",
        recovered - restarted
    );
    // Everything as before the outage.
    for node in [&a, &b, &s] {
        assert_eq!(
            auth(node, &uncached).await,
            (204, String::new()),
            "{}",
            node.base
        );
        assert_eq!(auth(node, &revoked_seen).await.0, 401);
        assert_eq!(auth(node, &revoked_heard).await.0, 401);
        for key in &cached {
            assert_eq!(auth(node, key).await.0, 204);
        }
    }
    let (new_id, new_key) = b.create_key(&acct, json!({"scope": "read"})).await;
    assert_eq!(auth(&a, &new_key).await.0, 204);
    // Notifications flow again: a revocation through A reaches B (TTL a minute) within 1 s.
    assert_eq!(auth(&b, &new_key).await.0, 204);
    let r = a
        .admin(Method::POST, &format!("/v1/api-keys/{new_id}/revoke"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let returned = Instant::now();
    while auth(&b, &new_key).await.0 != 401 {
        assert!(
            returned.elapsed() < Duration::from_secs(1),
            "B did not hear a revocation after the restart"
        );
    }
    eprintln!(
        "after the restart a revocation reached B in {:?}",
        returned.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let samples = samples.lock().unwrap();
    let phases = Phases {
        outage,
        restart,
        recovered,
    };
    let before: Vec<&Sample> = samples.iter().filter(|s| s.at < phases.outage).collect();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= phases.outage && s.at < phases.restart)
        .collect();
    let restarting: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= phases.restart && s.at < phases.recovered)
        .collect();
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= phases.recovered)
        .collect();
    eprintln!("\nverifications of cached keys on node A under load:");
    eprintln!("| phase | requests | statuses | p50 | max |");
    eprintln!("|---|---|---|---|---|");
    summarize("before the outage", &before);
    summarize("PostgreSQL down", &during);
    summarize("PostgreSQL starting", &restarting);
    summarize("recovered", &after);
    // Once the first read has failed (the pool's 3 s connect timeout), verifications no
    // longer wait for the store: stale copies are served at once.
    // Only one verification at a time asks again, a second after the last failure.
    let settled = phases.outage + Duration::from_millis(3500);
    let slow: Vec<Duration> = during
        .iter()
        .filter(|s| s.at >= settled && s.took > Duration::from_secs(1))
        .map(|s| s.took)
        .collect();
    let retries = (phases.restart - settled).as_secs() as usize + 1;
    assert!(
        slow.len() <= retries,
        "verifications waited on the store: {slow:?}"
    );
    for phase in [&before, &during, &restarting, &after] {
        assert!(!phase.is_empty());
        assert!(
            phase.iter().all(|s| s.status == 204),
            "a cached key was not served"
        );
    }
}
