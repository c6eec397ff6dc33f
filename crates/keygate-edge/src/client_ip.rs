//! The client address a request comes from: the socket peer, or what a trusted proxy says.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;
use keygate_core::ip::canonical_ip;

/// The peer, unless the peer is a trusted proxy: then the nearest untrusted address in
/// `X-Forwarded-For`, or `X-Real-IP`. A client cannot spoof its way past an allowlist by
/// sending those headers itself.
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = canonical_ip(peer?.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(canonical_ip)
        .collect();
    if forwarded.is_empty() {
        forwarded = rfc7239_for(headers);
    }
    if let Some(ip) = forwarded.iter().rev().find(|ip| !is_trusted(ip)) {
        return Some(*ip);
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map(canonical_ip)
        .or(Some(peer))
}

/// The `for=` addresses of RFC 7239 `Forwarded` headers, in order (`for=192.0.2.1`,
/// `for="[2001:db8::1]:443"`); obfuscated or unknown nodes are skipped.
fn rfc7239_for(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all(axum::http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .flat_map(|element| element.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("for") {
                return None;
            }
            let value = value.trim().trim_matches('"');
            let host = match value.strip_prefix('[') {
                Some(v6) => v6.split(']').next()?,
                None => value.split(':').next()?,
            };
            host.parse::<IpAddr>().ok().map(canonical_ip)
        })
        .collect()
}

/// Did the client reach us over TLS? Only a trusted proxy's `X-Forwarded-Proto` is
/// believed (the last value, the one the nearest proxy added); anyone else could claim it.
pub fn forwarded_https(peer: Option<SocketAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> bool {
    let Some(peer) = peer.map(|p| canonical_ip(p.ip())) else {
        return false;
    };
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return false;
    }
    headers
        .get_all("x-forwarded-proto")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", xff.parse().unwrap());
        m
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        assert_eq!(
            client_ip(Some(stranger), &h("10.0.0.1"), &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(proxy), &h("198.51.100.7, 127.0.0.2"), &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(proxy), &HeaderMap::new(), &trusted),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(proxy), &h("10.0.0.1"), &[]),
            Some("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn rfc7239_forwarded_counts_like_x_forwarded_for() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "forwarded",
            "for=198.51.100.9;proto=https, for=\"[2001:db8::1]:443\", for=10.0.0.2"
                .parse()
                .unwrap(),
        );
        let peer = |ip: &str| Some(SocketAddr::new(ip.parse().unwrap(), 1));
        // From a trusted proxy: the nearest untrusted address.
        assert_eq!(
            client_ip(peer("10.0.0.1"), &headers, &trusted),
            Some("2001:db8::1".parse().unwrap())
        );
        // From anyone else: the peer, whatever the header claims.
        assert_eq!(
            client_ip(peer("203.0.113.4"), &headers, &trusted),
            Some("203.0.113.4".parse().unwrap())
        );
    }

    #[test]
    fn forwarded_proto_counts_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let mut https = HeaderMap::new();
        https.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(forwarded_https(Some(proxy), &https, &trusted));
        assert!(!forwarded_https(Some(stranger), &https, &trusted));
        assert!(!forwarded_https(Some(proxy), &https, &[]));
        assert!(!forwarded_https(Some(proxy), &HeaderMap::new(), &trusted));
        let mut chain = HeaderMap::new();
        chain.insert("x-forwarded-proto", "https, http".parse().unwrap());
        assert!(!forwarded_https(Some(proxy), &chain, &trusted));
    }
}
