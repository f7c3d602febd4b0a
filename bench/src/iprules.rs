//! IP access-control measurements: lookup cost in process for a million-entry list, and proxy
//! throughput with and without a large list. (The list itself, propagation timing and the probes
//! are shared with the tests: [`palisade_testkit::iprules`].)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub use palisade_testkit::iprules::{
    http_addrs, probes, propagation, site, until_every_node, BigList, Rng,
};
pub use palisade_testkit::proc::rss_kib;

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
