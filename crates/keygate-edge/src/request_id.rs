//! The id every answer carries (`X-Request-Id`, and `request_id` in error bodies): set for
//! the duration of a request with [`scope`], read anywhere below it.

use std::fmt;
use std::future::Future;

use keygate_core::key::random_hex;

tokio::task_local! {
    static REQUEST_ID: RequestId;
}

/// `req_` and 24 lowercase hex digits, kept inline: a request's id is copied into the
/// task-local, the answer's header and the access log without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; RequestId::LEN]);

impl RequestId {
    const LEN: usize = 28;

    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII below.
        std::str::from_utf8(&self.0).unwrap_or("req_unknown")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The id of the request being answered (for error bodies).
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.as_str().to_owned())
        .unwrap_or_else(|_| "req_unknown".to_owned())
}

/// The id of the request being answered, if there is one.
pub fn try_current_request_id() -> Option<RequestId> {
    REQUEST_ID.try_with(|id| *id).ok()
}

/// Serializes a request id taken with [`try_current_request_id`], `req_unknown` when there
/// was none (as [`current_request_id`] says), for `#[serde(serialize_with = …)]`.
pub fn serialize_or_unknown<S: serde::Serializer>(
    id: &Option<RequestId>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(id.as_ref().map_or("req_unknown", RequestId::as_str))
}

/// `req_` and 24 hex digits: 32 random bits drawn once per process, then 64 bits that a
/// bijective mix makes of a per-process counter (offset by 64 more random bits), so ids
/// are unique within a process, differ between processes, and cost no system call (the OS
/// random source was one `getrandom` per request). Request ids are not secrets.
pub fn new_request_id() -> RequestId {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    static SEED: OnceLock<([u8; 8], u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (prefix, offset) = SEED.get_or_init(|| {
        let hex = random_hex(12).unwrap_or_else(|_| "0".repeat(24));
        let offset = u64::from_str_radix(&hex[8..], 16).unwrap_or(0);
        let mut prefix = *b"00000000";
        prefix.copy_from_slice(&hex.as_bytes()[..8]);
        (prefix, offset)
    });
    let n = COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(*offset);
    // The splitmix64 finaliser: a bijection on u64.
    let mut z = n;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mut id = [0u8; RequestId::LEN];
    id[..4].copy_from_slice(b"req_");
    id[4..12].copy_from_slice(prefix);
    for (i, byte) in id[12..].iter_mut().enumerate() {
        *byte = HEX[((z >> ((15 - i) * 4)) & 0xf) as usize];
    }
    RequestId(id)
}

/// Runs `future` with `id` as the current request id.
pub fn scope<F: Future>(id: RequestId, future: F) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(id, future)
}

#[cfg(test)]
mod tests {
    use super::new_request_id;

    #[test]
    fn request_ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| new_request_id().as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            let hex = id.strip_prefix("req_").unwrap();
            assert_eq!(hex.len(), 24, "{id}");
            assert!(hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }
}
