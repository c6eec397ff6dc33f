use keygate_core::Outcome;
use keygate_store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a management or verification call can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong in one field.
    #[error("{message}")]
    Validation { field: String, message: String },
    /// Unknown id, or an id of another account (indistinguishable on purpose).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller's credential did not authenticate.
    #[error("{0}")]
    Unauthenticated(Outcome),
    /// The caller is authenticated but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A key credential failed verification (rate limited, IP not allowed, …).
    #[error("{0}")]
    Refused(Outcome),
    /// The account's plan allows no more active keys.
    #[error("API key limit reached for your plan")]
    PlanLimit,
    /// The change conflicts with the record's state (a revoked key cannot change).
    #[error("{0}")]
    Conflict(String),
    /// The store cannot be reached.
    #[error("the key store is unavailable")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn validation(field: &str, message: impl Into<String>) -> Error {
        Error::Validation {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Error::NotFound("record"),
            StoreError::CapReached => Error::PlanLimit,
            StoreError::NotActive => {
                Error::Conflict("the key is revoked or expired and cannot change".into())
            }
            StoreError::Duplicate => Error::Conflict("a record with that id already exists".into()),
            StoreError::Unavailable(m) => Error::Unavailable(m),
            StoreError::Backend(m) | StoreError::Corrupt(m) => Error::Internal(m),
        }
    }
}
