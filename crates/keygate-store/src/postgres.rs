//! The PostgreSQL backend, for several keygate nodes sharing one database. Queries are
//! shared with SQLite (`sql.rs`); here: row locks for exact caps, and `LISTEN/NOTIFY` so
//! every node hears of every key change.

use std::time::Duration;

use keygate_core::KeyDigest;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::mpsc;

use crate::migrate::Migration;
use crate::sql::{db_error, sql_store, Dialect};
use crate::{Change, Result};

/// The channel key changes are announced on.
pub const CHANNEL: &str = "keygate_key_changes";

/// keygate's store in PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    const DIALECT: Dialect = Dialect {
        for_update: " FOR UPDATE",
        lock_account: Some("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE"),
        greatest: "GREATEST",
        notify_key_change: Some("SELECT pg_notify('keygate_key_changes', $1)"),
        migration_lock: Some("SELECT pg_advisory_xact_lock(4711001)"),
    };
    const MIGRATIONS: &'static [Migration] = crate::migrate::POSTGRES;

    /// Connects to `url` (`postgres://…`). With `migrate`, applies pending migrations
    /// (serialised across nodes by an advisory lock).
    pub async fn open(url: &str, migrate: bool) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(db_error)?;
        let store = PostgresStore { pool };
        if migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn write(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(db_error)
    }

    /// Usage flushes: the database's CPU is its server's, so any connection.
    async fn usage_write(&self) -> Result<Transaction<'static, Postgres>> {
        self.write().await
    }

    /// Key changes made by any node, as they commit. When the listening connection drops,
    /// it is re-established and [`Change::Resync`] is sent: what was announced meanwhile
    /// is unknown.
    pub async fn change_feed(&self) -> Result<Option<mpsc::Receiver<Change>>> {
        let listener = listen(&self.pool).await?;
        let (tx, rx) = mpsc::channel(1024);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut listener = Some(listener);
            while !tx.is_closed() {
                let Some(active) = listener.as_mut() else {
                    match listen(&pool).await {
                        Ok(l) => {
                            tracing::info!("change listener reconnected; resyncing the cache");
                            listener = Some(l);
                            if tx.send(Change::Resync).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                    }
                    continue;
                };
                match active.try_recv().await {
                    Ok(Some(n)) => {
                        // One digest, or several comma-separated (a bulk import).
                        for digest in n.payload().split(',') {
                            let change =
                                KeyDigest::from_hex(digest).map_or(Change::Resync, Change::Key);
                            if tx.send(change).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        tracing::warn!(
                            "change listener lost its PostgreSQL connection; reconnecting"
                        );
                        listener = None;
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.map_err(db_error)?;
    listener.listen(CHANNEL).await.map_err(db_error)?;
    Ok(listener)
}

sql_store!(PostgresStore, sqlx::Postgres, sqlx::postgres::PgRow);
crate::webhooks::webhook_sql!(
    PostgresStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    " FOR UPDATE SKIP LOCKED"
);
crate::sessions::session_sql!(PostgresStore, sqlx::Postgres, sqlx::postgres::PgRow);
