//! A running member: the Raft instance, its transport (client and server side), leader
//! forwarding, linearizable reads, membership changes and joining.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};

use crate::command::{Command, Request, Response};
use crate::crypto::{sha256_hex, CaMaterial, MasterKey};
use crate::ids::NodeId;
use crate::model::{AuditEntry, Millis};
use crate::store::{SnapshotFile, StateReader, Store};
use crate::transport::proto::{
    ClusterStatus, JoinGrant, JoinRequest, MemberStatus, Pong, RemoteError, Rpc,
};
use crate::transport::{self, read_frame, tls, write_frame, Network, Transport, TransportError};
use crate::types::{NodeInfo, Raft, TypeConfig};

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
}

/// A join token as handed to an operator: where to join, which CA to trust, and the secret.
#[derive(Serialize, Deserialize)]
pub struct JoinToken {
    pub node_id: NodeId,
    pub addr: String,
    pub ca_sha256: String,
    pub secret: String,
}

const TOKEN_PREFIX: &str = "PJT1.";

impl JoinToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("token encodes");
        format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn decode(s: &str) -> Result<JoinToken, String> {
        let body = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or("join token must start with PJT1.")?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "join token is not valid base64url".to_string())?;
        serde_json::from_slice(&json).map_err(|e| format!("join token is malformed: {e}"))
    }
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
        let server_cfg =
            transport::server_config(&setup.identity).map_err(|e| setup_err(e.to_string()))?;
        let client_cfg = transport::client_config(
            setup
                .identity
                .client_config()
                .map_err(|e| setup_err(e.to_string()))?,
        )
        .map_err(|e| setup_err(e.to_string()))?;
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

    /// Add `id` as a learner, let it catch up, then promote it to voter.
    pub async fn add_member(&self, id: NodeId, node: NodeInfo) -> Result<(), ClusterError> {
        let rpc = Rpc::AddMember {
            id,
            node: node.clone(),
        };
        self.on_leader(rpc, MEMBERSHIP_TIMEOUT, || {
            self.add_member_local(id, node.clone())
        })
        .await
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

    /// Make voter `to` the leader, and wait (up to `timeout`) until it is.
    pub async fn transfer_leadership(
        &self,
        to: NodeId,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        if !self.membership().voter_ids().any(|v| v == to) {
            return Err(ClusterError::Refused(format!("node {to} is not a voter")));
        }
        self.on_leader(Rpc::TransferLeadership { to }, timeout, || async {
            if self.node_id == to {
                return Ok(());
            }
            self.raft
                .trigger()
                .transfer_leader(to)
                .await
                .map_err(|e| RemoteError::Failed {
                    message: e.to_string(),
                })
        })
        .await?;
        let mut metrics = self.raft.metrics();
        let became = tokio::time::timeout(timeout, async {
            loop {
                if metrics.borrow_watched().current_leader == Some(to) {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match became {
            Ok(true) => Ok(()),
            _ => Err(ClusterError::Unavailable(timeout)),
        }
    }

    /// Ask member `via` (id, cluster address) to add this node; for a node that is not yet a
    /// member and so does not know the leader.
    pub async fn join_via(&self, via: (NodeId, String)) -> Result<(), ClusterError> {
        let rpc = Rpc::AddMember {
            id: self.node_id,
            node: self.node.clone(),
        };
        match self
            .transport
            .call::<()>(via.0, &via.1, &rpc, MEMBERSHIP_TIMEOUT)
            .await
        {
            Ok(()) => Ok(()),
            Err(TransportError::Remote(RemoteError::Refused { reason })) => {
                Err(ClusterError::Refused(reason))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn add_member_local(&self, id: NodeId, node: NodeInfo) -> Result<(), RemoteError> {
        let failed = |e: String| RemoteError::Failed { message: e };
        let membership = self.membership();
        if membership.voter_ids().any(|v| v == id) {
            return Ok(());
        }
        if membership.get_node(&id).is_none() {
            self.raft
                .add_learner(id, node, true)
                .await
                .map_err(|e| self.leader_error(e.to_string(), e.forward_to_leader().is_some()))?;
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| {
                if e.forward_to_leader().is_some() {
                    self.leader_error(e.to_string(), true)
                } else {
                    failed(e.to_string())
                }
            })?;
        tracing::info!(node = id, "node is now a voter");
        Ok(())
    }

    fn leader_error(&self, message: String, not_leader: bool) -> RemoteError {
        if not_leader {
            RemoteError::NotLeader {
                leader: self.leader(),
            }
        } else {
            RemoteError::Failed { message }
        }
    }

    /// Remove `id` from the cluster (voter or learner).
    pub async fn remove_member(&self, id: NodeId) -> Result<(), ClusterError> {
        self.on_leader(Rpc::RemoveMember { id }, MEMBERSHIP_TIMEOUT, || {
            self.remove_member_local(id)
        })
        .await
    }

    async fn remove_member_local(&self, id: NodeId) -> Result<(), RemoteError> {
        let membership = self.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            if membership.voter_ids().count() == 1 {
                return Err(RemoteError::Refused {
                    reason: "cannot remove the last voter".into(),
                });
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(RemoteError::Refused {
                reason: format!("node {id} is not a member"),
            });
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.leader_error(e.to_string(), e.forward_to_leader().is_some()))?;
        tracing::info!(node = id, "node removed from the cluster");
        Ok(())
    }

    /// The cluster as the leader sees it (members, replication lag); this node's own view when no
    /// leader answers.
    pub async fn status(&self) -> ClusterStatus {
        match self
            .on_leader(Rpc::Status, Duration::from_secs(2), || async {
                Ok(self.local_status())
            })
            .await
        {
            Ok(mut s) => {
                s.node_id = self.node_id;
                s.applied = self.reader.applied_index();
                s
            }
            Err(_) => self.local_status(),
        }
    }

    pub fn local_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.as_ref().map(|l| l.index).unwrap_or(0));
                MemberStatus {
                    id: *id,
                    node: node.clone(),
                    voter: voters.contains(id),
                    matched,
                    lag: matched.map(|x| last.saturating_sub(x)),
                    last_ack_ms: m
                        .heartbeat
                        .as_ref()
                        .and_then(|h| h.get(id).cloned().flatten())
                        .map(|t| openraft::Instant::elapsed(&*t).as_millis() as u64),
                }
            })
            .collect();
        ClusterStatus {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: m.local_committed.map(|l| l.index),
            applied: self.reader.applied_index(),
            members,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Create a one-use join token valid for `ttl`.
    pub async fn create_join_token(
        &self,
        ttl: Duration,
        created_by: &str,
        now: Millis,
    ) -> Result<String, ClusterError> {
        let mut secret = [0u8; 32];
        crate::crypto::fill_random(&mut secret);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let cmd = Command::CreateJoinToken {
            hash: sha256_hex(secret.as_bytes()),
            expires_ms: now + ttl.as_millis() as u64,
            created_by: created_by.to_string(),
        };
        match self.write(Request::new(cmd)).await? {
            Response::Refused { reason } => Err(ClusterError::Refused(reason)),
            _ => Ok(JoinToken {
                node_id: self.node_id,
                addr: self.node.cluster_addr.clone(),
                ca_sha256: self.ca_sha256.clone(),
                secret,
            }
            .encode()),
        }
    }

    async fn handle_join(&self, join: JoinRequest) -> Result<JoinGrant, RemoteError> {
        let audit = AuditEntry {
            seq: 0,
            at: crate::now_ms(),
            actor: "join".into(),
            source_ip: join.node.cluster_addr.clone(),
            action: "cluster.join".into(),
            target: join.node.cluster_addr.clone(),
            outcome: "ok".into(),
        };
        let req = Request::new(Command::ConsumeJoinToken {
            hash: sha256_hex(join.secret.as_bytes()),
        })
        .with_audit(audit);
        let node_id = match self.write(req).await {
            Ok(Response::NodeIdAllocated { node_id, .. }) => node_id,
            Ok(Response::Refused { reason }) => return Err(RemoteError::Refused { reason }),
            Ok(other) => {
                return Err(RemoteError::Failed {
                    message: format!("unexpected answer {other:?}"),
                })
            }
            Err(e) => {
                return Err(RemoteError::Failed {
                    message: e.to_string(),
                })
            }
        };
        let node_cert_pem =
            self.ca
                .sign_node_csr(node_id, &join.csr_pem)
                .map_err(|e| RemoteError::Refused {
                    reason: format!("bad certificate request: {e}"),
                })?;
        tracing::info!(node = node_id, addr = %join.node.cluster_addr, "join token accepted; node id allocated");
        Ok(JoinGrant {
            node_id,
            cluster_id: self.cluster_id.clone(),
            ca_cert_pem: self.ca.cert_pem.clone(),
            ca_key_pem: self.ca.key_pem.clone(),
            node_cert_pem,
            master_key_hex: self.master_key.to_hex(),
        })
    }

    /// Accept peer connections until the endpoint closes.
    async fn serve(self: Arc<Self>) {
        while let Some(incoming) = self.transport.endpoint().accept().await {
            let this = self.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster handshake failed");
                        return;
                    }
                };
                let peer = conn
                    .peer_identity()
                    .and_then(|any| {
                        any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                            .ok()
                    })
                    .and_then(|chain| {
                        chain
                            .first()
                            .and_then(|c| crate::crypto::node_id_of_cert(c))
                    });
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let this = this.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.serve_stream(peer, send, recv).await {
                            tracing::debug!(peer = ?peer, error = %e, "cluster stream failed");
                        }
                    });
                }
            });
        }
    }

    async fn serve_stream(
        &self,
        peer: Option<NodeId>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), TransportError> {
        let rpc: Rpc = match read_frame(&mut recv).await {
            Ok(r) => r,
            Err(e) => {
                let reply: Result<(), RemoteError> = Err(RemoteError::Refused {
                    reason: e.to_string(),
                });
                let _ = write_frame(&mut send, &reply).await;
                let _ = send.finish();
                return Err(e);
            }
        };
        macro_rules! reply {
            ($v:expr) => {{
                write_frame(&mut send, &$v).await?;
                let _ = send.finish();
                return Ok(());
            }};
        }
        let unauth = |reason: String| RemoteError::Unauthenticated { reason };
        let Some(peer_id) = peer else {
            match rpc {
                Rpc::Join(j) => reply!(self.handle_join(j).await),
                Rpc::Ping { .. } => reply!(Ok::<_, RemoteError>(self.pong(None))),
                other => reply!(Err::<(), _>(unauth(format!(
                    "{} needs a node certificate",
                    other.name()
                )))),
            }
        };
        let claim_ok = |claimed: NodeId| {
            if claimed == peer_id {
                Ok(())
            } else {
                Err(unauth(format!(
                    "certificate is for node {peer_id}, message claims node {claimed}"
                )))
            }
        };
        let fatal = |e: openraft::error::RaftError<TypeConfig>| RemoteError::Failed {
            message: e.to_string(),
        };
        match rpc {
            Rpc::Append { req } => match claim_ok(req.vote.leader_id.node_id) {
                Ok(()) => reply!(self.raft.append_entries(req).await.map_err(fatal)),
                Err(e) => reply!(Err::<(), _>(e)),
            },
            Rpc::Vote { req } => match claim_ok(req.vote.leader_id.node_id) {
                Ok(()) => reply!(self.raft.vote(req).await.map_err(fatal)),
                Err(e) => reply!(Err::<(), _>(e)),
            },
            Rpc::PreVote { req } => match claim_ok(req.vote.leader_id.node_id) {
                Ok(()) => reply!(self.raft.pre_vote(req).await.map_err(fatal)),
                Err(e) => reply!(Err::<(), _>(e)),
            },
            Rpc::TransferLeader { req } => {
                reply!(self.raft.handle_transfer_leader(req).await.map_err(|e| {
                    RemoteError::Failed {
                        message: e.to_string(),
                    }
                }))
            }
            Rpc::Snapshot { vote, meta, size } => {
                if let Err(e) = claim_ok(vote.leader_id.node_id) {
                    reply!(Err::<(), _>(e));
                }
                let file = SnapshotFile::incoming(&self.snapshot_dir);
                let received = receive_file(&mut recv, &file.path, size).await;
                let result = match received {
                    Ok(()) => self
                        .raft
                        .install_full_snapshot(
                            vote,
                            openraft::storage::Snapshot {
                                meta,
                                snapshot: file.clone(),
                            },
                        )
                        .await
                        .map_err(|e| RemoteError::Failed {
                            message: e.to_string(),
                        }),
                    Err(e) => Err(RemoteError::Failed {
                        message: format!("receiving snapshot: {e}"),
                    }),
                };
                let _ = tokio::fs::remove_file(&file.path).await;
                reply!(result)
            }
            Rpc::Forward { req } => reply!(self.write_local(req).await),
            Rpc::ReadIndex => {
                let r = self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await;
                reply!(r
                    .map(|r| r.index())
                    .map_err(|e| self.leader_error(e.to_string(), e.forward_to_leader().is_some())))
            }
            // Routed on to the leader when this node is not it: a joining node knows only the
            // member that issued its token.
            Rpc::AddMember { id, node } => {
                reply!(self.add_member(id, node).await.map_err(remote_error))
            }
            Rpc::RemoveMember { id } => reply!(self.remove_member(id).await.map_err(remote_error)),
            Rpc::Status => reply!(Ok::<_, RemoteError>(self.local_status())),
            Rpc::WaitApplied { index, timeout_ms } => {
                let limit = Duration::from_millis(timeout_ms.min(60_000));
                let _ = tokio::time::timeout(limit, self.reader.wait_applied(index)).await;
                reply!(Ok::<_, RemoteError>(self.reader.applied_index()))
            }
            Rpc::TransferLeadership { to } => {
                let r =
                    if !self.is_leader() {
                        Err(RemoteError::NotLeader { leader: None })
                    } else {
                        self.raft.trigger().transfer_leader(to).await.map_err(|e| {
                            RemoteError::Failed {
                                message: e.to_string(),
                            }
                        })
                    };
                reply!(r)
            }
            Rpc::Join(j) => reply!(self.handle_join(j).await),
            Rpc::Ping { from } => match claim_ok(from) {
                Ok(()) => reply!(Ok::<_, RemoteError>(self.pong(Some(peer_id)))),
                Err(e) => reply!(Err::<Pong, _>(e)),
            },
        }
    }

    fn pong(&self, you_are: Option<NodeId>) -> Pong {
        Pong {
            node_id: self.node_id,
            cluster_id: self.cluster_id.clone(),
            you_are,
        }
    }

    /// Stop Raft and close the transport.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.transport.endpoint().close(0u32.into(), b"shutdown");
    }
}

fn remote_error(e: ClusterError) -> RemoteError {
    match e {
        ClusterError::Refused(reason) => RemoteError::Refused { reason },
        ClusterError::Transport(TransportError::Remote(r)) => r,
        other => RemoteError::Failed {
            message: other.to_string(),
        },
    }
}

async fn receive_file(
    recv: &mut quinn::RecvStream,
    path: &std::path::Path,
    size: u64,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::File::create(path).await?;
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = recv
            .read(&mut buf[..want])
            .await
            .map_err(std::io::Error::other)?;
        match n {
            Some(n) if n > 0 => {
                f.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            _ => {
                return Err(std::io::Error::other(format!(
                    "stream ended with {left} bytes missing"
                )))
            }
        }
    }
    f.sync_all().await
}

/// A client-only QUIC endpoint of the same address family as `peer`.
fn client_endpoint(peer: SocketAddr) -> Result<quinn::Endpoint, ClusterError> {
    let any: SocketAddr = if peer.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("valid address");
    quinn::Endpoint::client(any)
        .map_err(|e| ClusterError::Setup(format!("cannot open a QUIC client socket: {e}")))
}

/// Ask a member to join; used by `palisade join` before the new node has a certificate.
pub async fn request_join(token: &JoinToken, req: JoinRequest) -> Result<JoinGrant, ClusterError> {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&token.ca_sha256, &mut pin)
        .map_err(|_| ClusterError::Setup("join token has a bad CA hash".into()))?;
    let tls = tls::join_client_config(pin).map_err(|e| ClusterError::Setup(e.to_string()))?;
    let client = transport::client_config(tls).map_err(|e| ClusterError::Setup(e.to_string()))?;
    let addr = transport::resolve(&token.addr)?;
    let endpoint = client_endpoint(addr)?;
    let conn = transport::connect(
        &endpoint,
        &client,
        addr,
        &crate::crypto::node_server_name(token.node_id),
    )
    .await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| TransportError::Io {
        addr: token.addr.clone(),
        detail: e.to_string(),
    })?;
    write_frame(&mut send, &Rpc::Join(req)).await?;
    let _ = send.finish();
    let reply: Result<JoinGrant, RemoteError> =
        tokio::time::timeout(WRITE_TIMEOUT * 2, read_frame(&mut recv))
            .await
            .map_err(|_| TransportError::Timeout(WRITE_TIMEOUT * 2))??;
    endpoint.close(0u32.into(), b"done");
    reply.map_err(|e| match e {
        RemoteError::Refused { reason } => ClusterError::Refused(reason),
        other => ClusterError::Transport(TransportError::Remote(other)),
    })
}

/// Connect to `addr` with `identity`, expecting node `peer_id`, and ping it as `from`.
pub async fn ping(
    identity: &tls::Identity,
    addr: &str,
    peer_id: NodeId,
    from: NodeId,
) -> Result<Pong, ClusterError> {
    let client = transport::client_config(
        identity
            .client_config()
            .map_err(|e| ClusterError::Setup(e.to_string()))?,
    )
    .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let endpoint = client_endpoint(transport::resolve(addr)?)?;
    let t = Transport::new(endpoint.clone(), client);
    let r = t
        .call::<Pong>(peer_id, addr, &Rpc::Ping { from }, Duration::from_secs(5))
        .await;
    endpoint.close(0u32.into(), b"done");
    Ok(r?)
}
