//! The keys that sign short-lived tokens, as stored: public halves in the clear (they are
//! published anyway), private halves sealed by the engine before they get here.

/// One generation of the token signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// 1, 2, …: the newest signs. Two nodes rotating at once both try the same next
    /// generation; one insert wins and both then use the winner's key.
    pub generation: i64,
    /// The JWK `kid`.
    pub kid: String,
    /// The Ed25519 public key, base64url (no padding), as in the JWK `x`.
    pub public_key: String,
    /// The private key sealed by the engine (nonce and ciphertext, base64url).
    pub private_key: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("generation", &self.generation)
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}
