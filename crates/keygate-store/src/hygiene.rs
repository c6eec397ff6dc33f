//! Key hygiene in the store: leak reports and idle retirement after rotation. The SQL is
//! shared by both backends like `sql.rs`'s: [`hygiene_sql`] is expanded inside its
//! `sql_store!` module, where the row readers and transaction helpers live.

use crate::KeyRecord;

/// A key replaced by rotation that waits to be retired once idle.
#[derive(Clone, Debug, PartialEq)]
pub struct RetiringKey {
    pub key: KeyRecord,
    /// The key that replaced it (the oldest, if it was rotated more than once).
    pub successor_id: Option<String>,
    /// The successor's last use as the store has it (usage is flushed in batches).
    pub successor_last_used_at: Option<i64>,
    /// When the idle check first saw the successor used: the idle clock's start.
    pub successor_used_at: Option<i64>,
}

/// Inherent methods of `$store` behind the hygiene methods of `Store`.
macro_rules! hygiene_sql {
    ($store:ident) => {
        async fn set_retire_when_idle(tx: &mut Tx, key: &mut KeyRecord, ms: Option<i64>) -> Result<()> {
            sqlx::query("UPDATE api_keys SET retire_when_idle_ms = $1 WHERE id = $2")
                .bind(ms)
                .bind(&key.id)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
            key.retire_when_idle_ms = ms;
            Ok(())
        }

        impl $store {
            pub(crate) async fn mark_leaked_sql(
                &self,
                id: &str,
                at: i64,
                revoke: bool,
                audit: &AuditEvent,
            ) -> Result<KeyRecord> {
                let mut tx = self.write().await?;
                let mut key = fetch_key_for_update(&mut tx, id).await?;
                let leaked_at = key.leaked_at.map_or(at, |t| t.min(at));
                sqlx::query("UPDATE api_keys SET leaked_at = $1 WHERE id = $2")
                    .bind(leaked_at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                key.leaked_at = Some(leaked_at);
                let revoked_at = key.revoked_at.map_or(at, |t| t.min(at));
                if revoke && key.revoked_at != Some(revoked_at) {
                    set_revoked_at(&mut tx, &mut key, revoked_at).await?;
                } else {
                    announce(&mut tx, &key.digest).await?;
                }
                insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(key)
            }

            pub(crate) async fn retiring_keys_sql(&self, now: i64) -> Result<Vec<crate::RetiringKey>> {
                let sql = format!(
                    "SELECT {KEY_COLUMNS}, successor_used_at, \
                     (SELECT MIN(s.id) FROM api_keys s WHERE s.rotated_from = api_keys.id) AS successor_id, \
                     (SELECT MAX(s.last_used_at) FROM api_keys s WHERE s.rotated_from = api_keys.id) AS successor_last_used_at \
                     FROM api_keys WHERE retire_when_idle_ms IS NOT NULL AND revoked_at > $1"
                );
                sqlx::query(&sql)
                    .bind(now)
                    .fetch_all(self.pool())
                    .await
                    .map_err(db_error)?
                    .iter()
                    .map(|row| {
                        Ok(crate::RetiringKey {
                            key: key_from_row(row)?,
                            successor_id: row.try_get("successor_id").map_err(corrupt)?,
                            successor_last_used_at: row
                                .try_get("successor_last_used_at")
                                .map_err(corrupt)?,
                            successor_used_at: row.try_get("successor_used_at").map_err(corrupt)?,
                        })
                    })
                    .collect()
            }

            pub(crate) async fn note_successor_used_sql(&self, id: &str, at: i64) -> Result<()> {
                let mut tx = self.write().await?;
                sqlx::query(
                    "UPDATE api_keys SET successor_used_at = $1 WHERE id = $2 AND successor_used_at IS NULL",
                )
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                tx.commit().await.map_err(db_error)
            }

            pub(crate) async fn retire_idle_key_sql(
                &self,
                id: &str,
                now: i64,
                audit: &AuditEvent,
            ) -> Result<Option<KeyRecord>> {
                let mut tx = self.write().await?;
                // The condition makes it idempotent: of several nodes, one revokes and audits.
                let row = sqlx::query(&format!(
                    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at > $1 RETURNING {KEY_COLUMNS}"
                ))
                .bind(now)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let key = key_from_row(&row)?;
                insert_audit(&mut tx, audit).await?;
                announce(&mut tx, &key.digest).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(Some(key))
            }
        }
    };
}

pub(crate) use hygiene_sql;
