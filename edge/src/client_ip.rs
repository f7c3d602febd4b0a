//! The one client-IP resolver every later stage uses (rules, counters, challenge binding, logs,
//! `X-Forwarded-For` to upstreams): a disagreement between stages would be a bypass.

use std::net::IpAddr;

use hyper::HeaderMap;
use palisade_raft::ids::Cidr;

#[derive(Debug, Clone, Default)]
pub struct ClientIpResolver {
    trusted: Vec<Cidr>,
}

impl ClientIpResolver {
    pub fn new(trusted: Vec<Cidr>) -> Self {
        ClientIpResolver { trusted }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|c| c.net().contains(&ip))
    }

    /// `peer` is the socket peer, or the source a PROXY protocol header gave. When it is a
    /// trusted proxy and `headers` may be believed, `X-Forwarded-For` is walked from the right,
    /// skipping trusted hops; the first untrusted address is the client. An entry may carry a
    /// port (`203.0.113.5:1234`, `[2001:db8::1]:443`). An entry that is no address at all
    /// (`unknown`, garbage) means the trusted hop could not say who its client was: the client
    /// is then [`UNKNOWN_CLIENT`], which no allow list admits short of `0.0.0.0/0`. A header
    /// from an untrusted peer is ignored.
    pub fn resolve(&self, peer: IpAddr, headers: Option<&HeaderMap>) -> IpAddr {
        let peer = peer.to_canonical();
        let Some(headers) = headers.filter(|_| self.is_trusted(peer)) else {
            return peer;
        };
        let hops = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{0}"))
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip.to_canonical();
                    if !self.is_trusted(client) {
                        break;
                    }
                }
                None => return UNKNOWN_CLIENT,
            }
        }
        client
    }
}

/// The client of a request whose trusted proxy could not name it.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

static X_FORWARDED_FOR: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-forwarded-for");

/// One `X-Forwarded-For` entry: an address, with or without a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (inside, port) = rest.split_once(']')?;
        return (port.is_empty() || port.strip_prefix(':')?.parse::<u16>().is_ok())
            .then(|| inside.parse().ok())
            .flatten();
    }
    let (ip, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let r = ClientIpResolver::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let spoof = headers("1.2.3.4");
        assert_eq!(
            r.resolve("203.0.113.9".parse().unwrap(), Some(&spoof)),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            r.resolve("10.0.0.1".parse().unwrap(), Some(&spoof)),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // The client may prepend anything; the rightmost untrusted hop is the one the proxy saw.
        let chain = headers("6.6.6.6, 198.51.100.7, 10.0.0.2");
        assert_eq!(
            r.resolve("10.0.0.1".parse().unwrap(), Some(&chain)),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            r.resolve("::ffff:10.0.0.1".parse().unwrap(), Some(&spoof)),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ports_are_stripped_and_an_unstated_client_is_nobody_a_list_admits() {
        let r = ClientIpResolver::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let lb: IpAddr = "10.0.0.1".parse().unwrap();
        #[rustfmt::skip]
        let cases = [
            ("203.0.113.5:1234", "203.0.113.5"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("unknown", "0.0.0.0"),
            ("203.0.113.5, unknown", "0.0.0.0"),
            ("unknown, 203.0.113.5", "203.0.113.5"),
            ("203.0.113.5:http", "0.0.0.0"),
            ("", "0.0.0.0"),
        ];
        for (xff, want) in cases {
            assert_eq!(
                r.resolve(lb, Some(&headers(xff))),
                want.parse::<IpAddr>().unwrap(),
                "{xff:?}"
            );
        }
        // Without leave to believe the header (after a PROXY LOCAL header), the peer is the
        // client, trusted or not.
        assert_eq!(r.resolve(lb, None), lb);
    }
}
