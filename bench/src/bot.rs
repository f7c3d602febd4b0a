//! Bot protection's costs: verifying a clearance cookie in process, and proxy throughput with
//! bot protection off, automatic (every request counted, nobody challenged) and always on (every
//! request carries a cookie that is verified).

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{bail, Result};
use palisade_edge::bot::challenge::{
    clearance_binding, project_tag, work_bits, Clearance, Expect, Keyring, SigningKey,
};
use serde_json::{json, Value};

use crate::cpu::{cpu_seconds, pin_apart};
use crate::iprules::{http_addrs, load, site};
use palisade_testkit::cluster::TestCluster;
use palisade_testkit::probe::Probe;
use palisade_testkit::wait;

pub const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) palisade-bench";

/// Nanoseconds per verification of a valid cookie and of one with a bad MAC, over `n` each.
pub fn verify_cost(n: u32) -> (f64, f64) {
    let mut ring = Keyring::default();
    for i in 0..3u8 {
        ring.insert(SigningKey::new([i; 8], &[i; 32], i == 2));
    }
    let key = ring.active().expect("an active key").clone();
    let ip = "198.51.100.7".parse().unwrap();
    let c = Clearance {
        kid: key.kid,
        issued_ms: 0,
        expires_ms: u64::MAX,
        level: 17,
        epoch: 0,
        project: project_tag("shop"),
        binding: clearance_binding(ip, USER_AGENT.as_bytes()),
    };
    let good = c.encode(&key);
    let mut bad = good.clone().into_bytes();
    let last = bad.len() - 2;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    let time = |cookie: &str, ok: bool| {
        let t = Instant::now();
        for _ in 0..n {
            // What the edge does per request: the binding and project hashes, then the MAC.
            let expect = Expect {
                now_ms: 1,
                project: project_tag(std::hint::black_box("shop")),
                epoch: 0,
                binding: clearance_binding(ip, std::hint::black_box(USER_AGENT.as_bytes())),
            };
            let r = Clearance::verify(&ring, std::hint::black_box(cookie), &expect);
            assert_eq!(r.is_ok(), ok);
        }
        t.elapsed().as_nanos() as f64 / f64::from(n)
    };
    (time(&good, true), time(&bad, false))
}

pub fn set_bot(c: &TestCluster, project: &str, policy: Value) -> Result<()> {
    let r = c.put(0, &format!("/v1/projects/{project}/bot?wait=all"), policy)?;
    if r.status != 200 {
        bail!("bot policy of {project}: {} {}", r.status, r.body);
    }
    Ok(())
}

/// Pass the challenge of `host` as a browser would (solving the proof of work here), as client
/// `xff` (sent as `X-Forwarded-For`) or as the socket's address; the cookie.
pub fn clearance_cookie(target: SocketAddr, host: &str, xff: Option<&str>) -> Result<String> {
    let mut p = Probe::new(target, None)
        .with_header("user-agent", USER_AGENT)
        .with_header("accept", "text/html");
    let mut last = None;
    let page = wait::until(
        &format!("a challenge page from {host}"),
        std::time::Duration::from_secs(30),
        || match p.get(host, "/", xff) {
            Ok(a) if a.status == 403 => Some(Ok(String::from_utf8_lossy(&a.body).into_owned())),
            Ok(a) => {
                last = Some(a.status);
                None
            }
            Err(e) => Some(Err(e)),
        },
    )
    .map_err(|e| anyhow::anyhow!("{e} (last answer {last:?})"))??;
    let pick = |anchor: &str| -> Result<String> {
        let at = page
            .find(anchor)
            .ok_or_else(|| anyhow::anyhow!("no {anchor} in the page"))?
            + anchor.len();
        Ok(page[at..at + page[at..].find('"').unwrap_or(0)].to_string())
    };
    let token = pick("name=\"t\" value=\"")?;
    let seed: [u8; 16] = hex::decode(pick("data-seed=\"")?)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad seed"))?;
    let bits: u32 = pick("data-bits=\"")?.parse()?;
    let nonce = (0u32..)
        .map(|n| format!("{n:08x}"))
        .find(|n| work_bits(&seed, n) >= bits)
        .expect("a nonce exists");
    let a = p.get(
        host,
        &format!("/.well-known/palisade/verify?t={token}&n={nonce}&r=%2F"),
        xff,
    )?;
    let cookie = a
        .header("set-cookie")
        .ok_or_else(|| anyhow::anyhow!("answer refused: {}", a.status))?;
    Ok(cookie.split(';').next().unwrap_or("").to_string())
}

/// One measured run: requests a second, and the node's CPU time per request in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub per_second: f64,
    pub cpu_us: f64,
}

/// Proxy requests/s through one node for three projects, measured alternately `rounds` times:
/// bot protection off, automatic (counted, not challenged) and always on with a valid cookie.
pub fn throughput(bin: &std::path::Path, secs: f64, rounds: usize) -> Result<[Vec<Run>; 3]> {
    let up = palisade_testkit::probe::Upstream::spawn()?;
    let c = TestCluster::start(bin, 1, &[])?;
    let hosts = ["off.test", "auto.test", "on.test"];
    for (project, host) in ["off", "auto", "on"].iter().zip(hosts) {
        site(&c, 0, project, host, up.addr)?;
    }
    set_bot(&c, "off", json!({ "mode": "off" }))?;
    // Thresholds no benchmark client reaches: every request is counted, none challenged.
    let never = json!({ "threshold": 10_000_000, "window_seconds": 60 });
    set_bot(
        &c,
        "auto",
        json!({ "mode": "automatic", "triggers": { "request_rate": never, "request_rate_v6_64": never, "missing_headers": never, "client_errors": never } }),
    )?;
    set_bot(
        &c,
        "on",
        json!({ "mode": "always_on", "difficulty_bits": 8 }),
    )?;
    let target = http_addrs(&c)[0];
    let pinned = match c.nodes[0].pid() {
        Some(pid) => pin_apart(pid),
        None => false,
    };
    eprintln!(
        "{}",
        match pinned {
            true => "node pinned to core 0; the load generator and upstream to the others",
            false => "not pinned (taskset missing or one core): node and load share the cores",
        }
    );
    let cookie = clearance_cookie(target, "on.test", None)?;
    let headers = vec![
        ("user-agent".to_string(), USER_AGENT.to_string()),
        ("accept".to_string(), "text/html".to_string()),
        ("cookie".to_string(), cookie),
    ];
    let none: Vec<String> = Vec::new();
    load(target, hosts[2], &none, &headers, 16, 1.0)?;
    let pid = c.nodes[0].pid().unwrap_or(0);
    let mut out: [Vec<Run>; 3] = Default::default();
    for _ in 0..rounds {
        for (i, host) in hosts.iter().enumerate() {
            let cpu = cpu_seconds(pid);
            let per_second = load(target, host, &none, &headers, 16, secs)?;
            let cpu_us = (cpu_seconds(pid) - cpu) * 1e6 / (per_second * secs);
            out[i].push(Run { per_second, cpu_us });
        }
    }
    Ok(out)
}

/// What spraying distinct IPv6 sources through a node does to its memory.
pub struct Spray {
    pub requests: u64,
    pub seconds: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub peak_kib: u64,
    pub decisions: usize,
}

/// Send `n` requests through one node (trusted proxy 127.0.0.1), each from a different IPv6
/// address in a different /64, to a project in automatic mode with default triggers.
pub fn spray(bin: &std::path::Path, n: u64) -> Result<Spray> {
    let up = palisade_testkit::probe::Upstream::spawn()?;
    let c = TestCluster::start(bin, 1, &[("PALISADE_EDGE_TRUSTED_PROXIES", "127.0.0.1/32")])?;
    site(&c, 0, "shop", "shop.test", up.addr)?;
    set_bot(&c, "shop", json!({ "mode": "automatic" }))?;
    let target = http_addrs(&c)[0];
    let pid = c.nodes[0]
        .pid()
        .ok_or_else(|| anyhow::anyhow!("node not running"))?;
    // Warm up, so that the figure is what the sources add.
    let warm: Vec<String> = (0..4096u32)
        .map(|i| std::net::Ipv4Addr::from(0xc633_0000 | i).to_string())
        .collect();
    let headers = [
        ("user-agent".to_string(), USER_AGENT.to_string()),
        ("accept".to_string(), "*/*".to_string()),
    ];
    load(target, "shop.test", &warm, &headers, 4, 0.2)?;
    let (rss_before_kib, _) = crate::iprules::rss_kib(pid);
    let conns = 16u64;
    let t = Instant::now();
    let mut threads = Vec::new();
    for k in 0..conns {
        threads.push(std::thread::spawn(move || -> Result<()> {
            let mut p = Probe::new(target, None)
                .with_header("user-agent", USER_AGENT)
                .with_header("accept", "*/*");
            let mut i = k;
            while i < n {
                let ip =
                    std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) << 64) | 1);
                let s = p.status("shop.test", Some(&ip.to_string()))?;
                if s != 200 {
                    bail!("source {ip} answered {s}");
                }
                i += conns;
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("spray thread panicked"))??;
    }
    let seconds = t.elapsed().as_secs_f64();
    let (rss_after_kib, peak_kib) = crate::iprules::rss_kib(pid);
    let r = c.get(0, "/v1/projects/shop/bot/decisions")?;
    Ok(Spray {
        requests: n,
        seconds,
        rss_before_kib,
        rss_after_kib,
        peak_kib,
        decisions: r.body["items"].as_array().map(Vec::len).unwrap_or(0),
    })
}
