//! A free loopback port for a server a test starts in another process.
//!
//! Binding port 0 and dropping the listener hands out a port from the kernel's ephemeral
//! range, where every outgoing connection (to PostgreSQL, to the server under test) also
//! takes its local port; one of them can grab it before the child binds it ("Address
//! already in use"). A port below that range is never taken by an outgoing connection, so
//! only another test could collide: the ports are picked at random and never handed out
//! twice in one process.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// The first port of the kernel's ephemeral range (32768 on Linux by default).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

pub fn free_port() -> u16 {
    let high = ephemeral_start().max(20_000);
    let low = 10_000u16;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..1_000 {
        let random = RandomState::new().hash_one(std::time::Instant::now());
        let port = low + (random % u64::from(high - low)) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port below the ephemeral range {high}");
}
