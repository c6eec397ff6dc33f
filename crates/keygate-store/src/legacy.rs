//! Keys imported from another system with their legacy hashes (`legacy_keys`, migration
//! 0009). [`LegacyStore`] is a supertrait of [`crate::Store`]; its SQL is written once here
//! and expanded inside each backend's `Store` implementation (it shares that module's
//! helpers: key inserts, change announcements, audit inserts).

use async_trait::async_trait;
use keygate_core::legacy::LegacyLookups;
use keygate_core::KeyDigest;

use crate::{AuditEvent, KeyRecord, Result};

/// One imported key's legacy state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyKey {
    pub key_id: String,
    /// `bcrypt`, `sha256`, `sha512` or `plaintext`.
    pub scheme: String,
    /// bcrypt: the lookup prefix; SHA: the hex digest; plaintext: empty.
    pub lookup: String,
    /// The legacy hash; `None` once upgraded to keygate's digest (and for plaintext keys,
    /// digested on import).
    pub hash: Option<String>,
    pub imported_at: i64,
    pub upgraded_at: Option<i64>,
}

/// A key to import: its record (for a hash not upgraded yet, with a placeholder digest no
/// credential has) and its legacy state.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedKey {
    pub record: KeyRecord,
    pub legacy: LegacyKey,
}

#[async_trait]
pub trait LegacyStore {
    /// Does the database hold any imported key, upgraded or not?
    async fn has_legacy_keys(&self) -> Result<bool>;
    /// Inserts keys with their legacy state and `audit`, in one transaction. A key whose id
    /// is here already is left as it is (so an import can run again, also after some keys
    /// were upgraded); returns how many were inserted.
    async fn import_legacy_keys(&self, keys: &[ImportedKey], audit: &AuditEvent) -> Result<u64>;
    /// Imported keys not upgraded yet that a credential may be: those whose lookup prefix
    /// is one of its prefixes or whose SHA digest is its digest.
    async fn legacy_candidates(&self, lookups: &LegacyLookups<'_>) -> Result<Vec<LegacyKey>>;
    /// Gives the key `key_id` the digest `digest` and forgets its legacy hash, with `audit`,
    /// unless it was upgraded already (then nothing changes and the answer is false).
    async fn upgrade_legacy_key(
        &self,
        key_id: &str,
        digest: &KeyDigest,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<bool>;
    /// Every imported key's legacy state (exports).
    async fn list_legacy_keys(&self) -> Result<Vec<LegacyKey>>;
    /// Legacy states as they are (moving an installation); one already held is left alone.
    async fn import_legacy_states(&self, states: &[LegacyKey]) -> Result<u64>;
}

pub const LEGACY_COLUMNS: &str = "key_id, scheme, lookup, hash, imported_at, upgraded_at";

/// Implements [`LegacyStore`] inside `sql_store!`'s module (see `sql.rs`).
macro_rules! legacy_sql {
    ($store:ident, $db:ty, $row:ty) => {
        fn legacy_from_row(row: &$row) -> Result<crate::LegacyKey> {
            Ok(crate::LegacyKey {
                key_id: row.try_get("key_id").map_err(corrupt)?,
                scheme: row.try_get("scheme").map_err(corrupt)?,
                lookup: row.try_get("lookup").map_err(corrupt)?,
                hash: row.try_get("hash").map_err(corrupt)?,
                imported_at: row.try_get("imported_at").map_err(corrupt)?,
                upgraded_at: row.try_get("upgraded_at").map_err(corrupt)?,
            })
        }

        async fn insert_legacy_states(tx: &mut Tx, states: &[crate::LegacyKey]) -> Result<u64> {
            let mut inserted = 0;
            for chunk in states.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "INSERT INTO legacy_keys ({}) ",
                    crate::legacy::LEGACY_COLUMNS
                ));
                q.push_values(chunk, |mut row, s| {
                    row.push_bind(&s.key_id)
                        .push_bind(&s.scheme)
                        .push_bind(&s.lookup)
                        .push_bind(&s.hash)
                        .push_bind(s.imported_at)
                        .push_bind(s.upgraded_at);
                });
                q.push(" ON CONFLICT (key_id) DO NOTHING");
                inserted += q
                    .build()
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?
                    .rows_affected();
            }
            Ok(inserted)
        }

        #[async_trait]
        impl crate::LegacyStore for $store {
            async fn has_legacy_keys(&self) -> Result<bool> {
                let row = sqlx::query("SELECT key_id FROM legacy_keys LIMIT 1")
                    .fetch_optional(self.pool())
                    .await
                    .map_err(db_error)?;
                Ok(row.is_some())
            }

            async fn import_legacy_keys(
                &self,
                keys: &[crate::ImportedKey],
                audit: &AuditEvent,
            ) -> Result<u64> {
                let records: Vec<KeyRecord> = keys.iter().map(|k| k.record.clone()).collect();
                let states: Vec<crate::LegacyKey> = keys.iter().map(|k| k.legacy.clone()).collect();
                let mut tx = self.write().await?;
                let inserted =
                    insert_keys(&mut tx, &records, " ON CONFLICT (id) DO NOTHING").await?;
                insert_legacy_states(&mut tx, &states).await?;
                // Other nodes may hold a digest of a plaintext key as unknown.
                announce_all(&mut tx, records.iter().map(|k| &k.digest)).await?;
                insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(inserted)
            }

            async fn legacy_candidates(
                &self,
                lookups: &keygate_core::legacy::LegacyLookups<'_>,
            ) -> Result<Vec<crate::LegacyKey>> {
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM legacy_keys WHERE hash IS NOT NULL AND lookup IN (",
                    crate::legacy::LEGACY_COLUMNS
                ));
                let mut values = q.separated(", ");
                values.push_bind(lookups.sha256.as_str());
                values.push_bind(lookups.sha512.as_str());
                for prefix in &lookups.prefixes {
                    values.push_bind(*prefix);
                }
                q.push(") ORDER BY key_id");
                let rows = q.build().fetch_all(self.pool()).await.map_err(db_error)?;
                rows.iter()
                    .map(legacy_from_row)
                    // A prefix matches bcrypt rows only, a digest rows of its own scheme.
                    .filter(|r| match r {
                        Ok(r) => match r.scheme.as_str() {
                            "bcrypt" => r.lookup.len() <= keygate_core::legacy::MAX_LOOKUP_PREFIX,
                            "sha256" => r.lookup == lookups.sha256,
                            "sha512" => r.lookup == lookups.sha512,
                            _ => false,
                        },
                        Err(_) => true,
                    })
                    .collect()
            }

            async fn upgrade_legacy_key(
                &self,
                key_id: &str,
                digest: &KeyDigest,
                now: i64,
                audit: &AuditEvent,
            ) -> Result<bool> {
                let mut tx = self.write().await?;
                let upgraded = sqlx::query(
                    "UPDATE legacy_keys SET hash = NULL, upgraded_at = $2 \
                     WHERE key_id = $1 AND hash IS NOT NULL",
                )
                .bind(key_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?
                .rows_affected();
                if upgraded == 0 {
                    return Ok(false);
                }
                let key = fetch_key_for_update(&mut tx, key_id).await?;
                sqlx::query("UPDATE api_keys SET digest = $2 WHERE id = $1")
                    .bind(key_id)
                    .bind(&digest.0[..])
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                announce_all(&mut tx, [&key.digest, digest].into_iter()).await?;
                insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(true)
            }

            async fn list_legacy_keys(&self) -> Result<Vec<crate::LegacyKey>> {
                sqlx::query(&format!(
                    "SELECT {} FROM legacy_keys ORDER BY imported_at, key_id",
                    crate::legacy::LEGACY_COLUMNS
                ))
                .fetch_all(self.pool())
                .await
                .map_err(db_error)?
                .iter()
                .map(legacy_from_row)
                .collect()
            }

            async fn import_legacy_states(&self, states: &[crate::LegacyKey]) -> Result<u64> {
                let mut tx = self.write().await?;
                let inserted = insert_legacy_states(&mut tx, states).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(inserted)
            }
        }
    };
}

pub(crate) use legacy_sql;
