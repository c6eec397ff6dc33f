//! The in-process verify path on a cache hit, next to its floor: raw HMAC-SHA256 of the
//! same key, and HMAC plus a bare hash-map lookup.
//!
//! Run: `cargo bench -p keygate-engine --bench verify`
//! Quick smoke (CI): `cargo bench -p keygate-engine --bench verify -- --quick` is not a
//! criterion flag on 0.5; CI runs `cargo bench ... -- --warm-up-time 0.1 --measurement-time 0.2`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;
use hmac::{Hmac, Mac};
use keygate_core::{KeyDigest, KeyFormat, Pepper, RouteTable};
use keygate_engine::manage::{Caller, NewAccount, NewKey};
use keygate_engine::tokens::TokenRequest;
use keygate_engine::{Engine, EngineConfig, Plans, VerifyRequest};
use keygate_store::sqlite::SqliteStore;
use sha2::Sha256;

const PEPPER: [u8; 32] = [7; 32];

struct Fixture {
    engine: Arc<Engine>,
    key: String,
    /// A key with a rate limit it never reaches: measures the limiter's cost.
    limited_key: String,
    /// A short-lived token of `key` (`invoices.read`), verified once already.
    token: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&format!("sqlite://{}/b.db", dir.path().display()))
            .await
            .unwrap();
        let engine = Engine::new(
            Arc::new(store),
            EngineConfig {
                key_format: KeyFormat::new("kg", true).unwrap(),
                pepper: Pepper::new(PEPPER.to_vec()),
                routes: RouteTable::default(),
                plans: Plans::reference(),
                cache_capacity: 100_000,
                cache_ttl: Duration::from_secs(3600),
                negative_cache_ttl: Duration::from_secs(10),
                stale_if_error: Duration::from_secs(300),
                usage_retention: Duration::from_secs(90 * 86_400),
            },
        );
        let admin = Caller::admin(None);
        let account = engine
            .create_account(
                &admin,
                NewAccount {
                    name: "bench".into(),
                    plan: Some("unlimited".into()),
                },
            )
            .await
            .unwrap();
        let (_, secret) = engine
            .create_key(
                &admin,
                NewKey {
                    account_id: Some(account.id.clone()),
                    name: "bench".into(),
                    scope: Some("read".into()),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        let key = secret.expose().to_owned();
        let (_, limited) = engine
            .create_key(
                &admin,
                NewKey {
                    account_id: Some(account.id.clone()),
                    name: "limited".into(),
                    scope: Some("read".into()),
                    rate_limit: Some(keygate_store::RateLimit {
                        requests: u32::MAX,
                        per_seconds: 1,
                    }),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        let limited_key = limited.expose().to_owned();
        // Warm the cache: the benchmark measures hits.
        for k in [&key, &limited_key] {
            let warm = engine
                .verify(&VerifyRequest {
                    key: k,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(warm.outcome.is_valid());
        }
        let parent = engine
            .verify(&VerifyRequest {
                key: &key,
                ..Default::default()
            })
            .await
            .unwrap()
            .key
            .unwrap();
        let token = engine
            .issue_token(
                &parent,
                &TokenRequest {
                    permissions: Some(vec!["invoices.read".into()]),
                    ..TokenRequest::default()
                },
            )
            .await
            .unwrap()
            .token;
        let warm = engine
            .verify_token(&VerifyRequest {
                key: &token,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(warm.outcome.is_valid());
        Fixture {
            engine,
            key,
            limited_key,
            token,
            _dir: dir,
        }
    })
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let key = f.key.as_str();
    let required = RouteTable::default().required("GET", "/api/v1/invoices/42");
    let mut group = c.benchmark_group("verify");

    group.bench_function("floor: HMAC-SHA256 (key schedule each time)", |b| {
        b.iter(|| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&PEPPER).unwrap();
            mac.update(black_box(key).as_bytes());
            black_box(mac.finalize().into_bytes())
        })
    });
    let pepper = Pepper::new(PEPPER.to_vec());
    group.bench_function("floor: HMAC-SHA256 (precomputed key schedule)", |b| {
        b.iter(|| black_box(pepper.digest(black_box(key).as_bytes())))
    });
    let mut map: HashMap<KeyDigest, u64> = HashMap::new();
    map.insert(pepper.digest(key.as_bytes()), 1);
    group.bench_function("floor: HMAC + HashMap lookup", |b| {
        b.iter(|| black_box(map.get(&pepper.digest(black_box(key).as_bytes()))))
    });
    let format = KeyFormat::new("kg", true).unwrap();
    group.bench_function("parse + checksum", |b| {
        b.iter(|| black_box(format.parse(black_box(key))))
    });
    group.bench_function("keygate verify, cache hit, no permission", |b| {
        let request = VerifyRequest {
            key,
            ..Default::default()
        };
        b.iter(|| {
            let verdict = f
                .engine
                .verify(black_box(&request))
                .now_or_never()
                .unwrap()
                .unwrap();
            black_box(verdict.outcome)
        })
    });
    group.bench_function("keygate verify, cache hit, with rate limit", |b| {
        let request = VerifyRequest {
            key: &f.limited_key,
            ..Default::default()
        };
        b.iter(|| {
            let verdict = f
                .engine
                .verify(black_box(&request))
                .now_or_never()
                .unwrap()
                .unwrap();
            black_box(verdict.outcome)
        })
    });
    group.bench_function("keygate verify, cache hit, with permission", |b| {
        let request = VerifyRequest {
            key,
            required: Some(&required),
            client_ip: None,
        };
        b.iter(|| {
            let verdict = f
                .engine
                .verify(black_box(&request))
                .now_or_never()
                .unwrap()
                .unwrap();
            black_box(verdict.outcome)
        })
    });
    group.bench_function("keygate verify_token, seen before, with permission", |b| {
        let request = VerifyRequest {
            key: &f.token,
            required: Some(&required),
            client_ip: None,
        };
        b.iter(|| {
            let verdict = f
                .engine
                .verify_token(black_box(&request))
                .now_or_never()
                .unwrap()
                .unwrap();
            black_box(verdict.outcome)
        })
    });
    // What a token's first sight on a node adds: one Ed25519 strict verification.
    let signing = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let public = signing.verifying_key();
    let (signed, _) = f.token.rsplit_once('.').unwrap();
    let signature = ed25519_dalek::Signer::sign(&signing, signed.as_bytes());
    group.bench_function("floor: Ed25519 verify_strict of a token", |b| {
        b.iter(|| {
            black_box(public.verify_strict(black_box(signed.as_bytes()), black_box(&signature)))
        })
    });
    group.finish();
}

criterion_group!(verify, benches);
criterion_main!(verify);
