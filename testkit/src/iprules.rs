//! Helpers for IP-list tests and measurements: a plain-HTTP site, a probe on every node,
//! waiting until every node answers a status, propagation timing, and a deterministic list of a
//! million entries with an independent membership reference.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cluster::TestCluster;
use crate::probe::Probe;

/// A project and a plain-HTTP domain for it (no redirect), proxied to `upstream`; bot protection
/// off, since these measure the proxy and the IP lists (the `bot` scenarios set their own).
pub fn site(
    c: &TestCluster,
    node: usize,
    project: &str,
    host: &str,
    upstream: SocketAddr,
) -> Result<()> {
    let r = c.post(
        node,
        "/v1/projects",
        json!({ "id": project, "name": project, "bot": { "mode": "off" } }),
        None,
    )?;
    if r.status != 201 && r.status != 409 {
        bail!("creating project {project}: {} {}", r.status, r.body);
    }
    let r = c.put(
        node,
        &format!("/v1/domains/{host}"),
        json!({ "project": project, "upstreams": [upstream.to_string()], "redirect_https": false }),
    )?;
    if r.status != 201 {
        bail!("creating domain {host}: {} {}", r.status, r.body);
    }
    Ok(())
}

/// The public HTTP address of every node.
pub fn http_addrs(c: &TestCluster) -> Vec<SocketAddr> {
    c.nodes
        .iter()
        .map(|n| n.http_addr.parse().expect("node http address"))
        .collect()
}

/// A keep-alive client to every node's public HTTP port, from 127.0.0.1.
pub fn probes(c: &TestCluster) -> Vec<Probe> {
    http_addrs(c)
        .into_iter()
        .map(|a| Probe::new(a, None))
        .collect()
}

/// Wait until every node answers `want` for `host` as seen from `xff`; the time it took.
pub fn until_every_node(
    probes: &mut [Probe],
    host: &str,
    xff: &str,
    want: u16,
    within: Duration,
) -> Result<Duration> {
    let t0 = Instant::now();
    let mut done = vec![false; probes.len()];
    while done.iter().any(|d| !d) {
        for (i, p) in probes.iter_mut().enumerate() {
            if !done[i] && p.status(host, Some(xff))? == want {
                done[i] = true;
            }
        }
        if t0.elapsed() > within {
            bail!("after {within:?}, nodes {done:?} (true = answers {want}) for {xff}");
        }
    }
    Ok(t0.elapsed())
}

/// `trials` times: block a fresh address through node `via`'s admin API, then time from the
/// API's answer until every node's edge refuses it (403). Sorted.
pub fn propagation(
    c: &TestCluster,
    via: usize,
    project: &str,
    host: &str,
    trials: usize,
    second_octet: u8,
) -> Result<Vec<Duration>> {
    let mut probes = probes(c);
    let mut samples = Vec::with_capacity(trials);
    for i in 0..trials {
        let addr =
            Ipv4Addr::new(10, second_octet, (i / 250) as u8, (i % 250 + 1) as u8).to_string();
        until_every_node(&mut probes, host, &addr, 200, Duration::from_secs(5))
            .with_context(|| format!("{addr} before its rule"))?;
        let r = c.post(
            via,
            &format!("/v1/projects/{project}/ip-rules"),
            json!({ "list": "block", "cidr": addr }),
            None,
        )?;
        if r.status != 201 {
            bail!("adding rule {addr}: {} {}", r.status, r.body);
        }
        let took = until_every_node(&mut probes, host, &addr, 403, Duration::from_secs(5))
            .with_context(|| format!("{addr} after its rule"))?;
        samples.push(took);
    }
    samples.sort();
    Ok(samples)
}

/// A deterministic list of exactly `n` distinct entries in 16.0.0.0-95.255.255.255: 97% single
/// addresses, 2.5% /24s, 0.5% /16s, with an independent membership reference.
pub struct BigList {
    pub text: String,
    singles: HashSet<u32>,
    nets24: HashSet<u32>,
    nets16: HashSet<u32>,
    /// Every entry: network address and prefix length.
    pub entries: Vec<(u32, u8)>,
}

/// xorshift64*: reproducible without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// An address in 16.0.0.0-95.255.255.255.
    pub fn addr(&mut self) -> u32 {
        (16 << 24) + (self.next_u64() % (80u64 << 24)) as u32
    }
}

impl BigList {
    pub fn generate(n: usize, seed: u64) -> BigList {
        let mut rng = Rng::new(seed);
        let (n16, n24) = (n / 200, n / 40);
        let mut l = BigList {
            text: String::with_capacity(n * 16),
            singles: HashSet::new(),
            nets24: HashSet::new(),
            nets16: HashSet::new(),
            entries: Vec::with_capacity(n),
        };
        while l.nets16.len() < n16 {
            let net = rng.addr() & 0xffff_0000;
            if l.nets16.insert(net) {
                l.entries.push((net, 16));
            }
        }
        while l.nets24.len() < n24 {
            let net = rng.addr() & 0xffff_ff00;
            if l.nets24.insert(net) {
                l.entries.push((net, 24));
            }
        }
        while l.entries.len() < n {
            let a = rng.addr();
            if l.singles.insert(a) {
                l.entries.push((a, 32));
            }
        }
        for (net, len) in &l.entries {
            let ip = Ipv4Addr::from(*net);
            if *len == 32 {
                l.text.push_str(&format!("{ip}\n"));
            } else {
                l.text.push_str(&format!("{ip}/{len}\n"));
            }
        }
        l
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Membership by the definition, not by Palisade's structure.
    pub fn covers(&self, a: u32) -> bool {
        self.singles.contains(&a)
            || self.nets24.contains(&(a & 0xffff_ff00))
            || self.nets16.contains(&(a & 0xffff_0000))
    }

    /// `n` addresses inside entries (a random host of a random entry).
    pub fn members(&self, n: usize, seed: u64) -> Vec<u32> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                let (net, len) =
                    self.entries[(rng.next_u64() % self.entries.len() as u64) as usize];
                let host_bits = 32 - u32::from(len);
                let host = if host_bits == 0 {
                    0
                } else {
                    (rng.next_u64() as u32) & ((1u32 << host_bits) - 1)
                };
                net | host
            })
            .collect()
    }

    /// `n` addresses from the same range that no entry covers.
    pub fn non_members(&self, n: usize, seed: u64) -> Vec<u32> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let a = rng.addr();
            if !self.covers(a) {
                out.push(a);
            }
        }
        out
    }
}
