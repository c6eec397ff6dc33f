//! Bad input at the edges, below the router: the connection layer (`serve_router_with`)
//! against clients that are slow, silent, oversized or not speaking HTTP properly. Every
//! bad request gets a 4xx (JSON when the router answered it) or, where HTTP allows it, a
//! closed connection; never a 5xx, never a crash, and the server keeps serving others.
//!
//! The server runs in process with short timeouts (1–2 s) so the timeouts can be watched;
//! the defaults are longer (`EdgeLimits::default`). Ten thousand idle connections against
//! the real binary are in `crates/keygate/tests/connections.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_server::{AppState, EdgeLimits, HttpConfig};
use raw::{exchange, json_code, read_all, slow_header_sender};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "support/raw.rs"]
mod raw;

const VERIFY_TOKEN: &str = "edges-verify-token-0123456789abcdef";

struct App {
    addr: SocketAddr,
    admin: String,
    _dir: tempfile::TempDir,
}

fn limits() -> EdgeLimits {
    EdgeLimits {
        first_request_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Some(Duration::from_secs(2)),
        idle_timeout: Duration::from_secs(2),
        ..EdgeLimits::default()
    }
}

async fn spawn() -> App {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/edges.db", dir.path().display());
    let (state, admin) = keygate_server::fuzzing::sqlite_state(&url, VERIFY_TOKEN)
        .await
        .unwrap();
    let state = AppState {
        http: Arc::new(HttpConfig {
            edge: limits(),
            ..HttpConfig::default()
        }),
        ..state
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(keygate_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    App {
        addr,
        admin,
        _dir: dir,
    }
}

async fn healthy(addr: SocketAddr) {
    let r = exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, Some(200), "the server still serves: {r:?}");
}

#[tokio::test]
async fn a_slow_header_sender_is_cut_off() {
    let app = spawn().await;
    // One header byte every 200 ms: the head never completes in time.
    let cut_after =
        slow_header_sender(app.addr, Duration::from_millis(200), Duration::from_secs(8))
            .await
            .expect("a slowloris client was never cut off (8 s)");
    println!("slowloris: cut off after {cut_after:?} (header_read_timeout 1 s)");
    assert!(cut_after < Duration::from_secs(4), "{cut_after:?}");
    healthy(app.addr).await;
}

#[tokio::test]
async fn silent_and_stalled_connections_are_closed() {
    let app = spawn().await;
    // Nothing at all.
    let r = exchange(app.addr, b"", Duration::from_secs(5)).await;
    assert!(r.closed && r.status.is_none(), "{r:?}");
    assert!(r.took < Duration::from_secs(4), "silent: {:?}", r.took);
    println!("silent connection closed after {:?}", r.took);
    // Half an HTTP/2 preface, then nothing (hyper would wait for the rest forever).
    let r = exchange(app.addr, b"PRI * HTTP/2.0\r\n", Duration::from_secs(5)).await;
    assert!(r.closed, "{r:?}");
    assert!(
        r.took < Duration::from_secs(4),
        "stalled preface: {:?}",
        r.took
    );
    println!("stalled HTTP/2 preface closed after {:?}", r.took);
    // A keep-alive connection left idle after an answer.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let r = read_all(&mut stream, started, Duration::from_secs(5)).await;
    assert_eq!(r.status, Some(200));
    assert!(r.closed, "an idle keep-alive connection stays open: {r:?}");
    assert!(
        r.took < Duration::from_secs(4),
        "idle keep-alive: {:?}",
        r.took
    );
    println!("idle keep-alive connection closed after {:?}", r.took);
    healthy(app.addr).await;
}

#[tokio::test]
async fn a_slow_body_gets_408() {
    let app = spawn().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na",
        app.admin
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // A byte now and then, never the whole body.
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let r = read_all(&mut stream, started, Duration::from_secs(3)).await;
    println!("slow body: {:?} after {:?}", r.status, r.took);
    assert_eq!(r.status, Some(408), "{r:?}");
    assert_eq!(json_code(&r).as_deref(), Some("request_timeout"), "{r:?}");
    healthy(app.addr).await;
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    let app = spawn().await;
    // The preface and an empty SETTINGS frame: the server answers with its SETTINGS.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame[3], 0x4, "a SETTINGS frame: {frame:?}");
    // Garbage after the preface: the connection ends, the server lives.
    stream.write_all(&[0xff; 64]).await.unwrap();
    let r = read_all(&mut stream, Instant::now(), Duration::from_secs(3)).await;
    assert!(r.closed || r.status.is_none(), "{r:?}");
    healthy(app.addr).await;
}

/// Raw requests that are wrong at the HTTP level. Each: (what, bytes).
fn bad_requests(admin: &str) -> Vec<(String, Vec<u8>)> {
    let auth = format!("Authorization: Bearer {admin}\r\n");
    let h = "Host: x\r\nConnection: close\r\n";
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |what: &str, bytes: Vec<u8>| v.push((what.to_owned(), bytes));
    // The request line.
    add(
        "lower-case method",
        format!("get /healthz HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "method with a slash",
        format!("GE/T /healthz HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "two spaces",
        format!("GET  /healthz HTTP/1.1\r\n{h}\r\n").into(),
    );
    add("no target", format!("GET HTTP/1.1\r\n{h}\r\n").into());
    add("no version", format!("GET /healthz\r\n{h}\r\n").into());
    add("HTTP/0.9 line", b"GET /healthz\r\n\r\n".to_vec());
    add(
        "version HTTP/2.0 in HTTP/1 syntax",
        format!("GET /healthz HTTP/2.0\r\n{h}\r\n").into(),
    );
    add(
        "version HTTP/1.9",
        format!("GET /healthz HTTP/1.9\r\n{h}\r\n").into(),
    );
    add(
        "version HTTP/3",
        format!("GET /healthz HTTP/3\r\n{h}\r\n").into(),
    );
    add(
        "version garbage",
        format!("GET /healthz HTTX/1.1\r\n{h}\r\n").into(),
    );
    add(
        "space in the target",
        format!("GET /v1/api keys HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "tab in the target",
        format!("GET /v1/\tx HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "control byte in the target",
        format!("GET /v1/\x01 HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "NUL in the target",
        format!("GET /v1/\0 HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "raw non-UTF-8 in the target",
        [
            b"GET /v1/\xff\xfe HTTP/1.1\r\n".as_slice(),
            h.as_bytes(),
            b"\r\n",
        ]
        .concat(),
    );
    add(
        "raw DEL in the target",
        format!("GET /v1/\x7f HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "asterisk target for GET",
        format!("GET * HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "authority-form target for GET",
        format!("GET example.com:443 HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "CONNECT",
        format!("CONNECT example.com:443 HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "relative target",
        format!("GET v1/api-keys HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "target of 9 KiB",
        format!("GET /v1/{} HTTP/1.1\r\n{h}\r\n", "a".repeat(9 * 1024)).into(),
    );
    add(
        "query of 20 KiB",
        format!(
            "GET /healthz?{} HTTP/1.1\r\n{h}\r\n",
            "q=1&".repeat(5 * 1024)
        )
        .into(),
    );
    add(
        "target of 70 KiB",
        format!("GET /{} HTTP/1.1\r\n{h}\r\n", "b".repeat(70 * 1024)).into(),
    );
    add(
        "method of 1 KiB",
        format!("{} /healthz HTTP/1.1\r\n{h}\r\n", "X".repeat(1024)).into(),
    );
    add(
        "CR without LF",
        b"GET /healthz HTTP/1.1\rHost: x\r\r".to_vec(),
    );
    add(
        "leading garbage",
        format!("\x16\x03\x01\x02\x00GET /healthz HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "TLS client hello",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
    );
    add("SSH banner", b"SSH-2.0-OpenSSH_9.0\r\n".to_vec());
    add("SMTP", b"HELO example.com\r\n".to_vec());
    add("binary noise", (0u8..=255).collect());
    // Headers.
    add(
        "header without a colon",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n".to_vec(),
    );
    add(
        "space before the colon",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n".to_vec(),
    );
    add(
        "space in a header name",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n".to_vec(),
    );
    add(
        "parenthesis in a header name",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n(x): b\r\n\r\n".to_vec(),
    );
    add(
        "empty header name",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n".to_vec(),
    );
    add(
        "non-ASCII header name",
        [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-\xc3\xa9: b\r\n\r\n".as_slice()].concat(),
    );
    add(
        "NUL in a header value",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(),
    );
    add(
        "obs-fold continuation",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
    );
    add(
        "header line of 40 KiB",
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "v".repeat(40 * 1024)
        )
        .into(),
    );
    add("200 headers", {
        let mut s = "GET /healthz HTTP/1.1\r\nHost: x\r\n".to_owned();
        for i in 0..200 {
            s.push_str(&format!("X-H{i}: v\r\n"));
        }
        s.push_str("\r\n");
        s.into()
    });
    add("headers of 20 KiB in 10 lines (JSON 431)", {
        let mut s = format!("GET /healthz HTTP/1.1\r\n{h}");
        for i in 0..10 {
            s.push_str(&format!("X-F{i}: {}\r\n", "f".repeat(2 * 1024)));
        }
        s.push_str("\r\n");
        s.into()
    });
    add(
        "missing Host in HTTP/1.1",
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
    );
    add(
        "two Host headers",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".to_vec(),
    );
    add(
        "Host with a space",
        b"GET /healthz HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n".to_vec(),
    );
    // Bodies and framing.
    add(
        "Content-Length not a number",
        format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Length: ten\r\n\r\n").into(),
    );
    add(
        "negative Content-Length",
        format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Length: -1\r\n\r\n").into(),
    );
    add("Content-Length beyond u64", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Length: 99999999999999999999999\r\n\r\n").into());
    add("two different Content-Lengths", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}").into());
    add(
        "Content-Length list",
        format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Length: 2, 3\r\n\r\n{{}}").into(),
    );
    add("Content-Length and chunked", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into());
    add(
        "unknown transfer coding",
        format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Transfer-Encoding: gzip\r\n\r\nxx").into(),
    );
    add("chunked not last", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n").into());
    add("bad chunk size", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n").into());
    add("chunk size overflow", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n{{}}\r\n").into());
    add("chunk without its CRLF", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}XX0\r\n\r\n").into());
    add("chunked body over the limit", {
        let mut s = format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..70 {
            s.push_str(&format!("400\r\n{}\r\n", "x".repeat(1024)));
        }
        s.push_str("0\r\n\r\n");
        s.into()
    });
    add("declared body over the limit", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{").into());
    add("Expect 100-continue over the limit", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\n\r\n").into());
    add(
        "body on a GET with a bad length",
        format!("GET /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Length: x\r\n\r\n").into(),
    );
    add("JSON body that is not UTF-8", [format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Type: application/json\r\nContent-Length: 12\r\n\r\n").as_bytes(), b"{\"name\":\"\xff\"}"].concat());
    add("body of a form, not JSON", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 6\r\n\r\nname=x").into());
    add("Upgrade to h2c on the API", format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}").into());
    add("Upgrade to websocket", b"GET /v1/auth HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec());
    add("non-UTF-8 original URI", b"GET /v1/auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Original-URI: /api/\xff\xfe\r\nAuthorization: Bearer kg_live_x\r\n\r\n".to_vec());
    add("non-UTF-8 X-Forwarded-For", b"GET /v1/auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: \xff\xfe\r\n\r\n".to_vec());
    add("non-UTF-8 X-API-Key", b"GET /v1/api-keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: kg_\xc3\x28\r\n\r\n".to_vec());
    add(
        "non-UTF-8 content type",
        [
            format!("POST /v1/accounts HTTP/1.1\r\n{h}{auth}").as_bytes(),
            b"Content-Type: application/\xffjson\r\nContent-Length: 2\r\n\r\n{}",
        ]
        .concat(),
    );
    add(
        "percent-encoded NUL in a key id",
        format!("GET /v1/api-keys/%00 HTTP/1.1\r\n{h}{auth}\r\n").into(),
    );
    add(
        "overlong UTF-8 in the path",
        format!("GET /v1/api-keys/%c0%ae%c0%ae HTTP/1.1\r\n{h}{auth}\r\n").into(),
    );
    add(
        "fragment in the target",
        format!("GET /v1/nope#frag HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "absolute target to another host",
        format!("GET http://evil.example/v1/nope HTTP/1.1\r\n{h}\r\n").into(),
    );
    add(
        "userinfo in an absolute target",
        format!("GET http://user:pw@x/v1/nope HTTP/1.1\r\n{h}\r\n").into(),
    );
    v
}

#[tokio::test]
async fn bad_requests_get_a_4xx_or_a_close_never_a_5xx() {
    let app = spawn().await;
    let cases = bad_requests(&app.admin);
    let mut failures = Vec::new();
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for (what, bytes) in &cases {
        let r = exchange(app.addr, bytes, Duration::from_secs(3)).await;
        let outcome = match r.status {
            None => "closed".to_owned(),
            Some(s) => s.to_string(),
        };
        println!("  {what}: {outcome}");
        *tally.entry(outcome).or_default() += 1;
        match r.status {
            None if r.closed => {}
            None => failures.push(format!("{what}: no answer and no close within 3 s: {r:?}")),
            Some(s) if (400..500).contains(&s) => {
                // An answer our router gave is JSON with a code.
                if r.head.contains("content-type: application/json") && json_code(&r).is_none() {
                    failures.push(format!("{what}: {s} without a JSON code: {r:?}"));
                }
            }
            Some(s) => failures.push(format!(
                "{what}: answered {s}: {}\n{}",
                r.head,
                String::from_utf8_lossy(&r.body)
            )),
        }
        // Alive after each.
        let h = exchange(
            app.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        if h.status != Some(200) {
            failures.push(format!("{what}: the server stopped answering: {h:?}"));
        }
    }
    println!("{} socket-level bad requests: {tally:?}", cases.len());
    assert!(cases.len() >= 70, "{}", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn limits_answer_with_the_right_status() {
    let app = spawn().await;
    let h = "Host: x\r\nConnection: close\r\n";
    let long_target = format!("GET /v1/{} HTTP/1.1\r\n{h}\r\n", "a".repeat(9 * 1024));
    let r = exchange(app.addr, long_target.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(r.status, Some(414), "{r:?}");
    assert_eq!(json_code(&r).as_deref(), Some("uri_too_long"));
    let big_head = format!(
        "GET /healthz HTTP/1.1\r\n{h}X-Big: {}\r\n\r\n",
        "v".repeat(40 * 1024)
    );
    let r = exchange(app.addr, big_head.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(r.status, Some(431), "{r:?}");
    let mid_head = format!(
        "GET /healthz HTTP/1.1\r\n{h}X-Mid: {}\r\n\r\n",
        "v".repeat(20 * 1024)
    );
    let r = exchange(app.addr, mid_head.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(r.status, Some(431), "{r:?}");
    assert_eq!(json_code(&r).as_deref(), Some("headers_too_large"));
    // At most 100 header lines (Host and Connection among them).
    let many = |n: usize| {
        let lines: String = (0..n).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET /healthz HTTP/1.1\r\n{h}{lines}\r\n")
    };
    let r = exchange(app.addr, many(98).as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(r.status, Some(200), "{r:?}");
    let r = exchange(app.addr, many(99).as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(r.status, Some(431), "{r:?}");
    // Pipelined requests are each answered, in order.
    let two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let r = exchange(app.addr, two, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, Some(200));
    assert!(text.contains("HTTP/1.1 404"), "{text}");
}

#[tokio::test]
async fn a_broken_chunked_body_is_400_and_an_oversized_one_413() {
    let app = spawn().await;
    let head = format!(
        "POST /v1/accounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        app.admin
    );
    for (what, body) in [
        ("bad chunk size", "zz\r\n{}\r\n0\r\n\r\n".to_owned()),
        ("chunk without its CRLF", "2\r\n{}XX0\r\n\r\n".to_owned()),
    ] {
        let r = exchange(
            app.addr,
            format!("{head}{body}").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(r.status, Some(400), "{what}: {r:?}");
        assert_eq!(json_code(&r).as_deref(), Some("bad_request"), "{what}");
    }
    let mut over = String::new();
    for _ in 0..70 {
        over.push_str(&format!("400\r\n{}\r\n", "x".repeat(1024)));
    }
    over.push_str("0\r\n\r\n");
    let r = exchange(
        app.addr,
        format!("{head}{over}").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(r.status, Some(413), "{r:?}");
    assert_eq!(json_code(&r).as_deref(), Some("payload_too_large"));
}
