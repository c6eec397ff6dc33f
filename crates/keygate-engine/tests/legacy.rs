//! Keys imported from another system and upgraded on first use, against a real store
//! (SQLite; PostgreSQL too when KEYGATE_TEST_POSTGRES is set). The legacy hashes are made by
//! an independent implementation, PHP (`password_hash`, `crypt`, `hash`), as the
//! invoicing-admin-api-auth reference makes them; the tests skip, saying so, without php-cli.

mod common;
use common::{engine, sqlite};

use std::process::Command;
use std::sync::Arc;

use keygate_core::Outcome;
use keygate_engine::manage::{Caller, NewAccount};
use keygate_engine::{Engine, Error, VerifyRequest};
use keygate_store::postgres::PostgresStore;
use keygate_store::Store;
use serde_json::json;

/// `php -r CODE KEY`: what PHP prints.
fn php(code: &str, key: &str) -> Option<String> {
    let output = match Command::new("php").args(["-r", code, key]).output() {
        Ok(output) => output,
        Err(_) => {
            keygate_test_support::skip("php-cli not installed");
            return None;
        }
    };
    assert!(output.status.success(), "php failed: {output:?}");
    Some(String::from_utf8(output.stdout).unwrap())
}

/// PHP's `password_hash` (`$2y$`), as the reference stores keys.
fn php_password_hash(key: &str) -> Option<String> {
    php(
        r#"echo password_hash($argv[1], PASSWORD_BCRYPT, ["cost" => 10]);"#,
        key,
    )
}

/// PHP's `crypt` with a `$2a$` salt.
fn php_crypt_2a(key: &str) -> Option<String> {
    php(
        r#"echo crypt($argv[1], '$2a$06$' . substr(strtr(base64_encode(random_bytes(18)), '+', '.'), 0, 22));"#,
        key,
    )
}

fn php_hash(algo: &str, key: &str) -> Option<String> {
    php(&format!(r#"echo hash("{algo}", $argv[1]);"#), key)
}

/// A key as the reference issues them: 64 hex characters, optionally behind a prefix.
fn reference_key(seed: u8, prefix: &str) -> String {
    let body: String = (0..32u8)
        .map(|i| format!("{:02x}", i.wrapping_mul(37).wrapping_add(seed)))
        .collect();
    format!("{prefix}{body}")
}

async fn account(engine: &Engine) -> String {
    engine
        .create_account(
            &Caller::admin(None),
            NewAccount {
                name: "invoicing".into(),
                plan: Some("unlimited".into()),
            },
        )
        .await
        .unwrap()
        .id
}

async fn verify(engine: &Engine, key: &str) -> Outcome {
    engine
        .verify(&VerifyRequest {
            key,
            ..VerifyRequest::default()
        })
        .await
        .unwrap()
        .outcome
}

/// A counter's value in the engine's Prometheus text.
fn metric(engine: &Engine, line_start: &str) -> u64 {
    engine
        .render_metrics()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start}"))
}

const BCRYPT_MATCHES: &str =
    "keygate_legacy_verifications_total{scheme=\"bcrypt\",result=\"match\"}";
const BCRYPT_MISMATCHES: &str =
    "keygate_legacy_verifications_total{scheme=\"bcrypt\",result=\"mismatch\"}";

fn line(account_id: &str, name: &str, hash: &str, lookup_prefix: Option<&str>) -> String {
    let mut line = json!({
        "account_id": account_id,
        "name": name,
        "hash": hash,
        "permissions": ["invoices.read"],
        "created_at": "2024-03-01 12:00:00",
        "meta": {"from": "invoicing"},
    });
    if let Some(prefix) = lookup_prefix {
        line["lookup_prefix"] = json!(prefix);
    }
    line.to_string()
}

/// The whole story on one store: PHP bcrypt hashes verify and a wrong key does not; the
/// first success upgrades the hash (the legacy state shows no hash, the next verification
/// is a cache hit without a bcrypt check); SHA and plaintext imports verify; running the
/// file again imports nothing; two keys behind one lookup prefix both verify.
async fn imported_keys_verify_and_upgrade(store: Arc<dyn Store>) {
    let node = engine(store.clone());
    let admin = Caller::admin(None);
    let account_id = account(&node).await;
    let bcrypt_key = reference_key(1, "inv_");
    let Some(bcrypt_hash) = php_password_hash(&bcrypt_key) else {
        return;
    };
    // Same lookup prefix (the reference's first 8 characters) as `bcrypt_key`.
    let twin_key = format!("{}{}", &bcrypt_key[..8], &reference_key(2, "")[8..]);
    let twin_hash = php_crypt_2a(&twin_key).unwrap();
    assert!(twin_hash.starts_with("$2a$06$"), "{twin_hash}");
    let sha256_key = reference_key(3, "");
    let sha512_key = reference_key(4, "");
    let plain_key = reference_key(5, "old-");
    // An old key that happens to be in keygate's own format (the same prefix was used).
    let native_looking = node
        .key_format()
        .generate(keygate_core::Environment::Live)
        .unwrap()
        .expose()
        .to_owned();
    let file = [
        line(
            &account_id,
            "bcrypt",
            &format!("bcrypt:{bcrypt_hash}"),
            Some(&bcrypt_key[..8]),
        ),
        line(
            &account_id,
            "twin",
            &format!("bcrypt:{twin_hash}"),
            Some(&twin_key[..8]),
        ),
        line(
            &account_id,
            "sha256",
            &format!("sha256:{}", php_hash("sha256", &sha256_key).unwrap()),
            None,
        ),
        line(
            &account_id,
            "sha512",
            &format!("sha512:{}", php_hash("sha512", &sha512_key).unwrap()),
            None,
        ),
        line(
            &account_id,
            "plain",
            &format!("plaintext:{plain_key}"),
            None,
        ),
        line(
            &account_id,
            "native-looking",
            &format!("sha256:{}", php_hash("sha256", &native_looking).unwrap()),
            None,
        ),
    ]
    .join("\n");

    let summary = node.import_keys(&admin, &file).await.unwrap();
    assert_eq!((summary.keys, summary.imported), (6, 6));
    let states = store.list_legacy_keys().await.unwrap();
    assert_eq!(states.len(), 6);
    let plain_state = states.iter().find(|s| s.scheme == "plaintext").unwrap();
    assert_eq!(plain_state.hash, None, "a plaintext key is never stored");

    // A wrong key behind the same prefix: refused after a bcrypt check of both candidates.
    let wrong = format!("{}{}", &bcrypt_key[..8], &reference_key(9, "")[8..]);
    assert_eq!(
        verify(&node, &wrong).await,
        Outcome::InvalidKey(keygate_core::InvalidReason::Unknown)
    );
    assert_eq!(metric(&node, BCRYPT_MISMATCHES), 2);
    // Asked again: the negative cache answers, no bcrypt check.
    assert_eq!(
        verify(&node, &wrong).await,
        Outcome::InvalidKey(keygate_core::InvalidReason::Unknown)
    );
    assert_eq!(metric(&node, BCRYPT_MISMATCHES), 2);

    // The right key: one bcrypt match, then the legacy hash is gone.
    assert_eq!(verify(&node, &bcrypt_key).await, Outcome::Valid);
    assert_eq!(metric(&node, BCRYPT_MATCHES), 1);
    let upgraded = store.list_legacy_keys().await.unwrap();
    let bcrypt_state = upgraded
        .iter()
        .find(|s| s.hash.is_none() && s.scheme == "bcrypt")
        .expect("the bcrypt key is upgraded");
    assert!(bcrypt_state.upgraded_at.is_some());
    assert_eq!(
        upgraded
            .iter()
            .filter(|s| s.hash.as_deref() == Some(bcrypt_hash.as_str()))
            .count(),
        0,
        "no bcrypt hash of the used key is left"
    );
    let record = store
        .find_key_by_digest(&node.pepper().digest(bcrypt_key.as_bytes()))
        .await
        .unwrap()
        .expect("stored under keygate's digest now");
    assert_eq!(record.permissions, vec!["invoices.read".to_owned()]);
    assert_eq!(record.meta, json!({"from": "invoicing"}));
    assert_eq!(record.created_at, 1_709_294_400_000);

    // Later verifications: cache hits, no store, no bcrypt.
    let misses = metric(&node, "keygate_cache_misses_total");
    for _ in 0..3 {
        assert_eq!(verify(&node, &bcrypt_key).await, Outcome::Valid);
    }
    assert_eq!(metric(&node, "keygate_cache_misses_total"), misses);
    assert_eq!(metric(&node, BCRYPT_MATCHES), 1);
    // Another node (cold cache) finds the upgraded key by its digest, without bcrypt.
    let other = engine(store.clone());
    assert_eq!(verify(&other, &bcrypt_key).await, Outcome::Valid);
    assert_eq!(metric(&other, BCRYPT_MATCHES), 0);

    // The twin behind the same prefix, and the SHA and plaintext keys.
    assert_eq!(verify(&node, &twin_key).await, Outcome::Valid);
    assert_eq!(verify(&node, &sha256_key).await, Outcome::Valid);
    assert_eq!(verify(&node, &sha512_key).await, Outcome::Valid);
    assert_eq!(verify(&node, &plain_key).await, Outcome::Valid);
    assert_eq!(verify(&node, &native_looking).await, Outcome::Valid);
    // One character off: unknown, not malformed (imported keys exist).
    let mut off = sha256_key.clone();
    off.replace_range(..1, if off.starts_with('0') { "1" } else { "0" });
    assert_eq!(
        verify(&node, &off).await,
        Outcome::InvalidKey(keygate_core::InvalidReason::Unknown)
    );
    assert!(store
        .list_legacy_keys()
        .await
        .unwrap()
        .iter()
        .all(|s| s.hash.is_none()));

    // The same file again, after every key was upgraded: nothing new.
    let again = node.import_keys(&admin, &file).await.unwrap();
    assert_eq!((again.imported, again.already_present), (0, 6));
    assert_eq!(store.list_keys(Some(&account_id)).await.unwrap().len(), 6);
    assert_eq!(verify(&node, &bcrypt_key).await, Outcome::Valid);
}

#[tokio::test]
async fn imported_keys_verify_and_upgrade_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    imported_keys_verify_and_upgrade(sqlite(&dir).await).await;
}

#[tokio::test]
async fn imported_keys_verify_and_upgrade_on_postgres() {
    let Some(server) = keygate_test_support::postgres_url() else {
        return;
    };
    let url = keygate_test_support::fresh_postgres_database(&server).await;
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&url, true).await.unwrap());
    imported_keys_verify_and_upgrade(store).await;
}

/// Every wrong line is named with its field, and nothing is written.
#[tokio::test]
async fn a_bad_file_names_each_line_and_field_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let node = engine(store.clone());
    let account_id = account(&node).await;
    let good = line(
        &account_id,
        "good",
        &format!("sha256:{}", "ab".repeat(32)),
        None,
    );
    let file = [
        good.clone(),
        line(&account_id, "no prefix", &format!("bcrypt:$2y$10${}", "a".repeat(53)), None),
        line("acct_missing", "orphan", &format!("sha256:{}", "cd".repeat(32)), None),
        r#"{"account_id":"x","name":"n","hash":"md5:abc"}"#.to_owned(),
        "not json".to_owned(),
        good.clone(),
        json!({"account_id": account_id, "name": "n", "hash": "plaintext:k3y-secret", "colour": 1}).to_string(),
        json!({"account_id": account_id, "hash": "plaintext:k3y-secret"}).to_string(),
        json!({"account_id": account_id, "name": "n", "hash": "plaintext:k3y-secret", "expires_at": "tomorrow"}).to_string(),
    ]
    .join("\n");
    let error = node
        .import_keys(&Caller::admin(None), &file)
        .await
        .unwrap_err();
    let Error::Validation { field, message } = error else {
        panic!("not a validation error: {error:?}");
    };
    assert_eq!(field, "lookup_prefix");
    for expected in [
        "line 2: lookup_prefix:",
        "line 3: account_id: no such account",
        "line 4: hash: hash must be bcrypt:",
        "line 5: line: not JSON",
        "line 6: hash: the same key as line 1",
        "line 7: colour: unknown field",
        "line 8: name: name is required",
        "line 9: expires_at:",
    ] {
        assert!(message.contains(expected), "{expected:?} not in {message}");
    }
    assert!(!message.contains("line 1:"), "{message}");
    assert!(
        !message.contains("k3y-secret"),
        "an error repeats a key: {message}"
    );
    assert!(store.list_legacy_keys().await.unwrap().is_empty());
    assert!(store.list_keys(None).await.unwrap().is_empty());
}

/// Without imported keys a string outside keygate's format is malformed (no store lookup);
/// only the admin imports.
#[tokio::test]
async fn without_imported_keys_garbage_stays_malformed_and_only_the_admin_imports() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let node = engine(store.clone());
    let account_id = account(&node).await;
    assert_eq!(
        verify(&node, "not-a-key-at-all").await,
        Outcome::MalformedKey
    );
    let (_, secret) = node
        .create_key(
            &Caller::admin(None),
            keygate_engine::manage::NewKey {
                account_id: Some(account_id.clone()),
                name: "self".into(),
                permissions: Some(vec!["*".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let verdict = node
        .verify(&VerifyRequest {
            key: secret.expose(),
            ..VerifyRequest::default()
        })
        .await
        .unwrap();
    let caller = Caller {
        actor: keygate_engine::manage::Actor::Key(verdict.key.unwrap()),
        client_ip: None,
    };
    let file = line(
        &account_id,
        "k",
        &format!("sha256:{}", "ab".repeat(32)),
        None,
    );
    assert!(matches!(
        node.import_keys(&caller, &file).await,
        Err(Error::Forbidden(_))
    ));
    assert!(store.list_legacy_keys().await.unwrap().is_empty());
}

/// A burst of wrong keys against one legacy prefix: bcrypt checks are bounded (a few at a
/// time, a bounded queue past which the answer is "unavailable"), every answer is a refusal,
/// and the right key still verifies afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_keys_against_a_prefix_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let node = engine(store.clone());
    let account_id = account(&node).await;
    let key = reference_key(11, "");
    let Some(hash) = php_password_hash(&key) else {
        return;
    };
    node.import_keys(
        &Caller::admin(None),
        &line(&account_id, "k", &format!("bcrypt:{hash}"), Some(&key[..8])),
    )
    .await
    .unwrap();
    let burst = 200;
    let answers = futures::future::join_all((0..burst).map(|i| {
        let node = node.clone();
        let wrong = format!("{}{:056x}", &key[..8], i);
        async move {
            node.verify(&VerifyRequest {
                key: &wrong,
                ..VerifyRequest::default()
            })
            .await
            .map(|v| v.outcome)
        }
    }))
    .await;
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Ok(Outcome::InvalidKey(_))))
        .count();
    let busy = answers
        .iter()
        .filter(|a| matches!(a, Err(Error::Unavailable(_))))
        .count();
    assert_eq!(refused + busy, burst, "{answers:?}");
    assert!(busy > 0, "the queue bound never applied");
    // Those answered "unavailable" cost no bcrypt check.
    assert_eq!(metric(&node, BCRYPT_MISMATCHES), refused as u64);
    assert_eq!(metric(&node, "keygate_legacy_busy_total"), busy as u64);
    assert_eq!(verify(&node, &key).await, Outcome::Valid);
}

/// First-use (bcrypt, cost 10 as PHP's default) and later (HMAC, cache hit) verification
/// times over `KEYGATE_LEGACY_TIMING_KEYS` keys (default 10), printed; the later ones must
/// be at least 100 times faster. Figures: `cargo test -p keygate-engine --test legacy --
/// first_use --nocapture` (the test profile: dependencies at opt-level 1).
#[tokio::test]
async fn first_use_pays_bcrypt_once_and_later_verifications_are_cache_hits() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let node = engine(store.clone());
    let account_id = account(&node).await;
    let count: u8 = std::env::var("KEYGATE_LEGACY_TIMING_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let mut keys = Vec::new();
    let mut file = Vec::new();
    for i in 0..count {
        let key = reference_key(100 + i, "inv_");
        let Some(hash) = php_password_hash(&key) else {
            return;
        };
        file.push(line(
            &account_id,
            "k",
            &format!("bcrypt:{hash}"),
            Some(&key[..12]),
        ));
        keys.push(key);
    }
    node.import_keys(&Caller::admin(None), &file.join("\n"))
        .await
        .unwrap();
    let timed = |rounds: u32| {
        let node = node.clone();
        let keys = keys.clone();
        async move {
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                for key in &keys {
                    assert_eq!(verify(&node, key).await, Outcome::Valid);
                }
            }
            started.elapsed() / (rounds * keys.len() as u32)
        }
    };
    let first = timed(1).await;
    let later = timed(1000).await;
    eprintln!(
        "{} imported bcrypt keys: first use {first:?} per key (bcrypt + upgrade), later {later:?} per verification",
        keys.len()
    );
    assert_eq!(metric(&node, BCRYPT_MATCHES), u64::from(count));
    assert!(later * 100 < first, "first {first:?}, later {later:?}");
}
