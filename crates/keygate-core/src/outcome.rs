//! The outcome of a verification: one code of the SPEC table.

use std::fmt;

/// Why a key that parsed was refused as `invalid_key`. Goes to the audit log and metrics,
/// never to the caller: all three answer "Invalid API key".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    Unknown,
    Revoked,
    Expired,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::Unknown => "unknown",
            InvalidReason::Revoked => "revoked",
            InvalidReason::Expired => "expired",
        }
    }
}

/// One verification outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Valid,
    MissingCredentials,
    MalformedKey,
    InvalidKey(InvalidReason),
    IpNotAllowed,
    InsufficientPermissions,
    RateLimited,
    UsageExceeded,
    KeyInUrl,
}

impl Outcome {
    /// Every outcome, for metrics that list them all.
    pub const ALL: [Outcome; 11] = [
        Outcome::Valid,
        Outcome::MissingCredentials,
        Outcome::MalformedKey,
        Outcome::InvalidKey(InvalidReason::Unknown),
        Outcome::InvalidKey(InvalidReason::Revoked),
        Outcome::InvalidKey(InvalidReason::Expired),
        Outcome::IpNotAllowed,
        Outcome::InsufficientPermissions,
        Outcome::RateLimited,
        Outcome::UsageExceeded,
        Outcome::KeyInUrl,
    ];

    /// The code callers see.
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::MissingCredentials => "missing_credentials",
            Outcome::MalformedKey => "malformed_key",
            Outcome::InvalidKey(_) => "invalid_key",
            Outcome::IpNotAllowed => "ip_not_allowed",
            Outcome::InsufficientPermissions => "insufficient_permissions",
            Outcome::RateLimited => "rate_limited",
            Outcome::UsageExceeded => "usage_exceeded",
            Outcome::KeyInUrl => "key_in_url",
        }
    }

    /// The HTTP status of the answer (valid answers use 200 or 204 depending on the endpoint).
    pub fn http_status(self) -> u16 {
        match self {
            Outcome::Valid => 200,
            Outcome::MissingCredentials | Outcome::MalformedKey | Outcome::InvalidKey(_) => 401,
            Outcome::IpNotAllowed | Outcome::InsufficientPermissions => 403,
            Outcome::RateLimited | Outcome::UsageExceeded => 429,
            Outcome::KeyInUrl => 400,
        }
    }

    /// The human message callers see.
    pub fn message(self) -> &'static str {
        match self {
            Outcome::Valid => "OK",
            Outcome::MissingCredentials => "Missing API key: send it in the Authorization header as a Bearer token",
            Outcome::MalformedKey => "Malformed API key",
            Outcome::InvalidKey(_) => "Invalid API key",
            Outcome::IpNotAllowed => "This API key is not allowed from your IP address",
            Outcome::InsufficientPermissions => "This API key does not have the permission this request needs",
            Outcome::RateLimited => "Rate limit exceeded",
            Outcome::UsageExceeded => "Usage quota exceeded for this API key",
            Outcome::KeyInUrl => "API keys must not be sent in the URL: send the key in the Authorization header instead",
        }
    }

    /// The label used in metrics and usage counts: the code, made precise for invalid keys.
    pub fn detail(self) -> &'static str {
        match self {
            Outcome::InvalidKey(InvalidReason::Unknown) => "invalid_key_unknown",
            Outcome::InvalidKey(InvalidReason::Revoked) => "invalid_key_revoked",
            Outcome::InvalidKey(InvalidReason::Expired) => "invalid_key_expired",
            other => other.code(),
        }
    }

    pub fn is_valid(self) -> bool {
        self == Outcome::Valid
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
