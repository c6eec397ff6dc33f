//! Server-side sessions: an opaque random id in a cookie, everything else in memory here.
//!
//! Sessions live in this process only: they do not survive a restart and are not shared
//! between nodes (behind a load balancer, pin the dashboard to one node or sign in again).
//! A session starts anonymous (it carries the CSRF token of the sign-in form) and gets a new
//! id when it signs in, so an id planted before sign-in is worth nothing after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keygate_core::key::random_hex;
use keygate_core::ApiKeySecret;
use keygate_engine::CachedKey;

/// The cookie that carries the session id.
pub const COOKIE: &str = "keygate_session";
/// A signed-in session ends after this long without a request…
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// …and after this long in any case.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// An anonymous session (a sign-in form not yet sent) ends after this long.
pub const ANONYMOUS: Duration = Duration::from_secs(15 * 60);
/// A secret waiting for its one showing is dropped after this long if not fetched.
pub const REVEAL: Duration = Duration::from_secs(120);
/// Most sessions held; past it, anonymous sessions are evicted oldest first, so a flood
/// of sign-in page loads cannot push signed-in operators out.
const MAX_ANONYMOUS: usize = 10_000;

/// Who a signed-in session acts as.
#[derive(Clone, Debug)]
pub enum Principal {
    Admin,
    /// A self-service key, as it verified at sign-in. Rechecked on every request.
    Key(Arc<CachedKey>),
}

/// A new secret waiting to be shown once (create or rotate → 303 → this page).
pub struct Reveal {
    pub key_id: String,
    pub secret: ApiKeySecret,
    /// The key a rotation replaced.
    pub rotated_from: Option<String>,
    at: Instant,
}

impl Reveal {
    pub fn new(key_id: String, secret: ApiKeySecret, rotated_from: Option<String>) -> Reveal {
        Reveal {
            key_id,
            secret,
            rotated_from,
            at: Instant::now(),
        }
    }
}

struct Session {
    csrf: String,
    principal: Option<Principal>,
    created: Instant,
    last_seen: Instant,
    reveal: Option<Reveal>,
    flash: Option<String>,
}

impl Session {
    fn new(principal: Option<Principal>) -> Option<Session> {
        let now = Instant::now();
        Some(Session {
            csrf: random_hex(32).ok()?,
            principal,
            created: now,
            last_seen: now,
            reveal: None,
            flash: None,
        })
    }

    fn expired(&self, now: Instant) -> bool {
        match self.principal {
            None => now.duration_since(self.created) > ANONYMOUS,
            Some(_) => {
                now.duration_since(self.last_seen) > IDLE
                    || now.duration_since(self.created) > ABSOLUTE
            }
        }
    }
}

/// What a request learns about its session.
#[derive(Clone)]
pub struct SessionView {
    pub id: String,
    pub csrf: String,
    pub principal: Option<Principal>,
}

#[derive(Default)]
pub struct SessionStore {
    sessions: Mutex<HashMap<String, Session>>,
}

fn new_id() -> Option<String> {
    random_hex(32).ok()
}

impl SessionStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves the map consistent (no multi-step edits).
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live session `id` names; refreshes its idle timer. An expired one is removed.
    pub fn get(&self, id: &str) -> Option<SessionView> {
        let mut map = self.lock();
        let now = Instant::now();
        let session = map.get_mut(id)?;
        if session.expired(now) {
            map.remove(id);
            return None;
        }
        session.last_seen = now;
        Some(SessionView {
            id: id.to_owned(),
            csrf: session.csrf.clone(),
            principal: session.principal.clone(),
        })
    }

    /// A new anonymous session (for the sign-in form). `None` if randomness failed.
    pub fn start_anonymous(&self) -> Option<SessionView> {
        let session = Session::new(None)?;
        let id = new_id()?;
        let view = SessionView {
            id: id.clone(),
            csrf: session.csrf.clone(),
            principal: None,
        };
        let mut map = self.lock();
        Self::make_room(&mut map);
        map.insert(id, session);
        Some(view)
    }

    /// Signs in: drops the anonymous session `previous` and starts a new one under a
    /// fresh id and CSRF token.
    pub fn sign_in(&self, previous: Option<&str>, principal: Principal) -> Option<SessionView> {
        let session = Session::new(Some(principal.clone()))?;
        let id = new_id()?;
        let view = SessionView {
            id: id.clone(),
            csrf: session.csrf.clone(),
            principal: Some(principal),
        };
        let mut map = self.lock();
        if let Some(old) = previous {
            map.remove(old);
        }
        map.insert(id, session);
        Some(view)
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Keeps `reveal` for the one page that shows it (replacing any unshown one).
    pub fn put_reveal(&self, id: &str, reveal: Reveal) {
        if let Some(s) = self.lock().get_mut(id) {
            s.reveal = Some(reveal);
        }
    }

    /// Takes the waiting secret of `key_id`, if it is still fresh. It is gone afterwards.
    pub fn take_reveal(&self, id: &str, key_id: &str) -> Option<Reveal> {
        let mut map = self.lock();
        let session = map.get_mut(id)?;
        let reveal = session.reveal.take()?;
        if reveal.key_id != key_id {
            // A different key's secret waits; leave it for its own page.
            session.reveal = Some(reveal);
            return None;
        }
        (reveal.at.elapsed() <= REVEAL).then_some(reveal)
    }

    /// A one-line notice for the next page ("Key revoked.").
    pub fn set_flash(&self, id: &str, message: impl Into<String>) {
        if let Some(s) = self.lock().get_mut(id) {
            s.flash = Some(message.into());
        }
    }

    pub fn take_flash(&self, id: &str) -> Option<String> {
        self.lock().get_mut(id)?.flash.take()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn make_room(map: &mut HashMap<String, Session>) {
        let anonymous = map.values().filter(|s| s.principal.is_none()).count();
        if anonymous < MAX_ANONYMOUS {
            return;
        }
        let now = Instant::now();
        map.retain(|_, s| !s.expired(now));
        let mut anon: Vec<(String, Instant)> = map
            .iter()
            .filter(|(_, s)| s.principal.is_none())
            .map(|(id, s)| (id.clone(), s.created))
            .collect();
        if anon.len() < MAX_ANONYMOUS {
            return;
        }
        anon.sort_by_key(|(_, created)| *created);
        let excess = anon.len() + 1 - MAX_ANONYMOUS;
        for (id, _) in anon.into_iter().take(excess) {
            map.remove(&id);
        }
    }
}

/// The session id in a request's `Cookie` headers, if any.
pub fn id_from_cookies(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `Set-Cookie` for a session: HttpOnly, SameSite=Strict, scoped to the dashboard, Secure
/// when the client reached us over TLS. No Max-Age: it ends with the browser, and the
/// server ends it sooner.
pub fn cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/dashboard; HttpOnly; SameSite=Strict{secure}")
}

/// `Set-Cookie` that deletes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_replaces_the_anonymous_session() {
        let store = SessionStore::default();
        let anon = store.start_anonymous().unwrap();
        assert!(store.get(&anon.id).unwrap().principal.is_none());
        let signed = store.sign_in(Some(&anon.id), Principal::Admin).unwrap();
        assert_ne!(signed.id, anon.id);
        assert_ne!(signed.csrf, anon.csrf);
        assert!(store.get(&anon.id).is_none());
        assert!(matches!(
            store.get(&signed.id).unwrap().principal,
            Some(Principal::Admin)
        ));
        store.remove(&signed.id);
        assert!(store.get(&signed.id).is_none());
    }

    #[test]
    fn a_secret_is_revealed_once() {
        let store = SessionStore::default();
        let s = store.sign_in(None, Principal::Admin).unwrap();
        let secret = ApiKeySecret::new_unchecked("kg_test_x".into());
        store.put_reveal(&s.id, Reveal::new("key_1".into(), secret, None));
        assert!(store.take_reveal(&s.id, "key_2").is_none());
        assert_eq!(
            store.take_reveal(&s.id, "key_1").unwrap().secret.expose(),
            "kg_test_x"
        );
        assert!(store.take_reveal(&s.id, "key_1").is_none());
    }

    #[test]
    fn anonymous_sessions_are_bounded() {
        let store = SessionStore::default();
        let admin = store.sign_in(None, Principal::Admin).unwrap();
        for _ in 0..MAX_ANONYMOUS + 10 {
            store.start_anonymous().unwrap();
        }
        assert!(store.len() <= MAX_ANONYMOUS + 1);
        assert!(store.get(&admin.id).is_some());
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
