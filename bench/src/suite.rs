//! The seven scenarios of `palisade-bench all`, each a [`Section`] of the report.
//!
//! Every figure is measured [`Ctx::repeats`] times, the targets interleaved within each
//! repetition (Palisade, nginx, HAProxy, Palisade, …) so drift on a shared machine lands on all
//! of them alike; the report gives the median and the range.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::baselines::{self, Etcd, Listen, Server};
use crate::bot::{clearance_cookie, set_bot, USER_AGENT};
use crate::cpu;
use crate::harness::{agent, TestCluster};
use crate::iprules::{self, http_addrs, site, BigList};
use crate::load::{self, Mode, Outcome, Spec, Target, Tls};
use crate::pki::pki;
use crate::probe::{Probe, Upstream};
use crate::report::{latency_svg, median, Better, Row, Run, Section};
use crate::scenarios::kill_leader;

/// What every scenario shares: the binary, the mode, where output goes, and the log of every
/// command started (for the report).
pub struct Ctx {
    pub bin: PathBuf,
    pub quick: bool,
    pub out_dir: PathBuf,
    pub commands: Vec<String>,
    pub started: Instant,
}

const HOST: &str = "bench.test";
/// Keep-alive connections per target in the proxy scenarios.
const CONNS: usize = 32;
/// Concurrent new-connection loops in `tls-handshakes`.
const HANDSHAKE_LOOPS: usize = 16;
const OPEN_LOOP_SHARES: [f64; 3] = [0.5, 0.75, 0.9];
const FAILOVER_WARMUP: Duration = Duration::from_millis(500);
const CHART_PERCENTILES: [f64; 8] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95];

impl Ctx {
    pub fn repeats(&self) -> usize {
        5
    }

    pub fn measure(&self) -> Duration {
        Duration::from_secs_f64(if self.quick { 1.5 } else { 5.0 })
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(if self.quick { 0.3 } else { 1.0 })
    }

    pub fn progress(&self, msg: &str) {
        eprintln!("[{:7.1} s] {msg}", self.started.elapsed().as_secs_f64());
    }

    fn closed(&self, conns: usize) -> Spec {
        Spec {
            conns,
            warmup: Duration::ZERO,
            measure: self.measure(),
            mode: Mode::Closed,
        }
    }
}

/// Palisade, nginx and HAProxy in front of one upstream, the proxies on core 0 and this
/// process (load generator and upstream) on the others.
struct Proxies {
    names: [&'static str; 3],
    http: [SocketAddr; 3],
    https: [SocketAddr; 3],
    pids: [u32; 3],
    tls: Tls,
    pinned: bool,
    _servers: Vec<Server>,
    _cluster: TestCluster,
    up: Upstream,
    _dir: tempfile::TempDir,
}

impl Proxies {
    fn start(ctx: &mut Ctx) -> Result<Proxies> {
        cpu::pin_self(&cpu::all_cores());
        let pinned = cpu::can_pin();
        let cores = pinned.then_some(cpu::PROXY_CORES);
        let up = Upstream::spawn()?;
        let dir = tempfile::Builder::new()
            .prefix("palisade-bench-")
            .tempdir()?;
        let pki = pki(&[HOST]);
        let c = TestCluster::start(&ctx.bin, 1, &[("PALISADE_WORKERS", "1")])?;
        ctx.commands.push(format!(
            "PALISADE_WORKERS=1 {} run --config {}/config.toml (one node; made by palisade init), then taskset -a -p -c 0 PID",
            ctx.bin.display(),
            c.nodes[0].dir.display()
        ));
        let r = c.post(
            0,
            "/v1/projects",
            json!({ "id": "bench", "name": "bench", "bot": { "mode": "off" } }),
            None,
        )?;
        if r.status != 201 {
            bail!("creating the project: {} {}", r.status, r.body);
        }
        let r = c.put(
            0,
            &format!("/v1/domains/{HOST}"),
            json!({ "project": "bench", "upstreams": [up.addr.to_string()], "tls": "manual", "redirect_https": false }),
        )?;
        if r.status != 201 {
            bail!("creating the domain: {} {}", r.status, r.body);
        }
        let r = c.post(
            0,
            "/v1/certificates",
            json!({ "name": "bench", "chain_pem": pki.chain_pem, "key_pem": pki.key_pem }),
            None,
        )?;
        if r.status != 201 {
            bail!("uploading the certificate: {} {}", r.status, r.body);
        }
        let node_pid = c.nodes[0].pid().context("the node is running")?;
        if pinned {
            cpu::pin(node_pid, cpu::PROXY_CORES);
        }
        let (n_at, h_at) = (Listen::loopback(), Listen::loopback());
        let nginx = baselines::start_nginx(
            &dir.path().join("nginx"),
            n_at,
            up.addr,
            HOST,
            &pki.chain_pem,
            &pki.key_pem,
            cores,
            &mut ctx.commands,
        )?;
        let haproxy = baselines::start_haproxy(
            &dir.path().join("haproxy"),
            h_at,
            up.addr,
            &pki.chain_pem,
            &pki.key_pem,
            cores,
            &mut ctx.commands,
        )?;
        if pinned {
            cpu::pin_self(&cpu::other_cores());
        }
        let p = Proxies {
            names: ["Palisade", "nginx", "HAProxy"],
            http: [c.nodes[0].http_addr.parse()?, n_at.http, h_at.http],
            https: [c.nodes[0].https_addr.parse()?, n_at.https, h_at.https],
            pids: [node_pid, nginx.pid(), haproxy.pid()],
            tls: Tls::new(&pki.leaf_der, HOST)?,
            pinned,
            _servers: vec![nginx, haproxy],
            _cluster: c,
            up,
            _dir: dir,
        };
        p.check()?;
        Ok(p)
    }

    /// Every proxy answers 200 with the upstream's 1 KiB and the same security headers, over
    /// HTTP and HTTPS, before anything is measured.
    fn check(&self) -> Result<()> {
        for i in 0..3 {
            let deadline = Instant::now() + Duration::from_secs(10);
            let a = loop {
                let a = Probe::new(self.http[i], None).get(HOST, "/", None);
                match a {
                    Ok(a) if a.status == 200 => break a,
                    _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                    Ok(a) => bail!("{} answered {} over HTTP", self.names[i], a.status),
                    Err(e) => bail!("{} over HTTP: {e}", self.names[i]),
                }
            };
            if a.body.len() != 1024 {
                bail!(
                    "{} gave {} bytes, not the upstream's 1024",
                    self.names[i],
                    a.body.len()
                );
            }
            for (h, v) in &baselines::SECURITY_HEADERS[1..] {
                if a.header(&h.to_ascii_lowercase()) != Some(*v) {
                    bail!("{} did not send {h}: {v}", self.names[i]);
                }
            }
            let spec = Spec {
                conns: 1,
                warmup: Duration::ZERO,
                measure: Duration::from_millis(200),
                mode: Mode::Closed,
            };
            let o = &load::run(&[self.target(i, true)], &spec)[0];
            if let Some(p) = o.problem() {
                bail!("{} over HTTPS: {p}", self.names[i]);
            }
        }
        Ok(())
    }

    fn target(&self, i: usize, https: bool) -> Target {
        if https {
            Target::new(self.https[i], HOST).with_tls(self.tls.clone())
        } else {
            Target::new(self.http[i], HOST)
        }
    }

    fn cpu(&self, i: usize) -> f64 {
        cpu::family_cpu_seconds(self.pids[i])
    }

    fn pinning_note(&self) -> String {
        if self.pinned {
            "Pinning: each proxy on core 0 (`taskset`), the load generator and the upstream on the other cores.".into()
        } else {
            "Not pinned (one core, or no `taskset`): proxies and load share the cores.".into()
        }
    }
}

/// One measured run of `target`: its outcome, and how much `cpu` (CPU seconds of the process
/// under test) grew meanwhile. The rate goes to the progress log, with the problem if invalid.
fn measured(
    ctx: &Ctx,
    what: &str,
    rep: usize,
    target: &Target,
    spec: &Spec,
    cpu: impl Fn() -> f64,
) -> (Outcome, f64) {
    let c0 = cpu();
    let o = load::run(std::slice::from_ref(target), spec).remove(0);
    let used = cpu() - c0;
    ctx.progress(&format!(
        "{what}, run {}/{}: {:.0}/s{}",
        rep + 1,
        ctx.repeats(),
        o.rate(),
        invalid(&o)
    ));
    (o, used)
}

fn invalid(o: &Outcome) -> String {
    o.problem()
        .map(|p| format!(" INVALID: {p}"))
        .unwrap_or_default()
}

/// Runs of one figure for several targets.
type PerTarget = Vec<Vec<Run>>;

fn per_target(n: usize) -> PerTarget {
    vec![Vec::new(); n]
}

fn row(figure: &str, unit: &str, better: Better, names: &[&str], runs: PerTarget) -> Row {
    names
        .iter()
        .zip(runs)
        .fold(Row::new(figure, unit, better), |r, (n, v)| r.cell(n, v))
}

/// `proxy-http` and `proxy-https`: closed-loop maximum, then open-loop latency at fixed shares
/// of the slowest proxy's maximum.
pub fn proxy(ctx: &mut Ctx, https: bool) -> Result<Section> {
    let scenario = if https { "proxy-https" } else { "proxy-http" };
    ctx.progress(&format!("{scenario}: starting Palisade, nginx and HAProxy"));
    let p = Proxies::start(ctx)?;
    let names = p.names;
    let targets: Vec<Target> = (0..3).map(|i| p.target(i, https)).collect();
    let mut sec = Section::new(
        scenario,
        if https {
            "keep-alive HTTPS (TLS 1.3, X25519, ECDSA P-256), 1 KiB answers"
        } else {
            "keep-alive plain HTTP, 1 KiB answers"
        },
        &format!(
            "One Palisade node, nginx and HAProxy, one worker each, in front of the same local upstream (keep-alive to it), each adding the same security headers. \
             Closed loop: {CONNS} connections sending back to back for {:.1} s. Open loop: {CONNS} connections at a fixed total rate (50%, 75%, 90% of the slowest proxy's closed-loop median), \
             latency timed from each request's scheduled send time when the previous answer made it late (coordinated omission corrected), after {:.1} s of warm-up. \
             {} runs each, targets interleaved. CPU: the proxy's user + system time over the run (nginx: master and worker).",
            ctx.measure().as_secs_f64(),
            ctx.warmup().as_secs_f64(),
            ctx.repeats()
        ),
        &names,
    );
    sec.notes.push(p.pinning_note());
    for t in &targets {
        load::run(std::slice::from_ref(t), &ctx.closed(CONNS));
    }
    let (mut rate, mut cpu_us, mut busy) = (per_target(3), per_target(3), per_target(3));
    for rep in 0..ctx.repeats() {
        for i in 0..3 {
            let what = format!("{scenario} closed loop, {}", names[i]);
            let (o, used) = measured(ctx, &what, rep, &targets[i], &ctx.closed(CONNS), || {
                p.cpu(i)
            });
            rate[i].push(Run::of(o.rate(), &o));
            cpu_us[i].push(Run::of(used * 1e6 / o.ok.max(1) as f64, &o));
            busy[i].push(Run::of(used / o.seconds * 100.0, &o));
        }
    }
    sec.push(row(
        &format!("maximum rate, closed loop, {CONNS} connections"),
        "requests/s",
        Better::Higher,
        &names,
        rate,
    ));
    sec.push(row(
        "proxy CPU per request",
        "µs",
        Better::Lower,
        &names,
        cpu_us,
    ));
    sec.push(row(
        "proxy CPU busy during the closed-loop run",
        "% of one core",
        Better::Lower,
        &names,
        busy,
    ));
    // The slowest valid closed-loop median; invalid cells have none.
    let slowest = sec.rows[0]
        .cells
        .iter()
        .filter_map(|c| c.median())
        .fold(f64::INFINITY, f64::min);
    if !slowest.is_finite() {
        sec.notes
            .push("No proxy had a valid closed-loop maximum: open-loop runs skipped.".into());
        return Ok(sec);
    }
    for share in OPEN_LOOP_SHARES {
        let r = (share * slowest).round();
        let spec = Spec {
            conns: CONNS,
            warmup: ctx.warmup(),
            measure: ctx.measure(),
            mode: Mode::Open { rate: r },
        };
        let (mut p50, mut p99, mut p999) = (per_target(3), per_target(3), per_target(3));
        let mut spectra: Vec<Vec<Outcome>> = vec![Vec::new(); 4];
        for rep in 0..ctx.repeats() {
            for i in 0..3 {
                let o = load::run(std::slice::from_ref(&targets[i]), &spec).remove(0);
                ctx.progress(&format!(
                    "{scenario} open loop {:.0}% ({r} req/s), run {}/{}: {} p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms{}",
                    share * 100.0,
                    rep + 1,
                    ctx.repeats(),
                    names[i],
                    o.percentile_ms(50.0),
                    o.percentile_ms(99.0),
                    o.percentile_ms(99.9),
                    invalid(&o)
                ));
                p50[i].push(Run::of(o.percentile_ms(50.0), &o));
                p99[i].push(Run::of(o.percentile_ms(99.0), &o));
                p999[i].push(Run::of(o.percentile_ms(99.9), &o));
                spectra[i].push(o);
            }
            // The floor of the measurement: the same schedule straight to the upstream.
            let o = load::run(&[Target::new(p.up.addr, HOST)], &spec).remove(0);
            spectra[3].push(o);
        }
        let label = format!(
            "{:.0}% of the slowest maximum ({} req/s)",
            share * 100.0,
            crate::report::num(r)
        );
        for (name, runs) in [("p50", p50), ("p99", p99), ("p99.9", p999)] {
            sec.push(row(
                &format!("{name} latency at {label}"),
                "ms",
                Better::Lower,
                &names,
                runs,
            ));
        }
        let floor: Vec<String> = [50.0, 99.0, 99.9]
            .iter()
            .map(|q| {
                let mut v: Vec<f64> = spectra[3].iter().map(|o| o.percentile_ms(*q)).collect();
                v.sort_by(f64::total_cmp);
                format!("p{q} {} ms", crate::report::num(median(&v)))
            })
            .collect();
        let floor_problem = spectra[3].iter().find_map(|o| o.problem());
        sec.notes.push(format!(
            "Measurement floor at {label}: the load generator straight to the upstream (plain HTTP, no proxy), same schedule, medians of {} runs: {}{}.",
            ctx.repeats(),
            floor.join(", "),
            floor_problem.map(|p| format!(" (INVALID: {p})")).unwrap_or_default()
        ));
        // The chart shows, per proxy, the run whose p99 is the median of its runs.
        let series: Vec<(String, Vec<(f64, f64)>)> = spectra
            .iter_mut()
            .zip(names.iter().copied().chain(["no proxy (floor)"]))
            .map(|(runs, name)| {
                runs.sort_by(|a, b| a.percentile_ms(99.0).total_cmp(&b.percentile_ms(99.0)));
                let mid = &runs[runs.len() / 2];
                (
                    name.to_string(),
                    CHART_PERCENTILES
                        .iter()
                        .map(|p| (*p, mid.percentile_ms(*p)))
                        .collect(),
                )
            })
            .collect();
        let file = format!("{scenario}-latency-{:.0}.svg", share * 100.0);
        std::fs::write(
            ctx.out_dir.join(&file),
            latency_svg(
                &format!("{scenario}: latency at {label}, {CONNS} connections"),
                &series,
            ),
        )?;
        sec.charts.push(file);
    }
    Ok(sec)
}

/// `tls-handshakes`: new connections a second, a full TLS 1.3 handshake and one request each.
pub fn tls_handshakes(ctx: &mut Ctx) -> Result<Section> {
    ctx.progress("tls-handshakes: starting Palisade, nginx and HAProxy");
    let p = Proxies::start(ctx)?;
    let names = p.names;
    let mut sec = Section::new(
        "tls-handshakes",
        "new TLS 1.3 connections, one request each",
        &format!(
            "{HANDSHAKE_LOOPS} loops each connecting, doing a full handshake (X25519, ECDSA P-256; the client offers no resumption, nginx and HAProxy have their session caches and tickets off), \
             sending one request with `Connection: close` and reading the answer, for {:.1} s; {} runs each, interleaved.",
            ctx.measure().as_secs_f64(),
            ctx.repeats()
        ),
        &names,
    );
    sec.notes.push(p.pinning_note());
    let spec = Spec {
        conns: HANDSHAKE_LOOPS,
        warmup: Duration::ZERO,
        measure: ctx.measure(),
        mode: Mode::NewConnections,
    };
    let targets: Vec<Target> = (0..3).map(|i| p.target(i, true)).collect();
    for t in &targets {
        load::run(
            std::slice::from_ref(t),
            &Spec {
                measure: ctx.warmup(),
                ..spec
            },
        );
    }
    let (mut rate, mut cpu_us) = (per_target(3), per_target(3));
    for rep in 0..ctx.repeats() {
        for i in 0..3 {
            let what = format!("tls-handshakes, {}", names[i]);
            let (o, used) = measured(ctx, &what, rep, &targets[i], &spec, || p.cpu(i));
            rate[i].push(Run::of(o.rate(), &o));
            cpu_us[i].push(Run::of(used * 1e6 / o.ok.max(1) as f64, &o));
        }
    }
    sec.push(row(
        "new connections",
        "per second",
        Better::Higher,
        &names,
        rate,
    ));
    sec.push(row(
        "proxy CPU per connection",
        "µs",
        Better::Lower,
        &names,
        cpu_us,
    ));
    Ok(sec)
}

/// `features`: one node's throughput with each security feature on alone, against all off.
pub fn features(ctx: &mut Ctx) -> Result<Section> {
    ctx.progress("features: starting one node");
    cpu::pin_self(&cpu::all_cores());
    let up = Upstream::spawn()?;
    let c = TestCluster::start(
        &ctx.bin,
        1,
        &[
            ("PALISADE_WORKERS", "1"),
            ("PALISADE_EDGE_TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    )?;
    let no_headers = json!({ "headers": { "hsts_max_age": 0, "hsts_include_subdomains": false, "nosniff": false, "frame_deny": false, "xss_protection": false, "keep_upstream": true } });
    let variants = [
        ("off", "all features off"),
        ("headers", "security headers"),
        ("ip1k", "IP block list, 1,000 entries"),
        ("ip1m", "IP block list, 1,000,000 entries"),
        ("bot", "bot protection on, valid clearance cookie"),
    ];
    for (id, _) in variants {
        site(&c, 0, id, &format!("{id}.test"), up.addr)?;
        if id != "headers" {
            let r = c.patch(0, &format!("/v1/projects/{id}"), no_headers.clone())?;
            if r.status != 200 {
                bail!("turning headers off for {id}: {} {}", r.status, r.body);
            }
        }
    }
    let big = BigList::generate(1_000_000, 3);
    let small = BigList::generate(1_000, 4);
    for (id, list) in [("ip1k", &small), ("ip1m", &big)] {
        ctx.progress(&format!(
            "features: importing {} entries into {id}",
            list.len()
        ));
        let (status, body) = c.post_raw(
            0,
            &format!("/v1/projects/{id}/ip-rules/import?list=block"),
            "text/plain",
            list.text.clone().into_bytes(),
        )?;
        if status != 200 {
            bail!("importing into {id}: {status} {body}");
        }
    }
    // Every request comes from another address that neither list holds (a full lookup that
    // ends in "allowed"); the bot project's from the one address its cookie is bound to.
    let xff: Vec<String> = big
        .non_members(4096, 5)
        .into_iter()
        .filter(|a| !small.covers(*a))
        .map(|a| Ipv4Addr::from(a).to_string())
        .collect();
    set_bot(
        &c,
        "bot",
        json!({ "mode": "always_on", "difficulty_bits": 8 }),
    )?;
    let addr = http_addrs(&c)[0];
    let cookie = clearance_cookie(addr, "bot.test", Some(&xff[0]))?;
    let targets: Vec<Target> = variants
        .iter()
        .map(|(id, _)| {
            let mut t = Target::new(addr, &format!("{id}.test"));
            t.headers = vec![
                ("user-agent".into(), USER_AGENT.into()),
                ("accept".into(), "text/html".into()),
            ];
            if *id == "bot" {
                t.headers.push(("cookie".into(), cookie.clone()));
                t.xff = vec![xff[0].clone()];
            } else {
                t.xff = xff.clone();
            }
            t
        })
        .collect();
    let pid = c.nodes[0].pid().context("the node is running")?;
    let pinned = cpu::pin_apart(pid);
    for t in &targets {
        load::run(
            std::slice::from_ref(t),
            &Spec {
                measure: ctx.warmup(),
                ..ctx.closed(CONNS)
            },
        );
    }
    let n = variants.len();
    let (mut rate, mut cpu_us) = (per_target(n), per_target(n));
    for rep in 0..ctx.repeats() {
        for i in 0..n {
            let what = format!("features, {}", variants[i].1);
            let (o, used) = measured(ctx, &what, rep, &targets[i], &ctx.closed(CONNS), || {
                cpu::cpu_seconds(pid)
            });
            rate[i].push(Run::of(o.rate(), &o));
            cpu_us[i].push(Run::of(used * 1e6 / o.ok.max(1) as f64, &o));
        }
    }
    let cols = ["feature on", "all features off"];
    let mut sec = Section::new(
        "features",
        "what each security feature costs",
        &format!(
            "One node (one worker) on core 0, plain HTTP keep-alive, {CONNS} connections, closed loop, {:.1} s per run, {} runs per variant, variants interleaved. \
             Five projects on the same node: all features off (no security headers, no IP rules, bot protection off), and each feature on alone. \
             Every request carries `X-Forwarded-For` (the load generator is a trusted proxy) with an address no list holds, so each lookup is a full one; \
             0 IP rules is the all-off baseline.",
            ctx.measure().as_secs_f64(),
            ctx.repeats()
        ),
        &cols,
    );
    if !pinned {
        sec.notes
            .push("Not pinned (one core, or no `taskset`).".into());
    }
    for i in 1..n {
        sec.push(
            Row::new(
                &format!("{}: rate", variants[i].1),
                "requests/s",
                Better::Higher,
            )
            .cell(cols[0], rate[i].clone())
            .cell(cols[1], rate[0].clone()),
        );
        sec.push(
            Row::new(
                &format!("{}: node CPU per request", variants[i].1),
                "µs",
                Better::Lower,
            )
            .cell(cols[0], cpu_us[i].clone())
            .cell(cols[1], cpu_us[0].clone()),
        );
    }
    Ok(sec)
}

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
            let deadline = Instant::now() + Duration::from_secs(30);
            while probe.status("fo.test", None).ok() != Some(200) {
                if Instant::now() > deadline {
                    bail!("node at {a} does not serve fo.test");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
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
