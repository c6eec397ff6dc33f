//! Where a request carries its key: `Authorization: Bearer`, `X-API-Key` or `APIKEY`; and
//! where it must not (the query string).

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use keygate_core::{Environment, KeyFormat, Outcome};

use crate::ApiError;

/// Query parameters that name a credential, refused whatever their value.
const CREDENTIAL_PARAMS: &[&str] = &["api_key", "apikey", "api-key", "x-api-key", "access_token"];

/// The key headers besides `Authorization`, made once: looking a header up by a `&str`
/// name parses the name on every call.
static KEY_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("apikey"),
];

/// The key a request carries, if any. Two different keys, a header that is not text, or
/// an `Authorization` header that is not a bearer token are errors.
pub fn key_from_headers(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match key_headers_at_a_glance(headers) {
        KeyHeaders::None => Ok(None),
        KeyHeaders::Authorization(value) => bearer_token(value).map(Some),
        KeyHeaders::Several => key_from_each_header(headers),
    }
}

/// [`key_from_headers`] by looking each key header's name up.
fn key_from_each_header(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut found: Option<&str> = None;
    let mut take = |value| -> Result<(), ApiError> {
        match found {
            Some(existing) if existing != value => Err(ApiError::AmbiguousCredentials),
            _ => {
                found = Some(value);
                Ok(())
            }
        }
    };
    for value in headers.get_all(AUTHORIZATION) {
        take(bearer_token(value)?)?;
    }
    for name in &KEY_HEADERS {
        for value in headers.get_all(name) {
            let value = value
                .to_str()
                .map_err(|_| Outcome::MalformedKey)?
                .trim_ascii();
            if value.is_empty() {
                return Err(Outcome::MalformedKey.into());
            }
            take(value)?;
        }
    }
    Ok(found)
}

/// The token of an `Authorization: Bearer` value; any other value is malformed.
fn bearer_token(value: &HeaderValue) -> Result<&str, ApiError> {
    // Visible ASCII and tabs only (`to_str` checks), so ASCII trimming is all the
    // trimming there is: `str::trim` decodes characters from both ends, three times.
    let value = value
        .to_str()
        .map_err(|_| Outcome::MalformedKey)?
        .trim_ascii();
    let (scheme, token) = value.split_at_checked(BEARER.len()).unwrap_or((value, ""));
    let token = token.trim_ascii();
    if !scheme.eq_ignore_ascii_case(BEARER) || token.is_empty() {
        return Err(Outcome::MalformedKey.into());
    }
    Ok(token)
}

/// The scheme of an `Authorization` value that carries a key, with the space after it.
const BEARER: &str = "bearer ";

/// Which key headers a request has, told from one pass over a small header map.
enum KeyHeaders<'a> {
    None,
    /// One `Authorization` value and no other key header: nearly every request with a key.
    Authorization(&'a HeaderValue),
    /// Anything else (or a large map): [`key_from_headers`] looks each name up.
    Several,
}

/// Headers up to which one pass over the map costs less than looking the three key
/// names up (a lookup hashes the name and probes: about as much as comparing the names
/// of five headers).
const GLANCE_HEADERS: usize = 16;

fn key_headers_at_a_glance(headers: &HeaderMap) -> KeyHeaders<'_> {
    if headers.len() > GLANCE_HEADERS {
        return KeyHeaders::Several;
    }
    let mut found = KeyHeaders::None;
    for (name, value) in headers {
        if *name == AUTHORIZATION {
            if !matches!(found, KeyHeaders::None) {
                return KeyHeaders::Several;
            }
            found = KeyHeaders::Authorization(value);
        } else if KEY_HEADERS.contains(name) {
            return KeyHeaders::Several;
        }
    }
    found
}

/// Does a query string carry a key? A credential parameter with any value does, and so
/// does any name or value that starts like a key of this deployment (`?key=kg_live_…`,
/// `?kg_live_…`).
pub fn query_carries_key(query: &str, format: &KeyFormat) -> bool {
    let markers = [
        format.type_prefix(Environment::Live),
        format.type_prefix(Environment::Test),
    ];
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Decoded until stable: a key escaped several times is still a key in the URL, and
        // a pair that never settles is treated as one.
        let (Some(name), Some(value)) = (decode_fully(name), decode_fully(value)) else {
            return true;
        };
        let name = name.to_ascii_lowercase();
        (CREDENTIAL_PARAMS.contains(&name.as_str()) && !value.is_empty())
            || markers.iter().any(|m| {
                value.trim_start().starts_with(m.as_str())
                    || name.trim_start().starts_with(m.as_str())
            })
    })
}

/// Most rounds of [`decode_fully`]: a text still changing after these many is taken to hide
/// something (each round costs a pass over the text, so the bound keeps it cheap).
pub const MAX_DECODE_ROUNDS: usize = 8;

/// Decodes until nothing changes, so a key escaped twice or more (`%255F` → `%5F` → `_`)
/// is seen as the key. `None` when the text still changes after [`MAX_DECODE_ROUNDS`].
pub fn decode_fully(s: &str) -> Option<String> {
    let mut current = decode(s);
    for _ in 1..MAX_DECODE_ROUNDS {
        let next = decode(&current);
        if next == current {
            return Some(current);
        }
        current = next;
    }
    (decode(&current) == current).then_some(current)
}

/// `application/x-www-form-urlencoded` decoding; undecodable bytes are kept as they are.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let Some(b) = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_three_header_forms_are_read() {
        for h in [
            headers(&[("authorization", "Bearer k1")]),
            headers(&[("authorization", "bearer   k1 ")]),
            headers(&[("authorization", "\tBEARER \tk1\t")]),
            headers(&[("x-api-key", "k1")]),
            headers(&[("APIKEY", "k1")]),
            headers(&[("authorization", "Bearer k1"), ("x-api-key", "k1")]),
        ] {
            assert_eq!(key_from_headers(&h).unwrap(), Some("k1"));
        }
        assert_eq!(key_from_headers(&HeaderMap::new()).unwrap(), None);
    }

    /// The one pass answers what looking each name up answers, over every mix of key
    /// headers (none, one, two values; valid, odd, conflicting), in both orders, among few
    /// and many other headers.
    #[test]
    fn the_glance_agrees_with_the_lookups() {
        let authorization = [
            None,
            Some("Bearer k1"),
            Some("Bearer k2"),
            Some("Basic x"),
            Some("Bearer"),
        ];
        let api_key = [None, Some("k1"), Some("k2"), Some("")];
        let others = [0, 3, GLANCE_HEADERS];
        let mut glanced = 0;
        for auth in authorization {
            for second_auth in [None, Some("Bearer k1")] {
                for key in api_key {
                    for apikey in [None, Some("k1")] {
                        for other in others {
                            for auth_last in [false, true] {
                                let mut pairs: Vec<(String, &str)> =
                                    (0..other).map(|i| (format!("x-other-{i}"), "v")).collect();
                                let mut keys: Vec<(String, &str)> = vec![];
                                for (name, value) in [
                                    ("authorization", auth),
                                    ("authorization", second_auth.filter(|_| auth.is_some())),
                                    ("x-api-key", key),
                                    ("apikey", apikey),
                                ] {
                                    if let Some(value) = value {
                                        keys.push((name.to_owned(), value));
                                    }
                                }
                                if auth_last {
                                    let first = keys.len().min(1);
                                    keys.rotate_left(first);
                                }
                                pairs.splice(0..0, keys);
                                let pairs: Vec<(&str, &str)> =
                                    pairs.iter().map(|(n, v)| (n.as_str(), *v)).collect();
                                let h = headers(&pairs);
                                if !matches!(key_headers_at_a_glance(&h), KeyHeaders::Several) {
                                    glanced += 1;
                                }
                                assert_eq!(
                                    format!("{:?}", key_from_headers(&h)),
                                    format!("{:?}", key_from_each_header(&h)),
                                    "{pairs:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert!(glanced > 0, "the one pass is taken");
    }

    #[test]
    fn conflicting_or_odd_headers_are_errors() {
        assert!(matches!(
            key_from_headers(&headers(&[
                ("authorization", "Bearer k1"),
                ("x-api-key", "k2")
            ])),
            Err(ApiError::AmbiguousCredentials)
        ));
        for h in [
            headers(&[("authorization", "Basic dXNlcjpwYXNz")]),
            headers(&[("authorization", "Bearer")]),
            headers(&[("authorization", "Bearer \t ")]),
            headers(&[("authorization", "Bearer\tk1")]),
            headers(&[("authorization", "Bearerk1")]),
            headers(&[("authorization", "Token k1")]),
            headers(&[("x-api-key", "")]),
            headers(&[("x-api-key", " \t")]),
        ] {
            assert!(matches!(
                key_from_headers(&h),
                Err(ApiError::Edge(Outcome::MalformedKey))
            ));
        }
    }

    #[test]
    fn keys_in_queries_are_found() {
        let kg = KeyFormat::new("kg", true).unwrap();
        assert!(query_carries_key("api_key=abc", &kg));
        assert!(query_carries_key("x=1&ApiKey=abc", &kg));
        assert!(query_carries_key("access_token=abc", &kg));
        assert!(query_carries_key("key=kg_live_123", &kg));
        assert!(query_carries_key("q=%6bg_test_1", &kg));
        // Found by the secret-hygiene test: a key as a parameter's name passed, and the
        // "unknown query parameter" answer echoed it.
        assert!(query_carries_key("kg_live_0123", &kg));
        assert!(query_carries_key("page=2&KG_TEST_0123=1", &kg));
        assert!(query_carries_key("%6Bg%5Flive%5F0123", &kg));
        assert!(!query_carries_key("key=value&page=2", &kg));
        assert!(!query_carries_key("sort=kg_weight", &kg));
        assert!(!query_carries_key("api_key=", &kg));
        assert!(!query_carries_key("", &kg));
        let oim = KeyFormat::new("oim", false).unwrap();
        assert!(query_carries_key("k=oim_abc", &oim));
    }
}
