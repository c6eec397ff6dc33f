//! Numbered SQL scripts embedded in the binary, one list per backend, applied in order by
//! `migrate()` (see `sql.rs`) and recorded in `schema_migrations`.

/// One schema step.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The same steps for each backend, from `migrations/<backend>/<NNNN>_<name>.sql`.
macro_rules! migrations {
    ($backend:literal) => {
        &[
            migration!($backend, 1, "init"),
            migration!($backend, 2, "usage"),
            migration!($backend, 3, "quota_refill"),
            migration!($backend, 4, "key_changes"),
            migration!($backend, 5, "list_order"),
            migration!($backend, 10, "0010", "signing_keys"),
        ]
    };
}

macro_rules! migration {
    // Two-digit and longer versions name their file number in full.
    ($backend:literal, $version:literal, $file:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!(
                "../migrations/",
                $backend,
                "/",
                $file,
                "_",
                $name,
                ".sql"
            )),
        }
    };
    ($backend:literal, $version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!(
                "../migrations/",
                $backend,
                "/000",
                $version,
                "_",
                $name,
                ".sql"
            )),
        }
    };
}

pub const SQLITE: &[Migration] = migrations!("sqlite");
pub const POSTGRES: &[Migration] = migrations!("postgres");
