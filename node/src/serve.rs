//! `palisade run`: open the data dir, start the cluster member and the admin API, and stop
//! cleanly on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use palisade_admin::{AdminState, EdgeRules};
use palisade_edge::jobs;
use palisade_edge::view::LiveView;
use palisade_raft::cluster::{Cluster, MemberSetup};
use palisade_raft::crypto::node_id_of_cert;
use palisade_raft::ids::ProjectId;
use palisade_raft::model::Verdict;
use palisade_raft::store::Store;
use palisade_raft::task::Shutdown;
use palisade_raft::transport::tls::{parse_cert, Identity};
use palisade_raft::types::NodeInfo;

use crate::config::Validated;
use crate::datadir::{DataDir, NodeFile};

/// In-flight admin requests get this long to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// Everything checked and opened, before anything listens.
pub struct Prepared {
    pub setup: MemberSetup,
    pub store: Store,
    pub node_file: NodeFile,
    pub data_dir: DataDir,
}

pub fn prepare(cfg: &Validated) -> Result<Prepared> {
    let dd = DataDir::new(&cfg.raw.data_dir);
    let nf = dd.node_file()?;
    let identity = dd.identity()?;
    identity
        .check()
        .with_context(|| format!("data dir {} has a bad node certificate", dd.root.display()))?;
    let cert = parse_cert(&identity.cert_pem, "node certificate")?;
    match node_id_of_cert(&cert) {
        Some(id) if id == nf.node_id => {}
        other => bail!(
            "data dir {}: node.json says node {} but the node certificate is for {:?}",
            dd.root.display(),
            nf.node_id,
            other
        ),
    }
    let master_key = dd.master_key()?;
    let ca = dd.ca()?;
    let validity = cert_validity(cfg);
    // A node that was down for long may hold an expired certificate: renewed before it talks.
    let identity = match renew_if_due(&dd, &ca, nf.node_id, &identity, validity)? {
        Some(renewed) => renewed,
        None => identity,
    };
    let store = Store::open(&dd.root, &nf.cluster_id)?;
    let setup = MemberSetup {
        node_id: nf.node_id,
        cluster_id: nf.cluster_id.clone(),
        node: NodeInfo {
            cluster_addr: cfg.cluster_advertise.clone(),
            admin_addr: cfg.raw.admin.listen.clone(),
            public_addr: cfg.raw.public.https.clone(),
        },
        listen: cfg.cluster_listen,
        identity,
        ca,
        master_key,
        tuning: cfg.raw.raft.clone(),
        cert_validity: validity,
    };
    Ok(Prepared {
        setup,
        store,
        node_file: nf,
        data_dir: dd,
    })
}

fn cert_validity(cfg: &Validated) -> Duration {
    Duration::from_secs(cfg.raw.cluster.node_cert_validity_seconds)
}

/// Renew this node's certificate when a third of its validity is left, or when it outlives the
/// configured validity (one made before node certificates expired, or with a longer setting):
/// signed by the cluster CA over the node's own key, written to `tls/node.pem`. Returns the
/// renewed identity.
fn renew_if_due(
    dd: &DataDir,
    ca: &palisade_raft::crypto::CaMaterial,
    node_id: palisade_raft::ids::NodeId,
    identity: &Identity,
    validity: Duration,
) -> Result<Option<Identity>> {
    let (_, _, not_after, _) = palisade_raft::crypto::cert_facts(&identity.cert_pem)
        .map_err(|e| anyhow::anyhow!("the node certificate cannot be read: {e}"))?;
    let (now, v) = (palisade_raft::now_ms(), validity.as_millis() as u64);
    let left = not_after.saturating_sub(now);
    if left > v / 3 && left <= v + 86_400_000 {
        return Ok(None);
    }
    let cert_pem = ca.renew_node_cert(node_id, &identity.key_pem, validity)?;
    dd.write_public("tls/node.pem", &cert_pem)?;
    tracing::info!(
        node = node_id,
        old_not_after_ms = not_after,
        valid_for_s = validity.as_secs(),
        "node certificate renewed"
    );
    Ok(Some(Identity {
        cert_pem,
        ..identity.clone()
    }))
}

/// Keep the running node's certificate renewed: look every tenth of its validity (at most
/// hourly) and present a renewed one from the next handshake on.
async fn keep_certificate_renewed(
    cluster: Arc<Cluster>,
    dd: DataDir,
    validity: Duration,
    shutdown: Shutdown,
) {
    let interval = (validity / 10).clamp(Duration::from_secs(1), Duration::from_secs(3_600));
    palisade_raft::task::every(interval, &shutdown, "node certificate renewal", || {
        let (cluster, dd) = (cluster.clone(), &dd);
        async move {
            let identity = dd.identity()?;
            if let Some(renewed) =
                renew_if_due(dd, cluster.ca(), cluster.node_id, &identity, validity)?
            {
                cluster.use_certificate(&renewed)?;
            }
            Ok::<(), anyhow::Error>(())
        }
    })
    .await
}

/// A started node: cluster member, edge and admin API.
pub struct Running {
    pub cluster: Arc<Cluster>,
    shutdown: Shutdown,
    admin: tokio::task::JoinHandle<Result<()>>,
    edge: palisade_edge::workers::Workers,
}

/// Connections the kernel completes before the node accepts them. A short queue overflows in
/// a burst of connections, and every visitor's SYN is then dropped and retried a second later;
/// the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(name: &str, addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    let listen = || -> std::io::Result<tokio::net::TcpListener> {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot bind {name} {addr}"))
}

/// `n` listening sockets on one address with `SO_REUSEPORT`, one per data-plane worker; the
/// kernel spreads connections over them. Another process holding the address is reported as
/// such: the address is first bound alone, without `SO_REUSEPORT`, so that a second node on
/// the same port fails to start instead of sharing its traffic.
fn bind_each(
    name: &str,
    addr: std::net::SocketAddr,
    n: usize,
) -> Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let socket = |addr: std::net::SocketAddr, shared: bool| -> std::io::Result<Socket> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        if shared {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        Ok(s)
    };
    let ctx = || format!("cannot bind {name} {addr}");
    if addr.port() != 0 {
        // Bound, not listening: refused if anyone listens there, released when dropped.
        drop(socket(addr, false).with_context(ctx)?);
    }
    let first = socket(addr, true).with_context(ctx)?;
    // Port 0: the others join the port the first one was given.
    let addr = first
        .local_addr()?
        .as_socket()
        .context("a TCP listener has an IP address")?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(socket(addr, true).with_context(ctx)?);
    }
    all.into_iter()
        .map(|s| {
            s.listen(LISTEN_BACKLOG as i32).with_context(ctx)?;
            Ok(s.into())
        })
        .collect()
}

/// Data-plane workers: the configured number, or one per CPU.
fn worker_count(cfg: &Validated) -> usize {
    match cfg.raw.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Raise the soft open-files limit to the hard one (every public connection is a file), and
/// say what the node can hold.
fn raise_open_files(cfg: &Validated) {
    let slots = &cfg.edge.limits.slots;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) => tracing::info!(
            open_files = files,
            max_connections = slots.max(),
            max_connections_per_ip = slots.per_ip(),
            "open-files limit raised to the hard limit"
        ),
        Err(e) => {
            tracing::warn!(error = %e, max_connections = slots.max(), "cannot raise the open-files limit")
        }
    }
}

pub async fn start(cfg: &Validated) -> Result<Running> {
    let p = prepare(cfg)?;
    raise_open_files(cfg);
    let workers = worker_count(cfg);
    let listeners = bind_each("public.http", cfg.http_listen, workers)?
        .into_iter()
        .zip(bind_each("public.https", cfg.https_listen, workers)?)
        .map(|(http, https)| palisade_edge::workers::Listeners { http, https })
        .collect();
    let admin_listener = bind("admin.listen", cfg.admin_listen).await?;
    let node_id = p.node_file.node_id;
    let master = p.setup.master_key.clone();
    let cluster = Cluster::start(p.setup, p.store, &p.data_dir.root).await?;
    let shutdown = Shutdown::new();
    palisade_admin::metrics_handle();
    let edge = palisade_edge::Edge::start(
        cluster.reader.clone(),
        master,
        cfg.edge.clone(),
        listeners,
        shutdown.clone(),
    )?;
    tracing::info!(
        node = node_id,
        cluster = %cluster.cluster_id,
        cluster_addr = %cluster.node.cluster_addr,
        admin = %cfg.admin_listen,
        http = %cfg.http_listen,
        https = %cfg.https_listen,
        workers,
        allocator = crate::alloc::name(),
        "node started"
    );
    tokio::spawn(jobs::sweep::run(
        cluster.clone(),
        edge.view.clone(),
        cfg.rule_sweep_interval,
        jobs::sweep::Retention {
            max_age: cfg.admin.audit_max_age,
            max_entries: cfg.admin.audit_max_entries,
        },
        shutdown.clone(),
    ));
    tokio::spawn(jobs::keyring::run(cluster.clone(), shutdown.clone()));
    tokio::spawn(keep_certificate_renewed(
        cluster.clone(),
        DataDir::new(&cfg.raw.data_dir),
        cert_validity(cfg),
        shutdown.clone(),
    ));
    tokio::spawn(jobs::decisions::run(
        cluster.clone(),
        edge.detector.clone(),
        shutdown.clone(),
    ));
    match &cfg.acme {
        Some(acme) => {
            tracing::info!(directory = %acme.directory, challenge = ?acme.challenge, "automatic certificates on");
            let worker = jobs::acme::Acme::new(acme.clone(), cluster.clone());
            tokio::spawn(worker.run(shutdown.clone()));
        }
        None => tracing::warn!(
            "acme.directory = \"off\": domains with tls = \"acme\" get no certificates from this node"
        ),
    }
    if cfg.raw.admin.allow_public {
        tracing::warn!(
            admin = %cfg.admin_listen,
            "admin.allow_public is set: the admin API may be reachable from public networks; keep admin.allowed_ips tight"
        );
    }
    let state = Arc::new(AdminState::new(
        cluster.clone(),
        Arc::new(EdgeView(edge.view.clone(), edge.egress.clone())),
        cfg.admin.clone(),
    ));
    let admin_tls = match cfg.raw.admin.tls {
        true => Some(admin_tls(&p.data_dir, cfg)?),
        false => None,
    };
    let admin = tokio::spawn(serve_admin(
        state,
        admin_listener,
        admin_tls,
        shutdown.clone(),
    ));
    if !p.node_file.joined {
        tokio::spawn(crate::lifecycle::finish_join(
            cluster.clone(),
            p.data_dir,
            p.node_file.clone(),
        ));
    }
    Ok(Running {
        cluster,
        shutdown,
        admin,
        edge: edge.workers,
    })
}

/// The admin API's window on the edge: the IP decision and the upstream policy exactly as this
/// node's edge enforces them.
struct EdgeView(Arc<LiveView>, Arc<palisade_edge::egress::Egress>);

impl EdgeRules for EdgeView {
    fn seen(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.seen()
    }

    fn verdict(&self, project: Option<&ProjectId>, ip: std::net::IpAddr, now: u64) -> Verdict {
        self.0.get().access.decide(project, ip, now)
    }

    fn upstream_refusal(
        &self,
        addr: std::net::SocketAddr,
    ) -> Option<palisade_raft::model::upstream::Forbidden> {
        self.1.refusal(addr)
    }
}

impl Running {
    /// Serve until SIGTERM or Ctrl-C, then stop: listeners first, in-flight requests get a
    /// moment, then Raft.
    pub async fn until_signal(self) -> Result<()> {
        let Running {
            cluster,
            shutdown,
            admin,
            edge,
        } = self;
        let mut admin = admin;
        let result = tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                Ok(())
            }
            r = &mut admin => match r {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("admin API stopped unexpectedly")),
            },
        };
        shutdown.cancel();
        // The public listeners and the admin API drain at the same time.
        let _ = tokio::join!(edge.stopped(DRAIN), tokio::time::timeout(DRAIN, admin));
        cluster.shutdown().await;
        tracing::info!("stopped");
        result
    }
}

pub async fn run(cfg: Validated) -> Result<()> {
    start(&cfg).await?.until_signal().await
}

/// The admin listener's TLS: a certificate for its address (the advertised cluster address and
/// loopback when it listens on a wildcard) from the cluster CA, made afresh at each start.
fn admin_tls(dd: &DataDir, cfg: &Validated) -> Result<Arc<rustls::ServerConfig>> {
    let ca = dd.ca()?;
    let listen = cfg.admin_listen.ip();
    let ips = match listen.is_unspecified() {
        false => vec![listen],
        true => {
            let mut ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
            if let Ok(adv) = cfg.cluster_advertise.parse::<std::net::SocketAddr>() {
                ips.push(adv.ip());
            }
            ips
        }
    };
    let (cert, key) = ca
        .admin_server_cert(&ips, &[])
        .map_err(|e| anyhow::anyhow!("admin TLS certificate: {e}"))?;
    let chain = format!("{cert}{}", ca.cert_pem);
    palisade_admin::tls::server_config(&chain, &key).map_err(|e| anyhow::anyhow!(e))
}

async fn serve_admin(
    state: Arc<AdminState>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: Shutdown,
) -> Result<()> {
    let addr = listener.local_addr()?;
    palisade_admin::serve(state, listener, tls, shutdown.cancelled_owned(), DRAIN)
        .await
        .with_context(|| format!("admin API on {addr}"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
