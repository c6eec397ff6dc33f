//! The operator's admin token: stored as a digest, compared in constant time.

use keygate_core::key::random_hex;
use keygate_core::{KeyDigest, Pepper};

use crate::{Error, Result};

/// Prefix of generated admin tokens, so they are easy to recognise (and scan for).
pub const ADMIN_TOKEN_PREFIX: &str = "kgadm_";

/// The digest of the admin token.
#[derive(Clone, Debug)]
pub struct AdminToken {
    digest: KeyDigest,
}

impl AdminToken {
    pub fn from_digest(digest: KeyDigest) -> AdminToken {
        AdminToken { digest }
    }

    pub fn from_secret(pepper: &Pepper, token: &str) -> AdminToken {
        AdminToken {
            digest: pepper.digest(token.as_bytes()),
        }
    }

    pub fn digest(&self) -> &KeyDigest {
        &self.digest
    }

    /// A new random token (256 bits) and its digest.
    pub fn generate(pepper: &Pepper) -> Result<(String, AdminToken)> {
        let token = format!(
            "{ADMIN_TOKEN_PREFIX}{}",
            random_hex(32).map_err(|e| Error::Internal(e.to_string()))?
        );
        let admin = AdminToken::from_secret(pepper, &token);
        Ok((token, admin))
    }

    /// Constant-time check of a presented token.
    pub fn matches(&self, pepper: &Pepper, presented: &str) -> bool {
        self.matches_digest(&pepper.digest(presented.as_bytes()))
    }

    /// Constant-time check of a presented token's digest: one digest checked against
    /// several tokens costs one HMAC.
    pub fn matches_digest(&self, presented: &KeyDigest) -> bool {
        presented.ct_eq(&self.digest)
    }
}
