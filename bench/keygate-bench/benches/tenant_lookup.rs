//! A tenant asking for a key id it may not see: another account's key must take as long
//! to refuse as an id that does not exist, or the timing tells the two apart (issue 16).
//! `Engine::get_key` scopes the lookup by account in the query; next to it, the earlier
//! path (fetch by id, decode the row, then compare accounts) measured on the same store.
//!
//! The four are timed interleaved (one of each per round) and reported as medians: on a
//! shared machine, criterion's one-after-another runs drift more than the gap measured.
//!
//! Run: `cargo bench -p keygate-bench --bench tenant_lookup` (20 000 rounds)
//! CI smoke (50 rounds): `cargo test -p keygate-bench --benches`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_bench::{engine, open_store};
use keygate_engine::manage::{Actor, Caller, NewAccount, NewKey};
use keygate_engine::{Engine, Error, VerifyRequest};
use keygate_store::Store;

/// An account and one key in it; the key's secret.
async fn account_with_key(engine: &Engine, name: &str) -> (String, String) {
    let admin = Caller::admin(None);
    let account = engine
        .create_account(
            &admin,
            NewAccount {
                name: name.into(),
                plan: Some("unlimited".into()),
            },
        )
        .await
        .expect("account");
    let (record, secret) = engine
        .create_key(
            &admin,
            NewKey {
                account_id: Some(account.id),
                name: name.into(),
                // A tenant key that may read its own account's keys.
                permissions: Some(vec!["api_keys.read".into()]),
                ..NewKey::default()
            },
        )
        .await
        .expect("key");
    (record.id, secret.expose().to_owned())
}

/// Median and 90th percentile of `samples`, in microseconds.
fn figures(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5).as_secs_f64() * 1e6, at(0.9).as_secs_f64() * 1e6)
}

fn main() {
    // `cargo bench` passes --bench: the full run. `cargo test --benches` (CI smoke): a few.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        20_000
    } else {
        50
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/lookup.db", dir.path().display());
    let (engine, store, tenant, theirs) = rt.block_on(async {
        let store: Arc<dyn Store> = open_store(&url).await.expect("store");
        let engine = engine(store.clone(), 1000);
        let (_, mine) = account_with_key(&engine, "mine").await;
        let (theirs, _) = account_with_key(&engine, "theirs").await;
        let verdict = engine
            .verify(&VerifyRequest {
                key: &mine,
                ..Default::default()
            })
            .await
            .expect("verify");
        let tenant = Caller {
            actor: Actor::Key(verdict.key.expect("a valid key")),
            client_ip: None,
        };
        (engine, store, tenant, theirs)
    });
    let unknown = "key_000000000000000000000000";
    let own_account = match &tenant.actor {
        Actor::Key(key) => key.account_id().to_owned(),
        _ => unreachable!("a key caller"),
    };
    let now = |id: &str| {
        let started = Instant::now();
        let answer = rt.block_on(engine.get_key(&tenant, black_box(id)));
        let took = started.elapsed();
        assert!(matches!(answer, Err(Error::NotFound(_))), "{answer:?}");
        took
    };
    let before = |id: &str| {
        let started = Instant::now();
        let found = rt.block_on(store.get_key(black_box(id))).expect("store");
        let visible = found.filter(|k| k.account_id == own_account);
        let took = started.elapsed();
        assert!(visible.is_none());
        took
    };
    // Interleaved, so the machine's noise and drift fall on all four alike.
    let mut samples: [Vec<Duration>; 4] = Default::default();
    for round in 0..rounds + rounds / 10 {
        let taken = [now(&theirs), now(unknown), before(&theirs), before(unknown)];
        // The first tenth warms up.
        if round >= rounds / 10 {
            for (s, t) in samples.iter_mut().zip(taken) {
                s.push(t);
            }
        }
    }
    let [mut now_foreign, mut now_unknown, mut before_foreign, mut before_unknown] = samples;
    println!("tenant lookup of a key id it may not see, SQLite, {rounds} interleaved rounds (µs):");
    for (label, foreign, unknown) in [
        (
            "Engine::get_key (scoped query)",
            &mut now_foreign,
            &mut now_unknown,
        ),
        (
            "before: by id, then compare accounts",
            &mut before_foreign,
            &mut before_unknown,
        ),
    ] {
        let (fm, f90) = figures(foreign);
        let (um, u90) = figures(unknown);
        println!(
            "  {label}: another account's id median {fm:.1} p90 {f90:.1}; unknown id median {um:.1} \
             p90 {u90:.1}; difference of medians {:.1}",
            fm - um
        );
    }
}
