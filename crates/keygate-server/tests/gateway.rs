//! The gateway in front of the example upstream (`examples/invoices-api`): every test
//! starts keygate's admin server (helpers, over a temp SQLite or PostgreSQL), a gateway on
//! the same engine, and one or two upstreams, all on random loopback ports.

#[path = "api/helpers.rs"]
mod helpers;
#[path = "support/raw.rs"]
mod raw;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use futures::StreamExt;
use helpers::{answer, spawn, Answer, TestApp};
use keygate_server::{serve_gateway, AppState, EdgeLimits, GatewayConfig, HttpConfig};
use raw::{exchange, json_code, read_all, slow_header_sender};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `router` on a random loopback port.
async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn upstream(name: &str) -> SocketAddr {
    serve(invoices_api::app_named(name)).await
}

/// A gateway on `app`'s engine; `http` changes the HTTP configuration (trusted proxies,
/// connection limits).
async fn gateway_with(
    app: &TestApp,
    upstream: SocketAddr,
    sandbox: Option<SocketAddr>,
    timeout: Duration,
    key_info_path: &str,
    http: Option<fn(&mut HttpConfig)>,
) -> String {
    let mut state: AppState = app.state.clone();
    if let Some(change) = http {
        let mut config = (*app.state.http).clone();
        change(&mut config);
        state.http = Arc::new(config);
    }
    let config = GatewayConfig::new(
        &format!("http://{upstream}"),
        sandbox.map(|s| format!("http://{s}")).as_deref(),
        timeout,
        key_info_path,
        None,
    )
    .unwrap();
    start_gateway(state, config).await
}

/// Serves a gateway with `config` on `state`'s engine, on a random loopback port.
async fn start_gateway(state: AppState, config: GatewayConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_gateway(
        listener,
        state,
        config,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// Client timeouts short enough to watch (1 s for a first request or a head, 2 s for a
/// client that stops reading). The idle timeout stays long so that it cannot be what cuts
/// a stalled download; `request_timeout` is set to show that the gateway does without one.
fn short_edges(http: &mut HttpConfig) {
    http.edge = EdgeLimits {
        first_request_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Some(Duration::from_secs(1)),
        idle_timeout: Duration::from_secs(60),
        send_timeout: SEND_TIMEOUT,
        ..EdgeLimits::default()
    };
}

const SEND_TIMEOUT: Duration = Duration::from_secs(2);

fn socket_addr(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

async fn gateway(app: &TestApp, upstream: SocketAddr) -> String {
    gateway_with(
        app,
        upstream,
        None,
        Duration::from_secs(10),
        "/v1/api-key-info",
        None,
    )
    .await
}

/// Sends `method url` with `key` as a bearer token.
async fn call(method: Method, url: &str, key: Option<&str>, body: Option<Value>) -> Answer {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    answer(req.send().await.unwrap()).await
}

/// The headers the echo endpoint saw, as (name, value) pairs.
fn echoed(a: &Answer) -> Vec<(String, String)> {
    a.body["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("not an echo: {}", a.body))
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn echoed_one(a: &Answer, name: &str) -> Option<String> {
    let all: Vec<String> = echoed(a)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect();
    assert!(all.len() <= 1, "{name} forwarded {} times", all.len());
    all.into_iter().next()
}

/// One HTTP/1.1 exchange over a raw socket (for headers a client library will not send),
/// with `Connection: close` semantics: the answer is read to the end of the stream.
async fn raw(addr: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    let addr = addr.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut bytes))
        .await
        .expect("answer in time")
        .unwrap();
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&bytes[..split]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let mut body = bytes[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[tokio::test]
async fn credentials_are_stripped_and_identity_headers_cannot_be_spoofed() {
    let app = spawn().await;
    let up = upstream("live").await;
    let gw = gateway(&app, up).await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (key_id, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let host = gw.trim_start_matches("http://").to_owned();

    let a = answer(
        reqwest::Client::new()
            .post(format!("{gw}/api/v1/echo/anything?page=2"))
            .header("Authorization", format!("Bearer {key}"))
            .header("X-API-Key", &key)
            .header("APIKEY", &key)
            .header("X-Keygate-Key-Id", "key_spoofed")
            .header("X-Keygate-Account-Id", "acct_spoofed")
            .header("X-Keygate-Environment", "live")
            .header("X-Keygate-Permissions", "*")
            .header("X-Keygate-Admin", "yes")
            .header("X-Forwarded-For", "198.51.100.23")
            .header("X-Real-IP", "198.51.100.23")
            .header("Accept", "application/json")
            .body("hello")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.header("x-upstream"), Some("live"));
    assert_eq!(a.body["method"], "POST");
    assert_eq!(a.body["path"], "/api/v1/echo/anything");
    assert_eq!(a.body["query"], "page=2");
    assert_eq!(a.body["body_bytes"], 5);

    let headers = echoed(&a);
    for (name, value) in &headers {
        assert!(!value.contains(&key), "{name} carries the key upstream");
    }
    for gone in ["authorization", "x-api-key", "apikey", "x-keygate-admin"] {
        assert!(echoed_one(&a, gone).is_none(), "{gone} was forwarded");
    }
    assert_eq!(
        echoed_one(&a, "x-keygate-key-id").as_deref(),
        Some(key_id.as_str())
    );
    assert_eq!(
        echoed_one(&a, "x-keygate-account-id").as_deref(),
        Some(acct.as_str())
    );
    assert_eq!(
        echoed_one(&a, "x-keygate-environment").as_deref(),
        Some("live")
    );
    assert_eq!(
        echoed_one(&a, "x-keygate-permissions").as_deref(),
        Some("*")
    );
    // The client's X-Forwarded-For is kept, the peer appended; X-Real-IP is the address
    // keygate judged (the peer: no trusted proxies here).
    assert_eq!(
        echoed_one(&a, "x-forwarded-for").as_deref(),
        Some("198.51.100.23, 127.0.0.1")
    );
    assert_eq!(echoed_one(&a, "x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(echoed_one(&a, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        echoed_one(&a, "x-forwarded-host").as_deref(),
        Some(host.as_str())
    );
    assert_eq!(echoed_one(&a, "host"), Some(up.to_string()));
    assert_eq!(echoed_one(&a, "via").as_deref(), Some("1.1 keygate"));
    assert_eq!(
        echoed_one(&a, "accept").as_deref(),
        Some("application/json")
    );
    assert!(a
        .header("x-request-id")
        .is_some_and(|r| r.starts_with("req_")));
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let app = spawn().await;
    // An upstream that answers with hop-by-hop headers of its own.
    let hop_router = invoices_api::app_named("live").route(
        "/api/v1/hops",
        axum::routing::get(|| async {
            (
                [
                    ("connection", "x-upstream-hop"),
                    ("x-upstream-hop", "1"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-authenticate", "Basic"),
                    ("upgrade", "h2c"),
                    ("x-upstream-end", "1"),
                ],
                "hops",
            )
                .into_response()
        }),
    );
    let up = serve(hop_router).await;
    let gw = gateway(&app, up).await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let host = gw.trim_start_matches("http://");

    let request = format!(
        "POST /api/v1/echo HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Connection: close, X-Hop-Secret\r\nX-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
         TE: trailers\r\nTrailer: X-Checksum\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\
         Upgrade: websocket\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\nX-End-To-End: kept\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
    let (status, head, body) = raw(&gw, request.as_bytes()).await;
    assert_eq!(status, 200, "{head}\n{}", String::from_utf8_lossy(&body));
    let echo: Value = serde_json::from_slice(&body).unwrap();
    let a = Answer {
        status: StatusCode::OK,
        headers: Default::default(),
        body: echo,
    };
    for gone in [
        "connection",
        "x-hop-secret",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(echoed_one(&a, gone).is_none(), "{gone} was forwarded");
    }
    // The chunked body arrived whole; it was re-framed by the gateway, not passed through.
    assert_eq!(a.body["body_bytes"], 11);
    // The Content-Length sent beside Transfer-Encoding is not passed on.
    assert_ne!(echoed_one(&a, "content-length").as_deref(), Some("3"));
    assert_ne!(
        echoed_one(&a, "transfer-encoding").as_deref(),
        Some("chunked, chunked")
    );
    assert_eq!(echoed_one(&a, "x-end-to-end").as_deref(), Some("kept"));

    let r = reqwest::Client::new()
        .get(format!("{gw}/api/v1/hops"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for gone in [
        "x-upstream-hop",
        "keep-alive",
        "proxy-authenticate",
        "upgrade",
    ] {
        assert!(r.headers().get(gone).is_none(), "{gone} came back");
    }
    assert_eq!(r.headers()["x-upstream-end"], "1");
    assert_eq!(r.text().await.unwrap(), "hops");
}

#[tokio::test]
async fn test_keys_go_to_the_sandbox_and_live_keys_never() {
    let app = spawn().await;
    let live = upstream("live").await;
    let sandbox = upstream("sandbox").await;
    let gw = gateway_with(
        &app,
        live,
        Some(sandbox),
        Duration::from_secs(10),
        "/v1/api-key-info",
        None,
    )
    .await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, live_key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let (_, test_key) = app
        .create_key(&acct, json!({"scope": "all", "environment": "test"}))
        .await;
    assert!(test_key.starts_with("kg_test_"));
    for _ in 0..5 {
        let a = call(
            Method::GET,
            &format!("{gw}/api/v1/invoices"),
            Some(&live_key),
            None,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.header("x-upstream"), Some("live"));
        let a = call(
            Method::GET,
            &format!("{gw}/api/v1/echo"),
            Some(&test_key),
            None,
        )
        .await;
        assert_eq!(a.header("x-upstream"), Some("sandbox"));
        assert_eq!(
            echoed_one(&a, "x-keygate-environment").as_deref(),
            Some("test")
        );
        assert_eq!(echoed_one(&a, "host"), Some(sandbox.to_string()));
    }
    // A sandbox write does not touch live data.
    let created = call(
        Method::POST,
        &format!("{gw}/api/v1/invoices"),
        Some(&test_key),
        Some(json!({"number": "TEST-1"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let live_list = call(
        Method::GET,
        &format!("{gw}/api/v1/invoices"),
        Some(&live_key),
        None,
    )
    .await;
    assert!(!live_list.body.to_string().contains("TEST-1"));

    // Without a sandbox, test keys reach the one upstream, labelled as test.
    let plain = gateway(&app, live).await;
    let a = call(
        Method::GET,
        &format!("{plain}/api/v1/echo"),
        Some(&test_key),
        None,
    )
    .await;
    assert_eq!(a.header("x-upstream"), Some("live"));
    assert_eq!(
        echoed_one(&a, "x-keygate-environment").as_deref(),
        Some("test")
    );
}

#[tokio::test]
async fn upstream_down_is_a_502_json_answer() {
    let app = spawn().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = gateway(&app, closed).await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let started = Instant::now();
    let a = call(
        Method::GET,
        &format!("{gw}/api/v1/invoices"),
        Some(&key),
        None,
    )
    .await;
    a.assert_error(502, "upstream_unavailable");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Refusals are still the gateway's own: the upstream is not needed to say no.
    let a = call(Method::GET, &format!("{gw}/api/v1/invoices"), None, None).await;
    a.assert_error(401, "missing_credentials");
}

#[tokio::test]
async fn slow_upstream_is_a_504_within_the_timeout_and_a_stalled_body_is_cut() {
    let app = spawn().await;
    let slow = axum::Router::new()
        .route(
            "/api/v1/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/api/v1/stall",
            axum::routing::get(|| async {
                // The head and a first chunk at once, then nothing.
                let stream = futures::stream::iter([Ok::<_, std::io::Error>(
                    bytes::Bytes::from_static(b"first"),
                )])
                .chain(futures::stream::pending());
                axum::body::Body::from_stream(stream)
            }),
        );
    let up = serve(slow).await;
    let gw = gateway_with(
        &app,
        up,
        None,
        Duration::from_secs(1),
        "/v1/api-key-info",
        None,
    )
    .await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;

    let started = Instant::now();
    let a = call(Method::GET, &format!("{gw}/api/v1/slow"), Some(&key), None).await;
    a.assert_error(504, "upstream_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );

    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{gw}/api/v1/stall"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.bytes().await.is_err(),
        "a stalled body must not end cleanly"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The gateway is still fine afterwards.
    let a = call(Method::GET, &format!("{gw}/api/v1/slow"), None, None).await;
    a.assert_error(401, "missing_credentials");
}

#[tokio::test]
async fn a_client_that_stalls_its_body_gets_408_and_a_slow_header_sender_is_dropped() {
    let app = spawn().await;
    let up = upstream("live").await;
    let gw = gateway_with(
        &app,
        up,
        None,
        Duration::from_secs(1),
        "/v1/api-key-info",
        Some(short_edges),
    )
    .await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let host = gw.trim_start_matches("http://");

    // Promises 1000 bytes, sends 10, then waits.
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST /api/v1/uploads HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: 1000\r\n\r\n0123456789"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Half a request head, then silence: the connection is closed, not kept forever.
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(b"GET /api/v1/invoices HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the gateway closes a connection whose head never ends")
        .ok();
}

#[tokio::test]
async fn every_refusal_is_the_gateways_own_json_answer() {
    let app = spawn().await;
    let up = upstream("live").await;
    let gw = gateway(&app, up).await;
    let acct = app.create_account("Acme", "unlimited").await;
    let url = format!("{gw}/api/v1/invoices");
    let read = app.create_key(&acct, json!({"scope": "read"})).await.1;

    let check = |a: &Answer, status: u16, code: &str| {
        a.assert_error(status, code);
        assert!(
            a.header("x-upstream").is_none(),
            "{code} reached the upstream"
        );
    };
    check(
        &call(Method::GET, &url, None, None).await,
        401,
        "missing_credentials",
    );
    check(
        &call(Method::GET, &url, Some("kg_live_nope"), None).await,
        401,
        "malformed_key",
    );
    let unknown = helpers::unknown_key(keygate_core::Environment::Live);
    check(
        &call(Method::GET, &url, Some(&unknown), None).await,
        401,
        "invalid_key",
    );

    let (revoked_id, revoked) = app.create_key(&acct, json!({"scope": "read"})).await;
    assert_eq!(
        call(Method::GET, &url, Some(&revoked), None).await.status,
        StatusCode::OK
    );
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{revoked_id}/revoke"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    check(
        &call(Method::GET, &url, Some(&revoked), None).await,
        401,
        "invalid_key",
    );

    let office = app
        .create_key(
            &acct,
            json!({"scope": "read", "ip_allowlist": ["203.0.113.0/24"]}),
        )
        .await
        .1;
    check(
        &call(Method::GET, &url, Some(&office), None).await,
        403,
        "ip_not_allowed",
    );
    check(
        &call(Method::POST, &url, Some(&read), Some(json!({}))).await,
        403,
        "insufficient_permissions",
    );

    let throttled = app
        .create_key(
            &acct,
            json!({"scope": "read", "rate_limit": {"requests": 2, "per_seconds": 60}}),
        )
        .await
        .1;
    for _ in 0..2 {
        let a = call(Method::GET, &url, Some(&throttled), None).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(
            a.header("ratelimit").is_some(),
            "rate headers on allowed answers"
        );
        assert_eq!(a.header("x-upstream"), Some("live"));
    }
    let a = call(Method::GET, &url, Some(&throttled), None).await;
    check(&a, 429, "rate_limited");
    assert!(a.header("retry-after").is_some());

    let metered = app
        .create_key(&acct, json!({"scope": "read", "quota": {"requests": 1}}))
        .await
        .1;
    assert_eq!(
        call(Method::GET, &url, Some(&metered), None).await.status,
        StatusCode::OK
    );
    check(
        &call(Method::GET, &url, Some(&metered), None).await,
        429,
        "usage_exceeded",
    );

    check(
        &call(Method::GET, &format!("{url}?api_key={read}"), None, None).await,
        400,
        "key_in_url",
    );
    check(
        &call(Method::GET, &format!("{url}?key={read}"), Some(&read), None).await,
        400,
        "key_in_url",
    );
    let a = answer(
        reqwest::Client::new()
            .get(&url)
            .bearer_auth(&read)
            .header("X-API-Key", &office)
            .send()
            .await
            .unwrap(),
    )
    .await;
    check(&a, 400, "ambiguous_credentials");
    // Paths that servers could route differently from what keygate checked.
    check(
        &call(
            Method::GET,
            &format!("{gw}/api/v1/invoices/..;/webhooks"),
            Some(&read),
            None,
        )
        .await,
        400,
        "validation_error",
    );
    // Dot-segments are resolved first: this is a webhooks request, which `read` lacks.
    let (status, head, _) = raw(
        &gw,
        format!(
            "GET /api/v1/invoices/../webhooks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {read}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{head}");
}

#[tokio::test]
async fn key_info_is_answered_at_the_configured_path() {
    let app = spawn().await;
    let up = upstream("live").await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (id, key) = app
        .create_key(
            &acct,
            json!({"scope": "read", "name": "Integration API Key"}),
        )
        .await;

    let gw = gateway(&app, up).await;
    let a = answer(
        reqwest::Client::new()
            .get(format!("{gw}/v1/api-key-info"))
            .header("APIKEY", &key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["data"]["id"], id.as_str());
    assert_eq!(a.body["data"]["name"], "Integration API Key");
    assert!(a.header("x-upstream").is_none());
    assert!(!a.body.to_string().contains(&key));

    // The reference's own path.
    let gw = gateway_with(
        &app,
        up,
        None,
        Duration::from_secs(10),
        "/api2/api_key_info.json",
        None,
    )
    .await;
    let a = call(
        Method::GET,
        &format!("{gw}/api2/api_key_info.json"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["data"]["display_prefix"], &key[..16]);
    call(
        Method::GET,
        &format!("{gw}/api2/api_key_info.json"),
        None,
        None,
    )
    .await
    .assert_error(401, "missing_credentials");
    call(
        Method::POST,
        &format!("{gw}/api2/api_key_info.json"),
        Some(&key),
        None,
    )
    .await
    .assert_error(405, "method_not_allowed");
    // The default path is now an ordinary upstream path: forwarded like any other.
    let a = call(
        Method::GET,
        &format!("{gw}/v1/api-key-info"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("x-upstream"), Some("live"));
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let app = spawn().await;
    let up = upstream("live").await;
    let acct = app.create_account("Acme", "unlimited").await;
    let office = app
        .create_key(
            &acct,
            json!({"scope": "all", "ip_allowlist": ["203.0.113.0/24"]}),
        )
        .await
        .1;
    let echo = |gw: &str, xff: &str| {
        let url = format!("{gw}/api/v1/echo");
        let key = office.clone();
        let xff = xff.to_owned();
        async move {
            answer(
                reqwest::Client::new()
                    .get(url)
                    .bearer_auth(key)
                    .header("X-Forwarded-For", xff)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };

    // No trusted proxies: the peer (127.0.0.1) is the client, whatever it claims.
    let direct = gateway(&app, up).await;
    echo(&direct, "203.0.113.7")
        .await
        .assert_error(403, "ip_not_allowed");

    // Loopback trusted (keygate behind a local proxy): the forwarded address counts.
    let behind = gateway_with(
        &app,
        up,
        None,
        Duration::from_secs(10),
        "/v1/api-key-info",
        Some(|http| http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]),
    )
    .await;
    let a = echo(&behind, "203.0.113.7").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(echoed_one(&a, "x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(
        echoed_one(&a, "x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    // A client spoofing an allowed address in front of the real one is judged by the
    // nearest untrusted address.
    echo(&behind, "203.0.113.7, 198.51.100.1")
        .await
        .assert_error(403, "ip_not_allowed");
    echo(&behind, "198.51.100.1")
        .await
        .assert_error(403, "ip_not_allowed");
}

#[tokio::test]
async fn reference_scope_demo_through_the_gateway() {
    let app = spawn().await;
    let up = upstream("live").await;
    let gw = gateway(&app, up).await;
    let acct = app.create_account("Acme Invoicing", "pro").await;
    let read = app.create_key(&acct, json!({"scope": "read"})).await.1;
    let hooks = app.create_key(&acct, json!({"scope": "webhooks"})).await.1;
    let write = app.create_key(&acct, json!({"scope": "write"})).await.1;
    let sender = app
        .create_key(
            &acct,
            json!({"permissions": ["invoices.send", "invoices.read"]}),
        )
        .await
        .1;
    let url = |p: &str| format!("{gw}{p}");

    // `read` lists invoices but cannot create one, nor see webhooks.
    let a = call(Method::GET, &url("/api/v1/invoices"), Some(&read), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["data"][0]["number"], "INV-0001");
    let a = call(Method::GET, &url("/api/v1/invoices/4"), Some(&read), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    call(
        Method::POST,
        &url("/api/v1/invoices"),
        Some(&read),
        Some(json!({"number": "INV-9"})),
    )
    .await
    .assert_error(403, "insufficient_permissions");
    call(Method::GET, &url("/api/v1/webhooks"), Some(&read), None)
        .await
        .assert_error(403, "insufficient_permissions");

    // `webhooks` manages webhook subscriptions and nothing else.
    let a = call(
        Method::POST,
        &url("/api/v1/webhooks"),
        Some(&hooks),
        Some(json!({"url": "https://example.com/hook", "events": ["invoice.paid"]})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let hook_id = a.body["data"]["id"].as_u64().unwrap();
    let a = call(Method::GET, &url("/api/v1/webhooks"), Some(&hooks), None).await;
    assert_eq!(a.body["data"].as_array().map(Vec::len), Some(1));
    let a = call(
        Method::DELETE,
        &url(&format!("/api/v1/webhooks/{hook_id}")),
        Some(&hooks),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    call(Method::GET, &url("/api/v1/invoices"), Some(&hooks), None)
        .await
        .assert_error(403, "insufficient_permissions");

    // `write` creates and updates, but the route table makes sending its own permission.
    let a = call(
        Method::POST,
        &url("/api/v1/invoices"),
        Some(&write),
        Some(json!({"number": "INV-0003", "total": "99.00"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let id = a.body["data"]["id"].as_u64().unwrap();
    let a = call(
        Method::PATCH,
        &url(&format!("/api/v1/invoices/{id}")),
        Some(&write),
        Some(json!({"total": "109.00"})),
    )
    .await;
    assert_eq!(a.body["data"]["total"], "109.00");
    call(
        Method::POST,
        &url(&format!("/api/v1/invoices/{id}/send")),
        Some(&write),
        None,
    )
    .await
    .assert_error(403, "insufficient_permissions");
    let a = call(
        Method::POST,
        &url(&format!("/api/v1/invoices/{id}/send")),
        Some(&sender),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["data"]["status"], "sent");
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let app = spawn().await;
    let up = upstream("live").await;
    let gw = gateway(&app, up).await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    const SIZE: usize = 32 * 1024 * 1024;

    let a = answer(
        reqwest::Client::new()
            .post(format!("{gw}/api/v1/uploads"))
            .bearer_auth(&key)
            .body(vec![7u8; SIZE])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["bytes"], SIZE as u64);

    let mut r = reqwest::Client::new()
        .get(format!("{gw}/api/v1/downloads/{SIZE}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.content_length(), Some(SIZE as u64));
    let mut total = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        total += chunk.len();
    }
    assert_eq!(total, SIZE);
}

#[tokio::test]
async fn forward_auth_refusals_carry_their_code_in_headers() {
    // What docs/nginx.md rebuilds keygate's JSON answers from (nginx cannot read the body).
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, read) = app.create_key(&acct, json!({"scope": "read"})).await;
    for (key, method, uri, status, code) in [
        (None, "GET", "/api/v1/invoices", 401, "missing_credentials"),
        (
            Some(read.as_str()),
            "POST",
            "/api/v1/invoices",
            403,
            "insufficient_permissions",
        ),
        (
            Some(read.as_str()),
            "GET",
            "/api/v1/invoices?api_key=x",
            400,
            "key_in_url",
        ),
    ] {
        let a = app.forward_auth(key, method, uri).await;
        a.assert_error(status, code);
        assert_eq!(a.header("x-keygate-code"), Some(code));
        assert_eq!(a.header("x-keygate-error"), a.body["error"].as_str());
        assert_eq!(a.header("x-request-id"), a.body["request_id"].as_str());
    }
    let a = app
        .forward_auth(Some(&read), "GET", "/api/v1/invoices")
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.header("x-keygate-code").is_none());
}

#[tokio::test]
async fn silent_and_slow_header_clients_are_cut_at_the_gateway_edge() {
    let app = spawn().await;
    let up = upstream("live").await;
    // The upstream timeout (10 s) is not what cuts these: the client timeouts (1 s) are.
    let gw = gateway_with(
        &app,
        up,
        None,
        Duration::from_secs(10),
        "/v1/api-key-info",
        Some(short_edges),
    )
    .await;
    let addr = socket_addr(&gw);

    let r = exchange(addr, b"", Duration::from_secs(8)).await;
    println!("silent connection closed after {:?}", r.took);
    assert!(r.closed && r.status.is_none(), "{r:?}");
    assert!(
        r.took >= Duration::from_millis(900) && r.took < Duration::from_secs(3),
        "silent: {:?}",
        r.took
    );

    // One header byte every 300 ms.
    let cut = slow_header_sender(addr, Duration::from_millis(300), Duration::from_secs(8))
        .await
        .expect("a slow header sender was never cut off (8 s)");
    println!("slow header sender cut off after {cut:?} (header read timeout 1 s)");
    assert!(cut < Duration::from_secs(3), "{cut:?}");

    let a = call(Method::GET, &format!("{gw}/api/v1/invoices"), None, None).await;
    a.assert_error(401, "missing_credentials");
}

#[tokio::test]
async fn two_hosts_and_long_targets_are_refused_below_the_router() {
    let app = spawn().await;
    let up = upstream("live").await;
    let gw = gateway(&app, up).await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let addr = socket_addr(&gw);

    // With a valid key: without the edge's checks these would reach the upstream.
    let two_hosts = format!(
        "GET /api/v1/invoices HTTP/1.1\r\nHost: {addr}\r\nHost: other.example\r\n\
         Authorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    let long_target = format!(
        "GET /api/v1/invoices?q={} HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {key}\r\nConnection: close\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    for (request, status, code) in [
        (two_hosts, 400, "bad_request"),
        (long_target, 414, "uri_too_long"),
    ] {
        let at_gateway = exchange(addr, request.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(at_gateway.status, Some(status), "{at_gateway:?}");
        assert_eq!(json_code(&at_gateway).as_deref(), Some(code));
        assert!(
            at_gateway.head.contains("content-type: application/json"),
            "{at_gateway:?}"
        );
        // The admin listener's answer to the same request, field for field.
        let at_admin = exchange(app.addr, request.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(at_admin.status, Some(status), "{at_admin:?}");
        let fields = |r: &raw::Raw| -> Vec<String> {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(fields(&at_gateway), fields(&at_admin));
        let gateway_body: Value = serde_json::from_slice(&at_gateway.body).unwrap();
        let admin_body: Value = serde_json::from_slice(&at_admin.body).unwrap();
        assert_eq!(gateway_body["error"], admin_body["error"]);
    }
}

/// Connects with a small receive buffer (no autotuning), so that a client that stops
/// reading fills it, and the gateway's send buffer, within a moment.
async fn small_window_connect(addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(256 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads one answer head (and whatever body came with it); returns the body bytes read.
async fn read_head(stream: &mut tokio::net::TcpStream) -> usize {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer head in time")
            .unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            return got.len() - end - 4;
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_a_slow_reader_is_not() {
    let app = spawn().await;
    let up = upstream("live").await;
    let gw = gateway_with(
        &app,
        up,
        None,
        Duration::from_secs(10),
        "/v1/api-key-info",
        Some(short_edges),
    )
    .await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let addr = socket_addr(&gw);
    const SIZE: usize = 64 * 1024 * 1024;
    let request = format!(
        "GET /api/v1/downloads/{SIZE} HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );

    // Reads the head, then nothing: once the buffers are full the gateway's writes wait,
    // and SEND_TIMEOUT later it drops the connection.
    let mut stalled = small_window_connect(addr).await;
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut received = read_head(&mut stalled).await;
    let slack = Duration::from_secs(3);
    tokio::time::sleep(SEND_TIMEOUT + slack).await;
    // What the buffers held arrives, then the end: far short of the download.
    let resumed = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received += n,
            Err(_) => break false,
        }
    };
    println!(
        "stalled reader: {received} bytes before the gateway closed (of {SIZE}); the buffered rest read in {:?}",
        resumed.elapsed()
    );
    assert!(
        closed,
        "still open {:?} after it stopped reading",
        SEND_TIMEOUT + slack
    );
    assert!(
        received < SIZE / 2,
        "{received} bytes: the download went on"
    );

    // Reads 256 KiB every 100 ms (a slow link) for three send timeouts: the socket is full
    // most of the time but keeps taking bytes, so the client is not cut; then the rest.
    let mut slow = small_window_connect(addr).await;
    slow.write_all(request.as_bytes()).await.unwrap();
    let mut body = read_head(&mut slow).await;
    let started = Instant::now();
    let mut chunk = vec![0u8; 256 * 1024];
    while started.elapsed() < SEND_TIMEOUT * 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::time::timeout(Duration::from_secs(5), slow.read_exact(&mut chunk))
            .await
            .expect("bytes in time")
            .unwrap_or_else(|e| panic!("a slow reader was cut after {:?}: {e}", started.elapsed()));
        body += chunk.len();
    }
    let slowly = body;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut rest))
        .await
        .expect("the rest in time")
        .unwrap();
    body += rest.len();
    println!(
        "slow reader: {slowly} bytes in {:?}, then the rest",
        started.elapsed()
    );
    assert_eq!(body, SIZE);
}

#[tokio::test]
async fn a_request_body_that_keeps_moving_is_never_cut() {
    let app = spawn().await;
    let up = upstream("live").await;
    // Upstream timeout 2 s: the proxy's own stall detection watches the body too.
    let gw = gateway_with(
        &app,
        up,
        None,
        Duration::from_secs(2),
        "/v1/api-key-info",
        Some(short_edges),
    )
    .await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let addr = socket_addr(&gw);
    const PIECES: usize = 15;
    const PIECE: usize = 1000;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/uploads HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        PIECES * PIECE
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // 4.5 s in all: longer than the header, request and send timeouts and the upstream
    // timeout, but never still for long.
    let started = Instant::now();
    for _ in 0..PIECES {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(&[b'x'; PIECE]).await.unwrap();
    }
    let sent_in = started.elapsed();
    let r = read_all(&mut stream, Instant::now(), Duration::from_secs(10)).await;
    println!(
        "slow upload of {} bytes over {sent_in:?}: {:?}",
        PIECES * PIECE,
        r.status
    );
    assert_eq!(r.status, Some(200), "{r:?}");
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["bytes"], (PIECES * PIECE) as u64);
}

/// A test PKI: a CA and a leaf certificate for `names` signed by it. Returns the CA's
/// PEM and a TLS server configuration presenting the leaf.
fn test_pki(names: &[&str]) -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "keygate test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key.into())
    .unwrap();
    (ca.pem(), Arc::new(server))
}

/// Serves `router` over TLS with `tls` on a random loopback port.
async fn serve_tls(router: axum::Router, tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    use tower::ServiceExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                // A handshake the gateway gives up on (unknown CA, wrong name) ends here.
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    router.clone().oneshot(request.map(axum::body::Body::new))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    addr
}

/// A gateway in front of `upstream_url`, trusting `ca_file` besides the system's roots.
async fn tls_gateway(app: &TestApp, upstream_url: &str, ca_file: &std::path::Path) -> String {
    let config = GatewayConfig::new(
        upstream_url,
        None,
        Duration::from_secs(10),
        "/v1/api-key-info",
        Some(ca_file),
    )
    .unwrap();
    start_gateway(app.state.clone(), config).await
}

#[tokio::test]
async fn https_upstreams_are_reached_only_with_a_trusted_certificate_for_their_name() {
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let (ca_pem, tls) = test_pki(&["localhost"]);
    let up = serve_tls(invoices_api::app_named("tls"), tls).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let (other_ca_pem, _) = test_pki(&["localhost"]);
    let other_ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca_pem).unwrap();

    // The upstream's CA trusted and its name matching: the request goes through.
    let by_name = format!("https://localhost:{}", up.port());
    let gw = tls_gateway(&app, &by_name, &ca_file).await;
    let a = call(
        Method::GET,
        &format!("{gw}/api/v1/echo/x"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.header("x-upstream"), Some("tls"));
    assert_eq!(
        echoed_one(&a, "host"),
        Some(format!("localhost:{}", up.port()))
    );
    assert!(echoed_one(&a, "authorization").is_none());
    // Refusals stay the gateway's own.
    let a = call(Method::GET, &format!("{gw}/api/v1/echo/x"), None, None).await;
    a.assert_error(401, "missing_credentials");

    // A CA that did not sign the upstream's certificate: no connection, a 502.
    let untrusted = tls_gateway(&app, &by_name, &other_ca_file).await;
    let a = call(
        Method::GET,
        &format!("{untrusted}/api/v1/echo/x"),
        Some(&key),
        None,
    )
    .await;
    a.assert_error(502, "upstream_unavailable");

    // The right CA, but the certificate is for localhost, not 127.0.0.1: a 502 too.
    let by_address = format!("https://127.0.0.1:{}", up.port());
    let wrong_name = tls_gateway(&app, &by_address, &ca_file).await;
    let a = call(
        Method::GET,
        &format!("{wrong_name}/api/v1/echo/x"),
        Some(&key),
        None,
    )
    .await;
    a.assert_error(502, "upstream_unavailable");
}

#[tokio::test]
async fn an_upstream_ca_file_without_certificates_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ca_pem, _) = test_pki(&["localhost"]);
    let broken_pem = ca_pem.replace("CERTIFICATE-----\n", "CERTIFICATE-----\n!!");
    for (file, says) in [
        (write("empty.pem", ""), "holds no certificate"),
        (
            write("notes.txt", "not a certificate\n"),
            "holds no certificate",
        ),
        (
            write("broken.pem", &broken_pem),
            "not a PEM certificate file",
        ),
        (dir.path().join("missing.pem"), "cannot be read"),
    ] {
        let e = GatewayConfig::new(
            "https://localhost:8443",
            None,
            Duration::from_secs(10),
            "/v1/api-key-info",
            Some(&file),
        )
        .unwrap_err();
        assert!(
            e.contains("upstream_ca_file") && e.contains(says),
            "{}: {e}",
            file.display()
        );
    }
}

/// The heads of the WebSocket handshakes an upstream accepted.
type Handshakes = Arc<std::sync::Mutex<Vec<axum::http::HeaderMap>>>;

/// A WebSocket upstream on a random loopback port (over TLS with `tls`) that echoes every
/// text and binary message; it keeps the head of each handshake it accepts.
async fn websocket_echo_upstream(
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SocketAddr, Handshakes) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Handshakes::default();
    let seen = handshakes.clone();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (seen, acceptor) = (seen.clone(), acceptor.clone());
            tokio::spawn(async move {
                match acceptor {
                    None => echo_websocket(tcp, seen).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            echo_websocket(stream, seen).await;
                        }
                    }
                }
            });
        }
    });
    (addr, handshakes)
}

async fn echo_websocket<S>(stream: S, seen: Handshakes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::SinkExt;
    // The callback's type, large error and all, is tungstenite's.
    #[allow(clippy::result_large_err)]
    let keep_head = |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                     response| {
        seen.lock().unwrap().push(request.headers().clone());
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, keep_head).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
    }
}

/// Opens a WebSocket to `url` with `key` as a bearer token, sends a text and a binary
/// message, checks that each comes back, and closes.
async fn websocket_round_trip(url: &str, key: &str) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for message in [
        Message::text("hello through keygate"),
        Message::binary(vec![0u8, 1, 2, 255]),
    ] {
        ws.send(message.clone()).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an echo in time")
            .expect("the tunnel is open")
            .unwrap();
        assert_eq!(echo, message);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websockets_are_verified_then_passed_through() {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (key_id, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let (up, handshakes) = websocket_echo_upstream(None).await;
    let gw = gateway(&app, up).await;
    let url = format!("{}/api/v1/stream", gw.replacen("http://", "ws://", 1));

    // Without a key: the gateway's own 401, and the upstream never hears of it.
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(WsError::Http(refusal)) => {
            let body: Value =
                serde_json::from_slice(refusal.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(refusal.status(), StatusCode::UNAUTHORIZED, "{body}");
            assert_eq!(body["code"], "missing_credentials", "{body}");
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(handshakes.lock().unwrap().is_empty());

    websocket_round_trip(&url, &key).await;

    // The upstream got the upgrade with the identity headers, not the key.
    let heads = handshakes.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    let head = &heads[0];
    assert!(head.get("authorization").is_none());
    assert_eq!(head["x-keygate-key-id"], key_id.as_str());
    assert_eq!(head["upgrade"], "websocket");
    assert!(!head["sec-websocket-key"].is_empty());
}

#[tokio::test]
async fn an_upgrade_the_upstream_declines_is_an_ordinary_answer() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error as WsError;
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    // The example API speaks no WebSocket: it answers the upgrade request as a GET.
    let gw = gateway(&app, upstream("live").await).await;
    let url = format!("{}/api/v1/invoices", gw.replacen("http://", "ws://", 1));
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(answer)) => {
            assert_eq!(answer.status(), StatusCode::OK);
            assert!(answer.headers().get("upgrade").is_none());
        }
        other => panic!("expected the upstream's plain answer, got {other:?}"),
    }
}

#[tokio::test]
async fn websockets_pass_through_to_an_https_upstream() {
    let app = spawn().await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let (ca_pem, tls) = test_pki(&["localhost"]);
    let (up, handshakes) = websocket_echo_upstream(Some(tls)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let gw = tls_gateway(&app, &format!("https://localhost:{}", up.port()), &ca_file).await;
    websocket_round_trip(
        &format!("{}/api/v1/stream", gw.replacen("http://", "ws://", 1)),
        &key,
    )
    .await;
    assert_eq!(handshakes.lock().unwrap().len(), 1);
}

/// A short-lived token (`POST /v1/tokens`) through the gateway: forwarded with the key's
/// identity, the token's scope and id, never the token itself; refused when it is past its
/// `exp`, when its signature does not match, and once its key is revoked.
#[tokio::test]
async fn short_lived_tokens_pass_the_gateway_until_their_key_is_revoked() {
    let app = spawn().await;
    let up = upstream("live").await;
    let gw = gateway(&app, up).await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (key_id, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let issued = app
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&key),
            Some(json!({"permissions": ["echo.*"], "ttl_seconds": 300})),
        )
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
    let token = issued.body["token"].as_str().unwrap().to_owned();
    let short = app
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&key),
            Some(json!({"ttl_seconds": 1})),
        )
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let a = call(
        Method::GET,
        &format!("{gw}/api/v1/echo/x"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        echoed_one(&a, "x-keygate-key-id").as_deref(),
        Some(key_id.as_str())
    );
    assert_eq!(
        echoed_one(&a, "x-keygate-token-id").as_deref(),
        issued.body["token_id"].as_str()
    );
    assert_eq!(
        echoed_one(&a, "x-keygate-permissions").as_deref(),
        Some("echo.*")
    );
    for (name, value) in echoed(&a) {
        assert!(!value.contains(&token), "{name} carries the token upstream");
    }
    // Outside the token's scope, though within the key's.
    let outside = call(
        Method::GET,
        &format!("{gw}/api/v1/invoices"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(outside.status, StatusCode::FORBIDDEN, "{}", outside.body);
    assert_eq!(outside.code(), "insufficient_permissions");
    // Tampered: one character of the signature changed.
    let mut tampered = token.clone();
    let at = tampered.len() - 10;
    let other = if &tampered[at..=at] == "A" { "B" } else { "A" };
    tampered.replace_range(at..=at, other);
    let refused = call(
        Method::GET,
        &format!("{gw}/api/v1/echo/x"),
        Some(&tampered),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = call(
        Method::GET,
        &format!("{gw}/api/v1/echo/x"),
        Some(&short),
        None,
    )
    .await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED, "{}", expired.body);
    assert_eq!(expired.code(), "invalid_key");

    let revoked = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{key_id}/revoke"),
            Some(json!({})),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    let after = call(
        Method::GET,
        &format!("{gw}/api/v1/echo/x"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{}", after.body);
    assert_eq!(after.code(), "invalid_key");
}

/// Connections an upstream accepted, and how many of them are still open.
#[derive(Clone, Default)]
struct Connections {
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

/// The example upstream, under `/base`, behind an accept loop that counts connections and
/// closes one that waits `idle` for its next request (as servers do with keep-alive).
async fn counting_upstream(idle: Duration) -> (SocketAddr, Connections) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Connections::default();
    let counted = connections.clone();
    // `/api/v1/early` answers at once and reads its request's body afterwards, as an API
    // that accepts an upload for later does: the connection stays open while it comes.
    let early = axum::routing::post(|body: axum::body::Body| async move {
        tokio::spawn(async move {
            let mut frames = body.into_data_stream();
            while let Some(Ok(_)) = frames.next().await {}
        });
        StatusCode::ACCEPTED
    });
    // `/api/v1/held` answers after half a second: requests sent together overlap there.
    let held = axum::routing::get(|| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        axum::Json(json!({"held": true}))
    });
    let app = axum::Router::new().nest(
        "/base",
        invoices_api::app_named("based")
            .route("/api/v1/early", early)
            .route("/api/v1/held", held),
    );
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counted.accepted.fetch_add(1, Ordering::SeqCst);
            counted.open.fetch_add(1, Ordering::SeqCst);
            let app = app.clone();
            let service = hyper::service::service_fn(move |request| {
                tower::ServiceExt::oneshot(app.clone(), request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(idle)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let open = counted.open.clone();
            tokio::spawn(async move {
                let _ = connection.await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, connections)
}

/// A gateway configuration for [`counting_upstream`] at `up`.
fn based_gateway_config(up: SocketAddr) -> GatewayConfig {
    GatewayConfig::new(
        &format!("http://{up}/base/"),
        None,
        Duration::from_secs(10),
        "/v1/api-key-info",
        None,
    )
    .unwrap()
}

impl Connections {
    /// The connections still open once the closing ones have closed (at most 5 s) down to
    /// `expected`.
    async fn open_after_closing(&self, expected: usize) -> usize {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.open.load(Ordering::SeqCst) > expected && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.open.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_burst_leaves_at_most_upstream_max_idle_connections_open() {
    use std::sync::atomic::Ordering;
    let app = spawn().await;
    let (up, connections) = counting_upstream(Duration::from_secs(60)).await;
    let mut config = based_gateway_config(up);
    assert_eq!(
        config.upstream_max_idle,
        GatewayConfig::DEFAULT_UPSTREAM_MAX_IDLE
    );
    config.upstream_max_idle = 4;
    let gw = start_gateway(app.state.clone(), config).await;
    let held = format!("{gw}/api/v1/held");
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;

    // Ten at once: ten upstream connections, all idle once answered; four are kept.
    let burst = (0..10).map(|_| call(Method::GET, &held, Some(&key), None));
    for answer in futures::future::join_all(burst).await {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    assert_eq!(connections.accepted.load(Ordering::SeqCst), 10);
    assert_eq!(
        connections.open_after_closing(4).await,
        4,
        "the idle connections beyond the cap were not closed"
    );

    // The four kept are used again: the next burst of four opens none.
    let burst = (0..4).map(|_| call(Method::GET, &held, Some(&key), None));
    for answer in futures::future::join_all(burst).await {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    assert_eq!(connections.accepted.load(Ordering::SeqCst), 10);

    // With no room (0), each answer's connection is closed: one after the other, each
    // request opens its own and none stays.
    let mut config = based_gateway_config(up);
    config.upstream_max_idle = 0;
    let none_kept = start_gateway(app.state.clone(), config).await;
    for n in 0..3 {
        let answer = call(
            Method::GET,
            &format!("{none_kept}/api/v1/echo/{n}"),
            Some(&key),
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    assert_eq!(connections.accepted.load(Ordering::SeqCst), 13);
    assert_eq!(connections.open_after_closing(4).await, 4);
}

#[tokio::test]
async fn upstream_connections_are_reused_and_one_closed_while_idle_is_replaced() {
    use std::sync::atomic::Ordering;
    let app = spawn().await;
    let (up, connections) = counting_upstream(Duration::from_secs(1)).await;
    let accepted = connections.accepted;
    let config = based_gateway_config(up);
    let gw = start_gateway(app.state.clone(), config).await;
    let acct = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&acct, json!({"scope": "all"})).await;
    let get = |n: usize| {
        let (gw, key) = (gw.clone(), key.clone());
        async move {
            call(
                Method::GET,
                &format!("{gw}/api/v1/echo/{n}?page={n}"),
                Some(&key),
                None,
            )
            .await
        }
    };

    // One after the other, on new client connections each: one upstream connection, also
    // after a request with a body (reused once that body went up in full).
    let a = call(
        Method::POST,
        &format!("{gw}/api/v1/echo/upload"),
        Some(&key),
        Some(json!({"bytes": "x".repeat(100_000)})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body["body_bytes"].as_u64().unwrap() > 100_000);
    for n in 0..5 {
        let a = get(n).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(
            a.body["upstream"], "based",
            "the base path was not prefixed"
        );
        assert_eq!(a.body["path"], format!("/api/v1/echo/{n}"));
        assert_eq!(a.body["query"], format!("page={n}"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the connection was not reused"
    );

    // The upstream closes the idle connection; the next request gets a new one, not a 502.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for n in 0..3 {
        let a = get(n).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // An answer cut by its client is never put back: its connection is closed, and the
    // next request is answered on another.
    let mut r = reqwest::Client::new()
        .get(format!("{gw}/api/v1/downloads/{}", 64 * 1024 * 1024))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.chunk().await.unwrap();
    drop(r);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = get(9).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // An answer that ends before its request's body went up (the upstream reads it later)
    // does not put its connection back: the next request is not held behind an upload
    // that its client has stalled.
    let mut upload = tokio::net::TcpStream::connect(gw.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/early HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: 100000\r\n\r\n{}",
        "x".repeat(1000)
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), upload.read(&mut chunk))
            .await
            .expect("the early answer never came")
            .unwrap();
        assert!(n > 0, "the gateway closed the stalled upload");
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 202"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let a = tokio::time::timeout(Duration::from_secs(3), get(10))
        .await
        .expect("a request waited behind the stalled upload's connection");
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    drop(upload);
}
