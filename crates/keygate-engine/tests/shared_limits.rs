//! Rate limits and quotas shared by two nodes through a real Redis, and what happens when
//! Redis goes away (fail open / fail closed). Skips, saying so, when redis-server is not
//! installed (or, for the quota tests, when KEYGATE_TEST_POSTGRES is unset).

mod common;
use common::{engine, engine_with_ttl};

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keygate_engine::manage::{Caller, KeyUpdate, NewAccount, NewKey};
use keygate_engine::{Engine, Error, LimiterFailure, SharedLimiter, VerifyRequest};
use keygate_store::postgres::PostgresStore;
use keygate_store::sqlite::SqliteStore;
use keygate_store::{KeyRecord, Quota, RateLimit, Refill, Store};

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

/// Two nodes over one store, and a key limited to `requests` per minute.
/// A key made on `node` from `key` in `account_id`; its record and secret.
async fn add_key(node: &Engine, account_id: &str, key: NewKey) -> (KeyRecord, String) {
    let (record, secret) = node
        .create_key(
            &Caller::admin(None),
            NewKey {
                account_id: Some(account_id.to_owned()),
                ..key
            },
        )
        .await
        .unwrap();
    (record, secret.expose().to_owned())
}

/// A new `unlimited` account on `node` with one key made from `key`.
async fn account_with_key(node: &Engine, key: NewKey) -> (KeyRecord, String) {
    let account = node
        .create_account(
            &Caller::admin(None),
            NewAccount {
                name: "acme".into(),
                plan: Some("unlimited".into()),
            },
        )
        .await
        .unwrap();
    add_key(node, &account.id, key).await
}

async fn two_nodes(dir: &tempfile::TempDir, requests: u32) -> (Arc<Engine>, Arc<Engine>, String) {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&format!("sqlite://{}/k.db", dir.path().display()))
            .await
            .unwrap(),
    );
    let (a, b) = (engine(store.clone()), engine(store));
    let (_, secret) = account_with_key(
        &a,
        NewKey {
            name: "limited".into(),
            scope: Some("all".into()),
            rate_limit: Some(RateLimit {
                requests,
                per_seconds: 60,
            }),
            ..NewKey::default()
        },
    )
    .await;
    (a, b, secret)
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
    assert!(rate_limiter_errors(&open) >= 1);
}

fn rate_limiter_errors(engine: &Engine) -> u64 {
    engine
        .render_metrics()
        .lines()
        .find(|l| l.starts_with("keygate_rate_limiter_errors_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
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
    let (_, key) = account_with_key(
        &a,
        NewKey {
            name: "metered".into(),
            scope: Some("all".into()),
            quota: Some(keygate_store::Quota {
                requests: 10,
                refill: None,
            }),
            ..NewKey::default()
        },
    )
    .await;
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

/// Two nodes over one fresh PostgreSQL database sharing one Redis, each hearing the other's
/// key changes, and a key with `quota`.
struct QuotaNodes {
    a: Arc<Engine>,
    b: Arc<Engine>,
    store: Arc<dyn Store>,
    key: String,
    key_id: String,
    created_at: i64,
}

async fn quota_nodes(
    redis: &Redis,
    quota: Quota,
    on_failure: [LimiterFailure; 2],
) -> Option<QuotaNodes> {
    let server = keygate_test_support::postgres_url()?;
    let url = keygate_test_support::fresh_postgres_database(&server).await;
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&url, true).await.unwrap());
    let (a, b) = (engine(store.clone()), engine(store.clone()));
    for (node, on_failure) in [(&a, on_failure[0]), (&b, on_failure[1])] {
        node.share_rate_limits(SharedLimiter::new(&redis.url, on_failure).unwrap());
        node.spawn_change_listener().await.unwrap();
    }
    let (record, key) = account_with_key(
        &a,
        NewKey {
            name: "metered".into(),
            scope: Some("all".into()),
            quota: Some(quota),
            ..NewKey::default()
        },
    )
    .await;
    Some(QuotaNodes {
        a,
        b,
        store,
        key,
        key_id: record.id,
        created_at: record.created_at,
    })
}

/// `per_node` verifications on each node at once; how many were valid and how many refused
/// as `usage_exceeded` (any other outcome fails the test).
async fn burst(nodes: &QuotaNodes, per_node: usize) -> (usize, usize) {
    let mut tasks = Vec::new();
    for i in 0..per_node * 2 {
        let node = if i % 2 == 0 { &nodes.a } else { &nodes.b }.clone();
        let key = nodes.key.clone();
        tasks.push(tokio::spawn(async move { outcome(&node, &key).await }));
    }
    let (mut valid, mut exceeded) = (0, 0);
    for task in tasks {
        match task.await.unwrap().unwrap() {
            "valid" => valid += 1,
            "usage_exceeded" => exceeded += 1,
            other => panic!("unexpected outcome {other}"),
        }
    }
    (valid, exceeded)
}

async fn stored_quota_used(nodes: &QuotaNodes) -> i64 {
    nodes
        .store
        .get_key(&nodes.key_id)
        .await
        .unwrap()
        .unwrap()
        .quota_used
}

async fn flush_both(nodes: &QuotaNodes) {
    nodes.a.flush_usage().await.unwrap();
    nodes.b.flush_usage().await.unwrap();
}

fn quota(requests: u64) -> Quota {
    Quota {
        requests,
        refill: None,
    }
}

/// Issue 16: with Redis, a quota is exact across nodes. 400 verifications at once, half on
/// each node, of a key with a quota of 50: exactly 50 are valid (without Redis each node
/// spent its own 50). The admin API and, after a flush, the store say 50 were used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_is_exact_across_nodes_under_concurrency() {
    let Some(redis) = start_redis().await else {
        return;
    };
    let Some(nodes) = quota_nodes(&redis, quota(50), [LimiterFailure::Open; 2]).await else {
        return;
    };
    let (valid, exceeded) = burst(&nodes, 200).await;
    println!(
        "quota 50, 400 verifications over two nodes: {valid} valid, {exceeded} usage_exceeded"
    );
    assert_eq!((valid, exceeded), (50, 350), "valid across both nodes");
    // Before any flush, node A reports every node's spending (read from Redis).
    let admin = Caller::admin(None);
    let seen = nodes.a.get_key(&admin, &nodes.key_id).await.unwrap();
    assert_eq!(seen.quota_used, 50);
    // A cache hit of a spent key is refused on both nodes.
    assert_eq!(
        outcome(&nodes.a, &nodes.key).await.unwrap(),
        "usage_exceeded"
    );
    assert_eq!(
        outcome(&nodes.b, &nodes.key).await.unwrap(),
        "usage_exceeded"
    );
    // Rotating is no way to refill: the new key carries every node's spending, flushed
    // or not.
    let rotated = nodes
        .b
        .rotate_key(&admin, &nodes.key_id, None)
        .await
        .unwrap();
    assert_eq!(rotated.key.quota_used, 50);
    let new_key = rotated.secret.expose();
    assert_eq!(outcome(&nodes.a, new_key).await.unwrap(), "usage_exceeded");
    flush_both(&nodes).await;
    assert_eq!(stored_quota_used(&nodes).await, 50);
}

/// A refill is given back once across nodes, by Redis's clock, and reaches the store once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refill_is_given_back_once_across_nodes() {
    let Some(redis) = start_redis().await else {
        return;
    };
    let refilled = Quota {
        requests: 10,
        refill: Some(Refill {
            amount: 4,
            every: 2,
        }),
    };
    let Some(nodes) = quota_nodes(&redis, refilled, [LimiterFailure::Open; 2]).await else {
        return;
    };
    assert_eq!(burst(&nodes, 20).await, (10, 30));
    assert!(
        keygate_engine::now_ms() < nodes.created_at + 2_000,
        "the first burst must end before the first refill is due"
    );
    // One refill period later (and less than two): 4 come back, for both nodes together.
    let wait = nodes.created_at + 2_500 - keygate_engine::now_ms();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    assert_eq!(burst(&nodes, 20).await, (4, 36));
    flush_both(&nodes).await;
    let stored = nodes.store.get_key(&nodes.key_id).await.unwrap().unwrap();
    assert_eq!(stored.quota_used, 10, "10 spent, 4 back, 4 spent again");
    assert_eq!(stored.quota_refilled_at, Some(nodes.created_at + 2_000));
}

/// Redis loses its data (a restart without persistence, FLUSHALL, eviction): the quota is
/// seeded again from the store, not handed out afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_survives_redis_losing_its_data() {
    let Some(redis) = start_redis().await else {
        return;
    };
    let Some(nodes) = quota_nodes(&redis, quota(50), [LimiterFailure::Open; 2]).await else {
        return;
    };
    for i in 0..30 {
        let node = if i % 2 == 0 { &nodes.a } else { &nodes.b };
        assert_eq!(outcome(node, &nodes.key).await.unwrap(), "valid");
    }
    flush_both(&nodes).await;
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let (valid, _) = burst(&nodes, 50).await;
    println!("quota 50, 30 spent, Redis flushed, 100 more verifications: {valid} valid");
    assert_eq!(valid, 20, "only what the store says is left");
    flush_both(&nodes).await;
    assert_eq!(stored_quota_used(&nodes).await, 50);
}

/// An admin's change of a key's quota holds on both nodes: what was spent carries over, a
/// larger quota lets exactly the difference through, a smaller one refuses at once, and
/// removing the quota removes its Redis state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_quota_change_holds_on_both_nodes() {
    let Some(redis) = start_redis().await else {
        return;
    };
    let Some(nodes) = quota_nodes(&redis, quota(10), [LimiterFailure::Open; 2]).await else {
        return;
    };
    let admin = Caller::admin(None);
    assert_eq!(burst(&nodes, 10).await, (10, 10));
    let set_quota = |node: Arc<Engine>, quota: Option<Quota>| {
        let (admin, id) = (admin.clone(), nodes.key_id.clone());
        async move {
            let update = KeyUpdate {
                quota: Some(quota),
                ..KeyUpdate::default()
            };
            let updated = node.update_key(&admin, &id, update).await.unwrap();
            // Other nodes hear of the change within a second (SPEC: revocation).
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            updated
        }
    };
    let raised = set_quota(nodes.a.clone(), Some(quota(16))).await;
    assert_eq!(raised.quota_used, 10, "the spent count carries over");
    assert_eq!(burst(&nodes, 10).await, (6, 14));
    set_quota(nodes.b.clone(), Some(quota(3))).await;
    assert_eq!(burst(&nodes, 5).await, (0, 10));
    set_quota(nodes.a.clone(), None).await;
    assert_eq!(burst(&nodes, 5).await, (10, 0));
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("keygate:quota:{}", nodes.key_id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a removed quota leaves nothing in Redis");
}

/// Redis down: fail closed answers "unavailable" for a key with a quota; fail open spends
/// from the node's own count (what it knows was spent), so the quota still holds on that
/// node instead of becoming unlimited. A key without a quota never asks Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_fails_a_quota_open_to_the_node_count_or_closed() {
    let Some(redis) = start_redis().await else {
        return;
    };
    let Some(nodes) = quota_nodes(
        &redis,
        quota(10),
        [LimiterFailure::Open, LimiterFailure::Closed],
    )
    .await
    else {
        return;
    };
    let (open, closed) = (&nodes.a, &nodes.b);
    for _ in 0..3 {
        assert_eq!(outcome(open, &nodes.key).await.unwrap(), "valid");
    }
    for _ in 0..2 {
        assert_eq!(outcome(closed, &nodes.key).await.unwrap(), "valid");
    }
    let account_id = open
        .get_key(&Caller::admin(None), &nodes.key_id)
        .await
        .unwrap()
        .account_id;
    let (_, unmetered) = add_key(
        open,
        &account_id,
        NewKey {
            name: "unmetered".into(),
            scope: Some("all".into()),
            ..NewKey::default()
        },
    )
    .await;
    assert_eq!(outcome(closed, &unmetered).await.unwrap(), "valid");
    // Rate limited and metered: when the rate limit fails open, the quota is spent on the
    // node at once, without asking the dead Redis again.
    let (_, both) = add_key(
        open,
        &account_id,
        NewKey {
            name: "limited and metered".into(),
            scope: Some("all".into()),
            rate_limit: Some(RateLimit {
                requests: 1000,
                per_seconds: 60,
            }),
            quota: Some(quota(2)),
            ..NewKey::default()
        },
    )
    .await;
    drop(redis);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut valid = 0;
    for _ in 0..20 {
        if outcome(open, &nodes.key).await.unwrap() == "valid" {
            valid += 1;
        }
    }
    assert_eq!(
        valid, 7,
        "fail open: node A spends what is left of its own count"
    );
    let errors = rate_limiter_errors(open);
    let both_outcomes = [
        outcome(open, &both).await.unwrap(),
        outcome(open, &both).await.unwrap(),
        outcome(open, &both).await.unwrap(),
    ];
    assert_eq!(both_outcomes, ["valid", "valid", "usage_exceeded"]);
    assert_eq!(
        rate_limiter_errors(open),
        errors + 3,
        "one Redis error per verification, not two"
    );
    assert!(matches!(
        outcome(closed, &nodes.key).await,
        Err(Error::Unavailable(_))
    ));
    assert_eq!(
        outcome(closed, &unmetered).await.unwrap(),
        "valid",
        "a key without a quota or rate limit does not ask Redis"
    );
    assert!(rate_limiter_errors(open) >= 20);
}
