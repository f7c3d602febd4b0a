//! The openraft type configuration and the node record every member publishes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Request, Response};

/// Where a member can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    /// QUIC address for Raft and forwarding.
    pub cluster_addr: String,
    /// Admin API address on the private network.
    pub admin_addr: String,
    /// Public HTTPS address (informational).
    #[serde(default)]
    pub public_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cluster_addr)
    }
}

openraft::declare_raft_types!(
    /// Palisade's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
);

pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<u64, NodeInfo>;
