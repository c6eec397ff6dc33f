//! CSRF: a synchronizer token per session, in a hidden field of every form, compared in
//! constant time. (The cookie is also SameSite=Strict; the token does not rely on it.)

use subtle::ConstantTimeEq;

/// The form field that carries the token.
pub const FIELD: &str = "csrf";

/// Does `presented` equal the session's token? Constant time in the token's content.
pub fn matches(expected: &str, presented: Option<&str>) -> bool {
    match presented {
        Some(p) if !expected.is_empty() => expected.as_bytes().ct_eq(p.as_bytes()).into(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn only_the_exact_token_matches() {
        assert!(matches("abc123", Some("abc123")));
        assert!(!matches("abc123", Some("abc124")));
        assert!(!matches("abc123", Some("abc12")));
        assert!(!matches("abc123", Some("")));
        assert!(!matches("abc123", None));
        assert!(!matches("", Some("")));
    }
}
