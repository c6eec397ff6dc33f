//! Key parsing and the checksum: `KeyFormat::parse`, `display_prefix`, `assemble`, and the
//! scanner regex, for arbitrary strings and for real keys with arbitrary damage.
//!
//! Invariants:
//! - parsing never panics, whatever the input and the deployment's format;
//! - what parses has the exact shape of a key (length, prefix, environment, lowercase hex
//!   body) and matches the format's scanner regex; its display prefix is a prefix of it;
//! - an assembled key always parses, with its environment;
//! - any single-byte change, and any change of up to 4 consecutive bytes (a CRC32 catches
//!   every burst of 32 bits or fewer), is refused;
//! - a key of one format is never a key of a format with another prefix or environment mode.
#![no_main]

use std::sync::OnceLock;

use keygate_core::key::{BODY_LEN, RANDOM_BYTES};
use keygate_core::{Environment, KeyFormat};
use libfuzzer_sys::fuzz_target;
use regex::Regex;

struct Formats {
    all: Vec<(KeyFormat, Regex)>,
}

fn formats() -> &'static Formats {
    static F: OnceLock<Formats> = OnceLock::new();
    F.get_or_init(|| {
        let all = [("kg", true), ("kg", false), ("oim", false), ("om", true), ("k9", true)]
            .into_iter()
            .map(|(p, env)| {
                let f = KeyFormat::new(p, env).unwrap();
                let re = Regex::new(&format!("^(?:{})$", f.scanner_regex())).unwrap();
                (f, re)
            })
            .collect();
        Formats { all }
    })
}

fn check_parsed(f: &KeyFormat, re: &Regex, s: &str) {
    let Ok(parsed) = f.parse(s) else { return };
    assert!(s.is_ascii(), "a key is ASCII");
    let type_len = match parsed.environment {
        Some(env) => {
            assert!(f.env_in_key());
            f.type_prefix(env).len()
        }
        None => {
            assert!(!f.env_in_key());
            f.prefix().len() + 1
        }
    };
    assert_eq!(s.len(), type_len + BODY_LEN, "length of {s:?}");
    let body = &s[type_len..];
    assert!(body
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert!(re.is_match(s), "the scanner regex misses a real key: {s:?}");
    let shown = f.display_prefix(s).expect("a parsed key has a display prefix");
    assert!(s.starts_with(&shown));
    assert_eq!(shown.len(), type_len + 8);
}

fuzz_target!(|data: &[u8]| {
    let all = &formats().all;
    // 1. Arbitrary text under every format.
    if let Ok(s) = std::str::from_utf8(data) {
        for (f, re) in all {
            check_parsed(f, re, s);
        }
    }
    // 2. A real key built from the input, then damaged by the input.
    if data.len() < RANDOM_BYTES + 4 {
        return;
    }
    let (random, rest) = data.split_at(RANDOM_BYTES);
    let random: [u8; RANDOM_BYTES] = random.try_into().unwrap();
    let (f, re) = &all[rest[0] as usize % all.len()];
    let env = if rest[1] & 1 == 0 {
        Environment::Live
    } else {
        Environment::Test
    };
    let key = f.assemble(env, &random);
    let key = key.expose();
    let parsed = f.parse(key).expect("an assembled key parses");
    assert_eq!(parsed.environment, f.env_in_key().then_some(env));
    assert!(re.is_match(key));
    for (other, _) in all {
        if other != f {
            assert!(other.parse(key).is_err(), "{key} is also a {other:?} key");
        }
    }
    // A burst of 1..=4 changed bytes at a chosen place, all before the checksum or all in
    // it: always refused. (A burst across the boundary is not one CRC burst: the checksum is
    // hex text, so it is not checked here.)
    let pos = rest[2] as usize % key.len();
    let burst = &rest[3..rest.len().min(7)];
    let checksum_at = key.len() - 8;
    if pos < checksum_at && pos + burst.len() > checksum_at {
        return;
    }
    let mut damaged = key.as_bytes().to_vec();
    let mut changed = false;
    for (i, b) in burst.iter().enumerate() {
        if let Some(slot) = damaged.get_mut(pos + i) {
            changed |= *slot != *b;
            *slot = *b;
        }
    }
    if changed {
        if let Ok(s) = std::str::from_utf8(&damaged) {
            assert!(f.parse(s).is_err(), "a damaged key parsed: {s:?} from {key:?}");
        }
    }
});
