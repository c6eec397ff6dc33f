//! A fresh PostgreSQL database per test, so tests on one server never see each other's rows.

use sqlx::Connection;

/// Creates an empty database on `server` (a `postgres://…/db` URL); returns its URL.
pub async fn fresh_postgres_database(server: &str) -> String {
    let name = format!("kg_test_{}", keygate_core::key::random_hex(8).unwrap());
    let mut admin = sqlx::PgConnection::connect(server).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}
