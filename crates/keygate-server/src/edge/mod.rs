//! What every listener of this crate shares: the connection layer, the request context
//! (request id, prechecks, access log, metrics of edge outcomes) and the JSON extractor.

pub mod access_log;
pub mod json;
pub mod listener;
pub mod middleware;

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use keygate_edge::client_ip::client_ip;

use crate::AppState;

/// The client address of a request: the socket peer, or what a trusted proxy says.
pub fn request_ip(parts: &Parts, state: &AppState) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    client_ip(peer, &parts.headers, &state.http.trusted_proxies)
}

/// Was this request made over TLS (directly, or through a trusted proxy that says so)?
pub fn is_https(parts: &Parts, state: &AppState) -> bool {
    if parts.uri.scheme_str() == Some("https") {
        return true;
    }
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    keygate_edge::client_ip::forwarded_https(peer, &parts.headers, &state.http.trusted_proxies)
}
