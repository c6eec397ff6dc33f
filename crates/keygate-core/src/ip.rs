//! IP allowlists: addresses and CIDR blocks, IPv4 and IPv6.

use std::net::IpAddr;

use ipnet::IpNet;

/// Most entries one allowlist may hold.
pub const MAX_ENTRIES: usize = 256;

/// An allowlist entry that is neither an address nor a CIDR block. The message shows the
/// entry with key material hidden.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid IP allowlist entry {:?}: expected an address or a CIDR block",
    crate::key::obscure(.0, 64)
)]
pub struct BadAllowlistEntry(pub String);

/// A key's allowlist. Empty means every address is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpAllowlist(Vec<IpNet>);

impl IpAllowlist {
    /// Parses addresses (`203.0.113.7`, `2001:db8::1`) and blocks (`10.0.0.0/8`).
    /// Host bits of a block are cleared, so `10.1.2.3/8` is stored as `10.0.0.0/8`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadAllowlistEntry> {
        if entries.len() > MAX_ENTRIES {
            return Err(BadAllowlistEntry(format!("{} entries", entries.len())));
        }
        let mut nets = entries
            .iter()
            .map(|e| {
                let e = e.as_ref().trim();
                e.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadAllowlistEntry(e.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        nets.sort();
        nets.dedup();
        Ok(IpAllowlist(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Is `ip` allowed? IPv4 clients seen through an IPv6 socket (`::ffff:a.b.c.d`) match
    /// IPv4 entries.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let ip = canonical_ip(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Does this list allow every address `other` allows? An empty list allows all, so it
    /// covers anything, and only an empty list covers an empty one.
    pub fn covers(&self, other: &IpAllowlist) -> bool {
        if self.0.is_empty() {
            return true;
        }
        !other.0.is_empty()
            && other
                .0
                .iter()
                .all(|o| self.0.iter().any(|mine| mine.contains(o)))
    }

    /// Canonical text: single addresses without `/32` or `/128`.
    pub fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|n| {
                if n.prefix_len() == n.max_prefix_len() {
                    n.addr().to_string()
                } else {
                    n.to_string()
                }
            })
            .collect()
    }
}

/// Maps an IPv4-mapped IPv6 address to its IPv4 form.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_allows_all() {
        assert!(IpAllowlist::default().allows(ip("198.51.100.1")));
    }

    #[test]
    fn addresses_and_blocks_match() {
        let list = IpAllowlist::parse(&["203.0.113.7", "10.1.2.3/8", "2001:db8::/32"]).unwrap();
        assert_eq!(
            list.to_strings(),
            ["10.0.0.0/8", "203.0.113.7", "2001:db8::/32"]
        );
        assert!(list.allows(ip("203.0.113.7")));
        assert!(!list.allows(ip("203.0.113.8")));
        assert!(list.allows(ip("10.200.0.1")));
        assert!(list.allows(ip("::ffff:10.0.0.1")));
        assert!(list.allows(ip("2001:db8::42")));
        assert!(!list.allows(ip("2001:db9::1")));
    }

    #[test]
    fn coverage() {
        let wide = IpAllowlist::parse(&["10.0.0.0/8"]).unwrap();
        let narrow = IpAllowlist::parse(&["10.1.0.0/16", "10.2.3.4"]).unwrap();
        let other = IpAllowlist::parse(&["192.0.2.0/24"]).unwrap();
        assert!(wide.covers(&narrow));
        assert!(!narrow.covers(&wide));
        assert!(!wide.covers(&other));
        assert!(!wide.covers(&IpAllowlist::default()));
        assert!(IpAllowlist::default().covers(&wide));
    }

    /// Found by the secret-hygiene test: a key pasted into an allowlist came back whole.
    #[test]
    fn a_key_given_as_an_entry_is_not_echoed() {
        let key = crate::KeyFormat::new("kg", true)
            .unwrap()
            .generate(crate::Environment::Test)
            .unwrap();
        let message = IpAllowlist::parse(&[key.expose()]).unwrap_err().to_string();
        assert!(!message.contains(&key.expose()[8..24]), "{message}");
        let message = IpAllowlist::parse(&["10.0.0.300"]).unwrap_err().to_string();
        assert!(message.contains("10.0.0.300"), "{message}");
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "localhost", "10.0.0.0/33", "1.2.3", "::g"] {
            assert!(IpAllowlist::parse(&[bad]).is_err(), "{bad:?}");
        }
    }
}
