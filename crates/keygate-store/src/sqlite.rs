//! The embedded SQLite backend: WAL mode, `synchronous=FULL` (an acknowledged write survives
//! a crash), writes in `BEGIN IMMEDIATE` transactions (SQLite's single writer makes plan
//! caps exact). The queries are shared with PostgreSQL (`sql.rs`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::migrate::Migration;
use crate::sql::{db_error, sql_store, Dialect};
use crate::{Result, StoreError};

/// keygate's store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    const DIALECT: Dialect = Dialect {
        for_update: "",
        lock_account: None,
        greatest: "MAX",
        notify_key_change: None,
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
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// One process owns an SQLite file: there are no other nodes to hear from.
    pub async fn change_feed(&self) -> Result<Option<tokio::sync::mpsc::Receiver<crate::Change>>> {
        Ok(None)
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
}

sql_store!(SqliteStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow);
