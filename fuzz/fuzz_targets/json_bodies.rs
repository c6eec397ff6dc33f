//! The management API's request bodies (and queries, and forward-auth's original URI),
//! through the real router in process (`keygate_server::router` + `tower::ServiceExt::
//! oneshot`) over a real SQLite file.
//!
//! Input: byte 0 picks the endpoint, byte 1 the caller and the content type, the rest is
//! the body (or the query, or the original URI). Placeholders in it are replaced before
//! sending: `@A` → account A's id, `@B` → account B's id, `@K` → a key of A, `@L` → a key
//! of B, `@S` → a live key of A (as text).
//!
//! Invariants:
//! - no input makes the server answer 5xx or panic (a panic aborts: libFuzzer reports it);
//! - every error is JSON `{error, code, request_id}`;
//! - no answer carries the admin token or the verify token;
//! - a self-service key of account A never sees account B's id or B's key id in an answer,
//!   whatever it sends (tenant isolation under arbitrary input).
#![no_main]

use std::cell::RefCell;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use keygate_server::AppState;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tower::ServiceExt;

const VERIFY_TOKEN: &str = "fuzz-verify-token-0123456789abcdef";
/// A fresh world every so many inputs, so state (key counts, revocations) cannot pile up.
const RESET_EVERY: u32 = 5_000;

struct World {
    state: AppState,
    admin: String,
    self_service: String,
    a: String,
    b: String,
    a_key: String,
    a_secret: String,
    b_key: String,
    dir: PathBuf,
    runs: u32,
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fn scratch_dir() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let n: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let dir = base.join(format!("keygate-fuzz-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn call(
    state: &AppState,
    method: Method,
    uri: &str,
    auth: Option<&str>,
    content_type: Option<&str>,
    headers: &[(&str, &[u8])],
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = auth {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Body::from(body)).unwrap();
    let response = keygate_server::router(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

async fn post_json(state: &AppState, uri: &str, token: &str, v: Value) -> Value {
    let (status, body) = call(
        state,
        Method::POST,
        uri,
        Some(token),
        Some("application/json"),
        &[],
        serde_json::to_vec(&v).unwrap(),
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(status == 201 || status == 200, "{uri}: {status} {body}");
    body
}

async fn build_world() -> World {
    let dir = scratch_dir();
    let url = format!("sqlite://{}/fuzz.db", dir.display());
    let (state, admin) = keygate_server::fuzzing::sqlite_state(&url, VERIFY_TOKEN)
        .await
        .unwrap();
    let a = post_json(&state, "/v1/accounts", &admin, json!({"name": "A", "plan": "pro"})).await;
    let b = post_json(&state, "/v1/accounts", &admin, json!({"name": "B", "plan": "pro"})).await;
    let a = a["id"].as_str().unwrap().to_owned();
    let b = b["id"].as_str().unwrap().to_owned();
    let ss = post_json(
        &state,
        "/v1/api-keys",
        &admin,
        json!({"account_id": a, "name": "self-service",
               "permissions": ["api_keys.*", "accounts.read", "invoices.*"]}),
    )
    .await;
    let ak = post_json(
        &state,
        "/v1/api-keys",
        &admin,
        json!({"account_id": a, "name": "a key", "scope": "read"}),
    )
    .await;
    let bk = post_json(
        &state,
        "/v1/api-keys",
        &admin,
        json!({"account_id": b, "name": "b key", "scope": "write"}),
    )
    .await;
    World {
        state,
        admin,
        self_service: ss["key"].as_str().unwrap().to_owned(),
        a,
        b,
        a_key: ak["id"].as_str().unwrap().to_owned(),
        a_secret: ak["key"].as_str().unwrap().to_owned(),
        b_key: bk["id"].as_str().unwrap().to_owned(),
        dir,
        runs: 0,
    }
}

fn substitute(raw: &[u8], w: &World) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'@' && i + 1 < raw.len() {
            let with = match raw[i + 1] {
                b'A' => Some(w.a.as_str()),
                b'B' => Some(w.b.as_str()),
                b'K' => Some(w.a_key.as_str()),
                b'L' => Some(w.b_key.as_str()),
                b'S' => Some(w.a_secret.as_str()),
                _ => None,
            };
            if let Some(with) = with {
                out.extend_from_slice(with.as_bytes());
                i += 2;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// Query text safe to put in a URI (what `http::Uri` refuses is escaped).
fn as_query(bytes: &[u8]) -> String {
    let mut q = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    q
}

async fn one(w: &World, data: &[u8]) {
    let (endpoint, rest) = (data[0], &data[1..]);
    let (selector, raw) = rest.split_first().unwrap_or((&0, &[]));
    let body = substitute(raw, w);
    let caller = match selector & 3 {
        0 => Some(w.admin.as_str()),
        1 => Some(w.self_service.as_str()),
        2 => Some(VERIFY_TOKEN),
        _ => None,
    };
    let content_type = match (selector >> 2) & 3 {
        0 | 1 => Some("application/json"),
        2 => Some("application/merge-patch+json; charset=utf-8"),
        _ => None,
    };
    let (a, k) = (w.a.as_str(), w.a_key.as_str());
    let b_key = w.b_key.as_str();
    let target = if selector & 0x10 != 0 { b_key } else { k };
    let (method, uri, headers): (Method, String, Vec<(&str, &[u8])>) = match endpoint % 10 {
        0 => (Method::POST, "/v1/accounts".into(), vec![]),
        1 => (Method::PATCH, format!("/v1/accounts/{a}"), vec![]),
        2 => (Method::POST, "/v1/api-keys".into(), vec![]),
        3 => (Method::PATCH, format!("/v1/api-keys/{target}"), vec![]),
        4 => (Method::POST, format!("/v1/api-keys/{target}/rotate"), vec![]),
        5 => (Method::POST, "/v1/verify".into(), vec![]),
        6 => (Method::GET, format!("/v1/api-keys?{}", as_query(&body)), vec![]),
        7 => (Method::GET, format!("/v1/audit-log?{}", as_query(&body)), vec![]),
        8 => (
            Method::GET,
            "/v1/auth".into(),
            vec![("x-original-uri", body.as_slice()), ("x-original-method", b"POST".as_slice())],
        ),
        _ => (Method::GET, format!("/v1/api-keys/{target}/usage?{}", as_query(&body)), vec![]),
    };
    let headers: Vec<(&str, &[u8])> = headers
        .into_iter()
        .filter(|(_, v)| axum::http::HeaderValue::from_bytes(v).is_ok())
        .collect();
    if axum::http::Uri::try_from(uri.as_str()).is_err() {
        return;
    }
    let send_body = if matches!(endpoint % 10, 6..=9) { Vec::new() } else { body.clone() };
    let (status, answer) = call(
        &w.state,
        method.clone(),
        &uri,
        if endpoint % 10 == 8 { Some(w.a_secret.as_str()) } else { caller },
        content_type,
        &headers,
        send_body,
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        status < 500,
        "{method} {uri} answered {status}: {text}\nbody: {:?}",
        String::from_utf8_lossy(&body)
    );
    assert!(!text.contains(&w.admin), "the admin token in an answer: {text}");
    assert!(!text.contains(VERIFY_TOKEN), "the verify token in an answer: {text}");
    if status >= 400 {
        let v: Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|_| panic!("{method} {uri}: {status} not JSON: {text}"));
        assert!(v["code"].is_string() && v["error"].is_string(), "{text}");
        assert!(v["request_id"].as_str().is_some_and(|r| r.starts_with("req_")), "{text}");
    }
    // An answer may echo what the caller sent (a validation message naming a bad value):
    // only what the caller did not send counts as a leak.
    let sent = format!("{uri} {}", String::from_utf8_lossy(&body));
    if caller == Some(w.self_service.as_str())
        && endpoint % 10 != 8
        && !sent.contains(&w.b)
        && !sent.contains(b_key)
    {
        assert!(!text.contains(&w.b), "account B's id leaked to A: {method} {uri}: {text}");
        assert!(!text.contains(b_key), "B's key id leaked to A: {method} {uri}: {text}");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    RT.with(|rt| {
        WORLD.with(|cell| {
            let mut slot = cell.borrow_mut();
            let stale = slot.as_ref().is_none_or(|w| w.runs >= RESET_EVERY);
            if stale {
                if let Some(old) = slot.take() {
                    let _ = std::fs::remove_dir_all(&old.dir);
                }
                *slot = Some(rt.block_on(build_world()));
            }
            let w = slot.as_mut().unwrap();
            w.runs += 1;
            rt.block_on(one(w, data));
        })
    });
});
