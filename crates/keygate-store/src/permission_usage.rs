//! The SQL of the least-privilege report's counts (`permission_usage`: allowed requests per
//! key, day and permission), shared by both backends like `sql.rs`: a macro expanded inside
//! `sql_store!`, where the backend's types and dialect are in scope.

/// Defines `write_permission_counts` (inside a usage flush's transaction),
/// `read_permission_usage` and `prune_permission_usage` for `$store` on `$db`.
macro_rules! permission_usage_sql {
    ($store:ident, $db:ty) => {
        /// Adds a flush's permission counts: one multi-row upsert per 500 rows.
        async fn write_permission_counts(tx: &mut Tx, batch: &[UsageUpdate]) -> Result<()> {
            let mut counts = std::collections::BTreeMap::<(&str, i64, &str), (i64, i64)>::new();
            for u in batch {
                for c in &u.permissions {
                    let entry = counts
                        .entry((&u.key_id, c.bucket, &c.permission))
                        .or_default();
                    entry.0 += c.count;
                    entry.1 = entry.1.max(c.last_used_at);
                }
            }
            let counts: Vec<_> = counts.into_iter().collect();
            let upsert = format!(
                " ON CONFLICT (key_id, bucket, permission) DO UPDATE SET \
                 count = permission_usage.count + excluded.count, \
                 last_used_at = {}(permission_usage.last_used_at, excluded.last_used_at)",
                $store::DIALECT.greatest
            );
            for chunk in counts.chunks(crate::sql::ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO permission_usage (key_id, bucket, permission, count, last_used_at) ",
                );
                q.push_values(
                    chunk,
                    |mut row, ((key_id, bucket, permission), (count, last))| {
                        row.push_bind(*key_id)
                            .push_bind(*bucket)
                            .push_bind(*permission)
                            .push_bind(*count)
                            .push_bind(*last);
                    },
                );
                q.push(&upsert);
                q.build().execute(&mut **tx).await.map_err(db_error)?;
            }
            Ok(())
        }

        async fn read_permission_usage(
            store: &$store,
            key_id: &str,
            from: i64,
        ) -> Result<Vec<crate::PermissionUse>> {
            let rows = sqlx::query(
                "SELECT permission, CAST(SUM(count) AS BIGINT) AS requests, \
                 MAX(last_used_at) AS last_used_at FROM permission_usage \
                 WHERE key_id = $1 AND bucket >= $2 GROUP BY permission ORDER BY permission",
            )
            .bind(key_id)
            .bind(from)
            .fetch_all(store.pool())
            .await
            .map_err(db_error)?;
            rows.iter()
                .map(|row| {
                    Ok(crate::PermissionUse {
                        permission: row.try_get("permission").map_err(corrupt)?,
                        requests: row.try_get("requests").map_err(corrupt)?,
                        last_used_at: row.try_get("last_used_at").map_err(corrupt)?,
                    })
                })
                .collect()
        }

        /// Deletes the days that ended before `before` (a day's row holds counts up to its end).
        async fn prune_permission_usage(store: &$store, before: i64) -> Result<u64> {
            const DAY_MS: i64 = 86_400_000;
            let done = sqlx::query("DELETE FROM permission_usage WHERE bucket < $1")
                .bind(before.saturating_sub(DAY_MS))
                .execute(store.pool())
                .await
                .map_err(db_error)?;
            Ok(done.rows_affected())
        }
    };
}

pub(crate) use permission_usage_sql;
