//! The usage flusher's write budget (`usage_flush_max_keys_per_second`), against a real
//! SQLite store: after a flush of `n` keys the next one waits `n / budget`, and every count
//! still reaches the store.

mod common;

use std::time::{Duration, Instant};

use keygate_core::Outcome;
use keygate_engine::manage::{Caller, NewAccount, NewKey};
use keygate_engine::{Engine, VerifyRequest};

const FLUSHED_KEYS: &str = "keygate_usage_flushed_keys_total ";

fn flushed_keys(engine: &Engine) -> u64 {
    engine
        .render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix(FLUSHED_KEYS))
        .and_then(|v| v.parse().ok())
        .expect("keygate_usage_flushed_keys_total is exported")
}

async fn wait_for_flushed(engine: &Engine, at_least: u64, within: Duration) -> Duration {
    let start = Instant::now();
    while flushed_keys(engine) < at_least {
        assert!(
            start.elapsed() < within,
            "only {} of {at_least} keys flushed after {within:?}",
            flushed_keys(engine)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_flush_is_followed_by_a_pause_that_keeps_the_write_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite(&dir).await;
    let engine = common::engine(store.clone());
    let admin = Caller::admin(None);
    let account = engine
        .create_account(
            &admin,
            NewAccount {
                name: "pace".into(),
                plan: Some("unlimited".into()),
            },
        )
        .await
        .unwrap()
        .id;
    let mut keys = Vec::new();
    for i in 0..40 {
        let (_, secret) = engine
            .create_key(
                &admin,
                NewKey {
                    account_id: Some(account.clone()),
                    name: format!("key {i}"),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        keys.push(secret);
    }
    let use_all = || async {
        for key in &keys {
            let verdict = engine
                .verify(&VerifyRequest {
                    key: key.expose(),
                    ..VerifyRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(verdict.outcome, Outcome::Valid);
        }
    };

    // 40 keys at 50 keys/s: each flush is followed by at least 0.8 s, against an interval
    // of 50 ms without the budget.
    let budget = std::num::NonZeroU32::new(50);
    let flusher = engine.spawn_usage_flusher_within(Duration::from_millis(50), budget);
    use_all().await;
    wait_for_flushed(&engine, 40, Duration::from_secs(10)).await;
    use_all().await;
    let second = wait_for_flushed(&engine, 80, Duration::from_secs(10)).await;
    assert!(
        second >= Duration::from_millis(600),
        "the second flush came {second:?} after the first (budget: 0.8 s)"
    );

    // Every use is in the store: two per key this hour.
    let counted: i64 = {
        let now = keygate_engine::now_ms();
        let mut total = 0;
        for key in engine
            .list_keys(&admin, Some(&account), None)
            .await
            .unwrap()
        {
            total += store
                .usage_counts(&key.id, now - 3_600_000, now + 3_600_000)
                .await
                .unwrap()
                .iter()
                .map(|c| c.count)
                .sum::<i64>();
        }
        total
    };
    assert_eq!(counted, 80);
    engine.stop_background();
    flusher.await.unwrap();
}
