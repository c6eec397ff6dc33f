//! Server-side sessions in the store (through the engine), shared by every node and kept
//! across restarts: the browser holds a random secret in a cookie, the store its digest,
//! the CSRF token, who the session acts as and a one-time notice.
//!
//! A new secret waits for its one showing (POST → 303 → the secret page, maybe on another
//! node) sealed in the session: ChaCha20-Poly1305 under a key derived from the session's
//! own cookie secret, which the store never sees, so the database alone cannot open it.
//!
//! The sign-in form has no session yet: its CSRF token is a double-submit cookie.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use keygate_core::key::{random_hex, to_hex};
use keygate_core::ApiKeySecret;
use keygate_engine::sessions::{Lifetime, Session};
use keygate_engine::{now_ms, Engine, Error};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// The dashboard's session cookie.
pub const COOKIE: &str = "keygate_session";
/// The sign-in form's double-submit CSRF cookie.
pub const SIGN_IN_COOKIE: &str = "keygate_sign_in";
/// Dashboard sessions end after 30 minutes without a request, 12 hours in any case.
pub const LIFETIME: Lifetime = Lifetime {
    idle_ms: 30 * 60 * 1000,
    absolute_ms: 12 * 3600 * 1000,
};
pub const KIND: &str = "dashboard";
/// A secret waiting for its one showing is dropped after this long if not fetched.
pub const REVEAL_MS: i64 = 120_000;

/// A live session as a request sees it: the cookie secret and the stored record.
#[derive(Clone)]
pub struct SessionView {
    pub secret: String,
    pub record: Session,
}

impl SessionView {
    pub fn csrf(&self) -> &str {
        &self.record.csrf
    }

    /// Writes `edit`'s change to the session's data.
    async fn edit(
        &mut self,
        engine: &Engine,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Result<(), Error> {
        if !self.record.data.is_object() {
            self.record.data = Value::Object(Default::default());
        }
        if let Value::Object(map) = &mut self.record.data {
            edit(map);
        }
        engine
            .set_session_data(&self.record, &self.record.data)
            .await
    }

    /// The one-line notice for the next page ("Key revoked.").
    pub async fn set_flash(&mut self, engine: &Engine, message: String) -> Result<(), Error> {
        self.edit(engine, |m| {
            m.insert("flash".into(), Value::String(message));
        })
        .await
    }

    /// Takes the waiting notice, if any (one write only when there is one).
    pub async fn take_flash(&mut self, engine: &Engine) -> Result<Option<String>, Error> {
        let flash = self
            .record
            .data
            .get("flash")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if flash.is_some() {
            self.edit(engine, |m| {
                m.remove("flash");
            })
            .await?;
        }
        Ok(flash)
    }

    /// Keeps `reveal` sealed for the one page that shows it (replacing any unshown one).
    pub async fn put_reveal(&mut self, engine: &Engine, reveal: Reveal) -> Result<(), Error> {
        let sealed = seal(&self.secret, &reveal)?;
        self.edit(engine, |m| {
            m.insert("reveal".into(), sealed);
        })
        .await
    }

    /// Takes the waiting secret of `key_id`, if it is still fresh. It is gone afterwards.
    pub async fn take_reveal(
        &mut self,
        engine: &Engine,
        key_id: &str,
    ) -> Result<Option<Reveal>, Error> {
        let Some(sealed) = self.record.data.get("reveal") else {
            return Ok(None);
        };
        let Some(reveal) = open(&self.secret, sealed) else {
            return Ok(None);
        };
        if reveal.key_id != key_id {
            // A different key's secret waits; leave it for its own page.
            return Ok(None);
        }
        self.edit(engine, |m| {
            m.remove("reveal");
        })
        .await?;
        Ok((now_ms() - reveal.at <= REVEAL_MS).then_some(reveal))
    }
}

/// A new secret waiting to be shown once (create or rotate → 303 → the secret page).
pub struct Reveal {
    pub key_id: String,
    pub secret: ApiKeySecret,
    /// The key a rotation replaced.
    pub rotated_from: Option<String>,
    at: i64,
}

impl Reveal {
    pub fn new(key_id: String, secret: ApiKeySecret, rotated_from: Option<String>) -> Reveal {
        Reveal {
            key_id,
            secret,
            rotated_from,
            at: now_ms(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SealedReveal {
    key_id: String,
    rotated_from: Option<String>,
    at: i64,
    nonce: String,
    sealed: String,
}

/// The sealing key: HMAC-SHA256 of a fixed label under the session's cookie secret.
fn cipher(session_secret: &str) -> Option<ChaCha20Poly1305> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(session_secret.as_bytes()).ok()?;
    mac.update(b"keygate session reveal v1");
    let key = mac.finalize().into_bytes();
    Some(ChaCha20Poly1305::new(Key::from_slice(&key)))
}

fn seal(session_secret: &str, reveal: &Reveal) -> Result<Value, Error> {
    let internal = || Error::Internal("cannot seal a new secret for its showing".into());
    let cipher = cipher(session_secret).ok_or_else(internal)?;
    let nonce_hex = random_hex(12).map_err(|_| internal())?;
    let nonce = keygate_core::key::from_hex(&nonce_hex).ok_or_else(internal)?;
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), reveal.secret.expose().as_bytes())
        .map_err(|_| internal())?;
    serde_json::to_value(SealedReveal {
        key_id: reveal.key_id.clone(),
        rotated_from: reveal.rotated_from.clone(),
        at: reveal.at,
        nonce: nonce_hex,
        sealed: to_hex(&sealed),
    })
    .map_err(|_| internal())
}

fn open(session_secret: &str, value: &Value) -> Option<Reveal> {
    let sealed: SealedReveal = serde_json::from_value(value.clone()).ok()?;
    let nonce = keygate_core::key::from_hex(&sealed.nonce).filter(|n| n.len() == 12)?;
    let bytes = keygate_core::key::from_hex(&sealed.sealed)?;
    let plain = cipher(session_secret)?
        .decrypt(Nonce::from_slice(&nonce), bytes.as_slice())
        .ok()?;
    Some(Reveal {
        key_id: sealed.key_id,
        secret: ApiKeySecret::new_unchecked(String::from_utf8(plain).ok()?),
        rotated_from: sealed.rotated_from,
        at: sealed.at,
    })
}

/// The value of cookie `name` in a request's `Cookie` headers, if it looks like ours
/// (hex, at most 128 characters).
pub fn from_cookies(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The dashboard session secret in a request's cookies.
pub fn id_from_cookies(headers: &axum::http::HeaderMap) -> Option<String> {
    from_cookies(headers, COOKIE)
}

/// `Set-Cookie` for `name`: HttpOnly, `same_site`, scoped to `path`, Secure when the
/// client reached us over TLS. No Max-Age: it ends with the browser, and the server ends
/// it sooner.
pub fn cookie_for(name: &str, value: &str, path: &str, same_site: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; HttpOnly; SameSite={same_site}{secure}")
}

/// `Set-Cookie` that deletes cookie `name`.
pub fn clear_cookie_for(name: &str, path: &str, same_site: &str, secure: bool) -> String {
    format!(
        "{}; Max-Age=0",
        cookie_for(name, "", path, same_site, secure)
    )
}

/// The dashboard session cookie: SameSite=Strict (no flow reaches the dashboard from
/// another site).
pub fn cookie(id: &str, secure: bool) -> String {
    cookie_for(COOKIE, id, "/dashboard", "Strict", secure)
}

pub fn clear_cookie(secure: bool) -> String {
    clear_cookie_for(COOKIE, "/dashboard", "Strict", secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_session_secret() {
        let reveal = Reveal::new(
            "key_1".into(),
            ApiKeySecret::new_unchecked("kg_test_x".into()),
            None,
        );
        let sealed = seal("aa11", &reveal).unwrap();
        assert!(!sealed.to_string().contains("kg_test_x"));
        assert_eq!(open("aa11", &sealed).unwrap().secret.expose(), "kg_test_x");
        assert!(open("aa12", &sealed).is_none());
    }

    #[test]
    fn cookies_are_read_and_written_strictly() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=b; keygate_session=0a1b; c=d".parse().unwrap(),
        );
        assert_eq!(id_from_cookies(&h).as_deref(), Some("0a1b"));
        h.insert(
            axum::http::header::COOKIE,
            "keygate_session=<script>".parse().unwrap(),
        );
        assert_eq!(id_from_cookies(&h), None);
        assert_eq!(
            cookie("ab", false),
            "keygate_session=ab; Path=/dashboard; HttpOnly; SameSite=Strict"
        );
        assert!(cookie("ab", true).ends_with("; Secure"));
    }
}
