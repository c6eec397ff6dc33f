/// What can go wrong in a store, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("the account's plan allows no more active keys")]
    CapReached,
    #[error("the key is revoked or expired")]
    NotActive,
    #[error("a record with that id already exists")]
    Duplicate,
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("the database refused the operation: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}
