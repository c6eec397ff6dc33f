//! Malformed requests against the real server: each must get the exact 4xx and the JSON
//! error shape `{error, code, request_id}` (plus `field` for validation errors), never a
//! 5xx and never a dropped connection (except where HTTP itself allows a close, on a
//! request line hyper cannot parse).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use keygate_core::Environment;
use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn, unknown_key, Answer, TestApp};

// ---------------------------------------------------------------------------------------
// A small table runner.

/// The credential a case sends.
enum Cred {
    Admin,
    None,
    /// This exact `Authorization` header value.
    Header(HeaderValue),
}

enum Body {
    None,
    Json(Value),
    /// Raw bytes with this content type ("" for no content type header).
    Raw(String, Vec<u8>),
}

struct Case {
    what: String,
    method: Method,
    path: String,
    cred: Cred,
    headers: Vec<(&'static str, HeaderValue)>,
    body: Body,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(what: impl Into<String>, method: Method, path: impl Into<String>) -> Case {
    Case {
        what: what.into(),
        method,
        path: path.into(),
        cred: Cred::Admin,
        headers: Vec::new(),
        body: Body::None,
        status: 0,
        code: "",
        field: None,
    }
}

impl Case {
    fn json(mut self, v: Value) -> Self {
        self.body = Body::Json(v);
        self
    }

    fn raw(mut self, content_type: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Raw(content_type.to_owned(), bytes.into());
        self
    }

    fn no_auth(mut self) -> Self {
        self.cred = Cred::None;
        self
    }

    fn auth(mut self, value: HeaderValue) -> Self {
        self.cred = Cred::Header(value);
        self
    }

    fn header(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Expects this status and code (and, for validation errors, `field`).
    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }

    fn invalid(self, field: &'static str) -> Self {
        let mut c = self.expect(400, "validation_error");
        c.field = Some(field);
        c
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

/// Sends a case and reads the answer without panicking on a non-JSON body.
async fn send(app: &TestApp, c: &Case) -> Result<Answer, String> {
    let mut req = app.client.request(c.method.clone(), app.url(&c.path));
    match &c.cred {
        Cred::Admin => req = req.bearer_auth(&app.admin_token),
        Cred::None => {}
        Cred::Header(v) => req = req.header("authorization", v.clone()),
    }
    for (name, value) in &c.headers {
        req = req.header(*name, value.clone());
    }
    match &c.body {
        Body::None => {}
        Body::Json(v) => req = req.json(v),
        Body::Raw(ct, bytes) => {
            if !ct.is_empty() {
                req = req.header("content-type", ct.as_str());
            }
            req = req.body(bytes.clone());
        }
    }
    let response = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("body failed: {e}"))?;
    let body = serde_json::from_slice(&bytes).map_err(|_| {
        format!(
            "{status}: not JSON: {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )
    })?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Runs every case, then fails once, listing every case that did not answer as expected.
async fn run(app: &TestApp, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        assert!(
            c.status >= 400 && c.status < 500,
            "{}: no expectation",
            c.what
        );
        let a = match send(app, c).await {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{} {} ({}): {e}", c.method, c.path, c.what));
                continue;
            }
        };
        let checked = catch_unwind(AssertUnwindSafe(|| {
            a.assert_error(c.status, c.code);
            if c.code == "validation_error" {
                let field = a.body["field"].as_str().unwrap_or_default();
                assert!(!field.is_empty(), "no field; body: {}", a.body);
            }
            if let Some(field) = c.field {
                assert_eq!(a.body["field"], json!(field), "field; body: {}", a.body);
            }
        }));
        if checked.is_err() {
            failures.push(format!(
                "{} {} ({}): expected {} {}{}, got {} {}",
                c.method,
                truncate(&c.path),
                c.what,
                c.status,
                c.code,
                c.field.map(|f| format!(" field={f}")).unwrap_or_default(),
                a.status.as_u16(),
                a.body
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

const UNKNOWN_KEY_ID: &str = "key_000000000000000000000000";

/// An account on the unlimited plan and a create body for it.
async fn setup(app: &TestApp) -> String {
    app.create_account("Malformed Ltd", "unlimited").await
}

fn with(account: &str, extra: Value) -> Value {
    let mut body = json!({"account_id": account, "name": "k"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

// ---------------------------------------------------------------------------------------
// Bodies.

#[tokio::test]
async fn bad_json_syntax_and_shapes_are_validation_errors() {
    let app = spawn().await;
    let acct = setup(&app).await;
    let post = |what: &str| case(what, Method::POST, "/v1/api-keys");
    let json_ct = "application/json";
    run(
        &app,
        vec![
            post("unclosed object")
                .raw(json_ct, "{")
                .expect(400, "validation_error"),
            post("trailing comma")
                .raw(json_ct, format!(r#"{{"account_id":"{acct}","name":"x",}}"#))
                .expect(400, "validation_error"),
            post("single quotes")
                .raw(json_ct, r#"{'name': 'x'}"#)
                .expect(400, "validation_error"),
            post("bare word").raw(json_ct, "hello").invalid("body"),
            post("array body")
                .json(json!([1, 2, 3]))
                .expect(400, "validation_error"),
            post("string body")
                .json(json!("a key please"))
                .invalid("body"),
            post("null body").json(Value::Null).invalid("body"),
            post("number body").json(json!(42)).invalid("body"),
            post("empty JSON body").raw(json_ct, "").invalid("body"),
            post("whitespace JSON body")
                .raw(json_ct, "  \n ")
                .invalid("body"),
            post("UTF-8 BOM before the object")
                .raw(json_ct, b"\xef\xbb\xbf{\"name\":\"x\"}".to_vec())
                .invalid("body"),
            post("invalid UTF-8 inside a string")
                .raw(json_ct, b"{\"name\":\"\xff\xfe\"}".to_vec())
                .expect(400, "validation_error"),
            post("lone surrogate escape")
                .raw(
                    json_ct,
                    format!(r#"{{"account_id":"{acct}","name":"\ud800"}}"#),
                )
                .expect(400, "validation_error"),
            post("missing name")
                .json(json!({"account_id": acct}))
                .expect(400, "validation_error"),
            post("empty object")
                .json(json!({}))
                .expect(400, "validation_error"),
            post("duplicate field")
                .raw(
                    json_ct,
                    format!(r#"{{"account_id":"{acct}","name":"a","name":"b"}}"#),
                )
                .expect(400, "validation_error"),
            post("unknown field (typo)")
                .json(json!({"account_id": acct, "nmae": "x", "name": "x"}))
                .expect(400, "validation_error"),
            post("unknown field secret")
                .json(with(&acct, json!({"key": "kg_live_mine"})))
                .expect(400, "validation_error"),
            post("unknown field status")
                .json(with(&acct, json!({"status": "active"})))
                .expect(400, "validation_error"),
            post("deeply nested meta")
                .raw(
                    json_ct,
                    format!(
                        r#"{{"account_id":"{acct}","name":"x","meta":{{"a":{}1{}}}}}"#,
                        "[".repeat(300),
                        "]".repeat(300)
                    ),
                )
                .expect(400, "validation_error"),
            case("accounts: missing name", Method::POST, "/v1/accounts")
                .json(json!({"plan": "pro"}))
                .expect(400, "validation_error"),
            case("accounts: unknown field", Method::POST, "/v1/accounts")
                .json(json!({"name": "x", "tier": "pro"}))
                .expect(400, "validation_error"),
            case("accounts: bad JSON", Method::POST, "/v1/accounts")
                .raw(json_ct, "{\"name\": }")
                .expect(400, "validation_error"),
            case("verify: bad JSON", Method::POST, "/v1/verify")
                .raw(json_ct, "{\"key\"")
                .invalid("body"),
        ],
    )
    .await;
}

#[tokio::test]
async fn unknown_fields_name_the_field() {
    let app = spawn().await;
    let acct = setup(&app).await;
    let a = app
        .create_key_answer(&acct, json!({"permisions": ["invoices.read"]}))
        .await;
    a.assert_error(400, "validation_error");
    let field = a.body["field"].as_str().unwrap_or_default();
    assert!(
        !field.is_empty(),
        "a validation error names its field: {}",
        a.body
    );
    let message = a.body["error"].as_str().unwrap();
    assert!(
        message.contains("permisions"),
        "the message names the unknown field: {message}"
    );
}

#[tokio::test]
async fn create_fields_of_the_wrong_type_or_value_are_refused() {
    let app = spawn().await;
    let acct = setup(&app).await;
    let post = |what: &str, extra: Value| {
        case(what, Method::POST, "/v1/api-keys").json(with(&acct, extra))
    };
    let big_meta = json!({"blob": "x".repeat(9 * 1024)});
    let many_ips: Vec<String> = (0..257)
        .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
        .collect();
    run(
        &app,
        vec![
            // name
            post("name as number", json!({"name": 42})).invalid("name"),
            post("name as null", json!({"name": null})).invalid("name"),
            post("name as array", json!({"name": ["a"]})).invalid("name"),
            post("empty name", json!({"name": ""})).invalid("name"),
            post("blank name", json!({"name": "   \t "})).invalid("name"),
            post("name with BEL", json!({"name": "bad\u{7}name"})).invalid("name"),
            post("name with newline", json!({"name": "two\nlines"})).invalid("name"),
            post("name with NUL", json!({"name": "nul\u{0}byte"})).invalid("name"),
            post("name with DEL", json!({"name": "del\u{7f}"})).invalid("name"),
            post("name with C1 control", json!({"name": "c1\u{85}x"})).invalid("name"),
            post("name of 201 chars", json!({"name": "n".repeat(201)})).invalid("name"),
            post("name of 201 emoji", json!({"name": "🔑".repeat(201)})).invalid("name"),
            // account_id
            post("account_id as number", json!({"account_id": 7})).invalid("account_id"),
            case("admin create without account_id", Method::POST, "/v1/api-keys")
                .json(json!({"name": "x"}))
                .invalid("account_id"),
            post("unknown account", json!({"account_id": "acct_000000000000000000000000"}))
                .expect(404, "not_found"),
            // environment
            post("environment prod", json!({"environment": "prod"})).invalid("environment"),
            post("environment empty", json!({"environment": ""})).invalid("environment"),
            post("environment number", json!({"environment": 1})).invalid("environment"),
            // permissions and scope
            post("permissions as string", json!({"permissions": "invoices.read"}))
                .invalid("permissions"),
            post("permissions as object", json!({"permissions": {"invoices": "read"}}))
                .invalid("permissions"),
            post("permission a number", json!({"permissions": [1]})).invalid("permissions[0]"),
            post("permission a.b.c", json!({"permissions": ["a.b.c"]})).invalid("permissions"),
            post("permission empty", json!({"permissions": [""]})).invalid("permissions"),
            post("permission with space", json!({"permissions": ["inv oices.read"]}))
                .invalid("permissions"),
            post("permission without action", json!({"permissions": ["invoices."]}))
                .invalid("permissions"),
            post("permission without resource", json!({"permissions": [".read"]}))
                .invalid("permissions"),
            post("permission bare word", json!({"permissions": ["invoices"]}))
                .invalid("permissions"),
            post("permission leading digit", json!({"permissions": ["9lives.read"]}))
                .invalid("permissions"),
            post("permission mixed separators", json!({"permissions": ["invoices:read.x"]}))
                .invalid("permissions"),
            post("permission unicode", json!({"permissions": ["rechnungen.lesen✓"]}))
                .invalid("permissions"),
            post(
                "permission resource over 64 chars",
                json!({"permissions": [format!("{}.read", "r".repeat(65))]}),
            )
            .invalid("permissions"),
            post(
                "over 256 grants",
                json!({"permissions": (0..257).map(|i| format!("res{i}.read")).collect::<Vec<_>>()}),
            )
            .invalid("permissions"),
            post(
                "both permissions and scope",
                json!({"permissions": ["invoices.read"], "scope": "read"}),
            )
            .invalid("scope"),
            post("unknown scope", json!({"scope": "admin"})).invalid("scope"),
            post("scope as number", json!({"scope": 5})).invalid("scope"),
            post("scope as list", json!({"scope": ["read"]})).invalid("scope"),
            // ip_allowlist
            post("allowlist garbage", json!({"ip_allowlist": ["not-an-ip"]})).invalid("ip_allowlist"),
            post("allowlist bad prefix", json!({"ip_allowlist": ["10.0.0.0/33"]}))
                .invalid("ip_allowlist"),
            post("allowlist bad octet", json!({"ip_allowlist": ["256.1.1.1"]})).invalid("ip_allowlist"),
            post("allowlist empty entry", json!({"ip_allowlist": [""]})).invalid("ip_allowlist"),
            post("allowlist hostname", json!({"ip_allowlist": ["localhost"]})).invalid("ip_allowlist"),
            post("allowlist number entry", json!({"ip_allowlist": ["1.2.3.4", 5]}))
                .invalid("ip_allowlist[1]"),
            post("allowlist as string", json!({"ip_allowlist": "10.0.0.1"})).invalid("ip_allowlist"),
            post("allowlist over 256 entries", json!({"ip_allowlist": many_ips})).invalid("ip_allowlist"),
            // expiry
            post("expires_in negative", json!({"expires_in": -1})).invalid("expires_in"),
            post("expires_in zero", json!({"expires_in": 0})).invalid("expires_in"),
            post("expires_in over 100 years", json!({"expires_in": 3_200_000_000i64}))
                .invalid("expires_in"),
            post("expires_in i64::MAX", json!({"expires_in": i64::MAX})).invalid("expires_in"),
            post("expires_in beyond i64", json!({"expires_in": 1e40})).invalid("expires_in"),
            post("expires_in as string", json!({"expires_in": "3600"})).invalid("expires_in"),
            post("expires_in fractional", json!({"expires_in": 1.5})).invalid("expires_in"),
            post("expires_at not RFC 3339", json!({"expires_at": "tomorrow"})).invalid("expires_at"),
            post("expires_at date only", json!({"expires_at": "2030-01-01"})).invalid("expires_at"),
            post("expires_at month 13", json!({"expires_at": "2030-13-01T00:00:00Z"}))
                .invalid("expires_at"),
            post("expires_at as number", json!({"expires_at": 1_900_000_000})).invalid("expires_at"),
            post("expires_at in the past", json!({"expires_at": "2020-01-01T00:00:00Z"}))
                .invalid("expires_at"),
            post(
                "expires_at and expires_in",
                json!({"expires_at": "2099-01-01T00:00:00Z", "expires_in": 60}),
            )
            .invalid("expires_in"),
            // rate_limit
            post("rate_limit zero requests", json!({"rate_limit": {"requests": 0, "per_seconds": 60}}))
                .invalid("rate_limit"),
            post("rate_limit zero window", json!({"rate_limit": {"requests": 10, "per_seconds": 0}}))
                .invalid("rate_limit"),
            post(
                "rate_limit window over a year",
                json!({"rate_limit": {"requests": 10, "per_seconds": 31_536_001}}),
            )
            .invalid("rate_limit"),
            post(
                "rate_limit negative requests",
                json!({"rate_limit": {"requests": -1, "per_seconds": 60}}),
            )
            .invalid("rate_limit.requests"),
            post(
                "rate_limit requests over u32",
                json!({"rate_limit": {"requests": 5_000_000_000u64, "per_seconds": 60}}),
            )
            .invalid("rate_limit.requests"),
            post("rate_limit missing per_seconds", json!({"rate_limit": {"requests": 10}}))
                .expect(400, "validation_error"),
            post("rate_limit as string", json!({"rate_limit": "10/s"})).invalid("rate_limit"),
            // quota
            post("quota zero", json!({"quota": {"requests": 0}})).invalid("quota"),
            post("quota negative", json!({"quota": {"requests": -5}})).invalid("quota.requests"),
            post("quota u64::MAX", json!({"quota": {"requests": u64::MAX}})).invalid("quota"),
            post("quota as number", json!({"quota": 100})).invalid("quota"),
            // meta
            post("meta as string", json!({"meta": "vip"})).invalid("meta"),
            post("meta as array", json!({"meta": [1, 2]})).invalid("meta"),
            post("meta over 8 KiB", json!({"meta": big_meta})).invalid("meta"),
        ],
    )
    .await;
}

/// A quota over what the counters hold is refused with its range, not "at least 1".
#[tokio::test]
async fn a_quota_too_large_is_refused_with_its_range() {
    let app = spawn().await;
    let acct = setup(&app).await;
    for requests in [0, u64::MAX] {
        let a = app
            .create_key_answer(&acct, json!({"quota": {"requests": requests}}))
            .await;
        assert_eq!(a.status.as_u16(), 400, "{}", a.body);
        assert_eq!(a.body["field"], "quota", "{}", a.body);
        assert_eq!(
            a.body["error"], "quota.requests must be between 1 and 9223372036854775807",
            "{requests}: {}",
            a.body
        );
    }
}

#[tokio::test]
async fn valid_unicode_names_are_accepted_exactly() {
    let app = spawn().await;
    let acct = setup(&app).await;
    for name in [
        "Café ☕ – 請求書 🔑🚀",
        "مفتاح الإنتاج",
        "👩‍💻 deploy bot",
        "e\u{301}te\u{301}",
        &"🔑".repeat(200),
        &"n".repeat(200),
    ] {
        let a = app.create_key_answer(&acct, json!({"name": name})).await;
        assert_eq!(a.status.as_u16(), 201, "{name}: {}", a.body);
        assert_eq!(a.body["name"], json!(name));
        let id = a.body["id"].as_str().unwrap();
        let got = app
            .admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
            .await;
        assert_eq!(got.body["name"], json!(name));
    }
    // Surrounding whitespace is trimmed, not refused.
    let a = app
        .create_key_answer(&acct, json!({"name": "  padded  "}))
        .await;
    assert_eq!(a.status.as_u16(), 201, "{}", a.body);
    assert_eq!(a.body["name"], "padded");
}

#[tokio::test]
async fn trailing_garbage_after_the_json_body_is_refused() {
    let app = spawn().await;
    let acct = setup(&app).await;
    for trailer in [" {}", " garbage", "}", ",", "\"x\""] {
        let c = case("trailing garbage", Method::POST, "/v1/api-keys").raw(
            "application/json",
            format!(r#"{{"account_id":"{acct}","name":"x"}}{trailer}"#),
        );
        let a = send(&app, &c).await.unwrap();
        a.assert_error(400, "validation_error");
    }
}

#[tokio::test]
async fn syntax_errors_name_the_body_not_a_question_mark() {
    let app = spawn().await;
    let acct = setup(&app).await;
    for body in [
        "{".to_owned(),
        format!(r#"{{"account_id":"{acct}","name":"x",}}"#),
        r#"{'name': 'x'}"#.to_owned(),
        r#"{"name" "x"}"#.to_owned(),
    ] {
        let c = case("syntax", Method::POST, "/v1/api-keys").raw("application/json", body.clone());
        let a = send(&app, &c).await.unwrap();
        a.assert_error(400, "validation_error");
        assert_eq!(a.body["field"], "body", "{body}: {}", a.body);
    }
}

#[tokio::test]
async fn undecodable_account_ids_are_unknown_ids() {
    let app = spawn().await;
    for (method, path) in [
        (Method::GET, "/v1/accounts/%C0%AF"),
        (Method::GET, "/v1/accounts/%FF%FE"),
        (Method::PATCH, "/v1/accounts/%FF%FE"),
    ] {
        let c = case(path, method, path).json(json!({"name": "x"}));
        let a = send(&app, &c)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        a.assert_error(404, "not_found");
    }
}

#[tokio::test]
async fn updates_rotations_accounts_and_verify_refuse_bad_values() {
    let app = spawn().await;
    let acct = setup(&app).await;
    let (id, _) = app.create_key(&acct, json!({})).await;
    let (revoked, _) = app.create_key(&acct, json!({})).await;
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{revoked}/revoke"),
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let key = format!("/v1/api-keys/{id}");
    let rotate = format!("/v1/api-keys/{id}/rotate");
    let patch = |what: &str, body: Value| case(what, Method::PATCH, key.clone()).json(body);
    let rot = |what: &str, body: Value| case(what, Method::POST, rotate.clone()).json(body);
    let account = format!("/v1/accounts/{acct}");
    let verify = |what: &str, body: Value| case(what, Method::POST, "/v1/verify").json(body);
    run(
        &app,
        vec![
            patch("empty name", json!({"name": ""})).invalid("name"),
            patch("name number", json!({"name": 1})).invalid("name"),
            patch("control char name", json!({"name": "a\u{1b}[31m"})).invalid("name"),
            patch("unknown field", json!({"status": "active"})).expect(400, "validation_error"),
            patch("unknown field environment", json!({"environment": "test"}))
                .expect(400, "validation_error"),
            patch("expires_in zero", json!({"expires_in": 0})).invalid("expires_in"),
            patch("expires_at garbage", json!({"expires_at": "soon"})).invalid("expires_at"),
            patch(
                "expires_at past",
                json!({"expires_at": "1999-12-31T23:59:59Z"}),
            )
            .invalid("expires_at"),
            patch(
                "clear expiry and expires_in",
                json!({"expires_at": null, "expires_in": 60}),
            )
            .invalid("expires_in"),
            patch(
                "rate_limit zero",
                json!({"rate_limit": {"requests": 0, "per_seconds": 1}}),
            )
            .invalid("rate_limit"),
            patch("quota zero", json!({"quota": {"requests": 0}})).invalid("quota"),
            patch("meta not an object", json!({"meta": 3})).invalid("meta"),
            patch("permission a.b.c", json!({"permissions": ["a.b.c"]})).invalid("permissions"),
            patch(
                "scope and permissions",
                json!({"scope": "read", "permissions": []}),
            )
            .invalid("scope"),
            patch("allowlist garbage", json!({"ip_allowlist": ["1.2.3"]})).invalid("ip_allowlist"),
            patch("null body", json!(null)).invalid("body"),
            case("PATCH with text/plain", Method::PATCH, key.clone())
                .raw("text/plain", "name=x")
                .expect(415, "unsupported_media_type"),
            case(
                "PATCH of a revoked key",
                Method::PATCH,
                format!("/v1/api-keys/{revoked}"),
            )
            .json(json!({"name": "new name"}))
            .expect(409, "conflict"),
            case(
                "rotate of a revoked key",
                Method::POST,
                format!("/v1/api-keys/{revoked}/rotate"),
            )
            .expect(409, "conflict"),
            rot("grace negative", json!({"grace_period_seconds": -1}))
                .invalid("grace_period_seconds"),
            rot(
                "grace over 30 days",
                json!({"grace_period_seconds": 30 * 24 * 3600 + 1}),
            )
            .invalid("grace_period_seconds"),
            rot("grace as string", json!({"grace_period_seconds": "60"}))
                .invalid("grace_period_seconds"),
            rot("grace fractional", json!({"grace_period_seconds": 0.5}))
                .invalid("grace_period_seconds"),
            rot("rotate unknown field", json!({"grace": 60})).expect(400, "validation_error"),
            case("rotate with text/plain", Method::POST, rotate.clone())
                .raw("text/plain", "grace_period_seconds=60")
                .expect(415, "unsupported_media_type"),
            case("accounts: unknown plan", Method::POST, "/v1/accounts")
                .json(json!({"name": "x", "plan": "gold"}))
                .invalid("plan"),
            case("accounts: control char name", Method::POST, "/v1/accounts")
                .json(json!({"name": "a\u{0}b"}))
                .invalid("name"),
            case(
                "accounts: patch plan number",
                Method::PATCH,
                account.clone(),
            )
            .json(json!({"plan": 3}))
            .invalid("plan"),
            case(
                "accounts: patch unknown plan",
                Method::PATCH,
                account.clone(),
            )
            .json(json!({"plan": "gold"}))
            .invalid("plan"),
            case(
                "accounts: patch unknown field",
                Method::PATCH,
                account.clone(),
            )
            .json(json!({"max_keys": 1000}))
            .expect(400, "validation_error"),
            verify("key as number", json!({"key": 5})).invalid("key"),
            verify(
                "wildcard permission",
                json!({"key": "x", "permission": "invoices.*"}),
            )
            .invalid("permission"),
            verify(
                "permission a.b.c",
                json!({"key": "x", "permission": "a.b.c"}),
            )
            .invalid("permission"),
            verify("relative path", json!({"key": "x", "path": "invoices"})).invalid("path"),
            verify("method without path", json!({"key": "x", "method": "GET"})).invalid("path"),
            verify(
                "permission and path",
                json!({"key": "x", "permission": "invoices.read", "path": "/x"}),
            )
            .invalid("permission"),
            verify("bad ip", json!({"key": "x", "ip": "999.1.1.1"})).invalid("ip"),
            verify("unknown field", json!({"kee": "x"})).expect(400, "validation_error"),
            case("verify with text/plain", Method::POST, "/v1/verify")
                .raw("text/plain", "key=x")
                .expect(415, "unsupported_media_type"),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Envelope: content type, sizes, routes, methods, ids, query strings.

#[tokio::test]
async fn content_types_and_sizes_are_enforced() {
    let app = spawn().await;
    let acct = setup(&app).await;
    let good = serde_json::to_vec(&with(&acct, json!({}))).unwrap();
    let huge_name =
        serde_json::to_vec(&with(&acct, json!({"name": "x".repeat(70 * 1024)}))).unwrap();
    let huge_meta = serde_json::to_vec(&with(
        &acct,
        json!({"meta": {"pad": "y".repeat(65 * 1024)}}),
    ))
    .unwrap();
    let post = |what: &str| case(what, Method::POST, "/v1/api-keys");
    run(
        &app,
        vec![
            post("text/plain")
                .raw("text/plain", good.clone())
                .expect(415, "unsupported_media_type"),
            post("no content type")
                .raw("", good.clone())
                .expect(415, "unsupported_media_type"),
            post("form encoded")
                .raw("application/x-www-form-urlencoded", "name=x")
                .expect(415, "unsupported_media_type"),
            post("multipart")
                .raw("multipart/form-data; boundary=x", "--x--")
                .expect(415, "unsupported_media_type"),
            post("application/jsonx")
                .raw("application/jsonx", good.clone())
                .expect(415, "unsupported_media_type"),
            post("text/json")
                .raw("text/json", good.clone())
                .expect(415, "unsupported_media_type"),
            post("no body, no content type").expect(415, "unsupported_media_type"),
            post("body over 64 KiB")
                .raw("application/json", huge_name.clone())
                .expect(413, "payload_too_large"),
            post("meta over 64 KiB")
                .raw("application/json", huge_meta.clone())
                .expect(413, "payload_too_large"),
            post("64 KiB of spaces then JSON")
                .raw(
                    "application/json",
                    [vec![b' '; 65 * 1024], good.clone()].concat(),
                )
                .expect(413, "payload_too_large"),
            case("accounts: body over 64 KiB", Method::POST, "/v1/accounts")
                .raw(
                    "application/json",
                    serde_json::to_vec(&json!({"name": "z".repeat(65 * 1024)})).unwrap(),
                )
                .expect(413, "payload_too_large"),
            case("verify: body over 64 KiB", Method::POST, "/v1/verify")
                .raw(
                    "application/json",
                    serde_json::to_vec(&json!({"key": "k".repeat(65 * 1024)})).unwrap(),
                )
                .expect(413, "payload_too_large"),
            post("header of 20 KiB")
                .header("x-filler", hv(&"f".repeat(20 * 1024)))
                .json(with(&acct, json!({})))
                .expect(431, "headers_too_large"),
            case("many headers totalling 20 KiB", Method::GET, "/v1/api-keys")
                .header("x-a", hv(&"a".repeat(7 * 1024)))
                .header("x-b", hv(&"b".repeat(7 * 1024)))
                .header("x-c", hv(&"c".repeat(7 * 1024)))
                .expect(431, "headers_too_large"),
            case("20 KiB Authorization", Method::GET, "/v1/api-keys")
                .auth(hv(&format!("Bearer {}", "t".repeat(20 * 1024))))
                .expect(431, "headers_too_large"),
        ],
    )
    .await;
    // +json media types and parameters are fine.
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ] {
        let c = case(ct, Method::POST, "/v1/api-keys").raw(ct, good.clone());
        let a = send(&app, &c).await.unwrap();
        assert_eq!(a.status.as_u16(), 201, "{ct}: {}", a.body);
    }
}

#[tokio::test]
async fn unknown_routes_methods_and_ids_answer_json() {
    let app = spawn().await;
    let acct = setup(&app).await;
    let (id, _) = app.create_key(&acct, json!({})).await;
    let get = |path: &str| case(format!("GET {path}"), Method::GET, path);
    run(
        &app,
        vec![
            get("/").expect(404, "not_found"),
            get("/v1").expect(404, "not_found"),
            get("/v1/nope").expect(404, "not_found"),
            get("/v2/api-keys").expect(404, "not_found"),
            get("/V1/API-KEYS").expect(404, "not_found"),
            get("/v1/api-keys/").expect(404, "not_found"),
            case("revoke an empty id", Method::POST, "/v1/api-keys//revoke")
                .expect(404, "not_found"),
            get("/v1/%FF%FE").expect(404, "not_found"),
            get("/dashboard/../../etc/passwd").expect(404, "not_found"),
            get(&format!("/v1/api-keys/{id}/nope")).expect(404, "not_found"),
            get(&format!("/v1/api-keys/{UNKNOWN_KEY_ID}")).expect(404, "not_found"),
            get("/v1/api-keys/%FF%FE").expect(404, "not_found"),
            get("/v1/api-keys/..%2F..").expect(404, "not_found"),
            get("/v1/api-keys/..%2F..%2Fv1%2Faccounts").expect(404, "not_found"),
            get("/v1/api-keys/%00").expect(404, "not_found"),
            get("/v1/api-keys/%").expect(404, "not_found"),
            get("/v1/api-keys/key_%E2%80%AE").expect(404, "not_found"),
            get(&format!("/v1/api-keys/{}", "k".repeat(4000))).expect(404, "not_found"),
            get(&format!("/v1/api-keys/{}", id.to_uppercase())).expect(404, "not_found"),
            get("/v1/api-keys/%FF%FE/usage").expect(404, "not_found"),
            get("/v1/accounts/acct_000000000000000000000000").expect(404, "not_found"),
            case(
                "PATCH unknown key",
                Method::PATCH,
                format!("/v1/api-keys/{UNKNOWN_KEY_ID}"),
            )
            .json(json!({"name": "x"}))
            .expect(404, "not_found"),
            case(
                "revoke unknown key",
                Method::POST,
                format!("/v1/api-keys/{UNKNOWN_KEY_ID}/revoke"),
            )
            .expect(404, "not_found"),
            case(
                "revoke garbage id",
                Method::POST,
                "/v1/api-keys/%FF%FE/revoke",
            )
            .expect(404, "not_found"),
            case(
                "rotate unknown key",
                Method::POST,
                format!("/v1/api-keys/{UNKNOWN_KEY_ID}/rotate"),
            )
            .expect(404, "not_found"),
            case(
                "PATCH unknown account",
                Method::PATCH,
                "/v1/accounts/acct_nope",
            )
            .json(json!({"name": "x"}))
            .expect(404, "not_found"),
            case("DELETE /v1/api-keys", Method::DELETE, "/v1/api-keys")
                .expect(405, "method_not_allowed"),
            case("PUT /v1/api-keys", Method::PUT, "/v1/api-keys").expect(405, "method_not_allowed"),
            case("DELETE a key", Method::DELETE, format!("/v1/api-keys/{id}"))
                .expect(405, "method_not_allowed"),
            case("PUT a key", Method::PUT, format!("/v1/api-keys/{id}"))
                .json(json!({"name": "x"}))
                .expect(405, "method_not_allowed"),
            case(
                "GET revoke",
                Method::GET,
                format!("/v1/api-keys/{id}/revoke"),
            )
            .expect(405, "method_not_allowed"),
            case(
                "DELETE rotate",
                Method::DELETE,
                format!("/v1/api-keys/{id}/rotate"),
            )
            .expect(405, "method_not_allowed"),
            case(
                "POST usage",
                Method::POST,
                format!("/v1/api-keys/{id}/usage"),
            )
            .expect(405, "method_not_allowed"),
            case(
                "DELETE account",
                Method::DELETE,
                format!("/v1/accounts/{acct}"),
            )
            .expect(405, "method_not_allowed"),
            case("POST api-key-info", Method::POST, "/v1/api-key-info")
                .expect(405, "method_not_allowed"),
            case("GET verify", Method::GET, "/v1/verify").expect(405, "method_not_allowed"),
            case("POST audit-log", Method::POST, "/v1/audit-log").expect(405, "method_not_allowed"),
            case("POST healthz", Method::POST, "/healthz").expect(405, "method_not_allowed"),
            case(
                "custom method",
                Method::from_bytes(b"BREW").unwrap(),
                "/v1/api-keys",
            )
            .expect(405, "method_not_allowed"),
        ],
    )
    .await;
    // The real key is untouched by all that.
    let a = app
        .admin(Method::GET, &format!("/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(a.status.as_u16(), 200);
    assert_eq!(a.body["status"], "active");
}

#[tokio::test]
async fn query_strings_are_checked() {
    let app = spawn().await;
    let acct = setup(&app).await;
    let live = unknown_key(Environment::Live);
    let test = unknown_key(Environment::Test);
    let get = |path: String| case(path.clone(), Method::GET, path);
    run(
        &app,
        vec![
            get("/v1/api-keys?api_key=abc".into()).expect(400, "key_in_url"),
            get(format!("/v1/api-key-info?apikey={live}")).expect(400, "key_in_url"),
            get("/v1/auth?access_token=abc".into())
                .no_auth()
                .expect(400, "key_in_url"),
            get(format!("/v1/accounts?key={live}")).expect(400, "key_in_url"),
            get(format!("/v1/audit-log?limit=5&key={test}")).expect(400, "key_in_url"),
            get(format!("/v1/api-keys?page=2&token={live}")).expect(400, "key_in_url"),
            get("/v1/api-keys?ApiKey=abc".into()).expect(400, "key_in_url"),
            get("/v1/api-keys?api%5Fkey=abc".into()).expect(400, "key_in_url"),
            get(format!("/v1/api-keys?q=%6Bg_live_{}", &live[8..])).expect(400, "key_in_url"),
            get("/healthz?api_key=abc".into())
                .no_auth()
                .expect(400, "key_in_url"),
            get("/no/such/route?access_token=abc".into())
                .no_auth()
                .expect(400, "key_in_url"),
            case(
                "verify with key in query",
                Method::POST,
                "/v1/verify?api_key=abc",
            )
            .json(json!({"key": "x"}))
            .expect(400, "key_in_url"),
            case(
                "create with key in query",
                Method::POST,
                format!("/v1/api-keys?key={live}"),
            )
            .json(with(&acct, json!({})))
            .expect(400, "key_in_url"),
            case("forward-auth, key in original URI", Method::GET, "/v1/auth")
                .no_auth()
                .header("x-original-method", hv("GET"))
                .header("x-original-uri", hv("/api/v1/invoices?api_key=abc"))
                .expect(400, "key_in_url"),
            case(
                "forward-auth, live key in forwarded URI",
                Method::GET,
                "/v1/auth",
            )
            .no_auth()
            .header("x-forwarded-uri", hv(&format!("/api/v1/invoices?k={live}")))
            .expect(400, "key_in_url"),
            get("/v1/api-keys?limit=0".into()).invalid("limit"),
            get("/v1/accounts?limit=1001".into()).invalid("limit"),
            get("/v1/api-keys?starting_after=key_nope".into()).invalid("starting_after"),
            get("/v1/api-keys?acount_id=x".into()).invalid("acount_id"),
            get("/v1/api-keys?status=deleted".into()).invalid("status"),
            get("/v1/api-keys?status=ACTIVE".into()).invalid("status"),
            get("/v1/api-keys?status=%FF".into()).invalid("status"),
            get("/v1/audit-log?limit=abc".into()).invalid("limit"),
            get("/v1/audit-log?limit=-1".into()).invalid("limit"),
            get("/v1/audit-log?limit=99999999999".into()).invalid("limit"),
            get("/v1/audit-log?before=yesterday".into()).invalid("before"),
            get("/v1/audit-log?sort=asc".into()).invalid("sort"),
        ],
    )
    .await;
}

#[tokio::test]
async fn garbage_credentials_are_refused() {
    let app = spawn().await;
    let acct = setup(&app).await;
    let (_, secret) = app
        .create_key(&acct, json!({"permissions": ["api_keys.*"]}))
        .await;
    let unknown = unknown_key(Environment::Live);
    let bad_checksum = format!("kg_live_{}", "0".repeat(64));
    let get = |what: &str| case(what, Method::GET, "/v1/api-keys");
    run(
        &app,
        vec![
            get("no credentials")
                .no_auth()
                .expect(401, "missing_credentials"),
            get("Basic")
                .auth(hv("Basic dXNlcjpwYXNz"))
                .expect(401, "malformed_key"),
            get("Bearer without token")
                .auth(hv("Bearer"))
                .expect(401, "malformed_key"),
            get("Token scheme")
                .auth(hv("Token abc"))
                .expect(401, "malformed_key"),
            get("Digest scheme")
                .auth(hv(r#"Digest username="a", realm="b""#))
                .expect(401, "malformed_key"),
            get("random bearer")
                .auth(hv("Bearer not-the-admin-token"))
                .expect(401, "unauthorized"),
            get("admin token with one char changed")
                .auth(hv(&format!(
                    "Bearer {}x",
                    &app.admin_token[..app.admin_token.len() - 1]
                )))
                .expect(401, "unauthorized"),
            get("admin token with a suffix")
                .auth(hv(&format!("Bearer {}0", app.admin_token)))
                .expect(401, "unauthorized"),
            get("key with a bad checksum")
                .auth(hv(&format!("Bearer {bad_checksum}")))
                .expect(401, "unauthorized"),
            get("well-formed unknown key")
                .auth(hv(&format!("Bearer {unknown}")))
                .expect(401, "invalid_key"),
            get("non-ASCII bearer")
                .auth(HeaderValue::from_bytes(b"Bearer \xff\xfe\x80kg").unwrap())
                .expect(401, "malformed_key"),
            get("opaque Authorization")
                .auth(HeaderValue::from_bytes(b"\xc3\x28\xa0\xa1").unwrap())
                .expect(401, "malformed_key"),
            get("non-ASCII X-API-Key")
                .no_auth()
                .header(
                    "x-api-key",
                    HeaderValue::from_bytes(b"kg_live_\xe2\x82").unwrap(),
                )
                .expect(401, "malformed_key"),
            get("empty X-API-Key")
                .no_auth()
                .header("x-api-key", hv(""))
                .expect(401, "malformed_key"),
            get("admin token and a key")
                .header("x-api-key", hv(&secret))
                .expect(400, "ambiguous_credentials"),
            get("two different keys in X-API-Key and APIKEY")
                .no_auth()
                .header("x-api-key", hv(&secret))
                .header("apikey", hv(&unknown))
                .expect(400, "ambiguous_credentials"),
            get("two different Authorization headers")
                .auth(hv(&format!("Bearer {secret}")))
                .header("authorization", hv(&format!("Bearer {unknown}")))
                .expect(400, "ambiguous_credentials"),
            case("forward-auth with two keys", Method::GET, "/v1/auth")
                .auth(hv(&format!("Bearer {secret}")))
                .header("x-api-key", hv(&unknown))
                .expect(400, "ambiguous_credentials"),
            case("verify without a token", Method::POST, "/v1/verify")
                .no_auth()
                .json(json!({"key": "x"}))
                .expect(401, "missing_credentials"),
            case(
                "verify with an API key as the token",
                Method::POST,
                "/v1/verify",
            )
            .auth(hv(&format!("Bearer {secret}")))
            .json(json!({"key": "x"}))
            .expect(401, "unauthorized"),
            case(
                "unauthenticated bad JSON is 401 before 400",
                Method::POST,
                "/v1/api-keys",
            )
            .no_auth()
            .raw("application/json", "{")
            .expect(401, "missing_credentials"),
            case("forward-auth without a key", Method::GET, "/v1/auth")
                .no_auth()
                .header("x-original-uri", hv("/api/v1/invoices"))
                .expect(401, "missing_credentials"),
            case("forward-auth with garbage", Method::GET, "/v1/auth")
                .auth(hv("Bearer garbage"))
                .header("x-original-uri", hv("/api/v1/invoices"))
                .expect(401, "malformed_key"),
        ],
    )
    .await;
    // The same key sent twice the same way is not ambiguous.
    let a = answer_of(
        app.client
            .get(app.url("/v1/api-keys"))
            .bearer_auth(&secret)
            .header("x-api-key", &secret),
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.body);
}

#[tokio::test]
async fn forward_auth_with_odd_original_requests_is_refused_not_crashed() {
    let app = spawn().await;
    let acct = setup(&app).await;
    let (_, secret) = app
        .create_key(&acct, json!({"permissions": ["invoices.read"]}))
        .await;
    let ok = app
        .forward_auth(Some(&secret), "GET", "/api/v1/invoices")
        .await;
    assert_eq!(ok.status.as_u16(), 204, "{}", ok.body);
    let fa = |what: &str, method: &str, uri: &str| {
        case(what, Method::GET, "/v1/auth")
            .auth(hv(&format!("Bearer {secret}")))
            .header("x-original-method", hv(method))
            .header("x-original-uri", hv(uri))
            .expect(403, "insufficient_permissions")
    };
    run(
        &app,
        vec![
            fa("empty URI", "GET", ""),
            fa("not a path", "GET", "not-a-path"),
            fa("root", "GET", "/"),
            fa("double slash", "GET", "//"),
            fa("undecodable", "GET", "/api/v1/%FF"),
            fa("lone percent", "GET", "/api/v1/%"),
            fa("dot-dot above root", "GET", "/api/v1/../../../.."),
            fa(
                "encoded traversal to webhooks",
                "GET",
                "/api/v1/invoices%2F..%2F..%2Fwebhooks",
            ),
            fa(
                "backslash traversal",
                "GET",
                "/api/v1/invoices\\..\\webhooks",
            ),
            fa("unknown method", "BREW", "/api/v1/invoices"),
            fa("write method on a read key", "DELETE", "/api/v1/invoices/1"),
        ],
    )
    .await;
}

async fn answer_of(req: reqwest::RequestBuilder) -> Answer {
    crate::helpers::answer(req.send().await.unwrap()).await
}

// ---------------------------------------------------------------------------------------
// Below HTTP semantics: raw bytes on a TCP connection.

/// Writes `request` on a fresh connection and reads until the server closes or goes quiet.
/// `None` when the server closed without answering.
async fn raw_exchange(app: &TestApp, request: &[u8]) -> Option<(u16, String, Vec<u8>)> {
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut written = 0;
    while written < request.len() {
        stream.writable().await.unwrap();
        match stream.try_write(&request[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let ready = tokio::time::timeout(Duration::from_secs(3), stream.readable()).await;
        if ready.is_err() {
            break;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        if complete(&got) {
            break;
        }
    }
    if got.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    Some((status, head.to_ascii_lowercase(), body.as_bytes().to_vec()))
}

/// Has a whole response with a Content-Length arrived?
fn complete(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .is_some_and(|len| body.len() >= len)
}

/// A raw request must get a 4xx (JSON when our router answered it) or, where hyper could
/// not parse the request at all, a close; and the server must live on.
async fn assert_raw_refused(app: &TestApp, request: &[u8], close_allowed: bool) -> Option<u16> {
    let got = raw_exchange(app, request).await;
    match &got {
        None => assert!(
            close_allowed,
            "{:?}: connection closed without an answer",
            String::from_utf8_lossy(request)
        ),
        Some((status, head, body)) => {
            assert!(
                (400..500).contains(status),
                "{:?}: answered {status}",
                String::from_utf8_lossy(request)
            );
            if head.contains("content-type: application/json") {
                let v: Value = serde_json::from_slice(body).expect("JSON error body");
                assert!(v["code"].is_string(), "{v}");
                assert!(v["error"].is_string(), "{v}");
            } else {
                // Only hyper's own answer to an unparseable request may be bare.
                assert!(
                    close_allowed,
                    "{:?}: non-JSON {status} answer",
                    String::from_utf8_lossy(request)
                );
            }
        }
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "the server survives");
    got.map(|g| g.0)
}

#[tokio::test]
async fn raw_garbage_request_lines_get_a_4xx_or_a_close() {
    let app = spawn().await;
    // hyper answers a request it cannot parse with a bare 400 (or may close).
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"POST /v1/api-keys HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/api-keys HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"GET /v1/api-keys/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/\xc3\x28 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let status = assert_raw_refused(&app, request, true).await;
        assert!(matches!(status, None | Some(400)), "{status:?}");
    }
}

#[tokio::test]
async fn raw_requests_our_router_sees_answer_json() {
    let app = spawn().await;
    let auth = format!("Authorization: Bearer {}\r\n", app.admin_token);
    let cases: Vec<(String, u16)> = vec![
        // A path that percent-decodes to bytes that are not UTF-8.
        (
            format!("GET /v1/api-keys/%FF%FE%FD HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
            404,
        ),
        ("GET /v1/%ff%c0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 404),
        // Absolute-form request target.
        (
            "GET http://example.com/v1/nope HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".into(),
            404,
        ),
        // HTTP/1.0 without Host.
        ("GET /v1/api-keys HTTP/1.0\r\n\r\n".into(), 401),
        // A body shorter than announced... is announced complete here; JSON of it is bad.
        (
            format!(
                "POST /v1/accounts HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{{\"n"
            ),
            400,
        ),
    ];
    for (request, expected) in cases {
        let status = assert_raw_refused(&app, request.as_bytes(), false).await;
        assert_eq!(status, Some(expected), "{request:?}");
    }
}
