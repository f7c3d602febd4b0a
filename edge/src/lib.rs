//! The data plane of a Palisade node, and the background work that keeps its certificates,
//! keys and housekeeping going.
//!
//! # Layout
//!
//! Serving requests: these modules only **read** the applied state (through the compiled
//! [`view`]), so the edge keeps serving through a partition and never talks to the admin API.
//!
//! - [`view`]: the compiled view of the replicated state (hosts, projects, certificates, IP lists,
//!   bot keys and decisions) behind `arc-swap`, kept current from the store's change events;
//! - [`server`]: the public listeners (PROXY protocol, TLS, HTTP/1.1 and h2, limits, timeouts),
//!   served by [`workers`]: one single-threaded runtime per core, each with its own listeners;
//! - [`tls`]: certificates by SNI from the view;
//! - [`proxy_protocol`]: PROXY v1/v2 headers from trusted load balancers;
//! - [`client_ip`], [`pipeline`]: the one client-IP resolver and the ordered request stages;
//! - [`access`]: IP allow and block lists compiled into prefix tables;
//! - [`bot`]: bot protection in the pipeline (gate, challenge and cookies, keyring, triggers);
//! - [`proxy`], [`upstream`], [`pool`], [`codec`]: forwarding, target selection and health,
//!   each worker's own upstream connections, and the HTTP/1.1 they speak (the edge's own
//!   codec on `httparse`), and [`header_maps`], the worker's free list of the maps they parse into;
//! - [`egress`]: where upstream connections may go (never the node's private side);
//! - [`response`]: pages the edge makes and the security headers on every response.
//!
//! Background work: [`jobs`] **writes** to the replicated state. Work one node does for the
//! cluster (ACME orders, key rotation, the sweep) holds a lease and fences every write; each node
//! writes its own bot-protection decisions.

#![forbid(unsafe_code)]

pub mod access;
pub mod bot;
pub mod client_ip;
pub mod codec;
pub mod conn_limits;
pub mod egress;
pub mod h1;
pub mod header_maps;
pub mod jobs;
pub mod pipeline;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod response;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod view;
pub mod workers;

use std::sync::Arc;

use palisade_raft::crypto::MasterKey;
use palisade_raft::ids::Cidr;
use palisade_raft::store::StateReader;
use palisade_raft::task::{every, Shutdown};

pub use conn_limits::Slots;
pub use server::ListenerLimits;

/// How a node's edge is set up.
#[derive(Debug, Clone, Default)]
pub struct EdgeSettings {
    pub trusted_proxies: Vec<Cidr>,
    /// This node's allowance for upstreams on the private side, added to the cluster
    /// setting `edge.upstream_allowed_networks` (see [`egress`]).
    pub upstream_allowed_networks: Vec<Cidr>,
    /// The node's own listeners (admin, cluster, public): never an upstream.
    pub own_listeners: Vec<std::net::SocketAddr>,
    pub limits: ListenerLimits,
    pub timeouts: proxy::ProxyTimeouts,
}

/// A running edge: the data-plane workers, the live view, and the upstream health checker.
pub struct Edge {
    /// The threads serving the public listeners.
    pub workers: workers::Workers,
    pub view: Arc<view::LiveView>,
    pub pipeline: Arc<pipeline::Pipeline>,
    /// Bot protection's counters and the decisions they queue ([`jobs::decisions`] sends them
    /// to the cluster).
    pub detector: Arc<bot::detect::Detector>,
    /// Where upstream connections may go.
    pub egress: Arc<egress::Egress>,
}

impl Edge {
    /// Start serving on the given (already bound) listeners until `shutdown`: one worker thread
    /// per pair. The view and the health checks run on the caller's runtime.
    pub fn start(
        reader: StateReader,
        master: MasterKey,
        settings: EdgeSettings,
        listeners: Vec<workers::Listeners>,
        shutdown: Shutdown,
    ) -> std::io::Result<Edge> {
        let view = view::LiveView::start(reader.clone(), master.clone())?;
        let tls = Arc::new(tls::TlsConfigs::new(view.clone()).map_err(std::io::Error::other)?);
        let detector = Arc::new(bot::detect::Detector::new());
        let egress = Arc::new(egress::Egress::new(
            view.clone(),
            settings.upstream_allowed_networks.clone(),
            settings.own_listeners.clone(),
        ));
        let pipeline = Arc::new(pipeline::Pipeline {
            view: view.clone(),
            reader,
            master,
            client_ip: client_ip::ClientIpResolver::new(settings.trusted_proxies.clone()),
            proxy: proxy::Proxy::new(settings.timeouts.clone(), egress.clone()),
            gates: vec![Box::new(bot::BotGate::new(view.clone(), detector.clone()))],
        });
        let workers = workers::Workers::start(
            listeners,
            tls,
            pipeline.clone(),
            settings.limits.clone(),
            shutdown.clone(),
        )?;
        tokio::spawn(health_checks(view.clone(), egress.clone(), shutdown));
        Ok(Edge {
            workers,
            egress,
            view,
            pipeline,
            detector,
        })
    }
}

/// Check every upstream of the view once a [`upstream::HEALTH_INTERVAL`], until `shutdown`.
async fn health_checks(view: Arc<view::LiveView>, egress: Arc<egress::Egress>, shutdown: Shutdown) {
    let round = || async {
        let groups = view.get().upstream_groups();
        futures::future::join_all(groups.iter().map(|g| g.check(&egress))).await;
        Ok::<(), std::convert::Infallible>(())
    };
    // The first round at once, then one an interval.
    let _ = round().await;
    every(
        upstream::HEALTH_INTERVAL,
        &shutdown,
        "upstream health",
        round,
    )
    .await
}
