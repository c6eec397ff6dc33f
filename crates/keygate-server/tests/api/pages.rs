//! Lists page: `limit` (1–1000, default 100) and `starting_after=<id>`, answering
//! `{data, has_more, next_cursor}` in `(created_at, id)` order, with filters.

use std::collections::HashSet;

use keygate_core::Environment;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{import_keys, spawn, TestApp};

/// Follows `next_cursor` from the first page of `path` (which already holds a `?`) until
/// `has_more` is false, checking each page's shape. Returns every record and the page sizes.
async fn walk(app: &TestApp, credential: &str, path: &str) -> (Vec<Value>, Vec<usize>) {
    let mut records = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            None => path.to_owned(),
            Some(c) => format!("{path}&starting_after={c}"),
        };
        let page = app.call(Method::GET, &url, Some(credential), None).await;
        assert_eq!(page.status, 200, "{url}: {}", page.body);
        let data = page.body["data"]
            .as_array()
            .expect("data is a list")
            .clone();
        let has_more = page.body["has_more"].as_bool().expect("has_more is a bool");
        sizes.push(data.len());
        if has_more {
            assert_eq!(
                page.body["next_cursor"],
                data.last().unwrap()["id"],
                "{url}"
            );
            cursor = Some(page.body["next_cursor"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(page.body["next_cursor"], Value::Null, "{url}");
        }
        records.extend(data);
        if !has_more {
            return (records, sizes);
        }
        assert!(sizes.len() < 1000, "{url}: the walk does not end");
    }
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every id once, and every one of `expected`.
fn assert_complete(walked: &[Value], expected: &HashSet<String>) {
    let walked = ids(walked);
    let unique: HashSet<String> = walked.iter().cloned().collect();
    assert_eq!(unique.len(), walked.len(), "a record came twice");
    assert_eq!(&unique, expected, "records are missing or foreign");
}

/// `(created_at, id)` never goes back (created_at in RFC 3339 with fixed digits sorts as
/// text).
fn assert_ordered(records: &[Value]) {
    for pair in records.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            a["created_at"].as_str() <= b["created_at"].as_str(),
            "{a} before {b}"
        );
    }
}

#[tokio::test]
async fn every_page_of_2500_keys_once_with_the_largest_and_the_default_limit() {
    let app = spawn().await;
    let account = app.create_account("Many keys", "unlimited").await;
    let other = app.create_account("Other", "unlimited").await;
    let keys = import_keys(&app, &account, 2_500, |_, _| {}).await;
    let foreign = import_keys(&app, &other, 30, |_, _| {}).await;
    let expected: HashSet<String> = keys.iter().map(|k| k.id.clone()).collect();
    let admin = app.admin_token.clone();

    let path = format!("/v1/api-keys?account_id={account}&limit=1000");
    let (walked, sizes) = walk(&app, &admin, &path).await;
    assert_eq!(sizes, vec![1000, 1000, 500]);
    assert_complete(&walked, &expected);
    assert_ordered(&walked);

    let (by_default, sizes) =
        walk(&app, &admin, &format!("/v1/api-keys?account_id={account}")).await;
    assert_eq!(sizes, vec![100; 25]);
    assert_complete(&by_default, &expected);
    assert_eq!(
        ids(&by_default),
        ids(&walked),
        "the same order at any page size"
    );

    // Without an account: both accounts, each key once.
    let (everything, _) = walk(&app, &admin, "/v1/api-keys?limit=999").await;
    let mut all = expected.clone();
    all.extend(foreign.iter().map(|k| k.id.clone()));
    assert_complete(&everything, &all);

    // A key created during the walk sorts after every existing one: the walk still ends
    // with each key once, the new one last.
    let first = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?account_id={account}&limit=1000"),
            None,
        )
        .await;
    let (new_id, _) = app.create_key(&account, json!({"name": "late"})).await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let (rest, _) = walk(
        &app,
        &admin,
        &format!("/v1/api-keys?account_id={account}&limit=1000&starting_after={cursor}"),
    )
    .await;
    assert_eq!(rest.len(), 1_501);
    assert_eq!(rest.last().unwrap()["id"], new_id.as_str());
}

#[tokio::test]
async fn a_tenant_pages_through_its_own_keys_only() {
    let app = spawn().await;
    let account = app.create_account("Tenant", "unlimited").await;
    let other = app.create_account("Neighbour", "unlimited").await;
    let own = import_keys(&app, &account, 250, |_, _| {}).await;
    let foreign = import_keys(&app, &other, 40, |_, _| {}).await;
    let (tenant_id, tenant) = app
        .create_key(
            &account,
            json!({"permissions": ["api_keys.read", "accounts.read"]}),
        )
        .await;

    let (walked, sizes) = walk(&app, &tenant, "/v1/api-keys?limit=100").await;
    assert_eq!(sizes, vec![100, 100, 51]);
    let mut expected: HashSet<String> = own.iter().map(|k| k.id.clone()).collect();
    expected.insert(tenant_id);
    assert_complete(&walked, &expected);

    // Another account's key as a cursor is refused like an unknown id, and naming the
    // other account answers like an unknown account.
    let probe = app
        .call(
            Method::GET,
            &format!("/v1/api-keys?starting_after={}", foreign[0].id),
            Some(&tenant),
            None,
        )
        .await;
    probe.assert_error(400, "validation_error");
    assert_eq!(probe.body["field"], "starting_after");
    let unknown = app
        .call(
            Method::GET,
            "/v1/api-keys?starting_after=key_doesnotexist",
            Some(&tenant),
            None,
        )
        .await;
    assert_eq!(unknown.body["error"], probe.body["error"]);
    app.call(
        Method::GET,
        &format!("/v1/api-keys?account_id={other}"),
        Some(&tenant),
        None,
    )
    .await
    .assert_error(404, "not_found");

    // Its accounts list is one account.
    let accounts = app
        .call(Method::GET, "/v1/accounts", Some(&tenant), None)
        .await;
    assert_eq!(accounts.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(accounts.body["data"][0]["id"], account.as_str());
    assert_eq!(accounts.body["has_more"], false);
    let probe = app
        .call(
            Method::GET,
            &format!("/v1/accounts?starting_after={other}"),
            Some(&tenant),
            None,
        )
        .await;
    assert_eq!(probe.body["field"], "starting_after", "{}", probe.body);
}

#[tokio::test]
async fn key_filters_status_environment_name_and_account() {
    let app = spawn().await;
    let account = app.create_account("Filters", "unlimited").await;
    let other = app.create_account("Other", "unlimited").await;
    let now = keygate_engine::now_ms();
    // i % 4: 0 active, 1 revoked, 2 expired, 3 revoked after expiring (revoked wins);
    // i % 5 == 0: test environment; names "Billing 50%_<i>" for i % 7 == 0.
    let keys = import_keys(&app, &account, 140, |i, k| {
        match i % 4 {
            1 => k.revoked_at = Some(now - 1_000),
            2 => k.expires_at = Some(now - 1_000),
            3 => {
                k.expires_at = Some(now - 2_000);
                k.revoked_at = Some(now - 1_000);
            }
            _ => k.expires_at = Some(now + 3_600_000),
        }
        if i % 5 == 0 {
            k.environment = Environment::Test;
        }
        if i % 7 == 0 {
            k.name = format!("Billing 50%_{i}");
        }
    })
    .await;
    // A key whose revocation is scheduled (a rotation's grace) is still active.
    let pending = import_keys(&app, &other, 1, |_, k| k.revoked_at = Some(now + 3_600_000)).await;

    let list = |query: String| {
        let app = &app;
        async move {
            let admin = app.admin_token.clone();
            let (records, _) = walk(app, &admin, &format!("/v1/api-keys?limit=1000&{query}")).await;
            let mut got = ids(&records);
            got.sort();
            got
        }
    };
    let expect = |pick: &dyn Fn(usize) -> bool| {
        let mut want: Vec<String> = (0..keys.len())
            .filter(|i| pick(*i))
            .map(|i| keys[i].id.clone())
            .collect();
        want.sort();
        want
    };

    let a = format!("account_id={account}");
    assert_eq!(
        list(format!("{a}&status=active")).await,
        expect(&|i| i % 4 == 0)
    );
    assert_eq!(
        list(format!("{a}&status=revoked")).await,
        expect(&|i| i % 4 == 1 || i % 4 == 3)
    );
    assert_eq!(
        list(format!("{a}&status=expired")).await,
        expect(&|i| i % 4 == 2)
    );
    assert_eq!(
        list(format!("{a}&environment=test")).await,
        expect(&|i| i % 5 == 0)
    );
    assert_eq!(
        list(format!("{a}&environment=live&status=active")).await,
        expect(&|i| i % 5 != 0 && i % 4 == 0)
    );
    // Case-insensitive substring; `%` and `_` are literal characters, not wildcards.
    assert_eq!(
        list(format!("{a}&name=bILLing")).await,
        expect(&|i| i % 7 == 0)
    );
    assert_eq!(
        list(format!("{a}&name=50%25_")).await,
        expect(&|i| i % 7 == 0)
    );
    assert_eq!(
        list(format!("{a}&name=0%25_1")).await,
        expect(&|i| i % 7 == 0 && format!("{i}").starts_with('1'))
    );
    assert_eq!(list(format!("{a}&name=_")).await, expect(&|i| i % 7 == 0));
    assert_eq!(
        list(format!("{a}&name=imported%201")).await,
        expect(&|i| i % 7 != 0 && format!("{i}").starts_with('1'))
    );
    assert_eq!(
        list(format!("account_id={other}&status=active")).await,
        vec![pending[0].id.clone()]
    );
    assert!(list(format!("account_id={other}&status=revoked"))
        .await
        .is_empty());

    // Filters and pages together: active keys two at a time.
    let admin = app.admin_token.clone();
    let (paged, sizes) = walk(
        &app,
        &admin,
        &format!("/v1/api-keys?{a}&status=active&limit=2"),
    )
    .await;
    assert_eq!(sizes.len(), 18);
    let mut paged = ids(&paged);
    paged.sort();
    assert_eq!(paged, expect(&|i| i % 4 == 0));
}

#[tokio::test]
async fn accounts_page_and_filter() {
    let app = spawn().await;
    let now = keygate_engine::now_ms();
    let accounts: Vec<keygate_store::Account> = (0..45)
        .map(|i| keygate_store::Account {
            id: format!("acct_{}", keygate_core::key::random_hex(10).unwrap()),
            name: if i % 3 == 0 {
                format!("Acme {i}")
            } else {
                format!("Globex {i}")
            },
            plan: if i % 2 == 0 {
                "pro".into()
            } else {
                "basic".into()
            },
            created_at: now - 1_000 + i / 4,
        })
        .collect();
    app.store.import_accounts(&accounts).await.unwrap();
    let admin = app.admin_token.clone();
    let all: HashSet<String> = accounts.iter().map(|a| a.id.clone()).collect();

    let (walked, sizes) = walk(&app, &admin, "/v1/accounts?limit=10").await;
    assert_eq!(sizes, vec![10, 10, 10, 10, 5]);
    assert_complete(&walked, &all);
    assert_ordered(&walked);

    let subset = |pick: &dyn Fn(&keygate_store::Account) -> bool| -> HashSet<String> {
        accounts
            .iter()
            .filter(|a| pick(a))
            .map(|a| a.id.clone())
            .collect()
    };
    let (acme, _) = walk(&app, &admin, "/v1/accounts?name=ACME&limit=4").await;
    assert_complete(&acme, &subset(&|a| a.name.starts_with("Acme")));
    let (pro_globex, _) = walk(&app, &admin, "/v1/accounts?name=globex&plan=pro").await;
    assert_complete(
        &pro_globex,
        &subset(&|a| a.name.starts_with("Globex") && a.plan == "pro"),
    );
}

#[tokio::test]
async fn bad_limits_and_cursors_are_400_with_their_field() {
    let app = spawn().await;
    let account = app.create_account("Bad input", "pro").await;
    let (key_id, _) = app.create_key(&account, json!({})).await;
    for list in ["/v1/api-keys", "/v1/accounts"] {
        for limit in ["0", "1001", "-1", "abc", "1.5", "99999999999999999999"] {
            let answer = app
                .admin(Method::GET, &format!("{list}?limit={limit}"), None)
                .await;
            answer.assert_error(400, "validation_error");
            assert_eq!(
                answer.body["field"], "limit",
                "{list} limit={limit}: {}",
                answer.body
            );
        }
        for cursor in [
            "key_doesnotexist",
            "acct_doesnotexist",
            "..%2Fetc",
            "a%20b",
            "x'%20OR%201=1",
        ] {
            let answer = app
                .admin(
                    Method::GET,
                    &format!("{list}?starting_after={cursor}"),
                    None,
                )
                .await;
            answer.assert_error(400, "validation_error");
            assert_eq!(
                answer.body["field"], "starting_after",
                "{list} {cursor}: {}",
                answer.body
            );
        }
        let unknown = app
            .admin(Method::GET, &format!("{list}?page=2"), None)
            .await;
        unknown.assert_error(400, "validation_error");
    }
    // A key id is no cursor for accounts, nor an account id for keys.
    let crossed = app
        .admin(
            Method::GET,
            &format!("/v1/accounts?starting_after={key_id}"),
            None,
        )
        .await;
    assert_eq!(crossed.body["field"], "starting_after");
    let crossed = app
        .admin(
            Method::GET,
            &format!("/v1/api-keys?starting_after={account}"),
            None,
        )
        .await;
    assert_eq!(crossed.body["field"], "starting_after");
    for (param, value) in [("status", "dead"), ("environment", "prod")] {
        let answer = app
            .admin(Method::GET, &format!("/v1/api-keys?{param}={value}"), None)
            .await;
        answer.assert_error(400, "validation_error");
        assert_eq!(answer.body["field"], param);
    }
    // The limits themselves are fine, and the last page says so.
    for limit in ["1", "1000"] {
        let answer = app
            .admin(Method::GET, &format!("/v1/api-keys?limit={limit}"), None)
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["has_more"], false);
        assert_eq!(answer.body["next_cursor"], Value::Null);
    }
}
