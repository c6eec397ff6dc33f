//! The embedded SQLite backend: WAL mode, `synchronous=FULL` (an acknowledged write survives
//! a crash), writes in `BEGIN IMMEDIATE` transactions (SQLite's single writer makes plan
//! caps exact). The queries are shared with PostgreSQL (`sql.rs`).

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use keygate_core::KeyDigest;
use tokio::sync::mpsc;

use crate::migrate::Migration;
use crate::sql::{db_error, sql_store, Dialect};
use crate::{Change, Result, StoreError};

/// keygate's store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Usage flushes only, on a low-priority thread (`sqlite_usage`).
    usage_pool: SqlitePool,
}

impl SqliteStore {
    const DIALECT: Dialect = Dialect {
        for_update: "",
        lock_account: None,
        greatest: "MAX",
        notify_key_change: Some(
            "INSERT INTO key_changes (digests, changed_at) \
             VALUES ($1, CAST(strftime('%s', 'now') AS INTEGER))",
        ),
        migration_lock: None,
    };
    const MIGRATIONS: &'static [Migration] = crate::migrate::SQLITE;

    /// Opens (creating if missing) the database at `url` (`sqlite://path` or `sqlite:path`)
    /// and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // Several processes opening a new file at once race to switch it to WAL; SQLite
        // answers "database is locked" at once instead of waiting. Retry briefly.
        let mut attempt = 0;
        let pool = loop {
            let result = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options.clone())
                .await;
            match result {
                Err(sqlx::Error::Database(e)) if attempt < 50 && e.message().contains("locked") => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt.min(10))).await;
                }
                other => break other.map_err(db_error)?,
            }
        };
        let usage_pool = crate::sqlite_usage::usage_pool(&options);
        let store = SqliteStore { pool, usage_pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Key changes committed through any handle on this file (another process, the CLI),
    /// read from the `key_changes` table every [`POLL_INTERVAL`]. When the table cannot be
    /// read, or rows were pruned before they were read, [`Change::Resync`] is sent.
    pub async fn change_feed(&self) -> Result<Option<mpsc::Receiver<Change>>> {
        let last_seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'key_changes'), 0)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(poll_key_changes(self.pool.clone(), last_seq, tx));
        Ok(Some(rx))
    }

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction that holds SQLite's write lock from its first statement, so a
    /// read-then-write cannot fail half way on a lock upgrade.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }

    /// [`Self::write`] for usage flushes: on the usage connection.
    async fn usage_write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.usage_pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }
}

/// How often a reader looks for new key changes: well inside the 1 s the embedded layer
/// promises, and cheap (one indexed range read).
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long change rows are kept: a reader that falls further behind resyncs.
const KEEP_CHANGES_SECONDS: i64 = 3600;
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const ROWS_PER_READ: i64 = 1000;

async fn poll_key_changes(pool: SqlitePool, mut last_seq: i64, tx: mpsc::Sender<Change>) {
    let mut failing = false;
    let mut last_prune = Instant::now();
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        let changes = match read_key_changes(&pool, last_seq).await {
            Ok(changes) => changes,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read key changes; will resync");
                }
                failing = true;
                continue;
            }
        };
        // Rows pruned before this reader saw them: what they said is unknown.
        let gap = changes.first().is_some_and(|(seq, _)| *seq > last_seq + 1);
        let resync = std::mem::take(&mut failing) || gap;
        if resync && tx.send(Change::Resync).await.is_err() {
            return;
        }
        for (seq, digests) in changes {
            last_seq = seq;
            for digest in digests.split(',') {
                let change = KeyDigest::from_hex(digest).map_or(Change::Resync, Change::Key);
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            if let Err(e) = prune_key_changes(&pool).await {
                tracing::debug!(error = %e, "cannot prune key changes yet");
            }
        }
    }
}

/// Every change after `after`, oldest first (all of them, a thousand rows a read).
async fn read_key_changes(pool: &SqlitePool, after: i64) -> Result<Vec<(i64, String)>> {
    let mut changes: Vec<(i64, String)> = Vec::new();
    loop {
        let from = changes.last().map_or(after, |(seq, _)| *seq);
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, digests FROM key_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(from)
        .bind(ROWS_PER_READ)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        let full = rows.len() as i64 == ROWS_PER_READ;
        changes.extend(rows);
        if !full {
            return Ok(changes);
        }
    }
}

async fn prune_key_changes(pool: &SqlitePool) -> Result<()> {
    sqlx::query(
        "DELETE FROM key_changes \
         WHERE changed_at < CAST(strftime('%s', 'now') AS INTEGER) - $1",
    )
    .bind(KEEP_CHANGES_SECONDS)
    .execute(pool)
    .await
    .map_err(db_error)?;
    Ok(())
}

sql_store!(SqliteStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow);
// One writer at a time (`BEGIN IMMEDIATE`) already keeps two claims apart.
crate::webhooks::webhook_sql!(SqliteStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow, "");
crate::sessions::session_sql!(SqliteStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow);
