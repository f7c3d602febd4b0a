//! The scenarios of `palisade-bench all`, each a [`Section`] of the report.
//!
//! Every figure is measured [`Ctx::repeats`] times, the targets interleaved within each
//! repetition (Palisade, nginx, HAProxy, Palisade, …) so drift on a shared machine lands on all
//! of them alike; the report gives the median and the range.
//!
//! - this module: what every scenario shares (the context, the three proxies in front of one
//!   upstream, one measured run, the row of a figure);
//! - [`proxy`]: `proxy-http`, `proxy-https` (with `wrk`'s cross-check), `h2` (`h2load`),
//!   `tls-handshakes`, `idle-tls`, `allocator`, `instructions` (callgrind);
//! - [`features`]: what each security feature costs;
//! - [`cluster`]: `raft-writes`, `propagation`, `failover`.

mod cluster;
mod features;
mod proxy;

pub use cluster::{failover, propagation, raft_writes};
pub use features::features;
pub use proxy::{allocator, h2, idle_tls, instructions, proxy, tls_handshakes};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use palisade_testkit::cluster::TestCluster;
use palisade_testkit::pki::{pki, Pki};
use palisade_testkit::probe::{Probe, Upstream};
use palisade_testkit::wait;
use serde_json::json;

use crate::baselines::{self, Listen, Server};
use crate::cpu;
use crate::load::{self, Mode, Outcome, Spec, Target, Tls};
use crate::report::{Better, Row, Run};

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
    /// The baselines' files, and the hosts file of the outside generators.
    dir: tempfile::TempDir,
}

impl Proxies {
    fn start(ctx: &mut Ctx) -> Result<Proxies> {
        Self::start_with(ctx, &[])
    }

    /// [`Self::start`], with `env` added to Palisade's environment.
    fn start_with(ctx: &mut Ctx, env: &[(&str, &str)]) -> Result<Proxies> {
        cpu::pin_self(&cpu::all_cores());
        let pinned = cpu::can_pin();
        let cores = pinned.then_some(cpu::PROXY_CORES);
        let up = Upstream::spawn()?;
        let dir = tempfile::Builder::new()
            .prefix("palisade-bench-")
            .tempdir()?;
        let pki = pki(&[HOST]);
        let bin = ctx.bin.clone();
        let (c, node_pid) = start_palisade(ctx, &bin, env, up.addr, &pki, pinned)?;
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
            dir,
        };
        p.check()?;
        Ok(p)
    }

    /// Every proxy answers 200 with the upstream's 1 KiB and the same security headers, over
    /// HTTP and HTTPS, before anything is measured.
    fn check(&self) -> Result<()> {
        for i in 0..3 {
            let mut last = None;
            let served =
                wait::until(
                    "the proxy to answer 200",
                    Duration::from_secs(10),
                    || match Probe::new(self.http[i], None).get(HOST, "/", None) {
                        Ok(a) if a.status == 200 => Some(a),
                        other => {
                            last = Some(other.map(|a| a.status).map_err(|e| e.to_string()));
                            None
                        }
                    },
                );
            let a = match (served, last) {
                (Ok(a), _) => a,
                (Err(_), Some(Ok(status))) => {
                    bail!("{} answered {status} over HTTP", self.names[i])
                }
                (Err(_), Some(Err(e))) => bail!("{} over HTTP: {e}", self.names[i]),
                (Err(e), None) => bail!("{}: {e}", self.names[i]),
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
            // The block list is in force: a client at an address on it is refused.
            let status = status_from(baselines::BLOCKED_CLIENT, self.http[i])
                .with_context(|| format!("{}: a request from a blocked address", self.names[i]))?;
            if status != 403 {
                bail!(
                    "{} answered {status}, not 403, to a client on its block list ({})",
                    self.names[i],
                    baselines::BLOCKED_CLIENT
                );
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

/// The status a plain `GET /` for [`HOST`] gets at `to`, sent from the loopback address `from`.
fn status_from(from: std::net::Ipv4Addr, to: SocketAddr) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((from, 0)))?;
        let mut s = tokio::time::timeout(Duration::from_secs(5), sock.connect(to)).await??;
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head)).await??;
        std::str::from_utf8(&head[9..12])?
            .parse()
            .context("a status code")
    })
}

/// One Palisade node from `bin` (one worker, `env` added to its environment) serving [`HOST`]
/// from `upstream` with `pki`'s certificate and every protection on: the default security
/// headers, [`baselines::block_list`] as the project's block list (the baselines check the same
/// one), and bot protection `automatic` (every request counted; thresholds no benchmark client
/// reaches, so nobody is challenged). Pinned to the proxy core when `pinned`; the node and its
/// pid.
fn start_palisade(
    ctx: &mut Ctx,
    bin: &std::path::Path,
    env: &[(&str, &str)],
    upstream: SocketAddr,
    pki: &Pki,
    pinned: bool,
) -> Result<(TestCluster, u32)> {
    let mut all = vec![("PALISADE_WORKERS", "1")];
    all.extend_from_slice(env);
    let c = TestCluster::start(bin, 1, &all)?;
    let vars: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
    ctx.commands.push(format!(
        "{} {} run --config {}/config.toml (one node; made by palisade init), then taskset -a -p -c 0 PID",
        vars.join(" "),
        bin.display(),
        c.nodes[0].dir.display()
    ));
    let never = json!({ "threshold": 10_000_000, "window_seconds": 60 });
    let r = c.post(
        0,
        "/v1/projects",
        json!({ "id": "bench", "name": "bench", "bot": { "mode": "automatic", "triggers": {
            "request_rate": never, "request_rate_v6_64": never, "missing_headers": never, "client_errors": never } } }),
        None,
    )?;
    if r.status != 201 {
        bail!("creating the project: {} {}", r.status, r.body);
    }
    let (status, body) = c.post_raw(
        0,
        "/v1/projects/bench/ip-rules/import?list=block&wait=all",
        "text/plain",
        baselines::block_list().as_bytes().to_vec(),
    )?;
    if status != 200 {
        bail!("importing the block list: {status} {body}");
    }
    let r = c.put(
        0,
        &format!("/v1/domains/{HOST}"),
        json!({ "project": "bench", "upstreams": [upstream.to_string()], "tls": "manual", "redirect_https": false }),
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
    let pid = c.nodes[0].pid().context("the node is running")?;
    if pinned {
        cpu::pin(pid, cpu::PROXY_CORES);
    }
    Ok((c, pid))
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
