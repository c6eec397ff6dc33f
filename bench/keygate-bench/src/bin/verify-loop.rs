//! A tight loop over one hot-path operation, for profilers (instruction counts do not
//! depend on the machine's load):
//!
//! ```text
//! cargo build --profile bench -p keygate-bench --bin verify-loop
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*' \
//!     target/release/verify-loop verify 100000 1000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//!
//! Arguments: WHAT (`verify`, `verify-permission`, `verify-ip`, `invalid`, `malformed`,
//! `floor`, `hmac`, `parse`, or several of them comma-separated), ITERATIONS (default 1 000 000), KEYS cached (default 1 000). Prints ns per
//! iteration (meaningless under valgrind, useful without).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use futures::FutureExt;
use keygate_bench::{key_format, pepper, shuffled, unknown_key, CachedFixture};
use keygate_core::{KeyDigest, RouteTable};
use keygate_engine::VerifyRequest;

/// `keys` in a fixed shuffled order, as fresh strings one after the other (see
/// benches/cached_keys.rs): the key is read sequentially, its cache entry at random.
fn visiting_order(keys: &[String], seed: u64) -> Vec<String> {
    shuffled(keys.len(), seed)
        .into_iter()
        .map(|i| keys[i].clone())
        .collect()
}

#[inline(never)]
fn measured(
    what: &str,
    f: &CachedFixture,
    unknown: &[String],
    iterations: usize,
) -> (u64, std::time::Duration) {
    let mut acc = 0u64;
    let required = RouteTable::default().required("GET", "/api/v1/invoices/42");
    let ip = "203.0.113.7".parse().ok();
    let keys = match what {
        "invalid" => visiting_order(unknown, 43),
        "malformed" => visiting_order(&f.keys, 42)
            .iter()
            .map(|k| k.replace("kg_live_", "kg_lyve_"))
            .collect(),
        _ => visiting_order(&f.keys, 42),
    };
    let n = keys.len();
    let pepper = pepper();
    let map: HashMap<KeyDigest, u64> = if what == "floor" {
        f.keys
            .iter()
            .enumerate()
            .map(|(i, k)| (pepper.digest(k.as_bytes()), i as u64))
            .collect()
    } else {
        HashMap::new()
    };
    let started = Instant::now();
    match what {
        "verify" | "verify-permission" | "verify-ip" | "invalid" | "malformed" => {
            for i in 0..iterations {
                let request = VerifyRequest {
                    key: &keys[i % n],
                    required: (what == "verify-permission" || what == "verify-ip")
                        .then_some(&required),
                    client_ip: if what == "verify-ip" { ip } else { None },
                };
                let verdict = f.engine.verify(black_box(&request)).now_or_never();
                let verdict = verdict
                    .expect("a cache hit never waits")
                    .expect("no store error");
                acc += verdict.outcome.is_valid() as u64;
            }
        }
        "floor" | "hmac" => {
            for i in 0..iterations {
                let digest = pepper.digest(black_box(&keys[i % n]).as_bytes());
                if what == "floor" {
                    acc += map.get(&digest).copied().unwrap_or(0);
                } else {
                    acc += digest.0[0] as u64;
                }
            }
        }
        "parse" => {
            let format = key_format();
            for i in 0..iterations {
                acc += format.parse(black_box(&keys[i % n])).is_ok() as u64;
            }
        }
        other => panic!("unknown operation {other}"),
    }
    (acc, started.elapsed())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let what = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("verify")
        .to_owned();
    let iterations: usize = args.get(2).map_or(Ok(1_000_000), |s| s.parse())?;
    let n: u64 = args.get(3).map_or(Ok(1000), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let fixture = rt.block_on(CachedFixture::new(n))?;
    // Unknown keys: asked once, so that the loop measures the negative cache.
    let unknown: Vec<String> = (0..n.min(10_000)).map(unknown_key).collect();
    if what.split(',').any(|w| w == "invalid") {
        rt.block_on(async {
            for k in &unknown {
                let request = VerifyRequest {
                    key: k,
                    ..Default::default()
                };
                let verdict = fixture
                    .engine
                    .verify(&request)
                    .await
                    .expect("store answers");
                assert!(!verdict.outcome.is_valid());
            }
        });
    }
    {
        let request = VerifyRequest {
            key: &fixture.keys[0],
            ..Default::default()
        };
        let future = fixture.engine.verify(&request);
        eprintln!(
            "the verify future is {} bytes",
            std::mem::size_of_val(&future)
        );
    }
    // The loop runs outside the runtime, like criterion's iterations: on a cache hit the
    // verify future completes on its first poll.
    // Several operations, comma-separated, run one after the other on the same keys.
    for what in what.split(',') {
        let (acc, elapsed) = measured(what, &fixture, &unknown, iterations);
        println!(
            "{what}: {iterations} iterations over {n} keys: {:.1} ns/iteration (checksum {acc})",
            elapsed.as_nanos() as f64 / iterations as f64
        );
    }
    drop(fixture);
    Ok(())
}
