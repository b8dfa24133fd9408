//! Which addresses a fetch may connect to: the rule against a fetcher (or a
//! server it talks to) steering requests into the node's own network.
//!
//! An origin the operator wrote down (the service's `url`, an
//! `allowed_outbound_hosts` entry, a credential endpoint its method names)
//! is reached at whatever its name resolves to. An origin a fetch *learned*
//! (a redirect target, a token realm: see [`OriginPolicy`]) reaches only
//! public addresses, unless the operator granted that very address: a
//! registry may send a blob to a CDN, not to `169.254.169.254` or to the
//! node's loopback. The check is made on the addresses a name resolves to
//! when the connection is made (by the host's resolver, `net`), so a name
//! that resolves to something else the second time (DNS rebinding) gains
//! nothing; a literal address is checked before the request is sent.
//!
//! [`OriginPolicy`]: super::OriginPolicy

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Grant;

/// What a refusal of a learned origin's non-public address tells the
/// operator (docs/architecture.md, "Addresses").
pub(crate) const LEARNED_PRIVATE: &str = "a redirect target or token realm reaches a loopback, link-local or private address only when the service's url or allowed_outbound_hosts names that address or name";

/// The kind of a non-public address, for refusals; `None` for a public one.
pub fn special_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_class(v4),
            None => v6_class(v6),
        },
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_link_local() {
        "link-local"
    } else if ip.is_private() {
        "private"
    } else if a == 100 && (64..128).contains(&b) {
        "shared (carrier-grade NAT)"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        "multicast or reserved"
    } else {
        return None;
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local"
    } else if first & 0xfe00 == 0xfc00 {
        "private (unique local)"
    } else if ip.is_multicast() {
        "multicast or reserved"
    } else {
        return None;
    })
}

impl Grant {
    /// Whether `host` is the host of an origin the operator granted (by
    /// name or literal address, any port): such a host is reached at any
    /// address.
    pub fn names_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.origins.iter().any(|o| o.host_eq(host))
    }

    /// Why a connection for `host` may not go to `ip`, if it may not: a
    /// host the grant does not name reaches non-public addresses only where
    /// the grant names that address.
    pub fn address_refusal(&self, host: &str, ip: IpAddr) -> Option<&'static str> {
        if self.names_host(host) {
            return None;
        }
        let class = special_class(ip)?;
        let granted = self.origins.iter().any(|o| o.host_ip() == Some(ip));
        (!granted).then_some(class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Origin;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn classes_cover_loopback_link_local_private_and_mapped_forms() {
        for (address, class) in [
            ("127.0.0.1", Some("loopback")),
            ("127.8.9.10", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("169.254.169.254", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("fd00::1", Some("private (unique local)")),
            ("100.64.0.1", Some("shared (carrier-grade NAT)")),
            ("0.0.0.0", Some("unspecified")),
            ("::", Some("unspecified")),
            ("224.0.0.1", Some("multicast or reserved")),
            ("255.255.255.255", Some("multicast or reserved")),
            ("8.8.8.8", None),
            ("172.32.0.1", None),
            ("2606:4700::1111", None),
            ("::ffff:8.8.8.8", None),
        ] {
            assert_eq!(special_class(ip(address)), class, "{address}");
        }
    }

    #[test]
    fn a_learned_host_reaches_private_addresses_only_where_granted() {
        let mut grant = Grant::default();
        grant.add_origin(Origin::of_url("http://127.0.0.1:5000").unwrap());
        grant.add_origin(Origin::of_url("https://registry.internal").unwrap());
        // Granted hosts reach anything they resolve to.
        assert_eq!(
            grant.address_refusal("registry.internal", ip("10.0.0.5")),
            None
        );
        assert_eq!(grant.address_refusal("127.0.0.1", ip("127.0.0.1")), None);
        // A learned name resolving to the granted address (any port).
        assert_eq!(grant.address_refusal("localhost", ip("127.0.0.1")), None);
        // ... but not to another loopback address, or the metadata service.
        assert_eq!(
            grant.address_refusal("localhost", ip("::1")),
            Some("loopback")
        );
        assert_eq!(
            grant.address_refusal("cdn.example", ip("169.254.169.254")),
            Some("link-local")
        );
        assert_eq!(
            grant.address_refusal("cdn.example", ip("93.184.216.34")),
            None
        );
        // Names compare without case; bracketed IPv6 hosts as addresses.
        assert!(grant.names_host("REGISTRY.internal"));
        grant.add_origin(Origin::of_url("http://[::1]:8080").unwrap());
        assert!(grant.names_host("[::1]"));
        assert_eq!(grant.address_refusal("localhost", ip("::1")), None);
    }
}
