//! What the gateway changes in the headers it forwards: hop-by-hop headers dropped both
//! ways (RFC 9110 §7.6.1), the credential and any client-sent `X-Keygate-*` removed before
//! the identity headers are added, `X-Forwarded-*`, `X-Real-IP` and `Via` set.

use std::net::IpAddr;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::Version;

/// Hop-by-hop headers, never forwarded in either direction (RFC 9110 §7.6.1, plus the
/// `Proxy-*` family and `Trailer`, as proxies traditionally treat them).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where a request carries its key; the upstream never sees any of them.
const CREDENTIALS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("apikey"),
];

const IDENTITY_PREFIX: &str = "x-keygate-";

// Names made at compile time: a `&str` name is parsed and checked on every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
}

/// Removes the hop-by-hop headers: the fixed list, every `Proxy-*` header, and every
/// header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at the names is cheaper than a removal (which
    // hashes its name) per listed header.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut doomed: Vec<HeaderName> = connection_options(headers)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    doomed.extend(
        headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned(),
    );
    for name in doomed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The options the `Connection` headers list (`keep-alive`, `upgrade`, header names).
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|option| !option.is_empty())
}

/// Whether the headers ask for (a request) or agree to (a `101` answer) a switch to
/// WebSocket: `Connection: upgrade` and `Upgrade: websocket`. Other protocols are not
/// passed through: a tunnelled `h2c`, say, would carry requests keygate never verifies.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade_option = connection_options(headers).any(|o| o.eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|protocol| protocol.trim().eq_ignore_ascii_case("websocket"));
    upgrade_option && websocket
}

/// Puts back what [`strip_hop_by_hop`] removed from a WebSocket upgrade, for the next hop.
pub fn keep_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Facts about the connection the request came in on.
pub struct Hop<'a> {
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// The client address keygate judged (the peer, or what a trusted proxy said).
    pub client: Option<IpAddr>,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-Proto`/`-Host` are kept).
    pub peer_trusted: bool,
    /// The protocol version the request came in with (for `Via`).
    pub version: Version,
    /// `Host` (or the HTTP/2 authority) the client asked for.
    pub host: Option<HeaderValue>,
    /// The upstream's `host[:port]`.
    pub upstream_host: &'a HeaderValue,
}

/// What a request's headers hold that [`prepare_request`] must remove or rework, found in
/// one look at the names (a removal or lookup hashes its name, present or not).
#[derive(Default)]
struct Present {
    hop_by_hop: bool,
    credential: bool,
    identity: bool,
    expect: bool,
    forwarded: bool,
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
}

impl Present {
    fn scan(headers: &HeaderMap) -> Present {
        let mut present = Present::default();
        for name in headers.keys() {
            if is_hop_by_hop(name) {
                present.hop_by_hop = true;
            } else if CREDENTIALS.contains(name) {
                present.credential = true;
            } else if name == header::EXPECT {
                present.expect = true;
            } else if name == header::FORWARDED {
                present.forwarded = true;
            } else if name == X_FORWARDED_FOR {
                present.forwarded_for = true;
            } else if name == X_FORWARDED_PROTO {
                present.forwarded_proto = true;
            } else if name == X_FORWARDED_HOST {
                present.forwarded_host = true;
            } else if name.as_str().starts_with(IDENTITY_PREFIX) {
                present.identity = true;
            }
        }
        present
    }
}

/// Turns the client's request headers into the upstream's: hop-by-hop, credentials,
/// client-sent identity headers and `Expect` removed; `Host` set to the upstream;
/// `X-Forwarded-For` appended, `X-Forwarded-Proto`/`-Host` set (kept when a trusted proxy
/// sent them), `X-Real-IP` set to the judged client address, `Via` appended. The identity
/// headers are added afterwards by the caller.
pub fn prepare_request(headers: &mut HeaderMap, hop: &Hop<'_>) {
    let present = Present::scan(headers);
    if present.hop_by_hop {
        // A chunked body is re-framed on the way up; a Content-Length sent beside
        // Transfer-Encoding is not the body's length and must not reach the upstream.
        if headers.contains_key(header::TRANSFER_ENCODING) {
            headers.remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(headers);
    }
    if present.credential {
        for name in &CREDENTIALS {
            headers.remove(name);
        }
    }
    if present.identity {
        strip_identity(headers);
    }
    // The gateway has already answered any `100-continue` by reading the body.
    if present.expect {
        headers.remove(header::EXPECT);
    }
    // The peer's address, formatted once for `X-Forwarded-For` and, when it is the client
    // judged (no trusted proxy in front), `X-Real-IP`.
    let peer_value = hop.peer.map(ip_value);

    if let Some(peer_value) = &peer_value {
        let previous: Vec<&str> = if present.forwarded_for {
            headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect()
        } else {
            Vec::new()
        };
        let value = if previous.is_empty() {
            Ok(peer_value.clone())
        } else {
            let peer = peer_value.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{}, {peer}", previous.join(", ")))
        };
        if let Ok(v) = value {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    // RFC 7239 `Forwarded` says the same as `X-Forwarded-*`: only a trusted proxy's is
    // passed on (with this hop added); a client's own could claim any address.
    if present.forwarded && !hop.peer_trusted {
        headers.remove(header::FORWARDED);
    } else if let (Some(peer), true) = (hop.peer, present.forwarded) {
        let node = match peer {
            std::net::IpAddr::V4(ip) => format!("for={ip}"),
            std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
        let previous: Vec<&str> = headers
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let value = format!("{}, {node}", previous.join(", "));
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.insert(header::FORWARDED, v);
            }
            Err(_) => {
                headers.remove(header::FORWARDED);
            }
        }
    }
    if !(hop.peer_trusted && present.forwarded_proto) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !(hop.peer_trusted && present.forwarded_host) {
        match &hop.host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None if present.forwarded_host => {
                headers.remove(X_FORWARDED_HOST);
            }
            None => {}
        }
    }
    let real_ip = match (hop.client, &peer_value) {
        (Some(client), Some(peer_value)) if Some(client) == hop.peer => Some(peer_value.clone()),
        (Some(client), _) => Some(ip_value(client)),
        (None, _) => None,
    };
    match real_ip {
        Some(v) => {
            headers.insert(X_REAL_IP, v);
        }
        None => {
            headers.remove(X_REAL_IP);
        }
    }
    let via = match hop.version {
        Version::HTTP_10 => "1.0 keygate",
        Version::HTTP_2 => "2 keygate",
        _ => "1.1 keygate",
    };
    headers.append(header::VIA, HeaderValue::from_static(via));
    headers.insert(header::HOST, hop.upstream_host.clone());
}

/// An address as a header value. IPv4 (nearly every peer) is written by hand on the stack:
/// `Display` goes through the formatting machinery, a few hundred instructions per octet.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for d in &digits[skip..] {
            text[len] = b'0' + d;
            len += 1;
        }
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Removes every `X-Keygate-*` header (only keygate may set them).
pub fn strip_identity(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(IDENTITY_PREFIX))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// A path fit to forward: dot-segments resolved and repeated slashes merged, so that the
/// upstream routes exactly the path whose permission keygate checked. `None` for paths
/// that servers disagree about: encoded slashes, backslashes or dots (`%2F`, `%5C`,
/// `%2E`), a backslash, or a dot-segment with parameters (`..;x`).
pub fn forwardable_path(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    // One pass: refuse what servers disagree about, and note whether the path needs
    // normalising at all (most do not, and are forwarded as they are).
    let mut tricky = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return None,
            b'%' => {
                let code = bytes
                    .get(i + 1..i + 3)
                    .map(|c| [c[0], c[1].to_ascii_lowercase()]);
                if matches!(code, Some([b'2', b'f' | b'e'] | [b'5', b'c'])) {
                    return None;
                }
            }
            b';' => tricky = true,
            b'/' => tricky |= matches!(bytes.get(i + 1), Some(b'/' | b'.')),
            _ => {}
        }
    }
    if !tricky {
        return Some(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in path.split('/').skip(1) {
        let bare = segment.split(';').next().unwrap_or("");
        trailing = false;
        match segment {
            "" | "." => trailing = true,
            ".." => {
                out.pop();
                trailing = true;
            }
            _ if bare == "." || bare == ".." => return None,
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() || trailing {
        normal.push('/');
    }
    Some(Cow::Owned(normal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other"),
            ("x-secret-hop", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("accept", "application/json"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn only_a_websocket_upgrade_is_one() {
        let upgrade = |pairs: &[(&str, &str)]| is_websocket_upgrade(&map(pairs));
        assert!(upgrade(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket")
        ]));
        assert!(upgrade(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "WebSocket")
        ]));
        assert!(!upgrade(&[("upgrade", "websocket")]));
        assert!(!upgrade(&[
            ("connection", "close"),
            ("upgrade", "websocket")
        ]));
        assert!(!upgrade(&[("connection", "upgrade"), ("upgrade", "h2c")]));
        assert!(!upgrade(&[("connection", "upgrade")]));
    }

    #[test]
    fn request_headers_lose_credentials_and_gain_forwarding() {
        let upstream = HeaderValue::from_static("127.0.0.1:9000");
        let mut h = map(&[
            ("authorization", "Bearer kg_live_x"),
            ("x-api-key", "kg_live_x"),
            ("apikey", "kg_live_x"),
            ("x-keygate-account-id", "acct_spoofed"),
            ("X-Keygate-Anything", "spoofed"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=198.51.100.7;proto=https"),
            ("x-real-ip", "10.9.9.9"),
            ("host", "api.example.com"),
            ("expect", "100-continue"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
        ]);
        let hop = Hop {
            peer: Some("203.0.113.5".parse().unwrap()),
            client: Some("203.0.113.5".parse().unwrap()),
            peer_trusted: false,
            version: Version::HTTP_11,
            host: Some(HeaderValue::from_static("api.example.com")),
            upstream_host: &upstream,
        };
        prepare_request(&mut h, &hop);
        for gone in [
            "authorization",
            "x-api-key",
            "apikey",
            "x-keygate-account-id",
            "x-keygate-anything",
            "expect",
            "transfer-encoding",
            "content-length",
            "forwarded",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 203.0.113.5");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-real-ip"], "203.0.113.5");
        assert_eq!(h["host"], "127.0.0.1:9000");
        assert_eq!(h["via"], "1.1 keygate");
    }

    #[test]
    fn a_trusted_proxy_keeps_its_forwarded_proto_and_host() {
        let upstream = HeaderValue::from_static("up:80");
        let mut h = map(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=198.51.100.1;proto=https"),
        ]);
        let hop = Hop {
            peer: Some("127.0.0.1".parse().unwrap()),
            client: Some("198.51.100.1".parse().unwrap()),
            peer_trusted: true,
            version: Version::HTTP_2,
            host: Some(HeaderValue::from_static("internal:8081")),
            upstream_host: &upstream,
        };
        prepare_request(&mut h, &hop);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 127.0.0.1");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1;proto=https, for=127.0.0.1"
        );
        assert_eq!(h["x-real-ip"], "198.51.100.1");
        assert_eq!(h["via"], "2 keygate");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "192.168.10.99",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip), ip.to_string().as_str());
        }
    }

    #[test]
    fn a_request_without_anything_to_remove_only_gains_headers() {
        let upstream = HeaderValue::from_static("up:80");
        let mut h = map(&[("accept", "*/*"), ("host", "gw:8081")]);
        let hop = Hop {
            peer: Some("10.1.2.3".parse().unwrap()),
            client: Some("10.1.2.3".parse().unwrap()),
            peer_trusted: false,
            version: Version::HTTP_11,
            host: Some(HeaderValue::from_static("gw:8081")),
            upstream_host: &upstream,
        };
        prepare_request(&mut h, &hop);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "host",
                "via",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
        assert_eq!(h["host"], "up:80");
    }

    #[test]
    fn paths_are_forwarded_as_checked() {
        let f = |p: &str| forwardable_path(p).map(|c| c.into_owned());
        assert_eq!(
            f("/api/v1/invoices/42").as_deref(),
            Some("/api/v1/invoices/42")
        );
        assert_eq!(f("/api/v1/invoices/").as_deref(), Some("/api/v1/invoices/"));
        assert_eq!(
            f("/api/v1/invoices/../webhooks").as_deref(),
            Some("/api/v1/webhooks")
        );
        assert_eq!(
            f("/api//v1/./invoices").as_deref(),
            Some("/api/v1/invoices")
        );
        assert_eq!(f("/api/v1/invoices/..").as_deref(), Some("/api/v1/"));
        assert_eq!(f("/../..").as_deref(), Some("/"));
        assert_eq!(f("/").as_deref(), Some("/"));
        assert_eq!(f("/a;b=c/d").as_deref(), Some("/a;b=c/d"));
        assert_eq!(f("/api/v1/caf%C3%A9").as_deref(), Some("/api/v1/caf%C3%A9"));
        for refused in [
            "/api/v1/invoices%2F..%2Fwebhooks",
            "/api/v1/invoices/%2e%2e/webhooks",
            "/api/v1/invoices/..;/webhooks",
            "/api/v1/invoices/.;x/webhooks",
            "/api/v1\\webhooks",
            "/api/v1/invoices%5cwebhooks",
            "api/v1/invoices",
        ] {
            assert_eq!(f(refused), None, "{refused}");
        }
    }
}
