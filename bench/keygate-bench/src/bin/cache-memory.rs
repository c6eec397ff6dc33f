//! Resident memory per cached key: loads bench keys `0..N` into a database, verifies each
//! once in a fresh engine as forward-auth does (`GET /api/v1/invoices/42`, from a client
//! address), so all are cached, each with its usage cell, its recent address and the
//! permission it was used with, and prints the growth of the process's resident memory
//! (VmRSS) divided by N.
//!
//! ```text
//! cargo run --release -p keygate-bench --bin cache-memory -- [URL] [N,N,...]
//! ```
//!
//! URL: `postgres://…/db` (a server on which the bench creates, and then drops, a database
//! of its own) or `sqlite` (the default: a temporary file). N defaults to `100000,1000000`;
//! each size runs in a child process of its own, so one size's heap does not blur the next.
//! With PostgreSQL the database's page cache is in another process, so the figure is the
//! cache's own (plus allocator overhead and fragmentation, as a server has them); with
//! SQLite it also holds SQLite's page cache (a few MiB, bounded).

use anyhow::{bail, Context};
use futures::StreamExt;
use keygate_bench::{bulk_load, engine, is_postgres, key, open_store, rss_bytes, secs};
use keygate_core::RouteTable;
use keygate_engine::{Engine, VerifyRequest};

/// Verifies `keys` once each, 16 at a time, as forward-auth asks for a request to
/// `GET /api/v1/invoices/42` from 203.0.113.7. Panics on a key that is not valid.
async fn verify_each(engine: &Engine, keys: &[String]) {
    let required = RouteTable::default().required("GET", "/api/v1/invoices/42");
    let client_ip = "203.0.113.7".parse().ok();
    futures::stream::iter(keys)
        .for_each_concurrent(16, |k| {
            let required = &required;
            async move {
                let request = VerifyRequest {
                    key: k,
                    required: Some(required),
                    client_ip,
                };
                let verdict = engine.verify(&request).await.expect("the store answers");
                assert!(
                    verdict.outcome.is_valid(),
                    "bench key {k:.12}… is not valid"
                );
            }
        })
        .await;
}
use sqlx::Connection;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).cloned().unwrap_or_else(|| "sqlite".into());
    let sizes = args
        .get(2)
        .map_or("100000,1000000", String::as_str)
        .to_owned();
    if let Ok(n) = std::env::var("KEYGATE_CACHE_MEMORY_CHILD") {
        return measure(&url, n.parse().context("bad N")?);
    }
    for n in sizes.split(',') {
        let status = std::process::Command::new(&args[0])
            .arg(&url)
            .env("KEYGATE_CACHE_MEMORY_CHILD", n.trim())
            .status()?;
        if !status.success() {
            bail!("the measurement with {n} keys failed");
        }
    }
    Ok(())
}

fn measure(url: &str, n: u64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    rt.block_on(async {
        let (url, database) = if is_postgres(url) {
            let name = format!("kg_cache_memory_{}", std::process::id());
            let mut admin = sqlx::PgConnection::connect(url).await?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await?;
            let (server, _) = url.rsplit_once('/').context("a URL ending in /database")?;
            (format!("{server}/{name}"), Some((admin, name)))
        } else {
            (format!("sqlite://{}/bench.db", dir.path().display()), None)
        };
        let measured = measure_in(&url, n).await;
        if let Some((mut admin, name)) = database {
            sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
        }
        measured
    })
}

async fn measure_in(url: &str, n: u64) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let store = open_store(url).await?;
    bulk_load(url, 0, n, |_| {}).await?;
    let keys: Vec<String> = (0..n).map(key).collect();
    let engine = engine(store, n + n / 4 + 1000);
    // One key first: what is made once (connections, statements, interned grants)
    // is not counted per key.
    verify_each(&engine, &keys[..1]).await;
    let before = rss_bytes().context("no VmRSS")?;
    verify_each(&engine, &keys).await;
    let after = rss_bytes().context("no VmRSS")?;
    let cached = engine.cached_keys();
    if cached < n {
        bail!("only {cached} of {n} keys are cached");
    }
    println!(
            "backend={} keys={n} rss_before_mib={:.1} rss_after_mib={:.1} bytes_per_cached_key={:.0} seconds={:.1}",
            if is_postgres(url) { "postgres" } else { "sqlite" },
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            after.saturating_sub(before) as f64 / n as f64,
            secs(started),
        );
    Ok(())
}
