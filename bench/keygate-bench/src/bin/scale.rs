//! Scale measurements with many keys (driven by bench/scale/run.sh; every subcommand prints
//! one line of `name=value` pairs that the script collects):
//!
//! ```text
//! scale load URL N                   bulk-insert bench keys 0..N (multi-row INSERTs): the
//!                                    loading floor; prints seconds and database size
//! scale export-file N FILE           the same keys as a `keygate import` file
//! scale create URL N                 N keys through the engine's create path (validation,
//!                                    plan cap, audit event, one commit per key)
//! scale miss URL N SAMPLES           cache-miss verifications of SAMPLES random keys of 0..N
//!                                    in a fresh engine, one at a time: p50/p99/max
//! scale hit URL N                    cache-hit verifications spread over keys 0..N
//! scale keys FROM TO                 the bench keys FROM..TO, one a line
//! scale wait-ready URL SINCE_NS      polls URL every millisecond until it answers 200;
//!                                    prints the milliseconds since SINCE_NS (unix ns)
//! scale warm ADDR FROM TO CONC       GET /v1/auth (for GET /api/v1/invoices/42) with bench
//!                                    keys FROM..TO over CONC keep-alive connections (fills
//!                                    a server's cache)
//! ```
//!
//! URL is `sqlite://…` or `postgres://…`; the database must use the bench pepper
//! (`KEYGATE_PEPPER=0707…07`, [`keygate_bench::PEPPER_HEX`]).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keygate_bench::{
    bulk_load, engine, is_postgres, key, key_format, open_store, pepper, percentile, rss_bytes,
    secs, shuffled, ACCOUNT_ID, PEPPER_HEX,
};
use keygate_engine::manage::{Caller, NewAccount, NewKey};
use keygate_engine::VerifyRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> anyhow::Result<T> {
    args.get(i)
        .with_context(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| anyhow::anyhow!("bad {what}"))
}

/// Bytes the database takes: the SQLite file and its WAL, or PostgreSQL's database size.
async fn database_size(url: &str) -> anyhow::Result<u64> {
    if is_postgres(url) {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await?;
        let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&pool)
            .await?;
        Ok(size as u64)
    } else {
        let path = url
            .strip_prefix("sqlite://")
            .context("an sqlite:// URL")?
            .split('?')
            .next()
            .unwrap_or_default();
        let mut total = 0;
        for suffix in ["", "-wal", "-shm"] {
            if let Ok(m) = std::fs::metadata(format!("{path}{suffix}")) {
                total += m.len();
            }
        }
        Ok(total)
    }
}

async fn load(url: &str, n: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    drop(open_store(url).await?);
    let mut last = Instant::now();
    bulk_load(url, 0, n, |done| {
        if last.elapsed() > Duration::from_secs(10) {
            eprintln!("  {done} keys after {:.0} s", secs(started));
            last = Instant::now();
        }
    })
    .await?;
    let seconds = secs(started);
    println!(
        "keys={n} seconds={seconds:.2} keys_per_second={:.0} database_bytes={}",
        n as f64 / seconds,
        database_size(url).await?
    );
    Ok(())
}

/// A file `keygate import` takes: header, the pepper check, the bench account, N keys, end.
fn export_file(n: u64, path: &str) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let format = key_format();
    let pepper = pepper();
    let now = keygate_engine::now_ms();
    writeln!(
        out,
        r#"{{"format":"keygate-export","version":1,"keygate":"bench","exported_at":{now}}}"#
    )?;
    writeln!(
        out,
        r#"{{"type":"setting","name":"pepper_check","value":"{}"}}"#,
        pepper.digest(b"keygate pepper check v1").to_hex()
    )?;
    writeln!(
        out,
        r#"{{"type":"account","id":"{ACCOUNT_ID}","name":"bench","plan":"unlimited","created_at":{now}}}"#
    )?;
    for i in 0..n {
        let secret = key(i);
        writeln!(
            out,
            r#"{{"type":"key","id":"{}","account_id":"{ACCOUNT_ID}","name":"bench {i}","display_prefix":"{}","digest":"{}","environment":"live","permissions":["*.read"],"ip_allowlist":[],"rate_limit":null,"quota":null,"quota_used":0,"quota_refilled_at":null,"meta":{{}},"created_at":{now},"last_used_at":null,"expires_at":null,"revoked_at":null,"rotated_from":null,"recent_ips":[]}}"#,
            keygate_bench::key_id(i),
            format.display_prefix(&secret).expect("bench keys parse"),
            pepper.digest(secret.as_bytes()).to_hex(),
        )?;
    }
    writeln!(
        out,
        r#"{{"type":"end","settings":1,"accounts":1,"keys":{n},"audit_events":0,"usage_counts":0}}"#
    )?;
    out.flush()?;
    Ok(())
}

async fn create(url: &str, n: u64) -> anyhow::Result<()> {
    let store = open_store(url).await?;
    let engine = engine(store, 1000);
    let admin = Caller::admin(None);
    let account = engine
        .create_account(
            &admin,
            NewAccount {
                name: "create bench".into(),
                plan: Some("unlimited".into()),
            },
        )
        .await?;
    let mut times = Vec::with_capacity(n as usize);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        engine
            .create_key(
                &admin,
                NewKey {
                    account_id: Some(account.id.clone()),
                    name: format!("created {i}"),
                    scope: Some("read".into()),
                    ..NewKey::default()
                },
            )
            .await?;
        times.push(t.elapsed());
    }
    let seconds = secs(started);
    times.sort();
    println!(
        "keys={n} seconds={seconds:.2} keys_per_second={:.0} p50_ms={:.3} p99_ms={:.3} extrapolated_1m_seconds={:.0}",
        n as f64 / seconds,
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 99.0)),
        1e6 * seconds / n as f64
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Cache misses: a fresh engine (empty cache) verifies `samples` distinct keys of 0..n, one
/// at a time, each read from the store.
async fn miss(url: &str, n: u64, samples: usize) -> anyhow::Result<()> {
    let store = open_store(url).await?;
    let engine = engine(store, 200_000);
    let order = shuffled(n as usize, 7);
    // A few unmeasured reads first: the connection pool and the page cache's first touch.
    for &i in order.iter().rev().take(100) {
        let k = key(i as u64);
        engine
            .verify(&VerifyRequest {
                key: &k,
                ..Default::default()
            })
            .await?;
    }
    let keys: Vec<String> = order.iter().take(samples).map(|&i| key(i as u64)).collect();
    let mut times = Vec::with_capacity(samples);
    for k in &keys {
        let t = Instant::now();
        let verdict = engine
            .verify(&VerifyRequest {
                key: k,
                ..Default::default()
            })
            .await?;
        times.push(t.elapsed());
        if !verdict.outcome.is_valid() {
            bail!("bench key not valid: is the database loaded with the bench pepper?");
        }
    }
    times.sort();
    println!(
        "keys={n} samples={samples} p50_us={:.1} p90_us={:.1} p99_us={:.1} max_us={:.1}",
        us(percentile(&times, 50.0)),
        us(percentile(&times, 90.0)),
        us(percentile(&times, 99.0)),
        us(*times.last().unwrap_or(&Duration::ZERO))
    );
    Ok(())
}

/// Cache hits spread over keys 0..n (all cached first), timed one by one.
async fn hit(url: &str, n: u64) -> anyhow::Result<()> {
    let store = open_store(url).await?;
    let engine = engine(store, n + n / 4 + 1000);
    let keys: Vec<String> = shuffled(n as usize, 9)
        .into_iter()
        .map(|i| key(i as u64))
        .collect();
    let rss_before = rss_bytes().unwrap_or(0);
    keygate_bench::warm(&engine, &keys, 16).await;
    let rss_after = rss_bytes().unwrap_or(0);
    let rounds = (2_000_000 / n as usize).max(1);
    let mut times = Vec::with_capacity(rounds * keys.len());
    for _ in 0..rounds {
        for k in &keys {
            let t = Instant::now();
            let v = engine
                .verify(&VerifyRequest {
                    key: k,
                    ..Default::default()
                })
                .await?;
            times.push(t.elapsed());
            assert!(v.outcome.is_valid());
        }
    }
    times.sort();
    println!(
        "keys={n} verifications={} p50_ns={:.0} p99_ns={:.0} in_process_bytes_per_cached_key={:.0}",
        times.len(),
        percentile(&times, 50.0).as_nanos(),
        percentile(&times, 99.0).as_nanos(),
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64
    );
    Ok(())
}

async fn wait_ready(url: &str, since_ns: u128) -> anyhow::Result<()> {
    let url = url.strip_prefix("http://").context("an http:// URL")?;
    let (addr, path) = url.split_once('/').unwrap_or((url, ""));
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            if s.write_all(request.as_bytes()).await.is_ok() {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                if buf.starts_with(b"HTTP/1.1 200") {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_nanos();
                    println!("ready_ms={:.1}", (now - since_ns) as f64 / 1e6);
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("{url} did not answer 200 within 600 s")
}

/// Reads one HTTP/1.1 answer from `s` (headers and a Content-Length body); its status.
async fn read_answer(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?.to_owned();
            let status: u16 = head.get(9..12).context("a status line")?.parse()?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let mut chunk = [0u8; 4096];
                let got = s.read(&mut chunk).await?;
                if got == 0 {
                    bail!("connection closed");
                }
                buf.extend_from_slice(&chunk[..got]);
            }
            buf.drain(..end + 4 + length);
            return Ok(status);
        }
        let mut chunk = [0u8; 4096];
        let got = s.read(&mut chunk).await?;
        if got == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

async fn warm(addr: &str, from: u64, to: u64, concurrency: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let addr = addr.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            let mut buf = Vec::new();
            let mut refused = 0u64;
            let mut i = from + c;
            while i < to {
                let request = format!(
                    "GET /v1/auth HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nX-Original-Method: GET\r\nX-Original-URI: /api/v1/invoices/42\r\n\r\n",
                    key(i)
                );
                s.write_all(request.as_bytes()).await?;
                if read_answer(&mut s, &mut buf).await? != 204 {
                    refused += 1;
                }
                i += concurrency;
            }
            anyhow::Ok(refused)
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await??;
    }
    println!(
        "warmed={} seconds={:.2} refused={refused}",
        to - from,
        secs(started)
    );
    if refused > 0 {
        bail!("{refused} bench keys were refused");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = || args.get(2).cloned().context("missing URL");
    match args.get(1).map(String::as_str) {
        Some("load") => load(&url()?, arg(&args, 3, "N")?).await,
        Some("export-file") => export_file(arg(&args, 2, "N")?, &arg::<String>(&args, 3, "FILE")?),
        Some("create") => create(&url()?, arg(&args, 3, "N")?).await,
        Some("miss") => miss(&url()?, arg(&args, 3, "N")?, arg(&args, 4, "SAMPLES")?).await,
        Some("hit") => hit(&url()?, arg(&args, 3, "N")?).await,
        Some("keys") => {
            let (from, to): (u64, u64) = (arg(&args, 2, "FROM")?, arg(&args, 3, "TO")?);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for i in from..to {
                writeln!(out, "{}", key(i))?;
            }
            Ok(())
        }
        Some("wait-ready") => wait_ready(&url()?, arg(&args, 3, "SINCE_NS")?).await,
        Some("warm") => {
            warm(
                &url()?,
                arg(&args, 3, "FROM")?,
                arg(&args, 4, "TO")?,
                arg(&args, 5, "CONC")?,
            )
            .await
        }
        Some("pepper") => {
            println!("{PEPPER_HEX}");
            Ok(())
        }
        _ => bail!("usage: see the top of bench/keygate-bench/src/bin/scale.rs"),
    }
}
