//! The API key format, its checksum and its digest at rest.
//!
//! A key is `<prefix>_<env>_<body>` (or `<prefix>_<body>` when the environment is not part of
//! the key). The body is 64 lowercase hex characters: 56 encode 28 bytes from the OS CSPRNG,
//! the last 8 a CRC32 over everything before them. The checksum lets [`KeyFormat::parse`]
//! reject typos and garbage without a storage lookup, and lets secret scanners recognise a
//! real key.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Random bytes in a key body (224 bits).
pub const RANDOM_BYTES: usize = 28;
/// Hex characters in a key body: the random part plus the 8-character checksum.
pub const BODY_LEN: usize = RANDOM_BYTES * 2 + 8;
/// Body characters shown in a display prefix.
pub const DISPLAY_BODY_CHARS: usize = 8;
/// Longest deployment prefix accepted in configuration.
pub const MAX_PREFIX_LEN: usize = 16;
/// Nothing longer than this can be a key; the parser stops before looking at it.
pub const MAX_KEY_LEN: usize = MAX_PREFIX_LEN + 1 + 4 + 1 + BODY_LEN;

/// Which data a key reaches: production or sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Environment> {
        match s {
            "live" => Some(Environment::Live),
            "test" => Some(Environment::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a key of this deployment. Never carries the input: it may be a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    #[error("the key is longer than any key")]
    TooLong,
    #[error("the key does not start with this deployment's prefix")]
    WrongPrefix,
    #[error("the key's environment is not live or test")]
    UnknownEnvironment,
    #[error("the key body is not 64 lowercase hex characters")]
    BadBody,
    #[error("the key checksum does not match")]
    BadChecksum,
}

/// The OS random source failed; no key can be made safely.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed")]
pub struct RandomUnavailable;

/// A full API key. Its `Debug` and `Display` never show more than the display prefix, so a
/// secret cannot leak through a log line or a panic message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// Wraps a string that is already known to be a key. The caller owns the check.
    pub fn new_unchecked(s: String) -> Self {
        ApiKeySecret(s)
    }

    /// The full secret. Call only where the secret must go out: the create/rotate answer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeySecret(<redacted>)")
    }
}

/// The server secret mixed into every digest, so a database dump alone cannot test guesses.
/// Holds the HMAC state after the key schedule, so each digest costs only the message.
#[derive(Clone)]
pub struct Pepper {
    keyed: Hmac<Sha256>,
}

impl Pepper {
    pub fn new(bytes: Vec<u8>) -> Self {
        let keyed =
            <Hmac<Sha256> as Mac>::new_from_slice(&bytes).expect("HMAC accepts keys of any length");
        Pepper { keyed }
    }

    /// A fresh 32-byte pepper from the OS CSPRNG, with its bytes (to be kept by the caller).
    pub fn generate() -> Result<(Self, Vec<u8>), RandomUnavailable> {
        let mut bytes = vec![0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|_| RandomUnavailable)?;
        Ok((Pepper::new(bytes.clone()), bytes))
    }

    /// `HMAC-SHA256(pepper, secret)`: how keys and admin tokens are stored and looked up.
    pub fn digest(&self, secret: &[u8]) -> KeyDigest {
        let mut mac = self.keyed.clone();
        mac.update(secret);
        KeyDigest(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pepper(<redacted>)")
    }
}

/// Text from a request, fit to be shown back in an error message: every run of 16 or more
/// hex digits (key material: a key's body, a token) becomes `…`, and the text is cut to
/// `max_chars` characters. A key pasted into the wrong field must not come back in the
/// answer, nor in whatever logs that answer.
pub fn obscure(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut run = String::new();
    let flush = |out: &mut String, run: &mut String| {
        if run.len() >= 16 {
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut out, &mut run);
            out.push(c);
        }
    }
    flush(&mut out, &mut run);
    if out.chars().count() > max_chars {
        out = out.chars().take(max_chars).collect();
        out.push('…');
    }
    out
}

/// Random bytes from the OS CSPRNG, as lowercase hex (ids, tokens).
pub fn random_hex(bytes: usize) -> Result<String, RandomUnavailable> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|_| RandomUnavailable)?;
    Ok(to_hex(&buf))
}

/// A key's digest at rest and its cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<KeyDigest> {
        let bytes = from_hex(s)?;
        Some(KeyDigest(bytes.try_into().ok()?))
    }

    /// Equality that takes the same time wherever the first difference is.
    pub fn ct_eq(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not a secret, but a short form is all a reader needs.
        write!(f, "KeyDigest({}…)", &self.to_hex()[..8])
    }
}

/// What a well-formed key told the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedKey {
    /// `None` for the single-environment form (`oim_<body>`).
    pub environment: Option<Environment>,
}

/// A deployment's key format: its prefix and whether the environment is part of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: String,
    env_in_key: bool,
}

/// A configured prefix that cannot start a key.
#[derive(Debug, thiserror::Error)]
#[error("key prefix must be 1-{MAX_PREFIX_LEN} characters of a-z and 0-9, starting with a letter")]
pub struct BadPrefix;

impl KeyFormat {
    pub fn new(prefix: &str, env_in_key: bool) -> Result<Self, BadPrefix> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(BadPrefix);
        }
        Ok(KeyFormat {
            prefix: prefix.to_owned(),
            env_in_key,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn env_in_key(&self) -> bool {
        self.env_in_key
    }

    /// The part of a key before its body: `kg_live_` or `oim_`.
    pub fn type_prefix(&self, env: Environment) -> String {
        if self.env_in_key {
            format!("{}_{}_", self.prefix, env.as_str())
        } else {
            format!("{}_", self.prefix)
        }
    }

    /// A new key for `env`, from 28 bytes of the OS CSPRNG.
    pub fn generate(&self, env: Environment) -> Result<ApiKeySecret, RandomUnavailable> {
        let mut random = [0u8; RANDOM_BYTES];
        getrandom::getrandom(&mut random).map_err(|_| RandomUnavailable)?;
        Ok(self.assemble(env, &random))
    }

    /// Builds the key for given random bytes. Public for tests and fuzzing.
    pub fn assemble(&self, env: Environment, random: &[u8; RANDOM_BYTES]) -> ApiKeySecret {
        let mut key = self.type_prefix(env);
        key.push_str(&to_hex(random));
        let checksum = crc32fast::hash(key.as_bytes());
        key.push_str(&format!("{checksum:08x}"));
        ApiKeySecret(key)
    }

    /// Checks shape and checksum. Constant work per input length; never allocates.
    pub fn parse(&self, key: &str) -> Result<ParsedKey, MalformedKey> {
        if key.len() > MAX_KEY_LEN {
            return Err(MalformedKey::TooLong);
        }
        let rest = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('_'))
            .ok_or(MalformedKey::WrongPrefix)?;
        let (environment, body) = if self.env_in_key {
            let (env, body) = rest
                .split_once('_')
                .ok_or(MalformedKey::UnknownEnvironment)?;
            let env = Environment::parse(env).ok_or(MalformedKey::UnknownEnvironment)?;
            (Some(env), body)
        } else {
            (None, rest)
        };
        if body.len() != BODY_LEN || !body.bytes().all(is_lower_hex) {
            return Err(MalformedKey::BadBody);
        }
        let (before_checksum, checksum) = key.split_at(key.len() - 8);
        let expected = u32::from_str_radix(checksum, 16).map_err(|_| MalformedKey::BadBody)?;
        if crc32fast::hash(before_checksum.as_bytes()) != expected {
            return Err(MalformedKey::BadChecksum);
        }
        Ok(ParsedKey { environment })
    }

    /// The type prefix plus the first 8 body characters: all a list ever shows of a key.
    /// `None` when `key` is not of this format.
    pub fn display_prefix(&self, key: &str) -> Option<String> {
        let parsed = self.parse(key).ok()?;
        let type_len = match parsed.environment {
            Some(env) => self.type_prefix(env).len(),
            None => self.prefix.len() + 1,
        };
        Some(key[..type_len + DISPLAY_BODY_CHARS].to_owned())
    }

    /// A regular expression that matches keys of this format, for secret scanners.
    pub fn scanner_regex(&self) -> String {
        if self.env_in_key {
            format!(r"\b{}_(live|test)_[0-9a-f]{{64}}\b", self.prefix)
        } else {
            format!(r"\b{}_[0-9a-f]{{64}}\b", self.prefix)
        }
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kg() -> KeyFormat {
        KeyFormat::new("kg", true).unwrap()
    }

    fn oim() -> KeyFormat {
        KeyFormat::new("oim", false).unwrap()
    }

    #[test]
    fn generated_keys_have_the_spec_shape() {
        let key = kg().generate(Environment::Live).unwrap();
        let s = key.expose();
        assert!(s.starts_with("kg_live_"));
        assert_eq!(s.len(), "kg_live_".len() + 64);
        assert_eq!(kg().display_prefix(s).unwrap().len(), "kg_live_".len() + 8);
        let key = oim().generate(Environment::Test).unwrap();
        assert_eq!(key.expose().len(), 4 + 64);
        // The reference shows a 12-character prefix for this form.
        assert_eq!(oim().display_prefix(key.expose()).unwrap().len(), 12);
        assert_eq!(
            oim().parse(key.expose()),
            Ok(ParsedKey { environment: None })
        );
    }

    #[test]
    fn two_keys_differ() {
        let a = kg().generate(Environment::Live).unwrap();
        let b = kg().generate(Environment::Live).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_shapes_are_rejected_with_the_reason() {
        let f = kg();
        let good = f.generate(Environment::Test).unwrap().expose().to_owned();
        assert_eq!(f.parse(""), Err(MalformedKey::WrongPrefix));
        assert_eq!(
            f.parse(&good.replace("kg_", "xx_")),
            Err(MalformedKey::WrongPrefix)
        );
        assert_eq!(
            f.parse(&good.replace("_test_", "_prod_")),
            Err(MalformedKey::UnknownEnvironment)
        );
        assert_eq!(f.parse(&good[..good.len() - 1]), Err(MalformedKey::BadBody));
        assert_eq!(
            f.parse(&good.to_uppercase().replace("KG_TEST_", "kg_test_")),
            Err(MalformedKey::BadBody)
        );
        assert_eq!(f.parse(&"a".repeat(500)), Err(MalformedKey::TooLong));
        // A key of another deployment's format is not ours.
        assert_eq!(
            oim().parse(&good),
            Err(MalformedKey::WrongPrefix),
            "a kg key is not an oim key"
        );
    }

    #[test]
    fn the_scanner_regex_names_the_format() {
        assert_eq!(kg().scanner_regex(), r"\bkg_(live|test)_[0-9a-f]{64}\b");
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(KeyFormat::new("", true).is_err());
        assert!(KeyFormat::new("KG", true).is_err());
        assert!(KeyFormat::new("a_b", true).is_err());
        assert!(KeyFormat::new("1a", true).is_err());
        assert!(KeyFormat::new("om", true).is_ok());
    }

    #[test]
    fn digests_depend_on_the_pepper() {
        let key = b"kg_live_abc";
        let a = Pepper::new(vec![1; 32]).digest(key);
        let b = Pepper::new(vec![2; 32]).digest(key);
        assert_ne!(a, b);
        assert!(a.ct_eq(&Pepper::new(vec![1; 32]).digest(key)));
        assert_eq!(KeyDigest::from_hex(&a.to_hex()), Some(a));
    }

    #[test]
    fn obscure_hides_key_material() {
        let key = kg().generate(Environment::Live).unwrap();
        let key = key.expose();
        let shown = obscure(&format!("{key}.read"), 64);
        assert_eq!(shown, "kg_live_….read");
        assert_eq!(obscure("invoices.raed", 64), "invoices.raed");
        assert_eq!(obscure("2001:db8::1/64", 64), "2001:db8::1/64");
        assert_eq!(
            obscure(&"x".repeat(100), 10),
            format!("{}…", "x".repeat(10))
        );
        assert_eq!(obscure("abcdef0123456789", 64), "…");
        assert_eq!(obscure("é", 64), "é");
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let key = kg().generate(Environment::Live).unwrap();
        let shown = format!("{key:?} {:?}", Pepper::new(vec![7; 32]));
        assert!(!shown.contains(&key.expose()[8..]));
        assert!(!shown.contains("7, 7"));
    }

    proptest! {
        #[test]
        fn generated_keys_round_trip(random in any::<[u8; RANDOM_BYTES]>(), test in any::<bool>(), env_in_key in any::<bool>()) {
            let env = if test { Environment::Test } else { Environment::Live };
            let f = KeyFormat::new("kg", env_in_key).unwrap();
            let key = f.assemble(env, &random);
            let parsed = f.parse(key.expose()).unwrap();
            prop_assert_eq!(parsed.environment, env_in_key.then_some(env));
            let body = &key.expose()[f.type_prefix(env).len()..];
            prop_assert_eq!(&body[..56], to_hex(&random));
        }

        #[test]
        fn any_single_character_change_is_rejected(random in any::<[u8; RANDOM_BYTES]>(), pos in 0usize..72, replacement in proptest::char::any()) {
            let f = kg();
            let key = f.assemble(Environment::Live, &random);
            let original = key.expose();
            let pos = pos % original.len();
            let old = original.as_bytes()[pos] as char;
            prop_assume!(replacement != old);
            let mut changed: Vec<char> = original.chars().collect();
            changed[pos] = replacement;
            let changed: String = changed.into_iter().collect();
            // Changing the environment word can make another valid environment only by
            // changing more than one character, so every single change must fail.
            prop_assert!(f.parse(&changed).is_err(), "accepted {}", pos);
        }

        #[test]
        fn parse_never_panics(s in ".{0,120}") {
            let _ = kg().parse(&s);
            let _ = oim().parse(&s);
            let _ = kg().display_prefix(&s);
        }
    }
}
