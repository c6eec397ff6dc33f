//! Rate limits shared by two nodes through a real Redis, and what happens when Redis goes
//! away (fail open / fail closed). Skips, saying so, when redis-server is not installed.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keygate_core::{KeyFormat, Pepper, RouteTable};
use keygate_engine::manage::{Caller, NewAccount, NewKey};
use keygate_engine::{
    Engine, EngineConfig, Error, LimiterFailure, Plans, SharedLimiter, VerifyRequest,
};
use keygate_store::sqlite::SqliteStore;
use keygate_store::{RateLimit, Store};

struct Redis {
    child: Child,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use keygate_test_support::free_port;

async fn start_redis() -> Option<Redis> {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        keygate_test_support::skip("redis-server not installed");
        return None;
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Redis {
                child,
                url: format!("redis://127.0.0.1:{port}/0"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not start");
}

fn engine(store: Arc<dyn Store>) -> Arc<Engine> {
    engine_with_ttl(store, Duration::from_secs(60))
}

fn engine_with_ttl(store: Arc<dyn Store>, cache_ttl: Duration) -> Arc<Engine> {
    Engine::new(
        store,
        EngineConfig {
            key_format: KeyFormat::new("kg", true).unwrap(),
            pepper: Pepper::new(vec![9; 32]),
            routes: RouteTable::default(),
            plans: Plans::reference(),
            cache_capacity: 1000,
            cache_ttl,
            negative_cache_ttl: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(300),
            usage_retention: Duration::from_secs(86_400),
        },
    )
}

/// Two nodes over one store, and a key limited to `requests` per minute.
async fn two_nodes(dir: &tempfile::TempDir, requests: u32) -> (Arc<Engine>, Arc<Engine>, String) {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&format!("sqlite://{}/k.db", dir.path().display()))
            .await
            .unwrap(),
    );
    let (a, b) = (engine(store.clone()), engine(store));
    let admin = Caller::admin(None);
    let account = a
        .create_account(
            &admin,
            NewAccount {
                name: "acme".into(),
                plan: Some("unlimited".into()),
            },
        )
        .await
        .unwrap();
    let (_, secret) = a
        .create_key(
            &admin,
            NewKey {
                account_id: Some(account.id),
                name: "limited".into(),
                scope: Some("all".into()),
                rate_limit: Some(RateLimit {
                    requests,
                    per_seconds: 60,
                }),
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    (a, b, secret.expose().to_owned())
}

async fn outcome(engine: &Engine, key: &str) -> Result<&'static str, Error> {
    let verdict = engine
        .verify(&VerifyRequest {
            key,
            ..Default::default()
        })
        .await?;
    Ok(verdict.outcome.code())
}

#[tokio::test]
async fn two_nodes_share_one_limit() {
    let Some(redis) = start_redis().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b, key) = two_nodes(&dir, 4).await;
    for node in [&a, &b] {
        node.share_rate_limits(SharedLimiter::new(&redis.url, LimiterFailure::Open).unwrap());
    }
    // Four requests in all, alternating nodes: each node alone would allow four.
    for node in [&a, &b, &a, &b] {
        assert_eq!(outcome(node, &key).await.unwrap(), "valid");
    }
    assert_eq!(outcome(&a, &key).await.unwrap(), "rate_limited");
    assert_eq!(outcome(&b, &key).await.unwrap(), "rate_limited");
    let verdict = b
        .verify(&VerifyRequest {
            key: &key,
            ..Default::default()
        })
        .await
        .unwrap();
    let status = verdict.rate_limit.unwrap();
    assert_eq!((status.limit, status.remaining), (4, 0));
    assert!((1..=15).contains(&status.retry_after_seconds.unwrap()));

    // Without sharing, each node counts on its own.
    let dir = tempfile::tempdir().unwrap();
    let (a, b, key) = two_nodes(&dir, 2).await;
    for node in [&a, &a, &b, &b] {
        assert_eq!(outcome(node, &key).await.unwrap(), "valid");
    }
    assert_eq!(outcome(&a, &key).await.unwrap(), "rate_limited");
}

#[tokio::test]
async fn redis_down_fails_open_or_closed_as_configured() {
    let Some(redis) = start_redis().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (open, closed, key) = two_nodes(&dir, 100).await;
    open.share_rate_limits(SharedLimiter::new(&redis.url, LimiterFailure::Open).unwrap());
    closed.share_rate_limits(SharedLimiter::new(&redis.url, LimiterFailure::Closed).unwrap());
    assert_eq!(outcome(&open, &key).await.unwrap(), "valid");
    assert_eq!(outcome(&closed, &key).await.unwrap(), "valid");
    drop(redis);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    assert_eq!(outcome(&open, &key).await.unwrap(), "valid");
    assert!(matches!(
        outcome(&closed, &key).await,
        Err(Error::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a dead Redis must not hang verification"
    );
    let metrics = open.render_metrics();
    let errors = metrics
        .lines()
        .find(|l| l.starts_with("keygate_rate_limiter_errors_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(errors >= 1);
}

/// Quotas across nodes: each node counts exactly what it serves, and learns what the others
/// spent when it reads the key again (cache TTL) after their flush. The overspend is bounded
/// by what the other nodes serve within one cache TTL plus one flush interval.
#[tokio::test]
async fn quotas_across_nodes_converge_after_flush_and_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&format!("sqlite://{}/q.db", dir.path().display()))
            .await
            .unwrap(),
    );
    let node = || engine_with_ttl(store.clone(), Duration::from_millis(200));
    let (a, b) = (node(), node());
    let admin = Caller::admin(None);
    let account = a
        .create_account(
            &admin,
            NewAccount {
                name: "acme".into(),
                plan: Some("unlimited".into()),
            },
        )
        .await
        .unwrap();
    let (_, secret) = a
        .create_key(
            &admin,
            NewKey {
                account_id: Some(account.id),
                name: "metered".into(),
                scope: Some("all".into()),
                quota: Some(keygate_store::Quota {
                    requests: 10,
                    refill: None,
                }),
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    let key = secret.expose().to_owned();
    // B reads the key (and caches it) before A spends anything.
    assert_eq!(outcome(&b, &key).await.unwrap(), "valid");
    for _ in 0..6 {
        assert_eq!(outcome(&a, &key).await.unwrap(), "valid");
    }
    a.flush_usage().await.unwrap();
    b.flush_usage().await.unwrap();
    // After B's cache TTL, B reads the key again and learns A's spending: 7 of 10 are gone.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut allowed = 0;
    for _ in 0..10 {
        if outcome(&b, &key).await.unwrap() == "valid" {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3, "B may spend only what is left");
    assert_eq!(
        outcome(&a, &key).await.unwrap(),
        "valid",
        "A has not heard of B's spending yet"
    );
}
