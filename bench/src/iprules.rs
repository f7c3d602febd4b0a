//! IP access-control measurements, shared by `palisade-bench` and the integration tests:
//! propagation of a new rule to every node's data plane, a million-entry list (generation,
//! an independent reference for membership, import), lookup cost in process, and proxy
//! throughput with and without a large list.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::harness::TestCluster;
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
    entries: Vec<(u32, u8)>,
}

/// xorshift64*: reproducible without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// An address in 16.0.0.0-95.255.255.255.
    pub fn addr(&mut self) -> u32 {
        (16 << 24) + (self.next() % (80u64 << 24)) as u32
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
                let (net, len) = self.entries[(rng.next() % self.entries.len() as u64) as usize];
                let host_bits = 32 - u32::from(len);
                let host = if host_bits == 0 {
                    0
                } else {
                    (rng.next() as u32) & ((1u32 << host_bits) - 1)
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

/// Lookup cost in process for a list of `n` entries: nanoseconds per lookup for members and for
/// non-members, and for non-members with a Bloom filter over the single addresses in front.
pub struct LookupFigures {
    pub entries: usize,
    pub member_ns: f64,
    pub non_member_ns: f64,
    pub non_member_bloom_ns: f64,
    pub build_ms: f64,
    pub one_insert_us: f64,
    /// Resident memory the built list added to the process.
    pub memory_kib: u64,
}

pub fn lookup(n: usize, lookups: usize) -> LookupFigures {
    use palisade_edge::access::PrefixSet;
    use palisade_raft::ids::Cidr;
    let list = BigList::generate(n, 7);
    let cidrs: Vec<Cidr> = list
        .entries
        .iter()
        .map(|(net, len)| {
            Cidr::from_net(
                ipnet::Ipv4Net::new(Ipv4Addr::from(*net), *len)
                    .expect("valid")
                    .into(),
            )
        })
        .collect();
    let rss_before = rss_kib(std::process::id()).0;
    let t = Instant::now();
    let mut set = PrefixSet::default();
    for cidr in &cidrs {
        set.insert(*cidr, None);
    }
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let memory_kib = rss_kib(std::process::id()).0.saturating_sub(rss_before);
    // One more rule into the full list, on a clone as the edge view does it.
    let t = Instant::now();
    let rounds = 1000;
    for i in 0..rounds {
        let mut next = set.clone();
        next.insert(
            Cidr::from_net(ipnet::IpNet::from(IpAddr::from(Ipv4Addr::new(
                200,
                0,
                (i / 256) as u8,
                i as u8,
            )))),
            None,
        );
        std::hint::black_box(&next);
    }
    let one_insert_us = t.elapsed().as_secs_f64() * 1e6 / rounds as f64;

    let members = list.members(lookups.min(1 << 20), 11);
    let non_members = list.non_members(lookups.min(1 << 20), 13);
    let time = |addrs: &[u32], f: &dyn Fn(u32) -> bool| {
        let t = Instant::now();
        let mut hits = 0usize;
        for _ in 0..lookups.div_ceil(addrs.len()) {
            for &a in addrs {
                hits += usize::from(f(a));
            }
        }
        std::hint::black_box(hits);
        t.elapsed().as_secs_f64() * 1e9 / (lookups.div_ceil(addrs.len()) * addrs.len()) as f64
    };
    let member_ns = time(&members, &|a| {
        set.contains(IpAddr::from(Ipv4Addr::from(a)), 0)
    });
    let non_member_ns = time(&non_members, &|a| {
        set.contains(IpAddr::from(Ipv4Addr::from(a)), 0)
    });
    // The Bloom filter can only answer for exact addresses; the range lengths are probed anyway.
    let singles: Vec<u32> = list
        .entries
        .iter()
        .filter(|e| e.1 == 32)
        .map(|e| e.0)
        .collect();
    let mut bloom = bloomfilter::Bloom::new_for_fp_rate(singles.len().max(1), 0.01).expect("bloom");
    for a in &singles {
        bloom.set(a);
    }
    let mut ranges = PrefixSet::default();
    for (net, len) in list.entries.iter().filter(|e| e.1 != 32) {
        ranges.insert(
            Cidr::from_net(
                ipnet::Ipv4Net::new(Ipv4Addr::from(*net), *len)
                    .expect("valid")
                    .into(),
            ),
            None,
        );
    }
    let non_member_bloom_ns = time(&non_members, &|a| {
        let ip = IpAddr::from(Ipv4Addr::from(a));
        (bloom.check(&a) && set.contains(ip, 0)) || ranges.contains(ip, 0)
    });
    LookupFigures {
        entries: list.len(),
        member_ns,
        non_member_ns,
        non_member_bloom_ns,
        build_ms,
        one_insert_us,
        memory_kib,
    }
}

/// Closed-loop load with the suite's generator ([`crate::load`]): `conns` keep-alive
/// connections sending GET `/` for `host` with `X-Forwarded-For` drawn from `addrs` in turn and
/// `headers`, for `secs` seconds. Requests per second; any error or non-2xx answer fails it.
pub fn load(
    target: SocketAddr,
    host: &str,
    addrs: &[String],
    headers: &[(String, String)],
    conns: usize,
    secs: f64,
) -> Result<f64> {
    let mut t = crate::load::Target::new(target, host);
    t.xff = addrs.to_vec();
    t.headers = headers.to_vec();
    let spec = crate::load::Spec {
        conns,
        warmup: Duration::ZERO,
        measure: Duration::from_secs_f64(secs),
        mode: crate::load::Mode::Closed,
    };
    let o = crate::load::run(&[t], &spec).remove(0);
    if let Some(p) = o.problem() {
        bail!("load on {host}: {p}");
    }
    Ok(o.rate())
}

/// Resident and peak memory of a process, KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
