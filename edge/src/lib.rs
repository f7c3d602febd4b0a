//! The data plane of a Palisade node.
//!
//! # Layout
//!
//! - [`access`]: IP allow and block lists compiled into prefix tables;
//! - [`acme`]: automatic certificates, one order per name cluster-wide (leases with fencing);
//! - [`bot`]: the replicated keyring that signs bot-protection clearance cookies;
//! - [`botgate`], [`challenge`], [`detect`]: bot protection in the pipeline (the challenge page
//!   and its answer, tokens and cookies, the triggers' counters and their replicated decisions);
//! - [`view`]: the compiled view of the replicated state (hosts, projects, certificates, IP lists) behind
//!   `arc-swap`, kept current from the store's change events;
//! - [`tls`]: certificates by SNI from that view;
//! - [`server`]: the public listeners (PROXY protocol, TLS, HTTP/1.1 and h2, limits, timeouts);
//! - [`client_ip`], [`pipeline`]: the one client-IP resolver and the ordered request stages;
//! - [`proxy`], [`upstream`]: forwarding, target selection and health;
//! - [`response`]: pages the edge makes and the security headers on every response.
//!
//! The edge reads only the applied state (`palisade_raft::store::StateReader`); it keeps serving
//! through a partition, and never talks to the admin API.

#![forbid(unsafe_code)]

pub mod access;
pub mod acme;
pub mod bot;
pub mod botgate;
pub mod challenge;
pub mod client_ip;
pub mod detect;
pub mod pipeline;
pub mod proxy;
pub mod proxy_protocol;
pub mod response;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod view;

use std::sync::Arc;

use palisade_raft::crypto::MasterKey;
use palisade_raft::ids::Cidr;
use palisade_raft::store::StateReader;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use server::ListenerLimits;

/// How a node's edge is set up.
#[derive(Debug, Clone, Default)]
pub struct EdgeSettings {
    pub trusted_proxies: Vec<Cidr>,
    pub limits: ListenerLimits,
    pub timeouts: proxy::ProxyTimeouts,
}

/// A running edge: both listeners, the live view, and the upstream health checker.
pub struct Edge {
    pub view: Arc<view::LiveView>,
    pub pipeline: Arc<pipeline::Pipeline>,
    /// Bot protection's counters and the decisions they queue ([`detect::run_writer`] sends
    /// them to the cluster).
    pub detector: Arc<detect::Detector>,
}

impl Edge {
    /// Start serving on the given (already bound) listeners until `shutdown` turns true.
    pub fn start(
        reader: StateReader,
        master: MasterKey,
        settings: EdgeSettings,
        http: TcpListener,
        https: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Edge> {
        let view = view::LiveView::start(reader.clone(), master.clone())?;
        let tls = Arc::new(tls::TlsConfigs::new(view.clone()).map_err(std::io::Error::other)?);
        let detector = Arc::new(detect::Detector::new());
        let pipeline = Arc::new(pipeline::Pipeline {
            view: view.clone(),
            reader,
            master,
            client_ip: client_ip::ClientIpResolver::new(settings.trusted_proxies.clone()),
            proxy: proxy::Proxy::new(settings.timeouts.clone()),
            gates: vec![Box::new(botgate::BotGate::new(
                view.clone(),
                detector.clone(),
            ))],
        });
        tokio::spawn(server::serve(
            http,
            None,
            pipeline.clone(),
            settings.limits.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(server::serve(
            https,
            Some(tls),
            pipeline.clone(),
            settings.limits.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(health_checks(view.clone(), shutdown));
        Ok(Edge {
            view,
            pipeline,
            detector,
        })
    }
}

async fn health_checks(view: Arc<view::LiveView>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let groups = view.get().upstream_groups();
        futures::future::join_all(groups.iter().map(|g| g.check())).await;
        tokio::select! {
            _ = tokio::time::sleep(upstream::HEALTH_INTERVAL) => {}
            _ = server::stopped(&mut shutdown) => return,
        }
    }
}
