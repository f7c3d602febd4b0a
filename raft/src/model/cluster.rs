//! Records of the cluster's own coordination: leases on shared work, join tokens, and the nodes
//! removed from the cluster.

use serde::{Deserialize, Serialize};

use super::Millis;
use crate::ids::{Name, NodeId};

/// A lease on a piece of cluster work. `token` is the log index that granted it: a fencing token
/// that only grows, so a deposed holder's writes can be told apart and refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub name: Name,
    pub holder: NodeId,
    pub token: u64,
    pub expires_at: Millis,
}

/// A one-use secret that lets a new node join; only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub hash: String,
    pub expires_at: Millis,
    pub created_by: String,
}

/// A node removed from the cluster: its certificate is refused for everything but a ping, for
/// good (node ids are never handed out twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedNode {
    pub id: NodeId,
    pub at: Millis,
}
