//! What the layer adds to a tower service on a cache hit, next to `Engine::verify` alone.
//! The same trivial service is called with and without the layer, with the same request;
//! the difference is the layer's cost (target: at most 1.5× `Engine::verify`).
//!
//! Run: `cargo bench -p keygate-tower --bench layer`

use std::convert::Infallible;
use std::hint::black_box;

use axum::body::Body;
use axum::http::{header, Request};
use axum::response::Response;
use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;
use keygate_engine::manage::{Caller, NewAccount, NewKey};
use keygate_engine::VerifyRequest;
use keygate_tower::KeygateLayer;
use tower::{Layer, Service};

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _context = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (layer, key) = rt.block_on(async {
        let pepper = keygate_core::key::random_hex(32).unwrap();
        let layer = KeygateLayer::embedded(
            &format!("sqlite://{}/bench.db", dir.path().display()),
            &pepper,
        )
        .open()
        .await
        .unwrap();
        let admin = Caller::admin(None);
        let account = layer
            .engine()
            .expect("an embedded layer has an engine")
            .create_account(
                &admin,
                NewAccount {
                    name: "bench".into(),
                    plan: Some("unlimited".into()),
                },
            )
            .await
            .unwrap();
        let (_, secret) = layer
            .engine()
            .expect("an embedded layer has an engine")
            .create_key(
                &admin,
                NewKey {
                    account_id: Some(account.id),
                    name: "bench".into(),
                    scope: Some("read".into()),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        (layer, secret.expose().to_owned())
    });
    let bearer = format!("Bearer {key}");
    let request = || {
        Request::builder()
            .uri("/api/v1/invoices/42")
            .header(header::AUTHORIZATION, bearer.as_str())
            .body(Body::empty())
            .unwrap()
    };
    let service = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let mut bare = service;
    let mut layered = layer.layer(service);
    // Fill the cache: the benchmark measures hits. The key's own creation comes back
    // through the change feed (polled every 250 ms) and may drop the entry while the
    // runtime runs; fill again until a call is answered without waiting (a hit).
    let mut cached = false;
    for _ in 0..100 {
        match layered.call(request()).now_or_never() {
            Some(answer) => {
                assert_eq!(answer.unwrap().status(), 200);
                cached = true;
                break;
            }
            None => {
                let answer = rt.block_on(layered.call(request())).unwrap();
                assert_eq!(answer.status(), 200);
                rt.block_on(tokio::time::sleep(std::time::Duration::from_millis(300)));
            }
        }
    }
    assert!(cached, "the key never stayed cached");

    let mut group = c.benchmark_group("layer");
    let engine = layer
        .engine()
        .expect("an embedded layer has an engine")
        .clone();
    let required = keygate_core::RouteTable::default().required("GET", "/api/v1/invoices/42");
    group.bench_function("Engine::verify (cache hit)", |b| {
        b.iter(|| {
            let verdict = engine
                .verify(&VerifyRequest {
                    key: black_box(&key),
                    required: Some(&required),
                    client_ip: None,
                })
                .now_or_never()
                .unwrap()
                .unwrap();
            black_box(verdict.outcome)
        })
    });
    group.bench_function("service without the layer", |b| {
        b.iter(|| black_box(bare.call(request()).now_or_never().unwrap().unwrap()))
    });
    group.bench_function("service with the layer (cache hit)", |b| {
        b.iter(|| {
            let answer = layered.call(request()).now_or_never().unwrap().unwrap();
            debug_assert_eq!(answer.status(), 200);
            black_box(answer)
        })
    });
    group.finish();
}

criterion_group!(layer, benches);
criterion_main!(layer);
