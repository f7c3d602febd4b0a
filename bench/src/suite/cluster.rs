//! The cluster scenarios: replicated writes next to etcd, propagation of a rule, and failover
//! under load.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use palisade_testkit::admin::agent;
use palisade_testkit::cluster::TestCluster;
use palisade_testkit::probe::{Probe, Upstream};
use palisade_testkit::wait;
use serde_json::json;

use crate::baselines::Etcd;
use crate::cpu;
use crate::iprules::{self, http_addrs, site};
use crate::load::{self, Mode, Outcome, Spec, Target};
use crate::report::{Better, Row, Run, Section};
use crate::scenarios::kill_leader;

use super::*;

/// A replicated store the same client writes to over HTTP.
enum Store {
    Palisade { url: String, auth: String },
    Etcd { url: String },
}

impl Store {
    /// Write one 256-byte value under a new key; the answer's status.
    fn write(&self, agent: &ureq::Agent, n: u64, value: &str) -> Result<u16> {
        use base64::Engine as _;
        let (url, body, auth) = match self {
            Store::Palisade { url, auth } => (
                format!("{url}/v1/projects/w/ip-rules"),
                json!({
                    "list": "block",
                    "cidr": format!("{}/32", Ipv4Addr::from(0x0a00_0000 | (n as u32 & 0x00ff_ffff))),
                    "note": value,
                }),
                Some(auth.as_str()),
            ),
            Store::Etcd { url } => (
                format!("{url}/v3/kv/put"),
                json!({
                    "key": base64::engine::general_purpose::STANDARD.encode(format!("bench/{n}")),
                    "value": base64::engine::general_purpose::STANDARD.encode(value),
                }),
                None,
            ),
        };
        let mut req = agent.post(&url).header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let mut resp = req.send(serde_json::to_vec(&body)?)?;
        let status = resp.status().as_u16();
        let _ = resp.body_mut().read_to_vec();
        Ok(status)
    }
}

/// `clients` threads writing back to back for `d`; an [`Outcome`] of the writes.
fn write_load(
    store: &Arc<Store>,
    clients: usize,
    d: Duration,
    counter: &Arc<AtomicU64>,
) -> Outcome {
    let value: String = "v".repeat(256);
    let end = Instant::now() + d;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (store, counter, value) = (store.clone(), counter.clone(), value.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut o = Outcome::default();
                while Instant::now() < end {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let t0 = Instant::now();
                    match store.write(&agent, n, &value) {
                        Ok(s) if (200..300).contains(&s) => {
                            o.ok += 1;
                            o.latency_us
                                .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        Ok(s) => {
                            o.non_2xx += 1;
                            o.first_problem.get_or_insert(format!("answer {s}"));
                        }
                        Err(e) => {
                            o.errors += 1;
                            o.first_problem.get_or_insert(e.to_string());
                        }
                    }
                }
                o
            })
        })
        .collect();
    let mut all = Outcome {
        seconds: d.as_secs_f64(),
        ..Default::default()
    };
    for t in threads {
        let o = t.join().unwrap_or_else(|_| Outcome {
            errors: 1,
            first_problem: Some("writer thread panicked".into()),
            ..Default::default()
        });
        all.merge(o);
    }
    all.latency_us.sort_unstable();
    all
}

/// `raft-writes`: three Palisade nodes and three etcd members, the same HTTP client writing
/// 256-byte values to the leader.
pub fn raft_writes(ctx: &mut Ctx) -> Result<Section> {
    ctx.progress("raft-writes: starting three Palisade nodes and three etcd members");
    cpu::pin_self(&cpu::all_cores());
    let c = TestCluster::start(&ctx.bin, 3, &[])?;
    let r = c.post(
        0,
        "/v1/projects",
        json!({ "id": "w", "name": "w", "bot": { "mode": "off" } }),
        None,
    )?;
    if r.status != 201 {
        bail!("creating the project: {} {}", r.status, r.body);
    }
    let leader = c.wait_leader(None, Duration::from_secs(30))?;
    let li = c.index_of(leader).context("leader is a member")?;
    let dir = tempfile::Builder::new()
        .prefix("palisade-bench-etcd-")
        .tempdir()?;
    let etcd = Etcd::start(dir.path(), 3, &mut ctx.commands)?;
    let stores = [
        Arc::new(Store::Palisade {
            url: format!("http://{}", c.nodes[li].admin_addr),
            auth: format!("Bearer {}", c.key),
        }),
        Arc::new(Store::Etcd {
            url: etcd.leader()?,
        }),
    ];
    let names = ["Palisade", "etcd"];
    let counter = Arc::new(AtomicU64::new(1));
    // Warm-up: connections, caches, the first log segments.
    for s in &stores {
        let o = write_load(s, 16, ctx.warmup(), &counter);
        if let Some(p) = o.problem() {
            bail!("warm-up writes failed: {p}");
        }
    }
    let d = ctx.measure();
    let (mut p50, mut p99, mut one) = (per_target(2), per_target(2), per_target(2));
    let mut many: Vec<(usize, PerTarget)> = vec![(16, per_target(2)), (128, per_target(2))];
    for rep in 0..ctx.repeats() {
        for (i, s) in stores.iter().enumerate() {
            let o = write_load(s, 1, d, &counter);
            ctx.progress(&format!(
                "raft-writes run {}/{}: {} 1 client {:.0} writes/s p50 {:.2} ms p99 {:.2} ms{}",
                rep + 1,
                ctx.repeats(),
                names[i],
                o.rate(),
                o.percentile_ms(50.0),
                o.percentile_ms(99.0),
                invalid(&o)
            ));
            p50[i].push(Run::of(o.percentile_ms(50.0), &o));
            p99[i].push(Run::of(o.percentile_ms(99.0), &o));
            one[i].push(Run::of(o.rate(), &o));
            for (clients, runs) in many.iter_mut() {
                let o = write_load(s, *clients, d, &counter);
                ctx.progress(&format!(
                    "raft-writes run {}/{}: {} {clients} clients {:.0} writes/s{}",
                    rep + 1,
                    ctx.repeats(),
                    names[i],
                    o.rate(),
                    invalid(&o)
                ));
                runs[i].push(Run::of(o.rate(), &o));
            }
        }
    }
    let mut sec = Section::new(
        "raft-writes",
        "replicated writes, three members on this machine",
        &format!(
            "Three Palisade nodes (Raft over QUIC, RocksDB, fsync on every commit) and three etcd members (its default: fsync on every commit), all on loopback, sharing the machine's cores with the client. \
             The same client (ureq, one keep-alive connection per client thread) writes 256-byte values under new keys to the leader: \
             Palisade `POST /v1/projects/w/ip-rules` (a new /32 with a 256-byte note; the API also audits it), etcd `POST /v3/kv/put`. \
             {:.1} s per run, {} runs, systems interleaved.",
            d.as_secs_f64(),
            ctx.repeats()
        ),
        &names,
    );
    sec.push(row(
        "write latency, 1 client, p50",
        "ms",
        Better::Lower,
        &names,
        p50,
    ));
    sec.push(row(
        "write latency, 1 client, p99",
        "ms",
        Better::Lower,
        &names,
        p99,
    ));
    sec.push(row(
        "writes, 1 client",
        "per second",
        Better::Higher,
        &names,
        one,
    ));
    for (clients, runs) in many {
        sec.push(row(
            &format!("writes, {clients} clients"),
            "per second",
            Better::Higher,
            &names,
            runs,
        ));
    }
    Ok(sec)
}

/// `propagation`: from a rule's acknowledgement until every node's edge enforces it.
pub fn propagation(ctx: &mut Ctx) -> Result<Section> {
    ctx.progress("propagation: starting three nodes");
    cpu::pin_self(&cpu::all_cores());
    let up = Upstream::spawn()?;
    let c = TestCluster::start(
        &ctx.bin,
        3,
        &[("PALISADE_EDGE_TRUSTED_PROXIES", "127.0.0.1/32")],
    )?;
    site(&c, 0, "shop", "shop.test", up.addr)?;
    let trials = if ctx.quick { 100 } else { 500 };
    let mut ms: Vec<f64> = Vec::with_capacity(trials);
    for chunk in 0..trials / 50 {
        let s = iprules::propagation(&c, 1 + chunk % 2, "shop", "shop.test", 50, 1 + chunk as u8)?;
        ms.extend(s.iter().map(|d| d.as_secs_f64() * 1000.0));
        ctx.progress(&format!("propagation: {} of {trials} trials", ms.len()));
    }
    ms.sort_by(f64::total_cmp);
    let p = |q: f64| ms[((q / 100.0 * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    let mut sec = Section::new(
        "propagation",
        "from a write's acknowledgement to its effect on every node",
        &format!(
            "Three nodes. {trials} trials: block a new address through a follower's admin API, then poll all three nodes' public HTTP port (keep-alive, the address sent as `X-Forwarded-For`) \
             until each refuses it with 403; time from the API's answer until the last node refuses. The cell's range is the fastest and slowest trial."
        ),
        &["Palisade"],
    );
    sec.push(
        Row::new("median", "ms", Better::Lower)
            .cell("Palisade", ms.iter().map(|v| Run::valid(*v)).collect()),
    );
    sec.push(Row::new("p99", "ms", Better::Lower).cell("Palisade", vec![Run::valid(p(99.0))]));
    Ok(sec)
}

/// `failover`: steady load through all three nodes while the leader is killed.
pub fn failover(ctx: &mut Ctx) -> Result<Section> {
    ctx.progress("failover: starting three nodes");
    cpu::pin_self(&cpu::all_cores());
    let up = Upstream::spawn()?;
    let mut c = TestCluster::start(&ctx.bin, 3, &[])?;
    site(&c, 0, "fo", "fo.test", up.addr)?;
    let rate = 300.0;
    let load_for = Duration::from_secs_f64(if ctx.quick { 4.0 } else { 8.0 });
    let kill_after = Duration::from_secs(1);
    let names = ["Palisade"];
    let (mut failed, mut served, mut failed_dead, mut elected, mut writable, mut p999) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for rep in 0..ctx.repeats() {
        let addrs = http_addrs(&c);
        for a in &addrs {
            let mut probe = Probe::new(*a, None);
            wait::until(
                &format!("node at {a} to serve fo.test"),
                Duration::from_secs(30),
                || probe.status("fo.test", None).ok() == Some(200),
            )?;
        }
        let targets: Vec<Target> = addrs.iter().map(|a| Target::new(*a, "fo.test")).collect();
        let spec = Spec {
            conns: 4,
            warmup: FAILOVER_WARMUP,
            measure: load_for,
            mode: Mode::Open { rate },
        };
        let loader = std::thread::spawn(move || load::run(&targets, &spec));
        std::thread::sleep(spec.warmup + kill_after);
        let k = kill_leader(&mut c, &format!("fo{rep}"))?;
        let outcomes = loader
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        let mut survivors = Outcome::default();
        for (i, o) in outcomes.iter().enumerate() {
            if i != k.index {
                survivors.merge(o.clone());
            }
        }
        survivors.latency_us.sort_unstable();
        let dead = &outcomes[k.index];
        ctx.progress(&format!(
            "failover run {}/{}: leader {} killed; new leader after {:.0} ms, writes after {:.0} ms; survivors {} ok {} failed; killed node {} failed",
            rep + 1,
            ctx.repeats(),
            k.old_leader,
            k.elected.as_secs_f64() * 1000.0,
            k.writable.as_secs_f64() * 1000.0,
            survivors.ok,
            survivors.errors + survivors.non_2xx,
            dead.errors + dead.non_2xx
        ));
        failed.push(Run::valid((survivors.errors + survivors.non_2xx) as f64));
        served.push(Run::valid(survivors.ok as f64));
        failed_dead.push(Run::valid((dead.errors + dead.non_2xx) as f64));
        elected.push(Run::valid(k.elected.as_secs_f64() * 1000.0));
        writable.push(Run::valid(k.writable.as_secs_f64() * 1000.0));
        p999.push(Run::valid(survivors.percentile_ms(99.9)));
        c.restart(k.index)?;
        c.wait_ready(k.index, Duration::from_secs(30))?;
    }
    let mut sec = Section::new(
        "failover",
        "the leader killed with SIGKILL under load",
        &format!(
            "Three nodes. Open-loop load of {rate:.0} requests/s to each node's public HTTP port (4 keep-alive connections each) for {:.1} s; \
             {:.1} s in, the Raft leader gets SIGKILL. Then: time until the survivors agree on a new leader, and until an admin write through it succeeds. \
             The killed node is restarted and rejoins between runs; {} runs.",
            load_for.as_secs_f64(),
            (FAILOVER_WARMUP + kill_after).as_secs_f64(),
            ctx.repeats()
        ),
        &names,
    );
    sec.push(
        Row::new(
            "failed requests on the surviving nodes",
            "requests",
            Better::Lower,
        )
        .cell(names[0], failed),
    );
    sec.push(
        Row::new(
            "requests served by the surviving nodes",
            "requests",
            Better::Higher,
        )
        .cell(names[0], served),
    );
    sec.push(
        Row::new("p99.9 latency on the surviving nodes", "ms", Better::Lower).cell(names[0], p999),
    );
    sec.push(
        Row::new(
            "failed requests sent to the killed node",
            "requests",
            Better::Lower,
        )
        .cell(names[0], failed_dead),
    );
    sec.push(Row::new("new leader after the kill", "ms", Better::Lower).cell(names[0], elected));
    sec.push(
        Row::new(
            "admin writes succeed again after the kill",
            "ms",
            Better::Lower,
        )
        .cell(names[0], writable),
    );
    Ok(sec)
}
