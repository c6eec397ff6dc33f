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
            migration!($backend, 6, "webhooks"),
            migration!($backend, 7, "sessions"),
            migration!($backend, 8, "leaks_idle"),
            migration!($backend, 9, "legacy_keys"),
            migration!($backend, 10, "signing_keys", "0010_signing_keys"),
            migration!($backend, 11, "permission_usage", "0011_permission_usage"),
            migration!($backend, 12, "webhook_retention", "0012_webhook_retention"),
        ]
    };
}

macro_rules! migration {
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
    // Numbers from 10 on are not padded by the arm above: the file is named in full.
    ($backend:literal, $version:literal, $name:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../migrations/", $backend, "/", $file, ".sql")),
        }
    };
}

pub const SQLITE: &[Migration] = migrations!("sqlite");
pub const POSTGRES: &[Migration] = migrations!("postgres");
