//! A running member: the Raft instance, its transport (client and server side), leader
//! forwarding and linearizable reads.
//!
//! - [`membership`]: adding, promoting and removing members, leadership transfer, status;
//! - [`join`]: join tokens, and the join of a node that has no certificate yet;
//! - [`serve`]: the server side of the transport (every RPC a peer may send), and
//!   [`strangers`]: what a peer without a node certificate may cost;
//! - [`lease`]: leases on cluster work, held through a guard that fences every write.

mod join;
pub mod lease;
mod membership;
mod serve;
pub mod strangers;

pub use join::{ping, request_join, JoinToken};
pub use lease::{LeaseError, LeaseGuard};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::{ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};

use crate::command::{Request, Response};
use crate::crypto::{CaMaterial, MasterKey};
use crate::ids::NodeId;
use crate::store::{StateReader, Store};
use crate::transport::proto::{RemoteError, Rpc};
use crate::transport::{self, tls, Network, Transport, TransportError};
use crate::types::{NodeInfo, Raft};

const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no leader could be reached within {0:?}; the write may or may not have been applied, retry with the same request id")]
    Unavailable(Duration),
    #[error("refused: {0}")]
    Refused(String),
    #[error("raft stopped: {0}")]
    Fatal(String),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Setup(String),
    #[error("the write at index {index} is committed, but voters {missing:?} did not confirm applying it in time")]
    NotApplied { index: u64, missing: Vec<NodeId> },
    #[error("a write of {0} bytes exceeds the limit of {max} bytes per log entry; split it", max = MAX_ENTRY_BYTES)]
    TooLarge(usize),
}

/// The largest command one log entry may carry. With `MAX_PAYLOAD_ENTRIES` entries per append
/// this keeps every append RPC under the transport's frame limit, however far behind a
/// follower is.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;
const MAX_PAYLOAD_ENTRIES: u64 = 24;
const _: () = assert!(
    MAX_ENTRY_BYTES * MAX_PAYLOAD_ENTRIES as usize + (1 << 20) < crate::transport::proto::MAX_FRAME
);

impl ClusterError {
    /// A retry with the same request id may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::Unavailable(_) | ClusterError::Transport(_)
        )
    }
}

/// Raft timing and log retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for followers that are briefly behind.
    pub keep_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every: 10_000,
            keep_logs: 1_000,
        }
    }
}

impl RaftTuning {
    pub fn validate(&self) -> Result<openraft::Config, String> {
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 3 > self.election_timeout_min_ms {
            return Err(format!(
                "raft.heartbeat_ms = {} must be above 0 and at most a third of raft.election_timeout_min_ms = {}",
                self.heartbeat_ms, self.election_timeout_min_ms
            ));
        }
        if self.snapshot_every == 0 {
            return Err("raft.snapshot_every must be above 0".into());
        }
        let cfg = openraft::Config {
            cluster_name: "palisade".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            enable_pre_vote: Some(true),
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Default::default()
        };
        cfg.validate().map_err(|e| format!("raft settings: {e}"))
    }
}

/// Everything a member needs to start.
pub struct MemberSetup {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub node: NodeInfo,
    pub listen: SocketAddr,
    pub identity: tls::Identity,
    pub ca: CaMaterial,
    pub master_key: MasterKey,
    pub tuning: RaftTuning,
    /// How long the node certificates this node signs (for joining nodes) are valid.
    pub cert_validity: std::time::Duration,
}

pub struct Cluster {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub node: NodeInfo,
    pub raft: Raft,
    pub reader: StateReader,
    transport: Arc<Transport>,
    ca: CaMaterial,
    ca_sha256: String,
    master_key: MasterKey,
    snapshot_dir: std::path::PathBuf,
    strangers: strangers::Strangers,
    /// The certificate this node presents, replaced when renewed.
    node_cert: Arc<tls::NodeCert>,
    cert_validity: std::time::Duration,
}

impl Cluster {
    /// Bind the QUIC endpoint, start Raft on `store`, and serve peers.
    pub async fn start(
        setup: MemberSetup,
        store: Store,
        data_dir: &std::path::Path,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let setup_err = |e: String| ClusterError::Setup(e);
        let config = Arc::new(setup.tuning.validate().map_err(setup_err)?);
        let tls_err = |e: tls::TlsError| setup_err(e.to_string());
        let node_cert = tls::NodeCert::new(&setup.identity).map_err(tls_err)?;
        let server_cfg = transport::server_config(
            setup
                .identity
                .server_config_with(node_cert.clone())
                .map_err(tls_err)?,
        )
        .map_err(tls_err)?;
        let client_cfg = transport::client_config(
            setup
                .identity
                .client_config_with(node_cert.clone())
                .map_err(tls_err)?,
        )
        .map_err(tls_err)?;
        let endpoint = quinn::Endpoint::server(server_cfg, setup.listen)
            .map_err(|e| setup_err(format!("cannot bind cluster address {}: {e}", setup.listen)))?;
        let transport = Arc::new(Transport::new(endpoint.clone(), client_cfg.clone()));
        let bulk = Arc::new(Transport::new(endpoint, client_cfg));
        let network = Network::new(transport.clone(), bulk);
        let raft = Raft::new(
            setup.node_id,
            config,
            network,
            store.log,
            store.state_machine,
        )
        .await
        .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let ca_der = tls::parse_cert(&setup.ca.cert_pem, "cluster CA")
            .map_err(|e| setup_err(e.to_string()))?;
        let cluster = Arc::new(Cluster {
            node_id: setup.node_id,
            cluster_id: setup.cluster_id,
            node: setup.node,
            raft,
            reader: store.reader,
            transport,
            ca_sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &ca_der)),
            ca: setup.ca,
            master_key: setup.master_key,
            snapshot_dir: data_dir.join("snapshots"),
            strangers: strangers::Strangers::default(),
            node_cert,
            cert_validity: setup.cert_validity,
        });
        tokio::spawn(cluster.clone().serve());
        Ok(cluster)
    }

    /// Make this node the single voter of a new cluster (first start after `init` only).
    pub async fn bootstrap(&self) -> Result<(), ClusterError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Fatal(e.to_string()))?
        {
            return Ok(());
        }
        let members = BTreeMap::from([(self.node_id, self.node.clone())]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ClusterError::Fatal(e.to_string()))
    }

    /// Present `identity`'s (renewed) node certificate from the next handshake on, as server
    /// and as client.
    pub fn use_certificate(&self, identity: &tls::Identity) -> Result<(), ClusterError> {
        self.node_cert
            .replace(identity)
            .map_err(|e| ClusterError::Setup(e.to_string()))
    }

    /// The CA that signs node certificates (every node holds it, to let new nodes in and to
    /// renew its own certificate).
    pub fn ca(&self) -> &CaMaterial {
        &self.ca
    }

    pub fn master_key(&self) -> &MasterKey {
        &self.master_key
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// The membership this node currently works with.
    fn membership(&self) -> crate::types::Membership {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone()
    }

    fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Apply `req` through the leader, wherever it is. A retry of the same request (same id) is
    /// applied once and answers with the first outcome.
    pub async fn write(&self, req: Request) -> Result<Response, ClusterError> {
        let size = crate::store::encode(&req).len();
        if size > MAX_ENTRY_BYTES {
            return Err(ClusterError::TooLarge(size));
        }
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            match self.raft.client_write(req.clone()).await {
                Ok(r) => return Ok(r.data),
                Err(e) => {
                    let Some(fwd) = e.forward_to_leader() else {
                        return Err(ClusterError::Fatal(e.to_string()));
                    };
                    if let (Some(id), Some(node)) = (fwd.leader_id, fwd.leader_node.clone()) {
                        if id != self.node_id {
                            let left = deadline.saturating_duration_since(Instant::now());
                            let rpc = Rpc::Forward { req: req.clone() };
                            match self
                                .transport
                                .call::<Response>(id, &node.cluster_addr, &rpc, left)
                                .await
                            {
                                Ok(r) => return Ok(r),
                                Err(TransportError::Remote(RemoteError::Refused { reason })) => {
                                    return Err(ClusterError::Refused(reason))
                                }
                                Err(e) => {
                                    tracing::debug!(leader = id, error = %e, "forwarding failed; retrying")
                                }
                            }
                        }
                    }
                }
            }
            if Instant::now() + RETRY_PAUSE > deadline {
                return Err(ClusterError::Unavailable(WRITE_TIMEOUT));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Write on this node only if it is the leader (the callee side of forwarding).
    async fn write_local(&self, req: Request) -> Result<Response, RemoteError> {
        match self.raft.client_write(req).await {
            Ok(r) => Ok(r.data),
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(RemoteError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node.clone()),
                }),
                None => Err(RemoteError::Failed {
                    message: e.to_string(),
                }),
            },
        }
    }

    /// Wait until this node's state reflects every write acknowledged before the call
    /// (read index through the leader).
    pub async fn linearizable_barrier(&self) -> Result<u64, ClusterError> {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let index = match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(read) => Some(read.index()),
                Err(e) => match (e.forward_to_leader(), self.leader()) {
                    (Some(_), Some((id, node))) if id != self.node_id => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        self.transport
                            .call::<u64>(id, &node.cluster_addr, &Rpc::ReadIndex, left)
                            .await
                            .ok()
                    }
                    (Some(_), _) => None,
                    (None, _) => return Err(ClusterError::Fatal(e.to_string())),
                },
            };
            if let Some(index) = index {
                let left = deadline.saturating_duration_since(Instant::now());
                return match tokio::time::timeout(left, self.reader.wait_applied(index)).await {
                    Ok(true) => Ok(index),
                    _ => Err(ClusterError::Unavailable(READ_TIMEOUT)),
                };
            }
            if Instant::now() + RETRY_PAUSE > deadline {
                return Err(ClusterError::Unavailable(READ_TIMEOUT));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Run `op` on the leader: here when this node leads, otherwise sent there as `rpc`.
    async fn on_leader<T, F, Fut>(
        &self,
        rpc: Rpc,
        timeout: Duration,
        op: F,
    ) -> Result<T, ClusterError>
    where
        T: serde::de::DeserializeOwned,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, RemoteError>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = match self.leader() {
                Some((id, _)) if id == self.node_id => op().await.map_err(TransportError::Remote),
                Some((id, node)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.transport
                        .call::<T>(id, &node.cluster_addr, &rpc, left)
                        .await
                }
                None => Err(TransportError::Remote(RemoteError::NotLeader {
                    leader: None,
                })),
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(TransportError::Remote(RemoteError::Refused { reason })) => {
                    return Err(ClusterError::Refused(reason))
                }
                Err(e) if Instant::now() + RETRY_PAUSE > deadline => return Err(e.into()),
                Err(e) => {
                    tracing::debug!(rpc = rpc.name(), error = %e, "leader call failed; retrying")
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Wait until every voter has applied `index` (a write's commit index), asking them all at
    /// once. The error names the voters that did not confirm within `timeout`.
    pub async fn wait_applied_everywhere(
        &self,
        index: u64,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let membership = self.membership();
        let waits = membership.voter_ids().map(|id| {
            let node = membership.get_node(&id).cloned();
            async move {
                let reached = if id == self.node_id {
                    matches!(
                        tokio::time::timeout(timeout, self.reader.wait_applied(index)).await,
                        Ok(true)
                    )
                } else if let Some(node) = node {
                    let rpc = Rpc::WaitApplied {
                        index,
                        timeout_ms: timeout.as_millis() as u64,
                    };
                    self.transport
                        .call::<u64>(id, &node.cluster_addr, &rpc, timeout + RETRY_PAUSE)
                        .await
                        .is_ok_and(|applied| applied >= index)
                } else {
                    false
                };
                (id, reached)
            }
        });
        let missing: Vec<NodeId> = futures::future::join_all(waits)
            .await
            .into_iter()
            .filter(|(_, reached)| !reached)
            .map(|(id, _)| id)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ClusterError::NotApplied { index, missing })
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Stop Raft and close the transport.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.transport.endpoint().close(0u32.into(), b"shutdown");
    }
}
