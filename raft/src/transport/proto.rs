//! The messages nodes exchange. Each RPC is one bidirectional QUIC stream: the caller writes one
//! request frame (and, for a snapshot, the file's bytes) and finishes its side; the callee writes
//! one reply frame. A frame is a format version byte, a u32 length and a JSON body.

use serde::{Deserialize, Serialize};

use crate::command::{Request, Response};
use crate::ids::NodeId;
use crate::types::{NodeInfo, SnapshotMeta, TypeConfig, Vote};

pub const FRAME_VERSION: u8 = 1;
/// The largest frame either side accepts. Bulk commands are split below this by their callers.
pub const MAX_FRAME: usize = 32 << 20;
/// The largest frame a peer without a node certificate may send: a join request is a few KB.
pub const MAX_STRANGER_FRAME: usize = 64 << 10;

/// Externally tagged: an internally tagged enum would buffer its content, and serde cannot then
/// read the integer map keys (node ids) inside openraft's membership. An RPC is encoded as soon as
/// it is made and decoded where it is handled, never moved around in bulk: the size of its
/// largest variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rpc {
    Append {
        req: openraft::raft::AppendEntriesRequest<TypeConfig>,
    },
    Vote {
        req: openraft::raft::VoteRequest<TypeConfig>,
    },
    PreVote {
        req: openraft::raft::VoteRequest<TypeConfig>,
    },
    TransferLeader {
        req: openraft::raft::TransferLeaderRequest<TypeConfig>,
    },
    /// Followed on the stream by exactly `size` bytes of snapshot file.
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        size: u64,
    },
    /// A client write, forwarded to the leader.
    Forward {
        req: Request,
    },
    /// Ask the leader for a read index (linearizable reads on a follower).
    ReadIndex,
    /// Add a node as learner, wait for it to catch up, then make it a voter.
    AddMember {
        id: NodeId,
        node: NodeInfo,
    },
    RemoveMember {
        id: NodeId,
    },
    /// The leader's view of the cluster.
    Status,
    /// A node without a certificate asks to join (the only RPC allowed without one).
    Join(JoinRequest),
    /// Wait until this node has applied `index` (at most `timeout_ms`); answers the applied index.
    WaitApplied {
        index: u64,
        timeout_ms: u64,
    },
    /// Sent to the leader: hand leadership to voter `to`.
    TransferLeadership {
        to: NodeId,
    },
    /// Reachability and identity check.
    Ping {
        from: NodeId,
    },
}

impl Rpc {
    pub fn name(&self) -> &'static str {
        match self {
            Rpc::Append { .. } => "append",
            Rpc::Vote { .. } => "vote",
            Rpc::PreVote { .. } => "pre_vote",
            Rpc::TransferLeader { .. } => "transfer_leader",
            Rpc::Snapshot { .. } => "snapshot",
            Rpc::Forward { .. } => "forward",
            Rpc::ReadIndex => "read_index",
            Rpc::AddMember { .. } => "add_member",
            Rpc::RemoveMember { .. } => "remove_member",
            Rpc::Status => "status",
            Rpc::Join(_) => "join",
            Rpc::Ping { .. } => "ping",
            Rpc::WaitApplied { .. } => "wait_applied",
            Rpc::TransferLeadership { .. } => "transfer_leadership",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub secret: String,
    pub csr_pem: String,
    pub node: NodeInfo,
}

impl JoinRequest {
    /// What a joining node claims stays within what a real one sends.
    pub fn check(&self) -> Result<(), String> {
        let fields = [
            ("secret", self.secret.len(), 128),
            ("csr_pem", self.csr_pem.len(), 8 << 10),
            ("node.cluster_addr", self.node.cluster_addr.len(), 256),
            ("node.admin_addr", self.node.admin_addr.len(), 256),
            ("node.public_addr", self.node.public_addr.len(), 256),
        ];
        match fields.iter().find(|(_, len, max)| len > max) {
            Some((name, len, max)) => Err(format!("{name} holds {len} bytes; at most {max}")),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct JoinGrant {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub node_cert_pem: String,
    pub master_key_hex: String,
}

impl std::fmt::Debug for JoinGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinGrant")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pong {
    pub node_id: NodeId,
    pub cluster_id: String,
    /// The id the caller's certificate proves, as the callee saw it.
    pub you_are: Option<NodeId>,
}

/// Why a remote call failed, as the callee reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum RemoteError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    #[error("refused: {reason}")]
    Refused { reason: String },
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: String },
    #[error("remote failure: {message}")]
    Failed { message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub node: NodeInfo,
    pub voter: bool,
    /// Last log index known replicated to it (leader's view).
    pub matched: Option<u64>,
    pub lag: Option<u64>,
    /// Milliseconds since it last acknowledged the leader (leader's view; `None`: unknown).
    #[serde(default)]
    pub last_ack_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: u64,
    pub members: Vec<MemberStatus>,
}

pub type WriteReply = Result<Response, RemoteError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_entries_survive_the_frame_encoding() {
        // Node ids are JSON map keys inside a membership: the frame format must read them back.
        let nodes = std::collections::BTreeMap::from([
            (1u64, NodeInfo::default()),
            (2u64, NodeInfo::default()),
        ]);
        let membership =
            openraft::Membership::new(vec![nodes.keys().copied().collect()], nodes).unwrap();
        let entry: crate::types::Entry = openraft::Entry {
            log_id: openraft::LogId {
                leader_id: openraft::impls::leader_id_adv::LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index: 3,
            },
            payload: openraft::EntryPayload::Membership(membership),
        };
        let rpc = Rpc::Append {
            req: openraft::raft::AppendEntriesRequest {
                vote: openraft::impls::Vote::new_committed(1, 1),
                prev_log_id: None,
                entries: vec![entry],
                leader_commit: None,
            },
        };
        let json = serde_json::to_vec(&rpc).unwrap();
        let back: Rpc = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.name(), "append");
        assert!(serde_json::from_slice::<Rpc>(b"{\"nonsense\":1}").is_err());
    }
}
