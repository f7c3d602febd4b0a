//! `palisade-bench`: run a scenario and print its figures.

use std::path::PathBuf;

use anyhow::{bail, Result};
use palisade_bench::baselines::{self, Baseline};
use palisade_bench::report::{Machine, Program, Report, Section};
use palisade_bench::scenarios::{self, ms, percentile};
use palisade_bench::suite::{self, Ctx};
use palisade_bench::{bot, iprules};
use palisade_testkit::cluster::TestCluster;
use palisade_testkit::probe;

fn usage() -> ! {
    eprintln!(
        "usage: palisade-bench [--palisade PATH] [--quick] [--install] [--out DIR] SCENARIO...\n\
         \n\
         side by side with baselines (report in DIR, default ./bench-results):\n  \
         all | proxy-https | proxy-http | h2 | tls-handshakes | idle-tls | features | allocator\n  \
         | instructions | raft-writes | propagation | failover\n\
         \n\
         single measurements (printed only):\n  \
         election [RUNS] | write-latency [WRITES] | ip-lookup [ENTRIES] | ip-propagation [TRIALS]\n  \
         | ip-throughput [SECONDS] | bot [SECONDS] | bot-spray [REQUESTS]"
    );
    std::process::exit(2)
}

/// A scenario of the suite: its name, the baselines it needs, and what runs it.
type Scenario = (
    &'static str,
    &'static [Baseline],
    fn(&mut Ctx) -> Result<Section>,
);

/// The scenarios of `all`, in the order they run.
const SUITE: [Scenario; 11] = [
    (
        "proxy-https",
        &[baselines::NGINX, baselines::HAPROXY, baselines::WRK],
        |c| suite::proxy(c, true),
    ),
    ("proxy-http", &[baselines::NGINX, baselines::HAPROXY], |c| {
        suite::proxy(c, false)
    }),
    (
        "h2",
        &[baselines::NGINX, baselines::HAPROXY, baselines::H2LOAD],
        suite::h2,
    ),
    (
        "tls-handshakes",
        &[baselines::NGINX, baselines::HAPROXY],
        suite::tls_handshakes,
    ),
    (
        "idle-tls",
        &[baselines::NGINX, baselines::HAPROXY],
        suite::idle_tls,
    ),
    ("features", &[], suite::features),
    ("allocator", &[], suite::allocator),
    (
        "instructions",
        &[baselines::VALGRIND, baselines::H2LOAD],
        suite::instructions,
    ),
    ("raft-writes", &[baselines::ETCD], suite::raft_writes),
    ("propagation", &[], suite::propagation),
    ("failover", &[], suite::failover),
];

fn main() -> Result<()> {
    let invocation = std::env::args().collect::<Vec<_>>().join(" ");
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut bin = std::env::current_exe()?.with_file_name("palisade");
    let mut quick = false;
    let mut install = false;
    let mut out_dir = PathBuf::from("bench-results");
    let mut rest = Vec::new();
    let mut it = args.drain(..);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--palisade" => bin = PathBuf::from(it.next().unwrap_or_else(|| usage())),
            "--out" => out_dir = PathBuf::from(it.next().unwrap_or_else(|| usage())),
            "--quick" => quick = true,
            "--install" => install = true,
            "-h" | "--help" => usage(),
            _ => rest.push(a),
        }
    }
    drop(it);
    let args = rest;
    if !bin.exists() {
        bail!(
            "palisade binary not found at {} (build it, or pass --palisade PATH)",
            bin.display()
        );
    }
    let wanted: Vec<&str> = match args.first().map(String::as_str) {
        Some("all") => SUITE.iter().map(|(n, ..)| *n).collect(),
        Some(first) if SUITE.iter().any(|(n, ..)| *n == first) => {
            let mut v = Vec::new();
            for a in &args {
                match SUITE.iter().find(|(n, ..)| n == a) {
                    Some((n, ..)) => v.push(*n),
                    None => usage(),
                }
            }
            v
        }
        _ => Vec::new(),
    };
    if !wanted.is_empty() {
        return run_suite(&bin, &wanted, quick, install, &out_dir, invocation);
    }
    let num =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("election") => {
            let runs = num(1, 10);
            let (elections, writable) = scenarios::election(&bin, runs)?;
            println!("leader killed {runs} times (3 nodes, loopback, fsync on)");
            println!(
                "new leader agreed:  median {}  worst {}",
                ms(percentile(&elections, 50.0)),
                ms(*elections.last().unwrap())
            );
            println!(
                "first write again:  median {}  worst {}",
                ms(percentile(&writable, 50.0)),
                ms(*writable.last().unwrap())
            );
        }
        Some("write-latency") => {
            let n = num(1, 500);
            let s = scenarios::write_latency(&bin, n)?;
            println!("{n} sequential writes, 1 client, 3 nodes, fsync on, through the leader's admin API");
            println!(
                "p50 {}  p90 {}  p99 {}  max {}",
                ms(percentile(&s, 50.0)),
                ms(percentile(&s, 90.0)),
                ms(percentile(&s, 99.0)),
                ms(*s.last().unwrap())
            );
        }
        Some("ip-lookup") => {
            let n = num(1, 1_000_000);
            println!("IP list lookups in process ({n}-entry list: 97% /32, 2.5% /24, 0.5% /16)");
            for size in [0usize, 1_000, n] {
                let f = iprules::lookup(size.max(1), 5_000_000);
                println!(
                    "{:>9} entries: member {:6.1} ns  non-member {:6.1} ns  non-member behind a Bloom filter {:6.1} ns  build {:7.1} ms  one insert on a clone {:5.2} us  memory {:6.1} MiB",
                    if size == 0 { 1 } else { f.entries }, f.member_ns, f.non_member_ns, f.non_member_bloom_ns, f.build_ms, f.one_insert_us, f.memory_kib as f64 / 1024.0
                );
            }
        }
        Some("ip-propagation") => {
            let trials = num(1, 200);
            let up = probe::Upstream::spawn()?;
            let c = TestCluster::start(
                &bin,
                3,
                &[("PALISADE_EDGE_TRUSTED_PROXIES", "127.0.0.1/32")],
            )?;
            iprules::site(&c, 0, "shop", "shop.test", up.addr)?;
            let s = iprules::propagation(&c, 1, "shop", "shop.test", trials, 1)?;
            println!("{trials} rules added through node 2's admin API; time from the API's answer until all 3 nodes refuse the address");
            println!(
                "median {}  p90 {}  p99 {}  max {}",
                ms(percentile(&s, 50.0)),
                ms(percentile(&s, 90.0)),
                ms(percentile(&s, 99.0)),
                ms(*s.last().unwrap())
            );
        }
        Some("ip-throughput") => {
            let secs = num(1, 5) as f64;
            ip_throughput(&bin, secs)?;
        }
        Some("bot") => {
            let secs = num(1, 5) as f64;
            let n = 1_000_000;
            let (good, bad) = bot::verify_cost(n);
            println!("clearance cookie verification in process ({n} each; binding and project hashes, HMAC-SHA-256):");
            println!("valid cookie {good:.0} ns, forged MAC {bad:.0} ns");
            let [off, auto, on] = bot::throughput(&bin, secs, 5)?;
            println!("proxy throughput, one node, plain HTTP keep-alive, 16 connections, {secs} s x 5 rounds alternating, 1 KiB answers");
            let sorted = |v: &[bot::Run], f: fn(&bot::Run) -> f64| {
                let mut x: Vec<f64> = v.iter().map(f).collect();
                x.sort_by(f64::total_cmp);
                x
            };
            let base_rate = sorted(&off, |r| r.per_second)[2];
            let base_cpu = sorted(&off, |r| r.cpu_us)[2];
            for (name, v) in [
                ("bot protection off", &off),
                ("automatic (every request counted)", &auto),
                ("always on (every request's cookie verified)", &on),
            ] {
                let rate = sorted(v, |r| r.per_second);
                let cpu = sorted(v, |r| r.cpu_us);
                println!(
                    "{name:<44} {:>6.0} req/s ({:.0}-{:.0}) = {:.3}x   node CPU {:>5.1} us/req ({:.1}-{:.1}) = {:.3}x",
                    rate[2], rate[0], rate[4], rate[2] / base_rate,
                    cpu[2], cpu[0], cpu[4], cpu[2] / base_cpu
                );
            }
            println!(
                "one verification = {:.2}% of the node's CPU time per request with bot protection off",
                good / 1000.0 / base_cpu * 100.0
            );
        }
        Some("bot-spray") => {
            let n = num(1, 1_000_000) as u64;
            let s = bot::spray(&bin, n)?;
            println!("{} requests through one node, each from a new IPv6 /64 (X-Forwarded-For from a trusted proxy), automatic mode, default triggers", s.requests);
            println!(
                "{:.1} s ({:.0} req/s); node RSS {:.1} MiB before, {:.1} MiB after (+{:.1} MiB), peak {:.1} MiB; decisions made: {}",
                s.seconds,
                s.requests as f64 / s.seconds,
                s.rss_before_kib as f64 / 1024.0,
                s.rss_after_kib as f64 / 1024.0,
                (s.rss_after_kib as f64 - s.rss_before_kib as f64) / 1024.0,
                s.peak_kib as f64 / 1024.0,
                s.decisions
            );
        }
        _ => usage(),
    }
    Ok(())
}

/// Proxy throughput through one node for a project with no IP rules and one with a million,
/// measured alternately, every request from a different non-member address (so each one is a
/// full lookup that ends in "allowed").
fn ip_throughput(bin: &std::path::Path, secs: f64) -> Result<()> {
    let up = probe::Upstream::spawn()?;
    let c = TestCluster::start(bin, 1, &[("PALISADE_EDGE_TRUSTED_PROXIES", "127.0.0.1/32")])?;
    iprules::site(&c, 0, "empty", "empty.test", up.addr)?;
    iprules::site(&c, 0, "big", "big.test", up.addr)?;
    let list = iprules::BigList::generate(1_000_000, 3);
    let t = std::time::Instant::now();
    let (status, body) = c.post_raw(
        0,
        "/v1/projects/big/ip-rules/import?list=block",
        "text/plain",
        list.text.clone().into_bytes(),
    )?;
    if status != 200 {
        bail!("import answered {status}: {body}");
    }
    println!(
        "imported {} entries in {:.1} s",
        list.len(),
        t.elapsed().as_secs_f64()
    );
    let addrs: Vec<String> = list
        .non_members(4096, 5)
        .into_iter()
        .map(|a| std::net::Ipv4Addr::from(a).to_string())
        .collect();
    let target = iprules::http_addrs(&c)[0];
    iprules::load(target, "empty.test", &addrs, &[], 16, 1.0)?;
    let (mut empty, mut big) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        empty.push(iprules::load(target, "empty.test", &addrs, &[], 16, secs)?);
        big.push(iprules::load(target, "big.test", &addrs, &[], 16, secs)?);
    }
    empty.sort_by(f64::total_cmp);
    big.sort_by(f64::total_cmp);
    println!(
        "plain HTTP, keep-alive, 16 connections, {secs} s x 5 rounds alternating, 1 KiB answers"
    );
    println!(
        "0 rules:         median {:.0} req/s (range {:.0}-{:.0})",
        empty[2], empty[0], empty[4]
    );
    println!(
        "1,000,000 rules: median {:.0} req/s (range {:.0}-{:.0}) = {:.3}x",
        big[2],
        big[0],
        big[4],
        big[2] / empty[2]
    );
    Ok(())
}

/// Run `wanted` scenarios of the suite: check (or install) their baselines first, refuse to run
/// without them, and write the report after every scenario.
fn run_suite(
    bin: &std::path::Path,
    wanted: &[&str],
    quick: bool,
    install: bool,
    out_dir: &std::path::Path,
    invocation: String,
) -> Result<()> {
    let mut needed: Vec<Baseline> = Vec::new();
    for (_, needs, _) in SUITE.iter().filter(|(n, ..)| wanted.contains(n)) {
        for b in needs.iter() {
            if !needed.contains(b) {
                needed.push(*b);
            }
        }
    }
    let missing = baselines::missing(&needed);
    if !missing.is_empty() {
        if install {
            baselines::install(&missing)?;
        } else {
            let names: Vec<&str> = missing.iter().map(|b| b.name).collect();
            eprintln!(
                "missing baseline{}: {}. Install with:\n\n    {}\n\nor run again with --install. \
                 No scenario runs without its baseline.",
                if missing.len() > 1 { "s" } else { "" },
                names.join(", "),
                baselines::apt_line(&missing)
            );
            std::process::exit(3);
        }
    }
    std::fs::create_dir_all(out_dir)?;
    let version = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut programs = vec![Program {
        name: "Palisade".into(),
        path: bin.display().to_string(),
        version,
    }];
    for b in &needed {
        programs.push(Program {
            name: b.name.into(),
            path: b
                .find()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            version: b.version(),
        });
    }
    programs.push(Program {
        name: "load generator".into(),
        path: std::env::current_exe()?.display().to_string(),
        version: "palisade-bench's own (tokio + rustls, one thread; see bench/README.md)".into(),
    });
    let mut ctx = Ctx {
        bin: bin.to_path_buf(),
        quick,
        out_dir: out_dir.to_path_buf(),
        commands: Vec::new(),
        started: std::time::Instant::now(),
    };
    let mut report = Report {
        invocation,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        quick,
        machine: Machine::here(),
        programs,
        commands: Vec::new(),
        sections: Vec::new(),
    };
    for (name, _, run) in SUITE.iter().filter(|(n, ..)| wanted.contains(n)) {
        let section = run(&mut ctx).map_err(|e| e.context(format!("scenario {name}")))?;
        println!("\n{}", section.markdown());
        report.sections.push(section);
        report.commands = ctx.commands.clone();
        std::fs::write(out_dir.join("report.md"), report.markdown())?;
        std::fs::write(
            out_dir.join("report.json"),
            serde_json::to_string_pretty(&report.json())?,
        )?;
    }
    ctx.progress(&format!(
        "done; report in {}/report.md and report.json",
        out_dir.display()
    ));
    Ok(())
}
