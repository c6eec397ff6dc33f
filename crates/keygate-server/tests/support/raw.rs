//! Raw HTTP/1.1 over a socket, for requests a client library will not send and for
//! watching when the server closes: shared by `edges.rs` (admin listener) and
//! `gateway.rs` (gateway listener), which run the same connection layer.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back on a raw connection: the status (None: closed without an answer), the
/// head, the body, and how long until the server closed or went quiet.
#[derive(Debug)]
pub struct Raw {
    pub status: Option<u16>,
    pub head: String,
    pub body: Vec<u8>,
    pub closed: bool,
    pub took: Duration,
}

/// Writes `request` (all at once) and reads until the server closes or `quiet` passes
/// without a byte.
pub async fn exchange(addr: SocketAddr, request: &[u8], quiet: Duration) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    // The server may close before reading everything; that is an answer too.
    let _ = stream.write_all(request).await;
    read_all(&mut stream, started, quiet).await
}

pub async fn read_all(stream: &mut TcpStream, started: Instant, quiet: Duration) -> Raw {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut closed = false;
    loop {
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = match text.find("\r\n\r\n") {
        Some(i) => (text[..i].to_owned(), got[i + 4..].to_vec()),
        None => (text.clone(), Vec::new()),
    };
    // Interim answers (100 Continue) come before the real one.
    let mut head = head;
    let mut body = body;
    while head.starts_with("HTTP/1.1 1") {
        let rest = String::from_utf8_lossy(&body).into_owned();
        match rest.find("\r\n\r\n") {
            Some(i) => {
                head = rest[..i].to_owned();
                body = body[i + 4..].to_vec();
            }
            None => break,
        }
    }
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|h| h.get(2..5))
        .and_then(|s| s.parse().ok());
    Raw {
        status,
        head: head.to_ascii_lowercase(),
        body,
        closed,
        took,
    }
}

/// The first JSON error body of an answer (chunked or not).
pub fn json_code(r: &Raw) -> Option<String> {
    let text = String::from_utf8_lossy(&r.body);
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let v: Value = serde_json::from_str(&text[start..=end]).ok()?;
    v["code"].as_str().map(str::to_owned)
}

/// Sends the start of a request head, then one more header byte every `every`: a
/// slowloris client. Returns how long until the server cut it off (`None`: it was still
/// open after `give_up`).
pub async fn slow_header_sender(
    addr: SocketAddr,
    every: Duration,
    give_up: Duration,
) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut i = 0u8;
    while started.elapsed() < give_up {
        tokio::time::sleep(every).await;
        if stream.write_all(&[b'a' + i % 26]).await.is_err() {
            return Some(started.elapsed());
        }
        i = i.wrapping_add(1);
        // Reading with a short timeout tells whether the server closed (or answered).
        let mut buf = [0u8; 512];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
        {
            return Some(started.elapsed());
        }
    }
    None
}
