//! Numbered SQL scripts embedded in the binary, one list per backend, applied in order by
//! `migrate()` (see `sql.rs`) and recorded in `schema_migrations`.

/// One schema step.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "usage",
        sql: include_str!("../migrations/sqlite/0002_usage.sql"),
    },
    Migration {
        version: 3,
        name: "quota_refill",
        sql: include_str!("../migrations/sqlite/0003_quota_refill.sql"),
    },
];

pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "usage",
        sql: include_str!("../migrations/postgres/0002_usage.sql"),
    },
    Migration {
        version: 3,
        name: "quota_refill",
        sql: include_str!("../migrations/postgres/0003_quota_refill.sql"),
    },
];
