//! GitHub secret scanning's signatures: each report is signed with ECDSA P-256 / SHA-256
//! (base64 DER in `Github-Public-Key-Signature`) by the key `Github-Public-Key-Identifier`
//! names, one of those GitHub publishes (`{"public_keys": [{"key_identifier", "key",
//! "is_current"}]}`). The list is fetched on first use, kept, and fetched again when an
//! unknown identifier arrives (GitHub rotated its key), at most once per `refetch_after`
//! so that forged identifiers cannot make keygate hammer the list.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

/// Largest key list read (GitHub's is a few hundred bytes per key).
const MAX_LIST_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a report's signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or malformed signature headers")]
    Malformed,
    #[error("unknown public key identifier")]
    UnknownKey,
    #[error("the signature does not verify")]
    Invalid,
    #[error("cannot fetch the scanning public keys: {0}")]
    KeysUnavailable(String),
}

#[derive(Deserialize)]
struct KeyList {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

#[derive(Default)]
struct Keyring {
    keys: HashMap<String, VerifyingKey>,
    fetched_at: Option<Instant>,
}

/// The public keys GitHub signs reports with, fetched from `url` and cached.
pub struct GithubScanningKeys {
    url: String,
    refetch_after: Duration,
    client: reqwest::Client,
    // A fetch holds the lock, so concurrent reports wait for one fetch instead of each
    // making their own.
    keyring: tokio::sync::Mutex<Keyring>,
}

impl std::fmt::Debug for GithubScanningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubScanningKeys")
            .field("url", &self.url)
            .field("refetch_after", &self.refetch_after)
            .finish_non_exhaustive()
    }
}

impl Default for GithubScanningKeys {
    fn default() -> Self {
        GithubScanningKeys::new(Self::DEFAULT_URL, Self::REFETCH_AFTER)
    }
}

impl GithubScanningKeys {
    /// GitHub's published key list.
    pub const DEFAULT_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";
    /// The shortest pause between two fetches of the key list.
    pub const REFETCH_AFTER: Duration = Duration::from_secs(60);

    pub fn new(url: &str, refetch_after: Duration) -> GithubScanningKeys {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            // GitHub's API refuses requests without a User-Agent.
            .user_agent(concat!("keygate/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        GithubScanningKeys {
            url: url.to_owned(),
            refetch_after,
            client,
            keyring: tokio::sync::Mutex::new(Keyring::default()),
        }
    }

    /// Where the key list is fetched from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Checks `signature` (base64 DER) over `body` with the key `key_id`.
    pub async fn verify(
        &self,
        key_id: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        // The cheap checks first: a garbled signature costs no key lookup or fetch.
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| SignatureError::Malformed)?;
        let signature = Signature::from_der(&der).map_err(|_| SignatureError::Malformed)?;
        if key_id.is_empty() {
            return Err(SignatureError::Malformed);
        }
        let key = self.key(key_id).await?;
        key.verify(body, &signature)
            .map_err(|_| SignatureError::Invalid)
    }

    async fn key(&self, key_id: &str) -> Result<VerifyingKey, SignatureError> {
        let mut keyring = self.keyring.lock().await;
        if let Some(key) = keyring.keys.get(key_id) {
            return Ok(*key);
        }
        if keyring
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.refetch_after)
        {
            return Err(SignatureError::UnknownKey);
        }
        // Counted before the fetch, so that a failing list is not asked again at once.
        keyring.fetched_at = Some(Instant::now());
        keyring.keys = self.fetch().await?;
        keyring
            .keys
            .get(key_id)
            .copied()
            .ok_or(SignatureError::UnknownKey)
    }

    async fn fetch(&self) -> Result<HashMap<String, VerifyingKey>, SignatureError> {
        let unavailable =
            |e: &dyn std::fmt::Display| SignatureError::KeysUnavailable(e.to_string());
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| unavailable(&e.without_url()))?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unavailable(&e))? {
            if body.len() + chunk.len() > MAX_LIST_BYTES {
                return Err(unavailable(&"the key list is larger than 1 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        let list: KeyList = serde_json::from_slice(&body).map_err(|e| unavailable(&e))?;
        let mut keys = HashMap::new();
        for published in list.public_keys {
            match VerifyingKey::from_public_key_pem(&published.key) {
                Ok(key) => {
                    keys.insert(published.key_identifier, key);
                }
                Err(e) => tracing::warn!(
                    key_identifier = %published.key_identifier,
                    error = %e,
                    "skipping a scanning public key that is not a P-256 PEM key"
                ),
            }
        }
        tracing::info!(keys = keys.len(), "fetched the secret scanning public keys");
        Ok(keys)
    }
}
