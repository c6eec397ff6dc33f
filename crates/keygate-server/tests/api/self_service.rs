//! Self-service: a key holding `api_keys.*` (or finer `api_keys.read`, …) manages its own
//! account's keys through the admin API, can never reach another account (another
//! account's records look exactly like unknown ones), and can never grant more than it
//! holds.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn, Answer, TestApp};

const UNKNOWN_KEY_ID: &str = "key_000000000000000000000000";
const UNKNOWN_ACCOUNT_ID: &str = "acct_000000000000000000000000";

/// A call authenticated by an API key.
async fn as_key(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    app.call(method, path, Some(key), body).await
}

/// The body without its request id, to compare two answers.
fn without_request_id(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("request_id");
    }
    v
}

fn ids(a: &Answer) -> Vec<String> {
    let mut ids: Vec<String> = a.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {}", a.body))
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Two accounts: A with a self-service key (`api_keys.*`) and two more keys, B with two keys.
struct World {
    app: TestApp,
    a: String,
    b: String,
    manager: String,
    manager_id: String,
    a_keys: Vec<String>,
    b_keys: Vec<String>,
}

async fn world() -> World {
    let app = spawn().await;
    let a = app.create_account("Account A", "unlimited").await;
    let b = app.create_account("Account B", "unlimited").await;
    let (manager_id, manager) = app
        .create_key(
            &a,
            json!({"name": "A manager", "permissions": ["api_keys.*"]}),
        )
        .await;
    let mut a_keys = vec![manager_id.clone()];
    for name in ["A one", "A two"] {
        a_keys.push(
            app.create_key(&a, json!({"name": name, "scope": "read"}))
                .await
                .0,
        );
    }
    let mut b_keys = Vec::new();
    for name in ["B one", "B two"] {
        b_keys.push(
            app.create_key(&b, json!({"name": name, "scope": "read"}))
                .await
                .0,
        );
    }
    World {
        app,
        a,
        b,
        manager,
        manager_id,
        a_keys,
        b_keys,
    }
}

#[tokio::test]
async fn a_self_service_key_lists_only_its_own_accounts_keys() {
    let w = world().await;
    let list = as_key(&w.app, &w.manager, Method::GET, "/v1/api-keys", None).await;
    assert_eq!(list.status.as_u16(), 200, "{}", list.body);
    assert_eq!(ids(&list), sorted(w.a_keys.clone()));
    for k in list.body["data"].as_array().unwrap() {
        assert_eq!(k["account_id"], json!(w.a));
        assert!(k.get("key").is_none(), "a list never shows a secret: {k}");
    }
    // Naming its own account is fine; filters still apply.
    let own = as_key(
        &w.app,
        &w.manager,
        Method::GET,
        &format!("/v1/api-keys?account_id={}", w.a),
        None,
    )
    .await;
    assert_eq!(own.status.as_u16(), 200, "{}", own.body);
    assert_eq!(ids(&own), sorted(w.a_keys.clone()));
    let active = as_key(
        &w.app,
        &w.manager,
        Method::GET,
        "/v1/api-keys?status=active",
        None,
    )
    .await;
    assert_eq!(ids(&active), sorted(w.a_keys.clone()));
    let revoked = as_key(
        &w.app,
        &w.manager,
        Method::GET,
        "/v1/api-keys?status=revoked",
        None,
    )
    .await;
    assert_eq!(ids(&revoked), Vec::<String>::new());
    // Naming another account answers as for an account that does not exist.
    let other = as_key(
        &w.app,
        &w.manager,
        Method::GET,
        &format!("/v1/api-keys?account_id={}", w.b),
        None,
    )
    .await;
    other.assert_error(404, "not_found");
    let unknown = as_key(
        &w.app,
        &w.manager,
        Method::GET,
        &format!("/v1/api-keys?account_id={UNKNOWN_ACCOUNT_ID}"),
        None,
    )
    .await;
    unknown.assert_error(404, "not_found");
    assert_eq!(
        without_request_id(&other.body),
        without_request_id(&unknown.body)
    );
    // The admin sees both accounts.
    let all = w.app.admin(Method::GET, "/v1/api-keys", None).await;
    assert_eq!(
        ids(&all),
        sorted([w.a_keys.clone(), w.b_keys.clone()].concat())
    );
}

#[tokio::test]
async fn a_self_service_key_manages_its_own_accounts_keys() {
    let w = world().await;
    let (app, m) = (&w.app, w.manager.as_str());
    let target = &w.a_keys[1];

    let got = as_key(app, m, Method::GET, &format!("/v1/api-keys/{target}"), None).await;
    assert_eq!(got.status.as_u16(), 200, "{}", got.body);
    assert_eq!(got.body["id"], json!(target));
    assert!(got.body.get("key").is_none());

    let usage = as_key(
        app,
        m,
        Method::GET,
        &format!("/v1/api-keys/{target}/usage"),
        None,
    )
    .await;
    assert_eq!(usage.status.as_u16(), 200, "{}", usage.body);

    let patched = as_key(
        app,
        m,
        Method::PATCH,
        &format!("/v1/api-keys/{target}"),
        Some(json!({"name": "renamed by self-service", "ip_allowlist": ["10.0.0.0/8"]})),
    )
    .await;
    assert_eq!(patched.status.as_u16(), 200, "{}", patched.body);
    assert_eq!(patched.body["name"], "renamed by self-service");
    assert_eq!(patched.body["ip_allowlist"], json!(["10.0.0.0/8"]));

    let created = as_key(
        app,
        m,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "made by self-service", "permissions": ["api_keys.read"]})),
    )
    .await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.body);
    assert_eq!(
        created.body["account_id"],
        json!(w.a),
        "created in its own account"
    );
    assert!(created.body["key"]
        .as_str()
        .unwrap()
        .starts_with("kg_live_"));
    let new_id = created.body["id"].as_str().unwrap().to_owned();

    // account_id may name its own account.
    let named = as_key(
        app,
        m,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"account_id": w.a, "name": "explicit own account"})),
    )
    .await;
    assert_eq!(named.status.as_u16(), 201, "{}", named.body);

    let rotated = as_key(
        app,
        m,
        Method::POST,
        &format!("/v1/api-keys/{new_id}/rotate"),
        Some(json!({"grace_period_seconds": 60})),
    )
    .await;
    assert_eq!(rotated.status.as_u16(), 201, "{}", rotated.body);
    assert_eq!(rotated.body["account_id"], json!(w.a));
    assert_eq!(rotated.body["permissions"], json!(["api_keys.read"]));
    assert!(rotated.body["key"]
        .as_str()
        .unwrap()
        .starts_with("kg_live_"));
    // The rotated key works, and is itself a (read-only) self-service key.
    let new_secret = rotated.body["key"].as_str().unwrap();
    let listed = as_key(app, new_secret, Method::GET, "/v1/api-keys", None).await;
    assert_eq!(listed.status.as_u16(), 200, "{}", listed.body);

    let revoked = as_key(
        app,
        m,
        Method::POST,
        &format!("/v1/api-keys/{target}/revoke"),
        None,
    )
    .await;
    assert_eq!(revoked.status.as_u16(), 200, "{}", revoked.body);
    assert_eq!(revoked.body["status"], "revoked");
    assert!(revoked.body["revoked_at"].is_string());
    let after = app
        .admin(Method::GET, &format!("/v1/api-keys/{target}"), None)
        .await;
    assert_eq!(after.body["status"], "revoked");
}

#[tokio::test]
async fn another_accounts_key_looks_exactly_like_an_unknown_one() {
    let w = world().await;
    let (app, m) = (&w.app, w.manager.as_str());
    let theirs = w.b_keys[0].clone();
    let calls: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/v1/api-keys/{id}", None),
        (
            Method::PATCH,
            "/v1/api-keys/{id}",
            Some(json!({"name": "hijacked"})),
        ),
        (
            Method::PATCH,
            "/v1/api-keys/{id}",
            Some(json!({"permissions": ["api_keys.read"]})),
        ),
        (Method::POST, "/v1/api-keys/{id}/revoke", None),
        (Method::POST, "/v1/api-keys/{id}/rotate", None),
        (
            Method::POST,
            "/v1/api-keys/{id}/rotate",
            Some(json!({"grace_period_seconds": 10})),
        ),
        (Method::GET, "/v1/api-keys/{id}/usage", None),
    ];
    for (method, template, body) in calls {
        let other = as_key(
            app,
            m,
            method.clone(),
            &template.replace("{id}", &theirs),
            body.clone(),
        )
        .await;
        let unknown = as_key(
            app,
            m,
            method.clone(),
            &template.replace("{id}", UNKNOWN_KEY_ID),
            body.clone(),
        )
        .await;
        other.assert_error(404, "not_found");
        unknown.assert_error(404, "not_found");
        assert_eq!(
            without_request_id(&other.body),
            without_request_id(&unknown.body),
            "{method} {template}"
        );
        assert_eq!(other.header("content-type"), unknown.header("content-type"));
        assert!(
            !other.body.to_string().contains(&w.b),
            "no account id leaks: {}",
            other.body
        );
        assert!(
            !other.body.to_string().contains("B one"),
            "no name leaks: {}",
            other.body
        );
    }
    // Nothing happened to B's key.
    let b = app
        .admin(Method::GET, &format!("/v1/api-keys/{theirs}"), None)
        .await;
    assert_eq!(b.body["status"], "active");
    assert_eq!(b.body["name"], "B one");
    assert_eq!(b.body["rotated_from"], Value::Null);
    let b_list = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={}", w.b),
            None,
        )
        .await;
    assert_eq!(
        ids(&b_list),
        sorted(w.b_keys.clone()),
        "no key was added to B by a rotation"
    );

    // Creating a key in another account answers as for an unknown account.
    let other = as_key(
        app,
        m,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"account_id": w.b, "name": "planted"})),
    )
    .await;
    let unknown = as_key(
        app,
        m,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"account_id": UNKNOWN_ACCOUNT_ID, "name": "planted"})),
    )
    .await;
    other.assert_error(404, "not_found");
    unknown.assert_error(404, "not_found");
    assert_eq!(
        without_request_id(&other.body),
        without_request_id(&unknown.body)
    );
    let b_list = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={}", w.b),
            None,
        )
        .await;
    assert_eq!(ids(&b_list), sorted(w.b_keys.clone()));
}

#[tokio::test]
async fn a_key_cannot_grant_what_it_does_not_hold() {
    let w = world().await;
    let (app, a) = (&w.app, w.a.as_str());
    let (holder_id, holder) = app
        .create_key(a, json!({"permissions": ["api_keys.*", "invoices.read"]}))
        .await;
    let create = |body: Value| as_key(app, &holder, Method::POST, "/v1/api-keys", Some(body));
    for refused in [
        json!({"name": "x", "permissions": ["invoices.*"]}),
        json!({"name": "x", "permissions": ["*"]}),
        json!({"name": "x", "permissions": ["invoices.read", "invoices.create"]}),
        json!({"name": "x", "permissions": ["*.read"]}),
        json!({"name": "x", "permissions": ["accounts.read"]}),
        json!({"name": "x", "permissions": ["webhooks.*"]}),
        json!({"name": "x", "permissions": ["orders:read"]}),
        json!({"name": "x", "scope": "all"}),
        json!({"name": "x", "scope": "read"}),
        json!({"name": "x", "scope": "write"}),
        json!({"name": "x", "scope": "webhooks"}),
    ] {
        let r = create(refused.clone()).await;
        r.assert_error(403, "forbidden");
        assert!(!r.body.to_string().contains("kg_live_"), "{}", r.body);
    }
    for allowed in [
        json!({"name": "x", "permissions": ["invoices.read"]}),
        json!({"name": "x", "permissions": ["invoice:read"]}),
        json!({"name": "x", "permissions": ["api_keys.read", "invoices.read"]}),
        json!({"name": "x", "permissions": ["api_keys.*"]}),
        json!({"name": "x", "permissions": []}),
        json!({"name": "x"}),
    ] {
        let r = create(allowed.clone()).await;
        assert_eq!(r.status.as_u16(), 201, "{allowed}: {}", r.body);
    }
    // Nor through an update, of another key or of itself.
    let target = &w.a_keys[1];
    for path in [
        format!("/v1/api-keys/{target}"),
        format!("/v1/api-keys/{holder_id}"),
    ] {
        for body in [
            json!({"permissions": ["*"]}),
            json!({"scope": "all"}),
            json!({"permissions": ["invoices.*"]}),
        ] {
            let r = as_key(app, &holder, Method::PATCH, &path, Some(body)).await;
            r.assert_error(403, "forbidden");
        }
    }
    let me = app
        .admin(Method::GET, &format!("/v1/api-keys/{holder_id}"), None)
        .await;
    assert_eq!(
        me.body["permissions"],
        json!(["api_keys.*", "invoices.read"])
    );
    let ok = as_key(
        app,
        &holder,
        Method::PATCH,
        &format!("/v1/api-keys/{target}"),
        Some(json!({"permissions": ["invoices.read"]})),
    )
    .await;
    assert_eq!(ok.status.as_u16(), 200, "{}", ok.body);
    assert_eq!(ok.body["permissions"], json!(["invoices.read"]));
}

#[tokio::test]
async fn keys_without_api_key_permissions_cannot_manage() {
    let w = world().await;
    let (app, a) = (&w.app, w.a.as_str());
    let target = w.a_keys[1].clone();
    let (_, reader) = app.create_key(a, json!({"scope": "read"})).await;
    let (_, writer) = app.create_key(a, json!({"scope": "write"})).await;
    let (_, nothing) = app.create_key(a, json!({"permissions": []})).await;
    let (_, accounts_only) = app
        .create_key(a, json!({"permissions": ["accounts.read"]}))
        .await;
    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/api-keys".into(), None),
        (
            Method::POST,
            "/v1/api-keys".into(),
            Some(json!({"name": "x"})),
        ),
        (Method::GET, format!("/v1/api-keys/{target}"), None),
        (
            Method::PATCH,
            format!("/v1/api-keys/{target}"),
            Some(json!({"name": "x"})),
        ),
        (Method::POST, format!("/v1/api-keys/{target}/revoke"), None),
        (Method::POST, format!("/v1/api-keys/{target}/rotate"), None),
        (Method::GET, format!("/v1/api-keys/{target}/usage"), None),
        (Method::GET, "/v1/audit-log".into(), None),
    ];
    for key in [&reader, &writer, &nothing, &accounts_only] {
        for (method, path, body) in &calls {
            let r = as_key(app, key, method.clone(), path, body.clone()).await;
            r.assert_error(403, "insufficient_permissions");
        }
    }
    let t = app
        .admin(Method::GET, &format!("/v1/api-keys/{target}"), None)
        .await;
    assert_eq!(t.body["status"], "active");
    assert_eq!(t.body["name"], "A one");
}

#[tokio::test]
async fn a_read_only_self_service_key_can_list_but_not_change() {
    let w = world().await;
    let (app, a) = (&w.app, w.a.as_str());
    let (reader_id, reader) = app
        .create_key(a, json!({"permissions": ["api_keys.read"]}))
        .await;
    let target = w.a_keys[1].clone();
    let list = as_key(app, &reader, Method::GET, "/v1/api-keys", None).await;
    assert_eq!(list.status.as_u16(), 200, "{}", list.body);
    assert_eq!(
        ids(&list),
        sorted([w.a_keys.clone(), vec![reader_id.clone()]].concat())
    );
    let got = as_key(
        app,
        &reader,
        Method::GET,
        &format!("/v1/api-keys/{target}"),
        None,
    )
    .await;
    assert_eq!(got.status.as_u16(), 200, "{}", got.body);
    let usage = as_key(
        app,
        &reader,
        Method::GET,
        &format!("/v1/api-keys/{target}/usage"),
        None,
    )
    .await;
    assert_eq!(usage.status.as_u16(), 200, "{}", usage.body);
    let audit = as_key(app, &reader, Method::GET, "/v1/audit-log", None).await;
    assert_eq!(audit.status.as_u16(), 200, "{}", audit.body);
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/api-keys".to_owned(),
            Some(json!({"name": "x"})),
        ),
        (
            Method::POST,
            "/v1/api-keys".to_owned(),
            Some(json!({"name": "x", "permissions": ["api_keys.read"]})),
        ),
        (
            Method::PATCH,
            format!("/v1/api-keys/{target}"),
            Some(json!({"name": "x"})),
        ),
        (Method::POST, format!("/v1/api-keys/{target}/revoke"), None),
        (Method::POST, format!("/v1/api-keys/{target}/rotate"), None),
        (
            Method::POST,
            format!("/v1/api-keys/{reader_id}/revoke"),
            None,
        ),
    ] {
        let r = as_key(app, &reader, method.clone(), &path, body).await;
        r.assert_error(403, "insufficient_permissions");
    }
    // Finer grants combine: create without delete cannot rotate (a rotation revokes).
    let (_, creator) = app
        .create_key(
            a,
            json!({"permissions": ["api_keys.read", "api_keys.create"]}),
        )
        .await;
    let made = as_key(
        app,
        &creator,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "y"})),
    )
    .await;
    assert_eq!(made.status.as_u16(), 201, "{}", made.body);
    let rot = as_key(
        app,
        &creator,
        Method::POST,
        &format!("/v1/api-keys/{target}/rotate"),
        None,
    )
    .await;
    rot.assert_error(403, "insufficient_permissions");
    let rev = as_key(
        app,
        &creator,
        Method::POST,
        &format!("/v1/api-keys/{target}/revoke"),
        None,
    )
    .await;
    rev.assert_error(403, "insufficient_permissions");
    let (_, deleter) = app
        .create_key(a, json!({"permissions": ["api_keys.delete"]}))
        .await;
    let rev = as_key(
        app,
        &deleter,
        Method::POST,
        &format!("/v1/api-keys/{target}/revoke"),
        None,
    )
    .await;
    assert_eq!(rev.status.as_u16(), 200, "{}", rev.body);
    let t = app
        .admin(Method::GET, &format!("/v1/api-keys/{target}"), None)
        .await;
    assert_eq!(t.body["status"], "revoked");
}

#[tokio::test]
async fn a_test_key_cannot_mint_live_keys() {
    let w = world().await;
    let (app, a) = (&w.app, w.a.as_str());
    let (_, test_key) = app
        .create_key(
            a,
            json!({"environment": "test", "permissions": ["api_keys.*"]}),
        )
        .await;
    assert!(test_key.starts_with("kg_test_"));
    for body in [
        json!({"name": "live please", "environment": "live"}),
        // The default environment is live.
        json!({"name": "live by default"}),
    ] {
        let r = as_key(app, &test_key, Method::POST, "/v1/api-keys", Some(body)).await;
        r.assert_error(403, "forbidden");
    }
    let ok = as_key(
        app,
        &test_key,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "sandbox", "environment": "test"})),
    )
    .await;
    assert_eq!(ok.status.as_u16(), 201, "{}", ok.body);
    assert_eq!(ok.body["environment"], "test");
    assert!(ok.body["key"].as_str().unwrap().starts_with("kg_test_"));
    // A live self-service key may create either.
    let live = as_key(
        app,
        &w.manager,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "sandbox from live", "environment": "test"})),
    )
    .await;
    assert_eq!(live.status.as_u16(), 201, "{}", live.body);
    // Only keys of its own account changed: no live key appeared.
    let list = app
        .admin(Method::GET, &format!("/v1/api-keys?account_id={a}"), None)
        .await;
    let live_names: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["environment"] == "live")
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert!(
        !live_names.iter().any(|n| n.starts_with("live")),
        "{live_names:?}"
    );
}

#[tokio::test]
async fn self_service_keys_cannot_create_or_change_accounts() {
    let w = world().await;
    let (app, a, b) = (&w.app, w.a.as_str(), w.b.as_str());
    let (_, everything) = app.create_key(a, json!({"permissions": ["*"]})).await;
    let (_, reader) = app
        .create_key(a, json!({"permissions": ["accounts.read", "api_keys.*"]}))
        .await;
    for key in [&everything, &reader, &w.manager] {
        let r = as_key(
            app,
            key,
            Method::POST,
            "/v1/accounts",
            Some(json!({"name": "Mine now", "plan": "pro"})),
        )
        .await;
        r.assert_error(403, "forbidden");
        let r = as_key(
            app,
            key,
            Method::PATCH,
            &format!("/v1/accounts/{a}"),
            Some(json!({"plan": "basic"})),
        )
        .await;
        r.assert_error(403, "forbidden");
        let r = as_key(
            app,
            key,
            Method::PATCH,
            &format!("/v1/accounts/{a}"),
            Some(json!({"name": "renamed"})),
        )
        .await;
        r.assert_error(403, "forbidden");
        // Another account is not there at all.
        let other = as_key(
            app,
            key,
            Method::PATCH,
            &format!("/v1/accounts/{b}"),
            Some(json!({"plan": "basic"})),
        )
        .await;
        let unknown = as_key(
            app,
            key,
            Method::PATCH,
            &format!("/v1/accounts/{UNKNOWN_ACCOUNT_ID}"),
            Some(json!({"plan": "basic"})),
        )
        .await;
        other.assert_error(404, "not_found");
        unknown.assert_error(404, "not_found");
        assert_eq!(
            without_request_id(&other.body),
            without_request_id(&unknown.body)
        );
    }
    // Plans and names are unchanged; no account was created.
    let accounts = app.admin(Method::GET, "/v1/accounts", None).await;
    assert_eq!(
        accounts.body["data"].as_array().unwrap().len(),
        2,
        "{}",
        accounts.body
    );
    let acct_a = app
        .admin(Method::GET, &format!("/v1/accounts/{a}"), None)
        .await;
    assert_eq!(acct_a.body["plan"], "unlimited");
    assert_eq!(acct_a.body["name"], "Account A");
    let acct_b = app
        .admin(Method::GET, &format!("/v1/accounts/{b}"), None)
        .await;
    assert_eq!(acct_b.body["plan"], "unlimited");

    // With accounts.read, a key sees its own account only.
    for key in [&everything, &reader] {
        let list = as_key(app, key, Method::GET, "/v1/accounts", None).await;
        assert_eq!(list.status.as_u16(), 200, "{}", list.body);
        assert_eq!(ids(&list), vec![a.to_owned()]);
        let own = as_key(app, key, Method::GET, &format!("/v1/accounts/{a}"), None).await;
        assert_eq!(own.status.as_u16(), 200, "{}", own.body);
        assert_eq!(own.body["id"], json!(a));
        let other = as_key(app, key, Method::GET, &format!("/v1/accounts/{b}"), None).await;
        let unknown = as_key(
            app,
            key,
            Method::GET,
            &format!("/v1/accounts/{UNKNOWN_ACCOUNT_ID}"),
            None,
        )
        .await;
        other.assert_error(404, "not_found");
        unknown.assert_error(404, "not_found");
        assert_eq!(
            without_request_id(&other.body),
            without_request_id(&unknown.body)
        );
    }
    // Without accounts.read, not even its own.
    let r = as_key(app, &w.manager, Method::GET, "/v1/accounts", None).await;
    r.assert_error(403, "insufficient_permissions");
    let r = as_key(
        app,
        &w.manager,
        Method::GET,
        &format!("/v1/accounts/{a}"),
        None,
    )
    .await;
    r.assert_error(403, "insufficient_permissions");
}

#[tokio::test]
async fn a_revoked_or_expired_self_service_key_is_refused() {
    let w = world().await;
    let (app, a) = (&w.app, w.a.as_str());
    // A key may revoke itself; after that it is an invalid key.
    let (me_id, me) = app
        .create_key(a, json!({"permissions": ["api_keys.*"]}))
        .await;
    let r = as_key(
        app,
        &me,
        Method::POST,
        &format!("/v1/api-keys/{me_id}/revoke"),
        None,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    for (method, path) in [
        (Method::GET, "/v1/api-keys".to_owned()),
        (Method::GET, format!("/v1/api-keys/{me_id}")),
        (Method::GET, "/v1/api-key-info".to_owned()),
        (Method::GET, "/v1/audit-log".to_owned()),
    ] {
        let r = as_key(app, &me, method, &path, None).await;
        r.assert_error(401, "invalid_key");
    }
    let r = as_key(
        app,
        &me,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "after revoke"})),
    )
    .await;
    r.assert_error(401, "invalid_key");

    // Revoked by the admin.
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{}/revoke", w.manager_id),
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = as_key(app, &w.manager, Method::GET, "/v1/api-keys", None).await;
    r.assert_error(401, "invalid_key");

    // Rotated without grace: the old secret is refused at once, the new one works.
    let (old_id, old) = app
        .create_key(a, json!({"permissions": ["api_keys.*"]}))
        .await;
    let rotated = as_key(
        app,
        &old,
        Method::POST,
        &format!("/v1/api-keys/{old_id}/rotate"),
        None,
    )
    .await;
    assert_eq!(rotated.status.as_u16(), 201, "{}", rotated.body);
    let r = as_key(app, &old, Method::GET, "/v1/api-keys", None).await;
    r.assert_error(401, "invalid_key");
    let new = rotated.body["key"].as_str().unwrap();
    let r = as_key(app, new, Method::GET, "/v1/api-keys", None).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    // Expired.
    let (_, short) = app
        .create_key(a, json!({"permissions": ["api_keys.*"], "expires_in": 1}))
        .await;
    let r = as_key(app, &short, Method::GET, "/v1/api-keys", None).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let r = as_key(app, &short, Method::GET, "/v1/api-keys", None).await;
    r.assert_error(401, "invalid_key");
    // Same message as revoked: the reason is not told.
    let revoked = as_key(app, &me, Method::GET, "/v1/api-keys", None).await;
    assert_eq!(
        without_request_id(&r.body),
        without_request_id(&revoked.body)
    );
}

#[tokio::test]
async fn key_info_returns_the_callers_own_record_and_never_the_secret() {
    let w = world().await;
    let (app, a) = (&w.app, w.a.as_str());
    let (plain_id, plain) = app
        .create_key(
            a,
            json!({"name": "no permissions 🔑", "permissions": [], "expires_in": 3600, "environment": "test"}),
        )
        .await;
    let (read_id, read) = app
        .create_key(a, json!({"name": "reader", "scope": "read"}))
        .await;
    let b_key = app
        .create_key(
            &w.b,
            json!({"name": "B info", "permissions": ["invoices.read"]}),
        )
        .await;
    for (id, secret, name, env) in [
        (
            plain_id.as_str(),
            plain.as_str(),
            "no permissions 🔑",
            "test",
        ),
        (read_id.as_str(), read.as_str(), "reader", "live"),
        (
            w.manager_id.as_str(),
            w.manager.as_str(),
            "A manager",
            "live",
        ),
        (b_key.0.as_str(), b_key.1.as_str(), "B info", "live"),
    ] {
        let r = as_key(app, secret, Method::GET, "/v1/api-key-info", None).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        let text = r.body.to_string();
        assert!(!text.contains(secret), "the secret leaked: {text}");
        let body_hex = secret.rsplit('_').next().unwrap();
        assert!(!text.contains(body_hex), "the secret's body leaked: {text}");
        let rec = if r.body["data"].is_object() {
            &r.body["data"]
        } else {
            &r.body
        };
        let admin_view = app
            .admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
            .await;
        assert_eq!(rec["id"], json!(id));
        assert_eq!(rec["name"], json!(name));
        assert_eq!(rec["environment"], json!(env));
        assert_eq!(rec["display_prefix"], admin_view.body["display_prefix"]);
        assert!(secret.starts_with(rec["display_prefix"].as_str().unwrap()));
        assert_eq!(
            rec["display_prefix"].as_str().unwrap().len(),
            16,
            "kg_live_ + 8: {rec}"
        );
        assert_eq!(rec["permissions"], admin_view.body["permissions"]);
        assert_eq!(rec["created_at"], admin_view.body["created_at"]);
        assert_eq!(rec["expires_at"], admin_view.body["expires_at"]);
        for field in [
            "id",
            "name",
            "display_prefix",
            "environment",
            "permissions",
            "created_at",
            "last_used_at",
            "expires_at",
        ] {
            assert!(rec.get(field).is_some(), "missing {field}: {rec}");
        }
        assert!(rec["created_at"].as_str().unwrap().ends_with('Z'));
        assert!(
            rec.get("key").is_none() && rec.get("digest").is_none(),
            "{rec}"
        );
    }
    // The key just used shows a last use.
    let r = as_key(app, &read, Method::GET, "/v1/api-key-info", None).await;
    let rec = if r.body["data"].is_object() {
        &r.body["data"]
    } else {
        &r.body
    };
    assert!(rec["last_used_at"].is_string(), "{rec}");
    assert!(rec["expires_at"].is_null());
    let r = as_key(app, &plain, Method::GET, "/v1/api-key-info", None).await;
    let rec = if r.body["data"].is_object() {
        &r.body["data"]
    } else {
        &r.body
    };
    assert!(rec["expires_at"].is_string(), "{rec}");
    assert_eq!(rec["permissions"], json!([]));

    // Not for the admin token, nor without a key.
    let r = app.admin(Method::GET, "/v1/api-key-info", None).await;
    r.assert_error(403, "forbidden");
    let r = app.call(Method::GET, "/v1/api-key-info", None, None).await;
    r.assert_error(401, "missing_credentials");
    // Judged like any verification: a malformed key is `malformed_key`, an unknown or
    // revoked one `invalid_key` (not the admin API's "Invalid admin token or API key").
    let r = app
        .call(Method::GET, "/v1/api-key-info", Some("garbage"), None)
        .await;
    r.assert_error(401, "malformed_key");
    let unknown = crate::helpers::unknown_key(keygate_core::Environment::Live);
    let r = app
        .call(Method::GET, "/v1/api-key-info", Some(&unknown), None)
        .await;
    r.assert_error(401, "invalid_key");
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{plain_id}/revoke"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = as_key(app, &plain, Method::GET, "/v1/api-key-info", None).await;
    r.assert_error(401, "invalid_key");
    // The other header forms work too.
    let r = crate::helpers::answer(
        app.client
            .get(app.url("/v1/api-key-info"))
            .header("x-api-key", &read)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = crate::helpers::answer(
        app.client
            .get(app.url("/v1/api-key-info"))
            .header("apikey", &read)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
}

#[tokio::test]
async fn the_audit_log_of_a_self_service_key_shows_only_its_own_account() {
    let w = world().await;
    let (app, a, b) = (&w.app, w.a.as_str(), w.b.as_str());
    // Events in both accounts, by the admin and by keys.
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{}/revoke", w.b_keys[0]),
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200);
    let r = app
        .admin(
            Method::PATCH,
            &format!("/v1/api-keys/{}", w.b_keys[1]),
            Some(json!({"name": "B renamed"})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200);
    let (_, b_manager) = app
        .create_key(b, json!({"permissions": ["api_keys.*"]}))
        .await;
    let r = as_key(
        app,
        &b_manager,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "B self-made"})),
    )
    .await;
    assert_eq!(r.status.as_u16(), 201);
    let b_made = r.body["id"].as_str().unwrap().to_owned();
    let r = as_key(
        app,
        &w.manager,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "A self-made"})),
    )
    .await;
    assert_eq!(r.status.as_u16(), 201);
    let a_made = r.body["id"].as_str().unwrap().to_owned();
    let r = as_key(
        app,
        &w.manager,
        Method::POST,
        &format!("/v1/api-keys/{a_made}/revoke"),
        None,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);

    let log = as_key(app, &w.manager, Method::GET, "/v1/audit-log", None).await;
    assert_eq!(log.status.as_u16(), 200, "{}", log.body);
    let events = log.body["data"].as_array().unwrap();
    assert!(!events.is_empty());
    for e in events {
        assert_eq!(e["account_id"], json!(a), "another account's event: {e}");
    }
    let text = log.body.to_string();
    for foreign in [
        b,
        w.b_keys[0].as_str(),
        w.b_keys[1].as_str(),
        b_made.as_str(),
        "B renamed",
        "B self-made",
    ] {
        assert!(
            !text.contains(foreign),
            "{foreign} leaked into A's audit log"
        );
    }
    let targets: Vec<&str> = events
        .iter()
        .filter_map(|e| e["target_id"].as_str())
        .collect();
    assert!(
        targets.contains(&a_made.as_str()),
        "A's own events are there: {targets:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "key.revoke"
                && e["actor"] == json!(format!("key:{}", w.manager_id))),
        "the revoke by the self-service key is recorded with it as actor"
    );
    // Asking for B's log, or paging, does not leak either.
    let other = as_key(
        app,
        &w.manager,
        Method::GET,
        &format!("/v1/audit-log?account_id={b}"),
        None,
    )
    .await;
    let unknown = as_key(
        app,
        &w.manager,
        Method::GET,
        &format!("/v1/audit-log?account_id={UNKNOWN_ACCOUNT_ID}"),
        None,
    )
    .await;
    other.assert_error(404, "not_found");
    unknown.assert_error(404, "not_found");
    assert_eq!(
        without_request_id(&other.body),
        without_request_id(&unknown.body)
    );
    let own = as_key(
        app,
        &w.manager,
        Method::GET,
        &format!("/v1/audit-log?account_id={a}&limit=1"),
        None,
    )
    .await;
    assert_eq!(own.status.as_u16(), 200, "{}", own.body);
    let mut before = own.body["next_before"].as_i64();
    let mut pages = 0;
    while let Some(seq) = before {
        let page = as_key(
            app,
            &w.manager,
            Method::GET,
            &format!("/v1/audit-log?before={seq}&limit=1"),
            None,
        )
        .await;
        assert_eq!(page.status.as_u16(), 200, "{}", page.body);
        for e in page.body["data"].as_array().unwrap() {
            assert_eq!(e["account_id"], json!(a), "{e}");
        }
        before = page.body["next_before"].as_i64();
        pages += 1;
        assert!(pages < 100);
    }
    // B's key sees B's events only; the admin sees both.
    let log_b = as_key(app, &b_manager, Method::GET, "/v1/audit-log", None).await;
    for e in log_b.body["data"].as_array().unwrap() {
        assert_eq!(e["account_id"], json!(b), "{e}");
    }
    let all = app.admin(Method::GET, "/v1/audit-log", None).await;
    let accounts: std::collections::HashSet<&str> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["account_id"].as_str())
        .collect();
    assert!(accounts.contains(a) && accounts.contains(b), "{accounts:?}");
}

#[tokio::test]
async fn rotating_a_more_powerful_key_does_not_hand_out_its_permissions() {
    let w = world().await;
    let (app, a) = (&w.app, w.a.as_str());
    let (root_id, _) = app
        .create_key(a, json!({"name": "root", "permissions": ["*"]}))
        .await;
    let (inv_id, _) = app
        .create_key(
            a,
            json!({"name": "invoices", "permissions": ["invoices.*"]}),
        )
        .await;
    for target in [&root_id, &inv_id] {
        let r = as_key(
            app,
            &w.manager,
            Method::POST,
            &format!("/v1/api-keys/{target}/rotate"),
            None,
        )
        .await;
        if let Some(secret) = r.body["key"].as_str() {
            let escalated = app
                .forward_auth(Some(secret), "DELETE", "/api/v1/invoices/1")
                .await;
            eprintln!(
                "rotation handed out a secret with {}; forward-auth DELETE /api/v1/invoices/1 -> {}",
                r.body["permissions"], escalated.status
            );
        }
        r.assert_error(403, "forbidden");
        let t = app
            .admin(Method::GET, &format!("/v1/api-keys/{target}"), None)
            .await;
        assert_eq!(t.body["status"], "active");
    }
}

#[tokio::test]
async fn a_test_key_cannot_mint_a_live_key_by_rotation() {
    let w = world().await;
    let (app, a) = (&w.app, w.a.as_str());
    let (_, test_key) = app
        .create_key(
            a,
            json!({"environment": "test", "permissions": ["api_keys.*"]}),
        )
        .await;
    let (live_id, _) = app.create_key(a, json!({"name": "live target"})).await;
    let r = as_key(
        app,
        &test_key,
        Method::POST,
        &format!("/v1/api-keys/{live_id}/rotate"),
        None,
    )
    .await;
    if let Some(secret) = r.body["key"].as_str() {
        eprintln!(
            "a test key obtained a live secret starting {}",
            &secret[..8]
        );
    }
    r.assert_error(403, "forbidden");
}

#[tokio::test]
async fn a_restricted_key_cannot_hand_out_an_unrestricted_one() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (_, manager) = app
        .create_key(
            &account,
            json!({"permissions": ["api_keys.*", "invoices.read"], "ip_allowlist": ["127.0.0.0/8"], "expires_in": 3600}),
        )
        .await;
    let manager_record = as_key(&app, &manager, Method::GET, "/v1/api-key-info", None).await;
    let own_expiry = manager_record.body["data"]["expires_at"].clone();
    // Without explicit values, the new key inherits the allowlist and the expiry.
    let created = as_key(
        &app,
        &manager,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "child", "permissions": ["invoices.read"]})),
    )
    .await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.body);
    assert_eq!(created.body["ip_allowlist"], json!(["127.0.0.0/8"]));
    assert_eq!(created.body["expires_at"], own_expiry);
    let child_id = created.body["id"].as_str().unwrap().to_owned();
    // Narrower is fine; wider, cleared or longer-lived is not.
    let narrower = json!({"name": "c", "ip_allowlist": ["127.0.0.1"], "expires_in": 60});
    assert_eq!(
        as_key(&app, &manager, Method::POST, "/v1/api-keys", Some(narrower))
            .await
            .status
            .as_u16(),
        201
    );
    for body in [
        json!({"name": "c", "ip_allowlist": ["0.0.0.0/0"]}),
        json!({"name": "c", "ip_allowlist": []}),
        json!({"name": "c", "expires_in": 7200}),
    ] {
        as_key(&app, &manager, Method::POST, "/v1/api-keys", Some(body))
            .await
            .assert_error(403, "forbidden");
    }
    for body in [
        json!({"ip_allowlist": []}),
        json!({"expires_at": null}),
        json!({"expires_in": 86400}),
    ] {
        as_key(
            &app,
            &manager,
            Method::PATCH,
            &format!("/v1/api-keys/{child_id}"),
            Some(body),
        )
        .await
        .assert_error(403, "forbidden");
    }
    // The admin is not bound by any of this.
    let p = app
        .admin(
            Method::PATCH,
            &format!("/v1/api-keys/{child_id}"),
            Some(json!({"ip_allowlist": [], "expires_at": null})),
        )
        .await;
    assert_eq!(
        (p.body["ip_allowlist"].clone(), p.body["expires_at"].clone()),
        (json!([]), json!(null))
    );
}
