//! The token signing keys: generated here, stored sealed, shared by every node through the
//! store, rotated on a schedule.
//!
//! The private half is sealed with ChaCha20-Poly1305 under `HMAC-SHA256(pepper, "keygate
//! token signing")`, with the `kid` as associated data (a sealed key moved to another row
//! does not open). The public half is stored as it is published.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{SigningKey, VerifyingKey};
use keygate_core::Pepper;
use keygate_store::SigningKeyRecord;

use super::jwt::thumbprint;
use crate::{Error, Result};

/// What the sealing key is derived for (changing it would orphan every stored key).
const SEALING_LABEL: &[u8] = b"keygate token signing";
const NONCE_LEN: usize = 12;

/// One generation of the signing key.
pub struct RingKey {
    pub generation: i64,
    pub kid: String,
    pub created_at: i64,
    pub public: VerifyingKey,
    /// `None` when the sealed half does not open with this pepper (logged once, on load).
    pub signing: Option<SigningKey>,
}

/// Every signing key this node knows, oldest generation first.
#[derive(Default)]
pub struct Ring {
    pub keys: Vec<RingKey>,
}

impl Ring {
    pub fn from_records(records: &[SigningKeyRecord], pepper: &Pepper) -> Ring {
        let cipher = sealing_cipher(pepper);
        let keys = records
            .iter()
            .filter_map(|r| {
                let public = URL_SAFE_NO_PAD
                    .decode(&r.public_key)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .and_then(|b| VerifyingKey::from_bytes(&b).ok());
                let Some(public) = public else {
                    tracing::error!(kid = %r.kid, "stored token signing key does not parse; skipping it");
                    return None;
                };
                let signing = unseal(&cipher, r).filter(|s| s.verifying_key() == public);
                if signing.is_none() {
                    tracing::error!(kid = %r.kid, "token signing key does not open with this pepper; it can verify but not sign");
                }
                Some(RingKey {
                    generation: r.generation,
                    kid: r.kid.clone(),
                    created_at: r.created_at,
                    public,
                    signing,
                })
            })
            .collect();
        Ring { keys }
    }

    pub fn newest(&self) -> Option<&RingKey> {
        self.keys.last()
    }

    pub fn find(&self, kid: &str) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The keys whose tokens may still be alive at `now_ms`: the newest, and each older one
    /// until `max_ttl_ms` after its successor took over signing.
    pub fn published(&self, now_ms: i64, max_ttl_ms: i64) -> impl Iterator<Item = &RingKey> {
        self.keys.iter().enumerate().filter_map(move |(i, key)| {
            let alive = match self.keys.get(i + 1) {
                None => true,
                Some(next) => now_ms < next.created_at.saturating_add(max_ttl_ms),
            };
            alive.then_some(key)
        })
    }
}

/// A fresh signing key for `generation`, sealed for the store.
pub fn generate(generation: i64, pepper: &Pepper, now_ms: i64) -> Result<SigningKeyRecord> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(seed.as_mut())
        .map_err(|_| Error::Internal("no randomness for a token signing key".into()))?;
    let signing = SigningKey::from_bytes(&seed);
    let public = signing.verifying_key();
    let kid = thumbprint(&public);
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce)
        .map_err(|_| Error::Internal("no randomness for a token signing key".into()))?;
    let sealed = sealing_cipher(pepper)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: seed.as_ref(),
                aad: kid.as_bytes(),
            },
        )
        .map_err(|_| Error::Internal("sealing the token signing key failed".into()))?;
    let mut stored = nonce.to_vec();
    stored.extend_from_slice(&sealed);
    Ok(SigningKeyRecord {
        generation,
        kid,
        public_key: URL_SAFE_NO_PAD.encode(public.as_bytes()),
        private_key: URL_SAFE_NO_PAD.encode(stored),
        created_at: now_ms,
    })
}

fn sealing_cipher(pepper: &Pepper) -> ChaCha20Poly1305 {
    let key = pepper.digest(SEALING_LABEL);
    ChaCha20Poly1305::new(Key::from_slice(&key.0))
}

fn unseal(cipher: &ChaCha20Poly1305, record: &SigningKeyRecord) -> Option<SigningKey> {
    let stored = URL_SAFE_NO_PAD.decode(&record.private_key).ok()?;
    if stored.len() <= NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = stored.split_at(NONCE_LEN);
    let seed = zeroize::Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: record.kid.as_bytes(),
                },
            )
            .ok()?,
    );
    let seed: &[u8; 32] = seed.as_slice().try_into().ok()?;
    Some(SigningKey::from_bytes(seed))
}

/// The ring as last read, shared by readers without a lock held across an await.
pub type SharedRing = std::sync::RwLock<Arc<Ring>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_with_its_pepper_only() {
        let pepper = Pepper::new(vec![1; 32]);
        let record = generate(1, &pepper, 1000).unwrap();
        assert!(!record.private_key.contains(&record.public_key));
        let ring = Ring::from_records(std::slice::from_ref(&record), &pepper);
        let key = ring.find(&record.kid).unwrap();
        assert_eq!(key.signing.as_ref().unwrap().verifying_key(), key.public);

        let other = Ring::from_records(std::slice::from_ref(&record), &Pepper::new(vec![2; 32]));
        assert!(other.find(&record.kid).unwrap().signing.is_none());

        // The sealed half bound to its kid: moved under another kid it does not open.
        let mut moved = record;
        moved.kid = "another".into();
        let ring = Ring::from_records(&[moved], &pepper);
        assert!(ring.newest().unwrap().signing.is_none());
    }

    #[test]
    fn an_old_key_stays_published_until_its_tokens_expired() {
        let pepper = Pepper::new(vec![1; 32]);
        let old = generate(1, &pepper, 0).unwrap();
        let new = generate(2, &pepper, 10_000).unwrap();
        let ring = Ring::from_records(&[old.clone(), new.clone()], &pepper);
        let kids = |now| {
            ring.published(now, 3_600_000)
                .map(|k| k.kid.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kids(10_000 + 3_599_999),
            vec![old.kid.clone(), new.kid.clone()]
        );
        assert_eq!(kids(10_000 + 3_600_000), vec![new.kid]);
    }
}
