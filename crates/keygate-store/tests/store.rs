//! Integration tests of the store backends against real databases: each test runs on
//! SQLite (a temporary file) as `sqlite::<name>` and on PostgreSQL (a fresh database on the
//! server at `KEYGATE_TEST_POSTGRES`) as `postgres::<name>`. Without `KEYGATE_TEST_POSTGRES`
//! the PostgreSQL runs print that they skipped and pass. A few tests are about one backend
//! only (SQLite processes opening one file at once; PostgreSQL nodes migrating at once).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keygate_core::{Environment, KeyDigest, Pepper};
use keygate_store::postgres::PostgresStore;
use keygate_store::sqlite::SqliteStore;
use keygate_store::{
    Account, AuditEvent, KeyPatch, KeyRecord, Quota, RateLimit, Store, StoreError, UsageCount,
    UsageUpdate,
};
use serde_json::json;
use tempfile::TempDir;

/// "Now" for every test, in unix milliseconds.
const NOW: i64 = 1_700_000_000_000;

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn next() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

// --- the database under test ---------------------------------------------------------------

/// Where a test's database lives; `open` connects to it again (a reopen, or a second node).
enum TestDb {
    Sqlite(TempDir),
    Postgres(String),
}

impl TestDb {
    fn sqlite() -> TestDb {
        TestDb::Sqlite(TempDir::new().unwrap())
    }

    /// A fresh database on the `KEYGATE_TEST_POSTGRES` server, or `None` (and a note on
    /// stderr) when it is unset.
    async fn postgres() -> Option<TestDb> {
        let server = keygate_test_support::postgres_url()?;
        Some(TestDb::Postgres(
            keygate_test_support::fresh_postgres_database(&server).await,
        ))
    }

    async fn open(&self) -> Arc<dyn Store> {
        match self {
            TestDb::Sqlite(dir) => Arc::new(open(dir).await),
            TestDb::Postgres(url) => Arc::new(PostgresStore::open(url, true).await.unwrap()),
        }
    }

    /// Opens the database again and runs the migrations twice more (nothing to do).
    async fn open_and_migrate_again(&self) -> Arc<dyn Store> {
        match self {
            TestDb::Sqlite(dir) => {
                let store = open(dir).await;
                store.migrate().await.unwrap();
                Arc::new(store)
            }
            TestDb::Postgres(url) => {
                let store = PostgresStore::open(url, true).await.unwrap();
                store.migrate().await.unwrap();
                Arc::new(store)
            }
        }
    }

    /// `schema_migrations`, by version.
    async fn migration_rows(&self) -> Vec<(i64, String)> {
        const SQL: &str = "SELECT version, name FROM schema_migrations ORDER BY version";
        match self {
            TestDb::Sqlite(dir) => sqlite_migration_rows(dir).await,
            TestDb::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let rows = sqlx::query_as(SQL).fetch_all(&pool).await.unwrap();
                pool.close().await;
                rows
            }
        }
    }
}

/// Declares each named test body (`async fn(Arc<dyn Store>, TestDb)`) as a test on each
/// backend: `sqlite::<name>` and `postgres::<name>`.
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::TestDb::sqlite();
                    let store = db.open().await;
                    super::$name(store, db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = super::TestDb::postgres().await else { return };
                    let store = db.open().await;
                    super::$name(store, db).await;
                }
            )*
        }
    };
}

on_each_backend!(
    accounts_create_get_list,
    update_account_changes_name_and_or_plan,
    every_write_appends_one_audit_event_newest_first_with_pagination,
    create_key_round_trips_every_field,
    a_key_looked_up_within_an_account_is_found_only_there,
    duplicate_digest_or_id_is_rejected,
    key_for_unknown_account_is_an_error,
    cap_counts_only_active_keys,
    expired_keys_do_not_count_but_future_expiry_does,
    scheduled_revocation_still_counts_until_it_takes_effect,
    cap_is_exact_with_60_concurrent_creates,
    cap_is_exact_with_100_concurrent_creates,
    update_key_applies_each_field,
    update_key_refuses_revoked_expired_and_unknown_keys,
    revoke_is_idempotent_and_keeps_the_first_time,
    earlier_revocation_wins_over_a_scheduled_one,
    rotate_inserts_new_key_and_schedules_old_revocation,
    rotate_refuses_inactive_or_unknown_keys_and_inserts_nothing,
    rotate_is_one_transaction,
    record_usage_keeps_max_time_and_adds_counts,
    concurrent_usage_batches_all_count,
    settings_insert_if_absent,
    concurrent_setting_inserts_store_exactly_one,
    everything_survives_a_reopen,
    migrations_apply_once,
    import_copies_records_as_they_are_and_can_run_again,
    bulk_import_and_usage_flush_span_several_statements,
    usage_flushes_of_two_nodes_in_opposite_orders_both_land,
    key_changes_reach_another_handle,
    sessions_expire_are_taken_once_and_pruned,
);

// --- records -------------------------------------------------------------------------------

fn url(dir: &TempDir) -> String {
    format!("sqlite://{}/t.db", dir.path().display())
}

async fn open(dir: &TempDir) -> SqliteStore {
    SqliteStore::open(&url(dir)).await.unwrap()
}

fn digest(bytes: &[u8]) -> KeyDigest {
    Pepper::new(vec![1; 32]).digest(bytes)
}

fn account(id: &str) -> Account {
    Account {
        id: id.to_owned(),
        name: format!("{id} Inc."),
        plan: "free".to_owned(),
        created_at: NOW,
    }
}

fn audit(account_id: Option<&str>, action: &str, target_id: Option<&str>) -> AuditEvent {
    let n = next();
    AuditEvent {
        id: format!("evt_{n}"),
        seq: 0,
        at: NOW + n as i64,
        account_id: account_id.map(str::to_owned),
        actor: "admin".to_owned(),
        action: action.to_owned(),
        target_id: target_id.map(str::to_owned),
        client_ip: Some("203.0.113.7".to_owned()),
        details: json!({ "n": n, "why": "test" }),
    }
}

/// A minimal active key with a unique id and digest.
fn key(account_id: &str) -> KeyRecord {
    let id = format!("key_{}", next());
    KeyRecord {
        digest: digest(id.as_bytes()),
        id,
        account_id: account_id.to_owned(),
        name: "default".to_owned(),
        display_prefix: "sk_live_abcd".to_owned(),
        environment: Environment::Live,
        permissions: vec![],
        ip_allowlist: vec![],
        rate_limit: None,
        quota: None,
        quota_used: 0,
        meta: json!({}),
        created_at: NOW,
        last_used_at: None,
        expires_at: None,
        revoked_at: None,
        rotated_from: None,
        recent_ips: Vec::new(),
        quota_refilled_at: None,
        leaked_at: None,
        retire_when_idle_ms: None,
    }
}

/// A key with every optional field set.
fn full_key(account_id: &str) -> KeyRecord {
    KeyRecord {
        name: "billing worker".to_owned(),
        display_prefix: "sk_test_wxyz".to_owned(),
        environment: Environment::Test,
        permissions: vec!["invoices.read".to_owned(), "customers.*".to_owned()],
        ip_allowlist: vec!["10.0.0.0/8".to_owned(), "2001:db8::1".to_owned()],
        rate_limit: Some(RateLimit {
            requests: 100,
            per_seconds: 60,
        }),
        quota: Some(Quota {
            requests: 10_000,
            refill: None,
        }),
        quota_used: 17,
        meta: json!({ "team": "billing", "tags": ["a", "b"], "nested": { "x": 1, "y": null } }),
        created_at: NOW - 5_000,
        last_used_at: Some(NOW - 1_000),
        expires_at: Some(NOW + 86_400_000),
        revoked_at: Some(NOW + 3_600_000),
        rotated_from: Some("key_previous".to_owned()),
        leaked_at: Some(NOW - 500),
        retire_when_idle_ms: Some(60_000),
        ..key(account_id)
    }
}

/// Creates an account (with its audit event) and returns it.
async fn add_account(store: &Arc<dyn Store>, id: &str) -> Account {
    let a = account(id);
    store
        .create_account(&a, &audit(Some(id), "account.create", Some(id)))
        .await
        .unwrap();
    a
}

/// Inserts `k` without a cap.
async fn add_key(store: &Arc<dyn Store>, k: &KeyRecord) {
    store
        .create_key(
            k,
            None,
            NOW,
            &audit(Some(&k.account_id), "key.create", Some(&k.id)),
        )
        .await
        .unwrap();
}

async fn create_capped(
    store: &Arc<dyn Store>,
    k: &KeyRecord,
    cap: u64,
    now: i64,
) -> Result<(), StoreError> {
    store
        .create_key(
            k,
            Some(cap),
            now,
            &audit(Some(&k.account_id), "key.create", Some(&k.id)),
        )
        .await
}

async fn audit_of(store: &Arc<dyn Store>, account_id: &str) -> Vec<AuditEvent> {
    store
        .list_audit(Some(account_id), None, 10_000)
        .await
        .unwrap()
}

async fn audit_count(store: &Arc<dyn Store>, account_id: &str) -> usize {
    audit_of(store, account_id).await.len()
}

async fn get(store: &Arc<dyn Store>, id: &str) -> KeyRecord {
    store.get_key(id).await.unwrap().unwrap()
}

fn without_seq(mut ev: AuditEvent) -> AuditEvent {
    ev.seq = 0;
    ev
}

// --- 1. accounts and the audit log ---------------------------------------------------------

async fn accounts_create_get_list(store: Arc<dyn Store>, _db: TestDb) {
    store.ping().await.unwrap();
    assert!(store.list_accounts().await.unwrap().is_empty());

    let a = add_account(&store, "acct_a").await;
    let b = Account {
        created_at: NOW + 1,
        plan: "pro".to_owned(),
        ..account("acct_b")
    };
    store
        .create_account(&b, &audit(Some("acct_b"), "account.create", Some("acct_b")))
        .await
        .unwrap();

    assert_eq!(store.get_account("acct_a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_account("acct_b").await.unwrap(), Some(b.clone()));
    assert_eq!(store.get_account("acct_nope").await.unwrap(), None);
    assert_eq!(store.list_accounts().await.unwrap(), vec![a.clone(), b]);

    // A duplicate id fails and its audit event is not kept (same transaction).
    let dup_ev = audit(Some("acct_a"), "account.create", Some("acct_a"));
    let err = store
        .create_account(&account("acct_a"), &dup_ev)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate), "{err:?}");
    assert_eq!(audit_count(&store, "acct_a").await, 1);
    assert_eq!(store.get_account("acct_a").await.unwrap(), Some(a));
}

async fn update_account_changes_name_and_or_plan(store: Arc<dyn Store>, _db: TestDb) {
    let a = add_account(&store, "acct_u").await;

    let got = store
        .update_account(
            "acct_u",
            Some("Renamed"),
            None,
            &audit(Some("acct_u"), "account.update", Some("acct_u")),
        )
        .await
        .unwrap();
    let expect = Account {
        name: "Renamed".to_owned(),
        ..a.clone()
    };
    assert_eq!(got, expect);
    assert_eq!(
        store.get_account("acct_u").await.unwrap(),
        Some(expect.clone())
    );

    let got = store
        .update_account(
            "acct_u",
            None,
            Some("pro"),
            &audit(Some("acct_u"), "account.update", Some("acct_u")),
        )
        .await
        .unwrap();
    let expect = Account {
        plan: "pro".to_owned(),
        ..expect
    };
    assert_eq!(got, expect);
    assert_eq!(
        store.get_account("acct_u").await.unwrap(),
        Some(expect.clone())
    );

    let got = store
        .update_account(
            "acct_u",
            Some("Both"),
            Some("enterprise"),
            &audit(Some("acct_u"), "account.update", Some("acct_u")),
        )
        .await
        .unwrap();
    let expect = Account {
        name: "Both".to_owned(),
        plan: "enterprise".to_owned(),
        ..expect
    };
    assert_eq!(got, expect);
    assert_eq!(store.get_account("acct_u").await.unwrap(), Some(expect));
    assert_eq!(got.created_at, a.created_at);

    // Unknown id: NotFound, and no audit event is written.
    let before = store.list_audit(None, None, 1000).await.unwrap().len();
    let err = store
        .update_account(
            "acct_nope",
            Some("x"),
            None,
            &audit(Some("acct_nope"), "account.update", None),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(
        store.list_audit(None, None, 1000).await.unwrap().len(),
        before
    );
    assert_eq!(store.get_account("acct_nope").await.unwrap(), None);
}

async fn every_write_appends_one_audit_event_newest_first_with_pagination(
    store: Arc<dyn Store>,
    _db: TestDb,
) {
    let mut sent = Vec::new();

    let a = account("acct_1");
    let ev = audit(Some("acct_1"), "account.create", Some("acct_1"));
    store.create_account(&a, &ev).await.unwrap();
    sent.push(ev);

    // Another account's events must not show up in acct_1's log.
    add_account(&store, "acct_2").await;
    add_key(&store, &key("acct_2")).await;

    let ev = audit(Some("acct_1"), "account.update", Some("acct_1"));
    store
        .update_account("acct_1", Some("New name"), None, &ev)
        .await
        .unwrap();
    sent.push(ev);

    let k = key("acct_1");
    let ev = audit(Some("acct_1"), "key.create", Some(&k.id));
    store.create_key(&k, Some(10), NOW, &ev).await.unwrap();
    sent.push(ev);

    let ev = audit(Some("acct_1"), "key.update", Some(&k.id));
    let patch = KeyPatch {
        name: Some("renamed".to_owned()),
        ..KeyPatch::default()
    };
    store.update_key(&k.id, &patch, NOW, &ev).await.unwrap();
    sent.push(ev);

    let k2 = key("acct_1");
    let ev = audit(Some("acct_1"), "key.rotate", Some(&k.id));
    store
        .rotate_key(&k.id, &k2, NOW + 1000, None, NOW, &ev)
        .await
        .unwrap();
    sent.push(ev);

    let ev = audit(Some("acct_1"), "key.revoke", Some(&k2.id));
    store.revoke_key(&k2.id, NOW, &ev).await.unwrap();
    sent.push(ev);

    // All of acct_1's events, newest first, exactly as sent (but for seq).
    let log = audit_of(&store, "acct_1").await;
    assert_eq!(log.len(), sent.len());
    let expect: Vec<AuditEvent> = sent.iter().rev().cloned().collect();
    assert_eq!(
        log.iter().cloned().map(without_seq).collect::<Vec<_>>(),
        expect
    );
    assert!(
        log.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first by seq"
    );

    // Everything: 6 for acct_1, 2 for acct_2.
    let all = store.list_audit(None, None, 1000).await.unwrap();
    assert_eq!(all.len(), 8);
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq));
    assert_eq!(audit_count(&store, "acct_2").await, 2);

    // `limit` is respected and `before` pages by seq.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = store.list_audit(Some("acct_1"), before, 4).await.unwrap();
        assert!(page.len() <= 4);
        if page.is_empty() {
            break;
        }
        assert!(page.iter().all(|e| before.is_none_or(|b| e.seq < b)));
        before = Some(page.last().unwrap().seq);
        paged.extend(page);
    }
    assert_eq!(paged, log);
    let page = store
        .list_audit(Some("acct_1"), Some(log[1].seq), 100)
        .await
        .unwrap();
    assert_eq!(page, log[2..].to_vec());
    assert!(store
        .list_audit(Some("acct_1"), Some(log.last().unwrap().seq), 100)
        .await
        .unwrap()
        .is_empty());
    assert!(audit_of(&store, "acct_none").await.is_empty());
}

// --- 2. keys round-trip --------------------------------------------------------------------

async fn create_key_round_trips_every_field(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_k").await;

    let full = full_key("acct_k");
    add_key(&store, &full).await;
    assert_eq!(store.get_key(&full.id).await.unwrap(), Some(full.clone()));
    assert_eq!(
        store.find_key_by_digest(&full.digest).await.unwrap(),
        Some(full.clone())
    );

    let minimal = KeyRecord {
        created_at: NOW + 1,
        ..key("acct_k")
    };
    add_key(&store, &minimal).await;
    assert_eq!(get(&store, &minimal.id).await, minimal);
    assert_eq!(
        store.find_key_by_digest(&minimal.digest).await.unwrap(),
        Some(minimal.clone())
    );

    // Oldest first.
    assert_eq!(
        store.list_keys(Some("acct_k")).await.unwrap(),
        vec![full.clone(), minimal.clone()]
    );
    assert_eq!(store.list_keys(None).await.unwrap(), vec![full, minimal]);
    assert!(store
        .list_keys(Some("acct_other"))
        .await
        .unwrap()
        .is_empty());

    assert_eq!(store.get_key("key_nope").await.unwrap(), None);
    assert_eq!(
        store.find_key_by_digest(&digest(b"unknown")).await.unwrap(),
        None
    );
}

/// Issue 16: a tenant's lookup is scoped in the query, so a foreign key is the same miss as
/// an unknown one (no row decoded and then refused).
async fn a_key_looked_up_within_an_account_is_found_only_there(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_mine").await;
    add_account(&store, "acct_theirs").await;
    let mine = key("acct_mine");
    let theirs = KeyRecord {
        created_at: NOW + 1,
        ..key("acct_theirs")
    };
    add_key(&store, &mine).await;
    add_key(&store, &theirs).await;
    assert_eq!(
        store.get_account_key("acct_mine", &mine.id).await.unwrap(),
        Some(mine.clone())
    );
    assert_eq!(
        store
            .get_account_key("acct_mine", &theirs.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_account_key("acct_mine", "key_nope")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.get_account_key("acct_nope", &mine.id).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .get_account_key("acct_theirs", &theirs.id)
            .await
            .unwrap(),
        Some(theirs)
    );
}

async fn duplicate_digest_or_id_is_rejected(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_d").await;
    let k = key("acct_d");
    add_key(&store, &k).await;

    let same_digest = KeyRecord {
        digest: k.digest,
        ..key("acct_d")
    };
    let err = create_capped(&store, &same_digest, 100, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate), "{err:?}");
    assert_eq!(store.get_key(&same_digest.id).await.unwrap(), None);

    let same_id = KeyRecord {
        id: k.id.clone(),
        ..key("acct_d")
    };
    let err = store
        .create_key(
            &same_id,
            None,
            NOW,
            &audit(Some("acct_d"), "key.create", None),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate), "{err:?}");
    assert_eq!(
        store.find_key_by_digest(&same_id.digest).await.unwrap(),
        None
    );

    assert_eq!(
        store.list_keys(Some("acct_d")).await.unwrap(),
        vec![k.clone()]
    );
    assert_eq!(get(&store, &k.id).await, k);
    // account.create + one key.create: the failed creates left no audit event.
    assert_eq!(audit_count(&store, "acct_d").await, 2);
}

async fn key_for_unknown_account_is_an_error(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_real").await;

    for cap in [None, Some(5)] {
        let k = key("acct_ghost");
        let err = store
            .create_key(
                &k,
                cap,
                NOW,
                &audit(Some("acct_ghost"), "key.create", Some(&k.id)),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert_eq!(store.get_key(&k.id).await.unwrap(), None);
    }
    assert!(store.list_keys(None).await.unwrap().is_empty());
    assert!(audit_of(&store, "acct_ghost").await.is_empty());
}

// --- 3. plan caps --------------------------------------------------------------------------

async fn cap_counts_only_active_keys(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_c").await;

    let k1 = key("acct_c");
    let k2 = key("acct_c");
    let k3 = key("acct_c");
    create_capped(&store, &k1, 2, NOW).await.unwrap();
    create_capped(&store, &k2, 2, NOW).await.unwrap();
    let err = create_capped(&store, &k3, 2, NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::CapReached), "{err:?}");
    assert_eq!(store.get_key(&k3.id).await.unwrap(), None);
    assert_eq!(store.list_keys(Some("acct_c")).await.unwrap().len(), 2);
    assert_eq!(audit_count(&store, "acct_c").await, 3);

    // A revoked key (revoked_at == now) frees its slot.
    store
        .revoke_key(
            &k1.id,
            NOW,
            &audit(Some("acct_c"), "key.revoke", Some(&k1.id)),
        )
        .await
        .unwrap();
    create_capped(&store, &k3, 2, NOW).await.unwrap();
    let err = create_capped(&store, &key("acct_c"), 2, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CapReached), "{err:?}");

    // Another account is not affected by acct_c's keys.
    add_account(&store, "acct_c2").await;
    create_capped(&store, &key("acct_c2"), 1, NOW)
        .await
        .unwrap();
    let err = create_capped(&store, &key("acct_c2"), 1, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CapReached), "{err:?}");

    // Cap 0 allows nothing; no cap allows anything.
    add_account(&store, "acct_c3").await;
    let err = create_capped(&store, &key("acct_c3"), 0, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CapReached), "{err:?}");
    for _ in 0..5 {
        add_key(&store, &key("acct_c3")).await;
    }
    assert_eq!(store.list_keys(Some("acct_c3")).await.unwrap().len(), 5);
}

async fn expired_keys_do_not_count_but_future_expiry_does(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_e").await;
    // Expired exactly now and in the past: neither counts.
    add_key(
        &store,
        &KeyRecord {
            expires_at: Some(NOW),
            ..key("acct_e")
        },
    )
    .await;
    add_key(
        &store,
        &KeyRecord {
            expires_at: Some(NOW - 1),
            ..key("acct_e")
        },
    )
    .await;
    // Revoked in the past: does not count either.
    add_key(
        &store,
        &KeyRecord {
            revoked_at: Some(NOW - 10),
            ..key("acct_e")
        },
    )
    .await;

    create_capped(
        &store,
        &KeyRecord {
            expires_at: Some(NOW + 1),
            ..key("acct_e")
        },
        2,
        NOW,
    )
    .await
    .unwrap();
    create_capped(&store, &key("acct_e"), 2, NOW).await.unwrap();
    let err = create_capped(&store, &key("acct_e"), 2, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CapReached), "{err:?}");
    assert_eq!(store.list_keys(Some("acct_e")).await.unwrap().len(), 5);

    // One millisecond later the key expiring at NOW + 1 no longer counts.
    create_capped(&store, &key("acct_e"), 2, NOW + 1)
        .await
        .unwrap();
}

async fn scheduled_revocation_still_counts_until_it_takes_effect(
    store: Arc<dyn Store>,
    _db: TestDb,
) {
    add_account(&store, "acct_s").await;
    let k = key("acct_s");
    create_capped(&store, &k, 1, NOW).await.unwrap();
    // Schedule the revocation in the future.
    store
        .revoke_key(
            &k.id,
            NOW + 1000,
            &audit(Some("acct_s"), "key.revoke", Some(&k.id)),
        )
        .await
        .unwrap();
    assert_eq!(get(&store, &k.id).await.revoked_at, Some(NOW + 1000));

    let err = create_capped(&store, &key("acct_s"), 1, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CapReached), "{err:?}");
    let err = create_capped(&store, &key("acct_s"), 1, NOW + 999)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CapReached), "{err:?}");
    // Once revoked_at <= now it no longer counts.
    create_capped(&store, &key("acct_s"), 1, NOW + 1000)
        .await
        .unwrap();

    // Same for a key inserted with a scheduled revocation (a rotation's grace period).
    add_account(&store, "acct_s2").await;
    add_key(
        &store,
        &KeyRecord {
            revoked_at: Some(NOW + 1),
            ..key("acct_s2")
        },
    )
    .await;
    let err = create_capped(&store, &key("acct_s2"), 1, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CapReached), "{err:?}");
}

// --- 4. caps under concurrency -------------------------------------------------------------

async fn race(store: Arc<dyn Store>, n: usize, cap: u64) {
    let acct = format!("acct_race_{n}");
    add_account(&store, &acct).await;

    let mut tasks = Vec::new();
    for _ in 0..n {
        let store = store.clone();
        let k = key(&acct);
        tasks.push(tokio::spawn(async move {
            create_capped(&store, &k, cap, NOW).await.map(|()| k.id)
        }));
    }
    let mut ok = Vec::new();
    let mut capped = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(id) => ok.push(id),
            Err(StoreError::CapReached) => capped += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(ok.len() as u64, cap);
    assert_eq!(capped as u64, n as u64 - cap);

    let mut listed: Vec<String> = store
        .list_keys(Some(&acct))
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    listed.sort();
    ok.sort();
    assert_eq!(listed, ok);
    // account.create + one key.create per successful insert.
    assert_eq!(audit_count(&store, &acct).await as u64, cap + 1);
}

async fn cap_is_exact_with_60_concurrent_creates(store: Arc<dyn Store>, _db: TestDb) {
    race(store, 60, 20).await;
}

async fn cap_is_exact_with_100_concurrent_creates(store: Arc<dyn Store>, _db: TestDb) {
    race(store, 100, 20).await;
}

// --- 5. update_key -------------------------------------------------------------------------

async fn patch(
    store: &Arc<dyn Store>,
    id: &str,
    p: &KeyPatch,
    now: i64,
) -> Result<KeyRecord, StoreError> {
    store
        .update_key(id, p, now, &audit(Some("acct_p"), "key.update", Some(id)))
        .await
}

/// A patch and what it should do to the record.
type PatchStep = (KeyPatch, fn(&mut KeyRecord));

async fn update_key_applies_each_field(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_p").await;
    let mut expect = key("acct_p");
    add_key(&store, &expect).await;

    // Each field on its own; everything else stays as it was.
    let steps: Vec<PatchStep> = vec![
        (
            KeyPatch {
                name: Some("renamed".into()),
                ..KeyPatch::default()
            },
            |k| k.name = "renamed".into(),
        ),
        (
            KeyPatch {
                permissions: Some(vec!["a.read".into(), "b.*".into()]),
                ..KeyPatch::default()
            },
            |k| k.permissions = vec!["a.read".into(), "b.*".into()],
        ),
        (
            KeyPatch {
                ip_allowlist: Some(vec!["192.0.2.0/24".into()]),
                ..KeyPatch::default()
            },
            |k| k.ip_allowlist = vec!["192.0.2.0/24".into()],
        ),
        (
            KeyPatch {
                expires_at: Some(Some(NOW + 50_000)),
                ..KeyPatch::default()
            },
            |k| k.expires_at = Some(NOW + 50_000),
        ),
        (
            KeyPatch {
                rate_limit: Some(Some(RateLimit {
                    requests: 5,
                    per_seconds: 1,
                })),
                ..KeyPatch::default()
            },
            |k| {
                k.rate_limit = Some(RateLimit {
                    requests: 5,
                    per_seconds: 1,
                })
            },
        ),
        (
            KeyPatch {
                quota: Some(Some(Quota {
                    requests: 42,
                    refill: None,
                })),
                ..KeyPatch::default()
            },
            |k| {
                k.quota = Some(Quota {
                    requests: 42,
                    refill: None,
                })
            },
        ),
        (
            KeyPatch {
                meta: Some(json!({ "owner": "ops", "n": [1, 2] })),
                ..KeyPatch::default()
            },
            |k| k.meta = json!({ "owner": "ops", "n": [1, 2] }),
        ),
        // Clearing the optional fields.
        (
            KeyPatch {
                expires_at: Some(None),
                rate_limit: Some(None),
                quota: Some(None),
                ..KeyPatch::default()
            },
            |k| {
                k.expires_at = None;
                k.rate_limit = None;
                k.quota = None;
            },
        ),
        // Several fields at once, and empty lists.
        (
            KeyPatch {
                name: Some("multi".into()),
                permissions: Some(vec![]),
                ip_allowlist: Some(vec![]),
                quota: Some(Some(Quota {
                    requests: 7,
                    refill: None,
                })),
                ..KeyPatch::default()
            },
            |k| {
                k.name = "multi".into();
                k.permissions = vec![];
                k.ip_allowlist = vec![];
                k.quota = Some(Quota {
                    requests: 7,
                    refill: None,
                });
            },
        ),
        // An empty patch changes nothing.
        (KeyPatch::default(), |_| {}),
    ];
    let n = steps.len();
    for (i, (p, apply)) in steps.into_iter().enumerate() {
        apply(&mut expect);
        let got = patch(&store, &expect.id, &p, NOW).await.unwrap();
        assert_eq!(got, expect, "step {i}");
        assert_eq!(get(&store, &expect.id).await, expect, "step {i}");
    }
    assert_eq!(audit_count(&store, "acct_p").await, 2 + n);

    // A key with a revocation scheduled in the future is still active and can be updated.
    let scheduled = KeyRecord {
        revoked_at: Some(NOW + 10),
        ..key("acct_p")
    };
    add_key(&store, &scheduled).await;
    let got = patch(
        &store,
        &scheduled.id,
        &KeyPatch {
            name: Some("still here".into()),
            ..KeyPatch::default()
        },
        NOW,
    )
    .await
    .unwrap();
    assert_eq!(got.name, "still here");
    assert_eq!(got.revoked_at, Some(NOW + 10));
}

async fn update_key_refuses_revoked_expired_and_unknown_keys(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_p").await;
    let everything = KeyPatch {
        name: Some("changed".into()),
        permissions: Some(vec!["x.y".into()]),
        ip_allowlist: Some(vec!["10.1.1.1".into()]),
        expires_at: Some(None),
        rate_limit: Some(None),
        quota: Some(Some(Quota {
            requests: 1,
            refill: None,
        })),
        quota_refilled_at: Some(Some(NOW)),
        meta: Some(json!({ "changed": true })),
    };

    let revoked_now = KeyRecord {
        revoked_at: Some(NOW),
        ..full_key("acct_p")
    };
    let revoked_past = KeyRecord {
        revoked_at: Some(NOW - 1),
        ..key("acct_p")
    };
    let expired_now = KeyRecord {
        expires_at: Some(NOW),
        revoked_at: None,
        ..full_key("acct_p")
    };
    let expired_past = KeyRecord {
        expires_at: Some(NOW - 1),
        ..key("acct_p")
    };
    for k in [&revoked_now, &revoked_past, &expired_now, &expired_past] {
        add_key(&store, k).await;
    }
    let audits = audit_count(&store, "acct_p").await;

    for k in [&revoked_now, &revoked_past, &expired_now, &expired_past] {
        let err = patch(&store, &k.id, &everything, NOW).await.unwrap_err();
        assert!(matches!(err, StoreError::NotActive), "{}: {err:?}", k.id);
        assert_eq!(&get(&store, &k.id).await, k, "unchanged");
    }
    // Un-expiring an expired key is refused too.
    let err = patch(
        &store,
        &expired_now.id,
        &KeyPatch {
            expires_at: Some(Some(NOW + 100_000)),
            ..KeyPatch::default()
        },
        NOW,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::NotActive), "{err:?}");
    assert_eq!(get(&store, &expired_now.id).await, expired_now);

    // A key revoked through revoke_key stays revoked.
    let k = key("acct_p");
    add_key(&store, &k).await;
    store
        .revoke_key(
            &k.id,
            NOW,
            &audit(Some("acct_p"), "key.revoke", Some(&k.id)),
        )
        .await
        .unwrap();
    let revoked = get(&store, &k.id).await;
    let audits = audits + 2;
    let err = patch(&store, &k.id, &everything, NOW + 5)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotActive), "{err:?}");
    assert_eq!(get(&store, &k.id).await, revoked);

    let err = patch(&store, "key_nope", &everything, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(
        audit_count(&store, "acct_p").await,
        audits,
        "no audit for refused updates"
    );
}

// --- 6. revoke_key -------------------------------------------------------------------------

async fn revoke(store: &Arc<dyn Store>, id: &str, at: i64) -> Result<KeyRecord, StoreError> {
    store
        .revoke_key(id, at, &audit(Some("acct_r"), "key.revoke", Some(id)))
        .await
}

async fn revoke_is_idempotent_and_keeps_the_first_time(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_r").await;
    let k = full_key("acct_r");
    let k = KeyRecord {
        revoked_at: None,
        ..k
    };
    add_key(&store, &k).await;

    let got = revoke(&store, &k.id, NOW + 5).await.unwrap();
    let expect = KeyRecord {
        revoked_at: Some(NOW + 5),
        ..k.clone()
    };
    assert_eq!(got, expect);
    assert_eq!(get(&store, &k.id).await, expect);
    let log = audit_of(&store, "acct_r").await;
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].action, "key.revoke");
    assert_eq!(log[0].target_id.as_deref(), Some(k.id.as_str()));

    // Again, later and at the same time: nothing changes, no second audit event.
    for at in [NOW + 100, NOW + 5] {
        let got = revoke(&store, &k.id, at).await.unwrap();
        assert_eq!(got, expect);
        assert_eq!(get(&store, &k.id).await, expect);
        assert_eq!(audit_count(&store, "acct_r").await, 3);
    }

    let err = revoke(&store, "key_nope", NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(audit_count(&store, "acct_r").await, 3);
}

async fn earlier_revocation_wins_over_a_scheduled_one(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_r").await;
    let k = key("acct_r");
    add_key(&store, &k).await;

    // Scheduled an hour ahead (as a rotation would).
    let later = NOW + 3_600_000;
    assert_eq!(
        revoke(&store, &k.id, later).await.unwrap().revoked_at,
        Some(later)
    );
    assert_eq!(audit_count(&store, "acct_r").await, 3);
    // Revoke now: takes effect now, and is audited.
    let got = revoke(&store, &k.id, NOW).await.unwrap();
    assert_eq!(got.revoked_at, Some(NOW));
    assert_eq!(get(&store, &k.id).await.revoked_at, Some(NOW));
    assert_eq!(audit_count(&store, "acct_r").await, 4);
    // The later schedule does not come back.
    assert_eq!(
        revoke(&store, &k.id, later).await.unwrap().revoked_at,
        Some(NOW)
    );
    assert_eq!(get(&store, &k.id).await.revoked_at, Some(NOW));
    assert_eq!(audit_count(&store, "acct_r").await, 4);
}

// --- 7. rotate_key -------------------------------------------------------------------------

async fn rotate(
    store: &Arc<dyn Store>,
    old_id: &str,
    new_key: &KeyRecord,
    revoke_old_at: i64,
    now: i64,
) -> Result<KeyRecord, StoreError> {
    store
        .rotate_key(
            old_id,
            new_key,
            revoke_old_at,
            None,
            now,
            &audit(Some(&new_key.account_id), "key.rotate", Some(old_id)),
        )
        .await
}

fn successor(old: &KeyRecord) -> KeyRecord {
    let fresh = key(&old.account_id);
    KeyRecord {
        id: fresh.id,
        digest: fresh.digest,
        rotated_from: Some(old.id.clone()),
        created_at: NOW + 1,
        quota_used: 0,
        last_used_at: None,
        revoked_at: None,
        ..old.clone()
    }
}

async fn rotate_inserts_new_key_and_schedules_old_revocation(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_rot").await;
    let old = KeyRecord {
        revoked_at: None,
        ..full_key("acct_rot")
    };
    add_key(&store, &old).await;

    let new = successor(&old);
    let grace = NOW + 60_000;
    let got = rotate(&store, &old.id, &new, grace, NOW).await.unwrap();
    let old_after = KeyRecord {
        revoked_at: Some(grace),
        ..old.clone()
    };
    assert_eq!(got, old_after);
    assert_eq!(get(&store, &old.id).await, old_after);
    assert_eq!(get(&store, &new.id).await, new);
    assert_eq!(
        store.find_key_by_digest(&new.digest).await.unwrap(),
        Some(new.clone())
    );
    let log = audit_of(&store, "acct_rot").await;
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].action, "key.rotate");

    // During the grace period the old key is still active: a second rotation works and
    // keeps the earlier scheduled revocation.
    let newer = successor(&old);
    let got = rotate(&store, &old.id, &newer, NOW + 120_000, NOW + 1)
        .await
        .unwrap();
    assert_eq!(got.revoked_at, Some(grace));
    assert_eq!(get(&store, &newer.id).await, newer);

    // An immediate rotation revokes at once.
    let k = key("acct_rot");
    add_key(&store, &k).await;
    let n = successor(&k);
    let got = rotate(&store, &k.id, &n, NOW, NOW).await.unwrap();
    assert_eq!(got.revoked_at, Some(NOW));
    assert_eq!(get(&store, &n.id).await, n);
}

async fn rotate_refuses_inactive_or_unknown_keys_and_inserts_nothing(
    store: Arc<dyn Store>,
    _db: TestDb,
) {
    add_account(&store, "acct_rot").await;

    let revoked = KeyRecord {
        revoked_at: Some(NOW),
        ..key("acct_rot")
    };
    let expired = KeyRecord {
        expires_at: Some(NOW - 1),
        ..key("acct_rot")
    };
    add_key(&store, &revoked).await;
    add_key(&store, &expired).await;
    let audits = audit_count(&store, "acct_rot").await;

    for old in [&revoked, &expired] {
        let new = successor(old);
        let err = rotate(&store, &old.id, &new, NOW + 60_000, NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotActive), "{err:?}");
        assert_eq!(
            store.get_key(&new.id).await.unwrap(),
            None,
            "new key not inserted"
        );
        assert_eq!(store.find_key_by_digest(&new.digest).await.unwrap(), None);
        assert_eq!(&get(&store, &old.id).await, old, "old key unchanged");
    }

    // A key revoked by a past rotation cannot be rotated again once the grace is over.
    let k = key("acct_rot");
    add_key(&store, &k).await;
    let n = successor(&k);
    rotate(&store, &k.id, &n, NOW + 10, NOW).await.unwrap();
    let audits = audits + 2;
    let again = successor(&k);
    let err = rotate(&store, &k.id, &again, NOW + 20, NOW + 10)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotActive), "{err:?}");
    assert_eq!(store.get_key(&again.id).await.unwrap(), None);
    assert_eq!(get(&store, &k.id).await.revoked_at, Some(NOW + 10));

    let ghost = successor(&k);
    let err = rotate(&store, "key_nope", &ghost, NOW, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(store.get_key(&ghost.id).await.unwrap(), None);

    assert_eq!(audit_count(&store, "acct_rot").await, audits);
    assert_eq!(store.list_keys(Some("acct_rot")).await.unwrap().len(), 4);
}

async fn rotate_is_one_transaction(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_tx").await;
    let taken = key("acct_tx");
    let old = key("acct_tx");
    add_key(&store, &taken).await;
    add_key(&store, &old).await;
    let audits = audit_count(&store, "acct_tx").await;

    // The new key's insert fails (its digest is taken): the old key's revocation must not
    // be scheduled either.
    let clash = KeyRecord {
        digest: taken.digest,
        ..successor(&old)
    };
    let err = rotate(&store, &old.id, &clash, NOW + 60_000, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate), "{err:?}");
    assert_eq!(get(&store, &old.id).await, old);
    assert_eq!(store.get_key(&clash.id).await.unwrap(), None);
    assert_eq!(audit_count(&store, "acct_tx").await, audits);
}

// --- 8. record_usage -----------------------------------------------------------------------

fn usage(key_id: &str, last_used_at: i64, quota_used_delta: i64) -> UsageUpdate {
    UsageUpdate {
        counts: Vec::new(),
        recent_ips: None,
        permissions: Vec::new(),
        quota_refilled_at: None,
        key_id: key_id.to_owned(),
        last_used_at,
        quota_used_delta,
    }
}

async fn record_usage_keeps_max_time_and_adds_counts(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_use").await;
    let a = key("acct_use");
    let b = full_key("acct_use"); // last_used_at NOW - 1000, quota_used 17
    add_key(&store, &a).await;
    add_key(&store, &b).await;

    store
        .record_usage(&[usage(&a.id, NOW + 100, 3), usage(&b.id, NOW + 200, 1)])
        .await
        .unwrap();
    let ga = get(&store, &a.id).await;
    let gb = get(&store, &b.id).await;
    assert_eq!((ga.last_used_at, ga.quota_used), (Some(NOW + 100), 3));
    assert_eq!((gb.last_used_at, gb.quota_used), (Some(NOW + 200), 18));
    // Nothing else changed.
    assert_eq!(
        KeyRecord {
            last_used_at: a.last_used_at,
            quota_used: a.quota_used,
            ..ga
        },
        a
    );
    assert_eq!(
        KeyRecord {
            last_used_at: b.last_used_at,
            quota_used: b.quota_used,
            ..gb
        },
        b
    );

    // An older time never moves last_used_at backwards; the count still adds up.
    store
        .record_usage(&[usage(&a.id, NOW + 50, 2)])
        .await
        .unwrap();
    let ga = get(&store, &a.id).await;
    assert_eq!((ga.last_used_at, ga.quota_used), (Some(NOW + 100), 5));

    // The same key twice in one batch: max of the times, sum of the deltas.
    store
        .record_usage(&[usage(&a.id, NOW + 300, 1), usage(&a.id, NOW + 250, 4)])
        .await
        .unwrap();
    let ga = get(&store, &a.id).await;
    assert_eq!((ga.last_used_at, ga.quota_used), (Some(NOW + 300), 10));

    // A batch with zero deltas only moves time.
    store
        .record_usage(&[usage(&b.id, NOW + 400, 0)])
        .await
        .unwrap();
    let gb = get(&store, &b.id).await;
    assert_eq!((gb.last_used_at, gb.quota_used), (Some(NOW + 400), 18));

    // Empty batch: no-op.
    let before = store.list_keys(None).await.unwrap();
    store.record_usage(&[]).await.unwrap();
    assert_eq!(store.list_keys(None).await.unwrap(), before);

    // Usage writes are not audited.
    assert_eq!(audit_count(&store, "acct_use").await, 3);
}

async fn concurrent_usage_batches_all_count(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_cu").await;
    let k = key("acct_cu");
    add_key(&store, &k).await;

    let mut tasks = Vec::new();
    for i in 0..50i64 {
        let store = store.clone();
        let id = k.id.clone();
        tasks.push(tokio::spawn(async move {
            store.record_usage(&[usage(&id, NOW + i, 2)]).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let got = get(&store, &k.id).await;
    assert_eq!(got.quota_used, 100);
    assert_eq!(got.last_used_at, Some(NOW + 49));
}

// --- 9. persistence, migrations, settings --------------------------------------------------

async fn settings_insert_if_absent(store: Arc<dyn Store>, db: TestDb) {
    assert_eq!(store.get_setting("pepper").await.unwrap(), None);
    assert!(store
        .insert_setting_if_absent("pepper", "first")
        .await
        .unwrap());
    assert!(!store
        .insert_setting_if_absent("pepper", "second")
        .await
        .unwrap());
    assert_eq!(
        store.get_setting("pepper").await.unwrap().as_deref(),
        Some("first")
    );
    assert!(store.insert_setting_if_absent("other", "x").await.unwrap());
    assert_eq!(
        store.get_setting("other").await.unwrap().as_deref(),
        Some("x")
    );
    assert_eq!(
        store.get_setting("pepper").await.unwrap().as_deref(),
        Some("first")
    );

    drop(store);
    let store = db.open().await;
    assert_eq!(
        store.get_setting("pepper").await.unwrap().as_deref(),
        Some("first")
    );
    assert!(!store
        .insert_setting_if_absent("pepper", "third")
        .await
        .unwrap());
    assert_eq!(
        store.get_setting("pepper").await.unwrap().as_deref(),
        Some("first")
    );
}

async fn concurrent_setting_inserts_store_exactly_one(store: Arc<dyn Store>, _db: TestDb) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let value = format!("v{i}");
            let stored = store
                .insert_setting_if_absent("admin_token", &value)
                .await
                .unwrap();
            (stored, value)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (stored, value) = t.await.unwrap();
        if stored {
            winners.push(value);
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(
        store.get_setting("admin_token").await.unwrap(),
        Some(winners[0].clone())
    );
}

async fn everything_survives_a_reopen(store: Arc<dyn Store>, db: TestDb) {
    let acct = add_account(&store, "acct_p1").await;
    let full = KeyRecord {
        revoked_at: None,
        ..full_key("acct_p1")
    };
    let other = key("acct_p1");
    add_key(&store, &full).await;
    add_key(&store, &other).await;
    store
        .update_account(
            "acct_p1",
            None,
            Some("pro"),
            &audit(Some("acct_p1"), "account.update", None),
        )
        .await
        .unwrap();
    let new = successor(&full);
    rotate(&store, &full.id, &new, NOW + 60_000, NOW)
        .await
        .unwrap();
    revoke(&store, &other.id, NOW).await.unwrap();
    store
        .record_usage(&[usage(&new.id, NOW + 5, 9)])
        .await
        .unwrap();
    store.insert_setting_if_absent("pepper", "p").await.unwrap();

    let accounts = store.list_accounts().await.unwrap();
    let keys = store.list_keys(None).await.unwrap();
    let log = store.list_audit(None, None, 1000).await.unwrap();
    assert_eq!(
        accounts,
        vec![Account {
            plan: "pro".into(),
            ..acct
        }]
    );
    assert_eq!(keys.len(), 3);
    assert_eq!(log.len(), 6);
    drop(store);

    let store = db.open().await;
    store.ping().await.unwrap();
    assert_eq!(store.list_accounts().await.unwrap(), accounts);
    assert_eq!(store.list_keys(None).await.unwrap(), keys);
    assert_eq!(store.list_audit(None, None, 1000).await.unwrap(), log);
    assert_eq!(get(&store, &full.id).await.revoked_at, Some(NOW + 60_000));
    assert_eq!(get(&store, &other.id).await.revoked_at, Some(NOW));
    let n = store
        .find_key_by_digest(&new.digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((n.quota_used, n.last_used_at), (9, Some(NOW + 5)));
    assert_eq!(
        store.get_setting("pepper").await.unwrap().as_deref(),
        Some("p")
    );

    // Writes after the reopen continue the audit sequence.
    add_key(&store, &key("acct_p1")).await;
    let newest = store.list_audit(None, None, 1).await.unwrap();
    assert!(newest[0].seq > log[0].seq);
}

async fn sqlite_migration_rows(dir: &TempDir) -> Vec<(i64, String)> {
    let pool = sqlx::SqlitePool::connect(&url(dir)).await.unwrap();
    let rows = sqlx::query_as("SELECT version, name FROM schema_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

/// Each migration recorded once, numbered 1 (`init`), 2, 3, … without a gap, ending with
/// the newest the binary knows.
fn assert_migrations_recorded_once(rows: &[(i64, String)]) {
    assert!(rows.len() >= 2, "{rows:?}");
    assert_eq!(rows[0], (1, "init".to_owned()));
    let versions: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let expected: Vec<i64> = (1..=versions.len() as i64).collect();
    assert_eq!(versions, expected, "each migration recorded once: {rows:?}");
    assert_eq!(
        rows.last(),
        Some(&(12, "webhook_retention".to_owned())),
        "{rows:?}"
    );
}

async fn migrations_apply_once(first: Arc<dyn Store>, db: TestDb) {
    add_account(&first, "acct_m").await;
    let applied = db.migration_rows().await;
    assert_migrations_recorded_once(&applied);
    // Open the same database again while the first store is still open, and migrate again.
    let second = db.open_and_migrate_again().await;
    assert_eq!(
        second.get_account("acct_m").await.unwrap(),
        Some(account("acct_m"))
    );
    drop(first);
    drop(second);
    let third = db.open().await;
    assert_eq!(
        third.list_accounts().await.unwrap(),
        vec![account("acct_m")]
    );
    drop(third);
    assert_eq!(db.migration_rows().await, applied);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `n` processes starting at once: each opens the file with its own pool, on its own thread
/// and runtime, and writes one account. Returns the errors of the opens that failed.
fn open_concurrently(dir: &TempDir, n: usize, round: usize) -> Vec<StoreError> {
    let u = url(dir);
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (u, barrier) = (&u, &barrier);
                s.spawn(move || {
                    runtime().block_on(async move {
                        barrier.wait();
                        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(u).await?);
                        add_account(&store, &format!("acct_r{round}_{i}")).await;
                        Ok::<(), StoreError>(())
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap().err())
            .collect()
    })
}

async fn check_after_concurrent_opens(dir: &TempDir, accounts: usize) {
    let store = open(dir).await;
    assert_eq!(store.list_accounts().await.unwrap().len(), accounts);
    drop(store);
    assert_migrations_recorded_once(&sqlite_migration_rows(dir).await);
}

/// Processes starting together on an existing database file all open it.
#[test]
fn concurrent_opens_of_an_existing_file_all_succeed() {
    let dir = TempDir::new().unwrap();
    runtime().block_on(async { drop(open(&dir).await) });
    for round in 0..20 {
        let errors = open_concurrently(&dir, 4, round);
        assert!(errors.is_empty(), "round {round}: {errors:?}");
    }
    runtime().block_on(check_after_concurrent_opens(&dir, 80));
}

/// Processes starting together on a new database file should all open it, and the
/// migrations be recorded once.
/// (SQLite answers the WAL switch of a racing first connection with "database is locked"
/// without waiting; `SqliteStore::open` retries.)
#[test]
fn concurrent_first_opens_of_a_new_file_all_succeed() {
    for round in 0..100 {
        let dir = TempDir::new().unwrap();
        let errors = open_concurrently(&dir, 4, round);
        assert!(errors.is_empty(), "round {round}: {errors:?}");
        runtime().block_on(check_after_concurrent_opens(&dir, 4));
    }
}

/// Several PostgreSQL nodes starting at once on a new database all migrate it (one after
/// the other, under an advisory lock), and each migration is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_nodes_migrating_a_new_database_at_once_all_succeed() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let TestDb::Postgres(url) = &db else {
        unreachable!()
    };
    // Four nodes on one task: their connections and migrations interleave all the same.
    let node = |i: usize| async move {
        let store: Arc<dyn Store> = Arc::new(PostgresStore::open(url, true).await?);
        add_account(&store, &format!("acct_node_{i}")).await;
        Ok::<(), StoreError>(())
    };
    let started = tokio::join!(node(0), node(1), node(2), node(3));
    for result in [started.0, started.1, started.2, started.3] {
        result.unwrap();
    }
    assert_migrations_recorded_once(&db.migration_rows().await);
    assert_eq!(db.open().await.list_accounts().await.unwrap().len(), 4);
}

// --- 10. moving an installation (export / import) ------------------------------------------

/// Accounts, keys, audit events (oldest first) and usage counts of every key.
type Everything = (
    Vec<Account>,
    Vec<KeyRecord>,
    Vec<AuditEvent>,
    Vec<(String, Vec<UsageCount>)>,
);

/// Everything a store holds, read as `keygate export` reads it.
async fn everything(store: &Arc<dyn Store>) -> Everything {
    let accounts = store.list_accounts().await.unwrap();
    let keys = store.list_keys(None).await.unwrap();
    let mut audit: Vec<AuditEvent> = Vec::new();
    loop {
        let after = audit.last().map_or(0, |e| e.seq);
        let page = store.audit_after(after, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        audit.extend(page);
    }
    let mut usage = Vec::new();
    for k in &keys {
        let counts = store.usage_counts(&k.id, i64::MIN, i64::MAX).await.unwrap();
        usage.push((k.id.clone(), counts));
    }
    (accounts, keys, audit, usage)
}

/// Imports from an SQLite installation into the backend under test.
async fn import_copies_records_as_they_are_and_can_run_again(target: Arc<dyn Store>, _db: TestDb) {
    let source_db = TestDb::sqlite();
    let source = source_db.open().await;
    add_account(&source, "acct_x1").await;
    add_account(&source, "acct_x2").await;
    let full = full_key("acct_x1");
    let plain = key("acct_x2");
    add_key(&source, &full).await;
    add_key(&source, &plain).await;
    revoke(&source, &plain.id, NOW).await.unwrap();
    let hour = NOW - NOW % 3_600_000;
    let count = |bucket, outcome: &str, count| UsageCount {
        bucket,
        outcome: outcome.to_owned(),
        count,
    };
    source
        .record_usage(&[UsageUpdate {
            counts: vec![
                count(hour, "valid", 5),
                count(hour, "rate_limited", 1),
                count(hour - 3_600_000, "valid", 2),
            ],
            ..usage(&full.id, NOW + 5, 7)
        }])
        .await
        .unwrap();
    let (accounts, keys, audit, usage) = everything(&source).await;
    assert_eq!((accounts.len(), keys.len(), audit.len()), (2, 2, 5));
    assert!(
        audit.windows(2).all(|w| w[0].seq < w[1].seq),
        "oldest first"
    );
    assert_eq!(usage[0].1.len() + usage[1].1.len(), 3);

    // Twice: the second run finds everything there and inserts nothing.
    for (round, expect) in [(0, 1), (1, 0)] {
        let got = (
            target.import_accounts(&accounts).await.unwrap(),
            target.import_keys(&keys).await.unwrap(),
            target.import_audit(&audit).await.unwrap(),
        );
        assert_eq!(got, (2 * expect, 2 * expect, 5 * expect), "round {round}");
        for (id, counts) in &usage {
            let n = target.import_usage(id, counts).await.unwrap();
            assert_eq!(n, counts.len() as u64 * expect, "round {round}");
        }
    }
    let (accounts2, keys2, audit2, usage2) = everything(&target).await;
    assert_eq!(accounts2, accounts);
    assert_eq!(keys2, keys);
    assert_eq!(
        audit2.iter().cloned().map(without_seq).collect::<Vec<_>>(),
        audit.iter().cloned().map(without_seq).collect::<Vec<_>>()
    );
    assert_eq!(usage2, usage);
    assert_eq!(
        target.find_key_by_digest(&full.digest).await.unwrap(),
        Some(get(&source, &full.id).await)
    );

    // Imported keys count toward the plan cap, and new events follow the imported ones.
    let err = create_capped(&target, &key("acct_x1"), 1, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CapReached), "{err:?}");
    add_key(&target, &key("acct_x2")).await;
    let newest = target.list_audit(None, None, 1).await.unwrap();
    assert!(newest[0].seq > audit2.last().unwrap().seq);

    // Another key with a digest already there is refused, not skipped; so is a key of an
    // account that does not exist.
    let clash = KeyRecord {
        digest: full.digest,
        ..key("acct_x1")
    };
    let err = target.import_keys(&[clash]).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate), "{err:?}");
    let err = target.import_keys(&[key("acct_ghost")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}

/// More rows than one multi-row statement holds (500): every row lands once, a second run
/// adds nothing, and a usage flush of every key updates each one.
async fn bulk_import_and_usage_flush_span_several_statements(store: Arc<dyn Store>, _db: TestDb) {
    add_account(&store, "acct_bulk").await;
    let keys: Vec<KeyRecord> = (0..1_201).map(|_| key("acct_bulk")).collect();
    assert_eq!(store.import_keys(&keys).await.unwrap(), 1_201);
    assert_eq!(store.import_keys(&keys).await.unwrap(), 0);
    assert_eq!(
        store.list_keys(Some("acct_bulk")).await.unwrap().len(),
        1_201
    );

    let flush: Vec<UsageUpdate> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| UsageUpdate {
            counts: vec![UsageCount {
                bucket: NOW,
                outcome: "valid".to_owned(),
                count: 2,
            }],
            ..usage(&k.id, NOW + i as i64, 1)
        })
        .collect();
    store.record_usage(&flush).await.unwrap();
    store.record_usage(&flush).await.unwrap();
    for (i, k) in keys.iter().enumerate().step_by(97) {
        let got = get(&store, &k.id).await;
        assert_eq!(
            (got.last_used_at, got.quota_used),
            (Some(NOW + i as i64), 2)
        );
        let counts = store.usage_counts(&k.id, NOW, NOW + 1).await.unwrap();
        assert_eq!(counts.iter().map(|c| c.count).sum::<i64>(), 4, "{counts:?}");
    }
}

/// Two nodes flush the same keys at once, each in its own order (the order keys were first
/// used on it). On PostgreSQL their row locks could wait on each other in a cycle (a
/// deadlock, one flush failing after a second); both must land, every time.
async fn usage_flushes_of_two_nodes_in_opposite_orders_both_land(
    store: Arc<dyn Store>,
    db: TestDb,
) {
    let other_node = db.open().await;
    add_account(&store, "acct_nodes").await;
    let keys: Vec<KeyRecord> = (0..300).map(|_| key("acct_nodes")).collect();
    store.import_keys(&keys).await.unwrap();
    let flush = |order: &mut dyn Iterator<Item = &KeyRecord>| -> Vec<UsageUpdate> {
        order
            .map(|k| UsageUpdate {
                counts: vec![UsageCount {
                    bucket: NOW,
                    outcome: "valid".to_owned(),
                    count: 1,
                }],
                ..usage(&k.id, NOW, 1)
            })
            .collect()
    };
    let forward = flush(&mut keys.iter());
    let backward = flush(&mut keys.iter().rev());
    const ROUNDS: i64 = 10;
    for _ in 0..ROUNDS {
        let (a, b) = tokio::join!(
            store.record_usage(&forward),
            other_node.record_usage(&backward)
        );
        a.unwrap();
        b.unwrap();
    }
    for k in keys.iter().step_by(37) {
        assert_eq!(get(&store, &k.id).await.quota_used, 2 * ROUNDS);
        let counts = store.usage_counts(&k.id, NOW, NOW + 1).await.unwrap();
        assert_eq!(counts.iter().map(|c| c.count).sum::<i64>(), 2 * ROUNDS);
    }
}

/// Another handle on the same database (another node, another process on the SQLite file)
/// hears every key a bulk import adds, a hundred digests a notification, and a revocation.
async fn key_changes_reach_another_handle(store: Arc<dyn Store>, db: TestDb) {
    let listening = db.open().await;
    let mut feed = listening
        .change_feed()
        .await
        .unwrap()
        .expect("every backend has a change feed");
    add_account(&store, "acct_feed").await;
    let keys: Vec<KeyRecord> = (0..250).map(|_| key("acct_feed")).collect();
    store.import_keys(&keys).await.unwrap();
    revoke(&store, &keys[7].id, 1).await.unwrap();

    let mut heard = std::collections::HashMap::<String, usize>::new();
    while heard.len() < keys.len() || heard[&keys[7].digest.to_hex()] < 2 {
        let change = tokio::time::timeout(std::time::Duration::from_secs(5), feed.recv())
            .await
            .expect("every change heard within 5 s")
            .unwrap();
        match change {
            keygate_store::Change::Key(digest) => *heard.entry(digest.to_hex()).or_default() += 1,
            keygate_store::Change::Resync => panic!("a bulk notification read as a resync"),
        };
    }
    assert!(keys.iter().all(|k| heard.contains_key(&k.digest.to_hex())));
}

// --- browser sessions ----------------------------------------------------------------------

fn session(digest: u8, kind: &str, expires_at: i64) -> keygate_store::SessionRecord {
    keygate_store::SessionRecord {
        digest: [digest; 32],
        id: format!("sess_{digest}"),
        kind: kind.to_owned(),
        account_id: Some("acct_1".into()),
        csrf: "c".repeat(64),
        data: json!({"principal": {"as": "admin"}}),
        created_at: NOW,
        expires_at,
        ends_at: expires_at + 1000,
    }
}

async fn sessions_expire_are_taken_once_and_pruned(store: Arc<dyn Store>, db: TestDb) {
    let live = session(1, "dashboard", NOW + 60_000);
    store.insert_session(&live).await.unwrap();
    store
        .insert_session(&session(2, "dashboard", NOW - 1))
        .await
        .unwrap();
    store
        .insert_session(&session(3, "portal_link", NOW + 60_000))
        .await
        .unwrap();
    assert_eq!(
        store.get_session(&[1; 32], "dashboard", NOW).await.unwrap(),
        Some(live.clone())
    );
    // Another kind, an expired one, an unknown digest: nothing.
    assert_eq!(
        store.get_session(&[1; 32], "portal", NOW).await.unwrap(),
        None
    );
    assert_eq!(
        store.get_session(&[2; 32], "dashboard", NOW).await.unwrap(),
        None
    );
    assert_eq!(
        store.get_session(&[9; 32], "dashboard", NOW).await.unwrap(),
        None
    );
    // Touching moves the expiry, never past the end; data is replaced.
    store
        .touch_session(&[1; 32], NOW + 10_000_000)
        .await
        .unwrap();
    store
        .update_session_data(&[1; 32], &json!({"flash": "hi"}))
        .await
        .unwrap();
    let other_node = db.open().await;
    let seen = other_node
        .get_session(&[1; 32], "dashboard", NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.expires_at, live.ends_at);
    assert_eq!(seen.data, json!({"flash": "hi"}));
    // A link is taken by exactly one of many concurrent takers.
    let takers = (0..8).map(|i| {
        let store = if i % 2 == 0 {
            store.clone()
        } else {
            other_node.clone()
        };
        tokio::spawn(async move {
            store
                .take_session(&[3; 32], "portal_link", NOW)
                .await
                .unwrap()
        })
    });
    let taken = futures_count(takers).await;
    assert_eq!(taken, 1);
    // Pruning deletes what has expired, and only that.
    assert_eq!(store.prune_sessions(NOW).await.unwrap(), 1);
    assert!(store
        .get_session(&[1; 32], "dashboard", NOW)
        .await
        .unwrap()
        .is_some());
    store.delete_session(&[1; 32]).await.unwrap();
    assert_eq!(
        store.get_session(&[1; 32], "dashboard", NOW).await.unwrap(),
        None
    );
}

/// How many of `tasks` took something.
async fn futures_count(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<Option<keygate_store::SessionRecord>>>,
) -> usize {
    let mut n = 0;
    for t in tasks {
        n += usize::from(t.await.unwrap().is_some());
    }
    n
}
