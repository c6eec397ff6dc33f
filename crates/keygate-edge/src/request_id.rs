//! The id every answer carries (`X-Request-Id`, and `request_id` in error bodies): set for
//! the duration of a request with [`scope`], read anywhere below it.

use std::future::Future;

use keygate_core::key::random_hex;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being answered (for error bodies).
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "req_unknown".to_owned())
}

/// `req_` and 24 hex digits: 32 random bits drawn once per process, then 64 bits that a
/// bijective mix makes of a per-process counter (offset by 64 more random bits), so ids
/// are unique within a process, differ between processes, and cost no system call (the OS
/// random source was one `getrandom` per request). Request ids are not secrets.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<(String, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (prefix, offset) = SEED.get_or_init(|| {
        let hex = random_hex(12).unwrap_or_else(|_| "0".repeat(24));
        let offset = u64::from_str_radix(&hex[8..], 16).unwrap_or(0);
        (hex[..8].to_owned(), offset)
    });
    let n = COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(*offset);
    // The splitmix64 finaliser: a bijection on u64.
    let mut z = n;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Written by hand: `format!` was a few percent of a forward-auth request's instructions.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(4 + prefix.len() + 16);
    id.push_str("req_");
    id.push_str(prefix);
    for shift in (0..16).rev() {
        id.push(char::from(HEX[((z >> (shift * 4)) & 0xf) as usize]));
    }
    id
}

/// Runs `future` with `id` as the current request id.
pub fn scope<F: Future>(id: String, future: F) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(id, future)
}

#[cfg(test)]
mod tests {
    use super::new_request_id;

    #[test]
    fn request_ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
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
