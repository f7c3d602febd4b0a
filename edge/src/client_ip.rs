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
    /// trusted proxy, `X-Forwarded-For` is walked from the right, skipping trusted hops; the first
    /// untrusted address is the client. A header from an untrusted peer is ignored.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip.to_canonical();
                    if !self.is_trusted(client) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
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
            r.resolve("203.0.113.9".parse().unwrap(), &spoof),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            r.resolve("10.0.0.1".parse().unwrap(), &spoof),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // The client may prepend anything; the rightmost untrusted hop is the one the proxy saw.
        let chain = headers("6.6.6.6, 198.51.100.7, 10.0.0.2");
        assert_eq!(
            r.resolve("10.0.0.1".parse().unwrap(), &chain),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            r.resolve("::ffff:10.0.0.1".parse().unwrap(), &spoof),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }
}
