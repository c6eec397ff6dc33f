//! Credential extraction: which headers carry a key (`key_from_headers`), whether a query
//! string carries one (`query_carries_key`), and the access log's path redaction
//! (`redact`).
//!
//! Invariants:
//! - none of them panics on any header bytes or any text;
//! - an extracted credential is non-empty, trimmed, and is exactly what one credential
//!   header carried; two credential headers that disagree are an error, never a choice;
//! - a header set without `Authorization`, `X-API-Key` or `APIKEY` carries no credential;
//! - a query naming a credential parameter with a value, or carrying a key of this
//!   deployment as a value or as a name (percent-encoded or not), is caught;
//! - the redacted form of a path that holds a real key contains neither the key nor its
//!   64-hex body, however the key's characters were percent-encoded.
#![no_main]

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use keygate_core::key::RANDOM_BYTES;
use keygate_core::{Environment, KeyFormat};
use keygate_server::fuzzing::{key_from_headers, query_carries_key, redact};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "authorization",
    "x-api-key",
    "apikey",
    "x-original-uri",
    "cookie",
    "x-forwarded-for",
];
const CREDENTIAL_NAMES: &[&str] = &["authorization", "x-api-key", "apikey"];

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(u8, Vec<u8>)>,
    query: String,
    /// Where in the query and the path a real key goes, and how its bytes are encoded.
    key_random: [u8; RANDOM_BYTES],
    key_at: u16,
    encode_mask: u64,
    path: String,
}

fn format() -> &'static KeyFormat {
    static F: OnceLock<KeyFormat> = OnceLock::new();
    F.get_or_init(|| KeyFormat::new("kg", true).unwrap())
}

/// The key with the characters that `mask` selects written as `%XX` (upper or lower hex).
fn encode(key: &str, mask: u64) -> String {
    key.bytes()
        .enumerate()
        .map(|(i, b)| {
            if mask >> (i % 64) & 1 == 1 {
                if i % 2 == 0 {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            } else {
                (b as char).to_string()
            }
        })
        .collect()
}

fn insert_at(text: &str, at: u16, piece: &str) -> String {
    let mut at = at as usize % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}{piece}{}", &text[..at], &text[at..])
}

fn check_headers(input: &Input) {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = HeaderName::from_static(NAMES[*name as usize % NAMES.len()]);
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        headers.append(name, value);
    }
    let has_credential_header = CREDENTIAL_NAMES.iter().any(|n| headers.contains_key(*n));
    match key_from_headers(&headers) {
        Ok(None) => {}
        Ok(Some(key)) => {
            assert!(has_credential_header);
            assert!(!key.is_empty(), "an empty credential was accepted");
            assert_eq!(key, key.trim(), "an untrimmed credential");
            // Every credential header carries exactly this key.
            for v in headers.get_all("authorization") {
                let v = v.to_str().unwrap().trim();
                let (scheme, token) = v.split_once(' ').unwrap();
                assert!(scheme.eq_ignore_ascii_case("bearer"));
                assert_eq!(token.trim(), key);
            }
            for name in ["x-api-key", "apikey"] {
                for v in headers.get_all(name) {
                    assert_eq!(v.to_str().unwrap().trim(), key);
                }
            }
        }
        // Ambiguous credentials, or a malformed one (not a bearer token, not text, empty).
        Err(e) => {
            assert!(has_credential_header, "{e:?} without a credential header");
        }
    }
}

fuzz_target!(|input: Input| {
    check_headers(&input);
    let f = format();
    let _ = query_carries_key(&input.query, f);
    let _ = redact(&input.path, f.prefix());

    let key = f.assemble(Environment::Live, &input.key_random);
    let key = key.expose();
    let body = &key[key.len() - 64..];
    // A key in a query, as a value, plainly or percent-encoded: always caught.
    let q = if input.query.contains('#') {
        String::new()
    } else {
        input.query.clone()
    };
    for value in [key.to_owned(), encode(key, input.encode_mask)] {
        let with_key = format!("{q}&k={value}");
        assert!(
            query_carries_key(&with_key, f),
            "key in query missed: {with_key:?}"
        );
        let named = format!("{q}&api_key={}", &value[..1]);
        assert!(query_carries_key(&named, f), "api_key missed: {named:?}");
        let as_name = format!("{q}&{value}");
        assert!(query_carries_key(&as_name, f), "key as a name missed: {as_name:?}");
    }
    // A key in a path is redacted, however it is encoded.
    let encoded = encode(key, input.encode_mask);
    let path = insert_at(&input.path, input.key_at, &encoded);
    let shown = redact(&path, f.prefix());
    assert!(!shown.contains(key), "key logged: {shown:?}");
    assert!(!shown.contains(body), "key body logged: {shown:?}");
    let decoded = keygate_server::fuzzing::decode(&shown);
    assert!(
        !decoded.contains(body),
        "key body logged in encoded form: {shown:?}"
    );
});
