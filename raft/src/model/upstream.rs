//! Which addresses an upstream may be. The edge proxies the public internet to a domain's
//! upstreams, so an upstream on the node's own side (its admin API, the loopback interface, the
//! cloud's metadata service) would hand that side to anyone who can send a request. The admin
//! API checks this when a domain is written; the edge checks it again on the address it
//! actually connects to, so a name that resolves there later is refused too.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::ids::Cidr;

/// Why an upstream address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    Loopback,
    LinkLocal,
    Metadata,
    Unspecified,
    Multicast,
    /// One of the node's own listeners (admin, cluster, public): never an upstream.
    OwnListener,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forbidden::Loopback => "a loopback address",
            Forbidden::LinkLocal => "a link-local address",
            Forbidden::Metadata => "a cloud metadata address",
            Forbidden::Unspecified => "the unspecified address",
            Forbidden::Multicast => "a multicast or broadcast address",
            Forbidden::OwnListener => "one of the node's own listeners",
        })
    }
}

impl Forbidden {
    /// Whether `upstream_allowed_networks` may let this kind through (a node's own listener
    /// it may not: proxying the public side into the admin API or back into the edge is never
    /// what an operator means).
    pub fn may_be_allowed(self) -> bool {
        self != Forbidden::OwnListener
    }
}

/// Metadata services reached at an ordinary (not link-local) address: Alibaba Cloud's, and
/// AWS's IPv6 one. 169.254.169.254 (AWS, GCP, Azure, OpenStack, …) is link-local already.
const METADATA: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)),
];

/// What kind of forbidden address `ip` is, if any, before any allowance.
pub fn kind_of(ip: IpAddr) -> Option<Forbidden> {
    let ip = ip.to_canonical();
    if METADATA.contains(&ip) || ip == IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)) {
        return Some(Forbidden::Metadata);
    }
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some(Forbidden::Loopback),
        IpAddr::V4(v4) if v4.is_link_local() => Some(Forbidden::LinkLocal),
        // 0.0.0.0/8 is "this network": connecting there reaches this host.
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some(Forbidden::Unspecified),
        IpAddr::V4(v4) if v4.is_multicast() || v4.is_broadcast() => Some(Forbidden::Multicast),
        IpAddr::V6(v6) if v6.is_loopback() => Some(Forbidden::Loopback),
        IpAddr::V6(v6) if v6.is_unspecified() => Some(Forbidden::Unspecified),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some(Forbidden::LinkLocal),
        IpAddr::V6(v6) if v6.is_multicast() => Some(Forbidden::Multicast),
        _ => None,
    }
}

/// The check, with what may override it: `allowed` (the cluster setting
/// `edge.upstream_allowed_networks` and the node's own `[edge] upstream_allowed_networks`) and
/// the node's listeners.
#[derive(Debug, Clone, Default)]
pub struct UpstreamPolicy {
    pub allowed: Vec<Cidr>,
    pub own_listeners: Vec<SocketAddr>,
}

impl UpstreamPolicy {
    /// Why the address may not be connected to, or `None` when it may.
    pub fn refusal(&self, addr: SocketAddr) -> Option<Forbidden> {
        if self.is_own_listener(addr) {
            return Some(Forbidden::OwnListener);
        }
        self.refusal_of_ip(addr.ip())
    }

    /// [`Self::refusal`] for an address whose port is not known yet (a name just resolved).
    pub fn refusal_of_ip(&self, ip: IpAddr) -> Option<Forbidden> {
        let kind = kind_of(ip)?;
        let allowed = kind.may_be_allowed() && self.allowed.iter().any(|c| c.contains(ip));
        (!allowed).then_some(kind)
    }

    /// A connection made: refused as [`Self::refusal`] does, and also when it reached this very
    /// host (its local and peer address are the same) on the port of a listener bound to every
    /// address, where the listener's own address says nothing.
    pub fn refusal_of_connection(&self, local: SocketAddr, peer: SocketAddr) -> Option<Forbidden> {
        if let Some(why) = self.refusal(peer) {
            return Some(why);
        }
        let same_host = local.ip().to_canonical() == peer.ip().to_canonical();
        let wildcard_port = self
            .own_listeners
            .iter()
            .any(|l| l.ip().is_unspecified() && l.port() == peer.port());
        (same_host && wildcard_port).then_some(Forbidden::OwnListener)
    }

    fn is_own_listener(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.own_listeners.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip().to_canonical() == ip
                    || (l.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> UpstreamPolicy {
        UpstreamPolicy {
            allowed: allowed.iter().map(|c| c.parse().unwrap()).collect(),
            own_listeners: vec![
                "10.0.0.5:7001".parse().unwrap(),
                "0.0.0.0:443".parse().unwrap(),
            ],
        }
    }

    #[rustfmt::skip]
    #[test]
    fn the_private_side_is_refused_unless_allowed() {
        let none = policy(&[]);
        let lo = policy(&["127.0.0.0/8", "::1/128"]);
        let cases: [(&str, Option<Forbidden>, Option<Forbidden>); 16] = [
            ("127.0.0.1:8080", Some(Forbidden::Loopback), None),
            ("127.9.9.9:80", Some(Forbidden::Loopback), None),
            ("[::1]:8080", Some(Forbidden::Loopback), None),
            ("[::ffff:127.0.0.1]:8080", Some(Forbidden::Loopback), None),
            ("169.254.169.254:80", Some(Forbidden::Metadata), Some(Forbidden::Metadata)),
            ("[::ffff:169.254.169.254]:80", Some(Forbidden::Metadata), Some(Forbidden::Metadata)),
            ("100.100.100.200:80", Some(Forbidden::Metadata), Some(Forbidden::Metadata)),
            ("[fd00:ec2::254]:80", Some(Forbidden::Metadata), Some(Forbidden::Metadata)),
            ("169.254.10.1:80", Some(Forbidden::LinkLocal), Some(Forbidden::LinkLocal)),
            ("[fe80::1]:80", Some(Forbidden::LinkLocal), Some(Forbidden::LinkLocal)),
            ("0.0.0.0:80", Some(Forbidden::Unspecified), Some(Forbidden::Unspecified)),
            ("[::]:80", Some(Forbidden::Unspecified), Some(Forbidden::Unspecified)),
            ("10.0.0.5:7001", Some(Forbidden::OwnListener), Some(Forbidden::OwnListener)),
            ("127.0.0.1:443", Some(Forbidden::OwnListener), Some(Forbidden::OwnListener)),
            ("10.0.0.5:8080", None, None),
            ("203.0.113.7:443", None, None),
        ];
        for (addr, refused, with_loopback) in cases {
            let a: SocketAddr = addr.parse().unwrap();
            assert_eq!(none.refusal(a), refused, "{addr}");
            assert_eq!(lo.refusal(a), with_loopback, "{addr} with loopback allowed");
        }
        // Allowing the metadata range lets it through; a node's own listener never is.
        let md = policy(&["169.254.0.0/16", "10.0.0.0/8"]);
        assert_eq!(md.refusal("169.254.169.254:80".parse().unwrap()), None);
        assert_eq!(md.refusal("10.0.0.5:7001".parse().unwrap()), Some(Forbidden::OwnListener));
    }

    #[test]
    fn a_connection_back_to_this_host_on_a_wildcard_listener_is_refused() {
        let p = policy(&[]);
        let here: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        assert_eq!(
            p.refusal_of_connection(here, "10.0.0.5:443".parse().unwrap()),
            Some(Forbidden::OwnListener)
        );
        assert_eq!(
            p.refusal_of_connection(here, "10.0.0.6:443".parse().unwrap()),
            None
        );
        assert_eq!(
            p.refusal_of_connection(here, "10.0.0.5:8443".parse().unwrap()),
            None
        );
    }
}
