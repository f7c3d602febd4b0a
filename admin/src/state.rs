//! What every route shares: the node's cluster member, its window on the edge, the admin
//! options from its configuration, and the guard that audits failed authentication.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_raft::cluster::Cluster;
use palisade_raft::ids::{Cidr, ProjectId};
use palisade_raft::model::Verdict;

use crate::guard::Guard;

/// What the node's configuration says about its admin API.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// When not empty, the only sources that reach the admin API.
    pub allowed_ips: Vec<Cidr>,
    /// How often key use is written.
    pub last_used_flush: Duration,
    pub audit_max_age: Duration,
    pub audit_max_entries: u64,
    /// Failed authentications itemised in the audit log per second (the rest are summarised).
    pub failure_audits_per_second: u32,
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            allowed_ips: Vec::new(),
            last_used_flush: Duration::from_secs(60),
            audit_max_age: Duration::from_secs(365 * 86_400),
            audit_max_entries: 1_000_000,
            failure_audits_per_second: crate::guard::FAILURE_AUDITS_PER_SEC,
        }
    }
}

/// What the admin API asks of this node's edge: the decision its live tables make for an
/// address, so that "would this address pass?" answers exactly as the edge enforces. The node
/// (the composition root) implements it with the edge's view; the admin crate never sees the
/// edge.
pub trait EdgeRules: Send + Sync {
    /// The last log index the edge's tables reflect, as it moves.
    fn seen(&self) -> tokio::sync::watch::Receiver<u64>;
    /// The edge's decision for a request from `ip` to `project` (`None`: the cluster-wide list).
    fn verdict(&self, project: Option<&ProjectId>, ip: IpAddr, now: u64) -> Verdict;
    /// Why the edge would refuse to connect to `addr` as an upstream, if it would.
    fn upstream_refusal(
        &self,
        addr: std::net::SocketAddr,
    ) -> Option<palisade_raft::model::upstream::Forbidden>;
}

pub struct AdminState {
    pub cluster: Arc<Cluster>,
    /// This node's edge: what the data plane enforces (the IP rule check asks it).
    pub edge: Arc<dyn EdgeRules>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub options: AdminOptions,
    pub guard: Arc<Guard>,
    /// Bulk imports (IP lists, configuration) run one at a time per node: each may hold a
    /// large body in memory while it is checked.
    pub imports: tokio::sync::Semaphore,
}

impl AdminState {
    pub fn new(cluster: Arc<Cluster>, edge: Arc<dyn EdgeRules>, options: AdminOptions) -> Self {
        AdminState {
            cluster,
            edge,
            metrics: crate::metrics_handle(),
            options,
            guard: Arc::new(Guard::default()),
            imports: tokio::sync::Semaphore::new(1),
        }
    }
}
