use keygate_core::policy::liveness;
use keygate_core::{Environment, InvalidReason, KeyDigest};
use serde::{Deserialize, Serialize};

/// A customer business: the tenant that owns keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub created_at: i64,
}

/// `requests` per `per_seconds`, per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimit {
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub requests: u32,
    /// At most a year (31 536 000 s).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 31_536_000))]
    pub per_seconds: u32,
}

/// A usage budget: this many valid requests, given back `refill.amount` at a time every
/// `refill.every` seconds (never above `requests`), or once and for all without a refill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)
    )]
    pub requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
}

/// How a quota comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Refill {
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub amount: u64,
    /// Seconds between refills, at most 366 days.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 31_622_400))]
    pub every: u64,
}

/// A stored API key: everything but the secret.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub display_prefix: String,
    pub digest: KeyDigest,
    pub environment: Environment,
    /// Canonical permission strings.
    pub permissions: Vec<String>,
    /// Canonical addresses and CIDR blocks.
    pub ip_allowlist: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    pub quota: Option<Quota>,
    /// Valid requests counted against the quota (flushed in batches).
    pub quota_used: i64,
    /// When the quota last refilled (unix ms); `None` before the first refill.
    pub quota_refilled_at: Option<i64>,
    /// A JSON object the operator attaches.
    pub meta: serde_json::Value,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
    /// May lie in the future: a rotation's grace period.
    pub revoked_at: Option<i64>,
    /// The key this one replaced by rotation.
    pub rotated_from: Option<String>,
    /// The latest client addresses, newest first.
    pub recent_ips: Vec<SeenIp>,
    /// When a scanner or an operator reported the secret as leaked.
    pub leaked_at: Option<i64>,
    /// On a key replaced by rotation: revoked once unused this long (ms) after its
    /// successor's first use, at the latest at `revoked_at`.
    pub retire_when_idle_ms: Option<i64>,
}

/// Changes to a key; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub ip_allowlist: Option<Vec<String>>,
    pub expires_at: Option<Option<i64>>,
    pub rate_limit: Option<Option<RateLimit>>,
    pub quota: Option<Option<Quota>>,
    /// Restarts the refill clock (set with a new quota).
    pub quota_refilled_at: Option<Option<i64>>,
    pub meta: Option<serde_json::Value>,
}

/// Usage of one key since the last flush.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageUpdate {
    pub key_id: String,
    /// 0 when the key was not used successfully since the last flush.
    pub last_used_at: i64,
    pub quota_used_delta: i64,
    /// Set when the quota refilled since the last flush.
    pub quota_refilled_at: Option<i64>,
    /// Verifications to add, per hour bucket and outcome.
    pub counts: Vec<UsageCount>,
    /// The latest client addresses, newest first, when they changed.
    pub recent_ips: Option<Vec<SeenIp>>,
    /// Allowed requests to add, per day and the permission they needed.
    pub permissions: Vec<PermissionCount>,
}

/// Allowed requests of one key in one day that needed one permission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionCount {
    /// Start of the day (UTC), unix milliseconds.
    pub bucket: i64,
    /// A concrete permission (`invoices.read`), or `*` for requests no route maps.
    pub permission: String,
    pub count: i64,
    /// The latest of these requests, unix milliseconds.
    pub last_used_at: i64,
}

/// How one permission was used over a window ([`crate::Store::permission_usage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionUse {
    pub permission: String,
    pub requests: i64,
    pub last_used_at: i64,
}

/// Verifications of one key in one hour with one outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageCount {
    /// Start of the hour, unix milliseconds.
    pub bucket: i64,
    /// The outcome detail (`valid`, `rate_limited`, `invalid_key_revoked`, …).
    pub outcome: String,
    pub count: i64,
}

/// A client address a key was used from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenIp {
    pub ip: String,
    pub last_seen: i64,
}

/// One management action, as the audit log keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub id: String,
    /// Order of insertion; set by the store.
    pub seq: i64,
    pub at: i64,
    pub account_id: Option<String>,
    /// `admin`, `key:<key id>` or `portal:<portal session id>`.
    pub actor: String,
    /// `account.create`, `key.create`, `key.update`, `key.revoke`, `key.rotate`, …
    pub action: String,
    pub target_id: Option<String>,
    pub client_ip: Option<String>,
    pub details: serde_json::Value,
}

/// A key's state at a moment, derived from `revoked_at` and `expires_at` (a revocation
/// wins over an expiry, as in verification).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

impl KeyStatus {
    pub fn of(record: &KeyRecord, now: i64) -> KeyStatus {
        match liveness(record.revoked_at, record.expires_at, now) {
            Ok(()) => KeyStatus::Active,
            Err(InvalidReason::Expired) => KeyStatus::Expired,
            Err(_) => KeyStatus::Revoked,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<KeyStatus> {
        match s {
            "active" => Some(KeyStatus::Active),
            "expired" => Some(KeyStatus::Expired),
            "revoked" => Some(KeyStatus::Revoked),
            _ => None,
        }
    }
}
