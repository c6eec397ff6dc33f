//! What the layer adds to a tower service on a cache hit, next to `Engine::verify` alone.
//! The same trivial service is called with and without the layer, with the same request;
//! the difference is the layer's cost (target: at most 1.5× `Engine::verify`).
//!
//! Beside it, what the parts cost: the layer with `require(…)` (no permission derived from
//! the path), with `any_key()` (no permission checked), and a service that only inserts
//! the caller's `Identity` as the layer must (the floor no implementation can go under),
//! and the route table's derivation of the permission alone.
//!
//! The pair is measured as a bare tower service, and inside an axum `Router` (where a
//! request already carries extensions, as it does in an app), next to the router alone and
//! with a layer that passes requests through.
//!
//! Run: `cargo bench -p keygate-tower --bench layer`; with `KEYGATE_LAYER_ROUNDS=200` it
//! also measures them in turn, round after round (see [`interleaved`]).

use std::convert::Infallible;
use std::hint::black_box;

use axum::body::Body;
use axum::http::{header, Request};
use axum::response::Response;
use axum::routing::get;
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
    // What the issue requires of the layer and no faster code can skip: the caller's
    // `Identity` put in the request's extensions (a bare request has none: the map is made
    // for it, and dropped with it). The layer's cost cannot fall below this one's.
    let identity = match rt.block_on(layer.authorize(&request().into_parts().0)) {
        keygate_edge::Authorization::Allowed(identity) => identity,
        refused => panic!("the bench key is refused: {refused:?}"),
    };
    let mut inner = service;
    let mut extension_only = tower::service_fn(move |mut request: Request<Body>| {
        request.extensions_mut().insert(identity.clone());
        inner.call(request)
    });
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
    let mut verify = || {
        let verdict = engine
            .verify(&VerifyRequest {
                key: black_box(&key),
                required: Some(&required),
                client_ip: None,
            })
            .now_or_never()
            .unwrap()
            .unwrap();
        black_box(verdict.outcome);
    };
    let mut without = || {
        black_box(answer_now(&mut bare, request()));
    };
    // The same layer where the route names its permission (`require`: nothing to derive
    // from the path) and where any valid key passes (`any_key`: no permission to check,
    // in the layer or in the engine), to show what each part of the work costs.
    let mut required_layered = layer
        .require("invoices.read")
        .expect("a valid permission")
        .layer(service);
    let mut any_key_layered = layer.any_key().layer(service);
    let mut with_required = || {
        black_box(answer_now(&mut required_layered, request()));
    };
    let mut with_any_key = || {
        black_box(answer_now(&mut any_key_layered, request()));
    };
    // What deriving the permission costs alone (the route table the layer uses), the
    // difference between the layer as an app adds it and `require(…)`.
    let routes = engine.routes().clone();
    let mut derive_only = || {
        black_box(routes.required(black_box("GET"), black_box("/api/v1/invoices/42")));
    };
    let mut nothing = || {};
    let mut identity_only = || {
        black_box(answer_now(&mut extension_only, request()));
    };
    let mut with = || {
        let answer = answer_now(&mut layered, request());
        debug_assert_eq!(answer.status(), 200);
        black_box(answer);
    };
    // The same pair inside an axum `Router`, as an app adds the layer (`.layer(keygate)`).
    // A bare `Request` has no extension map, so above the layer's `Identity` pays for
    // creating (and dropping) one; a request that reaches a layer inside a router already
    // carries the router's extensions (`OriginalUri`, `MatchedPath`, the path parameters),
    // and under `into_make_service_with_connect_info` the peer's address. A router also
    // boxes and clones every layer per request (`Route`), whatever the layer does: the
    // pass-through layer measures that alone.
    let app = || {
        axum::Router::new().route(
            "/api/v1/invoices/{id}",
            get(|| async { Response::new(Body::empty()) }),
        )
    };
    let (mut routed_bare, mut routed_passing, mut routed) = (
        app(),
        app().layer(tower::layer::layer_fn(|route| route)),
        app().layer(layer.clone()),
    );
    assert_eq!(
        routed
            .call(request())
            .now_or_never()
            .map(|a| a.unwrap().status()),
        Some(axum::http::StatusCode::OK),
        "a routed cache hit is answered at once"
    );
    let mut routed_without = || {
        black_box(answer_now(&mut routed_bare, request()));
    };
    let mut routed_pass_through = || {
        black_box(answer_now(&mut routed_passing, request()));
    };
    let mut routed_with = || {
        let answer = answer_now(&mut routed, request());
        debug_assert_eq!(answer.status(), 200);
        black_box(answer);
    };
    group.bench_function("Engine::verify (cache hit)", |b| b.iter(&mut verify));
    group.bench_function("service without the layer", |b| b.iter(&mut without));
    group.bench_function("service with the layer (cache hit)", |b| b.iter(&mut with));
    group.bench_function("service with the layer, require(…) (cache hit)", |b| {
        b.iter(&mut with_required)
    });
    group.bench_function("service with the layer, any_key() (cache hit)", |b| {
        b.iter(&mut with_any_key)
    });
    group.bench_function("RouteTable::required", |b| b.iter(&mut derive_only));
    group.bench_function("service with only the Identity inserted", |b| {
        b.iter(&mut identity_only)
    });
    group.bench_function("router without a layer", |b| b.iter(&mut routed_without));
    group.bench_function("router with a pass-through layer", |b| {
        b.iter(&mut routed_pass_through)
    });
    group.bench_function("router with the layer (cache hit)", |b| {
        b.iter(&mut routed_with)
    });
    group.finish();
    if let Some(rounds) = std::env::var("KEYGATE_LAYER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        interleaved(
            rounds,
            &mut verify,
            &mut [
                &mut without,
                &mut with,
                &mut routed_without,
                &mut routed_pass_through,
                &mut routed_with,
                &mut identity_only,
                &mut with_required,
                &mut with_any_key,
                &mut derive_only,
                &mut nothing,
            ],
            &[
                ("a bare tower service", 0, 1),
                (
                    "a bare tower service, the layer with require(\"invoices.read\")",
                    0,
                    6,
                ),
                (
                    "a bare tower service, the layer with any_key() (verify checks no permission)",
                    0,
                    7,
                ),
                (
                    "a bare tower service, only inserting the Identity (the floor)",
                    0,
                    5,
                ),
                (
                    "the permission derived from the path alone (RouteTable::required)",
                    9,
                    8,
                ),
                ("an axum Router, no layer", 2, 4),
                ("an axum Router, a pass-through layer", 3, 4),
            ],
        );
    }
}

/// `service`'s answer to `request`, which every case here gives without waiting (a cache
/// hit); one that would wait is a broken benchmark.
fn answer_now<S>(service: &mut S, request: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    match service.call(request).now_or_never() {
        Some(Ok(answer)) => answer,
        Some(Err(never)) => match never {},
        None => panic!("the answer had to wait"),
    }
}

/// The measurements taken in turn, a short batch of each per round, so that a loaded
/// machine's noise falls on all alike (criterion measures one after the other, each in its
/// own seconds). `pairs` name a case without and with the layer (indices into `cases`);
/// prints, per pair, the medians and the median of each round's own ratio.
fn interleaved(
    rounds: usize,
    verify: &mut dyn FnMut(),
    cases: &mut [&mut dyn FnMut()],
    pairs: &[(&str, usize, usize)],
) {
    const BATCH: u32 = 2_000;
    let time = |f: &mut dyn FnMut()| {
        let started = std::time::Instant::now();
        for _ in 0..BATCH {
            f();
        }
        started.elapsed().as_secs_f64() * 1e9 / f64::from(BATCH)
    };
    let mut v = vec![];
    let mut times: Vec<Vec<f64>> = cases.iter().map(|_| vec![]).collect();
    let mut ratios: Vec<Vec<f64>> = pairs.iter().map(|_| vec![]).collect();
    for _ in 0..rounds {
        let a = time(verify);
        v.push(a);
        let round: Vec<f64> = cases.iter_mut().map(|case| time(*case)).collect();
        for (ratio, (_, without, with)) in ratios.iter_mut().zip(pairs) {
            ratio.push((round[*with] - round[*without]) / a);
        }
        for (all, t) in times.iter_mut().zip(round) {
            all.push(t);
        }
    }
    // The fastest round of each is the one least disturbed by other work on the machine.
    let summary = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        (xs[0], xs[xs.len() / 2])
    };
    let (v_min, v) = summary(&mut v);
    let times: Vec<(f64, f64)> = times.iter_mut().map(summary).collect();
    for ((name, without, with), ratio) in pairs.iter().zip(&mut ratios) {
        let ((wo_min, wo), (w_min, w)) = (times[*without], times[*with]);
        println!(
            "interleaved, {rounds} rounds of {BATCH}, {name}: medians: Engine::verify {v:.0} ns, \
             without {wo:.0} ns, with {w:.0} ns, added ÷ verify {:.2}×; median of the rounds' \
             ratios {:.2}×; fastest rounds: {v_min:.0} / {wo_min:.0} / {w_min:.0} ns, added ÷ \
             verify {:.2}×",
            (w - wo) / v,
            summary(ratio).1,
            (w_min - wo_min) / v_min
        );
    }
}

criterion_group!(layer, benches);
criterion_main!(layer);
