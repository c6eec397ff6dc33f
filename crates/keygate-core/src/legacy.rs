//! Keys imported from another system, as that system stored them: a bcrypt hash behind a
//! lookup prefix (PHP's `password_hash`), a bare SHA-256/512 digest, or the key itself
//! (hashed with keygate's digest on import and never kept). Parsing and the lookups a
//! presented credential is tried under; checking a bcrypt hash is the engine's (it is slow
//! on purpose and must run off the async workers).

use std::fmt;

use sha2::{Digest, Sha256, Sha512};

use crate::key::{to_hex, KeyDigest, MAX_KEY_LEN};

/// Shortest and longest lookup prefix: short ones would gather many keys behind one prefix
/// (each needing a bcrypt check), and the verifier tries every length in between.
pub const MIN_LOOKUP_PREFIX: usize = 4;
pub const MAX_LOOKUP_PREFIX: usize = 32;
/// bcrypt costs accepted: above 14 one check takes seconds, which would let a handful of
/// wrong keys occupy the verifier.
pub const MIN_BCRYPT_COST: u32 = 4;
pub const MAX_BCRYPT_COST: u32 = 14;

/// How an imported key was stored by the system it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyScheme {
    Bcrypt,
    Sha256,
    Sha512,
    Plaintext,
}

impl LegacyScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            LegacyScheme::Bcrypt => "bcrypt",
            LegacyScheme::Sha256 => "sha256",
            LegacyScheme::Sha512 => "sha512",
            LegacyScheme::Plaintext => "plaintext",
        }
    }

    pub fn parse(s: &str) -> Option<LegacyScheme> {
        match s {
            "bcrypt" => Some(LegacyScheme::Bcrypt),
            "sha256" => Some(LegacyScheme::Sha256),
            "sha512" => Some(LegacyScheme::Sha512),
            "plaintext" => Some(LegacyScheme::Plaintext),
            _ => None,
        }
    }
}

/// A parsed `hash` field of an import line.
#[derive(Clone, PartialEq, Eq)]
pub enum LegacyHash {
    /// `$2y$…`, `$2b$…` or `$2a$…`, 60 characters.
    Bcrypt(String),
    /// Lowercase hex.
    Sha256(String),
    /// Lowercase hex.
    Sha512(String),
    /// The key itself: a secret.
    Plaintext(String),
}

impl fmt::Debug for LegacyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LegacyHash::Plaintext(_) => write!(f, "Plaintext(<redacted>)"),
            other => write!(f, "{}({})", other.scheme().as_str(), other.stored()),
        }
    }
}

/// Why a `hash` field was refused. The messages never repeat a plaintext key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LegacyHashError {
    #[error("hash must be bcrypt:<hash>, sha256:<hex>, sha512:<hex> or plaintext:<key>")]
    UnknownScheme,
    #[error("a bcrypt hash must be $2y$, $2b$ or $2a$, a two-digit cost between {MIN_BCRYPT_COST} and {MAX_BCRYPT_COST}, and 53 characters of salt and hash (60 in all)")]
    BadBcrypt,
    #[error("a sha256 hash must be 64 hex digits")]
    BadSha256,
    #[error("a sha512 hash must be 128 hex digits")]
    BadSha512,
    #[error("a plaintext key must be 1 to {MAX_KEY_LEN} visible ASCII characters")]
    BadPlaintext,
}

impl LegacyHash {
    pub fn parse(field: &str) -> Result<LegacyHash, LegacyHashError> {
        let (scheme, rest) = field
            .split_once(':')
            .ok_or(LegacyHashError::UnknownScheme)?;
        match LegacyScheme::parse(scheme).ok_or(LegacyHashError::UnknownScheme)? {
            LegacyScheme::Bcrypt => bcrypt_shape(rest)
                .then(|| LegacyHash::Bcrypt(rest.to_owned()))
                .ok_or(LegacyHashError::BadBcrypt),
            LegacyScheme::Sha256 => hex_of_len(rest, 64)
                .map(LegacyHash::Sha256)
                .ok_or(LegacyHashError::BadSha256),
            LegacyScheme::Sha512 => hex_of_len(rest, 128)
                .map(LegacyHash::Sha512)
                .ok_or(LegacyHashError::BadSha512),
            LegacyScheme::Plaintext => is_credential_text(rest, MAX_KEY_LEN)
                .then(|| LegacyHash::Plaintext(rest.to_owned()))
                .ok_or(LegacyHashError::BadPlaintext),
        }
    }

    pub fn scheme(&self) -> LegacyScheme {
        match self {
            LegacyHash::Bcrypt(_) => LegacyScheme::Bcrypt,
            LegacyHash::Sha256(_) => LegacyScheme::Sha256,
            LegacyHash::Sha512(_) => LegacyScheme::Sha512,
            LegacyHash::Plaintext(_) => LegacyScheme::Plaintext,
        }
    }

    /// What the store keeps for a hash that is not upgraded yet: the bcrypt string or the
    /// hex digest. Empty for a plaintext key, which is never kept.
    pub fn stored(&self) -> &str {
        match self {
            LegacyHash::Bcrypt(s) | LegacyHash::Sha256(s) | LegacyHash::Sha512(s) => s,
            LegacyHash::Plaintext(_) => "",
        }
    }

    /// The value a presented credential is found under, beside the lookup prefix: the hex
    /// digest for SHA hashes.
    pub fn digest_lookup(&self) -> Option<&str> {
        match self {
            LegacyHash::Sha256(s) | LegacyHash::Sha512(s) => Some(s),
            _ => None,
        }
    }
}

/// A lookup prefix as the reference system stores it: the key's first characters.
pub fn valid_lookup_prefix(prefix: &str) -> bool {
    prefix.len() >= MIN_LOOKUP_PREFIX && is_credential_text(prefix, MAX_LOOKUP_PREFIX)
}

/// What a presented credential is looked up under: its SHA-256 and SHA-512 digests (hex)
/// and its prefixes of every length a lookup prefix may have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyLookups<'a> {
    pub sha256: String,
    pub sha512: String,
    pub prefixes: Vec<&'a str>,
}

impl<'a> LegacyLookups<'a> {
    pub fn of(credential: &'a str) -> LegacyLookups<'a> {
        let longest = credential.len().min(MAX_LOOKUP_PREFIX);
        let prefixes = (MIN_LOOKUP_PREFIX..=longest)
            .filter(|&n| credential.is_char_boundary(n))
            .map(|n| &credential[..n])
            .collect();
        LegacyLookups {
            sha256: to_hex(&Sha256::digest(credential.as_bytes())),
            sha512: to_hex(&Sha512::digest(credential.as_bytes())),
            prefixes,
        }
    }
}

/// The digest an imported key has in the store until its first verification: a hash of its
/// legacy hash, which no credential's HMAC digest can be (the column is unique and every
/// key needs one).
pub fn placeholder_digest(stored_hash: &str) -> KeyDigest {
    let mut h = Sha256::new();
    h.update(b"keygate legacy placeholder\0");
    h.update(stored_hash.as_bytes());
    KeyDigest(h.finalize().into())
}

/// The id of an imported key, derived from what identifies it in the import file (the
/// legacy hash; for a plaintext key its HMAC digest, never the key): importing the same
/// line again finds the same id, also once the key was upgraded.
pub fn imported_key_id(identity: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"keygate imported key id\0");
    h.update(identity);
    format!("key_{}", to_hex(&h.finalize()[..12]))
}

/// `$2y$10$` + 53 characters of bcrypt's base64 alphabet.
fn bcrypt_shape(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 60 || b[0] != b'$' || b[1] != b'2' || b[3] != b'$' || b[6] != b'$' {
        return false;
    }
    if !matches!(b[2], b'a' | b'b' | b'y') {
        return false;
    }
    let cost = match std::str::from_utf8(&b[4..6])
        .ok()
        .and_then(|c| c.parse::<u32>().ok())
    {
        Some(c) if b[4].is_ascii_digit() && b[5].is_ascii_digit() => c,
        _ => return false,
    };
    (MIN_BCRYPT_COST..=MAX_BCRYPT_COST).contains(&cost)
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'/'))
}

fn hex_of_len(s: &str, len: usize) -> Option<String> {
    (s.len() == len && s.bytes().all(|c| c.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// Visible ASCII, no spaces: what a header carries intact.
fn is_credential_text(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHP_HASH: &str = "$2y$10$Tm0pGfzwsYlDq8y4CGq7beVaF5uK2Ep1c2n0sZtBGDeLQ6d5mB9tC";

    #[test]
    fn hashes_parse_by_scheme() {
        assert_eq!(
            LegacyHash::parse(&format!("bcrypt:{PHP_HASH}")).map(|h| h.scheme()),
            Ok(LegacyScheme::Bcrypt)
        );
        let upper = "A".repeat(64);
        assert_eq!(
            LegacyHash::parse(&format!("sha256:{upper}")),
            Ok(LegacyHash::Sha256("a".repeat(64)))
        );
        assert_eq!(
            LegacyHash::parse(&format!("sha512:{}", "0".repeat(128))).map(|h| h.scheme()),
            Ok(LegacyScheme::Sha512)
        );
        assert!(matches!(
            LegacyHash::parse("plaintext:abc_123"),
            Ok(LegacyHash::Plaintext(k)) if k == "abc_123"
        ));
    }

    #[test]
    fn bad_hashes_are_refused_with_their_reason() {
        assert_eq!(
            LegacyHash::parse("md5:abc"),
            Err(LegacyHashError::UnknownScheme)
        );
        assert_eq!(
            LegacyHash::parse("nocolon"),
            Err(LegacyHashError::UnknownScheme)
        );
        let wrong_version = PHP_HASH.replacen("2y", "2x", 1);
        let too_costly = PHP_HASH.replacen("$10$", "$15$", 1);
        for bad in [&PHP_HASH[..59], &wrong_version, &too_costly] {
            assert_eq!(
                LegacyHash::parse(&format!("bcrypt:{bad}")),
                Err(LegacyHashError::BadBcrypt)
            );
        }
        assert_eq!(
            LegacyHash::parse(&format!("sha256:{}", "g".repeat(64))),
            Err(LegacyHashError::BadSha256)
        );
        assert_eq!(
            LegacyHash::parse("plaintext:has space"),
            Err(LegacyHashError::BadPlaintext)
        );
    }

    #[test]
    fn a_plaintext_key_never_shows_in_debug() {
        let hash = LegacyHash::parse("plaintext:s3cr3t-key").unwrap();
        assert!(!format!("{hash:?}").contains("s3cr3t"));
    }

    #[test]
    fn lookups_cover_every_prefix_length() {
        let key = "inv_".to_owned() + &"ab".repeat(32);
        let lookups = LegacyLookups::of(&key);
        assert_eq!(lookups.prefixes.first(), Some(&"inv_"));
        assert_eq!(lookups.prefixes.last().map(|p| p.len()), Some(32));
        assert_eq!(lookups.prefixes.len(), 32 - 4 + 1);
        assert_eq!(lookups.sha256.len(), 64);
        assert_eq!(lookups.sha512.len(), 128);
        assert!(LegacyLookups::of("abc").prefixes.is_empty());
    }
}
