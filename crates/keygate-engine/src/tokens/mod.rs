//! Short-lived tokens derived from a key: a key trades itself for a JWT (EdDSA) with a
//! narrower scope and a short life, which services verify offline against the JWKS and
//! every keygate edge accepts where configured.
//!
//! - `jwt.rs`: the compact JWS format. `ring.rs`: the signing keys (sealed in the store,
//!   rotated, published). `verify.rs`: a token on the verification path.
//! - Unlike a plain signed token, a token dies with its key: the parent is checked through
//!   the engine's cache (by a key id → digest map), so revoking or narrowing the key refuses
//!   its tokens on every node as soon as the node hears of the change.

mod jwt;
mod ring;
mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use keygate_core::{KeyDigest, PermissionSet};

pub use jwt::{looks_like_token, Claims, MAX_TOKEN_LEN};

use crate::cache::CachedKey;
use crate::{clock, now_ms, Engine, Error, Result};
use ring::Ring;

/// How tokens are issued and accepted.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// Whether the verification path accepts tokens (forward-auth, `/v1/verify`, gateway,
    /// tower layer). Issuing and the JWKS do not depend on it.
    pub accept: bool,
    /// The longest life a token gets.
    pub max_ttl: Duration,
    /// How long one signing key signs before the next takes over.
    pub rotation: Duration,
    /// The audience this deployment's edges expect. Unset: only tokens without an `aud`
    /// are accepted (a token made for another service is not taken here).
    pub audience: Option<String>,
}

impl TokenSettings {
    pub const DEFAULT: TokenSettings = TokenSettings {
        accept: true,
        max_ttl: Duration::from_secs(3600),
        rotation: Duration::from_secs(30 * 86_400),
        audience: None,
    };
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings::DEFAULT
    }
}

/// What a key asks for (`POST /v1/tokens`).
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    /// A subset of the key's permissions; `None`: all of them.
    pub permissions: Option<Vec<String>>,
    /// `None`: the longest allowed.
    pub ttl_seconds: Option<u64>,
    pub audience: Option<String>,
}

/// A token just made. Its `Debug` leaves the token out: it is a credential.
pub struct IssuedToken {
    pub token: String,
    pub claims: Claims,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

/// One public key of the JWKS (RFC 8037 OKP).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Jwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub x: String,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub alg: &'static str,
}

/// A token whose signature checked out, kept so the next request with it skips Ed25519.
struct VerifiedToken {
    claims: Claims,
    scope: PermissionSet,
    /// `exp` in unix milliseconds.
    expires_at: i64,
}

/// Key ids → digests the token path has seen: known after one store read per key. A
/// digest never changes for an id, so entries never go stale; the map is cleared when full.
const MAX_PARENTS: usize = 100_000;
/// An unknown `kid` reloads the ring from the store at most this often.
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// The JWKS re-reads the store this often, so another node's rotation shows.
const JWKS_REFRESH: Duration = Duration::from_secs(60);

/// The token state of one engine.
pub(crate) struct Tokens {
    settings: OnceLock<TokenSettings>,
    ring: ring::SharedRing,
    /// One reload (and rotation) at a time.
    reloading: tokio::sync::Mutex<()>,
    /// When the ring was last read ([`clock::coarse_monotonic_ns`]); 0: never.
    loaded_at: AtomicU64,
    parents: RwLock<HashMap<Box<str>, KeyDigest>>,
    verified: moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
}

impl Tokens {
    pub(crate) fn new() -> Tokens {
        Tokens {
            settings: OnceLock::new(),
            ring: RwLock::new(Arc::new(Ring::default())),
            reloading: tokio::sync::Mutex::new(()),
            loaded_at: AtomicU64::new(0),
            parents: RwLock::new(HashMap::new()),
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    fn ring(&self) -> Arc<Ring> {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn age(&self) -> Duration {
        let at = self.loaded_at.load(Ordering::Relaxed);
        if at == 0 {
            return Duration::MAX;
        }
        Duration::from_nanos(clock::coarse_monotonic_ns().saturating_sub(at))
    }
}

impl Engine {
    /// Sets how tokens are issued and accepted (once, at start; defaults otherwise).
    pub fn configure_tokens(&self, settings: TokenSettings) {
        if self.tokens.settings.set(settings).is_err() {
            tracing::warn!("token settings are set already; keeping the first");
        }
    }

    pub fn token_settings(&self) -> &TokenSettings {
        self.tokens
            .settings
            .get()
            .unwrap_or(&TokenSettings::DEFAULT)
    }

    /// Does the verification path take `credential` as a token?
    pub fn accepts_token(&self, credential: &str) -> bool {
        self.token_settings().accept && looks_like_token(credential)
    }

    /// Makes sure a current signing key exists (creating or rotating it), so the JWKS is
    /// never empty. Called at start; issuing does the same when it needs to.
    pub async fn prepare_signing_key(&self) -> Result<()> {
        self.current_signing_key().await.map(|_| ())
    }

    /// The public keys whose tokens may still be alive: the JWKS `keys`.
    pub async fn jwks(&self) -> Result<Vec<Jwk>> {
        if self.tokens.age() >= JWKS_REFRESH {
            self.reload_ring().await?;
        }
        let ring = self.tokens.ring();
        let max_ttl = millis(self.token_settings().max_ttl);
        Ok(ring
            .published(now_ms(), max_ttl)
            .map(|k| Jwk {
                kty: "OKP",
                crv: "Ed25519",
                x: URL_SAFE_NO_PAD.encode(k.public.as_bytes()),
                kid: k.kid.clone(),
                use_: "sig",
                alg: "EdDSA",
            })
            .collect())
    }

    /// Issues a token for `key` (the verified caller). Its scope is the asked permissions,
    /// all within the key's (else `insufficient_permissions`); its life ends at the
    /// earliest of `ttl_seconds`, the configured maximum, and the key's own end.
    pub async fn issue_token(
        &self,
        key: &CachedKey,
        request: &TokenRequest,
    ) -> Result<IssuedToken> {
        if key.token_id().is_some() {
            return Err(Error::Forbidden(
                "a token cannot be traded for another token; use the key".into(),
            ));
        }
        let scope = match &request.permissions {
            None => key.permissions().clone(),
            Some(asked) if asked.is_empty() => {
                return Err(Error::validation(
                    "permissions",
                    "permissions must name at least one permission",
                ))
            }
            Some(asked) => PermissionSet::parse(asked)
                .map_err(|e| Error::validation("permissions", e.to_string()))?,
        };
        if !key.permissions().covers(&scope) {
            return Err(Error::Refused(
                keygate_core::Outcome::InsufficientPermissions,
            ));
        }
        let settings = self.token_settings();
        let max_ttl = settings.max_ttl.as_secs();
        let ttl = match request.ttl_seconds {
            Some(0) => {
                return Err(Error::validation(
                    "ttl_seconds",
                    "ttl_seconds must be at least 1",
                ))
            }
            Some(ttl) => ttl.min(max_ttl),
            None => max_ttl,
        };
        let audience = match request.audience.as_deref().map(str::trim) {
            None => None,
            Some(a) if a.is_empty() || a.len() > 255 || a.chars().any(char::is_control) => {
                return Err(Error::validation(
                    "audience",
                    "audience must be 1 to 255 printable characters",
                ))
            }
            Some(a) => Some(a.to_owned()),
        };
        let now = now_ms();
        let ends = [key.expires_at(), key.revoked_at()];
        let mut exp_ms =
            now.saturating_add(i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX));
        for end in ends.into_iter().flatten() {
            exp_ms = exp_ms.min(end);
        }
        // JWT times are whole seconds: round the end down, never past the key's.
        let exp = exp_ms.div_euclid(1000);
        let iat = now.div_euclid(1000);
        if exp <= iat {
            return Err(Error::Refused(keygate_core::Outcome::InvalidKey(
                keygate_core::InvalidReason::Expired,
            )));
        }
        let claims = Claims {
            sub: key.id().to_owned(),
            acct: key.account_id().to_owned(),
            env: key.environment().as_str().to_owned(),
            scope: scope.to_strings().join(" "),
            aud: audience,
            iat,
            exp,
            jti: token_id()?,
        };
        let ring = self.current_signing_key().await?;
        let Some(signer) = ring
            .newest()
            .and_then(|k| k.signing.as_ref().map(|s| (k, s)))
        else {
            return Err(Error::Internal(
                "the current token signing key does not open with this pepper".into(),
            ));
        };
        let token = jwt::sign(&claims, &signer.0.kid, signer.1)
            .map_err(|e| Error::Internal(format!("encoding a token: {e}")))?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(Error::validation(
                "permissions",
                "the token would be too long for a header; ask for fewer permissions",
            ));
        }
        Ok(IssuedToken { token, claims })
    }

    /// The ring with a current signing key: the newest one if it is younger than the
    /// rotation period, else a new generation (made by this node or, if another node won
    /// the race to insert it, that node's).
    async fn current_signing_key(&self) -> Result<Arc<Ring>> {
        let fresh = |ring: &Ring| {
            ring.newest().is_some_and(|k| {
                now_ms().saturating_sub(k.created_at) < millis(self.token_settings().rotation)
            })
        };
        let ring = self.tokens.ring();
        if fresh(&ring) {
            return Ok(ring);
        }
        let _one = self.tokens.reloading.lock().await;
        let ring = self.load_ring().await?;
        if fresh(&ring) {
            return Ok(ring);
        }
        let generation = ring.newest().map_or(1, |k| k.generation + 1);
        let record = ring::generate(generation, &self.pepper, now_ms())?;
        if self.store.insert_signing_key(&record).await? {
            tracing::info!(kid = %record.kid, generation, "created a token signing key");
        }
        self.load_ring().await
    }

    /// Re-reads the signing keys from the store (one reader at a time).
    async fn reload_ring(&self) -> Result<Arc<Ring>> {
        let _one = self.tokens.reloading.lock().await;
        self.load_ring().await
    }

    async fn load_ring(&self) -> Result<Arc<Ring>> {
        let records = self.store.signing_keys().await?;
        let ring = Arc::new(Ring::from_records(&records, &self.pepper));
        *self
            .tokens
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ring.clone();
        self.tokens
            .loaded_at
            .store(clock::coarse_monotonic_ns().max(1), Ordering::Relaxed);
        Ok(ring)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A token id: 128 random bits.
fn token_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|_| Error::Internal("no randomness for a token id".into()))?;
    Ok(format!("tok_{}", URL_SAFE_NO_PAD.encode(bytes)))
}
