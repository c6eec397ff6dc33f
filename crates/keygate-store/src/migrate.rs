//! A small, explicit migration runner: numbered SQL scripts embedded in the binary, applied
//! in order, each in its own transaction, recorded in `schema_migrations`.

/// One schema step.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "init",
    sql: include_str!("../migrations/sqlite/0001_init.sql"),
}];
