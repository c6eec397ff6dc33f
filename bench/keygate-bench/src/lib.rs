//! Fixtures for keygate's benchmark programs: deterministic keys that parse, bulk loading
//! of key records into a store's database (SQLite or PostgreSQL), and an engine over it.
//!
//! The keys are the same in every run (`key(i)`), so a loader, a server and a load
//! generator started separately agree on them without passing a million secrets around.
//! The pepper is fixed too ([`PEPPER_HEX`]): these are benchmark databases, never real ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use keygate_core::key::RANDOM_BYTES;
use keygate_core::{Environment, KeyFormat, Pepper, RouteTable};
use keygate_engine::{Engine, EngineConfig, Plans, VerifyRequest};
use keygate_store::Store;

/// The benchmark pepper: 32 bytes of 7.
pub const PEPPER: [u8; 32] = [7; 32];
/// [`PEPPER`] as `KEYGATE_PEPPER` takes it.
pub const PEPPER_HEX: &str = "0707070707070707070707070707070707070707070707070707070707070707";
/// The one account every bench key belongs to (plan `unlimited`).
pub const ACCOUNT_ID: &str = "acct_000000000000000000bench";
/// Permissions of every bench key (the `read` preset).
pub const PERMISSIONS: &str = r#"["*.read"]"#;

pub fn key_format() -> KeyFormat {
    KeyFormat::new("kg", true).expect("kg is a valid prefix")
}

pub fn pepper() -> Pepper {
    Pepper::new(PEPPER.to_vec())
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`-th bench key, `kg_live_<64 hex>` with a valid checksum; the same in every run.
pub fn key(i: u64) -> String {
    let mut state = i ^ 0x6b65_7967_6174_6521;
    let mut random = [0u8; RANDOM_BYTES];
    for chunk in random.chunks_mut(8) {
        let word = splitmix64(&mut state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    key_format()
        .assemble(Environment::Live, &random)
        .expose()
        .to_owned()
}

/// A well-formed key (valid checksum) that no bench database holds.
pub fn unknown_key(i: u64) -> String {
    key(u64::MAX - i)
}

/// The `i`-th bench key's id: as long as a real one (`key_` + 24 hex).
pub fn key_id(i: u64) -> String {
    format!("key_{i:024x}")
}

/// Which database a URL names.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the store for `url` (creating and migrating its schema).
pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    Ok(if is_postgres(url) {
        Arc::new(keygate_store::postgres::PostgresStore::open(url, true).await?)
    } else {
        Arc::new(keygate_store::sqlite::SqliteStore::open(url).await?)
    })
}

/// Rows per multi-row INSERT (10 columns each: under SQLite's and PostgreSQL's limits).
const ROWS_PER_INSERT: usize = 1000;
/// Rows per transaction.
const ROWS_PER_TX: u64 = 50_000;

macro_rules! bulk_insert {
    ($pool:expr, $db:ty, $from:expr, $to:expr, $progress:expr) => {{
        let pool = &$pool;
        let format = key_format();
        let pepper = pepper();
        let now = keygate_engine::now_ms();
        sqlx::query(
            "INSERT INTO accounts (id, name, plan, created_at) VALUES ($1, 'bench', 'unlimited', $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(ACCOUNT_ID)
        .bind(now)
        .execute(pool)
        .await?;
        let mut next = $from;
        while next < $to {
            let tx_end = (next + ROWS_PER_TX).min($to);
            let mut tx = pool.begin().await?;
            while next < tx_end {
                let end = (next + ROWS_PER_INSERT as u64).min(tx_end);
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO api_keys (id, account_id, name, display_prefix, digest, \
                     environment, permissions, ip_allowlist, meta, created_at) ",
                );
                qb.push_values(next..end, |mut row, i| {
                    let secret = key(i);
                    row.push_bind(key_id(i))
                        .push_bind(ACCOUNT_ID)
                        .push_bind(format!("bench {i}"))
                        .push_bind(format.display_prefix(&secret).expect("bench keys parse"))
                        .push_bind(pepper.digest(secret.as_bytes()).0.to_vec())
                        .push_bind("live")
                        .push_bind(PERMISSIONS)
                        .push_bind("[]")
                        .push_bind("{}")
                        .push_bind(now);
                });
                qb.build().execute(&mut *tx).await?;
                next = end;
            }
            tx.commit().await?;
            $progress(next);
        }
    }};
}

/// Inserts bench keys `from..to` (and the bench account) straight into the database at
/// `url`, whose schema must exist ([`open_store`]): multi-row INSERTs, 50 000 rows per
/// transaction. This is the bulk-load floor, not the create API (which writes an audit
/// event and commits, with `synchronous=FULL` on SQLite, per key).
pub async fn bulk_load(
    url: &str,
    from: u64,
    to: u64,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<()> {
    if is_postgres(url) {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .context("connecting to PostgreSQL")?;
        bulk_insert!(pool, sqlx::Postgres, from, to, progress);
    } else {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
        use std::str::FromStr;
        let options = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .context("opening SQLite")?;
        bulk_insert!(pool, sqlx::Sqlite, from, to, progress);
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&pool)
            .await?;
    }
    Ok(())
}

/// An engine as `keygate serve` builds one by default, with the bench pepper, a cache of
/// `cache_capacity` keys and TTLs (positive and negative) long enough that a benchmark
/// never refreshes.
pub fn engine(store: Arc<dyn Store>, cache_capacity: u64) -> Arc<Engine> {
    Engine::new(
        store,
        EngineConfig {
            key_format: key_format(),
            pepper: pepper(),
            routes: RouteTable::default(),
            plans: Plans::reference(),
            cache_capacity,
            cache_ttl: Duration::from_secs(3600),
            negative_cache_ttl: Duration::from_secs(3600),
            stale_if_error: Duration::from_secs(300),
            usage_retention: Duration::from_secs(90 * 86_400),
        },
    )
}

/// Verifies `keys` once each (`concurrency` at a time): fills the cache. Panics on a key
/// that is not valid.
pub async fn warm(engine: &Engine, keys: &[String], concurrency: usize) {
    use futures::StreamExt;
    futures::stream::iter(keys)
        .for_each_concurrent(concurrency, |k| async move {
            let verdict = engine
                .verify(&VerifyRequest {
                    key: k,
                    ..Default::default()
                })
                .await
                .expect("the store answers");
            assert!(
                verdict.outcome.is_valid(),
                "bench key {k:.12}… is not valid"
            );
        })
        .await;
}

/// A temporary SQLite database holding bench keys `0..n`, with an engine over it whose
/// cache holds all of them.
pub struct CachedFixture {
    pub engine: Arc<Engine>,
    pub keys: Vec<String>,
    _dir: tempfile::TempDir,
}

impl CachedFixture {
    pub async fn new(n: u64) -> anyhow::Result<CachedFixture> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/bench.db", dir.path().display());
        let store = open_store(&url).await?;
        bulk_load(&url, 0, n, |_| {}).await?;
        let engine = engine(store, n + n / 4 + 1000);
        let keys: Vec<String> = (0..n).map(key).collect();
        warm(&engine, &keys, 16).await;
        Ok(CachedFixture {
            engine,
            keys,
            _dir: dir,
        })
    }
}

/// A fixed pseudo-random visiting order over `0..n` (every index once per round).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Percentile (0..=100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Resident memory of this process, in bytes (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Seconds since `t`, for progress lines.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_keys_parse_and_differ() {
        let format = key_format();
        for i in [0, 1, 2, 999_999] {
            format.parse(&key(i)).unwrap();
        }
        format.parse(&unknown_key(0)).unwrap();
        assert_ne!(key(0), key(1));
        assert_eq!(key(42), key(42));
    }

    #[test]
    fn shuffled_visits_every_index_once() {
        let mut order = shuffled(1000, 7);
        order.sort_unstable();
        assert_eq!(order, (0..1000).collect::<Vec<_>>());
    }
}
