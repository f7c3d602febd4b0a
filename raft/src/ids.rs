//! Identities that are valid by construction: a value of these types has been parsed.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A node's id inside one cluster. Ids are allocated by the cluster and never reused.
pub type NodeId = u64;

/// Why an identifier was refused, naming the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {why}")]
pub struct InvalidId {
    pub what: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn invalid(what: &'static str, value: &str, why: &'static str) -> InvalidId {
    InvalidId {
        what,
        value: value.to_string(),
        why,
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $parse:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                $parse(s).map($name)
            }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                s.parse()
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn parse_slug(s: &str) -> Result<String, InvalidId> {
    const WHAT: &str = "project id";
    if s.is_empty() || s.len() > 63 {
        return Err(invalid(WHAT, s, "must be 1 to 63 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(invalid(WHAT, s, "may hold only a-z, 0-9, '-' and '_'"));
    }
    Ok(s.to_string())
}

/// A DNS host name in lower case, optionally a one-label wildcard (`*.example.com`).
fn parse_hostname(s: &str) -> Result<String, InvalidId> {
    const WHAT: &str = "hostname";
    let lower = s.trim_end_matches('.').to_ascii_lowercase();
    if lower.is_empty() || lower.len() > 253 {
        return Err(invalid(WHAT, s, "must be 1 to 253 characters"));
    }
    if lower.parse::<IpAddr>().is_ok() {
        return Err(invalid(WHAT, s, "is an IP address, not a host name"));
    }
    let rest = lower.strip_prefix("*.").unwrap_or(&lower);
    if rest.split('.').count() < 1 {
        return Err(invalid(WHAT, s, "has no labels"));
    }
    for label in rest.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid(
                WHAT,
                s,
                "has an empty label or one over 63 characters",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid(
                WHAT,
                s,
                "may hold only letters, digits, '-' and one leading '*.'",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(WHAT, s, "has a label that starts or ends with '-'"));
        }
    }
    Ok(lower)
}

fn parse_name(s: &str) -> Result<String, InvalidId> {
    const WHAT: &str = "name";
    if s.is_empty() || s.chars().count() > 255 {
        return Err(invalid(WHAT, s, "must be 1 to 255 characters"));
    }
    if s.contains('/') || s.chars().any(char::is_control) {
        return Err(invalid(WHAT, s, "may not hold '/' or control characters"));
    }
    Ok(s.to_string())
}

string_id!(
    /// A project: the unit that owns domains, IP rules and bot-protection policy.
    ProjectId,
    parse_slug
);
string_id!(
    /// A host name as routed by the edge (`api.example.com`, `*.example.com`).
    Hostname,
    parse_hostname
);
string_id!(
    /// A free-form record name (certificate, lease, key id) that is safe inside a store key.
    Name,
    parse_name
);

impl Hostname {
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

/// An IPv4 or IPv6 network in canonical form (host bits cleared); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(ipnet::IpNet);

impl Cidr {
    pub fn net(&self) -> ipnet::IpNet {
        self.0
    }

    /// Whether `ip` lies in this range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.net().contains(&ip.to_canonical())
    }

    pub fn from_net(net: ipnet::IpNet) -> Cidr {
        Cidr(canonical_net(net))
    }
}

/// Host bits cleared, and an IPv4-mapped IPv6 range (`::ffff:a.b.c.d/n`, n >= 96) written as the
/// IPv4 range it maps, so that a rule matches however the client's address was spelled.
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    let net = net.trunc();
    if let ipnet::IpNet::V6(v6) = net {
        if let (Some(v4), true) = (v6.addr().to_ipv4_mapped(), v6.prefix_len() >= 96) {
            if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                return ipnet::IpNet::V4(n);
            }
        }
    }
    net
}

impl FromStr for Cidr {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, InvalidId> {
        let t = s.trim();
        if let Ok(net) = t.parse::<ipnet::IpNet>() {
            return Ok(Cidr(canonical_net(net)));
        }
        match t.parse::<IpAddr>() {
            Ok(addr) => Ok(Cidr(canonical_net(ipnet::IpNet::from(addr)))),
            Err(_) => Err(invalid(
                "CIDR",
                s,
                "is neither an IP address nor ADDRESS/PREFIX within range",
            )),
        }
    }
}
impl TryFrom<String> for Cidr {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        s.parse()
    }
}
impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}
impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one client write so that a retry of it is applied once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    /// A fresh random id (128 bits).
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        crate::crypto::fill_random(&mut b);
        RequestId(hex::encode(b))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl FromStr for RequestId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
            return Err(invalid(
                "request id",
                s,
                "must be 1 to 128 printable characters without '/'",
            ));
        }
        Ok(RequestId(s.to_string()))
    }
}
impl TryFrom<String> for RequestId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        s.parse()
    }
}
impl From<RequestId> for String {
    fn from(v: RequestId) -> String {
        v.0
    }
}
impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_lowercased_and_checked() {
        assert_eq!(
            "API.Example.com.".parse::<Hostname>().unwrap().as_str(),
            "api.example.com"
        );
        assert!("*.example.com".parse::<Hostname>().unwrap().is_wildcard());
        for bad in [
            "",
            "a..b",
            "-a.com",
            "a b.com",
            "*.*.a.com",
            "10.0.0.1",
            "a/b",
        ] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cidrs_are_canonical() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "2001:db8::1".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            "::ffff:10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            "::ffff:10.0.0.0/104".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "::ffff:0:0/80".parse::<Cidr>().unwrap().to_string(),
            "::/80"
        );
        let e = "10.0.0.0/33".parse::<Cidr>().unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
    }
}
