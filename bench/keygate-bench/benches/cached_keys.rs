//! The in-process verify path with 1 k and 1 M keys in the cache, next to its floor
//! (HMAC-SHA256 of the key plus a bare `HashMap` lookup over as many digests), visiting the
//! keys in a fixed shuffled order: at 1 M keys every lookup is a cache-cold memory access,
//! for the floor as for keygate.
//!
//! Run: `cargo bench -p keygate-bench --bench cached_keys`
//! Sizes: `KEYGATE_BENCH_SIZES=1000,1000000` (the default; loading and warming 1 M keys
//! takes about a minute). CI smoke (each benchmark once, debug build):
//! `KEYGATE_BENCH_SIZES=1000 cargo test -p keygate-bench --benches`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures::FutureExt;
use keygate_bench::{key_format, pepper, shuffled, unknown_key, CachedFixture};
use keygate_core::{KeyDigest, PermissionSet, RouteTable};
use keygate_engine::{Verdict, VerifyRequest};

fn sizes() -> Vec<u64> {
    std::env::var("KEYGATE_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,1000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("KEYGATE_BENCH_SIZES: comma-separated numbers")
        })
        .collect()
}

fn label(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

/// Cycles through `keys` (one per call).
struct Cursor<'a> {
    keys: &'a [String],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(keys: &'a [String]) -> Self {
        Cursor { keys, at: 0 }
    }

    fn next(&mut self) -> &'a str {
        let key = &self.keys[self.at];
        self.at += 1;
        if self.at == self.keys.len() {
            self.at = 0;
        }
        key
    }
}

/// `keys` in a fixed shuffled order, copied into fresh strings laid out one after the
/// other: the benchmark reads the request's key sequentially (as a server reads it from a
/// buffer it just filled), while the cache entries it leads to, filled in key order, are
/// visited in random order.
fn visiting_order(keys: &[String], seed: u64) -> Vec<String> {
    shuffled(keys.len(), seed)
        .into_iter()
        .map(|i| keys[i].clone())
        .collect()
}

fn verify_now(f: &CachedFixture, request: &VerifyRequest<'_>) -> Verdict {
    f.engine
        .verify(request)
        .now_or_never()
        .expect("a cached answer never waits")
        .expect("no store error")
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pepper = pepper();
    let required = RouteTable::default().required("GET", "/api/v1/invoices/42");
    for n in sizes() {
        let started = std::time::Instant::now();
        let f = rt.block_on(CachedFixture::new(n)).expect("fixture");
        eprintln!(
            "{} keys loaded and cached in {:.1} s",
            label(n),
            started.elapsed().as_secs_f64()
        );
        // As many unknown keys as the negative cache surely holds (it keeps up to 100 000).
        let unknown: Vec<String> = (0..n.min(10_000)).map(unknown_key).collect();
        rt.block_on(async {
            for k in &unknown {
                let request = VerifyRequest {
                    key: k,
                    ..Default::default()
                };
                let verdict = f.engine.verify(&request).await.expect("store answers");
                assert!(!verdict.outcome.is_valid());
            }
        });
        let visit = visiting_order(&f.keys, 42);
        let unknown_visit = visiting_order(&unknown, 43);
        let map: HashMap<KeyDigest, u64> = f
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (pepper.digest(k.as_bytes()), i as u64))
            .collect();
        let size = label(n);
        let mut group = c.benchmark_group("cached_keys");

        group.bench_function(
            BenchmarkId::new("floor: HMAC + HashMap lookup", &size),
            |b| {
                let mut cursor = Cursor::new(&visit);
                b.iter(|| {
                    let key = cursor.next();
                    black_box(map.get(&pepper.digest(black_box(key).as_bytes())))
                })
            },
        );
        group.bench_function(BenchmarkId::new("floor: HMAC-SHA256", &size), |b| {
            let mut cursor = Cursor::new(&visit);
            b.iter(|| {
                let key = cursor.next();
                black_box(pepper.digest(black_box(key).as_bytes()))
            })
        });
        let format = key_format();
        group.bench_function(BenchmarkId::new("parse + checksum", &size), |b| {
            let mut cursor = Cursor::new(&visit);
            b.iter(|| black_box(format.parse(black_box(cursor.next()))))
        });
        group.bench_function(BenchmarkId::new("keygate verify, cache hit", &size), |b| {
            let mut cursor = Cursor::new(&visit);
            b.iter(|| {
                let request = VerifyRequest {
                    key: cursor.next(),
                    ..Default::default()
                };
                black_box(verify_now(&f, black_box(&request)).outcome)
            })
        });
        group.bench_function(
            BenchmarkId::new("keygate verify, cache hit, with permission", &size),
            |b| {
                let mut cursor = Cursor::new(&visit);
                b.iter(|| {
                    let request = VerifyRequest {
                        key: cursor.next(),
                        required: Some(&required),
                        client_ip: None,
                    };
                    black_box(verify_now(&f, black_box(&request)).outcome)
                })
            },
        );
        group.bench_function(
            BenchmarkId::new(
                "keygate verify, cache hit, with permission and client IP",
                &size,
            ),
            |b| {
                let mut cursor = Cursor::new(&visit);
                let ip = "203.0.113.7".parse().unwrap();
                b.iter(|| {
                    let request = VerifyRequest {
                        key: cursor.next(),
                        required: Some(&required),
                        client_ip: Some(ip),
                    };
                    black_box(verify_now(&f, black_box(&request)).outcome)
                })
            },
        );
        group.bench_function(
            BenchmarkId::new("keygate verify, unknown key (negative cache)", &size),
            |b| {
                let mut cursor = Cursor::new(&unknown_visit);
                b.iter(|| {
                    let request = VerifyRequest {
                        key: cursor.next(),
                        ..Default::default()
                    };
                    black_box(verify_now(&f, black_box(&request)).outcome)
                })
            },
        );
        group.bench_function(
            BenchmarkId::new("keygate verify, malformed key", &size),
            |b| {
                let malformed: Vec<String> = unknown_visit
                    .iter()
                    .map(|k| {
                        // A typo in the checksum: the parser refuses it.
                        let last = if k.ends_with('0') { '1' } else { '0' };
                        format!("{}{last}", &k[..k.len() - 1])
                    })
                    .collect();
                let mut cursor = Cursor::new(&malformed);
                b.iter(|| {
                    let request = VerifyRequest {
                        key: cursor.next(),
                        ..Default::default()
                    };
                    black_box(verify_now(&f, black_box(&request)).outcome)
                })
            },
        );
        let grants = PermissionSet::preset("read").expect("the read preset");
        if let keygate_core::Required::Permission(p) = &required {
            group.bench_function(BenchmarkId::new("permission match", &size), |b| {
                b.iter(|| black_box(grants.allows(black_box(p))))
            });
        }
        group.finish();
        drop(f);
    }
}

criterion_group!(cached_keys, benches);
criterion_main!(cached_keys);
